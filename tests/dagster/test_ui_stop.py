"""`etl ui` without a terminal, stopped by a signal: no process of it is left, its port is free."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.dagster.test_ui_end_to_end import free_port, wait_for_webserver

pytestmark = pytest.mark.slow


def processes_with(marker: str) -> list[int]:
    """The processes whose environment holds ``marker`` (every descendant inherits it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_etl_ui_stops_cleanly_on_a_signal(pipeline: Path, tmp_path: Path, sig: signal.Signals):
    port = free_port()
    marker = f"ETL_UI_TEST_MARKER={tmp_path.name}-{sig.name}"
    name, value = marker.split("=", 1)
    etl = Path(sys.executable).with_name("etl")
    log = (tmp_path / "ui.log").open("w")
    proc = subprocess.Popen(
        [str(etl), "ui", "--dir", str(tmp_path / "demo"), "-c", str(pipeline), "--port", str(port)],
        env={**os.environ, name: value, "DAGSTER_HOME": str(tmp_path / "home")},
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # no controlling terminal, as under a service manager
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_webserver(url, proc, tmp_path / "ui.log")
        assert len(processes_with(marker)) > 2  # etl, dagster dev, its webserver and daemon
        proc.send_signal(sig)
        proc.wait(timeout=90)
        deadline = time.monotonic() + 10
        while processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_with(marker) == [], (tmp_path / "ui.log").read_text()[-3000:]
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/server_info", timeout=2)
    finally:
        for pid in processes_with(marker):
            os.kill(pid, signal.SIGKILL)
        log.close()
