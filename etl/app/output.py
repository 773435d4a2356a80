"""What the commands print: a run's summary, a plan, the status of the state tables."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import click

from etl.config import PipelineConfig
from etl.events import event_id_for
from etl.plan import Plan, format_duration
from etl.reports import RunReport
from etl.state import Checkpoint
from etl.statuses import Mode, PartitionStatus, is_done
from etl.windows import UNDATED, Outside

_STATUS_COLUMNS = ("rows_read", "delivered", "dead_letters", "filtered", "in_doubt")


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
        print_near_misses(*d.near_misses)
        rechecked = [p for p in d.partitions if p.mode is Mode.RECHECK]
        if rechecked:
            click.echo(
                f"  RE-CHECKED {len(rechecked)} day(s) for late rows: "
                f"{sum(p.rows_read for p in rechecked):,} new rows read, "
                f"{sum(p.deleted for p in rechecked):,} deleted, "
                f"{sum(p.moved for p in rechecked):,} moved to another day, "
                f"{sum(p.changed for p in rechecked):,} changed (not sent again)"
            )
        for line in (d.skipped, d.stopped):
            if line:
                click.echo(f"  {'SKIPPED' if line is d.skipped else 'STOPPED'}: {line}")
        if d.error:
            click.echo(f"  STOPPED: {d.error}")
        for p in d.failed:
            if p.error and p.error != d.error:
                click.echo(f"  FAILED {p.partition}: {p.error}")
    if report.start_date is not None:
        print_outside(report.outside, report.last_day, report.start_date)
    if dry_run:
        click.echo(f"Payloads written to {dry_run}; nothing was sent and no state was written.")
    elif report.state_tables:
        click.echo(f"State tables: {', '.join(report.state_tables)} in {report.state_url}")


def print_near_misses(count: int, first: str | None, indent: str = "  ") -> None:
    """Rows a filter dropped only because of case or spaces: likely a typo in the filter."""
    if count:
        key, _, example = (first or "mapping.filter: ?").partition(": ")
        click.echo(
            f"{indent}NOTE: {count:,} rows filtered out by {key} only because of case or "
            f"spaces, e.g. {example}"
        )


def print_outside(outside: Outside, last_day: Any, start_date: Any, indent: str = "") -> None:
    lines = outside.lines(last_day, start_date)
    if lines:
        click.echo(f"{indent}Rows outside every partition of the range: " + "; ".join(lines))


def print_plan(plan: Plan, by_partition: bool) -> None:
    for p in plan.destinations:
        rejected = p.rejected
        rows = p.total("rows") + p.skipped_rows
        sent = p.total("sent")
        click.echo(f"{p.name} ({p.vendor}): {rows + sent:,} rows")
        if sent:
            click.echo(f"  sent      {sent:>10,}  by earlier runs (complete days are not read)")
        click.echo(f"  to send   {p.total('to_send'):>10,}  in {p.total('requests'):,} requests")
        click.echo(f"  filtered  {p.total('filtered'):>10,}")
        click.echo(f"  not sent  {sum(rejected.values()):>10,}")
        for reason, count in rejected.most_common():
            click.echo(f"    {count:>10,}  {reason}")
        if p.unchecked:
            click.echo(
                f"  counted in the warehouse: {p.unchecked:,} rows to send not checked against "
                f"{p.vendor}'s rules (etl plan --rows maps every row as a run does)"
            )
        print_near_misses(p.total("near_misses"), p.near_miss)
        for part in p.refused:
            click.echo(f"  REFUSED {part.partition}: {part.refused}")
        if p.refused:
            click.echo("  etl run would stop here before sending anything to this destination")
        elif not p.total("to_send") and not p.total("rows"):
            click.echo("  nothing left to send in this range")
        rate = f"{p.rate.requests:g} requests per {p.rate.per_seconds:g} s"
        if (gap := p.rate.spacing) > 0:
            rate += ", one at a time " + (
                f"{gap:.3f} s apart" if gap >= 1 else f"{gap * 1000:.0f} ms apart"
            )
        click.echo(f"  estimated {format_duration(p.seconds)} at {rate} (the rate limit alone)")
        if by_partition:
            click.echo(
                f"    {'partition':<10} {'mode':<8} {'sent':>8} {'rows':>8} {'send':>8} "
                f"{'filtered':>8} {'rejected':>8}"
            )
            for part in p.partitions:
                mode = "refused" if part.refused else "held" if part.note else part.mode
                click.echo(
                    f"    {part.partition:<10} {mode:<8} {part.sent:>8,} {part.rows:>8,} "
                    f"{part.to_send:>8,} {part.filtered:>8,} {sum(part.rejected.values()):>8,}"
                )
        for part in p.partitions:
            if part.note:
                click.echo(f"  NOTE: {part.note}")
    print_outside(plan.outside, plan.last_day, plan.start_date)
    if plan.index:
        click.echo(
            "NOTE: each day's read scans the whole table: no index serves the timestamp column's "
            "ranges. This one would (the tool never creates it; your warehouse's owners may), with "
            f"the table analyzed after it so that the planner knows it:\n  {plan.index};"
        )


def print_status_summary(
    config: PipelineConfig, name: str, cps: list[Checkpoint], dead_letters: int
) -> None:
    """One line a destination: its days by status, and its rows by outcome."""
    dated = [cp for cp in cps if cp.partition != UNDATED]
    undated = [cp for cp in cps if cp.partition == UNDATED]
    by_status: Counter[str] = Counter(cp.status for cp in dated)
    totals = {
        c: sum(getattr(cp, c) for cp in cps)
        for c in (*_STATUS_COLUMNS, "deleted", "moved", "changed")
    }
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
    undated_rows = sum(cp.rows_read for cp in undated)
    click.echo(
        f"{name} ({config.destinations[name].vendor}): {len(dated)} partitions {statuses}; "
        f"read {totals['rows_read']:,} = delivered {totals['delivered']:,} + dead "
        f"{totals['dead_letters']:,} + filtered {totals['filtered']:,}; in doubt "
        f"{totals['in_doubt']:,}; dead letters to replay {dead_letters:,}; deleted "
        f"{totals['deleted']:,}, moved {totals['moved']:,}, changed {totals['changed']:,} after "
        "sending; "
        f"{undated_rows:,} rows without a readable timestamp"
    )
    first_miss = next((cp.near_miss for cp in cps if cp.near_miss), None)
    print_near_misses(sum(cp.near_misses for cp in cps), first_miss)
    for cp in cps:
        if not is_done(cp.status) and cp.error:
            click.echo(f"  {cp.partition} {cp.status}: {cp.error}")


def print_status_table(cps: list[Checkpoint], show_skipped: bool) -> None:
    click.echo(
        f"  {'partition':<10} {'status':<11} {'read':>8} {'delivered':>9} {'dead':>6} "
        f"{'filtered':>8} {'in doubt':>8} {'deleted':>7} {'moved':>6} {'changed':>7}  updated"
    )
    for cp in cps:
        if cp.status == PartitionStatus.SKIPPED and not show_skipped:
            continue
        updated = cp.updated_at.strftime("%Y-%m-%d %H:%M") if cp.updated_at else ""
        click.echo(
            f"  {cp.partition:<10} {cp.status:<11} {cp.rows_read:>8,} {cp.delivered:>9,} "
            f"{cp.dead_letters:>6,} {cp.filtered:>8,} {cp.in_doubt:>8,} {cp.deleted:>7,} "
            f"{cp.moved:>6,} {cp.changed:>7,}  {updated}"
        )
        if cp.error:
            click.echo(f"    {cp.error}")
        print_near_misses(cp.near_misses, cp.near_miss, indent="    ")
    totals = {c: sum(getattr(cp, c) for cp in cps) for c in _STATUS_COLUMNS}
    click.echo(
        f"  {'total':<10} {'':<11} {totals['rows_read']:>8,} {totals['delivered']:>9,} "
        f"{totals['dead_letters']:>6,} {totals['filtered']:>8,} {totals['in_doubt']:>8,}"
    )


def print_row_history(
    name: str, key: str, entries: list[dict[str, Any]], dead: list[dict[str, Any]]
) -> None:
    if not entries:
        click.echo(f"{name}: row {key} has not been read (or its log was purged)")
    for entry in entries:
        click.echo(
            f"{name}: row {key}: {entry['outcome']} in partition {entry['partition']} "
            f"(event {event_id_for(name, key)}, slice {entry['seq']} of batch "
            f"{entry['batch_id'] or '-'})"
        )
        if entry["in_request"]:
            click.echo(
                f"  sent {entry['sent_at']}, answered {entry['acked_at']}, "
                f"{entry.get('attempts') or 0} request(s), last HTTP status "
                f"{entry.get('last_http_status')}"
            )
        else:
            click.echo(f"  recorded {entry['recorded_at']} (not sent: {entry['outcome']})")
        if entry["in_doubt"]:
            click.echo(f"  {entry['in_doubt']} copy(ies) may have been stored more than once")
        if entry["gone"]:
            at, how = entry["gone"]
            where = "moved to another day" if how == "moved" else "deleted from the source"
            click.echo(f"  {where} (noticed {at})")
    for letter in dead:
        replayed = f", replayed {letter['replayed_at']}" if letter["replayed_at"] else ""
        click.echo(f"  dead letter: {letter['reason']}{replayed}")
