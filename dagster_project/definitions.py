"""`dagster dev -m dagster_project.definitions`: the definitions of the pipeline file that
$ETL_PIPELINE names (`etl ui` and `etl demo` set it for the demo's pipeline)."""

from __future__ import annotations

import os

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


defs = build_definitions(load_pipeline(pipeline_path()), os.environ.get("ETL_WAREHOUSE_URL_ENV"))
