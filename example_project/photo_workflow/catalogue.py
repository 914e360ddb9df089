"""``photo.index``: keep ``library/catalogue.json`` and the contact sheet up to date.

``data`` is ``{"entry": {...}}`` (a new photo, from photo.renditions) or
``{"duplicate": {...}}`` (from photo.ingest). The entry is written to
``library/entries/PHOTO.json``; then, holding a lock, the catalogue is rebuilt
from every entry and duplicate record and replaced atomically, and the contact
sheet is redrawn.

Why entries plus a rebuild under a lock: activities run in parallel, in several
processes and on several machines, so a read-modify-write of one JSON file
would lose updates. Each entry file is written once (idempotent), and whoever
rebuilds last, under the lock, sees every entry written before it. The lock is
``filelock.FileLock`` (flock): it excludes across machines on local disks,
GlusterFS and SMB, not on NFS; there run photo.index on one machine only
(``concurrency.photo.index = 0`` in the other machines' worker files).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock
from PIL import Image, ImageDraw, ImageFont

from spoolpipe import Activity, Context, Fatal, images, processor
from spoolpipe.image_processors import image_roots, resolve_input

from .layout import CATALOGUE, CONTACT_SHEET, DUPLICATES, ENTRIES, INDEX, LIBRARY, PHOTO_ID, rel, write_json

CELL = (180, 200)
THUMB = 160
SHEET_THUMBNAIL = "thumb-160"


@processor(INDEX)
def index(activity: Activity, ctx: Context) -> dict[str, Any]:
    roots = image_roots(ctx.settings)
    root = roots[0]
    entry = activity.data.get("entry")
    if entry is not None:
        if not isinstance(entry, dict) or not PHOTO_ID.match(str(entry.get("photo", ""))):
            raise Fatal("entry: expected an object with a 16-hex-digit photo id")
        write_json(root / ENTRIES / f"{entry['photo']}.json", entry)
    (root / LIBRARY).mkdir(parents=True, exist_ok=True)
    with FileLock(root / LIBRARY / ".catalogue.lock", timeout=60):
        photos = _load_all(root / ENTRIES, "*.json")
        duplicates = _load_all(root / DUPLICATES, "*.json")
        write_json(
            root / CATALOGUE,
            {
                "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "photos": photos,
                "duplicates": duplicates,
            },
        )
        columns = _columns(ctx)
        sheet = _contact_sheet(photos, roots, columns, ctx)
        saved = images.save_image(sheet, root / CONTACT_SHEET, quality=85)
    ctx.log.info("catalogue: %d photos, %d duplicates", len(photos), len(duplicates))
    return {
        "photos": len(photos),
        "duplicates": len(duplicates),
        "catalogue": CATALOGUE,
        "contact_sheet": rel(saved.path, root),
    }


def _load_all(folder: Path, pattern: str) -> list[dict[str, Any]]:
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob(pattern)):
        if path.name.startswith("."):
            continue
        found.append(json.loads(path.read_text(encoding="utf-8")))
    return sorted(found, key=lambda doc: (str(doc.get("name", doc.get("source", ""))), str(doc)))


def _columns(ctx: Context) -> int:
    raw = ctx.settings.custom.get("photo.contact-sheet-columns", "6")
    try:
        return max(1, min(50, int(raw)))
    except ValueError:
        ctx.log.warning("custom.photo.contact-sheet-columns = %r is not a number; using 6", raw)
        return 6


def _contact_sheet(
    photos: list[dict[str, Any]], roots: tuple[Path, ...], columns: int, ctx: Context
) -> Image.Image:
    """Each photo's 160-pixel thumbnail in a grid, its file name underneath."""
    columns = max(1, min(columns, len(photos) or 1))
    rows = max(1, math.ceil(len(photos) / columns))
    sheet = Image.new("RGB", (columns * CELL[0], rows * CELL[1]), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(12)
    for i, entry in enumerate(photos):
        x, y = (i % columns) * CELL[0], (i // columns) * CELL[1]
        path = entry.get("renditions", {}).get(SHEET_THUMBNAIL, {}).get("path")
        try:
            thumb = images.open_image(resolve_input(path, roots, field="thumbnail"))
            thumb = images.thumbnail(thumb, THUMB, THUMB)
            if thumb.mode in ("LA", "RGBA"):
                thumb = thumb.convert("RGBA")
            left = x + (CELL[0] - thumb.width) // 2
            top = y + 8 + (THUMB - thumb.height) // 2
            sheet.paste(thumb.convert("RGB"), (left, top), thumb if thumb.mode == "RGBA" else None)
        except (Fatal, images.ImageRejected) as exc:
            ctx.log.warning("no thumbnail for %s: %s", entry.get("photo"), exc)
            draw.rectangle((x + 10, y + 8, x + CELL[0] - 10, y + 8 + THUMB), outline="#999999")
        caption = str(entry.get("name", entry.get("photo", "")))
        if len(caption) > 24:
            caption = caption[:23] + "…"
        draw.text((x + CELL[0] // 2, y + THUMB + 22), caption, fill="#333333", font=font, anchor="mm")
    return sheet
