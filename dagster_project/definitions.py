"""`dagster dev -m dagster_project.definitions`: the definitions of the pipeline file in
$ETL_PIPELINE (default: the demo's `.etl-demo/pipeline.yaml`, written if absent)."""

from __future__ import annotations

import os
from pathlib import Path

from dagster_project.factory import build_definitions
from etl.config import load_pipeline


def pipeline_path() -> Path:
    configured = os.environ.get("ETL_PIPELINE")
    if configured:
        return Path(configured)
    from etl.demo.run import ensure_demo_pipeline

    return ensure_demo_pipeline(Path(os.environ.get("ETL_DEMO_DIR", ".etl-demo")))


defs = build_definitions(load_pipeline(pipeline_path()), os.environ.get("ETL_WAREHOUSE_URL_ENV"))
