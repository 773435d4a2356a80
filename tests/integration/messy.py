"""A messy warehouse: a text timestamp column in every form, NULL and garbage timestamps, rows
before the start and after the range, actions in odd cases. The expected UTC day of each row
comes from the grammar in Python (etl.timestamps), the warehouse's side must agree."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from etl.timestamps import text_to_epoch_us
from tests.conftest import Warehouse

START = date(2024, 3, 1)
DAYS = 6
LAST = START + timedelta(days=DAYS - 1)
NULLS = 10
GARBAGE = ["n/a", "2024-13-01 10:00:00", "2024-02-30T10:00:00Z", "yesterday", "0123", "  "]
BEFORE = 5  # rows before start_date
AFTER = 5  # rows after the range
EVM = "0x" + "ab" * 20


def _text(at: datetime, form: int) -> str:
    """One instant written in one of the forms a real column mixes."""
    if form == 0:
        return at.strftime("%Y-%m-%dT%H:%M:%SZ")
    if form == 1:
        local = at.astimezone(timezone(timedelta(hours=-5)))
        return local.strftime("%Y-%m-%dT%H:%M:%S-05:00")
    if form == 2:
        return at.strftime("%Y-%m-%d %H:%M:%S")
    if form == 3:
        return str(int(at.timestamp() * 1000))
    if form == 4:
        return f"{int(at.timestamp())}.25"
    if form == 5:
        local = at.astimezone(timezone(timedelta(hours=9, minutes=30)))
        return local.strftime("%Y-%m-%dT%H:%M:%S.123456+09:30")
    return at.strftime("%Y-%m-%d %H:%M")


def messy_rows(rows: int = 600, seed: int = 3) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    begin = datetime.combine(START, datetime.min.time(), tzinfo=UTC)
    for n in range(rows):
        at = begin + timedelta(seconds=rng.randrange(DAYS * 86_400))
        if n % 9 == 0:  # near midnight: offsets and zones move them across it
            at = at.replace(hour=rng.choice([0, 23]), minute=rng.randrange(60))
        action = rng.choice(["game_played", "purchase", "login", "Game_Played", " game_played "])
        out.append({"occurred_at": _text(at, n % 7), "action": action})
    out += [{"occurred_at": None, "action": "game_played"} for _ in range(NULLS)]
    out += [{"occurred_at": g, "action": "game_played"} for g in GARBAGE]
    early = begin - timedelta(days=9)
    out += [{"occurred_at": _text(early, 1), "action": "game_played"} for _ in range(BEFORE)]
    late = begin + timedelta(days=DAYS + 3)
    out += [{"occurred_at": _text(late, 3), "action": "game_played"} for _ in range(AFTER)]
    rng.shuffle(out)
    for key, row in enumerate(out, start=1):
        row.update(id=key, wallet=EVM, wallet_type="evm_address", game_id="g")
    return out


def days() -> list[date]:
    return [START + timedelta(days=n) for n in range(DAYS)]


def expected_day(value: str | None) -> str | None:
    """The UTC day a row belongs to, by the grammar; None: undated."""
    micros = text_to_epoch_us(value, "UTC")
    if micros is None:
        return None
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)).date().isoformat()


def rows_per_day(rows: list[dict[str, Any]]) -> Counter[str | None]:
    return Counter(expected_day(r["occurred_at"]) for r in rows)


def create_messy_table(warehouse: Warehouse, rows: list[dict[str, Any]]) -> None:
    metadata = sa.MetaData(schema=warehouse.schema)
    table = sa.Table(
        "user_actions",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("occurred_at", sa.Text),
        sa.Column("wallet", sa.Text),
        sa.Column("wallet_type", sa.Text),
        sa.Column("action", sa.Text),
        sa.Column("game_id", sa.Text),
    )
    engine = warehouse.engine()
    with engine.begin() as conn:
        if warehouse.schema:
            conn.execute(sa.schema.CreateSchema(warehouse.schema, if_not_exists=True))
        table.drop(conn, checkfirst=True)
        table.create(conn)
        conn.execute(sa.insert(table), rows)
    engine.dispose()


MAPPING = {
    "filter": {"action": ["game_played", "purchase"]},
    "event_name": {"column": "action", "lowercase": True},
    "user": {"column": "wallet", "type_column": "wallet_type"},
    "args": {"game": {"column": "game_id"}},
}
