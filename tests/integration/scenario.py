"""Shared scenario for the integration tests: a filled warehouse, a pipeline file, checks."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from etl.events import event_id_for
from etl.loader import load_pipeline
from etl.run_context import RunOptions
from etl.runner import run_backfill
from etl.state import StateStore
from tests.conftest import DESTINATION, Warehouse, write_pipeline

END = date(2024, 3, 5)
FIRST, LAST = END - timedelta(days=4), END - timedelta(days=1)
RECENT_END = datetime.now(UTC).date()  # inside Airship's 90-day window


def setup(
    tmp_path: Path,
    warehouse: Warehouse,
    sandbox,
    rows: int = 1200,
    vendor: str = "fuul",
    end: date = END,
    **dest: Any,
) -> Path:
    """Four days of actions before ``end``, and a pipeline with one destination of ``vendor``."""
    warehouse.fill(rows, days=4, end=end)
    first = end - timedelta(days=4)
    return write_pipeline(
        tmp_path / "pipeline.yaml", warehouse, sandbox.url, first.isoformat(), dest, vendor=vendor
    )


def run(path: Path, clock, **kwargs):
    """The four days of the pipeline, on the fake clock."""
    first = load_pipeline(path).start_date
    return run_backfill(
        load_pipeline(path), first_day=first, last_day=first + timedelta(days=3),
        timing=clock.timing(), **kwargs,
    )  # fmt: skip


def canonical(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, ensure_ascii=False)


def expected_payloads(path: Path) -> Counter[str]:
    """Every payload the vendor should receive once: a dry run of the whole range."""
    return expected_by_partition(path)[0]


def expected_by_partition(path: Path) -> tuple[Counter[str], dict[str, str]]:
    """A dry run of the whole range: every payload the vendor should receive once, and the
    partition of each (equal payloads have one timestamp, and so one partition)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "expected.jsonl"
        first = load_pipeline(path).start_date
        run_backfill(
            load_pipeline(path),
            first_day=first,
            last_day=first + timedelta(days=3),
            options=RunOptions(dry_run=out),
        )
        lines = [json.loads(line) for line in out.read_text().splitlines()]
    payloads = [canonical(line["payload"]) for line in lines]
    return Counter(payloads), dict(
        zip(payloads, (line["partition"] for line in lines), strict=True)
    )


def assert_delivered(path: Path, sandbox, vendor: str) -> tuple[int, int]:
    """No event missing, every partition complete and balanced; copies beyond one only where
    the vendor doesn't deduplicate, and in each partition never more than its in-doubt count.
    Returns (extra copies stored, events reported in doubt)."""
    expected, partition_of = expected_by_partition(path)
    stored = Counter(canonical(e) for e in sandbox.sandbox.records[vendor])
    assert not expected - stored, f"{sum((expected - stored).values())} events never arrived"
    extra_in: Counter[str] = Counter()
    for payload, copies in (stored - expected).items():
        assert payload in partition_of, f"stored, but no row makes it: {payload}"
        extra_in[partition_of[payload]] += copies
    cps = store_of(path).checkpoints_of(DESTINATION)
    assert cps and {cp.status for cp in cps} == {"complete"}
    assert all(cp.balanced for cp in cps)
    for cp in cps:
        assert extra_in[cp.partition] <= cp.in_doubt, (
            f"{cp.partition}: {extra_in[cp.partition]} events stored twice but only "
            f"{cp.in_doubt} reported in doubt"
        )
    assert set(extra_in) <= {cp.partition for cp in cps}
    extra, in_doubt = sum(extra_in.values()), sum(cp.in_doubt for cp in cps)
    if vendor == "fuul":
        assert extra == 0 and in_doubt == 0
    return extra, in_doubt


def source_ids(warehouse: Warehouse) -> tuple[set[int], set[int]]:
    """(all ids, ids of rows for Fuul by the filter), straight from the warehouse."""
    engine = warehouse.engine()
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT id, action FROM {warehouse.table()}")).all()  # noqa: S608
    engine.dispose()
    return {r[0] for r in rows}, {r[0] for r in rows if r[1] in ("game_played", "purchase")}


_engines: list[sa.Engine] = []


def dispose_engines() -> None:
    for engine in _engines:
        engine.dispose()
    _engines.clear()


def state_engine(path: Path) -> sa.Engine:
    engine = sa.create_engine(load_pipeline(path).state_url)
    _engines.append(engine)
    return engine


def store_of(path: Path) -> StateStore:
    return StateStore(state_engine(path), "etl_", load_pipeline(path).state.schema_name)


def stored_ids(sandbox) -> list[str]:
    return [e["dedup_id"] for e in sandbox.sandbox.records["fuul"]]


def assert_exactly_once(path: Path, warehouse: Warehouse, sandbox) -> None:
    """Every valid row accepted exactly once, every bad row a dead letter, every partition balanced."""
    all_ids, for_fuul = source_ids(warehouse)
    store = store_of(path)
    dead = store.dead_letters("fuul_rewards")
    dead_ids = {d["event_id"] for d in dead}
    assert all(d["reason"] for d in dead)
    expected = {event_id_for("fuul_rewards", i) for i in for_fuul} - dead_ids
    stored = stored_ids(sandbox)
    assert len(stored) == len(set(stored)), "an event was stored twice"
    assert set(stored) == expected
    cps = store.checkpoints_of("fuul_rewards")
    assert {cp.status for cp in cps} == {"complete"}
    assert all(cp.balanced for cp in cps)
    assert sum(cp.rows_read for cp in cps) == len(all_ids)
    assert sum(cp.filtered for cp in cps) == len(all_ids) - len(for_fuul)
    assert sum(cp.dead_letters for cp in cps) == len(dead_ids)
