"""Definitions built from a pipeline file: one daily-partitioned asset per destination (see
:mod:`dagster_project.assets`), their per-day checks and freshness, the daily job and schedule,
and the sensors that report failed and cancelled runs."""

from __future__ import annotations

import warnings

import dagster as dg

from dagster_project.alerts import JOB_NAME, alert_sensors
from dagster_project.assets import GROUP, SOURCE_KEY, destination_asset, source_asset
from dagster_project.checks import freshness_checks
from dagster_project.names import Names
from dagster_project.resources import build_resources
from etl.config import PipelineConfig

JOB = JOB_NAME
OBSERVE_JOB = "observe_user_actions"


def build_definitions(
    config: PipelineConfig, warehouse_url_env: str | None = None, names: Names | None = None
) -> dg.Definitions:
    """The definitions of a pipeline (see the module docstring); ``names``: the instance's
    (a component instance's) when several pipelines share a project."""
    with warnings.catch_warnings():
        # BackfillPolicy, observable source assets and partitioned checks are marked beta or
        # preview; this project opts in.
        warnings.simplefilter("ignore", dg.BetaWarning)
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return _build_definitions(config, warehouse_url_env, names or Names())


def _build_definitions(
    config: PipelineConfig, warehouse_url_env: str | None, names: Names
) -> dg.Definitions:
    settings = config.dagster
    partitions = dg.DailyPartitionsDefinition(
        start_date=config.start_date.isoformat(), timezone="UTC"
    )
    assets = [destination_asset(name, config, partitions, names) for name in config.destinations]
    checks, freshness_sensors = freshness_checks(
        assets, settings.fresh_by_hour, names.of("freshness_of_yesterday")
    )
    job = dg.define_asset_job(
        names.of(JOB),
        # the freshness checks run on their sensor's ticks, not after each send
        selection=dg.AssetSelection.groups(names.of(GROUP)) - dg.AssetSelection.checks(*checks),
        description=(
            "Sends the selected days of every destination; a day already sent sends only rows "
            "its delivery log does not hold (late rows, or what a failed run left)."
        ),
        tags=settings.tags or None,
    )
    observe = dg.define_asset_job(
        names.of(OBSERVE_JOB),
        selection=dg.AssetSelection.assets(names.key(SOURCE_KEY)),
        description="Counts the warehouse's actions and the rows no partition holds.",
    )
    schedule = dg.build_schedule_from_partitioned_job(
        job,
        name=names.of("send_yesterday_daily"),
        description=(
            f"Every day at {settings.schedule_hour:02d}:00 UTC, sends yesterday's partition of "
            "every destination (and re-checks the lookback days for late rows)."
        ),
        hour_of_day=settings.schedule_hour,
        default_status=(
            dg.DefaultScheduleStatus.RUNNING
            if settings.schedule_running
            else dg.DefaultScheduleStatus.STOPPED
        ),
        tags=settings.tags or None,
    )
    return dg.Definitions(
        assets=[source_asset(config, names), *assets],
        asset_checks=checks,
        jobs=[job, observe],
        schedules=[schedule],
        sensors=[*alert_sensors(config, names), *freshness_sensors],
        resources=build_resources(config, warehouse_url_env, names),
    )
