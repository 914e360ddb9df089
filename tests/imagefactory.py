"""Sample images generated at test time, so no binary file is committed.

The generators live in ``example_project/photo_workflow/samples.py`` (one
source for the tests and the example project, which drops them into its
inbox); this module re-exports them and adds the few only the tests need.
Each function writes one file and returns its path; ``write_samples(folder)``
writes the tests' whole set.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "example_project"))

# One source of truth: the example project's generators (the path above makes them importable).
from photo_workflow.samples import (
    BLUE,
    BOMB_SIZE,
    GREY,
    RED,
    animated_gif,
    bomb_png,
    cmyk_jpeg,
    huge_header_png,
    junk,
    oriented_jpeg,
    palette_png,
    photo,
    png16,
    rgba_png,
    truncated_jpeg,
)

__all__ = [
    "BLUE",
    "BOMB_SIZE",
    "GREY",
    "ICC_SWAPPED",
    "RED",
    "animated_gif",
    "bomb_png",
    "cmyk_jpeg",
    "detail_right",
    "huge_header_png",
    "icc_jpeg",
    "junk",
    "la_png",
    "oriented_jpeg",
    "palette_png",
    "patched_exif",
    "photo",
    "png16",
    "rgba_png",
    "truncated_jpeg",
    "write_samples",
]


# --------------------------------------------------------------------------- only for the tests


def detail_right(path: Path, size: tuple[int, int] = (300, 100)) -> Path:
    """Flat grey on the left two thirds, noise on the right third: smart crop must pick the noise."""
    image = Image.new("L", size, 128)
    noise = Image.effect_noise((size[0] // 3, size[1]), 80)
    image.paste(noise, (size[0] - noise.width, 0))
    image.convert("RGB").save(path, "PNG")
    return path


def la_png(path: Path, size: tuple[int, int] = (40, 30)) -> Path:
    """Grey with alpha: left half transparent."""
    image = Image.new("LA", size, (200, 255))
    ImageDraw.Draw(image).rectangle((0, 0, size[0] // 2 - 1, size[1] - 1), fill=(0, 0))
    image.save(path, "PNG")
    return path


def _icc_profile_swapping_red_and_green() -> bytes:
    """A minimal ICC v2 RGB display profile whose red primary is sRGB's green and vice versa.

    Converting through it to sRGB visibly swaps red and green, which proves the
    profile was used.
    """

    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ \0\0\0\0" + s15(x) + s15(y) + s15(z)

    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, 0x0233) + b"\0\0"  # gamma 2.2
    name = b"spoolpipe swapped RG\0"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(name)) + name + b"\0" * (4 + 4 + 2 + 1 + 67)
    tags = [
        (b"desc", desc),
        (b"cprt", b"text\0\0\0\0public domain\0"),
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", xyz(0.3851, 0.7169, 0.0971)),
        (b"gXYZ", xyz(0.4361, 0.2225, 0.0139)),
        (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (
        struct.pack(">I", size)
        + b"lcms"
        + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ "
        + struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
        + b"acsp"
        + b"\0" * 28
        + s15(0.9642)
        + s15(1.0)
        + s15(0.8249)
        + b"\0" * 48
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


ICC_SWAPPED = _icc_profile_swapping_red_and_green()


def icc_jpeg(path: Path, size: tuple[int, int] = (48, 32)) -> Path:
    """Reddish pixels (200, 30, 30) tagged with ``ICC_SWAPPED``: greenish once converted to sRGB."""
    Image.new("RGB", size, (200, 30, 30)).save(path, "JPEG", quality=95, icc_profile=ICC_SWAPPED)
    return path


def patched_exif(tags: dict[int, object], patches: dict[int, tuple[int, int]]) -> bytes:
    """An EXIF block Pillow reads but cannot write back: ``tags`` written, then each entry of
    ``patches`` (tag -> (new tag, new type)) rewritten in the first IFD.

    ``patched_exif({274: 6, 305: "x"}, {305: (330, 2)})`` gives SubIFDs (330) holding text;
    ``patched_exif({274: 6}, {274: (274, 7)})`` an Orientation of type UNDEFINED (bytes).
    """
    exif = Image.Exif()
    for tag, value in tags.items():
        exif[tag] = value
    data = bytearray(exif.tobytes())  # b"Exif\0\0", then the TIFF header
    endian = "<" if data[6:8] == b"II" else ">"
    (ifd,) = struct.unpack_from(endian + "L", data, 10)
    (count,) = struct.unpack_from(endian + "H", data, 6 + ifd)
    for i in range(count):
        entry = 6 + ifd + 2 + 12 * i
        (tag,) = struct.unpack_from(endian + "H", data, entry)
        if tag in patches:
            struct.pack_into(endian + "HH", data, entry, *patches[tag])
    return bytes(data)


# --------------------------------------------------------------------------- the whole set


def write_samples(folder: Path) -> dict[str, Path]:
    """Write every sample into ``folder`` (created if missing); returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = {f"orientation-{n}": oriented_jpeg(folder / f"orientation-{n}.jpg", n) for n in range(1, 9)}
    samples |= {
        "photo-jpeg": photo(folder / "photo.jpg", (640, 480)),
        "photo-png": photo(folder / "photo.png"),
        "photo-webp": photo(folder / "photo.webp"),
        "photo-bmp": photo(folder / "photo.bmp"),
        "photo-tiff": photo(folder / "photo.tiff"),
        "detail-right": detail_right(folder / "detail-right.png"),
        "cmyk-jpeg": cmyk_jpeg(folder / "cmyk.jpg"),
        "palette-png": palette_png(folder / "palette-transparent.png"),
        "png16": png16(folder / "grey-16bit.png"),
        "rgba-png": rgba_png(folder / "rgba.png"),
        "la-png": la_png(folder / "grey-alpha.png"),
        "animated-gif": animated_gif(folder / "animated.gif"),
        "icc-jpeg": icc_jpeg(folder / "icc-swapped.jpg"),
        "truncated-jpeg": truncated_jpeg(folder / "truncated.jpg"),
        "bomb-png": bomb_png(folder / "bomb.png"),
        "huge-header-png": huge_header_png(folder / "huge-header.png"),
        "junk-jpeg": junk(folder / "junk.jpg"),
    }
    return samples
