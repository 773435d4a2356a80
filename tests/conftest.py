"""Shared fixtures: real warehouses (SQLite, PostgreSQL), the sandbox over real HTTP, a fake clock.

PostgreSQL comes from ETL_TEST_POSTGRES_URL (default: the local server, database `test`). Where it
is unreachable its tests are skipped, except under CI=true, where that is an error.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from etl.app.demo.data import create_warehouse
from etl.sandbox import SandboxServer, start_sandbox
from tests.fakes import FakeClock

POSTGRES_URL = os.environ.get(
    "ETL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _postgres_problem() -> str | None:
    try:
        engine = sa.create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return str(exc).splitlines()[0]
    return None


_PG_PROBLEM: str | bool | None = False  # False: not probed yet


def require_postgres() -> None:
    global _PG_PROBLEM
    if _PG_PROBLEM is False:
        _PG_PROBLEM = _postgres_problem()
    if _PG_PROBLEM:
        message = f"PostgreSQL unreachable at {POSTGRES_URL}: {_PG_PROBLEM}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class Warehouse:
    kind: str
    url: str
    schema: str | None

    def engine(self) -> sa.Engine:
        return sa.create_engine(self.url)

    def table(self, name: str = "user_actions") -> str:
        return f"{self.schema}.{name}" if self.schema else name

    def fill(self, rows: int, days: int, end: Any) -> None:
        engine = self.engine()
        create_warehouse(engine, rows, days, end=end, schema=self.schema)
        engine.dispose()


@contextmanager
def warehouse_of(kind: str, tmp_path: Path) -> Iterator[Warehouse]:
    """A fresh SQLite file, or a fresh schema in PostgreSQL dropped afterwards."""
    if kind == "sqlite":
        yield Warehouse("sqlite", f"sqlite:///{tmp_path / 'warehouse.db'}", None)
        return
    require_postgres()
    schema = f"etl_test_{uuid.uuid4().hex[:10]}"
    try:
        yield Warehouse("postgresql", POSTGRES_URL, schema)
    finally:  # a failed test's schema goes too
        engine = sa.create_engine(POSTGRES_URL)
        with engine.begin() as conn:
            conn.execute(sa.schema.DropSchema(schema, cascade=True, if_exists=True))
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Warehouse]:
    with warehouse_of(request.param, tmp_path) as found:
        yield found


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


FAST = {"rate_limit": {"requests": 1000, "per_seconds": 1}}  # a client pace that never waits


@pytest.fixture
def fast_sandbox() -> Iterator[SandboxServer]:
    """The sandbox on the real clock with limits that never bind, for tests that run the
    pipeline in other processes or through Dagster (where no fake clock reaches)."""
    server = start_sandbox(time_scale=1e6)
    yield server
    server.stop()


@pytest.fixture
def sandbox(clock: FakeClock) -> Iterator[SandboxServer]:
    """The sandbox vendors on a free loopback port, on the same fake clock as the client."""
    server = start_sandbox(clock=clock)
    yield server
    server.stop()


FUUL_MAPPING = {
    "filter": {"action": ["game_played", "purchase"]},
    "event_name": {"column": "action"},
    "user": {"column": "wallet", "type_column": "wallet_type"},
    "args": {
        "game": {"column": "game_id"},
        "score": {"column": "score", "type": "integer", "required": False},
        "amount": {"column": "amount", "type": "number", "required": False},
    },
}


VENDOR_DESTINATIONS: dict[str, dict[str, Any]] = {
    "fuul": {
        "path": "/fuul/api/v1",
        "credentials": {"api_key": "${FUUL_API_KEY}"},
        "mapping": FUUL_MAPPING,
    },
    "torque": {
        "path": "/torque",
        "credentials": {"api_key": "${TORQUE_API_KEY}"},
        "mapping": {
            "filter": {"action": ["purchase", "game_played"], "wallet_type": ["solana_address"]},
            "event_name": {"column": "action"},
            "user": {"column": "wallet"},
            "args": {
                "game": {"column": "game_id"},
                "amount": {"column": "amount", "type": "number", "required": False},
            },
        },
    },
    "thrivestack": {
        "path": "/thrivestack",
        "credentials": {"api_key": "${THRIVESTACK_API_KEY}"},
        "mapping": {
            "event_name": {"column": "action"},
            "user": {"column": "user_id"},
            "properties_column": "properties",
            "args": {"score": {"column": "score", "type": "integer", "required": False}},
            "fields": {"group_id": {"column": "account_id"}},
        },
    },
    "airship": {
        "path": "/airship",
        "credentials": {"token": "${AIRSHIP_TOKEN}", "app_key": "${AIRSHIP_APP_KEY}"},
        "mapping": {
            "filter": {"action": ["level_up", "purchase", "game_played"]},
            "event_name": {"column": "action", "lowercase": True},
            "user": {"column": "user_id", "type": "named_user_id"},
            "properties_column": "properties",
            "fields": {"value": {"column": "amount", "type": "number", "required": False}},
        },
    },
}
DESTINATION = (
    "fuul_rewards"  # every test pipeline has one destination, named so whatever its vendor
)


def write_pipeline(
    path: Path,
    warehouse: Warehouse,
    sandbox_url: str,
    start_date: str,
    destination: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
    vendor: str = "fuul",
) -> Path:
    preset = VENDOR_DESTINATIONS[vendor]
    dest = {
        "vendor": vendor,
        "base_url": sandbox_url + preset["path"],
        "credentials": preset["credentials"],
        "max_in_flight": 3,
        "mapping": preset["mapping"],
        **(destination or {}),
    }
    doc: dict[str, Any] = {
        "start_date": start_date,
        "source": {
            "url": warehouse.url,
            "table": "user_actions",
            "chunk_size": 500,
            **(source or {}),
        },
        "destinations": {DESTINATION: dest},
    }
    if warehouse.schema:
        doc["source"].setdefault("schema", warehouse.schema)
        doc["state"] = {"schema": warehouse.schema}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def _sandbox_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from etl.sandbox import SANDBOX_CREDENTIALS

    for variable, key in SANDBOX_CREDENTIALS.items():
        monkeypatch.setenv(variable, key)


# `slow` means what it says: a test that starts a server (the sandbox vendors, `dagster dev`),
# another process (a reader process, `etl` in a child) or a whole backfill (which sends to the
# sandbox). Tests that use these fixtures are marked here; the others mark themselves.
SLOW_FIXTURES = frozenset({"sandbox", "fast_sandbox", "pipeline", "reader", "ui", "slow_ui"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
