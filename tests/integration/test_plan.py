"""`etl plan` predicts what a run then does, per vendor, and sends nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from click.testing import CliRunner

from etl.app.cli import cli
from etl.loader import load_pipeline
from etl.plan import plan_backfill, reason_kind
from tests.conftest import DESTINATION
from tests.integration.scenario import RECENT_END, run, setup, store_of


@pytest.mark.parametrize("vendor", ["fuul", "torque", "thrivestack", "airship"])
def test_plan_predicts_the_run(tmp_path, warehouse, sandbox, clock, vendor):
    path = setup(tmp_path, warehouse, sandbox, rows=1500, vendor=vendor, end=RECENT_END)
    config = load_pipeline(path)
    [plan] = plan_backfill(
        config, first_day=config.start_date, last_day=RECENT_END - timedelta(days=1)
    ).destinations
    assert sandbox.sandbox.stats == {}  # nothing sent
    report = run(path, clock)
    [dest] = report.destinations
    assert plan.total("rows") == dest.total("rows_read") == 1500
    assert plan.total("to_send") == dest.total("delivered")
    assert plan.total("filtered") == dest.total("filtered")
    assert sum(plan.rejected.values()) == dest.total("dead_letters") > 0
    # no vendor rejections here, so no splits: every request beyond the plan is a retry
    assert plan.total("requests") == dest.total("requests") - dest.total("retries")
    dead = [reason_kind(d["reason"]) for d in store_of(path).dead_letters(DESTINATION)]
    assert sorted(dead) == sorted(plan.rejected.elements())


def test_plan_counts_rows_outside_airships_window(tmp_path, warehouse, sandbox):
    path = setup(tmp_path, warehouse, sandbox, rows=300, vendor="airship")  # 2024: too old
    [plan] = plan_backfill(load_pipeline(path)).destinations
    assert plan.skipped_rows == 300 and plan.total("rows") == 0
    assert plan.rejected == {
        "in partitions older than Airship's 90-day window (not read, not sent)": 300
    }


def test_plan_command(tmp_path, warehouse, sandbox):
    path = setup(tmp_path, warehouse, sandbox, rows=600)
    config = load_pipeline(path)
    yesterday = RECENT_END - timedelta(days=1)
    span = ["--from", config.start_date.isoformat(), "--to", yesterday.isoformat()]
    result = CliRunner().invoke(cli, ["plan", "-c", str(path), *span, "--by-partition"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "fuul_rewards (fuul): 600 rows" in out
    assert "parameter score (column score): not a number" in out
    # Fuul's published limit, one request at a time (the default): 6 s + 3 ms apart
    assert "estimated" in out and "at 10 requests per 60 s, one at a time 6.003 s apart" in out
    assert config.start_date.isoformat() in out  # the per-partition lines
