"""What every vendor emulator shares: replies, faults, the strict sliding window, the base class.

Its own module, so that the emulators and the server that routes to them import it and not each
other.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import orjson


class SandboxState(Protocol):
    """What an emulator reads and writes of the sandbox that holds it."""

    time_scale: float
    clock: Callable[[], float]
    stats: dict[str, Counter[str]]

    def record(self, vendor: str, event: dict[str, Any]) -> None: ...


_ZERO_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


def parse_json(body: bytes) -> Any:
    """A request's JSON body (orjson: 0.6 ms for 1,000 events against the standard library's
    0.8, its check included; parsing was a sixth of the sandbox's CPU). A body with a run of
    19 digits or more goes to the standard library, which keeps an integer beyond 64 bits exact
    (orjson would make it a float), as do NaN and the other literals orjson refuses.
    ValueError if it is not JSON."""
    if _LONG_NUMBER not in body.translate(_ZERO_DIGITS):  # 0.1 ms (a regex: 1.4)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    return json.loads(body)


@dataclass
class Faults:
    """Faults injected into one vendor's responses."""

    error_rate: float = 0.0  # answer 503 without storing
    lose_rate: float = 0.0  # store, then drop the connection without answering
    latency_ms: float = 0.0  # added before every answer
    # What a misconfigured URL or a proxy in front of the vendor answers instead of it, without
    # storing anything: a status (404, 405, 413, a 3xx, or a 200 that is not the vendor's
    # success), its body and content type, and a Location for a redirect.
    answer_status: int = 0
    answer_body: str = ""
    answer_content_type: str = "text/html"
    answer_location: str = ""
    answer_after: int = 0  # that answer only after this many requests (a vendor that dies)
    # A strict token bucket in front of the vendor, in real seconds: ``bucket_per_s`` tokens a
    # second, at most ``bucket_burst`` banked (1: no banking); a request without a token is
    # answered 429 with the time until the next one.
    bucket_per_s: float = 0.0
    bucket_burst: float = 1.0
    # A sliding window in front of the vendor, in real seconds: at most ``window_per_s``
    # requests in any second (a vendor that counts in windows); a request over it gets 429.
    window_per_s: int = 0


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] | None = None
    content_type: str = "application/json"


class TokenBucket:
    """``per_s`` tokens a second, at most ``burst`` of them banked; a request takes one."""

    def __init__(self, per_s: float, burst: float, clock: Callable[[], float]) -> None:
        self.per_s = per_s
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self.updated = clock()

    def check(self, now: float) -> float | None:
        """Take a token for a request that arrived at ``now``; None if there was one, else
        the seconds until there is."""
        self.tokens = min(self.burst, self.tokens + max(now - self.updated, 0) * self.per_s)
        self.updated = max(now, self.updated)
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return (1 - self.tokens) / self.per_s


class SlidingWindow:
    """At most ``limit`` requests per key in any window of ``seconds`` (the strict reading)."""

    def __init__(self, limit: int, seconds: float, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.seconds = seconds
        self.clock = clock
        self.hits: dict[str, deque[float]] = defaultdict(deque)

    def check(self, key: str, now: float | None = None) -> float | None:
        """Record a request (arrived ``now``, by default the clock's now); return None if
        allowed, else the seconds until it would be."""
        now = self.clock() if now is None else now
        hits = self.hits[key]
        while hits and hits[0] <= now - self.seconds:
            hits.popleft()
        if len(hits) >= self.limit:
            return max(hits[0] + self.seconds - now, 0.001)
        hits.append(now)
        return None


class VendorEmulator:
    """One vendor's API. Subclasses route requests; the sandbox serializes calls with its lock."""

    name: ClassVar[str]

    def __init__(self, sandbox: SandboxState) -> None:
        self.sandbox = sandbox

    def limiter(self, requests: int, per_seconds: float) -> SlidingWindow:
        return SlidingWindow(requests, per_seconds / self.sandbox.time_scale, self.sandbox.clock)

    def throttled(self, retry_after: float) -> Reply:
        self.sandbox.stats[self.name]["throttled"] += 1
        shown = (
            f"{retry_after:.3f}".rstrip("0").rstrip(".")
            if retry_after < 10
            else str(int(retry_after + 0.999))
        )
        return Reply(429, {"message": "Too many requests"}, {"Retry-After": shown})

    def store(self, event: dict[str, Any]) -> None:
        self.sandbox.record(self.name, event)

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """Answer one request; ``headers`` is case-insensitive."""
        raise NotImplementedError
