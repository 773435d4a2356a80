"""The several-hosts deployment's decisions, without a broker: the health check's verdicts, a
worker's refusal of a run launched with other code, the shared budget's default, what `etl
worker` refuses to start with. The real broker, workers and kill: tests/dagster/test_hosts.py."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from dagster_project.hosts import (
    DEPLOYMENT_TAG,
    TASK_ID_TAG,
    WORKER_TAG,
    CeleryHostsRunLauncher,
    refused,
    stop_when_terminated,
)
from etl.destination import resolve_destination
from etl.errors import ConfigError
from etl.loader import load_pipeline

RUN = dg.DagsterRun(job_name="j", run_id="r1", tags={TASK_ID_TAG: "t1", WORKER_TAG: "etl-w1"})


class Inspect:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def active(self) -> Any:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.fixture
def launcher(monkeypatch: pytest.MonkeyPatch) -> tuple[CeleryHostsRunLauncher, list[Any]]:
    found = CeleryHostsRunLauncher(broker="memory://", queue="q")
    answers: list[Any] = []
    monkeypatch.setattr(found.app.control, "inspect", lambda timeout: Inspect(answers.pop(0)))
    return found, answers


def test_a_run_no_worker_executes_fails_at_the_second_check(launcher):
    found, answers = launcher
    answers += [{"etl@etl-w2": []}, {"etl@etl-w2": []}]
    first = found.check_run_worker_health(RUN)
    assert first.status == dg._core.launcher.WorkerStatus.RUNNING  # one miss is not a verdict
    second = found.check_run_worker_health(RUN)
    assert second.status == dg._core.launcher.WorkerStatus.FAILED
    assert "etl-w1 was killed or its host went down" in second.msg


def test_a_worker_that_answers_resets_the_misses(launcher):
    found, answers = launcher
    answers += [{}, {"etl@etl-w1": [{"id": "t1"}]}, {}]
    found.check_run_worker_health(RUN)
    assert "executed by etl@etl-w1" in found.check_run_worker_health(RUN).msg
    assert found.check_run_worker_health(RUN).status == dg._core.launcher.WorkerStatus.RUNNING


def test_an_unreachable_broker_is_not_a_dead_worker(launcher):
    found, answers = launcher
    answers += [ConnectionError("refused")] * 3
    for _ in range(3):
        result = found.check_run_worker_health(RUN)
        assert result.status == dg._core.launcher.WorkerStatus.RUNNING
    assert "memory://" in result.msg and "does not answer" in result.msg


def test_a_worker_refuses_a_run_launched_with_other_code_or_file():
    run = dg.DagsterRun(job_name="j", run_id="r2", tags={DEPLOYMENT_TAG: "aaaaaaaaaaaa"})
    assert refused(run, "aaaaaaaaaaaa", "etl@w1") is None
    why = refused(run, "bbbbbbbbbbbb", "etl@w1")
    assert why is not None and "etl@w1" in why and "$ETL_PIPELINE" in why
    assert refused(RUN, "bbbbbbbbbbbb", "etl@w1") is None  # launched by an earlier version


def pipeline(tmp_path: Path, state_url: str, **rate: Any) -> Path:
    doc = {
        "start_date": "2024-01-01",
        "source": {"url": "postgresql+psycopg://u@db.internal/w", "table": "user_actions"},
        "state": {"url": state_url},
        "destinations": {
            "rewards": {
                "vendor": "fuul",
                "credentials": {"api_key": "${FUUL_API_KEY}"},
                "rate_limit": {"requests": 10, "per_seconds": 60, **rate},
                "mapping": {
                    "event_name": {"column": "action"},
                    "user": {"column": "wallet", "type": "evm_address"},
                },
            }
        },
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_on_several_hosts_a_rate_limit_is_a_shared_budget(tmp_path):
    config = load_pipeline(pipeline(tmp_path, "postgresql+psycopg://u@db.internal/s"))
    assert not resolve_destination(config, "rewards").rate.shared
    assert resolve_destination(config, "rewards", several_hosts=True).rate.shared
    refused_config = load_pipeline(pipeline(tmp_path, "postgresql://u@h/s", shared=False))
    with pytest.raises(ConfigError, match=r"destinations\.rewards\.rate_limit\.shared: false"):
        resolve_destination(refused_config, "rewards", several_hosts=True)


def test_a_run_terminated_from_the_ui_stops_on_its_worker():
    """On a worker no signal reaches the run: its status turning CANCELING sets its stop."""
    with dg.DagsterInstance.ephemeral() as instance:
        run = dg.DagsterRun(job_name="j", run_id="r3", status=dg.DagsterRunStatus.STARTED)
        instance.run_storage.add_run(run)
        stop = threading.Event()
        with stop_when_terminated(instance, "r3", stop, watch=True, every=0.01):
            assert not stop.wait(0.1)  # started: it goes on
            instance.report_run_canceling(run)
            assert stop.wait(5)
        quiet = threading.Event()
        with stop_when_terminated(instance, "r3", quiet, watch=False, every=0.01):
            assert not quiet.wait(0.1)  # one host: the signal stops it, nothing to watch
