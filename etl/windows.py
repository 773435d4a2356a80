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

    def day_range(self, day: date) -> tuple[Any, Any]:
        """The column's values from which and before which a row is of that UTC day (where
        ``ranges``: a day is one range of the column)."""
        lo, hi = day_bounds(day)
        return self.bound(lo), self.bound(hi)

    def about(self, first: date, last: date) -> sa.ColumnElement[bool]:
        """Rows of the UTC days first..last, and perhaps a few beside them: what a size is
        estimated by (the days themselves unless that costs more)."""
        return self.days(first, last)

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

    def day_number(self, dialect: str) -> sa.ColumnElement[Any] | None:
        """A row's UTC day as days since 1970-01-01, in SQL, for rows of the partitions from
        1970 on; None where the warehouse cannot say it as the bounds do (then each day is
        counted with its own bounds)."""
        return None


def _days_since_epoch(
    number: sa.ColumnElement[Any], per_day: int, dialect: str
) -> sa.ColumnElement[Any]:
    """Whole days of a non-negative number of units since the epoch (SQLite may be built
    without floor: its CAST truncates, which is the same from 1970 on)."""
    days = number / float(per_day)
    return sa.cast(days if dialect == "sqlite" else sa.func.floor(days), sa.BigInteger)


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

    def day_number(self, dialect: str) -> sa.ColumnElement[Any] | None:
        if dialect not in ("postgresql", "duckdb"):
            return None
        instant = self.column
        if not self.aware:  # local times of the source's zone
            instant = instant.op("AT TIME ZONE")(sa.literal(str(self.tz)))
        return _days_since_epoch(sa.extract("epoch", instant), 86_400, dialect)


class IsoTextWindows(Windows):
    """A ``datetime`` kept as ISO text (SQLite, or a text column): compared as text, with the
    bounds written as such text is; a value that does not start with YYYY-MM-DD is undated."""

    ranges = True

    def __init__(
        self, column: sa.ColumnElement[Any], tz: tzinfo, dialect: str, bytewise: bool
    ) -> None:
        super().__init__(binary_text(column, bytewise))
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

    def day_number(self, dialect: str) -> sa.ColumnElement[Any] | None:
        return _days_since_epoch(self.column, 86_400 * self.per_second, dialect)


class MixedTextWindows(Windows):
    """A ``text`` column of ISO-8601 (with or without offsets) and epoch digits, read as UTC
    microseconds by the grammar of :mod:`etl.timestamps`."""

    def __init__(
        self,
        relation: sa.FromClause,
        column: sa.ColumnElement[Any],
        zone_name: str,
        dialect: str,
        bytewise: bool = True,
    ) -> None:
        self.raw = binary_text(column, bytewise)
        self.utc = zone_name in ("UTC", "Etc/UTC")
        self.laterals: list[sa.FromClause] = []
        if dialect in ("sqlite", "duckdb"):
            function = getattr(sa.func, TEXT_FUNCTION)
            micros: sa.ColumnElement[Any] = function(column, zone_name, type_=sa.BigInteger)
        elif dialect == "postgresql":
            self.laterals, micros = _postgres_text_to_epoch_us(relation, column, zone_name)
        else:
            raise ConfigError(
                "source.timestamp_type: text is read on SQLite, PostgreSQL and DuckDB; on "
                f"{dialect}, convert the column to a timestamp (or a view of one) and use datetime"
            )
        super().__init__(micros)

    def source(self, relation: sa.FromClause) -> sa.FromClause:
        for lateral in self.laterals:
            relation = relation.join(lateral, sa.true())
        return relation

    def bound(self, instant: datetime) -> Any:
        return epoch_us(instant)

    def day_number(self, dialect: str) -> sa.ColumnElement[Any] | None:
        return _days_since_epoch(self.column, 86_400_000_000, dialect)

    def days(self, first: date, last: date) -> sa.ColumnElement[bool]:
        return sa.and_(self._candidates(first, last), super().days(first, last))

    def about(self, first: date, last: date) -> sa.ColumnElement[bool]:
        return self._candidates(first, last)  # text compared, nothing parsed

    def undated(self) -> sa.ColumnElement[bool]:
        return self.column.is_(None)

    def unreadable(self) -> sa.ColumnElement[bool]:
        return sa.and_(self.raw.is_not(None), self.column.is_(None))

    def _candidates(self, first: date, last: date) -> sa.ColumnElement[bool]:
        """A text condition that every row of the days meets (and a few others), so that the
        grammar runs on few rows and an index on the column can serve it: ISO text written on
        the days, and on the day before (after) those with a negative (positive) offset, or
        any in a source zone other than UTC (an offset or the zone moves a time by less than a
        day); epoch digits between the days' bounds (seconds and milliseconds alike: the same
        digits lead); and anything that starts with a space or a sign."""
        raw = self.raw
        lo, hi = day_bounds(first)[0], day_bounds(last)[1]
        before, after = first - timedelta(days=1), last + timedelta(days=1)
        written_before = [raw >= before.isoformat(), raw < first.isoformat()]
        written_after = [raw >= after.isoformat(), raw < (after + timedelta(days=1)).isoformat()]
        if self.utc:  # a time without an offset is UTC: only an offset moves it to another day
            written_before.append(sa.func.substr(raw, 11).contains("-"))
            written_after.append(raw.contains("+"))
        ranges = [
            sa.and_(raw >= first.isoformat(), raw < after.isoformat()),
            sa.and_(*written_before),
            sa.and_(*written_after),
            raw < "0",
        ]
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


def binary_text(column: sa.ColumnElement[Any], bytewise: bool) -> sa.ColumnElement[Any]:
    """The column as text compared byte by byte: as it is where its collation does (then an
    index on the column serves its ranges), else in PostgreSQL's "C" (a collation such as
    en_US ignores punctuation, which would break ranges of ISO text)."""
    text = sa.type_coerce(column, sa.String())
    return text if bytewise else sa.collate(text, "C")


def _starts_with_a_date(column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[bool]:
    text = sa.type_coerce(column, sa.String())
    if dialect == "sqlite":
        return text.op("GLOB", is_comparison=True)("[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*")
    return text.regexp_match("^[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _no_groups(pattern: str) -> str:
    """A pattern without capturing groups: PostgreSQL tests ``~`` with its fast automaton,
    where ``regexp_match`` with groups costs about 100 µs a value."""
    return pattern.replace("(?:", "(").replace("(", "(?:")


def _postgres_text_to_epoch_us(
    relation: sa.FromClause, column: sa.ColumnElement[Any], zone_name: str
) -> tuple[list[sa.FromClause], sa.ColumnElement[Any]]:
    """The grammar of :mod:`etl.timestamps` in PostgreSQL, in LATERAL subqueries that each
    compute a step once a value (OFFSET 0 keeps PostgreSQL from pulling one up into the next,
    where each use would compute it again): the value trimmed and its form tested with
    patterns without groups; its parts cut out by position (the form is known) as integers;
    then UTC microseconds, NULL where no form matches or a part is out of range."""
    text = sa.func.btrim(sa.type_coerce(column, sa.String()), SPACES)
    form = _lateral(
        "etl_form",
        [relation],
        t=text,
        epoch=text.op("~")(f"^{_no_groups(EPOCH_PATTERN)}$"),
        iso=text.op("~")(f"^{_no_groups(ISO_PATTERN)}$"),
    )
    t, iso = form.c.t, form.c.iso
    rest = sa.func.substr(t, 17)  # after YYYY-MM-DDTHH:MM: seconds, fraction, zone
    text_parts = _lateral(
        "etl_text",
        [form],
        whole=sa.case((form.c.epoch, sa.func.split_part(t, ".", 1))),
        epoch_fraction=sa.case((form.c.epoch, sa.func.split_part(t, ".", 2))),
        rest=sa.case((iso, rest)),
        zone_at=sa.case((iso, sa.func.greatest(*(sa.func.strpos(rest, c) for c in "+-Zz")))),
    )
    p = text_parts.c
    zone = sa.case((p.zone_at > 0, sa.func.substr(p.rest, p.zone_at)))
    fraction = sa.case(
        (
            sa.func.substr(p.rest, 4, 1).in_([".", ","]),
            sa.func.rtrim(
                sa.func.substr(p.rest, 5, sa.case((p.zone_at > 0, p.zone_at - 5), else_=9)), " "
            ),
        )
    )
    utc_zone = zone.in_(["Z", "z"])
    numbers = _lateral(
        "etl_numbers",
        [form, text_parts],
        epoch_us=_pg_epoch_micros(p.whole, p.epoch_fraction),
        **{name: sa.case((iso, _num(sa.func.substr(t, at, n)))) for name, at, n in _ISO_PLACES},
        ss=sa.case((sa.func.substr(p.rest, 1, 1) == ":", _num(sa.func.substr(p.rest, 2, 2)))),
        us=_fraction(fraction, 6),
        naive=zone.is_(None),
        zone_h=sa.case((utc_zone, 0), else_=_num(sa.func.substr(zone, 2, 2))),
        zone_m=sa.case(
            (utc_zone, 0), else_=_num(sa.func.substr(sa.func.replace(zone, ":", ""), 4, 2))
        ),
        zone_sign=sa.case((sa.func.substr(zone, 1, 1) == "-", -1), else_=1),
    )
    micros = sa.case(
        (form.c.epoch, numbers.c.epoch_us),
        (iso, _pg_iso_micros(numbers.c, zone_name)),
    )
    value = _lateral("etl_ts", [form, numbers], micros=micros)
    return [form, text_parts, numbers, value], value.c.micros


def _lateral(name: str, outer: list[sa.FromClause], **columns: Any) -> sa.FromClause:
    """SELECT the columns OFFSET 0, LATERAL to ``outer``: computed once a row."""
    select = sa.select(*(value.label(key) for key, value in columns.items()))
    return select.correlate(*outer).offset(0).lateral(name)


# where ISO-8601's parts are, once the form is known (a time starts at the 12th character)
_ISO_PLACES = [("y", 1, 4), ("m", 6, 2), ("d", 9, 2), ("hh", 12, 2), ("mi", 15, 2)]


def _num(part: Any) -> sa.ColumnElement[Any]:
    """Digits as a number (0 where there are none)."""
    return sa.cast(sa.func.coalesce(sa.func.nullif(part, ""), "0"), sa.Integer)


def _fraction(part: Any, digits: int) -> sa.ColumnElement[Any]:
    """The first ``digits`` digits of a fraction, padded with zeros."""
    padded = sa.func.rpad(sa.func.coalesce(part, ""), digits, "0")
    return sa.cast(sa.func.substr(padded, 1, digits), sa.Integer)


# epoch milliseconds of the last one of the year 9999
_MAX_EPOCH_MS = MAX_EPOCH_US // 1000


def _pg_epoch_micros(whole: Any, fraction: Any) -> sa.ColumnElement[Any]:
    """Epoch digits: seconds under 10^11, milliseconds from there; none past the year 9999."""
    digits = sa.func.length(whole)
    number = sa.cast(whole, sa.BigInteger)
    milliseconds = sa.case((number <= _MAX_EPOCH_MS, number * 1000 + _fraction(fraction, 3)))
    return sa.case(  # CASE, not AND: no cast of more digits than a bigint holds
        (digits < MS_DIGITS, number * 1_000_000 + _fraction(fraction, 6)),
        (digits <= 15, milliseconds),
    )


def _pg_iso_micros(n: Any, zone_name: str) -> sa.ColumnElement[Any]:
    """ISO-8601 parts (integers) as UTC microseconds. Dates are counted with integers, so that
    no invalid date reaches a cast; a naive time in another zone than UTC goes through ``AT
    TIME ZONE``."""
    y, m, d, hh, mi, ss = n.y, n.m, n.d, n.hh, n.mi, n.ss
    ss = sa.func.coalesce(ss, 0)
    micros_of_day = sa.cast((hh * 60 + mi) * 60 + ss, sa.BigInteger) * 1_000_000 + n.us
    local_micros = sa.cast(_days_from_civil(y, m, d), sa.BigInteger) * 86_400_000_000
    local_micros = local_micros + micros_of_day
    offset_micros = sa.cast(n.zone_sign * (n.zone_h * 60 + n.zone_m), sa.BigInteger) * 60_000_000
    valid = sa.and_(
        y >= 1,
        m.between(1, 12),
        d.between(1, _days_in_month(y, m)),
        hh <= 23,
        mi <= 59,
        ss <= 59,
        n.zone_h <= 23,
        n.zone_m <= 59,
    )
    if zone_name in ("UTC", "Etc/UTC"):
        naive_micros: sa.ColumnElement[Any] = local_micros
    else:
        seconds = sa.cast(ss, sa.Float) + sa.cast(n.us, sa.Float) / 1e6
        ints = [y, m, d, hh, mi]
        aware = sa.func.make_timestamp(*ints, seconds).op("AT TIME ZONE")(sa.literal(zone_name))
        naive_micros = sa.cast(sa.extract("epoch", aware) * 1_000_000, sa.BigInteger)
    return sa.case(
        (sa.and_(valid, n.naive), naive_micros),
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
    bytewise: bool = True,
) -> Windows:
    """The windows of a timestamp column of this ``kind`` in this warehouse (``bytewise``: its
    text compares byte by byte as it is)."""
    if kind == "text":
        return MixedTextWindows(relation, column, zone_name, dialect, bytewise)
    if kind in ("epoch_s", "epoch_ms"):
        return EpochWindows(column, 1 if kind == "epoch_s" else 1000)
    if stored_as_text:
        return IsoTextWindows(column, tz, dialect, bytewise)
    return NativeWindows(column, aware, tz)
