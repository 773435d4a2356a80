"""`etl bench` refuses a port another server listens on (it would measure that server)."""

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
