"""Guarded decoding: a file is checked from its header (bytes, pixels, format) before any pixel is decoded."""

from __future__ import annotations

import importlib
import math
import os
import stat
import struct
import zlib
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

from PIL import Image, ImageFile, UnidentifiedImageError, features

from ._budget import keep_freed_heap

_WEBP_SUPPORTED: Final = features.check_module("webp")
AVIF_SUPPORTED: Final = "avif" in features.modules and features.check_module("avif")
"""Whether this Pillow build reads and writes AVIF (libavif, Pillow >= 11.2)."""

DEFAULT_FORMATS: Final = frozenset(
    {"JPEG", "PNG", "GIF", "TIFF", "BMP"}
    | ({"WEBP"} if _WEBP_SUPPORTED else set())
    | ({"AVIF"} if AVIF_SUPPORTED else set())
)
"""Formats ``open_image`` decodes unless told otherwise (Pillow format names)."""

# The Pillow plugin module of each format spoolpipe reads or writes by default.
_PLUGINS: Final = {
    "JPEG": "JpegImagePlugin",
    "PNG": "PngImagePlugin",
    "GIF": "GifImagePlugin",
    "TIFF": "TiffImagePlugin",
    "BMP": "BmpImagePlugin",
    "WEBP": "WebPImagePlugin",
    "AVIF": "AvifImagePlugin",
}


def load_plugins(formats: Iterable[str]) -> None:
    """Register the Pillow plugins of ``formats`` (upper case) by importing those alone.

    Pillow's own fallback, ``Image.init()``, imports all of its 45 plugins: 20 ms
    of each pool process's first image on a small host. Other formats still
    take that way (in ``open_lazy``, or inside Pillow when saving).
    """
    for fmt in formats:
        if fmt in _PLUGINS and fmt not in Image.OPEN:
            importlib.import_module(f"PIL.{_PLUGINS[fmt]}")


DEFAULT_MAX_BYTES: Final = 50 * 1024 * 1024
DEFAULT_MAX_PIXELS: Final = 50_000_000
# Everything Pillow's plugins raise on malformed input, at open or at load.
_DECODE_ERRORS: Final = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)


class ImageRejected(ValueError):
    """A file this process refuses to decode; ``reason`` names the file and says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """Caps applied to every file a recipe decodes (the input and watermark images)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    formats: frozenset[str] = DEFAULT_FORMATS


DEFAULT_LIMITS: Final = Limits()


@contextmanager
def open_lazy(
    path: str | os.PathLike[str],
    max_bytes: int,
    max_pixels: int,
    formats: Collection[str],
    *,
    count_frames: bool = False,
) -> Iterator[ImageFile.ImageFile]:
    """Identify ``path`` and check it from its header; yields it undecoded, file still open.

    The caller may ``draft`` it (JPEG shrink-on-load) before ``decode``. With
    ``count_frames`` the frames are counted (``n_frames``) while the file is open,
    which reads all of an animation: millions of frames take seconds.
    """
    name = os.fspath(path)
    allowed = sorted({f.upper() for f in formats})
    if any(f not in Image.OPEN for f in allowed):
        load_plugins(allowed)
    if any(f not in Image.OPEN for f in allowed):
        Image.init()  # loads every plugin, so the check below is final
        if unknown := [f for f in allowed if f not in Image.OPEN]:
            raise ValueError(f"unknown image formats: {', '.join(unknown)}")
    try:
        # Non-blocking, so that a FIFO planted under an image name cannot hang the worker.
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ImageRejected(f"{name}: cannot open ({exc.strerror or exc})") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        problem: str | None = "not a regular file"
    elif info.st_size > max_bytes:
        problem = f"{info.st_size} bytes, over the limit of {max_bytes}"
    else:
        problem = None
    if problem is not None:
        os.close(fd)
        raise ImageRejected(f"{name}: {problem}")
    with os.fdopen(fd, "rb") as fh:
        try:
            image = Image.open(fh, formats=allowed)
        except UnidentifiedImageError as exc:
            raise ImageRejected(f"{name}: not an image in an allowed format ({', '.join(allowed)})") from exc
        except Image.DecompressionBombError as exc:
            raise ImageRejected(f"{name}: too many pixels, decompression bomb? ({exc})") from exc
        except _DECODE_ERRORS as exc:
            raise ImageRejected(f"{name}: unreadable image header ({exc})") from exc
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; here it is a hard limit.
        # (Not via warnings.catch_warnings: it swaps process-global state and threads decode here.)
        limit = max_pixels if Image.MAX_IMAGE_PIXELS is None else min(max_pixels, Image.MAX_IMAGE_PIXELS)
        width, height = image.size
        if width * height > limit:
            raise ImageRejected(
                f"{name}: {width}x{height} is {width * height} pixels, over the limit of {limit}"
                " (decompression bomb?)"
            )
        if count_frames:
            try:
                getattr(image, "n_frames", 1)  # counted (and cached) while the file is still open
            except _DECODE_ERRORS as exc:
                raise ImageRejected(f"{name}: unreadable frames ({exc})") from exc
        yield image


def decode(image: ImageFile.ImageFile, name: str) -> Image.Image:
    """Load the pixels of an image from ``open_lazy``; any decoder error becomes ``ImageRejected``."""
    keep_freed_heap()
    try:
        image.load()
    except _DECODE_ERRORS as exc:
        raise ImageRejected(f"{name}: cannot decode ({exc})") from exc
    except MemoryError:  # within the pixel limit: a damaged file asking for more (a chunk's length)
        raise ImageRejected(
            f"{name}: cannot decode (it asks for more memory than this process may have)"
        ) from None
    if isinstance(image.info.get("transparency"), str):  # a PNG text chunk of that name, not a tRNS one
        del image.info["transparency"]
    return image


def open_image(
    path: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: Collection[str] = DEFAULT_FORMATS,
    draft: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode the first frame of ``path``, or raise ``ImageRejected``.

    Size, format and dimensions are checked before decoding; Pillow's bomb
    threshold (``Image.MAX_IMAGE_PIXELS``) is a hard limit too, and truncated
    files are errors. With ``draft=(w, h)`` a JPEG is decoded at the largest
    DCT scale (1/2, 1/4 or 1/8) that still covers the image fitted into a
    square of side ``max(w, h)`` (square: the box may apply after a 90-degree
    EXIF turn), libvips' shrink-on-load: the fast path for ``thumbnail``. The
    image keeps its file mode (CMYK, P, I;16...); the operations normalise it
    (see ``normalize_mode``).
    """
    with open_lazy(path, max_bytes, max_pixels, formats, count_frames=True) as lazy:  # image_info's
        if draft is not None and max(draft) > 0:
            side = max(draft)
            scale = min(1.0, side / lazy.width, side / lazy.height)
            lazy.draft(None, (max(1, math.ceil(lazy.width * scale)), max(1, math.ceil(lazy.height * scale))))
        return decode(lazy, os.fspath(path))
