"""A request that never left counts nothing: credentials that no header can carry are refused
before any request, naming the variable and never the value; a request that cannot be built
stops its destination at once, its batch not sent, nothing in doubt; malformed URLs are refused
when the file is loaded."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from etl.app.cli import cli
from etl.errors import ConfigError
from etl.loader import load_pipeline
from etl.sandbox import SANDBOX_CREDENTIALS
from etl.statuses import BatchStatus
from tests.conftest import DESTINATION, write_pipeline
from tests.integration.scenario import FIRST, LAST, run, setup, store_of

KEY = SANDBOX_CREDENTIALS["THRIVESTACK_API_KEY"]


@pytest.mark.parametrize(
    ("vendor", "variable", "value", "problem"),
    [
        ("thrivestack", "THRIVESTACK_API_KEY", KEY + "\n", "ends with a line break"),
        ("thrivestack", "THRIVESTACK_API_KEY", " " + KEY, "starts with whitespace"),
        ("thrivestack", "THRIVESTACK_API_KEY", KEY[:4] + "\t" + KEY[4:], "control character"),
        ("torque", "TORQUE_API_KEY", " " + SANDBOX_CREDENTIALS["TORQUE_API_KEY"], "starts with"),
        ("fuul", "FUUL_API_KEY", " " + SANDBOX_CREDENTIALS["FUUL_API_KEY"], "starts with"),
        ("airship", "AIRSHIP_TOKEN", SANDBOX_CREDENTIALS["AIRSHIP_TOKEN"] + "\r\n", "line break"),
    ],
)
def test_a_key_no_header_can_carry_is_refused_before_any_request(
    tmp_path, warehouse, sandbox, clock, monkeypatch, vendor, variable, value, problem
):
    path = setup(tmp_path, warehouse, sandbox, rows=60, vendor=vendor)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"environment variable {variable}") as raised:
        run(path, clock)
    assert problem in str(raised.value)
    assert value.strip() not in str(raised.value)
    assert sandbox.sandbox.stats == {}
    # the same check for credentials handed over by a caller (Dagster's resources)
    with pytest.raises(ConfigError, match=f"environment variable {variable}"):
        key = "token" if variable == "AIRSHIP_TOKEN" else "api_key"
        run(path, clock, credentials={DESTINATION: {key: value}})


def test_a_request_that_cannot_be_built_stops_and_counts_nothing(
    tmp_path, warehouse, sandbox, clock, caplog
):
    # a header name no request can carry: requests refuses it while preparing the request
    broken = {"options": {"key_header": "x-api\nkey"}}
    path = setup(tmp_path, warehouse, sandbox, rows=300, vendor="torque", **broken)
    caplog.set_level(logging.DEBUG)
    report = run(path, clock)
    [dest] = report.destinations
    assert not report.ok and dest.error is not None
    assert "could not be built (InvalidHeader)" in dest.error and "nothing was sent" in dest.error
    key = SANDBOX_CREDENTIALS["TORQUE_API_KEY"]
    assert key not in dest.error and key not in caplog.text
    assert sandbox.sandbox.stats == {}
    store = store_of(path)
    try:
        assert all(cp.in_doubt == 0 for cp in store.checkpoints_of(DESTINATION))
        with store.engine.connect() as conn:
            statuses = set(conn.execute(sa.select(store.batches.c.status)).scalars())
        assert BatchStatus.SENT not in statuses and BatchStatus.IN_DOUBT not in statuses
        assert all(cp.error is None or key not in cp.error for cp in store.checkpoints_of())
    finally:
        store.close()
    # fixed: it goes on where it stopped, every event once, nothing in doubt
    write_pipeline(path, warehouse, sandbox.url, FIRST.isoformat(), vendor="torque")
    assert run(path, clock).ok
    status = CliRunner().invoke(cli, ["status", "-c", str(path)])
    assert "in doubt 0" in status.output, status.output
    assert len(sandbox.sandbox.records["torque"]) == sum(
        cp.delivered for cp in store_of(path).checkpoints_of(DESTINATION)
    )


@pytest.mark.parametrize(
    ("base_url", "problem"),
    [
        ("http://127.0.0.1 :8799/thrivestack", "must not hold spaces"),
        ("http://[::1", "is not a valid URL"),
        ("ftp://127.0.0.1/thrivestack", "must be an http(s) URL"),
        ("http://127.0.0.1:99999/thrivestack", "is not a valid URL"),
    ],
)
def test_a_malformed_base_url_is_refused_when_the_file_loads(
    tmp_path, warehouse, sandbox, base_url, problem
):
    path = setup(tmp_path, warehouse, sandbox, rows=10, vendor="thrivestack", base_url=base_url)
    with pytest.raises(ConfigError, match=f"destinations.{DESTINATION}.base_url") as raised:
        load_pipeline(path)
    assert problem in str(raised.value)
    assert sandbox.sandbox.stats == {}


def test_keys_are_checked_on_the_cli_too(tmp_path, warehouse, sandbox, monkeypatch):
    path = setup(tmp_path, warehouse, sandbox, rows=10, vendor="thrivestack")
    monkeypatch.setenv("THRIVESTACK_API_KEY", KEY + "\n")
    span = ["--from", FIRST.isoformat(), "--to", LAST.isoformat()]
    result = CliRunner().invoke(cli, ["run", "-c", str(path), *span])
    assert result.exit_code != 0
    assert "THRIVESTACK_API_KEY (credentials.api_key) ends with a line break" in result.output
    assert KEY not in result.output
