"""``photo.quarantine``: the workflow's failure handler (``failures.handler = photo.quarantine``).

spoolpipe creates one activity of this type for every activity that failed for
good, with ``data = {"failed": {...}}`` (id, type, data, reason, traceback,
attempts...). For a ``photo.ingest`` of a file, the file is moved into
``quarantine/`` with ``NAME.report.txt`` next to it, so it leaves the drop
folder and a person can see why. Any other failure gets spoolpipe's usual
report in ``REPO/reports/ID.txt``.

The path comes from the failed activity's data, so it is confined to the image
roots like any other: a failed activity naming ``/etc/passwd`` gets a report,
and nothing is moved.
"""

from __future__ import annotations

import os
from typing import Any

from spoolpipe import Activity, Context, Fatal, failure, processor
from spoolpipe.image_processors import image_roots, resolve_input

from .layout import INGEST, QUARANTINE, QUARANTINE_DIR, free_name, move, rel, write_text


@processor(QUARANTINE)
def quarantine(activity: Activity, ctx: Context) -> dict[str, Any]:
    failed = dict(activity.data.get("failed", {}))
    data = failed.get("data") or {}
    if failed.get("type") != INGEST or "file" not in data:
        return failure.report(activity, ctx)
    roots = image_roots(ctx.settings)
    root = roots[0]
    folder = root / QUARANTINE_DIR
    name = os.path.basename(str(data["file"]))
    report = failure.render_report(failed)
    # A retry of this handler, after the file was moved: the report says which failure it was.
    for candidate in (folder / name, folder / f"{os.path.splitext(name)[0]}~{failed.get('id')}"):
        done = candidate.with_name(candidate.name + ".report.txt")
        if done.exists() and done.read_text(encoding="utf-8").startswith(report.splitlines()[0]):
            return {"quarantined": rel(candidate, root), "report": rel(done, root)}
    try:
        source = resolve_input(data["file"], roots, field="file")
    except Fatal as exc:  # gone, or outside the roots: nothing to move
        ctx.log.warning("nothing to quarantine: %s", exc)
        return {**failure.report(activity, ctx), "not_moved": str(exc)}
    target = free_name(folder, source.name, str(failed.get("id")))
    report_path = target.with_name(target.name + ".report.txt")
    write_text(report_path, report)
    move(source, target)
    ctx.log.info("quarantined %s: %s", rel(target, root), failed.get("reason"))
    return {
        "quarantined": rel(target, root),
        "report": rel(report_path, root),
        "reason": failed.get("reason"),
    }
