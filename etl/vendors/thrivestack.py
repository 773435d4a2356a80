"""ThriveStack track: a JSON array of up to 1,000 events and 2 MB, ISO-8601 UTC timestamps."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from etl.config import MappingConfig, RateLimit
from etl.events import Event
from etl.timestamps import to_iso_z, to_iso_z_many
from etl.vendors.base import Endpoint, Vendor, VendorOptions

MAX_BYTES = 2_000_000  # "2 MB": the smaller reading, so that either reading accepts it


class ThriveStackOptions(VendorOptions):
    transport: ClassVar[frozenset[str]] = frozenset({"auth"})
    auth: Literal["x-api-key", "bearer"] = "x-api-key"


class ThriveStack(Vendor):
    name = "thrivestack"
    title = "ThriveStack"
    deduplicates = False
    options_model = ThriveStackOptions
    options: ThriveStackOptions
    field_types = {
        "group_id": "string",
        "device_id": "string",
        "session_id": "string",
        "source": "string",
    }
    properties_column = True

    def default_base_url(self) -> str:
        return "https://api.app.thrivestack.ai"

    @classmethod
    def check_mapping(cls, mapping: MappingConfig) -> list[str]:
        problems = super().check_mapping(mapping)
        if mapping.user.type or mapping.user.type_column:
            problems.append("mapping.user: ThriveStack takes a user_id, without a type")
        return problems

    def endpoint(self) -> Endpoint:
        # 429 is documented but no number: a conservative default, override with rate_limit.
        return Endpoint("/api/track", 1000, MAX_BYTES, RateLimit(requests=5, per_seconds=1), True)

    def headers(self, credentials: dict[str, str]) -> dict[str, str]:
        if self.options.auth == "bearer":
            return {"Authorization": f"Bearer {credentials['api_key']}"}
        return {"x-api-key": credentials["api_key"]}

    def is_success(self, status: int, data: Any) -> bool:
        """200 ``{"success": true, ...}``."""
        return isinstance(data, dict) and data.get("success") is True

    def validate(self, event: Event) -> str | None:
        return None

    def encode(self, event: Event) -> dict[str, Any]:
        return self._payload(event, to_iso_z(event.occurred_at))

    def encode_many(self, events: list[Event]) -> list[dict[str, Any]]:
        stamps = to_iso_z_many([e.occurred_at for e in events])
        return [self._payload(e, t) for e, t in zip(events, stamps, strict=True)]

    def _payload(self, event: Event, timestamp: str) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "event_name": event.name,
            "user_id": event.user_id,
            "timestamp": timestamp,
        }
        properties = {**event.properties, **event.args} if event.properties else event.args
        if properties:
            payload["properties"] = properties
        if event.fields:
            payload["context"] = event.fields
        return payload
