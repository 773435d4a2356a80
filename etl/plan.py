"""`etl plan`: what a run would do, before anything is sent.

For each destination and partition: rows, rows already sent, rows to send, rows filtered, rows
that known vendor rules will reject (counted per reason), requests, and the duration the
vendor's rate limit implies; for the source, the rows outside every partition, by kind; for the
filters, the rows they drop only because of case or spaces. It reads the checkpoints and the
delivery log as a run would (a complete day whose count has not changed is not read again), the
warehouse with the real mapping and batching, and writes nothing.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date

from etl.config import PipelineConfig, RateLimit
from etl.database import dispose
from etl.destination import Destination, resolve_destination
from etl.events import Batch
from etl.partition import DestinationContext, LogFilter, PartitionTask, plan_task
from etl.ranges import lookback_days, partition_days, skip_too_old
from etl.source import Source
from etl.state import StateStore, existing_store
from etl.windows import UNDATED, Outside

_DETAIL = re.compile(r" \(got .*\)$")


def reason_kind(reason: str) -> str:
    """A reject reason without the row's own value, so that reasons can be counted."""
    return _DETAIL.sub("", reason)


@dataclass
class PartitionPlan:
    partition: str
    mode: str = "new"
    rows: int = 0  # rows the run would read and decide on now
    sent: int = 0  # rows decided by earlier runs
    to_send: int = 0
    filtered: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    requests: int = 0


@dataclass
class DestinationPlan:
    name: str
    vendor: str
    rate: RateLimit
    partitions: list[PartitionPlan] = field(default_factory=list)
    skipped: str | None = None
    skipped_rows: int = 0
    skipped_reason: str = ""
    near_misses: dict[str, tuple[int, str]] = field(default_factory=dict)

    def total(self, attr: str) -> int:
        return sum(int(getattr(p, attr)) for p in self.partitions)

    @property
    def rejected(self) -> Counter[str]:
        """Rows that will not be sent, per reason (skipped old partitions included)."""
        counts: Counter[str] = Counter()
        for p in self.partitions:
            counts.update(p.rejected)
        if self.skipped_rows:
            counts[self.skipped_reason] += self.skipped_rows
        return counts

    @property
    def seconds(self) -> float:
        """The time the rate limit alone needs for the requests (no retries, no latency)."""
        return self.total("requests") / self.rate.per_second


@dataclass
class Plan:
    destinations: list[DestinationPlan]
    outside: Outside
    first_day: date
    last_day: date
    start_date: date


class _PlanSink:
    """Counts what each slice of each batch holds; a batch's request counts in its first."""

    def __init__(self, plans: dict[str, PartitionPlan]) -> None:
        self.plans = plans

    def submit(self, batch: Batch) -> None:
        for index, part in enumerate(batch.slices):
            plan = self.plans[part.partition]
            plan.rows += part.rows_read
            plan.to_send += part.end - part.start
            plan.filtered += len(part.filtered)
            plan.rejected.update(reason_kind(d.reason) for d in part.rejected)
            if index == 0 and batch.size:
                plan.requests += 1


def plan_backfill(
    config: PipelineConfig,
    destinations: list[str] | None = None,
    first_day: date | None = None,
    last_day: date | None = None,
    include_today: bool = False,
) -> Plan:
    """Plan the range (default: start_date to yesterday) for the chosen destinations."""
    days = partition_days(config, first_day, last_day, include_today)
    source = Source(config)
    store = existing_store(config)
    try:
        plans = [
            _plan_destination(resolve_destination(config, name), source, store, config, days)
            for name in config.destination_names(destinations)
        ]
        outside = source.outside(days[-1])
    finally:
        dispose(source.engine)
        if store is not None:
            store.close()
    return Plan(plans, outside, days[0], days[-1], config.start_date)


def _plan_destination(
    destination: Destination,
    source: Source,
    store: StateStore | None,
    config: PipelineConfig,
    days: list[date],
) -> DestinationPlan:
    vendor = destination.vendor
    plan = DestinationPlan(destination.name, destination.config.vendor, destination.rate)
    kept, plan.skipped, plan.skipped_rows = skip_too_old(destination, source, days, None)
    if vendor.max_age:
        plan.skipped_reason = (
            f"in partitions older than {vendor.title}'s {vendor.max_age.days}-day "
            "window (not read, not sent)"
        )
    ctx = DestinationContext(destination, source, store)
    tasks = _tasks(ctx, store, kept, lookback_days(config, days[0]))
    plans = {t.key: PartitionPlan(t.key, t.mode) for t in tasks}
    for task in tasks:
        if task.checkpoint is not None:
            plans[task.key].sent = task.checkpoint.present
    _read(ctx, tasks, plans)
    plan.partitions = [plans[t.key] for t in tasks]
    plan.near_misses = destination.mapper.filter.near_misses
    return plan


def _tasks(
    ctx: DestinationContext, store: StateStore | None, days: list[date], earlier: list[date]
) -> list[PartitionTask]:
    checkpoints = {cp.partition: cp for cp in store.checkpoints_of(ctx.name)} if store else {}
    tasks = []
    for day in earlier:
        cp = checkpoints.get(day.isoformat())
        if cp is not None and plan_task(ctx, day, cp).mode == "recheck":
            tasks.append(plan_task(ctx, day, cp))
    tasks += [plan_task(ctx, day, checkpoints.get(day.isoformat())) for day in days]
    tasks.append(plan_task(ctx, None, checkpoints.get(UNDATED)))
    return tasks


def _read(
    ctx: DestinationContext, tasks: list[PartitionTask], plans: dict[str, PartitionPlan]
) -> None:
    """Read every partition a run would read, into one stream of batches as a run cuts it."""
    destination = ctx.destination
    mapper = destination.mapper
    mapper.filter.track_near_misses = True
    batcher = destination.batcher()
    sink = _PlanSink(plans)
    log_filter = LogFilter()
    for task in tasks:
        if task.mode == "skip":
            continue
        if ctx.store is not None and task.mode in ("resume", "recheck"):
            task.known = ctx.store.log.known(ctx.name, task.key)
        batcher.start_partition(task.key, 1)
        for rows in ctx.read_rows(task.day, task.cursor):
            for batch in batcher.add_rows(log_filter.new_rows(task, rows)):
                sink.submit(batch)
    last = batcher.flush()
    if last is not None:
        sink.submit(last)


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"
