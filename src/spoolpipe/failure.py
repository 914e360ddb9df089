"""The built-in failure processor: a readable report for every activity that failed for good.

Every failed activity is followed by an activity of type ``failures.handler``
(default ``spoolpipe.failure``) whose ``data`` is described in
``docs/repository-format.md``; what it leaves out (``omitted``, when the
failed activity's data is too large to copy) is read from the failed record.
Replace this processor by setting ``failures.handler`` to a type of your own.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .activity import Activity, is_valid_name
from .durable import write_atomic
from .processor import Context, Fatal, processor
from .record import OMITTABLE
from .repository import RECORD_BYTES, open_folder, restore_folder
from .untrusted import NotARegularFile, read_regular

TYPE = "spoolpipe.failure"


def render_report(failed: dict[str, Any]) -> str:
    lines = [
        f"Activity {failed.get('id')} of type {failed.get('type')} failed.",
        "",
        f"Reason:   {failed.get('reason')}",
        f"Attempts: {failed.get('attempts')}",
        f"Worker:   {failed.get('worker')} on {failed.get('host')}",
        f"Failed:   {failed.get('failed_at')}",
        f"Record:   {failed.get('record')}",
        "",
        "Data:",
        json.dumps(failed.get("data", {}), indent=2, ensure_ascii=False),
    ]
    if failed.get("traceback"):
        lines += ["", "Traceback of the last attempt:", str(failed["traceback"]).rstrip()]
    return "\n".join(lines) + "\n"


def _with_omitted(failed: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """``failed`` completed from its record with what the failure activity left out (too large to copy)."""
    omitted = [f for f in failed.get("omitted", []) if f in OMITTABLE]
    if not omitted:
        return failed
    path = ctx.repository / "failed" / f"{failed['id']}.json"
    try:
        record = json.loads(read_regular(path, RECORD_BYTES)[0])
    except FileNotFoundError:
        # The failure activity is published just before its record: try again shortly.
        raise FileNotFoundError(f"failed/{failed['id']}.json is not there (yet)") from None
    except NotARegularFile as exc:  # anyone may put a link to a file elsewhere there: never followed
        raise Fatal(f"failed/{failed['id']}.json {exc.strerror}") from None
    except ValueError as exc:
        raise Fatal(f"failed/{failed['id']}.json is not a record: {exc}") from None
    if not isinstance(record, dict):
        raise Fatal(f"failed/{failed['id']}.json is not a record")
    section = record.get("spoolpipe")
    traceback = section.get("traceback", "") if isinstance(section, dict) else ""
    found = {"data": record.get("data", {}), "traceback": traceback}
    return {**failed, **{f: found[f] for f in omitted}}


@processor(TYPE)
def report(activity: Activity, ctx: Context) -> dict[str, str]:
    failed = dict(activity.data.get("failed", {}))
    failed_id = failed.get("id", activity.id)
    if not is_valid_name(failed_id):  # it names files: never a path
        raise Fatal(f"failed.id {failed_id!r} is not a valid activity id")
    failed["id"] = failed_id
    failed = _with_omitted(failed, ctx)
    reports = ctx.repository / "reports"
    target = reports / f"{failed_id}.txt"
    restore_folder(reports, ctx.repository / "running")  # deleted by hand: made again, as init would
    os.close(open_folder(str(reports)))  # a symbolic link in its place: not followed, the attempt fails
    write_atomic(target, render_report(failed).encode())
    ctx.log.info("wrote %s", target)
    return {"report": str(target.relative_to(ctx.repository))}
