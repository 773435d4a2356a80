"""Runs on several hosts: each run is a Celery task that a worker on any host takes from the
broker. Celery as ``dagster-celery`` (a dependency, at Dagster's version) uses it, but not its
``CeleryRunLauncher``: its health check answers UNKNOWN for a run waiting in the queue, which run
monitoring takes for a dead worker, and it sees a started run only through a shared result
backend; and its workers' prefork children cannot start Dagster's step processes.

- :class:`CeleryHostsRunLauncher` (named by ``dagster.celery.yaml``) sends a launched run to the
  broker's queue; a worker with a free slot takes it and executes the whole run there.
- Its health check asks every worker, through the broker, which tasks it is executing: a run that
  no worker has been executing at ``misses`` checks in a row (its worker was killed, or its host
  went down) is reported FAILED, so that run monitoring marks it failed and its pool slot is freed;
  an unreachable broker is never taken for a dead worker.
- The workers' app (``celery -A dagster_project.hosts worker``, started by ``etl worker``) takes one
  run at a time and acknowledges it after it ended: a worker that dies before starting a run hands
  it to another worker; a run that had started is never executed twice (the task checks the run's
  status first, and run retries give the days a new run).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import requests
import sqlalchemy as sa
from celery import Celery
from dagster._core.launcher import (
    CheckRunHealthResult,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
)
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, ConfigurableClassData, pack_value, unpack_value
from kombu import Connection, Exchange, Queue
from sqlalchemy.engine import make_url

import dagster_project
import etl
from etl.config import PipelineConfig
from etl.database import make_engine
from etl.destination import resolve_destination
from etl.errors import ConfigError

PIPELINE_ENV = "ETL_PIPELINE"
BROKER_ENV = "ETL_CELERY_BROKER"
QUEUE_ENV = "ETL_CELERY_QUEUE"
DEFAULT_BROKER = "pyamqp://guest:guest@127.0.0.1:5672//"
DEFAULT_QUEUE = "etl_runs"
TASK = "etl_execute_run"
TASK_ID_TAG = "etl/celery_task_id"
WORKER_TAG = "etl/worker"
DEPLOYMENT_TAG = "etl/deployment"  # the launcher's code and pipeline file, as a digest
INSPECT_SECONDS = 2.0
TERMINATE_POLL_SECONDS = 2.0

log = logging.getLogger(__name__)


def shown_url(url: str) -> str:
    """The broker's URL as it may be shown: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy-shaped URL: keep scheme and host only
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"


def delete_queue(broker: str, queue: str) -> None:
    """Delete a deployment's queue from the broker, if the broker is reachable (a scratch
    deployment's, at its end)."""
    with suppress(Exception), Connection(broker, connect_timeout=5) as conn:
        conn.default_channel.queue_delete(queue)


def make_celery(broker: str, queue: str) -> Celery:
    """The app of the launcher and of the workers: one queue, one run per worker slot."""
    app = Celery("etl_backfill", broker=broker, set_as_current=False)
    app.conf.update(
        task_ignore_result=True,  # the run's outcome is in Dagster's storage
        task_acks_late=True,  # a worker that dies before a run started hands it on
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,  # a busy worker holds no run another could start
        task_default_queue=queue,
        task_queues=[Queue(queue, Exchange(queue, type="direct"), routing_key=queue)],
        task_routes={TASK: {"queue": queue, "routing_key": queue}},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # the broker lost (a restart): a run being executed goes on; its message, redelivered
        # since it was not acknowledged, is dropped as a run already started
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    app.task(name=TASK, bind=True)(_execute_run)
    return app


def _execute_run(task: Any, packed: Any) -> int:
    """On a worker: execute the run, unless it started elsewhere or ended already."""
    from dagster._cli.api import _execute_run_command_body  # a worker's only: 0.1 s to import

    args = unpack_value(packed, as_type=ExecuteRunArgs)
    with dg.DagsterInstance.get() as instance:
        run = instance.get_run_by_id(args.run_id)
        if run is None:
            log.error("run %s is not in this worker's Dagster instance (DAGSTER_HOME)", args.run_id)
            return 1
        if run.status != dg.DagsterRunStatus.STARTING:
            # delivered again after its worker, or the worker's connection to the broker, was
            # lost: the run goes on there, or run monitoring and run retries own it now
            instance.report_engine_event(
                f"Worker {task.request.hostname} did not execute it again: the run is "
                f"{run.status.value} (its message came again: the worker that took it, or that "
                "worker's connection to the broker, was lost)",
                run,
                cls=CeleryHostsRunLauncher,
            )
            return 0
        refusal = refused(run, deployment_digest(), task.request.hostname)
        if refusal is not None:
            instance.report_run_failed(run, refusal)
            return 1
        instance.add_run_tags(run.run_id, {WORKER_TAG: socket.gethostname()})
        return _execute_run_command_body(
            instance=instance,
            run_id=args.run_id,
            write_stream_fn=lambda _event: None,
            set_exit_code_on_failure=True,
        )


@contextmanager
def stop_when_terminated(
    instance: dg.DagsterInstance,
    run_id: str,
    stop: threading.Event,
    watch: bool,
    every: float = TERMINATE_POLL_SECONDS,
) -> Iterator[None]:
    """While the block runs (if ``watch``), set ``stop`` once the run is being terminated.

    On a worker no signal reaches a run that the UI terminates (it is a thread of the worker,
    its step a process the worker's launcher does not know): the run's status, CANCELING,
    is read every ``every`` seconds instead, and the run stops gracefully (its answers
    committed)."""
    if not watch:
        yield
        return
    done = threading.Event()

    def watch_status() -> None:
        while not done.wait(every):
            with suppress(Exception):  # Dagster's storage: the next look tries again
                run = instance.get_run_by_id(run_id)
                if run is not None and run.status in _TERMINATING:
                    stop.set()
                    return

    thread = threading.Thread(target=watch_status, name="etl-terminate-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=every + 1)


_TERMINATING = (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED)


def refused(run: dg.DagsterRun, here: str, worker: str) -> str | None:
    """Why this worker must not execute ``run`` (launched with other code or another pipeline
    file than this worker's digest ``here``), or None."""
    launched_with = run.tags.get(DEPLOYMENT_TAG)
    if launched_with is None or launched_with == here:
        return None
    return (
        f"Refused by worker {worker}: its code or pipeline file (${PIPELINE_ENV}) differs from "
        f"the launcher's (digest {here} here, {launched_with} there). Start every worker from "
        "the same code and pipeline file."
    )


class CeleryHostsRunLauncher(RunLauncher, ConfigurableClass):
    """Sends each run to the workers through the broker (see the module docstring)."""

    def __init__(
        self,
        broker: str | None = None,
        queue: str | None = None,
        misses: int = 2,
        inst_data: ConfigurableClassData | None = None,
    ) -> None:
        self._inst_data = inst_data
        self.broker = broker or os.environ.get(BROKER_ENV) or DEFAULT_BROKER
        self.queue = queue or os.environ.get(QUEUE_ENV) or DEFAULT_QUEUE
        self.misses = misses
        self._missed: dict[str, int] = {}
        self.app = make_celery(self.broker, self.queue)
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            "broker": dg.Field(
                dg.Noneable(dg.StringSource),
                is_required=False,
                description=f"The broker's URL (default ${BROKER_ENV}, else {DEFAULT_BROKER}).",
            ),
            "queue": dg.Field(
                dg.Noneable(dg.StringSource),
                is_required=False,
                description=f"The queue the workers take runs from (default {DEFAULT_QUEUE}).",
            ),
            "misses": dg.Field(
                int,
                is_required=False,
                default_value=2,
                description="Health checks in a row at which no worker executes a started run "
                "before it is reported failed.",
            ),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> CeleryHostsRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        args = ExecuteRunArgs(
            job_origin=run.job_code_origin,
            run_id=run.run_id,
            instance_ref=self._instance.get_ref(),
            set_exit_code_on_failure=True,
        )
        # tagged before it is sent: a worker may take it at once
        self._instance.add_run_tags(run.run_id, {DEPLOYMENT_TAG: deployment_digest()})
        result = self.app.send_task(TASK, args=(pack_value(args),), queue=self.queue)
        self._instance.add_run_tags(run.run_id, {TASK_ID_TAG: result.id})
        self._instance.report_engine_event(
            f"Sent to the workers through {shown_url(self.broker)}, queue {self.queue}",
            run,
            cls=self.__class__,
        )

    def terminate(self, run_id: str) -> bool:
        """A run not taken yet is dropped from the queue; a started one sees its status turn
        CANCELING and stops gracefully (:func:`stop_when_terminated`)."""
        run = self._instance.get_run_by_id(run_id)
        task_id = run.tags.get(TASK_ID_TAG) if run is not None else None
        if task_id is None:
            return False
        self.app.control.revoke(task_id)
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        task_id = run.tags.get(TASK_ID_TAG)
        if task_id is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "not sent to a worker yet")
        try:
            replies = self.app.control.inspect(timeout=INSPECT_SECONDS).active() or {}
        except Exception as exc:  # the broker: not a verdict on the worker
            return CheckRunHealthResult(
                WorkerStatus.RUNNING,
                f"unknown: the broker at {shown_url(self.broker)} does not answer "
                f"({first_line(exc)})",
            )
        for worker, tasks in replies.items():
            if any(t.get("id") == task_id for t in tasks):
                self._missed.pop(run.run_id, None)
                return CheckRunHealthResult(WorkerStatus.RUNNING, f"executed by {worker}")
        missed = self._missed.get(run.run_id, 0) + 1
        self._missed[run.run_id] = missed
        where = run.tags.get(WORKER_TAG, "its worker")
        if missed < self.misses:
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, f"{where} did not answer ({missed} of {self.misses})"
            )
        self._missed.pop(run.run_id, None)
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"no worker is executing it ({len(replies)} answered, {missed} checks in a row): "
            f"{where} was killed or its host went down",
        )


@functools.cache
def deployment_digest() -> str:
    """What a run is executed with, as 12 hex digits: this code (the etl and dagster_project
    packages' sources) and the pipeline file $ETL_PIPELINE names, byte for byte."""
    digest = hashlib.sha256()
    for package in (etl, dagster_project):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root.parent).as_posix().encode())
            digest.update(path.read_bytes())
    pipeline = os.environ.get(PIPELINE_ENV)
    if pipeline:
        digest.update(Path(pipeline).read_bytes())
    return digest.hexdigest()[:12]


def create_storage(home: Path) -> None:
    """Create the tables of the instance in ``home`` (before any host starts: hosts starting
    at once on an empty database race to create them)."""
    with dg.DagsterInstance.from_config(str(home)):
        pass


@dataclass(frozen=True)
class RunTimes:
    status: str
    start: float | None
    end: float | None
    ended: bool


def backfill_runs(home: Path) -> list[RunTimes]:
    """The runs of the instance in ``home`` that backfills launched: status and times."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_run_records()
    return [
        RunTimes(r.dagster_run.status.value, r.start_time, r.end_time, r.dagster_run.is_finished)
        for r in records
        if "dagster/backfill" in r.dagster_run.tags
    ]


def worker_app() -> Celery:
    """The workers' app, from the same variables as the instance file's launcher."""
    broker = os.environ.get(BROKER_ENV) or DEFAULT_BROKER
    return make_celery(broker, os.environ.get(QUEUE_ENV) or DEFAULT_QUEUE)


app = worker_app()


def worker_problems(config: PipelineConfig) -> list[str]:
    """What stops this host from taking runs, a line each (empty: it may start)."""
    try:
        with dg.DagsterInstance.get() as instance:
            problems = _instance_problems(instance)
    except Exception as exc:  # DAGSTER_HOME unset, its file invalid, its storage unreachable
        return [f"the Dagster instance ($DAGSTER_HOME): {first_line(exc)}"]
    return problems or pipeline_problems(config)


def _instance_problems(instance: dg.DagsterInstance) -> list[str]:
    problems = []
    storage = type(instance.run_storage).__module__
    if not storage.startswith("dagster_postgres"):
        problems.append(
            f"$DAGSTER_HOME ({instance.root_directory}): the runs are stored by {storage}, "
            "which other hosts cannot see: use dagster_project/dagster.celery.yaml (PostgreSQL)"
        )
    if not isinstance(instance.run_launcher, CeleryHostsRunLauncher):
        problems.append(
            f"$DAGSTER_HOME ({instance.root_directory}): its run_launcher is not "
            "dagster_project.hosts.CeleryHostsRunLauncher: use dagster_project/dagster.celery.yaml"
        )
    return problems


def pipeline_problems(config: PipelineConfig) -> list[str]:
    problems = []
    for key, url in (("source.url", config.source.url), ("state.url", config.state_url)):
        parsed = make_url(url)
        if parsed.get_backend_name() in ("sqlite", "duckdb"):
            problems.append(
                f"{key}: {parsed.get_backend_name()} ({parsed.database}) is a file of one host: "
                "every worker must read one warehouse and keep its state in one PostgreSQL"
            )
    targets = {}
    for name in config.destination_names():
        try:
            targets[name] = resolve_destination(config, name, several_hosts=True)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        return problems
    engine = make_engine(config.state_url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        problems.append(
            f"the state database {shown_url(config.state_url)} (state.url, else source.url) is "
            f"unreachable: {first_line(exc)}"
        )
    finally:
        engine.dispose()
    app = worker_app()
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
    except Exception as exc:
        broker = app.conf.broker_url
        problems.append(
            f"the broker {shown_url(broker)} (${BROKER_ENV}) is unreachable: {first_line(exc)}"
        )
    for name, target in targets.items():
        try:  # no key is sent: any answer of the host will do
            requests.head(target.base_url, timeout=5, allow_redirects=False)
        except requests.RequestException as exc:
            problems.append(
                f"destinations.{name}.base_url {target.base_url} is unreachable: {first_line(exc)}"
            )
    return problems


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def start_worker(concurrency: int, name: str | None) -> None:
    """This host's worker, until it is stopped: ``concurrency`` runs at a time."""
    queue = os.environ.get(QUEUE_ENV) or DEFAULT_QUEUE
    worker_app().worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            "--pool=threads",  # a run's steps are processes of their own: no daemonic parent
            f"--hostname={name or 'etl'}@%h",
            f"--queues={queue}",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
        ]
    )
