"""The typed objects carried through the pipeline: events, row outcomes, batches, send results."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# A row's place in the keyset order: (raw timestamp, raw key) as the warehouse gave them.
Position = tuple[Any, Any]

ArgValue = str | int | float | bool


def event_id_for(destination: str, source_key: Any) -> str:
    """Deterministic event identity from the destination and the source row's key."""
    return event_ids_for(destination, [str(source_key)])[0]


def event_ids_for(destination: str, source_keys: list[str]) -> list[str]:
    """``event_id_for`` of many keys of one destination."""
    prefix = f"{destination}\x1f"
    sha256 = hashlib.sha256
    return [sha256((prefix + key).encode()).hexdigest()[:32] for key in source_keys]


@dataclass(slots=True)
class Event:
    """One source row as an event for one destination, before vendor encoding.

    Not frozen: a frozen dataclass sets every field through ``object.__setattr__``, which
    doubles the cost of creating the millions of events of a backfill. Treat it as read-only.
    """

    event_id: str
    source_key: str
    position: Position
    name: str
    user_id: str
    user_type: str | None
    occurred_at: datetime
    args: dict[str, ArgValue]
    fields: dict[str, ArgValue] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)  # from a JSON column, untyped


@dataclass(frozen=True, slots=True)
class Filtered:
    """The row is not for this destination."""

    position: Position


@dataclass(frozen=True, slots=True)
class Rejected:
    """The row cannot become a valid event; it becomes a dead letter with this reason."""

    position: Position
    source_key: str
    event_id: str
    reason: str
    row: dict[str, Any]


RowOutcome = Event | Filtered | Rejected


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event (or row) that will not be delivered, and why."""

    event_id: str
    source_key: str
    reason: str
    payload: dict[str, Any]
    vendor_status: int | None = None
    vendor_message: str | None = None


@dataclass(slots=True)
class Batch:
    """A run of consecutive source rows: the events to send plus the rows that need no request.

    ``first``/``last`` bound every row assigned to the batch, so that acknowledging it lets the
    cursor move past all of them.
    """

    seq: int
    first: Position
    last: Position
    events: list[Event] = field(default_factory=list)
    # Each event's payload as JSON, encoded once. The payloads themselves are not kept: they
    # are freed while still in the processor's cache (freed a batch later, they cost 1 us each).
    encoded: list[bytes] = field(default_factory=list)
    nbytes: int = 0
    rows_read: int = 0
    filtered: int = 0
    rejected: list[DeadLetter] = field(default_factory=list)

    def payload(self, index: int) -> dict[str, Any]:
        """The payload of event ``index``, as sent."""
        value: dict[str, Any] = json.loads(self.encoded[index])  # exact, big integers too
        return value


@dataclass(slots=True)
class SendResult:
    """What the vendor did with a batch's events."""

    delivered: list[int] = field(default_factory=list)  # indexes into Batch.events
    dead: list[tuple[int, int | None, str]] = field(default_factory=list)  # index, status, message
    requests: int = 0
    retries: int = 0
    throttled: int = 0  # 429 responses
    # delivered after a failure that may have stored them already (timeout, 5xx, lost reply)
    ambiguous: set[int] = field(default_factory=set)
    last_status: int | None = None

    def merge(self, other: SendResult) -> None:
        self.delivered.extend(other.delivered)
        self.dead.extend(other.dead)
        self.requests += other.requests
        self.retries += other.retries
        self.throttled += other.throttled
        self.ambiguous |= other.ambiguous
        if other.last_status is not None:
            self.last_status = other.last_status
