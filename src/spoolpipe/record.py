"""What spoolpipe writes about an activity once it is settled: pure document builders.

A record keeps the activity's own fields (so a failed record can be moved back
to the inbox as it is) and adds ``result`` and a ``spoolpipe`` section.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .activity import DEFAULT_PRIORITY, Activity, derived_id, format_time
from .storable import bounded_text, encode, reason_line

#: What a failure activity leaves out, in this order, when it would exceed limits.activity-bytes.
OMITTABLE = ("data", "traceback")


@dataclass(frozen=True)
class Attempt:
    """Who ran an attempt and when."""

    worker: str
    host: str
    pid: int
    started: float
    finished: float


def _section(activity: Activity, attempt: Attempt, status: str) -> dict[str, Any]:
    section: dict[str, Any] = {
        "status": status,
        "attempts": activity.attempt,
        "worker": attempt.worker,
        "host": attempt.host,
        "pid": attempt.pid,
        "started_at": format_time(attempt.started),
        "finished_at": format_time(attempt.finished),
    }
    if activity.history:
        section["history"] = [dict(h) for h in activity.history]
    return section


def done_record(
    activity: Activity, attempt: Attempt, result: Any, follow_up_ids: list[str]
) -> dict[str, Any]:
    doc = activity.to_json()
    doc.pop("not_before", None)
    doc["result"] = result
    section = _section(activity, attempt, "done")
    section["follow_ups"] = follow_up_ids
    doc["spoolpipe"] = section
    return doc


def failed_record(activity: Activity, attempt: Attempt, reason: str, traceback: str) -> dict[str, Any]:
    """The record of a failure; ``reason`` becomes one bounded line, ``traceback`` is bounded too."""
    doc = activity.to_json()
    doc.pop("not_before", None)
    section = _section(activity, attempt, "failed")
    section["reason"] = reason_line(reason)
    section["traceback"] = bounded_text(traceback)
    doc["spoolpipe"] = section
    return doc


def follow_up_document(
    parent: Activity,
    type_: str,
    data: Mapping[str, Any],
    key: str,
    not_before: float | None,
    priority: int = DEFAULT_PRIORITY,
) -> dict[str, Any]:
    """A follow-up whose id depends only on its parent and key, so a repeated commit cannot double it."""
    follow_up = Activity(derived_id(parent.id, key), type_, dict(data), 1, not_before, priority=priority)
    return follow_up.to_json()


def failure_document(handler: str, record: Mapping[str, Any], limit: int) -> dict[str, Any]:
    """The activity handed to the failure processor, at most ``limit`` bytes as written.

    What would make it larger is left out, ``data`` first, then ``traceback``, and named in
    ``omitted``: the failure processor reads it from the failed record instead.
    """
    section = record["spoolpipe"]
    failed = {
        "id": record["id"],
        "type": record["type"],
        "data": record["data"],
        "reason": section["reason"],
        "traceback": section["traceback"],
        "attempts": section["attempts"],
        "worker": section["worker"],
        "host": section["host"],
        "failed_at": section["finished_at"],
        "record": f"failed/{record['id']}.json",
        "omitted": [],
    }
    # The failure time is part of the id: the same activity may fail again after `spoolpipe retry`.
    failure_id = derived_id(record["id"], "failure", section["finished_at"])
    document = Activity(failure_id, handler, {"failed": failed}).to_json()
    for field in OMITTABLE:
        if len(encode(document)) <= limit:
            break
        del document["data"]["failed"][field]
        document["data"]["failed"]["omitted"].append(field)
    return document
