"""The `etl` command: run, plan, status, dead letters, sandbox, demo, ui, bench."""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import logging
import os
import sys
import threading
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from etl.app import pipeline_commands, tool_commands
from etl.errors import EtlError, ReadOnlyDatabaseError


class _Group(click.Group):
    """Turns every EtlError into one clear line and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ReadOnlyDatabaseError as exc:
            # at once: a normal exit would close its SQLite connections, and SQLite would die
            # of SIGBUS writing the file that is now read-only
            click.echo(f"Error: {exc}", err=True)
            sys.stdout.flush()
            os._exit(1)
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


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="Log retries and other details.")
@click.version_option(package_name="etl-backfill")
def cli(verbose: bool) -> None:
    """Backfill user actions from a SQL warehouse into vendor event APIs."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


for command in (
    pipeline_commands.run,
    pipeline_commands.plan,
    pipeline_commands.status,
    pipeline_commands.dead_letters,
    pipeline_commands.state_ddl,
    tool_commands.sandbox,
    tool_commands.demo,
    tool_commands.ui,
    tool_commands.worker,
    tool_commands.bench,
):
    cli.add_command(command)


def main() -> None:
    faulthandler.enable()  # a crash in C code says where, instead of dying without a word
    try:
        cli(prog_name="etl")
    except SystemExit as done:
        _exit(done)


def _exit(done: SystemExit) -> None:
    """Leave without the interpreter's teardown, which frees every module and object one by one
    (0.1-0.2 s after a run: 2 % of a ten-second paced run), once what of a normal exit matters
    is done: the atexit handlers (temporary directories, ``weakref.finalize``), logging's flush,
    stdout and stderr. While another non-daemon thread lives, the exit is the normal one (which
    waits for it)."""
    if any(
        t.is_alive() and not t.daemon
        for t in threading.enumerate()
        if t is not threading.main_thread()
    ):
        raise done
    code = done.code
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(code or 0)
