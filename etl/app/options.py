"""Options shared by the commands of the `etl` command line."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

import click

from etl.config import PipelineConfig
from etl.loader import load_pipeline

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    envvar="ETL_PIPELINE",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The pipeline file (or $ETL_PIPELINE).",
)


# `etl bench --only`: the measurements (etl.app.bench), named here so that the other commands
# need not import the bench
BENCH_PARTS = (
    "local",
    "limited",
    "single",
    "resume",
    "shared",
    "small_days",
    "strict",
    "overhead",
    "dagster",
    "scale",
    "hosts",
)

DAY = click.DateTime(["%Y-%m-%d"])


def _as_date(_ctx: click.Context, _param: click.Parameter, value: datetime | None) -> date | None:
    return value.date() if value else None


def range_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """-d/--destination, --from and --to, shared by the commands that work on a range."""
    for option in reversed(
        [
            click.option(
                "-d",
                "--destination",
                "destinations",
                multiple=True,
                help="Only these (repeatable).",
            ),
            click.option(
                "--from", "first_day", type=DAY, callback=_as_date, help="First day (UTC)."
            ),
            click.option(
                "--to", "last_day", type=DAY, callback=_as_date, help="Last day, inclusive."
            ),
        ]
    ):
        command = option(command)
    return command


def load(path: Path) -> PipelineConfig:
    return load_pipeline(path)


demo_dir_option = click.option(
    "--dir",
    "directory",
    default=".etl-demo",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the demo keeps its warehouse, pipeline file and Dagster instance.",
)
