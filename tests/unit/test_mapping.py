"""Mapping rows to Fuul events, and the exact JSON Fuul receives (golden payloads)."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from etl.config import DestinationConfig, SourceConfig
from etl.events import Event, Filtered, Rejected, event_id_for
from etl.mapping import Mapper
from etl.values import ArgTypeError, coerce_arg
from etl.vendors.base import encode_json
from etl.vendors.fuul import Fuul

EVM = "0x52908400098527886E0F7030069857D2E4169EE7"
SOL = "7EcDhSYGxXyscszYEp35KHN8vvw3svAuLKTzXwCFLtV"

SOURCE = SourceConfig(table="actions", url="sqlite://", timezone="Europe/Paris")


def fuul_destination(**mapping) -> tuple[DestinationConfig, Fuul]:
    base = {
        "filter": {"action": ["game_played", "purchase"]},
        "event_name": {"column": "action", "rename": {"game_played": "Game Played"}},
        "user": {"column": "wallet", "type_column": "wallet_type"},
        "args": {
            "game": {"column": "game_id"},
            "score": {"column": "score", "type": "integer", "required": False},
            "amount": {"column": "amount", "type": "number", "required": False},
            "first_time": {"column": "first", "type": "boolean", "required": False},
        },
    }
    base.update(mapping)
    dest = DestinationConfig(
        vendor="fuul", base_url="http://x", credentials={"api_key": "${K}"}, mapping=base
    )
    return dest, Fuul.from_config(dest)


def mapper(**mapping) -> Mapper:
    dest, vendor = fuul_destination(**mapping)
    return Mapper("fuul_rewards", dest, SOURCE, vendor)


def row(**values):
    base = {
        "id": 42,
        "occurred_at": datetime(2024, 6, 1, 14, 30, 0),  # Paris summer time = 12:30 UTC
        "action": "game_played",
        "wallet": EVM,
        "wallet_type": "evm_address",
        "game_id": "kart-kings",
        "score": "1200",
        "amount": None,
        "first": None,
    }
    base.update(values)
    return base


GOLDEN = json.loads((Path(__file__).parent / "golden" / "fuul.json").read_text())


@pytest.mark.parametrize("case", GOLDEN, ids=[c["name"] for c in GOLDEN])
def test_golden_fuul_payloads(case):
    values = dict(case["row"])
    values["occurred_at"] = datetime.fromisoformat(values["occurred_at"])
    outcome = mapper().map_row(row(**values))
    assert isinstance(outcome, Event), outcome
    payload = Fuul.from_config(fuul_destination()[0]).encode(outcome)
    assert payload == case["payload"]
    # the bytes on the wire: compact, unicode kept as is
    assert (
        encode_json(payload)
        == json.dumps(case["payload"], separators=(",", ":"), ensure_ascii=False).encode()
    )


def test_filtered_rows_carry_only_their_position():
    outcome = mapper().map_row(row(action="login"))
    assert outcome == Filtered((datetime(2024, 6, 1, 14, 30), 42), "42")


def test_filter_matches_numbers_given_as_text():
    m = mapper(filter={"level": [3, "7"]})
    assert isinstance(m.map_row(row(level=3.0)), Event)
    assert isinstance(m.map_row(row(level="7")), Event)
    assert isinstance(m.map_row(row(level=8)), Filtered)


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"wallet": None}, "user identifier (column wallet) is missing"),
        ({"wallet": "  "}, "user identifier (column wallet) is missing"),
        ({"wallet": "0x1234"}, "not a valid evm_address"),
        ({"wallet_type": "btc_address"}, "identifier type is not one of email, evm_address"),
        ({"wallet": SOL, "wallet_type": "evm_address"}, "not a valid evm_address"),
        ({"wallet": "0OIl" * 10, "wallet_type": "solana_address"}, "not a valid solana_address"),
        ({"score": "n/a"}, "parameter score (column score): not a number (got 'n/a')"),
        ({"score": "12.5"}, "parameter score (column score): not an integer (got '12.5')"),
        ({"game_id": None}, "parameter game (column game_id) is missing"),
        ({"occurred_at": None}, "occurred_at: timestamp is missing"),
        (
            {"occurred_at": "31/12/2024"},
            "occurred_at: timestamp is not ISO-8601 (got '31/12/2024')",
        ),
        ({"first": "maybe"}, "parameter first_time (column first): not a boolean (got 'maybe')"),
        ({"action": None, "wallet": EVM}, None),  # filtered, not rejected
    ],
)
def test_rejections_name_the_column_and_the_problem(values, reason):
    outcome = mapper().map_row(row(**values))
    if reason is None:
        assert isinstance(outcome, Filtered)
        return
    assert isinstance(outcome, Rejected)
    assert reason in outcome.reason
    assert outcome.event_id == event_id_for("fuul_rewards", "42")
    assert outcome.row["id"] == 42  # the dead letter keeps the row's mapped columns


def test_event_ids_are_deterministic_and_per_destination():
    assert event_id_for("a", 1) == event_id_for("a", "1")
    assert event_id_for("a", 1) != event_id_for("b", 1)
    assert len(event_id_for("a", 1)) == 32


def test_constant_event_name_and_identifier_type():
    m = mapper(event_name="Played", user={"column": "wallet", "type": "evm_address"})
    outcome = m.map_row(row(wallet_type=None))
    assert isinstance(outcome, Event)
    assert (outcome.name, outcome.user_type) == ("Played", "evm_address")
    assert outcome.occurred_at == datetime(2024, 6, 1, 12, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        ("12", "number", 12),
        (" 1.5 ", "number", 1.5),
        (3.0, "integer", 3),
        (7, "number", 7),
        ("true", "boolean", True),
        ("No", "boolean", False),
        (1, "boolean", True),
        (0.0, "boolean", False),
        (12.0, "string", "12"),
        (False, "string", "false"),
        ("héllo ✓", "string", "héllo ✓"),
    ],
)
def test_coerce_arg(value, kind, expected):
    result = coerce_arg(value, kind)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    ("value", "kind"), [(True, "number"), ("inf", "number"), ("1e3x", "integer"), (2, "boolean")]
)
def test_coerce_arg_refuses(value, kind):
    with pytest.raises(ArgTypeError):
        coerce_arg(value, kind)
