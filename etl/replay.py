"""Replaying dead letters: re-read their source rows, map them with today's mapping, resend.

Rows fixed in the warehouse (or a mapping or vendor setting fixed since) get delivered and move
from the dead-letter counter to the delivered one; the others stay dead with their new reason.
A replay sends through the same ledger as a run (each batch marked sent as it leaves, committed
as its answers come back, under the partitions' leases), so a replay that is stopped or killed
half-way is resumed by the next one, and its copies in doubt are counted as a run's are.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from etl.config import PipelineConfig
from etl.database import dispose
from etl.destination import Destination, resolve_destination
from etl.errors import DeliveryError
from etl.events import Batch, DeadLetter, Event, Filtered, RowOutcome, SendResult
from etl.loader import resolve_credentials
from etl.sender import open_sender
from etl.sink import DeliverySink
from etl.source import Source
from etl.state import StateStore, open_store
from etl.state.ledger import Acknowledged
from etl.timing import REAL_TIME, Timing

Replayed = tuple[str, Event]  # a dead letter's partition, and its row's event as mapped today


@dataclass
class ReplayReport:
    destination: str
    attempted: int = 0
    delivered: int = 0
    still_dead: int = 0
    in_doubt: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    error: str | None = None


def replay_dead_letters(
    config: PipelineConfig,
    destination: str,
    partition: str | None = None,
    *,
    timing: Timing = REAL_TIME,
    stop: threading.Event | None = None,
) -> ReplayReport:
    """Map the dead letters' rows again and send what is now valid."""
    dest = resolve_destination(config, destination)
    credentials = resolve_credentials(destination, dest.config)
    source = Source(config)
    store = open_store(config, source.engine)
    try:
        letters = store.dead_letters(destination, partition)
        report = ReplayReport(destination, attempted=len(letters))
        if letters:
            _Replay(dest, source, store, report).run(letters, credentials, timing, stop)
    finally:
        store.leases.close()
        dispose(source.engine)
        store.close()
    return report


class _Replay:
    def __init__(
        self, dest: Destination, source: Source, store: StateStore, report: ReplayReport
    ) -> None:
        self.dest = dest
        self.source = source
        self.store = store
        self.report = report
        self.prior: Counter[str] = Counter()

    def run(
        self,
        letters: list[dict[str, Any]],
        credentials: dict[str, str],
        timing: Timing,
        stop: threading.Event | None,
    ) -> None:
        name, store = self.dest.name, self.store
        partitions = sorted({letter["partition"] for letter in letters})
        for partition in partitions:  # one sender per partition at a time: a run or a replay
            store.leases.acquire(name, partition)
            store.start_replay(name, partition)
            self.prior.update(store.prior_unknown(name, partition, kind="replay"))
        to_send, still_dead = self._remap(letters)
        store.update_dead_letters(name, still_dead)
        self._count_dead(still_dead)
        sender = open_sender(self.dest, credentials, store, timing=timing, stopping=stop)
        sink = DeliverySink(
            name,
            sender,
            store,
            self.dest.requests_in_flight,
            self._account,
            kind="replay",
        )
        try:
            for batch in self._batches(to_send):
                self._committed(sink.submit(batch))
            self._committed(sink.drain())
        except DeliveryError as exc:
            self.report.error = str(exc)
            self._committed(sink.stop(10.0)[0])
        finally:
            sink.close()
            sender.close()

    def _remap(self, letters: list[dict[str, Any]]) -> tuple[list[Replayed], list[DeadLetter]]:
        """The letters' rows read and mapped again: the events to send; the rest stay dead."""
        mapper = self.dest.mapper
        rows = self.source.rows_by_key([str(d["source_key"]) for d in letters], mapper.columns)
        by_key = {str(r[mapper.key_column]): r for r in rows}
        to_send: list[Replayed] = []
        still_dead: list[DeadLetter] = []
        for letter in letters:
            row = by_key.get(str(letter["source_key"]))
            mapped = mapper.map_row(row) if row is not None else None
            if isinstance(mapped, Event):
                to_send.append((letter["partition"], mapped))
                continue
            if mapped is None:
                reason = "the source row no longer exists"
            elif isinstance(mapped, Filtered):
                reason = "the mapping's filter now excludes this row"
            else:
                reason = mapped.reason
            still_dead.append(DeadLetter(letter["event_id"], letter["source_key"], reason, {}))
        return to_send, still_dead

    def _batches(self, to_send: list[Replayed]) -> list[Batch]:
        """The events cut into batches, one slice per partition (in the partitions' own
        sequence, as a run's)."""
        batcher = self.dest.batcher(batch_prefix="replay-")
        preparer = self.dest.preparer()
        batches: list[Batch] = []
        for partition in sorted({p for p, _ in to_send}):
            batcher.start_partition(partition, self.store.next_seq(self.dest.name, partition))
            events: list[RowOutcome] = [e for p, e in to_send if p == partition]
            batches.extend(batcher.add_rows(preparer.outcomes(events)))
        last = batcher.flush()
        return [*batches, last] if last is not None else batches

    def _account(self, batch: Batch, result: SendResult, in_order: bool) -> Acknowledged:
        in_doubt: Counter[int] = Counter()
        if not self.dest.deduplicates:
            for i in [*result.delivered, *(i for i, _, _ in result.dead)]:
                copies = self.prior.get(batch.keys[i], 0) + result.unknown[i]
                if copies:
                    in_doubt[i] = copies
        return Acknowledged(batch, result, in_doubt, kind="replay")

    def _committed(self, committed: list[Acknowledged]) -> None:
        for done in committed:
            result = done.result
            self.report.delivered += len(result.delivered)
            self.report.in_doubt += sum(done.in_doubt[i] for i in result.delivered)
            dead = [
                DeadLetter("", "", f"rejected by vendor: {message}", {}, status, message)
                for _, status, message in result.dead
            ]
            self._count_dead(dead)

    def _count_dead(self, letters: list[DeadLetter]) -> None:
        self.report.still_dead += len(letters)
        for letter in letters:
            self.report.reasons[letter.reason] = self.report.reasons.get(letter.reason, 0) + 1
