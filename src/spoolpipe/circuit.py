"""Circuit breakers: a worker stops claiming a type whose attempts keep failing, then probes it.

Pure: the clock (``time.monotonic``) is passed in and what changes is told to a
callback, so tests drive every transition directly. Each worker has its own
breakers (nothing is shared between workers); it publishes the circuits that
are not closed in its heartbeat, which is how ``spoolpipe status`` shows them.

A circuit for a type with a :class:`Rule` is *closed* while fewer than
``failures`` attempts of that type ended in ``failed`` or ``retry`` within the
last ``window`` seconds; the next one *opens* it: for ``cool_down`` seconds the
worker claims no activity of that type (they wait in the inbox). Then it is
*half-open*: exactly one activity goes through, the probe; its success closes
the circuit, its failure opens it again for another cool-down. Any other ending
(a skip, a claim lost to another worker) says nothing about the downstream:
the next activity is the probe.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .activity import format_time, printable

#: Attempt endings that count as a failure of the type's downstream.
FAILURES = frozenset({"failed", "retry"})
#: The attempt ending that closes a half-open circuit.
SUCCESS = "done"
#: Defaults of the optional keys of a circuit (``circuit.<type>.failures`` turns it on).
DEFAULT_WINDOW_SECONDS = 60.0
DEFAULT_COOL_DOWN_SECONDS = 60.0


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True)
class Rule:
    """``circuit.<type>.*``: open after ``failures`` failed attempts within ``window`` seconds, for
    ``cool_down`` seconds."""

    failures: int
    window: float = DEFAULT_WINDOW_SECONDS
    cool_down: float = DEFAULT_COOL_DOWN_SECONDS


@dataclass(frozen=True)
class Change:
    """A transition, with the log line that tells it."""

    type: str
    state: State
    message: str
    level: int = logging.WARNING


@dataclass
class _Breaker:
    state: State = State.CLOSED
    failures: list[float] = field(default_factory=list)  # monotonic times, within the window
    opened_at: float = 0.0
    opened_after: int = 0  # failures that opened it (the probe's failure: 1)
    probe: str | None = None  # the activity id let through while half-open


class Circuits:
    """The breakers of one worker, by activity type.

    ``rules`` is consulted at every decision, so a reloaded configuration
    applies to the next one; a type whose rule is gone is closed. ``changed``
    hears every transition.
    """

    def __init__(self, rules: Callable[[], Mapping[str, Rule]], changed: Callable[[Change], None]) -> None:
        self._rules = rules
        self._changed = changed
        self._breakers: dict[str, _Breaker] = {}

    # -- what the worker may claim ------------------------------------------------------------

    def holds(self, type_: str) -> bool:
        """Whether activities of ``type_`` are to be set aside: open, or half-open with its probe out."""
        b = self._breakers.get(type_)
        if b is None or type_ not in self._rules():
            return False
        return b.state is State.OPEN or (b.state is State.HALF_OPEN and b.probe is not None)

    def admit(self, type_: str, activity_id: str) -> bool:
        """Whether ``activity_id`` may be claimed now; while half-open it becomes the probe."""
        b = self._breakers.get(type_)
        if b is None or b.state is State.CLOSED or type_ not in self._rules():
            return True
        if b.state is State.OPEN or b.probe is not None:
            return False
        b.probe = activity_id
        self._tell(
            type_,
            State.HALF_OPEN,
            f"circuit for {printable(type_)} half-open: probing with {printable(activity_id)}",
            logging.INFO,
        )
        return True

    def batch_limit(self, type_: str) -> int | None:
        """Most activities of ``type_`` one batch may hold, so that a batch cannot fail more of them
        than it takes to open the circuit (a probe is alone); None: no limit."""
        rule = self._rules().get(type_)
        if rule is None:
            return None
        b = self._breakers.get(type_)
        if b is None:
            return rule.failures
        return 1 if b.state is not State.CLOSED else max(1, rule.failures - len(b.failures))

    def tick(self, now: float, in_flight: Collection[str]) -> None:
        """Time-driven changes: a cool-down over, a rule removed, a probe gone without an ending
        (``in_flight``: the ids this worker has out)."""
        rules = self._rules()
        for type_, b in list(self._breakers.items()):
            rule = rules.get(type_)
            if rule is None:
                del self._breakers[type_]
                if b.state is not State.CLOSED:
                    self._tell(
                        type_, State.CLOSED, f"circuit for {printable(type_)} closed: its keys were removed"
                    )
            elif b.state is State.OPEN and now >= b.opened_at + rule.cool_down:
                b.state, b.probe = State.HALF_OPEN, None
                self._tell(
                    type_,
                    State.HALF_OPEN,
                    f"circuit for {printable(type_)} half-open after {rule.cool_down:g}s: "
                    "the next activity is a probe",
                    logging.INFO,
                )
            elif b.state is State.HALF_OPEN and b.probe is not None and b.probe not in in_flight:
                self._free_probe(type_, b, "ended without an outcome")

    def next_change(self) -> float:
        """When (monotonic) the earliest open circuit lets a probe through; inf if none."""
        rules = self._rules()
        return min(
            (
                b.opened_at + rules[t].cool_down
                for t, b in self._breakers.items()
                if b.state is State.OPEN and t in rules
            ),
            default=float("inf"),
        )

    def holding(self, types: Iterable[str]) -> dict[str, float]:
        """Of ``types``, those held by an open circuit, each with when (monotonic) it half-opens."""
        rules = self._rules()
        return {
            t: self._breakers[t].opened_at + rules[t].cool_down
            for t in types
            if t in rules and t in self._breakers and self._breakers[t].state is State.OPEN
        }

    # -- what attempts say ------------------------------------------------------------------------

    def ended(self, type_: str, ending: str, now: float, ids: Collection[str]) -> None:
        """An attempt of ``type_`` ended as ``ending``; ``ids`` are those of its batch (the probe's
        batch is that probe alone)."""
        rule = self._rules().get(type_)
        if rule is None:  # no circuit (any left is closed by the next tick)
            return
        b = self._breakers.setdefault(type_, _Breaker())
        failed = ending in FAILURES
        if b.state is State.CLOSED:
            if not failed:
                return
            b.failures = [t for t in b.failures if t > now - rule.window] + [now]
            if len(b.failures) >= rule.failures:
                self._open(type_, b, now, rule, len(b.failures))
        elif b.state is State.HALF_OPEN and b.probe is not None and b.probe in ids:
            if failed:
                self._open(type_, b, now, rule, 1)
            elif ending == SUCCESS:
                del self._breakers[type_]
                self._tell(
                    type_,
                    State.CLOSED,
                    f"circuit for {printable(type_)} closed: probe {b.probe} succeeded",
                    logging.INFO,
                )
            else:
                self._free_probe(type_, b, f"ended {ending}")

    def _open(self, type_: str, b: _Breaker, now: float, rule: Rule, count: int) -> None:
        name = printable(type_)
        if b.state is State.HALF_OPEN:
            why = f"again, probe {printable(b.probe or '')} failed"
        else:
            why = f"after {_failures(count)} in {rule.window:g}s"
        b.state, b.opened_at, b.opened_after, b.probe, b.failures = State.OPEN, now, count, None, []
        self._tell(
            type_, State.OPEN, f"circuit for {name} open {why}: not claiming {name} for {rule.cool_down:g}s"
        )

    def _free_probe(self, type_: str, b: _Breaker, how: str) -> None:
        probe, b.probe = b.probe, None
        self._tell(
            type_,
            State.HALF_OPEN,
            f"circuit for {printable(type_)}: probe {probe} {how}; the next activity is a probe",
            logging.INFO,
        )

    def _tell(self, type_: str, state: State, message: str, level: int = logging.WARNING) -> None:
        self._changed(Change(type_, state, message, level))

    # -- what the heartbeat says --------------------------------------------------------------------

    def published(self, now: float, shared_now: float) -> dict[str, dict[str, Any]]:
        """The circuits that are not closed, for the heartbeat's ``circuits`` field: times by the
        shared clock (``shared_now`` is ``now`` on it)."""
        rules = self._rules()
        doc: dict[str, dict[str, Any]] = {}
        for type_, b in sorted(self._breakers.items()):
            if b.state is State.CLOSED or type_ not in rules:
                continue
            until = b.opened_at + rules[type_].cool_down
            doc[type_] = {
                "state": b.state.value,
                "since": format_time(shared_now - (now - b.opened_at)),
                "until": format_time(shared_now - (now - until)) if b.state is State.OPEN else None,
                "failures": b.opened_after,
                "probe": b.probe,
            }
        return doc


# -- what ``status`` shows (heartbeats are files anyone may have written: read field by field) -----------

_TEXT_MAX = 200


def _text(value: object) -> str | None:
    return printable(value[:_TEXT_MAX]) if isinstance(value, str) else None


def published_circuits(workers: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The circuits that live workers' heartbeats say are not closed, one entry per worker and type,
    sorted by type then worker; an entry that is not as documented is left out."""
    found: list[dict[str, Any]] = []
    states = {s.value for s in State if s is not State.CLOSED}
    for w in workers:
        circuits, worker = w.get("circuits"), _text(w.get("worker"))
        if not isinstance(circuits, dict) or worker is None:
            continue
        for type_, c in circuits.items():
            state = c.get("state") if isinstance(c, dict) else None
            if not isinstance(type_, str) or not isinstance(state, str) or state not in states:
                continue
            failures = c.get("failures")
            found.append(
                {
                    "type": printable(type_[:_TEXT_MAX]),
                    "worker": worker,
                    "state": state,
                    "since": _text(c.get("since")),
                    "until": _text(c.get("until")),
                    "failures": failures
                    if isinstance(failures, int) and not isinstance(failures, bool)
                    else None,
                    "probe": _text(c.get("probe")),
                }
            )
    return sorted(found, key=lambda c: (c["type"], c["worker"]))


def _failures(count: int) -> str:
    from .attempt import counted  # not at import: attempt needs config, which needs this module

    return counted(count, "failure")


def status_lines(circuits: Iterable[Mapping[str, Any]]) -> list[str]:
    """``status`` text: one line per circuit that is not closed."""
    lines = []
    for c in circuits:
        if c["state"] == State.OPEN.value:
            after = f" after {_failures(c['failures'])}" if c["failures"] is not None else ""
            lines.append(
                f"  circuit open: {c['type']} on {c['worker']}{after}, since {c['since']}, "
                f"probe at {c['until']}; its activities wait in the inbox"
            )
        else:
            probe = f", probe {c['probe']}" if c["probe"] else ""
            lines.append(f"  circuit half-open: {c['type']} on {c['worker']}{probe}")
    return lines
