"""The commands that work on a pipeline: run, plan, status, dead letters, state DDL."""

from __future__ import annotations

import json
import sys
from collections import Counter
from contextlib import closing
from datetime import date
from pathlib import Path

import click

from etl.app.options import config_option, load, range_options
from etl.config import PipelineConfig
from etl.plan import format_duration, plan_backfill
from etl.replay import replay_dead_letters
from etl.reports import RunReport
from etl.runner import run_backfill
from etl.state import StateStore, generate_ddl, open_store


@click.command()
@config_option
@range_options
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
    restart: bool,
    dry_run: Path | None,
    no_progress: bool,
) -> None:
    """Send a date range (default: start_date to yesterday), resuming where it stopped."""
    config = load(config_path)
    report = run_backfill(
        config,
        destinations=list(destinations) or None,
        first_day=first_day,
        last_day=last_day,
        restart=restart,
        dry_run=dry_run,
        progress=not no_progress and sys.stderr.isatty(),
        log=lambda m: click.echo(m, err=True),
    )
    print_summary(report, dry_run=dry_run)
    if not report.ok:
        sys.exit(1)


def print_summary(report: RunReport, dry_run: Path | None = None) -> None:
    """The per-destination summary of a run."""
    span = f"{report.first_day} .. {report.last_day}"
    if dry_run is None and report.rows_read == 0 and report.ok:
        click.echo(f"Nothing left to send: every partition from {span} is complete.")
    header = f"{'destination':<20} {'read':>9} {'delivered':>9} {'dead':>7} {'filtered':>9} "
    header += f"{'in doubt':>8} {'events/s':>9} {'429s':>5} {'retries':>7}"
    click.echo(("Dry run, " if dry_run else "") + f"partitions {span}:")
    click.echo(header)
    for d in report.destinations:
        click.echo(
            f"{d.name:<20} {d.total('rows_read'):>9,} {d.total('delivered'):>9,} "
            f"{d.total('dead_letters'):>7,} {d.total('filtered'):>9,} {d.total('in_doubt'):>8,} "
            f"{d.events_per_second:>9,.0f} {d.total('throttled'):>5,} {d.total('retries'):>7,}"
        )
        if d.skipped:
            click.echo(f"  SKIPPED: {d.skipped}")
        if d.error:
            click.echo(f"  STOPPED: {d.error}")
        for p in d.failed:
            if p.error and p.error != d.error:
                click.echo(f"  FAILED {p.partition}: {p.error}")
    if dry_run:
        click.echo(f"Payloads written to {dry_run}; nothing was sent and no state was written.")
    elif report.state_tables:
        click.echo(f"State tables: {', '.join(report.state_tables)} in {report.state_url}")


@click.command()
@config_option
@range_options
@click.option("--by-partition", is_flag=True, help="One line per partition as well.")
def plan(
    config_path: Path,
    destinations: tuple[str, ...],
    first_day: date | None,
    last_day: date | None,
    by_partition: bool,
) -> None:
    """What a run would send, filter and reject, and how long it would take. Sends nothing."""

    config = load(config_path)
    plans = plan_backfill(
        config,
        list(destinations) or None,
        first_day,
        last_day,
    )
    for p in plans:
        rejected = p.rejected
        rows = p.total("rows") + p.skipped_rows
        click.echo(f"{p.name} ({p.vendor}): {rows:,} rows")
        click.echo(f"  to send   {p.total('to_send'):>10,}  in {p.total('requests'):,} requests")
        click.echo(f"  filtered  {p.total('filtered'):>10,}")
        click.echo(f"  not sent  {sum(rejected.values()):>10,}")
        for reason, count in rejected.most_common():
            click.echo(f"    {count:>10,}  {reason}")
        rate = f"{p.rate.requests:g} requests per {p.rate.per_seconds:g} s"
        click.echo(f"  estimated {format_duration(p.seconds)} at {rate} (the rate limit alone)")
        if by_partition:
            click.echo(
                f"    {'partition':<10} {'rows':>8} {'send':>8} {'filtered':>8} {'rejected':>8}"
            )
            for part in p.partitions:
                click.echo(
                    f"    {part.partition:<10} {part.rows:>8,} {part.to_send:>8,} "
                    f"{part.filtered:>8,} {sum(part.rejected.values()):>8,}"
                )


@click.command()
@config_option
@click.option("-d", "--destination", "destinations", multiple=True)
@click.option("--all", "show_all", is_flag=True, help="Also list empty, complete partitions.")
def status(config_path: Path, destinations: tuple[str, ...], show_all: bool) -> None:
    """Progress per destination and partition: counts, in doubt, dead letters."""
    config = load(config_path)
    with closing(open_store(config)) as store:
        _print_status(config, store, config.destination_names(list(destinations) or None), show_all)


def _print_status(
    config: PipelineConfig, store: StateStore, names: list[str], show_all: bool
) -> None:
    for name in names:
        cps = store.checkpoints_of(name)
        totals: Counter[str] = Counter()
        by_status: Counter[str] = Counter(cp.status for cp in cps)
        click.echo(f"{name} ({config.destinations[name].vendor}): {len(cps)} partitions "
                   + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())))  # fmt: skip
        click.echo(
            f"  {'partition':<10} {'status':<9} {'read':>8} {'delivered':>9} {'dead':>6} "
            f"{'filtered':>8} {'in doubt':>8}  updated"
        )
        for cp in cps:
            if cp.status == "skipped" and not show_all:
                continue
            for key in ("rows_read", "delivered", "dead_letters", "filtered", "in_doubt"):
                totals[key] += getattr(cp, key)
            if show_all or cp.status != "complete" or cp.rows_read:
                updated = cp.updated_at.strftime("%Y-%m-%d %H:%M") if cp.updated_at else ""
                click.echo(
                    f"  {cp.partition:<10} {cp.status:<9} {cp.rows_read:>8,} {cp.delivered:>9,} "
                    f"{cp.dead_letters:>6,} {cp.filtered:>8,} {cp.in_doubt:>8,}  {updated}"
                )
                if cp.error:
                    click.echo(f"    {cp.error}")
        click.echo(
            f"  {'total':<10} {'':<9} {totals['rows_read']:>8,} {totals['delivered']:>9,} "
            f"{totals['dead_letters']:>6,} {totals['filtered']:>8,} {totals['in_doubt']:>8,}"
        )


@click.group("dead-letters")
def dead_letters() -> None:
    """Events that were not delivered, and why."""


@dead_letters.command("list")
@config_option
@click.option("-d", "--destination", required=True)
@click.option("--partition", help="Only this day (YYYY-MM-DD).")
@click.option("--limit", default=50, show_default=True)
@click.option("--replayed", is_flag=True, help="Include dead letters already replayed.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, with payloads.")
def list_dead_letters(
    config_path: Path,
    destination: str,
    partition: str | None,
    limit: int,
    replayed: bool,
    as_json: bool,
) -> None:
    """List dead letters with their reasons, and a count per reason."""
    config = load(config_path)
    config.destination_names([destination])
    with closing(open_store(config)) as store:
        letters = store.dead_letters(destination, partition, include_replayed=replayed)
    if as_json:
        for row in letters[:limit]:
            click.echo(json.dumps(row, default=str))
        return
    reasons = Counter(r["reason"] for r in letters)
    click.echo(
        f"{len(letters):,} dead letters for {destination}"
        + (f" on {partition}" if partition else "")
    )
    for reason, count in reasons.most_common():
        click.echo(f"  {count:>7,}  {reason}")
    if letters:
        click.echo(f"\n  {'partition':<10} {'source key':<12} reason")
    for row in letters[:limit]:
        click.echo(f"  {row['partition']:<10} {row['source_key']:<12} {row['reason']}")
    if len(letters) > limit:
        click.echo(f"  ... {len(letters) - limit:,} more (--limit)")


@dead_letters.command("replay")
@config_option
@click.option("-d", "--destination", required=True)
@click.option("--partition", help="Only this day (YYYY-MM-DD).")
def replay_dead_letters_cmd(config_path: Path, destination: str, partition: str | None) -> None:
    """Re-read the dead letters' rows, map them again and resend what is now valid."""
    config = load(config_path)
    config.destination_names([destination])
    report = replay_dead_letters(config, destination, partition)
    click.echo(
        f"{destination}: {report.attempted:,} dead letters replayed: {report.delivered:,} "
        f"delivered, {report.still_dead:,} still dead"
    )
    for reason, count in sorted(report.reasons.items(), key=lambda kv: -kv[1]):
        click.echo(f"  {count:>7,}  {reason}")


@click.command("state-ddl")
@click.option("--dialect", type=click.Choice(["postgresql", "sqlite"]), default="postgresql")
@click.option("--prefix", default="etl_", show_default=True)
def state_ddl(dialect: str, prefix: str) -> None:
    """Print the CREATE TABLE statements of the state tables (sql/state_tables.sql)."""
    click.echo(generate_ddl(dialect, prefix), nl=False)
