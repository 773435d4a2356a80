"""Which partition a row belongs to, decided in SQL: a UTC day, or no day at all.

Every row of the source falls in exactly one of: the UTC day of its timestamp, ``undated`` (no
timestamp, or one that is not a timestamp: these become dead letters), before ``start_date``, or
after the range. How the warehouse tells depends on the column:

- a real timestamp column is compared with the day's bounds in its own representation;
- a ``datetime`` kept as text (SQLite) is compared as text with the bounds written as the
  warehouse writes them; a value that does not start with a date is undated;
- an epoch column is compared with numbers;
- a ``text`` column may mix ISO-8601 with offsets and epoch digits: every value is read as UTC
  microseconds by the same grammar as :mod:`etl.timestamps` (a Python function on SQLite and
  DuckDB, an expression on PostgreSQL), after a text prefilter that lets an index on the column
  narrow the rows it reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

import sqlalchemy as sa

from etl.database import TEXT_FUNCTION
from etl.errors import ConfigError
from etl.timestamps import (
    EPOCH_PATTERN,
    ISO_PATTERN,
    MAX_EPOCH_US,
    MS_DIGITS,
    SPACES,
    TimestampType,
    day_bounds,
    epoch_us,
)

UNDATED = "undated"  # the partition of rows without a readable timestamp


@dataclass(frozen=True)
class Outside:
    """Rows of the source that no partition of a range holds, by kind."""

    no_timestamp: int = 0  # NULL: dead letters of the undated partition
    unreadable: int = 0  # a value that is not a timestamp: dead letters too
    before_start: int = 0  # before start_date: never sent
    after_range: int = 0  # after the range's last day (today's and later rows, by default)

    @property
    def undated(self) -> int:
        return self.no_timestamp + self.unreadable

    def lines(self, last_day: date, start_date: date) -> list[str]:
        """'N kind' for every kind that has rows."""
        kinds = [
            (self.no_timestamp, "without a timestamp (dead letters)"),
            (self.unreadable, "with a timestamp that is not one (dead letters)"),
            (self.before_start, f"before start_date {start_date}"),
            (self.after_range, f"after {last_day}"),
        ]
        return [f"{count:,} {what}" for count, what in kinds if count]


def partition_key(day: date | None) -> str:
    """The state tables' name of a partition: its day, or ``undated``."""
    return UNDATED if day is None else day.isoformat()


class Windows:
    """The SQL conditions that place rows in partitions, for one timestamp column."""

    # before and after are ranges of the column's values, which an index on it counts without
    # reading the rows: the kinds of rows outside the partitions are better counted one by one
    ranges = False

    def __init__(self, column: sa.ColumnElement[Any]) -> None:
        self.column = column

    def source(self, relation: sa.FromClause) -> sa.FromClause:
        """What the queries read from (a column may need a join to be read)."""
        return relation

    def days(self, first: date, last: date) -> sa.ColumnElement[bool]:
        """Rows of the UTC days first..last inclusive."""
        lo, hi = day_bounds(first)[0], day_bounds(last)[1]
        return sa.and_(self.column >= self.bound(lo), self.column < self.bound(hi))

    def undated(self) -> sa.ColumnElement[bool]:
        return self.column.is_(None)

    def unreadable(self) -> sa.ColumnElement[bool]:
        """Undated rows that have a value (one that is not a timestamp)."""
        return sa.and_(self.column.is_not(None), self.undated())

    def before(self, day: date) -> sa.ColumnElement[bool]:
        return sa.and_(sa.not_(self.undated()), self.column < self.bound(day_bounds(day)[0]))

    def after(self, day: date) -> sa.ColumnElement[bool]:
        return sa.and_(sa.not_(self.undated()), self.column >= self.bound(day_bounds(day)[1]))

    def bound(self, instant: datetime) -> Any:
        raise NotImplementedError


class NativeWindows(Windows):
    """A timestamp column: bounds in UTC if it holds aware values, else in the source's zone."""

    ranges = True

    def __init__(self, column: sa.ColumnElement[Any], aware: bool, tz: tzinfo) -> None:
        super().__init__(column)
        self.aware = aware
        self.tz = tz

    def bound(self, instant: datetime) -> Any:
        if self.aware:
            return instant.astimezone(UTC)
        return instant.astimezone(self.tz).replace(tzinfo=None)


class IsoTextWindows(Windows):
    """A ``datetime`` kept as ISO text (SQLite, or a text column): compared as text, with the
    bounds written as such text is; a value that does not start with YYYY-MM-DD is undated."""

    ranges = True

    def __init__(self, column: sa.ColumnElement[Any], tz: tzinfo, dialect: str) -> None:
        super().__init__(binary_text(column, dialect))
        self.tz = tz
        self.shaped = _starts_with_a_date(column, dialect)

    def undated(self) -> sa.ColumnElement[bool]:
        return sa.or_(self.column.is_(None), sa.not_(self.shaped))

    def bound(self, instant: datetime) -> Any:
        local = instant.astimezone(self.tz).replace(tzinfo=None)
        # at midnight the date alone, which sorts before the day's every form ("T" or " ")
        if local.time() == datetime.min.time():
            return local.strftime("%Y-%m-%d")
        return local.strftime("%Y-%m-%d %H:%M:%S")


class EpochWindows(Windows):
    """A number of seconds or milliseconds since the epoch."""

    ranges = True

    def __init__(self, column: sa.ColumnElement[Any], per_second: int) -> None:
        super().__init__(column)
        self.per_second = per_second

    def bound(self, instant: datetime) -> Any:
        return epoch_us(instant) * self.per_second // 1_000_000


class MixedTextWindows(Windows):
    """A ``text`` column of ISO-8601 (with or without offsets) and epoch digits, read as UTC
    microseconds by the grammar of :mod:`etl.timestamps`."""

    def __init__(
        self,
        relation: sa.FromClause,
        column: sa.ColumnElement[Any],
        zone_name: str,
        dialect: str,
    ) -> None:
        self.raw = binary_text(column, dialect)
        self.lateral: sa.FromClause | None = None
        if dialect in ("sqlite", "duckdb"):
            function = getattr(sa.func, TEXT_FUNCTION)
            micros: sa.ColumnElement[Any] = function(column, zone_name, type_=sa.BigInteger)
        elif dialect == "postgresql":
            self.lateral, micros = _postgres_text_to_epoch_us(relation, column, zone_name)
        else:
            raise ConfigError(
                "source.timestamp_type: text is read on SQLite, PostgreSQL and DuckDB; on "
                f"{dialect}, convert the column to a timestamp (or a view of one) and use datetime"
            )
        super().__init__(micros)

    def source(self, relation: sa.FromClause) -> sa.FromClause:
        if self.lateral is None:
            return relation
        return relation.join(self.lateral, sa.true())

    def bound(self, instant: datetime) -> Any:
        return epoch_us(instant)

    def days(self, first: date, last: date) -> sa.ColumnElement[bool]:
        return sa.and_(self._candidates(first, last), super().days(first, last))

    def undated(self) -> sa.ColumnElement[bool]:
        return self.column.is_(None)

    def unreadable(self) -> sa.ColumnElement[bool]:
        return sa.and_(self.raw.is_not(None), self.column.is_(None))

    def _candidates(self, first: date, last: date) -> sa.ColumnElement[bool]:
        """A text condition that every row of the days meets (and a few others), so that the
        grammar runs on few rows and an index on the column can serve it: ISO text written on
        the day before to the day after (an offset or the source's zone moves a time by less
        than a day), epoch digits between the days' bounds (seconds and milliseconds alike:
        the same digits lead), and anything that starts with a space or a sign."""
        raw = self.raw
        lo, hi = day_bounds(first)[0], day_bounds(last)[1]
        written = sa.and_(
            raw >= (first - timedelta(days=1)).isoformat(),
            raw < (last + timedelta(days=2)).isoformat(),
        )
        ranges = [written, raw < "0"]
        for low, high in _same_length_ranges(epoch_us(lo) // 1_000_000, epoch_us(hi) // 1_000_000):
            ranges.append(sa.and_(raw >= str(low), raw < str(high)))
        return sa.or_(*ranges)


def _same_length_ranges(low: int, high: int) -> list[tuple[int, int]]:
    """[low, high) cut where the number of digits changes: within each piece, text order is
    number order (and an epoch in milliseconds sorts with the seconds that lead it)."""
    pieces = []
    while low < high:
        edge = min(high, 10 ** len(str(low)))
        pieces.append((low, edge))
        low = edge
    return pieces


def binary_text(column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[Any]:
    """The column as text compared byte by byte (PostgreSQL's default collation may ignore
    punctuation, which would break ranges of ISO text)."""
    text = sa.type_coerce(column, sa.String())
    return sa.collate(text, "C") if dialect == "postgresql" else text


def _starts_with_a_date(column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[bool]:
    text = sa.type_coerce(column, sa.String())
    if dialect == "sqlite":
        return text.op("GLOB", is_comparison=True)("[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*")
    return text.regexp_match("^[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _postgres_text_to_epoch_us(
    relation: sa.FromClause, column: sa.ColumnElement[Any], zone_name: str
) -> tuple[sa.FromClause, sa.ColumnElement[Any]]:
    """The grammar of :mod:`etl.timestamps` in PostgreSQL: a LATERAL subquery matches each value
    once against the ISO and the epoch patterns, and an expression turns the parts into UTC
    microseconds (NULL where no pattern matches or a part is out of range)."""
    from sqlalchemy.dialects.postgresql import ARRAY  # 20 ms to import: PostgreSQL only

    trimmed = sa.func.btrim(sa.type_coerce(column, sa.String()), SPACES)
    iso = sa.func.regexp_match(trimmed, f"^{ISO_PATTERN}$", type_=ARRAY(sa.Text))
    epoch = sa.func.regexp_match(trimmed, f"^{EPOCH_PATTERN}$", type_=ARRAY(sa.Text))
    # OFFSET 0 keeps PostgreSQL from pulling the subquery up into the conditions, where each
    # use of a part would match the patterns again (dozens of regexp_match a row)
    parts = (
        sa.select(iso.label("iso"), epoch.label("epoch"))
        .correlate(relation)
        .offset(0)
        .lateral("etl_ts")
    )
    micros = sa.case(
        (parts.c.epoch.is_not(None), _pg_epoch_micros(parts.c.epoch)),
        (parts.c.iso.is_not(None), _pg_iso_micros(parts.c.iso, zone_name)),
    )
    return parts, sa.cast(micros, sa.BigInteger)


def _num(part: Any) -> sa.ColumnElement[Any]:
    """A matched group of digits as a number (0 where the group did not match)."""
    return sa.cast(sa.func.coalesce(sa.func.nullif(part, ""), "0"), sa.BigInteger)


def _fraction(part: Any, digits: int) -> sa.ColumnElement[Any]:
    """The first ``digits`` digits of a fraction, padded with zeros."""
    padded = sa.func.rpad(sa.func.coalesce(part, ""), digits, "0")
    return sa.cast(sa.func.substr(padded, 1, digits), sa.BigInteger)


def _pg_epoch_micros(epoch: Any) -> sa.ColumnElement[Any]:
    """Epoch digits: seconds under 10^11, milliseconds from there; none past the year 9999."""
    whole = epoch[1]
    micros = sa.case(
        (
            sa.func.length(whole) < MS_DIGITS,
            sa.cast(whole, sa.Numeric) * 1_000_000 + _fraction(epoch[2], 6),
        ),
        (sa.func.length(whole) <= 15, sa.cast(whole, sa.Numeric) * 1000 + _fraction(epoch[2], 3)),
    )
    return sa.case((micros <= MAX_EPOCH_US, micros))


def _pg_iso_micros(iso: Any, zone_name: str) -> sa.ColumnElement[Any]:
    """ISO-8601 parts as UTC microseconds. Dates are counted with integers, so that no invalid
    date reaches a cast; a naive time in another zone than UTC goes through ``AT TIME ZONE``."""
    y, m, d = _num(iso[1]), _num(iso[2]), _num(iso[3])
    hh, mi, ss, zone_text = _num(iso[4]), _num(iso[5]), _num(iso[6]), iso[8]
    micros_of_day = ((hh * 60 + mi) * 60 + ss) * 1_000_000 + _fraction(iso[7], 6)
    local_micros = _days_from_civil(y, m, d) * 86_400_000_000 + micros_of_day
    zone_hours = _num(sa.func.substr(zone_text, 2, 2))
    zone_minutes = _num(sa.func.substr(sa.func.replace(zone_text, ":", ""), 4, 2))
    utc = zone_text.in_(["Z", "z"])
    sign = sa.case((sa.func.substr(zone_text, 1, 1) == "-", -1), else_=1)
    offset_micros = sa.case((utc, 0), else_=sign * (zone_hours * 60 + zone_minutes) * 60_000_000)
    zone_ok = sa.or_(zone_text.is_(None), utc, sa.and_(zone_hours <= 23, zone_minutes <= 59))
    valid = sa.and_(
        y >= 1,
        m.between(1, 12),
        d.between(1, _days_in_month(y, m)),
        hh <= 23,
        mi <= 59,
        ss <= 59,
        zone_ok,
    )
    if zone_name in ("UTC", "Etc/UTC"):
        naive_micros: sa.ColumnElement[Any] = local_micros
    else:
        seconds = sa.cast(ss, sa.Float) + sa.cast(_fraction(iso[7], 6), sa.Float) / 1_000_000
        ints = [sa.cast(part, sa.Integer) for part in (y, m, d, hh, mi)]
        aware = sa.func.make_timestamp(*ints, seconds).op("AT TIME ZONE")(sa.literal(zone_name))
        naive_micros = sa.cast(sa.extract("epoch", aware) * 1_000_000, sa.BigInteger)
    return sa.case(
        (sa.and_(valid, zone_text.is_(None)), naive_micros),
        (valid, local_micros - offset_micros),
    )


def _days_from_civil(y: Any, m: Any, d: Any) -> Any:
    """Days since 1970-01-01 of a proleptic Gregorian date, in integers (H. Hinnant's)."""
    y_march = y - sa.case((m <= 2, 1), else_=0)
    era = y_march // 400
    year_of_era = y_march - era * 400
    day_of_year = (153 * (m + sa.case((m > 2, -3), else_=9)) + 2) // 5 + d - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146_097 + day_of_era - 719_468


def _days_in_month(y: Any, m: Any) -> Any:
    leap = sa.or_(sa.and_(y % 4 == 0, y % 100 != 0), y % 400 == 0)
    february = sa.case((leap, 29), else_=28)
    return sa.case((m == 2, february), (m.in_([4, 6, 9, 11]), 30), else_=31)


def windows_for(
    relation: sa.FromClause,
    column: sa.ColumnElement[Any],
    kind: TimestampType,
    dialect: str,
    zone_name: str,
    tz: tzinfo,
    stored_as_text: bool,
    aware: bool,
) -> Windows:
    """The windows of a timestamp column of this ``kind`` in this warehouse."""
    if kind == "text":
        return MixedTextWindows(relation, column, zone_name, dialect)
    if kind in ("epoch_s", "epoch_ms"):
        return EpochWindows(column, 1 if kind == "epoch_s" else 1000)
    if stored_as_text:
        return IsoTextWindows(column, tz, dialect)
    return NativeWindows(column, aware, tz)
