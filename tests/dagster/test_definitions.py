"""The Dagster definitions load, and partitions materialize with their metadata and checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from dagster_project.factory import build_definitions
from etl.events import event_id_for
from etl.loader import load_pipeline
from tests.dagster.conftest import FIRST

RANGE_TAGS = {
    "dagster/asset_partition_range_start": FIRST.isoformat(),
    "dagster/asset_partition_range_end": (FIRST + timedelta(days=3)).isoformat(),
}


def test_definitions_load(pipeline: Path):
    defs = build_definitions(load_pipeline(pipeline))
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {"user_actions", "fuul_rewards"}
    asset = defs.resolve_assets_def("fuul_rewards")
    assert asset.partitions_def.get_first_partition_key() == FIRST.isoformat()
    assert asset.backfill_policy == dg.BackfillPolicy.multi_run(10)
    assert asset.op.pool == "vendor_fuul_rewards"
    assert {c.name for c in asset.check_specs} == {"accounting", "dead_letter_rate"}
    schedule = defs.resolve_schedule_def("send_yesterday_daily")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert defs.resolve_sensor_def("report_failed_partitions")


def test_dagster_cli_validates_the_project(pipeline: Path, tmp_path: Path):
    env = {**os.environ, "ETL_PIPELINE": str(pipeline), "DAGSTER_HOME": str(tmp_path)}
    dagster = Path(sys.executable).with_name("dagster")
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "dagster_project.definitions"],
        env=env, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


def test_definitions_need_etl_pipeline(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "ETL_PIPELINE"}
    dagster = Path(sys.executable).with_name("dagster")
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "dagster_project.definitions"],
        env={**env, "DAGSTER_HOME": str(tmp_path)}, capture_output=True, text=True, timeout=120,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0
    assert (
        "ETL_PIPELINE is not set: point it at your pipeline file" in result.stdout + result.stderr
    )
    assert not (tmp_path / ".etl-demo").exists()  # no demo file written in its place


def materialize(pipeline: Path, tags: dict[str, str] | None = None) -> dg.ExecuteInProcessResult:
    defs = build_definitions(load_pipeline(pipeline))
    job = defs.resolve_job_def("send_daily")
    with dg.DagsterInstance.ephemeral() as instance:
        return job.execute_in_process(
            instance=instance, tags=tags or RANGE_TAGS, raise_on_error=False
        )


def test_partitions_materialize_with_metadata_and_checks(pipeline: Path, sandbox):
    result = materialize(pipeline)
    assert result.success
    materializations = result.asset_materializations_for_node("fuul_rewards")
    assert sorted(m.partition for m in materializations) == [
        (FIRST + timedelta(days=i)).isoformat() for i in range(4)
    ]  # one per partition of the run, each with the run's metadata
    meta = {k: v.value for k, v in materializations[0].metadata.items()}
    assert meta["partitions"] == 4 and meta["rows_read"] == 800
    assert meta["delivered"] + meta["dead_letters"] + meta["filtered"] == 800
    assert meta["delivered"] == len(sandbox.sandbox.records["fuul"])
    assert meta["in_doubt"] == 0 and meta["http_429s"] == 0 and meta["events_per_second"] > 0
    assert json.loads(meta["checkpoint_cursor"])
    samples = meta["sample_payloads"]
    assert samples and all("…" in s["user"]["identifier"] for s in samples)  # masked
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["accounting"].passed and checks["dead_letter_rate"].passed
    secret = os.environ["FUUL_API_KEY"]
    assert secret not in json.dumps([str(v) for v in meta.values()])


def test_a_row_added_behind_the_cursor_is_sent_by_the_next_run(
    pipeline: Path, sqlite_warehouse, sandbox
):
    """A late row, earlier than its day's cursor: the day's count changed, so the next run
    re-checks the day and sends that row alone; the accounting check passes."""
    assert materialize(pipeline).success
    engine = sqlite_warehouse.engine()
    with engine.begin() as conn:  # a late row, earlier than the day's cursor
        conn.execute(
            sa.text(
                "INSERT INTO user_actions (id, occurred_at, user_id, wallet, wallet_type, action, "
                "game_id) VALUES (999999, :ts, 'u_late', :wallet, 'evm_address', 'game_played', 'g')"
            ),
            {"ts": f"{FIRST.isoformat()} 00:00:01.000000", "wallet": "0x" + "ab" * 20},
        )
    engine.dispose()
    before = len(sandbox.sandbox.records["fuul"])
    result = materialize(pipeline, {"dagster/partition": FIRST.isoformat()})
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["accounting"].passed and result.success
    sent = sandbox.sandbox.records["fuul"][before:]
    assert [e["dedup_id"] for e in sent] == [event_id_for("fuul_rewards", 999999)]
