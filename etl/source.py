"""Reading the actions from the warehouse: keyset pages over (timestamp, key), bound parameters.

Memory is one chunk whatever the window's size: every page is a fresh query that starts strictly
after the last row of the previous one, ordered by ``(timestamp, key)``; never OFFSET.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from datetime import date, timedelta
from functools import cached_property
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import NoSuchTableError, SQLAlchemyError

from etl.config import PipelineConfig, SourceConfig
from etl.database import make_engine, one_statement, safe_url, text_sorts_bytewise
from etl.errors import SourceError
from etl.events import Position
from etl.indexes import leads_an_index
from etl.timestamps import zone
from etl.windows import NativeWindows, Outside, binary_text, windows_for

_EPOCH_DAY = date(1970, 1, 1)
_DAYS_A_QUERY = 5000  # three parameters a day, of PostgreSQL's 65,535 a statement

# Chunks of rows: each its column names and its rows' values in that order.
Chunks = Generator[tuple[list[str], Sequence[Sequence[Any]]], None, None]


class Source:
    """The actions table or query of a pipeline, checked against what the warehouse really has."""

    def __init__(self, config: PipelineConfig, engine: Engine | None = None) -> None:
        self.config: SourceConfig = config.source
        self.start_date = config.start_date
        self.engine = engine or make_engine(self.config.url)
        if self.config.timestamp_type == "text" and self.engine.dialect.name == "postgresql":
            sa.event.listen(self.engine, "connect", _without_memoize)
        # a query a day or two: without a transaction (PostgreSQL: no BEGIN, and no ROLLBACK
        # as the connection goes back to the pool)
        self.statements = one_statement(self.engine)
        self._first_pages: dict[tuple[str, ...], sa.Select[Any]] = {}
        self.tz = zone(self.config.timezone)
        self.relation = self._relation(config)
        self._check_columns(config)
        ts = self.relation.c[self.config.timestamp_column]
        self.key_col = self.relation.c[self.config.key_column]
        dialect = self.engine.dialect.name
        kind = self.config.timestamp_type
        _check_timestamp_type(ts, kind, dialect)
        # SQLite keeps datetimes as text: compared as text, parsed by the mapping
        stored_as_text = kind == "text" or (
            kind == "datetime" and (dialect == "sqlite" or isinstance(ts.type, sa.String))
        )
        bytewise = not stored_as_text or text_sorts_bytewise(
            self.engine, getattr(ts.type, "collation", None)
        )
        self.windows = windows_for(
            self.relation,
            ts,
            kind,
            dialect,
            self.config.timezone,
            self.tz,
            stored_as_text,
            bool(getattr(ts.type, "timezone", False)),
            bytewise,
        )
        self.from_ = self.windows.source(self.relation)
        # the raw value as it is read and compared in keyset order
        self.ts_col: sa.ColumnElement[Any] = binary_text(ts, bytewise) if stored_as_text else ts
        # ... and as a day's rows are ordered: where a day is several ranges of the column
        # (mixed text), in the same order but by an expression no index gives, so that
        # PostgreSQL reads the day's ranges and sorts them (9 ms a day of 10,000 rows), rather
        # than walk the whole index in order until a page is full (1.7 s at 10,000,000 rows)
        self.order_col = self.ts_col
        if not self.windows.ranges and dialect == "postgresql":
            self.order_col = sa.collate(sa.type_coerce(ts, sa.String()) + "", "C")

    def read_in_one_query(self, rows: int) -> bool:
        """Whether a partition of which ``read_tuples`` returned ``rows`` (from its start) was
        read by one query from its start to its end: always for mixed text on PostgreSQL (see
        read_tuples), else when its first page was not full. The rows it returned are then
        the warehouse's own count of the partition at that moment, as a COUNT would be (a
        query and, for text, a second parse of the day)."""
        return self.order_col is not self.ts_col or rows < self.config.chunk_size

    def _check_columns(self, config: PipelineConfig) -> None:
        """The key and timestamp columns, then every destination's, exist; the error names the
        key of the pipeline file to fix."""
        available = set(self.relation.c.keys())
        has = f"{self.describe()}; it has: {', '.join(sorted(available))}"
        for key in ("key_column", "timestamp_column"):
            name = getattr(self.config, key)
            if name not in available:
                raise SourceError(f"source.{key}: column {name!r} not found in {has}")
        for name, dest in config.destinations.items():
            missing = sorted(dest.mapping.columns() - available)
            if missing:
                columns = ", ".join(missing)
                raise SourceError(
                    f"destinations.{name}.mapping: column(s) {columns} not found in {has}"
                )

    def describe(self) -> str:
        if self.config.table:
            schema = f"{self.config.schema_name}." if self.config.schema_name else ""
            return f"table {schema}{self.config.table}"
        return f"query {self.config.query}"

    def _relation(self, config: PipelineConfig) -> sa.FromClause:
        src = config.source
        try:
            if src.table is not None:
                try:
                    return sa.Table(
                        src.table, sa.MetaData(), schema=src.schema_name, autoload_with=self.engine
                    )
                except NoSuchTableError:
                    raise
                except SQLAlchemyError:
                    # Dialects with partial reflection (DuckDB through the PostgreSQL dialect):
                    # take the column names from an empty result instead; values keep DB types.
                    bare = sa.table(src.table, schema=src.schema_name)
                    names = self._column_names(bare)
                    return sa.table(
                        src.table, *[sa.column(n) for n in names], schema=src.schema_name
                    )
            query = config.query_text()
            assert query is not None
            names = self._column_names(sa.text(query).columns().subquery("src"))
            return sa.text(query).columns(*[sa.column(n) for n in names]).subquery("src")
        except NoSuchTableError:
            raise SourceError(
                f"source.table: {src.table!r} does not exist in {safe_url(self.engine)}"
            ) from None
        except SQLAlchemyError as exc:
            first_line = str(exc).splitlines()[0]
            raise SourceError(f"source: cannot read {self.describe()}: {first_line}") from None

    def _column_names(self, relation: sa.FromClause) -> list[str]:
        probe: sa.Select[Any] = sa.select(sa.literal_column("*")).select_from(relation).limit(0)
        with self.statements.connect() as conn:
            return list(conn.execute(probe).keys())

    # -- partitions ----------------------------------------------------------------------------

    def partition(self, day: date | None) -> sa.ColumnElement[bool]:
        """The rows of a daily partition, or of the undated one (``None``)."""
        return self.windows.undated() if day is None else self.windows.days(day, day)

    def count(self, first_day: date, last_day: date) -> int:
        """Rows of the UTC days first_day..last_day."""
        return self._count(self.windows.days(first_day, last_day))

    def count_spans(self, days: list[date], estimate: bool = False) -> int:
        """Rows of these UTC days: a count per run of consecutive days; an ``estimate`` may
        count a few rows beside them where that is cheaper (mixed text: nothing parsed)."""
        total, ordered = 0, sorted(set(days))
        start = 0
        for i, day in enumerate(ordered):
            if i + 1 == len(ordered) or ordered[i + 1] != day + timedelta(days=1):
                window = self.windows.about if estimate else self.windows.days
                total += self._count(window(ordered[start], day))
                start = i + 1
        return total

    def count_partition(self, day: date | None) -> int:
        return self._count(self.partition(day))

    def _count(self, where: sa.ColumnElement[bool]) -> int:
        stmt = sa.select(sa.func.count()).select_from(self.from_).where(where)
        with self.statements.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def count_by_day(
        self, days: list[date], columns: Sequence[str]
    ) -> dict[date, list[tuple[tuple[Any, ...], int]]]:
        """The rows of these days counted by day and by the values of ``columns``: one pass
        over the range where the warehouse can say a row's day, else a query a day."""
        cols = [self.relation.c[c] for c in columns]
        number = self.windows.day_number(self.engine.dialect.name)
        counts: dict[date, list[tuple[tuple[Any, ...], int]]] = {day: [] for day in days}
        if not days:
            return counts
        with self.statements.connect() as conn:
            if self._days_by_index:
                for start in range(0, len(days), _DAYS_A_QUERY):
                    some = days[start : start + _DAYS_A_QUERY]
                    for row in conn.execute(self._counted_by_index(some, cols)):
                        if row[-1]:
                            counts[some[row[0]]].append((tuple(row[1:-1]), int(row[-1])))
                return counts
            if number is None or min(days) < _EPOCH_DAY:
                for day in days:
                    stmt = self._grouped(self.partition(day), cols)
                    counts[day] = [(tuple(r[:-1]), int(r[-1])) for r in conn.execute(stmt)]
                return counts
            # grouped by the label: the expression twice would be two sets of parameters
            label = number.label("etl_day")
            stmt = self._grouped(self.windows.days(min(days), max(days)), [label, *cols])
            stmt = stmt.group_by(None).group_by(sa.literal_column("etl_day"), *cols)
            for row in conn.execute(stmt):
                day = _EPOCH_DAY + timedelta(days=int(row[0]))
                if day in counts:  # the range may hold days the run skips
                    counts[day].append((tuple(row[1:-1]), int(row[-1])))
        return counts

    @cached_property
    def _days_by_index(self) -> bool:
        """Whether days are counted each by its range of an index on the timestamp column
        (PostgreSQL, a table whose index starts with that column): a count of every row
        grouped by its day is planned for a group a row (PostgreSQL cannot say how many days
        an expression makes), without parallel workers: 5-7 s at 10,000,000 rows, where a
        count of them takes 0.7 s and one range a day about as long as the count."""
        return (
            self.engine.dialect.name == "postgresql"
            and self.config.table is not None  # a query's tables only its author knows
            and isinstance(self.windows, NativeWindows)
            and leads_an_index(self.engine, self.config) is True
        )

    def _counted_by_index(
        self, days: list[date], cols: Sequence[sa.ColumnElement[Any]]
    ) -> sa.Select[Any]:
        """One query: for each day (by its place in ``days``) its rows by ``cols``, each day
        counted by its own range of the column (a LATERAL subquery on a VALUES list)."""
        column = self.windows.column
        ranges = sa.values(
            sa.column("etl_i", sa.Integer),
            sa.column("etl_lo", column.type),
            sa.column("etl_hi", column.type),
            name="etl_days",
        ).data([(i, *self.windows.day_range(day)) for i, day in enumerate(days)])
        per_day = (
            sa.select(*cols, sa.func.count().label("etl_n"))
            .select_from(self.from_)
            .where(column >= ranges.c.etl_lo, column < ranges.c.etl_hi)
            .group_by(*cols)
            .lateral("etl_day_rows")
        )
        chosen = [per_day.c[c.name] for c in cols]
        return sa.select(ranges.c.etl_i, *chosen, per_day.c.etl_n).select_from(
            ranges.join(per_day, sa.true())
        )

    def count_days(self, days: list[date]) -> dict[date, int]:
        """The rows of each of these days (one query where the warehouse can say a row's day;
        over the span from the first day to the last)."""
        return {d: sum(n for _, n in groups) for d, groups in self.count_by_day(days, []).items()}

    def _grouped(
        self, where: sa.ColumnElement[bool], by: Sequence[sa.ColumnElement[Any]]
    ) -> sa.Select[Any]:
        stmt = sa.select(*by, sa.func.count()).select_from(self.from_).where(where)
        return stmt.group_by(*by) if by else stmt

    def outside(self, last_day: date) -> Outside:
        """Rows outside the partitions start_date..last_day, by kind: counted one by one (an
        index on the column serves the ranges), or in one pass over the table when no kind is
        a range (text of mixed forms)."""
        return self.census(last_day, with_range=False)[1]

    def census(self, last_day: date, with_range: bool = True) -> tuple[int, Outside]:
        """The rows of the partitions start_date..last_day (0 unless ``with_range``), and those
        outside them by kind, as :meth:`outside` counts them: where no kind is a range, all in
        one pass over the table."""
        w = self.windows
        kinds = [
            w.undated() & sa.not_(w.unreadable()),
            w.unreadable(),
            w.before(self.start_date),
            w.after(last_day),
        ]
        if w.ranges:
            inside = self.count(self.start_date, last_day) if with_range else 0
            return inside, Outside(*(self._count(kind) for kind in kinds))

        def rows(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[Any]:
            return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

        if with_range:
            kinds.append(w.days(self.start_date, last_day))
        stmt = sa.select(*(rows(kind) for kind in kinds)).select_from(self.from_)
        with self.statements.connect() as conn:
            values = [int(v) for v in conn.execute(stmt).one()]
        return (values[4] if with_range else 0), Outside(*values[:4])

    # -- reading -------------------------------------------------------------------------------

    def read_tuples(
        self, day: date | None, columns: Iterable[str], after: Position | None = None
    ) -> Chunks:
        """Chunks of a partition's rows (``day`` None: the undated one) in (timestamp, key)
        order (undated: key order), strictly after ``after``: each its column names and its
        rows as sequences of values (the engine maps a column at a time: a dict per row would
        cost a microsecond it does not need)."""
        undated = day is None
        columns = tuple(columns)
        size = self.config.chunk_size
        if day is not None and after is None and self.windows.ranges:  # a day's first page
            names, rows = self._page(*self._first_page(columns, day))
            if not rows:
                return
            yield names, rows
            if len(rows) < size:
                return
            after = (rows[-1][0], rows[-1][1])  # the timestamp and the key come first
        order = [self.key_col] if undated else [self.order_col, self.key_col]
        base = (
            sa.select(*self._columns(columns))
            .select_from(self.from_)
            .where(self.partition(day))
            .order_by(*order)
        )
        if self.order_col is not self.ts_col:  # mixed text on PostgreSQL
            # Each page would parse and sort the whole day again (a day of 1,000,000 rows in
            # pages of 5,000: 200 parses of it): one query streams the day in pages from a
            # server-side cursor instead, the memory of a page all the same.
            stmt = base if after is None else base.where(self._after(after, undated))
            with self.engine.connect().execution_options(yield_per=size) as conn:
                result = conn.execute(stmt)
                names = list(map(str, result.keys()))
                for page in result.partitions():
                    yield names, page
            return
        base = base.limit(size)
        while True:
            stmt = base if after is None else base.where(self._after(after, undated))
            names, rows = self._page(stmt, {})
            if not rows:
                return
            yield names, rows
            if len(rows) < size:
                return
            after = (rows[-1][0], rows[-1][1])

    def _page(
        self, stmt: sa.Select[Any], params: dict[str, Any]
    ) -> tuple[list[str], Sequence[Sequence[Any]]]:
        with self.statements.connect() as conn:
            result = conn.execute(stmt, params)
            names = list(map(str, result.keys()))  # plain str, not quoted_name
            return names, result.fetchall()

    def _first_page(
        self, columns: tuple[str, ...], day: date
    ) -> tuple[sa.Select[Any], dict[str, Any]]:
        """The first page of a day that is one range of the column: its statement, built once
        for these columns (a statement built again costs about its round trip), and the day's
        bounds as its parameters."""
        stmt = self._first_pages.get(columns)
        if stmt is None:
            column = self.windows.column
            stmt = (
                sa.select(*self._columns(columns))
                .select_from(self.from_)
                .where(column >= sa.bindparam("etl_lo"), column < sa.bindparam("etl_hi"))
                .order_by(self.order_col, self.key_col)
                .limit(self.config.chunk_size)
            )
            self._first_pages[columns] = stmt
        lo, hi = self.windows.day_range(day)
        return stmt, {"etl_lo": lo, "etl_hi": hi}

    def _columns(self, columns: Iterable[str]) -> list[sa.ColumnElement[Any]]:
        """The timestamp (as compared), the key, then the other columns, each once."""
        ts_name, key_name = self.config.timestamp_column, self.config.key_column
        return [
            self.ts_col.label(ts_name) if c == ts_name else self.relation.c[c]
            for c in dict.fromkeys([ts_name, key_name, *columns])
        ]

    def _after(self, after: Position, undated: bool) -> sa.ColumnElement[bool]:
        ts_value, key_value = after
        if undated:
            return sa.and_(self.key_col > key_value)
        return sa.or_(
            self.ts_col > ts_value, sa.and_(self.ts_col == ts_value, self.key_col > key_value)
        )

    def keys_present(self, keys: list[str]) -> set[str]:
        """Which of these keys the table still holds, with whatever timestamp."""
        found: set[str] = set()
        with self.statements.connect() as conn:
            for start in range(0, len(keys), 1000):
                typed = [_like(self.key_col, k) for k in keys[start : start + 1000]]
                stmt = (
                    sa.select(self.key_col).select_from(self.from_).where(self.key_col.in_(typed))
                )
                found.update(str(k) for (k,) in conn.execute(stmt))
        return found

    def rows_by_key(self, keys: list[str], columns: Iterable[str]) -> list[dict[str, Any]]:
        """The rows with these keys (for replaying dead letters)."""
        typed_keys = [_like(self.key_col, k) for k in keys]
        stmt = (
            sa.select(*self._columns(columns))
            .select_from(self.from_)
            .where(self.key_col.in_(typed_keys))
            .order_by(self.key_col)
        )
        with self.statements.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]


def _without_memoize(dbapi_connection: Any, _record: Any) -> None:
    """This session's queries without PostgreSQL's Memoize (14 on): it would cache each row's
    steps of the text grammar (etl.windows) by the value, a hash lookup that costs twice the
    step; the setting is the session's, nothing of the warehouse's changes."""
    cursor = dbapi_connection.cursor()
    cursor.execute(
        "SELECT set_config('enable_memoize', 'off', false) "
        "WHERE current_setting('server_version_num')::int >= 140000"
    )
    cursor.close()
    dbapi_connection.commit()


def _check_timestamp_type(column: sa.ColumnElement[Any], kind: str, dialect: str) -> None:
    """Refuse a ``source.timestamp_type`` that the column's SQL type cannot hold."""
    sql_type = column.type
    if isinstance(sql_type, sa.Integer | sa.Numeric):
        family, fits = "number", "epoch_s or epoch_ms"
    elif isinstance(sql_type, sa.DateTime | sa.Date):
        family, fits = "timestamp", "datetime"
    elif isinstance(sql_type, sa.String):
        family, fits = "text", "text (ISO-8601 with offsets and epoch digits, mixed)"
    else:
        return  # a query's column, or a type this check does not know
    allowed = {
        "datetime": {"timestamp", "text"},
        # SQLite keeps a DATETIME column as text, in whatever form was written
        "text": {"text", "timestamp"} if dialect == "sqlite" else {"text"},
        "epoch_s": {"number"},
        "epoch_ms": {"number"},
    }
    if family not in allowed[kind]:
        raise SourceError(
            f"source.timestamp_type: {kind} does not fit column {column.name} of type "
            f"{sql_type}: use {fits}"
        )


def _like(column: sa.ColumnElement[Any], text: str) -> Any:
    """A key stored as text in the state tables, back in the key column's type."""
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return text
    if python_type is int:
        return int(text)
    return text
