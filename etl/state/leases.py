"""One run per destination and partition: a lease in the state database.

A run takes the lease of a partition before it sends it and gives it back when the partition is
done. The lease names its holder (host, pid) and expires unless renewed: a run renews its leases
while it lasts (:meth:`Leases.heartbeat`), so the lease of a run that was killed passes after
``ttl`` seconds, or at once when the holder was a process of this host that no longer exists.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from etl.errors import LeaseHeldError
from etl.state.ledger import now

TTL_SECONDS = 60.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class Leases:
    """The leases this process holds, and taking one."""

    def __init__(
        self,
        engine: Engine,
        table: sa.Table,
        ttl: float = TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.table = table
        self.ttl = ttl
        self.clock = clock
        self.host = socket.gethostname()[:100]
        self.pid = os.getpid()
        self.holder = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:12]}"
        self.held: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._beat: threading.Thread | None = None
        self._stop = threading.Event()

    def acquire(self, destination: str, partition: str) -> None:
        """Take the partition's lease, or raise LeaseHeldError naming the run that holds it."""
        for _ in range(3):  # a lost race to insert: look again
            try:
                self._take(destination, partition)
                break
            except IntegrityError:
                continue
        with self._lock:
            self.held.add((destination, partition))

    def held_elsewhere(self, destination: str, partition: str) -> LeaseHeldError | None:
        """What :meth:`acquire` would raise now (another run holds the lease), without taking
        it: None if it would be taken."""
        t = self.table.c
        stmt = sa.select(self.table).where(t.destination == destination, t.partition == partition)
        with self.engine.connect() as conn:
            row = conn.execute(stmt).mappings().first()
        if row is None or row["holder"] == self.holder or self._passed(row, self.clock()):
            return None
        return self._held(destination, partition, row)

    def _take(self, destination: str, partition: str) -> None:
        t = self.table.c
        key = (t.destination == destination, t.partition == partition)
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(self.table).where(*key)).mappings().first()
            at = self.clock()
            values = {
                "holder": self.holder,
                "host": self.host,
                "pid": self.pid,
                "acquired_at": now(),
                "expires_at": at + self.ttl,
            }
            if row is None:
                insert = sa.insert(self.table)
                conn.execute(insert.values(destination=destination, partition=partition, **values))
                return
            if row["holder"] != self.holder and not self._passed(row, at):
                raise self._held(destination, partition, row)
            taken = conn.execute(
                sa.update(self.table)
                .where(*key, t.holder == row["holder"], t.expires_at == row["expires_at"])
                .values(**values)
            ).rowcount
            if taken != 1:  # taken by another run a moment ago
                row = conn.execute(sa.select(self.table).where(*key)).mappings().one()
                raise self._held(destination, partition, row)

    def _passed(self, row: sa.RowMapping, at: float) -> bool:
        """The lease expired, or its holder was a process of this host that has ended."""
        if row["expires_at"] < at:
            return True
        return bool(row["host"] == self.host and not _alive(int(row["pid"])))

    def _held(self, destination: str, partition: str, row: sa.RowMapping) -> LeaseHeldError:
        since = row["acquired_at"]
        if isinstance(since, datetime):
            since = since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return LeaseHeldError(
            f"destination {destination!r}, partition {partition}: another run is sending it "
            f"(host {row['host']}, pid {row['pid']}, since {since}); wait until it ends, or "
            f"{int(self.ttl)} s after it was stopped"
        )

    def release(self, destination: str, partition: str) -> None:
        t = self.table.c
        with self.engine.begin() as conn:
            conn.execute(
                sa.delete(self.table).where(
                    t.destination == destination,
                    t.partition == partition,
                    t.holder == self.holder,
                )
            )
        with self._lock:
            self.held.discard((destination, partition))

    def renew(self) -> None:
        """Push back the expiry of every lease this process holds."""
        t = self.table.c
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(self.table)
                .where(t.holder == self.holder)
                .values(expires_at=self.clock() + self.ttl)
            )

    def heartbeat(self) -> None:
        """Renew the leases every third of their life, on a thread, until :meth:`close`."""
        if self._beat is not None:
            return

        def beat() -> None:
            while not self._stop.wait(self.ttl / 3):
                if self.held:
                    with suppress(Exception):  # the next beat tries again; expiry is safe
                        self.renew()

        self._beat = threading.Thread(target=beat, name="etl-leases", daemon=True)
        self._beat.start()

    def close(self) -> None:
        """Stop renewing and give back every lease still held."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
            self._beat = None
        for destination, partition in list(self.held):
            self.release(destination, partition)
