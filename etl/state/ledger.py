"""The batch ledger and the per-row delivery log: what a batch writes, and when.

- Before a batch is sent, each of its slices gets a ledger row, ``sent``, with the source keys
  of its events and, per event, the requests that may have landed (``unknown``: one, its first
  request), in the transaction that commits the batches answered before it; a retry or a
  request that surely did not land updates that count; a batch none of whose requests left
  (the run stopped first) is forgotten.
- When the vendor's answers are in, one transaction commits the batch: its ledger rows
  acknowledged, its dead letters stored, its delivery-log rows written (each source row
  delivered, in doubt, dead letter or filtered), and each partition's counters and cursor
  moved. What the tables say is therefore always what the vendor has, and a crash leaves
  exact in-doubt counts.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from etl.events import (
    Batch,
    DeadLetter,
    SendResult,
    Slice,
    SliceCounts,
    event_id_for,
    near_miss_text,
)
from etl.state.deliveries import DeliveryLog, log_row
from etl.state.positions import encode_position
from etl.state.tables import ADVANCED, StateTables
from etl.statuses import BatchStatus


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Acknowledged:
    """A batch with the vendor's answers, ready to commit."""

    batch: Batch
    result: SendResult
    in_doubt: Counter[int] = field(default_factory=Counter)  # event index -> copies maybe extra
    # partitions whose cursor stays where it is: re-checked ones (their cursor is at their end),
    # or all of the batch's when it is committed out of order
    hold_cursor: frozenset[str] = frozenset()
    kind: str = "run"  # or "replay": dead letters sent again
    counts: list[SliceCounts] = field(init=False)  # per slice

    def __post_init__(self) -> None:
        batch, result = self.batch, self.result
        everything = len(result.delivered) == batch.size
        delivered = set() if everything else set(result.delivered)
        dead = {i for i, _, _ in result.dead}
        self.counts = []
        for part in batch.slices:
            span = range(part.start, part.end)
            self.counts.append(
                SliceCounts(
                    len(span) if everything else sum(1 for i in span if i in delivered),
                    sum(1 for i in dead if i in span),
                    sum(n for i, n in self.in_doubt.items() if i in span),
                )
            )


class Ledger:
    """The statements of every batch, built once with bound parameters (building them per batch
    costs more than running them)."""

    def __init__(self, tables: StateTables, log: DeliveryLog) -> None:
        param = sa.bindparam
        self.tables = tables
        self.log = log

        def key(table: sa.Table) -> sa.ColumnElement[bool]:
            c = table.c
            return sa.and_(c.destination == param("k_dest"), c.partition == param("k_part"))

        batches, checkpoints = tables.batches, tables.checkpoints
        self._insert_batch = sa.insert(batches)
        self._insert_dead = sa.insert(tables.dead_letters)
        self._insert_log = sa.insert(tables.deliveries)
        self._ack = (
            sa.update(batches)
            .where(key(batches), batches.c.seq == param("k_seq"))
            .values(
                status=BatchStatus.ACKED,
                attempts=param("v_attempts"),
                last_http_status=param("v_status"),
                acked_at=param("v_now"),
            )
        )
        self._unknown = (
            sa.update(batches)
            .where(key(batches), batches.c.seq == param("k_seq"))
            .values(attempts=param("v_attempts"), unknown=param("v_unknown"))
        )
        cp = checkpoints.c
        counters = {name: cp[name] + param(f"d_{name}", type_=sa.BigInteger) for name in ADVANCED}
        counters["near_miss"] = sa.func.coalesce(cp.near_miss, param("v_near_miss", type_=sa.Text))
        self._advance = (
            sa.update(checkpoints)
            .where(key(checkpoints))
            .values(cursor=param("v_cursor"), updated_at=param("v_now"), **counters)
        )
        self._count = (
            sa.update(checkpoints)
            .where(key(checkpoints))
            .values(updated_at=param("v_now"), **counters)
        )

    # -- while the requests are out -------------------------------------------------------------

    def mark_sent(
        self, conn: sa.Connection, destination: str, batch: Batch, unknown: list[int], kind: str
    ) -> None:
        """A ledger row per slice with events, ``sent``: written before the first request."""
        at = now()
        rows = [
            {
                "destination": destination,
                "partition": s.partition,
                "seq": s.seq,
                "first_position": encode_position(s.first),
                "last_position": encode_position(s.last),
                "event_count": s.end - s.start,
                "bytes": sum(map(len, batch.encoded[s.start : s.end])),
                "status": BatchStatus.SENT,
                "attempts": 1,
                "sent_at": at,
                "batch_id": batch.batch_id,
                "kind": kind,
                "event_keys": s.keys_json(batch),
                "unknown": _unknown_text(unknown[s.start : s.end]),
            }
            for s in _with_events(batch)
        ]
        conn.execute(self._insert_batch, rows)

    def note_unknown(
        self, conn: sa.Connection, destination: str, batch: Batch, unknown: list[int], attempts: int
    ) -> None:
        """The requests of each event whose fate is unknown, after a retry left or an answer
        showed that a request did not land."""
        rows = [
            {
                "k_dest": destination,
                "k_part": s.partition,
                "k_seq": s.seq,
                "v_attempts": attempts,
                "v_unknown": _unknown_text(unknown[s.start : s.end]),
            }
            for s in _with_events(batch)
        ]
        conn.execute(self._unknown, rows)

    def forget(self, conn: sa.Connection, destination: str, batch: Batch) -> None:
        """The ledger rows of a batch none of whose requests left (a graceful stop)."""
        b = self.tables.batches.c
        conn.execute(
            sa.delete(self.tables.batches).where(
                b.destination == destination, b.batch_id == batch.batch_id
            )
        )

    # -- when the answers are in ----------------------------------------------------------------

    def commit(self, conn: sa.Connection, destination: str, done: Acknowledged) -> None:
        if done.kind == "replay":
            self._commit_replay(conn, destination, done)
        else:
            self._commit_run(conn, destination, done)

    def _commit_replay(self, conn: sa.Connection, destination: str, done: Acknowledged) -> None:
        """Dead letters sent again: the delivered ones leave the dead letters for the delivered
        count (their log rows say so), the others keep the vendor's new reason."""
        at = now()
        t = self.tables
        batch, result = done.batch, done.result
        dead, cp = t.dead_letters.c, t.checkpoints.c
        vendor_dead = {i: (status, message) for i, status, message in result.dead}
        for part in batch.slices:
            keys = {"k_dest": destination, "k_part": part.partition}
            ack = {"k_seq": part.seq, "v_attempts": result.requests, "v_status": result.last_status}
            conn.execute(self._ack, {**keys, **ack, "v_now": at})
            delivered = [i for i in range(part.start, part.end) if i in set(result.delivered)]
            copies = sum(done.in_doubt[i] for i in delivered)
            replayed: dict[str, tuple[int, int]] = {}
            for i in range(part.start, part.end):
                event_id = event_id_for(destination, batch.keys[i])
                letter = (dead.destination == destination, dead.event_id == event_id)
                if i in vendor_dead:
                    status, message = vendor_dead[i]
                    reason = f"rejected by vendor: {message}"
                    conn.execute(
                        sa.update(t.dead_letters)
                        .where(*letter)
                        .values(reason=reason, vendor_status=status, vendor_message=message)
                    )
                    continue
                conn.execute(sa.update(t.dead_letters).where(*letter).values(replayed_at=at))
                replayed[batch.keys[i]] = (done.in_doubt[i], zlib.crc32(batch.encoded[i]))
            self.log.mark_replayed(conn, destination, part.partition, replayed)
            conn.execute(
                sa.update(t.checkpoints)
                .where(cp.destination == destination, cp.partition == part.partition)
                .values(
                    delivered=cp.delivered + len(delivered),
                    dead_letters=cp.dead_letters - len(delivered),
                    in_doubt=cp.in_doubt + copies,
                    requests=cp.requests + (result.requests if part is batch.slices[0] else 0),
                    updated_at=at,
                )
            )

    def _commit_run(self, conn: sa.Connection, destination: str, done: Acknowledged) -> None:
        """The batch acknowledged: per slice, its ledger row, dead letters, log rows, counters
        and cursor. The batch's requests, retries and 429s count in its first slice."""
        at = now()
        batch, result = done.batch, done.result
        delivered = set(result.delivered)
        vendor_dead = {i: (status, message) for i, status, message in result.dead}
        log = []
        # one statement each for all the slices (a batch of small days holds hundreds)
        acks: list[dict[str, object]] = []
        advances: list[dict[str, object]] = []
        counted: list[dict[str, object]] = []
        for index, (part, counts) in enumerate(zip(batch.slices, done.counts, strict=True)):
            keys = {"k_dest": destination, "k_part": part.partition}
            if part.end > part.start:
                ack = {
                    "k_seq": part.seq,
                    "v_attempts": result.requests,
                    "v_status": result.last_status,
                }
                acks.append({**keys, **ack, "v_now": at})
            else:  # rows without a request: a ledger row all the same, that the log points to
                conn.execute(self._insert_batch, _quiet_slice(destination, batch, part, at))
            dead = _dead_letters(destination, batch, part, vendor_dead)
            if dead:
                rows = [dead_letter_row(destination, part.partition, d, at) for d in dead]
                conn.execute(self._insert_dead, rows)
            log.append(_log_row(destination, batch, part, delivered, dead, done.in_doubt, at))
            first = index == 0
            deltas = {
                "rows_read": part.rows_read,
                "delivered": counts.delivered,
                "dead_letters": len(dead),
                "filtered": len(part.filtered),
                "in_doubt": counts.in_doubt,
                "requests": result.requests if first else 0,
                "retries": result.retries if first else 0,
                "throttled": result.throttled if first else 0,
                "near_misses": len(part.near_misses),
            }
            advance: dict[str, object] = {f"d_{name}": value for name, value in deltas.items()}
            first_miss = part.near_misses[0] if part.near_misses else None
            advance["v_near_miss"] = near_miss_text(first_miss) if first_miss else None
            if part.partition not in done.hold_cursor:
                cursor = {"v_cursor": encode_position(part.last)}
                advances.append({**keys, **cursor, "v_now": at, **advance})
            else:
                counted.append({**keys, "v_now": at, **advance})
        for statement, rows in (
            (self._ack, acks),
            (self._advance, advances),
            (self._count, counted),
        ):
            if rows:
                conn.execute(statement, rows)
        conn.execute(self._insert_log, log)


def _unknown_text(counts: list[int]) -> str:
    """The ledger's ``unknown``: a JSON list, or one number when every event has it."""
    if counts and counts.count(counts[0]) == len(counts):
        return str(counts[0])
    return json.dumps(counts)


def unknown_counts(text: str | None, events: int) -> list[int]:
    """The ledger's ``unknown`` read back, a number per event."""
    value = json.loads(text or "[]")
    return [value] * events if isinstance(value, int) else list(value)


def _with_events(batch: Batch) -> list[Slice]:
    return [s for s in batch.slices if s.end > s.start]


def _dead_letters(
    destination: str, batch: Batch, part: Slice, vendor_dead: dict[int, tuple[int | None, str]]
) -> list[DeadLetter]:
    """The slice's rows rejected before sending, and its events the vendor rejected."""
    dead = list(part.rejected)
    for index in range(part.start, part.end):
        if index in vendor_dead:
            status, message = vendor_dead[index]
            reason = f"rejected by vendor: {message}"
            payload = batch.payload(index)
            key = batch.keys[index]
            event_id = event_id_for(destination, key)
            dead.append(DeadLetter(event_id, key, reason, payload, status, message))
    return dead


def _log_row(
    destination: str,
    batch: Batch,
    part: Slice,
    delivered: set[int],
    dead: list[DeadLetter],
    in_doubt: Counter[int],
    at: datetime,
) -> dict[str, Any]:
    """The slice's delivery-log row: its events, then the rows rejected before sending, then
    the filtered ones."""
    start, end = part.start, part.end
    if len(delivered) == batch.size:
        codes = "d" * (end - start)
    else:
        codes = "".join("d" if i in delivered else "x" for i in range(start, end))
    crc = zlib.crc32
    hashes = [crc(encoded) for encoded in batch.encoded[start:end]]
    if part.rejected or part.filtered:
        keys = batch.keys[start:end] + [d.source_key for d in part.rejected] + part.filtered
        keys_text = json.dumps(keys)
        hashes += [payload_hash(d.payload) for d in part.rejected] + [0] * len(part.filtered)
        codes += "x" * len(part.rejected) + "f" * len(part.filtered)
    else:
        keys_text = part.keys_json(batch)
    copies = {i - start: n for i, n in in_doubt.items() if start <= i < end and n}
    return log_row(destination, part.partition, part.seq, keys_text, codes, hashes, copies, at)


def _quiet_slice(destination: str, batch: Batch, part: Slice, at: datetime) -> dict[str, Any]:
    """The ledger row of a slice whose rows needed no request (filtered, rejected)."""
    return {
        "destination": destination,
        "partition": part.partition,
        "seq": part.seq,
        "first_position": encode_position(part.first),
        "last_position": encode_position(part.last),
        "event_count": 0,
        "bytes": 0,
        "status": BatchStatus.ACKED,
        "attempts": 0,
        "acked_at": at,
        "batch_id": batch.batch_id,
        "kind": "run",
    }


def payload_hash(payload: dict[str, Any]) -> int:
    """CRC-32 of a payload (or a rejected row) as JSON: what a re-check compares."""
    return zlib.crc32(json.dumps(payload, sort_keys=True, default=str).encode())


def dead_letter_row(
    destination: str, partition: str, d: DeadLetter, at: datetime
) -> dict[str, Any]:
    return {
        "destination": destination,
        "event_id": d.event_id,
        "partition": partition,
        "source_key": d.source_key,
        "reason": d.reason,
        "vendor_status": d.vendor_status,
        "vendor_message": d.vendor_message,
        "payload": json.dumps(d.payload, ensure_ascii=False, default=str),
        "created_at": at,
    }
