"""One planner: what `etl plan` says of each partition is what `etl run` then does with it, on
the same state (half-sent days, a changed mapping, a restart); a transport setting changed
half-way goes on where it stopped."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from etl.app.cli import cli
from etl.errors import MappingChangedError
from etl.loader import load_pipeline
from etl.plan import plan_backfill
from etl.reports import RunReport
from etl.run_context import RunOptions
from etl.runner import run_backfill
from etl.statuses import Mode
from tests.conftest import FUUL_MAPPING, write_pipeline
from tests.integration.scenario import FIRST, LAST, assert_exactly_once, run, setup
from tests.integration.test_late_rows import delivered_rows, insert_late


def half_sent(tmp_path, warehouse, sandbox, clock, **dest):
    """Four days of which the run sent the first request's rows, then the vendor died."""
    path = setup(tmp_path, warehouse, sandbox, rows=600, **dest)
    sandbox.sandbox.set_faults("fuul", answer_status=404, answer_after=1)
    assert not run(path, clock).ok
    sandbox.sandbox.set_faults("fuul", answer_status=0, answer_after=0)
    return path


def planned(path, restart: bool = False) -> dict[str, tuple[Mode, int, int]]:
    """Per partition the plan would go through: its mode, rows to send, rows filtered."""
    [plan] = plan_backfill(
        load_pipeline(path), first_day=FIRST, last_day=LAST, restart=restart
    ).destinations
    assert not plan.refused
    return {
        p.partition: (p.mode, p.to_send, p.filtered)
        for p in plan.partitions
        if p.mode is not Mode.SKIP
    }


def done(report: RunReport) -> dict[str, tuple[Mode, int, int]]:
    [dest] = report.destinations
    return {p.partition: (p.mode, p.delivered, p.filtered) for p in dest.partitions}


def test_plan_and_run_agree_partition_by_partition(tmp_path, warehouse, sandbox, clock):
    path = half_sent(tmp_path, warehouse, sandbox, clock)
    before = planned(path)
    assert Mode.RESUME in {mode for mode, _, _ in before.values()}
    report = run(path, clock)
    assert report.ok
    assert done(report) == before
    assert planned(path) == {}  # nothing left: plan and run both see it
    assert done(run(path, clock)) == {}
    assert_exactly_once(path, warehouse, sandbox)


def test_plan_reports_the_refusal_that_run_raises(tmp_path, warehouse, sandbox, clock):
    path = half_sent(tmp_path, warehouse, sandbox, clock)
    mapping = dict(FUUL_MAPPING, args={**FUUL_MAPPING["args"], "level": {"column": "score"}})
    write_pipeline(path, warehouse, sandbox.url, FIRST.isoformat(), {"mapping": mapping})
    [plan] = plan_backfill(load_pipeline(path), first_day=FIRST, last_day=LAST).destinations
    refused = {p.partition: p.refused for p in plan.refused}
    assert refused and all("mapping.args.level changed" in r for r in refused.values())
    with pytest.raises(MappingChangedError) as raised:
        run(path, clock)
    assert str(raised.value) == next(iter(refused.values()))
    assert sandbox.sandbox.stats["fuul"]["requests"] == 2  # the run sent nothing more
    out = (
        CliRunner()
        .invoke(
            cli, ["plan", "-c", str(path), "--from", FIRST.isoformat(), "--to", LAST.isoformat()]
        )
        .output
    )
    assert "REFUSED" in out and "etl run would stop here" in out
    # with --restart, plan and run agree again: every day from its start
    restarted = planned(path, restart=True)
    assert {mode for mode, _, _ in restarted.values()} == {Mode.NEW}
    report = run(path, clock, options=RunOptions(restart=True))
    assert report.ok and done(report) == restarted


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({"options": {"endpoint": "batch"}}, {"options": {"endpoint": "single"}}),
        ({}, {"base_url_suffix": "/"}),
    ],
    ids=["fuul-endpoint", "base-url"],
)
def test_a_transport_change_goes_on_where_it_stopped(
    tmp_path, warehouse, sandbox, clock, before, after
):
    path = half_sent(tmp_path, warehouse, sandbox, clock, **before)
    changed = dict(after)
    if changed.pop("base_url_suffix", None):
        changed["base_url"] = sandbox.url + "/fuul/api/v1/"
    write_pipeline(path, warehouse, sandbox.url, FIRST.isoformat(), changed)
    report = run(path, clock)
    assert report.ok
    assert sandbox.sandbox.stats["fuul"].get("duplicates", 0) == 0
    assert_exactly_once(path, warehouse, sandbox)


def test_a_lookback_day_is_planned_once(tmp_path, warehouse, sandbox, clock):
    path = setup(tmp_path, warehouse, sandbox, rows=600)
    assert run(path, clock).ok
    first = str(FIRST)
    rows = delivered_rows(path, warehouse, first, 2)
    insert_late(warehouse, rows, first, 800_001)  # late rows: the lookback re-checks the day
    [plan] = plan_backfill(load_pipeline(path), first_day=LAST, last_day=LAST).destinations
    keys = [p.partition for p in plan.partitions]
    assert keys.count(first) == 1 and len(keys) == len(set(keys))
    recheck = next(p for p in plan.partitions if p.partition == first)
    assert recheck.mode is Mode.RECHECK and recheck.to_send == 2
    report = run_backfill(load_pipeline(path), first_day=LAST, last_day=LAST, timing=clock.timing())
    sent = {p.partition: p.delivered for p in report.destinations[0].partitions}
    assert sent == {p.partition: p.to_send for p in plan.partitions if p.mode is not Mode.SKIP}
