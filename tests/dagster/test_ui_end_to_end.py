"""The Dagster webserver and daemon on loopback: a backfill of three partitions launched through
GraphQL as the UI does, its runs, the sandbox's record, and the asset page in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest
import requests
import yaml

from dagster_project.demo import prepare_home
from etl.app.bench_hosts import start_program, stop_process
from etl.loader import load_pipeline
from etl.sandbox import SANDBOX_CREDENTIALS, SandboxServer, start_sandbox
from etl.state import Checkpoint, existing_store
from tests.conftest import FAST, warehouse_of, write_pipeline
from tests.dagster.conftest import FIRST
from tests.integration.scenario import RECENT_END

pytestmark = pytest.mark.slow

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""
BACKFILL = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) { __typename ... on PartitionBackfill { status } }
}"""
RUNS = """
query Runs($id: String!) {
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Ui:
    def __init__(
        self,
        url: str,
        sandbox: SandboxServer,
        pipeline: Path,
        start_daemon: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        self.sandbox = sandbox
        self.pipeline = pipeline
        self._start_daemon = start_daemon
        self.backfills: list[str] = []  # launched, to be seen marked done by the daemon

    def graphql(self, query: str, **variables: object) -> dict:
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=30
        )
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body
        if query == LAUNCH and self._start_daemon is not None:
            self._start_daemon()  # once: after the first backfill
            self._start_daemon = None
        return body["data"]


def wait_for_webserver(url: str, proc: subprocess.Popen, log: Path) -> None:
    """Until the Dagster webserver at ``url`` answers (its process must not end first)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            if requests.get(f"{url}/server_info", timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the Dagster webserver did not start"
        time.sleep(0.5)


@contextmanager
def dagster_dev(
    tmp: Path, latency_ms: float = 0, monitoring: dict | None = None
) -> Iterator[tuple[Ui, Path]]:
    """Dagster's webserver, and its daemon once a backfill is launched (what `dagster dev`
    runs), on a pipeline of four days and the sandbox; the shipped instance file, its
    run_monitoring updated by ``monitoring``."""
    sandbox = start_sandbox(time_scale=1e6)
    sandbox.sandbox.set_faults("fuul", latency_ms=latency_ms)
    with warehouse_of("sqlite", tmp) as warehouse:
        warehouse.fill(800, days=4, end=RECENT_END)
        pipeline = write_pipeline(
            tmp / "pipeline.yaml", warehouse, sandbox.url, FIRST.isoformat(), FAST
        )
        home = prepare_home(tmp / "dagster_home")
        if monitoring:
            doc = yaml.safe_load((home / "dagster.yaml").read_text())
            doc["run_monitoring"].update(monitoring)
            (home / "dagster.yaml").write_text(yaml.safe_dump(doc))
        port = free_port()
        env = {
            **os.environ,
            **SANDBOX_CREDENTIALS,
            "DAGSTER_HOME": str(home),
            "ETL_PIPELINE": str(pipeline),
        }
        root = Path(__file__).parents[2]
        target = ["-m", "dagster_project.definitions"]
        web = start_program(tmp / "webserver.log", env, ["dagster-webserver", *target,
                            "-h", "127.0.0.1", "-p", str(port)], cwd=root)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        procs = [web]

        def start_daemon() -> None:
            """The daemon, after the first backfill was launched: its first tick takes it (the
            backfill daemon looks every 30 s), as `dagster dev` would run it."""
            daemon = ["dagster-daemon", "run", *target]
            procs.append(start_program(tmp / "daemon.log", env, daemon, cwd=root))

        try:
            wait_for_webserver(url, web, tmp / "webserver.log")
            yield Ui(url, sandbox, pipeline, start_daemon), home
        finally:
            for proc in procs:
                stop_process(proc)
            sandbox.stop()


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ui]:
    with dagster_dev(tmp_path_factory.mktemp("ui")) as (found, _):
        yield found


T = TypeVar("T")
ENDED = ("SUCCESS", "FAILURE", "CANCELED")  # a run's final statuses


def poll(fetch: Callable[[], T], done: Callable[[T], bool], every: float = 0.5) -> T:
    """``fetch()`` again every ``every`` seconds until ``done`` says so, or 240 s passed:
    the last value."""
    deadline = time.monotonic() + 240
    while not done(value := fetch()) and time.monotonic() < deadline:
        time.sleep(every)
    return value


def wait_for(ui: Ui, backfill: str) -> str | None:
    """The backfill's status once the daemon no longer works on it."""
    return poll(
        lambda: ui.graphql(BACKFILL, id=backfill)["partitionBackfillOrError"]["status"],
        lambda status: status not in ("REQUESTED", "CANCELING", "FAILING"),
        every=1,
    )


LOCATIONS = "{ workspaceOrError { ... on Workspace { locationEntries { name } } } }"
LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  }
}"""
RUN = "query Run($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"


def run_of_day(ui: Ui, asset: str, day: str) -> str:
    """One day of ``asset`` launched as a run of the send_daily job (as the partition page's
    Materialize button does; no backfill, so no wait for the backfill daemon's 30 s tick):
    its final status."""
    (location,) = ui.graphql(LOCATIONS)["workspaceOrError"]["locationEntries"]
    selector = {
        "repositoryLocationName": location["name"],
        "repositoryName": "__repository__",
        "jobName": "send_daily",
        "assetSelection": [{"path": [asset]}],
    }
    params = {
        "selector": selector,
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": day}]},
    }
    launched = ui.graphql(LAUNCH_RUN, params=params)["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    return poll(lambda: ui.graphql(RUN, id=run_id)["runOrError"]["status"], ENDED.__contains__)


def test_backfill_launched_through_graphql(ui: Ui):
    days = [(FIRST + timedelta(days=i)).isoformat() for i in range(3)]
    params = {
        "partitionNames": days,
        "assetSelection": [{"path": ["fuul_rewards"]}],
        "title": "e2e",
    }
    launched = ui.graphql(LAUNCH, params=params)["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill = launched["backfillId"]
    ui.backfills.append(backfill)  # marked COMPLETED at the daemon's next tick: the last test
    runs = poll(
        lambda: ui.graphql(RUNS, id=backfill)["runsOrError"]["results"],
        lambda found: bool(found) and all(r["status"] in ENDED for r in found),
    )
    assert runs and {r["status"] for r in runs} == {"SUCCESS"}
    assert len(runs) == 1  # BackfillPolicy.multi_run(10): the three days in one run
    stored = ui.sandbox.sandbox.records["fuul"]
    assert stored and len({e["dedup_id"] for e in stored}) == len(stored)  # none twice
    cps = checkpoints(ui, "fuul_rewards")
    for day in days:
        assert cps[day].status == "complete" and cps[day].balanced, cps[day]
    assert len(stored) == sum(cp.delivered for cp in cps.values())  # each event stored once


def checkpoints(ui: Ui, destination: str) -> dict[str, Checkpoint]:
    """The destination's checkpoints in the state tables, by partition."""
    store = existing_store(load_pipeline(ui.pipeline))
    assert store is not None
    try:
        return {cp.partition: cp for cp in store.checkpoints_of(destination)}
    finally:
        store.close()


def chromium() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed here (apt-get install chromium)")
    return browser


def page_text(browser: str, url: str, profile: Path) -> str:
    """The page's text as headless Chromium renders it, its elements' texts joined by '|'."""
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--dump-dom",
    ]  # fmt: skip
    dom = subprocess.run([browser, *flags, url], capture_output=True, text=True, timeout=120).stdout
    dom = re.sub(r"<(style|script)\b.*?</\1>", "", dom, flags=re.S)
    return re.sub(r"\|+", "|", re.sub(r"<[^>]+>", "|", dom))


def test_partitions_in_headless_chromium(ui: Ui, tmp_path: Path):
    """Each day's page shows that day's numbers from the state tables; a day whose run failed
    is shown failed, not materialized."""
    browser = chromium()
    days = [(FIRST + timedelta(days=i)).isoformat() for i in range(4)]
    ui.sandbox.sandbox.set_faults("fuul", answer_status=404, answer_body="<html>")
    assert run_of_day(ui, "fuul_rewards", days[3]) == "FAILURE"
    ui.sandbox.sandbox.set_faults("fuul", answer_status=0)
    cps = checkpoints(ui, "fuul_rewards")
    for day in days[:3]:
        page = page_text(
            browser, f"{ui.url}/assets/fuul_rewards?view=partitions&partition={day}", tmp_path
        )
        cp = cps[day]
        for name in ("rows_read", "delivered", "dead_letters", "filtered", "in_doubt"):
            assert f"|{name}|{getattr(cp, name):,}|" in page, (day, name, page[:3000])
    page = page_text(
        browser, f"{ui.url}/assets/fuul_rewards?view=partitions&partition={days[3]}", tmp_path
    )
    assert "Failed (1)" in page and "Materialized (3)" in page, page[:3000]
    assert "failed, and did not materialize this asset" in page
    catalog = page_text(browser, f"{ui.url}/assets", tmp_path)
    assert "fuul_rewards" in catalog and "user_actions" in catalog


def test_the_backfill_is_marked_completed(ui: Ui):
    """Last in this module: the backfill daemon marks a backfill done at its next tick, 30 s
    after the one that launched its runs; the tests between did their work meanwhile."""
    if not ui.backfills:
        pytest.skip("test_backfill_launched_through_graphql did not run")
    for backfill in ui.backfills:
        assert wait_for(ui, backfill) in ("COMPLETED", "COMPLETED_SUCCESS")
