"""Time as the pipeline sees it: a clock, a way to sleep, and the random part of a backoff.

Bundled in one :class:`Timing` so that a test can hand a fake clock to a whole run in one
argument, and no test waits for real time.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]
Sleep = Callable[[float], None]
Jitter = Callable[[float], float]


def full_jitter(delay: float) -> float:
    """A random sleep between half the delay and the whole of it (kept apart so tests pin it)."""
    return random.uniform(delay / 2, delay)


@dataclass(frozen=True)
class Timing:
    """The clock a run paces by, how it sleeps, and the jitter of its retry backoff."""

    clock: Clock = field(default=time.monotonic)
    sleep: Sleep = field(default=time.sleep)
    jitter: Jitter = field(default=full_jitter)


REAL_TIME = Timing()


class Interrupted(Exception):
    """A sleep cut short because the run is stopping."""
