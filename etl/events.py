"""The typed objects carried through the pipeline: events, row outcomes, batches, send results."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
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
    """The row is not for this destination. ``near_miss``: (column, value) when the filter
    drops it only because of case or spaces in that value."""

    position: Position
    source_key: str
    near_miss: NearMiss | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """The row cannot become a valid event; it becomes a dead letter with this reason."""

    position: Position
    source_key: str
    event_id: str
    reason: str
    row: dict[str, Any]


RowOutcome = Event | Filtered | Rejected

NearMiss = tuple[str, str]  # a filter's column, and a value it drops only for case or spaces


def near_miss_text(miss: NearMiss) -> str:
    """How a near miss is said: the filter's key and the value it drops."""
    return f"mapping.filter.{miss[0]}: {miss[1]!r}"


# what a prepared row is (Rows.kinds)
EVENT, FILTERED, REJECTED = b"e"[0], b"f"[0], b"r"[0]


@dataclass(slots=True)
class Rows:
    """A chunk of rows mapped and encoded for one destination, a list per attribute (cheap to
    pass between processes and to select from): what the batcher cuts into requests.

    Per row: its kind (:data:`EVENT`, :data:`FILTERED` or :data:`REJECTED`), source key and
    keyset position; for an event, its payload as JSON and its user (to mask it in samples);
    for a rejected row, its dead letter (``rejected``, by index); for a filtered row that only
    case or spaces kept out, that column and value (``near``, by index).
    """

    kinds: bytes
    keys: list[str]
    positions: list[Position]
    encoded: list[bytes]
    users: list[str]
    rejected: dict[int, DeadLetter] = field(default_factory=dict)
    near: dict[int, NearMiss] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.kinds)

    def select(self, indexes: list[int]) -> Rows:
        """These rows only, in this order."""
        kinds, keys, positions = self.kinds, self.keys, self.positions
        encoded, users, rejected, near = self.encoded, self.users, self.rejected, self.near
        return Rows(
            bytes(kinds[i] for i in indexes),
            [keys[i] for i in indexes],
            [positions[i] for i in indexes],
            [encoded[i] for i in indexes],
            [users[i] for i in indexes],
            {n: rejected[i] for n, i in enumerate(indexes) if i in rejected},
            {n: near[i] for n, i in enumerate(indexes) if i in near},
        )


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
class Slice:
    """The rows of one partition in a batch: a run of consecutive rows of that partition, and
    the range ``start:end`` of the batch's events that came from them.

    ``first``/``last`` bound every row of the slice, so that committing it lets the partition's
    cursor move past all of them.
    """

    partition: str
    seq: int  # the partition's own sequence of slices: its ledger rows
    first: Position
    last: Position
    start: int = 0
    end: int = 0
    filtered: list[str] = field(default_factory=list)  # source keys of filtered rows
    near_misses: list[NearMiss] = field(default_factory=list)  # of the filtered rows
    rejected: list[DeadLetter] = field(default_factory=list)
    keys_text: str | None = field(default=None, repr=False, compare=False)

    @property
    def rows_read(self) -> int:
        return self.end - self.start + len(self.filtered) + len(self.rejected)

    def keys_json(self, batch: Batch) -> str:
        """The source keys of its events as JSON, encoded once (the ledger and the delivery log
        both keep them)."""
        if self.keys_text is None:
            self.keys_text = json.dumps(batch.keys[self.start : self.end])
        return self.keys_text


@dataclass(slots=True)
class Batch:
    """What one request carries (its events, a list per attribute) and the rows that need
    none, cut into one slice per partition: a batch may hold the end of one day and the start
    of the next."""

    batch_id: str
    slices: list[Slice] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # each event's source key
    users: list[str] = field(default_factory=list)
    # Each event's payload as JSON, encoded once. The payloads themselves are not kept: they
    # are freed while still in the processor's cache (freed a batch later, they cost 1 us each).
    encoded: list[bytes] = field(default_factory=list)
    nbytes: int = 0
    rows: int = 0

    @property
    def size(self) -> int:
        """Its events."""
        return len(self.encoded)

    def payload(self, index: int) -> dict[str, Any]:
        """The payload of event ``index``, as sent."""
        value: dict[str, Any] = json.loads(self.encoded[index])  # exact, big integers too
        return value

    # what the slices hold together
    @property
    def seq(self) -> int:
        return self.slices[0].seq

    @property
    def first(self) -> Position:
        return self.slices[0].first

    @property
    def last(self) -> Position:
        return self.slices[-1].last

    @property
    def rows_read(self) -> int:
        return self.rows

    @property
    def filtered(self) -> int:
        return sum(len(s.filtered) for s in self.slices)

    @property
    def rejected(self) -> list[DeadLetter]:
        return [d for s in self.slices for d in s.rejected]


@dataclass(frozen=True, slots=True)
class SliceCounts:
    """What a slice's answers add to its partition's counters."""

    delivered: int
    vendor_dead: int
    in_doubt: int


@dataclass(slots=True)
class SendResult:
    """What the vendor did with a batch's events."""

    delivered: list[int] = field(default_factory=list)  # indexes of the batch's events
    dead: list[tuple[int, int | None, str]] = field(default_factory=list)  # index, status, message
    requests: int = 0
    retries: int = 0
    throttled: int = 0  # 429 responses
    # per event, the attempts before its final answer whose fate is unknown (a timeout, a 5xx,
    # a lost reply, an answer that is not the vendor's success): each may have stored a copy
    unknown: Counter[int] = field(default_factory=Counter)
    last_status: int | None = None
    not_sent: bool = False  # stopped before any request of the batch left

    @property
    def ambiguous(self) -> set[int]:
        """The events that may have been stored more than once."""
        return {i for i, n in self.unknown.items() if n > 0}
