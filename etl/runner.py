"""A backfill run: the chosen destinations over a range of daily partitions.

Each destination's partitions are read one after the other into one stream of batches (a
batch may hold the end of a day and the start of the next), sent by a :class:`DeliverySink`,
and each partition is checked and closed as soon as its last rows are committed. The days a few
days before the range are re-checked for late rows, and so are the range's complete days; rows
without a readable timestamp are the ``undated`` partition's, dead letters.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from datetime import date
from typing import Any, TypeVar

from etl.config import PipelineConfig
from etl.database import safe_url
from etl.destination import resolve_destination
from etl.destination_run import DestinationRun
from etl.interpreter import tuned_interpreter
from etl.loader import check_credentials, resolve_credentials
from etl.ranges import lookback_days, partition_days, settled_before
from etl.reports import RunReport
from etl.run_context import Closed, Log, RunContext, RunOptions
from etl.timing import REAL_TIME, Timing
from etl.windows import Outside

T = TypeVar("T")


def run_backfill(
    config: PipelineConfig,
    *,
    destinations: list[str] | None = None,
    first_day: date | None = None,
    last_day: date | None = None,
    options: RunOptions | None = None,
    timing: Timing = REAL_TIME,
    log: Log | None = None,
    warn: Log | None = None,
    credentials: dict[str, dict[str, str]] | None = None,
    stop: threading.Event | None = None,
    closed: Closed | None = None,
) -> RunReport:
    """Send (or with ``dry_run`` write out) every partition of the range; resume where it stopped.

    Partitions are UTC days from ``first_day`` (default: the pipeline's start_date) to
    ``last_day`` inclusive (default: yesterday), the complete days of late_rows.lookback_days
    before it, and the undated rows (without ``first_day``, the complete days before the
    lookback of the last day are left alone uncounted); ``options`` say how (restart, dry run,
    progress, ...). A destination whose credential is refused, whose URL is not the vendor's
    API, or whose retries run out stops; the others go on. ``credentials``
    (destination -> key -> secret) replaces reading them from the environment, for callers that
    hold them already (Dagster resources). Setting ``stop`` stops the run gracefully: nothing
    more is sent, the answers still out are awaited a moment and committed. ``log`` hears what
    the run does, ``warn`` what went wrong (default: ``log``), ``closed`` each partition as the
    run is done with it (its report, with its state after the run): what a caller still has if
    the run is interrupted.
    """
    options = options or RunOptions()
    days = partition_days(config, first_day, last_day, options.include_today)
    resolved = [
        resolve_destination(config, n, options.several_hosts)
        for n in config.destination_names(destinations)
    ]
    # Every secret is read now, before anything is sent, so a missing one stops the run at once.
    if credentials is None:  # read from the environment, and checked
        credentials = {}
        if not options.dry_run:
            credentials = {d.name: resolve_credentials(d.name, d.config) for d in resolved}
    else:  # handed over (Dagster's resources): checked alike
        for target in resolved:
            check_credentials(target.name, target.config, credentials.get(target.name, {}))
    paced = any(d.paced for d in resolved)
    opened = RunContext.open(config, options, timing, log, warn or log, stop, closed)
    with opened as run, tuned_interpreter(paced):
        # counted while the run sends: one pass over the table, mostly in the database
        outside = in_background(_outside, run, days[-1])
        earlier = lookback_days(config, days[0]) if options.lookback else []
        settled = settled_before(config, first_day, days[-1])
        try:
            reports = [
                DestinationRun(run, d, credentials.get(d.name, {})).send(days, earlier, settled)
                for d in resolved
            ]
        finally:
            # its connection goes back to the pool before the pool is closed, or it is lost
            wait([outside])
    store = run.store
    return RunReport(
        reports,
        store.table_names() if store else [],
        safe_url(store.engine) if store else "",
        days[0],
        days[-1],
        outside.result(),
        config.start_date,
        stopped=run.stop.is_set(),
    )


def _outside(run: RunContext, last: date) -> Outside:
    return run.source.outside(last) if run.options.count_outside else Outside()


def in_background(work: Callable[..., T], *args: Any) -> Future[T]:
    """``work(*args)`` on a daemon thread (the caller waits for it before closing what it uses)."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(work(*args))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name=getattr(work, "__name__", "work"), daemon=True).start()
    return future
