"""Delivering one batch: pacing, retries, splitting a rejected batch, sorting every event.

The vendor says what a response means (:mod:`etl.vendors.answers`); this module decides what to
do about it, and tells the caller, as each request leaves and as each answer comes back, which
events a request carried and whether it may have stored them (:class:`Departures`): that is what
keeps the count of events in doubt exact across crashes. Thread-safe: several batches of one
destination may be in flight at once, sharing the session and the bucket.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from etl import __version__
from etl.destination import Destination
from etl.errors import (
    DeliveryError,
    EndpointError,
    FatalDeliveryError,
    RequestNotBuiltError,
    RetriesExhaustedError,
    UnknownAnswerError,
)
from etl.events import SendResult
from etl.ratelimit import BucketRegistry, TokenBucket
from etl.retry import RetryPolicy
from etl.shared_budget import SharedBucket
from etl.state import StateStore
from etl.timing import REAL_TIME, Interrupted, Timing
from etl.vendors.answers import Classified, Verdict

log = logging.getLogger(__name__)
E = TypeVar("E", bound=DeliveryError)

USER_AGENT = f"etl-backfill/{__version__}"
UNKNOWN_ATTEMPTS = 3  # answers that are not the vendor's, in a row, before the destination stops
# Raised while a request is built (prepared, or checked by the adapter before it connects):
# the request never left.
NOT_BUILT = (
    requests.exceptions.InvalidHeader,
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.URLRequired,
    requests.exceptions.InvalidJSONError,
    UnicodeError,
    ValueError,
)


class Departures(Protocol):
    """Told as the requests of one batch leave and are answered."""

    def leaving(self, indexes: list[int]) -> None:
        """A request carrying these events is about to leave."""

    def not_landed(self, indexes: list[int]) -> None:
        """The answer to the last request of these events shows it stored nothing."""


class NotSent(Exception):
    """The run is stopping and no request of this batch had left."""


class Stopped(Exception):
    """The run is stopping between two attempts of a request: the batch stays unanswered."""


def credential_string(credentials: dict[str, str]) -> str:
    """The credentials as one string: what a rate budget is kept per (never stored as is)."""
    return "|".join(credentials[k] for k in sorted(credentials))


class Sender:
    """Sends batches of encoded payloads to one destination."""

    def __init__(
        self,
        target: Destination,
        credentials: dict[str, str],
        *,
        timing: Timing = REAL_TIME,
        buckets: BucketRegistry | None = None,
        shared: SharedBucket | None = None,
        session: requests.Session | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        """``buckets``: the run's token buckets, shared by its destinations that send to one
        endpoint with one key; ``shared``: the budget shared with other processes, if any;
        ``stopping``: set when the run stops (no request leaves after it)."""
        config = target.config
        self.destination = target.name
        self.vendor = target.vendor
        self.url = target.url
        self.timeout = config.timeout_seconds
        self.policy = RetryPolicy(max_attempts=config.max_attempts, jitter=timing.jitter)
        self.credential_hint = target.credential_hint
        self.where = f"destinations.{target.name}.base_url"
        self._sleep = timing.sleep
        self._headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **self.vendor.headers(credentials),
        }
        rate = self.rate = target.rate
        self.bucket = (buckets or BucketRegistry()).get(
            self.url,
            credential_string(credentials),
            lambda: TokenBucket(
                rate.per_second,
                rate.burst,
                timing.clock,
                timing.sleep,
                rate.guard_window,
                rate.spacing,
                target.requests_in_flight,
            ),
        )
        self.shared = shared
        self.stopping = stopping or threading.Event()
        self._fatal: DeliveryError | None = None
        self._told = threading.Lock()  # the spacing widened after refusals, said once each
        self._told_pace = False
        self._widened_at = float("-inf")  # when, on timing's clock
        self._clock = timing.clock
        if session is None:
            session = requests.Session()
            size = 2 * target.requests_in_flight + 1
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=size)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self.session = session
        self._environment = session.merge_environment_settings(self.url, {}, None, None, None)
        self._request_id = threading.local()  # the batch this thread sends

    def send(
        self,
        payloads: list[bytes],
        departures: Departures | None = None,
        request_id: str | None = None,
    ) -> SendResult:
        """Deliver what can be delivered; every payload ends up in ``delivered`` or ``dead``.

        Raises a DeliveryError when the destination must stop (credential refused, not the
        vendor's API at this URL, retries or unknown answers run out): nothing of this batch is
        then known to be delivered, and every later call raises it again without a request.
        Raises NotSent or Stopped when the run stops. ``request_id`` goes out as X-Request-Id
        (the batch's id in the ledger and the delivery log: a vendor's logs can be matched).
        """
        if self._fatal is not None:  # the destination stops: this batch never leaves
            raise NotSent() from self._fatal
        result = SendResult()
        self._request_id.value = request_id
        self._send_part(payloads, list(range(len(payloads))), result, departures)
        return result

    def _send_part(
        self,
        payloads: list[bytes],
        idx: list[int],
        result: SendResult,
        departures: Departures | None,
    ) -> None:
        classified = self._post(payloads, idx, result, departures)
        if classified.verdict is Verdict.DELIVERED:
            result.delivered.extend(idx)
        elif len(idx) == 1:
            result.dead.append((idx[0], result.last_status, classified.message))
        else:  # rejected whole: split to isolate the bad events, deliver the good ones
            half = len(idx) // 2
            self._send_part(payloads, idx[:half], result, departures)
            self._send_part(payloads, idx[half:], result, departures)

    def _post(
        self,
        payloads: list[bytes],
        idx: list[int],
        result: SendResult,
        departures: Departures | None,
    ) -> Classified:
        """One request until it is answered for good: DELIVERED or REJECTED, or an error."""
        body = self.vendor.body([payloads[i] for i in idx])
        attempt = unknown_answers = 0
        while True:
            attempt += 1
            self._wait_for_slot(result)
            if departures is not None:
                departures.leaving(idx)
            try:
                classified, status = self._attempt(body)
            except RequestNotBuiltError as exc:  # it never left: it counts nothing
                if departures is not None:
                    departures.not_landed(idx)
                exc.nothing_left = result.requests == 0
                raise self._give_up(exc) from None
            result.requests += 1
            result.last_status = status
            if classified.landed is False and departures is not None:
                departures.not_landed(idx)
            if classified.verdict in (Verdict.DELIVERED, Verdict.REJECTED):
                return classified
            self._stop_on(classified, len(body))
            if classified.landed is None:
                for i in idx:
                    result.unknown[i] += 1
            if classified.verdict is Verdict.UNKNOWN:
                unknown_answers += 1
                if unknown_answers >= UNKNOWN_ATTEMPTS:
                    raise self._give_up(
                        UnknownAnswerError(
                            f"destination {self.destination!r}: POST {self.url} answered "
                            f"{classified.message} {unknown_answers} times, which is not "
                            f"{self.vendor.title}'s success: is {self.where} the vendor's API?"
                        )
                    )
            elif not self.policy.should_retry(attempt):
                raise RetriesExhaustedError(
                    f"destination {self.destination!r}: gave up after {attempt} attempts: "
                    f"{classified.message}"
                )
            self._back_off(attempt, classified, status, result)

    def _wait_for_slot(self, result: SendResult) -> None:
        try:
            self.bucket.acquire()
            if self.shared is not None:
                self.shared.acquire(self._opens_a_connection())
        except Interrupted:
            self.stopping.set()
        if self.stopping.is_set():
            raise Stopped() if result.requests else NotSent()

    def _opens_a_connection(self) -> bool:
        """Whether the next request will open a connection (and so reach the vendor later than
        its leaving says): no pool of the session (one host: one pool) has an idle one for it
        (urllib3's pool hands out the last put back; an unopened place is None). True when
        the pools cannot be looked at."""
        try:
            adapter: Any = self.session.get_adapter(self.url)
            pools = adapter.poolmanager.pools
            for key in pools.keys():  # noqa: SIM118 (iterating it raises: not thread-safe)
                pool = pools.get(key)
                idle = pool.pool.queue if pool is not None and pool.pool is not None else ()
                if idle and idle[-1] is not None:
                    return False
        except Exception:  # another adapter, a proxy manager: count it as opening
            return True
        return True

    def _attempt(self, body: bytes) -> tuple[Classified, int | None]:
        try:
            resp = self._http_post(body)
        except NOT_BUILT as exc:
            raise self._not_built(exc) from None
        except requests.RequestException as exc:
            return self._connection_problem(exc), None
        classified = self.vendor.classify(resp.status_code, resp.text, dict(resp.headers))
        return classified, resp.status_code

    def _not_built(self, exc: Exception) -> RequestNotBuiltError:
        """A request that could not be built: what to check. The exception's own text may
        hold a header's value (the key): only its type is said."""
        kind = type(exc).__name__
        if isinstance(exc, requests.exceptions.InvalidHeader) or "header" in str(exc).lower():
            check = (
                f"a header's name or value is not valid: check {self.credential_hint} and "
                f"destinations.{self.destination}.options"
            )
        else:
            check = f"the URL {self.url!r} is not valid: check {self.where}"
        return RequestNotBuiltError(
            f"destination {self.destination!r}: the request could not be built ({kind}): "
            f"{check}; nothing was sent",
            nothing_left=True,
        )

    def _connection_problem(self, exc: requests.RequestException) -> Classified:
        """A request without an answer: retried; it may have landed unless it never connected."""
        host = urlsplit(self.url).netloc
        if isinstance(exc, requests.exceptions.SSLError):
            return Classified(Verdict.ENDPOINT, f"TLS failed with {host}: {type(exc).__name__}")
        if isinstance(exc, requests.ConnectTimeout):
            return Classified(Verdict.RETRY, f"no connection to {host} within {self.timeout:g}s")
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        if type(reason).__name__ in {"NewConnectionError", "NameResolutionError"}:
            return Classified(Verdict.RETRY, f"{host} refused the connection or is unknown")
        if isinstance(exc, requests.Timeout):
            message = f"no answer from {self.url} within {self.timeout:g}s"
        else:
            message = f"the connection to {host} broke before the answer ({type(exc).__name__})"
        return Classified(Verdict.RETRY, message, landed=None)

    def _stop_on(self, classified: Classified, size: int) -> None:
        """Raise (and remember) what stops the destination: a refused credential, an URL that
        is not the vendor's API."""
        if classified.verdict is Verdict.FATAL:
            raise self._give_up(
                FatalDeliveryError(
                    f"destination {self.destination!r}: {self.vendor.name} refused the "
                    f"credential ({classified.message}); check {self.credential_hint}"
                )
            )
        if classified.verdict is Verdict.ENDPOINT:
            detail = classified.message
            if detail.startswith("HTTP 413"):
                detail += f" for {size:,} bytes, within {self.vendor.title}'s limits (a proxy?)"
            raise self._give_up(
                EndpointError(
                    f"destination {self.destination!r}: POST {self.url} answered {detail}: not "
                    f"{self.vendor.title}'s API there; check {self.where}"
                )
            )

    def _refused_when_paced(self) -> None:
        """A 429 with requests already one at a time: a request left later than its slot, by
        more than the slack (a busy process: another thread held the interpreter), or the
        vendor's own jitter. The slack doubles, for every thread and process sending here, at
        most once a window (refusals of requests already out come together); at its widest,
        the vendor allows less than ``rate_limit`` says: said once."""
        with self._told:
            now = self._clock()
            if now - self._widened_at < self.rate.per_seconds:
                return
            wider = self.rate.widened(self.bucket.spacing)
            if wider is not None:
                self.bucket.tighten(wider)
                self._widened_at = now
            elif self._told_pace:
                return
            else:
                self._told_pace = True
        if wider is not None:
            if self.shared is not None:
                self.shared.tighten(wider)
            log.warning(
                "%s: refused (429) with requests one at a time: from now on %.1f ms apart%s "
                "(a request left late, or the vendor's arrivals jitter more than the slack)",
                self.destination,
                wider * 1000,
                ", in every process sending there" if self.shared is not None else "",
            )
            return
        log.warning(
            "%s: refused (429) at the configured pace with requests one at a time, %.0f ms "
            "apart: the vendor allows less than %s.rate_limit (%d per %gs); each refusal waits "
            "its Retry-After, lower the limit",
            self.destination,
            self.bucket.spacing * 1000,
            f"destinations.{self.destination}",
            self.rate.requests,
            self.rate.per_seconds,
        )

    def _give_up(self, error: E) -> E:
        self._fatal = error
        return error

    def _back_off(
        self, attempt: int, classified: Classified, status: int | None, result: SendResult
    ) -> None:
        delay = self.policy.sleep_seconds(attempt, classified.retry_after)
        if status == 429:
            result.throttled += 1
            self.bucket.pause(delay)  # every thread sending here waits, not just this one
            tightened = self.bucket.tighten(self.rate.strict_spacing)
            if self.shared is not None:
                self.shared.pause(delay)
                # every process sending here, not only this one
                tightened = self.shared.tighten(self.rate.strict_spacing) or tightened
            if not tightened:
                self._refused_when_paced()
            else:
                with self._told:  # the refusals of the requests already out widen nothing
                    self._widened_at = self._clock()
                log.warning(
                    "%s: refused (429) at the configured pace: from now on its requests leave "
                    "one at a time, %.0f ms apart%s, as a vendor bucket that banks nothing needs "
                    "(rate_limit.strict: false or a burst above 1 said it counts in windows)",
                    self.destination,
                    self.rate.strict_spacing * 1000,
                    ", in every process sending there" if self.shared is not None else "",
                )
        result.retries += 1
        log.warning(
            "%s: attempt %d failed (%s); retrying in %.2fs",
            self.destination,
            attempt,
            classified.message,
            delay,
        )
        try:
            self._sleep(delay)
        except Interrupted:
            raise Stopped() from None

    def _http_post(self, body: bytes) -> requests.Response:
        """One POST, redirects not followed (the credential goes to the configured host only).
        Prepared here and sent by the session with the environment's settings (proxies, CA
        bundle) read once: ``Session.post`` reads them, and ~/.netrc, again for every request,
        which doubled its CPU (0.6 ms, for every event of a one-event vendor)."""
        headers = self._headers
        request_id = getattr(self._request_id, "value", None)
        if request_id:
            headers = {**headers, "X-Request-Id": request_id}
        request = requests.Request("POST", self.url, data=body, headers=headers)
        return self.session.send(
            request.prepare(), timeout=self.timeout, allow_redirects=False, **self._environment
        )

    def close(self) -> None:
        self.session.close()


def open_sender(
    target: Destination,
    credentials: dict[str, str],
    store: StateStore | None,
    *,
    timing: Timing = REAL_TIME,
    buckets: BucketRegistry | None = None,
    stopping: threading.Event | None = None,
) -> Sender:
    """The sender of a configured destination, with the budget it shares with other processes
    (in ``store``) when its ``rate_limit.shared`` says so."""
    shared = None
    if target.rate.shared and store is not None:
        shared = SharedBucket(
            store.relaxed,  # a slot or a leaving lost in a crash of the server loses nothing
            store.rate_budget,
            target.url,
            credential_string(credentials),
            target.rate,
            sleep=timing.sleep,
        )
    return Sender(
        target, credentials, timing=timing, buckets=buckets, shared=shared, stopping=stopping
    )
