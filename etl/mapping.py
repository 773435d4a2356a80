"""Mapping: one source row in, an Event, Filtered or Rejected (with its reason) out. Pure."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from etl.config import ArgSpec, DestinationConfig, EventNameFromColumn, SourceConfig
from etl.events import (
    ArgValue,
    Event,
    Filtered,
    Position,
    Rejected,
    RowOutcome,
    event_id_for,
    event_ids_for,
)
from etl.filters import EventNames, RowFilter
from etl.timestamps import TimestampError, localize, to_utc, zone
from etl.values import (
    ArgTypeError,
    coerce_arg,
    is_missing,
    json_safe,
    parse_json_object,
)
from etl.vendors.base import Vendor


class Mapper:
    """Turns rows into events for one destination; pure apart from its immutable settings."""

    def __init__(
        self, destination: str, dest: DestinationConfig, source: SourceConfig, vendor: Vendor
    ):
        self.destination = destination
        self.mapping = dest.mapping
        self.vendor = vendor
        self.key_column = source.key_column
        self.ts_column = source.timestamp_column
        self.ts_type = source.timestamp_type
        self.tz = zone(source.timezone)
        spec = self.mapping.event_name
        self.names = EventNames(spec) if isinstance(spec, EventNameFromColumn) else None
        self.filter = RowFilter(self.mapping, self.names)
        self.columns = sorted(self.mapping.columns() | {self.key_column, self.ts_column})
        self._args = list(self.mapping.args.items())
        self._fields = list(self.mapping.fields.items())
        self._ids = vendor.sends_event_id

    def map_row(self, row: dict[str, Any]) -> RowOutcome:
        position = (row[self.ts_column], row[self.key_column])
        key = row[self.key_column]
        source_key = key if type(key) is str else str(json_safe(key))
        if not self.filter.keeps(row):
            return Filtered(position, source_key, self.filter.near_miss(row))
        event_id = event_id_for(self.destination, source_key)
        try:
            event = self._event(row, position, source_key, event_id if self._ids else "")
            problem = self.vendor.validate(event)
        except _RowProblem as exc:
            problem = str(exc)
        if problem is None:
            return event
        safe_row = {c: json_safe(row.get(c)) for c in self.columns}
        return Rejected(position, source_key, event_id, problem, safe_row)

    def map_chunk(self, names: list[str], rows: Sequence[Sequence[Any]]) -> list[RowOutcome]:
        """``map_row`` of every row of a chunk (its column ``names``, its rows' values in that
        order, as ``Source.read_tuples`` gives them), computed a column at a time.

        The same outcomes, several times faster: every column is read once into a list and
        converted by a tight loop over its common types (text, numbers). A row with a value no
        fast path decides (missing, of another type, unparsable) or that the vendor refuses goes
        through ``map_row``, so every event and every reason is the one ``map_row`` gives.
        """
        n = len(rows)
        column = _column_reader(names, rows)
        positions = list(zip(column(self.ts_column), column(self.key_column), strict=True))
        source_keys = [
            k if type(k) is str else str(k) if type(k) is int else str(json_safe(k))
            for _, k in positions
        ]
        by_column = {c: column(c) for c in self.filter.allowed}
        keep = self.filter.kept(by_column, n)
        near = self.filter.near_misses(by_column, keep) if not all(keep) else {}
        slow = [not k for k in keep]  # no fast path for filtered rows: they need none
        events = self._events(column, positions, source_keys, slow)
        validate = self.vendor.validate
        return [
            Filtered(positions[i], source_keys[i], near.get(i))
            if not keep[i]
            else self.map_row(dict(zip(names, rows[i], strict=True)))
            if slow[i] or validate(events[i]) is not None
            else events[i]
            for i in range(n)
        ]

    def _events(
        self,
        column: _Column,
        positions: list[Position],
        source_keys: list[str],
        slow: list[bool],
    ) -> list[Event]:
        """Every row's event as the fast paths build it; rows they cannot decide are marked
        ``slow`` (their event is then meaningless and ``map_row`` decides)."""
        n = len(positions)
        mapping = self.mapping
        times = self._times([p[0] for p in positions], slow)
        event_names = self._names(column, n, slow)
        users = _texts(column(mapping.user.column), slow)
        user_types: list[str | None]
        if mapping.user.type_column is not None:
            user_types = list(_texts(column(mapping.user.type_column), slow))
        else:
            user_types = [mapping.user.type] * n
        args = self._typed_columns(column, n, self._args, slow)
        fields = self._typed_columns(column, n, self._fields, slow) if self._fields else None
        props = None
        if mapping.properties_column:
            props = self._properties(column(mapping.properties_column), slow)
        # the id of every event, or only where the vendor needs it (the others compute it for
        # the few rows that become dead letters): a SHA-256 a row is a tenth of the mapping
        ids = event_ids_for(self.destination, source_keys) if self._ids else [""] * n
        values = zip(
            ids,
            source_keys,
            positions,
            event_names,
            users,
            user_types,
            times,
            args,
            fields or [{}] * n,
            props or [{}] * n,
            strict=True,
        )
        return [Event(*v) for v in values]

    def _times(self, values: list[Any], slow: list[bool]) -> list[datetime | None]:
        """Timestamps in UTC; a value no fast path reads is left to map_row."""
        tz, kind = self.tz, self.ts_type
        if kind == "text":  # the grammar that placed the row in its partition, value by value
            return self._each_time(values, slow, lambda v: to_utc(v, "text", tz))
        parse = datetime.fromisoformat
        if kind == "datetime" and tz is UTC:
            try:  # the commonest case: ISO text without an offset (datetime.replace is slow)
                return [parse(v + "+00:00") for v in values]
            except (TypeError, ValueError, OverflowError):
                pass
            try:  # every value is ISO text
                every = [parse(v) for v in values]
                return [
                    p.replace(tzinfo=UTC) if p.tzinfo is None else p.astimezone(UTC) for p in every
                ]
            except (TypeError, ValueError, OverflowError):
                pass  # some value is not: value by value

        def one(value: Any) -> datetime:
            if kind != "datetime" or type(value) not in (str, datetime):
                raise TimestampError("no fast path")
            return localize(parse(value) if type(value) is str else value, tz)

        return self._each_time(values, slow, one)

    @staticmethod
    def _each_time(
        values: list[Any], slow: list[bool], read: Callable[[Any], datetime]
    ) -> list[datetime | None]:
        out: list[datetime | None] = [None] * len(values)
        for i, value in enumerate(values):
            if slow[i]:
                continue
            try:
                out[i] = read(value)
            except ValueError:  # TimestampError too: map_row says why
                slow[i] = True
        return out

    def _names(self, column: _Column, n: int, slow: list[bool]) -> list[str]:
        spec = self.mapping.event_name
        if not isinstance(spec, EventNameFromColumn):
            return [spec] * n
        raw = _texts(column(spec.column), slow, strip=False)
        assert self.names is not None
        return [self.names.name_of(v) if v is not None else "" for v in raw]

    def _typed_columns(
        self, column: _Column, n: int, specs: list[tuple[str, ArgSpec]], slow: list[bool]
    ) -> list[dict[str, ArgValue]]:
        out: list[dict[str, ArgValue]] = [{} for _ in range(n)]
        for name, spec in specs:
            kind, required = spec.type, spec.required
            value: Any
            for i, value in enumerate(column(spec.column)):
                kind_of = type(value)
                if kind_of is str:
                    if not value or value.isspace():
                        if required:
                            slow[i] = True
                        continue
                    if kind == "string":
                        out[i][name] = value
                        continue
                elif kind_of is float and kind == "number":
                    if value != value:  # NaN: missing
                        if required:
                            slow[i] = True
                        continue
                    if math.isfinite(value):
                        out[i][name] = (
                            int(value) if value.is_integer() and abs(value) < 2**53 else value
                        )
                        continue
                elif kind_of is int and kind in ("number", "integer"):
                    out[i][name] = value
                    continue
                elif value is None:
                    if required:
                        slow[i] = True
                    continue
                if slow[i]:
                    continue
                try:  # the general rules, for the other types
                    if is_missing(value):
                        if required:
                            slow[i] = True
                        continue
                    out[i][name] = coerce_arg(value, kind)
                except ArgTypeError:
                    slow[i] = True
        return out

    def _properties(self, values: Sequence[Any], slow: list[bool]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{}] * len(values)
        for i, value in enumerate(values):
            if slow[i]:
                continue
            try:
                out[i] = parse_json_object(value)
            except ValueError:
                slow[i] = True
        return out

    def _event(
        self, row: dict[str, Any], position: Position, source_key: str, event_id: str
    ) -> Event:
        """The row's event, or _RowProblem naming the column and what is wrong."""
        try:
            occurred_at = to_utc(row[self.ts_column], self.ts_type, self.tz)
        except TimestampError as exc:
            raise _RowProblem(f"{self.ts_column}: {exc}") from None

        name_spec = self.mapping.event_name
        if isinstance(name_spec, EventNameFromColumn):
            raw_name = row.get(name_spec.column)
            if is_missing(raw_name):
                raise _RowProblem(f"event name column {name_spec.column} is empty")
            assert self.names is not None
            name = self.names.name_of(str(raw_name))
        else:
            name = name_spec

        user = self.mapping.user
        user_value = row.get(user.column)
        if is_missing(user_value):
            raise _RowProblem(f"user identifier (column {user.column}) is missing")
        user_type = user.type
        if user.type_column is not None:
            raw_type = row.get(user.type_column)
            if is_missing(raw_type):
                raise _RowProblem(f"user identifier type (column {user.type_column}) is missing")
            user_type = str(raw_type).strip()

        properties: dict[str, Any] = {}
        if self.mapping.properties_column:
            column = self.mapping.properties_column
            try:
                properties = parse_json_object(row.get(column))
            except ValueError as exc:
                raise _RowProblem(f"properties column {column}: {exc}") from None

        return Event(
            event_id=event_id,
            source_key=source_key,
            position=position,
            name=name,
            user_id=(user_value if type(user_value) is str else str(json_safe(user_value))).strip(),
            user_type=user_type,
            occurred_at=occurred_at,
            args=_typed(row, self._args, "parameter"),
            fields=_typed(row, self._fields, "field"),
            properties=properties,
        )


def _texts(values: Sequence[Any], slow: list[bool], strip: bool = True) -> list[str | None]:
    """Non-blank text values (stripped); None, and the row marked slow, for anything else."""
    out: list[str | None] = [None] * len(values)
    for i, value in enumerate(values):
        if type(value) is str and value and not value.isspace():
            out[i] = value.strip() if strip else value
        else:
            slow[i] = True
    return out


_Column = Callable[[str | None], Sequence[Any]]
"""A chunk's values of one column, by name (None: a column not mapped, all None)."""


def _column_reader(names: list[str], rows: Sequence[Sequence[Any]]) -> _Column:
    """The chunk's columns, each read once into a tuple."""
    n = len(rows)
    by_name = dict(zip(names, zip(*rows, strict=True), strict=True)) if n else {}
    missing = (None,) * n

    def column(name: str | None) -> Sequence[Any]:
        return by_name.get(name, missing) if name is not None else missing

    return column


class _RowProblem(ValueError):
    """Why a row cannot become an event (the dead letter's reason)."""


def _typed(row: dict[str, Any], specs: list[tuple[str, ArgSpec]], what: str) -> dict[str, ArgValue]:
    out: dict[str, ArgValue] = {}
    for name, spec in specs:
        problem = _add_arg(out, what, name, spec, row.get(spec.column))
        if problem:
            raise _RowProblem(problem)
    return out


def _add_arg(
    out: dict[str, ArgValue], what: str, name: str, spec: ArgSpec, value: Any
) -> str | None:
    if is_missing(value):
        if spec.required:
            return f"{what} {name} (column {spec.column}) is missing"
        return None
    try:
        out[name] = coerce_arg(value, spec.type)
    except ArgTypeError as exc:
        return f"{what} {name} (column {spec.column}): {exc}"
    return None
