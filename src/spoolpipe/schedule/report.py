"""What ``spoolpipe schedule`` shows: each rule, its last fired tick and its next fire times."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..activity import LATEST, format_time
from ..repository import Repository
from .rules import Cron, Every, Rule
from .state import STATE_DIR, read_state, state_path

#: How many next fire times ``spoolpipe schedule`` lists by default.
NEXT_COUNT = 3
#: The most ``--next`` may ask for.
NEXT_MAX = 1000


def next_ticks(rule: Rule, after: float, count: int) -> list[float]:
    """The first ``count`` ticks strictly after ``after``."""
    ticks: list[float] = []
    while len(ticks) < count:
        after = rule.timing.next(after)
        if after > LATEST:  # none past 9999-12-31, which no time spoolpipe writes can be
            break
        ticks.append(after)
    return ticks


def describe(repo: Repository, rules: Mapping[str, Rule], now: float, count: int) -> list[dict[str, Any]]:
    """One JSON object per rule, by name (the ``schedules`` of ``spoolpipe schedule --json``)."""
    described = []
    for name, rule in sorted(rules.items()):
        state, _ = read_state(state_path(repo, name))
        described.append(
            {
                "name": name,
                "expression": rule.expression,
                "cron": rule.timing.text if isinstance(rule.timing, Cron) else None,
                "every_seconds": rule.timing.seconds if isinstance(rule.timing, Every) else None,
                "type": rule.type,
                "data": rule.data,
                "workers": list(rule.workers),
                "catch_up": rule.catch_up,
                "state_file": f"{STATE_DIR}/{name}.json",
                "last_fired": None
                if state is None or state.last_fired is None
                else format_time(state.last_fired),
                "last_id": None if state is None else state.last_id,
                "through": None if state is None else format_time(state.through),
                "next": [format_time(t) for t in next_ticks(rule, now, count)],
            }
        )
    return described


def render(described: list[dict[str, Any]], count: int) -> str:
    """The text form: two or three lines per rule."""
    if not described:
        return "no schedules (set schedule.<name>.cron or schedule.<name>.every in spoolpipe.properties)\n"
    lines = []
    for rule in described:
        workers = ", ".join(rule["workers"]) or "any"
        lines.append(
            f"{rule['name']}: {rule['expression']} -> {rule['type']}  "
            f"(workers: {workers}; catch-up: {rule['catch_up']})"
        )
        if rule["last_fired"] is None:
            lines.append("  last fired: never")
        else:
            fired_as = f" ({rule['last_id']})" if rule["last_id"] is not None else ""
            lines.append(f"  last fired: {rule['last_fired']}{fired_as}")
        lines.append(f"  next {count}: " + (", ".join(rule["next"]) or "none"))
    return "\n".join(lines) + "\n"
