"""Sample photos, generated on demand so that no binary file is committed.

Each generator writes one file and returns its path. ``write_samples(folder)``
drops the example's whole set (good photos, awkward formats, a duplicate and
hostile files) and says what the workflow must do with each one. The test
suite (``tests/imagefactory.py``) uses the same generators.

Only Pillow is needed here, so this module can be imported without spoolpipe.
"""

from __future__ import annotations

import functools
import random
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image, ImageDraw, PngImagePlugin

RED = (230, 20, 20)
BLUE = (20, 20, 230)
GREY = (128, 128, 128)
DARK = (30, 30, 30)


# --------------------------------------------------------------------------- EXIF orientation


def _stored_point(orientation: int, u: int, v: int, width: int, height: int) -> tuple[int, int]:
    """Where visual pixel (u, v) of a ``width`` x ``height`` picture is stored, per the EXIF spec.

    Orientation n says where the stored rows and columns go on screen, e.g. 6:
    "row 0 is the visual right-hand side, column 0 the visual top". Written
    from the specification, not from Pillow's transpose table, so that tests
    check Pillow's table rather than repeat it.
    """
    return {
        1: (u, v),
        2: (width - 1 - u, v),
        3: (width - 1 - u, height - 1 - v),
        4: (u, height - 1 - v),
        5: (v, u),
        6: (v, width - 1 - u),
        7: (height - 1 - v, width - 1 - u),
        8: (height - 1 - v, u),
    }[orientation]


def oriented_jpeg(path: Path, orientation: int, size: tuple[int, int] = (64, 48), *, marks: int = 0) -> Path:
    """A JPEG that shows, once oriented, ``size`` with a red square top-left and a blue one top-right.

    ``marks`` small dark squares along the visual bottom edge make otherwise
    identical pictures differ (so that de-duplication keeps them apart).
    """
    width, height = size
    stored_size = size if orientation <= 4 else (height, width)
    image = Image.new("RGB", stored_size, GREY)
    draw = ImageDraw.Draw(image)

    def visual_rectangle(left: int, top: int, side: int, colour: tuple[int, int, int]) -> None:
        corners = [
            _stored_point(orientation, u, v, width, height)
            for u in (left, left + side - 1)
            for v in (top, top + side - 1)
        ]
        xs, ys = [c[0] for c in corners], [c[1] for c in corners]
        draw.rectangle((min(xs), min(ys), max(xs), max(ys)), fill=colour)

    side = min(width, height) // 3
    for colour, left in ((RED, 0), (BLUE, width - side)):
        visual_rectangle(left, 0, side, colour)
    mark = max(2, side // 6)
    for i in range(marks):
        visual_rectangle(mark + 2 * i * mark, height - 2 * mark, mark, DARK)
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "spoolpipe test camera"
    image.save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


# --------------------------------------------------------------------------- ordinary and awkward images


def photo(path: Path, size: tuple[int, int] = (320, 240), fmt: str | None = None) -> Path:
    """A photo-like RGB picture (gradients and shapes) in the format the suffix names."""
    red = Image.linear_gradient("L").resize(size)
    green = Image.radial_gradient("L").resize(size)
    blue = red.transpose(Image.Transpose.ROTATE_180)
    image = Image.merge("RGB", (red, green, blue))
    draw = ImageDraw.Draw(image)
    draw.ellipse((size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2), fill=(250, 200, 0))
    draw.rectangle((size[0] * 2 // 3, size[1] // 2, size[0] - 10, size[1] - 10), fill=(0, 90, 160))
    image.save(path, fmt)
    return path


def cmyk_jpeg(path: Path, size: tuple[int, int] = (48, 32)) -> Path:
    """A CMYK JPEG, pure red (no cyan, full magenta and yellow)."""
    Image.new("CMYK", size, (0, 255, 255, 0)).save(path, "JPEG", quality=95)
    return path


def palette_png(path: Path, size: tuple[int, int] = (32, 32)) -> Path:
    """A palette PNG whose index 0 is transparent: left half transparent, right half red."""
    image = Image.new("P", size, 0)
    image.putpalette([0, 0, 0, *RED] + [0] * (256 - 2) * 3)
    ImageDraw.Draw(image).rectangle((size[0] // 2, 0, size[0] - 1, size[1] - 1), fill=1)
    image.save(path, "PNG", transparency=0)
    return path


def png16(path: Path, size: tuple[int, int] = (64, 16)) -> Path:
    """A 16-bit greyscale PNG, a left-to-right ramp over the full 0-65535 range."""
    width, height = size
    row = b"".join(struct.pack("<H", round(x * 65535 / (width - 1))) for x in range(width))
    Image.frombytes("I;16", size, row * height).save(path, "PNG")
    return path


def rgba_png(path: Path, size: tuple[int, int] = (40, 30)) -> Path:
    """RGBA: transparent, with an opaque blue block in the middle."""
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle((10, 8, 29, 21), fill=(*BLUE, 255))
    image.save(path, "PNG")
    return path


def animated_gif(path: Path, size: tuple[int, int] = (32, 24)) -> Path:
    """Three frames: red, green, blue."""
    frames = [Image.new("RGB", size, colour) for colour in (RED, (20, 200, 20), BLUE)]
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def png_with_new_metadata(source: Path, path: Path) -> Path:
    """The same pixels as the PNG ``source``, with a text chunk added: other bytes, same picture."""
    with Image.open(source) as image:
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "re-saved by an editor")
        image.save(path, "PNG", pnginfo=info)
    return path


# --------------------------------------------------------------------------- hostile files


def truncated_jpeg(path: Path) -> Path:
    """A detailed JPEG cut off after 60% of its bytes."""
    source = path.with_name(path.name + ".full.jpg")
    Image.effect_noise((256, 256), 60).convert("RGB").save(source, "JPEG", quality=90)
    data = source.read_bytes()
    source.unlink()
    path.write_bytes(data[: len(data) * 6 // 10])
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


BOMB_SIZE = (10_000, 10_000)
"""100 Mpx: above Pillow's warning threshold (about 89 Mpx), below its error threshold."""


@functools.cache
def _bomb_bytes() -> bytes:
    width, height = BOMB_SIZE
    packer = zlib.compressobj(9)
    row = b"\0" * (1 + width // 8)  # filter byte + one bit per pixel, all black
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return _png(width, height, 1, 0, idat)


def bomb_png(path: Path) -> Path:
    """A real, complete 1-bit PNG of ``BOMB_SIZE``: a few KB on disk, 100 MB+ once decoded."""
    path.write_bytes(_bomb_bytes())
    return path


def huge_header_png(path: Path) -> Path:
    """A PNG header claiming 200,000 x 200,000 pixels, with almost no data behind it."""
    path.write_bytes(_png(200_000, 200_000, 8, 2, zlib.compress(b"\0" * 64)))
    return path


def junk(path: Path, size: int = 4096) -> Path:
    """Random bytes, typically saved with an image suffix."""
    path.write_bytes(random.Random(7).randbytes(size))
    return path


# --------------------------------------------------------------------------- the example's photo drop

Expect = Literal["photo", "duplicate", "quarantine"]


@dataclass(frozen=True)
class Sample:
    """One dropped file and what the workflow must make of it."""

    path: Path
    expect: Expect
    #: photo: the orientation whose top-left must come out red; duplicate: the name of the original.
    note: str = ""


def write_samples(folder: Path) -> dict[str, Sample]:
    """Drop the example's photos into ``folder`` (created if missing); returns name -> sample.

    - 8 JPEGs with EXIF orientations 1-8, each showing the same upright picture
      (red square top-left, blue top-right) plus n marks, so none is a duplicate;
    - a large photo, a CMYK JPEG, a palette PNG with transparency, a 16-bit PNG,
      an RGBA PNG, an animated GIF, a WebP;
    - two duplicates: a byte-for-byte copy, and a PNG with the same pixels but
      different metadata (found by the pixel hash, not the file hash);
    - hostile files: a truncated JPEG, a decompression bomb, a header claiming
      40 gigapixels, random bytes named .jpg.
    """
    folder.mkdir(parents=True, exist_ok=True)
    samples = {
        f"orientation-{n}": Sample(
            oriented_jpeg(folder / f"orientation-{n}.jpg", n, (480, 360), marks=n), "photo", str(n)
        )
        for n in range(1, 9)
    }
    big = photo(folder / "harbour.jpg", (1920, 1280))
    graph = photo(folder / "graph.png", (400, 300))
    samples |= {
        "harbour": Sample(big, "photo"),
        "graph": Sample(graph, "photo"),
        "poster-cmyk": Sample(cmyk_jpeg(folder / "poster-cmyk.jpg", (240, 160)), "photo"),
        "sticker": Sample(palette_png(folder / "sticker.png", (96, 96)), "photo"),
        "scan-16bit": Sample(png16(folder / "scan-16bit.png", (256, 64)), "photo"),
        "logo": Sample(rgba_png(folder / "logo.png"), "photo"),
        "animation": Sample(animated_gif(folder / "animation.gif", (120, 90)), "photo"),
        "evening": Sample(photo(folder / "evening.webp", (640, 400)), "photo"),
        "harbour-copy": Sample(
            Path(shutil.copyfile(big, folder / "harbour (copy).jpg")), "duplicate", "harbour"
        ),
        "graph-edited": Sample(
            png_with_new_metadata(graph, folder / "graph-edited.png"), "duplicate", "graph"
        ),
        "truncated": Sample(truncated_jpeg(folder / "truncated.jpg"), "quarantine"),
        "bomb": Sample(bomb_png(folder / "bomb.png"), "quarantine"),
        "huge-header": Sample(huge_header_png(folder / "huge-header.png"), "quarantine"),
        "not-a-photo": Sample(junk(folder / "not-a-photo.jpg"), "quarantine"),
    }
    return samples
