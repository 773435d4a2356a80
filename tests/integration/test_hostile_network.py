"""Answers that are not the vendor's: only a documented success counts, a wrong URL stops the
destination after one request, and a redirect never carries a key to another host."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from etl.app.cli import cli
from etl.loader import load_pipeline
from etl.sandbox import start_sandbox
from tests.conftest import DESTINATION, FAST
from tests.integration.scenario import FIRST, LAST, assert_delivered, run, setup, store_of

HTML = "<html><head><title>Sign in</title></head><body>Corporate proxy: log in</body></html>"


@pytest.mark.parametrize(
    ("vendor", "content_type", "body"),
    [
        ("fuul", "text/html", HTML),  # a captive proxy's login page
        ("thrivestack", "application/json", '{"success": false, "error": "quota"}'),
        ("airship", "application/json", '{"ok": false}'),
        ("torque", "application/json", ""),  # an empty body
    ],
)
def test_a_2xx_that_is_not_the_vendors_success_is_not_delivered(
    tmp_path, warehouse, sandbox, clock, vendor, content_type, body
):
    from tests.integration.scenario import RECENT_END

    path = setup(tmp_path, warehouse, sandbox, rows=200, vendor=vendor, end=RECENT_END)
    sandbox.sandbox.set_faults(
        vendor, answer_status=200, answer_body=body, answer_content_type=content_type
    )
    report = run(path, clock)
    dest = report.destinations[0]
    assert not report.ok and dest.error
    assert "answered HTTP 200" in dest.error and "3 times" in dest.error
    assert f"destinations.{DESTINATION}.base_url" in dest.error
    assert "<html>" not in dest.error and "\n" not in dest.error  # quoted safely, one line
    assert dest.total("delivered") == 0
    assert sandbox.sandbox.stats[vendor]["requests"] == 3  # the first batch, three times
    # the fault gone, the next run sends everything; the three answers' events count in doubt
    sandbox.sandbox.set_faults(vendor, answer_status=0)
    again = run(path, clock)
    assert again.ok, again
    extra, in_doubt = assert_delivered(path, sandbox, vendor)
    assert extra == 0
    if vendor != "fuul":  # deduplicates: nothing in doubt
        assert in_doubt > 0


@pytest.mark.parametrize("status", [404, 405, 410, 413, 301, 302, 307, 308])
def test_an_endpoint_error_stops_after_one_request_and_dead_letters_nothing(
    tmp_path, warehouse, fast_sandbox, status
):
    path = setup(tmp_path, warehouse, fast_sandbox, rows=300, vendor="thrivestack", **FAST)
    location = "https://login.example.net/sso" if 300 <= status < 400 else ""
    fast_sandbox.sandbox.set_faults(
        "thrivestack", answer_status=status, answer_body=HTML, answer_location=location
    )
    span = ["--from", FIRST.isoformat(), "--to", LAST.isoformat()]
    result = CliRunner().invoke(cli, ["run", "-c", str(path), *span, "--no-progress"])
    assert result.exit_code == 1
    assert f"answered HTTP {status}" in result.output
    assert f"check destinations.{DESTINATION}.base_url" in result.output
    assert load_pipeline(path).destinations[DESTINATION].base_url in result.output  # the URL
    if location:
        assert "a redirect to login.example.net" in result.output
    assert fast_sandbox.sandbox.stats["thrivestack"]["requests"] == 1
    store = store_of(path)
    assert store.dead_letters(DESTINATION) == [] or all(
        d["vendor_status"] is None for d in store.dead_letters(DESTINATION)
    )
    days = [cp for cp in store.checkpoints_of(DESTINATION) if cp.partition != "undated"]
    assert {cp.status for cp in days} == {"failed"} and sum(cp.delivered for cp in days) == 0


def test_a_redirect_to_another_host_never_receives_the_key(tmp_path, warehouse, fast_sandbox):
    elsewhere = start_sandbox(time_scale=1e6)  # another host:port, recording what it gets
    try:
        for vendor in ("thrivestack", "airship", "torque"):
            fast_sandbox.sandbox.reset()
            from tests.integration.scenario import RECENT_END

            (tmp_path / vendor).mkdir()
            path = setup(
                tmp_path / vendor, warehouse, fast_sandbox, rows=100, vendor=vendor,
                end=RECENT_END, **FAST,
            )  # fmt: skip
            fast_sandbox.sandbox.set_faults(
                vendor, answer_status=307, answer_location=f"{elsewhere.url}/steal"
            )
            result = CliRunner().invoke(cli, ["run", "-c", str(path), "--no-progress"])
            assert result.exit_code == 1, result.output
            host = elsewhere.url.split("//")[1]
            assert f"a redirect to {host}" in result.output
        assert elsewhere.sandbox.requests == []  # nothing, let alone a key, reached it
    finally:
        elsewhere.stop()


def test_a_refused_connection_is_named_as_such(tmp_path, warehouse, sandbox, clock):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = setup(tmp_path, warehouse, sandbox, rows=50, max_attempts=2)
    text = path.read_text().replace(sandbox.url, f"http://127.0.0.1:{port}")
    path.write_text(text)
    report = run(path, clock)
    error = report.destinations[0].error
    assert error and f"127.0.0.1:{port} refused the connection" in error
    assert "30.0s" not in error
