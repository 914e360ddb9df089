"""When ``spoolpipe worker --until-idle`` is done, once nothing runs, is due or is recoverable.

What is left then is work that waits: activities of a type an open circuit
holds (until its cool-down lets a probe through) and delayed activities
(``not_before``, retry backoff) this worker could run. ``--until-idle`` waits
for them and says what for, once per thing it waits for; with ``--no-wait`` it
leaves them queued and says so. The decision is pure (``verdict``);
``UntilIdle`` only remembers what it said.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .activity import format_time
from .attempt import counted
from .intake import Delayed

log = logging.getLogger("spoolpipe.worker")


@dataclass(frozen=True)
class Wait:
    """What the worker waits for: ``what`` (a type or an id, and until when) changes when it is said again."""

    what: tuple[str, float]
    message: str


@dataclass(frozen=True)
class Verdict:
    idle: bool
    notes: tuple[str, ...] = ()  # with --no-wait: what is left queued
    wait: Wait | None = None


def verdict(
    held: Mapping[str, float],
    delayed: Callable[[], Sequence[Delayed]],
    *,
    no_wait: bool,
    now: float,
    monotonic: float,
) -> Verdict:
    """Whether the worker is idle, given the types ``held`` by an open circuit (each with when, by the
    monotonic clock, it half-opens) and the ``delayed`` activities (due by the shared clock, ``now``
    on it), read only when no circuit makes the worker wait anyway."""
    notes: list[str] = []
    if held and no_wait:
        types = ", ".join(sorted(held))
        notes.append(
            f"activities of {types} wait behind an open circuit: left queued (--until-idle --no-wait)"
        )
    elif held:
        type_, until = min(held.items(), key=lambda h: (h[1], h[0]))
        message = (
            f"--until-idle: waiting for the open circuit of {type_}: a probe in {until - monotonic:.1f}s"
        )
        return Verdict(False, wait=Wait((type_, until), message))
    waiting = delayed()
    if not waiting:
        return Verdict(True, tuple(notes))
    count = counted(len(waiting), "delayed activity", "delayed activities")
    if no_wait:
        return Verdict(True, (*notes, f"{count} left queued (--until-idle --no-wait)"))
    first = min(waiting, key=lambda d: (d.due, d.id))
    message = (
        f"--until-idle: waiting for {count}; the next, {first.id} ({first.type}), "
        f"is due at {format_time(first.due)} (in {first.due - now:.1f}s)"
    )
    return Verdict(False, tuple(notes), Wait((first.id, first.due), message))


class UntilIdle:
    """The ``--until-idle`` decision of one worker run, saying what it waits for once, not every turn."""

    def __init__(self, *, no_wait: bool) -> None:
        self.no_wait = no_wait
        self._said: tuple[str, float] | None = None

    def idle(
        self,
        held: Mapping[str, float],
        delayed: Callable[[], Sequence[Delayed]],
        now: float,
        monotonic: float,
    ) -> bool:
        found = verdict(held, delayed, no_wait=self.no_wait, now=now, monotonic=monotonic)
        for note in found.notes:
            log.info("%s", note)
        if found.wait is not None and found.wait.what != self._said:
            self._said = found.wait.what
            log.info("%s", found.wait.message)
        return found.idle
