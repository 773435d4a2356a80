"""`etl plan`: what a run would do, before anything is sent.

For each destination and partition: rows, rows to send, rows filtered, rows that known vendor
rules will reject (counted per reason), requests, and the duration the vendor's rate limit
implies. It reads the warehouse with the real mapping and batching, and writes nothing.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date

from etl.config import PipelineConfig, RateLimit
from etl.destination import Destination, resolve_destination
from etl.events import Batch
from etl.partition import DestinationContext, submit_partition
from etl.ranges import partition_days, skip_too_old
from etl.source import Source

_DETAIL = re.compile(r" \(got .*\)$")


def reason_kind(reason: str) -> str:
    """A reject reason without the row's own value, so that reasons can be counted."""
    return _DETAIL.sub("", reason)


@dataclass
class PartitionPlan:
    partition: str
    rows: int = 0
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


class _PlanSink:
    def __init__(self, plan: PartitionPlan, json_array: bool) -> None:
        self.plan = plan
        self.json_array = json_array

    def submit(self, batch: Batch) -> None:
        self.plan.rows += batch.rows_read
        self.plan.to_send += len(batch.events)
        self.plan.filtered += batch.filtered
        self.plan.rejected.update(reason_kind(d.reason) for d in batch.rejected)
        if batch.events:
            self.plan.requests += 1 if self.json_array else len(batch.events)

    def drain(self) -> None:
        pass

    def abort(self) -> None:
        pass


def plan_backfill(
    config: PipelineConfig,
    destinations: list[str] | None = None,
    first_day: date | None = None,
    last_day: date | None = None,
) -> list[DestinationPlan]:
    """Plan the range (default: start_date to yesterday) for the chosen destinations."""
    days = partition_days(config, first_day, last_day)
    source = Source(config)
    try:
        return [
            _plan_destination(resolve_destination(config, name), source, days)
            for name in config.destination_names(destinations)
        ]
    finally:
        source.engine.dispose()


def _plan_destination(
    destination: Destination, source: Source, days: list[date]
) -> DestinationPlan:
    vendor = destination.vendor
    plan = DestinationPlan(destination.name, destination.config.vendor, destination.rate)
    kept, plan.skipped, plan.skipped_rows = skip_too_old(destination, source, days, None)
    if vendor.max_age:
        plan.skipped_reason = (
            f"in partitions older than {vendor.title}'s {vendor.max_age.days}-day "
            "window (not read, not sent)"
        )
    ctx = DestinationContext(destination, source)
    json_array = destination.endpoint.json_array
    for day in kept:
        partition = PartitionPlan(day.isoformat())
        sink = _PlanSink(partition, json_array)
        submit_partition(ctx, day, None, destination.batcher(1), sink)
        plan.partitions.append(partition)
    return plan


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
