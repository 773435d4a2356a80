"""PostgreSQL reads a ``text`` timestamp exactly as the Python grammar does, value by value:
every form, the edges of each part, and what is not a timestamp."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from etl.timestamps import text_to_epoch_us
from etl.windows import MixedTextWindows
from tests.conftest import POSTGRES_URL, require_postgres

pytestmark = pytest.mark.postgres

VALUES = [
    "2024-01-02",
    "2024-01-02T10:00",
    "2024-01-02 10:00:05",
    "2024-01-02 10:00:05,5",
    "2024-01-02T10:00:05.123456789Z",
    "2024-01-02T10:00:05.1234567",
    "2024-01-02T10:00 +0200",
    "2024-01-02t10:00:00z",
    "2024-01-02T10:00:00+02",
    "2024-01-02T10:00:00.25 -05:30",
    "  2024-01-02T10:00:00-05:30 \t",
    "2024-02-29T00:00:00Z",
    "1900-03-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
    "0001-01-01T00:00:00Z",
    "1704067200",
    "1704067200.5",
    "1704067200.1234567",
    "1704067200123",
    "1704067200123.7",
    "99999999999",
    "100000000000",
    # not timestamps
    "999999999999999",  # milliseconds past the year 9999
    "1000000000000000",
    "12345678901234567890123456789",  # more digits than a bigint holds
    "2023-02-29",
    "2024-13-01",
    "2024-00-10",
    "2024-04-31T00:00:00Z",
    "2024-01-02T24:00:00Z",
    "2024-01-02T10:60",
    "2024-01-02T10:00:60",
    "2024-01-02T10:00:00+24:00",
    "2024-01-02T10:00:00+02:60",
    "2024-01-02T10:00:00.Z",
    "2024-01-02T10:00:00.1234567890",
    "2024-01-02T10",
    "2024-01-02Z",
    "0123",
    "-1704067200",
    "+1704067200",
    "1704067200.",
    "",
    "   ",
    "n/a",
    "2024-01-02T10:00:00 Z x",
    None,
]


@pytest.mark.parametrize("zone_name", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_postgres_reads_each_value_as_python_does(zone_name):
    require_postgres()
    values = sa.values(sa.column("v", sa.Text), name="vals").data([(v,) for v in VALUES])
    windows = MixedTextWindows(values, values.c.v, zone_name, "postgresql")
    stmt = sa.select(values.c.v, windows.column).select_from(windows.source(values))
    engine = sa.create_engine(POSTGRES_URL)
    try:
        with engine.connect() as conn:
            got = {v: micros for v, micros in conn.execute(stmt)}
    finally:
        engine.dispose()
    expected = {v: text_to_epoch_us(v, zone_name) for v in VALUES}
    assert got == expected
    assert sum(m is not None for m in got.values()) == 22  # the readable ones, all read
