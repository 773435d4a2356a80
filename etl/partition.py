"""One partition in a run: how it is read, which of its rows are new, and when it is done.

A partition (a UTC day, or ``undated``) is read in one of three ways:

- **new**: never read; every row, in keyset order;
- **resume**: started before; the rows after its cursor;
- **recheck**: complete, but the source now holds another number of rows than it read (rows
  added late, or deleted): every row again, of which only those the delivery log does not hold
  are sent. Rows gone from the source are counted as deleted, rows whose content changed (or
  that moved here from another day) as changed; neither is sent again.

Whatever the way, a row the delivery log holds is never sent twice. A complete partition whose
count still matches costs one COUNT and is not read at all.
"""

from __future__ import annotations

import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from etl.destination import Destination
from etl.events import Event, Filtered, Position, Rejected, RowOutcome
from etl.reader import ReaderProcess
from etl.reports import PartitionReport
from etl.sender import Sender
from etl.source import Chunks, Source
from etl.state import Checkpoint, StateStore
from etl.state.deliveries import Entry, Move
from etl.state.ledger import payload_hash
from etl.vendors.base import encode_json
from etl.windows import partition_key

MAP_SLICE = 1000  # rows mapped and encoded together


@dataclass
class DestinationContext:
    """A resolved destination and what a run sends it with: the source (or a reader process
    that reads it), the state store and the sender (None in plans and dry runs)."""

    destination: Destination
    source: Source
    store: StateStore | None = None
    sender: Sender | None = None
    reader: ReaderProcess | None = None  # reads the rows in a second process; None: here

    @property
    def name(self) -> str:
        return self.destination.name

    def read_tuples(self, day: date | None, after: Position | None) -> Chunks:
        """A partition's rows after ``after``, in chunks, with the columns the mapping needs."""
        reader = self.reader or self.source
        return reader.read_tuples(day, self.destination.mapper.columns, after)


@dataclass
class PartitionTask:
    """One partition as a run goes through it."""

    day: date | None  # None: the undated partition
    mode: str  # new, resume, recheck, skip
    checkpoint: Checkpoint | None = None
    report: PartitionReport = field(init=False)
    prior_unknown: Counter[str] = field(default_factory=Counter)
    known: dict[str, Entry] = field(default_factory=dict)  # recheck: the log's rows here
    seen: set[str] = field(default_factory=set)  # recheck: rows of the log read again
    changed: int = 0
    pending: int = 0  # slices handed to the sink, not yet committed
    read_done: bool = False
    rechecked: bool = False  # a re-check was queued after a count that did not match
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.report = PartitionReport("", self.key, mode=self.mode)

    @property
    def key(self) -> str:
        return partition_key(self.day)

    @property
    def cursor(self) -> Position | None:
        if self.mode == "resume" and self.checkpoint is not None:
            return self.checkpoint.cursor
        return None


def plan_task(ctx: DestinationContext, day: date | None, cp: Checkpoint | None) -> PartitionTask:
    """How a partition is read in this run, from its checkpoint (and a count, if complete)."""
    if cp is None:
        return PartitionTask(day, "new")
    if cp.status == "skipped":
        return PartitionTask(day, "skip", cp)
    if cp.status == "complete":
        if cp.log_purged_at is not None or ctx.source.count_partition(day) == cp.present:
            return PartitionTask(day, "skip", cp)
        return PartitionTask(day, "recheck", cp)
    if cp.status in ("rechecking", "unbalanced"):
        return PartitionTask(day, "recheck", cp)
    return PartitionTask(day, "resume", cp)


def open_task(ctx: DestinationContext, task: PartitionTask, restart: bool) -> None:
    """Mark the partition as being sent; what earlier runs left unanswered becomes in doubt."""
    store, name = ctx.store, ctx.name
    task.report.destination = name
    if store is None:
        return
    status = "rechecking" if task.mode == "recheck" else "running"
    fingerprint = ctx.destination.fingerprint
    task.checkpoint = store.start(name, task.key, fingerprint, restart, status=status)
    if not ctx.destination.deduplicates:
        task.prior_unknown = store.prior_unknown(name, task.key)
    if task.mode == "recheck":
        task.known = store.log.known(name, task.key)


class LogFilter:
    """Keeps the rows the delivery log does not hold; the others are counted where they are.

    One lookup a chunk. A row the log holds in this partition was read before (in a re-check,
    its content is compared); one it holds in another partition moved here (its timestamp
    changed): its log row and counts move here, and it is not sent again.
    """

    def __init__(self, ctx: DestinationContext, dry: bool = False) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.vendor = ctx.destination.vendor
        self.dry = dry  # a plan: rows that moved are counted, not moved

    def new_rows(self, task: PartitionTask, outcomes: list[RowOutcome]) -> list[RowOutcome]:
        store = self.store
        if store is None or not outcomes:
            return outcomes
        entries = store.log.find(self.ctx.name, [o.source_key for o in outcomes])
        if not entries:
            return outcomes
        kept: list[RowOutcome] = []
        moves: list[Move] = []
        for outcome in outcomes:
            entry = entries.get(outcome.source_key)
            if entry is None:
                kept.append(outcome)
                continue
            task.seen.add(outcome.source_key)
            if entry.partition != task.key:
                moves.append(Move(outcome.source_key, entry, task.key))
                task.changed += 1
            elif task.mode == "recheck" and self._changed(outcome, entry):
                task.changed += 1
        if not self.dry:
            store.log.move(self.ctx.name, moves)
        return kept

    def _changed(self, outcome: RowOutcome, entry: Entry) -> bool:
        if isinstance(outcome, Filtered):
            return entry.outcome != "filtered"
        if entry.outcome == "filtered":
            return True
        if isinstance(outcome, Event):
            digest: int = zlib.crc32(encode_json(self.vendor.encode(outcome)))
        else:
            assert isinstance(outcome, Rejected)
            digest = payload_hash(outcome.row)
        return entry.content_hash is not None and digest != entry.content_hash


def close_recheck(ctx: DestinationContext, task: PartitionTask) -> int:
    """After a re-check read the whole partition: the log's rows it did not find are marked
    deleted, those found again unmarked. Returns the partition's deleted rows."""
    store = ctx.store
    assert store is not None
    gone = [k for k, e in task.known.items() if k not in task.seen and not e.deleted]
    back = [k for k, e in task.known.items() if k in task.seen and e.deleted]
    store.log.set_deleted(ctx.name, task.key, gone, back)
    return sum(1 for k in task.known if k not in task.seen)


def reconcile(ctx: DestinationContext, task: PartitionTask) -> str | None:
    """Check the partition: read = delivered + dead letters + filtered, and the source holds
    as many rows as were read (less those deleted since). Returns None, or what is wrong."""
    store = ctx.store
    assert store is not None
    counters: dict[str, Any] = {}
    if task.mode == "recheck":
        counters = {"deleted": close_recheck(ctx, task), "changed": task.changed}
    elif task.changed:
        previous = task.checkpoint.changed if task.checkpoint else 0
        counters = {"changed": previous + task.changed}
    if counters:
        store.finish(ctx.name, task.key, "running", None, **counters)
    cp = store.load(ctx.name, task.key)
    assert cp is not None
    task.report.deleted, task.report.changed = cp.deleted, cp.changed
    task.report.cursor = _cursor_text(cp.cursor)
    in_window = ctx.source.count_partition(task.day)
    problems = []
    if not cp.balanced:
        problems.append(
            f"rows read {cp.rows_read} != delivered {cp.delivered} + dead letters "
            f"{cp.dead_letters} + filtered {cp.filtered}"
        )
    if in_window != cp.present:
        problems.append(
            f"{in_window} rows in the window but {cp.present} read (rows added or removed "
            "since; run again: the added rows will be sent)"
        )
    if not problems:
        return None
    return f"{ctx.name} {task.key}: accounting does not balance: " + "; ".join(problems)


def _cursor_text(cursor: Position | None) -> str | None:
    import json

    return json.dumps(cursor, default=str) if cursor else None
