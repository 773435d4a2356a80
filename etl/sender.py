"""Delivering one batch: pacing, retries, splitting a rejected batch, sorting every event.

The vendor says what a response means; this module decides what to do about it. Thread-safe:
several batches of one destination may be in flight at once, sharing the session and the bucket.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests
from requests.adapters import HTTPAdapter

from etl import __version__
from etl.destination import Destination
from etl.errors import FatalDeliveryError, RetriesExhaustedError
from etl.events import SendResult
from etl.ratelimit import BucketRegistry, TokenBucket
from etl.retry import RetryPolicy
from etl.shared_budget import SharedBucket
from etl.state import StateStore
from etl.timing import REAL_TIME, Timing
from etl.vendors.base import Classified, Verdict

log = logging.getLogger(__name__)


def credential_string(credentials: dict[str, str]) -> str:
    """The credentials as one string: what a rate budget is kept per (never stored as is)."""
    return "|".join(credentials[k] for k in sorted(credentials))


USER_AGENT = f"etl-backfill/{__version__}"


@dataclass(frozen=True)
class _Response:
    classified: Classified
    status: int | None
    ambiguous: bool  # the vendor may have stored the events although we saw no success


def _never_reached_vendor(exc: requests.RequestException) -> bool:
    """True when the request surely did not arrive (connect timeout or refused connection)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return type(reason).__name__ in {"NewConnectionError", "NameResolutionError"}


class Sender:
    """Sends batches of encoded payloads to one destination."""

    def __init__(
        self,
        destination: Destination,
        credentials: dict[str, str],
        *,
        timing: Timing = REAL_TIME,
        buckets: BucketRegistry | None = None,
        shared: SharedBucket | None = None,
        session: requests.Session | None = None,
    ) -> None:
        """``buckets``: the run's token buckets, shared by its destinations that send to one
        endpoint with one key; ``shared``: the budget shared with other processes, if any."""
        self.destination = destination.name
        self.vendor = destination.vendor
        self.url = destination.url
        self.timeout = destination.config.timeout_seconds
        self.policy = RetryPolicy(
            max_attempts=destination.config.max_attempts, jitter=timing.jitter
        )
        self.credential_hint = destination.credential_hint
        self._sleep = timing.sleep
        self._headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **self.vendor.headers(credentials),
        }
        rate = destination.rate
        self.bucket = (buckets or BucketRegistry()).get(
            self.url,
            credential_string(credentials),
            lambda: TokenBucket(
                rate.per_second, rate.burst, timing.clock, timing.sleep, rate.guard_window
            ),
        )
        self.shared = shared
        self._fatal: FatalDeliveryError | None = None
        pool_size = destination.requests_in_flight
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=2 * pool_size + 1)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self.session = session
        self._environment = session.merge_environment_settings(self.url, {}, None, None, None)
        # One event per request: the events of a batch go out in parallel, paced by the bucket.
        self._parallel = (
            None
            if destination.endpoint.json_array
            else ThreadPoolExecutor(pool_size, f"req-{destination.name}")
        )

    def send(self, payloads: list[bytes]) -> SendResult:
        """Deliver what can be delivered; every payload ends up in ``delivered`` or ``dead``.

        Raises FatalDeliveryError (credential refused) or RetriesExhaustedError; then nothing of
        this batch is known to be delivered. After a FatalDeliveryError every later call raises
        it again without a request: the credential is not tried again.
        """
        if self._fatal is not None:
            raise self._fatal
        if self._parallel is None or len(payloads) == 1:
            result = SendResult()
            self._send_part(payloads, list(range(len(payloads))), result)
            return result

        def one(index: int) -> SendResult:
            part = SendResult()
            self._send_part(payloads, [index], part)
            return part

        result = SendResult()
        for part in self._parallel.map(one, range(len(payloads))):
            result.merge(part)
        return result

    def _send_part(self, payloads: list[bytes], idx: list[int], result: SendResult) -> None:
        response = self._post([payloads[i] for i in idx], result)
        verdict = response.classified.verdict
        if verdict is Verdict.DELIVERED:
            result.delivered.extend(idx)
            if response.ambiguous:
                result.ambiguous.update(idx)
        elif len(idx) == 1:
            result.dead.append((idx[0], response.status, response.classified.message))
        else:  # rejected whole: split to isolate the bad events, deliver the good ones
            half = len(idx) // 2
            self._send_part(payloads, idx[:half], result)
            self._send_part(payloads, idx[half:], result)

    def _post(self, payloads: list[bytes], result: SendResult) -> _Response:
        body = self.vendor.body(payloads)
        ambiguous = False
        attempt = 0
        while True:
            attempt += 1
            self.bucket.acquire()
            if self.shared is not None:
                self.shared.acquire()
            status: int | None = None
            try:
                resp = self._http_post(body)
                status = resp.status_code
                classified = self.vendor.classify(status, resp.text, dict(resp.headers))
                maybe_stored = status >= 500
            except requests.RequestException as exc:
                classified = Classified(
                    Verdict.RETRY, f"{type(exc).__name__} after {self.timeout}s"
                )
                maybe_stored = not _never_reached_vendor(exc)
            result.requests += 1
            result.last_status = status
            if classified.verdict is Verdict.FATAL:
                self._fatal = FatalDeliveryError(
                    f"destination {self.destination!r}: {self.vendor.name} refused the credential "
                    f"({classified.message}); check {self.credential_hint}"
                )
                raise self._fatal
            if classified.verdict is not Verdict.RETRY:
                return _Response(classified, status, ambiguous)
            ambiguous = ambiguous or maybe_stored
            if status == 429:
                result.throttled += 1
            if not self.policy.should_retry(attempt):
                raise RetriesExhaustedError(
                    f"destination {self.destination!r}: gave up after {attempt} attempts: "
                    f"{classified.message}"
                )
            delay = self.policy.sleep_seconds(attempt, classified.retry_after)
            if status == 429:
                self.bucket.pause(delay)  # every thread sending here waits, not just this one
                if self.shared is not None:
                    self.shared.pause(delay)
            result.retries += 1
            log.info(
                "%s: attempt %d failed (%s); retrying in %.2fs",
                self.destination,
                attempt,
                classified.message,
                delay,
            )
            self._sleep(delay)

    def _http_post(self, body: bytes) -> requests.Response:
        """One POST. Prepared here and sent by the session with the environment's settings
        (proxies, CA bundle) read once: ``Session.post`` reads them, and ~/.netrc, again for
        every request, which doubled its CPU (0.6 ms, for every event of a one-event vendor)."""
        request = requests.Request("POST", self.url, data=body, headers=self._headers)
        return self.session.send(request.prepare(), timeout=self.timeout, **self._environment)

    def close(self) -> None:
        if self._parallel is not None:
            self._parallel.shutdown(cancel_futures=True)
        self.session.close()


def open_sender(
    destination: Destination,
    credentials: dict[str, str],
    store: StateStore | None,
    *,
    timing: Timing = REAL_TIME,
    buckets: BucketRegistry | None = None,
) -> Sender:
    """The sender of a configured destination, with the budget it shares with other processes
    (in ``store``) when its ``rate_limit.shared`` says so."""
    shared = None
    if destination.rate.shared and store is not None:
        shared = SharedBucket(
            store.engine,
            store.rate_budget,
            destination.url,
            credential_string(credentials),
            destination.rate,
            sleep=timing.sleep,
        )
    return Sender(destination, credentials, timing=timing, buckets=buckets, shared=shared)
