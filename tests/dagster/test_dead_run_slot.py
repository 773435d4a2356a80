"""A run whose worker is killed with SIGKILL gives its pool slot back: run monitoring, with this
project's run launcher, marks it failed, and a relaunch of the same destination starts within
two minutes (the daemon runs, as under `dagster dev`)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import timedelta

import dagster as dg
import pytest

from dagster_project.launcher import LocalRunLauncher
from tests.dagster.conftest import FIRST
from tests.dagster.test_ui_end_to_end import LAUNCH, RUNS, Ui, dagster_dev

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slow_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ui, dg.DagsterInstance]]:
    tmp = tmp_path_factory.mktemp("slot")
    with (
        # run monitoring's waits cut, as an operator may: the shipped 15 s each are tested
        # by the same code path
        dagster_dev(
            tmp,
            latency_ms=30_000,
            monitoring={"poll_interval_seconds": 2, "free_slots_after_run_end_seconds": 2},
        ) as (ui, home),
        dg.DagsterInstance.from_config(str(home)) as instance,
    ):
        yield ui, instance


def launch(ui: Ui, day: str) -> str:
    params = {"partitionNames": [day], "assetSelection": [{"path": ["fuul_rewards"]}]}
    launched = ui.graphql(LAUNCH, params=params)["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return str(launched["backfillId"])


def run_of(ui: Ui, backfill: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = ui.graphql(RUNS, id=backfill)["runsOrError"]["results"]
        if runs and runs[0]["status"] in ("STARTED", "SUCCESS", "FAILURE"):
            return runs[0]
        time.sleep(1)
    raise AssertionError(f"no run of backfill {backfill} started within {timeout} s")


def test_a_killed_run_frees_its_slot(slow_ui):
    ui, instance = slow_ui
    day = (FIRST + timedelta(days=1)).isoformat()
    first = run_of(ui, launch(ui, day), timeout=120)
    run = instance.get_run_by_id(first["runId"])
    assert run is not None
    launcher = LocalRunLauncher()
    launcher.register_instance(instance)
    deadline = time.monotonic() + 60
    while (pid := launcher._worker_pid(run)) is None:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    while not ui.sandbox.sandbox.open["fuul"]:  # its first request is out, the answer late
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    second = run_of(ui, launch(ui, day), timeout=120)
    assert time.monotonic() - started < 120
    assert second["status"] in ("STARTED", "SUCCESS")
    dead = instance.get_run_by_id(first["runId"])
    assert dead is not None and dead.status == dg.DagsterRunStatus.FAILURE
