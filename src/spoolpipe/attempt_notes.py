"""What each attempt of an activity did, kept until its record is written.

An activity file is only ever renamed (its id's reservation is a hard link to
it), so an attempt that ends in a retry cannot be written into it: the pool
process leaves a small note beside the attempt's log instead,
``logs/activities/ID~N.attempt.json``, and the record written in ``done/`` or
``failed/`` gathers them into ``spoolpipe.attempt_history``. A note is best
effort: one that is missing (its worker died mid-attempt, or it was purged)
shows as an attempt whose outcome is ``unknown``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from .activity import Activity, InvalidActivity, attempt_stem, new_id, parse_document
from .repository import dumps
from .untrusted import read_regular

#: A note's name after ``ID~N``; retention purges notes with the attempt logs (``retention.logs``).
NOTE_SUFFIX = ".attempt.json"
#: Largest note read back.
_NOTE_BYTES = 64 << 10
#: Earlier attempts a record lists at most (the latest ones): an inbox name may claim any attempt number.
EARLIER_MAX = 50
_TEXT_FIELDS = ("worker", "host", "started_at", "finished_at", "outcome", "error")


def note_path(logs: Path, activity_id: str, attempt: int) -> Path:
    return logs / "activities" / f"{attempt_stem(activity_id, attempt)}{NOTE_SUFFIX}"


def write_note(logs: Path, tmp: Path, activity: Activity, entry: dict[str, Any]) -> None:
    """Keep ``entry`` (``record.attempt_entry``) for the record; a note that cannot be written is lost."""
    note = {**entry, "run": len(activity.history)}
    staged = tmp / f"note.{new_id()}.tmp"
    with contextlib.suppress(OSError):
        staged.write_bytes(dumps(note))
        os.replace(staged, note_path(logs, activity.id, activity.attempt))
    with contextlib.suppress(OSError):
        staged.unlink()


def read_note(logs: Path, activity_id: str, attempt: int, run: int) -> dict[str, Any] | None:
    """The note of attempt ``attempt`` in run ``run`` (how many times ``spoolpipe retry`` requeued it)."""
    path = note_path(logs, activity_id, attempt)
    try:
        note = parse_document(read_regular(path, _NOTE_BYTES)[0])
    except (OSError, InvalidActivity):  # a FIFO, a link, /dev/zero...: as if missing
        return None
    if note.get("run") != run or note.get("attempt") != attempt:
        return None
    # Anyone may write under logs/: only fields of the expected kinds go into a record.
    return {"attempt": attempt} | {k: note[k] for k in _TEXT_FIELDS if isinstance(note.get(k), str)}


def earlier_attempts(logs: Path, activity: Activity) -> list[dict[str, Any]]:
    """The attempts of this run before ``activity.attempt`` (the last ``EARLIER_MAX``), oldest first,
    ``unknown`` where no note is left."""
    run = len(activity.history)
    return [
        read_note(logs, activity.id, n, run) or {"attempt": n, "outcome": "unknown"}
        for n in range(max(1, activity.attempt - EARLIER_MAX), activity.attempt)
    ]
