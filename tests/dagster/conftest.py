"""Fixtures for the Dagster tests: a warehouse of four recent days, the sandbox on the real clock
with limits that never bind (so nothing waits), and a pipeline file pointing at both."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from etl.sandbox import SandboxServer, start_sandbox
from tests.conftest import Warehouse, warehouse_of, write_pipeline
from tests.integration.scenario import RECENT_END

FIRST = RECENT_END - timedelta(days=4)
FAST = {"rate_limit": {"requests": 1000, "per_seconds": 1}}


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    server = start_sandbox(time_scale=1e6)
    yield server
    server.stop()


@pytest.fixture
def sqlite_warehouse(tmp_path: Path) -> Iterator[Warehouse]:
    with warehouse_of("sqlite", tmp_path) as warehouse:
        warehouse.fill(800, days=4, end=RECENT_END)
        yield warehouse


@pytest.fixture
def pipeline(tmp_path: Path, sqlite_warehouse: Warehouse, sandbox: SandboxServer) -> Path:
    return write_pipeline(
        tmp_path / "pipeline.yaml", sqlite_warehouse, sandbox.url, FIRST.isoformat(), FAST
    )
