"""Materializing a range of partitions of every destination with Dagster's API, in the
instance of $DAGSTER_HOME, so that `dagster dev` on that instance shows the runs, the
materializations and the checks. Used by `etl demo`."""

import os
import shutil
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import dagster as dg

from dagster_project.assets import SOURCE_KEY
from dagster_project.factory import JOB, OBSERVE_JOB, build_definitions
from etl.loader import load_pipeline

INSTANCE_TEMPLATE = Path(__file__).with_name("dagster.yaml")
# The runs of the code location `dagster dev -m dagster_project.definitions` serves carry this
# tag; with it the demo's runs are on the Overview timeline and in the job's run history.
REPOSITORY_TAG = ".dagster/repository"
REPOSITORY_LABEL = "__repository__@dagster_project.definitions"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def prepare_home(home: Path) -> Path:
    """A DAGSTER_HOME with this project's instance settings (brought up to date if there),
    made this process's $DAGSTER_HOME (the instance file's storage reads it)."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(INSTANCE_TEMPLATE, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home.resolve())
    return home


def materialize_range(
    pipeline: Path,
    first: date,
    last: date,
    home: Path,
    say: Callable[[str], None] = print,
) -> list[dg.DagsterRunStatus]:
    """Observe the source, then materialize first..last of every destination, in runs of the
    pipeline's partitions_per_run days, as a multi-run backfill would."""
    config = load_pipeline(pipeline)
    defs = build_definitions(config)
    instance = dg.DagsterInstance.from_config(str(prepare_home(home)))
    observed = defs.resolve_job_def(OBSERVE_JOB).execute_in_process(
        instance=instance,
        run_config=QUIET,
        tags={REPOSITORY_TAG: REPOSITORY_LABEL, "launched_by": "etl demo"},
        raise_on_error=False,
    )
    status = observed.dagster_run.status.value
    say(f"Dagster run {observed.run_id[:8]}: observe {SOURCE_KEY}: {status}")
    job = defs.resolve_job_def(JOB)
    step = config.dagster.partitions_per_run
    statuses = []
    start = first
    while start <= last:
        end = min(start + timedelta(days=step - 1), last)
        result = job.execute_in_process(
            instance=instance,
            run_config=QUIET,
            tags={
                "dagster/asset_partition_range_start": start.isoformat(),
                "dagster/asset_partition_range_end": end.isoformat(),
                "launched_by": "etl demo",
                REPOSITORY_TAG: REPOSITORY_LABEL,
            },
            raise_on_error=False,
        )
        say(f"Dagster run {result.run_id[:8]}: {start} .. {end}: {result.dagster_run.status.value}")
        statuses.append(result.dagster_run.status)
        start = end + timedelta(days=1)
    return statuses
