"""Rows added to a day after it was sent are sent, exactly once, for every vendor; nothing else is
sent again; deleted and changed rows are counted, not resent."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from etl.events import event_id_for
from etl.loader import load_pipeline
from etl.plan import plan_backfill
from etl.replay import replay_dead_letters
from etl.runner import run_backfill
from etl.sandbox import start_sandbox
from etl.statuses import Mode
from tests.conftest import DESTINATION, FAST, Warehouse, warehouse_of
from tests.integration.scenario import (
    RECENT_END,
    assert_delivered,
    canonical,
    expected_payloads,
    run,
    setup,
    store_of,
)

IDS = {"fuul": "dedup_id"}


def delivered_rows(path: Path, warehouse: Warehouse, day: str, count: int) -> list[dict]:
    """``count`` rows of a day whose events were delivered, from the warehouse."""
    known = store_of(path).log.known(DESTINATION, day)
    keys = [int(k) for k, entry in known.items() if entry.outcome == "delivered"][:count]
    engine = warehouse.engine()
    with engine.connect() as conn:
        table = sa.Table("user_actions", sa.MetaData(schema=warehouse.schema), autoload_with=conn)
        rows = [
            dict(r) for r in conn.execute(sa.select(table).where(table.c.id.in_(keys))).mappings()
        ]
    engine.dispose()
    return rows


def change(warehouse: Warehouse, statement: str, **params) -> None:
    engine = warehouse.engine()
    table = warehouse.table()
    with engine.begin() as conn:
        conn.execute(sa.text(statement.format(table=table)), params)
    engine.dispose()


def move(warehouse: Warehouse, key: int, at: datetime) -> None:
    """Give a row a new timestamp."""
    engine = warehouse.engine()
    with engine.begin() as conn:
        table = sa.Table("user_actions", sa.MetaData(schema=warehouse.schema), autoload_with=conn)
        conn.execute(sa.update(table).where(table.c.id == key).values(occurred_at=at))
    engine.dispose()


def insert_late(warehouse: Warehouse, rows: list[dict], day: str, first_id: int) -> list[int]:
    """Copies of delivered rows, new keys, at the start, middle and end of ``day``."""
    times = ["00:00:01", "12:00:00", "23:59:59"]
    engine = warehouse.engine()
    with engine.begin() as conn:
        table = sa.Table("user_actions", sa.MetaData(schema=warehouse.schema), autoload_with=conn)
        copies = []
        for n, row in enumerate(rows):
            at = f"{day} {times[n % 3]}"
            copies.append({**row, "id": first_id + n, "occurred_at": datetime.fromisoformat(at)})
        conn.execute(sa.insert(table), copies)
    engine.dispose()
    return [first_id + n for n in range(len(rows))]


def new_records(sandbox, vendor: str, before: int) -> list[dict]:
    return sandbox.sandbox.records[vendor][before:]


def kill_when_stored(command: list[str], server, count: int, timeout: float = 60) -> None:
    """Start ``command``; SIGKILL it once the sandbox holds ``count`` ThriveStack events."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while len(server.sandbox.records["thrivestack"]) < count:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


@pytest.mark.parametrize("vendor", ["fuul", "torque", "thrivestack", "airship"])
def test_late_rows_are_sent_once_and_nothing_else_again(tmp_path, sandbox, clock, vendor):
    with warehouse_of("sqlite", tmp_path) as warehouse:
        path = setup(tmp_path, warehouse, sandbox, rows=1200, vendor=vendor, end=RECENT_END)
        assert run(path, clock).ok
        first = load_pipeline(path).start_date
        day1, day2, day3, day4 = (first + timedelta(days=i) for i in range(4))
        late = insert_late(
            warehouse, delivered_rows(path, warehouse, str(day2), 3), str(day2), 900_001
        )
        gone, moving = delivered_rows(path, warehouse, str(day3), 2)
        change(warehouse, "DELETE FROM {table} WHERE id = :id", id=gone["id"])
        move(warehouse, moving["id"], datetime.combine(day4, datetime.min.time()))
        # a changed row is noticed when its day is read again (here: for its late rows)
        [edited] = [r for r in delivered_rows(path, warehouse, str(day2), 5) if r["id"] < 900_000][
            :1
        ]
        change(
            warehouse,
            "UPDATE {table} SET game_id = 'edited', properties = '{{\"edited\": 1}}' WHERE id = :id",
            id=edited["id"],
        )
        before = len(sandbox.sandbox.records[vendor])
        report = run(path, clock)
        assert report.ok, report
        sent = new_records(sandbox, vendor, before)
        # the late rows and the moved one (new to its new day: Fuul keeps its first copy), and
        # nothing else
        assert len(sent) == (3 if vendor == "fuul" else 4)
        if vendor == "fuul":
            assert {e["dedup_id"] for e in sent} == {event_id_for(DESTINATION, k) for k in late}
        cps = {cp.partition: cp for cp in store_of(path).checkpoints_of(DESTINATION)}
        assert cps[str(day3)].deleted == 1 and cps[str(day2)].changed == 1
        assert cps[str(day3)].moved == 1
        # the vendor may keep the copy sent from day 3 and the one sent from day 4
        assert cps[str(day3)].in_doubt == (0 if vendor == "fuul" else 1)
        assert cps[str(day4)].rows_read == cps[str(day4)].present
        assert cps[str(day1)].changed == 0  # not read again: its count did not change
        assert all(cp.balanced and cp.status == "complete" for cp in cps.values())
        rechecked = {p.partition: p for p in report.destinations[0].partitions}
        assert rechecked[str(day2)].mode == "recheck" and rechecked[str(day2)].delivered == 3
        # again: nothing to send, each complete day costs one count
        before = len(sandbox.sandbox.records[vendor])
        assert run(path, clock).rows_read == 0
        assert new_records(sandbox, vendor, before) == []


def test_a_run_of_later_days_sends_the_late_rows_of_the_days_before(tmp_path, sandbox, clock):
    """late_rows.lookback_days: the daily run of yesterday re-checks the week before."""
    with warehouse_of("sqlite", tmp_path) as warehouse:
        path = setup(tmp_path, warehouse, sandbox, rows=400)
        assert run(path, clock).ok
        first = load_pipeline(path).start_date
        late = insert_late(
            warehouse, delivered_rows(path, warehouse, str(first), 2), str(first), 800_001
        )
        before = len(sandbox.sandbox.records["fuul"])
        last = first + timedelta(days=3)
        report = run_backfill(
            load_pipeline(path), first_day=last, last_day=last, timing=clock.timing()
        )
        assert report.ok
        sent = new_records(sandbox, "fuul", before)
        assert {e["dedup_id"] for e in sent} == {event_id_for(DESTINATION, k) for k in late}


def test_late_rows_after_a_kill_between_the_recheck_and_the_send(tmp_path):
    """A run killed while it sends a day's late rows: the next run sends the rest, and every
    late row arrives once (or is counted in doubt); no other row is sent again."""
    server = start_sandbox(time_scale=600)
    try:
        with warehouse_of("sqlite", tmp_path) as warehouse:
            path = setup(
                tmp_path, warehouse, server, rows=400, vendor="thrivestack", end=RECENT_END,
                batch_size=10, max_in_flight=2, rate_limit={"requests": 100, "per_seconds": 1},
            )  # fmt: skip
            first = load_pipeline(path).start_date
            assert run_backfill(
                load_pipeline(path), first_day=first, last_day=first + timedelta(days=3)
            ).ok
            day = str(first + timedelta(days=1))
            rows = delivered_rows(path, warehouse, day, 60)
            insert_late(warehouse, rows, day, 700_001)
            before = len(server.sandbox.records["thrivestack"])
            server.sandbox.set_faults("thrivestack", latency_ms=400)
            command = [sys.executable, "-m", "etl.app", "run", "-c", str(path), "--no-progress"]
            kill_when_stored(command, server, before + 20)
            server.sandbox.set_faults("thrivestack", latency_ms=0)
            final = subprocess.run(command, capture_output=True, text=True, timeout=120)
            assert final.returncode == 0, final.stdout + final.stderr
            extra, in_doubt = assert_delivered(path, server, "thrivestack")
            assert extra <= in_doubt
            sent = Counter(canonical(e) for e in new_records(server, "thrivestack", before))
            assert sum(sent.values()) - extra == 60  # the late rows, each once, and no other
    finally:
        server.stop()


def test_a_replay_killed_midway_is_resumed(tmp_path):
    """Dead letters fixed in the warehouse, replayed: the replay is killed with requests out,
    the next one sends the rest; each arrives, extra copies within in doubt."""
    server = start_sandbox(time_scale=600)
    try:
        with warehouse_of("sqlite", tmp_path) as warehouse:
            path = setup(
                tmp_path, warehouse, server, rows=1500, vendor="thrivestack", end=RECENT_END,
                batch_size=1, max_in_flight=2, **FAST,
            )  # fmt: skip
            first = load_pipeline(path).start_date
            change(warehouse, "UPDATE {table} SET properties = '{{broken' WHERE id % 60 = 0")
            assert run_backfill(
                load_pipeline(path), first_day=first, last_day=first + timedelta(days=3)
            ).ok
            store = store_of(path)
            broken = [d for d in store.dead_letters(DESTINATION) if "properties" in d["reason"]]
            assert len(broken) >= 20
            for letter in broken:
                change(
                    warehouse,
                    "UPDATE {table} SET properties = '{{}}' WHERE id = :id",
                    id=int(letter["source_key"]),
                )
            server.sandbox.set_faults("thrivestack", latency_ms=600)
            command = [
                sys.executable, "-m", "etl.app", "dead-letters", "replay", "-c", str(path),
                "-d", DESTINATION,
            ]  # fmt: skip
            before = len(server.sandbox.records["thrivestack"])
            kill_when_stored(command, server, before + 1)
            server.sandbox.set_faults("thrivestack", latency_ms=0)
            report = replay_dead_letters(load_pipeline(path), DESTINATION)
            assert report.error is None
            assert not [d for d in store.dead_letters(DESTINATION) if "properties" in d["reason"]]
            extra, in_doubt = assert_delivered(path, server, "thrivestack")
            assert extra <= in_doubt
            assert len(expected_payloads(path)) > 0
    finally:
        server.stop()


def test_a_run_without_a_range_settles_the_days_before_its_lookback(
    tmp_path, warehouse, sandbox, clock
):
    """The scheduled run (no range: start_date to yesterday) re-checks the complete days of
    the lookback before its last day and leaves the older ones alone without counting them, as
    `etl plan` says; a run given a range re-checks every complete day of it."""
    # today as the runs will see it (RECENT_END was read when the suite started: it may have
    # been yesterday by now, and then yesterday's day is not the runs' last)
    today = datetime.now(UTC).date()
    path = setup(tmp_path, warehouse, sandbox, rows=400, end=today)
    doc = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**doc, "late_rows": {"lookback_days": 1}}, sort_keys=False))
    config = load_pipeline(path)
    days = [config.start_date + timedelta(days=n) for n in range(4)]  # the last is yesterday
    assert run_backfill(config, timing=clock.timing()).ok
    old, recent = str(days[0]), str(days[2])  # before the lookback of yesterday; inside it
    late_old = insert_late(warehouse, delivered_rows(path, warehouse, old, 2), old, 900_001)
    late_recent = insert_late(
        warehouse, delivered_rows(path, warehouse, recent, 2), recent, 900_101
    )

    [plan] = plan_backfill(load_pipeline(path)).destinations
    modes = {p.partition: p.mode for p in plan.partitions}
    assert (modes[old], modes[recent]) == (Mode.SKIP, Mode.RECHECK)
    before = len(sandbox.sandbox.records["fuul"])
    assert run_backfill(load_pipeline(path), timing=clock.timing()).ok
    sent = {e["dedup_id"] for e in new_records(sandbox, "fuul", before)}
    assert sent == {event_id_for(DESTINATION, k) for k in late_recent}

    before = len(sandbox.sandbox.records["fuul"])
    report = run_backfill(
        load_pipeline(path), first_day=days[0], last_day=days[-1], timing=clock.timing()
    )
    assert report.ok
    sent = {e["dedup_id"] for e in new_records(sandbox, "fuul", before)}
    assert sent == {event_id_for(DESTINATION, k) for k in late_old}
    cps = {cp.partition: cp for cp in store_of(path).checkpoints_of(DESTINATION)}
    assert all(cps[str(d)].balanced and cps[str(d)].status == "complete" for d in days)
