"""Checkpoints, the batch ledger and dead letters of one pipeline, kept in the warehouse."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from etl.config import PipelineConfig
from etl.database import make_engine
from etl.errors import ConfigError, MappingChangedError
from etl.events import Batch, DeadLetter, Position
from etl.state.ledger import Acknowledged, Ledger, now
from etl.state.positions import decode_position
from etl.state.tables import ADVANCED, state_tables


@dataclass(frozen=True)
class Checkpoint:
    destination: str
    partition: str
    status: str
    cursor: Position | None
    rows_read: int
    delivered: int
    dead_letters: int
    filtered: int
    in_doubt: int
    requests: int
    retries: int
    throttled: int
    fingerprint: str
    error: str | None
    started_at: datetime | None
    updated_at: datetime | None

    @property
    def balanced(self) -> bool:
        return self.rows_read == self.delivered + self.dead_letters + self.filtered

    @classmethod
    def from_row(cls, row: Any) -> Checkpoint:
        values = {name: row[name] for name in cls.__dataclass_fields__ if name != "cursor"}
        return cls(**values, cursor=decode_position(row["cursor"]))


class StateStore:
    """Reads and writes the state tables of one pipeline."""

    def __init__(self, engine: Engine, prefix: str = "etl_", schema: str | None = None) -> None:
        if schema and engine.dialect.name == "sqlite":
            raise ConfigError("state.schema: SQLite has no schemas; use state.table_prefix")
        self.engine = engine
        self.schema = schema
        self.metadata = sa.MetaData()
        self.tables = state_tables(self.metadata, prefix, schema)
        self.checkpoints = self.tables.checkpoints
        self.batches = self.tables.batches
        self.dead = self.tables.dead_letters
        self.rate_budget = self.tables.rate_budget
        self.ledger = Ledger(self.tables)

    def ensure(self) -> None:
        """Create the schema and the tables where they are absent. Several processes starting
        at once may race (IF NOT EXISTS is checked, then created): the loser tries again."""
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    if self.schema:
                        conn.execute(sa.schema.CreateSchema(self.schema, if_not_exists=True))
                    self.metadata.create_all(conn, checkfirst=True)
                return
            except (IntegrityError, OperationalError, ProgrammingError):  # lost a race
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def close(self) -> None:
        self.engine.dispose()

    def table_names(self) -> list[str]:
        return [t.fullname for t in self.tables.all()]

    # -- partitions ----------------------------------------------------------------------------

    @staticmethod
    def _key(table: sa.Table, destination: str, partition: str) -> sa.ColumnElement[bool]:
        return sa.and_(table.c.destination == destination, table.c.partition == partition)

    def _new_checkpoint(
        self, destination: str, partition: str, status: str, fingerprint: str, error: str | None
    ) -> sa.Insert:
        at = now()
        return sa.insert(self.checkpoints).values(
            destination=destination,
            partition=partition,
            status=status,
            fingerprint=fingerprint,
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
        self, destination: str, partition: str, fingerprint: str, restart: bool = False
    ) -> Checkpoint:
        """Open a partition for sending; batches sent but never acknowledged become in doubt."""
        cp_key = self._key(self.checkpoints, destination, partition)
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(self.checkpoints).where(cp_key)).mappings().first()
            if row is not None and restart:
                for table in (self.batches, self.dead, self.checkpoints):
                    conn.execute(sa.delete(table).where(self._key(table, destination, partition)))
                row = None
            if row is None:
                conn.execute(
                    self._new_checkpoint(destination, partition, "running", fingerprint, None)
                )
            else:
                _refuse_changed_mapping(row, destination, partition, fingerprint)
                conn.execute(
                    sa.update(self.checkpoints)
                    .where(cp_key)
                    .values(status="running", fingerprint=fingerprint, error=None, updated_at=now())
                )
            conn.execute(
                sa.update(self.batches)
                .where(self._key(self.batches, destination, partition))
                .where(self.batches.c.status == "sent")
                .values(status="in_doubt")
            )
            row = conn.execute(sa.select(self.checkpoints).where(cp_key)).mappings().one()
        return Checkpoint.from_row(row)

    def mark_skipped(self, destination: str, partition: str, fingerprint: str, reason: str) -> None:
        """Record a partition that will not be sent (e.g. older than the vendor accepts),
        unless it was already sent or started."""
        with self.engine.begin() as conn:
            key = self._key(self.checkpoints, destination, partition)
            if conn.execute(sa.select(self.checkpoints.c.status).where(key)).first() is not None:
                return
            conn.execute(
                self._new_checkpoint(destination, partition, "skipped", fingerprint, reason)
            )

    def in_doubt_ranges(self, destination: str, partition: str) -> list[tuple[Position, Position]]:
        """Key ranges of batches that were sent but never acknowledged (maybe delivered)."""
        b = self.batches.c
        stmt = sa.select(b.first_position, b.last_position).where(
            self._key(self.batches, destination, partition), b.status == "in_doubt"
        )
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        ranges = []
        for first, last in rows:
            first_pos, last_pos = decode_position(first), decode_position(last)
            assert first_pos is not None and last_pos is not None
            ranges.append((first_pos, last_pos))
        return ranges

    def next_seq(self, destination: str, partition: str) -> int:
        stmt = sa.select(sa.func.max(self.batches.c.seq)).where(
            self._key(self.batches, destination, partition)
        )
        with self.engine.connect() as conn:
            last = conn.execute(stmt).scalar()
        return int(last or 0) + 1

    def record(
        self,
        destination: str,
        partition: str,
        acknowledged: list[Acknowledged],
        sending: Batch | None = None,
    ) -> None:
        """One transaction: each acknowledged batch (with its result and in-doubt count)
        committed in order, and ``sending`` marked as sent before its request leaves, so that a
        crash leaves it in doubt."""
        with self.engine.begin() as conn:
            for done in acknowledged:
                self.ledger.commit(conn, destination, partition, done)
            if sending is not None:
                self.ledger.mark_sent(conn, destination, partition, sending)

    def finish(self, destination: str, partition: str, status: str, error: str | None) -> None:
        at = now()
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(self.checkpoints)
                .where(self._key(self.checkpoints, destination, partition))
                .values(
                    status=status,
                    error=error,
                    updated_at=at,
                    completed_at=at if status == "complete" else None,
                )
            )

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

    def record_replay(
        self,
        destination: str,
        delivered: list[tuple[str, str]],
        still_dead: list[tuple[str, DeadLetter]],
    ) -> None:
        """Replayed dead letters: delivered ones are marked and move to the delivered counter."""
        at = now()
        d, cp = self.dead.c, self.checkpoints.c
        with self.engine.begin() as conn:
            for partition, event_id in delivered:
                conn.execute(
                    sa.update(self.dead)
                    .where(d.destination == destination, d.event_id == event_id)
                    .values(replayed_at=at)
                )
                conn.execute(
                    sa.update(self.checkpoints)
                    .where(self._key(self.checkpoints, destination, partition))
                    .values(
                        delivered=cp.delivered + 1, dead_letters=cp.dead_letters - 1, updated_at=at
                    )
                )
            for _, letter in still_dead:
                conn.execute(
                    sa.update(self.dead)
                    .where(d.destination == destination, d.event_id == letter.event_id)
                    .values(
                        reason=letter.reason,
                        vendor_status=letter.vendor_status,
                        vendor_message=letter.vendor_message,
                    )
                )


def _refuse_changed_mapping(row: Any, destination: str, partition: str, fingerprint: str) -> None:
    if row["fingerprint"] != fingerprint and row["rows_read"] > 0:
        raise MappingChangedError(
            f"destination {destination!r}, partition {partition}: the mapping changed "
            f"since {row['rows_read']} rows of this partition were processed "
            f"(fingerprint {row['fingerprint']} -> {fingerprint}); rerun with "
            f"--restart to send this partition again from its start"
        )


def open_store(config: PipelineConfig, engine: Engine | None = None) -> StateStore:
    """The pipeline's state store, its tables created if absent. Pass the source's engine to
    share it when the state lives in the source database."""
    if engine is None or config.state.url not in (None, config.source.url):
        engine = make_engine(config.state_url)
    store = StateStore(engine, config.state.table_prefix, config.state.schema_name)
    store.ensure()
    return store
