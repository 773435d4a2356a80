"""A day's read on a text column parses each candidate row once, and `etl plan` says which
index would let a day's read cost that day's rows (and stops saying it once it exists)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from etl.config import SourceConfig
from etl.indexes import index_advice
from etl.loader import load_pipeline
from etl.source import Source
from tests.conftest import Warehouse, write_pipeline

DAY = date(2024, 3, 2)
MAPPING = {
    "mapping": {"event_name": {"column": "action"}, "user": {"column": "user_id", "type": "email"}}
}


def actions(warehouse: Warehouse, kind: str, collation: str | None = None) -> None:
    """A table of a few rows, its timestamp as ``kind`` (text or a timestamp) in ``collation``
    (default: the database's), no index."""
    engine = warehouse.engine()
    ts = sa.Text(collation=collation) if kind == "text" else sa.DateTime()
    table = sa.Table(
        "user_actions",
        sa.MetaData(schema=warehouse.schema),
        sa.Column("id", sa.Integer),  # no primary key: nothing indexed
        sa.Column("occurred_at", ts),
        sa.Column("user_id", sa.Text),
        sa.Column("action", sa.Text),
    )
    values = ["2024-03-02T10:00:00Z", "2024-03-01T23:30:00-02:00", "1709377200", "garbage"]
    with engine.begin() as conn:
        if warehouse.schema:
            conn.execute(sa.schema.CreateSchema(warehouse.schema, if_not_exists=True))
        table.create(conn)
        rows = [
            {"id": i, "user_id": "u", "action": "a", "occurred_at": v if kind == "text" else None}
            for i, v in enumerate(values)
        ]
        conn.execute(sa.insert(table), rows)
    engine.dispose()


def source_config(tmp_path, warehouse: Warehouse, kind: str) -> SourceConfig:
    timestamp = {"timestamp_type": "text"} if kind == "text" else {}
    path = write_pipeline(
        tmp_path / "p.yaml", warehouse, "http://127.0.0.1:9", "2024-03-01", MAPPING, timestamp
    )
    return load_pipeline(path).source


@pytest.mark.parametrize("kind", ["text", "datetime"])
def test_plan_names_the_index_that_would_serve_the_days(tmp_path, warehouse, kind):
    actions(warehouse, kind)
    source = source_config(tmp_path, warehouse, kind)
    engine = warehouse.engine()
    advice = index_advice(source, engine)
    assert advice is not None and advice.startswith("CREATE INDEX")
    if warehouse.kind == "postgresql":
        assert "CONCURRENTLY" in advice
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(advice)  # what the warehouse's owners would run
    assert index_advice(source, engine) is None
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("warehouse", ["postgresql"], indirect=True)
@pytest.mark.parametrize("collation", ["C", "en-x-icu"])
def test_a_text_column_is_compared_bytewise_whatever_its_collation(tmp_path, warehouse, collation):
    """A column that sorts as its bytes is served by a plain index on it; one in a linguistic
    collation is compared COLLATE "C", and only an index on that expression serves it. Either
    way a day holds the same rows."""
    actions(warehouse, "text", collation)
    config = source_config(tmp_path, warehouse, "text")
    engine = warehouse.engine()
    advice = index_advice(config, engine)
    assert advice is not None
    assert ('COLLATE "C"' in advice) == (collation != "C"), advice
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(advice)
    assert index_advice(config, engine) is None
    engine.dispose()
    source = Source(load_pipeline(tmp_path / "p.yaml"))
    assert source.count_partition(DAY) == 3
    source.engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("warehouse", ["postgresql"], indirect=True)
def test_a_text_day_parses_each_row_once(tmp_path, warehouse):
    """PostgreSQL would pull the parsing subquery up into the conditions, matching the patterns
    again for every use of a part: the plan keeps it a subquery, evaluated once a row."""
    actions(warehouse, "text")
    config = load_pipeline(
        write_pipeline(
            tmp_path / "p.yaml",
            warehouse,
            "http://127.0.0.1:9",
            "2024-03-01",
            MAPPING,
            source={"timestamp_type": "text"},
        )
    )
    source = Source(config)
    assert source.count_partition(DAY) == 3  # the three forms of 2024-03-02, not the garbage
    stmt = sa.select(sa.func.count()).select_from(source.from_).where(source.partition(DAY))
    literal = stmt.compile(source.engine, compile_kwargs={"literal_binds": True})
    with source.engine.connect() as conn:  # our own statement, its values inlined
        plan = [r[0] for r in conn.exec_driver_sql("EXPLAIN " + str(literal))]
    source.engine.dispose()
    assert any("Subquery Scan on etl_ts" in line for line in plan), plan
    assert sum(line.count("regexp_match") for line in plan) <= 2, plan


@pytest.mark.postgres
@pytest.mark.parametrize("warehouse", ["postgresql"], indirect=True)
def test_a_text_day_is_parsed_once_whatever_its_pages(tmp_path, warehouse):
    """A page of a mixed text day would parse and sort the whole day again: the day is one
    query, streamed in pages of chunk_size rows, in (timestamp, key) order."""
    engine = warehouse.engine()
    table = sa.Table(
        "user_actions",
        sa.MetaData(schema=warehouse.schema),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("occurred_at", sa.Text),
        sa.Column("user_id", sa.Text),
        sa.Column("action", sa.Text),
    )
    values = [f"2024-03-02T{h:02d}:{m:02d}:00Z" for h in range(5) for m in (0, 30)]
    values += [str(1709337600 + 3600 * h + 60) for h in range(10)]  # epoch seconds that day
    with engine.begin() as conn:
        conn.execute(sa.schema.CreateSchema(warehouse.schema, if_not_exists=True))
        table.create(conn)
        rows = [
            {"id": i, "occurred_at": v, "user_id": "u", "action": "a"} for i, v in enumerate(values)
        ]
        conn.execute(sa.insert(table), rows)
    engine.dispose()
    path = write_pipeline(
        tmp_path / "p.yaml", warehouse, "http://127.0.0.1:9", "2024-03-01", MAPPING,
        {"timestamp_type": "text", "chunk_size": 7},
    )  # fmt: skip
    source = Source(load_pipeline(path))
    selects: list[str] = []
    sa.event.listen(
        source.engine, "before_cursor_execute", lambda c, cur, stmt, *a: selects.append(stmt)
    )
    pages = list(source.read_tuples(DAY, ["user_id"]))
    source.engine.dispose()
    assert [len(rows) for _, rows in pages] == [7, 7, 6]
    assert len([s for s in selects if s.lstrip().upper().startswith("SELECT")]) == 1
    read = [tuple(r[:2]) for _, rows in pages for r in rows]
    assert read == sorted(read) and len(set(read)) == 20


@pytest.mark.postgres
@pytest.mark.parametrize("warehouse", ["postgresql"], indirect=True)
def test_days_are_counted_by_the_index_where_one_starts_with_the_column(tmp_path, warehouse):
    """On PostgreSQL a table whose index starts with the timestamp column has its days counted
    each by its range of the index (one query): the same numbers, by day and by column, as a
    count of each day, empty days included; without such an index, by one grouping of the
    range."""
    warehouse.fill(600, days=4, end=date(2024, 3, 5))
    path = write_pipeline(tmp_path / "p.yaml", warehouse, "http://127.0.0.1:9", "2024-03-01")
    source = Source(load_pipeline(path))
    days = [date(2024, 2, 28) + timedelta(days=n) for n in range(8)]  # some without rows
    assert source._days_by_index
    for columns in ([], ["action"]):
        cols = [source.relation.c[c] for c in columns]
        each = {}
        with source.engine.connect() as conn:
            for day in days:
                rows = conn.execute(source._grouped(source.partition(day), cols))
                each[day] = sorted((tuple(r[:-1]), int(r[-1])) for r in rows if r[-1])
        counted = source.count_by_day(days, columns)
        assert {d: sorted(v) for d, v in counted.items()} == each
        assert sum(n for groups in each.values() for _, n in groups) > 0
    engine = warehouse.engine()
    with engine.begin() as conn:  # the index gone: grouped, the same numbers
        table = sa.Table("user_actions", sa.MetaData(), schema=warehouse.schema, autoload_with=conn)
        for index in table.indexes:
            index.drop(conn)
    engine.dispose()
    again = Source(load_pipeline(path))
    assert not again._days_by_index
    assert again.count_days(days) == source.count_days(days)
    source.engine.dispose()
    again.engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("warehouse", ["postgresql"], indirect=True)
def test_a_query_source_is_counted_by_one_grouping(tmp_path, warehouse):
    """A source query's tables only its author knows: its days are never counted a range a
    day (without an index, each would read the whole query)."""
    warehouse.fill(100, days=4, end=date(2024, 3, 5))
    table = sa.table("user_actions", schema=warehouse.schema)
    query = sa.select(sa.literal_column("*")).select_from(table)
    (tmp_path / "actions.sql").write_text(str(query.compile(dialect=postgresql.dialect())))
    path = write_pipeline(tmp_path / "p.yaml", warehouse, "http://127.0.0.1:9", "2024-03-01")
    path.write_text(path.read_text().replace("table: user_actions", "query: actions.sql"))
    source = Source(load_pipeline(path))
    assert not source._days_by_index
    assert sum(source.count_days([date(2024, 3, 1), date(2024, 3, 2)]).values()) > 0
    source.engine.dispose()
