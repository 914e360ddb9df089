"""The views as lines of text for a terminal: every value in them is already escaped by the views."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from ..circuit import status_lines as circuit_lines

#: Characters of a result or data shown inline by ``inspect`` (``--json`` has it all).
_INLINE_JSON = 2000


def duration(seconds: float | None) -> str:
    """``42s``, ``5m``, ``3h``, ``2d``: ages read at a glance."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}" if seconds >= 10 * size else f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"


def status_lines(report: dict[str, Any]) -> list[str]:
    counts, inbox = report["counts"], report["inbox"]
    lines = [
        f"repository {report['repository']}",
        "  " + "  ".join(f"{k} {v}" for k, v in counts.items()),
        f"  waiting: {inbox['ready']} ready, {inbox['delayed']} delayed"
        + (f", {inbox['unreadable']} not readable (yet)" if inbox["unreadable"] else "")
        + (
            f"; oldest ready waits {duration(inbox['oldest_ready_seconds'])} ({inbox['oldest_ready']})"
            if inbox["oldest_ready"]
            else ""
        )
        + (
            f"; oldest written {duration(inbox['oldest_waiting_seconds'])} ago"
            if inbox["oldest_waiting_seconds"] is not None
            else ""
        ),
    ]
    if not inbox["complete"]:
        lines.append(f"  (types and not_before read for the oldest {inbox['read']} inbox files only)")
    if report["done_by_status"]:
        lines.append(
            "  done by status: " + ", ".join(f"{k} {v}" for k, v in report["done_by_status"].items())
        )
    lines.append(f"workers alive: {len(report['workers'])}")
    for w in report["workers"]:
        types = ", ".join(f"{t} (concurrency {n})" for t, n in sorted(w["types"].items()))
        lines.append(
            f"  {w['worker']} on {w['host']} pid {w['pid']}, running {len(w['running'])}, "
            f"seen {w['last_seen_seconds']}s ago; types: {types}"
        )
        for a in w["activities"]:
            timeout = (
                f" (timeout {duration(a['timeout_seconds'])})" if a["timeout_seconds"] is not None else ""
            )
            lines.append(
                f"    runs {a['id']} ({a['type']}, attempt {a['attempt']}) "
                f"for {duration(a['running_seconds'])}{timeout}"
            )
    if report["hosts"]:
        lines.append("machines: " + "; ".join(f"{h}: {', '.join(ws)}" for h, ws in report["hosts"].items()))
    if report["inbox_by_type"]:
        lines.append("waiting by type: " + ", ".join(f"{t} {n}" for t, n in report["inbox_by_type"].items()))
    for s in report["stuck"]:
        lines.append(
            f"  stuck: {s['id']} ({s['type'] or 'type unknown'}) attempt {s['attempt']} on {s['worker']}, "
            f"running {duration(s['running_seconds'])}, timeout {duration(s['timeout_seconds'])}: {s['why']}"
        )
    for t in report["unhandled_types"]:
        lines.append(f"  warning: no live worker handles type {t!r}; those activities stay queued")
    lines += circuit_lines(report["circuits"])
    return lines


def entry_line(entry: dict[str, Any]) -> str:
    """One ``list`` line: id, type, attempts, age and, where there is one, the reason."""
    if entry["state"] == "invalid":
        return f"{entry['path']}  {duration(entry['age_seconds'])} ago  {entry['reason'] or '-'}"
    parts = [
        entry["id"] or "-",
        entry["type"] or "-",
        f"attempt {entry['attempts'] if entry['attempts'] is not None else '-'}",
        f"{duration(entry['age_seconds'])} ago",
    ]
    if entry["state"] == "running":
        parts.append(f"on {entry['worker']}" + (" (committed)" if entry["committed"] else ""))
    if entry["state"] == "inbox" and entry["not_before"] and _ahead(entry["not_before"]):
        parts.append(f"not before {entry['not_before']}")
    if entry["state"] == "done" and entry["status"] not in (None, "done"):
        parts.append(entry["status"])
    if entry["reason"]:
        parts.append(entry["reason"])
    return "  ".join(parts)


def _ahead(when: str) -> bool:
    """Whether an ISO-8601 time (as the views write them) is still to come: a delayed entry."""
    return datetime.fromisoformat(when).timestamp() > time.time()


def _inline(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True, sort_keys=True)
    return text if len(text) <= _INLINE_JSON else text[:_INLINE_JSON] + f"... ({len(text)} characters)"


def _linked(link: dict[str, Any]) -> str:
    if not link["valid"]:
        return f"{link['id']} (not a valid id)"
    return f"{link['id']} ({link['type'] or 'type unknown'}, {link['state'] or 'not found'})"


def story_lines(story: dict[str, Any]) -> list[str]:
    lines = [
        f"{story['id']} ({story['type'] or 'type unknown'}): {story['state']}",
        "  at " + ", ".join(loc["path"] for loc in story["locations"]),
    ]
    if story["parent"] is not None:
        lines.append(f"parent: {_linked(story['parent'])}")
    if story["not_before"]:
        lines.append(f"not before: {story['not_before']}")
    lines.append(f"attempts: {len(story['attempts'])}")
    for a in story["attempts"]:
        run = f"run {a['run'] + 1} " if a["run"] else ""
        where = (
            f" by {a.get('worker')} on {a.get('host')}" if a.get("host") else f" by {a.get('worker') or '?'}"
        )
        when = f" {a.get('started_at') or '?'} -> {a.get('finished_at') or '?'}"
        error = f": {a['error']}" if a.get("error") else ""
        lines.append(f"  {run}attempt {a['attempt']} {a['outcome'] or '?'}{where}{when}{error}")
    if story["reason"]:
        lines.append(f"reason: {story['reason']}")
    if story["traceback"]:
        lines += ["traceback:", *(f"  {line}" for line in story["traceback"].splitlines())]
    if story["state"] == "done":
        lines.append(f"result: {_inline(story['result'])}")
    if story["data"] is not None:
        lines.append(f"data: {_inline(story['data'])}")
    if story["follow_ups"]:
        left_out = story["follow_ups_left_out"]
        lines.append(f"follow-ups: {len(story['follow_ups']) + left_out}")
        lines += [f"  {_linked(f)}" for f in story["follow_ups"]]
        if left_out:
            lines.append(f"  ... and {left_out} more, not looked up")
    for log in story["logs"]:
        lines.append(f"log of attempt {log['attempt']}: {log['path']} ({log['bytes']} bytes), last lines:")
        lines += [f"  | {line}" for line in log["tail"]]
    return lines
