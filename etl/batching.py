"""Cutting the stream of prepared rows into batches within a vendor's count and byte limits.

The stream runs over the partitions of a run one after the other, and a batch goes on from one
partition into the next: a day of 1,667 events and the next day's first 333 fill one request of
2,000. Each batch keeps one slice per partition it holds, numbered in that partition's own
sequence, so that each partition's ledger, counters and cursor stay its own.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

from etl.events import EVENT, FILTERED, REJECTED, Batch, Position, Rows, Slice

# A batch with no event to send still closes after this many rows, so that long runs of
# filtered or rejected rows are checkpointed too and never pile up in memory.
MAX_ROWS_PER_BATCH = 10_000


class Batcher:
    """Collects consecutive rows into batches; every row belongs to exactly one batch and one
    slice. Call :meth:`start_partition` before the rows of each partition."""

    def __init__(
        self,
        max_events: int,
        max_bytes: int | None,
        first_seq: int = 1,
        max_rows: int = MAX_ROWS_PER_BATCH,
        batch_prefix: str = "",
    ) -> None:
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

    def add_rows(self, rows: Rows) -> list[Batch]:
        """Add prepared rows in order; return the batches they closed."""
        closed: list[Batch] = []
        kinds, n, i = rows.kinds, len(rows), 0
        while i < n:
            if kinds[i] == EVENT:
                end = _run_end(kinds, i)  # the events from i on, up to the next other row
                i += self._add_events(rows, i, end, closed)
                continue
            batch, part = self._slice_for(rows.positions[i])
            part.last = rows.positions[i]
            batch.rows += 1
            if kinds[i] == FILTERED:
                part.filtered.append(rows.keys[i])
                if i in rows.near:
                    part.near_misses.append(rows.near[i])
            else:
                part.rejected.append(rows.rejected[i])
            if batch.rows >= self.max_rows:
                closed.append(self._close())
            i += 1
        return closed

    def _add_events(self, rows: Rows, start: int, end: int, closed: list[Batch]) -> int:
        """As many of the events ``start:end`` as the open batch takes (a new one if it takes
        none); returns how many."""
        batch = self._open
        take = end - start
        if batch is not None:
            take = min(take, self.max_events - batch.size, self.max_rows - batch.rows)
            if self.max_bytes is not None:
                take = min(take, self._fitting(batch, rows.encoded, start, start + take))
            if take <= 0:
                closed.append(self._close())
                return 0
        else:
            take = min(take, self.max_events, self.max_rows)
            if self.max_bytes is not None:
                empty = Batch("")
                take = max(1, self._fitting(empty, rows.encoded, start, start + take))
        stop = start + take
        batch, part = self._slice_for(rows.positions[start])
        part.last = rows.positions[stop - 1]
        batch.rows += take
        batch.keys += rows.keys[start:stop]
        batch.users += rows.users[start:stop]
        added = rows.encoded[start:stop]
        batch.encoded += added
        batch.nbytes += sum(map(len, added))
        part.end = batch.size
        if batch.size >= self.max_events or batch.rows >= self.max_rows:
            closed.append(self._close())
        return take

    def _fitting(self, batch: Batch, encoded: list[bytes], start: int, stop: int) -> int:
        """How many of ``encoded[start:stop]`` the batch's body can take within max_bytes: the
        body is "[" + the events joined by "," + "]"."""
        assert self.max_bytes is not None
        room = self.max_bytes - batch.nbytes - batch.size - 1  # each event brings its comma
        sizes = accumulate(len(e) + 1 for e in encoded[start:stop])
        return bisect_right(list(sizes), room)

    def _slice_for(self, position: Position) -> tuple[Batch, Slice]:
        """The open batch (opened if none) and its slice of the current partition."""
        batch = self._open
        if batch is None:
            self._batches += 1
            batch = self._open = Batch(f"{self._prefix}{self._batches}")
            self._slice = None
        part = self._slice
        if part is None:
            start = batch.size
            part = Slice(self._partition, self._seq, position, position, start, start)
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


def _run_end(kinds: bytes, start: int) -> int:
    """The end of the run of events that starts at ``start``."""
    ends = [i for i in (kinds.find(FILTERED, start), kinds.find(REJECTED, start)) if i >= 0]
    return min(ends, default=len(kinds))
