"""Torque's custom-event API as vendors.md describes it, under ``/torque``.

``POST /torque/events`` (header ``x-api-key``) and the older ``POST /torque/event/custom``
(header ``x-torque-api-key``): one event per request, flat typed ``data``, event names that must
be defined for the key (when the sandbox is given definitions), 202 on success, no dedup.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from etl.sandbox.emulator import Reply, SandboxState, VendorEmulator, parse_json

KEY = "sandbox-torque-key"
_PUBKEY = re.compile(r"[1-9A-HJ-NP-Za-km-z]{32,44}")
_TYPES = {"string": (str,), "number": (int, float), "boolean": (bool,)}


def bad(message: str) -> Reply:
    return Reply(400, {"status": "BAD_REQUEST", "message": message})


class TorqueEmulator(VendorEmulator):
    name = "torque"

    def __init__(
        self, sandbox: SandboxState, events: dict[str, dict[str, str]] | None = None
    ) -> None:
        super().__init__(sandbox)
        self.events = events  # name -> {parameter: string|number|boolean}; None: any
        self.limit = self.limiter(50, 1)  # not published: the sandbox's own choice

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        routes = {"/events": "x-api-key", "/event/custom": "x-torque-api-key"}
        if method != "POST" or path not in routes:
            return Reply(404, {"status": "NOT_FOUND", "message": "Not found"})
        if headers.get(routes[path]) != KEY:
            return Reply(401, {"status": "UNAUTHORIZED", "message": "Invalid API key"})
        wait = self.limit.check(KEY)
        if wait is not None:
            return self.throttled(wait)
        try:
            event = parse_json(body)
        except ValueError:
            return bad("Invalid JSON")
        problem = self.problem(event)
        if problem:
            return bad(problem)
        self.store(event)
        return Reply(202, {"status": "ACCEPTED"})

    def problem(self, event: Any) -> str | None:
        if not isinstance(event, dict):
            return "body must be an object"
        if not isinstance(event.get("userPubkey"), str) or not _PUBKEY.fullmatch(
            event["userPubkey"]
        ):
            return "userPubkey must be a Solana public key"
        ts = event.get("timestamp")
        if not isinstance(ts, int | str) or isinstance(ts, bool):
            return "timestamp is required (ms since epoch)"
        name = event.get("eventName")
        if not isinstance(name, str) or not name:
            return "eventName is required"
        data = event.get("data")
        if not isinstance(data, dict):
            return "data is required"
        for key, value in data.items():
            if not isinstance(value, str | int | float | bool):
                return f"data.{key} must be a string, number or boolean"
        if self.events is not None:
            if name not in self.events:
                return "Event not found for this API key"
            for key, kind in self.events[name].items():
                value = data.get(key)
                ok = isinstance(value, _TYPES[kind]) and not (
                    kind == "number" and isinstance(value, bool)
                )
                if not ok:
                    return f"data.{key} must be a {kind}"
        return None
