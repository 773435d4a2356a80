"""Several hosts for real: the Dagster webserver and daemon on one, two Celery workers (`etl
worker`) each in its own network namespace (tests/dagster/network.py: its own address, the
services reached at the bridge's) and UTS namespace (its own host name), working and temporary
directories, all sharing a PostgreSQL Dagster instance, a PostgreSQL warehouse and state, and
the RabbitMQ broker; the second host's wall clock is five minutes behind (wall_clock_offset.c).
A backfill
of three destinations lands on both workers; one worker is SIGKILLed while its run has requests
out, and the broker goes down for a few seconds (every connection of the daemon and the workers
cut, through a relay) while the other host's run is out; the killed run's retry runs on the
host whose clock is behind, which takes over its leases by the database's clock. Per
destination and partition: every row delivered or filtered, Fuul never doubled, extra copies
within what was reported in doubt; the killed run failed and its retry succeeded; no lease or
pool slot left held."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from kombu import Connection

from dagster_project.hosts import TASK_ID_TAG, WORKER_TAG, create_storage
from etl.app.bench_hosts import scratch_database, scratch_queue, start_program, stop_process
from etl.loader import load_pipeline
from etl.run_context import RunOptions
from etl.runner import run_backfill
from etl.sandbox import SANDBOX_CREDENTIALS, start_sandbox
from etl.state import existing_store
from tests.conftest import POSTGRES_URL, VENDOR_DESTINATIONS, require_postgres, warehouse_of
from tests.dagster.network import HostNetwork, require_network_namespaces
from tests.dagster.relay import Relay
from tests.dagster.test_ui_end_to_end import LAUNCH, Ui, free_port, wait_for_webserver
from tests.integration.scenario import RECENT_END, canonical

pytestmark = pytest.mark.slow

BROKER = os.environ.get("ETL_TEST_BROKER_URL", "pyamqp://guest:guest@127.0.0.1:5672//")
ROOT = Path(__file__).parents[2]
DAYS = 4
FIRST = RECENT_END - timedelta(days=DAYS)
VENDORS = ("fuul", "thrivestack", "airship")
OUTAGE = 3.0  # seconds the broker is down
DEADLINE = 240.0


def require_broker() -> None:
    try:
        with Connection(BROKER, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        message = f"the broker is unreachable at {BROKER}: {str(exc).splitlines()[0]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def require_namespaces() -> None:
    ok = shutil.which("unshare") and os.geteuid() == 0
    if not ok:
        message = "worker hosts need `unshare --uts` as root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


SKEW = -300  # etl-w2's wall clock, seconds: five minutes behind the database's and the others'


def wall_clock_offset(tmp: Path) -> Path:
    """tests/dagster/wall_clock_offset.c built into a library to preload (gcc, as on every
    machine of this kind)."""
    if shutil.which("gcc") is None:
        message = "a host with its clock off needs gcc to build wall_clock_offset.c"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    library = tmp / "wall_clock_offset.so"
    source = Path(__file__).with_name("wall_clock_offset.c")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source), "-ldl"], check=True)
    return library


def skewed(env: dict[str, str], library: Path) -> dict[str, str]:
    """The environment of a host whose wall clock is SKEW seconds off, in every process it
    starts (the monotonic clock, which sleeps and timeouts use, as it is)."""
    return {**env, "LD_PRELOAD": str(library), "ETL_TEST_CLOCK_OFFSET": str(SKEW)}


def instance_file(home: Path) -> Path:
    """The shipped dagster.celery.yaml, with run monitoring's waits cut for a test."""
    doc = yaml.safe_load((ROOT / "dagster_project" / "dagster.celery.yaml").read_text())
    doc["run_monitoring"].update(poll_interval_seconds=2, free_slots_after_run_end_seconds=2)
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(doc))
    return home


def pipeline_doc(url: str, schema: str | None, sandbox_url: str) -> dict[str, Any]:
    destinations = {}
    for vendor in VENDORS:
        preset = VENDOR_DESTINATIONS[vendor]
        destinations[f"{vendor}_events"] = {
            "vendor": vendor,
            "base_url": sandbox_url + preset["path"],
            "credentials": preset["credentials"],
            "mapping": preset["mapping"],
            "batch_size": 50,
            "rate_limit": {"requests": 1000, "per_seconds": 1},  # shared: on several hosts
            "max_in_flight": 1,
        }
    return {
        "start_date": FIRST.isoformat(),
        "source": {
            "url": url,
            "schema": schema,
            "table": "user_actions",
            "reader_process": False,
        },
        "state": {"schema": schema, "lease_seconds": 5},
        "late_rows": {"lookback_days": 0},
        "dagster": {"partitions_per_run": DAYS},  # a run a destination: three at once
        "destinations": destinations,
    }


def expected(pipeline: Path) -> dict[str, tuple[Counter[str], dict[str, str]]]:
    """Per destination: every payload it should receive once, and the partition of each."""
    config = load_pipeline(pipeline)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "expected.jsonl"
        run_backfill(
            config,
            first_day=FIRST,
            last_day=FIRST + timedelta(days=DAYS - 1),
            options=RunOptions(dry_run=out),
        )
        lines = [json.loads(line) for line in out.read_text().splitlines()]
    found: dict[str, tuple[Counter[str], dict[str, str]]] = {}
    for line in lines:
        counts, partition_of = found.setdefault(line["destination"], (Counter(), {}))
        payload = canonical(line["payload"])
        counts[payload] += 1
        partition_of[payload] = line["partition"]
    return found


def start_host(
    name: str, tmp: Path, env: dict[str, str], pipeline: Path, network: list[str]
) -> subprocess.Popen:
    """`etl worker` as host ``name``: its own host name, network (``network``: the command
    prefix that runs in its namespace), directories and DAGSTER_HOME."""
    here = tmp / name
    (here / "tmp").mkdir(parents=True)
    instance_file(here / "home")
    own_pipeline = shutil.copy(pipeline, here / "pipeline.yaml")  # the same file, as deployed
    host_env = {**env, "DAGSTER_HOME": str(here / "home"), "TMPDIR": str(here / "tmp")}
    command = [*network, "unshare", "--uts", "--fork", "--"]
    command += ["sh", "-c", 'hostname "$0" && exec "$@"', name]
    command += [sys.executable, "-m", "etl.app", "worker", "-c", str(own_pipeline)]
    return start_program(here / "worker.log", host_env, command, cwd=here)


def wait_until(what: str, check, timeout: float = DEADLINE, logs: list[Path] = (), story=None):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p}\n{p.read_text()[-2500:]}" for p in logs if p.exists())
            if story is not None:
                tails += "\n--- the killed run\n" + story()
            raise AssertionError(f"{what}: not within {timeout} s\n{tails}")
        time.sleep(0.2)


def test_a_backfill_on_two_worker_hosts_survives_a_killed_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_postgres()
    require_broker()
    require_namespaces()
    require_network_namespaces()
    offset = wall_clock_offset(tmp_path)
    network = HostNetwork()
    try:
        run_on_two_hosts(tmp_path, monkeypatch, network, offset)
    finally:
        network.close()


def run_on_two_hosts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, network: HostNetwork, offset: Path
) -> None:
    # every service at the bridge's address: the hosts' own 127.0.0.1 is their own
    sandbox = start_sandbox(host=network.address, time_scale=1e6)
    relay = Relay(BROKER, listen=network.address)  # the broker as every host sees it
    for vendor in VENDORS:
        sandbox.sandbox.set_faults(vendor, latency_ms=100)  # a run lasts seconds: killed mid-run
    procs: list[subprocess.Popen] = []
    with (
        warehouse_of("postgresql", tmp_path) as warehouse,
        scratch_database(POSTGRES_URL, "etl_hosts") as dagster_pg,
        scratch_queue(BROKER, "etl_test") as queue,
    ):
        warehouse.fill(2_000, days=DAYS, end=RECENT_END)
        databases = [Relay(url, listen=network.address) for url in (warehouse.url, dagster_pg)]
        pipeline = tmp_path / "pipeline.yaml"
        doc = pipeline_doc(databases[0].url, warehouse.schema, sandbox.url)
        pipeline.write_text(yaml.safe_dump(doc, sort_keys=False))
        env = {
            **os.environ,
            **SANDBOX_CREDENTIALS,
            "DAGSTER_PG_URL": databases[1].url,
            "ETL_CELERY_BROKER": relay.url,
            "ETL_CELERY_QUEUE": queue,
            "ETL_PIPELINE": str(pipeline),
        }
        main = tmp_path / "main"
        home = instance_file(main / "home")
        monkeypatch.setenv("DAGSTER_PG_URL", dagster_pg)  # its tables, before any host starts
        create_storage(home)
        port = free_port()
        logs = [main / "daemon.log", tmp_path / "etl-w1" / "worker.log"]
        logs.append(tmp_path / "etl-w2" / "worker.log")
        try:
            main_env = {**env, "DAGSTER_HOME": str(home)}
            target = ["-m", "dagster_project.definitions"]
            procs.append(
                start_program(main / "webserver.log", main_env, ["dagster-webserver", *target,
                              "-h", "127.0.0.1", "-p", str(port)], cwd=ROOT)
            )  # fmt: skip
            workers = {
                "etl-w1": start_host("etl-w1", tmp_path, env, pipeline, network.add_host()),
                "etl-w2": start_host(
                    "etl-w2", tmp_path, skewed(env, offset), pipeline, network.add_host()
                ),
            }
            procs.extend(workers.values())
            ui = Ui(f"http://127.0.0.1:{port}", sandbox, pipeline)
            wait_for_webserver(ui.url, procs[0], main / "webserver.log")
            days = [(FIRST + timedelta(days=i)).isoformat() for i in range(DAYS)]
            backfills = []
            for vendor in VENDORS:  # a backfill each: their runs hold different pools
                params = {
                    "partitionNames": days,
                    "assetSelection": [{"path": [f"{vendor}_events"]}],
                }
                launched = ui.graphql(LAUNCH, params=params)["launchPartitionBackfill"]
                assert launched["__typename"] == "LaunchBackfillSuccess", launched
                backfills.append(launched["backfillId"])
            # the daemon after the backfills: its first tick takes them (then every 30 s)
            procs.append(
                start_program(
                    main / "daemon.log", main_env, ["dagster-daemon", "run", *target], ROOT
                )
            )

            with dg.DagsterInstance.from_config(str(home)) as instance:

                def runs() -> list[dg.DagsterRun]:
                    return [
                        run
                        for backfill in backfills
                        for run in instance.get_runs(
                            dg.RunsFilter(tags={"dagster/backfill": backfill})
                        )
                    ]

                def sending_on_w1() -> dg.DagsterRun | None:
                    for run in runs():
                        keys = sorted(run.asset_selection or [], key=str)
                        vendor = keys[0].path[-1].removesuffix("_events") if keys else ""
                        on_w1 = run.tags.get(WORKER_TAG) == "etl-w1"
                        started = run.status == dg.DagsterRunStatus.STARTED
                        if on_w1 and started and sandbox.sandbox.open.get(vendor):
                            return run  # its requests are out
                    return None

                victim = wait_until("a run sending from etl-w1", sending_on_w1, logs=logs)
                os.killpg(workers["etl-w1"].pid, signal.SIGKILL)  # the host goes down
                workers["etl-w1"].wait(timeout=10)
                relay.down()  # and the broker restarts meanwhile: every connection cut
                time.sleep(OUTAGE)
                relay.up()
                assert relay.dropped > 0

                def settled() -> list[dg.DagsterRun] | None:
                    found = runs()
                    busy = [r for r in found if not r.is_finished]
                    done = {r.tags.get("dagster/partition_range_start") for r in found}
                    return None if busy or not done else found

                def all_sent() -> bool:
                    state = existing_store(load_pipeline(pipeline))
                    if state is None:
                        return False
                    try:
                        for name in (f"{v}_events" for v in VENDORS):
                            cps = state.checkpoints_of(name)
                            if len(cps) < DAYS or {cp.status for cp in cps} != {"complete"}:
                                return False
                        return True
                    finally:
                        state.engine.dispose()

                def story() -> str:
                    records = instance.all_logs(victim.run_id)
                    return "\n".join(r.message or str(r.dagster_event) for r in records)[-4000:]

                wait_until("every partition sent", all_sent, logs=logs, story=story)
                final = wait_until("every run ended", settled, logs=logs)
                failed = instance.get_run_by_id(victim.run_id)
                assert failed is not None and failed.status == dg.DagsterRunStatus.FAILURE
                retries = [r for r in final if r.tags.get("dagster/parent_run_id") == victim.run_id]
                assert [r.status for r in retries] == [dg.DagsterRunStatus.SUCCESS], final
                hosts = {r.tags.get(WORKER_TAG) for r in final}
                assert {"etl-w1", "etl-w2"} <= hosts, hosts
                assert all(TASK_ID_TAG in r.tags for r in final)

                def slots_free() -> bool:
                    storage = instance.event_log_storage
                    keys = storage.get_concurrency_keys()
                    return all(storage.get_concurrency_info(k).active_slot_count == 0 for k in keys)

                wait_until("every pool slot given back", slots_free, timeout=60, logs=logs)
            assert_delivered_per_partition(pipeline, sandbox)
        finally:
            for proc in procs:
                stop_process(proc)
            sandbox.stop()
            for each in (relay, *databases):
                each.close()


def assert_delivered_per_partition(pipeline: Path, sandbox: Any) -> None:
    """Per destination and partition: nothing missing, every checkpoint complete and balanced,
    extra copies within the partition's in-doubt count (none at Fuul); no lease held."""
    store = existing_store(load_pipeline(pipeline))
    assert store is not None
    try:
        for destination, (wanted, partition_of) in expected(pipeline).items():
            vendor = destination.removesuffix("_events")
            stored = Counter(canonical(e) for e in sandbox.sandbox.records[vendor])
            missing = wanted - stored
            assert not missing, f"{destination}: {sum(missing.values())} events never arrived"
            extra: Counter[str] = Counter()
            for payload, copies in (stored - wanted).items():
                assert payload in partition_of, f"{destination}: stored, no row makes it"
                extra[partition_of[payload]] += copies
            cps = store.checkpoints_of(destination)
            days = {(FIRST + timedelta(days=i)).isoformat() for i in range(DAYS)}
            assert days <= {cp.partition for cp in cps}  # and the undated rows' partition
            assert {cp.status for cp in cps} == {"complete"}
            assert all(cp.balanced for cp in cps)
            for cp in cps:
                assert extra[cp.partition] <= cp.in_doubt, (destination, cp.partition)
                if vendor == "fuul":
                    assert extra[cp.partition] == 0, cp.partition
        for destination in load_pipeline(
            pipeline
        ).destinations:  # by the database's clock; a row of a
            # run killed between closing a day and giving its lease back stays, expired
            assert not store.leases.held_by_others(destination), destination
    finally:
        store.close()
