"""The per-row delivery log: one row's history from `etl status --row`, and its retention."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from etl.app.cli import cli
from etl.events import event_id_for
from etl.loader import load_pipeline
from etl.planner import plan_task
from etl.source import Source
from tests.conftest import DESTINATION, warehouse_of
from tests.integration.scenario import run, setup, store_of


def status_row(path: Path, key: str) -> str:
    result = CliRunner().invoke(cli, ["status", "-c", str(path), "--row", key])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_rows_history(tmp_path, sandbox, clock):
    with warehouse_of("sqlite", tmp_path) as warehouse:
        path = setup(tmp_path, warehouse, sandbox, rows=300)  # Fuul: some rows are filtered
        assert run(path, clock).ok
        log = store_of(path).log
        first = load_pipeline(path).start_date.isoformat()
        known = log.known(DESTINATION, first)
        sent = next(k for k, e in known.items() if e.outcome == "delivered")
        skipped = next(k for k, e in known.items() if e.outcome == "filtered")

        out = status_row(path, sent)
        assert f"row {sent}: delivered in partition {first}" in out
        assert event_id_for(DESTINATION, sent) in out
        assert "request(s), last HTTP status 2" in out
        out = status_row(path, skipped)
        assert f"row {skipped}: filtered in partition {first}" in out
        assert "not sent: filtered" in out
        assert "not been read" in status_row(path, "no-such-key")
        # a key that is a substring of another is not taken for it
        assert all(e["partition"] == first for e in log.history(DESTINATION, sent))
        assert log.history(DESTINATION, sent[:-1] + "%") == []


def test_the_log_is_purged_after_its_retention(tmp_path, sandbox, clock):
    with warehouse_of("sqlite", tmp_path) as warehouse:
        path = setup(tmp_path, warehouse, sandbox, rows=300)
        doc = yaml.safe_load(path.read_text())
        doc["state"] = {"delivery_log_retention_days": 30}
        path.write_text(yaml.safe_dump(doc))
        assert run(path, clock).ok
        store = store_of(path)
        first = load_pipeline(path).start_date.isoformat()
        known_before = store.log.known(DESTINATION, first)
        t = store.tables.deliveries
        long_ago = datetime.now(UTC) - timedelta(days=31)
        with store.engine.begin() as conn:  # the first day's log recorded a month ago
            conn.execute(sa.update(t).where(t.c.partition == first).values(recorded_at=long_ago))
        assert run(path, clock).ok
        partitions = {cp.partition: cp for cp in store.checkpoints_of(DESTINATION)}
        assert partitions[first].log_purged_at is not None
        assert store.log.known(DESTINATION, first) == {}
        assert all(
            cp.log_purged_at is None and store.log.known(DESTINATION, p)
            for p, cp in partitions.items()
            if p not in (first, "undated")
        )
        # a purged day is not re-checked: it cannot tell its late rows from the others
        config = load_pipeline(path)
        source = Source(config)
        gone = next(iter(known_before))
        engine = warehouse.engine()
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM user_actions WHERE id = :id"), {"id": int(gone)})
        engine.dispose()
        assert source.count_partition(date.fromisoformat(first)) != partitions[first].present
        task = plan_task(source, date.fromisoformat(first), partitions[first])
        assert task.mode == "skip"


def test_state_tables_of_an_earlier_version_get_the_purges_index(tmp_path, warehouse):
    """The retention purge finds old slices by an index on (destination, recorded_at): a state
    database made before it existed gets it on the next run's start, and keeps its rows."""
    from etl.state.store import StateStore

    engine = warehouse.engine()
    store = StateStore(engine, "etl_", warehouse.schema)
    if warehouse.schema:
        with engine.begin() as conn:
            conn.execute(sa.schema.CreateSchema(warehouse.schema, if_not_exists=True))
    store.ensure()
    name = "ix_etl_deliveries_recorded_at"

    def indexes() -> set[str]:
        found = sa.inspect(engine).get_indexes("etl_deliveries", schema=warehouse.schema)
        return {str(i["name"]) for i in found}

    assert name in indexes()
    with engine.begin() as conn:  # as an earlier version left it
        [index] = [i for i in store.log.table.indexes if i.name == name]
        conn.execute(sa.schema.DropIndex(index))
    assert name not in indexes()
    store.ensure()
    assert name in indexes()
    assert store.log.purge(DESTINATION, datetime.now(UTC)) == 0
    engine.dispose()
