"""What a day costs the databases (SQLite, PostgreSQL): a new day read by one query is not
counted a second time, and on PostgreSQL a day's bookkeeping and reading run without a
transaction around each statement (a BEGIN and a COMMIT or ROLLBACK: two round trips more)."""

import re
from collections import Counter

import pytest
import sqlalchemy as sa

from etl.source import Source
from tests.conftest import DESTINATION, write_pipeline
from tests.integration.scenario import END, FIRST, assert_exactly_once, run, store_of


def counting(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The days the run counts in the warehouse (None: the undated partition)."""
    counted: list[object] = []
    count = Source.count_partition
    monkeypatch.setattr(
        Source, "count_partition", lambda self, day: counted.append(day) or count(self, day)
    )
    return counted


@pytest.mark.parametrize("chunk_size", [500, 40])
def test_a_new_day_read_by_one_query_is_not_counted_again(
    tmp_path, warehouse, sandbox, clock, monkeypatch, chunk_size
):
    """Days of about 60 rows: in pages of 500 each is read by one query, whose rows are the
    warehouse's count of the day at that moment; in pages of 40 a day takes two queries, and a
    row could come between them: each day is counted after it is sent."""
    warehouse.fill(240, days=4, end=END)
    counted = counting(monkeypatch)
    source = {"chunk_size": chunk_size}
    path = write_pipeline(
        tmp_path / "p.yaml", warehouse, sandbox.url, FIRST.isoformat(), None, source
    )
    assert run(path, clock).ok
    days = sorted(day for day in counted if day is not None)
    cps = store_of(path).checkpoints_of(DESTINATION)
    big = [cp for cp in cps if cp.partition != "undated" and cp.rows_read >= chunk_size]
    assert len(days) == len(big)
    if chunk_size == 40:
        assert len(days) == 4  # every day is over a page
    assert_exactly_once(path, warehouse, sandbox)


def test_a_row_added_to_a_day_read_by_one_query_is_found_by_the_next_run(
    tmp_path, warehouse, sandbox, clock, monkeypatch
):
    """Not counted after its read, a day that gains a row is re-checked by the next run's
    lookback, which counts it, sends the row and balances the day."""
    warehouse.fill(240, days=4, end=END)
    counted = counting(monkeypatch)
    path = write_pipeline(tmp_path / "p.yaml", warehouse, sandbox.url, FIRST.isoformat())
    assert run(path, clock).ok
    assert [day for day in counted if day is not None] == []
    engine = warehouse.engine()
    table = sa.Table("user_actions", sa.MetaData(), schema=warehouse.schema, autoload_with=engine)
    with engine.begin() as conn:
        row = dict(conn.execute(sa.select(table).order_by(table.c.id.desc())).mappings().first())
        row["id"] += 1
        row["action"] = "game_played"
        conn.execute(sa.insert(table), row)
    engine.dispose()
    day = str(row["occurred_at"])[:10]
    before = {cp.partition: cp for cp in store_of(path).checkpoints_of(DESTINATION)}
    assert run(path, clock).ok
    after = {cp.partition: cp for cp in store_of(path).checkpoints_of(DESTINATION)}
    assert after[day].rows_read == before[day].rows_read + 1 and after[day].balanced
    assert_exactly_once(path, warehouse, sandbox)


@pytest.mark.postgres
@pytest.mark.parametrize("warehouse", ["postgresql"], indirect=True)
def test_a_days_statements_on_postgresql_need_no_transaction(
    tmp_path, warehouse, sandbox, clock, monkeypatch
):
    """A new day on PostgreSQL costs five statements, each committing as it runs (autocommit),
    and no count: its lease taken, its checkpoint opened, its rows read, its checkpoint read,
    its status recorded with the lease given back (a DELETE in the UPDATE's WITH)."""
    warehouse.fill(240, days=4, end=END)
    counting(monkeypatch)
    path = write_pipeline(tmp_path / "p.yaml", warehouse, sandbox.url, FIRST.isoformat())
    per_day: Counter[tuple[str, bool]] = Counter()

    def seen(conn, _cursor, statement, _params, _context, _many):
        found = re.search(r"(?:FROM|INTO|UPDATE)\s+(?:\w+\.)?(\w+)", statement)
        kind = f"{statement.split()[0]} {found.group(1) if found else ''}".lower()
        per_day[(kind, bool(conn.connection.dbapi_connection.autocommit))] += 1

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", seen)
    try:
        assert run(path, clock).ok
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", seen)
    days = 5  # four and the undated rows: each once
    for kind in ("insert etl_leases", "insert etl_checkpoints", "with etl_leases"):
        assert (per_day[(kind, True)], per_day[(kind, False)]) == (days, 0), kind
    assert per_day[("select etl_checkpoints", True)] == days
    assert per_day[("delete etl_leases", True)] + per_day[("update etl_checkpoints", True)] == 0
    assert per_day[("select user_actions", True)] >= days  # its rows, and the run's counts
    assert per_day[("select user_actions", False)] == 0
    assert per_day[("select etl_leases", True)] + per_day[("select etl_leases", False)] == 0
    store = store_of(path)
    with store.engine.connect() as conn:  # every lease given back
        assert conn.execute(sa.select(store.tables.leases)).all() == []
    assert_exactly_once(path, warehouse, sandbox)
