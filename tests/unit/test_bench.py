"""`etl bench`: a port another server listens on is refused (it would measure that server);
the parts that measure a real warehouse ask for one."""

from __future__ import annotations

import socket

import pytest

from etl.app.bench import Sandbox


def test_a_port_in_use_is_refused():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"port {port} is in use"):
            Sandbox(time_scale=1, port=port)


def test_the_parts_that_measure_a_real_warehouse_ask_for_it():
    from click.testing import CliRunner

    from etl.app.cli import cli

    for part in ("hosts", "scale"):
        result = CliRunner().invoke(cli, ["bench", "--only", part])
        assert result.exit_code == 2
        assert f"etl bench --only {part} measures a real warehouse" in result.output
