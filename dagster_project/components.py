"""The product as a Dagster Component: add "send these actions to Fuul" to any `dg` project.

A ``defs.yaml`` names :class:`EtlBackfillComponent` and gives the pipeline, either inline (its
attributes are a pipeline file's keys: ``start_date``, ``source``, ``state``, ``late_rows``,
``destinations``, ``dagster``) or as ``pipeline_file`` (relative to the ``defs.yaml``). It is
validated as `etl plan` validates a pipeline file, with the same messages (file, key, what is
wrong). Each instance's definitions carry its name (``name``, default: the folder of its
``defs.yaml``): asset keys ``<name>/<destination>``, ``<name>__send_daily`` and so on, so
that several instances (two warehouses, two tenants) load side by side. Credentials stay
``${VAR}`` references, read as ``EnvVar`` at run time: never write a key, nor a ``{{ env.X }}``
that Dagster would resolve into one, in the YAML.

Registered for `dg` through the ``dagster_dg_cli.registry_modules`` entry point; importing this
module needs no ``$ETL_PIPELINE``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dagster as dg
from dagster.components.scaffold.scaffold import ScaffoldRequest, scaffold_with

from dagster_project.factory import build_definitions
from dagster_project.names import Names
from etl.config import PipelineConfig
from etl.errors import ConfigError
from etl.loader import load_pipeline, pipeline_from_mapping

_INSTANCE = re.compile(r"^[a-z][a-z0-9_]*$")
SCAFFOLD = Path(__file__).with_name("defs.yaml.tmpl")


class EtlBackfillScaffolder(dg.Scaffolder):  # type: ignore[type-arg]
    """`dg scaffold defs <type> <path>`: a commented defs.yaml to edit."""

    def scaffold(self, request: ScaffoldRequest[Any]) -> None:
        target = Path(request.target_path)
        target.mkdir(parents=True, exist_ok=True)
        text = SCAFFOLD.read_text(encoding="utf-8").replace("{type}", request.type_name)
        (target / "defs.yaml").write_text(text, encoding="utf-8")


@scaffold_with(EtlBackfillScaffolder)
class EtlBackfillComponent(dg.Component, dg.Model, dg.Resolvable):
    """Backfills a warehouse's user actions to vendor event APIs (Fuul, Torque, ThriveStack,
    Airship), then sends every day: one daily-partitioned asset per destination with per-day
    checks, a daily job and schedule, and alert sensors (etl-backfill)."""

    name: str | None = None
    pipeline_file: str | None = None
    warehouse_url_env: str | None = None
    start_date: str | None = None
    source: dict[str, Any] | None = None
    state: dict[str, Any] | None = None
    late_rows: dict[str, Any] | None = None
    destinations: dict[str, Any] | None = None
    dagster: dict[str, Any] | None = None

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        folder = Path(context.path)
        folder = folder if folder.is_dir() else folder.parent
        instance = self.name or folder.name
        if not _INSTANCE.match(instance):
            raise ConfigError(
                f"{folder / 'defs.yaml'}: attributes.name: {instance!r} must be lowercase "
                "letters, digits and _ (it names the instance's assets, jobs and pools)"
            )
        config = self.pipeline(folder)
        return build_definitions(config, self.warehouse_url_env, Names(instance))

    def pipeline(self, folder: Path) -> PipelineConfig:
        """The instance's pipeline, validated as a pipeline file is."""
        defs_file = folder / "defs.yaml"
        inline = {
            key: value
            for key, value in (
                ("start_date", self.start_date),
                ("source", self.source),
                ("state", self.state),
                ("late_rows", self.late_rows),
                ("destinations", self.destinations),
                ("dagster", self.dagster),
            )
            if value is not None
        }
        if self.pipeline_file is not None:
            if inline:
                raise ConfigError(
                    f"{defs_file}: attributes: pipeline_file or the pipeline's keys "
                    f"({', '.join(inline)}), not both"
                )
            return load_pipeline(folder / self.pipeline_file)
        return pipeline_from_mapping(inline, defs_file, where="attributes")
