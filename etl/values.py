"""Warehouse values as event values: missing or not, typed parameters, JSON objects. Pure."""

from __future__ import annotations

import json
import math
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from etl.events import ArgValue

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if type(value) is str:
        return not value or value.isspace()
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def json_safe(value: Any) -> Any:
    """A JSON-serializable form of a warehouse value (for dead-letter rows and cursors)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ArgTypeError(ValueError):
    pass


def coerce_arg(value: Any, kind: str) -> ArgValue:
    """Convert a warehouse value to the declared parameter type, or raise ArgTypeError."""
    if kind == "string":
        if type(value) is str:
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(json_safe(value))
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float | Decimal) and value in (0, 1):
            return bool(value)
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ArgTypeError(f"not a boolean (got {str(value)[:40]!r})")
    # number / integer
    if isinstance(value, bool):
        raise ArgTypeError(f"a boolean, not a {kind} (got {value!r})")
    number: int | float
    if isinstance(value, int):
        number = value
    else:
        try:
            number = float(value) if not isinstance(value, str) else float(value.strip())
        except (TypeError, ValueError):
            raise ArgTypeError(f"not a number (got {str(value)[:40]!r})") from None
        if not math.isfinite(number):
            raise ArgTypeError(f"not a finite number (got {value!r})")
        if number.is_integer() and abs(number) < 2**53:
            number = int(number)
    if kind == "integer" and not isinstance(number, int):
        raise ArgTypeError(f"not an integer (got {value!r})")
    return number


def parse_json_object(value: Any) -> dict[str, Any]:
    """A JSON object column's value (a dict from json/jsonb columns, or JSON text); {} if empty."""
    if is_missing(value):
        return {}
    if isinstance(value, dict):
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise ValueError(f"a {type(value).__name__} is not a JSON object")
    try:
        parsed = json.loads(value)
    except ValueError:
        raise ValueError("is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"holds a JSON {type(parsed).__name__}, not an object")
    return parsed


def normalize(value: Any) -> str:
    """A filter value as text, as the filter compares it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
