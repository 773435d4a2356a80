"""The delivery log's packed rows: what is written reads back the same, changes included."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace

from etl.state.deliveries import LogSlice, log_row

AT = datetime(2026, 11, 4, tzinfo=UTC)


def decoded(values: dict) -> LogSlice:
    return LogSlice(SimpleNamespace(**values))


def test_a_slice_reads_back_as_written():
    keys = ["1", 'k"2', "é", "4"]
    row = log_row(
        "dest", "2026-11-03", 7, json.dumps(keys), "dxfd", [1, 2**32 - 1, 0, 5], {3: 2}, AT
    )
    s = decoded(row)
    entries = dict(s.entries())
    assert list(entries) == keys
    assert [e.outcome for e in entries.values()] == [
        "delivered",
        "dead_letter",
        "filtered",
        "in_doubt",
    ]
    assert entries['k"2'].content_hash == 2**32 - 1
    assert entries["é"].content_hash is None  # filtered: nothing was sent
    assert (entries["4"].in_doubt, entries["4"].seq, entries["4"].index) == (2, 7, 3)
    assert all(e.gone is None and e.partition == "2026-11-03" for e in entries.values())


def test_changes_are_kept_in_place():
    s = decoded(log_row("dest", "2026-11-03", 1, '["a", "b", "c"]', "ddd", [1, 2, 3], {}, AT))
    s.gone[0] = ("2026-11-05T00:00:00", "deleted")
    s.gone[2] = ("2026-11-05T00:00:00", "moved")
    s.hashes[1] = 99
    again = decoded(
        {
            **vars(
                SimpleNamespace(
                    partition="2026-11-03", seq=1, source_keys='["a", "b", "c"]', recorded_at=AT
                )
            ),
            **s.values(),
        }
    )
    assert [e.gone for _, e in again.entries()] == ["deleted", None, "moved"]
    assert again.entry(1).content_hash == 99
