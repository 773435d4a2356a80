"""On PostgreSQL a run's bookkeeping commits without waiting for the disk (1.2 ms a commit,
six a partition), except what must be on disk before a request leaves: the batch marked as
sent, and the requests whose fate is unknown. Lost in a crash of the server, a relaxed commit
is what a run killed just before it leaves (etl.database.relaxed_engine); the durable commit of
the next batch flushes it too."""

from __future__ import annotations

from collections import defaultdict

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from etl.database import RELAXED, make_engine, relaxed_engine
from tests.conftest import POSTGRES_URL, require_postgres
from tests.integration.scenario import assert_exactly_once, run, setup

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("warehouse", ["postgresql"], indirect=True)
def test_only_what_a_request_needs_waits_for_the_disk(tmp_path, warehouse, sandbox, clock):
    path = setup(tmp_path, warehouse, sandbox, rows=600)
    sandbox.sandbox.set_faults("fuul", lose_rate=0.3)  # stored, unanswered: fate unknown
    current: dict[int, list[str]] = defaultdict(list)
    transactions: list[tuple[list[str], bool]] = []  # statements, relaxed

    def statement(conn, cursor, text, params, context, executemany):
        current[id(conn)].append(" ".join(text.split()))

    def commit(conn):
        transactions.append((current.pop(id(conn), []), bool(conn.info.get(RELAXED))))

    sa.event.listen(Engine, "before_cursor_execute", statement)
    sa.event.listen(Engine, "commit", commit)
    try:
        report = run(path, clock)
    finally:
        sa.event.remove(Engine, "before_cursor_execute", statement)
        sa.event.remove(Engine, "commit", commit)
    assert report.ok
    assert report.destinations[0].total("retries") > 0  # an unknown fate was noted

    before_a_request = [
        (t, relaxed)
        for t, relaxed in transactions
        if any(
            s.startswith(f"INSERT INTO {warehouse.schema}.etl_batches")
            or (s.startswith(f"UPDATE {warehouse.schema}.etl_batches") and "unknown=" in s)
            for s in t
        )
    ]
    assert before_a_request and not any(relaxed for _, relaxed in before_a_request)
    writes = [
        relaxed
        for t, relaxed in transactions
        if any(s.split()[0] in ("INSERT", "UPDATE", "DELETE") for s in t)
    ]
    assert sum(writes) > len(writes) // 2  # leases, checkpoints, answers
    assert_exactly_once(path, warehouse, sandbox)


def test_a_relaxed_session_commits_without_waiting_for_the_disk():
    require_postgres()
    engine = make_engine(POSTGRES_URL)
    relaxed = relaxed_engine(engine)
    try:
        show = sa.text("SHOW synchronous_commit")
        with relaxed.connect() as conn:
            assert conn.execute(show).scalar() == "off" and conn.info[RELAXED]
        with engine.connect() as conn:
            assert conn.execute(show).scalar() == "on" and RELAXED not in conn.info
    finally:
        relaxed.dispose()
        engine.dispose()
