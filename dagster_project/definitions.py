"""`dagster dev -m dagster_project.definitions`: the definitions of the pipeline file that
$ETL_PIPELINE names (`etl ui` and `etl demo` set it for the demo's pipeline)."""

from __future__ import annotations

import os

import dagster as dg

from dagster_project.factory import build_definitions
from etl.errors import ConfigError
from etl.loader import load_pipeline


def pipeline_path() -> str:
    configured = os.environ.get("ETL_PIPELINE")
    if not configured:
        raise ConfigError(
            "ETL_PIPELINE is not set: point it at your pipeline file "
            "(`etl ui` sets it for the demo's .etl-demo/pipeline.yaml)"
        )
    return configured


# Steps fork from a server that imported the definitions once: on a Celery worker (a long-lived
# process) a run's step starts in a fraction of a second, not the 3-4 s a fresh interpreter
# importing Dagster and this project costs. (A project of yours sets its own executor.)
FORKSERVER = dg.multiprocess_executor.configured({"start_method": {"forkserver": {}}})

defs = dg.Definitions.merge(
    build_definitions(load_pipeline(pipeline_path()), os.environ.get("ETL_WAREHOUSE_URL_ENV")),
    dg.Definitions(executor=FORKSERVER),
)
