"""Reading the actions from the warehouse: keyset pages over (timestamp, key), bound parameters.

Memory is one chunk whatever the window's size: every page is a fresh query that starts strictly
after the last row of the previous one, ordered by ``(timestamp, key)``; never OFFSET.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import NoSuchTableError, SQLAlchemyError

from etl.config import PipelineConfig, SourceConfig
from etl.database import make_engine, safe_url
from etl.errors import SourceError
from etl.events import Position
from etl.timestamps import day_bounds

# Chunks of rows: each its column names and its rows' values in that order.
Chunks = Generator[tuple[list[str], Sequence[Sequence[Any]]], None, None]


class Source:
    """The actions table or query of a pipeline, checked against what the warehouse really has."""

    def __init__(self, config: PipelineConfig, engine: Engine | None = None) -> None:
        self.config: SourceConfig = config.source
        self.engine = engine or make_engine(self.config.url)
        self.tz = ZoneInfo(self.config.timezone)
        self.relation = self._relation(config)
        available = set(self.relation.c.keys())
        for name, dest in config.destinations.items():
            needed = dest.mapping.columns() | {self.config.key_column, self.config.timestamp_column}
            missing = sorted(needed - available)
            if missing:
                raise SourceError(
                    f"destinations.{name}.mapping: column(s) {', '.join(missing)} not found in "
                    f"{self.describe()}; it has: {', '.join(sorted(available))}"
                )
        ts = self.relation.c[self.config.timestamp_column]
        self.kind = self.config.timestamp_type
        self._aware = bool(getattr(ts.type, "timezone", False))
        is_text_column = isinstance(ts.type, sa.String)
        if self.kind == "datetime" and (self.engine.dialect.name == "sqlite" or is_text_column):
            # SQLite keeps datetimes as text; read and compare them as text, parse them ourselves.
            self.kind = "text"
        self.ts_col: sa.ColumnElement[Any] = (
            sa.type_coerce(ts, sa.String()) if self.kind == "text" else ts
        )
        self.key_col = self.relation.c[self.config.key_column]

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
        with self.engine.connect() as conn:
            return list(conn.execute(probe).keys())

    # -- windows -------------------------------------------------------------------------------

    def bound(self, instant: datetime) -> Any:
        """An instant in the timestamp column's own representation, for a bound parameter."""
        if self.kind == "epoch_s":
            return int(instant.timestamp())
        if self.kind == "epoch_ms":
            return int(instant.timestamp() * 1000)
        if self._aware:
            return instant.astimezone(UTC)
        local = instant.astimezone(self.tz).replace(tzinfo=None)
        if self.kind == "text":
            return local.strftime("%Y-%m-%d %H:%M:%S")
        return local

    def window(self, first_day: date, last_day: date) -> sa.ColumnElement[bool]:
        """Rows of the UTC days first_day..last_day inclusive."""
        start, _ = day_bounds(first_day)
        _, end = day_bounds(last_day)
        return sa.and_(self.ts_col >= self.bound(start), self.ts_col < self.bound(end))

    def count(self, first_day: date, last_day: date) -> int:
        stmt = sa.select(sa.func.count()).select_from(self.relation)
        with self.engine.connect() as conn:
            return int(conn.execute(stmt.where(self.window(first_day, last_day))).scalar_one())

    # -- reading -------------------------------------------------------------------------------

    def read_tuples(
        self, day: date, columns: Iterable[str], after: Position | None = None
    ) -> Chunks:
        """Chunks of the day's rows in (timestamp, key) order, strictly after ``after``: each
        its column names and its rows as sequences of values (the engine maps a column at a
        time: a dict per row would cost a microsecond it does not need)."""
        ts_name, key_name = self.config.timestamp_column, self.config.key_column
        cols = [
            self.ts_col.label(ts_name) if c == ts_name else self.relation.c[c]
            for c in dict.fromkeys([ts_name, key_name, *columns])
        ]
        base = (
            sa.select(*cols)
            .where(self.window(day, day))
            .order_by(self.ts_col, self.key_col)
            .limit(self.config.chunk_size)
        )
        while True:
            stmt = base
            if after is not None:
                ts_value, key_value = after
                stmt = stmt.where(
                    sa.or_(
                        self.ts_col > ts_value,
                        sa.and_(self.ts_col == ts_value, self.key_col > key_value),
                    )
                )
            with self.engine.connect() as conn:
                result = conn.execute(stmt)
                names = list(map(str, result.keys()))  # plain str, not quoted_name
                rows = result.fetchall()
            if not rows:
                return
            yield names, rows
            if len(rows) < self.config.chunk_size:
                return
            after = (rows[-1][0], rows[-1][1])  # the timestamp and the key come first

    def rows_by_key(self, keys: list[str], columns: Iterable[str]) -> list[dict[str, Any]]:
        """The rows with these keys (for replaying dead letters), in keyset order."""
        ts_name = self.config.timestamp_column
        cols = [
            self.ts_col.label(ts_name) if c == ts_name else self.relation.c[c]
            for c in dict.fromkeys([ts_name, self.config.key_column, *columns])
        ]
        typed_keys = [_like(self.key_col, k) for k in keys]
        stmt = (
            sa.select(*cols).where(self.key_col.in_(typed_keys)).order_by(self.ts_col, self.key_col)
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]


def _like(column: sa.ColumnElement[Any], text: str) -> Any:
    """A key stored as text in the state tables, back in the key column's type."""
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return text
    if python_type is int:
        return int(text)
    return text
