"""A pooled PostgreSQL connection is asked whether the server is still there only after it sat
idle (etl.database.make_engine): a connection the server dropped meanwhile is replaced, and one
handed back a moment ago costs no round trip."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

import etl.database
from etl.database import make_engine
from tests.conftest import POSTGRES_URL, require_postgres

pytestmark = pytest.mark.postgres


def test_a_connection_is_pinged_after_idling_and_replaced_when_gone(monkeypatch):
    require_postgres()
    engine = make_engine(POSTGRES_URL)
    pings: list[int] = []
    ping = engine.dialect.do_ping
    engine.dialect.do_ping = lambda conn: pings.append(1) or ping(conn)  # type: ignore[method-assign]
    pid = sa.text("SELECT pg_backend_pid()")
    try:
        with engine.connect() as conn:  # a new connection: pinged
            first = conn.execute(pid).scalar()
        with engine.connect() as conn:  # handed back a moment ago: used as it is
            assert conn.execute(pid).scalar() == first
        assert len(pings) == 1

        killer = make_engine(POSTGRES_URL)
        with killer.connect() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": first})
        killer.dispose()
        monkeypatch.setattr(etl.database, "PING_AFTER_IDLE_SECONDS", 0.0)  # it sat long enough
        with engine.connect() as conn:  # asked, found gone, replaced
            assert conn.execute(pid).scalar() != first
        assert len(pings) == 3  # the gone connection's ping, and the new one's
    finally:
        engine.dispose()
