"""Checkpoints, the batch ledger, dead letters and the delivery log of one pipeline."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from etl.config import PipelineConfig
from etl.database import (
    dispose,
    insert_if_absent,
    inserts_if_absent,
    make_engine,
    one_statement,
    relaxed_engine,
    safe_url,
)
from etl.errors import ConfigError, StateDatabaseError
from etl.events import Batch, DeadLetter
from etl.state.checkpoint import Checkpoint
from etl.state.deliveries import DeliveryLog
from etl.state.leases import TTL_SECONDS, Leases
from etl.state.ledger import Acknowledged, Ledger, now, unknown_counts
from etl.state.migrate import add_missing_columns, add_missing_indexes, missing_columns
from etl.state.tables import ADVANCED, state_tables
from etl.statuses import BatchStatus, PartitionStatus

Verdict = tuple[PartitionStatus | None, str | None]  # a status to record (or None), why
MadeWith = tuple[str, str]  # what a partition's events are made with: fingerprint, settings JSON


class StateStore:
    """Reads and writes the state tables of one pipeline."""

    def __init__(
        self,
        engine: Engine,
        prefix: str = "etl_",
        schema: str | None = None,
        lease_seconds: float = TTL_SECONDS,
    ) -> None:
        if schema and engine.dialect.name == "sqlite":
            raise ConfigError("state.schema: SQLite has no schemas; use state.table_prefix")
        self.engine = engine
        self.relaxed = relaxed_engine(engine)  # see _writing
        self.relaxed_statements = one_statement(self.relaxed)
        self.schema = schema
        self.metadata = sa.MetaData()
        self.tables = state_tables(self.metadata, prefix, schema)
        self.checkpoints = self.tables.checkpoints
        self.batches = self.tables.batches
        self.dead = self.tables.dead_letters
        self.rate_budget = self.tables.rate_budget
        self._write_lock = threading.Lock()

        self.log = DeliveryLog(engine, self.tables)
        self.ledger = Ledger(self.tables, self.log)
        self.leases = Leases(engine, self.tables.leases, ttl=lease_seconds, relaxed=self.relaxed)

    def ensure(self) -> None:
        """Create the schema and the tables where they are absent, and the columns and indexes
        an earlier version did not have. Several processes starting at once may race (IF NOT
        EXISTS is checked, then created): the loser tries again."""
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    if self.schema:
                        conn.execute(sa.schema.CreateSchema(self.schema, if_not_exists=True))
                    self.metadata.create_all(conn, checkfirst=True)
                    add_missing_columns(conn, self.tables.all())
                    add_missing_indexes(conn, self.tables.all())
                return
            except (IntegrityError, OperationalError, ProgrammingError):  # lost a race
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def close(self) -> None:
        if self.relaxed is not self.engine:
            self.relaxed.dispose()
        dispose(self.engine)

    @contextmanager
    def _writing(self, relaxed: bool = False, each: bool = False) -> Iterator[sa.Connection]:
        """A transaction that records progress; a database that refuses it is named, with why.
        One at a time in this process: the run's threads queue here rather than in SQLite's
        busy handler, which sleeps milliseconds at a time. ``relaxed``: its loss in a crash of
        the database server is that of a kill of the run just before it (see relaxed_engine);
        on PostgreSQL it then costs no flush to disk of its own (1.2 ms here). ``each``
        (relaxed): each statement commits as it runs (one_statement), for writes that hold in
        their order without a transaction around them."""
        engine = self.relaxed if relaxed else self.engine
        if each:
            assert relaxed, "a durable commit keeps its transaction"
            engine = self.relaxed_statements
        with self._write_lock:
            try:
                with engine.begin() as conn:
                    yield conn
            except OperationalError as exc:
                raise refused(exc, safe_url(self.engine)) from exc

    def table_names(self) -> list[str]:
        return [t.fullname for t in self.tables.all()]

    # -- partitions ----------------------------------------------------------------------------

    @staticmethod
    def _key(table: sa.Table, destination: str, partition: str) -> sa.ColumnElement[bool]:
        return sa.and_(table.c.destination == destination, table.c.partition == partition)

    def _new_checkpoint(
        self,
        destination: str,
        partition: str,
        status: PartitionStatus,
        made: MadeWith,
        error: str | None,
    ) -> dict[str, Any]:
        at = now()
        return dict(
            destination=destination,
            partition=partition,
            status=status,
            fingerprint=made[0],
            settings=made[1],
            error=error,
            started_at=at,
            updated_at=at,
            **{c: 0 for c in ADVANCED},
        )

    def load(self, destination: str, partition: str) -> Checkpoint | None:
        stmt = sa.select(self.checkpoints).where(
            self._key(self.checkpoints, destination, partition)
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).mappings().first()
        return Checkpoint.from_row(row) if row else None

    def start(
        self,
        destination: str,
        partition: str,
        made: MadeWith,
        restart: bool = False,
        status: PartitionStatus = PartitionStatus.RUNNING,
    ) -> tuple[Checkpoint, bool]:
        """Open a partition for sending (``status``: running, or rechecking for late rows) with
        the events' settings ``made`` (the planner has judged a change of them); batches sent
        but never acknowledged become in doubt. ``restart`` forgets the partition first.
        Returns its checkpoint, and whether it was new (then no batch of it exists)."""
        new = self._new_checkpoint(destination, partition, status, made, None)
        # lost: a partition not yet opened
        if not restart and inserts_if_absent(self.engine.dialect):  # most often new
            with self._writing(relaxed=True, each=True) as conn:
                inserted = conn.execute(self._open_new, new).mappings().first()
            if inserted is not None:
                return Checkpoint.from_row(inserted), True
        cp_key = self._key(self.checkpoints, destination, partition)
        with self._writing(relaxed=True) as conn:
            row = conn.execute(sa.select(self.checkpoints).where(cp_key)).mappings().first()
            if row is not None and restart:
                for table in (self.batches, self.dead, self.tables.deliveries, self.checkpoints):
                    conn.execute(sa.delete(table).where(self._key(table, destination, partition)))
                row = None
            created = row is None
            if created:
                conn.execute(sa.insert(self.checkpoints).values(**new))
            else:
                conn.execute(
                    sa.update(self.checkpoints)
                    .where(cp_key)
                    .values(
                        status=status,
                        fingerprint=made[0],
                        settings=made[1],
                        error=None,
                        updated_at=now(),
                    )
                )
                self._doubt_unanswered(conn, destination, partition)
            row = conn.execute(sa.select(self.checkpoints).where(cp_key)).mappings().one()
        return Checkpoint.from_row(row), created

    def start_replay(self, destination: str, partition: str) -> None:
        """A replay takes a partition (under its lease): what earlier runs or replays left
        unanswered becomes in doubt."""
        with self._writing() as conn:
            self._doubt_unanswered(conn, destination, partition)

    def _doubt_unanswered(self, conn: sa.Connection, destination: str, partition: str) -> None:
        """Batches sent by an earlier run and never answered: in doubt from now on."""
        conn.execute(
            sa.update(self.batches)
            .where(self._key(self.batches, destination, partition))
            .where(self.batches.c.status == BatchStatus.SENT)
            .values(status=BatchStatus.IN_DOUBT)
        )

    def mark_skipped(self, destination: str, partition: str, made: MadeWith, reason: str) -> None:
        """Record a partition that will not be sent (e.g. older than the vendor accepts),
        unless it was already sent or started."""
        with self._writing() as conn:
            key = self._key(self.checkpoints, destination, partition)
            if conn.execute(sa.select(self.checkpoints.c.status).where(key)).first() is not None:
                return
            skipped = PartitionStatus.SKIPPED
            new = self._new_checkpoint(destination, partition, skipped, made, reason)
            conn.execute(sa.insert(self.checkpoints).values(**new))

    def next_seq(self, destination: str, partition: str) -> int:
        stmt = sa.select(sa.func.max(self.batches.c.seq)).where(
            self._key(self.batches, destination, partition)
        )
        with self.engine.connect() as conn:
            last = conn.execute(stmt).scalar()
        return int(last or 0) + 1

    def close_partition(
        self, destination: str, partition: str, judge: Callable[[Checkpoint], Verdict]
    ) -> tuple[Checkpoint, Verdict]:
        """A run is done with a partition (all its answers committed): its checkpoint is read,
        ``judge`` says which status to record (None: none, it is re-checked) and why, the
        status is recorded and the partition's lease given back (on PostgreSQL in one
        statement). Returns the checkpoint as left, and the verdict. The lease is held
        throughout: no other run writes the checkpoint, so no transaction is needed around
        them (on PostgreSQL each statement commits as it runs: two round trips less); stopped
        between the status and the lease, the lease passes after its ttl."""
        key = {"k_destination": destination, "k_partition": partition}
        select, update, releasing = self._closing
        # lost: the run's last partition not closed
        with self._writing(relaxed=True, each=True) as conn:
            cp = Checkpoint.from_row(conn.execute(select, key).mappings().one())
            status, error = verdict = judge(cp)
            if status is None:
                self.leases.give_back(conn, destination, partition)
                return cp, verdict
            at = now()
            completed = at if status == PartitionStatus.COMPLETE else None
            values = {**key, "status": status, "error": error, "updated_at": at}
            values["completed_at"] = completed
            if releasing is not None:  # the status recorded and the lease given back at once
                result = conn.execute(releasing, {**values, "k_holder": self.leases.holder})
                row = result.mappings().one()
                self.leases.given_back(destination, partition)
            else:
                result = conn.execute(update, values)
                if not conn.dialect.update_returning:
                    result = conn.execute(select, key)
                row = result.mappings().one()  # before another statement (DuckDB: one cursor)
                self.leases.give_back(conn, destination, partition)
            return Checkpoint.from_row(row), verdict

    @cached_property
    def _open_new(self) -> sa.Executable:
        """A new checkpoint, inserted in one statement unless it exists (built once)."""
        return insert_if_absent(self.engine.dialect, self.checkpoints)

    @cached_property
    def _closing(self) -> tuple[sa.Select[Any], sa.Update, sa.Update | None]:
        """A partition's checkpoint read; its status written (and the row as left, where the
        database returns it); the same giving back the lease (Leases.releasing): by the key's
        parameters, built once, used every day."""
        c = self.checkpoints.c
        key = (c.destination == sa.bindparam("k_destination"),
               c.partition == sa.bindparam("k_partition"))  # fmt: skip
        update = sa.update(self.checkpoints).where(*key)
        if self.engine.dialect.update_returning:  # the row as left, in the same statement
            update = update.returning(*self.checkpoints.c)
        select = sa.select(self.checkpoints).where(*key)
        return select, update, self.leases.releasing(update)

    def count_changes(
        self,
        destination: str,
        partition: str,
        gone: dict[str, int],
        changed: int,
        in_doubt: int,
    ) -> None:
        """What a re-check found: the partition's rows deleted and moved (all of them), the rows
        changed since the last check, the copies that may now be extra."""
        c = self.checkpoints.c
        with self._writing() as conn:
            conn.execute(
                sa.update(self.checkpoints)
                .where(self._key(self.checkpoints, destination, partition))
                .values(
                    deleted=gone["deleted"],
                    moved=gone["moved"],
                    changed=c.changed + changed,
                    in_doubt=c.in_doubt + in_doubt,
                    updated_at=now(),
                )
            )

    # -- batches ------------------------------------------------------------------------------

    def note_unknown(
        self, destination: str, batch: Batch, unknown: list[int], attempts: int
    ) -> None:
        with self._writing() as conn:
            self.ledger.note_unknown(conn, destination, batch, unknown, attempts)

    def forget(self, destination: str, batch: Batch) -> None:
        with self._writing() as conn:
            self.ledger.forget(conn, destination, batch)

    def commit(
        self,
        destination: str,
        acknowledged: list[Acknowledged],
        sending: Batch | None = None,
        kind: str = "run",
    ) -> None:
        """One transaction: each acknowledged batch committed, in order, and the batch about to
        be sent marked as sent (see etl.state.ledger): durable before that batch leaves; the
        answers alone, relaxed (lost, they are batches a killed run left unanswered: in
        doubt, counted)."""
        with self._writing(relaxed=sending is None) as conn:
            for done in acknowledged:
                self.ledger.commit(conn, destination, done)
            if sending is not None:
                unknown = [1] * sending.size
                self.ledger.mark_sent(conn, destination, sending, unknown, kind)

    def prior_unknown(self, destination: str, partition: str, kind: str = "run") -> Counter[str]:
        """Per source key, the requests of earlier runs that carried it and whose fate is
        unknown (the partition's ``in_doubt`` ledger rows of this kind): each may have stored a
        copy."""
        b = self.batches.c
        stmt = sa.select(b.event_keys, b.unknown).where(
            self._key(self.batches, destination, partition),
            b.status == BatchStatus.IN_DOUBT,
            b.kind == kind,
        )
        counts: Counter[str] = Counter()
        with self.engine.connect() as conn:
            for keys, unknown in conn.execute(stmt):
                if keys is None:  # written by an earlier version, which kept no keys
                    continue
                keys = json.loads(keys)
                for key, n in zip(keys, unknown_counts(unknown, len(keys)), strict=False):
                    counts[key] += n
        return counts

    # -- reports -------------------------------------------------------------------------------

    def checkpoints_of(self, destination: str | None = None) -> list[Checkpoint]:
        c = self.checkpoints.c
        stmt = sa.select(self.checkpoints).order_by(c.destination, c.partition)
        if destination:
            stmt = stmt.where(c.destination == destination)
        with self.engine.connect() as conn:
            return [Checkpoint.from_row(r) for r in conn.execute(stmt).mappings()]

    def dead_letters(
        self,
        destination: str,
        partition: str | None = None,
        include_replayed: bool = False,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        d = self.dead.c
        stmt = sa.select(self.dead).where(d.destination == destination)
        if partition:
            stmt = stmt.where(d.partition == partition)
        if not include_replayed:
            stmt = stmt.where(d.replayed_at.is_(None))
        stmt = stmt.order_by(d.partition, d.created_at, d.source_key)
        if limit:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def count_dead_letters(self, destination: str, partition: str | None = None) -> int:
        d = self.dead.c
        stmt = sa.select(sa.func.count()).where(
            d.destination == destination, d.replayed_at.is_(None)
        )
        if partition:
            stmt = stmt.where(d.partition == partition)
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def update_dead_letters(self, destination: str, letters: list[DeadLetter]) -> None:
        """New reasons for dead letters that a replay could not deliver."""
        d = self.dead.c
        stmt = (
            sa.update(self.dead)
            .where(d.destination == sa.bindparam("k_dest"), d.event_id == sa.bindparam("k_id"))
            .values(
                reason=sa.bindparam("v_reason"),
                vendor_status=sa.bindparam("v_status"),
                vendor_message=sa.bindparam("v_message"),
            )
        )
        rows = [
            {
                "k_dest": destination,
                "k_id": letter.event_id,
                "v_reason": letter.reason,
                "v_status": letter.vendor_status,
                "v_message": letter.vendor_message,
            }
            for letter in letters
        ]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(stmt, rows)


def refused(exc: OperationalError, url: str) -> StateDatabaseError:
    """What a state database's refusal means, in one line."""
    text = str(exc.orig if exc.orig is not None else exc).splitlines()[0]
    lowered = text.lower()
    if "readonly" in lowered or "read-only" in lowered or "read only" in lowered:
        why = "it is read-only"
    elif "full" in lowered or "no space" in lowered:
        why = "its disk is full"
    elif "locked" in lowered:
        why = "another process holds it locked"
    else:
        why = "it failed"
    return StateDatabaseError(
        f"the state database {url} refused to record progress ({why}: {text}); nothing was "
        "lost: what was sent since its last record is in doubt and is resolved when you run again"
    )


def existing_store(config: PipelineConfig) -> StateStore | None:
    """The pipeline's state store if its tables exist (for commands that write nothing)."""
    engine = make_engine(config.state_url)
    store = StateStore(engine, config.state.table_prefix, config.state.schema_name)
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        present = all(inspector.has_table(t.name, schema=t.schema) for t in store.tables.all())
        if present:
            present = not missing_columns(inspector, store.tables.all())
    if not present:
        engine.dispose()
        return None
    return store


def open_store(config: PipelineConfig, engine: Engine | None = None) -> StateStore:
    """The pipeline's state store, its tables created if absent. Pass the source's engine to
    share it when the state lives in the source database."""
    if engine is None or config.state.url not in (None, config.source.url):
        engine = make_engine(config.state_url)
    store = StateStore(
        engine, config.state.table_prefix, config.state.schema_name, config.state.lease_seconds
    )
    store.ensure()
    return store
