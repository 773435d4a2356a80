"""One run per destination and partition: a lease in the state database.

A run takes the lease of a partition before it sends it and gives it back when the partition is
done. The lease names its holder (host, pid) and expires unless renewed: a run renews its leases
while it lasts (:meth:`Leases.heartbeat`). Expiry is dated and judged by the state database's
clock (PostgreSQL's ``clock_timestamp()``), never by a host's own: hosts whose clocks differ by
minutes agree on when a lease has passed. A killed run's lease passes after ``ttl`` seconds, or
at once when its holder was a process of this very machine (the same host, boot and process
namespace) that no longer exists; a holder elsewhere is never judged by a pid of this machine.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from etl.database import insert_if_absent, inserts_if_absent, one_statement
from etl.errors import LeaseHeldError
from etl.state.ledger import now
from etl.timing import REAL_TIME, Timing

TTL_SECONDS = 60.0
WAIT_STEP = 2.0  # seconds between looks at a lease another run holds


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def machine_identity() -> str:
    """This machine as a holder names it: host name, boot and process namespace, so that a pid
    is only ever judged where it means the same process (a container or a host rebooted since
    shares a host name, not a boot and a process namespace)."""
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        with suppress(OSError):
            source = Path(path)
            parts.append(source.read_text().strip() if source.is_file() else os.readlink(path))
    return "/".join(parts)


class Leases:
    """The leases this process holds, and taking one."""

    def __init__(
        self,
        engine: Engine,
        table: sa.Table,
        ttl: float = TTL_SECONDS,
        clock: Callable[[], float] | None = None,
        relaxed: Engine | None = None,
    ) -> None:
        """``clock``: seconds since the epoch; by default the state database's (PostgreSQL's),
        or this machine's for a SQLite file (one machine only). ``relaxed``: the engine that
        takes and gives back leases, its commits not flushed to disk (see relaxed_engine):
        lost with the server, they are leases of a run that died with it."""
        self.engine = engine
        self.relaxed = relaxed or engine
        self._statements = one_statement(self.relaxed)
        self.table = table
        self.ttl = ttl
        self.host = socket.gethostname()[:100]
        self.pid = os.getpid()
        self.machine = machine_identity()
        self.holder = f"{self.host}:{self.pid}:{_digest(self.machine)}:{uuid.uuid4().hex[:8]}"
        self.held: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._beat: threading.Thread | None = None
        self._stop = threading.Event()
        self._now, self._local_clock = _database_clock(engine, clock)

    def acquire(
        self,
        destination: str,
        partition: str,
        wait: float = 0.0,
        timing: Timing = REAL_TIME,
        stop: threading.Event | None = None,
    ) -> None:
        """Take the partition's lease, or raise LeaseHeldError naming the run that holds it;
        with ``wait``, look again every few seconds for that long first (the lease of a run that
        was lost passes ``ttl`` after its last renewal)."""
        deadline = timing.clock() + wait
        while True:
            try:
                self._take_once(destination, partition)
                break
            except LeaseHeldError:
                left = deadline - timing.clock()
                if left <= 0 or (stop is not None and stop.is_set()):
                    raise
                timing.sleep(min(WAIT_STEP, left))
        with self._lock:
            self.held.add((destination, partition))

    def _take_once(self, destination: str, partition: str) -> None:
        for _ in range(2):  # a lost race to insert: look again
            try:
                self._take(destination, partition)
                return
            except IntegrityError:
                continue
        self._take(destination, partition)
        with self._lock:
            self.held.add((destination, partition))

    def _key(self, destination: str, partition: str) -> tuple[sa.ColumnElement[bool], ...]:
        t = self.table.c
        return (t.destination == destination, t.partition == partition)

    def _holder(self) -> dict[str, object]:
        """Who takes a lease, and when (by this process's clock: shown, never judged)."""
        return {"holder": self.holder, "host": self.host, "pid": self.pid, "acquired_at": now()}

    def _values(self) -> dict[str, object]:
        return {**self._holder(), "expires_at": self._now() + self.ttl}

    @cached_property
    def _take_free(self) -> sa.Executable:
        """A free lease taken in one statement, built once: its expiry by the database's clock
        (a parameter where a local clock dates it)."""
        if self._local_clock is not None:
            return insert_if_absent(self.engine.dialect, self.table)
        expires = self._now() + sa.bindparam("lease_ttl", type_=sa.Float)
        return insert_if_absent(self.engine.dialect, self.table, expires_at=expires)

    def _free(self, destination: str, partition: str) -> dict[str, object]:
        """The parameters of :attr:`_take_free`."""
        values = {"destination": destination, "partition": partition, **self._holder()}
        if self._local_clock is None:
            values["lease_ttl"] = self.ttl
        else:
            values["expires_at"] = self._local_clock() + self.ttl
        return values

    def _take(self, destination: str, partition: str) -> None:
        if inserts_if_absent(self.engine.dialect):  # most often free: then one statement
            with self._statements.begin() as conn:
                if conn.execute(self._take_free, self._free(destination, partition)).first():
                    return
        key = self._key(destination, partition)
        t = self.table.c
        new = {"destination": destination, "partition": partition, **self._values()}
        with self.relaxed.begin() as conn:
            row = conn.execute(sa.select(self.table).where(*key)).mappings().first()
            if row is None:
                conn.execute(sa.insert(self.table).values(**new))
                return
            if row["holder"] == self.holder or self._ended_here(row["holder"]):
                passed = t.holder == row["holder"]
            else:  # judged by the database's clock only
                passed = t.expires_at < self._now()
            update = sa.update(self.table).where(*key, passed).values(**self._values())
            if conn.execute(update).rowcount != 1:
                row = conn.execute(sa.select(self.table).where(*key)).mappings().one()
                raise self._held(destination, partition, row)

    def _ended_here(self, holder: str) -> bool:
        """The holder was a process of this machine that has ended (a holder elsewhere, or of
        an earlier version that did not name its machine, is judged by its expiry alone)."""
        parts = holder.split(":")
        if len(parts) != 4 or parts[2] != _digest(self.machine) or not parts[1].isdigit():
            return False
        return not _alive(int(parts[1]))

    def held_elsewhere(self, destination: str, partition: str) -> LeaseHeldError | None:
        """What :meth:`acquire` would raise now (another run holds the lease), without taking
        it: None if it would be taken."""
        return self.held_by_others(destination, partition).get(partition)

    def held_by_others(
        self, destination: str, partition: str | None = None
    ) -> dict[str, LeaseHeldError]:
        """The destination's partitions (or the one) another run holds now, each with what
        :meth:`acquire` would raise: one query, for a plan of any number of partitions."""
        t = self.table.c
        stmt = sa.select(self.table, self._now().label("db_now")).where(
            t.destination == destination
        )
        if partition is not None:
            stmt = stmt.where(t.partition == partition)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
        return {
            row["partition"]: self._held(destination, row["partition"], row)
            for row in rows
            if row["holder"] != self.holder
            and not self._ended_here(row["holder"])
            and row["expires_at"] >= row["db_now"]
        }

    def _held(self, destination: str, partition: str, row: sa.RowMapping) -> LeaseHeldError:
        since = row["acquired_at"]
        if isinstance(since, datetime):
            since = since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return LeaseHeldError(
            f"destination {destination!r}, partition {partition}: another run is sending it "
            f"(host {row['host']}, pid {row['pid']}, since {since}); wait until it ends, or "
            f"{int(self.ttl)} s after it was stopped"
        )

    def release(self, destination: str, partition: str) -> None:
        with self.relaxed.begin() as conn:
            self.give_back(conn, destination, partition)

    def give_back(self, conn: sa.Connection, destination: str, partition: str) -> None:
        """Release the lease in the caller's transaction (if it fails, the lease is no longer
        renewed: it passes after ``ttl``)."""
        conn.execute(
            self._give_back,
            {"k_destination": destination, "k_partition": partition, "k_holder": self.holder},
        )
        self.given_back(destination, partition)

    def given_back(self, destination: str, partition: str) -> None:
        """The lease was given back by a statement of :meth:`releasing`."""
        with self._lock:
            self.held.discard((destination, partition))

    def releasing(self, statement: sa.Update) -> sa.Update | None:
        """``statement`` (whose parameters name the partition as ``k_destination`` and
        ``k_partition``) that also gives back this process's lease of it, where one statement
        can (PostgreSQL: a DELETE in its WITH; executed with ``k_holder``, this holder); None
        elsewhere. Then say so with :meth:`given_back`."""
        if self.engine.dialect.name != "postgresql":
            return None
        return statement.add_cte(self._give_back.cte("released"))

    @cached_property
    def _give_back(self) -> sa.Delete:
        t = self.table.c
        return sa.delete(self.table).where(
            t.destination == sa.bindparam("k_destination"),
            t.partition == sa.bindparam("k_partition"),
            t.holder == sa.bindparam("k_holder"),
        )

    def renew(self) -> None:
        """Push back the expiry of every lease this process holds."""
        t = self.table.c
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(self.table)
                .where(t.holder == self.holder)
                .values(expires_at=self._now() + self.ttl)
            )

    def heartbeat(self) -> None:
        """Renew the leases every third of their life, on a thread, until :meth:`close`."""
        if self._beat is not None:
            return

        def beat() -> None:
            while not self._stop.wait(self.ttl / 3):
                if self.held:
                    with suppress(Exception):  # the next beat tries again; expiry is safe
                        self.renew()

        self._beat = threading.Thread(target=beat, name="etl-leases", daemon=True)
        self._beat.start()

    def close(self) -> None:
        """Stop renewing and give back every lease still held."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
            self._beat = None
        for destination, partition in list(self.held):
            self.release(destination, partition)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _database_clock(
    engine: Engine, clock: Callable[[], float] | None
) -> tuple[Callable[[], sa.ColumnElement[float]], Callable[[], float] | None]:
    """Now, in seconds since the epoch, as a SQL expression: the database's own clock where
    several hosts may share it (PostgreSQL), else ``clock`` (by default this machine's); and
    that local clock itself (None: the database's is used)."""
    if clock is None and engine.dialect.name == "postgresql":
        at = sa.cast(sa.extract("epoch", sa.func.clock_timestamp()), sa.Float)
        return (lambda: at), None
    read = clock or time.time
    return (lambda: sa.literal(read(), sa.Float)), read
