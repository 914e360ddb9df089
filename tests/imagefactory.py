"""Sample images generated at test time, so no binary file is committed.

Each function writes one file and returns its path. ``write_samples(folder)``
writes the whole set (the example project uses it too).
"""

from __future__ import annotations

import functools
import random
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageDraw

RED = (230, 20, 20)
BLUE = (20, 20, 230)
GREY = (128, 128, 128)


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


def oriented_jpeg(path: Path, orientation: int, size: tuple[int, int] = (64, 48)) -> Path:
    """A JPEG that shows, once oriented, ``size`` with a red square top-left and a blue one top-right."""
    width, height = size
    stored_size = size if orientation <= 4 else (height, width)
    image = Image.new("RGB", stored_size, GREY)
    draw = ImageDraw.Draw(image)
    side = min(width, height) // 3
    for colour, left in ((RED, 0), (BLUE, width - side)):
        corners = [
            _stored_point(orientation, u, v, width, height)
            for u in (left, left + side - 1)
            for v in (0, side - 1)
        ]
        xs, ys = [c[0] for c in corners], [c[1] for c in corners]
        draw.rectangle((min(xs), min(ys), max(xs), max(ys)), fill=colour)
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


def detail_right(path: Path, size: tuple[int, int] = (300, 100)) -> Path:
    """Flat grey on the left two thirds, noise on the right third: smart crop must pick the noise."""
    image = Image.new("L", size, 128)
    noise = Image.effect_noise((size[0] // 3, size[1]), 80)
    image.paste(noise, (size[0] - noise.width, 0))
    image.convert("RGB").save(path, "PNG")
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


def la_png(path: Path, size: tuple[int, int] = (40, 30)) -> Path:
    """Grey with alpha: left half transparent."""
    image = Image.new("LA", size, (200, 255))
    ImageDraw.Draw(image).rectangle((0, 0, size[0] // 2 - 1, size[1] - 1), fill=(0, 0))
    image.save(path, "PNG")
    return path


def animated_gif(path: Path, size: tuple[int, int] = (32, 24)) -> Path:
    """Three frames: red, green, blue."""
    frames = [Image.new("RGB", size, colour) for colour in (RED, (20, 200, 20), BLUE)]
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
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
