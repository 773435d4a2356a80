"""One rate budget for every process that sends to one endpoint with one credential.

Several `etl run` processes, or Dagster runs in parallel, each pace their own requests with a
token bucket; with ``rate_limit.shared: true`` they also take every request from a bucket kept
in the state database by pyrate-limiter (PostgreSQL: a table in it; SQLite: a file beside it,
guarded by a file lock). The bucket is a sliding log of ``requests`` per ``per_seconds``,
widened by ``margin`` and evenly spaced, so that together they never exceed the vendor's limit.

pyrate's bucket decides and records each request atomically across processes; the waiting is
ours: a refused request sleeps exactly as long as the bucket says and asks again with the
time it really is then (pyrate's ``Limiter`` adds a buffer to every wait and records the time
it planned to wake, not the time it woke: each late wake-up would cost a slot).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from pyrate_limiter import RateItem
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
        from pyrate_limiter import Rate

        requests, seconds = limit.guard_window
        window_ms = round(seconds * 1000)
        # The limit, and two requests per two slots of it: spaced across processes, so that no
        # burst of every process at a window's start meets latency jitter at the vendor, yet a
        # request that comes late to its slot leaves that slot to the next one.
        slot_ms = max(1, window_ms // requests)
        rates = [Rate(2, 2 * slot_ms), Rate(requests, window_ms)]
        self._pool: Any = None
        self._exclusive: Callable[[], AbstractContextManager[Any]]
        bucket: Any
        url = make_url(state_url)
        if url.get_backend_name() == "sqlite" and url.database:
            from pyrate_limiter import SQLiteBucket

            bucket = SQLiteBucket.init_from_file(
                rates, table=table, db_path=url.database + ".ratelimit", use_file_lock=True
            )
            # The file lock put() takes (re-entrant), polled every millisecond, not every 50.
            self._exclusive = lambda: bucket.lock.acquire(poll_interval=0.001)
        elif url.get_backend_name() == "postgresql":
            from psycopg_pool import ConnectionPool
            from pyrate_limiter import PostgresBucket

            conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._pool = ConnectionPool(conninfo, min_size=1, max_size=4, open=True)
            bucket = PostgresBucket(self._pool, table, rates)
            self._exclusive = lambda: _advisory_lock(self._pool, table)
        else:
            raise ConfigError(
                "rate_limit.shared needs the state in a SQLite file or in PostgreSQL "
                f"(state.url is {url.get_backend_name()})"
            )
        self._bucket = bucket
        # The key names the endpoint and credential without holding the credential.
        digest = hashlib.sha256(f"{endpoint}\x1f{credential}".encode()).hexdigest()[:24]
        self._key = f"etl-{digest}"
        self._clock = clock
        self._sleep = sleep
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait until the shared log takes this request; return the seconds waited."""
        started = self._clock()
        with self._lock:
            pause = self._paused_until - self._clock()
        if pause > 0:
            self._sleep(pause)
        while True:
            # The time is read and the request recorded under one lock across processes:
            # pyrate reads it before its own lock, and a process that waited for that lock
            # would record a time older than the others' and slip into a full window.
            with self._lock, self._exclusive():
                item = RateItem(self._key, self._bucket.now())
                if self._bucket.put(item):
                    return self._clock() - started
                wait_ms = self._bucket.waiting(item)
            self._sleep(max(wait_ms, 1) / 1000)

    def pause(self, seconds: float) -> None:
        """After a 429: this process waits too (the others learn from their own 429s)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()


@contextmanager
def _advisory_lock(pool: Any, table: str) -> Iterator[None]:
    """A PostgreSQL session lock, the same for every process that shares ``table``."""
    key = int.from_bytes(hashlib.sha256(table.encode()).digest()[:8], "big", signed=True)
    with pool.connection() as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
