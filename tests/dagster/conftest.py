"""Fixtures for the Dagster tests: a warehouse of four recent days, the sandbox on the real clock
with limits that never bind (so nothing waits), and a pipeline file pointing at both."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from etl.sandbox import SandboxServer
from tests.conftest import FAST, Warehouse, warehouse_of, write_pipeline
from tests.integration.scenario import RECENT_END

FIRST = RECENT_END - timedelta(days=4)


@pytest.fixture
def sandbox(fast_sandbox: SandboxServer) -> SandboxServer:
    return fast_sandbox


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
