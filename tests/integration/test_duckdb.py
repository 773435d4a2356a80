"""DuckDB as the warehouse, with the state tables in it too."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Warehouse
from tests.integration.scenario import assert_exactly_once, run, setup


def test_backfill_from_duckdb(tmp_path: Path, sandbox, clock):
    warehouse = Warehouse("duckdb", f"duckdb:///{tmp_path / 'warehouse.duckdb'}", None)
    path = setup(tmp_path, warehouse, sandbox, rows=600)
    report = run(path, clock)
    assert report.ok, report
    assert report.rows_read == 600
    assert_exactly_once(path, warehouse, sandbox)
    assert run(path, clock).rows_read == 0
