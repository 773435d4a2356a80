"""A backfill run: the chosen destinations over a range of daily partitions."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO

from tqdm import tqdm

from etl.config import PipelineConfig, resolve_credentials
from etl.engine import DestinationContext, PartitionReport, PartitionRun
from etl.errors import AccountingError, ConfigError, DeliveryError
from etl.interpreter import tuned_interpreter
from etl.ratelimit import BucketRegistry, Clock, Sleep
from etl.reader import ReaderProcess, use_reader_process
from etl.retry import full_jitter
from etl.sender import Sender
from etl.source import Source, safe_url
from etl.state import StateStore, open_store
from etl.timestamps import day_bounds
from etl.vendors import vendor_class


@dataclass
class DestinationReport:
    name: str
    vendor: str
    partitions: list[PartitionReport] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    skipped: str | None = None  # partitions not sent at all, and why

    def total(self, attr: str) -> int:
        return sum(int(getattr(p, attr)) for p in self.partitions)

    @property
    def events_per_second(self) -> float:
        return self.total("delivered") / self.seconds if self.seconds > 0 else 0.0

    @property
    def failed(self) -> list[PartitionReport]:
        return [p for p in self.partitions if p.status != "complete"]


@dataclass
class RunReport:
    destinations: list[DestinationReport]
    state_tables: list[str]
    state_url: str
    first_day: date
    last_day: date

    @property
    def ok(self) -> bool:
        return all(d.error is None and not d.failed for d in self.destinations)

    @property
    def rows_read(self) -> int:
        return sum(d.total("rows_read") for d in self.destinations)


def yesterday() -> date:
    return datetime.now(UTC).date() - timedelta(days=1)


def days_between(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def select_destinations(config: PipelineConfig, names: list[str] | None) -> list[str]:
    if not names:
        return [n for n, d in config.destinations.items() if d.enabled]
    unknown = [n for n in names if n not in config.destinations]
    if unknown:
        raise ConfigError(
            f"unknown destination(s) {', '.join(unknown)}; the pipeline file has "
            f"{', '.join(config.destinations)}"
        )
    return names


def run_backfill(
    config: PipelineConfig,
    *,
    destinations: list[str] | None = None,
    first_day: date | None = None,
    last_day: date | None = None,
    restart: bool = False,
    dry_run: Path | None = None,
    progress: bool = False,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
    jitter: Callable[[float], float] = full_jitter,
    log: Callable[[str], None] | None = None,
    credentials: dict[str, dict[str, str]] | None = None,
) -> RunReport:
    """Send (or with ``dry_run`` write out) every partition of the range; resume where it stopped.

    Partitions are UTC days from ``first_day`` (default: the pipeline's start_date) to
    ``last_day`` inclusive (default: yesterday). A destination whose credential is refused or
    whose retries run out stops; the others go on. Accounting failures are reported per partition.
    ``credentials`` (destination -> key -> secret) replaces reading them from the environment,
    for callers that hold them already (Dagster resources).
    """
    first = first_day or config.start_date
    last = last_day or yesterday()
    if last < first:
        raise ConfigError(f"the range is empty: {first} is after {last}")
    names = select_destinations(config, destinations)
    # Every secret is read now, before anything is sent, so a missing one stops the run at once.
    if credentials is None:
        credentials = {}
        if not dry_run:
            credentials = {n: resolve_credentials(n, config.destinations[n]) for n in names}
    source = Source(config)
    store: StateStore | None = None
    if dry_run is None:
        store = open_store(config, source.engine)
    days = days_between(first, last)
    reader = ReaderProcess(config)  # started if a destination's run is large enough
    buckets = BucketRegistry()
    reports = []
    out: IO[str] | None = open(dry_run, "w", encoding="utf-8") if dry_run else None  # noqa: SIM115
    paced = any(_pace_of(config, name) < 1000 for name in names)
    try:
        with tuned_interpreter(paced):
            for name in names:
                reports.append(
                    _run_destination(
                        config, name, source, reader, store, credentials.get(name, {}), days,
                        restart=restart, out=out, progress=progress, buckets=buckets,
                        clock=clock, sleep=sleep, jitter=jitter, log=log,
                    )
                )  # fmt: skip
    finally:
        if out is not None:
            out.close()
        reader.close()
        source.engine.dispose()
        if store is not None:
            store.engine.dispose()
    tables = store.table_names() if store else []
    return RunReport(reports, tables, safe_url(store.engine) if store else "", first, last)


def _pace_of(config: PipelineConfig, name: str) -> float:
    """Requests per second a destination is paced at."""
    dest = config.destinations[name]
    return vendor_class(dest.vendor).from_config(dest).rate_limit(dest).per_second


def skip_too_old(
    ctx: DestinationContext, days: list[date], store: StateStore | None
) -> tuple[list[date], str | None, int]:
    """Days wholly older than the vendor accepts are not read: the days left, a message that
    says how many rows that leaves out, and that number."""
    oldest = ctx.vendor.oldest_allowed()
    if oldest is None or ctx.vendor.max_age is None:
        return days, None, 0
    too_old = [d for d in days if day_bounds(d)[1] <= oldest]
    if not too_old:
        return days, None, 0
    rows = ctx.source.count(too_old[0], too_old[-1])
    reason = f"older than {ctx.vendor.title}'s {ctx.vendor.max_age.days}-day window"
    if store is not None:
        for day in too_old:
            store.mark_skipped(ctx.name, day.isoformat(), ctx.fingerprint, reason)
    message = (
        f"{ctx.name}: {rows:,} rows from {too_old[0]} to {too_old[-1]} are {reason}: "
        f"those {len(too_old)} partitions are skipped and nothing of them is sent"
    )
    return days[len(too_old) :], message, rows


def _run_destination(
    config: PipelineConfig,
    name: str,
    source: Source,
    reader: ReaderProcess,
    store: StateStore | None,
    credentials: dict[str, str],
    days: list[date],
    *,
    restart: bool,
    out: IO[str] | None,
    progress: bool,
    buckets: BucketRegistry,
    clock: Clock,
    sleep: Sleep,
    jitter: Callable[[float], float],
    log: Callable[[str], None] | None,
) -> DestinationReport:
    dest = config.destinations[name]
    vendor = vendor_class(dest.vendor).from_config(dest)
    sender = None
    if out is None:
        sender = Sender.for_destination(
            name,
            dest,
            vendor,
            credentials,
            buckets=buckets,
            clock=clock,
            sleep=sleep,
            jitter=jitter,
            state=store,
        )
    ctx = DestinationContext(name, dest, vendor, source, config.source, store, sender)
    report = DestinationReport(name, dest.vendor)
    days, report.skipped, _ = skip_too_old(ctx, days, store)
    if report.skipped and log:
        log(report.skipped)
    if not days:
        return report
    remaining = source.count(days[0], days[-1])
    if store is not None and not restart:
        done = {d.isoformat() for d in days}
        remaining -= sum(cp.rows_read for cp in store.checkpoints_of(name) if cp.partition in done)
    if use_reader_process(config.source, remaining, ctx.ceiling):
        ctx.reader = reader
        if log:
            log(f"{name}: {remaining:,} rows to read: a second process reads them")
    started = time.monotonic()
    bar = tqdm(
        total=max(remaining, 0),
        unit="rows",
        desc=name,
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )

    def failed(day: date, exc: Exception) -> None:
        report.partitions.append(PartitionReport(name, day.isoformat(), "failed", error=str(exc)))

    def collect(day: date, finished: Future[PartitionReport]) -> bool:
        """Record a finished partition; False when the destination must stop."""
        try:
            report.partitions.append(finished.result())
        except AccountingError as exc:
            failed(day, exc)
            if log:
                log(str(exc))
        except DeliveryError as exc:
            report.error = str(exc)
            failed(day, exc)
            return False
        return True

    # A partition is finished (last answers, commits, accounting) on another thread while the
    # next one is read and sent: the vendor's latency at the end of a day costs no send slots.
    finisher = ThreadPoolExecutor(1, thread_name_prefix=f"finish-{name}")
    finishing: tuple[date, Future[PartitionReport]] | None = None
    try:
        for day, next_day in zip(days, [*days[1:], None], strict=True):
            run = PartitionRun(ctx, day, restart=restart, dry_run=out)
            try:
                run.submit(on_rows=bar.update, next_day=next_day)
            except DeliveryError as exc:
                if finishing is not None:
                    collect(*finishing)
                    finishing = None
                report.error = report.error or str(exc)
                failed(day, exc)
                break
            if finishing is not None:
                try:
                    go_on = collect(*finishing)
                except BaseException as exc:  # the previous day broke: this one stops too
                    run.abort(exc)
                    raise
                finally:
                    finishing = None
                if not go_on:
                    stopped = DeliveryError(f"not finished: {report.error}")
                    run.abort(stopped)
                    failed(day, stopped)
                    break
            finishing = (day, finisher.submit(run.finish))
        if finishing is not None:
            collect(*finishing)
            finishing = None
    finally:
        if finishing is not None:  # interrupted: let the previous partition finish first
            wait([finishing[1]])
        finisher.shutdown()
        bar.close()
        if sender is not None:
            sender.close()
    report.seconds = time.monotonic() - started
    return report
