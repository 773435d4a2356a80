"""Cutting the stream of row outcomes into batches within a vendor's count and byte limits.

The stream runs over the partitions of a run one after the other, and a batch goes on from one
partition into the next: a day of 1,667 events and the next day's first 333 fill one request of
2,000. Each batch keeps one slice per partition it holds, numbered in that partition's own
sequence, so that each partition's ledger, counters and cursor stay its own.
"""

from __future__ import annotations

from typing import Any

from etl.events import Batch, DeadLetter, Event, Filtered, Rejected, RowOutcome, Slice
from etl.vendors.base import Vendor, encode_json

# A batch with no event to send still closes after this many rows, so that long runs of
# filtered or rejected rows are checkpointed too and never pile up in memory.
MAX_ROWS_PER_BATCH = 10_000


class Batcher:
    """Collects consecutive rows into batches; every row belongs to exactly one batch and one
    slice. Call :meth:`start_partition` before the rows of each partition."""

    def __init__(
        self,
        vendor: Vendor,
        max_events: int,
        max_bytes: int | None,
        first_seq: int = 1,
        max_rows: int = MAX_ROWS_PER_BATCH,
        batch_prefix: str = "",
    ) -> None:
        self.vendor = vendor
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_rows = max_rows
        self._prefix = batch_prefix
        self._batches = 0
        self._partition = ""
        self._seq = first_seq
        self._open: Batch | None = None
        self._slice: Slice | None = None  # the open batch's slice of the current partition

    def start_partition(self, partition: str, first_seq: int) -> None:
        """The rows that follow are ``partition``'s; its slices are numbered from
        ``first_seq``."""
        self._partition = partition
        self._seq = first_seq
        self._slice = None

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
        if payload is not None and self.max_bytes is not None:
            assert isinstance(outcome, Event)
            size = len(encoded)
            if size + 2 > self.max_bytes:
                reason = (
                    f"event is {size} bytes, over {self.vendor.name}'s request limit "
                    f"of {self.max_bytes} bytes"
                )
                outcome = Rejected(
                    outcome.position, outcome.source_key, outcome.event_id, reason, payload
                )
                payload = None
            elif self._would_overflow(size):  # the body: "[" + events joined by "," + "]"
                closed.append(self._close())
        batch, part = self._slice_for(outcome)
        part.last = outcome.position
        batch.rows += 1
        if payload is not None:
            assert isinstance(outcome, Event)
            batch.events.append(outcome)
            batch.encoded.append(encoded)
            batch.nbytes += len(encoded)
            part.end = len(batch.events)
        elif isinstance(outcome, Filtered):
            part.filtered.append(outcome.source_key)
        else:
            assert isinstance(outcome, Rejected)
            dead = DeadLetter(outcome.event_id, outcome.source_key, outcome.reason, outcome.row)
            part.rejected.append(dead)
        if len(batch.events) >= self.max_events or batch.rows >= self.max_rows:
            closed.append(self._close())

    def _would_overflow(self, size: int) -> bool:
        batch = self._open
        assert self.max_bytes is not None
        return (
            batch is not None
            and bool(batch.encoded)
            and batch.nbytes + size + len(batch.encoded) + 2 > self.max_bytes
        )

    def _slice_for(self, outcome: RowOutcome) -> tuple[Batch, Slice]:
        """The open batch (opened if none) and its slice of the current partition."""
        batch = self._open
        if batch is None:
            self._batches += 1
            batch = self._open = Batch(f"{self._prefix}{self._batches}")
            self._slice = None
        part = self._slice
        if part is None:
            start = len(batch.events)
            part = Slice(
                self._partition, self._seq, outcome.position, outcome.position, start, start
            )
            self._seq += 1
            batch.slices.append(part)
            self._slice = part
        return batch, part

    def flush(self) -> Batch | None:
        """Close the open batch (at the end of the run)."""
        return self._close() if self._open is not None else None

    def _close(self) -> Batch:
        batch = self._open
        assert batch is not None
        self._open = None
        self._slice = None
        return batch

    def holds(self, partition: str) -> bool:
        """The open batch holds rows of ``partition``."""
        return self._open is not None and any(s.partition == partition for s in self._open.slices)

    @property
    def next_seq(self) -> int:
        """The sequence number the current partition's next slice gets."""
        return self._seq
