"""The worker's side of schedules: publish each due tick as its activity, exactly once.

Every worker that may fire a rule looks at it when a tick comes due (by the
shared file system's clock) and publishes the tick's activity with the
repository's no-replace submit: the id is made of rule and tick, so of any number
of workers firing one tick, one publishes it and the others find the id taken.
The state file then records the tick as dealt with, so that it never fires again,
even once its record is purged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..activity import Activity, InvalidActivity, format_time, parse_time
from ..repository import Repository, filesystem_now
from .rules import CATCH_UP_CAP, CatchUp, Due, Rule, due, tick_id
from .state import State, read_state, state_path, write_state

log = logging.getLogger("spoolpipe.schedule")
#: After an error (file system, unreadable state), a rule is looked at again this much later.
RETRY_SECONDS = 5.0
#: A rule whose state was written for a newer definition waits this long for this worker's reload.
RECHECK_SECONDS = 1.0
_CATCH_UP_SAYS: dict[CatchUp, str] = {
    "none": "none of them fires",
    "latest": "the latest fires",
    "all": f"each fires (at most the latest {CATCH_UP_CAP})",
}


@dataclass
class _Track:
    rule: Rule
    #: When this worker took the rule up as it is timed now (shared clock).
    taken_up: float
    #: When to look at the rule again (shared clock, as the worker's SharedClock tells it).
    next_look: float = -math.inf
    #: Whether the ticks missed before the take-up were logged (once per take-up).
    said_missed: bool = False


class Scheduler:
    """Fires the due ticks of the rules ``worker_id`` may fire; ``probe`` is a file to read the shared
    file system's clock from (touched at each look)."""

    def __init__(self, repo: Repository, worker_id: str, probe: Path) -> None:
        self.repo = repo
        self.worker_id = worker_id
        self.probe = probe
        self._tracks: dict[str, _Track] = {}

    def next_fire(self) -> float:
        """When a rule must be looked at next (shared clock); ``inf`` for never."""
        return min((t.next_look for t in self._tracks.values()), default=math.inf)

    def fire(self, rules: Mapping[str, Rule], now: float) -> list[str]:
        """Publish the ticks due at ``now`` (shared clock); the inbox names this worker published.

        Cheap when nothing is due: no file is touched before a rule's next tick.
        """
        self._follow(rules, now)
        published: list[str] = []
        for name, track in self._tracks.items():
            if track.next_look > now:
                continue
            try:
                published += self._look(track, now)
            except Exception as exc:  # a schedule must never stop the worker: try again later
                log.error(
                    "schedule %s: %s; trying again in %gs",
                    name,
                    exc,
                    RETRY_SECONDS,
                    exc_info=not isinstance(exc, OSError),
                )
                track.next_look = now + RETRY_SECONDS
        return published

    def _follow(self, rules: Mapping[str, Rule], now: float) -> None:
        """Take up new and changed rules (a reload takes effect here), drop removed ones."""
        for name in [n for n in self._tracks if n not in rules or not rules[n].fired_by(self.worker_id)]:
            del self._tracks[name]
            log.info("schedule %s: no longer fired by this worker", name)
        for name, rule in rules.items():
            if not rule.fired_by(self.worker_id):
                continue
            track = self._tracks.get(name)
            if track is None:
                self._tracks[name] = _Track(rule, now)
            elif track.rule != rule:
                if track.rule.timing != rule.timing:
                    track.taken_up, track.said_missed = now, False
                track.rule, track.next_look = rule, -math.inf

    def _look(self, track: _Track, now: float) -> list[str]:
        """Fire what is due of one rule, record it in its state and plan the next look."""
        rule = track.rule
        precise = filesystem_now(self.probe)  # the file system's own clock, not an estimate
        state = self._state(track, now, precise)
        if state is None:
            return []
        if state.through >= rule.timing.next(precise):  # written by a clock that was ahead
            log.warning(
                "schedule %s: dealt with up to %s, past its next tick by the file system's clock (%s): "
                "a clock that was ahead? It goes on from now",
                rule.name,
                format_time(state.through),
                format_time(precise),
            )
            state = dataclasses.replace(state, through=precise)
            self._write(rule.name, state, precise, merge=False)
        if not track.said_missed:
            track.said_missed = True
            self._say_missed(rule, state, track.taken_up, precise)
        todo = due(rule, state.through, precise, track.taken_up)
        self._say_left_out(rule, state, track.taken_up, todo)
        if todo.cut:
            log.warning(
                "schedule %s: catch-up = all fires at most %d missed ticks: the latest, from %s; "
                "older ones are skipped",
                rule.name,
                CATCH_UP_CAP,
                format_time(todo.ticks[0]),
            )
        published: list[str] = []
        fired: list[float] = []
        for tick in todo.ticks:
            doc = rule.activity(tick)
            outcome = self.repo.publish_once(Activity(doc["id"], doc["type"], doc["data"]), precise)
            if outcome == "busy":  # reserved by a worker firing it right now (or one that just died)
                log.debug("schedule %s: %s is being fired by another worker", rule.name, doc["id"])
                break
            fired.append(tick)
            if outcome == "published":
                published.append(f"{doc['id']}.json")
                log.info(
                    "schedule %s: tick %s fired as %s (%s)",
                    rule.name,
                    format_time(tick),
                    doc["id"],
                    rule.type,
                )
        if fired:
            last = fired[-1]
            state = dataclasses.replace(
                state, through=max(state.through, last), last_fired=last, last_id=tick_id(rule.name, last)
            )
            self._write(rule.name, state, precise)
        elif todo.skipped is not None and todo.skipped > state.through:
            state = dataclasses.replace(state, through=todo.skipped)
            self._write(rule.name, state, precise)
        if len(fired) < len(todo.ticks):
            track.next_look = now + RECHECK_SECONDS
        else:  # the next tick by the file system's clock, as the worker's clock will tell it
            track.next_look = rule.timing.next(max(state.through, precise)) + (now - precise)
        return published

    def _state(self, track: _Track, now: float, precise: float) -> State | None:
        """The rule's state, created or taken over for this worker's definition as needed; None when
        this worker must leave the rule alone for now (``next_look`` says until when)."""
        rule = track.rule
        path = state_path(self.repo, rule.name)
        state, present = read_state(path)
        if state is None:
            if present:
                log.warning("schedule %s: %s is not a state file; starting afresh", rule.name, path)
            state = State(rule.expression, track.taken_up, precise)
            try:
                self._write(rule.name, state, precise, create=not present)
            except FileExistsError:  # another worker created it meanwhile: read theirs
                track.next_look = now
                return None
            first = format_time(rule.timing.next(precise))
            log.info(
                "schedule %s (%s, type %s) starts: first tick %s",
                rule.name,
                rule.expression,
                rule.type,
                first,
            )
            return state
        if state.expression == rule.expression:
            return state
        if (track.taken_up, rule.expression) <= (state.defined_at, state.expression):
            # Written for a definition taken up after this worker's: ours is stale until it reloads.
            track.next_look = now + RECHECK_SECONDS
            return None
        log.info(
            "schedule %s is now %s (was %s): it fires from its next tick",
            rule.name,
            rule.expression,
            state.expression,
        )
        state = State(
            rule.expression,
            track.taken_up,
            max(state.through, track.taken_up),
            state.last_fired,
            state.last_id,
        )
        self._write(rule.name, state, precise)
        return state

    def _say_missed(self, rule: Rule, state: State, taken_up: float, now: float) -> None:
        """Log the ticks that came due before this worker took the rule up while no worker that may
        fire it ran, and what catch-up does with them."""
        first = rule.timing.next(state.through)
        if first > taken_up:
            return
        # The ticks another live worker is firing right now are not missed.
        before = min(taken_up, math.nextafter(self._running_since(rule, now), -math.inf))
        last = rule.timing.latest(before)
        if last is None or last < first:
            return
        log.info(
            "schedule %s: ticks came due while no worker fired it, %s to %s; catch-up = %s: %s",
            rule.name,
            format_time(first),
            format_time(last),
            rule.catch_up,
            _CATCH_UP_SAYS[rule.catch_up],
        )

    def _say_left_out(self, rule: Rule, state: State, taken_up: float, todo: Due) -> None:
        """Log the ticks since the take-up that catch-up = latest or none leaves out (this worker paused
        or busy past them), as the take-up logs those before it."""
        first = rule.timing.next(max(state.through, taken_up))
        if rule.catch_up == "latest" and todo.ticks:
            last: float | None = todo.ticks[-1]  # the range ends with the tick that fires
            left_out = first < todo.ticks[-1]
        elif rule.catch_up == "none":  # the tick it skipped, or those before the one on time
            last = todo.skipped if not todo.ticks else rule.timing.latest(todo.ticks[-1] - 1)
            left_out = last is not None and first <= last
        else:
            return
        if left_out and last is not None:
            log.info(
                "schedule %s: ticks came due while this worker was held up (paused or busy), %s to %s; "
                "catch-up = %s: %s",
                rule.name,
                format_time(first),
                format_time(last),
                rule.catch_up,
                _CATCH_UP_SAYS[rule.catch_up],
            )

    def _running_since(self, rule: Rule, now: float) -> float:
        """When the earliest started of the other live workers that may fire ``rule`` started
        (``inf``: none runs), by their heartbeats."""
        from ..control import live_workers  # at a take-up with missed ticks only: it reads heartbeats

        try:
            others = [w for w in live_workers(self.repo, now) if w.worker_id != self.worker_id]
        except OSError:
            return math.inf
        starts = []
        for worker in others:
            if rule.fired_by(worker.worker_id):
                with contextlib.suppress(InvalidActivity):  # a heartbeat written by hand
                    starts.append(parse_time(worker.run.started_at))
        return min(starts, default=math.inf)

    def _write(
        self, name: str, state: State, now: float, *, create: bool = False, merge: bool = True
    ) -> None:
        """Write ``state``, never behind what another worker wrote for the same expression meanwhile
        (unless not ``merge``: a state ahead of the clock is set back)."""
        path = state_path(self.repo, name)
        if merge and not create:
            current, _ = read_state(path)
            if current is not None and current.expression == state.expression:
                state = state.merged(current)
        write_state(self.repo, path, state.to_json(name, self.worker_id, now), create=create)
