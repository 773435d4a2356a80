"""Cutting the stream of row outcomes into batches within a vendor's count and byte limits."""

from __future__ import annotations

from typing import Any

from etl.events import Batch, DeadLetter, Event, Filtered, Rejected, RowOutcome
from etl.vendors.base import Vendor, encode_json

# A batch with no event to send still closes after this many rows, so that long runs of
# filtered or rejected rows are checkpointed too and never pile up in memory.
MAX_ROWS_PER_BATCH = 10_000


class Batcher:
    """Collects consecutive rows into batches; every row belongs to exactly one batch."""

    def __init__(
        self,
        vendor: Vendor,
        max_events: int,
        max_bytes: int | None,
        first_seq: int,
        max_rows: int = MAX_ROWS_PER_BATCH,
    ) -> None:
        self.vendor = vendor
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_rows = max_rows
        self._seq = first_seq
        self._open: Batch | None = None

    def add(self, outcome: RowOutcome) -> list[Batch]:
        """Add one row; return the batches this closed (usually none)."""
        closed: list[Batch] = []
        if isinstance(outcome, Event):
            payload = self.vendor.encode(outcome)
            self._add(outcome, payload, encode_json(payload), closed)
        else:
            self._add(outcome, None, b"", closed)
        return closed

    def add_chunk(self, outcomes: list[RowOutcome]) -> list[Batch]:
        """Add a chunk's rows in order (its events encoded together); the batches closed."""
        events = [o for o in outcomes if type(o) is Event]
        payloads = self.vendor.encode_many(events)
        encoded = iter(zip(payloads, [encode_json(p) for p in payloads], strict=True))
        closed: list[Batch] = []
        for outcome in outcomes:
            if type(outcome) is Event:
                self._add(outcome, *next(encoded), closed)
            else:
                self._add(outcome, None, b"", closed)
        return closed

    def _add(
        self,
        outcome: RowOutcome,
        payload: dict[str, Any] | None,
        encoded: bytes,
        closed: list[Batch],
    ) -> None:
        batch = self._open
        size = len(encoded)
        if payload is not None and self.max_bytes is not None:
            assert isinstance(outcome, Event)
            if size + 2 > self.max_bytes:
                outcome = Rejected(
                    outcome.position,
                    outcome.source_key,
                    outcome.event_id,
                    f"event is {size} bytes, over {self.vendor.name}'s request limit "
                    f"of {self.max_bytes} bytes",
                    payload,
                )
                payload = None
            # the body: "[" + the events joined by "," + "]"
            elif (
                batch is not None
                and batch.encoded
                and (batch.nbytes + size + len(batch.encoded) + 2 > self.max_bytes)
            ):
                closed.append(self._close())
                batch = None
        if batch is None:
            batch = self._open = Batch(seq=self._seq, first=outcome.position, last=outcome.position)
            self._seq += 1
        batch.last = outcome.position
        batch.rows_read += 1
        if payload is not None:
            assert isinstance(outcome, Event)
            batch.events.append(outcome)
            batch.encoded.append(encoded)
            batch.nbytes += size
        elif isinstance(outcome, Filtered):
            batch.filtered += 1
        else:
            assert isinstance(outcome, Rejected)
            batch.rejected.append(
                DeadLetter(outcome.event_id, outcome.source_key, outcome.reason, outcome.row)
            )
        if len(batch.events) >= self.max_events or batch.rows_read >= self.max_rows:
            closed.append(self._close())

    def flush(self) -> Batch | None:
        """Close the open batch at the end of the partition."""
        return self._close() if self._open is not None else None

    def _close(self) -> Batch:
        batch = self._open
        assert batch is not None
        self._open = None
        return batch
