"""The run launcher of this project's instance: Dagster's default one, and a health check.

Run monitoring can tell that a run's worker died (killed by SIGKILL, the machine's OOM killer)
only if the launcher answers ``check_run_worker_health``; the default launcher does not, so such
a run stays STARTED forever and keeps its pool slot. Run workers here are processes of this
host: each logs "Started process for run (pid: N)", and the run is healthy while that process
lives. ``dagster.yaml`` names this class; run monitoring then marks the dead run failed and its
slot is freed ``free_slots_after_run_end_seconds`` later.
"""

from __future__ import annotations

import os

import dagster as dg
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus
from dagster._core.launcher.default_run_launcher import DefaultRunLauncher


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher whose run workers' health run monitoring can check (same host)."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        pid = self._worker_pid(run)
        if pid is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "the run worker has not started")
        if _alive(pid):
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker pid {pid}")
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"the run worker (pid {pid}) is gone: it was killed or crashed"
        )

    def _worker_pid(self, run: dg.DagsterRun) -> int | None:
        records = self._instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT
        ).records
        for record in records:
            event = record.event_log_entry.dagster_event
            data = event.engine_event_data if event is not None else None
            pid = data.metadata.get("pid") if data is not None else None
            if pid is not None:
                return int(str(pid.value))
        return None
