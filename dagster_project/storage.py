"""Dagster's SQLite storage with its event-log connections kept open.

Dagster's ``SqliteEventLogStorage`` creates a SQLAlchemy engine, connects, and disposes of it
for every event it stores (several per event: the run's file and the index); a run of this
project stores a materialization and three check evaluations per day, and that cost half of
`etl demo` (its statements compiled again each time, the files opened and closed). This storage
keeps one engine per database file (the index, and the most recent runs' files) and is otherwise
Dagster's: the same files under ``base_dir``, the same tables, readable by any Dagster process.
The shipped instance (``dagster.yaml``) selects it with ``storage: custom``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
)
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, _event_logs_directory
from dagster._serdes import ConfigurableClassData

BUSY_TIMEOUT_SECONDS = 15  # as Dagster's own (a file another process writes is waited for)
OPEN_RUN_FILES = 8  # run files kept open besides the index (runs write to their own file)


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` that keeps an engine per database file instead of one per
    statement."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._engines: OrderedDict[str, sa.Engine] = OrderedDict()
        self._engines_lock = threading.Lock()
        self._tables: dict[str, bool] = {}
        super().__init__(base_dir, inst_data)

    def _engine(self, shard: str) -> sa.Engine:
        with self._engines_lock:
            engine = self._engines.get(shard)
            if engine is not None:
                self._engines.move_to_end(shard)
                return engine
            engine = create_engine(
                self.conn_string_for_shard(shard),
                connect_args={"timeout": BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
            )
            self._engines[shard] = engine
            if shard == INDEX_SHARD_NAME:
                sa.event.listen(engine, "connect", _write_ahead)
            runs = [s for s in self._engines if s != INDEX_SHARD_NAME]
            for old in runs[:-OPEN_RUN_FILES]:
                self._engines.pop(old).dispose()
            return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[sa.Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def has_table(self, table_name: str) -> bool:
        """Asked before every check evaluation is stored: the index's tables, looked up once
        (an upgrade only ever adds tables)."""
        known = self._tables
        if table_name not in known:  # asked while a connection is open: not under _db_lock
            engine = self._engine(INDEX_SHARD_NAME)
            with engine.connect() as conn:
                known[table_name] = bool(engine.dialect.has_table(conn, table_name))
        return known[table_name]

    def delete_events(self, run_id: str) -> None:
        with self._engines_lock:  # its file may go: no connection of ours keeps it
            engine = self._engines.pop(run_id, None)
        if engine is not None:
            engine.dispose()
        super().delete_events(run_id)

    def dispose(self) -> None:
        with self._engines_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()
        super().dispose()


def _write_ahead(dbapi: Any, _record: Any) -> None:
    """The index file in write-ahead mode, synced at checkpoints rather than at each commit:
    no corruption on a crash (SQLite's guarantee for WAL with synchronous=NORMAL), several
    readers beside the writer; the run files keep Dagster's settings, which its log watchers
    rely on."""
    dbapi.execute("PRAGMA journal_mode=WAL")
    dbapi.execute("PRAGMA synchronous=NORMAL")


class PooledSqliteStorage(DagsterSqliteStorage):
    """Dagster's default SQLite storage (runs, schedules, the event log under ``base_dir``),
    with :class:`PooledSqliteEventLogStorage` as its event log."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        super().__init__(base_dir, inst_data)
        self._event_log_storage = PooledSqliteEventLogStorage(_event_logs_directory(base_dir))

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Any
    ) -> PooledSqliteStorage:
        return cls.from_local(inst_data=inst_data, **config_value)
