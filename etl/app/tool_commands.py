"""The commands around a pipeline: the sandbox vendors, the demo, the Dagster UI, the bench."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from etl.app.options import BENCH_PARTS, config_option, demo_dir_option
from etl.app.output import print_summary


@click.command()
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
@click.option(
    "--keep-nothing",
    is_flag=True,
    help="Count accepted events without keeping them (long benchmarks: ten million events "
    "kept take 9 GB; /_sandbox/records then stays empty).",
)
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
    keep_nothing: bool,
) -> None:
    """Serve the sandbox vendors on loopback until interrupted."""
    from etl.sandbox import Sandbox, SandboxServer  # not imported by the other commands

    triggers = {t.strip() for t in fuul_triggers.split(",")} if fuul_triggers else None
    box = Sandbox(
        time_scale=time_scale,
        record_path=record,
        fuul_triggers=triggers,
        torque_events=_parse_torque_events(torque_events) if torque_events else None,
        freeze_records=True,
        keep_events=not keep_nothing,
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


@click.command()
@demo_dir_option
@click.option("--rows", default=60_000, show_default=True)
@click.option("--days", default=150, show_default=True)
@click.option("--fresh", is_flag=True, help="Generate a new warehouse (and so new state).")
def demo(directory: Path, rows: int, days: int, fresh: bool) -> None:
    """Generate a SQLite warehouse, start the sandbox, backfill it through Dagster, summarize."""
    from etl.app.demo.run import run_demo

    report = run_demo(directory, rows=rows, days=days, fresh=fresh)
    print_summary(report)
    click.echo(f"Next: etl ui --dir {directory}   (the Dagster UI with these runs)")
    click.echo(
        f"      etl status -c {directory}/pipeline.yaml ; etl plan -c {directory}/pipeline.yaml"
    )
    if not report.ok:
        sys.exit(1)


@click.command()
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
    from etl.app.ui import run_ui

    run_ui(directory, config_path, host, port, sandbox_port, say=click.echo)


@click.command()
@config_option
@click.option(
    "--concurrency", default=1, show_default=True, help="Runs this host executes at a time."
)
@click.option("--name", default="etl", show_default=True, help="The worker's name (NAME@host).")
def worker(config_path: Path, concurrency: int, name: str) -> None:
    """A worker host of a Dagster deployment on several machines: takes runs from the broker.

    Needs $DAGSTER_HOME with dagster_project/dagster.celery.yaml as its dagster.yaml
    (DAGSTER_PG_URL, ETL_CELERY_BROKER) and the pipeline file the daemon's host uses."""
    from dagster_project.hosts import deployment_digest, start_worker, worker_problems
    from etl.loader import load_pipeline

    os.environ["ETL_PIPELINE"] = str(config_path.resolve())  # what the runs' definitions load
    config = load_pipeline(config_path)
    problems = worker_problems(config)
    if problems:
        for line in problems:
            click.echo(f"etl worker: {line}", err=True)
        sys.exit(2)
    click.echo(
        f"etl worker {name}: pipeline {config_path} (code and file digest "
        f"{deployment_digest()}), {concurrency} run(s) at a time"
    )
    start_worker(concurrency, name)


WAREHOUSE = ("scale", "hosts")  # the parts that measure a real warehouse (--warehouse)


@click.command()
@click.option(
    "--rows",
    type=int,
    help="Rows in the generated warehouse (default: 1,000,000; the scale part 10,000,000).",
)
@click.option(
    "--warehouse",
    metavar="URL",
    help="A PostgreSQL or DuckDB warehouse for the scale part (it alone runs, unless --only "
    "says more) and the hosts part (PostgreSQL): rows generated in a scratch schema, dropped "
    "afterwards.",
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
    type=click.Choice(BENCH_PARTS),
    multiple=True,
    help="Run only this measurement (repeatable; default: all).",
)
def bench(
    rows: int | None,
    warehouse: str | None,
    json_path: Path | None,
    port: int,
    only: tuple[str, ...],
) -> None:
    """Measure throughput, memory, rate-limit efficiency and resume cost (several minutes)."""
    from etl.app.bench import run_bench

    if not only:
        only = ("scale",) if warehouse else tuple(p for p in BENCH_PARTS if p not in WAREHOUSE)
    elif warehouse and not set(WAREHOUSE) & set(only):  # --only names the other parts it runs
        only = (*only, "scale")
    for part in set(WAREHOUSE) & set(only):
        if not warehouse:
            raise click.UsageError(
                f"etl bench --only {part} measures a real warehouse: give it with --warehouse "
                "URL (postgresql+psycopg://...; the scale part also duckdb:///...)"
            )
    say = lambda m: click.echo(m, err=True)  # noqa: E731
    results: dict[str, Any] = {"targets_met": {}}
    rest = tuple(p for p in only if p != "scale")
    if rest:
        results = run_bench(rows or 1_000_000, say=say, port=port, only=rest, warehouse=warehouse)
    if warehouse and "scale" in only:
        from etl.app.bench_scale import SCALE_ROWS, run_scale

        scale = run_scale(warehouse, rows or SCALE_ROWS, say, port)
        met = {**results.pop("targets_met"), **scale.pop("targets_met")}
        results = {**results, **scale, "targets_met": met}
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
