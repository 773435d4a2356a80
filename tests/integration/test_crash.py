"""Kill a real `etl run` process with SIGKILL at several points, resume, and check every event.

The sandbox runs in this process (real clock, latency and lost responses so that kills land
with batches in flight); the backfill runs in a child process, as a user would run it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from etl.loader import load_pipeline
from etl.sandbox import SANDBOX_CREDENTIALS, start_sandbox
from tests.conftest import Warehouse, warehouse_of
from tests.integration.scenario import (
    RECENT_END,
    assert_delivered,
    expected_payloads,
    setup,
    store_of,
)

pytestmark = pytest.mark.slow


def start_run(path: Path) -> subprocess.Popen[bytes]:
    first = load_pipeline(path).start_date
    command = [sys.executable, "-m", "etl.app", "run", "-c", str(path), "--no-progress"]
    command += ["--from", first.isoformat(), "--to", (first + timedelta(days=3)).isoformat()]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ
    )


def wait_for_stored(
    server, vendor: str, count: int, proc: subprocess.Popen[bytes], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while server.sandbox.stats[vendor]["stored"] < count:
        if proc.poll() is not None:
            raise AssertionError(
                f"the run ended before the kill point: {proc.stdout.read().decode()}"
            )  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            raise AssertionError("the run made no progress")
        time.sleep(0.002)


SIZES = {
    "fuul": {"batch_size": 10},
    "torque": {},
    "thrivestack": {"batch_size": 25},
    "airship": {"batch_size": 10},
}
# Fuul on both warehouses, and reading in a second process; the other vendors on SQLite, to
# keep the suite short.
CASES = [
    ("fuul", "sqlite", False),
    pytest.param("fuul", "postgresql", False, marks=pytest.mark.postgres),
    ("fuul", "sqlite", True),
    ("torque", "sqlite", False),
    ("thrivestack", "sqlite", False),
    ("airship", "sqlite", False),
]


@pytest.mark.parametrize(("vendor", "database", "reader"), CASES)
def test_sigkill_at_several_points_then_resume(
    tmp_path: Path, vendor: str, database: str, reader: bool
):
    """Every valid event arrives; a copy beyond the first only where the vendor doesn't dedup,
    and never more than reported in doubt; bad rows are dead letters; partitions balance."""
    with warehouse_of(database, tmp_path) as warehouse:
        _crash_and_resume(tmp_path, warehouse, vendor, reader)


def test_sigkill_with_batches_that_span_days(tmp_path: Path):
    """Batches of 300 events over days of about 375 rows: most requests carry the end of one
    day and the start of the next, so the kills land with such batches in flight; the same
    checks hold, per partition (assert_delivered), for a vendor without dedup."""
    with warehouse_of("sqlite", tmp_path) as warehouse:
        _crash_and_resume(tmp_path, warehouse, "thrivestack", False, {"batch_size": 300})


def _crash_and_resume(
    tmp_path: Path,
    warehouse: Warehouse,
    vendor: str,
    reader: bool,
    sizes: dict[str, int] | None = None,
) -> None:
    spans_days = sizes is not None
    sizes = SIZES[vendor] if sizes is None else sizes
    server = start_sandbox(time_scale=600)
    server.sandbox.set_faults(vendor, latency_ms=15, lose_rate=0.03)
    try:
        path = setup(
            tmp_path, warehouse, server, rows=1500, vendor=vendor, end=RECENT_END, max_in_flight=4,
            max_attempts=20, rate_limit={"requests": 100, "per_seconds": 1}, **sizes,
        )  # fmt: skip
        if reader:  # a killed run's reader process ends too (or communicate() would wait)
            text = path.read_text().replace("chunk_size: 500", "chunk_size: 100")
            path.write_text(
                text.replace("table: user_actions", "table: user_actions\n  reader_process: true")
            )
        total = sum(expected_payloads(path).values())
        for fraction in (0.1, 0.35, 0.6, 0.85):
            proc = start_run(path)
            wait_for_stored(server, vendor, int(total * fraction), proc)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            assert proc.returncode == -signal.SIGKILL
        statuses = _ledger_statuses(store_of(path))
        assert {"sent", "in_doubt"} & set(statuses), "no kill landed with a batch in flight"
        if spans_days:
            assert _spanning_in_flight(store_of(path)), "no kill landed with a batch of two days"
        final = start_run(path)
        output = final.communicate(timeout=120)[0].decode()
        assert final.returncode == 0, output
        _, in_doubt = assert_delivered(path, server, vendor)
        if vendor == "fuul":
            assert server.sandbox.stats["fuul"]["duplicates"] > 0  # in-doubt batches resent
        else:
            assert in_doubt > 0  # killed with requests in flight: reported, not hidden
        for secret in SANDBOX_CREDENTIALS.values():
            assert secret not in output
    finally:
        server.stop()


def _ledger_statuses(store) -> list[str]:
    import sqlalchemy as sa

    with store.engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.select(store.batches.c.status))]


def _spanning_in_flight(store) -> bool:
    """A batch left sent or in doubt by a kill whose slices are in two partitions or more."""
    import sqlalchemy as sa

    b = store.batches.c
    stmt = (
        sa.select(b.batch_id)
        .where(b.status.in_(("sent", "in_doubt")))
        .group_by(b.batch_id)
        .having(sa.func.count(sa.distinct(b.partition)) > 1)
    )
    with store.engine.connect() as conn:
        return conn.execute(stmt).first() is not None
