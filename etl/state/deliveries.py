"""The per-row delivery log: which source row went where, and with what outcome.

Stored packed, one log row per slice of a batch (destination, partition, seq: the key of its
ledger row, which says when and in which request): the slice's source keys in order and, per
key, its outcome, the hash of its content as sent, the copies that may be extra and whether the
source has lost it since (deleted, or moved to another day). It is written in the transaction
that commits the batch, one INSERT a slice: a database row per source row costs SQLite about
2.5 µs, half of a fast run's time.

The log is what lets a later run send the rows added to a day after it was sent, and nothing
else: a partition being resumed or re-checked skips the rows its log holds.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from etl.state.tables import StateTables
from etl.statuses import Outcome

# one letter per row; "in doubt" is a delivered row with copies that may be extra
CODES = {"d": Outcome.DELIVERED, "x": Outcome.DEAD_LETTER, "f": Outcome.FILTERED}
GONE = ("deleted", "moved")  # how a row left the source's partition after it was read


def _now() -> datetime:
    return datetime.now(UTC)


def _pack_hashes(hashes: list[int]) -> str:
    return struct.pack(f"<{len(hashes)}I", *hashes).hex()


def _unpack_hashes(text: str) -> list[int]:
    raw = bytes.fromhex(text)
    return list(struct.unpack(f"<{len(raw) // 4}I", raw))


def log_row(
    destination: str,
    partition: str,
    seq: int,
    keys: str,
    codes: str,
    hashes: list[int],
    in_doubt: dict[int, int],
    at: datetime,
) -> dict[str, Any]:
    """The log row of a slice: the source ``keys`` of its rows in order (a JSON list), a
    letter of :data:`CODES` and a CRC-32 per key, the copies maybe extra by index (only those
    with some)."""
    return {
        "destination": destination,
        "partition": partition,
        "seq": seq,
        "source_keys": keys,
        "outcomes": codes,
        "content_hashes": _pack_hashes(hashes),
        "in_doubt": json.dumps(in_doubt) if in_doubt else None,
        "gone": None,
        "recorded_at": at,
    }


@dataclass(frozen=True)
class Entry:
    """What the log holds of one source row, and where (its slice and place in it)."""

    partition: str
    seq: int
    index: int
    outcome: Outcome
    content_hash: int | None
    in_doubt: int
    gone: str | None  # deleted or moved (see GONE), since a re-check


class LogSlice:
    """One log row, decoded; changed in place and written back by :meth:`DeliveryLog._rewrite`."""

    def __init__(self, row: Any) -> None:
        self.partition: str = row.partition
        self.seq: int = row.seq
        self.keys: list[str] = json.loads(row.source_keys)
        self.codes = list(row.outcomes)
        self.hashes = _unpack_hashes(row.content_hashes)
        self.in_doubt = {int(i): n for i, n in json.loads(row.in_doubt or "{}").items()}
        self.gone = {int(i): tuple(v) for i, v in json.loads(row.gone or "{}").items()}
        self.recorded_at = row.recorded_at

    def entry(self, i: int) -> Entry:
        copies = self.in_doubt.get(i, 0)
        outcome = CODES[self.codes[i]]
        if outcome is Outcome.DELIVERED and copies:
            outcome = Outcome.IN_DOUBT
        digest = self.hashes[i] if outcome is not Outcome.FILTERED else None
        gone = self.gone[i][1] if i in self.gone else None
        return Entry(self.partition, self.seq, i, outcome, digest, copies, gone)

    def entries(self) -> Iterator[tuple[str, Entry]]:
        for i, key in enumerate(self.keys):
            yield key, self.entry(i)

    def values(self) -> dict[str, Any]:
        return {
            "outcomes": "".join(self.codes),
            "content_hashes": _pack_hashes(self.hashes),
            "in_doubt": json.dumps(self.in_doubt) if self.in_doubt else None,
            "gone": json.dumps(self.gone) if self.gone else None,
        }


Change = Callable[[LogSlice, int], None]


class DeliveryLog:
    def __init__(self, engine: Engine, tables: StateTables) -> None:
        self.engine = engine
        self.tables = tables
        self.table = tables.deliveries

    def _slices(self, conn: sa.Connection, *where: Any) -> Iterator[LogSlice]:
        for row in conn.execute(sa.select(self.table).where(*where)):
            yield LogSlice(row)

    def known(self, destination: str, partition: str) -> dict[str, Entry]:
        """Every row the log holds in a partition."""
        t = self.table.c
        with self.engine.connect() as conn:
            slices = self._slices(conn, t.destination == destination, t.partition == partition)
            return {key: entry for s in slices for key, entry in s.entries()}

    def history(self, destination: str, key: str) -> list[dict[str, Any]]:
        """The log's rows of one source row, with the request that carried each."""
        t, b = self.table.c, self.tables.batches.c
        stmt = (
            sa.select(
                self.table,
                *(b[c] for c in ("batch_id", "sent_at", "acked_at", "attempts", "event_count")),
                b.last_http_status,
            )
            .outerjoin(
                self.tables.batches,
                sa.and_(b.destination == t.destination, b.partition == t.partition, b.seq == t.seq),
            )
            .where(
                t.destination == destination,
                t.source_keys.contains(json.dumps(key), autoescape=True),
            )
            .order_by(t.recorded_at)
        )
        found = []
        with self.engine.connect() as conn:
            for row in conn.execute(stmt):
                s = LogSlice(row)
                for i, k in enumerate(s.keys):
                    if k != key:
                        continue
                    e = s.entry(i)
                    found.append({
                        "partition": s.partition,
                        "seq": s.seq,
                        "outcome": e.outcome,
                        "in_doubt": e.in_doubt,
                        "gone": s.gone.get(i),
                        "recorded_at": s.recorded_at,
                        **{c: getattr(row, c) for c in ("batch_id", "sent_at", "acked_at")},
                        "attempts": row.attempts,
                        "last_http_status": row.last_http_status,
                        "in_request": i < (row.event_count or 0),  # events come first
                    })  # fmt: skip
        return found

    # -- changes after the fact (rare: a re-check, a replay) ---------------------------------

    def _rewrite(
        self,
        conn: sa.Connection,
        destination: str,
        changes: Iterable[tuple[Entry, Change]],
    ) -> None:
        """Apply each change to its entry's slice, and write the changed slices back."""
        by_slice: dict[tuple[str, int], list[tuple[int, Change]]] = {}
        for entry, change in changes:
            by_slice.setdefault((entry.partition, entry.seq), []).append((entry.index, change))
        t = self.table.c
        for (partition, seq), edits in by_slice.items():
            where = (t.destination == destination, t.partition == partition, t.seq == seq)
            for s in list(self._slices(conn, *where)):
                for index, change in edits:
                    change(s, index)
                conn.execute(sa.update(self.table).where(*where).values(**s.values()))

    def mark_replayed(
        self,
        conn: sa.Connection,
        destination: str,
        partition: str,
        delivered: dict[str, tuple[int, int]],
    ) -> None:
        """Dead letters of a partition delivered by a replay: key -> (copies maybe extra, hash
        of the payload sent)."""
        t = self.table.c
        where = (t.destination == destination, t.partition == partition)
        entries = {k: e for s in self._slices(conn, *where) for k, e in s.entries()}

        def replayed(copies: int, digest: int) -> Change:
            def change(s: LogSlice, i: int) -> None:
                s.codes[i] = "d"
                s.hashes[i] = digest
                if copies:
                    s.in_doubt[i] = s.in_doubt.get(i, 0) + copies

            return change

        changes = [
            (entries[key], replayed(*values)) for key, values in delivered.items() if key in entries
        ]
        self._rewrite(conn, destination, changes)

    def update_rows(
        self,
        destination: str,
        gone: list[tuple[Entry, str]],
        back: list[Entry],
        hashes: list[tuple[Entry, int | None]],
    ) -> None:
        """After a re-check: rows the partition no longer holds (deleted or moved), rows that
        came back, and the new content hashes of rows that changed since they were sent (so
        that they count once)."""
        at = _now().isoformat()

        def leaving(how: str) -> Change:
            def change(s: LogSlice, i: int) -> None:
                s.gone[i] = (at, how)

            return change

        def returned(s: LogSlice, i: int) -> None:
            s.gone.pop(i, None)

        def rehash(digest: int | None) -> Change:
            def change(s: LogSlice, i: int) -> None:
                s.hashes[i] = digest or 0

            return change

        changes: list[tuple[Entry, Change]] = [(e, leaving(how)) for e, how in gone]
        changes += [(e, returned) for e in back]
        changes += [(e, rehash(digest)) for e, digest in hashes]
        if changes:
            with self.engine.begin() as conn:
                self._rewrite(conn, destination, changes)

    def purge(self, destination: str, older_than: datetime) -> int:
        """Forget the log recorded before a time (``state.delivery_log_retention_days``): the
        late rows of the partitions it covered can no longer be told apart, so those partitions
        are marked and not re-checked again. Returns the log rows removed."""
        t, c = self.table.c, self.tables.checkpoints.c
        old = (t.destination == destination, t.recorded_at < older_than)
        with self.engine.begin() as conn:
            partitions = sa.select(t.partition).where(*old).distinct()
            conn.execute(
                sa.update(self.tables.checkpoints)
                .where(c.destination == destination, c.partition.in_(partitions))
                .where(c.log_purged_at.is_(None))
                .values(log_purged_at=_now())
            )
            removed = conn.execute(sa.delete(self.table).where(*old)).rowcount
        return int(removed or 0)
