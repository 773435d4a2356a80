"""The Dagster definitions load, and partitions materialize with their metadata and checks."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import sqlalchemy as sa
import yaml

from dagster_project.factory import build_definitions
from etl.events import event_id_for
from etl.loader import load_pipeline
from etl.state import Checkpoint, existing_store
from tests.conftest import DESTINATION
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
    assert asset.backfill_policy == dg.BackfillPolicy.multi_run(30)
    assert asset.op.pool == "vendor_fuul_rewards"
    specs = {c.name: c for c in asset.check_specs}
    assert set(specs) == {"accounting", "dead_letter_rate", "in_doubt"}
    assert all(c.description and c.partitions_def for c in specs.values())
    assert specs["accounting"].blocking and not specs["in_doubt"].blocking
    schedule = defs.resolve_schedule_def("send_yesterday_daily")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert defs.resolve_sensor_def("report_failed_runs")


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


def materialize(
    pipeline: Path,
    tags: dict[str, str] | None = None,
    instance: dg.DagsterInstance | None = None,
) -> dg.ExecuteInProcessResult:
    defs = build_definitions(load_pipeline(pipeline))
    job = defs.resolve_job_def("send_daily")
    if instance is not None:
        return job.execute_in_process(
            instance=instance, tags=tags or RANGE_TAGS, raise_on_error=False
        )
    with dg.DagsterInstance.ephemeral() as ephemeral:
        return job.execute_in_process(
            instance=ephemeral, tags=tags or RANGE_TAGS, raise_on_error=False
        )


def state_checkpoints(pipeline: Path) -> dict[str, Checkpoint]:
    store = existing_store(load_pipeline(pipeline))
    assert store is not None
    try:
        return {cp.partition: cp for cp in store.checkpoints_of(DESTINATION)}
    finally:
        store.close()


def metadata(event: dg.AssetMaterialization) -> dict[str, object]:
    return {k: v.value for k, v in event.metadata.items()}


def test_each_partition_materializes_with_its_own_numbers(pipeline: Path, sandbox):
    result = materialize(pipeline)
    assert result.success
    materializations = result.asset_materializations_for_node("fuul_rewards")
    days = [(FIRST + timedelta(days=i)).isoformat() for i in range(4)]
    assert sorted(m.partition for m in materializations) == days
    cps = state_checkpoints(pipeline)
    for event in materializations:  # each day: that day's numbers from the state tables
        meta, cp = metadata(event), cps[event.partition]
        assert meta["rows_read"] == cp.rows_read > 0
        assert (meta["delivered"], meta["dead_letters"], meta["filtered"]) == (
            cp.delivered, cp.dead_letters, cp.filtered,
        )  # fmt: skip
        assert meta["delivered"] + meta["dead_letters"] + meta["filtered"] == cp.rows_read
        assert meta["in_doubt"] == 0 and meta["http_429s"] == 0
        assert meta["requests"] == cp.requests and meta["delivered_this_run"] == cp.delivered
        assert json.loads(str(meta["cursor"]))[0].startswith(event.partition) or meta["cursor"]
        assert isinstance(meta["delivered"], int) and isinstance(meta["seconds"], float)
        samples = meta["sample_payloads"]
        assert isinstance(samples, list) and all("…" in s["user"]["identifier"] for s in samples)
    delivered = sum(int(metadata(m)["delivered"]) for m in materializations)  # type: ignore[arg-type]
    assert delivered == len(sandbox.sandbox.records["fuul"])
    checks = result.get_asset_check_evaluations()
    assert sorted((e.check_name, e.partition) for e in checks) == sorted(
        (name, day) for name in ("accounting", "dead_letter_rate", "in_doubt") for day in days
    )  # each check per partition
    assert all(e.passed for e in checks)
    secret = os.environ["FUUL_API_KEY"]
    assert secret not in json.dumps([str(metadata(m)) for m in materializations])


def test_near_misses_are_in_each_days_metadata(pipeline: Path):
    """A filter value that differs from the data only by case: each day says how many rows it
    dropped for that alone, as `etl status` does."""
    doc = yaml.safe_load(pipeline.read_text())
    doc["destinations"][DESTINATION]["mapping"]["filter"] = {"action": ["Game_Played", "purchase"]}
    pipeline.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = materialize(pipeline)
    assert result.success
    cps = state_checkpoints(pipeline)
    for event in result.asset_materializations_for_node("fuul_rewards"):
        meta, cp = metadata(event), cps[event.partition]
        assert meta["near_misses"] == cp.near_misses > 0
        assert meta["near_miss"] == "mapping.filter.action: 'game_played'"


def test_a_rerun_with_nothing_to_send_keeps_the_numbers(pipeline: Path, sandbox):
    with dg.DagsterInstance.ephemeral() as instance:
        assert materialize(pipeline, instance=instance).success
        again = materialize(pipeline, instance=instance)
        assert again.success
        assert again.asset_materializations_for_node("fuul_rewards") == []
        latest = instance.fetch_materializations(dg.AssetKey("fuul_rewards"), limit=10).records
        assert len(latest) == 4  # the first run's, untouched
        assert all(
            metadata(r.asset_materialization)["delivered"] > 0  # type: ignore[arg-type,operator]
            for r in latest
        )


def test_a_dead_destination_fails_its_days_and_keeps_the_others(pipeline: Path, sandbox):
    """The vendor's URL starts answering 404 after two requests: the days committed before
    are materialized, the others are failed (no materialization, accounting failed), and a
    second run once the vendor is back sends only what is missing."""
    sandbox.sandbox.set_faults("fuul", answer_status=404, answer_body="<html>", answer_after=2)
    with dg.DagsterInstance.ephemeral() as instance:
        failed = materialize(pipeline, instance=instance)
        assert not failed.success
        done = {m.partition for m in failed.asset_materializations_for_node("fuul_rewards")}
        cps = state_checkpoints(pipeline)
        days = [(FIRST + timedelta(days=i)).isoformat() for i in range(4)]
        assert done == {p for p, cp in cps.items() if cp.status == "complete" and p in days}
        assert 0 < len(done) < 4
        assert partition_status(instance, pipeline) == (done, set(days) - done)  # as the UI
        accounting = {
            e.partition: e.passed
            for e in failed.get_asset_check_evaluations()
            if e.check_name == "accounting"
        }
        assert accounting == {day: day in done for day in days}
        failure = next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE")
        assert "answered HTTP 404" in failure.step_failure_data.error.message  # type: ignore[union-attr]
        sandbox.sandbox.set_faults("fuul", answer_status=0)
        repaired = materialize(pipeline, instance=instance)
        assert repaired.success
        again = {m.partition for m in repaired.asset_materializations_for_node("fuul_rewards")}
        assert again == set(days) - done  # the failed days only
        assert partition_status(instance, pipeline) == (set(days), set())
    records = sandbox.sandbox.records["fuul"]
    assert len({r["dedup_id"] for r in records}) == len(records)  # nothing sent twice
    assert len(records) == sum(cp.delivered for cp in state_checkpoints(pipeline).values())


def partition_status(instance: dg.DagsterInstance, pipeline: Path) -> tuple[set[str], set[str]]:
    """The partitions the Dagster UI shows materialized, and failed."""
    from dagster._core.storage.partition_status_cache import (
        get_and_update_asset_status_cache_value,
    )

    partitions = (
        build_definitions(load_pipeline(pipeline)).resolve_assets_def(DESTINATION).partitions_def
    )
    value = get_and_update_asset_status_cache_value(instance, dg.AssetKey(DESTINATION), partitions)
    assert value is not None and partitions is not None
    return (
        set(value.deserialize_materialized_partition_subsets(partitions).get_partition_keys()),
        set(value.deserialize_failed_partition_subsets(partitions).get_partition_keys()),
    )


def test_the_run_log_says_the_progress_and_problems_as_warnings(pipeline: Path, sandbox):
    sandbox.sandbox.set_faults("fuul", error_rate=0.3)  # 503s: retried, said at WARNING
    with dg.DagsterInstance.ephemeral() as instance:
        result = materialize(pipeline, instance=instance)
        assert result.success
        logs = [r for r in instance.all_logs(result.run_id) if r.dagster_event is None]
    said = [(r.level, r.user_message) for r in logs]
    days = [(FIRST + timedelta(days=i)).isoformat() for i in range(4)]
    closed = [m for level, m in said if level == logging.INFO and "complete (new)" in m]
    assert all(any(f" {day}: complete (new): " in m for m in closed) for day in days), said
    assert not [m for level, m in said if level >= logging.WARNING and "expected outputs" in m]
    retried = [m for level, m in said if level == logging.WARNING and "retrying in" in m]
    assert retried, said


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


class Webhook:
    """A real HTTP server that keeps what is posted to it (a Slack-compatible webhook)."""

    def __init__(self) -> None:
        posted = self.posted = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers["Content-Length"])
                posted.append(json.loads(self.rfile.read(size)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_failed_run_is_posted_to_the_webhook(pipeline: Path, sandbox, monkeypatch):
    hook = Webhook()
    monkeypatch.setenv("ETL_ALERT_WEBHOOK_URL", hook.url)
    sandbox.sandbox.set_faults("fuul", answer_status=404, answer_body="<html>", answer_after=2)
    defs = build_definitions(load_pipeline(pipeline))
    try:
        with dg.DagsterInstance.ephemeral() as instance:
            result = materialize(pipeline, instance=instance)
            assert not result.success
            run = instance.get_run_by_id(result.run_id)
            failure = next(
                e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE
            )
            context = dg.build_run_status_sensor_context(
                sensor_name="report_failed_runs",
                dagster_event=failure,
                dagster_instance=instance,
                dagster_run=run,
            ).for_run_failure()
            defs.resolve_sensor_def("report_failed_runs")(context)  # type: ignore[operator]
            cancelled = dg.build_run_status_sensor_context(
                sensor_name="report_cancelled_runs",
                dagster_event=failure,
                dagster_instance=instance,
                dagster_run=run,
            )
            defs.resolve_sensor_def("report_cancelled_runs")(cancelled)  # type: ignore[operator]
    finally:
        hook.close()
    first, second = hook.posted
    cps = state_checkpoints(pipeline)
    days = [(FIRST + timedelta(days=i)).isoformat() for i in range(4)]
    assert first["status"] == "failed" and second["status"] == "cancelled"
    assert first["destinations"] == [DESTINATION]
    assert first["partitions"] == f"{days[0]}..{days[-1]}"
    assert first["dead_letters"] == sum(cps[d].dead_letters for d in days if d in cps)
    assert first["in_doubt"] == 0 and "404" in first["reason"]
    assert first["text"].startswith(f"etl run {result.run_id[:8]} failed: {DESTINATION}")
    assert os.environ["FUUL_API_KEY"] not in json.dumps(hook.posted)


def test_an_interrupted_run_still_reports_the_days_it_completed(
    pipeline: Path, sandbox, monkeypatch
):
    """Terminated from the UI after the days were committed (the interruption comes out of
    run_backfill, as Dagster raises it in the step): those days are materialized all the same."""
    import dagster_project.assets as assets

    real = assets.run_backfill

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)
        raise dg.DagsterExecutionInterruptedError("terminated")

    monkeypatch.setattr(assets, "run_backfill", interrupted)
    result = materialize(pipeline)
    assert not result.success
    days = [(FIRST + timedelta(days=i)).isoformat() for i in range(4)]
    done = sorted(m.partition for m in result.asset_materializations_for_node("fuul_rewards"))
    assert done == days


def test_the_source_observation_counts_the_history_and_the_rows_outside_it(pipeline: Path):
    from dagster_project.factory import OBSERVE_JOB
    from etl.ranges import yesterday
    from etl.source import Source

    config = load_pipeline(pipeline)
    result = build_definitions(config).resolve_job_def(OBSERVE_JOB).execute_in_process()
    assert result.success
    [observation] = [
        e.asset_observation_data.asset_observation
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    ]
    meta = {k: v.value for k, v in observation.metadata.items()}
    source = Source(config)
    try:
        rows = source.count(config.start_date, yesterday())
        outside = source.outside(yesterday())
    finally:
        source.engine.dispose()
    assert meta["row_count"] == rows == 800
    assert meta["after_yesterday"] == outside.after_range
    assert meta["without_timestamp"] == outside.no_timestamp
