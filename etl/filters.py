"""What a mapping's filter keeps, and the event names a vendor sees, computed alike.

A filter on the event name's column compares names as the vendor receives them (renamed, and
lowercased when ``lowercase`` is set, renames then matching whatever the case), so that a row
whose action is ``Game_Played`` is not dropped by ``filter: {action: [game_played]}`` when its
event would be ``game_played``. Rows that a filter drops only because of case or spaces are
marked (near misses), so that a run, its status and its plan can say how many.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from etl.config import EventNameFromColumn, MappingConfig
from etl.events import NearMiss
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


_KEPT, _NEAR, _OUT = 0, 1, 2  # a value against a column's filter


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
        self._verdicts: dict[tuple[str, type, Any], int] = {}  # values repeat: judged once

    def form(self, column: str, value: Any) -> str:
        """A value as the filter compares it: as text; in the event name's column, as the
        vendor sees the name."""
        text = value if type(value) is str else normalize(value)
        if self.names is not None and column == self.names.column:
            return self.names.name_of(text)
        return text

    def keeps(self, row: dict[str, Any]) -> bool:
        """One row passes every column."""
        return all(self.form(c, row.get(c)) in allowed for c, allowed in self.allowed.items())

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
        return keep

    def near_misses(
        self, column_values: dict[str, Sequence[Any]], keep: list[bool]
    ) -> dict[int, NearMiss]:
        """The filtered rows of a chunk that every column would keep but for case or spaces:
        by index, the first such column and its value."""
        found: dict[int, NearMiss] = {}
        for i, kept in enumerate(keep):
            if not kept:
                miss = self.near_miss({c: column_values[c][i] for c in self.allowed})
                if miss is not None:
                    found[i] = miss
        return found

    def near_miss(self, values: dict[str, Any]) -> NearMiss | None:
        """For a filtered row's values (by column): the column and value that only case or
        spaces keep out, if every column it fails is such a one; else None."""
        miss: NearMiss | None = None
        for column in self.allowed:
            value = values.get(column)
            verdict = self._verdict(column, value)
            if verdict == _OUT:
                return None
            if verdict == _NEAR and miss is None:
                miss = (column, normalize(value))
        return miss

    def _verdict(self, column: str, value: Any) -> int:
        try:
            return self._verdicts[column, type(value), value]
        except KeyError:
            pass
        except TypeError:  # a value that cannot be a dict key (a list, a dict): judged afresh
            return self._judge(column, value)
        verdict = self._verdicts[column, type(value), value] = self._judge(column, value)
        return verdict

    def _judge(self, column: str, value: Any) -> int:
        if self.form(column, value) in self.allowed[column]:
            return _KEPT
        if value is not None and normalize(value).strip().casefold() in self._loose[column]:
            return _NEAR
        return _OUT
