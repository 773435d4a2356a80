"""`etl ui`: the Dagster UI (``dagster dev``) on the demo's instance, or on a pipeline of yours."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from dagster_project.demo import prepare_home
from etl.app.demo.run import TIME_SCALE, TORQUE_EVENTS, ensure_demo_pipeline
from etl.sandbox import SANDBOX_CREDENTIALS, start_sandbox


def run_ui(
    directory: Path,
    config_path: Path | None,
    host: str,
    port: int,
    sandbox_port: int,
    say: Callable[[str], None] = print,
) -> None:
    """Run ``dagster dev`` until it stops, with the demo's sandbox vendors when no pipeline file
    of yours is given."""
    home = prepare_home(directory / "dagster_home")
    env = {**os.environ, "DAGSTER_HOME": str(home.resolve())}
    server = None
    if config_path is None:
        config_path = ensure_demo_pipeline(directory)
        server = start_sandbox(
            port=sandbox_port, time_scale=TIME_SCALE, torque_events=TORQUE_EVENTS
        )
        env.update(SANDBOX_CREDENTIALS, ETL_SANDBOX_URL=server.url)
        say(f"Sandbox vendors on {server.url}")
    env["ETL_PIPELINE"] = str(config_path.resolve())
    dagster = Path(sys.executable).with_name("dagster")
    command = [
        str(dagster),
        "dev",
        "-m",
        "dagster_project.definitions",
        "-h",
        host,
        "-p",
        str(port),
    ]
    say(f"Dagster UI on http://{host}:{port} (instance {home}); Ctrl-C stops.")
    try:
        run_until_signal(command, env)
    finally:
        if server is not None:
            server.stop()


def run_until_signal(command: list[str], env: dict[str, str]) -> int | None:
    """Run ``dagster dev`` in its own process group until it ends or this process is told to
    stop (SIGINT, SIGTERM, SIGHUP: with or without a terminal). Then the whole group is
    stopped: SIGINT as Ctrl-C in a terminal sends it, SIGTERM 5 s later (its webserver can wait
    for a browser's connections), SIGKILL 10 s after that: nothing of it is left behind."""
    proc = subprocess.Popen(command, env=env, start_new_session=True)
    asked = threading.Event()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        asked.set()

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        while proc.poll() is None and not asked.wait(0.5):
            pass
        for sig, grace in ((signal.SIGINT, 5.0), (signal.SIGTERM, 10.0)):
            _signal_group(proc.pid, sig)
            try:
                return proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
        return None
    finally:
        _signal_group(proc.pid, signal.SIGKILL)  # whatever of it is still alive
        proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
