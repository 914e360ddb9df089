"""The pure core: what retention may touch, what is expired, which archive it goes to, what a purge did."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, get_args

from ..activity import ATTEMPT_PATTERN, NAME_PATTERN, is_invalid_entry_name
from ..attempt_notes import NOTE_SUFFIX
from ..config import Settings

#: What retention cleans up, each with its own ``retention.<state>`` limit.
State = Literal["done", "failed", "invalid", "logs"]
STATES: tuple[State, ...] = get_args(State)
#: Where each state's entries live, relative to the repository.
STATE_DIRS: Mapping[State, str] = {
    "done": "done",
    "failed": "failed",
    "invalid": "invalid",
    "logs": "logs/activities",
}
ARCHIVE_DIR = "archive"

_RECORD = re.compile(rf"\A({NAME_PATTERN})\.json\Z")
#: An attempt log ``ID~N.log``, or the attempt's note beside it: they go together.
_ATTEMPT_LOG = re.compile(rf"\A({NAME_PATTERN})~{ATTEMPT_PATTERN}(?:\.log|{re.escape(NOTE_SUFFIX)})\Z")
#: The names :func:`archive_name` gives.
ARCHIVE_PATTERN = re.compile(
    r"\A(?:done|failed|invalid|logs)-[0-9]{4}-[0-9]{2}-[0-9]{2}(?:\.[0-9]+)?\.tar\.gz\Z"
)


@dataclass(frozen=True)
class Entry:
    """One thing retention may remove: ``STATE_DIRS[state]/name``, last modified at ``mtime``."""

    state: State
    name: str
    mtime: float
    #: Its inode and size when it was found (0 and -1: not known): only that file may be taken.
    inode: int = field(default=0, compare=False)
    size: int = field(default=-1, compare=False)

    def is_of(self, ids: set[str]) -> bool:
        """Whether the entry belongs to an activity of ``ids`` (queued, running or reserved)."""
        return entry_id(self.state, self.name) in ids

    def is_still(self, st: os.stat_result) -> bool:
        """Whether ``st`` (an lstat) is the entry as it was found, so as old as it was then."""
        return (st.st_ino, st.st_size, st.st_mtime) == (self.inode, self.size, self.mtime)

    @property
    def path(self) -> str:
        """Relative to the repository, as it is named inside an archive."""
        return f"{STATE_DIRS[self.state]}/{self.name}"


def entry_id(state: State, name: str) -> str | None:
    """The activity id an entry belongs to; None for ``invalid/`` entries, which belong to none."""
    pattern = _ATTEMPT_LOG if state == "logs" else _RECORD if state != "invalid" else None
    m = pattern.match(name) if pattern is not None else None
    return m.group(1) if m else None


def is_entry(state: State, name: str) -> bool:
    """Whether retention may touch ``name`` in that state's directory: only names spoolpipe writes there.

    A record is ``ID.json``, an attempt log ``ID~N.log`` (its note ``ID~N.attempt.json``); an
    ``invalid/`` entry ``NAME~TOKEN`` (a folder an operator made there is not one).
    """
    if state == "invalid":
        return is_invalid_entry_name(name)
    return entry_id(state, name) is not None


def referenced_ids(name: str) -> set[str]:
    """The ids a name in ``inbox/``, ``running/`` or ``ids/`` may be of: its part before ``~``, and
    that part cut before each ``.json`` in it (``ID.json``, ``ID.json.part`` being written, and an id
    that itself holds ``.json``, ``rep.json.v2.json``). One too many protects more: never less."""
    stem = name.split("~", 1)[0]
    ids = {stem}
    at = stem.find(".json")
    while at != -1:
        ids.add(stem[:at])
        at = stem.find(".json", at + 1)
    return ids


def expired(
    entries: Iterable[Entry], limits: Mapping[State, float], now: float, protected: set[str]
) -> list[Entry]:
    """The entries older than their state's limit (seconds; ``math.inf``: forever) by ``now``.

    An entry of an id in ``protected`` (queued, running or reserved) is never expired.
    """
    found = []
    for entry in entries:
        if now - entry.mtime <= limits[entry.state]:
            continue
        if not entry.is_of(protected):
            found.append(entry)
    return found


def archive_name(state: State, mtime: float, number: int = 1) -> str:
    """``STATE-YYYY-MM-DD.tar.gz`` for the UTC day of ``mtime`` (``...-DD.N.tar.gz`` for ``number`` N > 1)."""
    day = datetime.fromtimestamp(min(max(mtime, 0.0), 253402300799.0), UTC).strftime("%Y-%m-%d")
    return f"{state}-{day}.tar.gz" if number == 1 else f"{state}-{day}.{number}.tar.gz"


def by_archive(entries: Iterable[Entry]) -> dict[str, list[Entry]]:
    """Entries grouped by the archive they go to, in name order."""
    groups: dict[str, list[Entry]] = {}
    for entry in sorted(entries, key=lambda e: (e.state, e.mtime, e.name)):
        groups.setdefault(archive_name(entry.state, entry.mtime), []).append(entry)
    return dict(sorted(groups.items()))


def limits_of(settings: Settings) -> dict[State, float]:
    return {
        "done": settings.retention_done,
        "failed": settings.retention_failed,
        "invalid": settings.retention_invalid,
        "logs": settings.retention_logs,
    }


def describe_age(seconds: float) -> str:
    """``3d 4h``, ``2h 5m``, ``40s``: an age for a person."""
    seconds = max(0, int(seconds))
    for unit, size, smaller, smaller_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} {seconds % size // smaller_size}{smaller}"
    return f"{seconds // 60}m" if seconds >= 60 else f"{seconds}s"


@dataclass
class Report:
    """What a purge did (or, dry, would do), for the command's output and the worker log."""

    dry_run: bool
    archive: bool
    #: Per state: the entries archived or deleted (dry: that would be).
    removed: dict[State, list[Entry]] = field(default_factory=lambda: {s: [] for s in STATES})
    #: Archive names (in ``archive/``) written to, per state.
    archives: dict[State, set[str]] = field(default_factory=lambda: {s: set() for s in STATES})
    #: Dry: the archive each entry would go into (the day's first may not be appendable).
    destinations: dict[Entry, str] = field(default_factory=dict)
    #: Entries a purge killed earlier had archived, deleted by this one.
    completed: int = 0
    #: One line per entry that could not be purged (it stays where it is).
    problems: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        """One line per state with anything to say."""
        verb = ("would archive" if self.archive else "would delete") if self.dry_run else None
        verb = verb or ("archived" if self.archive else "deleted")
        lines = []
        for state in STATES:
            count = len(self.removed[state])
            if count:
                names = sorted(self.archives[state])
                into = ", ".join(f"archive/{a}" for a in names)
                if len(names) > 3:
                    into = f"{len(names)} archives, archive/{names[0]} to archive/{names[-1]}"
                lines.append(f"{state}: {verb} {count}" + (f" into {into}" if into else ""))
        if self.completed:
            lines.append(f"deleted {self.completed} entries an interrupted purge had archived")
        return lines


def any_limit(settings: Settings) -> bool:
    return any(limit < math.inf for limit in limits_of(settings).values())
