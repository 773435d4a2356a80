"""What a run did, per partition, per destination and in all: the numbers every caller shows.

The command line prints them, Dagster turns them into metadata, the bench reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from etl.events import Batch, SendResult


@dataclass
class PartitionReport:
    """What one run did to one partition (this run's numbers and the partition's totals)."""

    destination: str
    partition: str
    status: str = "complete"
    rows_read: int = 0  # this run
    delivered: int = 0
    dead_letters: int = 0
    filtered: int = 0
    in_doubt: int = 0
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    seconds: float = 0.0
    cursor: str | None = None
    error: str | None = None
    samples: list[Any] = field(default_factory=list)  # payloads, user identifiers masked

    def add(self, batch: Batch, result: SendResult, in_doubt: int) -> None:
        self.rows_read += batch.rows_read
        self.delivered += len(result.delivered)
        self.dead_letters += len(batch.rejected) + len(result.dead)
        self.filtered += batch.filtered
        self.in_doubt += in_doubt
        self.requests += result.requests
        self.retries += result.retries
        self.throttled += result.throttled
        if len(self.samples) < 3 and batch.encoded:
            self.samples.append(mask_user(batch.payload(0), batch.events[0].user_id))


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
