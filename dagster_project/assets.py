"""One daily-partitioned asset per destination, and the warehouse's actions as an observed source.

A destination's asset calls :func:`etl.runner.run_backfill` for its run's range and reports each
day on its own: a materialization with that day's numbers from the state tables (only for a day
the run changed, or one never reported), and that day's checks. A day that fails accounting, is
interrupted or whose destination stopped gets no materialization: Dagster shows it failed, and
the run fails after the other days are reported.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Any

import dagster as dg

from dagster_project.checks import REPAIR, check_specs, evaluations, failure
from dagster_project.resources import credentials_key
from etl.config import PipelineConfig
from etl.ranges import yesterday
from etl.reports import DestinationReport, PartitionReport
from etl.run_context import RunOptions
from etl.runner import run_backfill
from etl.source import Source
from etl.state import Checkpoint, encode_position, open_store
from etl.windows import UNDATED

SOURCE_KEY = "user_actions"
GROUP = "destinations"

Event = dg.AssetMaterialization | dg.AssetCheckEvaluation | dg.Output


def run_days(context: dg.AssetExecutionContext) -> list[str]:
    window = context.partition_time_window
    first, last = window.start.date(), (window.end - timedelta(days=1)).date()
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def with_url(config: PipelineConfig, url: str) -> PipelineConfig:
    if url == config.source.url:
        return config
    return config.model_copy(update={"source": config.source.model_copy(update={"url": url})})


def checkpoints(config: PipelineConfig, name: str) -> dict[str, Checkpoint]:
    store = open_store(config)
    try:
        return {cp.partition: cp for cp in store.checkpoints_of(name)}
    finally:
        store.close()


def partition_metadata(name: str, cp: Checkpoint, report: PartitionReport | None) -> dict[str, Any]:
    """A day's own numbers: the state tables' totals, and what this run did to it."""
    seconds = report.seconds if report else 0.0
    sent = report.delivered if report else 0
    return {
        "rows_read": cp.rows_read,
        "delivered": cp.delivered,
        "dead_letters": cp.dead_letters,
        "filtered": cp.filtered,
        "in_doubt": cp.in_doubt,
        "requests": cp.requests,
        "retries": cp.retries,
        "http_429s": cp.throttled,
        "deleted": cp.deleted,
        "moved": cp.moved,
        "changed": cp.changed,
        "near_misses": cp.near_misses,
        "near_miss": dg.MetadataValue.text(cp.near_miss or "(none)"),
        "delivered_this_run": sent,
        "seconds": dg.MetadataValue.float(round(seconds, 3)),
        "events_per_second": dg.MetadataValue.float(round(sent / seconds, 1) if seconds else 0.0),
        "cursor": dg.MetadataValue.text(encode_position(cp.cursor) or "(none)"),
        "mode": dg.MetadataValue.text(report.mode.value if report else "unchanged"),
        "inspect": dg.MetadataValue.text(
            f"etl status -d {name} --from {cp.partition} --to {cp.partition}"
        ),
        "sample_payloads": dg.MetadataValue.json(report.samples if report else []),
    }


@contextmanager
def forward_library_logs(log: dg.DagsterLogManager) -> Iterator[None]:
    """The library's own log records (retries, pauses on 429: WARNING) in the run's log."""

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            log.log(record.levelno, record.getMessage())

    handler = Forward(logging.INFO)
    library = logging.getLogger("etl")
    library.addHandler(handler)
    try:
        yield
    finally:
        library.removeHandler(handler)


def _materialized_before(instance: dg.DagsterInstance, name: str, partition: str) -> bool:
    found = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(name), asset_partitions=[partition]), limit=1
    )
    return bool(found.records)


def partition_events(
    context: dg.AssetExecutionContext,
    name: str,
    days: list[str],
    before: dict[str, Checkpoint],
    after: dict[str, Checkpoint],
    report: DestinationReport | None,
    dead_letter_warn_rate: float,
) -> tuple[list[Event], list[str]]:
    """Each day's materialization (a day this run changed, or one never reported) and checks;
    and the failed days, each with its reason. Days before the range that the run re-checked
    for late rows are reported as well."""
    reports = {p.partition: p for p in report.partitions} if report else {}
    changed = {p for p, cp in after.items() if before.get(p) != cp and p != UNDATED}
    events: list[Event] = []
    failed: list[str] = []
    for day in sorted(set(days) | changed):
        cp = after.get(day)
        problem = failure(cp)
        if problem is not None:
            failed.append(f"{day}: {problem}")
        elif cp is not None and (
            day in changed or not _materialized_before(context.instance, name, day)
        ):
            metadata = partition_metadata(name, cp, reports.get(day))
            events.append(dg.AssetMaterialization(name, partition=day, metadata=metadata))
        events.extend(evaluations(name, day, cp, dead_letter_warn_rate))
    return events, failed


def destination_asset(
    name: str, config: PipelineConfig, partitions: dg.DailyPartitionsDefinition
) -> dg.AssetsDefinition:
    dest = config.destinations[name]
    settings = config.dagster
    spec = dg.AssetSpec(
        name,
        group_name=GROUP,
        kinds={dest.vendor},
        partitions_def=partitions,
        deps=[SOURCE_KEY],
        skippable=True,  # a day is reported by its own materialization, or not at all
        owners=settings.owners or None,
        tags={**settings.tags, "vendor": dest.vendor},
        description=(
            f"Custom events sent to {dest.vendor} ({name}), one partition per UTC day. Each "
            "day's materialization carries that day's numbers from the state tables; a day "
            f"that is not fully accounted for is failed, not materialized. {REPAIR}"
        ),
    )

    @dg.multi_asset(
        name=name,
        specs=[spec],
        check_specs=check_specs(name, partitions),
        can_subset=True,
        backfill_policy=dg.BackfillPolicy.multi_run(
            max_partitions_per_run=settings.partitions_per_run
        ),
        pool=f"vendor_{name}",  # one run at a time per destination: one rate budget
        required_resource_keys={"warehouse", credentials_key(name)},
    )
    def _asset(context: dg.AssetExecutionContext) -> Iterator[Event]:
        days = run_days(context)
        run_config = with_url(config, context.resources.warehouse.url)
        secrets = getattr(context.resources, credentials_key(name)).as_dict()
        before = checkpoints(run_config, name)
        try:
            with forward_library_logs(context.log):
                run = run_backfill(
                    run_config,
                    destinations=[name],
                    first_day=date.fromisoformat(days[0]),
                    last_day=date.fromisoformat(days[-1]),
                    credentials={name: secrets},
                    log=context.log.info,
                    warn=context.log.warning,
                    options=RunOptions(progress_every=settings.progress_every_batches),
                )
            [report] = run.destinations
        except BaseException:
            # interrupted (terminated from the UI) or failed: the days it completed still count
            try:
                events, _ = partition_events(
                    context, name, days, before, checkpoints(run_config, name), None,
                    settings.dead_letter_warn_rate,
                )  # fmt: skip
            except Exception as exc:  # the state database too: the first error is the one
                context.log.error(f"{name}: the completed days could not be reported: {exc}")
                events = []
            yield from events
            raise
        events, failed = partition_events(
            context, name, days, before, checkpoints(run_config, name), report,
            settings.dead_letter_warn_rate,
        )  # fmt: skip
        yield from events
        for output in context.assets_def.check_specs_by_output_name:  # reported per day above
            if output in context.op_execution_context.selected_output_names:
                yield dg.Output(None, output_name=output)
        if report.error or failed:
            reason = report.error or f"{len(failed)} of {len(days)} days failed"
            for line in failed:
                context.log.error(f"{name} {line}")
            raise dg.Failure(
                description=f"{name}: {reason}. {REPAIR}",
                metadata={
                    "failed_partitions": dg.MetadataValue.json(failed[:50]),
                    "dead_letters": report.total("dead_letters"),
                    "in_doubt": report.total("in_doubt"),
                },
            )

    return _asset


def source_asset(config: PipelineConfig) -> dg.AssetsDefinition:
    @dg.observable_source_asset(
        name=SOURCE_KEY,
        group_name="warehouse",
        required_resource_keys={"warehouse"},
        description=(
            f"The actions in the warehouse ({config.source.table or config.source.query}); an "
            "observation counts them and the rows no partition holds."
        ),
        owners=config.dagster.owners or None,
        tags=config.dagster.tags or None,
    )
    def _observe(context: dg.AssetExecutionContext) -> dg.ObserveResult:
        source = Source(with_url(config, context.resources.warehouse.url))
        last = yesterday()  # a UTC day, as every partition
        try:
            rows = source.count(config.start_date, last)
            outside = source.outside(last)
        finally:
            source.engine.dispose()
        return dg.ObserveResult(
            metadata={
                "row_count": rows,
                "since": config.start_date.isoformat(),
                "through": last.isoformat(),
                "without_timestamp": outside.no_timestamp,
                "unreadable_timestamp": outside.unreadable,
                "before_start_date": outside.before_start,
                "after_yesterday": outside.after_range,
            },
            data_version=dg.DataVersion(str(rows)),
        )

    return _observe
