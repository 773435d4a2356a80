"""Where batches go: sent and committed in order (:class:`DeliverySink`), or written out.

Batches go out with up to ``max_in_flight`` requests at once but are committed strictly in order,
so that each partition's cursor only ever moves over a contiguous run of committed rows. The
first batch of a run goes alone: if the URL is not the vendor's API, one request says so.

A stop (Ctrl-C, SIGTERM, an error that stops the destination) sends nothing more, waits a
moment for the answers still out, and commits every answer that came back, in order or not (the
cursor then stays behind, and the delivery log keeps those rows from being sent again).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from typing import IO, Protocol

from etl.errors import DeliveryError, RequestNotBuiltError
from etl.events import Batch, SendResult, event_id_for
from etl.sender import NotSent, Sender, Stopped
from etl.state import StateStore
from etl.state.ledger import Acknowledged

# What a batch's answers mean for its partitions (in doubt, the cursor): (batch, result, in
# order) -> what to commit.
Account = Callable[[Batch, SendResult, bool], Acknowledged]


class BatchSink(Protocol):
    """Takes batches; each call returns what it has committed since the last one, in order,
    for the caller to close the partitions it completes."""

    def submit(self, batch: Batch) -> list[Acknowledged]: ...
    def drain(self) -> list[Acknowledged]: ...
    def stop(self, grace: float) -> tuple[list[Acknowledged], int]: ...


class BatchDepartures:
    """Keeps the ledger row of one batch told of the requests that may have landed. The row
    says one a event, written before the batch is handed to be sent; it is updated on each
    retry and on each answer that shows a request stored nothing."""

    def __init__(self, store: StateStore, destination: str, batch: Batch) -> None:
        self.store = store
        self.destination = destination
        self.batch = batch
        self.unknown = [0] * batch.size
        self.attempts = 0
        self._lock = threading.Lock()

    def leaving(self, indexes: list[int]) -> None:
        with self._lock:
            for i in indexes:
                self.unknown[i] += 1
            self.attempts += 1
            if self.attempts > 1:  # the first request is the one the row counts already
                self._note()

    def not_landed(self, indexes: list[int]) -> None:
        with self._lock:
            for i in indexes:
                self.unknown[i] -= 1
            self._note()

    def _note(self) -> None:
        self.store.note_unknown(self.destination, self.batch, self.unknown, self.attempts)


class DeliverySink:
    """Sends batches on a thread pool and commits their answers in order. Passive: it never
    calls back into the run but to ask what answers mean before it commits them."""

    def __init__(
        self,
        name: str,
        sender: Sender,
        store: StateStore,
        in_flight: int,
        account: Account,
        kind: str = "run",
    ) -> None:
        self.name = name
        self.sender = sender
        self.store = store
        self.in_flight = in_flight
        self.limit = 1  # until the first answer shows the URL is the vendor's API
        self.account = account
        self.kind = kind
        self.pool = ThreadPoolExecutor(in_flight, thread_name_prefix=f"send-{name}")
        self.pending: deque[tuple[Batch, Future[SendResult]]] = deque()
        self.committed_before_failure: list[Acknowledged] = []

    def submit(self, batch: Batch) -> list[Acknowledged]:
        """Commit the batches answered (waiting for the oldest while ``in_flight`` are out),
        mark this one as sent in the same transaction, and send it. Returns those committed
        (a failure is raised after they are committed, and returned by :meth:`stop`)."""
        acknowledged, failure = self._finished(until=self.limit - 1)
        sending = batch if batch.size and failure is None else None
        self.store.commit(self.name, acknowledged, sending, self.kind)
        if failure is not None:
            self.committed_before_failure = acknowledged
            raise failure
        future: Future[SendResult]
        if sending is not None:
            future = self.pool.submit(self._send, batch)
        else:  # only filtered or rejected rows: nothing to send, committed in its turn
            future = Future()
            future.set_result(SendResult())
        self.pending.append((batch, future))
        return acknowledged

    def _send(self, batch: Batch) -> SendResult:
        departures = BatchDepartures(self.store, self.name, batch)
        return self.sender.send(batch.encoded, departures, batch.batch_id)

    def _finished(self, until: int) -> tuple[list[Acknowledged], BaseException | None]:
        """The finished batches, in order, waiting for the oldest while more than ``until`` are
        pending; and the DeliveryError of the one after them, if it failed."""
        acknowledged: list[Acknowledged] = []
        try:
            while self.pending and (len(self.pending) > until or self.pending[0][1].done()):
                batch, finished = self.pending[0]
                result = finished.result()
                self.pending.popleft()
                acknowledged.append(self.account(batch, result, True))
                self.limit = self.in_flight
        except NotSent as exc:  # another batch stopped the destination first: its error
            cause = exc.__cause__
            return acknowledged, cause if isinstance(cause, DeliveryError) else exc
        except BaseException as exc:
            return acknowledged, exc
        return acknowledged, None

    def drain(self) -> list[Acknowledged]:
        """Wait for every answer and commit them all; returns them."""
        acknowledged, failure = self._finished(until=0)
        if acknowledged:
            self.store.commit(self.name, acknowledged)
        if failure is not None:
            self.committed_before_failure = acknowledged
            raise failure
        return acknowledged

    def stop(self, grace: float) -> tuple[list[Acknowledged], int]:
        """Send nothing more; wait up to ``grace`` seconds for the answers still out; commit
        every answer that came back, and forget the batches none of whose requests left.
        Returns what was committed (with what a failure raised by :meth:`submit` or
        :meth:`drain` had committed before it), and the events of requests left unanswered
        (in doubt: their ledger rows say which)."""
        self.sender.stopping.set()
        for batch, future in self.pending:
            if future.cancel():  # never started
                self.store.forget(self.name, batch)
        wait_for([f for _, f in self.pending], timeout=grace)
        in_order, acknowledged, unanswered = True, [], 0
        for batch, future in self.pending:
            if future.cancelled():
                in_order = False
                continue
            if not future.done():
                in_order = False
                unanswered += batch.size
                continue
            try:
                result = future.result()
            except NotSent:  # stopped before its first request: its rows are read again
                in_order = False
                self.store.forget(self.name, batch)
                continue
            except RequestNotBuiltError as exc:  # never left: nothing of it is in doubt
                in_order = False
                if exc.nothing_left:
                    self.store.forget(self.name, batch)
                else:
                    unanswered += batch.size
                continue
            except (Stopped, DeliveryError):
                in_order = False
                unanswered += batch.size
                continue
            acknowledged.append(self.account(batch, result, in_order))
        self.pending.clear()
        if acknowledged:
            self.store.commit(self.name, acknowledged)
        self.pool.shutdown(wait=False, cancel_futures=True)
        earlier, self.committed_before_failure = self.committed_before_failure, []
        return earlier + acknowledged, unanswered

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class DryRunSink:
    """Writes each payload as a JSON line instead of sending it; touches no state."""

    def __init__(self, name: str, out: IO[str]) -> None:
        self.name = name
        self.out = out

    def submit(self, batch: Batch) -> list[Acknowledged]:
        for part in batch.slices:
            for index in range(part.start, part.end):
                line = {
                    "destination": self.name,
                    "partition": part.partition,
                    "event_id": event_id_for(self.name, batch.keys[index]),
                    "batch": batch.batch_id,
                    "payload": batch.payload(index),
                }
                self.out.write(json.dumps(line, ensure_ascii=False) + "\n")
        result = SendResult(delivered=list(range(batch.size)))
        return [Acknowledged(batch, result)]

    def drain(self) -> list[Acknowledged]:
        self.out.flush()
        return []

    def stop(self, grace: float) -> tuple[list[Acknowledged], int]:
        self.out.flush()
        return [], 0
