"""Cutting the stream of row outcomes into batches within a vendor's count and byte limits."""

from __future__ import annotations

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

    def _body_size(self, batch: Batch, extra: int) -> int:
        # "[" + items joined by "," + "]"
        count = len(batch.encoded) + 1
        return batch.nbytes + extra + (count - 1) + 2

    def add(self, outcome: RowOutcome) -> list[Batch]:
        """Add one row; return the batches this closed (usually none)."""
        closed: list[Batch] = []
        encoded = b""
        payload = None
        if isinstance(outcome, Event):
            payload = self.vendor.encode(outcome)
            encoded = encode_json(payload)
            if self.max_bytes is not None and len(encoded) + 2 > self.max_bytes:
                outcome = Rejected(
                    outcome.position,
                    outcome.source_key,
                    outcome.event_id,
                    f"event is {len(encoded)} bytes, over {self.vendor.name}'s request limit "
                    f"of {self.max_bytes} bytes",
                    payload,
                )
            elif (
                self._open is not None
                and self._open.encoded
                and self.max_bytes is not None
                and self._body_size(self._open, len(encoded)) > self.max_bytes
            ):
                closed.append(self._close())
        batch = self._open
        if batch is None:
            batch = self._open = Batch(seq=self._seq, first=outcome.position, last=outcome.position)
            self._seq += 1
        batch.last = outcome.position
        batch.rows_read += 1
        if isinstance(outcome, Filtered):
            batch.filtered += 1
        elif isinstance(outcome, Rejected):
            batch.rejected.append(
                DeadLetter(outcome.event_id, outcome.source_key, outcome.reason, outcome.row)
            )
        else:
            assert payload is not None
            batch.events.append(outcome)
            batch.payloads.append(payload)
            batch.encoded.append(encoded)
            batch.nbytes += len(encoded)
        if len(batch.events) >= self.max_events or batch.rows_read >= self.max_rows:
            closed.append(self._close())
        return closed

    def flush(self) -> Batch | None:
        """Close the open batch at the end of the partition."""
        return self._close() if self._open is not None else None

    def _close(self) -> Batch:
        batch = self._open
        assert batch is not None
        self._open = None
        return batch
