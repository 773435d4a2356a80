"""One rate budget for every process that sends to one endpoint with one credential.

Several `etl run` processes, or Dagster runs in parallel, each pace their own requests with a
token bucket; with ``rate_limit.shared: true`` they also take every request from a bucket kept
in the state database by pyrate-limiter (PostgreSQL: a table in it; SQLite: a file beside it,
guarded by a file lock). The bucket is a sliding window of ``requests`` per ``per_seconds``,
widened by ``margin`` and evenly spaced, so that together they never exceed the vendor's limit.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

from sqlalchemy.engine import make_url

from etl.config import RateLimit
from etl.errors import ConfigError
from etl.ratelimit import Clock, Sleep


class SharedBucket:
    """The same interface as :class:`etl.ratelimit.TokenBucket`, across processes."""

    def __init__(
        self,
        state_url: str,
        table: str,
        endpoint: str,
        credential: str,
        limit: RateLimit,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        from pyrate_limiter import Limiter, Rate

        window_ms = round(limit.per_seconds * 1000 / (1 - limit.margin))
        # The limit itself, and one request per slot of it: evenly spaced across processes,
        # so that no burst at a window's start meets latency jitter at the vendor.
        rates = [Rate(1, max(1, window_ms // limit.requests)), Rate(limit.requests, window_ms)]
        self._pool: Any = None
        bucket: Any
        url = make_url(state_url)
        if url.get_backend_name() == "sqlite" and url.database:
            from pyrate_limiter import SQLiteBucket

            bucket = SQLiteBucket.init_from_file(
                rates, table=table, db_path=url.database + ".ratelimit", use_file_lock=True
            )
        elif url.get_backend_name() == "postgresql":
            from psycopg_pool import ConnectionPool
            from pyrate_limiter import PostgresBucket

            conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._pool = ConnectionPool(conninfo, min_size=1, max_size=4, open=True)
            bucket = PostgresBucket(self._pool, table, rates)
        else:
            raise ConfigError(
                "rate_limit.shared needs the state in a SQLite file or in PostgreSQL "
                f"(state.url is {url.get_backend_name()})"
            )
        # The bucket's clock is the database's, the same for every process: a small buffer
        # suffices (pyrate's default of 50 ms costs a third of a 10-per-second limit).
        self._limiter = Limiter(bucket, buffer_ms=10)
        # The key names the endpoint and credential without holding the credential.
        digest = hashlib.sha256(f"{endpoint}\x1f{credential}".encode()).hexdigest()[:24]
        self._key = f"etl-{digest}"
        self._clock = clock
        self._sleep = sleep
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait for a permit from the shared window; return the seconds waited."""
        started = self._clock()
        with self._lock:
            pause = self._paused_until - self._clock()
        if pause > 0:
            self._sleep(pause)
        self._limiter.try_acquire(self._key, blocking=True)
        return self._clock() - started

    def pause(self, seconds: float) -> None:
        """After a 429: this process waits too (the others learn from their own 429s)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
