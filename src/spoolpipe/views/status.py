"""``spoolpipe status``: counts, waiting work, live workers and what looks wrong, at a bounded cost.

What it reads, so that it stays cheap on a deep inbox: one listing of each state
directory; one ``lstat`` per inbox entry (its age) and the names themselves (a
retry's attempt and earliest start are in its name); the contents of at most
``INBOX_READS`` inbox files, oldest first (their type, and a person's
``not_before``); every heartbeat; done records only while ``done/`` holds at
most ``DONE_READS`` of them (their ``status``); claim files only when no live
heartbeat says what they run.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .. import config
from ..activity import (
    InvalidActivity,
    activity_from_document,
    is_ignored,
    parse_inbox_name,
    parse_running_name,
    printable,
)
from ..circuit import published_circuits
from ..processor import timeout_for
from ..repository import Repository
from .reading import age, integer, iso, lstat, moment, names, read_document, shared_now, text

#: Inbox files whose contents one ``status`` reads at most (the oldest first).
INBOX_READS = 10_000
#: ``done/`` records read for their ``status`` (done, skipped...) only while there are at most this many.
DONE_READS = 10_000
#: Largest heartbeat document read.
_HEARTBEAT_BYTES = 1 << 20


def status(repo: Repository) -> dict[str, Any]:
    """Everything ``status --json`` prints (the schema is in docs/operations.md)."""
    settings = config.load(repo.root).settings
    now = shared_now(repo)
    workers = live_workers(repo, settings, now)
    claims = [p.claim for p in map(parse_running_name, names(repo.running)) if p is not None]
    waiting = _waiting(repo, settings, now)
    handled = {t for w in workers for t, n in w["types"].items() if n > 0}
    hosts: dict[str, list[str]] = {}
    for w in workers:
        hosts.setdefault(w["host"] or "", []).append(w["worker"] or "")
    return {
        "repository": printable(str(repo.root)),
        "now": iso(now),
        "counts": {
            "inbox": waiting.total,
            "running": len(set(claims)),
            "done": repo.count(repo.done),
            "failed": repo.count(repo.failed),
            "invalid": repo.count(repo.invalid),
        },
        "inbox": {
            "ready": waiting.ready,
            "delayed": waiting.delayed,
            "unreadable": waiting.unreadable,
            "oldest_waiting_seconds": age(now, waiting.oldest_written),
            "oldest_ready_seconds": age(now, waiting.oldest_due),
            "oldest_ready": waiting.oldest_due_name,
            "read": waiting.read,
            "complete": waiting.read + waiting.named_only == waiting.total,
        },
        "inbox_by_type": dict(sorted(waiting.types.items())),
        "done_by_status": done_by_status(repo),
        "workers": workers,
        "hosts": dict(sorted(hosts.items())),
        "stuck": stuck_claims(repo, settings, workers, now),
        "unhandled_types": sorted(t for t in waiting.types if t not in handled),
        "circuits": sorted(
            (c for w in workers for c in w["circuits"]), key=lambda c: (c["type"], c["worker"])
        ),
    }


# -- waiting work ------------------------------------------------------------------------------------


@dataclass
class _Waiting:
    total: int = 0
    ready: int = 0
    delayed: int = 0
    unreadable: int = 0
    read: int = 0
    #: Entries whose name alone says they are delayed: they need no read to be counted.
    named_only: int = 0
    oldest_written: float | None = None
    oldest_due: float | None = None
    oldest_due_name: str | None = None

    def __post_init__(self) -> None:
        self.types: Counter[str] = Counter()

    def count(self, name: str, written: float, due: float, now: float) -> None:
        if due > now:
            self.delayed += 1
            return
        self.ready += 1
        since = max(written, due)
        if self.oldest_due is None or since < self.oldest_due:
            self.oldest_due, self.oldest_due_name = since, printable(name)


def _waiting(repo: Repository, settings: config.Settings, now: float) -> _Waiting:
    waiting = _Waiting()
    found: list[tuple[float, str]] = []
    with contextlib.suppress(FileNotFoundError), os.scandir(repo.inbox) as listing:
        for entry in listing:
            if is_ignored(entry.name):
                continue
            try:
                found.append((entry.stat(follow_symlinks=False).st_mtime, entry.name))
            except OSError:  # gone since the listing
                continue
    waiting.total = len(found)
    found.sort()
    waiting.oldest_written = found[0][0] if found else None
    for written, name in found:
        queued = parse_inbox_name(name)
        named_due = queued.not_before_ms / 1000 if queued.not_before_ms is not None else 0.0
        if waiting.read >= INBOX_READS:  # judged by its name only
            waiting.named_only += named_due > now
            waiting.count(name, written, named_due, now)
            continue
        waiting.read += 1
        doc = read_document(repo.inbox / name, settings.limits_activity_bytes)
        try:  # judged as a worker judges it
            activity = activity_from_document(doc, queued) if doc is not None else None
        except InvalidActivity:
            activity = None
        if activity is None:  # not an activity (yet): a worker quarantines it once it is settled
            waiting.unreadable += 1
            continue
        waiting.types[activity.type] += 1
        waiting.count(name, written, activity.not_before or 0.0, now)
    return waiting


def done_by_status(repo: Repository) -> dict[str, int] | None:
    """Done records by their ``spoolpipe.status`` (``done``; ``skipped`` where a processor skipped one).

    None once ``done/`` holds more than ``DONE_READS`` records: counting them would read them all.
    """
    listed = [n for n in names(repo.done) if n.endswith(".json")]
    if len(listed) > DONE_READS:
        return None
    found: Counter[str] = Counter()
    for name in listed:
        record = read_document(repo.done / name)
        section = record.get("spoolpipe") if record is not None else None
        value = text(section.get("status")) if isinstance(section, dict) else None
        found[value or "unknown"] += 1
    return dict(sorted(found.items()))


# -- workers -----------------------------------------------------------------------------------------


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _running_now(entries: object, now: float) -> list[dict[str, Any]]:
    """What a heartbeat says its worker runs now, each with how long it has run (untrusted input)."""
    running = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or text(entry.get("id")) is None:
            continue
        started = moment(entry.get("started_at"))
        running.append(
            {
                "id": text(entry.get("id")),
                "type": text(entry.get("type")),
                "attempt": integer(entry.get("attempt")),
                "started_at": iso(started),
                "running_seconds": age(now, started),
                "timeout_seconds": _seconds(entry.get("timeout_seconds")),
            }
        )
    return running


def _heartbeat(doc: dict[str, Any], mtime: float, now: float) -> dict[str, Any]:
    types = doc.get("types")
    running = doc.get("running")
    return {
        "worker": text(doc.get("worker")),
        "host": text(doc.get("host")),
        "pid": integer(doc.get("pid")),
        "started_at": text(doc.get("started_at")),
        "lock_mode": text(doc.get("lock_mode")),
        "pool_size": integer(doc.get("pool_size")),
        "types": {
            printable(str(t)): n
            for t, n in (types.items() if isinstance(types, dict) else ())
            if integer(n) is not None
        },
        "running": [printable(r) for r in running if isinstance(r, str)] if isinstance(running, list) else [],
        "activities": _running_now(doc.get("activities"), now),
        "circuits": published_circuits([doc]),
        "last_seen_seconds": round(max(0.0, now - mtime), 1),
    }


def live_workers(repo: Repository, settings: config.Settings, now: float) -> list[dict[str, Any]]:
    """Workers whose heartbeat is recent by the shared clock, by worker id."""
    horizon = settings.heartbeat_silence_seconds
    live = []
    for name in sorted(names(repo.heartbeats)):
        if not name.endswith(".json") or name.startswith("."):
            continue
        st = lstat(repo.heartbeats / name)
        doc = read_document(repo.heartbeats / name, _HEARTBEAT_BYTES)
        if st is None or doc is None or now - st.st_mtime > horizon:
            continue
        if doc.get("worker") != name[: -len(".json")]:  # a note, a copy: anyone may write here
            continue
        live.append(_heartbeat(doc, st.st_mtime, now))
    return live


def stuck_claims(
    repo: Repository, settings: config.Settings, workers: list[dict[str, Any]], now: float
) -> list[dict[str, Any]]:
    """Claims running past their type's timeout, and claims of workers that are not alive."""
    alive = {w["worker"]: w for w in workers}
    stuck = []
    for name in sorted(names(repo.running)):
        parsed = parse_running_name(name)
        if parsed is None or parsed.kind is not None:
            continue
        claim = parsed.claim
        owner = alive.get(claim.worker)
        listed = owner["activities"] if owner else []
        running = next((a for a in listed if a["id"] == claim.activity_id), None)
        entry: dict[str, Any] = {
            "id": claim.activity_id,
            "attempt": claim.attempt,
            "worker": claim.worker,
            "path": f"running/{name}",
        }
        if running is not None and running["running_seconds"] is not None:
            timeout, seconds, type_ = running["timeout_seconds"], running["running_seconds"], running["type"]
        else:
            st = lstat(repo.running / name)
            if st is None:
                continue
            doc = read_document(repo.running / name, settings.limits_activity_bytes)
            type_ = text(doc.get("type")) if doc is not None else None
            # A claim's inode changes time when it is renamed into running/: when it was claimed.
            seconds = age(now, st.st_ctime)
            timeout = timeout_for(settings, type_ or "")
        if owner is None:
            why = f"its worker {claim.worker} is not alive: the next worker to scan recovers it"
        elif timeout is not None and seconds is not None and seconds > timeout:
            why = "running past its timeout"
        else:
            continue
        found = {"type": type_, "running_seconds": seconds, "timeout_seconds": timeout, "why": why}
        stuck.append(entry | found)
    return stuck
