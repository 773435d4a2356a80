"""Pacing requests so that a vendor's known limit is never exceeded.

One :class:`TokenBucket` per endpoint and credential (see :class:`BucketRegistry`), shared by
every thread and destination of a run that sends there. It is a GCRA-style bucket: each caller
reserves the next free slot under a lock and then sleeps outside it, so requests in flight are
spaced evenly at the limit.

Given the vendor's window as well (``requests`` per ``seconds``), the bucket also keeps the
times at which the last ``requests`` requests really left, and holds a request back until the
oldest of them is a window old: a request that left late (a thread woken late, a busy
interpreter) can then never pack one request too many into the vendor's window, whatever the
margin. Against a bucket that banks nothing (burst 1), it also keeps two requests at least
``spacing`` apart as they really leave: after a late one, the next is not sent on its own
schedule, which would put the two closer than the vendor's interval. A vendor that refuses a
request sent at the configured pace counts with such a bucket whatever it was configured as:
:meth:`TokenBucket.tighten` then spaces every later request so, for every thread sending there.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable

from etl.timing import Clock, Sleep


class TokenBucket:
    """``rate`` requests per second on average, at most ``burst`` at once."""

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        window: tuple[int, float] | None = None,
        spacing: float = 0.0,
        connections: int = 1,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._window = window[1] if window else 0.0
        self._sent: deque[float] = deque(maxlen=window[0] if window else 1)
        self._sent_lock = threading.Lock()
        self._spacing = spacing
        self._left = float("-inf")  # when the last request really left
        self._opening = connections  # requests still to open a connection of the pool
        self.interval = 1.0 / rate
        self.tolerance = (burst - 1) * self.interval
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = clock()  # theoretical arrival time of the next request

    def reserve(self) -> float:
        """Take the next slot; return the clock time at which the caller may use it."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next - self.tolerance)
            self._next = max(self._next, now) + self.interval
            return start

    def acquire(self) -> float:
        """Wait for the next slot; return the seconds waited."""
        slot = self.reserve()
        waited = 0.0
        # Sleep until the slot's time, however the clock moved meanwhile (other threads too).
        while (remaining := slot - self._clock()) > 0:
            self._sleep(remaining)
            waited += remaining
        if self._window:
            with self._sent_lock:
                sent = self._sent
                while (
                    len(sent) == sent.maxlen
                    and (remaining := sent[0] + self._window - self._clock()) > 0
                ):
                    self._sleep(remaining)
                    waited += remaining
                sent.append(self._clock())
        if self._spacing:
            with self._sent_lock:
                while (remaining := self._left + self._spacing - self._clock()) > 0:
                    self._sleep(remaining)
                    waited += remaining
                # The first request on each of the pool's ``connections`` also opens it, and
                # reaches the vendor later than those after it leave for it: the one after it
                # waits one spacing more.
                opens = self._opening > 0
                self._opening -= opens
                self._left = self._clock() + (self._spacing if opens else 0.0)
        return waited

    @property
    def spacing(self) -> float:
        """The seconds two requests leave apart at least (0: the window's rule alone)."""
        return self._spacing

    def tighten(self, spacing: float) -> bool:
        """Space requests at least ``spacing`` apart as they really leave, with no burst, from
        now on (after a refusal at the configured pace); False if they were already."""
        with self._lock, self._sent_lock:
            if self._spacing >= spacing and self.tolerance == 0:
                return False
            self._spacing = max(self._spacing, spacing)
            self.tolerance = 0.0
            return True

    def pause(self, seconds: float) -> None:
        """Push every later slot back, after the vendor said to wait (429 with Retry-After)."""
        with self._lock:
            self._next = max(self._next, self._clock() + seconds)


class BucketRegistry:
    """One bucket per (endpoint URL, credential); the credential is kept only as a hash."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._lock = threading.Lock()

    def get(self, url: str, credential: str, factory: Callable[[], TokenBucket]) -> TokenBucket:
        key = (url, hashlib.sha256(credential.encode()).hexdigest())
        with self._lock:
            if key not in self._buckets:
                self._buckets[key] = factory()
            return self._buckets[key]
