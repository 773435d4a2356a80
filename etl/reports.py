"""What a run did, per partition, per destination and in all: the numbers every caller shows.

The command line prints them, Dagster turns them into metadata, the bench reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from etl.events import Batch, SendResult, Slice, SliceCounts, near_miss_text
from etl.state.checkpoint import Checkpoint
from etl.statuses import Mode, PartitionStatus, is_done
from etl.windows import Outside


@dataclass
class PartitionReport:
    """What one run did to one partition."""

    destination: str
    partition: str
    status: PartitionStatus = PartitionStatus.COMPLETE
    mode: Mode = Mode.NEW
    rows_read: int = 0  # this run
    delivered: int = 0
    dead_letters: int = 0
    filtered: int = 0
    in_doubt: int = 0
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    deleted: int = 0  # rows read once, gone from the source (found by a re-check)
    moved: int = 0  # rows read once, moved to another day by a new timestamp (sent there)
    changed: int = 0  # rows changed after they were read (not sent again)
    near_misses: int = 0  # rows filtered only because of case or spaces in a value
    near_miss: str | None = None  # the first of them: the filter's key and the value
    seconds: float = 0.0
    cursor: str | None = None
    error: str | None = None
    samples: list[Any] = field(default_factory=list)  # payloads, user identifiers masked
    # the partition's state after this run: its totals over every run (None in a dry run)
    checkpoint: Checkpoint | None = None

    def add(
        self,
        batch: Batch,
        part: Slice,
        result: SendResult,
        counts: SliceCounts,
        first: bool,
    ) -> None:
        """A committed slice; the batch's requests count in its first slice."""
        self.rows_read += part.rows_read
        self.delivered += counts.delivered
        self.dead_letters += len(part.rejected) + counts.vendor_dead
        self.filtered += len(part.filtered)
        self.near_misses += len(part.near_misses)
        if self.near_miss is None and part.near_misses:
            self.near_miss = near_miss_text(part.near_misses[0])
        self.in_doubt += counts.in_doubt
        if first:
            self.requests += result.requests
            self.retries += result.retries
            self.throttled += result.throttled
        if len(self.samples) < 3 and part.end > part.start:
            self.samples.append(mask_user(batch.payload(part.start), batch.users[part.start]))

    @property
    def failed(self) -> bool:
        return not is_done(self.status)


def mask_identifier(value: str) -> str:
    """Enough of an identifier to recognise it, not enough to use it: 0x52…9EE7."""
    return f"{value[:4]}…{value[-4:]}" if len(value) > 10 else "…"


def mask_user(payload: Any, user_id: str) -> Any:
    """A payload with every occurrence of the user's identifier masked (for samples in the UI)."""
    if isinstance(payload, dict):
        return {k: mask_user(v, user_id) for k, v in payload.items()}
    if isinstance(payload, list):
        return [mask_user(v, user_id) for v in payload]
    return mask_identifier(payload) if payload == user_id else payload


@dataclass
class DestinationReport:
    name: str
    vendor: str
    partitions: list[PartitionReport] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    skipped: str | None = None  # partitions not sent at all, and why
    stopped: str | None = None  # a graceful stop: what it left in doubt
    # the range's partitions this run left alone (complete and unchanged, or skipped): their state
    unchanged: dict[str, Checkpoint] = field(default_factory=dict)

    def total(self, attr: str) -> int:
        return sum(int(getattr(p, attr)) for p in self.partitions)

    @property
    def events_per_second(self) -> float:
        return self.total("delivered") / self.seconds if self.seconds > 0 else 0.0

    @property
    def failed(self) -> list[PartitionReport]:
        return [p for p in self.partitions if p.failed]

    @property
    def near_misses(self) -> tuple[int, str | None]:
        """Rows its filter dropped only because of case or spaces, and the first of them."""
        first = next((p.near_miss for p in self.partitions if p.near_miss), None)
        return self.total("near_misses"), first


@dataclass
class RunReport:
    destinations: list[DestinationReport]
    state_tables: list[str]
    state_url: str
    first_day: date
    last_day: date
    outside: Outside = field(default_factory=Outside)  # rows outside the range, by kind
    start_date: date | None = None
    stopped: bool = False  # stopped by a signal before the end

    @property
    def ok(self) -> bool:
        return not self.stopped and all(d.error is None and not d.failed for d in self.destinations)

    @property
    def rows_read(self) -> int:
        return sum(d.total("rows_read") for d in self.destinations)
