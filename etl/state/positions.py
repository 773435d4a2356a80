"""A row's position in the keyset order, ``(timestamp, key)``, as text for the state tables.

JSON, with datetimes, dates, decimals and UUIDs tagged so that they come back as what they were
and compare with the warehouse's own values on resume.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from etl.events import Position


def encode_position(position: Position | None) -> str | None:
    """A cursor as JSON text, keeping datetimes and decimals distinguishable from strings."""
    if position is None:
        return None
    return json.dumps([_encode(position[0]), _encode(position[1])])


def decode_position(text: str | None) -> Position | None:
    """The position :func:`encode_position` wrote."""
    if text is None:
        return None
    ts, key = json.loads(text)
    return (_decode(ts), _decode(key))


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, date):
        return {"date": value.isoformat()}
    if isinstance(value, Decimal):
        return {"decimal": str(value)}
    if isinstance(value, UUID):
        return {"uuid": str(value)}
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    raise TypeError(f"a key or timestamp of type {type(value).__name__} cannot be a cursor")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "datetime" in value:
            return datetime.fromisoformat(value["datetime"])
        if "date" in value:
            return date.fromisoformat(value["date"])
        if "decimal" in value:
            return Decimal(value["decimal"])
        if "uuid" in value:
            return UUID(value["uuid"])
    return value
