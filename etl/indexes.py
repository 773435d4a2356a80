"""Which index would let each day's read cost that day's rows, said by `etl plan`, never made.

A day's rows are found by a range on the timestamp column. An index on the column serves it;
without one, every day's query reads the whole table. A ``text`` column on PostgreSQL is
compared byte by byte: where the column's collation already does (C, POSIX, C.UTF-8), a plain
index on it serves; otherwise the product compares it ``COLLATE "C"`` (a linguistic collation
may order ISO text otherwise), which only an index on that same expression serves. The product
never creates an index in a user's warehouse: it prints the statement for the people who own
it.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

from etl.config import SourceConfig
from etl.database import text_sorts_bytewise


def index_advice(source: SourceConfig, engine: sa.Engine) -> str | None:
    """The CREATE INDEX statement that would serve the day ranges, or None: there is one
    already, or the source is a query (whose tables only its author knows)."""
    if source.table is None or engine.dialect.name == "duckdb":
        return None  # DuckDB prunes a range by its row groups' min and max, not by an index
    dialect = engine.dialect
    compared_in_c = (
        source.timestamp_type == "text"
        and dialect.name == "postgresql"
        and not text_sorts_bytewise(engine, _collation(engine, source))
    )
    if compared_in_c:
        served = _has_c_expression_index(engine, source)
    else:  # nothing to say where the database cannot tell
        served = leads_an_index(engine, source) is not False
    if served:
        return None
    ts, key = source.timestamp_column, source.key_column
    table = sa.Table(
        source.table, sa.MetaData(), sa.Column(ts), sa.Column(key), schema=source.schema_name
    )
    lead: sa.ColumnElement[Any] = table.c[ts]
    if compared_in_c:
        lead = sa.collate(table.c[ts], "C")
    name = f"etl_{source.table}_{ts}_days"[:63]
    index = sa.Index(name, lead, table.c[key], postgresql_concurrently=True)
    return str(sa.schema.CreateIndex(index).compile(dialect=dialect)).strip()


def leads_an_index(engine: sa.Engine, source: SourceConfig) -> bool | None:
    """An index (or the primary key) whose first column is the timestamp column (None: the
    database cannot tell)."""
    inspector = sa.inspect(engine)
    try:
        indexes = inspector.get_indexes(source.table or "", schema=source.schema_name)
        primary = inspector.get_pk_constraint(source.table or "", schema=source.schema_name)
    except (sa.exc.SQLAlchemyError, NotImplementedError):
        return None
    leading: list[list[Any]] = [list(i.get("column_names") or []) for i in indexes]
    leading.append(list(primary.get("constrained_columns") or []))
    return any(columns[:1] == [source.timestamp_column] for columns in leading)


def _collation(engine: sa.Engine, source: SourceConfig) -> str | None:
    """The timestamp column's own collation, None where it has the database's."""
    try:
        columns = sa.inspect(engine).get_columns(source.table or "", schema=source.schema_name)
    except sa.exc.SQLAlchemyError:
        return None
    for column in columns:
        if column["name"] == source.timestamp_column:
            return getattr(column["type"], "collation", None)
    return None


def _has_c_expression_index(engine: sa.Engine, source: SourceConfig) -> bool:
    """An index of PostgreSQL's that starts with the column in the "C" collation."""
    stmt = sa.text(
        "SELECT indexdef FROM pg_indexes WHERE tablename = :table "
        "AND schemaname = coalesce(:schema, current_schema())"
    )
    params = {"table": source.table, "schema": source.schema_name}
    with engine.connect() as conn:
        definitions = [str(d) for (d,) in conn.execute(stmt, params)]
    column = re.escape(source.timestamp_column)
    lead = re.compile(rf'\(\s*\(?\s*"?{column}"?\s+COLLATE\s+"C"\s*\)?', re.IGNORECASE)
    return any(lead.search(d.split(" USING ", 1)[-1]) for d in definitions)
