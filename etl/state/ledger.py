"""The batch ledger: what one acknowledged batch writes, in the transaction that records it.

Every acknowledged batch is committed in one transaction: its ledger row, its dead letters, the
partition's counters and cursor together, so that what the tables say is always what the vendor
has. The same transaction marks the next batch as sent, before its request leaves.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from etl.events import Batch, DeadLetter, SendResult
from etl.state.positions import encode_position
from etl.state.tables import ADVANCED, StateTables

Acknowledged = tuple[Batch, SendResult, int]  # a batch, what the vendor did, events in doubt


def now() -> datetime:
    return datetime.now(UTC)


class Ledger:
    """The statements of every batch, built once with bound parameters (building them per batch
    costs more than running them)."""

    def __init__(self, tables: StateTables) -> None:
        param = sa.bindparam

        def key(table: sa.Table) -> sa.ColumnElement[bool]:
            c = table.c
            return sa.and_(c.destination == param("k_dest"), c.partition == param("k_part"))

        batches, checkpoints = tables.batches, tables.checkpoints
        self._insert_batch = sa.insert(batches)
        self._insert_dead = sa.insert(tables.dead_letters)
        self._ack_batch = (
            sa.update(batches)
            .where(key(batches), batches.c.seq == param("k_seq"))
            .values(
                status="acked",
                attempts=param("v_attempts"),
                last_http_status=param("v_status"),
                acked_at=param("v_now"),
            )
        )
        cp = checkpoints.c
        self._advance = (
            sa.update(checkpoints)
            .where(key(checkpoints))
            .values(
                cursor=param("v_cursor"),
                updated_at=param("v_now"),
                **{name: cp[name] + param(f"d_{name}", type_=sa.BigInteger) for name in ADVANCED},
            )
        )

    def mark_sent(
        self, conn: sa.Connection, destination: str, partition: str, batch: Batch
    ) -> None:
        """The batch's ledger row, status ``sent``: written before its request leaves."""
        row = {
            "destination": destination,
            "partition": partition,
            "seq": batch.seq,
            "first_position": encode_position(batch.first),
            "last_position": encode_position(batch.last),
            "event_count": len(batch.events),
            "bytes": batch.nbytes,
            "status": "sent",
            "attempts": 0,
            "sent_at": now(),
        }
        conn.execute(self._insert_batch, row)

    def commit(
        self, conn: sa.Connection, destination: str, partition: str, acknowledged: Acknowledged
    ) -> None:
        """The batch acknowledged, its dead letters stored, the counters added, the cursor moved."""
        batch, result, in_doubt = acknowledged
        at = now()
        dead = dead_letters_of(batch, result)
        keys = {"k_dest": destination, "k_part": partition}
        if batch.events:
            ack = {
                "k_seq": batch.seq,
                "v_attempts": result.requests,
                "v_status": result.last_status,
            }
            conn.execute(self._ack_batch, {**keys, **ack, "v_now": at})
        if dead:
            rows = [dead_letter_row(destination, partition, d, at) for d in dead]
            conn.execute(self._insert_dead, rows)
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
        advance = {f"d_{name}": value for name, value in deltas.items()}
        conn.execute(
            self._advance,
            {**keys, "v_cursor": encode_position(batch.last), "v_now": at, **advance},
        )


def dead_letters_of(batch: Batch, result: SendResult) -> list[DeadLetter]:
    """The batch's rows rejected before sending, and the events the vendor rejected."""
    dead = list(batch.rejected)
    for index, status, message in result.dead:
        event = batch.events[index]
        reason = f"rejected by vendor: {message}"
        payload = batch.payload(index)
        dead.append(DeadLetter(event.event_id, event.source_key, reason, payload, status, message))
    return dead


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
