"""Built-in image operations and the no-Python recipe format of ``image.process`` activities.

Operations are pure functions on decoded Pillow images. They never modify their
input (they may return it unchanged when there is nothing to do), so several
outputs can be made from one decode without copying it first. Files are touched
only at the edges: ``open_image`` checks bytes, pixels and format from the header
before any pixel is decoded, and ``save_image`` replaces the target atomically.

A recipe is validated in full by ``parse_recipe`` (every error, each named by its
JSON path, before any work starts) and executed by ``run_recipe``, which takes
room for its pixels from a ``PixelBudget`` so that concurrent jobs on a small
host stay within memory. See docs/images.md for the catalogue.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import secrets
import stat
import struct
import threading
import zlib
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, TypeVar

from PIL import (
    ExifTags,
    Image,
    ImageCms,
    ImageColor,
    ImageDraw,
    ImageFile,
    ImageFilter,
    ImageFont,
    ImageOps,
    UnidentifiedImageError,
    features,
)

from .config import automatic_megapixels
from .durable import fsync_directory

__all__ = [
    "AVIF_SUPPORTED",
    "DEFAULT_FORMATS",
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "MAX_DIMENSION",
    "PIXEL_BUDGET",
    "SAVE_FORMATS",
    "WORKING_COPIES",
    "AutoOrientOp",
    "BlurOp",
    "CropOp",
    "FlipOp",
    "FlopOp",
    "Gravity",
    "GrayscaleOp",
    "ImageInfo",
    "ImageRejected",
    "Limits",
    "Op",
    "Output",
    "PathRejected",
    "PixelBudget",
    "PlaceholderOp",
    "Recipe",
    "RecipeError",
    "ResizeMode",
    "ResizeOp",
    "RotateOp",
    "SaveOp",
    "SavedImage",
    "SharpenOp",
    "SrgbOp",
    "StripOp",
    "ThumbnailOp",
    "WatermarkOp",
    "auto_orient",
    "blur",
    "crop",
    "crop_box",
    "dominant_color",
    "file_sha256",
    "flip",
    "flop",
    "grayscale",
    "image_info",
    "normalize_mode",
    "open_image",
    "parse_recipe",
    "pixel_sha256",
    "placeholder",
    "real_roots",
    "resize",
    "resolve_path",
    "rotate",
    "run_recipe",
    "save_image",
    "sharpen",
    "strip",
    "thumbnail",
    "to_srgb",
    "watermark",
]

_WEBP_SUPPORTED: Final = features.check_module("webp")
AVIF_SUPPORTED: Final = "avif" in features.modules and features.check_module("avif")
"""Whether this Pillow build reads and writes AVIF (libavif, Pillow >= 11.2)."""

DEFAULT_FORMATS: Final = frozenset(
    {"JPEG", "PNG", "GIF", "TIFF", "BMP"}
    | ({"WEBP"} if _WEBP_SUPPORTED else set())
    | ({"AVIF"} if AVIF_SUPPORTED else set())
)
"""Formats ``open_image`` decodes unless told otherwise (Pillow format names)."""

SAVE_FORMATS: Final = frozenset(
    {"JPEG", "PNG"} | ({"WEBP"} if _WEBP_SUPPORTED else set()) | ({"AVIF"} if AVIF_SUPPORTED else set())
)
"""Formats ``save_image`` writes."""

DEFAULT_MAX_BYTES: Final = 50 * 1024 * 1024
DEFAULT_MAX_PIXELS: Final = 50_000_000
MAX_DIMENSION: Final = 8192
"""Largest width or height a recipe may ask for (resize, pad canvas, thumbnail)."""
WORKING_COPIES: Final = 3
"""A recipe run holds this many times its decoded megapixels: source, output in progress, op result."""

ResizeMode = Literal["fit", "inside", "fill", "cover", "pad", "contain", "exact", "force"]
Gravity = Literal[
    "center",
    "centre",
    "north",
    "south",
    "east",
    "west",
    "northeast",
    "northwest",
    "southeast",
    "southwest",
    "smart",
]

_RESIZE_KINDS: Final = {
    "fit": "fit",
    "inside": "fit",
    "fill": "fill",
    "cover": "fill",
    "pad": "pad",
    "contain": "pad",
    "exact": "exact",
    "force": "exact",
}
_CENTERING: Final = {
    "center": (0.5, 0.5),
    "centre": (0.5, 0.5),
    "north": (0.5, 0.0),
    "south": (0.5, 1.0),
    "east": (1.0, 0.5),
    "west": (0.0, 0.5),
    "northeast": (1.0, 0.0),
    "northwest": (0.0, 0.0),
    "southeast": (1.0, 1.0),
    "southwest": (0.0, 1.0),
}
_WORKING_MODES: Final = frozenset({"L", "LA", "RGB", "RGBA"})
_METADATA_KEYS: Final = {"exif": ("exif",), "xmp": ("xmp", "XML:com.adobe.xmp"), "icc": ("icc_profile",)}
_FORMAT_NAMES: Final = {"jpeg": "JPEG", "jpg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF"}
_SUFFIX_FORMATS: Final = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".avif": "AVIF"}
_DEFAULT_QUALITY: Final = {"JPEG": 85, "WEBP": 80, "AVIF": 60}
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


class RecipeError(ValueError):
    """An invalid recipe; ``errors`` lists every problem, each starting with its JSON path."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = tuple(errors)


@dataclass(frozen=True)
class Limits:
    """Caps applied to every file a recipe decodes (the input and watermark images)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    formats: frozenset[str] = DEFAULT_FORMATS


DEFAULT_LIMITS: Final = Limits()


# --------------------------------------------------------------------------- opening


@contextmanager
def _open_lazy(
    path: str | os.PathLike[str],
    max_bytes: int,
    max_pixels: int,
    formats: Collection[str],
    draft: tuple[int, int] | None,
) -> Iterator[ImageFile.ImageFile]:
    """Identify ``path`` and check it from its header; yields it undecoded, file still open."""
    name = os.fspath(path)
    allowed = sorted({f.upper() for f in formats})
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
        try:
            getattr(image, "n_frames", 1)  # counted (and cached) while the file is still open
        except _DECODE_ERRORS as exc:
            raise ImageRejected(f"{name}: unreadable frames ({exc})") from exc
        if draft is not None and max(draft) > 0:
            side = 2 * max(draft)  # square: the box may apply after a 90-degree EXIF turn
            image.draft(None, (side, side))
        yield image


def _decode(image: ImageFile.ImageFile, name: str) -> Image.Image:
    try:
        image.load()
    except _DECODE_ERRORS as exc:
        raise ImageRejected(f"{name}: cannot decode ({exc})") from exc
    return image


def _working(image: Image.Image, name: str) -> Image.Image:
    try:
        return normalize_mode(image)
    except ValueError as exc:
        raise ImageRejected(f"{name}: unsupported pixel mode {image.mode} ({exc})") from exc


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
    files are errors. With ``draft=(w, h)`` a JPEG is decoded at the smallest
    1/2, 1/4 or 1/8 scale that keeps both sides at least twice ``max(w, h)``:
    the fast path for ``thumbnail``. The image keeps its file mode (CMYK, P,
    I;16...); the operations normalise it (see ``normalize_mode``).
    """
    with _open_lazy(path, max_bytes, max_pixels, formats, draft) as lazy:
        return _decode(lazy, os.fspath(path))


# --------------------------------------------------------------------------- memory budget


class PixelBudget:
    """A weighted semaphore counted in megapixels, shared by the image jobs of one process.

    ``hold(mpx)`` waits until the pixels fit under ``capacity``. Waiters are served
    in arrival order, so a large image is not starved by a stream of small ones;
    an image larger than the whole capacity runs once nothing else is held,
    alone, instead of waiting forever. A capacity of 0 means automatic.
    """

    def __init__(self, capacity: float = 0) -> None:
        self._cond = threading.Condition()
        self._capacity = self._checked(capacity)
        self._in_use = 0.0
        self._holders = 0
        self._queue: deque[object] = deque()

    @staticmethod
    def _checked(capacity: float) -> float:
        if not capacity >= 0:
            raise ValueError(f"capacity must be >= 0 megapixels, got {capacity}")
        return capacity or automatic_megapixels()

    @property
    def capacity(self) -> float:
        return self._capacity

    @capacity.setter
    def capacity(self, megapixels: float) -> None:
        with self._cond:
            self._capacity = self._checked(megapixels)
            self._cond.notify_all()

    @property
    def in_use(self) -> float:
        return self._in_use

    @contextmanager
    def hold(self, megapixels: float) -> Iterator[None]:
        if not megapixels >= 0:
            raise ValueError(f"megapixels must be >= 0, got {megapixels}")
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                self._cond.wait_for(
                    lambda: (
                        self._queue[0] is ticket
                        and (self._holders == 0 or self._in_use + megapixels <= self._capacity)
                    )
                )
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()
            self._holders += 1
            self._in_use += megapixels
        try:
            yield
        finally:
            with self._cond:
                self._holders -= 1
                self._in_use = self._in_use - megapixels if self._holders else 0.0
                self._cond.notify_all()


PIXEL_BUDGET: Final = PixelBudget()
"""The process-wide budget ``run_recipe`` uses by default (automatic capacity)."""


# --------------------------------------------------------------------------- operations


def _keep_info(source: Image.Image, result: Image.Image) -> Image.Image:
    """Carry metadata over to an image Pillow built from scratch (it would start empty)."""
    result.info = {k: v for k, v in source.info.items() if k != "transparency"}
    return result


def _without(image: Image.Image, *keys: str) -> Image.Image:
    result = image.copy()
    for key in keys:
        result.info.pop(key, None)
    return result


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS:
        return 1  # unreadable EXIF: show the pixels as stored
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _fill(image: Image.Image, colour: str | None) -> float | tuple[int, ...]:
    """Background for new pixels: ``colour``, else transparent with alpha, else white."""
    default = "#ffffff00" if image.mode in ("RGBA", "LA") else "#ffffff"
    return ImageColor.getcolor(colour or default, image.mode)


def _centering(gravity: str) -> tuple[float, float]:
    try:
        return _CENTERING[gravity]
    except KeyError:
        raise ValueError(f"gravity {gravity!r} is not supported here") from None


def _fit_scale(size: tuple[int, int], width: int | None, height: int | None) -> float:
    if width is None and height is None:
        raise ValueError("width, height or both are required")
    return min(
        width / size[0] if width is not None else math.inf,
        height / size[1] if height is not None else math.inf,
    )


def _scaled(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _resample(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Lanczos in two steps (integer reduce first): faster, indistinguishable at gap 3."""
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def normalize_mode(image: Image.Image) -> Image.Image:
    """Bring any decoded mode to L, LA, RGB or RGBA, the modes every operation works in.

    Palette and transparency keys become an alpha channel, CMYK goes to sRGB
    (through its ICC profile when it has one), 16-bit samples are scaled to 8 bits.
    """
    mode = image.mode
    if mode in _WORKING_MODES and "transparency" not in image.info:
        return image
    if mode == "CMYK":
        return to_srgb(image)
    if mode == "I" or mode.startswith("I;16"):
        return image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    alpha = image.has_transparency_data
    if mode in ("1", "L", "La", "LA", "F"):
        return image.convert("LA" if alpha else "L")
    return image.convert("RGBA" if alpha else "RGB")


def auto_orient(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (1-8) to the pixels and drop the tag."""
    if _orientation(image) == 1:
        return image
    return ImageOps.exif_transpose(image)


def thumbnail(image: Image.Image, width: int | None = None, height: int | None = None) -> Image.Image:
    """Auto-orient, then shrink to fit the box (never enlarges).

    Fast when the image came from ``open_image(path, draft=(width, height))``:
    the JPEG was then decoded at reduced scale, before orientation.
    """
    oriented = auto_orient(normalize_mode(image))
    scale = _fit_scale(oriented.size, width, height)
    if scale >= 1:
        return oriented
    return oriented.resize(_scaled(oriented.size, scale), Image.Resampling.BICUBIC, reducing_gap=2.0)


def resize(
    image: Image.Image,
    width: int | None = None,
    height: int | None = None,
    *,
    mode: ResizeMode = "fit",
    upscale: bool = False,
    gravity: Gravity = "center",
    background: str | None = None,
) -> Image.Image:
    """Resize in one of the usual modes; never enlarges unless ``upscale``.

    - fit (inside): within the box, aspect kept; one side may be omitted.
    - fill (cover): covers the box, aspect kept, the overflow cropped at ``gravity``
      (``smart`` = most detailed region). Without upscale a small source is only
      cropped to the box's aspect ratio.
    - pad (contain): fit, then centred at ``gravity`` on a box-sized canvas of
      ``background`` (default transparent with alpha, else white).
    - exact (force): exactly the box, aspect ignored; without upscale each side
      is capped at the source's.
    """
    kind = _RESIZE_KINDS.get(mode)
    if kind is None:
        raise ValueError(f"unknown resize mode {mode!r}")
    image = normalize_mode(image)
    if kind == "fit":
        scale = _fit_scale(image.size, width, height)
        return image if scale >= 1 and not upscale else _resample(image, _scaled(image.size, scale))
    if width is None or height is None:
        raise ValueError(f"resize mode {mode} needs both width and height")
    src_w, src_h = image.size
    if kind == "exact":
        return _resample(image, (width, height) if upscale else (min(width, src_w), min(height, src_h)))
    if kind == "fill":
        aspect = width / height
        if src_w / src_h > aspect:
            box_w, box_h = max(1, round(src_h * aspect)), src_h
        else:
            box_w, box_h = src_w, max(1, round(src_w / aspect))
        cropped = crop(image, box_w, box_h, gravity=gravity)
        return cropped if width > box_w and not upscale else _resample(cropped, (width, height))
    gx, gy = _centering(gravity)
    scale = min(width / src_w, height / src_h)
    inner = _resample(image, _scaled(image.size, scale if upscale else min(scale, 1.0)))
    canvas = Image.new(inner.mode, (width, height), _fill(inner, background))
    canvas.paste(inner, (round((width - inner.width) * gx), round((height - inner.height) * gy)))
    return _keep_info(image, canvas)


def _entropy_origin(image: Image.Image, width: int, height: int) -> tuple[int, int]:
    """Top-left of the most detailed ``width`` x ``height`` box.

    libvips' "entropy" strategy on a small grey preview: repeatedly trim
    whichever edge slice carries less information until the box fits.
    """
    scale = min(1.0, 256 / max(image.size))
    preview = image.resize(_scaled(image.size, scale), Image.Resampling.BOX).convert("L")
    box = [0, 0, preview.width, preview.height]
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    for axis in (0, 1):
        low, high = axis, axis + 2
        toggle = False
        while box[high] - box[low] > target[axis]:
            step = min(4, box[high] - box[low] - target[axis])
            first, last = list(box), list(box)
            first[high] = box[low] + step
            last[low] = box[high] - step
            e_first = preview.crop((first[0], first[1], first[2], first[3])).entropy()
            e_last = preview.crop((last[0], last[1], last[2], last[3])).entropy()
            if e_first < e_last or (e_first == e_last and toggle):
                box[low] += step
            else:
                box[high] -= step
            toggle = not toggle
    x = min(max(0, round(box[0] / scale)), image.width - width)
    y = min(max(0, round(box[1] / scale)), image.height - height)
    return x, y


def crop(
    image: Image.Image, width: int | None = None, height: int | None = None, *, gravity: Gravity = "center"
) -> Image.Image:
    """Cut a ``width`` x ``height`` box placed by ``gravity``; a side missing or too large is kept whole."""
    w = image.width if width is None else min(width, image.width)
    h = image.height if height is None else min(height, image.height)
    if (w, h) == image.size:
        return image
    if gravity == "smart":
        x, y = _entropy_origin(image, w, h)
    else:
        gx, gy = _centering(gravity)
        x, y = round((image.width - w) * gx), round((image.height - h) * gy)
    return image.crop((x, y, x + w, y + h))


def crop_box(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """Cut ``(left, top, right, bottom)``, clipped to the image."""
    left, top = max(0, box[0]), max(0, box[1])
    right, bottom = min(image.width, box[2]), min(image.height, box[3])
    if right <= left or bottom <= top:
        raise ValueError(f"crop box {list(box)} lies outside the {image.width}x{image.height} image")
    return image.crop((left, top, right, bottom))


_QUARTER_TURNS: Final = {
    90: Image.Transpose.ROTATE_270,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_90,
}


def rotate(
    image: Image.Image, angle: float, *, expand: bool = True, background: str | None = None
) -> Image.Image:
    """Rotate clockwise by ``angle`` degrees; quarter turns are exact (no resampling).

    With ``expand`` the canvas grows to hold the whole image; new corners get
    ``background`` (default transparent with alpha, else white).
    """
    turn = angle % 360
    if turn == 0:
        return image
    if turn in _QUARTER_TURNS and (expand or turn == 180):
        return image.transpose(_QUARTER_TURNS[int(turn)])
    image = normalize_mode(image)
    rotated = image.rotate(-turn, Image.Resampling.BICUBIC, expand=expand, fillcolor=_fill(image, background))
    return _keep_info(image, rotated)


def flip(image: Image.Image) -> Image.Image:
    """Mirror top to bottom."""
    return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)


def flop(image: Image.Image) -> Image.Image:
    """Mirror left to right."""
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def to_srgb(image: Image.Image) -> Image.Image:
    """Convert to untagged sRGB through the embedded ICC profile; CMYK becomes RGB.

    An unusable profile is ignored, as browsers do. Grey images just drop theirs.
    """
    icc = image.info.get("icc_profile")
    if image.mode != "CMYK":
        image = normalize_mode(image)
        if not icc:
            return image
        if image.mode in ("L", "LA"):
            return _without(image, "icc_profile")
    out_mode = "RGB" if image.mode == "CMYK" else image.mode
    converted: Image.Image | None = None
    if icc:
        with suppress(ImageCms.PyCMSError, OSError, ValueError):
            converted = ImageCms.profileToProfile(
                image,
                ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                ImageCms.createProfile("sRGB"),
                outputMode=out_mode,
            )
    result = _keep_info(image, converted or image.convert(out_mode))
    result.info.pop("icc_profile", None)
    return result


def grayscale(image: Image.Image) -> Image.Image:
    """Luminance only; alpha is kept (RGBA becomes LA)."""
    image = normalize_mode(image)
    target = {"RGB": "L", "RGBA": "LA"}.get(image.mode)
    return image if target is None else image.convert(target)


def blur(image: Image.Image, sigma: float = 2.0) -> Image.Image:
    """Gaussian blur with standard deviation ``sigma`` pixels."""
    return normalize_mode(image).filter(ImageFilter.GaussianBlur(sigma))


def sharpen(image: Image.Image, radius: float = 2.0, percent: int = 150, threshold: int = 3) -> Image.Image:
    """Unsharp mask (Pillow's defaults)."""
    return normalize_mode(image).filter(ImageFilter.UnsharpMask(radius, percent, threshold))


def _text_stamp(text: str, width: int, color: str) -> Image.Image:
    """``text`` rendered about ``width`` pixels wide on a transparent background."""
    measure = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
    left, _, right, _ = measure.textbbox((0, 0), text, font=ImageFont.load_default(100))
    font = ImageFont.load_default(max(1.0, 100 * width / max(1, right - left)))
    left, top, right, bottom = measure.textbbox((0, 0), text, font=font)
    size = (max(1, math.ceil(right - left)), max(1, math.ceil(bottom - top)))
    stamp = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(stamp).text((-left, -top), text, font=font, fill=ImageColor.getcolor(color, "RGBA"))
    return stamp


def watermark(
    image: Image.Image,
    mark: Image.Image | str,
    *,
    gravity: Gravity = "southeast",
    opacity: float = 0.5,
    size: float = 0.25,
    margin: int = 10,
    color: str = "#ffffff",
) -> Image.Image:
    """Overlay an image or a line of text (in ``color``).

    The mark is scaled to ``size`` times the image width (less if it would not
    fit), placed at ``gravity`` ``margin`` pixels from the edges, and blended at
    ``opacity``.
    """
    if not 0 < opacity <= 1 or not 0 < size <= 1:
        raise ValueError("opacity and size must be in (0, 1]")
    gx, gy = _centering(gravity)
    base = normalize_mode(image)
    target_w = max(1, round(base.width * size))
    if isinstance(mark, str):
        stamp = _text_stamp(mark, target_w, color)
    else:
        stamp = normalize_mode(mark).convert("RGBA")
    scale = min(target_w / stamp.width, base.height / stamp.height)
    stamp = _resample(stamp, _scaled(stamp.size, scale))
    stamp.putalpha(stamp.getchannel("A").point(lambda a: a * opacity))
    x = min(max(0, round(margin + (base.width - stamp.width - 2 * margin) * gx)), base.width - stamp.width)
    y = min(
        max(0, round(margin + (base.height - stamp.height - 2 * margin) * gy)), base.height - stamp.height
    )
    canvas = base.convert("RGBA")
    canvas.alpha_composite(stamp, (x, y))
    return _keep_info(base, canvas if base.mode == "RGBA" else canvas.convert(base.mode))


def placeholder(image: Image.Image, size: int = 16, sigma: float = 1.0) -> Image.Image:
    """A tiny blurred stand-in (at most ``size`` pixels a side) to show while the real one loads."""
    image = normalize_mode(image)
    scale = min(1.0, _fit_scale(image.size, size, size))
    small = image.resize(_scaled(image.size, scale), Image.Resampling.BICUBIC, reducing_gap=2.0)
    return small.filter(ImageFilter.GaussianBlur(sigma)) if sigma > 0 else small


def _flatten(image: Image.Image, background: str) -> Image.Image:
    """Composite an LA/RGBA image over ``background``, giving L/RGB."""
    opaque = image.mode[:-1]
    canvas = Image.new(opaque, image.size, ImageColor.getcolor(background, opaque))
    canvas.paste(image, (0, 0), image.getchannel("A"))
    return _keep_info(image, canvas)


def dominant_color(image: Image.Image) -> str:
    """The most common colour (median-cut over a 64-pixel preview, alpha over white) as ``#rrggbb``."""
    image = normalize_mode(image)
    if image.mode in ("LA", "RGBA"):
        image = _flatten(image, "#ffffff")
    scale = min(1.0, 64 / max(image.size))
    preview = image.resize(_scaled(image.size, scale), Image.Resampling.BOX).convert("RGB")
    quantized = preview.quantize(colors=8, method=Image.Quantize.MEDIANCUT)
    counts = quantized.histogram()
    index = max(range(len(counts)), key=counts.__getitem__)
    palette = quantized.getpalette() or [0] * 768
    red, green, blue = palette[3 * index : 3 * index + 3]
    return f"#{red:02x}{green:02x}{blue:02x}"


def strip(image: Image.Image, keep: Collection[str] = ()) -> Image.Image:
    """Drop metadata (EXIF, XMP, ICC profile, comments...) except the kinds in ``keep``.

    Without strip, outputs carry the source's metadata, GPS position and EXIF
    preview included.
    """
    if unknown := set(keep) - _METADATA_KEYS.keys():
        raise ValueError(f"cannot keep {sorted(unknown)}: choose from exif, xmp, icc")
    kept = {"transparency", *(key for kind in keep for key in _METADATA_KEYS[kind])}
    result = image.copy()
    result.info = {k: v for k, v in image.info.items() if k in kept}
    return result


@dataclass(frozen=True)
class ImageInfo:
    """What ``image_info`` reports."""

    width: int
    height: int
    mode: str
    format: str | None
    frames: int
    orientation: int
    has_alpha: bool


def image_info(image: Image.Image) -> ImageInfo:
    """Facts about an image; ``format`` and ``frames`` describe the file it was opened from."""
    return ImageInfo(
        width=image.width,
        height=image.height,
        mode=image.mode,
        format=image.format,
        frames=int(getattr(image, "n_frames", 1)),
        orientation=_orientation(image),
        has_alpha=image.has_transparency_data,
    )


def pixel_sha256(image: Image.Image) -> str:
    """Hash of mode, size and pixels: equal for the same picture whatever the file format."""
    digest = hashlib.sha256(f"{image.mode} {image.width}x{image.height}\n".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- saving


@dataclass(frozen=True)
class SavedImage:
    """What ``save_image`` wrote: the file's format, pixel size, byte size and hash."""

    path: Path
    format: str
    width: int
    height: int
    bytes: int
    sha256: str


def _format_for(format: str | None, path: Path) -> str:
    if format is not None:
        name = _FORMAT_NAMES.get(format.lower())
        if name is None:
            raise ValueError(f"unknown output format {format!r}; expected one of {', '.join(_FORMAT_NAMES)}")
        return name
    name = _SUFFIX_FORMATS.get(path.suffix.lower())
    if name is None:
        raise ValueError(f"cannot tell the output format from {path.name!r}; give a format")
    return name


def _save_problems(
    fmt: str, quality: int | None, progressive: bool, optimize: bool, lossless: bool, speed: int | None
) -> list[tuple[str, str]]:
    """Options that do not apply to ``fmt``, as (option, message)."""
    problems: list[tuple[str, str]] = []
    if fmt not in SAVE_FORMATS:
        problems.append(("format", f"{fmt.lower()} output is not supported by this Pillow build"))
    if quality is not None and fmt == "PNG":
        problems.append(("quality", "does not apply to png (it is lossless)"))
    elif quality is not None and not 1 <= quality <= 100:
        problems.append(("quality", "must be from 1 to 100"))
    if progressive and fmt != "JPEG":
        problems.append(("progressive", "only applies to jpeg"))
    if optimize and fmt not in ("JPEG", "PNG"):
        problems.append(("optimize", "only applies to jpeg and png"))
    if lossless and fmt != "WEBP":
        problems.append(("lossless", "only applies to webp"))
    if speed is not None and fmt != "AVIF":
        problems.append(("speed", "only applies to avif"))
    elif speed is not None and not 0 <= speed <= 10:
        problems.append(("speed", "must be from 0 (slow, small) to 10 (fast)"))
    return problems


def _icc_fits(icc: bytes, mode: str) -> bool:
    """Whether the profile's colour space (header bytes 16-20) matches the pixels."""
    return icc[16:20] == (b"GRAY" if mode in ("L", "LA") else b"RGB ")


def _encoder_params(
    image: Image.Image,
    fmt: str,
    quality: int | None,
    progressive: bool,
    optimize: bool,
    lossless: bool,
    speed: int | None,
) -> dict[str, Any]:
    """Metadata is passed explicitly: some plugins would otherwise copy it from ``info`` and some not."""
    icc = image.info.get("icc_profile")
    xmp = image.info.get("xmp", image.info.get("XML:com.adobe.xmp", b""))
    params: dict[str, Any] = {
        "exif": image.info.get("exif", b""),
        "icc_profile": icc if icc and _icc_fits(icc, image.mode) else None,
        "xmp": xmp.encode() if isinstance(xmp, str) else xmp,
    }
    if fmt in _DEFAULT_QUALITY:
        params["quality"] = _DEFAULT_QUALITY[fmt] if quality is None else quality
    if fmt == "JPEG":
        params["progressive"] = progressive
    if fmt in ("JPEG", "PNG"):
        params["optimize"] = optimize
    if fmt == "WEBP":
        params["lossless"] = lossless
    if fmt == "AVIF" and speed is not None:
        params["speed"] = speed
    return params


def _write_atomic(target: Path, data: bytes | memoryview) -> None:
    """Temp file beside ``target`` (same file system), fsync, rename over it, fsync the directory."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(target.parent)


def save_image(
    image: Image.Image,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    quality: int | None = None,
    progressive: bool = False,
    optimize: bool = False,
    lossless: bool = False,
    speed: int | None = None,
    background: str = "#ffffff",
) -> SavedImage:
    """Encode ``image`` and atomically replace ``path`` with it.

    ``format`` (jpeg, png, webp, avif) defaults to the one the suffix names.
    Modes are converted as the format needs (alpha flattened over
    ``background`` for JPEG, 16-bit to 8-bit, palettes expanded). Metadata left
    in ``image.info`` is written; a profile that does not match the pixels'
    colour space is dropped. Default quality: JPEG 85, WebP 80, AVIF 60.
    """
    target = Path(path)
    fmt = _format_for(format, target)
    if problems := _save_problems(fmt, quality, progressive, optimize, lossless, speed):
        raise ValueError("; ".join(f"{option}: {message}" for option, message in problems))
    prepared = normalize_mode(image)
    if fmt == "JPEG" and prepared.mode in ("LA", "RGBA"):
        prepared = _flatten(prepared, background)
    buffer = io.BytesIO()
    prepared.save(
        buffer, format=fmt, **_encoder_params(prepared, fmt, quality, progressive, optimize, lossless, speed)
    )
    data = buffer.getbuffer()
    _write_atomic(target, data)
    return SavedImage(
        target, fmt.lower(), prepared.width, prepared.height, len(data), hashlib.sha256(data).hexdigest()
    )


# --------------------------------------------------------------------------- recipe validation


class _Invalid(Exception):
    """A bad value; the message completes "<json path>: "."""


class PathRejected(_Invalid, ValueError):
    """A path that is malformed, missing, of the wrong kind, or outside the image roots."""


_Check = Callable[[object, tuple[Path, ...]], object]


def _by(check: _Check) -> dict[str, _Check]:
    """Field metadata: how the recipe parser validates (and normalises) the option."""
    return {"check": check}


def _got(value: object) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(low: int, high: int, what: str) -> _Check:
    def check(value: object, roots: tuple[Path, ...]) -> object:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Invalid(f"expected {what}, got {_got(value)}")
        return value

    return check


def _number(low: float, high: float, what: str, *, open_low: bool = False) -> _Check:
    def check(value: object, roots: tuple[Path, ...]) -> object:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            above_low = value > low if open_low else value >= low
            if above_low and value <= high:
                return float(value)
        raise _Invalid(f"expected {what}, got {_got(value)}")

    return check


def _bool(value: object, roots: tuple[Path, ...]) -> object:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_got(value)}")
    return value


def _choice(choices: Mapping[str, str] | Collection[str]) -> _Check:
    """One of ``choices``; a mapping also translates the value."""

    def check(value: object, roots: tuple[Path, ...]) -> object:
        if not isinstance(value, str) or value.lower() not in choices:
            raise _Invalid(f"expected one of {', '.join(choices)}, got {_got(value)}")
        return choices[value.lower()] if isinstance(choices, Mapping) else value.lower()

    return check


def _colour(value: object, roots: tuple[Path, ...]) -> object:
    try:
        if isinstance(value, str):
            ImageColor.getrgb(value)
            return value
    except ValueError:
        pass
    raise _Invalid(f'expected a colour such as "#ff8800" or "white", got {_got(value)}')


def _text(value: object, roots: tuple[Path, ...]) -> object:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise _Invalid(f"expected non-empty text of at most 200 characters, got {_got(value)}")
    return value


def _box(value: object, roots: tuple[Path, ...]) -> object:
    if (
        isinstance(value, list)
        and len(value) == 4
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 65535 for v in value)
        and value[2] > value[0]
        and value[3] > value[1]
    ):
        return tuple(value)
    raise _Invalid(
        f"expected [left, top, right, bottom] with right > left and bottom > top, got {_got(value)}"
    )


def _kinds(value: object, roots: tuple[Path, ...]) -> object:
    if not isinstance(value, list) or not all(isinstance(v, str) and v in _METADATA_KEYS for v in value):
        raise _Invalid(f'expected a list drawn from "exif", "xmp", "icc", got {_got(value)}')
    return tuple(value)


def _candidate(value: object, roots: tuple[Path, ...]) -> tuple[str, Path]:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise PathRejected(f"expected a path, got {_got(value)}")
    path = Path(value)
    if ".." in path.parts:
        raise PathRejected(f"{value!r}: '..' is not allowed")
    return value, Path(os.path.abspath(path if path.is_absolute() else roots[0] / path))


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def _escape(raw: str, lexical: Path, roots: tuple[Path, ...]) -> PathRejected:
    if _inside(lexical, roots):
        return PathRejected(f"{raw!r} leads outside the image roots through a symbolic link")
    return PathRejected(f"{raw!r} is outside the image roots")


def _existing_file(value: object, roots: tuple[Path, ...]) -> Path:
    """An existing regular file whose real path lies in a root; returns that real path."""
    raw, lexical = _candidate(value, roots)
    try:
        real = Path(os.path.realpath(lexical, strict=True))
    except OSError:
        raise PathRejected(f"{raw!r} does not exist") from None
    if not _inside(real, roots):
        raise _escape(raw, lexical, roots)
    if not real.is_file():
        raise PathRejected(f"{raw!r} is not a regular file")
    return real


def _output_file(value: object, roots: tuple[Path, ...]) -> Path:
    """A file path whose deepest existing ancestor really lies in a root (missing folders get made)."""
    raw, lexical = _candidate(value, roots)
    if raw.endswith(("/", os.sep)):
        raise PathRejected(f"{raw!r} names a folder, not a file")
    existing, missing = lexical.parent, [lexical.name]
    while not os.path.lexists(existing):
        existing, missing = existing.parent, [existing.name, *missing]
    try:
        real_parent = Path(os.path.realpath(existing, strict=True))
    except OSError:
        raise PathRejected(f"{raw!r}: cannot resolve {existing}") from None
    if not _inside(real_parent, roots):
        raise _escape(raw, lexical, roots)
    if not real_parent.is_dir():
        raise PathRejected(f"{raw!r}: {existing} is not a folder")
    target = real_parent.joinpath(*missing)
    if target.is_dir():
        raise PathRejected(f"{raw!r} is a folder")
    return target


def _existing_folder(value: object, roots: tuple[Path, ...]) -> Path:
    """An existing folder whose real path lies in a root; returns that real path."""
    raw, lexical = _candidate(value, roots)
    try:
        real = Path(os.path.realpath(lexical, strict=True))
    except OSError:
        raise PathRejected(f"{raw!r} does not exist") from None
    if not _inside(real, roots):
        raise _escape(raw, lexical, roots)
    if not real.is_dir():
        raise PathRejected(f"{raw!r} is not a folder")
    return real


def resolve_path(value: object, roots: Sequence[Path], *, kind: Literal["file", "folder"] = "file") -> Path:
    """The real path of an existing file (or folder) named by ``value``, confined to ``roots``.

    The rules of a recipe's ``input`` (docs/images.md): relative paths start at the
    first root, ``..`` is refused, links are resolved before the check. Raises
    ``PathRejected``; ``ValueError`` when a root is missing.
    """
    real = real_roots(roots)
    return _existing_file(value, real) if kind == "file" else _existing_folder(value, real)


_DIM: Final = _int(1, MAX_DIMENSION, f"a positive integer up to {MAX_DIMENSION}")
_GRAVITY: Final = _choice([*_CENTERING, "smart"])
_PLAIN_GRAVITY: Final = _choice(list(_CENTERING))
_MarkLoader = Callable[[Path], Image.Image]


@dataclass(frozen=True)
class Op(ABC):
    """A validated recipe step; its options are the fields of the subclass."""

    name: ClassVar[str]

    @abstractmethod
    def apply(self, image: Image.Image, load_mark: _MarkLoader) -> Image.Image:
        """Run the step; ``load_mark`` decodes watermark images (under the run's limits)."""

    def problems(self) -> Iterator[tuple[str, str]]:
        """Checks across options, as (option, message)."""
        return iter(())

    def draft_side(self) -> int | None:
        """As a first op: the box side that lets a JPEG decode at reduced scale."""
        return None


@dataclass(frozen=True)
class AutoOrientOp(Op):
    name: ClassVar[str] = "auto_orient"

    def apply(self, image: Image.Image, load_mark: _MarkLoader) -> Image.Image:
        return auto_orient(image)


@dataclass(frozen=True)
class ResizeOp(Op):
    name: ClassVar[str] = "resize"
    width: int | None = field(default=None, metadata=_by(_DIM))
    height: int | None = field(default=None, metadata=_by(_DIM))
    mode: ResizeMode = field(default="fit", metadata=_by(_choice(list(_RESIZE_KINDS))))
    upscale: bool = field(default=False, metadata=_by(_bool))
    gravity: Gravity = field(default="center", metadata=_by(_GRAVITY))
    background: str | None = field(default=None, metadata=_by(_colour))

    def apply(self, image: Image.Image, load_mark: _MarkLoader) -> Image.Image:
        return resize(
            image,
            self.width,
            self.height,
            mode=self.mode,
            upscale=self.upscale,
            gravity=self.gravity,
            background=self.background,
        )

    def problems(self) -> Iterator[tuple[str, str]]:
        kind = _RESIZE_KINDS[self.mode]
        if self.width is None and self.height is None:
            yield "width", "width, height or both are required"
        elif kind != "fit" and (self.width is None or self.height is None):
            missing = "width" if self.width is None else "height"
            yield missing, f"required by mode {self.mode}"
        if self.gravity == "smart" and kind != "fill":
            yield "gravity", "smart only applies to mode fill/cover"
        if self.background is not None and kind != "pad":
            yield "background", "only applies to mode pad/contain"


@dataclass(frozen=True)
class ThumbnailOp(Op):
    name: ClassVar[str] = "thumbnail"
    width: int | None = field(default=None, metadata=_by(_DIM))
    height: int | None = field(default=None, metadata=_by(_DIM))

    def apply(self, image: Image.Image, load_mark: _MarkLoader) -> Image.Image:
        return thumbnail(image, self.width, self.height)

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.width is None and self.height is None:
            yield "width", "width, height or both are required"

    def draft_side(self) -> int | None:
        return max(self.width or 0, self.height or 0)


@dataclass(frozen=True)
class CropOp(Op):
    name: ClassVar[str] = "crop"
    width: int | None = field(default=None, metadata=_by(_int(1, 65535, "a positive integer")))
    height: int | None = field(default=None, metadata=_by(_int(1, 65535, "a positive integer")))
    gravity: Gravity = field(default="center", metadata=_by(_GRAVITY))
    box: tuple[int, int, int, int] | None = field(default=None, metadata=_by(_box))

    def apply(self, image: Image.Image, load_mark: _MarkLoader) -> Image.Image:
        if self.box is not None:
            return crop_box(image, self.box)
        return crop(image, self.width, self.height, gravity=self.gravity)

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.box is not None and (self.width, self.height) != (None, None):
            yield "box", "give either box or width/height, not both"
        if self.box is None and self.width is None and self.height is None:
            yield "width", "width, height or box is required"
        if self.box is not None and self.gravity != "center":
            yield "gravity", "does not apply to box"


@dataclass(frozen=True)
class RotateOp(Op):
    name: ClassVar[str] = "rotate"
    angle: float = field(metadata=_by(_number(-360, 360, "degrees between -360 and 360")))
    expand: bool = field(default=True, metadata=_by(_bool))
    background: str | None = field(default=None, metadata=_by(_colour))

    def apply(self, image: Image.Image, load_mark: _MarkLoader) -> Image.Image:
        return rotate(image, self.angle, expand=self.expand, background=self.background)


@dataclass(frozen=True)
class FlipOp(Op):
    name: ClassVar[str] = "flip"

    def apply(self, image: Image.Image, load_mark: _MarkLoader) -> Image.Image:
        return flip(image)


@dataclass(frozen=True)
class FlopOp(Op):
    name: ClassVar[str] = "flop"

    def apply(self, image: Image.Image, load_mark: _MarkLoader) -> Image.Image:
        return flop(image)


@dataclass(frozen=True)
class SrgbOp(Op):
    name: ClassVar[str] = "srgb"

    def apply(self, image: Image.Image, load_mark: _MarkLoader) -> Image.Image:
        return to_srgb(image)


@dataclass(frozen=True)
class GrayscaleOp(Op):
    name: ClassVar[str] = "grayscale"

    def apply(self, image: Image.Image, load_mark: _MarkLoader) -> Image.Image:
        return grayscale(image)


@dataclass(frozen=True)
class BlurOp(Op):
    name: ClassVar[str] = "blur"
    sigma: float = field(
        default=2.0, metadata=_by(_number(0, 250, "a number above 0, at most 250", open_low=True))
    )

    def apply(self, image: Image.Image, load_mark: _MarkLoader) -> Image.Image:
        return blur(image, self.sigma)


@dataclass(frozen=True)
class SharpenOp(Op):
    name: ClassVar[str] = "sharpen"
    radius: float = field(
        default=2.0, metadata=_by(_number(0, 50, "a number above 0, at most 50", open_low=True))
    )
    percent: int = field(default=150, metadata=_by(_int(1, 1000, "an integer from 1 to 1000")))
    threshold: int = field(default=3, metadata=_by(_int(0, 255, "an integer from 0 to 255")))

    def apply(self, image: Image.Image, load_mark: _MarkLoader) -> Image.Image:
        return sharpen(image, self.radius, self.percent, self.threshold)


@dataclass(frozen=True)
class WatermarkOp(Op):
    name: ClassVar[str] = "watermark"
    image: Path | None = field(default=None, metadata=_by(_existing_file))
    text: str | None = field(default=None, metadata=_by(_text))
    gravity: Gravity = field(default="southeast", metadata=_by(_PLAIN_GRAVITY))
    opacity: float = field(
        default=0.5, metadata=_by(_number(0, 1, "a number above 0, at most 1", open_low=True))
    )
    size: float = field(
        default=0.25, metadata=_by(_number(0, 1, "a fraction of the width above 0, at most 1", open_low=True))
    )
    margin: int = field(default=10, metadata=_by(_int(0, 1000, "an integer from 0 to 1000")))
    color: str | None = field(default=None, metadata=_by(_colour))

    def apply(self, image: Image.Image, load_mark: _MarkLoader) -> Image.Image:
        mark = load_mark(self.image) if self.image is not None else self.text or ""
        return watermark(
            image,
            mark,
            gravity=self.gravity,
            opacity=self.opacity,
            size=self.size,
            margin=self.margin,
            color=self.color or "#ffffff",
        )

    def problems(self) -> Iterator[tuple[str, str]]:
        if (self.image is None) == (self.text is None):
            yield "image", "give exactly one of image and text"
        if self.color is not None and self.text is None:
            yield "color", "only applies to text"


@dataclass(frozen=True)
class PlaceholderOp(Op):
    name: ClassVar[str] = "placeholder"
    size: int = field(default=16, metadata=_by(_int(1, 64, "an integer from 1 to 64")))
    sigma: float = field(default=1.0, metadata=_by(_number(0, 10, "a number from 0 to 10")))

    def apply(self, image: Image.Image, load_mark: _MarkLoader) -> Image.Image:
        return placeholder(image, self.size, self.sigma)

    def draft_side(self) -> int | None:
        return self.size


@dataclass(frozen=True)
class StripOp(Op):
    name: ClassVar[str] = "strip"
    keep: tuple[str, ...] = field(default=(), metadata=_by(_kinds))

    def apply(self, image: Image.Image, load_mark: _MarkLoader) -> Image.Image:
        return strip(image, self.keep)


@dataclass(frozen=True)
class SaveOp:
    """The mandatory last step; ``format`` is resolved (from the path suffix if omitted)."""

    name: ClassVar[str] = "save"
    format: str | None = field(default=None, metadata=_by(_choice(_FORMAT_NAMES)))
    quality: int | None = field(default=None, metadata=_by(_int(1, 100, "an integer from 1 to 100")))
    progressive: bool = field(default=False, metadata=_by(_bool))
    optimize: bool = field(default=False, metadata=_by(_bool))
    lossless: bool = field(default=False, metadata=_by(_bool))
    speed: int | None = field(default=None, metadata=_by(_int(0, 10, "an integer from 0 to 10")))
    background: str = field(default="#ffffff", metadata=_by(_colour))


_OPS: Final[dict[str, type[Op]]] = {
    cls.name: cls
    for cls in (
        AutoOrientOp,
        ResizeOp,
        ThumbnailOp,
        CropOp,
        RotateOp,
        FlipOp,
        FlopOp,
        SrgbOp,
        GrayscaleOp,
        BlurOp,
        SharpenOp,
        WatermarkOp,
        PlaceholderOp,
        StripOp,
    )
}
_MAX_OUTPUTS: Final = 64
_MAX_OPS: Final = 64


@dataclass(frozen=True)
class Output:
    """One file a recipe writes: ``ops`` in order, then ``save``."""

    path: Path
    ops: tuple[Op, ...]
    save: SaveOp


@dataclass(frozen=True)
class Recipe:
    """A validated recipe: real paths, confined to ``roots`` (themselves real paths)."""

    input: Path
    outputs: tuple[Output, ...]
    roots: tuple[Path, ...]

    def draft_box(self) -> tuple[int, int] | None:
        """When every output starts by shrinking, the box a JPEG may be decoded down to."""
        sides = [out.ops[0].draft_side() if out.ops else None for out in self.outputs]
        if any(side is None for side in sides):
            return None
        side = max(s for s in sides if s is not None)
        return side, side


_Spec = TypeVar("_Spec", bound="Op | SaveOp")


def _parse_fields(
    cls: type[_Spec], raw: Mapping[str, object], where: str, roots: tuple[Path, ...], errors: list[str]
) -> _Spec | None:
    """Build ``cls`` from ``raw`` by its fields' checks; ``None`` if anything was wrong."""
    before = len(errors)
    specs = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key != "op" and key not in specs:
            options = ", ".join(specs) or "none"
            errors.append(f"{where}.{key}: unknown option for {raw['op']} (options: {options})")
    values: dict[str, Any] = {}
    for name, spec in specs.items():
        if name in raw:
            try:
                values[name] = spec.metadata["check"](raw[name], roots)
            except _Invalid as exc:
                errors.append(f"{where}.{name}: {exc}")
        elif spec.default is dataclasses.MISSING:
            errors.append(f"{where}.{name}: required")
    return cls(**values) if len(errors) == before else None


def _parse_op(raw: object, where: str, roots: tuple[Path, ...], errors: list[str]) -> Op | None:
    name = raw.get("op") if isinstance(raw, Mapping) else None
    if not isinstance(raw, Mapping) or not isinstance(name, str):
        errors.append(f'{where}: expected an object like {{"op": "resize", "width": 800}}, got {_got(raw)}')
        return None
    cls = _OPS.get(name)
    if cls is None:
        errors.append(f"{where}.op: unknown op {_got(name)} (ops: {', '.join([*_OPS, 'save'])})")
        return None
    op = _parse_fields(cls, raw, where, roots, errors)
    if op is not None:
        errors.extend(f"{where}.{option}: {message}" for option, message in op.problems())
    return op


def _parse_output(raw: object, where: str, roots: tuple[Path, ...], errors: list[str]) -> Output | None:
    if not isinstance(raw, Mapping):
        errors.append(f"{where}: expected an object with path and ops, got {_got(raw)}")
        return None
    before = len(errors)
    errors.extend(
        f"{where}.{key}: unknown field (fields: path, ops)" for key in raw if key not in ("path", "ops")
    )
    path: Path | None = None
    try:
        path = _output_file(raw.get("path"), roots)
    except _Invalid as exc:
        errors.append(f"{where}.path: {exc}")
    steps = raw.get("ops")
    if not isinstance(steps, list) or not steps or len(steps) > _MAX_OPS:
        errors.append(
            f"{where}.ops: expected a list of 1 to {_MAX_OPS} ops ending with save, got {_got(steps)}"
        )
        return None
    ops: list[Op] = []
    save: SaveOp | None = None
    last = f"{where}.ops[{len(steps) - 1}]"
    for j, step in enumerate(steps):
        at = f"{where}.ops[{j}]"
        if isinstance(step, Mapping) and step.get("op") == "save":
            if j != len(steps) - 1:
                errors.append(f"{at}: save must be the last op")
            save = _parse_fields(SaveOp, step, at, roots, errors)
        elif (op := _parse_op(step, at, roots, errors)) is not None:
            ops.append(op)
    if not (isinstance(steps[-1], Mapping) and steps[-1].get("op") == "save"):
        errors.append(f"{where}.ops: the last op must be save")
    if save is None or path is None:
        return None
    try:
        fmt = _format_for(save.format, path)
    except ValueError as exc:
        errors.append(f"{where}.path: {exc}")
        return None
    implied = _SUFFIX_FORMATS.get(path.suffix.lower())
    if implied is not None and implied != fmt:
        errors.append(f"{where}.path: suffix {path.suffix} does not match format {fmt.lower()}")
    errors.extend(
        f"{last}.{option}: {message}"
        for option, message in _save_problems(
            fmt, save.quality, save.progressive, save.optimize, save.lossless, save.speed
        )
    )
    if len(errors) != before:
        return None
    return Output(path, tuple(ops), dataclasses.replace(save, format=fmt))


def real_roots(roots: Sequence[Path]) -> tuple[Path, ...]:
    if not roots:
        raise ValueError("image recipes need at least one root folder")
    real: list[Path] = []
    for root in roots:
        try:
            resolved = Path(os.path.realpath(root, strict=True))
        except OSError as exc:
            raise ValueError(f"image root {root} does not exist") from exc
        if not resolved.is_dir():
            raise ValueError(f"image root {root} is not a folder")
        real.append(resolved)
    return tuple(real)


def parse_recipe(data: Mapping[str, object], roots: Sequence[Path]) -> Recipe:
    """Validate a whole recipe before any work; raise ``RecipeError`` listing every problem.

    Relative paths are taken from the first root. Every path must really lie in
    a root: ``..`` is refused outright and symbolic links are resolved before the
    check. Inputs and watermarks must exist; outputs need an existing ancestor
    inside a root (missing folders are created when the recipe runs).
    """
    resolved = real_roots(roots)
    if not isinstance(data, Mapping):
        raise RecipeError([f"recipe: expected an object with input and outputs, got {_got(data)}"])
    errors = [
        f"{key}: unknown field (fields: input, outputs)" for key in data if key not in ("input", "outputs")
    ]
    source: Path | None = None
    if "input" not in data:
        errors.append("input: required")
    else:
        try:
            source = _existing_file(data["input"], resolved)
        except _Invalid as exc:
            errors.append(f"input: {exc}")
    raw_outputs = data.get("outputs")
    outputs: list[Output] = []
    if not isinstance(raw_outputs, list) or not raw_outputs or len(raw_outputs) > _MAX_OUTPUTS:
        errors.append(f"outputs: expected a list of 1 to {_MAX_OUTPUTS} outputs, got {_got(raw_outputs)}")
    else:
        seen: dict[Path, int] = {}
        for i, raw in enumerate(raw_outputs):
            output = _parse_output(raw, f"outputs[{i}]", resolved, errors)
            if output is None:
                continue
            if output.path in seen:
                errors.append(f"outputs[{i}].path: same file as outputs[{seen[output.path]}]")
            seen.setdefault(output.path, i)
            outputs.append(output)
    if errors or source is None:
        raise RecipeError(errors)
    return Recipe(source, tuple(outputs), resolved)


# --------------------------------------------------------------------------- recipe execution


def _ready_folder(target: Path, roots: tuple[Path, ...], where: str) -> None:
    """Create missing folders, then re-check that no link moved the target out of the roots."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if Path(os.path.realpath(target.parent)) != target.parent or not _inside(target.parent, roots):
        raise RecipeError([f"{where}: {target.parent} changed into a link since the recipe was validated"])


def run_recipe(
    recipe: Recipe, *, limits: Limits = DEFAULT_LIMITS, budget: PixelBudget = PIXEL_BUDGET
) -> list[dict[str, object]]:
    """Decode the input once and write every output; returns one dict per output.

    Each dict holds path, format, width, height, bytes and sha256 of the file
    written. The run holds ``WORKING_COPIES`` times the decoded megapixels from
    ``budget`` throughout. Each file is replaced atomically, but outputs are
    written one after another: a failure can leave earlier ones done.
    """
    if Path(os.path.realpath(recipe.input)) != recipe.input:
        raise RecipeError(["input: changed into a link since the recipe was validated"])
    marks: dict[Path, Image.Image] = {}

    def load_mark(path: Path) -> Image.Image:
        if path not in marks:
            decoded = open_image(
                path, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels, formats=limits.formats
            )
            marks[path] = _working(decoded, str(path))
        return marks[path]

    results: list[dict[str, object]] = []
    with ExitStack() as held:
        name = str(recipe.input)
        with _open_lazy(
            recipe.input, limits.max_bytes, limits.max_pixels, limits.formats, recipe.draft_box()
        ) as lazy:
            held.enter_context(budget.hold(WORKING_COPIES * lazy.width * lazy.height / 1e6))
            source = _working(_decode(lazy, name), name)
        for i, output in enumerate(recipe.outputs):
            image = source
            for j, op in enumerate(output.ops):
                try:
                    image = op.apply(image, load_mark)
                except ImageRejected:
                    raise
                except ValueError as exc:
                    raise RecipeError([f"outputs[{i}].ops[{j}]: {exc}"]) from exc
            _ready_folder(output.path, recipe.roots, f"outputs[{i}].path")
            save = output.save
            saved = save_image(
                image,
                output.path,
                format=save.format,
                quality=save.quality,
                progressive=save.progressive,
                optimize=save.optimize,
                lossless=save.lossless,
                speed=save.speed,
                background=save.background,
            )
            results.append({**dataclasses.asdict(saved), "path": str(saved.path)})
    return results
