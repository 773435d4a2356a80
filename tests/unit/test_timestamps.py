from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from etl.timestamps import (
    TimestampError,
    day_bounds,
    to_epoch_ms,
    to_iso_naive_utc,
    to_iso_z,
    to_utc,
)

NY = ZoneInfo("America/New_York")
EXPECTED = datetime(2024, 10, 20, 15, 51, 36, 514000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "kind", "tz"),
    [
        (datetime(2024, 10, 20, 15, 51, 36, 514000), "datetime", UTC),  # naive, source in UTC
        (datetime(2024, 10, 20, 11, 51, 36, 514000), "datetime", NY),  # naive, source in New York
        (
            datetime(2024, 10, 20, 17, 51, 36, 514000, tzinfo=timezone(timedelta(hours=2))),
            "datetime",
            NY,
        ),
        (pd.Timestamp("2024-10-20 15:51:36.514"), "datetime", UTC),
        ("2024-10-20T15:51:36.514Z", "text", NY),  # Z wins over the source zone
        ("2024-10-20T17:51:36.514+02:00", "text", UTC),
        ("2024-10-20 15:51:36.514", "text", UTC),
        ("  2024-10-20 11:51:36.514 ", "text", NY),
        (1729439496514, "epoch_ms", NY),
        ("1729439496514", "epoch_ms", UTC),
        (1729439496.514, "epoch_s", UTC),
    ],
)
def test_every_form_reads_as_the_same_instant(value, kind, tz):
    assert to_utc(value, kind, tz) == EXPECTED


def test_whole_seconds_text():
    assert to_utc("2024-01-02 03:04:05", "text", UTC) == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_a_date_is_midnight_in_the_source_zone():
    assert to_utc(date(2024, 1, 2), "datetime", NY) == datetime(2024, 1, 2, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "kind", "message"),
    [
        (None, "datetime", "missing"),
        ("", "text", "empty"),
        ("yesterday", "text", "not ISO-8601"),
        ("12/31/2024", "text", "not ISO-8601"),
        ("abc", "epoch_ms", "not a number"),
        (True, "epoch_s", "not a number"),
        (float("nan"), "epoch_s", "missing"),
        (pd.NaT, "datetime", "missing"),
    ],
)
def test_unreadable_values_say_why(value, kind, message):
    with pytest.raises(TimestampError, match=message):
        to_utc(value, kind, UTC)


def test_a_time_beyond_the_calendar_in_utc_is_a_reason_not_a_crash():
    from zoneinfo import ZoneInfo

    with pytest.raises(TimestampError, match="out of range"):
        to_utc("0001-01-01 00:05:00", "text", ZoneInfo("Europe/Paris"))


def test_vendor_encodings():
    assert to_epoch_ms(EXPECTED) == 1729439496514
    assert to_iso_z(EXPECTED) == "2024-10-20T15:51:36.514000Z"
    assert to_iso_naive_utc(EXPECTED) == "2024-10-20T15:51:36"
    assert to_epoch_ms(datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)) == -1000


def test_day_bounds_are_utc_days():
    start, end = day_bounds(date(2024, 3, 10))
    assert start == datetime(2024, 3, 10, tzinfo=UTC)
    assert end - start == timedelta(days=1)
