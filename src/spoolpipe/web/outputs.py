"""Which image files the status page may send: recorded outputs of ``image.process`` inside ``images.roots``.

A URL never carries a path: it names a done record and the index of an output
in its ``result`` (``/output/ID/N``). The file is sent only if the record is an
``image.process`` record, the output entry names a path whose real path (links
resolved) lies in one of the image roots, it is a regular file of the recorded
size, and its bytes hash to the recorded ``sha256``; so a forged record, a file
swapped for a link, or anything else in the roots is refused.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..activity import InvalidActivity, is_valid_name, parse_document
from ..image_processors import IMAGE_PROCESS
from ..views.reading import read_bytes

MAX_RECORD_BYTES: Final = 8 << 20
"""A done record larger than this is not read (results are at most ``limits.result-bytes``)."""
MAX_OUTPUT_BYTES: Final = 32 << 20
"""An output file larger than this is not sent."""
MAX_OUTPUTS: Final = 64
"""Only the first outputs of a record are addressable."""
THUMBNAIL_SIDE: Final = 160
"""Thumbnails fit in a square of this many pixels."""

MEDIA_TYPES: Final = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "avif": "image/avif"}
"""Recorded output formats the page sends, with their media type; any other format is refused."""


@dataclass(frozen=True)
class OutputEntry:
    """One output as its done record describes it (untrusted until ``read_output`` checked the file)."""

    index: int
    path: str
    format: str
    size: int
    sha256: str
    width: int
    height: int


def _entry(index: int, raw: object) -> OutputEntry | None:
    if not isinstance(raw, dict):
        return None
    path, format_, size, digest = raw.get("path"), raw.get("format"), raw.get("bytes"), raw.get("sha256")
    width, height = raw.get("width"), raw.get("height")
    if not (isinstance(path, str) and path and "\x00" not in path and os.path.isabs(path)):
        return None
    if not (isinstance(format_, str) and format_ in MEDIA_TYPES):
        return None
    if not (isinstance(size, int) and not isinstance(size, bool) and 0 < size <= MAX_OUTPUT_BYTES):
        return None
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        return None
    dims = [v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0 for v in (width, height)]
    return OutputEntry(index, path, format_, size, digest, dims[0], dims[1])


def recorded_outputs(record: object) -> list[OutputEntry]:
    """The outputs a done record claims if it is a finished ``image.process`` (malformed entries left out)."""
    if not isinstance(record, dict) or record.get("type") != IMAGE_PROCESS:
        return []
    section, result = record.get("spoolpipe"), record.get("result")
    if not isinstance(section, dict) or section.get("status") != "done" or not isinstance(result, list):
        return []
    entries = (_entry(i, raw) for i, raw in enumerate(result[:MAX_OUTPUTS]))
    return [e for e in entries if e is not None]


def done_outputs(repo_done: Path, activity_id: str) -> list[OutputEntry]:
    """The outputs recorded in ``done/ID.json``; empty when the id is unusable or the record is not one."""
    if not is_valid_name(activity_id):
        return []
    raw = read_bytes(repo_done / f"{activity_id}.json", MAX_RECORD_BYTES)
    if raw is None:
        return []
    try:
        return recorded_outputs(parse_document(raw))
    except InvalidActivity:
        return []


def _inside(real: str, roots: Sequence[Path]) -> bool:
    return any(Path(real).is_relative_to(root) for root in roots)


def read_output(entry: OutputEntry, real_roots: Sequence[Path]) -> bytes | None:
    """The recorded output's bytes, or None unless it really is that file, inside the roots.

    ``real_roots`` must be resolved already (``images.real_roots``). The bytes
    returned are the ones hashed, so a file changed after the check is never sent.
    """
    real = os.path.realpath(entry.path)
    if not _inside(real, real_roots):
        return None
    data = read_bytes(real, MAX_OUTPUT_BYTES)
    if data is None or len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
        return None
    return data


class CheckedFiles:
    """Which outputs ``read_output`` accepts, remembered by inode, size and times (bounded, LRU).

    The front page lists only outputs it could send, without hashing every file
    on every reload: a file is hashed again only once it changed (a write
    changes its ctime, which nobody can set back).
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = capacity
        self._known: OrderedDict[tuple[object, ...], bool] = OrderedDict()
        self._lock = threading.Lock()

    def servable(self, entry: OutputEntry, real_roots: Sequence[Path]) -> bool:
        real = os.path.realpath(entry.path)
        try:
            st = os.stat(real)
        except OSError:
            return False
        if not (_inside(real, real_roots) and stat.S_ISREG(st.st_mode) and st.st_size == entry.size):
            return False
        key = (real, entry.sha256, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            if key in self._known:
                self._known.move_to_end(key)
                return self._known[key]
        accepted = read_output(entry, real_roots) is not None
        with self._lock:
            self._known[key] = accepted
            while len(self._known) > self._capacity:
                self._known.popitem(last=False)
        return accepted


@dataclass(frozen=True)
class Thumbnail:
    media_type: str
    body: bytes


class ThumbnailCache:
    """Thumbnails made on demand with Pillow, kept in memory by the source's sha256 (bounded, LRU).

    One is made at a time, so that many requests at once hold one decoded image, not one each.
    """

    def __init__(self, capacity: int = 256) -> None:
        self._capacity = capacity
        self._items: OrderedDict[str, Thumbnail | None] = OrderedDict()
        self._lock = threading.Lock()
        self._making = threading.Lock()

    def get(self, entry: OutputEntry, data: bytes) -> Thumbnail | None:
        """The thumbnail of ``data`` (checked bytes of ``entry``); None if Pillow refuses it."""
        with self._lock:
            if entry.sha256 in self._items:
                self._items.move_to_end(entry.sha256)
                return self._items[entry.sha256]
        with self._making:
            made = _make_thumbnail(data, entry.format)
        with self._lock:
            self._items[entry.sha256] = made
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        return made


def _make_thumbnail(data: bytes, format_: str) -> Thumbnail | None:
    """Shrink on load (JPEG draft), fit into ``THUMBNAIL_SIDE``; PNG when it has alpha, else JPEG."""
    from PIL import Image

    from .. import images

    if format_.upper() not in images.DEFAULT_FORMATS:
        return None
    try:
        with Image.open(io.BytesIO(data), formats=[format_.upper()]) as lazy:
            width, height = lazy.size
            if width * height > images.DEFAULT_MAX_PIXELS:
                return None
            scale = min(1.0, THUMBNAIL_SIDE / width, THUMBNAIL_SIDE / height)
            lazy.draft(None, (max(1, round(width * scale)), max(1, round(height * scale))))
            lazy.load()
            small = images.thumbnail(lazy, THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return None
    out = io.BytesIO()
    if "A" in small.getbands():
        small.save(out, "PNG", optimize=True)
        return Thumbnail("image/png", out.getvalue())
    small.convert("RGB").save(out, "JPEG", quality=80)
    return Thumbnail("image/jpeg", out.getvalue())
