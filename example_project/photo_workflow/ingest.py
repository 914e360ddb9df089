"""``photo.ingest``: take a dropped photo (or sweep a folder of them) into the library.

``data`` is ``{"folder": "incoming"}`` or ``{"file": "incoming/cat.jpg"}``, paths
inside ``images.roots`` (relative ones start at the first root). A missing file
is an error, unless the activity came from a sweep (``"swept": true``): then
another sweep's ingest took it first, and it is skipped.

- A folder is swept: one ``photo.ingest`` follow-up per file in it (and its
  sub-folders), keyed by the file's path so a retried sweep names the same
  follow-ups. Names starting with ``.`` or ending in ``.part``/``.tmp`` are
  skipped: copy a photo in under such a name and rename it when complete.
- A file is checked and decoded under ``open_image``'s limits (a refused file
  is ``Fatal``, so the failure handler quarantines it), turned upright (EXIF
  orientation), converted to sRGB and stripped of metadata (GPS, camera
  serials, embedded previews). The SHA-256 of those pixels identifies the
  picture: the first file to claim it becomes a photo, any later file with the
  same picture is a duplicate, recorded and moved to ``duplicates/``.
- A new photo's master is written, its original moved to ``originals/``, and
  two follow-ups are asked for: ``photo.renditions`` (Python: a step pipeline)
  and ``image.process`` (no Python: a recipe) for the placeholder and square.

Idempotent: everything decided is written to ``library/receipts/ID.json``
before the source file moves, so an attempt that crashed half-way is finished
by the next one instead of being mistaken for a duplicate of itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from spoolpipe import Activity, Context, Fatal, images, processor
from spoolpipe.image_processors import image_roots, resolve_input

from .layout import (
    DUPLICATES,
    EXTRAS,
    HASHES,
    IMAGE_PROCESS,
    INDEX,
    INGEST,
    MASTERS,
    ORIGINALS,
    QUARANTINE_DIR,
    RECEIPTS,
    RENDITION_SIZES,
    RENDITIONS,
    RENDITIONS_DIR,
    create_exclusively,
    extras_recipe,
    free_name,
    move,
    rel,
    write_json,
    write_text,
)


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.endswith((".part", ".tmp"))


@processor(INGEST, follow_ups=(INGEST, RENDITIONS, IMAGE_PROCESS, INDEX))
def ingest(activity: Activity, ctx: Context) -> dict[str, Any]:
    if ("file" in activity.data) == ("folder" in activity.data):
        raise Fatal('give exactly one of "file" (a photo) and "folder" (to sweep) in data')
    roots = image_roots(ctx.settings)
    if "folder" in activity.data:
        return _sweep(activity, ctx, roots)
    return _ingest_file(activity, ctx, roots)


def _sweep(activity: Activity, ctx: Context, roots: tuple[Path, ...]) -> dict[str, Any]:
    root = roots[0]
    folder = resolve_input(activity.data["folder"], roots, field="folder", kind="folder")
    found: list[str] = []
    skipped = quarantined = 0
    for current, dirs, files in os.walk(folder):  # does not follow links to folders
        dirs[:] = sorted(d for d in dirs if not _ignored(d))
        for name in sorted(files):
            path = Path(current, name)
            if _ignored(name) or path.is_symlink() or not path.is_file():
                skipped += 1
            elif not _utf8(rel(path, root)):
                _quarantine_unnamable(path, root, activity.id, ctx)
                quarantined += 1
            else:
                found.append(rel(path, root))
    for path in found:
        ctx.follow_up(INGEST, {"file": path, "swept": True}, key=path)
    ctx.log.info("swept %s: %d files, %d skipped, %d quarantined", folder, len(found), skipped, quarantined)
    return {"folder": rel(folder, root), "files": len(found), "skipped": skipped, "quarantined": quarantined}


def _utf8(text: str) -> bool:
    """Whether a path can go into an activity (JSON is UTF-8; os.walk gives undecodable bytes as
    surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _quarantine_unnamable(path: Path, root: Path, sweep: str, ctx: Context) -> None:
    """A file whose path no activity can name goes to quarantine at once, its name escaped."""
    shown = os.fsencode(path.name).decode("utf-8", "backslashreplace")
    target = free_name(root / QUARANTINE_DIR, shown, sweep)
    where = os.fsencode(rel(path, root)).decode("utf-8", "backslashreplace")
    report = f"{where}: the name is not valid UTF-8, so no activity can name it; rename it, drop it again\n"
    write_text(target.with_name(target.name + ".report.txt"), report)
    move(path, target)
    ctx.log.warning("quarantined %s: its name is not valid UTF-8", rel(target, root))


def _ingest_file(activity: Activity, ctx: Context, roots: tuple[Path, ...]) -> dict[str, Any]:
    root = roots[0]
    receipt_path = root / RECEIPTS / f"{activity.id}.json"
    if receipt_path.exists():
        ctx.log.info("finishing the work of an earlier attempt (%s)", receipt_path)
        return _finish(json.loads(receipt_path.read_text(encoding="utf-8")), ctx, root)
    try:
        source = resolve_input(activity.data["file"], roots, field="file")
        picture = images.open_image(source)
    except (Fatal, images.ImageRejected) as exc:
        if activity.data.get("swept") and not os.path.lexists(root / str(activity.data["file"])):
            # Another sweep's ingest took it in first: nothing to do.
            return {"skipped": activity.data["file"], "reason": "no longer there"}
        if isinstance(exc, images.ImageRejected):
            raise Fatal(f"not a usable photo: {exc.reason}") from exc
        raise
    facts = images.image_info(picture)
    master = images.strip(images.to_srgb(images.auto_orient(picture)))
    sha = images.pixel_sha256(master)
    photo = sha[:16]
    name = rel(source, root)
    claim = {"photo": photo, "source": name, "activity": activity.id}
    if not create_exclusively(root / HASHES / f"{sha}.json", claim):
        holder = json.loads((root / HASHES / f"{sha}.json").read_text(encoding="utf-8"))
        if holder["activity"] != activity.id:
            holder_done = (root / RECEIPTS / f"{holder['activity']}.json").exists()
            if holder["source"] == name and not holder_done:
                # The same file, swept twice: the other activity is taking it in right now.
                return {"skipped": name, "being_ingested_by": holder["activity"]}
            receipt: dict[str, Any] = {
                "kind": "duplicate",
                "source": name,
                "moved_to": rel(free_name(root / DUPLICATES, source.name, activity.id), root),
                "duplicate_of": holder["photo"],
                "original_source": holder["source"],
                "sha256": sha,
                "activity": activity.id,
            }
            write_json(receipt_path, receipt)
            return _finish(receipt, ctx, root)
    alpha = master.mode in ("LA", "RGBA")
    master_path = root / MASTERS / f"{photo}{'.png' if alpha else '.jpg'}"
    master_path.parent.mkdir(parents=True, exist_ok=True)
    saved = images.save_image(master, master_path, quality=None if alpha else 95)
    receipt = {
        "kind": "photo",
        "photo": photo,
        "source": name,
        "name": source.name,
        "moved_to": rel(free_name(root / ORIGINALS, f"{photo}{source.suffix.lower()}", activity.id), root),
        "master": rel(master_path, root),
        "width": saved.width,
        "height": saved.height,
        "format": (facts.format or "").lower(),
        "frames": facts.frames,
        "orientation": facts.orientation,
        "sha256": sha,
        "activity": activity.id,
    }
    write_json(receipt_path, receipt)
    return _finish(receipt, ctx, root)


def _finish(receipt: dict[str, Any], ctx: Context, root: Path) -> dict[str, Any]:
    """Move the source where the receipt says (once) and ask for the follow-ups."""
    source, target = root / receipt["source"], root / receipt["moved_to"]
    if os.path.lexists(source) and not os.path.lexists(target):
        move(source, target)
    if receipt["kind"] == "duplicate":
        write_json(target.with_name(target.name + ".json"), receipt)
        ctx.log.info("%s is a duplicate of photo %s", receipt["source"], receipt["duplicate_of"])
        ctx.follow_up(INDEX, {"duplicate": receipt}, key="index")
        return receipt
    photo = receipt["photo"]
    extras = {kind: f"{RENDITIONS_DIR}/{photo}/{name}" for kind, name in EXTRAS.items()}
    ctx.follow_up(
        RENDITIONS,
        {
            "input": receipt["master"],
            "photo": photo,
            "name": receipt["name"],
            "original": receipt["moved_to"],
            "sha256": receipt["sha256"],
            "renditions": list(RENDITION_SIZES),
            "extras": extras,
        },
        key="renditions",
    )
    ctx.follow_up(IMAGE_PROCESS, extras_recipe(receipt["master"], photo), key="extras")
    ctx.log.info("%s is photo %s (%sx%s)", receipt["source"], photo, receipt["width"], receipt["height"])
    return receipt
