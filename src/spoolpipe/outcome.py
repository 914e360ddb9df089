"""What an attempt's outcome means for its activity: pure, so tests call it directly.

A processor's attempt ends as an :class:`Outcome`; :func:`decide` turns it,
with the attempt number and the retry policy, into what happens next: the
activity is done, failed for good, or retried after a delay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from .activity import OutcomeKind
from .retry import RetryPolicy

#: ``ok``: the processor returned; ``error``: it raised (retried per policy); ``fatal``: never retried.
Status = Literal["ok", "error", "fatal"]


@dataclass(frozen=True)
class Outcome:
    """What an attempt did.

    ``result`` and the follow-ups' data are checked plain JSON values; ``error`` is one bounded
    line and ``traceback`` bounded (the full texts are in the attempt log). ``recycle`` asks for
    the pool process to be replaced afterwards (a step thread outlived its timeout, say).
    """

    status: Status
    result: Any = None
    follow_ups: tuple[dict[str, Any], ...] = ()
    error: str = ""
    traceback: str = ""
    recycle: bool = False


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class Failed:
    pass


@dataclass(frozen=True)
class Retry:
    delay: float


Decision = Done | Failed | Retry

#: How an attempt ended, as the worker counts it (metrics): what it committed, or a retry.
Ending = Literal[OutcomeKind, "retry"]
ENDINGS: tuple[Ending, ...] = get_args(Ending)


def decide(outcome: Outcome, attempt: int, policy: RetryPolicy) -> Decision:
    """Done on success; failed if fatal or out of attempts; otherwise retried after the policy's delay."""
    if outcome.status == "ok":
        return Done()
    if outcome.status == "fatal" or policy.gives_up_after(attempt):
        return Failed()
    return Retry(policy.delay(attempt))
