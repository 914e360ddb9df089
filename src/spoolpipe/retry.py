"""When a failed attempt runs again: exponential backoff with jitter, bounded attempts."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` counts every attempt, crashes and timeouts included."""

    max_attempts: int = 5
    backoff_seconds: float = 2.0
    backoff_max_seconds: float = 600.0
    jitter: float = 0.25

    def gives_up_after(self, attempt: int) -> bool:
        return attempt >= self.max_attempts

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based) before the next one."""
        base = min(self.backoff_max_seconds, self.backoff_seconds * 2.0 ** min(attempt - 1, 60))
        spread: float = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1 + spread))
