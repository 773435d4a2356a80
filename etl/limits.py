"""``rate_limit``: a destination's limit as the pipeline file states it, and how it is paced."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SHARED_MARGIN = 0.02  # rate_limit.margin's default for a budget shared by processes
# rate_limit.jitter_ms's defaults: 2 ms, and 1 ms more for each request in flight beyond the
# first (max_in_flight), each a thread that competes for the interpreter as the others leave.
# Measured against 1-second windows while a million rows were mapped: 2 requests in flight,
# no refusal with 2 ms; 4, 1-2 refused with 2 ms, none with 5; 12, 3-5 of 3,000 refused with
# 2 ms and 0-2 with 5.
JITTER_MS = 2.0
# ... and when requests leave one at a time, spaced as they really leave (strict): 3 ms. The gaps
# between arrivals at the sandbox were within 1 ms of the spacing for 99 % of them, but about one
# in 600 came 2.2 ms early (a bucket of 20 requests/s that banks nothing refused it with 2 ms).
SPACING_JITTER_MS = 3.0
# rate_limit.strict's default: on up to 50 requests a second, where its spacing costs at most
# 3 ms of every 20 (13 %). Faster, the interval nears the network's own jitter: no client keeps a
# bucket that banks nothing content there, and a vendor that grants such rates counts in windows
# or banks a burst; a limit of "no limit" (a million a second) is not slowed to 500 requests/s.
STRICT_UP_TO_PER_S = 50
JITTER_MS_PER_REQUEST = 1.0
# Refused one at a time, the slack doubles, up to a quarter of the interval (then the vendor
# allows less than the limit says).
WIDEST = 0.25


class RateLimit(_Model):
    """At most ``requests`` per ``per_seconds``, evenly paced; ``burst`` requests may go at once.

    By default two requests leave at least the interval plus ``jitter_ms`` apart (measured as
    they really leave): a vendor that does not publish how it counts may count with a bucket
    that banks nothing, which refuses any request that arrives sooner. That costs the jitter
    once per interval (3 ms: 1.5 % at 5 requests/s, 6 % at 20, 13 % at 50); ``strict: false``
    (or a ``burst`` above 1) says the vendor counts in windows, and only the window's rule
    below holds, as it does by default above 50 requests/s (see STRICT_UP_TO_PER_S).

    The sender paces so that ``requests + 1`` requests always span the window plus
    ``jitter_ms`` (or ``margin``, a share of the window, if that is more) as they leave: the
    jitter between leaving and arriving then never packs more than the limit into one of the
    vendor's windows, whether it counts them in a sliding window, a fixed one or a bucket. An
    absolute slack costs a long window nothing (10 requests a minute: 0.005 %) and a short one
    little (5 requests a second, 2 in flight: 0.3 %), where a share of the window cost both 2 %.
    A budget ``shared`` by processes that counts in windows keeps a share (2 % unless
    ``margin`` says otherwise): the guard that holds a request back after a late one sees its
    own process's requests only. One at a time, the spacing is kept across processes as the
    requests really leave (etl.shared_budget), and no share is kept.
    """

    requests: int = Field(gt=0)
    per_seconds: float = Field(gt=0)
    burst: int = Field(default=1, gt=0)
    margin: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="extra slack, as a share of the window (default 0; 0.02 when shared and not "
        "one at a time)",
    )
    jitter_ms: float | None = Field(
        default=None,
        ge=0,
        description="slack for the jitter between a request leaving and arriving, added to "
        "each window, and when strict to each interval (default 2 ms, and 1 ms for each "
        "request in flight beyond the first; strict: 3 ms)",
    )
    strict: bool | None = Field(
        default=None,
        description="space requests one interval (+ jitter_ms) apart as they really leave, "
        "which a vendor's bucket that banks nothing accepts; default: on up to 50 requests/s "
        "unless burst > 1. "
        "false: the vendor counts in windows, requests leave on the window's schedule",
    )
    shared: bool | None = Field(
        default=None,
        description="one budget for every process sending here (state database); default: on "
        "where runs start on several hosts (the Celery deployment), else off",
    )

    @property
    def one_at_a_time(self) -> bool:
        """Whether requests are spaced as they really leave (``strict``, or its default): a
        vendor that does not say how it counts may count with a bucket that banks nothing."""
        if self.strict is not None:
            return self.strict
        return self.burst == 1 and self.requests / self.per_seconds <= STRICT_UP_TO_PER_S

    def for_requests_in_flight(self, in_flight: int) -> RateLimit:
        """This limit with ``jitter_ms`` set, for a destination that sends ``in_flight``
        requests at once: as given, or its default."""
        if self.jitter_ms is not None:
            return self
        if self.one_at_a_time:
            return self.model_copy(update={"jitter_ms": SPACING_JITTER_MS})
        extra = JITTER_MS_PER_REQUEST * (in_flight - 1)
        return self.model_copy(update={"jitter_ms": JITTER_MS + extra})

    @property
    def jitter(self) -> float:
        """The slack for jitter, in seconds: ``jitter_ms``, or its default for one request in
        flight (see for_requests_in_flight)."""
        return (JITTER_MS if self.jitter_ms is None else self.jitter_ms) / 1000

    @property
    def share(self) -> float:
        """The slack as a share of the window: ``margin``, or its default."""
        if self.margin is not None:
            return self.margin
        return SHARED_MARGIN if self.shared and not self.one_at_a_time else 0.0

    @property
    def window(self) -> float:
        """The seconds that ``requests`` requests are spread over: the vendor's window with
        its slack, the jitter or the share (paced at ``1 - margin`` of the limit), the larger."""
        return max(self.per_seconds / (1 - self.share), self.per_seconds + self.jitter)

    @property
    def per_second(self) -> float:
        return self.requests / self.window

    @property
    def slot_seconds(self) -> float:
        """The seconds between two requests' slots at this pace: the interval, or the spacing
        when they leave one at a time."""
        return max(1 / self.per_second, self.spacing)

    @property
    def guard_window(self) -> tuple[int, float]:
        """No more than ``requests`` leave in this many seconds, measured when they leave (see
        etl.ratelimit)."""
        return self.requests, self.window

    @property
    def spacing(self) -> float:
        """Requests one at a time (``strict``, or its default): the seconds between two as
        they really leave, :attr:`strict_spacing`. 0 otherwise (the window's rule alone)."""
        return self.strict_spacing if self.one_at_a_time else 0.0

    def widened(self, spacing: float) -> float | None:
        """After a refusal of requests already ``spacing`` apart: the spacing with twice its
        slack over the interval (a process that sends late, or a vendor's own jitter, took
        more than the slack), at most the interval x (1 + WIDEST); None if it is there."""
        interval = self.margined_interval
        wider = min(interval + 2 * max(spacing - interval, self.jitter), interval * (1 + WIDEST))
        return wider if wider > spacing + 1e-9 else None

    @property
    def strict_spacing(self) -> float:
        """The seconds between two requests as they really leave that a bucket banking nothing
        accepts: the interval with its margin, plus the jitter (``jitter_ms`` if strict and
        set, else a strict limit's default: the spacing is of one request at a time)."""
        given = self.one_at_a_time and self.jitter_ms is not None
        jitter = self.jitter if given else SPACING_JITTER_MS / 1000
        return self.margined_interval + jitter

    @property
    def margined_interval(self) -> float:
        """The seconds between two requests at this pace, with the margin's share kept."""
        return self.per_seconds / self.requests / (1 - self.share)
