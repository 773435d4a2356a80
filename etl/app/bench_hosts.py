"""`etl bench --only hosts --warehouse postgresql+psycopg://...`: the Celery deployment on 1 and
on 2 worker hosts, against plain `etl run` of the same work.

The demo's four destinations (Fuul, ThriveStack, Airship, Torque), each paced by a rate limit
that binds (set so that each destination's backfill takes about ``SECONDS_EACH``), over a
PostgreSQL warehouse and state in scratch schemas, a scratch database for Dagster's storage, and
the broker of $ETL_CELERY_BROKER (default: RabbitMQ on this machine), all removed at the end.
Measured, each from a fresh state: the four destinations one after another by `etl run -d` (what
one worker taking one run at a time does, without Dagster); then `dagster dev` with 1, then 2,
`etl worker` processes taking one run at a time, a backfill launched per destination: wall time
from the first run's start to the last one's end, and events a second. Reported: the speedup of
2 workers over 1 (target ≥ 1.6) and the Celery path's overhead over `etl run` (target ≤ 1.2).

Then one vendor limit across hosts, against a bucket that banks nothing: two ThriveStack
destinations with one endpoint and key (one budget; each its own pool, so the two workers run
them at once), behind a sandbox token bucket of burst 1 at the configured rate, `rate_limit`
with the defaults (shared on worker hosts, one request at a time): the 429s and the share of the
limit the two together reach (``hosts_strict_*``).
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url

from dagster_project.hosts import (
    BROKER_ENV,
    DEFAULT_BROKER,
    backfill_runs,
    create_storage,
    delete_queue,
)
from etl.app.demo.data import create_warehouse
from etl.app.demo.run import write_pipeline
from etl.database import make_engine
from etl.loader import load_pipeline
from etl.run_context import RunOptions
from etl.runner import run_backfill
from etl.sandbox import SANDBOX_CREDENTIALS

ROWS = 60_000
DAYS = 10
BATCH = 100
SECONDS_EACH = 30.0  # each destination's backfill, at its limit
STRICT_VENDOR = "thrivestack"  # the destination of the measurement across hosts
VENDORS = ("fuul", "thrivestack", "airship", "torque")
LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on PythonError { message }
  }
}"""


def hosts_part(
    directory: Path, say: Callable[[str], None], sandbox: Any, warehouse: str
) -> dict[str, Any]:
    """The measurement (see the module docstring); ``sandbox``: the bench's, without a limit."""
    if make_url(warehouse).get_backend_name() != "postgresql":
        raise SystemExit("etl bench --only hosts needs --warehouse postgresql+psycopg://...")
    end = datetime.now(UTC).date()
    first, last = end - timedelta(days=DAYS), end - timedelta(days=1)
    engine = make_engine(warehouse)
    schema = f"etl_bench_hosts_{secrets.token_hex(4)}"
    say(f"Several hosts: {ROWS:,} rows over {DAYS} days in {schema}, 4 paced destinations ...")
    try:
        with engine.begin() as conn:
            conn.execute(sa.schema.CreateSchema(schema))
        create_warehouse(engine, ROWS, DAYS, end=end, schema=schema)
        pipeline = _pipeline(directory, warehouse, schema, first, sandbox.url)
        events = _pace(pipeline, first, last)
        seconds: dict[str, float] = {}
        sandbox.reset()
        seconds["etl_run"] = _etl_runs(pipeline, sandbox.url, first, last, schema, "run")
        say(f"  etl run, one destination after another: {seconds['etl_run']:.1f} s")
        for workers in (1, 2):
            sandbox.reset()
            seconds[f"w{workers}"] = _celery(
                directory, pipeline, sandbox.url, schema, workers, first, last, warehouse
            )
            say(f"  {workers} worker(s): {seconds[f'w{workers}']:.1f} s")
        refused = sum(sandbox.stats(v).get("throttled", 0) for v in VENDORS)
        strict = _strict_across_hosts(directory, pipeline, sandbox, schema, first, last, warehouse)
        say(f"  {STRICT_VENDOR} on 2 workers at once, bucket of burst 1: {strict}")
    finally:
        with engine.begin() as conn:
            conn.execute(sa.schema.DropSchema(schema, cascade=True, if_exists=True))
        engine.dispose()
    return {
        "hosts_events": events,
        "hosts_etl_run_seconds": round(seconds["etl_run"], 1),
        "hosts_1_worker_seconds": round(seconds["w1"], 1),
        "hosts_2_workers_seconds": round(seconds["w2"], 1),
        "hosts_1_worker_events_per_s": round(events / seconds["w1"]),
        "hosts_2_workers_events_per_s": round(events / seconds["w2"]),
        "hosts_speedup": round(seconds["w1"] / seconds["w2"], 2),
        "hosts_celery_overhead": round(seconds["w1"] / seconds["etl_run"], 2),
        "hosts_429s": refused,
        **strict,
    }


def _strict_across_hosts(
    directory: Path,
    pipeline: Path,
    sandbox: Any,
    schema: str,
    first: date,
    last: date,
    warehouse: str,
) -> dict[str, Any]:
    """Two STRICT_VENDOR destinations with one endpoint and key, on two workers at once,
    behind a bucket of burst 1 at the configured rate: the 429s, and the two's requests a
    second over the rate."""
    doc = yaml.safe_load(pipeline.read_text())
    ((name, dest),) = (
        (n, d) for n, d in doc["destinations"].items() if d["vendor"] == STRICT_VENDOR
    )
    doc["destinations"] = {name: dest, f"{name}_2": copy.deepcopy(dest)}
    limit = dest["rate_limit"]
    path = pipeline.with_name("pipeline_strict.yaml")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    sandbox.reset()
    rate = limit["requests"] / limit["per_seconds"]
    sandbox.faults(STRICT_VENDOR, bucket_per_s=rate, bucket_burst=1)
    _celery(directory, path, sandbox.url, schema, 2, first, last, warehouse, tag="strict")
    arrivals = sandbox.arrivals(STRICT_VENDOR)
    return {
        "hosts_strict_requests": len(arrivals),
        "hosts_strict_efficiency": round(
            (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) / rate, 3
        ),
        "hosts_strict_429s": sandbox.stats(STRICT_VENDOR).get("throttled", 0),
    }


def _pipeline(directory: Path, warehouse: str, schema: str, first: date, sandbox: str) -> Path:
    """The demo's pipeline, its source and state in the scratch schema, one run a destination."""
    base = directory / "hosts"
    base.mkdir()
    doc = yaml.safe_load(write_pipeline(base, first.isoformat()).read_text())
    doc["source"] = {**doc["source"], "url": warehouse, "schema": schema}
    doc["state"] = {"schema": schema}
    doc["dagster"] = {"partitions_per_run": DAYS}
    doc["late_rows"] = {"lookback_days": 0}
    for dest in doc["destinations"].values():
        if dest["vendor"] != "torque":  # one event a request
            dest["batch_size"] = BATCH
    path = base / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _pace(pipeline: Path, first: date, last: date) -> int:
    """Each destination's limit, so that its backfill takes about SECONDS_EACH; the events."""
    out = pipeline.with_name("dry.jsonl")
    config = load_pipeline(pipeline)
    run_backfill(config, first_day=first, last_day=last, options=RunOptions(dry_run=out))
    counts = Counter(json.loads(line)["destination"] for line in out.read_text().splitlines())
    doc = yaml.safe_load(pipeline.read_text())
    for name, dest in doc["destinations"].items():
        requests_needed = -(-counts.get(name, 0) // dest.get("batch_size", 1))
        per_s = max(1, round(requests_needed / SECONDS_EACH))
        dest["rate_limit"] = {"requests": per_s, "per_seconds": 1}
    pipeline.write_text(yaml.safe_dump(doc, sort_keys=False))
    return sum(counts.values())


def _with_state(pipeline: Path, schema: str, suffix: str) -> Path:
    """The pipeline with its state tables fresh (a prefix of their own)."""
    doc = yaml.safe_load(pipeline.read_text())
    doc["state"] = {"schema": schema, "table_prefix": f"etl_{suffix}_"}
    path = pipeline.with_name(f"pipeline_{suffix}.yaml")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _env(sandbox: str) -> dict[str, str]:
    return {**os.environ, **SANDBOX_CREDENTIALS, "ETL_SANDBOX_URL": sandbox}


def _etl_runs(
    pipeline: Path, sandbox: str, first: date, last: date, schema: str, tag: str
) -> float:
    path = _with_state(pipeline, schema, tag)
    started = time.monotonic()
    for name in load_pipeline(path).destinations:
        command = [sys.executable, "-m", "etl.app", "run", "-c", str(path), "-d", name]
        command += ["--from", first.isoformat(), "--to", last.isoformat(), "--no-progress"]
        done = subprocess.run(command, env=_env(sandbox), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"etl run -d {name} failed: {(done.stdout + done.stderr)[-1500:]}")
    return time.monotonic() - started


def _celery(
    directory: Path,
    pipeline: Path,
    sandbox: str,
    schema: str,
    workers: int,
    first: date,
    last: date,
    warehouse: str,
    tag: str = "",
) -> float:
    """dagster dev and ``workers`` workers: a backfill per destination (one run each); the wall
    time from the first run's start to the last run's end."""
    tag = tag or f"w{workers}"
    path = _with_state(pipeline, schema, tag)
    here = directory / f"hosts_{tag}"
    home = here / "home"
    home.mkdir(parents=True)
    shipped = Path(__file__).parents[2] / "dagster_project" / "dagster.celery.yaml"
    shutil.copyfile(shipped, home / "dagster.yaml")
    broker = os.environ.get(BROKER_ENV) or DEFAULT_BROKER
    with scratch_database(warehouse) as dagster_pg, scratch_queue(broker, "etl_bench") as queue:
        env = {
            **_env(sandbox),
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_URL": dagster_pg,
            "ETL_PIPELINE": str(path),
            "ETL_CELERY_QUEUE": queue,
        }
        os.environ["DAGSTER_PG_URL"] = dagster_pg
        create_storage(home)  # its tables, before any host starts
        port = _free_port()
        target = ["-m", "dagster_project.definitions"]
        dev = ["dagster", "dev", *target, "-p", str(port)]
        procs = [start_program(here / "dagster.log", env, dev)]
        try:
            for n in range(workers):
                command = [sys.executable, "-m", "etl.app", "worker", "-c", str(path)]
                procs.append(
                    start_program(here / f"worker{n}.log", env, [*command, "--name", f"w{n}"])
                )
            url = f"http://127.0.0.1:{port}"
            _wait(lambda: _up(url), 120, "the Dagster webserver")
            days = [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
            for name in load_pipeline(path).destinations:
                params = {"partitionNames": days, "assetSelection": [{"path": [name]}]}
                body = {"query": LAUNCH, "variables": {"params": params}}
                answer = requests.post(f"{url}/graphql", json=body, timeout=30).json()
                launched = answer["data"]["launchPartitionBackfill"]
                if launched["__typename"] != "LaunchBackfillSuccess":
                    raise RuntimeError(f"the backfill was not launched: {launched}")
            wanted = len(load_pipeline(path).destinations)
            ended = _wait(lambda: _finished(home, wanted), 1800, "the runs")
        finally:
            for proc in procs:
                stop_process(proc)
    failed = [run for run in ended if run.status != "SUCCESS"]
    if failed:
        errors = [
            line
            for log in sorted(here.glob("*.log"))
            for line in log.read_text(errors="replace").splitlines()
            if any(word in line for word in ("Error", "ERROR", "Refused", "RUN_FAILURE"))
        ]
        raise RuntimeError(f"{len(failed)} runs did not succeed: " + "\n".join(errors[-15:]))
    starts = [run.start for run in ended if run.start is not None]
    ends = [run.end for run in ended if run.end is not None]
    return float(max(ends) - min(starts))


def _finished(home: Path, wanted: int) -> list[Any] | None:
    """The backfills' runs, once there are ``wanted`` and every one of them ended."""
    runs = backfill_runs(home)
    return runs if len(runs) >= wanted and all(run.ended for run in runs) else None


@contextmanager
def scratch_queue(broker: str, prefix: str) -> Iterator[str]:
    """A queue name of its own for a deployment's runs; the queue is deleted from the broker
    afterwards (if the broker is still there)."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        delete_queue(broker, name)


@contextmanager
def scratch_database(warehouse: str, prefix: str = "etl_bench_dagster") -> Iterator[str]:
    """A scratch database on the warehouse's server for Dagster's storage, dropped afterwards:
    its URL (psycopg2: Dagster's storage fails on psycopg 3)."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = sa.create_engine(warehouse, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))  # a generated name, not input
    try:
        url = make_url(warehouse).set(drivername="postgresql+psycopg2", database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def start_program(
    log: Path, env: dict[str, str], command: list[str], cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """``command`` in its own process group, its output in ``log``; a first word without a
    path is this environment's program of that name if it has one (``dagster``)."""
    if "/" not in command[0] and (ours := Path(sys.executable).with_name(command[0])).exists():
        command = [str(ours), *command[1:]]
    with log.open("w") as out:
        return subprocess.Popen(
            command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to its process group, SIGKILL if it has not ended 30 s later."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _up(url: str) -> bool:
    try:
        return requests.get(f"{url}/server_info", timeout=2).ok
    except requests.RequestException:
        return False


def _wait(check: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while not (found := check()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {seconds:.0f} s")
        time.sleep(0.5)
    return found


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
