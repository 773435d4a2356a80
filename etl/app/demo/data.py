"""Synthetic but realistic game-action history for the demo, the tests and the benchmark.

Users follow a Zipf-like law (a few very active players, a long tail); actions cluster in the
evening; a few per cent of rows are bad in the ways real warehouses are: missing or malformed
wallets, unknown wallet kinds, scores typed as text, missing game ids, broken or oversized
JSON properties.
"""

from __future__ import annotations

import itertools
import json
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

ACTIONS = [("game_played", 0.55), ("level_up", 0.15), ("purchase", 0.08), ("login", 0.22)]
GAMES = ["space-race", "dungeon-dash", "pixel-poker", "tower-tactics", "kart-kings"]
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def actions_table(metadata: sa.MetaData, name: str = "user_actions") -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("occurred_at", sa.DateTime, nullable=True),
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("wallet", sa.String(80)),
        sa.Column("wallet_type", sa.String(32)),
        sa.Column("email", sa.String(120)),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("game_id", sa.String(32)),
        sa.Column("score", sa.String(16)),  # text on purpose: warehouses are like that
        sa.Column("amount", sa.Float),
        sa.Column("platform", sa.String(16)),
        sa.Column("account_id", sa.String(16)),
        sa.Column("properties", sa.Text),  # JSON text, as many warehouses keep it
        sa.Index(f"ix_{name}_occurred_at_id", "occurred_at", "id"),
    )


@dataclass(frozen=True)
class User:
    user_id: str
    wallet: str
    wallet_type: str
    email: str


def _make_user(rng: random.Random, n: int) -> User:
    if rng.random() < 0.8:
        wallet, kind = (
            "0x" + "".join(rng.choice("0123456789abcdef") for _ in range(40)),
            "evm_address",
        )
    else:
        wallet, kind = "".join(rng.choice(_B58) for _ in range(44)), "solana_address"
    return User(f"u_{n:06d}", wallet, kind, f"player{n}@example.com")


def generate_rows(
    rows: int, days: int, end: date | None = None, seed: int = 7, users: int = 5000
) -> Iterator[dict[str, Any]]:
    """``rows`` actions spread over the ``days`` UTC days before ``end`` (default: today)."""
    rng = random.Random(seed)
    end_day = end or datetime.now(UTC).date()
    start = datetime.combine(end_day - timedelta(days=days), datetime.min.time())
    people = [_make_user(rng, n) for n in range(users)]
    cum_weights = list(itertools.accumulate(1 / (rank + 1) ** 1.07 for rank in range(users)))
    action_names = [a for a, _ in ACTIONS]
    action_weights = [w for _, w in ACTIONS]
    for n in range(1, rows + 1):
        user = rng.choices(people, cum_weights=cum_weights)[0]
        action = rng.choices(action_names, weights=action_weights)[0]
        hour = min(int(rng.triangular(0, 24, 20)), 23)
        at = start + timedelta(
            days=rng.randrange(days),
            hours=hour,
            minutes=rng.randrange(60),
            seconds=rng.randrange(60),
        )
        row: dict[str, Any] = {
            "id": n,
            "occurred_at": at,
            "user_id": user.user_id,
            "wallet": user.wallet,
            "wallet_type": user.wallet_type,
            "email": user.email,
            "action": action,
            "game_id": rng.choice(GAMES) if action != "login" else None,
            "score": str(rng.randrange(0, 50_000)) if action == "game_played" else None,
            "amount": round(rng.uniform(0.99, 49.99), 2) if action == "purchase" else None,
            "platform": rng.choice(["ios", "android", "web"]),
            "account_id": f"acct_{int(user.user_id[2:]) % 400:04d}",
        }
        row["properties"] = json.dumps(
            {
                "platform": row["platform"],
                "level": rng.randrange(1, 60),
                "client": {"version": "2.4.1"},
            }
        )
        _maybe_spoil(rng, row)
        yield row


def _maybe_spoil(rng: random.Random, row: dict[str, Any]) -> None:
    """About 4 % of rows get one defect of several kinds."""
    roll = rng.random()
    if roll >= 0.04:
        return
    kind = int(roll / 0.005)
    if kind == 0:
        row["wallet"] = None
    elif kind == 1:
        row["wallet"] = "0x" + "".join(rng.choice(string.hexdigits) for _ in range(12))
    elif kind == 2:
        row["wallet_type"] = "btc_address"
    elif kind == 3 and row["action"] == "game_played":
        row["score"] = rng.choice(["n/a", "12,5", "lots"])
    elif kind == 4 and row["action"] != "login":
        row["game_id"] = None
    elif kind == 5:
        row["properties"] = '{"platform": "ios", "level": '  # cut off mid-write
    elif kind == 6:
        row["properties"] = json.dumps({"note": "x" * 300})  # over Airship's 255 characters
    else:
        row["wallet"] = " " + str(row["wallet"]) + " "  # stray spaces: fixable, not bad


def create_warehouse(
    engine: Engine,
    rows: int,
    days: int,
    end: date | None = None,
    table: str = "user_actions",
    batch: int = 10_000,
    schema: str | None = None,
) -> int:
    """Create (or replace) the actions table and fill it; return the number of rows."""
    metadata = sa.MetaData(schema=schema)
    tbl = actions_table(metadata, table)
    with engine.begin() as conn:
        if schema:
            conn.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
        tbl.drop(conn, checkfirst=True)
        tbl.create(conn)
        chunk: list[dict[str, Any]] = []
        for row in generate_rows(rows, days, end):
            chunk.append(row)
            if len(chunk) >= batch:
                conn.execute(sa.insert(tbl), chunk)
                chunk = []
        if chunk:
            conn.execute(sa.insert(tbl), chunk)
    return rows
