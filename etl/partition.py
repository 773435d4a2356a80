"""One destination and one partition: read, map, batch, send, checkpoint, reconcile.

Batches go out with up to ``max_in_flight`` requests at once but are committed strictly in order,
so the cursor only ever moves over a contiguous run of acknowledged batches.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from datetime import date
from typing import IO, Protocol

from etl.batching import Batcher
from etl.destination import Destination
from etl.errors import AccountingError
from etl.events import Batch, Position, SendResult
from etl.reader import ReaderProcess
from etl.reports import PartitionReport
from etl.sender import Sender
from etl.source import Chunks, Source
from etl.state import StateStore

RowsCallback = Callable[[int], None]
MAP_SLICE = 1000  # rows mapped and encoded together


@dataclass
class DestinationContext:
    """A resolved destination and what a run sends it with: the source (or a reader process
    that reads it), the state store and the sender (None in plans and dry runs)."""

    destination: Destination
    source: Source
    store: StateStore | None = None
    sender: Sender | None = None
    reader: ReaderProcess | None = None  # reads the rows in a second process; None: here

    @property
    def name(self) -> str:
        return self.destination.name

    def read_tuples(self, day: date, after: Position | None) -> Chunks:
        """The day's rows after ``after``, in chunks, with the columns the mapping needs."""
        reader = self.reader or self.source
        return reader.read_tuples(day, self.destination.mapper.columns, after)


class BatchSink(Protocol):
    def submit(self, batch: Batch) -> None: ...
    def drain(self) -> None: ...
    def abort(self) -> None: ...


def _in_ranges(position: Position, ranges: list[tuple[Position, Position]]) -> bool:
    return any(first <= position <= last for first, last in ranges)


class DeliverySink:
    """Sends batches on a thread pool and commits their results in order."""

    def __init__(
        self,
        ctx: DestinationContext,
        partition: str,
        report: PartitionReport,
        in_doubt_ranges: list[tuple[Position, Position]],
    ) -> None:
        assert ctx.store is not None and ctx.sender is not None
        self.ctx = ctx
        self.store = ctx.store
        self.sender = ctx.sender
        self.partition = partition
        self.report = report
        self.ranges = in_doubt_ranges
        self.max_in_flight = ctx.destination.batches_in_flight
        self.pool = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix=f"send-{ctx.name}")
        self.pending: deque[tuple[Batch, Future[SendResult]]] = deque()

    def submit(self, batch: Batch) -> None:
        self._commit(until=self.max_in_flight - 1, sending=batch)

    def _commit(self, until: int, sending: Batch | None = None) -> None:
        """Commit finished batches in order, waiting for the oldest while more than ``until``
        are pending; mark ``sending`` as sent in the same transaction, then send it."""
        acknowledged: list[tuple[Batch, SendResult, int]] = []
        failure: BaseException | None = None
        try:
            while self.pending and (len(self.pending) > until or self.pending[0][1].done()):
                batch, finished = self.pending[0]
                result = finished.result()  # DeliveryError: the batches before it are kept
                self.pending.popleft()
                acknowledged.append((batch, result, self._in_doubt(batch, result)))
        except BaseException as exc:
            failure, sending = exc, None
        marked = sending if sending is not None and sending.events else None
        if acknowledged or marked:
            self.store.record(self.ctx.name, self.partition, acknowledged, marked)
        for batch, result, in_doubt in acknowledged:
            self.report.add(batch, result, in_doubt)
        if failure is not None:
            raise failure  # the caller aborts
        if sending is not None:
            future: Future[SendResult]
            if marked is not None:
                future = self.pool.submit(self.sender.send, sending.encoded)
            else:
                future = Future()
                future.set_result(SendResult())
            self.pending.append((sending, future))

    def _in_doubt(self, batch: Batch, result: SendResult) -> int:
        """Events delivered now that an earlier attempt may have delivered too (no vendor dedup)."""
        if self.ctx.destination.deduplicates or not (self.ranges or result.ambiguous):
            return 0
        return sum(
            1
            for i in result.delivered
            if i in result.ambiguous or _in_ranges(batch.events[i].position, self.ranges)
        )

    def drain(self) -> None:
        self._commit(until=0)
        self.pool.shutdown()

    def abort(self) -> None:
        """Stop sending; batches already in flight finish but stay uncommitted (in doubt)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending.clear()


class DryRunSink:
    """Writes each payload as a JSON line instead of sending it; touches no state."""

    def __init__(
        self, ctx: DestinationContext, partition: str, report: PartitionReport, out: IO[str]
    ):
        self.ctx = ctx
        self.partition = partition
        self.report = report
        self.out = out

    def submit(self, batch: Batch) -> None:
        for index, event in enumerate(batch.events):
            line = {
                "destination": self.ctx.name,
                "partition": self.partition,
                "event_id": event.event_id,
                "batch": batch.seq,
                "payload": batch.payload(index),
            }
            self.out.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.report.add(batch, SendResult(delivered=list(range(len(batch.events)))), 0)

    def drain(self) -> None:
        self.out.flush()

    def abort(self) -> None:
        self.out.flush()


def submit_partition(
    ctx: DestinationContext,
    day: date,
    cursor: Position | None,
    batcher: Batcher,
    sink: BatchSink,
    on_rows: RowsCallback | None = None,
) -> None:
    """Read the day after ``cursor``, map every row, cut batches, hand them all to the sink."""
    mapper = ctx.destination.mapper
    # closed at once if this stops half-way: the reader may be asked for the next day
    with closing(ctx.read_tuples(day, cursor)) as chunks:
        for names, chunk in chunks:
            # mapped and encoded a slice at a time: as fast, and far less memory than a whole
            # chunk
            for start in range(0, len(chunk), MAP_SLICE):
                outcomes = mapper.map_chunk(names, chunk[start : start + MAP_SLICE])
                for batch in batcher.add_chunk(outcomes):
                    sink.submit(batch)
            if on_rows:
                on_rows(len(chunk))
    last = batcher.flush()
    if last is not None:
        sink.submit(last)


class PartitionRun:
    """One partition being sent, in two steps: ``submit`` reads and hands every batch to the
    sink; ``finish`` waits for the last answers, commits them and checks the accounting.

    The runner finishes a partition on another thread while it submits the next one, so that
    the vendor's answers to a partition's last requests (its latency) cost no rate-limit slots.
    """

    def __init__(
        self,
        ctx: DestinationContext,
        day: date,
        *,
        restart: bool = False,
        dry_run: IO[str] | None = None,
    ) -> None:
        self.ctx = ctx
        self.day = day
        self.restart = restart
        self.partition = day.isoformat()
        self.report = PartitionReport(ctx.name, self.partition)
        self.dry_run = dry_run
        self.started = time.monotonic()
        self.sink: BatchSink
        store = ctx.store
        if dry_run is not None:  # the whole day, whatever was sent: no state read or written
            self.cursor = None
            self.batcher = ctx.destination.batcher(1)
            self.sink = DryRunSink(ctx, self.partition, self.report, dry_run)
        else:
            assert store is not None
            checkpoint = store.start(ctx.name, self.partition, ctx.destination.fingerprint, restart)
            self.cursor = checkpoint.cursor
            self.batcher = ctx.destination.batcher(store.next_seq(ctx.name, self.partition))
            ranges = store.in_doubt_ranges(ctx.name, self.partition)
            self.sink = DeliverySink(ctx, self.partition, self.report, ranges)

    def _read_ahead(self, next_day: date) -> None:
        """With a reader process, have it read ``next_day`` as soon as this day is read, from
        where that partition will start; if it starts elsewhere, the reader starts afresh."""
        reader = self.ctx.reader
        if reader is None:
            return
        columns = self.ctx.destination.mapper.columns
        reader.ask(self.day, columns, self.cursor)
        after = None
        if self.dry_run is None and not self.restart and self.ctx.store is not None:
            checkpoint = self.ctx.store.load(self.ctx.name, next_day.isoformat())
            after = checkpoint.cursor if checkpoint is not None else None
        reader.ask(next_day, columns, after)

    def submit(self, on_rows: RowsCallback | None = None, next_day: date | None = None) -> None:
        """Read, map and send the day; ``next_day``: the day the run sends next, read ahead."""
        try:
            if next_day is not None:
                self._read_ahead(next_day)
            submit_partition(self.ctx, self.day, self.cursor, self.batcher, self.sink, on_rows)
        except BaseException as exc:
            self.abort(exc)
            raise

    def finish(self) -> PartitionReport:
        try:
            self.sink.drain()
        except BaseException as exc:
            self.abort(exc)
            raise
        self.report.seconds = time.monotonic() - self.started
        if self.dry_run is None and self.ctx.store is not None:
            _reconcile(self.ctx, self.ctx.store, self.day, self.report)
        return self.report

    def abort(self, exc: BaseException) -> None:
        """Stop sending; what was sent and not acknowledged stays in doubt."""
        self.sink.abort()
        if self.dry_run is None and self.ctx.store is not None:
            status = "failed" if isinstance(exc, Exception) else "interrupted"
            self.ctx.store.finish(self.ctx.name, self.partition, status, str(exc)[:2000])


def _reconcile(
    ctx: DestinationContext, store: StateStore, day: date, report: PartitionReport
) -> None:
    """rows read = delivered + dead letters + filtered, and rows read = rows in the window."""
    partition = day.isoformat()
    cp = store.load(ctx.name, partition)
    assert cp is not None
    in_window = ctx.source.count(day, day)
    report.cursor = json.dumps(cp.cursor, default=str) if cp.cursor else None
    problems = []
    if not cp.balanced:
        problems.append(
            f"rows read {cp.rows_read} != delivered {cp.delivered} + dead letters "
            f"{cp.dead_letters} + filtered {cp.filtered}"
        )
    if cp.rows_read != in_window:
        problems.append(
            f"{in_window} rows in the window but {cp.rows_read} read (rows added behind the "
            f"cursor, or removed, since this partition was sent; --restart resends it)"
        )
    if problems:
        message = f"{ctx.name} {partition}: accounting does not balance: " + "; ".join(problems)
        store.finish(ctx.name, partition, "failed", message)
        report.status = "failed"
        report.error = message
        raise AccountingError(message)
    store.finish(ctx.name, partition, "complete", None)
