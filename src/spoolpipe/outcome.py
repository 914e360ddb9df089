"""What an attempt's outcome means for its activity: pure, so tests call it directly.

A processor's attempt ends as an :class:`Outcome`; :func:`decide` turns it,
with the attempt number and the retry policy, into what happens next: the
activity is done, skipped (done, with nothing done), failed for good, or
retried after a delay (the processor's own, from ``Retry(delay=)``, or the
policy's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from .activity import OutcomeKind
from .retry import RetryPolicy

#: ``ok``: the processor returned; ``skipped``: it raised ``Skip``; ``error``: it raised something
#: retried (``Retry`` included) or its attempt was interrupted; ``fatal``: never retried.
Status = Literal["ok", "skipped", "error", "fatal"]


@dataclass(frozen=True)
class Outcome:
    """What an attempt did.

    ``result`` and the follow-ups' data are checked plain JSON values; ``error`` is one bounded
    line, the reason of a failure, retry or skip, and ``traceback`` bounded (the full texts are
    in the attempt log). ``recycle`` asks for the pool process to be replaced afterwards (a step
    thread outlived its timeout, say). ``delay`` is the processor's own retry delay in seconds
    (``Retry(delay=)``); None: the policy's.
    """

    status: Status
    result: Any = None
    follow_ups: tuple[dict[str, Any], ...] = ()
    error: str = ""
    traceback: str = ""
    recycle: bool = False
    delay: float | None = None


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class Skipped:
    pass


@dataclass(frozen=True)
class Failed:
    pass


@dataclass(frozen=True)
class Retry:
    delay: float


Decision = Done | Skipped | Failed | Retry

#: How an attempt ended, as the worker counts it (metrics, attempt history): what it committed
#: (a skip is committed to ``done/``), or a retry.
Ending = Literal[OutcomeKind, "skipped", "retry"]
ENDINGS: tuple[Ending, ...] = get_args(Ending)


def decide(outcome: Outcome, attempt: int, policy: RetryPolicy) -> Decision:
    """Done on success, skipped on ``Skip``; failed if fatal or out of attempts (an explicit
    ``Retry`` included); otherwise retried after the processor's delay, or else the policy's."""
    if outcome.status == "ok":
        return Done()
    if outcome.status == "skipped":
        return Skipped()
    if outcome.status == "fatal" or policy.gives_up_after(attempt):
        return Failed()
    return Retry(policy.delay(attempt) if outcome.delay is None else outcome.delay)
