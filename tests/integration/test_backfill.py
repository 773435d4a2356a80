"""The whole backfill against real SQLite and PostgreSQL warehouses and the sandbox over HTTP.

The sandbox and the client share one fake clock: rate limits and Retry-After are honoured in
logical time, so no test waits for real time.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import sqlalchemy as sa

from etl.errors import ConfigError, MappingChangedError
from etl.loader import load_pipeline
from etl.replay import replay_dead_letters
from etl.run_context import RunOptions
from etl.runner import run_backfill
from tests.conftest import DESTINATION, FAST, FUUL_MAPPING, write_pipeline
from tests.integration.scenario import (
    END,
    FIRST,
    assert_delivered,
    assert_exactly_once,
    run,
    setup,
    state_engine,
    store_of,
)


def test_backfill_delivers_every_valid_row_once(tmp_path, warehouse, sandbox, clock):
    # One request at a time: on a fake clock, parallel senders can be preempted between waking
    # and sending while the clock jumps, which real time does not do (see tests/fakes.py).
    path = setup(tmp_path, warehouse, sandbox, max_in_flight=1)
    report = run(path, clock)
    assert report.ok, report
    [dest] = report.destinations
    assert dest.total("rows_read") == 1200
    assert dest.total("dead_letters") > 0  # the generator spoils ~3 % of rows
    assert dest.total("throttled") == 0  # paced under Fuul's 10 requests a minute
    assert_exactly_once(path, warehouse, sandbox)
    # A second run finds nothing left to send.
    again = run(path, clock)
    assert again.ok and again.rows_read == 0
    assert sandbox.sandbox.stats["fuul"]["requests"] == dest.total("requests")


def test_rate_limit_is_honoured_without_429(tmp_path, warehouse, sandbox, clock):
    path = setup(tmp_path, warehouse, sandbox, rows=800, max_in_flight=1)
    start = clock()
    report = run(path, clock)
    requests = report.destinations[0].total("requests")
    assert report.destinations[0].total("throttled") == 0
    # 10 requests a minute (minus the 2 % margin): the run took at least that long in fake time
    assert clock() - start >= (requests - 1) * 6.0


def test_429_with_retry_after_is_honoured(tmp_path, warehouse, sandbox, clock):
    # Pace three times faster than Fuul allows: the sandbox throttles, the sender waits and resends.
    path = setup(
        tmp_path, warehouse, sandbox, rows=3000, rate_limit={"requests": 30, "per_seconds": 60}
    )
    report = run(path, clock)
    assert report.ok
    assert report.destinations[0].total("throttled") > 0
    assert sandbox.sandbox.stats["fuul"]["throttled"] == report.destinations[0].total("throttled")
    assert_exactly_once(path, warehouse, sandbox)


def test_5xx_and_lost_responses_lose_nothing_and_double_nothing(
    tmp_path, warehouse, sandbox, clock
):
    path = setup(tmp_path, warehouse, sandbox, max_attempts=20, batch_size=20)
    sandbox.sandbox.set_faults("fuul", error_rate=0.2, lose_rate=0.2)
    report = run(path, clock)
    assert report.ok
    stats = sandbox.sandbox.stats["fuul"]
    assert stats["errors"] > 0 and stats["lost"] > 0
    assert report.destinations[0].total("retries") >= stats["errors"] + stats["lost"]
    assert stats["duplicates"] > 0  # resends after lost responses, deduplicated by Fuul
    assert_exactly_once(path, warehouse, sandbox)
    assert report.destinations[0].total("in_doubt") == 0  # Fuul deduplicates: nothing doubtful


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("wrong-key", "HTTP 401: Unauthorized"),
        ("sandbox-fuul-readonly", "send:trigger_event scope"),
    ],
)
def test_refused_key_stops_with_a_clear_message(
    tmp_path, warehouse, sandbox, clock, monkeypatch, key, expected
):
    path = setup(tmp_path, warehouse, sandbox, rows=200)
    monkeypatch.setenv("FUUL_API_KEY", key)
    report = run(path, clock)
    assert not report.ok
    error = report.destinations[0].error
    assert error and expected in error and "${FUUL_API_KEY}" in error
    assert key not in error
    # Stopped at once: the next day may have been sending before the refusal came back (days
    # overlap), but no request follows the refusal.
    assert (
        sandbox.sandbox.stats["fuul"]["requests"]
        <= 1 + load_pipeline(path).destinations[DESTINATION].max_in_flight
    )
    # The key is in no state table.
    engine = state_engine(path)
    with engine.connect() as conn:
        for table in store_of(path).table_names():
            for row in conn.execute(sa.text(f"SELECT * FROM {table}")):  # noqa: S608
                assert key not in json.dumps([str(v) for v in row])


@pytest.mark.parametrize(("batch_size", "requests"), [(1000, 1), (60, 4)])
def test_batches_fill_across_days(tmp_path, warehouse, fast_sandbox, batch_size, requests):
    """Four small days (200 rows) go out in ceil(events / batch size) requests, not one a day
    at least: a request carries the end of one day and the start of the next, each day is
    committed and checked on its own, and requests of two days are in flight together."""
    path = setup(tmp_path, warehouse, fast_sandbox, rows=200, vendor="thrivestack",
                 max_in_flight=2, batch_size=batch_size, **FAST)  # fmt: skip
    fast_sandbox.sandbox.set_faults("thrivestack", latency_ms=200)
    first = load_pipeline(path).start_date
    report = run_backfill(load_pipeline(path), first_day=first, last_day=first + timedelta(days=3))
    assert report.ok
    stats = fast_sandbox.sandbox.stats["thrivestack"]
    assert stats["requests"] == requests
    assert stats["max_concurrent"] == min(2, requests)
    days = [p for p in report.destinations[0].partitions if p.partition != "undated"]
    assert [p.status for p in days] == ["complete"] * 4
    assert sum(p.requests for p in days) == requests  # a request counts in its first day
    assert_delivered(path, fast_sandbox, "thrivestack")


def test_a_refused_key_stops_after_one_request(tmp_path, warehouse, fast_sandbox, monkeypatch):
    """The first batch of a run goes alone: a refused key stops the destination after one
    request, and every day it touched, or would have, is failed (none half-committed)."""
    path = setup(tmp_path, warehouse, fast_sandbox, rows=200, max_in_flight=2, **FAST)
    fast_sandbox.sandbox.set_faults("fuul", latency_ms=100)
    monkeypatch.setenv("FUUL_API_KEY", "wrong-key")
    first = load_pipeline(path).start_date
    report = run_backfill(load_pipeline(path), first_day=first, last_day=first + timedelta(days=3))
    dest = report.destinations[0]
    assert dest.error and "HTTP 401" in dest.error
    days = [p for p in dest.partitions if p.partition != "undated"]
    assert days and {p.status for p in days} == {"failed"}
    assert fast_sandbox.sandbox.stats["fuul"]["requests"] == 1
    statuses = {cp.partition: cp.status for cp in store_of(path).checkpoints_of(DESTINATION)}
    assert {s for p, s in statuses.items() if p != "undated"} == {"failed"}


def test_missing_key_stops_before_anything_is_sent(
    tmp_path, warehouse, sandbox, clock, monkeypatch
):
    path = setup(tmp_path, warehouse, sandbox, rows=50)
    monkeypatch.delenv("FUUL_API_KEY")
    with pytest.raises(ConfigError, match="environment variable FUUL_API_KEY"):
        run(path, clock)
    assert sandbox.sandbox.stats == {}


@pytest.mark.slow
def test_vendor_rejections_are_isolated_and_dead_lettered(tmp_path, warehouse, clock):
    from etl.sandbox import start_sandbox

    server = start_sandbox(clock=clock, fuul_triggers={"game_played"})  # "purchase" is unknown
    try:
        path = setup(tmp_path, warehouse, server, rows=600)
        report = run(path, clock)
        assert report.ok
        store = store_of(path)
        vendor_dead = [d for d in store.dead_letters("fuul_rewards") if d["vendor_status"] == 400]
        assert vendor_dead and all(
            "no trigger with event name 'purchase'" in d["reason"] for d in vendor_dead
        )
        assert all(json.loads(d["payload"])["name"] == "purchase" for d in vendor_dead)
        assert {e["name"] for e in server.sandbox.records["fuul"]} == {"game_played"}
        assert all(cp.balanced for cp in store.checkpoints_of("fuul_rewards"))
    finally:
        server.stop()


def test_changed_mapping_is_refused_on_a_half_sent_day_unless_restarted(
    tmp_path, warehouse, sandbox, clock
):
    path = setup(tmp_path, warehouse, sandbox, rows=300)
    sandbox.sandbox.set_faults("fuul", answer_status=404, answer_after=1)  # dies mid-range
    assert not run(path, clock).ok
    sandbox.sandbox.set_faults("fuul", answer_status=0, answer_after=0)
    changed = dict(FUUL_MAPPING, event_name="played")
    write_pipeline(path, warehouse, sandbox.url, FIRST.isoformat(), {"mapping": changed})
    with pytest.raises(MappingChangedError, match=r"mapping\.event_name changed.*--restart"):
        run(path, clock)
    report = run(path, clock, options=RunOptions(restart=True))
    assert report.ok and report.rows_read == 300
    # Fuul already has these dedup_ids: the resent events are skipped, none is stored twice.
    assert sandbox.sandbox.stats["fuul"]["duplicates"] > 0
    assert_exactly_once(path, warehouse, sandbox)


def test_a_changed_mapping_leaves_complete_days_alone(tmp_path, warehouse, sandbox, clock):
    path = setup(tmp_path, warehouse, sandbox, rows=300)
    assert run(path, clock).ok
    changed = dict(FUUL_MAPPING, event_name="played")
    write_pipeline(path, warehouse, sandbox.url, FIRST.isoformat(), {"mapping": changed})
    report = run(path, clock)  # nothing of those days is sent again: nothing to refuse
    assert report.ok and report.rows_read == 0


def test_dry_run_writes_payloads_and_sends_nothing(tmp_path, warehouse, sandbox, clock):
    path = setup(tmp_path, warehouse, sandbox, rows=300)
    out = tmp_path / "payloads.jsonl"
    report = run(path, clock, options=RunOptions(dry_run=out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == report.destinations[0].total("delivered") > 0
    assert {"name", "user", "dedup_id", "timestamp"} <= set(lines[0]["payload"])
    assert sandbox.sandbox.stats == {}
    engine = state_engine(path)
    assert not sa.inspect(engine).has_table("etl_checkpoints", schema=warehouse.schema)


def test_dead_letter_replay_after_fixing_the_rows(tmp_path, warehouse, sandbox, clock):
    path = setup(tmp_path, warehouse, sandbox, rows=600)
    assert run(path, clock).ok
    store = store_of(path)
    missing_wallet = [
        d for d in store.dead_letters("fuul_rewards") if "wallet) is missing" in d["reason"]
    ]
    assert missing_wallet
    engine = warehouse.engine()
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"UPDATE {warehouse.table()} SET wallet = :w, wallet_type = 'evm_address' WHERE wallet IS NULL"  # noqa: S608
            ),
            {"w": "0x" + "cd" * 20},
        )
    engine.dispose()
    config = load_pipeline(path)
    replay = replay_dead_letters(config, "fuul_rewards")
    assert replay.delivered == len(missing_wallet)
    assert replay.still_dead == replay.attempted - len(missing_wallet)
    assert_exactly_once(path, warehouse, sandbox)
    again = replay_dead_letters(config, "fuul_rewards")
    assert again.delivered == 0 and again.attempted == replay.still_dead


def test_single_event_endpoint(tmp_path, warehouse, sandbox, clock):
    path = setup(tmp_path, warehouse, sandbox, rows=150, options={"endpoint": "single"})
    report = run(path, clock)
    assert report.ok
    assert report.destinations[0].total("requests") == report.destinations[0].total("delivered")
    assert_exactly_once(path, warehouse, sandbox)


@pytest.mark.parametrize("reader", [False, True], ids=["here", "reader process"])
def test_query_source_with_text_timestamps(tmp_path, warehouse, sandbox, clock, reader):
    """A query kept in a .sql file, whose timestamp is text with a 'T' and a 'Z' (read here, or
    by the reader process, which finds the file as this one does)."""
    warehouse.fill(400, days=4, end=END)
    table = warehouse.table()
    if warehouse.kind == "sqlite":
        ts = "strftime('%Y-%m-%dT%H:%M:%SZ', occurred_at)"
    else:
        ts = 'to_char(occurred_at, \'YYYY-MM-DD"T"HH24:MI:SS"Z"\')'
    (tmp_path / "actions.sql").write_text(
        f"SELECT id, {ts} AS happened, wallet, wallet_type, action, game_id, score, amount\n"
        f"FROM {table}\n"
    )
    path = write_pipeline(
        tmp_path / "pipeline.yaml", warehouse, sandbox.url, FIRST.isoformat(),
        source={"table": None, "query": "actions.sql", "timestamp_column": "happened", "timestamp_type": "text", "reader_process": reader},
    )  # fmt: skip
    doc = path.read_text().replace("  table: null\n", "")
    path.write_text(doc)
    report = run(path, clock)
    assert report.ok
    assert report.rows_read == 400
    assert_exactly_once(path, warehouse, sandbox)


@pytest.mark.postgres
def test_user_written_postgres_table_with_timestamptz_and_uuid_keys(tmp_path, sandbox, clock):
    """A table as a team writes it: uuid keys, timestamptz, numeric and boolean columns."""
    from tests.conftest import POSTGRES_URL, Warehouse, require_postgres

    require_postgres()
    schema = f"etl_user_{tmp_path.name[-8:].lower().replace('-', '_')}"
    engine = sa.create_engine(POSTGRES_URL)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"))
            conn.execute(
                sa.text(
                    f"CREATE TABLE {schema}.user_actions (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
                    "occurred_at timestamptz NOT NULL, wallet text, wallet_type text, action text, "
                    "game_id text, score text, amount numeric(10, 2))"
                )
            )
            conn.execute(
                sa.text(
                    f"INSERT INTO {schema}.user_actions (occurred_at, wallet, wallet_type, action, game_id, amount) "  # noqa: S608
                    "SELECT timestamptz '2024-03-01 23:30:00+02' + (g || ' minutes')::interval, "
                    "'0x' || lpad(to_hex(g), 40, '0'), 'evm_address', "
                    "CASE WHEN g % 4 = 0 THEN 'login' ELSE 'purchase' END, 'kart', g * 0.5 "
                    "FROM generate_series(1, 400) g"
                )
            )
        warehouse = Warehouse("postgresql", POSTGRES_URL, schema)
        path = write_pipeline(tmp_path / "p.yaml", warehouse, sandbox.url, FIRST.isoformat())
        report = run(path, clock)
        assert report.ok, report
        assert report.rows_read == 400
        assert_exactly_once(path, warehouse, sandbox)
        first = min(sandbox.sandbox.records["fuul"], key=lambda e: e["timestamp"])
        assert first["timestamp"] == 1709328660000  # 2024-03-01 21:31:00 UTC
        assert first["args"]["amount"] == 0.5
        assert run(path, clock).rows_read == 0
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()
