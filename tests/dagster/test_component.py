"""The product as a Component in a `dg` project made here: two instances (a SQLite and a
PostgreSQL warehouse) pass `dg check yaml`, `dg check defs` and `dg list defs` side by side; a
partition of each materializes against the sandbox with the day's numbers of `etl status`; a
bad attribute fails `dg check defs` naming the file and the key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from click.testing import CliRunner

from etl.app.cli import cli
from tests.conftest import DESTINATION, FAST, Warehouse, warehouse_of, write_pipeline
from tests.dagster.conftest import FIRST

DG = Path(sys.executable).with_name("dg")
TYPE = "dagster_project.components.EtlBackfillComponent"
PROJECT_TOML = """\
[project]
name = "tenant-project"
version = "0.1.0"
requires-python = ">=3.11"

[tool.dg]
directory_type = "project"

[tool.dg.project]
root_module = "tenant_project"
"""
DEFINITIONS = """\
from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
"""


def pipeline_keys(tmp: Path, warehouse: Warehouse, sandbox_url: str) -> dict[str, Any]:
    """A test pipeline's keys (four days of fuul_rewards), as a pipeline file holds them."""
    warehouse.fill(400, days=4, end=FIRST + timedelta(days=4))
    path = write_pipeline(tmp / "pipeline.yaml", warehouse, sandbox_url, FIRST.isoformat(), FAST)
    return dict(yaml.safe_load(path.read_text()))


def instance(project: Path, name: str, attributes: dict[str, Any], files: dict[str, Any]) -> Path:
    folder = project / "src" / "tenant_project" / "defs" / name
    folder.mkdir(parents=True)
    (folder / "defs.yaml").write_text(yaml.safe_dump({"type": TYPE, "attributes": attributes}))
    for file, content in files.items():
        (folder / file).write_text(yaml.safe_dump(content))
    return folder


def dg_cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(project / "src"), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [str(DG), *args], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def project(tmp_path: Path, fast_sandbox) -> Iterator[tuple[Path, dict[str, Warehouse]]]:
    """A `dg` project with the instances ``sqlite_tenant`` (its pipeline inline) and
    ``pg_tenant`` (a pipeline file beside its defs.yaml)."""
    root = tmp_path / "tenant_project"
    (root / "src" / "tenant_project" / "defs").mkdir(parents=True)
    (root / "pyproject.toml").write_text(PROJECT_TOML)
    (root / "src" / "tenant_project" / "__init__.py").write_text("")
    (root / "src" / "tenant_project" / "defs" / "__init__.py").write_text("")
    (root / "src" / "tenant_project" / "definitions.py").write_text(DEFINITIONS)
    with ExitStack() as stack:
        lite = stack.enter_context(warehouse_of("sqlite", tmp_path))
        (tmp_path / "pg").mkdir()
        pg = stack.enter_context(warehouse_of("postgresql", tmp_path / "pg"))
        instance(root, "sqlite_tenant", pipeline_keys(tmp_path, lite, fast_sandbox.url), {})
        keys = pipeline_keys(tmp_path / "pg", pg, fast_sandbox.url)
        instance(root, "pg_tenant", {"pipeline_file": "pipeline.yaml"}, {"pipeline.yaml": keys})
        yield root, {"sqlite_tenant": lite, "pg_tenant": pg}


def test_two_instances_pass_dg_and_report_their_days(project, fast_sandbox):
    root, warehouses = project
    for args in (["check", "yaml"], ["check", "defs"]):
        done = dg_cli(root, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    listed = dg_cli(root, "list", "defs", "--json")
    assert listed.returncode == 0, listed.stderr
    found = json.loads(listed.stdout)
    for name in warehouses:
        assets = {a["asset_key"] for a in found["assets"]}
        assert {f"{name}/{DESTINATION}", f"{name}/user_actions"} <= assets
        assert f"{name}/{DESTINATION}:accounting" in {c["key"] for c in found["asset_checks"]}
        assert f"{name}__send_daily" in {j["name"] for j in found["jobs"]}
        assert f"{name}__send_yesterday_daily" in {s["name"] for s in found["schedules"]}
    # a partition of each, in this process, with its day's numbers as `etl status` says them
    sys.path.insert(0, str(root / "src"))
    try:
        defs = dg.load_from_defs_folder(path_within_project=root / "src" / "tenant_project")
        day = FIRST.isoformat()
        with dg.DagsterInstance.ephemeral() as dagster:
            for name in warehouses:
                result = defs.resolve_job_def(f"{name}__send_daily").execute_in_process(
                    partition_key=day, instance=dagster
                )
                assert result.success
                [event] = result.asset_materializations_for_node(f"{name}__{DESTINATION}")
                meta = {k: v.value for k, v in event.metadata.items()}
                assert meta["dagster/partition_row_count"] == meta["rows_read"] > 0
                config = root / "src" / "tenant_project" / "defs" / name
                pipeline = config / ("pipeline.yaml" if name == "pg_tenant" else "defs.yaml")
                assert status_numbers(pipeline, day) == tuple(
                    meta[k] for k in ("rows_read", "delivered", "dead_letters", "filtered")
                )
    finally:
        sys.path.remove(str(root / "src"))
        for module in [m for m in sys.modules if m.startswith("tenant_project")]:
            del sys.modules[module]


def status_numbers(pipeline: Path, day: str) -> tuple[int, ...]:
    """read, delivered, dead, filtered of a day, from `etl status --all`."""
    if pipeline.name == "defs.yaml":  # the inline pipeline, as a pipeline file
        attributes = yaml.safe_load(pipeline.read_text())["attributes"]
        pipeline = pipeline.with_name("as-pipeline.yaml")
        pipeline.write_text(yaml.safe_dump(attributes))
    out = CliRunner().invoke(cli, ["status", "-c", str(pipeline), "--all"]).output
    [line] = [x for x in out.splitlines() if x.strip().startswith(day)]
    fields = line.split()
    return tuple(int(v.replace(",", "")) for v in fields[2:6])


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"vendor": "fool"}, "destinations.fuul_rewards.vendor: unknown vendor 'fool'"),
        ({"batch_size": 500}, "destinations.fuul_rewards.batch_size: 500 is over fuul's limit"),
        (
            {"credentials": {"api_key": "sk-literal-key"}},
            "destinations.fuul_rewards.credentials: Value error, credential 'api_key' must be",
        ),
    ],
    ids=["unknown-vendor", "batch-size", "literal-key"],
)
def test_a_bad_attribute_fails_dg_check_defs_naming_file_and_key(project, change, named):
    root, _ = project
    defs_yaml = root / "src" / "tenant_project" / "defs" / "sqlite_tenant" / "defs.yaml"
    doc = yaml.safe_load(defs_yaml.read_text())
    doc["attributes"]["destinations"][DESTINATION].update(change)
    defs_yaml.write_text(yaml.safe_dump(doc))
    done = dg_cli(root, "check", "defs")
    assert done.returncode != 0
    assert f"{defs_yaml}: attributes.{named}" in done.stdout + done.stderr
    assert "sk-literal-key" not in done.stdout + done.stderr


def test_scaffold_writes_a_commented_defs_yaml(project):
    root, _ = project
    done = dg_cli(root, "scaffold", "defs", TYPE, "third_tenant")
    assert done.returncode == 0, done.stdout + done.stderr
    text = (root / "src" / "tenant_project" / "defs" / "third_tenant" / "defs.yaml").read_text()
    assert text.startswith("# An etl-backfill instance") and f"type: {TYPE}" in text
    assert "${FUUL_API_KEY}" in text
