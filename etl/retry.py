"""The retry rule, in one place: what is retried, and how long to sleep before the next try."""

from __future__ import annotations

from dataclasses import dataclass, field

from etl.timing import Jitter, full_jitter


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, ``Retry-After`` first, at most ``max_attempts`` tries."""

    max_attempts: int = 8
    base_delay: float = 1.0
    max_delay: float = 60.0
    max_retry_after: float = 600.0
    jitter: Jitter = field(default=full_jitter)

    def should_retry(self, attempt: int) -> bool:
        """After ``attempt`` failed tries of a retryable failure, is another allowed?"""
        return attempt < self.max_attempts

    def sleep_seconds(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after the ``attempt``-th failed try (1-based)."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return self.jitter(min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))
