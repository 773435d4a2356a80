"""What a mapping's filter keeps, and the event names a vendor sees, computed alike.

A filter on the event name's column compares names as the vendor receives them (renamed, and
lowercased when ``lowercase`` is set, renames then matching whatever the case), so that a row
whose action is ``Game_Played`` is not dropped by ``filter: {action: [game_played]}`` when its
event would be ``game_played``. Rows that a filter drops only because of case or spaces are
counted for ``etl plan``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from etl.config import EventNameFromColumn, MappingConfig
from etl.values import normalize


class EventNames:
    """The event name of a raw value of the name column."""

    def __init__(self, spec: EventNameFromColumn) -> None:
        self.spec = spec
        self.column = spec.column
        self._lower = {k.lower(): v for k, v in spec.rename.items()} if spec.lowercase else {}

    def name_of(self, raw: str) -> str:
        spec = self.spec
        name = spec.rename.get(raw)
        if name is None and spec.lowercase:
            name = self._lower.get(raw.lower())
        if name is None:
            name = raw
        return name.lower() if spec.lowercase else name


class RowFilter:
    """``mapping.filter``: column -> allowed values; a row failing any column is filtered."""

    def __init__(self, mapping: MappingConfig, names: EventNames | None) -> None:
        self.names = names
        self.allowed = {
            col: {self.form(col, v) for v in values} for col, values in mapping.filter.items()
        }
        self._loose = {
            col: {normalize(v).strip().casefold() for v in values}
            for col, values in mapping.filter.items()
        }
        self.track_near_misses = False
        self.near_misses: dict[str, tuple[int, str]] = {}  # column -> (rows, an example value)

    def form(self, column: str, value: Any) -> str:
        """A value as the filter compares it: as text; in the event name's column, as the
        vendor sees the name."""
        text = value if type(value) is str else normalize(value)
        if self.names is not None and column == self.names.column:
            return self.names.name_of(text)
        return text

    def keeps(self, row: dict[str, Any]) -> bool:
        """One row passes every column."""
        for column, allowed in self.allowed.items():
            if self.form(column, row.get(column)) not in allowed:
                self._near_miss(column, row.get(column))
                return False
        return True

    def kept(self, column_values: dict[str, Sequence[Any]], n: int) -> list[bool]:
        """Which rows of a chunk pass every column (its values by column)."""
        keep = [True] * n
        for column, allowed in self.allowed.items():
            values = column_values[column]
            if self.names is not None and column == self.names.column:
                keep = [
                    k and self.form(column, v) in allowed for k, v in zip(keep, values, strict=True)
                ]
            else:
                keep = [
                    k and (v if type(v) is str else normalize(v)) in allowed
                    for k, v in zip(keep, values, strict=True)
                ]
            if self.track_near_misses:
                for k, v in zip(keep, values, strict=True):
                    if not k:
                        self._near_miss(column, v)
        return keep

    def _near_miss(self, column: str, value: Any) -> None:
        """Count a filtered row whose value matches only once case and spaces are ignored."""
        if not self.track_near_misses or value is None:
            return
        if self.form(column, value) in self.allowed[column]:
            return
        text = normalize(value)
        if text.strip().casefold() in self._loose[column]:
            count, example = self.near_misses.get(column, (0, text))
            self.near_misses[column] = (count + 1, example)
