"""A backfill run: the chosen destinations over a range of daily partitions."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import IO

from tqdm import tqdm

from etl.config import PipelineConfig
from etl.database import safe_url
from etl.destination import Destination, resolve_destination
from etl.errors import AccountingError, DeliveryError
from etl.interpreter import tuned_interpreter
from etl.loader import resolve_credentials
from etl.partition import DestinationContext, PartitionRun
from etl.ranges import partition_days, skip_too_old
from etl.ratelimit import BucketRegistry
from etl.reader import ReaderProcess, use_reader_process
from etl.reports import DestinationReport, PartitionReport, RunReport
from etl.sender import open_sender
from etl.source import Source
from etl.state import StateStore, open_store
from etl.timing import REAL_TIME, Timing

Log = Callable[[str], None]


def run_backfill(
    config: PipelineConfig,
    *,
    destinations: list[str] | None = None,
    first_day: date | None = None,
    last_day: date | None = None,
    restart: bool = False,
    dry_run: Path | None = None,
    progress: bool = False,
    timing: Timing = REAL_TIME,
    log: Log | None = None,
    credentials: dict[str, dict[str, str]] | None = None,
) -> RunReport:
    """Send (or with ``dry_run`` write out) every partition of the range; resume where it stopped.

    Partitions are UTC days from ``first_day`` (default: the pipeline's start_date) to
    ``last_day`` inclusive (default: yesterday). A destination whose credential is refused or
    whose retries run out stops; the others go on. Accounting failures are reported per partition.
    ``credentials`` (destination -> key -> secret) replaces reading them from the environment,
    for callers that hold them already (Dagster resources).
    """
    days = partition_days(config, first_day, last_day)
    resolved = [resolve_destination(config, n) for n in config.destination_names(destinations)]
    # Every secret is read now, before anything is sent, so a missing one stops the run at once.
    if credentials is None:
        credentials = {}
        if not dry_run:
            credentials = {d.name: resolve_credentials(d.name, d.config) for d in resolved}
    paced = any(d.rate.per_second < 1000 for d in resolved)
    opened = RunContext.open(config, restart, dry_run, progress, timing, log)
    with opened as run, tuned_interpreter(paced):
        reports = [DestinationRun(run, d, credentials.get(d.name, {})).send(days) for d in resolved]
    store = run.store
    tables = store.table_names() if store else []
    state_url = safe_url(store.engine) if store else ""
    return RunReport(reports, tables, state_url, days[0], days[-1])


@dataclass
class RunContext:
    """What the destinations of one run share: the source, the state, the reader process, the
    token buckets, and how the run was asked to go."""

    config: PipelineConfig
    source: Source
    store: StateStore | None
    reader: ReaderProcess
    restart: bool
    out: IO[str] | None  # the dry run's file: nothing is sent, no state is touched
    progress: bool
    timing: Timing
    log: Log | None
    buckets: BucketRegistry = field(default_factory=BucketRegistry)

    @classmethod
    @contextmanager
    def open(
        cls,
        config: PipelineConfig,
        restart: bool,
        dry_run: Path | None,
        progress: bool,
        timing: Timing,
        log: Log | None,
    ) -> Iterator[RunContext]:
        with ExitStack() as stack:
            source = Source(config)
            stack.callback(source.engine.dispose)
            store = None
            if dry_run is None:
                store = open_store(config, source.engine)
                stack.callback(store.engine.dispose)
            reader = ReaderProcess(config)  # started if a destination's run is large enough
            stack.callback(reader.close)
            out = stack.enter_context(open(dry_run, "w", encoding="utf-8")) if dry_run else None
            yield cls(config, source, store, reader, restart, out, progress, timing, log)

    def say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)


class DestinationRun:
    """One destination over the run's days, in four steps: ``start`` (skip what the vendor
    refuses, count what is left, choose the reader), ``send_day`` for each day, ``collect`` each
    finished day, ``stop``.

    A day is finished (its last answers awaited, committed, its accounting checked) on another
    thread while the next day is read and sent: the vendor's latency at the end of a day costs
    no send slots.
    """

    def __init__(self, run: RunContext, destination: Destination, credentials: dict[str, str]):
        self.run = run
        sender = None
        if run.out is None:
            sender = open_sender(
                destination, credentials, run.store, timing=run.timing, buckets=run.buckets
            )
        self.ctx = DestinationContext(destination, run.source, run.store, sender)
        self.report = DestinationReport(destination.name, destination.config.vendor)
        self.finisher = ThreadPoolExecutor(1, thread_name_prefix=f"finish-{destination.name}")
        self.finishing: tuple[date, Future[PartitionReport]] | None = None
        self.bar: tqdm[None] | None = None

    def send(self, days: list[date]) -> DestinationReport:
        """Every day of ``days`` sent, or as many as could be before the destination stopped."""
        try:
            days = self.start(days)
            started = time.monotonic()
            for day, next_day in zip(days, [*days[1:], None][: len(days)], strict=True):
                if not self.send_day(day, next_day):
                    break
            self.collect_previous()
            if days:
                self.report.seconds = time.monotonic() - started
        finally:
            self.stop()
        return self.report

    def start(self, days: list[date]) -> list[date]:
        """The days to send: those the vendor accepts. Chooses the reader, starts the bar."""
        run, ctx, name = self.run, self.ctx, self.ctx.name
        days, self.report.skipped, _ = skip_too_old(ctx.destination, run.source, days, run.store)
        if self.report.skipped:
            run.say(self.report.skipped)
        if not days:
            return days
        remaining = run.source.count(days[0], days[-1])
        if run.store is not None and not run.restart:
            done = {d.isoformat() for d in days}
            cps = run.store.checkpoints_of(name)
            remaining -= sum(cp.rows_read for cp in cps if cp.partition in done)
        if use_reader_process(run.config.source, remaining, ctx.destination.ceiling):
            ctx.reader = run.reader
            run.say(f"{name}: {remaining:,} rows to read: a second process reads them")
        self.bar = tqdm(
            total=max(remaining, 0),
            unit="rows",
            desc=name,
            disable=not run.progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        return days

    def send_day(self, day: date, next_day: date | None) -> bool:
        """Read, map and send the day, and collect the day before it; False: stop here."""
        partition = PartitionRun(self.ctx, day, restart=self.run.restart, dry_run=self.run.out)
        try:
            partition.submit(on_rows=self.bar.update if self.bar else None, next_day=next_day)
        except DeliveryError as exc:
            self.collect_previous()
            self.report.error = self.report.error or str(exc)
            self._failed(day, exc)
            return False
        if not self.collect_previous(abort=partition):
            stopped = DeliveryError(f"not finished: {self.report.error}")
            partition.abort(stopped)
            self._failed(day, stopped)
            return False
        self.finishing = (day, self.finisher.submit(partition.finish))
        return True

    def collect_previous(self, abort: PartitionRun | None = None) -> bool:
        """Wait for the day being finished, if any, and record it; False when the destination
        must stop. If finishing it raised anything else, ``abort`` stops too."""
        if self.finishing is None:
            return True
        previous, self.finishing = self.finishing, None
        try:
            return self.collect(*previous)
        except BaseException as exc:  # the previous day broke: this one stops too
            if abort is not None:
                abort.abort(exc)
            raise

    def collect(self, day: date, finished: Future[PartitionReport]) -> bool:
        """Record a finished partition; False when the destination must stop."""
        try:
            self.report.partitions.append(finished.result())
        except AccountingError as exc:
            self._failed(day, exc)
            self.run.say(str(exc))
        except DeliveryError as exc:
            self.report.error = str(exc)
            self._failed(day, exc)
            return False
        return True

    def stop(self) -> None:
        """Let a day still finishing end first (interrupted), then release what this held."""
        if self.finishing is not None:
            wait([self.finishing[1]])
        self.finisher.shutdown()
        if self.bar is not None:
            self.bar.close()
        if self.ctx.sender is not None:
            self.ctx.sender.close()

    def _failed(self, day: date, exc: Exception) -> None:
        failed = PartitionReport(self.ctx.name, day.isoformat(), "failed", error=str(exc))
        self.report.partitions.append(failed)
