"""`etl plan`: what a run would do, before anything is sent.

For each destination and partition: rows, rows already sent, rows to send, rows filtered, rows
that known vendor rules will reject (counted per reason), requests, and the duration the
vendor's rate limit implies; for the source, the rows outside every partition, by kind; for the
filters, the rows they drop only because of case or spaces. The partitions are the ones `etl
run` would go through (the same planner decides, refusals included); it reads the delivery log
as a run would, the warehouse with the real mapping and batching, and writes nothing.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date

from etl.config import PipelineConfig, RateLimit
from etl.database import dispose
from etl.destination import Destination, resolve_destination
from etl.events import Batch, near_miss_text
from etl.indexes import index_advice
from etl.partition import LogFilter, PartitionTask, RowReader
from etl.planner import plan_partitions
from etl.ranges import lookback_days, partition_days, settled_before, skip_too_old
from etl.source import Source
from etl.state import StateStore, existing_store
from etl.statuses import Mode
from etl.windows import Outside

_DETAIL = re.compile(r" \(got .*\)$")
# Up to this many rows in new partitions, a plan maps every row as a run does (a few seconds);
# beyond, it counts them in the warehouse (grouped by day and by the filter's columns), and
# leaves the vendor's rules on each row to `etl plan --rows`.
EXACT_ROWS = 200_000


def reason_kind(reason: str) -> str:
    """A reject reason without the row's own value, so that reasons can be counted."""
    return _DETAIL.sub("", reason)


@dataclass
class PartitionPlan:
    partition: str
    mode: Mode = Mode.NEW
    rows: int = 0  # rows the run would read and decide on now
    sent: int = 0  # rows decided by earlier runs
    to_send: int = 0
    filtered: int = 0
    near_misses: int = 0  # filtered only because of case or spaces
    rejected: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    refused: str | None = None  # why the run would stop on it
    note: str | None = None  # why the run would leave it alone

    @classmethod
    def of(cls, task: PartitionTask) -> PartitionPlan:
        sent = task.checkpoint.present if task.checkpoint is not None and not task.restart else 0
        refused = str(task.refused) if task.refused is not None else None
        return cls(task.key, task.mode, sent=sent, refused=refused, note=task.note)


@dataclass
class DestinationPlan:
    name: str
    vendor: str
    rate: RateLimit
    partitions: list[PartitionPlan] = field(default_factory=list)
    skipped: str | None = None
    skipped_rows: int = 0
    skipped_reason: str = ""
    near_miss: str | None = None  # the first near miss: the filter's key and the value
    unchecked: int = 0  # rows counted in the warehouse: not checked against the vendor's rules

    def total(self, attr: str) -> int:
        return sum(int(getattr(p, attr)) for p in self.partitions)

    @property
    def refused(self) -> list[PartitionPlan]:
        """The partitions a run would refuse: it would stop before sending anything here."""
        return [p for p in self.partitions if p.refused]

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
        return self.total("requests") * self.rate.slot_seconds


@dataclass
class Plan:
    destinations: list[DestinationPlan]
    outside: Outside
    first_day: date
    last_day: date
    start_date: date
    index: str | None = None  # the index that would make each day's read cost its rows


class _PlanSink:
    """Counts what each slice of each batch holds; a batch's request counts in its first."""

    def __init__(self, plan: DestinationPlan) -> None:
        self.plan = plan
        self.plans = {p.partition: p for p in plan.partitions}

    def submit(self, batch: Batch) -> None:
        for index, part in enumerate(batch.slices):
            plan = self.plans[part.partition]
            plan.rows += part.rows_read
            plan.to_send += part.end - part.start
            plan.filtered += len(part.filtered)
            plan.near_misses += len(part.near_misses)
            if part.near_misses and self.plan.near_miss is None:
                self.plan.near_miss = near_miss_text(part.near_misses[0])
            plan.rejected.update(reason_kind(d.reason) for d in part.rejected)
            if index == 0 and batch.size:
                plan.requests += 1


def plan_backfill(
    config: PipelineConfig,
    destinations: list[str] | None = None,
    first_day: date | None = None,
    last_day: date | None = None,
    include_today: bool = False,
    restart: bool = False,
    rows: bool | None = None,
) -> Plan:
    """Plan the range (default: start_date to yesterday) for the chosen destinations, as
    ``etl run`` with the same range and ``restart`` would go through it. ``rows``: map every
    row as a run does (True), count the new partitions' rows in the warehouse (False), or the
    first up to :data:`EXACT_ROWS` rows (None)."""
    days = partition_days(config, first_day, last_day, include_today)
    source = Source(config)
    store = existing_store(config)
    try:
        plans = [
            _plan_destination(
                resolve_destination(config, name),
                source,
                store,
                config,
                days,
                restart,
                rows,
                settled_before(config, first_day, days[-1]),
            )
            for name in config.destination_names(destinations)
        ]
        outside = source.outside(days[-1])
        index = index_advice(config.source, source.engine)
    finally:
        dispose(source.engine)
        if store is not None:
            store.close()
    return Plan(plans, outside, days[0], days[-1], config.start_date, index)


def _plan_destination(
    target: Destination,
    source: Source,
    store: StateStore | None,
    config: PipelineConfig,
    days: list[date],
    restart: bool,
    rows: bool | None,
    settled: date | None,
) -> DestinationPlan:
    vendor = target.vendor
    plan = DestinationPlan(target.name, target.config.vendor, target.rate)
    kept, plan.skipped, plan.skipped_rows = skip_too_old(target, source, days, None)
    if vendor.max_age:
        plan.skipped_reason = (
            f"in partitions older than {vendor.title}'s {vendor.max_age.days}-day "
            "window (not read, not sent)"
        )
    checkpoints = {cp.partition: cp for cp in store.checkpoints_of(target.name)} if store else {}
    tasks = plan_partitions(
        target,
        source,
        kept,
        lookback_days(config, days[0]),
        checkpoints,
        restart=restart,
        leases=store.leases if store is not None else None,
        settled_before=settled,
    )
    plan.partitions = [PartitionPlan.of(t) for t in tasks]
    if not plan.refused:  # a run that would refuse a partition sends nothing here
        reader = RowReader(target, source)
        if rows is not True:
            tasks = _count_new(reader, tasks, plan, exact_up_to=EXACT_ROWS if rows is None else -1)
        _read(reader, store, tasks, _PlanSink(plan))
    return plan


def _count_new(
    rows: RowReader, tasks: list[PartitionTask], plan: DestinationPlan, exact_up_to: int
) -> list[PartitionTask]:
    """Count the new partitions' rows in the warehouse, by day and by the values of the
    filter's columns (which the filter judges as it judges rows), unless they are at most
    ``exact_up_to``; return the tasks left to read row by row."""
    new = [t for t in tasks if t.mode is Mode.NEW and t.day is not None]
    row_filter = rows.preparer.mapper.filter
    columns = list(row_filter.allowed)
    counts = rows.source.count_by_day([t.day for t in new if t.day is not None], columns)
    if sum(n for groups in counts.values() for _, n in groups) <= exact_up_to:
        return tasks
    plans = {p.partition: p for p in plan.partitions}
    per_request, queued = rows.target.events_per_request, 0
    for task in new:
        assert task.day is not None
        part = plans[task.key]
        for values, n in counts[task.day]:
            row = dict(zip(columns, values, strict=True))
            part.rows += n
            if row_filter.keeps(row):
                part.to_send += n
                continue
            part.filtered += n
            miss = row_filter.near_miss(row)
            if miss is not None:
                part.near_misses += n
                plan.near_miss = plan.near_miss or near_miss_text(miss)
        # requests as the batches would close: each counts in the partition it starts in
        part.requests = -(-(queued + part.to_send) // per_request) - -(-queued // per_request)
        queued += part.to_send
        plan.unchecked += part.to_send
    counted = {id(t) for t in new}
    return [t for t in tasks if id(t) not in counted]


def _read(
    rows: RowReader, store: StateStore | None, tasks: list[PartitionTask], sink: _PlanSink
) -> None:
    """Read every partition a run would read, into one stream of batches as a run cuts it."""
    name = rows.target.name
    batcher = rows.target.batcher()
    log_filter = LogFilter()
    for task in tasks:
        if task.mode is Mode.SKIP:
            continue
        if store is not None and task.mode in (Mode.RESUME, Mode.RECHECK):
            task.known = store.log.known(name, task.key)
        batcher.start_partition(task.key, 1)
        for chunk in rows.read_rows(task.day, task.cursor):
            for batch in batcher.add_rows(log_filter.new_rows(task, chunk)):
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
