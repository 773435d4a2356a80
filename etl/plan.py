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
from etl.engine import DestinationContext, submit_partition
from etl.errors import ConfigError
from etl.events import Batch
from etl.runner import days_between, select_destinations, skip_too_old, yesterday
from etl.source import Source
from etl.vendors import vendor_class

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
    first = first_day or config.start_date
    last = last_day or yesterday()
    source = Source(config)
    plans = []
    try:
        for name in select_destinations(config, destinations):
            dest = config.destinations[name]
            vendor = vendor_class(dest.vendor).from_config(dest)
            ctx = DestinationContext(name, dest, vendor, source, config.source, None, None)
            plan = DestinationPlan(name, dest.vendor, vendor.rate_limit(dest))
            days = days_between(first, last)
            if not days:
                raise ConfigError(f"the range is empty: {first} is after {last}")
            kept, plan.skipped, plan.skipped_rows = skip_too_old(ctx, days, None)
            if vendor.max_age:
                plan.skipped_reason = (
                    f"in partitions older than {vendor.title}'s {vendor.max_age.days}-day "
                    "window (not read, not sent)"
                )
            json_array = vendor.endpoint().json_array
            for day in kept:
                partition = PartitionPlan(day.isoformat())
                sink = _PlanSink(partition, json_array)
                submit_partition(ctx, day, None, ctx.batcher(1), sink)
                plan.partitions.append(partition)
            plans.append(plan)
    finally:
        source.engine.dispose()
    return plans


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
