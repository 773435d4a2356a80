"""One daily-partitioned asset per destination, and the warehouse's actions as an observed source.

A destination's asset calls :func:`etl.runner.run_backfill` for its run's range and reports each
day on its own, from the reports the library returns (as dagster-dlt does from its load info;
the state tables are not read back): a materialization with that day's numbers (only for a day
the run went through, or one never reported), and that day's checks. A day that fails
accounting, is interrupted or whose destination stopped gets no materialization: Dagster shows
it failed, and the run fails after the other days are reported.
"""

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import dagster as dg

from dagster_project.checks import REPAIR, check_specs, evaluations, failure
from dagster_project.hosts import CeleryHostsRunLauncher, stop_when_terminated
from dagster_project.names import Names
from dagster_project.resources import credentials_key
from etl.config import PipelineConfig
from etl.ranges import yesterday
from etl.reports import DestinationReport, PartitionReport
from etl.run_context import RunOptions
from etl.runner import run_backfill
from etl.source import Source
from etl.state import Checkpoint, encode_position
from etl.windows import UNDATED

SOURCE_KEY = "user_actions"
GROUP = "destinations"

Event = dg.AssetMaterialization | dg.AssetCheckEvaluation | dg.Output


LEASE_WAIT_MARGIN = 10.0  # seconds


def run_days(context: dg.AssetExecutionContext) -> list[str]:
    window = context.partition_time_window
    first, last = window.start.date(), (window.end - timedelta(days=1)).date()
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def with_url(config: PipelineConfig, url: str) -> PipelineConfig:
    if url == config.source.url:
        return config
    return config.model_copy(update={"source": config.source.model_copy(update={"url": url})})


def partition_metadata(name: str, cp: Checkpoint, report: PartitionReport | None) -> dict[str, Any]:
    """A day's own numbers: its totals over every run, and what this run did to it."""
    seconds = report.seconds if report else 0.0
    sent = report.delivered if report else 0
    return {
        "dagster/partition_row_count": cp.rows_read,  # Dagster's key for a partition's rows
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


def _materialized_before(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> bool:
    found = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    )
    return bool(found.records)


@dataclass(frozen=True)
class Target:
    """One destination's asset: its name in the pipeline file and its key in Dagster."""

    name: str
    key: dg.AssetKey
    warn_rate: float


@dataclass
class DayReports:
    """What a run did and left, per day, from the reports the library returned (never read
    back from the state tables): the partitions it went through, as it closed each one, and
    the state of the range's days it left alone."""

    closed: dict[str, PartitionReport] = field(default_factory=dict)
    unchanged: dict[str, Checkpoint] = field(default_factory=dict)

    def close(self, report: PartitionReport) -> None:
        self.closed[report.partition] = report

    def state(self, day: str) -> Checkpoint | None:
        report = self.closed.get(day)
        if report is not None and report.checkpoint is not None:
            return report.checkpoint
        return self.unchanged.get(day)


def partition_events(
    context: dg.AssetExecutionContext,
    target: Target,
    days: list[str],
    reports: DayReports,
) -> tuple[list[Event], list[str]]:
    """Each day's materialization (a day this run went through, or one never reported) and
    checks; and the failed days, each with its reason. Days before the range that the run
    re-checked for late rows are reported as well."""
    events: list[Event] = []
    failed: list[str] = []
    for day in sorted(set(days) | set(reports.closed) - {UNDATED}):
        cp = reports.state(day)
        problem = failure(cp)
        if problem is not None:
            failed.append(f"{day}: {problem}")
        elif cp is not None and (
            day in reports.closed or not _materialized_before(context.instance, target.key, day)
        ):
            metadata = partition_metadata(target.name, cp, reports.closed.get(day))
            events.append(dg.AssetMaterialization(target.key, partition=day, metadata=metadata))
        events.extend(evaluations(target.key, target.name, day, cp, target.warn_rate))
    return events, failed


def destination_asset(
    name: str, config: PipelineConfig, partitions: dg.DailyPartitionsDefinition, names: Names
) -> dg.AssetsDefinition:
    dest = config.destinations[name]
    settings = config.dagster
    target = Target(name, names.key(name), settings.dead_letter_warn_rate)
    spec = dg.AssetSpec(
        target.key,
        group_name=names.of(GROUP),
        kinds={dest.vendor},
        partitions_def=partitions,
        deps=[names.key(SOURCE_KEY)],
        skippable=True,  # a day is reported by its own materialization, or not at all
        owners=settings.owners or None,
        tags={**settings.tags, "vendor": dest.vendor},
        description=(
            f"Custom events sent to {dest.vendor} ({name}), one partition per UTC day. Each "
            "day's materialization carries that day's numbers as the run left them; a day "
            f"that is not fully accounted for is failed, not materialized. {REPAIR}"
        ),
    )
    credentials = names.of(credentials_key(name))

    @dg.multi_asset(
        name=names.of(name),
        specs=[spec],
        check_specs=check_specs(target.key, partitions),
        can_subset=True,
        backfill_policy=dg.BackfillPolicy.multi_run(
            max_partitions_per_run=settings.partitions_per_run
        ),
        pool=names.of(f"vendor_{name}"),  # one run at a time per destination: one rate budget
        required_resource_keys={names.of("warehouse"), credentials},
    )
    def _asset(context: dg.AssetExecutionContext) -> Iterator[Event]:
        days = run_days(context)
        resources = context.resources
        run_config = with_url(config, getattr(resources, names.of("warehouse")).url)
        reports = DayReports()
        several_hosts = isinstance(context.instance.run_launcher, CeleryHostsRunLauncher)
        stop = threading.Event()
        try:
            with (
                forward_library_logs(context.log),
                stop_when_terminated(context.instance, context.run.run_id, stop, several_hosts),
            ):
                run = run_backfill(
                    run_config,
                    destinations=[name],
                    first_day=date.fromisoformat(days[0]),
                    last_day=date.fromisoformat(days[-1]),
                    credentials={name: getattr(resources, credentials).as_dict()},
                    log=context.log.info,
                    warn=context.log.warning,
                    options=RunOptions(
                        progress_every=settings.progress_every_batches,
                        count_outside=False,  # the source's observation counts them
                        # a retry of a run whose worker was lost waits for its leases to pass
                        lease_wait=config.state.lease_seconds + LEASE_WAIT_MARGIN,
                        several_hosts=several_hosts,
                    ),
                    stop=stop,
                    closed=reports.close,
                )
            [report] = run.destinations
            reports.unchanged = report.unchanged
            if stop.is_set():
                raise dg.Failure(f"{name}: stopped, the run was terminated from Dagster")
        except BaseException:
            # interrupted (terminated from the UI) or failed: the days it closed still count
            events, _ = partition_events(context, target, days, reports)
            yield from events
            raise
        yield from finish(context, target, days, reports, report)

    return _asset


def finish(
    context: dg.AssetExecutionContext,
    target: Target,
    days: list[str],
    reports: DayReports,
    report: DestinationReport,
) -> Iterator[Event]:
    """Each day's events, the outputs of the checks (reported per day), and the run's failure
    naming each failed day."""
    events, failed = partition_events(context, target, days, reports)
    yield from events
    for output in context.assets_def.check_specs_by_output_name:  # reported per day above
        if output in context.op_execution_context.selected_output_names:
            yield dg.Output(None, output_name=output)
    if report.error or failed:
        reason = report.error or f"{len(failed)} of {len(days)} days failed"
        for line in failed:
            context.log.error(f"{target.name} {line}")
        raise dg.Failure(
            description=f"{target.name}: {reason}. {REPAIR}",
            metadata={
                "failed_partitions": dg.MetadataValue.json(failed[:50]),
                "dead_letters": report.total("dead_letters"),
                "in_doubt": report.total("in_doubt"),
            },
        )


def source_asset(config: PipelineConfig, names: Names) -> dg.AssetsDefinition:
    @dg.observable_source_asset(
        key=names.key(SOURCE_KEY),
        group_name=names.of("warehouse"),
        required_resource_keys={names.of("warehouse")},
        description=(
            f"The actions in the warehouse ({config.source.table or config.source.query}); an "
            "observation counts them and the rows no partition holds."
        ),
        owners=config.dagster.owners or None,
        tags=config.dagster.tags or None,
    )
    def _observe(context: dg.AssetExecutionContext) -> dg.ObserveResult:
        source = Source(with_url(config, getattr(context.resources, names.of("warehouse")).url))
        last = yesterday()  # a UTC day, as every partition
        try:
            rows, outside = source.census(last)  # one pass over a text column
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
