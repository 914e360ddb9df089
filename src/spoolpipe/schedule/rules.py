"""The pure core of schedules: rules, their ticks, what is due and the id of a tick.

All times are seconds since the Unix epoch, read in UTC: cron expressions are
evaluated in UTC (no daylight-saving jumps), ``every`` ticks are the multiples of
the period since 1970-01-01T00:00:00Z. Ticks fall on whole seconds.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from ..activity import KEY_NAME_PATTERN, format_time

#: Regular expression (``re.fullmatch``) a schedule name matches: it becomes part of activity ids.
NAME_PATTERN = KEY_NAME_PATTERN
#: The data key that carries the tick's time; reserved in ``schedule.<name>.data``.
TICK_FIELD = "scheduled_for"
#: Most ticks ``catch-up = all`` fires at once; older missed ticks are skipped (with a warning).
CATCH_UP_CAP = 100
#: Longest ``schedule.<name>.every``: a year and a day.
EVERY_MAX_DAYS = 366
EVERY_MAX_SECONDS = EVERY_MAX_DAYS * 86400
#: ``@`` names accepted in ``schedule.<name>.cron``.
CRON_NICKNAMES = ("@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@midnight")

CatchUp = Literal["none", "latest", "all"]
CATCH_UP_CHOICES: tuple[CatchUp, ...] = ("none", "latest", "all")

_NAME_RE = re.compile(NAME_PATTERN)
# A field part that is croniter's random (R) or hashed (H) extension: no month or day name starts so.
_RANDOM_OR_HASHED = re.compile(r"(?:^|[\s,/-])[HhRr](?:$|[\s,/(-])")
_ID_PREFIX = "schedule"
_STAMP = "%Y%m%dT%H%M%SZ"
_ID_RE = re.compile(rf"{_ID_PREFIX}\.(?P<name>{NAME_PATTERN})\.(?P<stamp>[0-9]{{8}}T[0-9]{{6}}Z)")


class InvalidRule(ValueError):
    """A schedule definition that cannot work; the message says why, for a person."""


def is_valid_name(name: str) -> bool:
    return _NAME_RE.fullmatch(name) is not None


@dataclass(frozen=True)
class Every:
    """A tick every ``seconds`` seconds, at the multiples of ``seconds`` since the epoch."""

    seconds: int

    @property
    def expression(self) -> str:
        return f"every {self.seconds}s"

    def latest(self, at: float) -> float | None:
        """The latest tick at or before ``at``."""
        return float(math.floor(at / self.seconds) * self.seconds)

    def next(self, after: float) -> float:
        """The first tick strictly after ``after``."""
        return float((math.floor(after / self.seconds) + 1) * self.seconds)


@dataclass(frozen=True)
class Cron:
    """A five-field cron expression (or an ``@`` name), evaluated in UTC with ``croniter``."""

    text: str

    @property
    def expression(self) -> str:
        return f"cron {self.text}"

    def latest(self, at: float) -> float | None:
        from croniter import croniter

        # get_prev is strictly before its start: ticks are whole seconds, so start just past at.
        try:  # fromtimestamp: ValueError past 9999
            start = datetime.fromtimestamp(math.floor(at) + 1, UTC)
            return float(croniter(self.text, start).get_prev(float))
        except (ValueError, KeyError, OverflowError):  # CroniterBadDateError is a ValueError
            return None

    def next(self, after: float) -> float:
        from croniter import croniter

        try:
            start = datetime.fromtimestamp(math.floor(after), UTC)
            return float(croniter(self.text, start).get_next(float))
        except (ValueError, KeyError, OverflowError):
            return math.inf


Timing = Every | Cron


def parse_cron(text: str) -> Cron:
    """A validated :class:`Cron`: five fields or one of :data:`CRON_NICKNAMES`, else :class:`InvalidRule`."""
    from croniter import croniter

    normalised = " ".join(text.split())
    if normalised.startswith("@"):
        if normalised.lower() not in CRON_NICKNAMES:
            raise InvalidRule(f"{normalised!r} is not one of {', '.join(CRON_NICKNAMES)}")
        normalised = normalised.lower()
    elif len(normalised.split()) != 5:
        raise InvalidRule(
            f"{normalised!r} has {len(normalised.split())} fields; expected five "
            "(minute hour day-of-month month day-of-week)"
        )
    if _RANDOM_OR_HASHED.search(normalised):
        raise InvalidRule(
            f"{normalised!r}: R (random) and H (hashed) fields are not allowed; "
            "every worker must compute the same ticks"
        )
    try:
        valid = bool(croniter.is_valid(normalised))
    except Exception:  # croniter raises assorted errors for odd input
        valid = False
    if not valid:
        raise InvalidRule(f"{normalised!r} is not a valid cron expression")
    cron = Cron(normalised)
    if cron.next(946684800.0) == math.inf:  # from 2000-01-01: an expression like '0 0 31 2 *'
        raise InvalidRule(f"{normalised!r} never comes due")
    return cron


@dataclass(frozen=True)
class Rule:
    """One ``schedule.<name>.*`` definition, validated; frozen and hashable (data is kept as JSON text)."""

    name: str
    timing: Timing
    type: str
    #: ``schedule.<name>.data`` as canonical JSON text (an object).
    data_json: str = "{}"
    #: Worker ids allowed to fire it; empty means any worker.
    workers: tuple[str, ...] = ()
    catch_up: CatchUp = "latest"

    @property
    def data(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.data_json)
        return loaded

    @property
    def expression(self) -> str:
        return self.timing.expression

    def fired_by(self, worker_id: str) -> bool:
        """Whether ``worker_id`` may fire this rule."""
        return not self.workers or worker_id in self.workers

    def activity(self, tick: float) -> dict[str, Any]:
        """The activity document of ``tick``: its id, the rule's type, its data plus the tick time."""
        return {
            "id": tick_id(self.name, tick),
            "type": self.type,
            "data": {**self.data, TICK_FIELD: format_time(tick)},
        }


def canonical_data(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def tick_id(name: str, tick: float) -> str:
    """``schedule.NAME.YYYYMMDDTHHMMSSZ``: one id per rule and tick, a valid activity id."""
    return f"{_ID_PREFIX}.{name}.{datetime.fromtimestamp(tick, UTC).strftime(_STAMP)}"


def parse_tick_id(activity_id: str) -> tuple[str, float] | None:
    """The rule name and tick of an id :func:`tick_id` made; None for any other id."""
    m = _ID_RE.fullmatch(activity_id)
    if m is None:
        return None
    try:
        moment = datetime.strptime(m.group("stamp"), _STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None
    return m.group("name"), moment.timestamp()


def ticks_between(timing: Timing, after: float, until: float, limit: int) -> tuple[list[float], bool]:
    """Ticks ``t`` with ``after < t <= until``: the latest ``limit`` of them, oldest first, and whether
    older ones were left out."""
    found: list[float] = []
    tick = timing.latest(until)
    while tick is not None and tick > after:
        if len(found) == limit:
            return found[::-1], True
        found.append(tick)
        tick = timing.latest(tick - 1)  # the latest tick strictly before this one
    return found[::-1], False


#: With ``catch-up = none``, a tick looked at more than this late (seconds) was missed: its worker was
#: held up (paused, busy) while it came due, and it never fires.
ON_TIME_SECONDS = 10.0


@dataclass(frozen=True)
class Due:
    """What to fire now: ``ticks`` (oldest first); ``cut`` when ``catch-up = all`` hit its cap;
    ``skipped``, the latest tick ``catch-up = none`` leaves out (dealt with all the same)."""

    ticks: tuple[float, ...]
    cut: bool = False
    skipped: float | None = None


def due(rule: Rule, through: float, now: float, taken_up: float) -> Due:
    """The ticks of ``rule`` to fire at ``now``, every tick up to ``through`` being dealt with already.

    ``taken_up`` is when this worker took the rule up (its start, or the reload that changed
    the rule): with ``catch-up = none`` ticks until then count as missed and never fire, and
    so do those a worker held up looks at more than :data:`ON_TIME_SECONDS` late.
    """
    if rule.catch_up == "none":
        ticks, _ = ticks_between(rule.timing, max(through, taken_up), now, 1)
        if ticks and now - ticks[-1] > ON_TIME_SECONDS:
            return Due((), skipped=ticks[-1])
        return Due(tuple(ticks))
    if rule.catch_up == "latest":
        ticks, _ = ticks_between(rule.timing, through, now, 1)
        return Due(tuple(ticks))
    ticks, cut = ticks_between(rule.timing, through, now, CATCH_UP_CAP)
    return Due(tuple(ticks), cut)
