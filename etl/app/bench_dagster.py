"""`etl bench --only dagster`: the same backfill through Dagster and through `etl run`.

365 days of the demo's four destinations (Fuul, Torque, ThriveStack, Airship), the sandbox
without a limit, each way from a fresh state in a process of its own: `etl run` of the range,
and Dagster's multi-run backfill of it (runs of ``dagster.partitions_per_run`` days, in the
instance that ``dagster_project/dagster.yaml`` ships). Reported: the wall time of each, their
ratio, and Dagster's overhead per partition (a destination and a day).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from etl.app.demo.data import create_warehouse
from etl.app.demo.run import TORQUE_EVENTS, write_pipeline
from etl.database import make_engine
from etl.sandbox import SANDBOX_CREDENTIALS

DAYS = 365
ROWS = 100_000
TIME_SCALE = 1e6  # the demo's limits, scaled so far that none binds
TARGET_RATIO = 1.3


def dagster_part(directory: Path, say: Callable[[str], None], sandbox: Any) -> dict[str, Any]:
    """The measurement; ``sandbox`` is the bench's sandbox process (its ``url``, ``reset``)."""
    end = datetime.now(UTC).date()
    first, last = end - timedelta(days=DAYS), end - timedelta(days=1)
    say(f"Dagster against etl run: {ROWS:,} rows over {DAYS} days, 4 destinations ...")
    base = directory / "dagster-base"
    base.mkdir()
    create_warehouse(make_engine(f"sqlite:///{base / 'warehouse.db'}"), ROWS, DAYS, end=end)
    env = {
        **os.environ,
        **SANDBOX_CREDENTIALS,
        "ETL_SANDBOX_URL": sandbox.url,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    seconds: dict[str, float] = {}
    delivered: dict[str, int] = {}
    for way in ("etl_run", "dagster"):
        folder = directory / way
        folder.mkdir()
        shutil.copyfile(base / "warehouse.db", folder / "warehouse.db")  # a fresh state
        pipeline = write_pipeline(folder, first.isoformat(), TIME_SCALE)
        _default_runs(pipeline)
        sandbox.reset()
        command = [sys.executable, "-m", "etl.app", "run", "-c", str(pipeline), "--no-progress"]
        command += ["--from", first.isoformat(), "--to", last.isoformat()]
        if way == "dagster":
            command = [sys.executable, "-m", "etl.app.bench_dagster", str(pipeline)]
            command += [str(folder / "dagster_home"), first.isoformat(), last.isoformat()]
        started = time.monotonic()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds[way] = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"the {way} backfill failed: {(done.stdout + done.stderr)[-2000:]}")
        delivered[way] = sum(sandbox.stats(v).get("stored", 0) for v in TORQUE_VENDORS)
        say(f"  {way}: {seconds[way]:.1f} s, {delivered[way]:,} events stored")
    if delivered["dagster"] != delivered["etl_run"]:
        raise RuntimeError(f"the two ways stored different events: {delivered}")
    partitions = DAYS * 4
    return {
        "dagster_seconds": round(seconds["dagster"], 1),
        "dagster_etl_run_seconds": round(seconds["etl_run"], 1),
        "dagster_ratio": round(seconds["dagster"] / seconds["etl_run"], 2),
        "dagster_overhead_ms_per_partition": round(
            (seconds["dagster"] - seconds["etl_run"]) / partitions * 1000, 1
        ),
        "dagster_events": delivered["dagster"],
    }


TORQUE_VENDORS = ("fuul", "torque", "thrivestack", "airship")
SANDBOX_ARGS = [
    f"--torque-event={name}:" + ",".join(f"{k}={t}" for k, t in params.items())
    for name, params in TORQUE_EVENTS.items()
]


def _default_runs(pipeline: Path) -> None:
    """The demo's pipeline with the default partitions_per_run (10): a backfill as a user's."""
    doc = yaml.safe_load(pipeline.read_text())
    doc["dagster"].pop("partitions_per_run", None)
    pipeline.write_text(yaml.safe_dump(doc, sort_keys=False))


def main(pipeline: str, home: str, first: str, last: str) -> None:
    """The Dagster way, in this process: the multi-run backfill of the range."""
    from dagster_project.demo import materialize_range

    statuses = materialize_range(
        Path(pipeline), date.fromisoformat(first), date.fromisoformat(last), Path(home), print
    )
    failed = [s for s in statuses if s.value != "SUCCESS"]
    if failed:
        raise SystemExit(f"{len(failed)} Dagster runs did not succeed")


if __name__ == "__main__":
    main(*sys.argv[1:5])
