"""Saving: encode in memory, then replace the target atomically and durably."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from PIL import Image

from ..durable import write_atomic
from ._decode import _DECODE_ERRORS, _WEBP_SUPPORTED, AVIF_SUPPORTED, load_plugins
from ._ops import _exif_writable, _flatten, normalize_mode

SAVE_FORMATS: Final = frozenset(
    {"JPEG", "PNG"} | ({"WEBP"} if _WEBP_SUPPORTED else set()) | ({"AVIF"} if AVIF_SUPPORTED else set())
)
"""Formats ``save_image`` writes."""
_FORMAT_NAMES: Final = {"jpeg": "JPEG", "jpg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF"}
_SUFFIX_FORMATS: Final = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".avif": "AVIF"}
_DEFAULT_QUALITY: Final = {"JPEG": 85, "WEBP": 80, "AVIF": 60}
_JPEG_MARKER_BYTES: Final = 65533
"""Most a JPEG marker segment holds: a longer EXIF, XMP (with its namespace) or comment is dropped."""
_XMP_NAMESPACE_BYTES: Final = 29


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


def _fits(fmt: str, data: bytes, overhead: int = 0) -> bool:
    """Whether a metadata block fits the format: one JPEG marker segment, or anything elsewhere."""
    return fmt != "JPEG" or overhead + len(data) <= _JPEG_MARKER_BYTES


def _exif_parses(exif: bytes) -> bool:
    """Whether Pillow reads ``exif`` and writes it back (its AVIF encoder does; the others copy the
    bytes): a camera's corrupt block is dropped rather than failing the save."""
    if not exif:
        return True
    parsed = Image.Exif()
    try:
        parsed.load(exif)
    except Exception:  # SyntaxError "not a TIFF file", struct errors...
        return False
    return _exif_writable(parsed)


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
    xmp = xmp.encode() if isinstance(xmp, str) else xmp
    exif = image.info.get("exif", b"")
    params: dict[str, Any] = {
        "exif": exif if _fits(fmt, exif) and (fmt != "AVIF" or _exif_parses(exif)) else b"",
        "icc_profile": icc if icc and _icc_fits(icc, image.mode) else None,
        "xmp": xmp if _fits(fmt, xmp, _XMP_NAMESPACE_BYTES) else b"",
    }
    if fmt == "JPEG":  # Pillow's JPEG encoder takes a comment from ``info`` unless given one
        comment = image.info.get("comment", b"")
        comment = comment.encode() if isinstance(comment, str) else comment  # a PNG's text chunk
        params["comment"] = comment if _fits(fmt, comment) else b""
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
    temp_tag: str | None = None,
) -> SavedImage:
    """Encode ``image`` and atomically replace ``path`` with it.

    ``format`` (jpeg, png, webp, avif) defaults to the one the suffix names.
    Modes are converted as the format needs (alpha flattened over
    ``background`` for JPEG, 16-bit to 8-bit, palettes expanded). Metadata left
    in ``image.info`` is written; a profile that does not match the pixels'
    colour space is dropped, and so is a block too long for a JPEG marker.
    Default quality: JPEG 85, WebP 80, AVIF 60. ``ValueError`` when the
    encoder refuses the image (a WebP over 16383 pixels a side...). ``temp_tag``:
    see ``write_atomic``'s ``tag``.
    """
    target = Path(path)
    fmt = _format_for(format, target)
    if problems := _save_problems(fmt, quality, progressive, optimize, lossless, speed):
        raise ValueError("; ".join(f"{option}: {message}" for option, message in problems))
    prepared = normalize_mode(image)
    if fmt == "JPEG" and prepared.mode in ("LA", "RGBA"):
        prepared = _flatten(prepared, background)
    buffer = io.BytesIO()
    load_plugins([fmt])
    params = _encoder_params(prepared, fmt, quality, progressive, optimize, lossless, speed)
    try:
        prepared.save(buffer, format=fmt, **params)
    except (*_DECODE_ERRORS, RuntimeError) as exc:  # into memory: the encoder refusing the image, not I/O
        raise ValueError(f"cannot encode as {fmt.lower()}: {exc}") from exc
    data = buffer.getvalue()
    write_atomic(target, data, tag=temp_tag)
    return SavedImage(
        target, fmt.lower(), prepared.width, prepared.height, len(data), hashlib.sha256(data).hexdigest()
    )
