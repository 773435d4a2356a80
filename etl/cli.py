"""The `etl` command: run, status, dead letters, sandbox, demo."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from datetime import date, datetime
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from etl.bench import PARTS
from etl.config import PipelineConfig, load_pipeline
from etl.errors import EtlError
from etl.runner import RunReport, run_backfill, select_destinations
from etl.state import StateStore, generate_ddl, open_store


class _Group(click.Group):
    """Turns every EtlError into one clear line and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EtlError as exc:
            raise click.ClickException(str(exc)) from None
        except SQLAlchemyError as exc:
            if "-v" in sys.argv or "--verbose" in sys.argv:
                raise
            first = str(exc).splitlines()[0]
            raise click.ClickException(f"database error: {first} (-v shows the details)") from None
        except KeyboardInterrupt:
            click.echo("interrupted: progress up to the last acknowledged batch is saved", err=True)
            sys.exit(130)
        except BrokenPipeError:  # `etl plan | head`: the reader left; say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except (click.ClickException, click.exceptions.Exit, SystemExit):
            raise
        except Exception as exc:
            if "-v" in sys.argv or "--verbose" in sys.argv:
                raise
            raise click.ClickException(
                f"unexpected {type(exc).__name__}: {exc} (etl -v ... shows the traceback)"
            ) from None


config_option = click.option(
    "-c",
    "--config",
    "config_path",
    envvar="ETL_PIPELINE",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The pipeline file (or $ETL_PIPELINE).",
)


DAY = click.DateTime(["%Y-%m-%d"])


def _as_date(_ctx: click.Context, _param: click.Parameter, value: datetime | None) -> date | None:
    return value.date() if value else None


def range_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """-d/--destination, --from and --to, shared by the commands that work on a range."""
    for option in reversed(
        [
            click.option(
                "-d",
                "--destination",
                "destinations",
                multiple=True,
                help="Only these (repeatable).",
            ),
            click.option(
                "--from", "first_day", type=DAY, callback=_as_date, help="First day (UTC)."
            ),
            click.option(
                "--to", "last_day", type=DAY, callback=_as_date, help="Last day, inclusive."
            ),
        ]
    ):
        command = option(command)
    return command


def _load(path: Path) -> PipelineConfig:
    return load_pipeline(path)


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="Log retries and other details.")
@click.version_option(package_name="etl-backfill")
def cli(verbose: bool) -> None:
    """Backfill user actions from a SQL warehouse into vendor event APIs."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@cli.command()
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
    config = _load(config_path)
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


@cli.command()
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
    from etl.plan import format_duration, plan_backfill

    config = _load(config_path)
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


@cli.command()
@config_option
@click.option("-d", "--destination", "destinations", multiple=True)
@click.option("--all", "show_all", is_flag=True, help="Also list empty, complete partitions.")
def status(config_path: Path, destinations: tuple[str, ...], show_all: bool) -> None:
    """Progress per destination and partition: counts, in doubt, dead letters."""
    config = _load(config_path)
    with closing(open_store(config)) as store:
        _print_status(
            config, store, select_destinations(config, list(destinations) or None), show_all
        )


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


@cli.group("dead-letters")
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
    config = _load(config_path)
    select_destinations(config, [destination])
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
    from etl.replay import replay_dead_letters

    config = _load(config_path)
    select_destinations(config, [destination])
    report = replay_dead_letters(config, destination, partition)
    click.echo(
        f"{destination}: {report.attempted:,} dead letters replayed: {report.delivered:,} "
        f"delivered, {report.still_dead:,} still dead"
    )
    for reason, count in sorted(report.reasons.items(), key=lambda kv: -kv[1]):
        click.echo(f"  {count:>7,}  {reason}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True)
@click.option(
    "--time-scale", default=1.0, show_default=True, help="Run rate-limit windows Nx faster."
)
@click.option(
    "--record",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append accepted events to this JSONL file.",
)
@click.option("--fuul-triggers", help="Comma-separated event names Fuul accepts (default: any).")
@click.option(
    "--torque-event",
    "torque_events",
    multiple=True,
    metavar="NAME:PARAM=TYPE,...",
    help="A Torque custom event and its typed parameters (repeatable; default: any event).",
)
@click.option("--error-rate", default=0.0, help="Fraction of requests answered 503.")
@click.option(
    "--lose-rate", default=0.0, help="Fraction of accepted requests whose response is lost."
)
@click.option("--latency-ms", default=0.0, help="Added latency per request.")
def sandbox(
    host: str,
    port: int,
    time_scale: float,
    record: Path | None,
    fuul_triggers: str | None,
    torque_events: tuple[str, ...],
    error_rate: float,
    lose_rate: float,
    latency_ms: float,
) -> None:
    """Serve the sandbox vendors on loopback until interrupted."""
    from etl.sandbox import SandboxServer
    from etl.sandbox.server import Sandbox

    triggers = {t.strip() for t in fuul_triggers.split(",")} if fuul_triggers else None
    box = Sandbox(
        time_scale=time_scale,
        record_path=record,
        fuul_triggers=triggers,
        torque_events=_parse_torque_events(torque_events) if torque_events else None,
        freeze_records=True,
    )
    for vendor in box.emulators:
        box.set_faults(vendor, error_rate=error_rate, lose_rate=lose_rate, latency_ms=latency_ms)
    server = SandboxServer(box, host, port)
    url = server.url
    click.echo(f"Sandbox vendors on {url} (time scale {time_scale:g}x); Ctrl-C stops.")
    for line in (
        f"fuul         {url}/fuul/api/v1  key sandbox-fuul-key (sandbox-fuul-readonly: 403)",
        f"torque       {url}/torque       key sandbox-torque-key",
        f"thrivestack  {url}/thrivestack  key sandbox-thrivestack-key",
        f"airship      {url}/airship      token sandbox-airship-token, app sandbox-airship-app",
        f"records      {url}/_sandbox/records?vendor=NAME, stats {url}/_sandbox/stats",
    ):
        click.echo("  " + line)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _parse_torque_events(specs: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """'purchase:amount=number,game=string' -> {'purchase': {'amount': 'number', ...}}."""
    events: dict[str, dict[str, str]] = {}
    for spec in specs:
        name, _, params = spec.partition(":")
        events[name.strip()] = {}
        for param in filter(None, params.split(",")):
            key, _, kind = param.partition("=")
            if kind not in ("string", "number", "boolean"):
                raise click.BadParameter(f"{param!r}: the type must be string, number or boolean")
            events[name.strip()][key.strip()] = kind
    return events


demo_dir_option = click.option(
    "--dir",
    "directory",
    default=".etl-demo",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the demo keeps its warehouse, pipeline file and Dagster instance.",
)


@cli.command()
@demo_dir_option
@click.option("--rows", default=60_000, show_default=True)
@click.option("--days", default=150, show_default=True)
@click.option("--fresh", is_flag=True, help="Generate a new warehouse (and so new state).")
def demo(directory: Path, rows: int, days: int, fresh: bool) -> None:
    """Generate a SQLite warehouse, start the sandbox, backfill it through Dagster, summarize."""
    from etl.demo.run import run_demo

    report = run_demo(directory, rows=rows, days=days, fresh=fresh)
    print_summary(report)
    click.echo(f"Next: etl ui --dir {directory}   (the Dagster UI with these runs)")
    click.echo(
        f"      etl status -c {directory}/pipeline.yaml ; etl plan -c {directory}/pipeline.yaml"
    )
    if not report.ok:
        sys.exit(1)


@cli.command()
@demo_dir_option
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Another pipeline file (default: DIR/pipeline.yaml, with the sandbox started).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=3000, show_default=True)
@click.option("--sandbox-port", default=8765, show_default=True, help="For the demo's pipeline.")
def ui(directory: Path, config_path: Path | None, host: str, port: int, sandbox_port: int) -> None:
    """The Dagster UI (dagster dev) on the demo's instance, with the sandbox vendors running."""
    import importlib
    import os
    import subprocess

    from etl.demo.run import SANDBOX_CREDENTIALS, TIME_SCALE, TORQUE_EVENTS, ensure_demo_pipeline
    from etl.sandbox import start_sandbox

    home = importlib.import_module("dagster_project.demo").prepare_home(directory / "dagster_home")
    env = {**os.environ, "DAGSTER_HOME": str(home.resolve())}
    server = None
    if config_path is None:
        config_path = ensure_demo_pipeline(directory)
        server = start_sandbox(
            port=sandbox_port, time_scale=TIME_SCALE, torque_events=TORQUE_EVENTS
        )
        env.update(SANDBOX_CREDENTIALS, ETL_SANDBOX_URL=server.url)
        click.echo(f"Sandbox vendors on {server.url}")
    env["ETL_PIPELINE"] = str(config_path.resolve())
    dagster = Path(sys.executable).with_name("dagster")
    command = [
        str(dagster),
        "dev",
        "-m",
        "dagster_project.definitions",
        "-h",
        host,
        "-p",
        str(port),
    ]
    click.echo(f"Dagster UI on http://{host}:{port} (instance {home}); Ctrl-C stops.")
    try:
        subprocess.run(command, env=env, check=False)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.stop()


@cli.command()
@click.option(
    "--rows", default=1_000_000, show_default=True, help="Rows in the generated warehouse."
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the numbers here.",
)
@click.option("--port", default=0, help="For the sandbox it starts (default: a free port).")
@click.option(
    "--only",
    type=click.Choice(PARTS),
    multiple=True,
    help="Run only this measurement (repeatable; default: all).",
)
def bench(rows: int, json_path: Path | None, port: int, only: tuple[str, ...]) -> None:
    """Measure throughput, memory, rate-limit efficiency and resume cost (several minutes)."""
    from etl.bench import run_bench

    results = run_bench(rows, say=lambda m: click.echo(m, err=True), port=port, only=only or PARTS)
    width = max(len(k) for k in results)
    for key, value in results.items():
        if key != "targets_met":
            click.echo(
                f"{key:<{width}}  {value:,}"
                if isinstance(value, int | float)
                else f"{key:<{width}}  {value}"
            )
    click.echo("")
    for target, met in results["targets_met"].items():
        click.echo(f"{'met    ' if met else 'NOT MET'}  {target}")
    if json_path:
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        click.echo(f"written to {json_path}")


@cli.command("state-ddl")
@click.option("--dialect", type=click.Choice(["postgresql", "sqlite"]), default="postgresql")
@click.option("--prefix", default="etl_", show_default=True)
def state_ddl(dialect: str, prefix: str) -> None:
    """Print the CREATE TABLE statements of the state tables (sql/state_tables.sql)."""
    click.echo(generate_ddl(dialect, prefix), nl=False)


def main() -> None:
    cli(prog_name="etl")
