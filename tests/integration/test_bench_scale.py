"""`etl bench --warehouse`: the rows it generates in PostgreSQL hold the same instants in the
timestamp column and in the mixed text column, which the product reads as the same days (so
that the two backfills it compares do the same work), in PostgreSQL and DuckDB; the scale part
needs a warehouse."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from etl.app.bench_scale import actions, generate, pipeline_file
from etl.app.cli import cli
from etl.loader import load_pipeline
from etl.source import Source
from tests.conftest import Warehouse, warehouse_of


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres), "duckdb"])
def scratch(request, tmp_path):
    """A warehouse and a schema in it, as `etl bench --warehouse` makes one."""
    if request.param == "duckdb":
        yield Warehouse("duckdb", f"duckdb:///{tmp_path / 'scale.duckdb'}", "etl_bench_t")
        return
    with warehouse_of("postgresql", tmp_path) as warehouse:
        yield warehouse


def test_the_text_column_holds_the_timestamp_columns_days(tmp_path, scratch):
    warehouse = scratch
    engine = warehouse.engine()
    with engine.begin() as conn:
        conn.execute(sa.schema.CreateSchema(warehouse.schema))
    table = actions(sa.MetaData(), warehouse.schema)
    end = datetime.now(UTC).date()
    generate(engine, table, 5_000, 40, end, lambda _: None)
    with engine.connect() as conn:
        forms = conn.execute(
            sa.select(
                sa.func.count().filter(table.c.occurred_text.like("%Z")),
                sa.func.count().filter(table.c.occurred_text.like("%+02:00")),
                sa.func.count().filter(sa.func.length(table.c.occurred_text) == 10),
                sa.func.count().filter(sa.func.length(table.c.occurred_text) == 13),
            )
        ).one()
    engine.dispose()  # a DuckDB file admits one engine at a time
    assert list(forms) == [1250] * 4  # ISO in UTC, ISO at +02:00, epoch s, epoch ms
    first = end - timedelta(days=40)
    days = [first + timedelta(days=n) for n in range(40)]

    def per_day(text: bool) -> dict:
        path = pipeline_file(
            tmp_path / f"{text}.yaml", warehouse.url, warehouse.schema, "user_actions", first,
            "http://127.0.0.1:9", "etl_", text,
        )  # fmt: skip
        source = Source(load_pipeline(path))
        try:
            counts = source.count_by_day(days, ["action"])
            one_by_one = {d: source.count_partition(d) for d in days[:3]}
        finally:
            source.engine.dispose()
        assert {d: sum(n for _, n in counts[d]) for d in days[:3]} == one_by_one
        return {d: sorted(groups) for d, groups in counts.items()}

    stamped = per_day(text=False)
    assert sum(n for groups in stamped.values() for _, n in groups) >= 4_900  # a few at the ends
    assert per_day(text=True) == stamped


def test_the_scale_part_asks_for_a_warehouse():
    result = CliRunner().invoke(cli, ["bench", "--only", "scale"])
    assert result.exit_code == 2
    assert "--warehouse URL" in result.output
