"""Kill a real `etl run` process with SIGKILL at several points, resume, and prove exactly once.

The sandbox runs in this process (real clock, latency and lost responses so that kills land
with batches in flight); the backfill runs in a child process, as a user would run it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from etl.sandbox import start_sandbox
from tests.conftest import Warehouse
from tests.integration.scenario import FIRST, LAST, assert_exactly_once, setup, store_of

pytestmark = pytest.mark.slow


def start_run(path: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "etl", "run", "-c", str(path), "--no-progress"]
    command += ["--from", FIRST.isoformat(), "--to", LAST.isoformat()]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ
    )


def wait_for_stored(server, count: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while server.sandbox.stats["fuul"]["stored"] < count:
        if proc.poll() is not None:
            raise AssertionError(
                f"the run ended before the kill point: {proc.stdout.read().decode()}"
            )  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            raise AssertionError("the run made no progress")
        time.sleep(0.002)


def test_sigkill_at_several_points_then_resume_delivers_exactly_once(
    tmp_path: Path, warehouse: Warehouse
):
    server = start_sandbox(time_scale=600)  # Fuul's 10 requests/minute become 100/s
    server.sandbox.set_faults("fuul", latency_ms=15, lose_rate=0.03)
    try:
        path = setup(
            tmp_path, warehouse, server, rows=1500, batch_size=10, max_in_flight=4, max_attempts=20,
            rate_limit={"requests": 100, "per_seconds": 1},
        )  # fmt: skip
        kills = 0
        for fraction in (0.1, 0.35, 0.6, 0.85):
            proc = start_run(path)
            wait_for_stored(server, int(900 * fraction), proc)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            assert proc.returncode == -signal.SIGKILL
            kills += 1
        store = store_of(path)
        in_doubt = [b for b in _ledger_statuses(store) if b in ("sent", "in_doubt")]
        assert in_doubt, "no kill landed with a batch in flight"
        final = start_run(path)
        output = final.communicate(timeout=120)[0].decode()
        assert final.returncode == 0, output
        assert kills == 4
        assert_exactly_once(path, warehouse, server)
        assert server.sandbox.stats["fuul"]["duplicates"] > 0  # in-doubt batches were resent
        assert "sandbox-fuul-key" not in output
    finally:
        server.stop()


def _ledger_statuses(store) -> list[str]:
    import sqlalchemy as sa

    with store.engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.select(store.batches.c.status))]
