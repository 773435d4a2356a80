"""Leases are dated and judged by the state database's clock, never by a host's own: a host
whose clock runs minutes ahead does not take a live lease, one whose clock runs behind does not
wait past the TTL; a holder elsewhere is never judged by a pid of this machine."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from etl.errors import LeaseHeldError
from etl.state import Checkpoint, StateStore
from etl.state.leases import Leases
from etl.statuses import PartitionStatus
from tests.conftest import Warehouse
from tests.fakes import FakeClock

DESTINATION, DAY = "fuul_rewards", "2024-03-01"


@pytest.fixture
def store(warehouse: Warehouse) -> Iterator[StateStore]:
    found = StateStore(warehouse.engine(), "etl_", warehouse.schema)
    found.ensure()
    yield found
    found.close()


def skewed(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """This process's clock runs ``seconds`` off (as another host's would)."""
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + seconds)


@pytest.mark.postgres
@pytest.mark.parametrize("warehouse", ["postgresql"], indirect=True)
@pytest.mark.parametrize("skew", [180.0, -180.0])
def test_a_host_clock_minutes_off_changes_nothing(store, monkeypatch, skew):
    first = Leases(store.engine, store.tables.leases, ttl=2.0)
    first.acquire(DESTINATION, DAY)
    skewed(monkeypatch, skew)  # the second "host" reads its own clock minutes off
    second = Leases(store.engine, store.tables.leases, ttl=2.0)
    with pytest.raises(LeaseHeldError, match="another run is sending it"):
        second.acquire(DESTINATION, DAY)
    assert second.held_elsewhere(DESTINATION, DAY) is not None
    # the first run dies without giving it back: the lease passes after its TTL, on the
    # database's clock, whatever the second host's clock says
    first.held.clear()
    deadline = time.monotonic() + 10
    while second.held_elsewhere(DESTINATION, DAY) is not None:
        assert time.monotonic() < deadline, "the lease did not pass within its TTL"
        time.sleep(0.1)
    assert time.monotonic() < deadline
    second.acquire(DESTINATION, DAY)
    second.close()


def test_a_holder_elsewhere_is_not_judged_by_a_pid_here(store):
    """A lease whose holder names this host but another machine (another boot or process
    namespace: a container, a host rebooted) and a pid that does not exist here is judged by its
    expiry only; one of this very machine whose process ended passes at once."""
    leases = Leases(store.engine, store.tables.leases, ttl=60.0)
    dead_pid = 2**22 - 1  # above the kernel's pid_max default: no such process here
    t = store.tables.leases
    row = {
        "destination": DESTINATION,
        "partition": DAY,
        "host": leases.host,
        "pid": dead_pid,
        "acquired_at": sa.func.current_timestamp(),
        "expires_at": time.time() + 60,
    }
    with store.engine.begin() as conn:
        conn.execute(sa.insert(t).values(holder=f"{leases.host}:{dead_pid}:0elsewhere00:t0", **row))
    with pytest.raises(LeaseHeldError):
        leases.acquire(DESTINATION, DAY)
    same_machine = leases.holder.split(":")[2]
    with store.engine.begin() as conn:
        conn.execute(sa.update(t).values(holder=f"{leases.host}:{dead_pid}:{same_machine}:t1"))
    leases.acquire(DESTINATION, DAY)  # its holder was a process of this machine, now gone
    leases.close()


def test_renewal_keeps_a_lease_until_it_stops(store):
    now = [1_000.0]
    clock = lambda: now[0]  # noqa: E731 (an injected clock: nothing sleeps)
    leases = Leases(store.engine, store.tables.leases, ttl=60.0, clock=clock)
    other = Leases(store.engine, store.tables.leases, ttl=60.0, clock=clock)
    leases.acquire(DESTINATION, DAY)
    for _ in range(3):
        now[0] += 40
        leases.renew()
        assert other.held_elsewhere(DESTINATION, DAY) is not None
    now[0] += 61  # no renewal for longer than the TTL: it passes
    assert other.held_elsewhere(DESTINATION, DAY) is None
    other.acquire(DESTINATION, DAY)
    leases.close()  # gives back nothing it no longer holds
    assert leases.held_elsewhere(DESTINATION, DAY) is not None
    other.close()


def test_a_run_waits_for_a_lost_runs_lease_to_pass(store):
    """A retry of a run whose worker was lost waits for its lease (up to ``wait``), looking
    again every few seconds of the injected clock: it takes it once it passed, never before."""
    clock = FakeClock()
    lost = Leases(store.engine, store.tables.leases, ttl=30.0, clock=clock)
    lost.acquire(DESTINATION, DAY)
    lost.held.clear()  # its worker died: it never gives it back
    retry = Leases(store.engine, store.tables.leases, ttl=30.0, clock=clock)
    started = clock()
    with pytest.raises(LeaseHeldError, match="another run is sending it"):
        retry.acquire(DESTINATION, DAY, wait=10.0, timing=clock.timing())
    assert clock() - started == pytest.approx(10.0)
    retry.acquire(DESTINATION, DAY, wait=60.0, timing=clock.timing())
    assert 30.0 < clock() - started <= 30.0 + 2.0  # within one look of the lease passing
    assert (DESTINATION, DAY) in retry.held
    retry.close()


@pytest.mark.parametrize(
    "verdict", [(PartitionStatus.COMPLETE, None), (None, "rows added late: re-checked")]
)
def test_closing_a_partition_records_its_status_and_gives_its_lease_back_at_once(store, verdict):
    """A partition a run is done with: its checkpoint read and judged, the status recorded and
    the lease given back in one transaction; a re-check (no status) gives the lease back too."""
    made = ("fingerprint", "{}")
    store.leases.acquire(DESTINATION, DAY)
    cp, fresh = store.start(DESTINATION, DAY, made)  # new: inserted in one statement
    assert fresh and cp.status == PartitionStatus.RUNNING and cp.rows_read == 0
    again, fresh = store.start(DESTINATION, DAY, made)  # there already: not new
    assert not fresh and again.started_at == cp.started_at
    seen: list[Checkpoint] = []

    def judge(found: Checkpoint) -> tuple[PartitionStatus | None, str | None]:
        seen.append(found)
        return verdict

    closed, said = store.close_partition(DESTINATION, DAY, judge)
    assert said == verdict and seen[0].status == PartitionStatus.RUNNING
    assert closed.status == (verdict[0] or PartitionStatus.RUNNING)
    assert store.load(DESTINATION, DAY) == closed
    assert (DESTINATION, DAY) not in store.leases.held
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(store.tables.leases)).first() is None
