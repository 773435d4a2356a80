"""In doubt, exact per day, whatever stops a run: kill -9 with answers late, Ctrl-C, a second
run of the same destination. The backfill runs in child processes as a user runs it; the
sandbox in this one records every request and whether its answer went out."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from requests.structures import CaseInsensitiveDict

from etl.loader import load_pipeline
from etl.sandbox import start_sandbox
from etl.state import open_store
from etl.state.ledger import unknown_counts
from tests.conftest import DESTINATION, warehouse_of
from tests.integration.scenario import (
    RECENT_END,
    assert_delivered,
    canonical,
    expected_payloads,
    setup,
    store_of,
)

pytestmark = pytest.mark.slow


def start_run(path: Path, *args: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "etl.app", "run", "-c", str(path), "--no-progress", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def thrivestack_pipeline(tmp_path: Path, warehouse, server, rows: int, **dest) -> Path:
    """A ThriveStack pipeline (no dedup) over recent days, 100 requests/s unless told."""
    dest.setdefault("rate_limit", {"requests": 100, "per_seconds": 1})
    return setup(tmp_path, warehouse, server, rows=rows, vendor="thrivestack", end=RECENT_END,
                 **dest)  # fmt: skip


def run_to_the_end(path: Path, server, timeout: float = 120) -> tuple[int, int]:
    """A last run that must succeed; then (extra copies, in doubt) of assert_delivered."""
    final = start_run(path)
    output = final.communicate(timeout=timeout)[0].decode()
    assert final.returncode == 0, output
    return assert_delivered(path, server, "thrivestack")


def wait_until(condition, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended first: {proc.stdout.read().decode()}")  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.005)


def waiting_on_answers(server, vendor: str = "thrivestack") -> bool:
    """Both requests of the run are at the vendor and nothing was stored for longer than the
    earlier latency: the run waits for their answers."""
    stored = len(server.sandbox.records[vendor])
    time.sleep(0.15)
    return server.sandbox.open[vendor] == 2 and len(server.sandbox.records[vendor]) == stored


def day_of(event: dict) -> str:
    return event["timestamp"][:10]


def per_day_bounds(path: Path, server, vendor: str) -> dict[str, tuple[int, int, int]]:
    """Per day: (extra copies at the vendor, reported in doubt, events of requests whose fate
    was unknown). A request's fate is unknown when its answer never went out, or when a killed
    run had marked it as leaving and it never arrived (the kill fell between the two)."""
    box = server.sandbox
    expected = expected_payloads(path)
    stored = Counter(canonical(e) for e in box.records[vendor])
    assert not expected - stored, "an event never arrived"
    extra: Counter[str] = Counter()
    for payload, copies in (stored - expected).items():
        extra[day_of(json.loads(payload))] += copies
    unknown: Counter[str] = Counter()
    arrived = set()
    for request in box.requests:
        if request.vendor != vendor:
            continue
        arrived.add(CaseInsensitiveDict(request.headers).get("X-Request-Id"))
        if not request.answered:
            for index in request.stored:
                unknown[day_of(box.records[vendor][index])] += 1
    store = store_of(path)
    b = store.batches.c
    with store.engine.connect() as conn:
        doubted = conn.execute(
            sa.select(b.partition, b.batch_id, b.unknown, b.event_count).where(
                b.status == "in_doubt"
            )
        ).all()
    for partition, batch_id, attempts, events in doubted:
        if batch_id not in arrived:
            unknown[partition] += sum(unknown_counts(attempts, events))
    in_doubt = {cp.partition: cp.in_doubt for cp in store.checkpoints_of(DESTINATION)}
    days = sorted(set(in_doubt) - {"undated"})
    return {d: (extra[d], in_doubt[d], unknown[d]) for d in days}


def test_in_doubt_bounds_extra_copies_on_every_day_in_a_crash_loop(tmp_path):
    """Ten kill -9 with answers 300 ms late, ThriveStack (no dedup): on every day, extra copies
    at the vendor <= in doubt <= extra copies + events of requests whose answer never came."""
    server = start_sandbox(time_scale=600)
    server.sandbox.set_faults("thrivestack", latency_ms=300)
    try:
        with warehouse_of("sqlite", tmp_path) as warehouse:
            path = thrivestack_pipeline(
                tmp_path, warehouse, server, 1200, max_in_flight=4, batch_size=20,
                rate_limit={"requests": 200, "per_seconds": 1},
            )  # fmt: skip
            total = sum(expected_payloads(path).values())
            for _kill in range(10):
                proc = start_run(path)
                before = len(server.sandbox.records["thrivestack"])
                wait_until(
                    lambda b=before: (
                        len(server.sandbox.records["thrivestack"]) >= b + 10
                        and server.sandbox.open["thrivestack"] >= 2
                    ),
                    proc,
                )
                proc.send_signal(signal.SIGKILL)
                proc.communicate(timeout=30)
                if len(server.sandbox.records["thrivestack"]) >= total:
                    break
            extra, _ = run_to_the_end(path, server, timeout=180)
            assert extra > 0  # the kills landed with answers still out
            for day, (copies, doubt, unknown) in per_day_bounds(
                path, server, "thrivestack"
            ).items():
                assert copies <= doubt <= copies + unknown, (day, copies, doubt, unknown)
    finally:
        server.stop()


def test_ctrl_c_commits_the_answers_still_out(tmp_path):
    """A stop waits for the requests in flight and commits their answers: nothing of them is
    sent again, and the run says what is in doubt."""
    server = start_sandbox(time_scale=600)
    server.sandbox.set_faults("thrivestack", latency_ms=1500)
    try:
        with warehouse_of("sqlite", tmp_path) as warehouse:
            path = thrivestack_pipeline(
                tmp_path, warehouse, server, 600, max_in_flight=3, batch_size=20
            )
            proc = start_run(path)
            wait_until(lambda: server.sandbox.open["thrivestack"] >= 3, proc)
            proc.send_signal(signal.SIGINT)
            output = proc.communicate(timeout=30)[0].decode()
            assert proc.returncode == 130, output
            assert "stopping: nothing more is sent" in output
            assert "events of requests still unanswered are in doubt" in output
            statuses = {cp.status for cp in store_of(path).checkpoints_of(DESTINATION)}
            assert "interrupted" in statuses
            server.sandbox.set_faults("thrivestack", latency_ms=0)  # the rest, without waits
            extra, in_doubt = run_to_the_end(path, server)
            assert extra == 0 and in_doubt == 0  # every answer that came back was committed
    finally:
        server.stop()


def test_two_runs_of_one_destination_at_once(tmp_path):
    """The second run finds the first one's lease and says who holds it; nothing is doubled."""
    server = start_sandbox(time_scale=600)
    server.sandbox.set_faults("thrivestack", latency_ms=200)
    try:
        with warehouse_of("sqlite", tmp_path) as warehouse:
            path = thrivestack_pipeline(
                tmp_path, warehouse, server, 600, max_in_flight=2, batch_size=20
            )
            first, second = start_run(path), start_run(path)
            outputs = [p.communicate(timeout=120)[0].decode() for p in (first, second)]
            codes = sorted(p.returncode for p in (first, second))
            assert codes == [0, 1], outputs
            refused = next(
                o for o, p in zip(outputs, (first, second), strict=True) if p.returncode == 1
            )
            assert "another run is sending it (host" in refused and "pid" in refused
            extra, in_doubt = run_to_the_end(path, server)
            assert extra == 0 and in_doubt == 0
    finally:
        server.stop()


def test_a_partition_beside_the_range_held_by_another_run_is_left_to_it(tmp_path):
    """Runs of other days at once (the bench's four processes): the undated partition, which
    every run also sends, is held by another run; this run sends its own day and leaves the
    undated rows to that run, saying so; the next run sends them."""
    server = start_sandbox(time_scale=600)
    try:
        with warehouse_of("sqlite", tmp_path) as warehouse:
            path = thrivestack_pipeline(tmp_path, warehouse, server, 600)
            store = open_store(load_pipeline(path))
            store.leases.acquire(DESTINATION, "undated")  # another run, alive, holds it
            day = (load_pipeline(path).start_date + timedelta(days=1)).isoformat()
            run = start_run(path, "--from", day, "--to", day)
            output = run.communicate(timeout=120)[0].decode()
            assert run.returncode == 0, output
            assert "undated: another run is sending it" in output and "left to that run" in output
            statuses = {cp.partition: cp.status for cp in store.checkpoints_of(DESTINATION)}
            assert statuses[day] == "complete" and "undated" not in statuses
            store.leases.release(DESTINATION, "undated")
            store.close()
            # the remaining days and the undated rows
            extra, in_doubt = run_to_the_end(path, server)
            assert extra == 0 and in_doubt == 0
    finally:
        server.stop()


def _immutable(files: list[Path], on: bool) -> bool:
    flag = "+i" if on else "-i"
    done = [subprocess.run(["chattr", flag, str(f)], capture_output=True) for f in files]
    return all(d.returncode == 0 for d in done)


def test_a_state_file_made_read_only_mid_run(tmp_path):
    """SQLite dies of SIGBUS when its files turn read-only under it (chattr +i, a read-only
    remount): the run says so in one line instead, and the next run resumes, exactly."""
    probe = tmp_path / "probe"
    probe.write_text("x")
    if not _immutable([probe], True):
        pytest.skip("chattr +i is not allowed here (needs root on ext4 or the like)")
    _immutable([probe], False)
    server = start_sandbox(time_scale=600)
    server.sandbox.set_faults("thrivestack", latency_ms=100)
    try:
        with warehouse_of("sqlite", tmp_path) as warehouse:
            path = thrivestack_pipeline(
                tmp_path, warehouse, server, 1500, max_in_flight=2, batch_size=20
            )
            proc = start_run(path)
            wait_until(lambda: len(server.sandbox.records["thrivestack"]) >= 200, proc)
            # the files turn read-only while the run waits for its answers, between two
            # transactions (one that is under way when they do dies of SIGBUS: SQLite reads
            # its shared memory before the next statement can say anything, a race no check
            # closes); on a loaded machine a transaction lasts long enough to be hit
            server.sandbox.set_faults("thrivestack", latency_ms=3000)
            wait_until(lambda: waiting_on_answers(server), proc)
            files = list(tmp_path.glob("warehouse.db*"))
            assert _immutable(files, True)
            try:
                output = proc.communicate(timeout=60)[0].decode()
            finally:
                _immutable(files, False)
            assert proc.returncode == 1, output
            assert "can no longer be written" in output and "is read-only" in output
            assert "Fatal Python error" not in output
            server.sandbox.set_faults("thrivestack", latency_ms=100)
            extra, in_doubt = run_to_the_end(path, server)
            assert extra <= in_doubt
    finally:
        server.stop()
