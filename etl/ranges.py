"""Ranges of daily partitions: which UTC days a run covers, and which of them a vendor refuses."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from etl.config import PipelineConfig
from etl.destination import Destination
from etl.errors import ConfigError
from etl.source import Source
from etl.state import StateStore
from etl.timestamps import day_bounds


def yesterday() -> date:
    return datetime.now(UTC).date() - timedelta(days=1)


def days_between(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def partition_days(
    config: PipelineConfig,
    first_day: date | None,
    last_day: date | None,
    include_today: bool = False,
) -> list[date]:
    """The UTC days from ``first_day`` (default: start_date) to ``last_day`` (default:
    yesterday), inclusive. An empty range is refused, and so is one that ends today or later
    (today's partition is still filling) unless ``include_today``."""
    first = first_day or config.start_date
    last = last_day or yesterday()
    if last < first:
        raise ConfigError(f"the range is empty: {first} is after {last}")
    if last > yesterday() and not include_today:
        raise ConfigError(
            f"the range ends on {last}, but today's partition ({yesterday() + timedelta(days=1)})"
            f" is still filling and later ones are empty: end it on {yesterday()} (--to), or "
            "ask for it with --include-today"
        )
    return days_between(first, last)


def lookback_days(config: PipelineConfig, first: date) -> list[date]:
    """The days before a range that a run re-checks for late rows (late_rows.lookback_days),
    from start_date on."""
    earliest = max(config.start_date, first - timedelta(days=config.late_rows.lookback_days))
    return days_between(earliest, first - timedelta(days=1)) if earliest < first else []


def settled_before(config: PipelineConfig, first_day: date | None, last: date) -> date | None:
    """A run without a range (``first_day`` None: from start_date) re-checks the complete days
    of late_rows.lookback_days before its last day and settles the older ones without counting
    them; a run given a range re-checks every complete day of it (None)."""
    if first_day is not None:
        return None
    return last - timedelta(days=config.late_rows.lookback_days)


def skip_too_old(
    target: Destination, source: Source, days: list[date], store: StateStore | None
) -> tuple[list[date], str | None, int]:
    """Days wholly older than the vendor accepts are not read: the days left, a message that
    says how many rows that leaves out, and that number. With a store, they are recorded as
    ``skipped``."""
    vendor = target.vendor
    oldest = vendor.oldest_allowed()
    if oldest is None or vendor.max_age is None:
        return days, None, 0
    too_old = [d for d in days if day_bounds(d)[1] <= oldest]
    if not too_old:
        return days, None, 0
    rows = source.count(too_old[0], too_old[-1])
    reason = f"older than {vendor.title}'s {vendor.max_age.days}-day window"
    if store is not None:
        for day in too_old:
            store.mark_skipped(target.name, day.isoformat(), target.made_with, reason)
    message = (
        f"{target.name}: {rows:,} rows from {too_old[0]} to {too_old[-1]} are {reason}: "
        f"those {len(too_old)} partitions are skipped and nothing of them is sent"
    )
    return days[len(too_old) :], message, rows
