"""What spoolpipe writes about an activity once it is settled: pure document builders.

A record keeps the activity's own fields (so a failed record can be moved back
to the inbox as it is) and adds ``result`` and a ``spoolpipe`` section.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .activity import DEFAULT_PRIORITY, Activity, derived_id, format_time, nesting
from .outcome import Ending
from .storable import MAX_DEPTH, bounded_text, encode, reason_line

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


#: How an attempt ended, in ``spoolpipe.attempt_history``: ``unknown`` when nothing was recorded for it
#: (its worker died, or its note under ``logs/activities/`` is gone).
AttemptOutcome = Literal[Ending, "unknown"]
#: ``spoolpipe.status`` of a record: in ``done/`` (done or skipped) or ``failed/``.
RecordStatus = Literal["done", "skipped", "failed"]


def attempt_entry(number: int, attempt: Attempt, outcome: AttemptOutcome, error: str = "") -> dict[str, Any]:
    """One attempt as ``spoolpipe.attempt_history`` lists it; ``error`` becomes one bounded line."""
    entry: dict[str, Any] = {
        "attempt": number,
        "worker": attempt.worker,
        "host": attempt.host,
        "started_at": format_time(attempt.started),
        "finished_at": format_time(attempt.finished),
        "outcome": outcome,
    }
    if error:
        entry["error"] = reason_line(error)
    return entry


def _section(
    activity: Activity,
    attempt: Attempt,
    status: RecordStatus,
    earlier: Sequence[Mapping[str, Any]],
    error: str = "",
) -> dict[str, Any]:
    this = attempt_entry(activity.attempt, attempt, status, error)
    section: dict[str, Any] = {
        "status": status,
        "attempts": activity.attempt,
        "worker": attempt.worker,
        "host": attempt.host,
        "pid": attempt.pid,
        "started_at": this["started_at"],
        "finished_at": this["finished_at"],
    }
    if activity.history:
        section["history"] = [dict(h) for h in activity.history]
    section["attempt_history"] = [*(dict(e) for e in earlier), this]
    return section


def done_record(
    activity: Activity,
    attempt: Attempt,
    result: Any,
    follow_up_ids: list[str],
    earlier: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The record of a success; ``earlier``: the attempts before this one (``attempt_entry``)."""
    doc = activity.to_json()
    doc.pop("not_before", None)
    doc["result"] = result
    section = _section(activity, attempt, "done", earlier)
    section["follow_ups"] = follow_up_ids
    doc["spoolpipe"] = section
    return doc


def skipped_record(
    activity: Activity, attempt: Attempt, reason: str, earlier: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """The ``done/`` record of an activity its processor had nothing to do for (``Skip``):
    status ``skipped``, its reason, no result and no follow-ups."""
    doc = activity.to_json()
    doc.pop("not_before", None)
    doc["result"] = None
    section = _section(activity, attempt, "skipped", earlier)
    section["reason"] = reason_line(reason)
    section["follow_ups"] = []
    doc["spoolpipe"] = section
    return doc


def failed_record(
    activity: Activity,
    attempt: Attempt,
    reason: str,
    traceback: str,
    earlier: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The record of a failure; ``reason`` becomes one bounded line, ``traceback`` is bounded too."""
    doc = activity.to_json()
    doc.pop("not_before", None)
    section = _section(activity, attempt, "failed", earlier, reason)
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
    """A follow-up whose id depends only on its parent and key, so a repeated commit cannot double it.

    ``parent`` names the activity that made it (``inspect`` links the two).
    """
    extra = {"parent": parent.id}
    follow_up = Activity(
        derived_id(parent.id, key), type_, dict(data), 1, not_before, extra, priority=priority
    )
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
    document = Activity(failure_id, handler, {"failed": failed}, extra={"parent": record["id"]}).to_json()
    for field in OMITTABLE:
        # ``data`` sits two levels down in the failure activity's data, which nests at most MAX_DEPTH.
        too_deep = field == "data" and nesting(failed["data"]) > MAX_DEPTH - 2
        if not too_deep and len(encode(document)) <= limit:
            break
        del document["data"]["failed"][field]
        document["data"]["failed"]["omitted"].append(field)
    return document
