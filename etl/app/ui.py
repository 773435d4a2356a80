"""`etl ui`: the Dagster UI (``dagster dev``) on the demo's instance, or on a pipeline of yours."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

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
        subprocess.run(command, env=env, check=False)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.stop()
