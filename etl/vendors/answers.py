"""What a vendor's answer means: the verdicts, and the HTTP rules every vendor shares.

Only a vendor's documented success is a delivery. Anything else is sorted by what the sender
must do, and by whether the events may have been stored (``landed``): True (stored), False
(surely not), None (unknown: a timeout, a 5xx, an answer that is not the vendor's).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import Any
from urllib.parse import urlsplit


class Verdict(Enum):
    DELIVERED = "delivered"  # every event of the request is stored (or was already)
    RETRY = "retry"  # 429, 5xx, timeout: the same request may succeed later
    REJECTED = "rejected"  # the vendor refuses the content (its documented 400): split, dead-letter
    FATAL = "fatal"  # credential or scope: stop the destination
    ENDPOINT = "endpoint"  # not the vendor's API at this URL (404, 405, 410, 413, 3xx): stop
    UNKNOWN = "unknown"  # a 2xx that is not the vendor's success: retried a few times, then stop


@dataclass(frozen=True)
class Classified:
    verdict: Verdict
    message: str
    retry_after: float | None = None
    landed: bool | None = False


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds, decimals allowed, or HTTP-date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def snippet(body: str, limit: int = 120) -> str:
    """The start of a body as one safe line: tags and control characters dropped, spaces
    collapsed, cut at ``limit`` characters, quoted."""
    text = _TAG.sub(" ", body)
    text = "".join(ch for ch in text if ch.isprintable() or ch.isspace())
    text = _SPACE.sub(" ", text).strip()
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return repr(text) if text else "an empty body"


def json_body(body: str, headers: dict[str, str]) -> Any:
    """The body as JSON if it is JSON (by its content type and its text), else None."""
    content_type = _header(headers, "Content-Type").lower()
    if "json" not in content_type:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _header(headers: dict[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return ""


def error_message(status: int, body: str) -> str:
    """A short reason from an error body: its 'message'/'error' field, else the text, safely."""
    text = body.strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("message", "error", "detail"):
            if isinstance(data.get(key), str):
                return f"HTTP {status}: {data[key][:300]}"
    return f"HTTP {status}: {snippet(text)}" if text else f"HTTP {status}"


def reports_no_error(data: Any) -> bool:
    """JSON that does not say it failed: the success of a vendor that publishes no success body."""
    if isinstance(data, list):
        return True
    if not isinstance(data, dict):
        return False
    if data.get("success") is False or data.get("ok") is False or data.get("error"):
        return False
    status = data.get("status")
    return not (isinstance(status, str) and re.search(r"ERROR|FAIL|BAD|INVALID", status.upper()))


def classify_http(status: int, body: str, headers: dict[str, str], success: bool) -> Classified:
    """The rules every vendor shares; ``success``: the 2xx body is the vendor's success."""
    if 300 <= status < 400:
        target = urlsplit(_header(headers, "Location")).netloc or "an unnamed host"
        return Classified(Verdict.ENDPOINT, f"HTTP {status}: a redirect to {target}")
    if 200 <= status < 300:
        if success:
            return Classified(Verdict.DELIVERED, f"HTTP {status}", landed=True)
        content_type = _header(headers, "Content-Type") or "no content type"
        detail = f"HTTP {status} ({content_type}): {snippet(body)}"
        return Classified(Verdict.UNKNOWN, detail, landed=None)
    message = error_message(status, body)
    retry_after = parse_retry_after(_header(headers, "Retry-After"))
    if status in (408, 425, 429):
        return Classified(Verdict.RETRY, message, retry_after)
    if status >= 500:
        return Classified(Verdict.RETRY, message, retry_after, landed=None)
    if status in (401, 403):
        return Classified(Verdict.FATAL, message)
    if status in (400, 422) and json_body(body, headers) is not None:
        return Classified(Verdict.REJECTED, message)
    return Classified(Verdict.ENDPOINT, message)
