"""The built-in failure processor: a readable report for every activity that failed for good.

Every failed activity is followed by an activity of type ``failures.handler``
(default ``spoolpipe.failure``) whose ``data`` is described in
``docs/repository-format.md``. Replace this processor by setting
``failures.handler`` to a type of your own.
"""

from __future__ import annotations

import json
from typing import Any

from .activity import Activity
from .durable import write_atomic
from .processor import Context, processor

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


@processor(TYPE)
def report(activity: Activity, ctx: Context) -> dict[str, str]:
    failed = dict(activity.data.get("failed", {}))
    reports = ctx.repository / "reports"
    target = reports / f"{failed.get('id', activity.id)}.txt"
    write_atomic(target, render_report(failed).encode())
    ctx.log.info("wrote %s", target)
    return {"report": str(target.relative_to(ctx.repository))}
