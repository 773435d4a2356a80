"""The per-row delivery log: which source row went where, when, and with what outcome.

One row per destination and source key, written with the batch that carried it (see
:mod:`etl.state.ledger`). It is what lets a later run send the rows added to a day after it was
sent, and nothing else: the rows it holds have had their outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from etl.state.ledger import now
from etl.state.tables import StateTables

_COUNTER_OF = {
    "delivered": "delivered",
    "in_doubt": "delivered",
    "dead_letter": "dead_letters",
    "filtered": "filtered",
}
_IN_CHUNKS = 500  # keys per IN (...) list


@dataclass(frozen=True)
class Entry:
    """What the log holds of one source row."""

    partition: str
    outcome: str
    content_hash: int | None
    in_doubt: int
    deleted: bool


@dataclass(frozen=True)
class Move:
    """A row read in another partition than the log holds it in (its timestamp changed)."""

    key: str
    entry: Entry
    to: str


class DeliveryLog:
    def __init__(self, engine: Engine, tables: StateTables) -> None:
        self.engine = engine
        self.tables = tables
        self.table = tables.deliveries

    def _entry(self, row: Any) -> Entry:
        return Entry(
            row.partition, row.outcome, row.content_hash, row.in_doubt, row.deleted_at is not None
        )

    def _select(self) -> sa.Select[Any]:
        t = self.table.c
        return sa.select(
            t.source_key, t.partition, t.outcome, t.content_hash, t.in_doubt, t.deleted_at
        )

    def known(self, destination: str, partition: str) -> dict[str, Entry]:
        """Every row the log holds in a partition."""
        t = self.table.c
        stmt = self._select().where(t.destination == destination, t.partition == partition)
        with self.engine.connect() as conn:
            return {row.source_key: self._entry(row) for row in conn.execute(stmt)}

    def find(self, destination: str, keys: list[str]) -> dict[str, Entry]:
        """The log's rows of these keys, in whatever partition."""
        t = self.table.c
        found: dict[str, Entry] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(keys), _IN_CHUNKS):
                chunk = keys[start : start + _IN_CHUNKS]
                stmt = self._select().where(t.destination == destination, t.source_key.in_(chunk))
                found.update((row.source_key, self._entry(row)) for row in conn.execute(stmt))
        return found

    def move(self, destination: str, moves: list[Move]) -> None:
        """Rows now in another partition: their log rows, dead letters and counts move there."""
        if not moves:
            return
        t, d = self.table.c, self.tables.dead_letters.c
        with self.engine.begin() as conn:
            for move in moves:
                conn.execute(
                    sa.update(self.table)
                    .where(t.destination == destination, t.source_key == move.key)
                    .values(partition=move.to, deleted_at=None)
                )
                conn.execute(
                    sa.update(self.tables.dead_letters)
                    .where(d.destination == destination, d.source_key == move.key)
                    .where(d.partition == move.entry.partition)
                    .values(partition=move.to)
                )
                self._count(conn, destination, move.entry.partition, move.entry, -1)
                self._count(conn, destination, move.to, move.entry, +1)

    def _count(
        self, conn: sa.Connection, destination: str, partition: str, entry: Entry, sign: int
    ) -> None:
        cp = self.tables.checkpoints
        c = cp.c
        counter = _COUNTER_OF[entry.outcome]
        values: dict[str, Any] = {
            "rows_read": c.rows_read + sign,
            counter: c[counter] + sign,
            "in_doubt": c.in_doubt + sign * entry.in_doubt,
            "updated_at": now(),
        }
        if entry.deleted:
            values["deleted"] = c.deleted + sign
        conn.execute(
            sa.update(cp)
            .where(c.destination == destination, c.partition == partition)
            .values(**values)
        )

    def set_deleted(
        self, destination: str, partition: str, gone: list[str], back: list[str]
    ) -> None:
        """Rows of the partition that the source no longer holds, and rows that came back."""
        t = self.table.c
        where = (t.destination == destination, t.partition == partition)
        with self.engine.begin() as conn:
            for keys, value in ((gone, now()), (back, None)):
                for start in range(0, len(keys), _IN_CHUNKS):
                    chunk = keys[start : start + _IN_CHUNKS]
                    conn.execute(
                        sa.update(self.table)
                        .where(*where, t.source_key.in_(chunk))
                        .values(deleted_at=value)
                    )

    def history(self, destination: str, key: str) -> dict[str, Any] | None:
        """The log's row of one source row, with the batch that carried it."""
        t, b = self.table.c, self.tables.batches.c
        stmt = (
            sa.select(self.table, b.sent_at, b.acked_at, b.attempts, b.last_http_status)
            .outerjoin(
                self.tables.batches,
                sa.and_(
                    b.destination == t.destination,
                    b.partition == t.partition,
                    b.batch_id == t.batch_id,
                ),
            )
            .where(t.destination == destination, t.source_key == key)
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).mappings().first()
        return dict(row) if row else None

    def purge(self, destination: str, before: date) -> int:
        """Forget the log of the partitions before a day (state.delivery_log_retention_days):
        their late rows can no longer be told apart, so those partitions are marked."""
        t, c = self.table.c, self.tables.checkpoints.c
        old = sa.and_(t.destination == destination, t.partition < before.isoformat())
        with self.engine.begin() as conn:
            removed = conn.execute(sa.delete(self.table).where(old)).rowcount
            conn.execute(
                sa.update(self.tables.checkpoints)
                .where(c.destination == destination, c.partition < before.isoformat())
                .where(c.log_purged_at.is_(None), c.rows_read > 0)
                .values(log_purged_at=now())
            )
        return int(removed or 0)
