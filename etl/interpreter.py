"""Interpreter settings for the length of a run: the cycle collector and the switch interval.

Its own module, without imports of the pipeline, so that the reader process and the bench's
floor are tuned as a run is.
"""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_TUNING_LOCK = threading.Lock()
_tuned_runs = 0
_defaults: tuple[float, tuple[int, int, int]] = (0.005, (700, 10, 10))


@contextmanager
def tuned_interpreter(paced: bool) -> Iterator[None]:
    """Interpreter settings for the length of a run (or of runs overlapping in one process),
    restored after the last. ``paced``: some destination is paced under 1,000 requests a
    second, so the limit binds and its requests must leave on time.

    - The cycle collector: a run allocates millions of short-lived objects (rows, events,
      payloads) that reference counting frees, yet with Python's default threshold the collector
      walks the young objects every 700 allocations, and every object the process holds (modules,
      Dagster's definitions) now and then: a quarter to a third of a run's CPU. The objects alive
      at the start are frozen out of its walks; and unless the run is paced, it runs every
      20,000 allocations (its pauses then last milliseconds: a paced request would leave late).
    - The switch interval: a sender thread woken for its rate-limit slot waits for the
      interpreter lock while the main thread maps rows: when paced, 1 ms at most instead of
      Python's 5, so that requests leave on time (more switching costs throughput).
    """
    global _tuned_runs, _defaults
    with _TUNING_LOCK:
        if _tuned_runs == 0:
            _defaults = (sys.getswitchinterval(), gc.get_threshold())
            gc.freeze()
            gc.set_threshold(20_000, *_defaults[1][1:])
        _tuned_runs += 1
        if paced:
            sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
            gc.set_threshold(*_defaults[1])
    try:
        yield
    finally:
        with _TUNING_LOCK:
            _tuned_runs -= 1
            if _tuned_runs == 0:
                sys.setswitchinterval(_defaults[0])
                gc.set_threshold(*_defaults[1])
                gc.unfreeze()
