"""One destination over a run's partitions: planned, streamed through one batcher, closed.

:class:`DestinationRun` reads the partitions one after the other (each under its lease), maps
their rows, keeps those the delivery log does not hold, and cuts one stream of batches across
them. As each batch's answers are committed, each partition whose rows are all committed is
checked and closed: complete, or re-checked in the same run if the source holds other rows than
it read.
"""

from __future__ import annotations

import sys
import time
from collections import Counter, deque
from contextlib import closing, suppress
from datetime import UTC, date, datetime, timedelta
from typing import Any

from tqdm import tqdm

from etl.destination import Destination
from etl.errors import DeliveryError, EtlError, LeaseHeldError
from etl.events import Batch, SendResult
from etl.partition import (
    DestinationContext,
    LogFilter,
    PartitionTask,
    open_task,
    plan_task,
    reconcile,
)
from etl.progress import ProgressLog
from etl.ranges import skip_too_old
from etl.reader import use_reader_process
from etl.reports import DestinationReport
from etl.run_context import RunContext
from etl.sender import open_sender
from etl.sink import BatchSink, DeliverySink, DryRunSink
from etl.state.ledger import Acknowledged
from etl.state.store import refuse_changed_mapping
from etl.windows import UNDATED


class StopRequested(Exception):
    """The run was asked to stop (Ctrl-C, SIGTERM)."""


class DestinationRun:
    """One destination over the run's days: :meth:`send` plans, streams and closes them."""

    def __init__(self, run: RunContext, destination: Destination, credentials: dict[str, str]):
        self.run = run
        self.destination = destination
        sender = None
        if run.out is None:
            sender = open_sender(
                destination, credentials, run.store, timing=run.timing, buckets=run.buckets
            )
        self.ctx = DestinationContext(destination, run.source, run.store, sender)
        self.report = DestinationReport(destination.name, destination.config.vendor)
        self.tasks: dict[str, PartitionTask] = {}
        self.queue: deque[PartitionTask] = deque()
        self.batcher = destination.batcher(batch_prefix=f"{run.token}-")
        self.filter = LogFilter() if run.store is not None else None
        self.sink = self._sink()
        self.bar: Any = None
        self.progress: ProgressLog | None = None  # said in the log (Dagster), not drawn

    def _sink(self) -> BatchSink:
        if self.run.out is not None:
            return DryRunSink(self.destination.name, self.run.out, self._committed)
        assert self.ctx.sender is not None and self.run.store is not None
        return DeliverySink(
            self.destination.name,
            self.ctx.sender,
            self.run.store,
            self.destination.requests_in_flight,
            self._account,
            self._committed,
        )

    # -- the run ----------------------------------------------------------------------------

    def send(self, days: list[date], earlier: list[date]) -> DestinationReport:
        """The range's days (and the complete ``earlier`` ones, re-checked for late rows)."""
        started = time.monotonic()
        try:
            self.plan(days, earlier)
            while self.queue:
                while self.queue:
                    self.send_partition(self.queue.popleft())
                self.flush()
        except StopRequested:
            self.stop("stopped")
        except DeliveryError as exc:
            self.report.error = str(exc)
            self.run.complain(str(exc))
            self.stop("failed", str(exc))
        except BaseException as exc:
            self.stop("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", str(exc))
            raise
        finally:
            self.close()
        self.report.seconds = time.monotonic() - started
        self._purge_old_log()
        return self.report

    def plan(self, days: list[date], earlier: list[date]) -> None:
        """What each partition needs this run: every day of the range, the complete earlier
        days whose count changed, the undated rows. Chooses the reader, starts the bar."""
        run, ctx, name = self.run, self.ctx, self.ctx.name
        days, self.report.skipped, _ = skip_too_old(self.destination, run.source, days, run.store)
        if self.report.skipped:
            run.say(self.report.skipped)
        store = run.store
        checkpoints = {cp.partition: cp for cp in store.checkpoints_of(ctx.name)} if store else {}
        restart = run.options.restart
        for day in earlier:  # only what was sent already, and changed since
            cp = checkpoints.get(day.isoformat())
            task = plan_task(ctx, day, cp) if cp is not None else None
            if task is not None and task.mode == "recheck":
                task.beside_range = True
                self.queue.append(task)
        for day in days:
            cp = None if restart else checkpoints.get(day.isoformat())
            if cp is not None:  # the range asked for: sent with another mapping is refused
                fingerprint = self.destination.fingerprint
                refuse_changed_mapping(
                    name, cp.partition, cp.fingerprint, cp.rows_read, fingerprint
                )
            self.queue.append(plan_task(ctx, day, cp))
        if store is not None:  # rows without a readable timestamp: dead letters
            undated = plan_task(ctx, None, checkpoints.get(UNDATED))
            undated.beside_range = True
            self.queue.append(undated)
        for task in [t for t in self.queue if t.mode == "skip"]:
            self.queue.remove(task)
        self._start_reading(days)

    def _start_reading(self, days: list[date]) -> None:
        run, name = self.run, self.ctx.name
        remaining = run.source.count(days[0], days[-1]) if days else 0
        if run.store is not None and not run.options.restart:
            done = {d.isoformat() for d in days}
            cps = run.store.checkpoints_of(name)
            remaining -= sum(cp.rows_read for cp in cps if cp.partition in done)
        if use_reader_process(run.config.source, remaining, self.destination.ceiling):
            self.ctx.reader = run.reader
            run.say(f"{name}: {remaining:,} rows to read: a second process reads them")
        if run.options.progress_every:
            self.progress = ProgressLog(
                self.destination, remaining, run.options.progress_every, run.say, run.timing.clock
            )
        self.bar = tqdm(
            total=max(remaining, 0),
            unit="rows",
            desc=name,
            disable=not run.options.progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def send_partition(self, task: PartitionTask) -> None:
        """Read, map and hand to the sink the partition's new rows."""
        run, ctx, store = self.run, self.ctx, self.run.store
        if run.leases is not None:
            try:
                run.leases.acquire(ctx.name, task.key)
            except LeaseHeldError as exc:
                if not task.beside_range:
                    raise
                run.say(f"{ctx.name}: {exc}: left to that run")  # outside the range asked
                return
        open_task(ctx, task, run.options.restart and task.mode == "new")
        self.tasks[task.key] = task
        self.batcher.start_partition(task.key, store.next_seq(ctx.name, task.key) if store else 1)
        self._read_ahead(task)
        # closed at once if this stops half-way: the reader may be asked for the next day
        with closing(ctx.read_rows(task.day, task.cursor)) as chunks:
            for rows in chunks:
                read = len(rows)
                if self.filter is not None:  # rows the log holds are not sent again
                    rows = self.filter.new_rows(task, rows)
                for batch in self.batcher.add_rows(rows):
                    self.submit(batch)
                if self.bar is not None:
                    self.bar.update(read)
                if run.stop.is_set():
                    raise StopRequested()
        task.read_done = True
        self.maybe_finish(task)

    def _read_ahead(self, task: PartitionTask) -> None:
        """With a reader process, have it read the next partition as soon as this one is read."""
        reader = self.ctx.reader
        if reader is None:
            return
        reader.ask(task.day, self.ctx.name, task.cursor)
        if self.queue:
            upcoming = self.queue[0]
            reader.ask(upcoming.day, self.ctx.name, upcoming.cursor)

    def submit(self, batch: Batch) -> None:
        for part in batch.slices:
            self.tasks[part.partition].pending += 1
        self.sink.submit(batch)

    def flush(self) -> None:
        """The last batch sent, every answer committed, every partition closed."""
        last = self.batcher.flush()
        if last is not None:
            self.submit(last)
        self.sink.drain()
        for task in list(self.tasks.values()):
            self.maybe_finish(task)

    # -- answers --------------------------------------------------------------------------

    def _account(self, batch: Batch, result: SendResult, in_order: bool) -> Acknowledged:
        """What the answers mean: the copies of each event that may be extra (for a vendor
        without dedup: the requests of earlier runs or retries whose fate is unknown), and the
        partitions whose cursor stays (re-checked ones; all, out of order)."""
        in_doubt: Counter[int] = Counter()
        earlier = any(self.tasks[p.partition].prior_unknown for p in batch.slices)
        if not self.destination.deduplicates and (earlier or result.unknown):
            answered = set(result.delivered) | {i for i, _, _ in result.dead}
            for part in batch.slices:
                prior = self.tasks[part.partition].prior_unknown
                for i in range(part.start, part.end):
                    if i in answered:
                        copies = prior.get(batch.keys[i], 0) + result.unknown[i]
                        if copies:
                            in_doubt[i] = copies
        hold = {
            p.partition
            for p in batch.slices
            if not in_order or self.tasks[p.partition].mode == "recheck"
        }
        return Acknowledged(batch, result, in_doubt, frozenset(hold))

    def _committed(self, done: Acknowledged) -> None:
        for index, part in enumerate(done.batch.slices):
            task = self.tasks[part.partition]
            task.report.add(done.batch, part, done.result, done.counts[index], index == 0)
            task.pending -= 1
            self.maybe_finish(task)
        if self.progress is not None:
            rows = sum(p.rows_read for p in done.batch.slices)
            self.progress.batch(rows, sum(c.delivered for c in done.counts))

    def maybe_finish(self, task: PartitionTask) -> None:
        """Close a partition whose rows are all read and committed: check it, complete it (or
        re-check it in this run if the source holds other rows than it read)."""
        done = task.read_done and task.pending == 0 and not self.batcher.holds(task.key)
        if not done or task.key not in self.tasks:
            return
        del self.tasks[task.key]
        task.report.seconds = time.monotonic() - task.started
        store, name = self.run.store, self.ctx.name
        if store is None:  # a dry run
            self.report.partitions.append(task.report)
            return
        problem = reconcile(self.ctx, task)
        if problem is not None and task.mode != "recheck" and not task.rechecked:
            again = PartitionTask(task.day, "recheck", store.load(name, task.key), rechecked=True)
            again.report = task.report
            again.report.mode = "recheck"
            self.queue.append(again)
        else:
            status = "complete" if problem is None else "unbalanced"
            store.finish(name, task.key, status, problem)
            task.report.status, task.report.error = status, problem
            self.report.partitions.append(task.report)
            if problem:
                self.run.complain(problem)
            elif self.progress is not None:
                self.progress.partition(task.report)
        if self.run.leases is not None:
            self.run.leases.release(name, task.key)

    # -- stopping -------------------------------------------------------------------------

    def stop(self, status: str, error: str | None = None) -> None:
        """Send nothing more, commit the answers that come back in a moment; every partition
        not closed is left ``status`` (interrupted or failed) and resumes next time."""
        unanswered = 0
        try:
            unanswered = self.sink.stop(self.run.options.stop_grace)
        finally:
            self._leave_open(status, error)
        if status == "stopped":
            self.report.stopped = (
                f"{self.ctx.name}: stopped; the answers that came back are committed; "
                f"{unanswered:,} events of requests still unanswered are in doubt: run again "
                "to resume"
            )

    def _leave_open(self, status: str, error: str | None) -> None:
        store, name = self.run.store, self.ctx.name
        saved = "interrupted" if status == "stopped" else status
        for task in list(self.tasks.values()):
            if store is not None:
                with suppress(EtlError):
                    store.finish(name, task.key, saved, error and error[:2000])
            task.report.status, task.report.error = saved, error
            self.report.partitions.append(task.report)
        self.tasks.clear()
        self.queue.clear()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if isinstance(self.sink, DeliverySink):
            self.sink.close()
        if self.ctx.sender is not None:
            self.ctx.sender.close()
        if self.run.leases is not None:
            for destination, partition in list(self.run.leases.held):
                if destination == self.ctx.name:
                    self.run.leases.release(destination, partition)

    def _purge_old_log(self) -> None:
        days = self.run.config.state.delivery_log_retention_days
        if days is None or self.run.store is None:
            return
        older_than = datetime.now(UTC) - timedelta(days=days)
        self.run.store.log.purge(self.ctx.name, older_than)
