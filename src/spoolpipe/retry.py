"""When a failed attempt runs again: exponential backoff with jitter, bounded attempts, and which
exceptions are retried at all (``retry.on.<type>`` names, ``retry_on=`` classes)."""

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


def class_names(cls: type) -> tuple[str, ...]:
    """The names ``retry.on.<type>`` may give a class: ``module.QualifiedName``, and for a built-in
    its bare name too (``OSError`` as well as ``builtins.OSError``)."""
    qualified = f"{cls.__module__}.{cls.__qualname__}"
    return (cls.__qualname__, qualified) if cls.__module__ == "builtins" else (qualified,)


def retried(
    exc: BaseException, names: tuple[str, ...] | None, classes: tuple[type[BaseException], ...] | None
) -> bool:
    """Whether an exception a processor raised is retried.

    ``names`` (``retry.on.<type>``) win over ``classes`` (the processor's ``retry_on``); a name
    matches when the exception's class or one of its base classes (its MRO) has that name.
    Neither set: every exception is retried.
    """
    if names is not None:
        wanted = set(names)
        return any(not wanted.isdisjoint(class_names(cls)) for cls in type(exc).__mro__)
    if classes is not None:
        return isinstance(exc, classes)
    return True
