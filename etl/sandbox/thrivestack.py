"""ThriveStack's track API as vendors.md describes it, under ``/thrivestack``.

``POST /thrivestack/api/track`` with ``x-api-key`` (or ``Authorization: Bearer``): a JSON array
of at most 1,000 events and 2 MB; ``event_name``, ``user_id`` and an ISO-8601 UTC ``timestamp``
required; 200 ``{"success": true}``; no dedup.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from etl.sandbox.emulator import Reply, SandboxState, VendorEmulator, parse_json

KEY = "sandbox-thrivestack-key"
MAX_EVENTS = 1000
MAX_BYTES = 2_000_000
_UTC_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z")


def bad(message: str) -> Reply:
    return Reply(400, {"success": False, "error": message})


class ThriveStackEmulator(VendorEmulator):
    name = "thrivestack"

    def __init__(self, sandbox: SandboxState) -> None:
        super().__init__(sandbox)
        self.limit = self.limiter(10, 1)  # 429 documented, number not: the sandbox's choice

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        if method != "POST" or path != "/api/track":
            return Reply(404, {"success": False, "error": "Not found"})
        key = headers.get("x-api-key")
        auth = headers.get("Authorization", "")
        if key != KEY and auth != f"Bearer {KEY}":
            return Reply(401, {"success": False, "error": "Invalid API key"})
        wait = self.limit.check(KEY)
        if wait is not None:
            return self.throttled(wait)
        if len(body) > MAX_BYTES:
            return bad(f"request body over {MAX_BYTES} bytes")
        try:
            events = parse_json(body)
        except ValueError:
            return bad("Invalid JSON")
        if not isinstance(events, list) or not events:
            return bad("body must be a non-empty array of events")
        if len(events) > MAX_EVENTS:
            return bad(f"at most {MAX_EVENTS} events per request")
        for i, event in enumerate(events):
            problem = self.problem(event)
            if problem:
                return bad(f"[{i}] {problem}")
        for event in events:
            self.store(event)
        return Reply(200, {"success": True, "processed": len(events)})

    @staticmethod
    def problem(event: Any) -> str | None:
        if not isinstance(event, dict):
            return "event must be an object"
        for key in ("event_name", "user_id"):
            if not isinstance(event.get(key), str) or not event[key]:
                return f"{key} is required"
        if not isinstance(event.get("timestamp"), str) or not _UTC_ISO.fullmatch(
            event["timestamp"]
        ):
            return "timestamp must be ISO-8601 in UTC, like 2024-10-20T15:51:36.514000Z"
        for key in ("properties", "context"):
            if key in event and not isinstance(event[key], dict):
                return f"{key} must be an object"
        return None
