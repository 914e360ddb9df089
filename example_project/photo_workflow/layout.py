"""Names shared by the workflow's processors: activity types, folders, rendition sizes, small helpers.

Every folder is relative to the first image root (``images.roots``); in the
example that is ``REPO/photos``:

    incoming/                         drop photos here (or sub-folders of photos)
    originals/PHOTO.jpg               each new photo's untouched original, named by its id
    duplicates/NAME + NAME.json       files whose picture was already in the library
    quarantine/NAME + NAME.report.txt files that failed, with the reason
    library/masters/PHOTO.jpg|png     upright, sRGB, metadata stripped
    library/renditions/PHOTO/*        large.jpg, web.webp, thumb-320.jpg, thumb-160.jpg,
                                      placeholder.webp, square.jpg
    library/entries/PHOTO.json        one catalogue entry per photo
    library/catalogue.json            every entry and duplicate, rewritten atomically
    library/contact-sheet.jpg         every photo's thumbnail on one sheet
    library/hashes/SHA256.json        de-duplication: which photo holds this picture
    library/receipts/ACTIVITY.json    what each photo.ingest did (makes a retry finish the job)

A photo's id (PHOTO) is the first 16 hex digits of the SHA-256 of its
normalised pixels, so the same picture gets the same id whatever the file.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spoolpipe import write_atomic

INGEST = "photo.ingest"
RENDITIONS = "photo.renditions"
INDEX = "photo.index"
QUARANTINE = "photo.quarantine"
IMAGE_PROCESS = "image.process"

INCOMING = "incoming"
ORIGINALS = "originals"
DUPLICATES = "duplicates"
QUARANTINE_DIR = "quarantine"
LIBRARY = "library"
MASTERS = "library/masters"
RENDITIONS_DIR = "library/renditions"
ENTRIES = "library/entries"
HASHES = "library/hashes"
RECEIPTS = "library/receipts"
CATALOGUE = "library/catalogue.json"
CONTACT_SHEET = "library/contact-sheet.jpg"

RENDITION_SIZES: tuple[dict[str, Any], ...] = (
    {"name": "large", "width": 1600, "height": 1600, "format": "jpeg", "quality": 85, "progressive": True},
    {"name": "web", "width": 800, "height": 800, "format": "webp", "quality": 80},
    {"name": "thumb-320", "width": 320, "height": 320, "format": "jpeg", "quality": 80, "sharpen": True},
    {"name": "thumb-160", "width": 160, "height": 160, "format": "jpeg", "quality": 75, "sharpen": True},
)
"""What photo.renditions makes of every master (Python, a step pipeline fanned out over these)."""

EXTRAS = {"placeholder": "placeholder.webp", "square": "square.jpg"}
"""What the image.process recipe makes of every master (no Python): see ``extras_recipe``."""

PHOTO_ID = re.compile(r"\A[0-9a-f]{16}\Z")


def rel(path: Path, root: Path) -> str:
    """``path`` relative to the first root, as stored in activities and records."""
    return path.relative_to(root).as_posix()


def renditions_folder(root: Path, photo: str) -> Path:
    if not PHOTO_ID.match(photo):
        raise ValueError(f"{photo!r} is not a photo id (16 hex digits)")
    return root / RENDITIONS_DIR / photo


def extras_recipe(master: str, photo: str) -> dict[str, Any]:
    """The ``image.process`` recipe for a master: a blurred placeholder and a smart-cropped square."""
    folder = f"{RENDITIONS_DIR}/{photo}"
    return {
        "input": master,
        "outputs": [
            {
                "path": f"{folder}/{EXTRAS['placeholder']}",
                "ops": [{"op": "placeholder", "size": 16}, {"op": "save", "quality": 40}],
            },
            {
                "path": f"{folder}/{EXTRAS['square']}",
                "ops": [
                    {"op": "resize", "width": 256, "height": 256, "mode": "fill", "gravity": "smart"},
                    {"op": "save", "quality": 80, "progressive": True},
                ],
            },
        ],
    }


def write_json(path: Path, doc: Mapping[str, Any] | list[Any]) -> None:
    """Replace ``path`` atomically: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode())


def write_text(path: Path, text: str) -> None:
    """Like ``write_json``, for a text file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode())


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some network file systems refuse it; their renames are synchronous
    finally:
        os.close(fd)


def create_exclusively(path: Path, doc: Mapping[str, Any]) -> bool:
    """Publish ``doc`` at ``path`` unless the file exists; True if this call created it.

    Written to a temp file, then hard-linked into place: the link either
    creates the complete file or fails, so readers never see it half-written
    and of several concurrent callers (on any machine) exactly one wins.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "x", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_folder(path.parent)
    return True


def free_name(folder: Path, name: str, tag: str) -> Path:
    """``folder/name``, or ``folder/STEM~TAG.SUFFIX`` when that is taken (by another file)."""
    target = folder / name
    if not os.path.lexists(target):
        return target
    stem, suffix = os.path.splitext(name)
    return folder / f"{stem}~{tag}{suffix}"


def move(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target`` (same file system), creating the folder; never overwrites."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(target):
        raise FileExistsError(f"{target} already exists")
    os.rename(source, target)
    _fsync_folder(target.parent)
