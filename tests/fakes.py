"""Fakes for the boundaries: a clock that moves only when someone sleeps."""

import threading

from etl.timing import Timing


class FakeClock:
    """A clock that only moves when someone sleeps.

    Threads sleep concurrently as in real time: a thread that read the clock at t and sleeps s
    wakes at t + s, and the clock moves to the latest wake-up, not to the sum of all sleeps.
    One difference remains: a thread preempted between waking and acting may act after the
    clock jumped for another thread's sleep, so tests that assert exact pacing send one request
    at a time.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._lock = threading.Lock()
        self._seen = threading.local()

    def __call__(self) -> float:
        with self._lock:
            self._seen.at = self.now
            return self.now

    def timing(self) -> Timing:
        """This clock for a whole run, with the retry jitter pinned (the backoff is exact)."""
        return Timing(clock=self, sleep=self.sleep, jitter=lambda delay: delay)

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            start = getattr(self._seen, "at", self.now)
            self.now = max(self.now, start + seconds)
            self._seen.at = self.now
