"""``spoolpipe inspect``: one activity's whole story, from wherever its files are.

Looks only where spoolpipe puts an id's files (``done/ID.json``, ``failed/ID.json``,
``inbox/ID.json`` and ``inbox/ID~...``, claims ``running/ID~...``, quarantined
copies ``invalid/ID.json~...`` and ``invalid/ID~...``, logs
``logs/activities/ID~N.log``): a copy a person dropped under another name is
known only once a worker has claimed it. One listing of ``inbox/``, ``running/``
and ``invalid/`` serves the activity, its parent and its follow-ups.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Literal

from ..activity import (
    ClaimName,
    attempt_log_name,
    derived_id,
    is_valid_name,
    parse_inbox_name,
    parse_running_name,
    printable,
)
from ..attempt_notes import read_note
from ..repository import Repository
from .reading import invalid_reason, iso, lstat, moment, names, read_document, shared_now, tail, text

#: Where an activity is: ``delayed`` is in the inbox with a ``not_before`` (or retry backoff) ahead.
Where = Literal["done", "failed", "running", "inbox", "delayed", "invalid"]
#: Lines and bytes of each attempt log shown inline.
LOG_TAIL_LINES = 20
LOG_TAIL_BYTES = 8 << 10
#: Follow-ups looked up at most; attempt logs looked for at most.
_FOLLOW_UPS_MAX = 1000
_ATTEMPTS_MAX = 1000
_HEARTBEAT_BYTES = 1 << 20


@dataclass
class _Index:
    """The names of ``inbox/``, ``running/`` and ``invalid/`` by the id they belong to, listed once."""

    repo: Repository
    now: float
    inbox: dict[str, list[str]] = field(default_factory=dict)
    running: dict[str, list[str]] = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in names(self.repo.inbox):
            self.inbox.setdefault(parse_inbox_name(name).stem, []).append(name)
        for name in names(self.repo.running):
            parsed = parse_running_name(name)
            if parsed is not None and parsed.kind in (None, "committed"):
                self.running.setdefault(parsed.claim.activity_id, []).append(name)
        self.invalid = names(self.repo.invalid)

    def locations(self, activity_id: str) -> list[tuple[Where, str]]:
        """Every place a file of this id is, in the order its state is judged by: names as they are
        (anyone may make one with escapes in it), to be escaped when shown."""
        found: list[tuple[Where, str]] = []
        for state in ("done", "failed"):
            if lstat(self.repo.root / state / f"{activity_id}.json") is not None:
                found.append((state, f"{state}/{activity_id}.json"))
        found += [("running", f"running/{n}") for n in sorted(self.running.get(activity_id, ()))]
        for name in sorted(self.inbox.get(activity_id, ())):
            due = parse_inbox_name(name).not_before_ms
            doc = read_document(self.repo.inbox / name)
            named = doc.get("not_before") if doc is not None else None
            later = (due is not None and due / 1000 > self.now) or (moment(named) or 0.0) > self.now
            found.append(("delayed" if later else "inbox", f"inbox/{name}"))
        found += [
            ("invalid", f"invalid/{n}")
            for n in sorted(self.invalid)
            if n.startswith((f"{activity_id}.json~", f"{activity_id}~"))
        ]
        return found

    def state(self, activity_id: str) -> Where | None:
        where = self.locations(activity_id)
        return where[0][0] if where else None

    def document(self, where: list[tuple[Where, str]]) -> dict[str, Any] | None:
        for state, path in where:
            if state != "invalid":
                doc = read_document(self.repo.root / path)
                if doc is not None:
                    return doc
        return None


def _linked(index: _Index, value: object) -> dict[str, Any] | None:
    """An id another document names (untrusted), with its state and type where it is found."""
    if value is None:
        return None
    if not is_valid_name(value):
        return {"id": printable(str(value))[:300], "state": None, "type": None, "valid": False}
    assert isinstance(value, str)
    where = index.locations(value)
    doc = index.document(where)
    return {
        "id": value,
        "state": where[0][0] if where else None,
        "type": text(doc.get("type")) if doc is not None else None,
        "valid": True,
    }


_ATTEMPT_FIELDS = ("worker", "host", "started_at", "finished_at", "outcome", "error")


def _entry(run: int, attempt: int, **known: str | None) -> dict[str, Any]:
    """An attempt as ``--json`` shows it: every field, ``null`` where the repository does not say."""
    return {"run": run, "attempt": attempt} | {k: known.get(k) for k in _ATTEMPT_FIELDS}


def _attempt(entry: object, run: int) -> dict[str, Any] | None:
    """One entry of an attempt history (untrusted), escaped."""
    if not isinstance(entry, dict) or not isinstance(entry.get("attempt"), int):
        return None
    return _entry(run, entry["attempt"], **{k: text(entry.get(k)) for k in _ATTEMPT_FIELDS})


def _summary(section: dict[str, Any], run: int) -> dict[str, Any] | None:
    """A record (or history entry) written before attempt histories were kept: its last attempt."""
    return _attempt(
        {
            "attempt": section.get("attempts"),
            "worker": section.get("worker"),
            "host": section.get("host"),
            "started_at": section.get("started_at"),
            "finished_at": section.get("finished_at"),
            "outcome": section.get("status"),
            "error": section.get("reason"),
        },
        run,
    )


def _run_attempts(section: dict[str, Any], run: int) -> list[dict[str, Any]]:
    history = section.get("attempt_history")
    if isinstance(history, list):
        return [a for a in (_attempt(e, run) for e in history[:_ATTEMPTS_MAX]) if a is not None]
    last = _summary(section, run)
    return [last] if last is not None else []


def _attempts(
    repo: Repository, activity_id: str, doc: dict[str, Any], where: list[tuple[Where, str]]
) -> list[dict[str, Any]]:
    """Every attempt, of earlier runs (before ``spoolpipe retry``) first, then of this one."""
    section = doc.get("spoolpipe")
    section = section if isinstance(section, dict) else {}
    earlier = section.get("history")
    earlier = [h for h in earlier if isinstance(h, dict)] if isinstance(earlier, list) else []
    attempts = [a for run, h in enumerate(earlier) for a in _run_attempts(h, run)]
    run = len(earlier)
    if where[0][0] in ("done", "failed"):
        return attempts + _run_attempts(section, run)
    state, path = where[0]
    name = path.split("/", 1)[1]
    parsed = parse_running_name(name) if state == "running" else None
    current = parsed.claim.attempt if parsed is not None else parse_inbox_name(name).attempt
    for number in range(max(1, current - _ATTEMPTS_MAX), current):
        note = read_note(repo.logs, activity_id, number, run)
        attempts.append(_attempt(note, run) or _entry(run, number, outcome="unknown"))
    if parsed is not None:
        attempts.append(_running(repo, parsed.claim, run))
    return attempts


def _running(repo: Repository, claim: ClaimName, run: int) -> dict[str, Any]:
    """The attempt running now, with its host and start if its worker's heartbeat says (untrusted)."""
    known: dict[str, str | None] = {"worker": claim.worker, "outcome": "running"}
    heartbeat = read_document(repo.heartbeats / f"{claim.worker}.json", _HEARTBEAT_BYTES) or {}
    listed = heartbeat.get("activities")
    for entry in listed if isinstance(listed, list) else []:
        if isinstance(entry, dict) and entry.get("id") == claim.activity_id:
            known |= {"host": text(heartbeat.get("host")), "started_at": text(entry.get("started_at"))}
    return _entry(run, claim.attempt, **known)


def _logs(repo: Repository, activity_id: str, attempts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    highest = max((a["attempt"] for a in attempts), default=1)
    logs = []
    for number in range(1, min(highest, _ATTEMPTS_MAX) + 1):
        name = attempt_log_name(activity_id, number)
        path = repo.logs / "activities" / name
        st = lstat(path)
        if st is None:
            continue
        logs.append(
            {
                "attempt": number,
                "path": f"logs/activities/{name}",
                "bytes": st.st_size,
                "tail": tail(path, LOG_TAIL_BYTES, LOG_TAIL_LINES) or [],
            }
        )
    return logs


def _follow_ups(index: _Index, doc: dict[str, Any], state: Where) -> list[dict[str, Any]]:
    """The follow-ups a record lists (found or not) and, for a failure, its failure activity if found."""
    section = doc.get("spoolpipe")
    section = section if isinstance(section, dict) else {}
    listed = section.get("follow_ups")
    ids = listed[:_FOLLOW_UPS_MAX] if isinstance(listed, list) else []
    found = [link for link in map(functools.partial(_linked, index), ids) if link is not None]
    finished = section.get("finished_at")
    if state == "failed" and isinstance(finished, str) and isinstance(doc.get("id"), str):
        # Its id is derived from the failed record; there is none when failures.handler is empty.
        failure = _linked(index, derived_id(doc["id"], "failure", finished))
        if failure is not None and failure["state"] is not None:
            found.append(failure)
    return found


def _follow_ups_left_out(section: dict[str, Any]) -> int:
    """How many of the follow-ups a record lists are past the first ``_FOLLOW_UPS_MAX``, not looked up."""
    listed = section.get("follow_ups")
    return max(0, len(listed) - _FOLLOW_UPS_MAX) if isinstance(listed, list) else 0


def _multiline(value: object) -> str | None:
    """A traceback (untrusted): each line escaped, the lines kept."""
    return "\n".join(printable(line) for line in value.splitlines()) if isinstance(value, str) else None


def story(repo: Repository, activity_id: str) -> dict[str, Any] | None:
    """Everything known about one activity (what ``inspect --json`` prints); None for an unknown id."""
    if not is_valid_name(activity_id):
        return None
    now = shared_now(repo)
    index = _Index(repo, now)
    where = index.locations(activity_id)
    if not where:
        return None
    state = where[0][0]
    doc = index.document(where) or {}
    section = doc.get("spoolpipe")
    section = section if isinstance(section, dict) else {}
    attempts = _attempts(repo, activity_id, doc, where) if state != "invalid" else []
    reason = invalid_reason(repo.root / where[0][1]) if state == "invalid" else text(section.get("reason"))
    return {
        "id": activity_id,
        "state": state,
        "locations": [{"state": s, "path": printable(p)} for s, p in where],
        "type": text(doc.get("type")),
        "data": doc.get("data"),
        "not_before": text(doc.get("not_before")),
        "status": text(section.get("status")),
        "attempts": attempts,
        "logs": _logs(repo, activity_id, attempts),
        "result": doc.get("result"),
        "reason": reason,
        "traceback": _multiline(section.get("traceback")),
        "started_at": text(section.get("started_at")),
        "finished_at": text(section.get("finished_at")),
        "parent": _linked(index, doc.get("parent")),
        "follow_ups": _follow_ups(index, doc, state),
        "follow_ups_left_out": _follow_ups_left_out(section),
        "now": iso(now),
    }
