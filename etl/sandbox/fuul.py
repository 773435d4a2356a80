"""Fuul's events API as vendors.md describes it, under ``/fuul/api/v1``.

Written from the contract, not from the client's code, so that the client is tested against the
rules rather than against itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from etl.sandbox.emulator import Reply, SandboxState, VendorEmulator, parse_json

KEYS = {
    "sandbox-fuul-key": {"send:trigger_event"},
    "sandbox-fuul-readonly": {"read"},
}

_ID_FORMATS = {
    "evm_address": r"0x[0-9a-fA-F]{40}",
    "solana_address": r"[1-9A-HJ-NP-Za-km-z]{32,44}",
    "xrpl_address": r"r[1-9A-HJ-NP-Za-km-z]{24,34}",
    "sui_address": r"0x[0-9a-fA-F]{64}",
    "stellar_address": r"G[A-Z2-7]{55}",
    "email": r"[^@\s]+@[^@\s]+\.[^@\s]+",
}


def event_problem(event: Any, triggers: set[str] | None) -> str | None:
    if not isinstance(event, dict):
        return "event must be an object"
    name = event.get("name")
    if not isinstance(name, str) or not name:
        return "name is required"
    if triggers is not None and name not in triggers:
        return f"no trigger with event name {name!r} in this project"
    user = event.get("user")
    if not isinstance(user, dict):
        return "user is required"
    identifier, kind = user.get("identifier"), user.get("identifier_type")
    if kind not in _ID_FORMATS:
        return f"invalid identifier_type {kind!r}"
    if not isinstance(identifier, str) or not re.fullmatch(_ID_FORMATS[kind], identifier):
        return f"invalid identifier for {kind}"
    dedup = event.get("dedup_id")
    if not isinstance(dedup, str) or not dedup:
        return "dedup_id is required"
    args = event.get("args", {})
    if not isinstance(args, dict):
        return "args must be an object"
    for key, value in args.items():
        if not isinstance(value, str | int | float | bool) or isinstance(value, dict | list):
            return f"args.{key} must be a string, number or boolean"
    if "timestamp" in event and (
        not isinstance(event["timestamp"], int) or isinstance(event["timestamp"], bool)
    ):
        return "timestamp must be an integer (ms since epoch)"
    extra = set(event) - {"name", "user", "dedup_id", "args", "timestamp"}
    if extra:
        return f"unknown field(s) {', '.join(sorted(extra))}"
    return None


class FuulEmulator(VendorEmulator):
    name = "fuul"

    def __init__(self, sandbox: SandboxState, triggers: set[str] | None = None) -> None:
        super().__init__(sandbox)
        self.triggers = triggers
        self.dedup_ids: set[str] = set()
        self.single_limit = self.limiter(100, 60)
        self.batch_limit = self.limiter(10, 60)

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        if method != "POST" or path not in ("/api/v1/events", "/api/v1/events/batch"):
            return Reply(404, {"message": "Not found"})
        auth = headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else ""
        if key not in KEYS:
            return Reply(401, {"message": "Unauthorized"})
        if "send:trigger_event" not in KEYS[key]:
            return Reply(403, {"message": "API key does not have the send:trigger_event scope"})
        batch = path.endswith("/batch")
        wait = (self.batch_limit if batch else self.single_limit).check(key)
        if wait is not None:
            return self.throttled(wait)
        try:
            data = parse_json(body)
        except ValueError:
            return Reply(400, {"message": "body is not valid JSON"})
        if not batch:
            problem = event_problem(data, self.triggers)
            if problem:
                return Reply(400, {"message": problem})
            if data["dedup_id"] in self.dedup_ids:
                self.sandbox.stats[self.name]["duplicates"] += 1
                return Reply(409, {"message": "An event with this dedup_id already exists"})
            self._keep(data)
            return Reply(201, {"message": "Event created"})
        if not isinstance(data, list) or not 1 <= len(data) <= 100:
            return Reply(400, {"message": "body must be an array of 1 to 100 events"})
        for index, event in enumerate(data):
            problem = event_problem(event, self.triggers)
            if problem:
                return Reply(400, {"message": f"events[{index}]: {problem}"})
        ingested = 0
        for event in data:
            if event["dedup_id"] in self.dedup_ids:
                self.sandbox.stats[self.name]["duplicates"] += 1
                continue
            self._keep(event)
            ingested += 1
        return Reply(200, {"ingested_events": ingested})

    def _keep(self, event: dict[str, Any]) -> None:
        self.dedup_ids.add(event["dedup_id"])
        self.store(event)
