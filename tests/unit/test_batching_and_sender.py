"""Batch cutting, and the sender's split-on-reject against a scripted fake session."""

import json
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from etl.batching import Batcher
from etl.config import DestinationConfig, SourceConfig
from etl.destination import Destination
from etl.errors import FatalDeliveryError, RequestNotBuiltError, RetriesExhaustedError
from etl.events import Event, Filtered, Rejected
from etl.prepare import encode_outcomes
from etl.sender import NotSent, Sender
from etl.sink import DeliverySink
from etl.state import StateStore
from etl.state.ledger import Acknowledged
from etl.vendors.fuul import Fuul, FuulOptions
from tests.fakes import FakeClock

EVM = "0x" + "ab" * 20


def event(n: int, name: str = "played") -> Event:
    return Event(
        f"id{n}", str(n), ("t", n), name, EVM, "evm_address", datetime(2024, 1, 1, tzinfo=UTC), {}
    )


FUUL = Fuul(FuulOptions())


def rows(outcomes, max_bytes=None):
    return encode_outcomes("dest", FUUL, max_bytes, outcomes)


def test_batches_close_at_the_count_and_keep_every_row():
    batcher = Batcher(max_events=3, max_bytes=None, first_seq=5)
    outcomes = [Filtered(("t", n), str(n)) if n % 4 == 3 else event(n) for n in range(8)]
    closed = batcher.add_rows(rows(outcomes[:5])) + batcher.add_rows(rows(outcomes[5:]))
    last = batcher.flush()
    assert last is not None
    batches = [*closed, last]
    assert [b.seq for b in batches] == [5, 6, 7]
    assert [b.size for b in batches] == [3, 3, 0]
    assert [b.keys for b in batches] == [["0", "1", "2"], ["4", "5", "6"], []]
    assert sum(b.rows_read for b in batches) == 8
    assert sum(b.filtered for b in batches) == 2
    assert [(b.first, b.last) for b in batches] == [
        (("t", 0), ("t", 2)),
        (("t", 3), ("t", 6)),
        (("t", 7), ("t", 7)),
    ]


def test_a_batch_goes_on_into_the_next_partition():
    batcher = Batcher(max_events=4, max_bytes=None)
    batcher.start_partition("2024-01-01", 7)
    closed = batcher.add_rows(rows([event(n) for n in range(5)]))
    batcher.start_partition("2024-01-02", 1)
    closed += batcher.add_rows(rows([event(n) for n in range(5, 8)]))
    assert [b.size for b in closed] == [4, 4]
    assert [(s.partition, s.seq, s.start, s.end) for s in closed[1].slices] == [
        ("2024-01-01", 8, 0, 1),
        ("2024-01-02", 1, 1, 4),
    ]
    assert batcher.flush() is None


def test_batches_close_before_the_byte_limit():
    size = len(json.dumps(FUUL.encode(event(0)), separators=(",", ":")))
    batcher = Batcher(max_events=100, max_bytes=2 * size + 3, first_seq=1)
    closed = batcher.add_rows(rows([event(n) for n in range(5)], 2 * size + 3))
    assert [b.size for b in closed] == [2, 2]
    for b in closed:
        assert len(FUUL.body(b.encoded)) <= 2 * size + 3
    # the room left is counted with the commas: a third event never squeezes in
    batcher = Batcher(max_events=100, max_bytes=2 * size + 2, first_seq=1)
    closed = batcher.add_rows(rows([event(n) for n in range(4)], 2 * size + 2))
    assert [b.size for b in closed] == [1, 1, 1]


def test_an_event_over_the_byte_limit_alone_is_rejected():
    batcher = Batcher(max_events=100, max_bytes=50, first_seq=1)
    assert batcher.add_rows(rows([event(1)], max_bytes=50)) == []
    batch = batcher.flush()
    assert batch is not None and not batch.size
    assert "over fuul's request limit of 50 bytes" in batch.rejected[0].reason
    assert batch.rejected[0].payload["name"] == "played"


def test_rows_without_events_still_close_batches():
    batcher = Batcher(max_events=100, max_bytes=None, first_seq=1, max_rows=10)
    rejected = [Rejected(("t", n), str(n), f"id{n}", "bad", {}) for n in range(25)]
    closed = batcher.add_rows(rows(rejected))
    assert [len(b.rejected) for b in closed] == [10, 10]


class FakeResponse:
    """An answer as the vendor gives it: JSON; a 2xx with Fuul's batch success by default."""

    def __init__(self, status: int, body: object = None, headers: dict[str, str] | None = None):
        self.status_code = status
        if body is None and 200 <= status < 300:
            body = {"ingested_events": 1}
        self.text = json.dumps(body or {})
        self.headers = {"Content-Type": "application/json", **(headers or {})}


class FakeSession:
    """Answers each POST with a function of the events in its body."""

    def __init__(self, answer):
        self.answer = answer
        self.calls: list[list[str]] = []
        self.timeouts: list[float] = []

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        return {}

    def send(self, request, timeout, allow_redirects=True, **environment):
        assert allow_redirects is False  # a redirect would carry the key to another host
        events = json.loads(request.body)
        ids = [e["dedup_id"] for e in events]
        self.calls.append(ids)
        self.timeouts.append(timeout)
        return self.answer(ids)

    def close(self):
        pass


def sender(session, clock, attempts=5):
    config = DestinationConfig(
        vendor="fuul",
        base_url="http://vendor",
        credentials={"api_key": "${FUUL_API_KEY}"},
        mapping={"event_name": "played", "user": {"column": "wallet", "type": "evm_address"}},
        timeout_seconds=7.0,
        max_attempts=attempts,
        rate_limit={"requests": 1000, "per_seconds": 1, "margin": 0},
    )
    destination = Destination.resolve(
        "fuul_rewards", config, SourceConfig(url="sqlite://", table="t")
    )
    return Sender(destination, {"api_key": "secret-key"}, timing=clock.timing(), session=session)


def encoded(n: int) -> list[bytes]:
    vendor = Fuul(FuulOptions())
    return [json.dumps(vendor.encode(event(i))).encode() for i in range(n)]


def test_a_rejected_batch_is_split_until_the_bad_events_are_isolated():
    bad = {"id3", "id6"}
    session = FakeSession(
        lambda ids: (
            FakeResponse(400, {"message": "bad event"}) if bad & set(ids) else FakeResponse(200)
        )
    )
    result = sender(session, FakeClock()).send(encoded(8))
    assert sorted(result.delivered) == [0, 1, 2, 4, 5, 7]
    assert sorted(i for i, _, _ in result.dead) == [3, 6]
    assert all(status == 400 and "bad event" in msg for _, status, msg in result.dead)
    assert session.calls[0] == [f"id{i}" for i in range(8)]
    assert set(session.timeouts) == {7.0}


def test_429_waits_retry_after_then_succeeds():
    answers = iter(
        [FakeResponse(429, {}, {"Retry-After": "2.5"}), FakeResponse(503), FakeResponse(200)]
    )
    clock = FakeClock()
    result = sender(FakeSession(lambda ids: next(answers)), clock).send(encoded(2))
    assert result.delivered == [0, 1]
    assert (result.throttled, result.retries, result.requests) == (1, 2, 3)
    assert clock.sleeps == [2.5, 2.0]  # Retry-After, then the 2nd backoff step with pinned jitter
    assert result.ambiguous == {0, 1}  # the 503 may have stored them


def test_retries_run_out():
    clock = FakeClock()
    with pytest.raises(RetriesExhaustedError, match="gave up after 3 attempts: HTTP 503"):
        sender(FakeSession(lambda ids: FakeResponse(503)), clock, attempts=3).send(encoded(1))
    assert clock.sleeps == [1.0, 2.0]


def test_other_4xx_are_not_retried():
    session = FakeSession(lambda ids: FakeResponse(422, {"message": "nope"}))
    result = sender(session, FakeClock()).send(encoded(1))
    assert result.dead == [(0, 422, "HTTP 422: nope")] and len(session.calls) == 1


def test_409_duplicate_counts_as_delivered():
    result = sender(FakeSession(lambda ids: FakeResponse(409)), FakeClock()).send(encoded(1))
    assert result.delivered == [0]


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credential_stops_and_names_what_to_check(status):
    with pytest.raises(FatalDeliveryError) as info:
        sender(
            FakeSession(lambda ids: FakeResponse(status, {"message": "Unauthorized"})), FakeClock()
        ).send(encoded(1))
    assert "${FUUL_API_KEY}" in str(info.value)
    assert "secret-key" not in str(info.value)


def test_timeouts_are_retried_and_marked_ambiguous():
    calls = iter([requests.ReadTimeout("read timed out"), FakeResponse(200)])

    def answer(ids):
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    result = sender(FakeSession(answer), FakeClock()).send(encoded(1))
    assert result.delivered == [0] and result.ambiguous == {0} and result.retries == 1


def test_connection_refused_is_not_ambiguous():
    calls = iter([requests.ConnectTimeout("connect timed out"), FakeResponse(200)])

    def answer(ids):
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    result = sender(FakeSession(answer), FakeClock()).send(encoded(1))
    assert result.delivered == [0] and result.ambiguous == set()


def test_the_environment_s_proxy_is_used(monkeypatch, clock):
    """Proxies and the CA bundle come from the environment, read once per sender."""
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "")
    plain = sender(None, clock)
    try:
        assert plain._environment["proxies"]["http"] == "http://proxy.internal:3128"
    finally:
        plain.close()


class RecordedDepartures:
    def __init__(self) -> None:
        self.unknown = 0

    def leaving(self, indexes: list[int]) -> None:
        self.unknown += len(indexes)

    def not_landed(self, indexes: list[int]) -> None:
        self.unknown -= len(indexes)


@pytest.mark.parametrize("key", ["secret-key\n", "secret\rkey"])
def test_a_request_that_cannot_be_built_never_left(clock, key):
    """requests refuses the header while preparing: nothing left, nothing may have landed,
    the destination stops, and the key is not in the message."""
    plain = sender(None, clock)
    plain._headers["Authorization"] = f"Bearer {key}"
    departures = RecordedDepartures()
    try:
        with pytest.raises(RequestNotBuiltError) as raised:
            plain.send(encoded(3), departures)
        assert raised.value.nothing_left and departures.unknown == 0
        assert "secret" not in str(raised.value) and "InvalidHeader" in str(raised.value)
        with pytest.raises(NotSent):  # the batches after it never leave either
            plain.send(encoded(1), departures)
    finally:
        plain.close()


class StoppedSender:
    """A sender whose destination was stopped by another batch's refused key: every batch it
    is handed never leaves (as Sender.send does once it has given up)."""

    stopping = threading.Event()

    def send(self, payloads, departures=None, request_id=None):
        refused = FatalDeliveryError("destination 'dest': fuul refused the credential")
        raise NotSent() from refused


def test_a_batch_that_never_left_surfaces_the_error_that_stopped_the_destination(tmp_path):
    """The error a run stops on is the one that stopped the destination, not NotSent; and the
    batches that never left are forgotten, nothing of them in doubt."""
    store = StateStore(sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}"))
    store.ensure()
    batcher = Batcher(max_events=2, max_bytes=None)
    batcher.start_partition("2024-01-01", 1)
    first, second = batcher.add_rows(rows([event(n) for n in range(5)]))[:2]
    sink = DeliverySink("dest", StoppedSender(), store, 1, lambda b, r, o: Acknowledged(b, r))
    assert sink.submit(first) == []
    with pytest.raises(FatalDeliveryError, match="refused the credential"):
        sink.submit(second)
    committed, unanswered = sink.stop(0.1)
    assert committed == [] and unanswered == 0
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(store.batches)).scalar() == 0
    sink.close()
    store.close()


class SharedStub:
    """A shared budget, as SharedBucket answers for a limit already one at a time."""

    def acquire(self, opens: bool = False) -> float:
        return 0.0

    def pause(self, seconds: float) -> None:
        pass

    def tighten(self, spacing: float) -> bool:
        return False  # its row's spacing was 0, but the limit keeps this one already


def test_a_429_one_at_a_time_with_a_shared_budget_widens_and_says_so(caplog):
    """Requests already one at a time (20/s, burst 1): the first refusal widens the slack; it
    is not reported as a change to one at a time because the shared row's spacing was 0."""
    config = DestinationConfig(
        vendor="fuul",
        base_url="http://vendor",
        credentials={"api_key": "${FUUL_API_KEY}"},
        mapping={"event_name": "played", "user": {"column": "wallet", "type": "evm_address"}},
        rate_limit={"requests": 20, "per_seconds": 1, "shared": True},
    )
    target = Destination.resolve("fuul_rewards", config, SourceConfig(url="sqlite://", table="t"))
    assert target.rate.one_at_a_time
    answers = iter([FakeResponse(429, {}, {"Retry-After": "1"}), FakeResponse(200)])
    session = FakeSession(lambda ids: next(answers))
    clock = FakeClock()
    shared: Any = SharedStub()
    sent = Sender(target, {"api_key": "k"}, timing=clock.timing(), session=session, shared=shared)
    with caplog.at_level("WARNING"):
        assert sent.send(encoded(1)).delivered == [0]
    assert "at the configured pace: from now on" not in caplog.text
    assert "refused (429) with requests one at a time: from now on" in caplog.text
