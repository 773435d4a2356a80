"""Airship's custom-events API as vendors.md describes it, under ``/airship``.

``POST /airship/api/custom-events`` with ``Authorization: Bearer``, ``X-UA-Appkey`` and the
version-3 Accept header: an array of 1 to 100 events, ``occurred`` without offset within the
last 90 days, exactly one user identifier, lowercase names, property strings of at most 255
characters; one bad event rejects the request; 200 with an ``operation_id``; no dedup.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from etl.sandbox.emulator import Reply, SandboxState, VendorEmulator, parse_json

TOKEN = "sandbox-airship-token"
APP_KEY = "sandbox-airship-app"
ACCEPT = "application/vnd.urbanairship+json; version=3"
USER_KEYS = {
    "named_user_id",
    "channel",
    "ios_channel",
    "android_channel",
    "amazon_channel",
    "web_channel",
}
BODY_STRINGS = {"transaction", "interaction_id", "interaction_type", "session_id", "unique_id"}


def bad(message: str, path: str) -> Reply:
    return Reply(
        400,
        {
            "ok": False,
            "error": "Could not parse request body.",
            "error_code": 40000,
            "details": {"error": message, "path": path},
        },
    )


def _too_long(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) > 255
    if isinstance(value, dict):
        return any(_too_long(v) for v in value.values())
    if isinstance(value, list):
        return any(_too_long(v) for v in value)
    return False


class AirshipEmulator(VendorEmulator):
    name = "airship"

    def __init__(self, sandbox: SandboxState, now: Callable[[], datetime] | None = None) -> None:
        super().__init__(sandbox)
        self.now = now or (lambda: datetime.now(UTC).replace(tzinfo=None))
        self.limit = self.limiter(20, 1)  # not published: the sandbox's own choice

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        if method != "POST" or path != "/api/custom-events":
            return Reply(404, {"ok": False, "error": "Not found"})
        if (
            headers.get("Authorization") != f"Bearer {TOKEN}"
            or headers.get("X-UA-Appkey") != APP_KEY
        ):
            return Reply(401, "Unauthorized", content_type="text/plain")
        if headers.get("Accept") != ACCEPT:
            return Reply(406, {"ok": False, "error": "Not acceptable: use " + ACCEPT})
        wait = self.limit.check(TOKEN)
        if wait is not None:
            return self.throttled(wait)
        try:
            events = parse_json(body)
        except ValueError:
            return bad("invalid JSON", "")
        if not isinstance(events, list) or not 1 <= len(events) <= 100:
            return bad("body must be an array of 1 to 100 events", "")
        for i, event in enumerate(events):
            problem = self.problem(event)
            if problem:
                return bad(problem[1], f"[{i}].{problem[0]}")
        for event in events:
            self.store(event)
        return Reply(200, {"ok": True, "operation_id": str(uuid.uuid4())})

    def problem(self, event: Any) -> tuple[str, str] | None:
        if not isinstance(event, dict):
            return ("", "event must be an object")
        occurred = event.get("occurred")
        try:
            when = (
                datetime.strptime(occurred, "%Y-%m-%dT%H:%M:%S")
                if isinstance(occurred, str)
                else None
            )
        except ValueError:
            when = None
        if when is None:
            return ("occurred", "occurred must be YYYY-MM-DDTHH:MM:SS in UTC, without offset")
        now = self.now()
        if when < now - timedelta(days=90) or when > now:
            return ("occurred", "occurred must be within the last 90 days and not in the future")
        user = event.get("user")
        if not isinstance(user, dict) or len(user) != 1 or not set(user) <= USER_KEYS:
            return ("user", "user must hold exactly one identifier")
        if not isinstance(next(iter(user.values())), str):
            return ("user", "the user identifier must be a string")
        body = event.get("body")
        if not isinstance(body, dict):
            return ("body", "body is required")
        name = body.get("name")
        if not isinstance(name, str) or not name or name != name.lower():
            return ("body.name", "name is required and must not contain uppercase characters")
        if "value" in body and (
            not isinstance(body["value"], int | float) or isinstance(body["value"], bool)
        ):
            return ("body.value", "value must be a number")
        for key in BODY_STRINGS & set(body):
            if not isinstance(body[key], str):
                return (f"body.{key}", f"{key} must be a string")
        properties = body.get("properties", {})
        if not isinstance(properties, dict):
            return ("body.properties", "properties must be an object")
        if _too_long(properties):
            return ("body.properties", "property strings must be at most 255 characters")
        return None
