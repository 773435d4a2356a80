"""What the destinations of one run share, and how the run was asked to go."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from etl.config import PipelineConfig
from etl.database import dispose
from etl.ratelimit import BucketRegistry
from etl.reader import ReaderProcess
from etl.reports import PartitionReport
from etl.source import Source
from etl.state import StateStore, open_store
from etl.state.leases import Leases
from etl.timing import Interrupted, Timing

Log = Callable[[str], None]
Closed = Callable[[PartitionReport], None]  # told of each partition a run is done with


@dataclass(frozen=True)
class RunOptions:
    """How a run was asked to go (the command line's flags)."""

    restart: bool = False
    dry_run: Path | None = None
    progress: bool = False
    include_today: bool = False  # send today's partition too (still filling)
    lookback: bool = True  # re-check the complete days before the range for late rows
    stop_grace: float = 10.0  # seconds a stop waits for the answers still out
    progress_every: int = 0  # say the progress in the log every N batches, and each partition
    # count the rows outside every partition of the range (a pass over the whole table): the
    # command line prints them; Dagster's observation of the source counts them instead
    count_outside: bool = True
    # seconds to wait for a partition whose lease another run holds (a run on a worker that was
    # lost holds it until it passes, ``Leases.ttl`` after its last renewal); 0: fail at once
    lease_wait: float = 0.0
    # runs start on several hosts (Dagster's Celery deployment): rate limits are shared budgets
    several_hosts: bool = False


@dataclass
class RunContext:
    """What the destinations of one run share: the source, the state, the reader process, the
    token buckets, the leases, and how the run was asked to go."""

    config: PipelineConfig
    options: RunOptions
    source: Source
    store: StateStore | None
    leases: Leases | None
    reader: ReaderProcess
    out: IO[str] | None  # the dry run's file: nothing is sent, no state is touched
    timing: Timing
    log: Log | None
    warn: Log | None
    stop: threading.Event
    closed: Closed | None = None
    buckets: BucketRegistry = field(default_factory=BucketRegistry)
    token: str = field(default_factory=lambda: secrets.token_hex(4))  # batch ids of this run

    @classmethod
    @contextmanager
    def open(
        cls,
        config: PipelineConfig,
        options: RunOptions,
        timing: Timing,
        log: Log | None,
        warn: Log | None,
        stop: threading.Event | None,
        closed: Closed | None = None,
    ) -> Iterator[RunContext]:
        stop = stop or threading.Event()
        if timing.sleep is time.sleep:  # a stop wakes the sleepers: bucket waits, backoffs
            timing = replace(timing, sleep=lambda seconds: _sleep_unless(stop, seconds))
        with ExitStack() as stack:
            source = Source(config)
            stack.callback(dispose, source.engine)
            store = leases = None
            out = None
            if options.dry_run is None:
                store = open_store(config, source.engine)
                stack.callback(store.close)
                leases = store.leases
                leases.heartbeat()
                stack.callback(leases.close)
            else:
                out = stack.enter_context(open(options.dry_run, "w", encoding="utf-8"))
            reader = ReaderProcess(config)  # started if a destination's run is large enough
            stack.callback(reader.close)
            yield cls(
                config, options, source, store, leases, reader, out, timing, log, warn, stop, closed
            )

    def say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)

    def complain(self, message: str) -> None:
        if self.warn is not None:
            self.warn(message)


def _sleep_unless(stop: threading.Event, seconds: float) -> None:
    """Sleep, unless the run is stopping: then raise Interrupted at once."""
    if stop.wait(seconds) if seconds > 0 else stop.is_set():
        raise Interrupted()
