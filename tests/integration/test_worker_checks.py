"""What `etl worker` refuses to start with, and what it names when it cannot reach something:
one line each, the URL shown without its password."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from dagster_project.hosts import pipeline_problems
from etl.app.cli import cli
from etl.loader import load_pipeline
from tests.conftest import POSTGRES_URL, require_postgres
from tests.unit.test_hosts import pipeline


def test_etl_worker_refuses_one_hosts_storage_and_state(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")  # SQLite, local runs
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    path = pipeline(tmp_path, f"sqlite:///{tmp_path / 'state.db'}")
    result = CliRunner().invoke(cli, ["worker", "-c", str(path)])
    assert result.exit_code == 2
    assert "other hosts cannot see" in result.output
    assert "CeleryHostsRunLauncher" in result.output
    shipped = Path(__file__).parents[2] / "dagster_project" / "dagster.celery.yaml"
    (home / "dagster.yaml").write_text(shipped.read_text().replace("env: DAGSTER_PG_URL", "x"))
    result = CliRunner().invoke(cli, ["worker", "-c", str(path)])
    assert result.exit_code == 2 and "the Dagster instance ($DAGSTER_HOME)" in result.output


def test_a_worker_names_what_it_cannot_use_or_reach(tmp_path, monkeypatch):
    local = load_pipeline(pipeline(tmp_path, f"sqlite:///{tmp_path / 'state.db'}"))
    [line] = pipeline_problems(local)
    assert line.startswith("state.url: sqlite") and "a file of one host" in line
    require_postgres()
    monkeypatch.setenv("ETL_CELERY_BROKER", "pyamqp://guest:secret@127.0.0.1:1//")
    problems = pipeline_problems(load_pipeline(pipeline(tmp_path, POSTGRES_URL)))
    assert any(p.startswith("the broker pyamqp://guest:***@127.0.0.1:1//") for p in problems)
    assert any(p.startswith("destinations.rewards.base_url") for p in problems)
    assert not any("secret" in p for p in problems)
