"""``Mapper.map_chunk`` (column at a time) gives exactly what ``map_row`` gives, row by row."""

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from etl.config import DestinationConfig, SourceConfig
from etl.mapping import Mapper
from etl.timestamps import to_iso_z, to_iso_z_many
from etl.vendors import vendor_class

WALLET = "0x52908400098527886E0F7030069857D2E4169EE7"

texts = st.one_of(
    st.sampled_from(["", " ", "game_played", "purchase", "Login", " padded ", "kart", WALLET]),
    st.text(max_size=8),
)
numbers = st.one_of(
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["12", "1.5", "x", "nan", " 7 "]),
)
values = st.one_of(st.none(), texts, numbers, st.booleans())
stamps = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.datetimes(timezones=st.just(timezone(timedelta(hours=5, minutes=30)))),
    st.datetimes().map(lambda d: d.isoformat(sep=" ")),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    st.sampled_from(["", " 2026-01-02 03:04:05 ", "2026-13-01", "garbage", "2026-01-02Z"]),
    st.none(),
    st.integers(0, 2**40),
)
rows = st.lists(
    st.fixed_dictionaries(
        {
            "occurred_at": stamps,
            "action": st.one_of(st.sampled_from(["game_played", "purchase", "login"]), values),
            "wallet": st.one_of(st.sampled_from([WALLET, f" {WALLET} ", "u1", " u2 "]), values),
            "wallet_type": st.one_of(st.sampled_from(["evm_address", " evm_address "]), values),
            "game_id": values,
            "amount": numbers | st.none(),
            "score": numbers | st.none(),
            "props": st.sampled_from([None, None, '{"a": 1}', "[1]", "{bad", ""]),
        }
    ),
    max_size=30,
).map(lambda rs: [{"id": i, **r} for i, r in enumerate(rs)])

MAPPINGS = {
    "fuul": {
        "filter": {"action": ["game_played", "purchase"]},
        "event_name": {"column": "action", "rename": {"game_played": "Game Played"}},
        "user": {"column": "wallet", "type_column": "wallet_type"},
        "args": {
            "game": {"column": "game_id"},
            "score": {"column": "score", "type": "integer", "required": False},
            "amount": {"column": "amount", "type": "number", "required": False},
        },
    },
    "thrivestack": {
        "event_name": {"column": "action", "lowercase": True},
        "user": {"column": "wallet"},
        "args": {
            "game": {"column": "game_id", "required": False},
            "amount": {"column": "amount", "type": "number", "required": False},
            "score": {"column": "score", "type": "string", "required": False},
        },
        "fields": {"group_id": {"column": "wallet_type"}},
        "properties_column": "props",
    },
}
CREDENTIALS = {"fuul": {"api_key": "${K}"}, "thrivestack": {"api_key": "${K}"}}


def mapper(vendor: str, timezone_name: str) -> Mapper:
    dest = DestinationConfig(
        vendor=vendor,
        base_url="http://x",
        credentials=CREDENTIALS[vendor],
        mapping=MAPPINGS[vendor],
    )
    source = SourceConfig(table="t", url="sqlite://", timezone=timezone_name)
    return Mapper("dest", dest, source, vendor_class(vendor).from_config(dest))


MAPPERS = [mapper(v, tz) for v in MAPPINGS for tz in ("UTC", "Europe/Paris")]


def map_rows(m: Mapper, chunk: list[dict], names: list[str] | None = None) -> list:
    """``map_chunk`` of dict rows: their values in the order of ``names`` (the mapper's own)."""
    names = names or m.columns
    return m.map_chunk(names, [tuple(r.get(c) for c in names) for r in chunk])


@settings(max_examples=300, deadline=None)
@given(rows)
def test_map_rows_equals_map_row(chunk):
    for m in MAPPERS:
        expected = [m.map_row(r) for r in chunk]
        assert map_rows(m, chunk) == expected
        # the column names in another order, as a source may give them
        assert map_rows(m, chunk, list(reversed(m.columns))) == expected


offsets = st.timedeltas(min_value=timedelta(hours=-12), max_value=timedelta(hours=14)).map(
    lambda d: timezone(timedelta(minutes=d // timedelta(minutes=1)))
)
text_stamps = st.one_of(
    st.datetimes(min_value=datetime(2, 1, 1)).map(str),
    st.datetimes(min_value=datetime(2, 1, 1), timezones=offsets).map(lambda d: d.isoformat()),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(text_stamps, min_size=1, max_size=20))
def test_text_timestamps_of_a_chunk_equal_one_by_one(stamps):
    chunk = [
        {"id": i, "occurred_at": t, "action": "purchase", "wallet": "u1", "wallet_type": "g",
         "game_id": "k", "amount": None, "score": None, "props": None}
        for i, t in enumerate(stamps)
    ]  # fmt: skip
    for m in MAPPERS:
        assert map_rows(m, chunk) == [m.map_row(r) for r in chunk]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.datetimes(
            min_value=datetime(1, 1, 2),
            max_value=datetime(9999, 12, 30),
            timezones=st.one_of(st.just(UTC), st.timezones()),
        ),
        max_size=20,
    )
)
def test_iso_timestamps_of_a_chunk_equal_one_by_one(instants):
    """orjson's text of a chunk, its zero fractions put back, is ``to_iso_z``'s of each value,
    in any zone."""
    assert to_iso_z_many(instants) == [to_iso_z(i) for i in instants]


def test_iso_timestamps_of_pandas_values():
    import pandas as pd

    instants = [pd.Timestamp("2026-01-02T03:04:05", tz="UTC"), datetime(2026, 1, 2, tzinfo=UTC)]
    assert to_iso_z_many(instants) == ["2026-01-02T03:04:05.000000Z", "2026-01-02T00:00:00.000000Z"]


def test_a_vendor_encodes_a_chunk_as_it_encodes_each_event():
    m = MAPPERS[2]  # thrivestack
    chunk = [
        {"id": i, "occurred_at": f"2026-01-0{i + 1} 10:00:00", "action": "Buy", "wallet": "u1",
         "wallet_type": "g", "game_id": "k", "amount": 1.5, "score": None, "props": '{"a": 1}'}
        for i in range(3)
    ]  # fmt: skip
    events = map_rows(m, chunk)
    assert m.vendor.encode_many(events) == [m.vendor.encode(e) for e in events]  # type: ignore[arg-type]
