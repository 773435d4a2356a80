"""The per-row delivery log: which source row went where, and with what outcome.

One row per destination, partition and source key, written with the slice that carried it (see
:mod:`etl.state.ledger`; the slice's ledger row says when and in which request). It is what
lets a later run send the rows added to a day after it was sent, and nothing else: a partition
being resumed or re-checked skips the rows its log holds.

Keyed by partition first, so that writing a day's rows stays within that day's part of the
index (writes keyed by the source key alone land all over it: three times slower on SQLite).
A row whose timestamp changed so that it moved to another day is found when the day it left is
re-checked: its rows are looked for elsewhere there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from etl.state.ledger import now
from etl.state.prepared import Prepared
from etl.state.tables import StateTables

_COUNTER_OF = {
    "delivered": "delivered",
    "in_doubt": "delivered",
    "dead_letter": "dead_letters",
    "filtered": "filtered",
}
_IN_CHUNKS = 1000  # keys per IN (...) list


@dataclass(frozen=True)
class Entry:
    """What the log holds of one source row."""

    partition: str
    outcome: str
    content_hash: int | None
    in_doubt: int
    deleted: bool


class DeliveryLog:
    def __init__(self, engine: Engine, tables: StateTables) -> None:
        self.engine = engine
        self.tables = tables
        self.table = tables.deliveries
        t = self.table.c
        self._columns = (
            t.source_key,
            t.partition,
            t.outcome,
            t.content_hash,
            t.in_doubt,
            t.deleted_at,
        )
        self._find = Prepared(
            lambda n: sa.select(*self._columns).where(
                t.destination == sa.bindparam("d"),
                t.source_key.in_([sa.bindparam(f"k{i}") for i in range(n)]),
            )
        )

    def known(self, destination: str, partition: str) -> dict[str, Entry]:
        """Every row the log holds in a partition."""
        t = self.table.c
        stmt = sa.select(*self._columns).where(
            t.destination == destination, t.partition == partition
        )
        with self.engine.connect() as conn:
            return {row[0]: Entry(*row[1:5], row[5] is not None) for row in conn.execute(stmt)}

    def find(self, destination: str, keys: list[str]) -> list[tuple[str, Entry]]:
        """The log's rows of these keys, in whatever partition (a key may be in two: it moved)."""
        found: list[tuple[str, Entry]] = []
        with self.engine.connect() as conn:
            for start in range(0, len(keys), _IN_CHUNKS):
                chunk = keys[start : start + _IN_CHUNKS]
                params = {"d": destination, **{f"k{i}": k for i, k in enumerate(chunk)}}
                for row in self._find.execute(conn, params, len(chunk)):
                    key, partition, outcome, digest, copies, gone = tuple(row)
                    found.append((key, Entry(partition, outcome, digest, copies, gone is not None)))
        return found

    def forget_moved(
        self, destination: str, partition: str, moved: dict[str, Entry], doubled: bool
    ) -> None:
        """Rows gone from ``partition`` because they moved to another day, where they were sent
        again: their rows here are forgotten and their counts leave with them; the day they
        moved to counts each as changed and, when the vendor keeps both copies (``doubled``),
        one copy in doubt."""
        if not moved:
            return
        t = self.table.c
        here = (t.destination == destination, t.partition == partition)
        with self.engine.begin() as conn:
            for key, target in moved.items():
                old = conn.execute(
                    sa.select(t.outcome, t.in_doubt, t.deleted_at).where(*here, t.source_key == key)
                ).first()
                conn.execute(sa.delete(self.table).where(*here, t.source_key == key))
                if old is not None:
                    gone = Entry(partition, old[0], None, old[1], old[2] is not None)
                    self._count(conn, destination, partition, gone, -1)
                self._bump(conn, destination, target.partition, doubled)

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

    def _bump(self, conn: sa.Connection, destination: str, partition: str, doubled: bool) -> None:
        c = self.tables.checkpoints.c
        values: dict[str, Any] = {"changed": c.changed + 1, "updated_at": now()}
        if doubled:
            values["in_doubt"] = c.in_doubt + 1
        conn.execute(
            sa.update(self.tables.checkpoints)
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

    def set_hashes(self, destination: str, partition: str, hashes: dict[str, int | None]) -> None:
        """The content hashes of rows that changed since they were sent (counted once)."""
        if not hashes:
            return
        t = self.table.c
        stmt = (
            sa.update(self.table)
            .where(
                t.destination == destination,
                t.partition == partition,
                t.source_key == sa.bindparam("k"),
            )
            .values(content_hash=sa.bindparam("h"))
        )
        with self.engine.begin() as conn:
            conn.execute(stmt, [{"k": k, "h": h} for k, h in hashes.items()])

    def history(self, destination: str, key: str) -> list[dict[str, Any]]:
        """The log's rows of one source row, with the slice and request that carried each."""
        t, b = self.table.c, self.tables.batches.c
        stmt = (
            sa.select(
                self.table,
                b.batch_id,
                b.sent_at,
                b.acked_at,
                b.attempts,
                b.last_http_status,
            )
            .outerjoin(
                self.tables.batches,
                sa.and_(b.destination == t.destination, b.partition == t.partition, b.seq == t.seq),
            )
            .where(t.destination == destination, t.source_key == key)
        )
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(stmt).mappings()]

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
