"""The operations: pure functions on decoded images that never modify their input.

They may return the input unchanged when there is nothing to do, so several
outputs can be made from one decode without copying it first.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Collection
from contextlib import suppress
from dataclasses import dataclass
from typing import Final, Literal

# ImageCms (colour profiles), ImageDraw and ImageFont (text) are imported where used: 9 ms of every
# image process's start-up, for what few photos need.
from PIL import ExifTags, Image, ImageColor, ImageFilter, ImageOps

from ._decode import _DECODE_ERRORS

MAX_DIMENSION: Final = 8192
"""Largest width or height a recipe may ask for (resize, pad canvas, thumbnail), or a rotation make."""
#: How much larger than the image a canvas rotated with ``expand`` may be, past ``MAX_DIMENSION`` squared:
#: a photo turned by 45 degrees needs about 2.1 times its pixels, a long thin strip far more.
_ROTATED_AREA: Final = 3

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


def _sides(**sides: int | None) -> None:
    """A size asked for is a whole number of pixels: 0 or -5 made a 1x1 image, silently."""
    for name, value in sides.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a whole number of pixels >= 1, got {value!r}")


def _fit_scale(size: tuple[int, int], width: int | None, height: int | None) -> float:
    if width is None and height is None:
        raise ValueError("width, height or both are required")
    _sides(width=width, height=height)
    return min(
        width / size[0] if width is not None else math.inf,
        height / size[1] if height is not None else math.inf,
    )


def _scaled(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def fit_within(size: tuple[int, int], width: int | None, height: int | None) -> tuple[int, int]:
    """The size an image of ``size`` shrinks to so that it fits the box (never larger than ``size``)."""
    scale = _fit_scale(size, width, height)
    return size if scale >= 1 else _scaled(size, scale)


def _resample(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Lanczos in two steps (integer reduce first): faster, indistinguishable at gap 3."""
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _bicubic(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Pillow's thumbnail filter: bicubic after an integer reduce, at gap 3 as for Lanczos."""
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


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


def _exif_writable(exif: Image.Exif) -> bool:
    """Whether Pillow writes ``exif`` back as it reads it: a tag of the wrong type (SubIFDs holding
    text, an Orientation as bytes) parses, then fails ``tobytes`` or the AVIF encoder."""
    if not isinstance(exif.get(ExifTags.Base.Orientation, 1), int):
        return False
    try:
        exif.tobytes()
    except _DECODE_ERRORS:
        return False
    return True


def auto_orient(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (1-8) to the pixels and drop the tag.

    An EXIF block Pillow cannot write back is dropped (the orientation read from it still applies).
    """
    orientation = _orientation(image)
    if orientation == 1:
        return image
    if _exif_writable(image.getexif()):
        return ImageOps.exif_transpose(image)
    bare = _without(image, "exif")
    bare.getexif()[ExifTags.Base.Orientation] = orientation
    return ImageOps.exif_transpose(bare)


def thumbnail(image: Image.Image, width: int | None = None, height: int | None = None) -> Image.Image:
    """Auto-orient, then shrink to fit the box (never enlarges).

    Fast when the image came from ``open_image(path, draft=(width, height))``:
    the JPEG was then decoded at reduced scale, before orientation.
    """
    oriented = auto_orient(normalize_mode(image))
    return _bicubic(oriented, fit_within(oriented.size, width, height))


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
    _sides(width=width, height=height)
    image = normalize_mode(image)
    if kind == "fit":
        scale = _fit_scale(image.size, width, height)
        if scale >= 1 and not upscale:
            return image
        size = _scaled(image.size, scale)
        if max(size) > max(MAX_DIMENSION, *image.size):  # the side not given grows with the one given
            raise ValueError(
                f"resized the image would be {size[0]}x{size[1]}, over {MAX_DIMENSION} pixels a side"
            )
        return _resample(image, size)
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
    _sides(width=width, height=height)
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
    if expand:  # every turn of 45 degrees grows the canvas 1.41 times: bounded, as upscaling is
        cos, sin = abs(math.cos(math.radians(turn))), abs(math.sin(math.radians(turn)))
        w, h = image.size
        across, down = math.ceil(w * cos + h * sin), math.ceil(w * sin + h * cos)
        side, bound = max(across, down), max(MAX_DIMENSION, w, h)
        if side > bound + 1:
            raise ValueError(
                f"rotated by {angle:g} degrees the canvas would be {side} pixels across, "
                f"over {bound} pixels a side"
            )
        area = max(MAX_DIMENSION**2, _ROTATED_AREA * w * h)  # a long thin image grows most
        if across * down > area:
            raise ValueError(
                f"rotated by {angle:g} degrees the canvas would be {across}x{down}, over {area} pixels"
            )
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
        from PIL import ImageCms

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


def _text_stamp(text: str, width: int, height: int, color: str) -> Image.Image:
    """``text`` rendered about ``width`` pixels wide (less if it would be over ``height`` high) on a
    transparent background: never much larger than the image it goes on."""
    from PIL import ImageDraw, ImageFont

    measure = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
    left, top, right, bottom = measure.textbbox((0, 0), text, font=ImageFont.load_default(100))
    scale = min(width / max(1, right - left), height / max(1, bottom - top))
    font = ImageFont.load_default(max(1.0, 100 * scale))
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
        stamp = _text_stamp(mark, target_w, base.height, color)
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
    _sides(size=size)
    image = normalize_mode(image)
    small = _bicubic(image, fit_within(image.size, size, size))
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
