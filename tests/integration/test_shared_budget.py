"""Four `etl run` processes share one rate budget (rate_limit.shared) through the state database.

Separate processes cannot share a fake clock, so this test runs on the real one, kept short by a
sandbox that runs 60x faster: Fuul's 10 batch requests a minute become 10 a second.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from etl.demo.run import SANDBOX_CREDENTIALS
from etl.sandbox import start_sandbox
from tests.conftest import warehouse_of, write_pipeline
from tests.integration.scenario import RECENT_END, assert_delivered

pytestmark = pytest.mark.slow
LIMIT, WINDOW = 10, 1.0


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_four_processes_stay_within_one_limit(tmp_path: Path, database: str):
    server = start_sandbox(time_scale=60 / WINDOW)
    try:
        with warehouse_of(database, tmp_path) as warehouse:
            warehouse.fill(3200, days=4, end=RECENT_END)
            first = RECENT_END - timedelta(days=4)
            limit = {"requests": LIMIT, "per_seconds": WINDOW, "margin": 0.02, "shared": True}
            path = write_pipeline(
                tmp_path / "pipeline.yaml", warehouse, server.url, first.isoformat(),
                {"rate_limit": limit, "batch_size": 10, "max_in_flight": 4},
            )  # fmt: skip
            env = {**os.environ, **SANDBOX_CREDENTIALS}
            procs = []
            for i in range(4):  # one day each, all at once
                day = (first + timedelta(days=i)).isoformat()
                command = [
                    sys.executable,
                    "-m",
                    "etl",
                    "run",
                    "-c",
                    str(path),
                    "--no-progress",
                    "--from",
                    day,
                    "--to",
                    day,
                ]
                procs.append(
                    subprocess.Popen(
                        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
                    )
                )
            for proc in procs:
                output = proc.communicate(timeout=300)[0].decode()
                assert proc.returncode == 0, output
            stats = server.sandbox.stats["fuul"]
            assert stats.get("throttled", 0) == 0
            arrivals = sorted(server.sandbox.arrivals["fuul"])
            # never more than the limit in any window of the sandbox's length
            for i, t in enumerate(arrivals):
                assert sum(1 for u in arrivals[i : i + LIMIT + 1] if u < t + WINDOW) <= LIMIT
            rate = (len(arrivals) - LIMIT) / (arrivals[-1] - arrivals[0])
            # Issue 5 asks for 98 % of the limit; pyrate-limiter's Limiter reaches about 83 % so
            # far (it adds a buffer to every wait). A regression guard, not the target:
            # `etl bench --only shared` measures it.
            assert rate >= 0.7 * LIMIT / WINDOW, (
                f"{rate:.1f} requests/s for a limit of {LIMIT / WINDOW:.0f}"
            )
            assert_delivered(path, server, "fuul")
    finally:
        server.stop()
