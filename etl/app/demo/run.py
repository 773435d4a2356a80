"""`etl demo`: a warehouse of synthetic history, the sandbox vendors, the real backfill."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from dagster_project.demo import materialize_range
from etl.app.demo.data import create_warehouse
from etl.config import PipelineConfig
from etl.database import make_engine, safe_url
from etl.loader import load_pipeline
from etl.reports import DestinationReport, PartitionReport, RunReport
from etl.sandbox import SANDBOX_CREDENTIALS, start_sandbox
from etl.state import open_store
from etl.statuses import PartitionStatus, is_done

TIME_SCALE = 600.0
TORQUE_EVENTS = {"purchase": {"amount": "number", "game": "string"}}
TEMPLATE = Path(__file__).with_name("pipeline.yaml.tmpl")


def write_pipeline(directory: Path, start_date: str, time_scale: float = TIME_SCALE) -> Path:
    text = TEMPLATE.read_text(encoding="utf-8").format(
        dir=directory.as_posix(),
        start_date=start_date,
        time_scale=int(time_scale),
        window=round(60 / time_scale, 4),
        second=round(1 / time_scale, 6),
    )
    path = directory / "pipeline.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def ensure_demo_pipeline(directory: Path, days: int = 150) -> Path:
    """The demo's pipeline file, written (with its history starting ``days`` ago) if absent."""
    path = directory / "pipeline.yaml"
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    return write_pipeline(directory, (datetime.now(UTC).date() - timedelta(days=days)).isoformat())


def run_demo(
    directory: Path,
    rows: int = 60_000,
    days: int = 150,
    fresh: bool = False,
    say: Callable[[str], None] = print,
) -> RunReport:
    """Create the warehouse (unless it exists), start the sandbox, materialize every partition
    of every destination through Dagster in ``directory/dagster_home``, and report this run's
    work from the state tables."""
    directory.mkdir(parents=True, exist_ok=True)
    warehouse = directory / "warehouse.db"
    today = datetime.now(UTC).date()
    start = today - timedelta(days=days)
    if fresh:
        for stale in (warehouse, directory / "pipeline.yaml"):
            stale.unlink(missing_ok=True)
        shutil.rmtree(directory / "dagster_home", ignore_errors=True)
    if not warehouse.exists():
        say(f"Creating {warehouse}: {rows:,} actions over {days} days ...")
        create_warehouse(make_engine(f"sqlite:///{warehouse}"), rows, days, end=today)
    else:
        say(f"Using the existing {warehouse} (--fresh starts over)")
    pipeline_path = write_pipeline(directory, start.isoformat())
    server = start_sandbox(time_scale=TIME_SCALE, torque_events=TORQUE_EVENTS)
    os.environ["ETL_SANDBOX_URL"] = server.url
    for variable, key in SANDBOX_CREDENTIALS.items():  # the sandbox's keys, never real ones
        os.environ[variable] = key
    say(f"Sandbox vendors on {server.url} (time scale {TIME_SCALE:g}x)")
    config = load_pipeline(pipeline_path)
    yesterday = today - timedelta(days=1)
    before = progress_of(config, start, yesterday)
    started = time.monotonic()
    try:
        materialize_range(pipeline_path, start, yesterday, directory / "dagster_home", say)
        stats = server.sandbox.stats
    finally:
        server.stop()
    report = run_report_since(config, before, start, yesterday, time.monotonic() - started)
    say(f"Pipeline file: {pipeline_path}; Dagster instance: {directory / 'dagster_home'}")
    for vendor, counts in sorted(stats.items()):
        say(
            f"Sandbox {vendor}: {counts['requests']:,} requests, {counts['stored']:,} events stored"
        )
    return report


Totals = dict[str, dict[str, int]]
_COUNTED = (
    "rows_read",
    "delivered",
    "dead_letters",
    "filtered",
    "in_doubt",
    "retries",
    "throttled",
    "near_misses",
)


def progress_of(config: PipelineConfig, first: date, last: date) -> Totals:
    """Per destination, the state tables' counters summed over first..last."""
    with closing(open_store(config)) as store:
        totals: Totals = {}
        for name in config.destinations:
            cps = [
                c
                for c in store.checkpoints_of(name)
                if first.isoformat() <= c.partition <= last.isoformat()
            ]
            totals[name] = {k: sum(getattr(c, k) for c in cps) for k in _COUNTED}
            # time spent sending, from the checkpoints' own clocks
            totals[name]["millis"] = sum(
                int((c.updated_at - c.started_at).total_seconds() * 1000)
                for c in cps
                if c.updated_at and c.started_at
            )
            totals[name]["skipped"] = sum(1 for c in cps if c.status == PartitionStatus.SKIPPED)
            totals[name]["failed"] = sum(1 for c in cps if not is_done(c.status))
        return totals


def run_report_since(
    config: PipelineConfig, before: Totals, first: date, last: date, seconds: float
) -> RunReport:
    """What the state tables gained since ``before``: the work of this run, per destination."""
    after = progress_of(config, first, last)
    reports = []
    for name, dest in config.destinations.items():
        gained = {k: after[name][k] - before[name][k] for k in _COUNTED}
        partition = PartitionReport(name, f"{first}..{last}")
        for key, value in gained.items():
            setattr(partition, key, value)
        spent = (after[name]["millis"] - before[name]["millis"]) / 1000
        report = DestinationReport(name, dest.vendor, [partition], seconds=spent or seconds)
        if after[name]["skipped"]:
            report.skipped = (
                f"{name}: {after[name]['skipped']} partitions older than the vendor accepts are "
                "skipped (see etl status --all)"
            )
        if after[name]["failed"]:
            partition.status = PartitionStatus.FAILED
            partition.error = f"{after[name]['failed']} partitions failed: see etl status"
        reports.append(report)
    with closing(open_store(config)) as store:
        return RunReport(reports, store.table_names(), safe_url(store.engine), first, last)
