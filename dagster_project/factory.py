"""Definitions built from a pipeline file: one daily-partitioned asset per destination.

The assets are thin: each calls :func:`etl.runner.run_backfill` for its partition range and
turns the report into metadata and check results.
"""

import warnings
from datetime import date, timedelta
from typing import Any

import dagster as dg

from dagster_project.resources import build_resources, credentials_key
from etl.config import PipelineConfig
from etl.reports import DestinationReport
from etl.runner import run_backfill
from etl.source import Source
from etl.state import Checkpoint, open_store

SOURCE_KEY = "user_actions"
GROUP = "destinations"


def _days(context: dg.AssetExecutionContext) -> tuple[date, date]:
    window = context.partition_time_window
    return window.start.date(), (window.end - timedelta(days=1)).date()


def _with_url(config: PipelineConfig, url: str) -> PipelineConfig:
    if url == config.source.url:
        return config
    return config.model_copy(update={"source": config.source.model_copy(update={"url": url})})


def _metadata(report: DestinationReport, checkpoints: list[Checkpoint]) -> dict[str, Any]:
    cursor = next((p.cursor for p in reversed(report.partitions) if p.cursor), None)
    samples = [s for p in report.partitions for s in p.samples][:3]
    return {
        "partitions": len(report.partitions),
        "rows_read": report.total("rows_read"),
        "delivered": report.total("delivered"),
        "dead_letters": report.total("dead_letters"),
        "filtered": report.total("filtered"),
        "in_doubt": report.total("in_doubt"),
        "events_per_second": dg.MetadataValue.float(round(report.events_per_second, 1)),
        "retries": report.total("retries"),
        "http_429s": report.total("throttled"),
        "checkpoint_cursor": dg.MetadataValue.text(cursor or "(none)"),
        "sample_payloads": dg.MetadataValue.json(samples),
        "partition_totals": dg.MetadataValue.json({c.partition: _totals(c) for c in checkpoints}),
    }


def _totals(cp: Checkpoint) -> dict[str, Any]:
    return {
        "status": cp.status,
        "read": cp.rows_read,
        "delivered": cp.delivered,
        "dead": cp.dead_letters,
        "filtered": cp.filtered,
        "in_doubt": cp.in_doubt,
    }


def accounting_check(name: str, checkpoints: list[Checkpoint], days: int) -> dg.AssetCheckResult:
    """Blocking: every partition of the run is complete (or skipped) and balanced."""
    bad = [
        f"{cp.partition}: {cp.status}, read {cp.rows_read} vs delivered {cp.delivered} + dead "
        f"{cp.dead_letters} + filtered {cp.filtered}" + (f" ({cp.error})" if cp.error else "")
        for cp in checkpoints
        if cp.status not in ("complete", "skipped") or not cp.balanced
    ]
    missing = days - len(checkpoints)
    if missing:
        bad.append(f"{missing} partitions of the range have no checkpoint")
    return dg.AssetCheckResult(
        check_name="accounting",
        asset_key=name,
        passed=not bad,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"partitions": len(checkpoints), "problems": dg.MetadataValue.json(bad[:20])},
        description="rows read = delivered + dead letters + filtered, for every partition",
    )


def dead_letter_check(
    name: str, checkpoints: list[Checkpoint], threshold: float
) -> dg.AssetCheckResult:
    """Warns when dead letters pass a share of the rows meant for the vendor."""
    dead = sum(cp.dead_letters for cp in checkpoints)
    meant = sum(cp.rows_read - cp.filtered for cp in checkpoints)
    rate = dead / meant if meant else 0.0
    return dg.AssetCheckResult(
        check_name="dead_letter_rate",
        asset_key=name,
        passed=rate <= threshold,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "rate": dg.MetadataValue.float(round(rate, 4)),
            "threshold": threshold,
            "dead_letters": dead,
        },
    )


def destination_asset(
    name: str, config: PipelineConfig, partitions: dg.DailyPartitionsDefinition
) -> dg.AssetsDefinition:
    dest = config.destinations[name]
    settings = config.dagster

    @dg.asset(
        name=name,
        group_name=GROUP,
        kinds={dest.vendor},
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.multi_run(
            max_partitions_per_run=settings.partitions_per_run
        ),
        pool=f"vendor_{name}",  # one run at a time per destination: one rate budget
        deps=[SOURCE_KEY],
        required_resource_keys={"warehouse", credentials_key(name)},
        check_specs=[
            dg.AssetCheckSpec("accounting", asset=name, blocking=True),
            dg.AssetCheckSpec("dead_letter_rate", asset=name),
        ],
        description=f"Custom events sent to {dest.vendor} ({name}), one partition per UTC day.",
    )
    def _asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:  # type: ignore[type-arg]
        first, last = _days(context)
        run_config = _with_url(config, context.resources.warehouse.url)
        secrets = getattr(context.resources, credentials_key(name)).as_dict()
        report = run_backfill(
            run_config,
            destinations=[name],
            first_day=first,
            last_day=last,
            credentials={name: secrets},
            log=context.log.info,
        )
        [dest_report] = report.destinations
        in_run = {d.isoformat() for d in _day_list(first, last)}
        dest_report.partitions = [p for p in dest_report.partitions if p.partition in in_run]
        store = open_store(run_config)
        try:
            span = {d.isoformat() for d in _day_list(first, last)}
            checkpoints = [cp for cp in store.checkpoints_of(name) if cp.partition in span]
        finally:
            store.close()
        if dest_report.error:
            raise dg.Failure(
                description=dest_report.error, metadata=_metadata(dest_report, checkpoints)
            )
        return dg.MaterializeResult(
            metadata=_metadata(dest_report, checkpoints),
            check_results=[
                accounting_check(name, checkpoints, len(span)),
                dead_letter_check(name, checkpoints, settings.dead_letter_warn_rate),
            ],
        )

    return _asset


def _day_list(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def source_asset(config: PipelineConfig) -> dg.AssetsDefinition:
    @dg.observable_source_asset(
        name=SOURCE_KEY,
        group_name="warehouse",
        required_resource_keys={"warehouse"},
        description=f"The actions in the warehouse ({config.source.table or config.source.query}).",
    )
    def _observe(context: dg.AssetExecutionContext) -> dg.ObserveResult:
        source = Source(_with_url(config, context.resources.warehouse.url))
        try:
            rows = source.count(config.start_date, date.today())
        finally:
            source.engine.dispose()
        return dg.ObserveResult(
            metadata={"row_count": rows, "since": config.start_date.isoformat()},
            data_version=dg.DataVersion(str(rows)),
        )

    return _observe


def build_definitions(
    config: PipelineConfig, warehouse_url_env: str | None = None
) -> dg.Definitions:
    """The project's definitions for a pipeline file (see the module docstring)."""
    with warnings.catch_warnings():
        # BackfillPolicy and observable source assets are marked beta; this project opts in.
        warnings.simplefilter("ignore", dg.BetaWarning)
        return _build_definitions(config, warehouse_url_env)


def _build_definitions(config: PipelineConfig, warehouse_url_env: str | None) -> dg.Definitions:
    partitions = dg.DailyPartitionsDefinition(
        start_date=config.start_date.isoformat(), timezone="UTC"
    )
    assets = [destination_asset(name, config, partitions) for name in config.destinations]
    job = dg.define_asset_job("send_daily", selection=dg.AssetSelection.groups(GROUP))
    schedule = dg.build_schedule_from_partitioned_job(
        job,
        hour_of_day=config.dagster.schedule_hour,
        default_status=(
            dg.DefaultScheduleStatus.RUNNING
            if config.dagster.schedule_running
            else dg.DefaultScheduleStatus.STOPPED
        ),
        name="send_yesterday_daily",
    )

    @dg.run_failure_sensor(
        name="report_failed_partitions", default_status=dg.DefaultSensorStatus.RUNNING
    )
    def report_failed_partitions(context: dg.RunFailureSensorContext) -> None:
        tags = context.dagster_run.tags
        span = tags.get("dagster/partition") or (
            f"{tags.get('dagster/asset_partition_range_start')}..{tags.get('dagster/asset_partition_range_end')}"
        )
        reason = context.failure_event.message or "unknown"
        context.log.error(
            f"run {context.dagster_run.run_id} failed for partitions {span}: {reason}"
        )

    return dg.Definitions(
        assets=[source_asset(config), *assets],
        jobs=[job],
        schedules=[schedule],
        sensors=[report_failed_partitions],
        resources=build_resources(config, warehouse_url_env),
    )
