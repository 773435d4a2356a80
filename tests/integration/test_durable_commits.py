"""On PostgreSQL a run's bookkeeping commits without waiting for the disk (1.2 ms a commit,
six a partition), except what must be on disk before a request leaves: the batch marked as
sent, and the requests whose fate is unknown. Lost in a crash of the server, a relaxed commit
is what a run killed just before it leaves (etl.database.relax_commit); the durable commit of
the next batch flushes it too."""

from __future__ import annotations

from collections import defaultdict

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.integration.scenario import assert_exactly_once, run, setup

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("warehouse", ["postgresql"], indirect=True)
def test_only_what_a_request_needs_waits_for_the_disk(tmp_path, warehouse, sandbox, clock):
    path = setup(tmp_path, warehouse, sandbox, rows=600)
    sandbox.sandbox.set_faults("fuul", lose_rate=0.3)  # stored, unanswered: fate unknown
    current: dict[int, list[str]] = defaultdict(list)
    transactions: list[list[str]] = []

    def statement(conn, cursor, text, params, context, executemany):
        current[id(conn)].append(" ".join(text.split()))

    def commit(conn):
        transactions.append(current.pop(id(conn), []))

    sa.event.listen(Engine, "before_cursor_execute", statement)
    sa.event.listen(Engine, "commit", commit)
    try:
        report = run(path, clock)
    finally:
        sa.event.remove(Engine, "before_cursor_execute", statement)
        sa.event.remove(Engine, "commit", commit)
    assert report.ok
    assert report.destinations[0].total("retries") > 0  # an unknown fate was noted

    def relaxed(t: list[str]) -> bool:
        return any("synchronous_commit" in s for s in t)

    before_a_request = [
        t
        for t in transactions
        if any(
            s.startswith(f"INSERT INTO {warehouse.schema}.etl_batches")
            or (s.startswith(f"UPDATE {warehouse.schema}.etl_batches") and "unknown=" in s)
            for s in t
        )
    ]
    assert before_a_request and not any(relaxed(t) for t in before_a_request)
    writes = [
        t for t in transactions if any(s.split()[0] in ("INSERT", "UPDATE", "DELETE") for s in t)
    ]
    assert sum(map(relaxed, writes)) > len(writes) // 2  # leases, checkpoints, answers
    assert_exactly_once(path, warehouse, sandbox)
