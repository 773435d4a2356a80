"""Airship custom events: arrays of 1 to 100, ``occurred`` in UTC without offset, last 90 days.

Names must have no uppercase letter (checked when the file is loaded), property strings are at
most 255 characters, and events older than 90 days are refused: partitions wholly older than the
window are skipped, and rows older than it in the partition that straddles it are dead letters.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal

from etl.config import MappingConfig, RateLimit
from etl.events import Event
from etl.timestamps import to_iso_naive_utc
from etl.vendors.base import Endpoint, Vendor, VendorOptions

USER_KINDS = (
    "named_user_id",
    "channel",
    "ios_channel",
    "android_channel",
    "amazon_channel",
    "web_channel",
)
MAX_PROPERTY_CHARS = 255


class AirshipOptions(VendorOptions):
    transport: ClassVar[frozenset[str]] = frozenset({"region"})
    region: Literal["us", "eu"] = "us"
    # Events this close to the 90-day edge are not sent: they could age out in transit.
    window_margin_minutes: int = 60


def _long_string(value: Any, path: str) -> str | None:
    if isinstance(value, str) and len(value) > MAX_PROPERTY_CHARS:
        return path
    if isinstance(value, dict):
        for key, item in value.items():
            found = _long_string(item, f"{path}.{key}")
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _long_string(item, f"{path}[{i}]")
            if found:
                return found
    return None


class Airship(Vendor):
    name = "airship"
    title = "Airship"
    deduplicates = False
    options_model = AirshipOptions
    options: AirshipOptions
    credential_keys = ("token", "app_key")
    field_types = {
        "value": "number",
        "transaction": "string",
        "interaction_id": "string",
        "interaction_type": "string",
        "session_id": "string",
        "unique_id": "string",
    }
    properties_column = True
    max_age = timedelta(days=90)

    def default_base_url(self) -> str:
        return (
            "https://go.airship.eu"
            if self.options.region == "eu"
            else "https://go.urbanairship.com"
        )

    def oldest_allowed(self) -> datetime:
        return (
            self.now() - timedelta(days=90) + timedelta(minutes=self.options.window_margin_minutes)
        )

    @classmethod
    def check_mapping(cls, mapping: MappingConfig) -> list[str]:
        problems = super().check_mapping(mapping)
        name = mapping.event_name
        if isinstance(name, str):
            if name != name.lower():
                problems.append(
                    f"mapping.event_name: Airship refuses uppercase in names: use {name.lower()!r}"
                )
        elif not name.lowercase:
            problems.append(
                "mapping.event_name.lowercase: names from a column may hold uppercase, which "
                "Airship refuses; set 'lowercase: true'"
            )
        user = mapping.user
        if user.type is None and user.type_column is None:
            problems.append(f"mapping.user.type: Airship needs one of {', '.join(USER_KINDS)}")
        elif user.type is not None and user.type not in USER_KINDS:
            problems.append(
                f"mapping.user.type: {user.type!r} is not one of {', '.join(USER_KINDS)}"
            )
        return problems

    def endpoint(self) -> Endpoint:
        # No published rate limit: a conservative default, override with rate_limit.
        return Endpoint(
            "/api/custom-events", 100, None, RateLimit(requests=10, per_seconds=1), True
        )

    def headers(self, credentials: dict[str, str]) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {credentials['token']}",
            "X-UA-Appkey": credentials["app_key"],
            "Accept": "application/vnd.urbanairship+json; version=3",
        }

    def is_success(self, status: int, data: Any) -> bool:
        """200 ``{"ok": true, "operation_id": ...}`` (some libraries read ``operationId``)."""
        return isinstance(data, dict) and data.get("ok") is True

    def validate(self, event: Event) -> str | None:
        if event.user_type not in USER_KINDS:
            return f"user kind is not one of {', '.join(USER_KINDS)} (got {event.user_type!r})"
        if event.name != event.name.lower():
            return f"event name has uppercase letters (got {event.name[:40]!r})"
        oldest = self.oldest_allowed()
        if event.occurred_at < oldest:
            return "older than Airship's 90-day window"
        if event.occurred_at > self.now():
            return "in the future (Airship refuses it)"
        too_long = _long_string({**event.properties, **event.args}, "properties")
        if too_long:
            return f"{too_long} is longer than {MAX_PROPERTY_CHARS} characters"
        return None

    def encode(self, event: Event) -> dict[str, Any]:
        body: dict[str, Any] = {"name": event.name, **event.fields}
        properties = {**event.properties, **event.args}
        if properties:
            body["properties"] = properties
        assert event.user_type is not None
        return {
            "occurred": to_iso_naive_utc(event.occurred_at),
            "user": {event.user_type: event.user_id},
            "body": body,
        }
