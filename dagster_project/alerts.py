"""Runs that failed or were cancelled: said in the sensor's log at ERROR and, when the pipeline's
webhook variable holds a URL, posted there once per run as Slack-compatible JSON."""

from __future__ import annotations

import os
from typing import Any

import dagster as dg
import requests

from dagster_project.names import Names
from etl.config import PipelineConfig
from etl.state import existing_store

TIMEOUT_SECONDS = 10
JOB_NAME = "send_daily"  # dagster_project.factory.JOB (imported by the factory from here)


def destinations_of(config: PipelineConfig, run: dg.DagsterRun, names: Names) -> list[str]:
    """The destinations of this pipeline that a run was asked to send (all of them for a run
    of its job without a selection)."""
    if not run.asset_selection:
        return sorted(config.destinations) if run.job_name == names.of(JOB_NAME) else []
    found = {names.destination_of(key) for key in run.asset_selection}
    return sorted(n for n in found if n in config.destinations)


def alert(
    config: PipelineConfig,
    run: dg.DagsterRun,
    status: str,
    reason: str,
    destinations: list[str],
) -> dict[str, Any]:
    """What a failed or cancelled run left: its destinations, days, reason, and the dead
    letters and events in doubt of those days (from the state tables)."""
    tags = run.tags
    start = tags.get("dagster/asset_partition_range_start") or tags.get("dagster/partition")
    end = tags.get("dagster/asset_partition_range_end") or start
    dead = doubt = 0
    store = existing_store(config)
    if store is not None and start:
        try:
            for cp in store.checkpoints_of():
                if cp.destination in destinations and start <= cp.partition <= (end or start):
                    dead += cp.dead_letters
                    doubt += cp.in_doubt
        finally:
            store.close()
    span = f"{start}..{end}" if start and end != start else (start or "(no partition)")
    return {
        "text": (
            f"etl run {run.run_id[:8]} {status}: {', '.join(destinations)} {span}: {reason} "
            f"({dead:,} dead letters, {doubt:,} in doubt)"
        ),
        "run_id": run.run_id,
        "status": status,
        "destinations": destinations,
        "partitions": span,
        "reason": reason,
        "dead_letters": dead,
        "in_doubt": doubt,
    }


def post(url: str, message: dict[str, Any]) -> None:
    response = requests.post(url, json=message, timeout=TIMEOUT_SECONDS, allow_redirects=False)
    response.raise_for_status()


def report(
    context: dg.RunStatusSensorContext,
    config: PipelineConfig,
    names: Names,
    status: str,
    reason: str,
) -> None:
    destinations = destinations_of(config, context.dagster_run, names)
    if not destinations:  # a run of another pipeline's (or another component instance's)
        return
    message = alert(config, context.dagster_run, status, reason, destinations)
    context.log.error(message["text"])
    variable = config.dagster.alert_webhook_env
    url = os.environ.get(variable)
    if not url:
        return
    try:
        post(url, message)
    except requests.RequestException as exc:  # the URL is a secret: not in the log
        context.log.error(f"the webhook in ${variable} refused the alert: {type(exc).__name__}")


def failure_reason(context: dg.RunFailureSensorContext) -> str:
    """The first failed step's own message (the run's says only which steps failed)."""
    for event in context.get_step_failure_events():
        data = event.step_failure_data
        if data.error is not None:
            return data.error.message.strip().splitlines()[0]
    return context.failure_event.message or "unknown"


def alert_sensors(config: PipelineConfig, names: Names) -> list[dg.SensorDefinition]:
    variable = config.dagster.alert_webhook_env

    @dg.run_failure_sensor(
        name=names.of("report_failed_runs"),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Each failed run: its destinations, days, reason, dead letters and events in doubt, "
            f"at ERROR in this log and posted to the webhook in ${variable} when it is set."
        ),
    )
    def report_failed_runs(context: dg.RunFailureSensorContext) -> None:
        report(context, config, names, "failed", failure_reason(context))

    @dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.CANCELED,
        name=names.of("report_cancelled_runs"),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Each cancelled run (terminated from the UI): what it left, as for failed runs. Its "
            "days resume where they stopped when materialized again."
        ),
    )
    def report_cancelled_runs(context: dg.RunStatusSensorContext) -> None:
        report(context, config, names, "cancelled", "terminated before the end")

    return [report_failed_runs, report_cancelled_runs]
