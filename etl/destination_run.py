"""One destination over a run's partitions: planned, streamed through one batcher, closed.

:class:`DestinationRun` takes the planner's partitions (:func:`etl.planner.plan_partitions`),
reads them one after the other (each under its lease), maps their rows, keeps those the
delivery log does not hold, and cuts one stream of batches across them for the sink. The sink
returns what it committed; each partition whose rows are then all committed is checked and
closed here: complete, or re-checked in the same run if the source holds other rows than it
read.
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
from etl.partition import LogFilter, PartitionTask, RowReader, open_task, reconcile
from etl.planner import plan_partitions, refuse
from etl.progress import ProgressLog
from etl.ranges import skip_too_old
from etl.reader import use_reader_process
from etl.reports import DestinationReport, PartitionReport
from etl.run_context import RunContext
from etl.sender import open_sender
from etl.sink import BatchSink, DeliverySink, DryRunSink
from etl.state import Checkpoint
from etl.state.ledger import Acknowledged
from etl.state.store import Verdict
from etl.statuses import Mode, PartitionStatus, RunEnd


class StopRequested(Exception):
    """The run was asked to stop (Ctrl-C, SIGTERM)."""


class DestinationRun:
    """One destination in one run: :meth:`send` plans its partitions, streams them and
    closes each as its last rows are committed."""

    def __init__(self, run: RunContext, target: Destination, credentials: dict[str, str]):
        self.run = run
        self.target = target
        self.name = target.name
        self.sender = None
        if run.out is None:
            self.sender = open_sender(
                target, credentials, run.store, timing=run.timing, buckets=run.buckets
            )
        self.rows = RowReader(target, run.source)
        self.report = DestinationReport(target.name, target.config.vendor)
        self.tasks: dict[str, PartitionTask] = {}  # opened, not closed yet
        self.queue: deque[PartitionTask] = deque()
        self.batcher = target.batcher(batch_prefix=f"{run.token}-")
        self.filter = LogFilter() if run.store is not None else None
        self.sink = self._sink()
        self.bar: Any = None
        self.progress: ProgressLog | None = None  # said in the log (Dagster), not drawn

    def _sink(self) -> BatchSink:
        if self.run.out is not None:
            return DryRunSink(self.name, self.run.out)
        assert self.sender is not None and self.run.store is not None
        return DeliverySink(
            self.name, self.sender, self.run.store, self.target.requests_in_flight, self._account
        )

    # -- the run ----------------------------------------------------------------------------

    def send(
        self, days: list[date], earlier: list[date], settled_before: date | None = None
    ) -> DestinationReport:
        """The range's days (and the complete ``earlier`` ones, re-checked for late rows; the
        complete ones before ``settled_before`` left alone)."""
        started = time.monotonic()
        try:
            self.plan(days, earlier, settled_before)
            while self.queue:
                self.send_partition(self.queue.popleft())
                if not self.queue:  # the last answers may queue a re-check of a partition
                    self.flush()
        except StopRequested:
            self.stop(RunEnd.STOPPED)
        except DeliveryError as exc:
            self.report.error = str(exc)
            self.run.complain(str(exc))
            self.stop(RunEnd.FAILED, str(exc))
        except BaseException as exc:
            interrupted = isinstance(exc, KeyboardInterrupt)
            self.stop(RunEnd.INTERRUPTED if interrupted else RunEnd.FAILED, str(exc))
            raise
        finally:
            self.close()
        self.report.seconds = time.monotonic() - started
        self._purge_old_log()
        return self.report

    def plan(self, days: list[date], earlier: list[date], settled_before: date | None) -> None:
        """The planner's partitions (a refused one stops the destination before it sends
        anything); chooses the reader, starts the bar."""
        run, asked = self.run, days
        days, self.report.skipped, _ = skip_too_old(self.target, run.source, days, run.store)
        if self.report.skipped:
            run.say(self.report.skipped)
        store = run.store
        checkpoints = {cp.partition: cp for cp in store.checkpoints_of(self.name)} if store else {}
        tasks = plan_partitions(
            self.target,
            run.source,
            days,
            earlier,
            checkpoints,
            restart=run.options.restart,
            leases=run.leases,
            settled_before=settled_before,
        )
        refuse(tasks)
        for task in tasks:
            if task.note:
                run.say(task.note)
        going = {t.key for t in tasks if t.mode is not Mode.SKIP}
        self.report.unchanged = {  # what the run leaves alone is reported as it stands
            d.isoformat(): checkpoints[d.isoformat()]
            for d in asked
            if d.isoformat() in checkpoints and d.isoformat() not in going
        }
        self.queue.extend(t for t in tasks if t.mode is not Mode.SKIP)
        self._start_reading([t.day for t in self.queue if t.day is not None], checkpoints)

    def _start_reading(self, days: list[date], checkpoints: dict[str, Checkpoint]) -> None:
        """The reader and the progress bar, for the rows of the days the run reads (not of
        the whole range: a daily run reads a few days of years)."""
        run, name = self.run, self.name
        remaining = run.source.count_spans(days, estimate=True)
        if not run.options.restart:
            read = (checkpoints.get(d.isoformat()) for d in days)
            remaining -= sum(cp.rows_read for cp in read if cp is not None)
        if use_reader_process(run.config.source, remaining, self.target.ceiling):
            self.rows.reader = run.reader
            run.say(f"{name}: {remaining:,} rows to read: a second process reads them")
        if run.options.progress_every:
            self.progress = ProgressLog(
                self.target, remaining, run.options.progress_every, run.say, run.timing.clock
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
        run, store = self.run, self.run.store
        if run.leases is not None:
            try:
                run.leases.acquire(
                    self.name,
                    task.key,
                    wait=run.options.lease_wait,
                    timing=run.timing,
                    stop=run.stop,
                )
            except LeaseHeldError as exc:
                if not task.beside_range:
                    raise
                run.say(f"{self.name}: {exc}: left to that run")  # taken since it was planned
                return
        if store is not None:
            open_task(self.target, store, task)
        self.tasks[task.key] = task
        self.batcher.start_partition(task.key, task.first_seq)
        self._read_ahead(task)
        # closed at once if this stops half-way: the reader may be asked for the next day
        with closing(self.rows.read_rows(task.day, task.cursor)) as chunks:
            for rows in chunks:
                read = len(rows)
                task.rows_seen += read
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
        self.rows.read_next(task.day, task.cursor)
        if self.queue:
            self.rows.read_next(self.queue[0].day, self.queue[0].cursor)

    def submit(self, batch: Batch) -> None:
        for part in batch.slices:
            self.tasks[part.partition].pending += 1
        self.close_committed(self.sink.submit(batch))

    def flush(self) -> None:
        """The last batch sent, every answer committed, every partition closed."""
        last = self.batcher.flush()
        if last is not None:
            self.submit(last)
        self.close_committed(self.sink.drain())
        for task in list(self.tasks.values()):
            self.maybe_finish(task)

    def _account(self, batch: Batch, result: SendResult, in_order: bool) -> Acknowledged:
        """What the answers mean: the copies of each event that may be extra (for a vendor
        without dedup: the requests of earlier runs or retries whose fate is unknown), and the
        partitions whose cursor stays (re-checked ones; all, out of order)."""
        in_doubt: Counter[int] = Counter()
        earlier = any(self.tasks[p.partition].prior_unknown for p in batch.slices)
        if not self.target.deduplicates and (earlier or result.unknown):
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
            if not in_order or self.tasks[p.partition].mode is Mode.RECHECK
        }
        return Acknowledged(batch, result, in_doubt, frozenset(hold))

    def close_committed(self, committed: list[Acknowledged]) -> None:
        """Count what the sink committed in each partition's report, and close the partitions
        it completes."""
        for done in committed:
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
        store = self.run.store
        if store is None:  # a dry run
            self.closed(task.report)
            return

        def verdict(problem: str | None) -> Verdict:
            if problem is None:
                return PartitionStatus.COMPLETE, None
            if task.mode is not Mode.RECHECK and not task.rechecked:
                return None, problem  # re-checked in this run: no status yet
            return PartitionStatus.UNBALANCED, problem

        status, problem = reconcile(self.target, self.run.source, store, task, verdict)
        if status is None:
            cp = task.report.checkpoint  # as reconcile read it
            again = PartitionTask(task.day, Mode.RECHECK, cp, rechecked=True)
            again.report = task.report
            again.report.mode = Mode.RECHECK
            self.queue.append(again)
            return
        task.report.status, task.report.error = status, problem
        self.closed(task.report)
        if problem:
            self.run.complain(problem)
        elif self.progress is not None:
            self.progress.partition(task.report)

    def closed(self, report: PartitionReport) -> None:
        """A partition is done with in this run (closed, or left open by a stop)."""
        self.report.partitions.append(report)
        if self.run.closed is not None:
            self.run.closed(report)

    # -- stopping -------------------------------------------------------------------------

    def stop(self, end: RunEnd, error: str | None = None) -> None:
        """Send nothing more, commit the answers that come back in a moment; every partition
        not closed is left interrupted or failed, and resumes next time."""
        unanswered = 0
        try:
            committed, unanswered = self.sink.stop(self.run.options.stop_grace)
            self.close_committed(committed)
        finally:
            self._leave_open(end.partition_status, error)
        if end is RunEnd.STOPPED:
            self.report.stopped = (
                f"{self.name}: stopped; the answers that came back are committed; "
                f"{unanswered:,} events of requests still unanswered are in doubt: run again "
                "to resume"
            )

    def _leave_open(self, saved: PartitionStatus, error: str | None) -> None:
        store, name = self.run.store, self.name
        left: Verdict = (saved, error and error[:2000])
        for task in list(self.tasks.values()):
            task.report.status, task.report.error = saved, error
            if store is not None:
                with suppress(EtlError):
                    cp, _ = store.close_partition(name, task.key, lambda _: left)
                    task.report.checkpoint = cp
            self.closed(task.report)
        self.tasks.clear()
        self.queue.clear()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if isinstance(self.sink, DeliverySink):
            self.sink.close()
        if self.sender is not None:
            self.sender.close()
        if self.run.leases is not None:
            for destination, partition in list(self.run.leases.held):
                if destination == self.name:
                    self.run.leases.release(destination, partition)

    def _purge_old_log(self) -> None:
        days = self.run.config.state.delivery_log_retention_days
        if days is None or self.run.store is None:
            return
        older_than = datetime.now(UTC) - timedelta(days=days)
        self.run.store.log.purge(self.name, older_than)
