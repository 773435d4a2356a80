"""The `etl` command as a user runs it: one-line errors, run, status, dead letters, demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from etl.app.cli import cli
from etl.sandbox import SandboxServer
from tests.conftest import FAST
from tests.integration.scenario import FIRST, LAST
from tests.integration.scenario import setup as setup_scenario


@pytest.fixture
def sandbox(fast_sandbox: SandboxServer) -> SandboxServer:
    """The CLI runs on the real clock: limits that never bind, so nothing waits."""
    return fast_sandbox


def setup(tmp_path, warehouse, sandbox, rows):
    return setup_scenario(tmp_path, warehouse, sandbox, rows=rows, **FAST)


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_errors_are_one_line_without_traceback(tmp_path: Path):
    code, out = invoke("run", "-c", str(tmp_path / "absent.yaml"))
    assert code == 1
    assert out.strip().splitlines() == [
        f"Error: {tmp_path / 'absent.yaml'}: cannot read the pipeline file: No such file or directory"
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "start_date: 2024-01-01\nsource: {url: 'sqlite://', table: t}\ndestinations: {}\n"
    )
    code, out = invoke("run", "-c", str(bad))
    assert code == 1 and "destinations: Value error, at least one destination is needed" in out
    assert "Traceback" not in out


def test_run_status_and_dead_letters(tmp_path, warehouse, sandbox, monkeypatch):
    path = setup(tmp_path, warehouse, sandbox, rows=200)
    span = ["--from", FIRST.isoformat(), "--to", LAST.isoformat()]
    code, out = invoke("run", "-c", str(path), *span, "--no-progress")
    assert code == 0, out
    assert "fuul_rewards" in out and "State tables:" in out
    code, out = invoke("run", "-c", str(path), *span)
    assert code == 0 and "Nothing left to send" in out
    code, out = invoke("status", "-c", str(path))
    assert code == 0 and "4 partitions 4 complete" in out
    assert len(out.splitlines()) <= 3  # one line a destination, and the source's outside rows
    code, out = invoke("status", "-c", str(path), "--all")
    assert code == 0 and "total" in out and FIRST.isoformat() in out
    code, out = invoke("dead-letters", "list", "-c", str(path), "-d", "fuul_rewards")
    assert code == 0 and "dead letters for fuul_rewards" in out
    args = ["dead-letters", "list", "-c", str(path), "-d", "fuul_rewards", "--json"]
    every = CliRunner().invoke(cli, args)
    letters = [json.loads(line) for line in every.stdout.splitlines()]
    assert every.exit_code == 0 and letters and all(d["reason"] for d in letters)
    assert "shown" not in every.stderr  # --json lists them all
    one = CliRunner().invoke(cli, [*args, "--limit", "1"])
    assert one.exit_code == 0 and len(one.stdout.splitlines()) == 1
    if len(letters) > 1:
        assert f"1 of {len(letters)} shown (--limit)" in one.stderr
    code, out = invoke("status", "-c", str(path), "-d", "nope")
    assert code == 1 and "unknown destination(s) nope" in out


def test_wrong_key_stops_with_a_clear_line(tmp_path, warehouse, sandbox, monkeypatch):
    path = setup(tmp_path, warehouse, sandbox, rows=100)
    monkeypatch.setenv("FUUL_API_KEY", "not-a-real-key")
    code, out = invoke(
        "run", "-c", str(path), "--from", FIRST.isoformat(), "--to", LAST.isoformat()
    )
    assert code == 1
    assert (
        "STOPPED: destination 'fuul_rewards': fuul refused the credential (HTTP 401: Unauthorized); check the key in ${FUUL_API_KEY}"
        in out
    )
    assert "not-a-real-key" not in out


def test_dry_run_from_the_command_line(tmp_path, warehouse, sandbox):
    path = setup(tmp_path, warehouse, sandbox, rows=100)
    out_file = tmp_path / "out.jsonl"
    code, out = invoke(
        "run",
        "-c",
        str(path),
        "--from",
        FIRST.isoformat(),
        "--to",
        LAST.isoformat(),
        "--dry-run",
        str(out_file),
    )
    assert code == 0 and "nothing was sent" in out
    assert out_file.read_text().count("\n") > 0


@pytest.mark.slow
def test_demo_small_then_again(tmp_path: Path):
    directory = tmp_path / "demo"
    code, out = invoke("demo", "--dir", str(directory), "--rows", "3000", "--days", "10")
    assert code == 0, out
    line = next(line for line in out.splitlines() if line.startswith("fuul_rewards"))
    read, delivered, dead, filtered = (int(v.replace(",", "")) for v in line.split()[1:5])
    assert read == 3000 and delivered + dead + filtered == read and delivered > 0 and dead > 0
    code, out = invoke("demo", "--dir", str(directory), "--rows", "3000", "--days", "10")
    assert code == 0 and "Nothing left to send" in out


def test_state_ddl_command():
    code, out = invoke("state-ddl", "--dialect", "sqlite", "--prefix", "x_")
    assert code == 0 and "CREATE TABLE x_checkpoints" in out


def test_torque_event_definitions_for_the_sandbox():
    from etl.app.tool_commands import _parse_torque_events

    parsed = _parse_torque_events(("purchase:amount=number,game=string", "login:"))
    assert parsed == {"purchase": {"amount": "number", "game": "string"}, "login": {}}
    code, out = invoke("sandbox", "--torque-event", "purchase:amount=int")
    assert code == 2 and "the type must be string, number or boolean" in out


def _main(code: str) -> subprocess.CompletedProcess[str]:
    """``etl`` as its console script calls it (``main``), after ``code``, in a fresh process."""
    script = f"import sys\n{code}\nfrom etl.app.cli import main\nmain()\n"
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow
def test_the_quick_exit_keeps_what_a_normal_exit_does():
    """`main` leaves without the interpreter's teardown, yet every line is written, the exit
    code kept, and atexit handlers (temporary directories, ``weakref.finalize``) run."""
    done = _main(
        "import atexit, tempfile\n"
        "kept = tempfile.TemporaryDirectory()\n"
        "atexit.register(lambda: print('atexit ran', flush=True))\n"
        "sys.argv = ['etl', 'run', '-c', '/absent.yaml']"
    )
    assert done.returncode == 1
    assert done.stderr.strip().endswith("cannot read the pipeline file: No such file or directory")
    assert done.stdout == "atexit ran\n"
    version = _main("sys.argv = ['etl', '--version']")
    assert (version.returncode, version.stdout.startswith("etl, version ")) == (0, True)


@pytest.mark.slow
def test_the_exit_waits_for_a_thread_still_at_work(tmp_path: Path):
    marker = tmp_path / "written"
    done = _main(
        "import threading, time\n"
        f"def late(): time.sleep(0.3); open({str(marker)!r}, 'w').write('done')\n"
        "threading.Thread(target=late).start()\n"
        "sys.argv = ['etl', '--version']"
    )
    assert done.returncode == 0
    assert marker.read_text() == "done"
