"""Opening a database by its SQLAlchemy URL: the warehouse and the state database alike."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from etl.errors import SourceError


def make_engine(url: str) -> Engine:
    """An engine for a warehouse URL (SQLite, PostgreSQL, DuckDB, or any SQLAlchemy dialect)."""
    try:
        engine = sa.create_engine(url, pool_pre_ping=True)
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        shown = url.split("@")[-1] if "@" in url else url
        raise SourceError(f"cannot use warehouse URL ...{shown}: {exc}") from None
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL: readers and one writer at once (parallel runs), commits without a full fsync each
    (still safe when the process is killed), and a wait instead of 'database is locked'."""
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def safe_url(engine: Engine) -> str:
    """The engine's URL with its password hidden: what may be shown or logged."""
    return engine.url.render_as_string(hide_password=True)


def single_process_only(url: str) -> str | None:
    """Why a second process cannot read this database, or None if it can."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None  # the source says what is wrong with it when it opens it
    if parsed.get_backend_name() == "duckdb":
        return "DuckDB lets one process at a time open a database file"
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        return "an in-memory SQLite database cannot be read from another process"
    return None
