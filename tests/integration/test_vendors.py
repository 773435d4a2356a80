"""Torque, ThriveStack and Airship against their sandbox emulations over real HTTP.

Shared fake clock: rate limits and Retry-After cost no real time.
"""

from __future__ import annotations

import gc
import json

import pytest
import requests

from etl.sandbox import start_sandbox
from tests.conftest import DESTINATION
from tests.integration.scenario import RECENT_END, assert_delivered, run, setup, store_of

VENDORS = ["torque", "thrivestack", "airship"]
# Small batches and a pace four times over each sandbox limit (50, 10 and 20 a second).
TOO_FAST = {
    # said to count in windows: the first refusal spaces the rest one at a time
    "torque": {"rate_limit": {"requests": 200, "per_seconds": 1, "strict": False}},
    "thrivestack": {"batch_size": 5, "rate_limit": {"requests": 40, "per_seconds": 1}},
    "airship": {"batch_size": 5, "rate_limit": {"requests": 80, "per_seconds": 1}},
}


@pytest.mark.parametrize("vendor", VENDORS)
def test_backfill_delivers_every_valid_row(tmp_path, warehouse, sandbox, clock, vendor):
    # one request at a time, for exact pacing on the fake clock (see tests/fakes.py)
    path = setup(
        tmp_path, warehouse, sandbox, rows=1500, vendor=vendor, end=RECENT_END, max_in_flight=1
    )
    report = run(path, clock)
    assert report.ok, report
    dest = report.destinations[0]
    assert dest.total("rows_read") == 1500 and dest.total("delivered") > 0
    assert dest.total("throttled") == 0
    assert assert_delivered(path, sandbox, vendor) == (0, 0)
    again = run(path, clock)
    assert again.ok and again.rows_read == 0


@pytest.mark.parametrize("vendor", VENDORS)
def test_429s_are_honoured(tmp_path, warehouse, sandbox, clock, vendor, caplog):
    path = setup(
        tmp_path, warehouse, sandbox, rows=1500, vendor=vendor, end=RECENT_END, **TOO_FAST[vendor]
    )
    report = run(path, clock)
    assert report.ok
    # paced by windows (said so, or above 50 requests/s), the first refusal at the pace spaces
    # the rest one at a time, said once; refused one at a time, the slack widens (at most once
    # a window, each said), and at its widest the limit is too high: said once
    tightened = caplog.text.count("refused (429) at the configured pace: from now on")
    widened = caplog.text.count("refused (429) with requests one at a time: from now on")
    too_high = caplog.text.count("lower the limit")
    assert tightened == (0 if vendor == "thrivestack" else 1)  # 40/s: one at a time already
    assert too_high <= 1 and widened <= 3 and widened + too_high >= 1
    assert report.destinations[0].total("throttled") > 0
    assert sandbox.sandbox.stats[vendor]["throttled"] == report.destinations[0].total("throttled")
    assert assert_delivered(path, sandbox, vendor) == (0, 0)  # a 429 stores nothing


@pytest.mark.parametrize("vendor", VENDORS)
def test_lost_responses_are_counted_in_doubt(tmp_path, warehouse, sandbox, clock, vendor):
    """Responses lost after storing: the resend may double-count, and the report says so."""
    sizes = {"thrivestack": {"batch_size": 20}, "airship": {"batch_size": 10}}
    path = setup(
        tmp_path,
        warehouse,
        sandbox,
        rows=1500,
        vendor=vendor,
        end=RECENT_END,
        max_attempts=20,
        **sizes.get(vendor, {}),
    )
    sandbox.sandbox.set_faults(vendor, lose_rate=0.2, error_rate=0.1)
    report = run(path, clock)
    assert report.ok
    stats = sandbox.sandbox.stats[vendor]
    assert stats["lost"] > 0 and stats["errors"] > 0
    extra, in_doubt = assert_delivered(path, sandbox, vendor)
    assert extra > 0 and in_doubt >= extra
    assert report.destinations[0].total("in_doubt") == in_doubt


@pytest.mark.slow
def test_torque_rejections_name_the_parameter(tmp_path, warehouse, clock):
    """The dashboard defines amount as a string: the vendor refuses numbers, per event."""
    server = start_sandbox(
        clock=clock, torque_events={"purchase": {"amount": "string"}, "game_played": {}}
    )
    try:
        path = setup(tmp_path, warehouse, server, rows=1500, vendor="torque", end=RECENT_END)
        report = run(path, clock)
        assert report.ok
        dead = [d for d in store_of(path).dead_letters(DESTINATION) if d["vendor_status"] == 400]
        assert dead and all("data.amount must be a string" in d["reason"] for d in dead)
        assert {json.loads(d["payload"])["eventName"] for d in dead} == {"purchase"}
        assert {e["eventName"] for e in server.sandbox.records["torque"]} == {"game_played"}
        assert all(cp.balanced for cp in store_of(path).checkpoints_of(DESTINATION))
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("vendor", "variable"),
    [
        ("torque", "TORQUE_API_KEY"),
        ("thrivestack", "THRIVESTACK_API_KEY"),
        ("airship", "AIRSHIP_TOKEN"),
    ],
)
def test_wrong_credential_stops(tmp_path, warehouse, sandbox, clock, monkeypatch, vendor, variable):
    path = setup(tmp_path, warehouse, sandbox, rows=300, vendor=vendor, end=RECENT_END)
    monkeypatch.setenv(variable, "wrong-secret")
    report = run(path, clock)
    error = report.destinations[0].error
    assert error and "refused the credential (HTTP 401" in error and f"${{{variable}}}" in error
    assert "wrong-secret" not in error


def test_airship_skips_history_older_than_its_window(tmp_path, warehouse, sandbox, clock):
    """Old partitions are announced and skipped; only the window's rows are read and sent."""
    path = setup(tmp_path, warehouse, sandbox, rows=400, vendor="airship")  # 2024: all too old
    messages: list[str] = []
    report = run(path, clock, log=messages.append)
    assert report.ok and report.rows_read == 0
    assert messages == [report.destinations[0].skipped]
    assert (
        "400 rows from 2024-03-01 to 2024-03-04 are older than Airship's 90-day window"
        in messages[0]
    )
    days = [cp for cp in store_of(path).checkpoints_of(DESTINATION) if cp.partition != "undated"]
    assert {cp.status for cp in days} == {"skipped"}
    assert sandbox.sandbox.stats == {}


@pytest.mark.slow
def test_a_sandbox_in_its_own_process_keeps_its_records_out_of_the_collector():
    """`etl sandbox` keeps every accepted event to the end: frozen out of the cycle collector's
    walks, which a million records made half of its CPU."""
    server = start_sandbox(freeze_records=True)
    event = {"event_name": "e", "user_id": "u", "timestamp": "2024-10-20T15:51:36.514000Z"}
    try:
        before = gc.get_freeze_count()
        response = requests.post(
            f"{server.url}/thrivestack/api/track",
            json=[event],
            headers={"x-api-key": "sandbox-thrivestack-key"},
            timeout=10,
        )
        assert response.status_code == 200
        assert server.sandbox.records["thrivestack"] == [event]
        assert gc.get_freeze_count() > before
    finally:
        server.stop()
        gc.unfreeze()


@pytest.mark.slow
def test_a_sandbox_that_keeps_nothing_counts_what_it_accepts(tmp_path, warehouse, clock):
    """`etl sandbox --keep-nothing` (the scale bench's ten million events would take 9 GB):
    the events are accepted and counted, none kept."""
    server = start_sandbox(clock=clock, keep_events=False)
    try:
        path = setup(tmp_path, warehouse, server, rows=600, vendor="thrivestack", end=RECENT_END)
        report = run(path, clock)
        assert report.ok
        delivered = report.destinations[0].total("delivered")
        assert server.sandbox.stats["thrivestack"]["stored"] == delivered > 0
        assert server.sandbox.records["thrivestack"] == []
    finally:
        server.stop()
