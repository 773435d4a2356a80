import itertools
import threading

import pytest

from etl.ratelimit import BucketRegistry, TokenBucket
from etl.retry import RetryPolicy
from etl.timing import full_jitter
from tests.fakes import FakeClock


def test_backoff_doubles_to_the_cap_with_pinned_jitter():
    policy = RetryPolicy(max_attempts=8, base_delay=1.0, max_delay=10.0, jitter=lambda d: d)
    assert [policy.sleep_seconds(a, None) for a in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_jitter_is_applied_to_the_backoff():
    policy = RetryPolicy(base_delay=2.0, jitter=lambda d: d / 2)
    assert policy.sleep_seconds(3, None) == 4.0


def test_retry_after_wins_and_is_capped():
    policy = RetryPolicy(max_retry_after=30.0, jitter=lambda d: 999.0)
    assert policy.sleep_seconds(1, 7.5) == 7.5
    assert policy.sleep_seconds(5, 0.0) == 0.0
    assert policy.sleep_seconds(1, 3600.0) == 30.0


def test_attempt_budget():
    policy = RetryPolicy(max_attempts=3)
    assert [policy.should_retry(a) for a in (1, 2, 3)] == [True, True, False]


def test_full_jitter_stays_within_half_and_whole():
    for _ in range(200):
        assert 2.0 <= full_jitter(4.0) <= 4.0


def test_bucket_spaces_requests_evenly():
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=1, clock=clock, sleep=clock.sleep)
    starts = []
    for _ in range(5):
        bucket.acquire()
        starts.append(clock())
    gaps = [round(b - a, 9) for a, b in itertools.pairwise(starts)]
    assert gaps == [0.1] * 4


def test_bucket_burst_then_steady_rate():
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=3, clock=clock, sleep=clock.sleep)
    waits = [bucket.acquire() for _ in range(5)]
    assert waits[:3] == [0, 0, 0]
    assert waits[3:] == pytest.approx([0.5, 0.5])


def test_bucket_never_exceeds_the_rate_in_any_window():
    clock = FakeClock()
    bucket = TokenBucket(rate=5, burst=1, clock=clock, sleep=clock.sleep)
    times = []
    for _ in range(50):
        bucket.acquire()
        times.append(clock())
        clock.sleep(0.013)  # work between requests
    for i, t in enumerate(times):
        in_window = [u for u in times[i:] if u < t + 1.0]
        assert len(in_window) <= 5


def _left_times(window: tuple[int, float] | None) -> list[float]:
    """When 40 requests leave, paced at 98 % of 10 per second with a burst of 3, one sleep in
    five oversleeping by 80 ms (a thread woken late), which the burst then makes up for."""
    clock = FakeClock()
    calls = itertools.count()

    def late_sleep(seconds: float) -> None:
        clock.sleep(seconds + (0.08 if next(calls) % 5 == 2 else 0.0))

    bucket = TokenBucket(rate=9.8, burst=3, clock=clock, sleep=late_sleep, window=window)
    left = []
    for _ in range(40):
        bucket.acquire()
        left.append(clock())
    return left


def test_a_late_request_holds_back_the_one_a_window_later():
    unguarded = _left_times(None)
    assert min(b - a for a, b in zip(unguarded, unguarded[10:], strict=False)) < 1.0  # too many
    left = _left_times((10, 1.02))
    assert min(b - a for a, b in zip(left, left[10:], strict=False)) >= 1.02 - 1e-9
    assert left[-1] - left[0] < unguarded[-1] - unguarded[0] + 0.2  # and hardly slower


def test_without_a_window_only_the_slots_pace():
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=1, clock=clock, sleep=clock.sleep)
    bucket.acquire()
    clock.sleep(0.5)  # late
    assert bucket.acquire() == 0


def test_idle_time_does_not_build_a_burst():
    clock = FakeClock()
    bucket = TokenBucket(rate=1, burst=1, clock=clock, sleep=clock.sleep)
    bucket.acquire()
    clock.sleep(100)
    assert bucket.acquire() == 0
    assert bucket.acquire() == pytest.approx(1.0)


def test_pause_delays_every_later_slot():
    clock = FakeClock()
    bucket = TokenBucket(rate=100, burst=1, clock=clock, sleep=clock.sleep)
    bucket.acquire()
    bucket.pause(5.0)
    assert bucket.acquire() == pytest.approx(5.0)


def test_threads_share_one_bucket():
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=1, clock=clock, sleep=lambda s: None)
    waits: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            w = bucket.reserve() - clock()
            with lock:
                waits.append(round(w, 9))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 40 reservations at a frozen clock: slots 0, 0.1, ..., 3.9, each taken once
    assert sorted(waits) == [round(i * 0.1, 9) for i in range(40)]


def test_registry_shares_a_bucket_per_endpoint_and_credential():
    registry = BucketRegistry()
    a = registry.get("http://x/events", "key1", lambda: TokenBucket(1))
    assert registry.get("http://x/events", "key1", lambda: TokenBucket(1)) is a
    assert registry.get("http://x/events", "key2", lambda: TokenBucket(1)) is not a
    assert registry.get("http://x/other", "key1", lambda: TokenBucket(1)) is not a


def test_a_strict_bucket_keeps_requests_a_spacing_apart_as_they_leave():
    """Against a vendor whose bucket banks nothing: a request that left late does not let the
    next one leave on its own schedule, closer than the spacing; the second request of a run
    waits one spacing more (the first one opened the connection)."""
    clock = FakeClock()
    calls = itertools.count()

    def late_sleep(seconds: float) -> None:
        clock.sleep(seconds + (0.03 if next(calls) % 4 == 1 else 0.0))

    spacing = 1 / 20 * 1.02 + 0.002
    unguarded = 0.0
    for guard, expected_min in ((0.0, None), (spacing, spacing)):
        bucket = TokenBucket(20 * 0.98, 1, clock, late_sleep, spacing=guard)
        left = []
        for _ in range(30):
            bucket.acquire()
            left.append(clock())
        gaps = [b - a for a, b in itertools.pairwise(left)]
        if expected_min is None:
            assert min(gaps) < 1 / 20  # unguarded: after a late one, the next is too close
            unguarded = left[-1] - left[0]
        else:
            assert min(gaps) >= expected_min - 1e-9
            assert gaps[0] >= 2 * spacing - 1e-9
            assert left[-1] - left[0] < unguarded * 1.25  # its price: the spacing, not more
    # two connections in the pool: the first request on each opens it, each waits one more
    bucket = TokenBucket(20 * 0.98, 1, clock, clock.sleep, spacing=spacing, connections=2)
    left = []
    for _ in range(4):
        bucket.acquire()
        left.append(clock())
    gaps = [b - a for a, b in itertools.pairwise(left)]
    assert gaps == pytest.approx([2 * spacing, 2 * spacing, spacing])


def test_a_refusal_tightens_a_windowed_bucket_into_a_strict_one():
    """A bucket paced by windows lets a burst leave (and requests after a late one leave close
    behind it); once tightened after a 429, every request leaves a spacing after the one before,
    from every thread, and tightening again changes nothing."""
    from etl.config import RateLimit

    limit = RateLimit(requests=20, per_seconds=1, burst=5)
    clock = FakeClock()
    bucket = TokenBucket(limit.per_second, limit.burst, clock, clock.sleep, limit.guard_window)
    left = []
    for _ in range(5):
        bucket.acquire()
        left.append(clock())
    assert left[-1] == pytest.approx(left[0])  # the burst left at once
    assert bucket.tighten(limit.strict_spacing)
    assert not bucket.tighten(limit.strict_spacing)
    left = []
    for _ in range(30):
        bucket.acquire()
        left.append(clock())
    gaps = [b - a for a, b in itertools.pairwise(left)]
    assert min(gaps) >= limit.strict_spacing - 1e-9
    assert limit.strict_spacing == pytest.approx(0.05 + 0.003)  # a strict limit's jitter


def test_requests_leave_one_at_a_time_unless_the_vendor_counts_in_windows():
    """By default (a vendor that does not say how it counts) requests are spaced as they
    leave; ``strict: false`` or a burst above 1 says it counts in windows: no spacing."""
    from etl.config import RateLimit

    assert RateLimit(requests=20, per_seconds=1).spacing == pytest.approx(0.05 + 0.003)
    assert RateLimit(requests=20, per_seconds=1, strict=False).spacing == 0.0
    assert RateLimit(requests=20, per_seconds=1, burst=5).spacing == 0.0
    assert RateLimit(requests=20, per_seconds=1, burst=5, strict=True).spacing > 0
    # above 50 requests/s (and "no limit") the window's rule only, unless strict says so
    assert RateLimit(requests=51, per_seconds=1).spacing == 0.0
    assert RateLimit(requests=1_000_000, per_seconds=1).spacing == 0.0
    assert RateLimit(requests=100, per_seconds=1, strict=True).spacing > 0
    strict = RateLimit(requests=20, per_seconds=1, strict=True)
    assert strict.spacing == pytest.approx(0.05 + 0.003)
    assert RateLimit(requests=20, per_seconds=1, strict=True, margin=0.02).spacing == (
        pytest.approx(0.05 / 0.98 + 0.003)
    )


@pytest.mark.parametrize(
    ("requests", "seconds", "share"),
    [(5, 1.0, 0.998), (20, 1.0, 0.998), (10, 60.0, 0.99997), (100, 60.0, 0.99997)],
)
def test_the_slack_is_absolute_so_a_short_window_loses_little(requests, seconds, share):
    from etl.config import RateLimit

    limit = RateLimit(requests=requests, per_seconds=seconds)
    assert limit.per_second / (requests / seconds) == pytest.approx(share, abs=5e-5)
    assert limit.guard_window == (requests, pytest.approx(seconds + 0.002))
    # processes sharing a budget paced by windows do not see each other's departures: a
    # share of the window; one at a time (the default here), they do (etl.shared_budget)
    shared = RateLimit(requests=requests, per_seconds=seconds, shared=True, strict=False)
    assert shared.per_second == pytest.approx(requests / seconds * 0.98)
    assert RateLimit(requests=requests, per_seconds=seconds, shared=True, margin=0).share == 0
    one_at_a_time = RateLimit(requests=requests, per_seconds=seconds, shared=True)
    assert one_at_a_time.one_at_a_time and one_at_a_time.share == 0


def test_the_jitter_slack_grows_with_the_requests_in_flight():
    """Each request in flight beyond the first is a sender thread that competes for the
    interpreter: 1 ms more; a strict limit spaces one request at a time; jitter_ms wins."""
    from etl.config import RateLimit

    limit = RateLimit(requests=50, per_seconds=1, strict=False)
    assert [limit.for_requests_in_flight(n).jitter_ms for n in (1, 2, 4, 12)] == [2, 3, 5, 13]
    strict = RateLimit(requests=20, per_seconds=1)
    assert strict.for_requests_in_flight(12).spacing == pytest.approx(0.05 + 0.003)
    given = RateLimit(requests=50, per_seconds=1, jitter_ms=20)
    assert given.for_requests_in_flight(12).guard_window == (50, pytest.approx(1.02))


@pytest.mark.parametrize(("requests", "seconds"), [(5, 1.0), (20, 1.0), (10, 60.0)])
def test_paced_requests_never_overfill_a_vendor_window_despite_arrival_jitter(requests, seconds):
    """Departures paced by a default limit (late wake-ups included), each arriving up to
    ``jitter_ms`` after it leaves: a sliding window, a fixed window and a bucket that banks
    nothing beyond its limit all count at most ``requests`` in any window."""
    import random

    from etl.config import RateLimit

    limit = RateLimit(requests=requests, per_seconds=seconds)
    rng = random.Random(requests)
    clock = FakeClock()

    def late_sleep(s: float) -> None:
        clock.sleep(s + rng.choice((0.0, 0.0, 0.0, rng.uniform(0, 0.05))))

    bucket = TokenBucket(limit.per_second, 1, clock, late_sleep, limit.guard_window, limit.spacing)
    arrivals = []
    for _ in range(6 * requests):
        bucket.acquire()
        arrivals.append(clock() + rng.uniform(0, limit.jitter))
    arrivals.sort()
    # Sliding window: no window of the vendor's length holds one request too many.
    assert all(b - a > seconds for a, b in zip(arrivals, arrivals[requests:], strict=False))
    # Fixed windows, whatever their phase: at most the limit in each.
    for phase in (0.0, 0.25 * seconds, 0.5 * seconds, 0.99 * seconds):
        counts: dict[int, int] = {}
        for t in arrivals:
            slot = int((t + phase) // seconds)
            counts[slot] = counts.get(slot, 0) + 1
        assert max(counts.values()) <= requests


def test_refused_one_at_a_time_the_slack_doubles_up_to_a_quarter_of_the_interval():
    from etl.config import RateLimit

    limit = RateLimit(requests=20, per_seconds=1)
    steps = [limit.strict_spacing]
    while (wider := limit.widened(steps[-1])) is not None:
        steps.append(wider)
    assert steps == pytest.approx([0.053, 0.056, 0.062, 0.0625])  # slack 3, 6, 12 ms, the cap
    # a window limit tightened to the strict spacing widens from there
    windows = RateLimit(requests=10, per_seconds=1, strict=False)
    assert windows.widened(windows.strict_spacing) == pytest.approx(0.1 + 0.006)
