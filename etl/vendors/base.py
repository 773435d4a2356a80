"""The one shape every vendor has: options, endpoint, encoder and response classification.

A vendor is pure: it never opens a connection. The sender owns the request life cycle and calls
these hooks; a new vendor fills them in and registers itself in ``etl.vendors``.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict

from etl.config import DestinationConfig, MappingConfig, RateLimit
from etl.events import Event
from etl.vendors.answers import Classified, classify_http, json_body, reports_no_error


class VendorOptions(BaseModel):
    """Vendor-specific settings under ``destinations.<name>.options``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Options that change only how a request travels (host, path, auth header, endpoint), not
    # what an event holds: a partition may go on with them changed.
    transport: ClassVar[frozenset[str]] = frozenset()


@dataclass(frozen=True)
class Endpoint:
    """Where batches go and the limits the vendor publishes for that endpoint."""

    path: str
    max_events: int
    max_bytes: int | None
    rate_limit: RateLimit
    json_array: bool  # the body is a JSON array of events (else one JSON object)


class Vendor(ABC):
    """Base of every destination vendor."""

    name: ClassVar[str]
    title: ClassVar[str]
    deduplicates: ClassVar[bool]  # the vendor drops an event it already has (resends are harmless)
    sends_event_id: ClassVar[bool] = False  # the payload carries the event id (else not computed)
    options_model: ClassVar[type[VendorOptions]] = VendorOptions
    credential_keys: ClassVar[tuple[str, ...]] = ("api_key",)
    # Parameter types the vendor's events can hold, vendor fields (name -> type), free properties.
    arg_types: ClassVar[frozenset[str]] = frozenset({"string", "number", "integer", "boolean"})
    field_types: ClassVar[dict[str, str]] = {}
    properties_column: ClassVar[bool] = False
    # Events older than this are refused by the vendor (Airship: 90 days).
    max_age: ClassVar[timedelta | None] = None

    def __init__(self, options: VendorOptions, now: Callable[[], datetime] | None = None) -> None:
        self.options = options
        self.now = now or (lambda: datetime.now(UTC))

    @classmethod
    def from_config(cls, dest: DestinationConfig) -> Vendor:
        return cls(cls.options_model.model_validate(dest.options))

    @abstractmethod
    def default_base_url(self) -> str: ...

    def oldest_allowed(self) -> datetime | None:
        """Events before this instant would be refused (None: no age limit)."""
        return self.now() - self.max_age if self.max_age else None

    @classmethod
    def check_mapping(cls, mapping: MappingConfig) -> list[str]:
        """Problems in a mapping that the vendor would refuse whatever the data ('key: message')."""
        problems = []
        for name, spec in mapping.args.items():
            if spec.type not in cls.arg_types:
                allowed = ", ".join(sorted(cls.arg_types))
                problems.append(f"mapping.args.{name}.type: {cls.title} parameters are {allowed}")
        for name, spec in mapping.fields.items():
            if name not in cls.field_types:
                known = ", ".join(sorted(cls.field_types)) or "none"
                problems.append(
                    f"mapping.fields.{name}: {cls.title} has no such field (it has: {known})"
                )
            elif spec.type != cls.field_types[name]:
                problems.append(f"mapping.fields.{name}.type: must be {cls.field_types[name]}")
        if mapping.properties_column and not cls.properties_column:
            problems.append(
                f"mapping.properties_column: {cls.title} events have no free properties"
            )
        return problems

    @abstractmethod
    def endpoint(self) -> Endpoint: ...

    @abstractmethod
    def headers(self, credentials: dict[str, str]) -> dict[str, str]: ...

    @abstractmethod
    def validate(self, event: Event) -> str | None:
        """The reason this event breaks a vendor rule known in advance, or None."""

    @abstractmethod
    def encode(self, event: Event) -> dict[str, Any]:
        """The exact JSON object the vendor receives for this event."""

    def encode_many(self, events: list[Event]) -> list[dict[str, Any]]:
        """``encode`` of every event of a chunk; vendors override it where a column-wise
        encoding is faster. The result must equal ``[self.encode(e) for e in events]``."""
        return [self.encode(e) for e in events]

    def body(self, encoded: list[bytes]) -> bytes:
        """The request body from the events' encoded JSON (see :func:`encode_json`)."""
        if self.endpoint().json_array:
            return b"[" + b",".join(encoded) + b"]"
        assert len(encoded) == 1, "a single-event endpoint takes one payload per request"
        return encoded[0]

    def classify(self, status: int, body: str, headers: dict[str, str]) -> Classified:
        """Sort a response by what the sender must do. Vendors override the odd cases."""
        success = 200 <= status < 300 and self.is_success(status, json_body(body, headers))
        return classify_http(status, body, headers, success)

    def is_success(self, status: int, data: Any) -> bool:
        """A 2xx whose JSON body (None if it has none) is the vendor's documented success. By
        default, for a vendor that publishes no success body: JSON that reports no error."""
        return reports_no_error(data)


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode_json(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, as every vendor receives it (orjson; the standard library for what
    orjson refuses, such as integers beyond 64 bits)."""
    try:
        return orjson.dumps(payload)
    except TypeError:
        return _ENCODER.encode(payload).encode()


_BASE58 = re.compile(r"^[1-9A-HJ-NP-Za-km-z]+$")


def is_solana_address(value: str) -> bool:
    """Base58, 32 to 44 characters (an ed25519 public key)."""
    return 32 <= len(value) <= 44 and bool(_BASE58.match(value))
