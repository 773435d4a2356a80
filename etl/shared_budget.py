"""One rate budget for every process that sends to one endpoint with one credential.

Several `etl run` processes, or Dagster runs in parallel, each pace their own requests with a
token bucket; with ``rate_limit.shared: true`` every request, in every process, also takes the
next free slot of one schedule kept in the state database: a row of ``<prefix>rate_budget``
holding the time of the next free slot (GCRA's theoretical arrival time, as in
:class:`etl.ratelimit.TokenBucket`). Taking a slot is one ``UPDATE ... RETURNING`` (a row lock in
PostgreSQL, the write lock in SQLite)::

    slot = max(next_slot, now);  next_slot = slot + interval

and the process then sleeps until its slot. Slots are one interval apart whoever takes them and
however late their takers wake, so the processes together send at the destination's paced rate
(the limit less ``margin``), evenly: nothing is lost to polling, and no burst meets latency
jitter at the vendor. ``now`` is PostgreSQL's clock (the same for processes on several hosts), or
this machine's for a SQLite file (which only processes on this machine can share).

Requests one at a time (``rate_limit.strict``, its default, or after a refusal): a slot says when
a request may leave, not when it does; a process woken a few milliseconds late would put its
request that much closer to the next process's, which a vendor's bucket that banks nothing
refuses. So, as :class:`etl.ratelimit.TokenBucket` does within a process, each request then
also leaves at least the spacing after the last one *really* left, from any process: one
conditional ``UPDATE`` records its leaving (``last_left = now`` where ``last_left + spacing <=
now``, on the database's clock as the statement runs); a request too early is told how long to
wait and tries again.

Why not pyrate-limiter's SQL buckets: they are sliding-window logs that a waiting process polls;
the time between a slot freeing and a poller noticing is lost on every request (87 % of the limit
in ``etl bench --only shared``, against 98 % asked), and pyrate's PostgreSQL table ignores
``state.schema``.
"""

from __future__ import annotations

import hashlib
import time

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from etl.config import RateLimit
from etl.errors import ConfigError
from etl.timing import Clock, Sleep


def budget_key(endpoint: str, credential: str) -> str:
    """The row's key: names the endpoint and credential without holding the credential."""
    return hashlib.sha256(f"{endpoint}\x1f{credential}".encode()).hexdigest()[:32]


class SharedBucket:
    """The same interface as :class:`etl.ratelimit.TokenBucket`, across processes.

    ``clock``: seconds since the epoch; by default PostgreSQL's clock, or this machine's
    (``time.time``) for SQLite. Tests inject one.
    """

    def __init__(
        self,
        engine: Engine,
        table: sa.Table,
        endpoint: str,
        credential: str,
        limit: RateLimit,
        clock: Clock | None = None,
        sleep: Sleep = time.sleep,
    ) -> None:
        backend = engine.dialect.name
        if backend not in ("postgresql", "sqlite") or (
            backend == "sqlite" and engine.url.database in (None, "", ":memory:")
        ):
            raise ConfigError(
                "rate_limit.shared needs the state in a SQLite file or in PostgreSQL "
                f"(state.url is {engine.url.render_as_string(hide_password=True)})"
            )
        self.engine = engine
        # each statement commits as it runs: one round trip, no BEGIN and COMMIT around it
        self._statements = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.table = table
        self.key = budget_key(endpoint, credential)
        self.interval = limit.slot_seconds
        self._spacing = limit.spacing  # requests one at a time: this far apart as they leave
        self._row_spacing = 0.0  # the row's, after a refusal (as the last slot taken said)
        self._sleep = sleep
        c = table.c
        now: sa.ColumnElement[float]
        leaving: sa.ColumnElement[float]
        if clock is None and backend == "postgresql":
            # constant within the statement, and the same for every host
            now = sa.cast(sa.extract("epoch", sa.func.statement_timestamp()), sa.Float)
            # when the statement really runs (after any wait for the row's lock)
            leaving = sa.cast(sa.extract("epoch", sa.func.clock_timestamp()), sa.Float)
            self._now: Clock | None = None
        else:
            now = leaving = sa.bindparam("now", type_=sa.Float)
            self._now = clock or time.time
        wait = sa.bindparam("wait", type_=sa.Float)
        step = sa.bindparam("step", type_=sa.Float)
        earliest = now + wait
        # a slot's step: the interval, or the spacing a refusal set for every process
        used = sa.case((sa.and_(step > 0, c.spacing > step), c.spacing), else_=step)
        # next_slot = max(next_slot, now + wait) + step
        self._take = (
            sa.update(table)
            .where(c.key == self.key)
            .values(next_slot=sa.case((c.next_slot > earliest, c.next_slot), else_=earliest) + used)
            .returning(c.next_slot, now, used, c.spacing)
        )
        # leave: last_left = now (+ the spacing once more for a request that opens a
        # connection, which reaches the vendor later), if the last one left a spacing ago
        spacing = sa.bindparam("apart", type_=sa.Float)
        gap = sa.case((c.spacing > spacing, c.spacing), else_=spacing)
        opens = sa.bindparam("opens", type_=sa.Float)
        self._leave = (
            sa.update(table)
            .where(c.key == self.key, c.last_left + gap <= leaving)
            .values(last_left=leaving + opens * gap)
            .returning(c.last_left)
        )
        self._until = sa.select(c.last_left + gap - leaving).where(c.key == self.key)
        self._ensure_row()

    def _ensure_row(self) -> None:
        with self.engine.begin() as conn:
            present = conn.execute(
                sa.select(self.table.c.key).where(self.table.c.key == self.key)
            ).first()
        if present is None:
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.insert(self.table).values(key=self.key, next_slot=0.0))
            except IntegrityError:  # another process inserted it first
                pass

    def _params(self, **values: float) -> dict[str, float]:
        if self._now is not None:
            values["now"] = self._now()
        return values

    def _move(self, wait: float, step: float) -> tuple[float, float, float]:
        """``next_slot = max(next_slot, now + wait) + step`` (``step``: at least the row's
        spacing, unless 0) in one statement: (next_slot, now, the step taken)."""
        with self._statements.connect() as conn:
            row = conn.execute(self._take, self._params(wait=wait, step=step)).one()
        next_slot, now, used, self._row_spacing = (float(v) for v in row)
        return next_slot, now, used

    def reserve(self) -> tuple[float, float]:
        """Take the next free slot: (its time, the time now), in the budget's clock."""
        next_slot, now, used = self._move(0.0, self.interval)
        return next_slot - used, now

    def tighten(self, spacing: float) -> bool:
        """From now on slots are at least ``spacing`` apart, for every process sending here
        (after a refusal at the configured pace); False if they were already (the row's spacing
        starts at 0: a limit one at a time already keeps its own)."""
        c = self.table.c
        with self.engine.begin() as conn:
            changed = conn.execute(
                sa.update(self.table)
                .where(c.key == self.key, c.spacing < spacing)
                .values(spacing=spacing)
            ).rowcount
        return bool(changed) and spacing > self._spacing + 1e-9

    def acquire(self, opens: bool = False) -> float:
        """Wait for this request's slot, and with requests one at a time until it may leave
        (see the module's docstring); return the seconds waited. ``opens``: the request opens
        a connection, so it reaches the vendor later than it leaves: the next one, from any
        process, leaves a spacing more after it."""
        slot, now = self.reserve()
        wait = max(slot - now, 0.0)
        if wait > 0:
            self._sleep(wait)
        if self._spacing or self._row_spacing:
            wait += self._leave_after_the_last(opens)
        return wait

    def _leave_after_the_last(self, opens: bool) -> float:
        """Record this request's leaving once the last one, from any process, left the
        spacing ago; the seconds waited for that."""
        params = {"apart": self._spacing, "opens": float(opens)}
        waited = 0.0
        while True:
            with self._statements.connect() as conn:
                if conn.execute(self._leave, self._params(**params)).first() is not None:
                    break
                remaining = float(conn.execute(self._until, self._params(**params)).scalar_one())
            if remaining > 0:
                self._sleep(remaining)
                waited += remaining
        return waited

    def pause(self, seconds: float) -> None:
        """After a 429: no process takes a slot for ``seconds`` (slots already taken stand)."""
        self._move(seconds, 0.0)
