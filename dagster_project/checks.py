"""The checks of a destination's partitions, each evaluated per partition (a day's own numbers),
and the freshness of yesterday's partition."""

from __future__ import annotations

import warnings

import dagster as dg

from etl.state import Checkpoint
from etl.statuses import is_done

ACCOUNTING = "accounting"
DEAD_LETTER_RATE = "dead_letter_rate"
IN_DOUBT = "in_doubt"

REPAIR = (
    "Repair: materialize the partition again (Launchpad, or a backfill of the failed "
    "partitions): the run sends only the rows its delivery log does not hold."
)

DESCRIPTIONS = {
    ACCOUNTING: (
        "Blocking, per day: every row read is delivered, dead-lettered with a reason or "
        "filtered (rows read = delivered + dead letters + filtered), and the day's run "
        "completed. A day that fails it is reported failed, not materialized. " + REPAIR
    ),
    DEAD_LETTER_RATE: (
        "Warns when a day's dead letters pass the pipeline's dagster.dead_letter_warn_rate of "
        "the rows meant for the vendor; `etl dead-letters list` shows each one and its reason."
    ),
    IN_DOUBT: (
        "Warns when a day holds events that may have reached the vendor twice: a request whose "
        "answer never came was sent again. A vendor that deduplicates (Fuul) keeps one copy; "
        "for the others the count is an upper bound on the extra copies. "
        "`etl status -d DESTINATION --from DAY --to DAY` shows them."
    ),
}


def check_specs(asset: dg.AssetKey, partitions: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)  # partitioned checks: Dagster 1.13
        return [
            dg.AssetCheckSpec(
                name,
                asset=asset,
                blocking=name == ACCOUNTING,
                description=description,
                partitions_def=partitions,
            )
            for name, description in DESCRIPTIONS.items()
        ]


def failure(cp: Checkpoint | None) -> str | None:
    """Why a partition did not pass accounting, or None."""
    if cp is None:
        return "no checkpoint: the partition was not sent"
    if not is_done(cp.status):
        return f"{cp.status}" + (f": {cp.error}" if cp.error else "")
    if not cp.balanced:
        return (
            f"read {cp.rows_read:,} rows but delivered {cp.delivered:,} + dead {cp.dead_letters:,}"
            f" + filtered {cp.filtered:,}"
        )
    return None


def evaluations(
    key: dg.AssetKey,
    destination: str,
    partition: str,
    cp: Checkpoint | None,
    dead_letter_warn_rate: float,
) -> list[dg.AssetCheckEvaluation]:
    """The three checks of one partition, from its state as the run left it."""
    problem = failure(cp)
    counts = _counts(cp)
    meant = counts["rows_read"] - counts["filtered"]
    rate = counts["dead_letters"] / meant if meant else 0.0
    in_doubt = counts["in_doubt"]
    return [
        dg.AssetCheckEvaluation(
            asset_key=key,
            check_name=ACCOUNTING,
            passed=problem is None,
            severity=dg.AssetCheckSeverity.ERROR,
            blocking=True,
            partition=partition,
            description=(f"{partition}: {problem}. {REPAIR}" if problem else None),
            metadata={
                **counts,
                "unaccounted": counts["rows_read"]
                - counts["delivered"]
                - counts["dead_letters"]
                - counts["filtered"],
                "status": dg.MetadataValue.text(str(cp.status) if cp else "missing"),
            },
        ),
        dg.AssetCheckEvaluation(
            asset_key=key,
            check_name=DEAD_LETTER_RATE,
            passed=rate <= dead_letter_warn_rate,
            severity=dg.AssetCheckSeverity.WARN,
            blocking=False,
            partition=partition,
            metadata={
                "rate": dg.MetadataValue.float(round(rate, 4)),
                "threshold": dg.MetadataValue.float(dead_letter_warn_rate),
                "dead_letters": counts["dead_letters"],
                "inspect": dg.MetadataValue.text(
                    f"etl dead-letters list -d {destination} --partition {partition}"
                ),
            },
        ),
        dg.AssetCheckEvaluation(
            asset_key=key,
            check_name=IN_DOUBT,
            passed=in_doubt == 0,
            severity=dg.AssetCheckSeverity.WARN,
            blocking=False,
            partition=partition,
            description=(
                f"{in_doubt:,} events of {partition} may have reached the vendor twice"
                if in_doubt
                else None
            ),
            metadata={
                "in_doubt": in_doubt,
                "inspect": dg.MetadataValue.text(
                    f"etl status -d {destination} --from {partition} --to {partition}"
                ),
            },
        ),
    ]


def _counts(cp: Checkpoint | None) -> dict[str, int]:
    names = ("rows_read", "delivered", "dead_letters", "filtered", "in_doubt")
    return {name: int(getattr(cp, name)) if cp else 0 for name in names}


def freshness_checks(
    assets: list[dg.AssetsDefinition], hour: int | None, sensor_name: str
) -> tuple[list[dg.AssetChecksDefinition], list[dg.SensorDefinition]]:
    """Yesterday's partition of every destination materialized by ``hour`` UTC (a warning)."""
    if hour is None or not assets:
        return [], []
    with warnings.catch_warnings():
        # superseded by FreshnessPolicy, which asks for any recent materialization; this
        # check asks for the one partition that matters: yesterday's
        warnings.simplefilter("ignore", dg.SupersessionWarning)
        checks = list(
            dg.build_time_partition_freshness_checks(
                assets=assets, deadline_cron=f"0 {hour} * * *", timezone="UTC"
            )
        )
        sensor = dg.build_sensor_for_freshness_checks(
            freshness_checks=checks,
            name=sensor_name,
            default_status=dg.DefaultSensorStatus.RUNNING,
        )
    return checks, [sensor]
