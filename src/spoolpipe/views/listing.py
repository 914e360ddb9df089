"""``spoolpipe list``: one entry per activity in a state, newest first.

Entries are ordered by the age of their file (an inbox file's modification time,
a claim's rename into ``running/``, a record's publication, a quarantine), judged
by the shared file system's clock; only as many files as are shown are read.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Literal, get_args

from .. import config
from ..activity import is_ignored, parse_inbox_name, parse_running_name, printable
from ..repository import Found, Rejected, Repository
from .reading import age, integer, invalid_reason, iso, read_document, shared_now, text

State = Literal["inbox", "running", "done", "failed", "invalid"]
STATES: tuple[State, ...] = get_args(State)
#: Largest claim file read (for its type) when the configuration is not loaded.
_LIMIT = 1 << 20


def entries(
    repo: Repository,
    state: State,
    *,
    type_: str | None = None,
    since: float | None = None,
    limit: int | None = None,
    chars: int | None = None,
) -> list[dict[str, Any]]:
    """The activities in ``state``, newest first: ``type_`` only, at most ``since`` seconds old,
    at most ``limit`` of them (what ``list --json`` prints; fields in docs/operations.md); each text
    read from a record cut to ``chars`` (the status page shows no more)."""
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}; expected one of {', '.join(STATES)}")
    now = shared_now(repo)
    directory = repo.root / state
    # What a worker reads of an inbox file: a larger one is junk, and said to be.
    activity_bytes = config.load(repo.root).settings.limits_activity_bytes if state == "inbox" else _LIMIT
    dated = []
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as listing:
        for item in listing:
            if not _listed(state, item.name):
                continue
            try:
                st = item.stat(follow_symlinks=False)
            except OSError:  # gone since the listing
                continue
            # A rename changes an inode's ctime: a claim's is when it was claimed.
            when = st.st_ctime if state == "running" else st.st_mtime
            if since is None or now - when <= since:
                dated.append((when, item.name))
    dated.sort(key=lambda pair: (-pair[0], pair[1]))
    found: list[dict[str, Any]] = []
    for when, name in dated:
        if limit is not None and len(found) >= limit:
            break
        entry = _ENTRY[state](repo, directory, name, activity_bytes, chars)
        if type_ is not None and entry["type"] != printable(type_):
            continue
        found.append(
            {"state": state, "path": f"{state}/{printable(name)}", "age_seconds": age(now, when)}
            | {"at": iso(when)}
            | entry
        )
    return found


def _listed(state: State, name: str) -> bool:
    """Whether a name in the state's directory is an entry of that state, by the names spoolpipe gives."""
    if state == "inbox":
        return not is_ignored(name)
    if state == "running":
        parsed = parse_running_name(name)
        return parsed is not None and parsed.kind in (None, "committed")
    return state == "invalid" or name.endswith(".json")


def _inbox(
    repo: Repository, directory: Path, name: str, activity_bytes: int, chars: int | None
) -> dict[str, Any]:
    read = repo.read(name, limit=activity_bytes)
    queued = parse_inbox_name(name)
    if isinstance(read, Found):
        activity = read.activity
        return {
            "id": printable(activity.id),
            "type": printable(activity.type),
            "attempts": activity.attempt,
            "not_before": iso(activity.not_before),
            "reason": None,
        }
    reason = read.reason if isinstance(read, Rejected) else "gone"
    return {
        "id": printable(queued.stem),
        "type": None,
        "attempts": queued.attempt,
        "not_before": None,
        "reason": printable(reason),
    }


def _running(
    repo: Repository, directory: Path, name: str, activity_bytes: int, chars: int | None
) -> dict[str, Any]:
    parsed = parse_running_name(name)
    assert parsed is not None  # listed only if it parses
    claim = parsed.claim
    doc = read_document(directory / name, activity_bytes) if parsed.kind is None else None
    return {
        "id": claim.activity_id,
        "type": text(doc.get("type"), chars) if doc is not None else None,
        "attempts": claim.attempt,
        "worker": claim.worker,
        "committed": parsed.kind == "committed",
        "reason": None,
    }


def _record(
    repo: Repository, directory: Path, name: str, activity_bytes: int, chars: int | None
) -> dict[str, Any]:
    record = read_document(directory / name)
    record = record if record is not None else {}
    section = record.get("spoolpipe")
    section = section if isinstance(section, dict) else {}
    return {
        "id": text(record.get("id"), chars) or printable(name[: -len(".json")]),
        "type": text(record.get("type"), chars),
        "attempts": integer(section.get("attempts")),
        "status": text(section.get("status"), chars),
        "worker": text(section.get("worker"), chars),
        "finished_at": text(section.get("finished_at"), chars),
        "reason": text(section.get("reason"), chars),
    }


def _invalid(
    repo: Repository, directory: Path, name: str, activity_bytes: int, chars: int | None
) -> dict[str, Any]:
    return {"id": None, "type": None, "attempts": None, "reason": invalid_reason(directory / name)}


_ENTRY = {"inbox": _inbox, "running": _running, "done": _record, "failed": _record, "invalid": _invalid}
