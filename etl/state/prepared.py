"""Statements of every row, compiled once and run on the driver with plain values.

For the delivery log (a row per source row) SQLAlchemy's per-value processing and the rendering
of long IN lists cost more than the database's own work: these statements are compiled once per
dialect (and list length) and given values the driver takes as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler


class Prepared:
    """``build(n)`` -> a statement with bound parameters; compiled once per dialect and ``n``."""

    def __init__(self, build: Callable[[int], sa.ClauseElement]) -> None:
        self.build = build
        self._compiled: dict[tuple[str, int], tuple[str, tuple[str, ...] | None]] = {}

    def _sql(self, dialect: sa.Dialect, n: int) -> tuple[str, tuple[str, ...] | None]:
        key = (dialect.name, n)
        found = self._compiled.get(key)
        if found is None:
            compiled = self.build(n).compile(dialect=dialect)
            assert isinstance(compiled, SQLCompiler)
            order = tuple(compiled.positiontup or ()) if compiled.positional else None
            found = self._compiled[key] = (str(compiled), order)
        return found

    def execute(
        self, conn: sa.Connection, params: dict[str, Any], n: int = 0
    ) -> sa.CursorResult[Any]:
        sql, order = self._sql(conn.dialect, n)
        values: Any = tuple(params[name] for name in order) if order is not None else params
        return conn.exec_driver_sql(sql, values)

    def execute_many(
        self, conn: sa.Connection, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        """Rows of values in the order of ``columns`` (the order the statement binds them in
        for a positional driver: they go as they are; a named one gets them by name)."""
        if not rows:
            return
        sql, order = self._sql(conn.dialect, 0)
        if order is None:
            conn.exec_driver_sql(sql, [dict(zip(columns, row, strict=True)) for row in rows])
            return
        assert order == columns, (order, columns)
        conn.exec_driver_sql(sql, list(rows))


def driver_time(dialect: sa.Dialect, value: datetime) -> Any:
    """A UTC datetime as the driver stores it for a DateTime column: SQLite keeps text."""
    if dialect.name == "sqlite":
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value
