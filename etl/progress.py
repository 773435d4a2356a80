"""Progress said in a run's log, for callers without a terminal (Dagster's run log): each
partition as it closes, and every few batches of a long run the rows so far, the rate and the
time left."""

from __future__ import annotations

import time
from collections.abc import Callable

from etl.destination import Destination
from etl.reports import PartitionReport

Say = Callable[[str], None]


class ProgressLog:
    """Counts committed rows and says where a destination's run stands every ``every`` batches.

    ``total`` is the rows the run expects to read (it may read more: rows that arrive while it
    runs); ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        target: Destination,
        total: int,
        every: int,
        say: Say,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = target.name
        self.total = max(total, 0)
        self.every = every
        self.say = say
        self.clock = clock
        self.started = clock()
        self.batches = 0
        self.rows = 0
        self.delivered = 0
        rate = target.rate
        self.paced = (
            f"; paced by the limit of {rate.requests:g} requests per {rate.per_seconds:g} s"
            if target.paced
            else ""
        )

    def batch(self, rows: int, delivered: int) -> None:
        """A batch's answers are committed: ``rows`` source rows, ``delivered`` events."""
        self.batches += 1
        self.rows += rows
        self.delivered += delivered
        if self.every and self.batches % self.every == 0:
            self.say(self.line())

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.rows / elapsed
        total = max(self.total, self.rows)
        share = f" ({self.rows / total:.0%})" if total else ""
        left = ""
        if rate > 0 and total > self.rows:
            left = f", about {_duration((total - self.rows) / rate)} left"
        return (
            f"{self.name}: {self.rows:,} of {total:,} rows{share}, {self.delivered:,} events "
            f"delivered, {rate:,.0f} rows/s{left}{self.paced}"
        )

    def partition(self, report: PartitionReport) -> None:
        """A partition closed (complete or not)."""
        self.say(
            f"{self.name} {report.partition}: {report.status} ({report.mode}): "
            f"{report.rows_read:,} rows read, {report.delivered:,} delivered, "
            f"{report.dead_letters:,} dead letters, {report.filtered:,} filtered, "
            f"{report.in_doubt:,} in doubt; {report.requests:,} requests, "
            f"{report.retries:,} retries, {report.throttled:,} answers 429"
        )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
