"""Every row of a messy warehouse accounted for, per UTC day, on SQLite, PostgreSQL and DuckDB:
mixed text timestamps, NULL and garbage ones, rows before the start and after the range."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from etl.app.cli import cli
from etl.errors import ConfigError, SourceError
from etl.events import event_id_for
from etl.loader import load_pipeline
from etl.plan import plan_backfill
from etl.runner import run_backfill
from etl.source import Source
from etl.statuses import Mode
from tests.conftest import DESTINATION, POSTGRES_URL, Warehouse, require_postgres, warehouse_of
from tests.integration import messy
from tests.integration.scenario import store_of


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres), "duckdb"])
def any_warehouse(request, tmp_path):
    if request.param == "duckdb":
        yield Warehouse("duckdb", f"duckdb:///{tmp_path / 'warehouse.duckdb'}", None)
        return
    if request.param == "postgresql":
        require_postgres()
    with warehouse_of(request.param, tmp_path) as found:
        yield found


def pipeline(tmp_path: Path, warehouse: Warehouse, sandbox_url: str, **source) -> Path:
    doc = {
        "start_date": messy.START.isoformat(),
        "source": {
            "url": warehouse.url,
            "table": "user_actions",
            "timestamp_type": "text",
            "chunk_size": 100,
            **source,
        },
        "destinations": {
            DESTINATION: {
                "vendor": "fuul",
                "base_url": sandbox_url + "/fuul/api/v1",
                "credentials": {"api_key": "${FUUL_API_KEY}"},
                "max_in_flight": 1,
                "mapping": messy.MAPPING,
            }
        },
    }
    if warehouse.schema:
        doc["source"]["schema"] = warehouse.schema
        doc["state"] = {"schema": warehouse.schema}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_range(path: Path, clock, **kwargs):
    return run_backfill(
        load_pipeline(path), first_day=messy.START, last_day=messy.LAST, timing=clock.timing(),
        **kwargs,
    )  # fmt: skip


def test_every_row_lands_in_its_utc_day(tmp_path, any_warehouse, sandbox, clock):
    rows = messy.messy_rows()
    messy.create_messy_table(any_warehouse, rows)
    path = pipeline(tmp_path, any_warehouse, sandbox.url)
    report = run_range(path, clock)
    assert report.ok, [(p.partition, p.error) for d in report.destinations for p in d.failed]
    expected = messy.rows_per_day(rows)
    checkpoints = {cp.partition: cp for cp in store_of(path).checkpoints_of(DESTINATION)}
    for day, count in expected.items():
        if day is not None and messy.START.isoformat() <= day <= messy.LAST.isoformat():
            cp = checkpoints[day]
            assert (cp.rows_read, cp.status) == (count, "complete"), day
            assert cp.balanced
    undated = checkpoints["undated"]
    assert undated.rows_read == undated.dead_letters == messy.NULLS + len(messy.GARBAGE)
    outside = report.outside
    assert (outside.no_timestamp, outside.unreadable) == (messy.NULLS, len(messy.GARBAGE))
    assert (outside.before_start, outside.after_range) == (messy.BEFORE, messy.AFTER)
    # the dead letters say why, quoting the value
    reasons = [d["reason"] for d in store_of(path).dead_letters(DESTINATION, "undated")]
    assert sum("timestamp is missing" in r for r in reasons) == messy.NULLS
    assert any("'n/a'" in r for r in reasons) and any("2024-13-01" in r for r in reasons)
    # every event carries a timestamp of the day it was filed under
    log = store_of(path).log
    events = sandbox.sandbox.records["fuul"]
    assert events
    for event in events[:100]:
        day = datetime.fromtimestamp(event["timestamp"] / 1000, UTC).date().isoformat()
        source_key = next(
            k
            for k in map(str, range(1, len(rows) + 1))
            if event_id_for(DESTINATION, k) == event["dedup_id"]
        )
        entries = log.history(DESTINATION, source_key)
        assert [e["partition"] for e in entries] == [day]


def test_a_plan_counted_in_the_warehouse_agrees_with_one_read_row_by_row(
    tmp_path, any_warehouse, sandbox
):
    """Above EXACT_ROWS a plan counts each new day's rows in the warehouse, grouped by day and
    by the filter's columns: the same days, rows, filtered rows and near misses as mapping
    every row, its rows to send the mapped ones plus those the vendor's rules would refuse."""
    messy.create_messy_table(any_warehouse, messy.messy_rows())
    config = load_pipeline(pipeline(tmp_path, any_warehouse, sandbox.url))
    span = {"first_day": messy.START, "last_day": messy.LAST}
    [mapped] = plan_backfill(config, rows=True, **span).destinations
    [counted] = plan_backfill(config, rows=False, **span).destinations
    assert mapped.total("filtered") > 0 and mapped.total("near_misses") > 0
    assert mapped.unchecked == 0
    dated = [p for p in counted.partitions if p.mode is Mode.NEW and p.partition != "undated"]
    assert counted.unchecked == sum(p.to_send for p in dated) > 0
    assert counted.near_miss == mapped.near_miss
    for m, c in zip(mapped.partitions, counted.partitions, strict=True):
        same = ("partition", "mode", "rows", "filtered", "near_misses")
        assert [getattr(c, a) for a in same] == [getattr(m, a) for a in same]
        if m.partition == "undated":  # no day to count it by: read row by row in both
            assert (c.to_send, c.rejected) == (m.to_send, m.rejected)
        else:
            assert c.to_send == m.to_send + sum(m.rejected.values()), m.partition
    assert counted.total("rows") == mapped.total("rows") > 0
    assert sandbox.sandbox.stats == {}


def test_the_census_counts_the_range_and_every_row_outside_it(tmp_path, any_warehouse, sandbox):
    """What the Dagster observation reports: the range's rows and those outside it by kind (on
    a text column, in one pass over the table)."""
    rows = messy.messy_rows()
    messy.create_messy_table(any_warehouse, rows)
    source = Source(load_pipeline(pipeline(tmp_path, any_warehouse, sandbox.url)))
    try:
        inside, outside = source.census(messy.LAST)
        assert outside == source.outside(messy.LAST)
        assert inside == source.count(messy.START, messy.LAST)
        # what a run sizes its reading by: a few rows beside the days, parsing nothing
        estimate = source.count_spans([messy.START, messy.LAST], estimate=True)
        assert inside <= source.count_spans(messy.days(), estimate=True) <= len(rows)
        assert estimate <= source.count_spans(messy.days(), estimate=True)
    finally:
        source.engine.dispose()
    expected = messy.rows_per_day(rows)
    first, last = messy.START.isoformat(), messy.LAST.isoformat()
    assert inside == sum(n for d, n in expected.items() if d is not None and first <= d <= last)
    assert (outside.no_timestamp, outside.unreadable) == (messy.NULLS, len(messy.GARBAGE))
    assert (outside.before_start, outside.after_range) == (messy.BEFORE, messy.AFTER)


def test_plan_run_and_status_count_the_rows_outside_every_day(tmp_path, sandbox, clock):
    with warehouse_of("sqlite", tmp_path) as warehouse:
        rows = messy.messy_rows()
        messy.create_messy_table(warehouse, rows)
        path = pipeline(tmp_path, warehouse, sandbox.url)
        span = ["--from", messy.START.isoformat(), "--to", messy.LAST.isoformat()]
        plan = CliRunner().invoke(cli, ["plan", "-c", str(path), *span])
        assert plan.exit_code == 0, plan.output
        for line in (
            f"{messy.NULLS} without a timestamp",
            f"{len(messy.GARBAGE)} with a timestamp that is not one",
            f"{messy.BEFORE} before start_date {messy.START}",
            f"{messy.AFTER} after {messy.LAST}",
        ):
            assert line in plan.output
        spaces = sum(1 for r in rows if r["action"] == " game_played ")
        assert (
            f"NOTE: {spaces} rows filtered out by mapping.filter.action only because of case "
            "or spaces" in plan.output
        )
        report = run_range(path, clock)
        assert report.ok
        assert report.destinations[0].near_misses == (
            spaces,
            "mapping.filter.action: ' game_played '",
        )
        status = CliRunner().invoke(cli, ["status", "-c", str(path)])
        assert status.exit_code == 0
        assert f"NOTE: {spaces} rows filtered out by mapping.filter.action" in status.output
        assert f"{messy.NULLS + len(messy.GARBAGE)} rows without a readable timestamp" in (
            status.output
        )
        assert f"{messy.NULLS} without a timestamp" in status.output
        # 'Game_Played' is game_played to the vendor: kept by the filter, sent lowercased
        names = {e["name"] for e in sandbox.sandbox.records["fuul"]}
        assert names == {"game_played", "purchase"}
        played = sum(1 for r in rows if r["action"] in ("game_played", "Game_Played"))
        assert played > sum(1 for r in rows if r["action"] == "game_played")


def test_a_range_that_ends_today_is_refused(tmp_path, sandbox):
    with warehouse_of("sqlite", tmp_path) as warehouse:
        messy.create_messy_table(warehouse, messy.messy_rows(50))
        path = pipeline(tmp_path, warehouse, sandbox.url)
        today = datetime.now(UTC).date()
        result = CliRunner().invoke(cli, ["run", "-c", str(path), "--to", today.isoformat()])
        assert result.exit_code == 1
        assert f"the range ends on {today}" in result.output
        assert "--include-today" in result.output


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            {"timestamp_type": "datetime", "timestamp_column": "id"},
            "source.timestamp_type: datetime does not fit column id of type INTEGER: "
            "use epoch_s or epoch_ms",
        ),
        ({"key_column": "uid"}, "source.key_column: column 'uid' not found"),
        ({"timestamp_column": "at"}, "source.timestamp_column: column 'at' not found"),
    ],
)
def test_a_wrong_source_setting_is_blamed_on_its_key(tmp_path, sandbox, clock, setting, message):
    with warehouse_of("sqlite", tmp_path) as warehouse:
        messy.create_messy_table(warehouse, messy.messy_rows(20))
        path = pipeline(tmp_path, warehouse, sandbox.url, **setting)
        with pytest.raises(SourceError, match=message.replace("(", r"\(")):
            run_range(path, clock)


def test_an_impossible_start_date_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "start_date: 2024-13-01\nsource: {url: 'sqlite://', table: t}\n"
        "destinations: {d: {vendor: fuul, credentials: {api_key: '${K}'}, mapping: "
        "{event_name: e, user: {column: w, type: evm_address}}}}\n"
    )
    with pytest.raises(ConfigError, match=r"p\.yaml: start_date: .*month"):
        load_pipeline(path)


@pytest.mark.postgres
def test_postgres_reads_text_in_the_source_zone(tmp_path, sandbox, clock):
    """Naive text in another zone than UTC: the warehouse's AT TIME ZONE and the mapping's
    zone agree, also across a daylight-saving change."""
    require_postgres()
    schema = f"etl_tz_{uuid.uuid4().hex[:8]}"
    warehouse = Warehouse("postgresql", POSTGRES_URL, schema)
    rows = [
        {"occurred_at": text, "action": "game_played"}
        for text in [
            "2024-03-09 23:30:00",  # New York: 04:30 UTC on the 10th
            "2024-03-10 02:30:00",  # the gap: read as 07:30 UTC
            "2024-03-10 21:00:00",  # 01:00 UTC on the 11th
            "2024-03-10 18:59:59",
        ]
    ]
    for key, row in enumerate(rows, start=1):
        row.update(id=key, wallet=messy.EVM, wallet_type="evm_address", game_id="g")
    try:
        messy.create_messy_table(warehouse, rows)
        path = pipeline(tmp_path, warehouse, sandbox.url, timezone="America/New_York")
        report = run_backfill(
            load_pipeline(path), first_day=messy.START, last_day=messy.START + timedelta(days=10),
            timing=clock.timing(),
        )  # fmt: skip
        assert report.ok
        read = {
            cp.partition: cp.rows_read
            for cp in store_of(path).checkpoints_of(DESTINATION)
            if cp.rows_read
        }
        assert read == {"2024-03-10": 3, "2024-03-11": 1}
    finally:
        import sqlalchemy as sa

        engine = sa.create_engine(POSTGRES_URL)
        with engine.begin() as conn:
            conn.execute(sa.schema.DropSchema(schema, cascade=True, if_exists=True))
        engine.dispose()


@pytest.mark.postgres
def test_a_new_text_day_is_parsed_once_and_a_late_row_is_still_found(
    tmp_path, sandbox, clock, monkeypatch
):
    """On PostgreSQL a new day of a text column is read by one query over the whole day: the
    rows it returns are the warehouse's count of the day, which is not parsed a second time to
    count it. A day re-checked for a row that came late is counted."""
    require_postgres()
    counted: list[object] = []
    count = Source.count_partition
    monkeypatch.setattr(
        Source, "count_partition", lambda self, day: counted.append(day) or count(self, day)
    )
    with warehouse_of("postgresql", tmp_path) as warehouse:
        rows = messy.messy_rows()
        messy.create_messy_table(warehouse, rows)
        path = pipeline(tmp_path, warehouse, sandbox.url)
        assert run_range(path, clock).ok
        assert counted == []  # every day new, each read at once
        late_day = messy.START + timedelta(days=2)
        late = {**rows[0], "id": len(rows) + 1, "action": "game_played"}
        late["occurred_at"] = f"{late_day.isoformat()}T12:00:00Z"
        engine = warehouse.engine()
        with engine.begin() as conn:
            conn.execute(
                sa.insert(sa.table("user_actions", *map(sa.column, late), schema=warehouse.schema)),
                late,
            )
        engine.dispose()
        before = {cp.partition: cp for cp in store_of(path).checkpoints_of(DESTINATION)}
        assert run_range(path, clock).ok
        # the day re-checked, and counted (and the undated rows, which every run looks at)
        assert [day for day in counted if day is not None] == [late_day]
        after = {cp.partition: cp for cp in store_of(path).checkpoints_of(DESTINATION)}
        day = late_day.isoformat()
        assert after[day].rows_read == before[day].rows_read + 1
        assert after[day].delivered == before[day].delivered + 1 and after[day].balanced
        assert after[day].status == "complete"
