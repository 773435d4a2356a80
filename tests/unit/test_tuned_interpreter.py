"""A run tunes the cycle collector and the switch interval while it lasts, and puts them back."""

from __future__ import annotations

import gc
import sys

from etl.interpreter import tuned_interpreter


def test_settings_are_restored_after_the_last_of_overlapping_runs():
    before = (gc.get_threshold(), sys.getswitchinterval(), gc.get_freeze_count())
    with tuned_interpreter(paced=False):
        assert gc.get_threshold()[0] == 20_000
        assert gc.get_freeze_count() > 0  # what was alive at the start is out of the walks
        assert sys.getswitchinterval() == before[1]
        with tuned_interpreter(paced=True):  # a paced run in the same process
            assert sys.getswitchinterval() <= 0.001
            assert gc.get_threshold() == before[0]  # short pauses: requests leave on time
        assert gc.get_freeze_count() > 0  # the first run still goes on
    assert (gc.get_threshold(), sys.getswitchinterval(), gc.get_freeze_count()) == before


def test_settings_are_restored_when_a_run_fails():
    before = (gc.get_threshold(), sys.getswitchinterval())
    try:
        with tuned_interpreter(paced=True):
            raise RuntimeError("the run failed")
    except RuntimeError:
        pass
    assert (gc.get_threshold(), sys.getswitchinterval()) == before
