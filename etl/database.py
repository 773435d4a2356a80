"""Opening a database by its SQLAlchemy URL: the warehouse and the state database alike."""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError, SQLAlchemyError

from etl.errors import ReadOnlyDatabaseError, SourceError
from etl.timestamps import text_to_epoch_us

TEXT_FUNCTION = "etl_text_to_epoch_us"  # a text timestamp as UTC microseconds (etl.windows)
_PRAGMAS = (
    "journal_mode=WAL",
    "synchronous=NORMAL",
    "busy_timeout=30000",
)


def make_engine(url: str | sa.URL) -> Engine:
    """An engine for a warehouse URL (SQLite, PostgreSQL, DuckDB, or any SQLAlchemy dialect)."""
    try:
        engine = sa.create_engine(url)
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        text = str(url)
        shown = text.split("@")[-1] if "@" in text else text
        raise SourceError(f"cannot use warehouse URL ...{shown}: {exc}") from None
    if engine.dialect.name not in ("sqlite", "duckdb"):  # a file has no connection to lose
        sa.event.listen(engine, "checkout", _ping_if_idle(engine))
        sa.event.listen(engine, "checkin", _idle_since)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_connection)
        database = engine.url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            files = [database + suffix for suffix in ("", "-wal", "-shm")]
            check = _writable(files)
            sa.event.listen(engine, "begin", check)  # each transaction (a statement costs 3x)
            _CHECKS[engine] = check
    elif engine.dialect.name == "duckdb":
        sa.event.listen(engine, "connect", _duckdb_connection)
    return engine


PING_AFTER_IDLE_SECONDS = 2.0


def _ping_if_idle(engine: Engine) -> Callable[..., None]:
    """Before a pooled connection is used: if it sat idle, is the server still there? (A
    restarted server or a proxy that dropped it: the pool opens another.) SQLAlchemy's
    ``pool_pre_ping`` asks before every use, a round trip per transaction (a run's partition
    opens several); a connection handed back a moment ago is used as it is, and a statement on
    one that broke since fails as any statement may."""

    def ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle = record.info.get(_IDLE_SINCE)
        if idle is not None and time.monotonic() - idle < PING_AFTER_IDLE_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # gone: the pool throws it away and opens another
            raise DisconnectionError(f"the connection was lost: {exc}") from exc
        if not alive:
            raise DisconnectionError("the connection was lost")

    return ping


_IDLE_SINCE = "etl_idle_since"


def _idle_since(_dbapi_connection: Any, record: Any) -> None:
    record.info[_IDLE_SINCE] = time.monotonic()


# collations that order text as its bytes (UTF-8 byte order is code point order)
_BYTEWISE = {"c", "posix", "c.utf8", "c.utf-8", "ucs_basic"}


def text_sorts_bytewise(engine: Engine, collation: str | None = None) -> bool:
    """Whether text in this collation (default: the database's) compares byte by byte, as
    ISO-8601 ranges need. Only PostgreSQL is asked; the others' default is byte order."""
    if engine.dialect.name != "postgresql":
        return True
    if collation is None:
        stmt = sa.text("SELECT * FROM pg_database WHERE datname = current_database()")
        with engine.connect() as conn:
            database = conn.execute(stmt).mappings().one()
        if database.get("datlocprovider", "c") != "c":  # ICU (PostgreSQL 15 on)
            return False
        collation = str(database["datcollate"])
    return collation.lower() in _BYTEWISE


def relaxed_engine(engine: Engine) -> Engine:
    """An engine whose commits return before PostgreSQL has flushed them to disk (elsewhere:
    the engine itself). Only for state whose loss in a crash of the server equals a kill of the
    run just before it: a later durable commit flushes it too, in order (the log is one
    sequence), so it holds whenever anything sent after it holds. A write that must be on disk
    before a request leaves never goes through it. Its sessions are set so once, when each
    connects (a ``SET LOCAL`` in each transaction cost a round trip each)."""
    if engine.dialect.name != "postgresql":
        return engine
    relaxed = make_engine(engine.url)
    sa.event.listen(relaxed, "connect", _commit_without_flush)
    return relaxed


def one_statement(engine: Engine) -> Engine:
    """``engine`` for statements that are each a transaction of their own: on PostgreSQL each
    commits as it runs (autocommit), without the BEGIN and COMMIT around it, two round trips
    more; elsewhere ``engine`` itself (SQLite's transactions cost nothing over a wire). Never
    for a server-side cursor, which needs a transaction."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine


def inserts_if_absent(dialect: sa.Dialect) -> bool:
    """Whether :func:`insert_if_absent` works here (PostgreSQL, SQLite 3.35 and later)."""
    return dialect.name in ("postgresql", "sqlite") and bool(dialect.insert_returning)


def insert_if_absent(
    dialect: sa.Dialect, table: sa.Table, **expressions: sa.ColumnElement[Any]
) -> sa.Executable:
    """A statement that inserts a row unless its key is taken and returns the row as
    inserted, or none (a conflict neither raises nor aborts the transaction): its values are
    the parameters it is executed with, beside ``expressions``. Built once and executed many
    times (a statement built again costs as much as its round trip). Ask
    :func:`inserts_if_absent` first."""
    from sqlalchemy.dialects import postgresql, sqlite

    module: Any = postgresql if dialect.name == "postgresql" else sqlite
    stmt = module.insert(table).values(**expressions).on_conflict_do_nothing()
    return cast(sa.Executable, stmt.returning(*table.c))


RELAXED = "etl_relaxed"  # in Connection.info: its commits are not flushed


def _commit_without_flush(dbapi_connection: Any, record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("SET synchronous_commit TO off")
    cursor.close()
    dbapi_connection.commit()
    record.info[RELAXED] = True


def _sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    """WAL: readers and one writer at once (parallel runs), commits without a full fsync each
    (still safe when the process is killed), and a wait instead of 'database is locked'. And
    the grammar of ``text`` timestamps, for etl.windows."""
    cursor = dbapi_connection.cursor()
    for pragma in _PRAGMAS:
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()
    dbapi_connection.create_function(TEXT_FUNCTION, 2, text_to_epoch_us, deterministic=True)


_CHECKS: weakref.WeakKeyDictionary[Engine, Callable[..., None]] = weakref.WeakKeyDictionary()


def dispose(engine: Engine) -> None:
    """Close an engine's connections, unless its SQLite file can no longer be written: closing
    would checkpoint its WAL into it, and SQLite would die of SIGBUS (they are left to the
    process's end, which ends at once: see ReadOnlyDatabaseError in the command line)."""
    check = _CHECKS.get(engine)
    if check is not None:
        try:
            check()
        except ReadOnlyDatabaseError:
            return
    engine.dispose()


def _writable(files: list[str]) -> Callable[..., None]:
    """Before each transaction on a SQLite file: its files can still be written. SQLite maps the
    shared-memory index of a WAL database into memory, readers included; when the file turns
    read-only under a running process (chattr +i, a read-only remount), the next statement
    kills the process with SIGBUS and no word. Found here first, it is an error that says so."""

    def check(*_args: Any) -> None:
        # access(), not open(): closing a descriptor of the database would drop SQLite's locks
        for path in files:
            if not os.access(path, os.W_OK) and os.path.exists(path):
                raise ReadOnlyDatabaseError(
                    f"the SQLite database {files[0]} can no longer be written ({path} is "
                    "read-only): make it writable and run again; nothing was lost, what was "
                    "sent since its last record is in doubt and is resolved then"
                )

    return check


def _duckdb_connection(dbapi_connection: Any, _record: Any) -> None:
    """The grammar of ``text`` timestamps, for etl.windows (duckdb_engine wraps the
    connection; its DuckDB connection is what takes a Python function)."""
    import duckdb.sqltypes as types

    inner = getattr(dbapi_connection, "_ConnectionWrapper__c", dbapi_connection)
    try:
        inner.create_function(
            TEXT_FUNCTION,
            text_to_epoch_us,
            [types.VARCHAR, types.VARCHAR],
            types.BIGINT,
            null_handling="special",
            side_effects=False,
        )
    except Exception as exc:  # connections of one database share their functions
        if "already exists" not in str(exc):
            raise


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


def safe_url(engine: Engine) -> str:
    """The engine's URL with its password hidden: what may be shown or logged."""
    return engine.url.render_as_string(hide_password=True)
