"""One partition in a run: how it is read, which of its rows are new, and when it is done.

A partition (a UTC day, or ``undated``) is read in one of three ways:

- **new**: never read; every row, in keyset order;
- **resume**: started before; the rows after its cursor;
- **recheck**: complete, but the source now holds another number of rows than it read (rows
  added late, or deleted): every row again, of which only those the delivery log does not hold
  are sent. Rows gone from the partition are counted as deleted, or as moved when a new
  timestamp put them in another day (which sends them: the vendor may then hold the old copy
  too, counted in doubt here); rows whose content changed are counted as changed, not sent.

Whatever the way, a row the delivery log holds is never sent twice. A complete partition whose
count still matches costs one COUNT and is not read at all.
"""

from __future__ import annotations

import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property

from etl.destination import Destination
from etl.errors import EtlError
from etl.events import EVENT, FILTERED, REJECTED, Position, Rows
from etl.prepare import Preparer, RowChunks, prepared
from etl.reader import ReaderProcess
from etl.reports import PartitionReport
from etl.source import Source
from etl.state import Checkpoint, StateStore
from etl.state.deliveries import Entry
from etl.state.ledger import payload_hash
from etl.state.store import Verdict
from etl.statuses import Mode, Outcome, PartitionStatus
from etl.windows import partition_key


class RowReader:
    """Reads a destination's partitions: their rows after a cursor, mapped and encoded, from
    the source here or from a reader process (which reads them in a second process)."""

    def __init__(
        self, target: Destination, source: Source, reader: ReaderProcess | None = None
    ) -> None:
        self.target = target
        self.source = source
        self.reader = reader

    def read_rows(self, day: date | None, after: Position | None) -> RowChunks:
        """A partition's rows after ``after``, mapped and encoded, in chunks."""
        if self.reader is not None:
            return self.reader.read_rows(day, self.preparer, after)
        columns = self.target.mapper.columns
        return prepared(self.source.read_tuples(day, columns, after), self.preparer)

    def read_next(self, day: date | None, after: Position | None) -> None:
        """With a reader process, have it read this partition as soon as it can."""
        if self.reader is not None:
            self.reader.ask(day, self.target.name, after)

    @cached_property
    def preparer(self) -> Preparer:
        return self.target.preparer()


@dataclass
class PartitionTask:
    """One partition as a run goes through it."""

    day: date | None  # None: the undated partition
    mode: Mode
    checkpoint: Checkpoint | None = None
    restart: bool = False  # forget what earlier runs did to it, and send it from its start
    report: PartitionReport = field(init=False)
    prior_unknown: Counter[str] = field(default_factory=Counter)
    known: dict[str, Entry] = field(default_factory=dict)  # the log's rows here (not new)
    seen: set[str] = field(default_factory=set)  # rows of the log read again
    changed_rows: dict[str, int | None] = field(default_factory=dict)  # key -> new hash
    first_seq: int = 1  # the sequence number of its next slice in the ledger
    pending: int = 0  # slices handed to the sink, not yet committed
    rows_seen: int = 0  # rows this run read of it from the source (before the log's filter)
    read_done: bool = False
    rechecked: bool = False  # a re-check was queued after a count that did not match
    beside_range: bool = False  # undated or a lookback day: left to a run that holds it
    refused: EtlError | None = None  # why a run must not go through it (the run raises it)
    note: str | None = None  # why a run leaves it alone (another run holds it)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.report = PartitionReport("", self.key, mode=self.mode)

    @property
    def key(self) -> str:
        return partition_key(self.day)

    @property
    def cursor(self) -> Position | None:
        if self.mode is Mode.RESUME and self.checkpoint is not None:
            return self.checkpoint.cursor
        return None


def open_task(target: Destination, store: StateStore, task: PartitionTask) -> None:
    """Mark the partition as being sent; what earlier runs left unanswered becomes in doubt."""
    name = target.name
    status = PartitionStatus.RECHECKING if task.mode is Mode.RECHECK else PartitionStatus.RUNNING
    task.checkpoint, fresh = store.start(name, task.key, target.made_with, task.restart, status)
    # a new partition has no batch: neither its next number nor copies in doubt to look up
    task.first_seq = 1 if fresh else store.next_seq(name, task.key)
    if not target.deduplicates and not fresh:
        task.prior_unknown = store.prior_unknown(name, task.key)
    if task.mode in (Mode.RECHECK, Mode.RESUME):
        task.known = store.log.known(name, task.key)


class LogFilter:
    """Keeps the rows of a resumed or re-checked partition that its delivery log does not hold
    (loaded when the partition opens). In a re-check, a row the log holds whose content changed
    since it was sent is counted as changed, and not sent again."""

    def new_rows(self, task: PartitionTask, rows: Rows) -> Rows:
        known = task.known
        if not known:
            return rows
        kept: list[int] = []
        for i, key in enumerate(rows.keys):
            entry = known.get(key)
            if entry is None:
                kept.append(i)
                continue
            task.seen.add(key)
            if task.mode is Mode.RECHECK:
                digest = _digest(rows, i)
                if _differs(digest, rows.kinds[i], entry):
                    task.changed_rows[key] = digest
        return rows if len(kept) == len(rows) else rows.select(kept)


def _digest(rows: Rows, i: int) -> int | None:
    """What the delivery log keeps of a row's content: the CRC-32 of its payload as sent."""
    kind = rows.kinds[i]
    if kind == EVENT:
        return zlib.crc32(rows.encoded[i])
    if kind == REJECTED:
        return payload_hash(rows.rejected[i].payload)
    return None


def _differs(digest: int | None, kind: int, entry: Entry) -> bool:
    if kind == FILTERED or entry.outcome is Outcome.FILTERED:
        return (kind == FILTERED) != (entry.outcome is Outcome.FILTERED)
    return entry.content_hash is not None and digest != entry.content_hash


def close_recheck(
    target: Destination, source: Source, store: StateStore, task: PartitionTask
) -> tuple[dict[str, int], int]:
    """After a re-check read the whole partition: the log's rows it did not find were deleted,
    or moved to another day (the source still holds them: their timestamp changed; that day
    sends them as rows it did not have); rows found again are back; changed rows keep their
    new content's hash, so that they are counted once. Returns the partition's rows deleted and
    moved, and the copies newly in doubt: a moved row sent again where the vendor keeps both."""
    name = target.name
    known = task.known
    missing = [k for k, e in known.items() if k not in task.seen and e.gone is None]
    still = source.keys_present(missing) if missing else set()
    leaving = [(known[k], "moved" if k in still else "deleted") for k in missing]
    store.log.update_rows(
        name,
        gone=leaving,
        back=[e for k, e in known.items() if k in task.seen and e.gone is not None],
        hashes=[(known[k], digest) for k, digest in task.changed_rows.items()],
    )
    gone = Counter(e.gone for k, e in known.items() if e.gone and k not in task.seen)
    gone.update(how for _, how in leaving)
    doubled = 0 if target.deduplicates else sum(1 for k in missing if k in still)
    return {"deleted": gone["deleted"], "moved": gone["moved"]}, doubled


def reconcile(
    target: Destination,
    source: Source,
    store: StateStore,
    task: PartitionTask,
    verdict: Callable[[str | None], Verdict],
) -> Verdict:
    """Check the partition: read = delivered + dead letters + filtered, and the source holds
    as many rows as were read (less those deleted since). ``verdict`` turns what is wrong (or
    None) into the status to record; in one transaction with reading the checkpoint, the
    status is recorded and the partition's lease given back. Returns the verdict."""
    if task.mode is Mode.RECHECK:
        gone, doubled = close_recheck(target, source, store, task)
        store.count_changes(target.name, task.key, gone, len(task.changed_rows), doubled)
    # this run holds the partition: its checkpoint is settled. A new partition read by one
    # query over the whole of it was counted by that query (its rows, all read: cp.present),
    # as a COUNT after it would have; a row that comes later is found by a later run's lookback
    counted_by_read = task.mode is Mode.NEW and source.read_in_one_query(task.rows_seen)
    in_window = None if counted_by_read else source.count_partition(task.day)

    def judge(cp: Checkpoint) -> Verdict:
        return verdict(_problem(target.name, task.key, cp, in_window))

    cp, (status, problem) = store.close_partition(target.name, task.key, judge)
    task.report.checkpoint = cp
    task.report.deleted, task.report.moved = cp.deleted, cp.moved
    task.report.changed = cp.changed
    task.report.cursor = _cursor_text(cp.cursor)
    return status, problem


def _problem(name: str, key: str, cp: Checkpoint, in_window: int | None) -> str | None:
    problems = []
    if not cp.balanced:
        problems.append(
            f"rows read {cp.rows_read} != delivered {cp.delivered} + dead letters "
            f"{cp.dead_letters} + filtered {cp.filtered}"
        )
    if in_window is not None and in_window != cp.present:
        problems.append(
            f"{in_window} rows in the window but {cp.present} read (rows added or removed "
            "since; run again: the added rows will be sent)"
        )
    if not problems:
        return None
    return f"{name} {key}: accounting does not balance: " + "; ".join(problems)


def _cursor_text(cursor: Position | None) -> str | None:
    import json

    return json.dumps(cursor, default=str) if cursor else None
