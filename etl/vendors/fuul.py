"""Fuul: POST /events (one event, 100/min) or POST /events/batch (up to 100 events, 10/min).

Fuul deduplicates on ``dedup_id``: a 409 on the single endpoint and silently skipped events on
the batch endpoint both mean the event is already stored, i.e. delivered.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from etl.config import MappingConfig, RateLimit
from etl.events import Event
from etl.timestamps import to_epoch_ms
from etl.vendors.answers import Classified, Verdict, error_message, reports_no_error
from etl.vendors.base import Endpoint, Vendor, VendorOptions, is_solana_address

IDENTIFIER_RULES: dict[str, tuple[re.Pattern[str] | None, str]] = {
    "evm_address": (re.compile(r"^0x[0-9a-fA-F]{40}$"), "0x followed by 40 hex digits"),
    "solana_address": (None, "base58, 32 to 44 characters"),
    "xrpl_address": (re.compile(r"^r[1-9A-HJ-NP-Za-km-z]{24,34}$"), "r followed by 24-34 base58"),
    "sui_address": (re.compile(r"^0x[0-9a-fA-F]{64}$"), "0x followed by 64 hex digits"),
    "stellar_address": (re.compile(r"^G[A-Z2-7]{55}$"), "G followed by 55 base32 characters"),
    "email": (re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$"), "an email address"),
}


def identifier_problem(identifier: str, kind: str | None) -> str | None:
    """Why an identifier is not valid for its Fuul identifier type, or None."""
    if kind not in IDENTIFIER_RULES:
        return f"identifier type is not one of {', '.join(sorted(IDENTIFIER_RULES))} (got {kind!r})"
    pattern, expected = IDENTIFIER_RULES[kind]
    ok = is_solana_address(identifier) if pattern is None else bool(pattern.match(identifier))
    return None if ok else f"user identifier is not a valid {kind} ({expected})"


class FuulOptions(VendorOptions):
    transport: ClassVar[frozenset[str]] = frozenset({"endpoint"})
    endpoint: Literal["batch", "single"] = "batch"


class Fuul(Vendor):
    name = "fuul"
    title = "Fuul"
    deduplicates = True
    sends_event_id = True  # as dedup_id
    options_model = FuulOptions
    options: FuulOptions

    def default_base_url(self) -> str:
        return "https://api.fuul.xyz/api/v1"

    @classmethod
    def check_mapping(cls, mapping: MappingConfig) -> list[str]:
        problems = super().check_mapping(mapping)
        user = mapping.user
        if user.type is None and user.type_column is None:
            problems.append("mapping.user.type: Fuul needs an identifier type (or 'type_column')")
        elif user.type is not None and user.type not in IDENTIFIER_RULES:
            problems.append(
                f"mapping.user.type: {user.type!r} is not a Fuul identifier type; "
                f"use one of {', '.join(sorted(IDENTIFIER_RULES))}"
            )
        return problems

    def endpoint(self) -> Endpoint:
        if self.options.endpoint == "single":
            return Endpoint("/events", 1, None, RateLimit(requests=100, per_seconds=60), False)
        return Endpoint("/events/batch", 100, None, RateLimit(requests=10, per_seconds=60), True)

    def headers(self, credentials: dict[str, str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {credentials['api_key']}"}

    def validate(self, event: Event) -> str | None:
        return identifier_problem(event.user_id, event.user_type)

    def encode(self, event: Event) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "name": event.name,
            "user": {"identifier": event.user_id, "identifier_type": event.user_type},
            "dedup_id": event.event_id,
            "timestamp": to_epoch_ms(event.occurred_at),
        }
        if event.args:
            payload["args"] = dict(event.args)
        return payload

    def is_success(self, status: int, data: Any) -> bool:
        """One event: 201 (or 200) with JSON. A batch: JSON counting the ``ingested_events``
        (those whose dedup_id was already stored are skipped, and delivered too)."""
        if self.options.endpoint == "single":
            return status in (200, 201) and isinstance(data, dict) and reports_no_error(data)
        count = data.get("ingested_events") if isinstance(data, dict) else None
        return isinstance(count, int) and not isinstance(count, bool) and count >= 0

    def classify(self, status: int, body: str, headers: dict[str, str]) -> Classified:
        if status == 409:  # this dedup_id is already stored: the event was delivered before
            return Classified(Verdict.DELIVERED, error_message(status, body), landed=True)
        if status == 403:
            return Classified(
                Verdict.FATAL,
                error_message(status, body) + " (the key needs the send:trigger_event scope)",
            )
        return super().classify(status, body, headers)
