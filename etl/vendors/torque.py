"""Torque custom events: one JSON object per request, no batch endpoint, no deduplication.

The current ingest host takes ``POST /events`` with ``x-api-key``; the older server host takes
``POST /event/custom`` with ``x-torque-api-key``. Each custom event is defined in the Torque
dashboard with typed parameters: the mapping's ``args`` declare them (string, number, boolean)
and every row is checked against them before anything is sent.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from etl.config import MappingConfig, RateLimit
from etl.events import Event
from etl.timestamps import to_epoch_ms
from etl.vendors.base import Endpoint, Vendor, VendorOptions, is_solana_address

_HOSTS = {
    "ingest": ("https://ingest.torque.so", "/events", "x-api-key"),
    "legacy": ("https://server.torque.so", "/event/custom", "x-torque-api-key"),
}


class TorqueOptions(VendorOptions):
    transport: ClassVar[frozenset[str]] = frozenset({"api", "path", "key_header"})
    api: Literal["ingest", "legacy"] = "ingest"
    path: str | None = None  # overrides the api's path
    key_header: str | None = None  # overrides the api's header name


class Torque(Vendor):
    name = "torque"
    title = "Torque"
    deduplicates = False
    options_model = TorqueOptions
    options: TorqueOptions
    arg_types = frozenset({"string", "number", "boolean"})

    def default_base_url(self) -> str:
        return _HOSTS[self.options.api][0]

    @classmethod
    def check_mapping(cls, mapping: MappingConfig) -> list[str]:
        problems = super().check_mapping(mapping)
        if mapping.user.type not in (None, "solana_address") or mapping.user.type_column:
            problems.append("mapping.user: Torque identifies users by Solana wallet only")
        return problems

    def endpoint(self) -> Endpoint:
        path = self.options.path or _HOSTS[self.options.api][1]
        # No published limit: a conservative default; set rate_limit to what Torque grants you.
        return Endpoint(path, 1, None, RateLimit(requests=10, per_seconds=1), json_array=False)

    def headers(self, credentials: dict[str, str]) -> dict[str, str]:
        header = self.options.key_header or _HOSTS[self.options.api][2]
        return {header: credentials["api_key"]}

    def validate(self, event: Event) -> str | None:
        if not is_solana_address(event.user_id):
            return "userPubkey is not a Solana address (base58, 32 to 44 characters)"
        return None

    def encode(self, event: Event) -> dict[str, Any]:
        return {
            "userPubkey": event.user_id,
            "timestamp": to_epoch_ms(event.occurred_at),
            "eventName": event.name,
            "data": dict(event.args),
        }
