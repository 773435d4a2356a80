"""Checkpoints, the batch ledger, dead letters and shared rate budgets, kept in the warehouse.

The tables are defined here and only here; ``sql/state_tables.sql`` is generated from these
definitions (``etl state-ddl``) for the people who review warehouse changes, and a test keeps the
two equal. Every acknowledged batch is committed in one transaction: ledger row, dead letters,
counters and cursor together, so that what the tables say is always what the vendor has.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from etl.config import PipelineConfig
from etl.errors import ConfigError, MappingChangedError
from etl.events import Batch, DeadLetter, Position, SendResult

COUNTERS = ("rows_read", "delivered", "dead_letters", "filtered", "in_doubt")
ADVANCED = (*COUNTERS, "requests", "retries", "throttled")  # what a committed batch adds


def _now() -> datetime:
    return datetime.now(UTC)


def encode_position(position: Position | None) -> str | None:
    """A cursor as JSON text, keeping datetimes and decimals distinguishable from strings."""
    if position is None:
        return None

    def enc(value: Any) -> Any:
        if isinstance(value, datetime):
            return {"datetime": value.isoformat()}
        if isinstance(value, date):
            return {"date": value.isoformat()}
        if isinstance(value, Decimal):
            return {"decimal": str(value)}
        if isinstance(value, UUID):
            return {"uuid": str(value)}
        if isinstance(value, str | int | float | bool) or value is None:
            return value
        raise TypeError(f"a key or timestamp of type {type(value).__name__} cannot be a cursor")

    return json.dumps([enc(position[0]), enc(position[1])])


def decode_position(text: str | None) -> Position | None:
    if text is None:
        return None

    def dec(value: Any) -> Any:
        if isinstance(value, dict):
            if "datetime" in value:
                return datetime.fromisoformat(value["datetime"])
            if "date" in value:
                return date.fromisoformat(value["date"])
            if "decimal" in value:
                return Decimal(value["decimal"])
            if "uuid" in value:
                return UUID(value["uuid"])
        return value

    ts, key = json.loads(text)
    return (dec(ts), dec(key))


def state_tables(metadata: sa.MetaData, prefix: str, schema: str | None) -> dict[str, sa.Table]:
    """The state tables, named ``<prefix>checkpoints`` and so on."""
    ts = sa.DateTime(timezone=True)
    checkpoints = sa.Table(
        f"{prefix}checkpoints",
        metadata,
        sa.Column("destination", sa.String(100), primary_key=True),
        sa.Column("partition", sa.String(10), primary_key=True, comment="UTC day, YYYY-MM-DD"),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("cursor", sa.Text, comment="last committed (timestamp, key), JSON"),
        *(sa.Column(c, sa.BigInteger, nullable=False, default=0) for c in COUNTERS),
        sa.Column("requests", sa.BigInteger, nullable=False, default=0),
        sa.Column("retries", sa.BigInteger, nullable=False, default=0),
        sa.Column("throttled", sa.BigInteger, nullable=False, default=0, comment="429s"),
        sa.Column("fingerprint", sa.String(32), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("started_at", ts, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        sa.Column("completed_at", ts),
        schema=schema,
    )
    batches = sa.Table(
        f"{prefix}batches",
        metadata,
        sa.Column("destination", sa.String(100), primary_key=True),
        sa.Column("partition", sa.String(10), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("first_position", sa.Text, nullable=False),
        sa.Column("last_position", sa.Text, nullable=False),
        sa.Column("event_count", sa.Integer, nullable=False),
        sa.Column("bytes", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False, comment="sent, acked, in_doubt, failed"),
        sa.Column("attempts", sa.Integer, nullable=False, default=0),
        sa.Column("last_http_status", sa.Integer),
        sa.Column("sent_at", ts),
        sa.Column("acked_at", ts),
        schema=schema,
    )
    dead_letters = sa.Table(
        f"{prefix}dead_letters",
        metadata,
        sa.Column("destination", sa.String(100), primary_key=True),
        sa.Column("event_id", sa.String(32), primary_key=True),
        sa.Column("partition", sa.String(10), nullable=False),
        sa.Column("source_key", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("vendor_status", sa.Integer),
        sa.Column("vendor_message", sa.Text),
        sa.Column("payload", sa.Text, nullable=False, comment="JSON: the payload, or the row"),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("replayed_at", ts),
        schema=schema,
    )
    rate_budget = sa.Table(
        f"{prefix}rate_budget",
        metadata,
        sa.Column(
            "key", sa.String(64), primary_key=True, comment="endpoint and credential, hashed"
        ),
        sa.Column(
            "next_slot",
            sa.Double,
            nullable=False,
            comment="seconds since the epoch (rate_limit.shared, etl/shared_budget.py)",
        ),
        schema=schema,
    )
    return {
        "checkpoints": checkpoints,
        "batches": batches,
        "dead_letters": dead_letters,
        "rate_budget": rate_budget,
    }


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


class StateStore:
    """Reads and writes the state tables of one pipeline."""

    def __init__(self, engine: Engine, prefix: str = "etl_", schema: str | None = None) -> None:
        if schema and engine.dialect.name == "sqlite":
            raise ConfigError("state.schema: SQLite has no schemas; use state.table_prefix")
        self.engine = engine
        self.schema = schema
        self.metadata = sa.MetaData()
        tables = state_tables(self.metadata, prefix, schema)
        self.checkpoints = tables["checkpoints"]
        self.batches = tables["batches"]
        self.dead = tables["dead_letters"]
        self.rate_budget = tables["rate_budget"]
        self._build_statements()

    def _build_statements(self) -> None:
        """The statements of every batch, built once with bound parameters (building them per
        batch costs more than running them)."""
        param = sa.bindparam

        def key(table: sa.Table) -> sa.ColumnElement[bool]:
            c = table.c
            return sa.and_(c.destination == param("k_dest"), c.partition == param("k_part"))

        self._insert_batch = sa.insert(self.batches)
        self._insert_dead = sa.insert(self.dead)
        self._ack_batch = (
            sa.update(self.batches)
            .where(key(self.batches), self.batches.c.seq == param("k_seq"))
            .values(
                status="acked",
                attempts=param("v_attempts"),
                last_http_status=param("v_status"),
                acked_at=param("v_now"),
            )
        )
        cp = self.checkpoints.c
        self._advance = (
            sa.update(self.checkpoints)
            .where(key(self.checkpoints))
            .values(
                cursor=param("v_cursor"),
                updated_at=param("v_now"),
                **{name: cp[name] + param(f"d_{name}", type_=sa.BigInteger) for name in ADVANCED},
            )
        )

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
        return [t.fullname for t in (self.checkpoints, self.batches, self.dead, self.rate_budget)]

    # -- partitions ----------------------------------------------------------------------------

    def _key(self, table: sa.Table, destination: str, partition: str) -> sa.ColumnElement[bool]:
        return sa.and_(table.c.destination == destination, table.c.partition == partition)

    def _new_checkpoint(
        self,
        destination: str,
        partition: str,
        status: str,
        fingerprint: str,
        error: str | None = None,
    ) -> sa.Insert:
        now = _now()
        return sa.insert(self.checkpoints).values(
            destination=destination,
            partition=partition,
            status=status,
            fingerprint=fingerprint,
            error=error,
            started_at=now,
            updated_at=now,
            **{c: 0 for c in ADVANCED},
        )

    def load(self, destination: str, partition: str) -> Checkpoint | None:
        stmt = sa.select(self.checkpoints).where(
            self._key(self.checkpoints, destination, partition)
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).mappings().first()
        return _checkpoint(row) if row else None

    def start(
        self, destination: str, partition: str, fingerprint: str, restart: bool = False
    ) -> Checkpoint:
        """Open a partition for sending; batches sent but never acknowledged become in doubt."""
        now = _now()
        with self.engine.begin() as conn:
            cp_key = self._key(self.checkpoints, destination, partition)
            row = conn.execute(sa.select(self.checkpoints).where(cp_key)).mappings().first()
            if row is not None and restart:
                for table in (self.batches, self.dead, self.checkpoints):
                    conn.execute(sa.delete(table).where(self._key(table, destination, partition)))
                row = None
            if row is None:
                conn.execute(self._new_checkpoint(destination, partition, "running", fingerprint))
            else:
                if row["fingerprint"] != fingerprint and row["rows_read"] > 0:
                    raise MappingChangedError(
                        f"destination {destination!r}, partition {partition}: the mapping changed "
                        f"since {row['rows_read']} rows of this partition were processed "
                        f"(fingerprint {row['fingerprint']} -> {fingerprint}); rerun with "
                        f"--restart to send this partition again from its start"
                    )
                conn.execute(
                    sa.update(self.checkpoints)
                    .where(cp_key)
                    .values(status="running", fingerprint=fingerprint, error=None, updated_at=now)
                )
            conn.execute(
                sa.update(self.batches)
                .where(self._key(self.batches, destination, partition))
                .where(self.batches.c.status == "sent")
                .values(status="in_doubt")
            )
            row = conn.execute(sa.select(self.checkpoints).where(cp_key)).mappings().one()
        return _checkpoint(row)

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
        stmt = sa.select(self.batches.c.first_position, self.batches.c.last_position).where(
            self._key(self.batches, destination, partition), self.batches.c.status == "in_doubt"
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
        acknowledged: list[tuple[Batch, SendResult, int]],
        sending: Batch | None = None,
    ) -> None:
        """One transaction: each acknowledged batch (with its result and in-doubt count)
        committed in order, and ``sending`` marked as sent before its request leaves, so that a
        crash leaves it in doubt."""
        with self.engine.begin() as conn:
            for batch, result, in_doubt in acknowledged:
                self._commit(conn, destination, partition, batch, result, in_doubt)
            if sending is not None:
                conn.execute(self._insert_batch, self._sent_row(destination, partition, sending))

    @staticmethod
    def _sent_row(destination: str, partition: str, batch: Batch) -> dict[str, Any]:
        return {
            "destination": destination,
            "partition": partition,
            "seq": batch.seq,
            "first_position": encode_position(batch.first),
            "last_position": encode_position(batch.last),
            "event_count": len(batch.events),
            "bytes": batch.nbytes,
            "status": "sent",
            "attempts": 0,
            "sent_at": _now(),
        }

    def _commit(
        self,
        conn: sa.Connection,
        destination: str,
        partition: str,
        batch: Batch,
        result: SendResult,
        in_doubt: int,
    ) -> None:
        """The batch acknowledged, its dead letters stored, the cursor moved."""
        now = _now()
        dead = list(batch.rejected)
        for index, status, message in result.dead:
            event = batch.events[index]
            dead.append(
                DeadLetter(
                    event.event_id,
                    event.source_key,
                    f"rejected by vendor: {message}",
                    batch.payload(index),
                    status,
                    message,
                )
            )
        keys = {"k_dest": destination, "k_part": partition}
        if batch.events:
            conn.execute(
                self._ack_batch,
                {
                    **keys,
                    "k_seq": batch.seq,
                    "v_attempts": result.requests,
                    "v_status": result.last_status,
                    "v_now": now,
                },
            )
        if dead:
            conn.execute(
                self._insert_dead, [self._dead_row(destination, partition, d, now) for d in dead]
            )
        deltas = {
            "rows_read": batch.rows_read,
            "delivered": len(result.delivered),
            "dead_letters": len(dead),
            "filtered": batch.filtered,
            "in_doubt": in_doubt,
            "requests": result.requests,
            "retries": result.retries,
            "throttled": result.throttled,
        }
        conn.execute(
            self._advance,
            {
                **keys,
                "v_cursor": encode_position(batch.last),
                "v_now": now,
                **{f"d_{name}": value for name, value in deltas.items()},
            },
        )

    @staticmethod
    def _dead_row(destination: str, partition: str, d: DeadLetter, now: datetime) -> dict[str, Any]:
        return {
            "destination": destination,
            "event_id": d.event_id,
            "partition": partition,
            "source_key": d.source_key,
            "reason": d.reason,
            "vendor_status": d.vendor_status,
            "vendor_message": d.vendor_message,
            "payload": json.dumps(d.payload, ensure_ascii=False, default=str),
            "created_at": now,
        }

    def finish(self, destination: str, partition: str, status: str, error: str | None) -> None:
        now = _now()
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(self.checkpoints)
                .where(self._key(self.checkpoints, destination, partition))
                .values(
                    status=status,
                    error=error,
                    updated_at=now,
                    completed_at=now if status == "complete" else None,
                )
            )

    # -- reports -------------------------------------------------------------------------------

    def checkpoints_of(self, destination: str | None = None) -> list[Checkpoint]:
        stmt = sa.select(self.checkpoints).order_by(
            self.checkpoints.c.destination, self.checkpoints.c.partition
        )
        if destination:
            stmt = stmt.where(self.checkpoints.c.destination == destination)
        with self.engine.connect() as conn:
            return [_checkpoint(r) for r in conn.execute(stmt).mappings()]

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
        now = _now()
        with self.engine.begin() as conn:
            for partition, event_id in delivered:
                conn.execute(
                    sa.update(self.dead)
                    .where(self.dead.c.destination == destination, self.dead.c.event_id == event_id)
                    .values(replayed_at=now)
                )
                cp = self.checkpoints.c
                conn.execute(
                    sa.update(self.checkpoints)
                    .where(self._key(self.checkpoints, destination, partition))
                    .values(
                        delivered=cp.delivered + 1, dead_letters=cp.dead_letters - 1, updated_at=now
                    )
                )
            for _, letter in still_dead:
                conn.execute(
                    sa.update(self.dead)
                    .where(
                        self.dead.c.destination == destination,
                        self.dead.c.event_id == letter.event_id,
                    )
                    .values(
                        reason=letter.reason,
                        vendor_status=letter.vendor_status,
                        vendor_message=letter.vendor_message,
                    )
                )


def _checkpoint(row: Any) -> Checkpoint:
    return Checkpoint(
        destination=row["destination"],
        partition=row["partition"],
        status=row["status"],
        cursor=decode_position(row["cursor"]),
        rows_read=row["rows_read"],
        delivered=row["delivered"],
        dead_letters=row["dead_letters"],
        filtered=row["filtered"],
        in_doubt=row["in_doubt"],
        requests=row["requests"],
        retries=row["retries"],
        throttled=row["throttled"],
        fingerprint=row["fingerprint"],
        error=row["error"],
        started_at=row["started_at"],
        updated_at=row["updated_at"],
    )


def generate_ddl(dialect_name: str = "postgresql", prefix: str = "etl_") -> str:
    """The CREATE TABLE statements of the state tables, for sql/state_tables.sql."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialects: dict[str, sa.Dialect] = {
        "postgresql": postgresql.dialect(),  # type: ignore[no-untyped-call]
        "sqlite": sqlite.dialect(),
    }
    dialect = dialects[dialect_name]
    metadata = sa.MetaData()
    tables = state_tables(metadata, prefix, None)
    parts = [
        "\n".join(
            line.rstrip()
            for line in str(sa.schema.CreateTable(t).compile(dialect=dialect)).strip().splitlines()
        )
        + ";"
        for t in tables.values()
    ]
    header = (
        f"-- State tables of etl-backfill ({dialect_name}, prefix {prefix!r}).\n"
        "-- Generated by `etl state-ddl` from etl/state.py, which creates them when absent;\n"
        "-- with state.schema set they are created in that schema.\n\n"
    )
    return header + "\n\n".join(parts) + "\n"


def open_store(config: PipelineConfig, engine: Engine | None = None) -> StateStore:
    """The pipeline's state store, its tables created if absent. Pass the source's engine to
    share it when the state lives in the source database."""
    from etl.source import make_engine

    if engine is None or config.state.url not in (None, config.source.url):
        engine = make_engine(config.state_url)
    store = StateStore(engine, config.state.table_prefix, config.state.schema_name)
    store.ensure()
    return store
