"""Reading and preparing the rows in a second process, ahead of the sending.

A run spends about two thirds of its CPU reading, mapping and encoding rows, and the rest
sending them and recording what was sent, all in one interpreter, which runs one thread at a
time. A ``ReaderProcess`` reads and prepares the next rows in a child process while this one
sends the last: on two cores, a large unpaced run goes nearly twice as fast.

The child is ``python -m etl.reader``, started on first use and kept for the run. It gets the
pipeline and then one request per partition and destination, which it reads in order, over
pipes private to the two processes. The work is split by who is busier: while the pipe to the
run has room (the run keeps up), the child sends the rows as read (``read``: names and tuples)
and the run prepares them; when the pipe is full (the run is behind), the child prepares them
itself and sends :class:`~etl.events.Rows` (``rows``: lists that pickle fast). The run asks for
the next day while it sends this one, so the child never waits.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import struct
import subprocess
import sys
import traceback
from collections import deque
from collections.abc import Sequence
from datetime import date
from multiprocessing.connection import Connection
from typing import Any

from etl.config import PipelineConfig, SourceConfig
from etl.database import dispose, single_process_only
from etl.destination import resolve_destination
from etl.errors import SourceError
from etl.events import Position
from etl.interpreter import tuned_interpreter
from etl.prepare import MAP_SLICE, Preparer, RowChunks
from etl.source import Source

# "auto" reads in a second process from this many rows on (under it, the child's start, about
# half a second, costs more than it saves), when the vendor's limit lets this many events a
# second through (one process prepares 40,000-60,000 a second on two cores: a lower limit binds
# before the CPU does, and the child would only delay the first request).
MIN_ROWS = 50_000
MIN_CEILING = 20_000
_PIPE_BYTES = 1 << 20  # room for chunks in the pipe, so the child reads on while it waits


def use_reader_process(source: SourceConfig, rows: int, ceiling: float) -> bool:
    """``source.reader_process`` (true, false or "auto") for a run of ``rows`` rows to a
    destination whose rate limit lets ``ceiling`` events a second through."""
    if source.reader_process == "auto":
        cores = (os.cpu_count() or 1) > 1 and os.name == "posix"  # it passes pipes by number
        enough = rows >= MIN_ROWS and ceiling >= MIN_CEILING and cores
        return enough and single_process_only(source.url) is None
    return source.reader_process  # true was checked against the URL when the file was loaded


class ReaderProcess:
    """A pipeline's rows read and prepared for a destination in a child process."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self._requests: Connection | None = None
        self._chunks: Connection | None = None
        self._reading: object | None = None  # the stream the child is sending, if unfinished
        self._asked: deque[tuple[date | None, str, Position | None]] = deque()

    def _start(self) -> tuple[Connection, Connection]:
        if self._requests is not None and self._chunks is not None:
            return self._requests, self._chunks
        request_read, request_write = os.pipe()
        chunk_read, chunk_write = os.pipe()
        with contextlib.suppress(OSError, AttributeError):  # Linux only; a smaller pipe works
            import fcntl

            fcntl.fcntl(chunk_write, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        command = [sys.executable, "-m", "etl.reader", str(request_read), str(chunk_write)]
        try:
            self.proc = subprocess.Popen(
                command,
                pass_fds=(request_read, chunk_write),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # not the run's: a pipe reading it would wait for us
            )
        finally:
            os.close(request_read)
            os.close(chunk_write)
        self._requests = Connection(request_write, readable=False)
        self._chunks = Connection(chunk_read, writable=False)
        self._requests.send(self.config)
        return self._requests, self._chunks

    def ask(self, day: date | None, destination: str, after: Position | None = None) -> None:
        """Have the child read this day after what it was asked before, ahead of the run, so
        that the next day's first rows are ready when this day's last ones are sent."""
        request = (day, destination, after)
        if request in self._asked:
            return
        requests, _ = self._start()
        self._asked.append(request)
        with contextlib.suppress(OSError):  # it died: read_tuples says so
            requests.send(request)

    def read_rows(
        self, day: date | None, preparer: Preparer, after: Position | None = None
    ) -> RowChunks:
        """A partition's rows after ``after``, prepared for ``preparer``'s destination, by the
        child or, when the child sends them as read, by ``preparer`` here."""
        request = (day, preparer.mapper.destination, after)
        if self._reading is not None or (self._asked and self._asked[0] != request):
            self.close()  # a day left half-read, or read ahead from another cursor: start afresh
        self.ask(*request)
        assert self._chunks is not None
        chunks = self._chunks
        self._reading = stream = object()
        try:
            while True:
                try:
                    kind, value = chunks.recv()
                except (EOFError, OSError):
                    raise SourceError(f"the reader process stopped ({self._exit()})") from None
                if kind == "rows":
                    yield value
                    continue
                if kind == "read":
                    yield preparer.prepare(*value)
                    continue
                self._reading = None  # the child goes on with what was asked next
                self._asked.popleft()
                if kind == "end":
                    return
                raise pickle.loads(value)
        finally:
            if self._reading is stream:  # abandoned in the middle of the day
                self.close()

    def _exit(self) -> str:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "it does not answer"
        return f"exit code {code}"

    def close(self) -> None:
        """Stop the child (it is started again if more is read)."""
        if self.proc is None:
            return
        for conn in (self._requests, self._chunks):
            if conn is not None:
                conn.close()
        self._requests = self._chunks = self._reading = None
        self._asked.clear()
        try:
            self.proc.wait(timeout=5)  # it ends when its request pipe closes
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def _error(exc: BaseException) -> bytes:
    """An exception as the parent can raise it again: itself, or its text if it won't pickle."""
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)  # some exceptions pickle but cannot be built again from their args
        return data
    except Exception:
        text = "".join(traceback.format_exception_only(exc)).strip()
        return pickle.dumps(SourceError(f"reading the warehouse failed: {text}"))


def serve(requests: Connection, chunks: Connection) -> None:
    """The child: read what is asked, a partition at a time, until the parent closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes
    with tuned_interpreter(paced=False):  # as a run: rows are many short-lived tuples
        _serve(requests, chunks)


def _message(
    chunks: Connection, preparer: Preparer, names: list[str], rows: Sequence[Sequence[Any]]
) -> bytes:
    """Rows as read, for the run to prepare; or prepared here when the pipe has no room for
    them (the run is busier than this process, which would otherwise wait)."""
    read = pickle.dumps(("read", (names, [tuple(r) for r in rows])), pickle.HIGHEST_PROTOCOL)
    if _room(chunks) >= len(read) + 8:  # the length that precedes it
        return read
    return pickle.dumps(("rows", preparer.prepare(names, rows)), pickle.HIGHEST_PROTOCOL)


def _room(chunks: Connection) -> int:
    """Bytes the pipe takes before a write waits (all of them where the system cannot say)."""
    try:
        import fcntl
        import termios

        size = fcntl.fcntl(chunks.fileno(), fcntl.F_GETPIPE_SZ)
        raw = fcntl.ioctl(chunks.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (ImportError, OSError, AttributeError):
        return 1 << 62
    return int(size) - int(struct.unpack("i", raw)[0])


def _serve(requests: Connection, chunks: Connection) -> None:
    source: Source | None = None
    preparers: dict[str, Preparer] = {}
    try:
        config: PipelineConfig = requests.recv()
        while True:
            day, destination, after = requests.recv()
            try:
                if source is None:
                    source = Source(config)
                preparer = preparers.get(destination)
                if preparer is None:
                    preparer = preparers[destination] = resolve_destination(
                        config, destination
                    ).preparer()
                for names, rows in source.read_tuples(day, preparer.mapper.columns, after):
                    for start in range(0, len(rows), MAP_SLICE):
                        chunks.send_bytes(
                            _message(chunks, preparer, names, rows[start:][:MAP_SLICE])
                        )
            except BrokenPipeError:
                raise  # the run is gone: not an error to send it
            except Exception as exc:
                chunks.send(("error", _error(exc)))
            else:
                chunks.send(("end", None))
    except (BrokenPipeError, EOFError):
        return  # the run closed its end: it has ended, or stopped reading
    finally:
        if source is not None:
            dispose(source.engine)


if __name__ == "__main__":
    serve(
        Connection(int(sys.argv[1]), writable=False),
        Connection(int(sys.argv[2]), readable=False),
    )
