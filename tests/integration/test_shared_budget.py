"""One rate budget (rate_limit.shared) in the state database, for several processes.

The slots themselves are checked on a real SQLite file (with an injected clock) and in PostgreSQL
(with its own clock), two engines standing for two processes. Four real `etl run` processes then
share one sandbox limit; separate processes cannot share a fake clock, so that test runs on the
real one, kept short by a sandbox that runs 60x faster: Fuul's 10 batch requests a minute become
10 a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from etl.app.bench import Sandbox as BenchSandbox
from etl.config import RateLimit
from etl.database import make_engine
from etl.errors import ConfigError
from etl.sandbox import SANDBOX_CREDENTIALS
from etl.shared_budget import SharedBucket
from etl.state import StateStore
from tests.conftest import warehouse_of, write_pipeline
from tests.integration.scenario import RECENT_END, assert_delivered

LIMIT, WINDOW = 10, 1.0
RATE = RateLimit(requests=LIMIT, per_seconds=WINDOW, margin=0.02, shared=True)
INTERVAL = RATE.spacing  # one request at a time (the default): the strict spacing
assert 1 / RATE.per_second < INTERVAL
FOUR = RateLimit(requests=LIMIT, per_seconds=WINDOW, margin=0.05, shared=True)


@contextmanager
def two_processes(database: str, tmp_path: Path, clock=None, credential="key-1", limit=RATE):
    """Two budgets on one state database, each with its own engine, as two processes have."""
    with warehouse_of(database, tmp_path) as warehouse:
        url = f"sqlite:///{tmp_path / 'state.db'}" if database == "sqlite" else warehouse.url
        stores = [StateStore(make_engine(url), "etl_", warehouse.schema) for _ in range(2)]
        stores[0].ensure()
        try:
            yield [
                SharedBucket(
                    store.engine,
                    store.rate_budget,
                    "http://vendor/api",
                    credential,
                    limit,
                    clock,
                )
                for store in stores
            ]
        finally:
            for store in stores:
                store.close()


def test_slots_are_one_interval_apart_whoever_takes_them(tmp_path: Path):
    now = [1_000.0]
    with two_processes("sqlite", tmp_path, clock=lambda: now[0]) as (a, b):
        slots = [bucket.reserve() for bucket in (a, b, b, a, b, a)]
    assert [slot for slot, _ in slots] == pytest.approx(
        [1_000.0 + i * INTERVAL for i in range(6)], abs=1e-6
    )
    assert {at for _, at in slots} == {1_000.0}


def test_a_429_pauses_every_process(tmp_path: Path):
    now = [1_000.0]
    with two_processes("sqlite", tmp_path, clock=lambda: now[0]) as (a, b):
        a.reserve()
        b.pause(5.0)
        assert a.reserve()[0] == pytest.approx(1_005.0)
        now[0] = 1_010.0  # idle meanwhile: the next slot is now, not one interval after 1,005
        assert b.reserve()[0] == pytest.approx(1_010.0)


def test_acquire_sleeps_until_the_slot(tmp_path: Path):
    now, slept = [1_000.0], []
    windowed = RATE.model_copy(update={"strict": False})  # no spacing as they leave

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    with two_processes("sqlite", tmp_path, clock=lambda: now[0], limit=windowed) as (a, b):
        for bucket in (a, b, a):
            bucket._sleep = sleep
            bucket.acquire()
    interval = windowed.slot_seconds
    assert slept == pytest.approx([interval, interval])


def test_one_at_a_time_a_request_leaves_a_spacing_after_the_last_really_left(tmp_path: Path):
    """A process woken late at its slot (by ``late``) sends that much later; the next
    request, from the other process on time at its own slot, waits until it is a spacing
    after it, and so does the one after that."""
    now, late = [1_000.0], 0.005

    def sleeper(oversleeps: float):
        def sleep(seconds: float) -> None:
            now[0] += seconds + oversleeps

        return sleep

    with two_processes("sqlite", tmp_path, clock=lambda: now[0]) as (a, b):
        a._sleep, b._sleep = sleeper(late), sleeper(0.0)
        left = []
        for bucket in (a, b, a, b, b):
            bucket.acquire()
            left.append(now[0])
    assert left == pytest.approx(
        [1_000, 1_000 + INTERVAL, 1_000 + 2 * INTERVAL + late, 1_000 + 3 * INTERVAL + late,
         1_000 + 4 * INTERVAL + late],
        abs=1e-6,
    )  # fmt: skip


def test_a_request_that_opens_a_connection_keeps_the_next_one_more_spacing_away(
    tmp_path: Path,
):
    now = [1_000.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with two_processes("sqlite", tmp_path, clock=lambda: now[0]) as (a, b):
        a._sleep = b._sleep = sleep
        left = []
        for bucket, opens in ((a, True), (b, False), (b, True), (a, False)):
            bucket.acquire(opens)
            left.append(now[0])
    # a opens (b's next waits 2 spacings), b reuses, b opens, a reuses
    assert left == pytest.approx(
        [1_000, 1_000 + 2 * INTERVAL, 1_000 + 3 * INTERVAL, 1_000 + 5 * INTERVAL], abs=1e-6
    )


@pytest.mark.postgres
def test_postgresql_slots_on_its_own_clock(tmp_path: Path):
    with two_processes("postgresql", tmp_path) as (a, b):
        taken = [bucket.reserve() for bucket in (a, b, a, b)]
    slots = [slot for slot, _ in taken]
    assert slots[0] == pytest.approx(taken[0][1], abs=1e-6)  # idle: the first goes at once
    assert [s - slots[0] for s in slots] == pytest.approx(
        [i * INTERVAL for i in range(4)], abs=1e-6
    )
    assert abs(taken[0][1] - time.time()) < 5  # the database's clock, in seconds since the epoch


@pytest.mark.postgres
def test_postgresql_one_at_a_time_on_its_own_clock_as_the_request_leaves(tmp_path: Path):
    """Two processes' requests leave at least the spacing apart on PostgreSQL's clock (read
    when the statement runs): the second is told to wait what is left of it."""
    # 50 ms apart: a loaded machine may take 5 ms between two statements (the suite once did)
    fast = RateLimit(requests=20, per_seconds=1, strict=True, shared=True)
    waits: list[float] = []
    with two_processes("postgresql", tmp_path, limit=fast) as (a, b):
        b._sleep = waits.append  # sleeps nothing: b asks again until the spacing is past
        a.acquire()
        b._leave_after_the_last(opens=False)
        with a.engine.connect() as conn:
            left = conn.execute(sa.select(a.table.c.last_left)).scalar_one()
    assert 0 < waits[0] <= fast.spacing + 1e-6
    assert abs(left - time.time()) < 5  # PostgreSQL's clock, in seconds since the epoch


def test_the_row_names_no_credential(tmp_path: Path):
    with (
        two_processes("sqlite", tmp_path, clock=lambda: 0.0, credential="sk-secret") as (a, _),
        a.engine.connect() as conn,
    ):
        rows = conn.execute(sa.select(a.table)).all()
    assert len(rows) == 1 and "sk-secret" not in str(rows)


def test_an_in_memory_state_cannot_be_shared():
    store = StateStore(make_engine("sqlite://"), "etl_")
    store.ensure()
    with pytest.raises(ConfigError, match=r"rate_limit\.shared needs the state in a SQLite file"):
        SharedBucket(store.engine, store.rate_budget, "http://vendor/api", "k", RATE)


class RemoteSandbox:
    """`etl sandbox` in its own process, as `assert_delivered` reads a sandbox (``.url``,
    ``.sandbox.records``). In this process, late in the suite, a full collection over what
    earlier tests left held its threads, and the arrival times they stamp, past any margin."""

    def __init__(self, time_scale: float) -> None:
        self.box = BenchSandbox(time_scale)
        self.url = self.box.url
        self.sandbox = self

    @property
    def records(self) -> dict[str, list[dict]]:
        response = requests.get(
            f"{self.url}/_sandbox/records", params={"vendor": "fuul"}, timeout=30
        )
        return {"fuul": response.json()}

    def stop(self) -> None:
        self.box.stop()


@pytest.mark.slow
@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_four_processes_stay_within_one_limit(tmp_path: Path, database: str):
    server = RemoteSandbox(time_scale=60 / WINDOW)
    try:
        with warehouse_of(database, tmp_path) as warehouse:
            warehouse.fill(1600, days=4, end=RECENT_END)  # ~10 windows
            first = RECENT_END - timedelta(days=4)
            # 5 %: headroom for four processes starting at once on two cores next to the test
            # suite; `etl bench --only shared` measures the default 2 % on 84 windows.
            limit = FOUR.model_dump(include={"requests", "per_seconds", "margin", "shared"})
            path = write_pipeline(
                tmp_path / "pipeline.yaml", warehouse, server.url, first.isoformat(),
                {"rate_limit": limit, "batch_size": 10, "max_in_flight": 4},
            )  # fmt: skip
            env = {**os.environ, **SANDBOX_CREDENTIALS}
            procs = []
            for i in range(4):  # one day each, all at once
                day = (first + timedelta(days=i)).isoformat()
                command = [
                    sys.executable,
                    "-m",
                    "etl.app",
                    "run",
                    "-c",
                    str(path),
                    "--no-progress",
                    "--from",
                    day,
                    "--to",
                    day,
                ]
                procs.append(
                    subprocess.Popen(
                        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
                    )
                )
            for proc in procs:
                output = proc.communicate(timeout=300)[0].decode()
                assert proc.returncode == 0, output
            stats, arrivals = server.box.stats("fuul"), server.box.arrivals("fuul")
            assert stats.get("throttled", 0) == 0, (stats, arrivals[:40])
            # never more than the limit in any window of the sandbox's length
            for i, t in enumerate(arrivals):
                assert sum(1 for u in arrivals[i : i + LIMIT + 1] if u < t + WINDOW) <= LIMIT
            # requests per second once the first window is past (a burst there would not count)
            rate = (len(arrivals) - 1 - LIMIT) / (arrivals[-1] - arrivals[LIMIT])
            # Slots are evenly spaced at the paced rate (one at a time: the spacing), whichever
            # process takes them: only the ends of the run cost a little, and one at a time a
            # request that waits for the last one's leaving its wake-up and a round trip to the
            # state database (0.958 of the pace seen once with the whole suite on two cores).
            pace = 1 / FOUR.slot_seconds
            assert rate >= 0.95 * pace, f"{rate:.2f} requests/s for a pace of {pace:.2f}"
            assert_delivered(path, server, "fuul")
    finally:
        server.stop()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_refusal_tightens_the_spacing_of_every_process(tmp_path: Path, database: str):
    """One process's 429 at the pace spaces every process's later slots, and says so once."""
    now = [1_000.0]
    spacing = 1.5 * INTERVAL
    with two_processes(database, tmp_path, clock=lambda: now[0]) as (a, b):
        first = [bucket.reserve()[0] for bucket in (a, b)]
        assert not a.tighten(INTERVAL)  # one at a time, the limit keeps that spacing already
        assert a.tighten(spacing) and not b.tighten(spacing)  # the second adds nothing
        later = [bucket.reserve()[0] for bucket in (b, a, b)]
        assert b.pause(0.0) is None and b.reserve()[0] == pytest.approx(later[-1] + spacing)
    assert first == pytest.approx([1_000.0, 1_000.0 + INTERVAL])
    assert later == pytest.approx(
        [
            1_000.0 + 2 * INTERVAL,
            1_000.0 + 2 * INTERVAL + spacing,
            1_000.0 + 2 * INTERVAL + 2 * spacing,
        ]
    )


def test_a_sender_knows_whether_its_next_request_opens_a_connection(sandbox, clock):
    """The pool is looked at over real HTTP: the first request opens a connection, the next
    one (after the first came back) reuses it."""
    from etl.config import DestinationConfig, SourceConfig
    from etl.destination import Destination
    from etl.sender import Sender
    from etl.vendors.fuul import Fuul, FuulOptions
    from tests.unit.test_batching_and_sender import event

    config = DestinationConfig(
        vendor="fuul",
        base_url=sandbox.url + "/fuul/api/v1",
        credentials={"api_key": "${FUUL_API_KEY}"},
        mapping={"event_name": "played", "user": {"column": "wallet", "type": "evm_address"}},
        rate_limit={"requests": 1000, "per_seconds": 1},
    )
    target = Destination.resolve("fuul", config, SourceConfig(url="sqlite://", table="t"))
    credentials = {"api_key": SANDBOX_CREDENTIALS["FUUL_API_KEY"]}
    sender = Sender(target, credentials, timing=clock.timing())
    try:
        assert sender._opens_a_connection()
        payload = json.dumps(Fuul(FuulOptions()).encode(event(1))).encode()
        assert sender.send([payload]).delivered == [0]
        assert not sender._opens_a_connection()
    finally:
        sender.close()


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_a_budget_table_of_an_earlier_version_gains_the_leaving_column(
    tmp_path: Path, database: str
):
    with warehouse_of(database, tmp_path) as warehouse:
        url = f"sqlite:///{tmp_path / 'state.db'}" if database == "sqlite" else warehouse.url
        store = StateStore(make_engine(url), "etl_", warehouse.schema)
        store.ensure()
        table = store.rate_budget
        name = f"{table.schema}.{table.name}" if table.schema else table.name
        with store.engine.begin() as conn:  # as an earlier version left it
            conn.execute(sa.text(f"ALTER TABLE {name} DROP COLUMN last_left"))  # test's own name
        store.close()
        store = StateStore(make_engine(url), "etl_", warehouse.schema)
        try:
            store.ensure()
            bucket = SharedBucket(store.engine, store.rate_budget, "http://vendor/api", "k", RATE)
            bucket._sleep = lambda seconds: None
            bucket.acquire()
            with store.engine.connect() as conn:
                assert conn.execute(sa.select(table.c.last_left)).scalar_one() > 0
        finally:
            store.close()
