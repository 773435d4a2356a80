"""A partition's checkpoint row, as the rest of the tool reads it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from etl.events import Position
from etl.state.positions import decode_position


@dataclass(frozen=True)
class Checkpoint:
    destination: str
    partition: str
    status: str
    cursor: Position | None
    rows_read: int
    delivered: int
    dead_letters: int
    filtered: int
    in_doubt: int
    requests: int
    retries: int
    throttled: int
    deleted: int
    moved: int
    changed: int
    near_misses: int  # rows filtered only because of case or spaces (near_miss: the first)
    near_miss: str | None
    fingerprint: str
    settings: str | None  # JSON {event setting: hash} (None: written by an earlier version)
    error: str | None
    started_at: datetime | None
    updated_at: datetime | None
    log_purged_at: datetime | None

    @property
    def balanced(self) -> bool:
        return self.rows_read == self.delivered + self.dead_letters + self.filtered

    @property
    def present(self) -> int:
        """Rows read that the source still holds: what a count of the partition should give."""
        return self.rows_read - self.deleted - self.moved

    @classmethod
    def from_row(cls, row: Any) -> Checkpoint:
        values = {name: row[name] for name in cls.__dataclass_fields__ if name != "cursor"}
        return cls(**values, cursor=decode_position(row["cursor"]))
