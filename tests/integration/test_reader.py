"""The reader process: the rows the source gives, read and prepared in a child process (SQLite,
PostgreSQL)."""

import copy
import os
import pickle
import signal
import threading
from datetime import timedelta

import pytest

from etl.destination import resolve_destination
from etl.errors import SourceError
from etl.events import EVENT, FILTERED, REJECTED
from etl.loader import load_pipeline
from etl.prepare import Preparer, prepared
from etl.reader import MIN_CEILING, MIN_ROWS, ReaderProcess, _error, use_reader_process
from etl.source import Source
from tests.conftest import DESTINATION, warehouse_of, write_pipeline
from tests.integration.scenario import END, FIRST, assert_exactly_once, run, setup


@pytest.fixture
def config(tmp_path, warehouse, fast_sandbox):
    warehouse.fill(3000, days=4, end=END)
    path = write_pipeline(tmp_path / "p.yaml", warehouse, fast_sandbox.url, FIRST.isoformat())
    return load_pipeline(path)


class Here:
    """The same rows, read and prepared in this process."""

    def __init__(self, config):
        self.source = Source(config)

    def read_rows(self, day, preparer, after=None):
        columns = preparer.mapper.columns
        return prepared(self.source.read_tuples(day, columns, after), preparer)


@pytest.fixture
def preparer(config):
    """What maps and encodes the destination's rows, here (and, the same, in the child)."""
    return resolve_destination(config, DESTINATION).preparer()


@pytest.fixture
def source(config):
    here = Here(config)
    yield here
    here.source.engine.dispose()


@pytest.fixture
def reader(config):
    """The reader process of that pipeline, stopped after the test."""
    reader = ReaderProcess(config)
    yield reader
    reader.close()


def misnamed(preparer):
    """The same preparer, for a destination the pipeline does not have."""
    mapper = copy.copy(preparer.mapper)
    mapper.destination = "no_such_destination"
    return Preparer(mapper, preparer.vendor, preparer.max_bytes)


def chunks_of(reader, preparer, day, after=None):
    return list(reader.read_rows(day, preparer, after))


def test_it_reads_what_the_source_reads(source, reader, preparer):
    expected = chunks_of(source, preparer, FIRST)
    assert len(expected) > 1  # several chunks of 500 rows
    assert {r.kinds[i] for r in expected for i in range(len(r))} == {EVENT, FILTERED, REJECTED}
    assert chunks_of(reader, preparer, FIRST) == expected
    pid = reader.proc.pid
    after = expected[0].positions[-1]  # from a cursor, as a resumed partition
    assert chunks_of(reader, preparer, FIRST, after) == chunks_of(source, preparer, FIRST, after)
    assert reader.proc.pid == pid  # one child for the run
    reader.close()
    assert reader.proc is None


def test_days_asked_ahead_are_read_in_turn(source, reader, preparer):
    second = FIRST + timedelta(days=1)
    reader.ask(FIRST, DESTINATION)
    reader.ask(second, DESTINATION)
    assert chunks_of(reader, preparer, FIRST) == chunks_of(source, preparer, FIRST)
    pid = reader.proc.pid
    assert chunks_of(reader, preparer, second) == chunks_of(source, preparer, second)
    assert reader.proc.pid == pid  # read ahead by the same child
    # asked from one cursor, read from another (the partition moved on): read afresh
    after = chunks_of(source, preparer, FIRST)[0].positions[-1]
    reader.ask(FIRST, DESTINATION)
    assert chunks_of(reader, preparer, FIRST, after) == chunks_of(source, preparer, FIRST, after)
    assert reader.proc.pid != pid


def test_an_error_in_the_child_is_raised_here_and_the_child_goes_on(reader, preparer):
    with pytest.raises(KeyError, match="no_such_destination"):
        list(reader.read_rows(FIRST, misnamed(preparer)))
    assert chunks_of(reader, preparer, FIRST)  # the same child reads on


def test_a_child_that_dies_is_an_error_that_says_so(source, reader, preparer):
    assert chunks_of(reader, preparer, FIRST)
    os.kill(reader.proc.pid, signal.SIGKILL)  # between two days
    reader.proc.wait()
    with pytest.raises(SourceError, match=r"the reader process stopped \(exit code -9\)"):
        list(reader.read_rows(FIRST, preparer))
    assert chunks_of(reader, preparer, FIRST) == chunks_of(source, preparer, FIRST)  # a new child


def test_a_day_left_half_read_does_not_leak_into_the_next(source, reader, preparer):
    chunks = reader.read_rows(FIRST, preparer)
    next(chunks)
    chunks.close()  # the engine stopped in the middle of the day
    assert chunks_of(reader, preparer, FIRST) == chunks_of(source, preparer, FIRST)


def test_a_stream_left_open_neither_mixes_with_the_next_nor_stops_it(source, reader, preparer):
    left = reader.read_rows(FIRST, preparer)
    next(left)  # not closed: the caller still holds it
    assert chunks_of(reader, preparer, FIRST) == chunks_of(source, preparer, FIRST)
    pid = reader.proc.pid
    left.close()  # late: the reader has moved on
    assert chunks_of(reader, preparer, FIRST) == chunks_of(source, preparer, FIRST)
    assert reader.proc.pid == pid


@pytest.mark.parametrize("kind", ["unpicklable", "not rebuilt from its args"])
def test_an_error_that_cannot_travel_travels_as_its_text(kind):
    class Unpicklable(Exception):
        def __init__(self) -> None:
            super().__init__("the driver broke")
            self.lock = threading.Lock()

    class TwoArgs(Exception):
        def __init__(self, what: str, where: str) -> None:
            super().__init__(f"the driver broke {what} {where}")

    exc = Unpicklable() if kind == "unpicklable" else TwoArgs("at", "row 7")
    error = pickle.loads(_error(exc))
    assert isinstance(error, SourceError)
    assert "reading the warehouse failed" in str(error) and "the driver broke" in str(error)


def test_a_backfill_through_the_reader_process(tmp_path, warehouse, sandbox, clock, monkeypatch):
    started = []
    original = ReaderProcess._start
    monkeypatch.setattr(ReaderProcess, "_start", lambda self: started.append(1) or original(self))
    path = setup(tmp_path, warehouse, sandbox)
    text = path.read_text().replace("chunk_size: 500", "chunk_size: 500\n  reader_process: true")
    path.write_text(text)
    said = []
    report = run(path, clock, log=said.append)
    assert report.ok and started
    assert said == ["fuul_rewards: 1,200 rows to read: a second process reads them"]
    assert_exactly_once(path, warehouse, sandbox)


def test_when_a_run_reads_in_a_second_process(config):
    source, fast = config.source, MIN_CEILING
    if (os.cpu_count() or 1) > 1:
        assert use_reader_process(source, MIN_ROWS, fast)
    assert not use_reader_process(source, MIN_ROWS - 1, fast)  # its start would cost more
    assert not use_reader_process(source, 10**9, MIN_CEILING - 1)  # the vendor sets the pace
    assert not use_reader_process(source.model_copy(update={"reader_process": False}), 10**9, fast)
    assert use_reader_process(source.model_copy(update={"reader_process": True}), 1, 1)
    in_memory = source.model_copy(update={"url": "sqlite://"})
    assert not use_reader_process(in_memory, 10**9, fast)  # auto: it could not open it


def test_a_child_that_dies_in_the_middle_of_a_day(tmp_path, fast_sandbox):
    """A day larger than the pipe holds: the child is still sending when it is killed."""
    with warehouse_of("sqlite", tmp_path) as warehouse:
        warehouse.fill(30_000, days=1, end=END)
        day = END - timedelta(days=1)
        path = write_pipeline(tmp_path / "p.yaml", warehouse, fast_sandbox.url, day.isoformat())
        config = load_pipeline(path)
        reader = ReaderProcess(config)
        try:
            chunks = reader.read_rows(day, resolve_destination(config, DESTINATION).preparer())
            next(chunks)
            os.kill(reader.proc.pid, signal.SIGKILL)
            with pytest.raises(SourceError, match=r"the reader process stopped \(exit code -9\)"):
                list(chunks)
        finally:
            reader.close()


def test_the_days_a_run_reads_are_counted_as_each_day(config):
    """A run sizes its reading (a reader process or not, the progress bar) by the rows of the
    days it reads, counted a run of consecutive days at a time; grouped by day they agree."""
    source = Source(config)
    days = [FIRST + timedelta(days=n) for n in range(4)]
    each = {day: source.count_partition(day) for day in days}
    assert all(each.values())
    for chosen in (days, [days[0], days[2], days[3]], [days[1]], []):
        assert source.count_spans(chosen) == sum(each[d] for d in chosen)
    assert source.count_days(days) == each
    # an estimate may count a few rows beside the days (mixed text), never fewer
    assert source.count_spans(days, estimate=True) >= sum(each.values())
    source.engine.dispose()
