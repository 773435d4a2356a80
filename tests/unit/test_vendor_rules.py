"""Vendor rules known in advance: refused at load (mapping) or per row (validate)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.config import DestinationConfig, MappingConfig
from etl.events import Event
from etl.loader import check_destination
from etl.vendors.airship import Airship, AirshipOptions
from etl.vendors.thrivestack import ThriveStack, ThriveStackOptions
from etl.vendors.torque import Torque, TorqueOptions

NOW = datetime(2024, 11, 1, tzinfo=UTC)


def problems(vendor: str, credentials=None, options=None, **mapping) -> list[str]:
    base = {"event_name": "played", "user": {"column": "u"}}
    base.update(mapping)
    dest = DestinationConfig(
        vendor=vendor,
        credentials=credentials or {"api_key": "${K}"},
        options=options or {},
        mapping=base,
    )
    return check_destination(dest)


@pytest.mark.parametrize(
    ("vendor", "kwargs", "expected"),
    [
        (
            "torque",
            {"args": {"n": {"column": "n", "type": "integer"}}},
            "mapping.args.n.type: Torque parameters are boolean, number, string",
        ),
        (
            "torque",
            {"user": {"column": "u", "type": "evm_address"}},
            "Torque identifies users by Solana wallet only",
        ),
        (
            "torque",
            {"fields": {"value": {"column": "v", "type": "number"}}},
            "mapping.fields.value: Torque has no such field",
        ),
        ("torque", {"properties_column": "p"}, "Torque events have no free properties"),
        (
            "thrivestack",
            {"fields": {"group_id": {"column": "g", "type": "number"}}},
            "mapping.fields.group_id.type: must be string",
        ),
        (
            "thrivestack",
            {"user": {"column": "u", "type": "email"}},
            "ThriveStack takes a user_id, without a type",
        ),
        (
            "airship",
            {"event_name": "Level Up", "user": {"column": "u", "type": "named_user_id"}},
            "Airship refuses uppercase in names: use 'level up'",
        ),
        (
            "airship",
            {"event_name": {"column": "a"}, "user": {"column": "u", "type": "named_user_id"}},
            "set 'lowercase: true'",
        ),
        (
            "airship",
            {"user": {"column": "u", "type": "email"}},
            "'email' is not one of named_user_id",
        ),
        ("airship", {"user": {"column": "u"}}, "mapping.user.type: Airship needs one of"),
    ],
)
def test_mapping_problems_found_at_load(vendor, kwargs, expected):
    creds = {"token": "${T}", "app_key": "${A}"} if vendor == "airship" else None
    found = problems(vendor, creds, **kwargs)
    assert any(expected in p for p in found), found


def test_airship_needs_token_and_app_key():
    found = problems("airship", user={"column": "u", "type": "named_user_id"})
    assert "credentials: airship needs token, app_key" in found


def test_bad_options_are_named():
    assert any("options.api" in p for p in problems("torque", options={"api": "v9"}))
    assert any("options.auth" in p for p in problems("thrivestack", options={"auth": "basic"}))
    assert any(
        "options.region" in p
        for p in problems(
            "airship",
            {"token": "${T}", "app_key": "${A}"},
            {"region": "asia"},
            user={"column": "u", "type": "named_user_id"},
        )
    )


def event(**changes) -> Event:
    base = {
        "event_id": "e1",
        "source_key": "1",
        "position": ("t", 1),
        "name": "level_up",
        "user_id": "u1",
        "user_type": "named_user_id",
        "occurred_at": NOW - timedelta(days=1),
        "args": {},
    }
    base.update(changes)
    return Event(**base)


def airship() -> Airship:
    return Airship(AirshipOptions(), now=lambda: NOW)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"occurred_at": NOW - timedelta(days=89, hours=22)}, None),
        (
            {"occurred_at": NOW - timedelta(days=89, hours=23, minutes=30)},
            "older than Airship's 90-day window",
        ),  # in the margin
        ({"occurred_at": NOW - timedelta(days=120)}, "older than Airship's 90-day window"),
        ({"occurred_at": NOW + timedelta(minutes=1)}, "in the future"),
        ({"args": {"note": "x" * 256}}, "properties.note is longer than 255 characters"),
        (
            {"properties": {"a": {"b": ["ok", "y" * 300]}}},
            "properties.a.b[1] is longer than 255 characters",
        ),
        ({"name": "Level_Up"}, "has uppercase letters"),
        ({"user_type": "email"}, "user kind is not one of named_user_id"),
    ],
)
def test_airship_rules(changes, reason):
    found = airship().validate(event(**changes))
    assert found is None if reason is None else reason in (found or "")


def test_airship_window_and_hosts():
    vendor = airship()
    assert vendor.oldest_allowed() == NOW - timedelta(days=90) + timedelta(minutes=60)
    assert vendor.default_base_url() == "https://go.urbanairship.com"
    assert Airship(AirshipOptions(region="eu")).default_base_url() == "https://go.airship.eu"
    headers = vendor.headers({"token": "tok", "app_key": "app"})
    assert headers == {
        "Authorization": "Bearer tok",
        "X-UA-Appkey": "app",
        "Accept": "application/vnd.urbanairship+json; version=3",
    }


def test_torque_hosts_paths_and_headers():
    ingest = Torque(TorqueOptions())
    assert (ingest.default_base_url(), ingest.endpoint().path) == (
        "https://ingest.torque.so",
        "/events",
    )
    assert ingest.headers({"api_key": "k"}) == {"x-api-key": "k"}
    legacy = Torque(TorqueOptions(api="legacy"))
    assert (legacy.default_base_url(), legacy.endpoint().path) == (
        "https://server.torque.so",
        "/event/custom",
    )
    assert legacy.headers({"api_key": "k"}) == {"x-torque-api-key": "k"}
    custom = Torque(TorqueOptions(path="/v2/events", key_header="x-key"))
    assert (custom.endpoint().path, custom.headers({"api_key": "k"})) == (
        "/v2/events",
        {"x-key": "k"},
    )
    assert ingest.endpoint().max_events == 1 and not ingest.endpoint().json_array
    assert (
        ingest.validate(event(user_id="0x" + "a" * 40))
        == "userPubkey is not a Solana address (base58, 32 to 44 characters)"
    )


def test_thrivestack_limits_and_auth():
    vendor = ThriveStack(ThriveStackOptions())
    endpoint = vendor.endpoint()
    assert (endpoint.path, endpoint.max_events, endpoint.max_bytes) == (
        "/api/track",
        1000,
        2_000_000,
    )
    assert vendor.headers({"api_key": "k"}) == {"x-api-key": "k"}
    assert ThriveStack(ThriveStackOptions(auth="bearer")).headers({"api_key": "k"}) == {
        "Authorization": "Bearer k"
    }


def test_mapping_columns_include_fields_and_properties():
    mapping = MappingConfig.model_validate(
        {
            "event_name": "x",
            "user": {"column": "u"},
            "fields": {"value": {"column": "amt"}},
            "properties_column": "props",
        }
    )
    assert mapping.columns() == {"u", "amt", "props"}


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_the_sandbox_reads_json_as_the_standard_library_does(value):
    """orjson where it is exact; integers beyond 64 bits and what orjson refuses, as json."""
    import json

    from etl.sandbox.emulator import parse_json

    body = json.dumps(value).encode()
    assert parse_json(body) == json.loads(body)
