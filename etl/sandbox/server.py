"""A local HTTP emulation of the vendors' event APIs, for the demo, the tests and dry rehearsals.

Each vendor lives under its own path prefix (``/fuul/api/v1/...``) and enforces the rules of
``vendors.md``: auth, validation, batch limits, deduplication, rate limits with 429 and
Retry-After. Faults are injected on request (5xx, responses lost after storing, latency), and
everything accepted is recorded so that a test can check what a vendor really received.

Control endpoints (no auth): ``GET /_sandbox/records?vendor=fuul``, ``GET /_sandbox/stats``,
``GET /_sandbox/arrivals?vendor=fuul`` (the sandbox clock at every request),
``POST /_sandbox/faults`` with ``{"fuul": {"error_rate": 0.1, ...}}``, ``POST /_sandbox/reset``.
"""

from __future__ import annotations

import gc
import json
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from requests.structures import CaseInsensitiveDict

from etl.sandbox.airship import AirshipEmulator
from etl.sandbox.emulator import Faults, Reply, SlidingWindow, TokenBucket, VendorEmulator
from etl.sandbox.fuul import FuulEmulator
from etl.sandbox.thrivestack import ThriveStackEmulator
from etl.sandbox.torque import TorqueEmulator


@dataclass
class RequestRecord:
    """One request as the sandbox saw it: what it stored, and whether its answer went out."""

    id: int
    vendor: str
    path: str
    headers: dict[str, str]
    stored: list[int] = field(default_factory=list)  # indexes into the vendor's records
    status: int | None = None
    answered: bool = False


class Sandbox:
    """The state behind the server: emulators, records, stats, faults, clock and time scale."""

    def __init__(
        self,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        seed: int = 0,
        record_path: Path | None = None,
        fuul_triggers: set[str] | None = None,
        torque_events: dict[str, dict[str, str]] | None = None,
        freeze_records: bool = False,
        keep_events: bool = True,
    ) -> None:
        self.time_scale = time_scale
        self.freeze_records = freeze_records
        self.keep_events = keep_events  # False: accepted events are counted, not kept
        self.clock = clock
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.record_path = record_path
        self.records: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.stats: dict[str, Counter[str]] = defaultdict(Counter)
        self.faults: dict[str, Faults] = defaultdict(Faults)
        self.arrivals: dict[str, list[float]] = defaultdict(list)  # clock() of every request
        self.buckets: dict[str, TokenBucket] = {}  # the strict buckets of Faults.bucket_per_s
        self.windows: dict[str, SlidingWindow] = {}  # the windows of Faults.window_per_s
        self.bucket_lock = threading.Lock()
        self.open: Counter[str] = Counter()  # requests being answered, per vendor
        self.requests: list[RequestRecord] = []  # every request, vendors' and unknown paths'
        self._current = threading.local()
        self.fuul_triggers = fuul_triggers
        self.torque_events = torque_events
        self.emulators = self._emulators()

    def _emulators(self) -> dict[str, VendorEmulator]:
        return {
            "fuul": FuulEmulator(self, triggers=self.fuul_triggers),
            "torque": TorqueEmulator(self, events=self.torque_events),
            "thrivestack": ThriveStackEmulator(self),
            "airship": AirshipEmulator(self),
        }

    def begin(self, method: str, path: str, headers: Mapping[str, str]) -> RequestRecord:
        """A request arrives (on the handler's thread): its record, current on this thread."""
        vendor = urlparse(path).path.strip("/").split("/", 1)[0]
        with self.lock:
            request = RequestRecord(len(self.requests), vendor, f"{method} {path}", dict(headers))
            if vendor != "_sandbox":
                self.requests.append(request)
        self._current.request = request
        return request

    def record(self, vendor: str, event: dict[str, Any]) -> None:
        if not self.keep_events:
            self.stats[vendor]["stored"] += 1
            return
        request = getattr(self._current, "request", None)
        if request is not None:
            request.stored.append(len(self.records[vendor]))
        self.records[vendor].append(event)
        self.stats[vendor]["stored"] += 1
        if self.record_path is not None:
            with self.record_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"vendor": vendor, "event": event}) + "\n")

    def set_faults(self, vendor: str, **values: float) -> None:
        with self.lock:
            self.faults[vendor] = Faults(**{**asdict(self.faults[vendor]), **values})

    def reset(self) -> None:
        with self.lock:
            self.records.clear()
            self.stats.clear()
            self.arrivals.clear()
            self.faults.clear()
            self.buckets.clear()
            self.windows.clear()
            self.requests.clear()
            self.emulators = self._emulators()

    def dispatch(
        self,
        method: str,
        raw_path: str,
        headers: Mapping[str, str],
        body: bytes,
        arrived: float | None = None,
    ) -> Reply | None:
        """The reply to a request, or None to drop the connection (a lost response).
        ``arrived``: when its headers were read (default: now)."""
        arrived = self.clock() if arrived is None else arrived
        url = urlparse(raw_path)
        parts = url.path.strip("/").split("/", 1)
        if parts[0] == "_sandbox":
            return self._control(method, parts[1] if len(parts) > 1 else "", url.query, body)
        emulator = self.emulators.get(parts[0])
        if emulator is None:
            return Reply(404, {"message": f"no vendor at /{parts[0]}"})
        name = emulator.name
        faults = self.faults[name]
        if faults.bucket_per_s or faults.window_per_s:  # a gateway: judged when it arrives
            wait = self._gate(name, faults, arrived)
            if wait is not None:
                with self.lock:
                    self.stats[name]["requests"] += 1
                    self.arrivals[name].append(arrived)
                    return emulator.throttled(wait)
        with self.lock:
            self.open[name] += 1
            stats = self.stats[name]
            stats["max_concurrent"] = max(stats["max_concurrent"], self.open[name])
        try:
            reply = self._answer(emulator, faults, method, parts, headers, body, arrived)
            if faults.latency_ms:  # the vendor counts a request when it arrives, answers later
                time.sleep(faults.latency_ms / 1000)
            return reply
        finally:
            with self.lock:
                self.open[name] -= 1

    def _gate(self, name: str, faults: Faults, arrived: float) -> float | None:
        """The gateway's verdict on a request that ``arrived``: the token bucket's, then the
        sliding window's (each set up again when its fault settings change)."""
        with self.bucket_lock:
            if faults.bucket_per_s:
                bucket = self.buckets.get(name)
                if bucket is None or (bucket.per_s, bucket.burst) != (
                    faults.bucket_per_s,
                    faults.bucket_burst,
                ):
                    bucket = TokenBucket(faults.bucket_per_s, faults.bucket_burst, self.clock)
                    self.buckets[name] = bucket
                if (wait := bucket.check(arrived)) is not None:
                    return wait
            if faults.window_per_s:
                window = self.windows.get(name)
                if window is None or window.limit != faults.window_per_s:
                    window = SlidingWindow(faults.window_per_s, 1.0, self.clock)
                    self.windows[name] = window
                return window.check(name, arrived)
            return None

    def _answer(
        self,
        emulator: VendorEmulator,
        faults: Faults,
        method: str,
        parts: list[str],
        headers: Mapping[str, str],
        body: bytes,
        arrived: float,
    ) -> Reply | None:
        with self.lock:
            stats = self.stats[emulator.name]
            stats["requests"] += 1
            self.arrivals[emulator.name].append(arrived)
            if faults.answer_status and stats["requests"] > faults.answer_after:
                stats[f"answered_{faults.answer_status}"] += 1
                location = {"Location": faults.answer_location} if faults.answer_location else None
                raw = faults.answer_body  # as is: HTML, empty, or JSON text
                return Reply(faults.answer_status, raw, location, faults.answer_content_type)
            if faults.error_rate and self.random.random() < faults.error_rate:
                stats["errors"] += 1
                return Reply(503, {"message": "Service unavailable (injected)"})
            lose = bool(faults.lose_rate and self.random.random() < faults.lose_rate)
            reply = emulator.handle(
                method, "/" + (parts[1] if len(parts) > 1 else ""), headers, body
            )
            stats[f"status_{reply.status}"] += 1
            if self.freeze_records:
                # What was accepted is kept to the end: out of the cycle collector's walks
                # (a million kept events made it half the sandbox's CPU). It freezes every
                # object of the process: only for a sandbox in its own process.
                gc.freeze()
            if lose and reply.status < 300:
                stats["lost"] += 1
                return None
            return reply

    def _control(self, method: str, path: str, query: str, body: bytes) -> Reply:
        if method == "GET" and path == "records":
            vendor = parse_qs(query).get("vendor", [""])[0]
            with self.lock:
                return Reply(200, list(self.records.get(vendor, [])))
        if method == "GET" and path == "arrivals":
            vendor = parse_qs(query).get("vendor", [""])[0]
            with self.lock:
                return Reply(200, list(self.arrivals.get(vendor, [])))
        if method == "GET" and path == "stats":
            with self.lock:
                return Reply(200, {k: dict(v) for k, v in self.stats.items()})
        if method == "GET" and path == "requests":
            vendor = parse_qs(query).get("vendor", [""])[0]
            with self.lock:
                found = [asdict(r) for r in self.requests if r.vendor == vendor or not vendor]
            return Reply(200, found)
        if method == "POST" and path == "faults":
            for vendor, values in json.loads(body or b"{}").items():
                self.set_faults(vendor, **values)
            return Reply(200, {"ok": True})
        if method == "POST" and path == "reset":
            self.reset()
            return Reply(200, {"ok": True})
        return Reply(404, {"message": "unknown control endpoint"})


class _Handler(BaseHTTPRequestHandler):
    server: SandboxServer
    protocol_version = "HTTP/1.1"
    wbufsize = 64 * 1024  # headers and body in one send: no delayed-ACK stall on keep-alive

    def _serve(self, method: str) -> None:
        arrived = self.server.sandbox.clock()  # its headers are read: as a gateway sees it
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = CaseInsensitiveDict(self.headers.items())
        request = self.server.sandbox.begin(method, self.path, headers)
        reply = self.server.sandbox.dispatch(method, self.path, headers, body, arrived)
        if reply is None:
            self.close_connection = True
            return
        request.status = reply.status
        if isinstance(reply.body, str):
            data = reply.body.encode()
        else:
            data = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (reply.headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        request.answered = True

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the stats say it all
        return


class SandboxServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, sandbox: Sandbox, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sandbox = sandbox
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> SandboxServer:
        threading.Thread(target=self.serve_forever, name="sandbox", daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def start_sandbox(host: str = "127.0.0.1", port: int = 0, **options: Any) -> SandboxServer:
    """Start a sandbox in a background thread; ``.url`` is its base URL, ``.stop()`` ends it."""
    return SandboxServer(Sandbox(**options), host, port).start()
