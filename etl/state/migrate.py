"""Bringing state tables written by an earlier version up to date: the columns and the indexes
they lack.

Only added columns (nullable, or with a default) are ever needed; Alembic's ``AddColumn``
construct compiles the ``ALTER TABLE`` from the table declarations. Where the dialect cannot
list a table's columns (DuckDB through the PostgreSQL dialect), nothing is changed.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError


def _columns(inspector: sa.Inspector, table: sa.Table) -> set[str] | None:
    try:
        if not inspector.has_table(table.name, schema=table.schema):
            return None
        return {c["name"] for c in inspector.get_columns(table.name, schema=table.schema)}
    except (SQLAlchemyError, NotImplementedError):
        return None


def missing_columns(inspector: sa.Inspector, tables: list[sa.Table]) -> list[sa.Column[object]]:
    """The declared columns that existing tables lack (an earlier version wrote them)."""
    missing = []
    for table in tables:
        present = _columns(inspector, table)
        if present is not None:
            missing += [c for c in table.columns if c.name not in present]
    return missing


def add_missing_columns(conn: sa.Connection, tables: list[sa.Table]) -> list[str]:
    """Add to each existing table the declared columns it lacks; the ``table.column`` added."""
    missing = missing_columns(sa.inspect(conn), tables)
    if not missing:
        return []
    from alembic.ddl.base import AddColumn  # only when an upgrade is due: 0.1 s to import

    added = []
    for column in missing:
        table = column.table
        conn.execute(AddColumn(table.name, column, schema=table.schema))
        added.append(f"{table.name}.{column.name}")
    return added


def add_missing_indexes(conn: sa.Connection, tables: list[sa.Table]) -> list[str]:
    """Create the declared indexes that existing tables lack; their names. Not on DuckDB,
    which cannot list a table's indexes (nor uses them for ranges)."""
    if conn.dialect.name == "duckdb":
        return []
    inspector = sa.inspect(conn)
    added = []
    for table in tables:
        if not table.indexes:
            continue
        try:
            present = {i["name"] for i in inspector.get_indexes(table.name, schema=table.schema)}
        except (SQLAlchemyError, NotImplementedError):
            continue
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            if index.name not in present:
                index.create(conn)
                added.append(str(index.name))
    return added
