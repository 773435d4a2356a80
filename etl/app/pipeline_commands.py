"""The commands that work on a pipeline: run, plan, status, dead letters, state DDL."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import date
from pathlib import Path
from types import FrameType

import click
import sqlalchemy as sa

from etl.app.options import config_option, load, range_options
from etl.app.output import (
    print_outside,
    print_plan,
    print_row_history,
    print_status_summary,
    print_status_table,
    print_summary,
)
from etl.config import PipelineConfig
from etl.database import dispose
from etl.errors import EtlError
from etl.plan import EXACT_ROWS, plan_backfill
from etl.ranges import yesterday
from etl.replay import replay_dead_letters
from etl.run_context import RunOptions
from etl.runner import run_backfill
from etl.source import Source
from etl.state import generate_ddl, open_store

include_today_option = click.option(
    "--include-today",
    is_flag=True,
    help="Let the range end today or later (today's partition is still filling).",
)


@contextmanager
def graceful_stop() -> Iterator[threading.Event]:
    """Ctrl-C or SIGTERM sets the event: the run stops sending, commits the answers still out
    for a moment, and says what is in doubt. A second one stops at once."""
    stop = threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            click.echo("stopped at once: requests in flight are in doubt (etl status)", err=True)
            os._exit(130)
        stop.set()
        click.echo(
            "stopping: nothing more is sent; the answers still out are awaited a few seconds "
            "and committed (again to stop at once)",
            err=True,
        )

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@click.command()
@config_option
@range_options
@include_today_option
@click.option("--restart", is_flag=True, help="Send the range's partitions again from their start.")
@click.option(
    "--dry-run",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the payloads to this JSONL file instead of sending them.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def run(
    config_path: Path,
    destinations: tuple[str, ...],
    first_day: date | None,
    last_day: date | None,
    include_today: bool,
    restart: bool,
    dry_run: Path | None,
    no_progress: bool,
) -> None:
    """Send a date range (default: start_date to yesterday), resuming where it stopped, and
    the rows added late to the days before it."""
    config = load(config_path)
    with graceful_stop() as stop:
        report = run_backfill(
            config,
            destinations=list(destinations) or None,
            first_day=first_day,
            last_day=last_day,
            options=RunOptions(
                restart=restart,
                dry_run=dry_run,
                include_today=include_today,
                progress=not no_progress and sys.stderr.isatty(),
            ),
            log=lambda m: click.echo(m, err=True),
            stop=stop,
        )
    print_summary(report, dry_run=dry_run)
    if report.stopped:
        sys.exit(130)
    if not report.ok:
        sys.exit(1)


@click.command()
@config_option
@range_options
@include_today_option
@click.option("--restart", is_flag=True, help="Plan a run with --restart.")
@click.option("--by-partition", is_flag=True, help="One line per partition as well.")
@click.option(
    "--rows/--counts",
    "rows",
    default=None,
    help="Map every row as a run does (dead letters counted by reason), or count the new "
    f"partitions' rows in the warehouse (default: --rows up to {EXACT_ROWS:,} rows).",
)
def plan(
    config_path: Path,
    destinations: tuple[str, ...],
    first_day: date | None,
    last_day: date | None,
    include_today: bool,
    restart: bool,
    by_partition: bool,
    rows: bool | None,
) -> None:
    """What a run would send, filter and reject, and how long it would take, partition by
    partition as `etl run` would go through them (refusals included). Sends nothing."""
    config = load(config_path)
    result = plan_backfill(
        config, list(destinations) or None, first_day, last_day, include_today, restart, rows
    )
    print_plan(result, by_partition)


@click.command()
@config_option
@range_options
@click.option("--all", "show_all", is_flag=True, help="Every partition, one line each.")
@click.option("--row", "row_key", help="One source row's history (its key).")
def status(
    config_path: Path,
    destinations: tuple[str, ...],
    first_day: date | None,
    last_day: date | None,
    show_all: bool,
    row_key: str | None,
) -> None:
    """One line per destination; with --all or --from/--to, one per partition as well."""
    config = load(config_path)
    names = config.destination_names(list(destinations) or None)
    with closing(open_store(config)) as store:
        if row_key is not None:
            for name in names:
                dead = [
                    d
                    for d in store.dead_letters(name, include_replayed=True)
                    if d["source_key"] == row_key
                ]
                print_row_history(name, row_key, store.log.history(name, row_key), dead)
            return
        for name in names:
            cps = store.checkpoints_of(name)
            print_status_summary(config, name, cps, store.count_dead_letters(name))
            if show_all or first_day or last_day:
                low, high = (first_day or date.min).isoformat(), (last_day or date.max).isoformat()
                chosen = [cp for cp in cps if low <= cp.partition <= high or show_all]
                print_status_table(chosen, show_all)
    _print_source_outside(config)


def _print_source_outside(config: PipelineConfig) -> None:
    """Rows of the source that no partition up to yesterday holds, by kind."""
    try:
        source = Source(config)
    except (EtlError, sa.exc.SQLAlchemyError) as exc:
        click.echo(f"(the source could not be read for its rows outside every day: {exc})")
        return
    try:
        print_outside(source.outside(yesterday()), yesterday(), config.start_date)
    finally:
        dispose(source.engine)


@click.group("dead-letters")
def dead_letters() -> None:
    """Events that were not delivered, and why."""


@dead_letters.command("list")
@config_option
@click.option("-d", "--destination", required=True)
@click.option("--partition", help="Only this day (YYYY-MM-DD), or 'undated'.")
@click.option("--limit", type=int, help="At most this many (default: 50, or all with --json).")
@click.option("--replayed", is_flag=True, help="Include dead letters already replayed.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, with payloads.")
def list_dead_letters(
    config_path: Path,
    destination: str,
    partition: str | None,
    limit: int | None,
    replayed: bool,
    as_json: bool,
) -> None:
    """List dead letters with their reasons, and a count per reason."""
    config = load(config_path)
    config.destination_names([destination])
    with closing(open_store(config)) as store:
        letters = store.dead_letters(destination, partition, include_replayed=replayed)
    shown = letters if limit is None and as_json else letters[: limit or 50]
    if as_json:
        for row in shown:
            click.echo(json.dumps(row, default=str))
        if len(shown) < len(letters):
            click.echo(f"{len(shown):,} of {len(letters):,} shown (--limit)", err=True)
        return
    reasons = Counter(r["reason"] for r in letters)
    where = f" on {partition}" if partition else ""
    click.echo(f"{len(letters):,} dead letters for {destination}{where}")
    for reason, count in reasons.most_common():
        click.echo(f"  {count:>7,}  {reason}")
    if letters:
        click.echo(f"\n  {'partition':<10} {'source key':<12} reason")
    for row in shown:
        click.echo(f"  {row['partition']:<10} {row['source_key']:<12} {row['reason']}")
    if len(letters) > len(shown):
        click.echo(f"  ... {len(letters) - len(shown):,} more (--limit)")


@dead_letters.command("replay")
@config_option
@click.option("-d", "--destination", required=True)
@click.option("--partition", help="Only this day (YYYY-MM-DD), or 'undated'.")
def replay_dead_letters_cmd(config_path: Path, destination: str, partition: str | None) -> None:
    """Re-read the dead letters' rows, map them again and resend what is now valid."""
    config = load(config_path)
    config.destination_names([destination])
    with graceful_stop() as stop:
        report = replay_dead_letters(config, destination, partition, stop=stop)
    click.echo(
        f"{destination}: {report.attempted:,} dead letters replayed: {report.delivered:,} "
        f"delivered, {report.still_dead:,} still dead, {report.in_doubt:,} in doubt"
    )
    for reason, count in sorted(report.reasons.items(), key=lambda kv: -kv[1]):
        click.echo(f"  {count:>7,}  {reason}")
    if report.error:
        click.echo(f"  STOPPED: {report.error}")
        sys.exit(1)
    if stop.is_set():
        sys.exit(130)


@click.command("state-ddl")
@click.option("--dialect", type=click.Choice(["postgresql", "sqlite"]), default="postgresql")
@click.option("--prefix", default="etl_", show_default=True)
def state_ddl(dialect: str, prefix: str) -> None:
    """Print the CREATE TABLE statements of the state tables (sql/state_tables.sql)."""
    click.echo(generate_ddl(dialect, prefix), nl=False)
