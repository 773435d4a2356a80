"""`etl demo`: a warehouse of synthetic history, the sandbox vendors, the real backfill."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from etl.config import load_pipeline
from etl.demo.data import create_warehouse
from etl.runner import RunReport, run_backfill
from etl.sandbox import airship, fuul, start_sandbox, thrivestack, torque
from etl.source import make_engine

TIME_SCALE = 300.0
SANDBOX_CREDENTIALS = {
    "FUUL_API_KEY": next(iter(fuul.KEYS)),
    "TORQUE_API_KEY": torque.KEY,
    "THRIVESTACK_API_KEY": thrivestack.KEY,
    "AIRSHIP_TOKEN": airship.TOKEN,
    "AIRSHIP_APP_KEY": airship.APP_KEY,
}
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


def run_demo(
    directory: Path,
    rows: int = 60_000,
    days: int = 150,
    fresh: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> RunReport:
    directory.mkdir(parents=True, exist_ok=True)
    warehouse = directory / "warehouse.db"
    today = datetime.now(UTC).date()
    start = today - timedelta(days=days)
    if fresh and warehouse.exists():
        warehouse.unlink()
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
    try:
        config = load_pipeline(pipeline_path)
        report = run_backfill(config, first_day=start, progress=progress, log=say)
        stats = server.sandbox.stats
    finally:
        server.stop()
    say(f"Pipeline file: {pipeline_path}")
    for vendor, counts in sorted(stats.items()):
        say(
            f"Sandbox {vendor}: {counts['requests']:,} requests, {counts['stored']:,} events stored"
        )
    return report
