"""The per-rule state file ``REPO/schedules/NAME.json``: which ticks of a rule are dealt with.

It outlives the activities it made (records may be purged): a tick at or before
``through`` never fires again. Any worker may rewrite it; it is untrusted on
reading (a file that is not a state document counts as absent).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..activity import LATEST, format_time, is_valid_name
from ..durable import publish
from ..repository import Repository, dumps
from ..untrusted import NotARegularFile, read_regular

#: The directory, inside the repository, of the state files; created by the first worker that needs it.
STATE_DIR = "schedules"
_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class State:
    """What a rule has dealt with: ``expression`` (as defined at ``defined_at``) and every tick up to
    ``through``; ``last_fired`` and ``last_id``: the latest tick that became an activity."""

    expression: str
    defined_at: float
    through: float
    last_fired: float | None = None
    last_id: str | None = None

    def merged(self, other: State) -> State:
        """This state, not behind ``other`` (of the same expression) on what was dealt with."""
        newest = self
        if other.last_fired is not None and (self.last_fired is None or other.last_fired > self.last_fired):
            newest = other
        return dataclasses.replace(
            self,
            through=max(self.through, other.through),
            last_fired=newest.last_fired,
            last_id=newest.last_id,
        )

    def to_json(self, name: str, worker: str, now: float) -> dict[str, Any]:
        return {
            "schedule": name,
            "expression": self.expression,
            "defined_at": format_time(self.defined_at),
            "through": format_time(self.through),
            "last_fired": None if self.last_fired is None else format_time(self.last_fired),
            "last_id": self.last_id,
            "updated_at": format_time(now),
            "updated_by": worker,
        }


def _time(value: object) -> float:
    if not isinstance(value, str):
        raise ValueError("not a time")
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("no time zone")
    epoch = moment.timestamp()
    if not 0 <= epoch <= LATEST:  # never written by spoolpipe, and could not be written back
        raise ValueError("out of range")
    return epoch


def parse_state(raw: bytes) -> State | None:
    """The state in ``raw``; None for anything that is not a state document this module wrote."""
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or not isinstance(doc.get("expression"), str):
            return None
        last_fired = doc.get("last_fired")
        last_id = doc.get("last_id")
        if last_id is not None and not is_valid_name(last_id):
            return None
        return State(
            doc["expression"],
            _time(doc.get("defined_at")),
            _time(doc.get("through")),
            None if last_fired is None else _time(last_fired),
            last_id,
        )
    except (ValueError, TypeError, OverflowError, RecursionError):
        return None


def state_path(repo: Repository, name: str) -> Path:
    return repo.root / STATE_DIR / f"{name}.json"


def read_state(path: Path) -> tuple[State | None, bool]:
    """The state at ``path``, and whether something is there (a file to replace, even if unreadable).

    Never follows a link nor blocks on a FIFO.
    """
    try:
        raw = read_regular(path, _MAX_BYTES)[0]
    except FileNotFoundError:
        return None, False
    except NotARegularFile:  # a link, a FIFO, a folder, too large: there, but no state
        return None, True
    except OSError:
        return None, os.path.lexists(path)
    return parse_state(raw), True


def write_state(repo: Repository, path: Path, doc: dict[str, Any], *, create: bool) -> None:
    """Write a state document: with ``create`` only if none is there (``FileExistsError`` otherwise)."""
    try:
        path.parent.mkdir(exist_ok=True)
    except FileExistsError as exc:  # a file or a dangling link in the way: no other worker's state
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(path.parent)) from exc
    publish(dumps(doc), repo.temp_path("schedule"), path, repo.durability, replace=not create)
