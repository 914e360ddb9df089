from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import ExifTags, Image, ImageChops, ImageStat, PngImagePlugin

import imagefactory as factory
from spoolpipe import images
from spoolpipe.images import (
    ImageRejected,
    Limits,
    PixelBudget,
    RecipeError,
    open_image,
    parse_recipe,
    run_recipe,
)

# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return factory.write_samples(tmp_path_factory.mktemp("samples"))


def near(pixel: object, colour: tuple[int, ...], tolerance: int = 40) -> bool:
    assert isinstance(pixel, tuple)
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


def bands(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = image.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def level(image: Image.Image, xy: tuple[int, int]) -> int:
    value = image.getpixel(xy)
    assert isinstance(value, int)
    return value


def corners_ok(image: Image.Image) -> None:
    """Red square top-left, blue top-right, grey bottom-left: the picture is upright."""
    rgb = image.convert("RGB")
    inset = max(2, rgb.width // 20)
    assert near(rgb.getpixel((inset, inset)), factory.RED)
    assert near(rgb.getpixel((rgb.width - 1 - inset, inset)), factory.BLUE)
    assert near(rgb.getpixel((inset, rgb.height - 1 - inset)), factory.GREY)


def spread(image: Image.Image) -> float:
    return float(ImageStat.Stat(image.convert("L")).stddev[0])


def grey_photo(size: tuple[int, int] = (200, 100)) -> Image.Image:
    return Image.new("RGB", size, (100, 100, 100))


# --------------------------------------------------------------------------- opening and orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_auto_orient_puts_the_red_corner_top_left(tmp_path: Path, orientation: int) -> None:
    path = factory.oriented_jpeg(tmp_path / "o.jpg", orientation)
    opened = open_image(path)
    assert images.image_info(opened).orientation == orientation
    upright = images.auto_orient(opened)
    assert upright.size == (64, 48)
    corners_ok(upright)
    assert images.image_info(upright).orientation == 1  # the tag is gone: no double rotation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_fast_thumbnail_decodes_small_then_orients(tmp_path: Path, orientation: int) -> None:
    path = factory.oriented_jpeg(tmp_path / "o.jpg", orientation, size=(640, 480))
    drafted = open_image(path, draft=(80, 80))
    assert drafted.width * drafted.height < 640 * 480 // 3  # decoded at reduced scale
    thumb = images.thumbnail(drafted, 80, 80)
    assert thumb.size == (80, 60)
    corners_ok(thumb)


def test_thumbnail_never_enlarges_and_accepts_one_side(samples: dict[str, Path]) -> None:
    photo = open_image(samples["photo-png"])
    assert images.thumbnail(photo, 1000, 1000).size == (320, 240)
    assert images.thumbnail(photo, height=60).size == (80, 60)
    with pytest.raises(ValueError, match="width, height or both"):
        images.thumbnail(photo)


def test_every_allowed_format_opens(samples: dict[str, Path]) -> None:
    for name, fmt in [
        ("photo-jpeg", "JPEG"),
        ("photo-png", "PNG"),
        ("photo-webp", "WEBP"),
        ("photo-bmp", "BMP"),
        ("photo-tiff", "TIFF"),
        ("animated-gif", "GIF"),
    ]:
        assert images.image_info(open_image(samples[name])).format == fmt


def test_cmyk_jpeg_becomes_rgb(samples: dict[str, Path]) -> None:
    opened = open_image(samples["cmyk-jpeg"])
    assert opened.mode == "CMYK"
    rgb = images.normalize_mode(opened)
    assert rgb.mode == "RGB"
    assert near(rgb.getpixel((5, 5)), (255, 0, 0))


def test_palette_png_keeps_its_transparency(samples: dict[str, Path]) -> None:
    opened = open_image(samples["palette-png"])
    info = images.image_info(opened)
    assert (info.mode, info.has_alpha) == ("P", True)
    rgba = images.normalize_mode(opened)
    assert rgba.mode == "RGBA"
    assert bands(rgba, (2, 2))[3] == 0
    assert near(rgba.getpixel((30, 2)), (*factory.RED, 255), 0)


def test_16_bit_png_is_scaled_to_8_bit(samples: dict[str, Path]) -> None:
    opened = open_image(samples["png16"])
    assert opened.mode == "I;16"
    grey = images.normalize_mode(opened)
    assert grey.mode == "L"
    assert (grey.getpixel((0, 0)), grey.getpixel((63, 0))) == (0, 255)
    assert 120 <= level(grey, (32, 0)) <= 135  # scaled, not clipped to 255


def test_animated_gif_gives_its_first_frame(samples: dict[str, Path]) -> None:
    opened = open_image(samples["animated-gif"])
    assert images.image_info(opened).frames == 3
    assert near(images.normalize_mode(opened).getpixel((3, 3)), factory.RED)


def test_alpha_modes_are_kept(samples: dict[str, Path]) -> None:
    assert images.normalize_mode(open_image(samples["la-png"])).mode == "LA"
    rgba = images.normalize_mode(open_image(samples["rgba-png"]))
    assert rgba.mode == "RGBA"
    assert images.image_info(rgba).has_alpha


def test_srgb_conversion_uses_the_embedded_profile(samples: dict[str, Path]) -> None:
    opened = open_image(samples["icc-jpeg"])
    assert opened.info["icc_profile"] == factory.ICC_SWAPPED
    srgb = images.to_srgb(opened)
    red, green, _ = bands(srgb, (5, 5))
    assert green > 150 and red < 100  # the profile swaps red and green primaries
    assert "icc_profile" not in srgb.info


def test_srgb_ignores_an_unusable_profile() -> None:
    image = grey_photo()
    image.info["icc_profile"] = b"not a profile"
    converted = images.to_srgb(image)
    assert converted.getpixel((0, 0)) == (100, 100, 100)
    assert "icc_profile" not in converted.info


# --------------------------------------------------------------------------- hostile files


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bomb_is_rejected_from_the_header(samples: dict[str, Path]) -> None:
    with pytest.raises(ImageRejected, match=r"bomb\.png: 10000x10000 is 100000000 pixels"):
        open_image(samples["bomb-png"])


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pillow_bomb_warning_threshold_is_a_hard_limit(samples: dict[str, Path]) -> None:
    # Our own cap is raised above Pillow's, which merely warns at this size.
    with pytest.raises(ImageRejected, match="over the limit of 89478485"):
        open_image(samples["bomb-png"], max_pixels=10**9)


def test_own_pixel_cap_holds_when_pillow_limit_is_disabled(
    samples: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ImageRejected, match="over the limit of 1000"):
        open_image(samples["photo-png"], max_pixels=1000)


def test_huge_dimensions_are_rejected(samples: dict[str, Path]) -> None:
    with pytest.raises(ImageRejected, match=r"huge-header\.png: too many pixels"):
        open_image(samples["huge-header-png"], max_pixels=10**12)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_a_png_text_chunk_named_transparency_is_not_taken_for_transparency(root: Path, mode: str) -> None:
    """Pillow files a tEXt chunk under its keyword in ``info``: a text "transparency" on an L or RGB
    PNG made every op's mode conversion raise TypeError, a transient error naming no file, retried."""
    text = PngImagePlugin.PngInfo()
    text.add_text("transparency", "x")
    Image.new(mode, (16, 12), "white").save(root / "t.png", pnginfo=text)
    outputs = [
        {"path": f"o.{suffix}", "ops": [{"op": "thumbnail", "width": 8}, SAVE]} for suffix in ("png", "jpg")
    ]
    results = run_recipe(parse_recipe({"input": "t.png", "outputs": outputs}, [root]))
    assert [(r["width"], r["height"]) for r in results] == [(8, 6), (8, 6)]
    with Image.open(root / "o.png") as png:
        assert png.mode == mode  # no alpha made up from the text


def test_truncated_file_is_rejected(samples: dict[str, Path]) -> None:
    with pytest.raises(ImageRejected, match=r"truncated\.jpg: cannot decode .*truncated"):
        open_image(samples["truncated-jpeg"])


def test_junk_is_rejected(samples: dict[str, Path]) -> None:
    with pytest.raises(ImageRejected, match=r"junk\.jpg: not an image in an allowed format"):
        open_image(samples["junk-jpeg"])


def test_disallowed_format_is_rejected(samples: dict[str, Path]) -> None:
    with pytest.raises(ImageRejected, match=r"photo\.bmp: not an image in an allowed format \(JPEG, PNG\)"):
        open_image(samples["photo-bmp"], formats={"jpeg", "png"})


def test_file_size_cap_and_non_files(samples: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ImageRejected, match="bytes, over the limit of 100"):
        open_image(samples["photo-png"], max_bytes=100)
    os.mkfifo(tmp_path / "fifo.png")
    with pytest.raises(ImageRejected, match=r"fifo\.png: not a regular file"):
        open_image(tmp_path / "fifo.png")
    with pytest.raises(ImageRejected, match="not a regular file"):
        open_image(tmp_path)
    with pytest.raises(ImageRejected, match=r"missing\.png: cannot open"):
        open_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="unknown image formats: NOPE"):
        open_image(samples["photo-png"], formats={"nope"})


def test_a_process_imports_only_the_pillow_plugins_of_the_formats_it_reads_and_writes(tmp_path: Path) -> None:
    """Pillow's fallback imports all of its plugins (20 ms of a pool process's first image); spoolpipe
    imports those of the formats at hand, and a format outside its table still opens."""
    Image.new("RGB", (64, 48), "red").save(tmp_path / "in.jpg", quality=90)
    Image.new("RGB", (32, 24), "blue").save(tmp_path / "in.pcx")
    script = f"""
import sys
from pathlib import Path
from spoolpipe.images import open_image, save_image
image = open_image(Path({str(tmp_path)!r}) / "in.jpg")
saved = save_image(image, Path({str(tmp_path)!r}) / "out.png")
print(image.size, saved.format, "PIL.PdfImagePlugin" in sys.modules, "PIL.TiffImagePlugin" in sys.modules)
pcx = open_image(Path({str(tmp_path)!r}) / "in.pcx", formats={{"PCX"}})
print(pcx.size, "PIL.PdfImagePlugin" in sys.modules)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["(64, 48) png False True", "(32, 24) True"]
    assert Image.open(tmp_path / "out.png").size == (64, 48)


# --------------------------------------------------------------------------- resize and crop


@pytest.mark.parametrize(
    ("mode", "box", "upscale", "expected"),
    [
        ("fit", (100, 100), False, (100, 75)),
        ("inside", (160, None), False, (160, 120)),
        ("fit", (1000, 1000), False, (320, 240)),
        ("fit", (640, None), True, (640, 480)),
        ("fill", (100, 100), False, (100, 100)),
        ("cover", (640, 320), False, (320, 160)),  # no upscale: cropped to the aspect only
        ("cover", (640, 320), True, (640, 320)),
        ("pad", (100, 100), False, (100, 100)),
        ("contain", (1000, 500), False, (1000, 500)),
        ("exact", (50, 50), False, (50, 50)),
        ("force", (400, 100), False, (320, 100)),
        ("force", (400, 100), True, (400, 100)),
    ],
)
def test_resize_modes(
    samples: dict[str, Path],
    mode: images.ResizeMode,
    box: tuple[int, int | None],
    upscale: bool,
    expected: tuple[int, int],
) -> None:
    photo = open_image(samples["photo-png"])
    result = images.resize(photo, box[0], box[1], mode=mode, upscale=upscale)
    assert result.size == expected
    assert result.mode == "RGB"


def test_pad_fills_with_background_and_keeps_alpha(samples: dict[str, Path]) -> None:
    photo = open_image(samples["photo-png"])
    padded = images.resize(photo, 100, 100, mode="pad", background="#00ff00")
    assert padded.getpixel((50, 2)) == (0, 255, 0)
    padded_north = images.resize(photo, 100, 100, mode="pad", gravity="north", background="#00ff00")
    assert padded_north.getpixel((50, 97)) == (0, 255, 0)
    rgba = images.resize(open_image(samples["rgba-png"]), 100, 100, mode="pad")
    assert rgba.mode == "RGBA" and bands(rgba, (50, 2))[3] == 0


def test_resize_rejects_incomplete_boxes(samples: dict[str, Path]) -> None:
    photo = open_image(samples["photo-png"])
    with pytest.raises(ValueError, match="needs both width and height"):
        images.resize(photo, 100, mode="fill")
    with pytest.raises(ValueError, match="unknown resize mode"):
        images.resize(photo, 100, mode="stretch")  # type: ignore[arg-type]


def test_fill_with_smart_gravity_keeps_the_detail(samples: dict[str, Path]) -> None:
    detail = open_image(samples["detail-right"])
    smart = images.resize(detail, 100, 100, mode="fill", gravity="smart")
    centred = images.resize(detail, 100, 100, mode="fill")
    assert smart.size == centred.size == (100, 100)
    assert spread(smart) > 30 > spread(centred)


@pytest.mark.parametrize(
    ("gravity", "colour"),
    [("northwest", factory.RED), ("northeast", factory.BLUE), ("southwest", factory.GREY)],
)
def test_crop_by_gravity(tmp_path: Path, gravity: images.Gravity, colour: tuple[int, int, int]) -> None:
    upright = open_image(factory.oriented_jpeg(tmp_path / "o.jpg", 1))
    cut = images.crop(upright, 12, 12, gravity=gravity)
    assert cut.size == (12, 12)
    assert near(cut.getpixel((6, 6)), colour)


def test_crop_smart_box_and_limits(samples: dict[str, Path]) -> None:
    detail = open_image(samples["detail-right"])
    assert spread(images.crop(detail, 100, gravity="smart")) > 30
    assert images.crop(detail, 5000, 5000).size == detail.size
    assert images.crop_box(detail, (290, 90, 400, 400)).size == (10, 10)
    with pytest.raises(ValueError, match="lies outside the 300x100 image"):
        images.crop_box(detail, (400, 0, 500, 10))


# --------------------------------------------------------------------------- other operations


def test_rotate_quarter_turn_is_clockwise(tmp_path: Path) -> None:
    upright = open_image(factory.oriented_jpeg(tmp_path / "o.jpg", 1))
    turned = images.rotate(upright, 90)
    assert turned.size == (48, 64)
    assert near(turned.getpixel((44, 3)), factory.RED)  # top-left went to top-right
    assert images.rotate(upright, -270).tobytes() == turned.tobytes()
    assert images.rotate(upright, 360) is upright


def test_rotate_any_angle_fills_the_corners(samples: dict[str, Path]) -> None:
    photo = open_image(samples["photo-png"])
    tilted = images.rotate(photo, 30)
    assert tilted.width > photo.width and tilted.height > photo.height
    assert tilted.getpixel((0, 0)) == (255, 255, 255)
    assert images.rotate(photo, 30, expand=False).size == photo.size
    assert images.rotate(photo, 30, background="black").getpixel((0, 0)) == (0, 0, 0)
    clear = images.rotate(open_image(samples["rgba-png"]), 10)
    assert clear.mode == "RGBA" and bands(clear, (0, 0))[3] == 0


def test_upscaling_and_rotating_stay_within_max_dimension_and_its_area() -> None:
    """A 10x100 image resized to width 8192 was 8192x81920 (671 Mpx, 2.6 GB), a 2x30000 one turned by
    45 degrees 21216x21216 (450 Mpx): neither counted by the memory budget, both from tiny inputs."""
    tall = Image.new("RGB", (10, 100))
    with pytest.raises(ValueError, match="8192x81920, over 8192 pixels a side"):
        images.resize(tall, 8192, None, upscale=True)
    assert images.resize(Image.new("RGB", (100, 50)), 8192, None, upscale=True).size == (8192, 4096)
    assert images.resize(Image.new("RGB", (9000, 10)), 8192, None).size == (8192, 9)  # a shrink: no bound
    with pytest.raises(ValueError, match="over 67108864 pixels"):
        images.rotate(Image.new("RGB", (2, 30000)), 45)
    assert images.rotate(Image.new("RGB", (3000, 2000)), 45).size == (3536, 3536)


@pytest.mark.parametrize(
    "call",
    [
        lambda im: images.resize(im, 0, 0),
        lambda im: images.resize(im, -5, None),
        lambda im: images.resize(im, 0, 10, mode="exact"),
        lambda im: images.resize(im, 10, 0, mode="fill"),
        lambda im: images.thumbnail(im, 0, 0),
        lambda im: images.thumbnail(im, None, -1),
        lambda im: images.crop(im, 0, 10),
        lambda im: images.placeholder(im, 0),
    ],
)
def test_a_size_of_no_pixels_is_an_error_not_a_1x1_image(call: Any) -> None:
    """The docs' own thumbs.make with sizes [0, -5] wrote 1x1 files and reported success."""
    with pytest.raises(ValueError, match="must be a whole number of pixels >= 1"):
        call(Image.new("RGB", (40, 30)))


def test_rotations_cannot_grow_an_image_past_max_dimension() -> None:
    """Each 45 degree turn grows the canvas by 1.41: twenty of them made 60,000 px sides from 64."""
    small = Image.new("RGB", (64, 48), (10, 20, 30))
    image = small
    with pytest.raises(ValueError, match="over 8192 pixels a side"):
        for _ in range(20):
            image = images.rotate(image, 45)
    assert max(image.size) <= images.MAX_DIMENSION
    big = Image.new("L", (9000, 2000))  # already past the bound: may not grow further
    with pytest.raises(ValueError, match="over 9000 pixels a side"):
        images.rotate(big, 15)
    assert max(images.rotate(big, 30).size) < 9000  # a narrower canvas
    assert images.rotate(big, 90).size == (2000, 9000)  # quarter turns only swap the sides


def test_a_text_watermark_is_drawn_no_larger_than_the_image() -> None:
    """A narrow glyph scaled to the width made a stamp many times the image's height (1.3 GB from a
    1 px high image 6,500 wide)."""
    script = (  # VmHWM: the peak of this process's memory (ru_maxrss would carry pytest's over exec)
        "import re; from PIL import Image; from spoolpipe import images\n"
        "marked = images.watermark(Image.new('RGB', (4000, 1)), \"'\", size=1.0, opacity=1)\n"
        "peak = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]\n"
        "print(marked.size, peak)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    size, peak_kib = done.stdout.rsplit(" ", 1)
    assert size == "(4000, 1)"
    assert int(peak_kib) < 150_000, done.stdout


def test_flip_and_flop(tmp_path: Path) -> None:
    upright = open_image(factory.oriented_jpeg(tmp_path / "o.jpg", 1))
    assert near(images.flip(upright).getpixel((3, 44)), factory.RED)
    assert near(images.flop(upright).getpixel((60, 3)), factory.RED)


def test_grayscale_blur_sharpen(samples: dict[str, Path]) -> None:
    photo = open_image(samples["photo-png"])
    assert images.grayscale(photo).mode == "L"
    assert images.grayscale(open_image(samples["rgba-png"])).mode == "LA"
    noisy = Image.effect_noise((64, 64), 50)
    assert spread(images.blur(noisy, 3)) < spread(noisy) / 2
    soft = images.blur(photo, 2)
    assert spread(images.sharpen(soft)) > spread(soft)
    assert images.sharpen(photo).size == photo.size


def test_watermark_image_at_gravity_with_opacity() -> None:
    base = grey_photo()
    mark = Image.new("RGB", (40, 20), (255, 255, 255))
    marked = images.watermark(base, mark, size=0.2, opacity=0.5, margin=5)
    assert marked.size == base.size and marked.mode == "RGB"
    assert marked.getpixel((180, 90)) == (178, 178, 178)  # half white over grey, bottom right
    assert marked.getpixel((10, 10)) == (100, 100, 100)
    top_left = images.watermark(base, mark, gravity="northwest", opacity=1, size=0.2, margin=0)
    assert top_left.getpixel((2, 2)) == (255, 255, 255)
    with pytest.raises(ValueError, match="not supported here"):
        images.watermark(base, mark, gravity="smart")


def test_watermark_text() -> None:
    base = grey_photo((400, 200))
    marked = images.watermark(base, "(c) spoolpipe", opacity=1, color="#ffffff")
    bottom_right = marked.crop((250, 150, 400, 200))
    assert max(bottom_right.convert("L").histogram()[200:]) > 0  # white text landed there
    assert marked.crop((0, 0, 150, 100)).getextrema() == ((100, 100),) * 3


def test_placeholder_and_dominant_color(samples: dict[str, Path]) -> None:
    photo = open_image(samples["photo-jpeg"])
    tiny = images.placeholder(photo, 16)
    assert tiny.size == (16, 12)
    assert images.dominant_color(Image.new("RGB", (50, 50), (230, 20, 20))) == "#e61414"
    half = Image.new("RGBA", (40, 40), (0, 0, 255, 255))
    half.paste((0, 0, 0, 0), (0, 0, 40, 30))  # mostly transparent: reads as white
    assert images.dominant_color(half) == "#ffffff"


def test_strip_removes_metadata_unless_kept(samples: dict[str, Path]) -> None:
    opened = open_image(samples["icc-jpeg"])
    opened.info["exif"] = open_image(samples["orientation-1"]).info["exif"]
    bare = images.strip(opened)
    assert not {"exif", "icc_profile"} & bare.info.keys()
    kept = images.strip(opened, keep=["icc"])
    assert "icc_profile" in kept.info and "exif" not in kept.info
    assert "exif" in opened.info  # the input is untouched
    with pytest.raises(ValueError, match="cannot keep"):
        images.strip(opened, keep=["gps"])


@pytest.mark.parametrize(
    "operation",
    [
        lambda im: images.resize(im, 30, 30, mode="pad"),
        lambda im: images.resize(im, 30, 30, mode="fill"),
        lambda im: images.rotate(im, 33),
        lambda im: images.rotate(im, 90),
        lambda im: images.crop(im, 10, 10),
        lambda im: images.watermark(im, "x"),
        lambda im: images.grayscale(im),
        lambda im: images.blur(im),
        lambda im: images.flip(im),
    ],
)
def test_operations_carry_metadata(samples: dict[str, Path], operation: object) -> None:
    assert callable(operation)
    result = operation(open_image(samples["orientation-1"]))
    assert "exif" in result.info


def test_image_info_and_hashes(samples: dict[str, Path]) -> None:
    png = open_image(samples["photo-png"])
    info = images.image_info(png)
    assert (info.width, info.height, info.mode, info.format, info.frames) == (320, 240, "RGB", "PNG", 1)
    assert not info.has_alpha
    assert images.pixel_sha256(png) == images.pixel_sha256(open_image(samples["photo-bmp"]))
    assert images.pixel_sha256(png) != images.pixel_sha256(png.convert("L"))
    data = samples["photo-png"].read_bytes()
    assert images.file_sha256(samples["photo-png"]) == hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- saving


@pytest.mark.parametrize("fmt", sorted(images.SAVE_FORMATS))
def test_save_each_format(samples: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    photo = open_image(samples["photo-png"])
    target = tmp_path / f"out.{fmt.lower()}"
    saved = images.save_image(photo, target)
    assert (saved.format, saved.width, saved.height) == (fmt.lower(), 320, 240)
    assert saved.bytes == target.stat().st_size
    assert saved.sha256 == images.file_sha256(target)
    with Image.open(target) as reopened:
        assert (reopened.format, reopened.size) == (fmt, (320, 240))
    assert os.listdir(tmp_path) == [target.name]  # no temp file left


def test_avif_support_matches_pillow() -> None:
    from PIL import features

    assert bool(features.check("avif")) == images.AVIF_SUPPORTED
    assert ("AVIF" in images.SAVE_FORMATS) == images.AVIF_SUPPORTED


@pytest.mark.parametrize("suffix", ["jpg", "png", "webp", *(["avif"] if images.AVIF_SUPPORTED else [])])
def test_an_exif_block_that_does_not_parse_is_no_reason_to_fail_a_save(tmp_path: Path, suffix: str) -> None:
    """A camera's corrupt EXIF: the AVIF encoder parses it (SyntaxError: not a TIFF file), so it
    failed as a transient error, naming no file, and was retried."""
    source = tmp_path / "in.jpg"
    Image.new("RGB", (32, 24), (200, 10, 10)).save(source, exif=b"Exif\0\0" + bytes(range(200)))
    saved = images.save_image(open_image(source), tmp_path / f"out.{suffix}")
    with Image.open(saved.path) as reopened:
        assert reopened.size == (32, 24)


UNWRITABLE_EXIF = {
    "SubIFDs holding text": factory.patched_exif({274: 6, 305: "x"}, {305: (330, 2)}),
    "an Orientation of type UNDEFINED": factory.patched_exif({274: 6}, {274: (274, 7)}),
}


@pytest.mark.parametrize("exif", UNWRITABLE_EXIF.values(), ids=UNWRITABLE_EXIF.keys())
@pytest.mark.parametrize("suffix", ["jpg", "png", "webp", *(["avif"] if images.AVIF_SUPPORTED else [])])
def test_an_exif_block_pillow_cannot_write_back_is_dropped_and_the_outputs_made(
    root: Path, exif: bytes, suffix: str
) -> None:
    """Pillow reads these blocks but not back: auto_orient (exif_transpose) raised struct.error and the
    AVIF encoder TypeError, transient errors naming no file, retried."""
    with Image.open(factory.oriented_jpeg(root / "o.jpg", 6, size=(64, 48))) as stored:
        stored.save(root / "in.png", exif=exif)
    data = {
        "input": "in.png",
        "outputs": [
            {"path": f"oriented.{suffix}", "ops": [{"op": "auto_orient"}, SAVE]},
            {"path": f"thumb.{suffix}", "ops": [{"op": "thumbnail", "width": 32}, SAVE]},
            {"path": f"kept.{suffix}", "ops": [SAVE]},
        ],
    }
    results = run_recipe(parse_recipe(data, [root]))
    readable = images.image_info(open_image(root / "in.png")).orientation == 6
    upright = [(64, 48), (32, 24)] if readable else [(48, 64), (32, 43)]
    assert [(r["width"], r["height"]) for r in results] == [*upright, (48, 64)]
    for name in ("oriented", "thumb"):
        with Image.open(root / f"{name}.{suffix}") as made:
            if readable:  # the orientation Pillow reads is applied
                corners_ok(made)
            assert images.image_info(made).orientation == 1  # never turned twice


def test_metadata_too_long_for_a_jpeg_is_dropped_on_save(root: Path) -> None:
    """A JPEG marker holds 65,533 bytes: a PNG's 100 KB EXIF or XMP, a GIF's long comment, could never
    be saved as JPEG (ValueError "EXIF data is too long"), a transient error naming no output, retried."""
    exif = Image.Exif()
    exif[ExifTags.Base.ImageDescription] = "d" * 100_000
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">' + b" " * 100_000 + b"</x:xmpmeta>"
    Image.new("RGB", (32, 24), "red").save(root / "exif.png", exif=exif)
    Image.new("RGB", (32, 24), "red").save(root / "xmp.webp", xmp=xmp)
    Image.new("P", (32, 24)).save(root / "comment.gif", comment=b"c" * 100_000)
    small = Image.Exif()
    small[ExifTags.Base.Orientation] = 1
    Image.new("RGB", (32, 24), "red").save(root / "fits.png", exif=small)
    for name in ("exif.png", "xmp.webp", "comment.gif", "fits.png"):
        outputs = [{"path": f"{name}.{suffix}", "ops": [SAVE]} for suffix in ("jpg", "png", "webp")]
        run_recipe(parse_recipe({"input": name, "outputs": outputs}, [root]))
        with Image.open(root / f"{name}.jpg") as jpeg:
            assert jpeg.size == (32, 24)
            assert not {"xmp", "comment"} & jpeg.info.keys()
            assert ("exif" in jpeg.info) == (name == "fits.png")  # what fits is kept
    with Image.open(root / "exif.png.png") as png:  # other formats keep it
        assert png.getexif()[ExifTags.Base.ImageDescription] == "d" * 100_000
    with Image.open(root / "xmp.webp.webp") as webp:
        assert webp.info["xmp"] == xmp


def test_an_image_the_encoder_refuses_is_a_recipe_error_naming_the_output(root: Path) -> None:
    """WebP stops at 16,383 pixels a side, JPEG and AVIF at 65,500: the encoder's ValueError, OSError
    or RuntimeError failed the activity as transient, naming no output, and it was retried."""
    Image.new("RGB", (70_000, 2), "red").save(root / "wide.png")
    for suffix in ["webp", "jpg", *(["avif"] if images.AVIF_SUPPORTED else [])]:
        data = {
            "input": "wide.png",
            "outputs": [
                {"path": "fine.png", "ops": [SAVE]},
                {"path": f"wide.{suffix}", "ops": [SAVE]},
            ],
        }
        with pytest.raises(RecipeError) as caught:
            run_recipe(parse_recipe(data, [root]))
        [error] = caught.value.errors
        target = root.resolve() / f"wide.{suffix}"
        assert error.startswith(f"outputs[1]: cannot save {target} (cannot encode as "), error
        assert not (root / f"wide.{suffix}").exists()


def test_save_converts_modes_for_the_format(samples: dict[str, Path], tmp_path: Path) -> None:
    flattened = images.save_image(open_image(samples["rgba-png"]), tmp_path / "a.jpg", background="#ff0000")
    with Image.open(flattened.path) as jpeg:
        assert jpeg.mode == "RGB"
        assert near(jpeg.getpixel((1, 1)), (255, 0, 0))
    with Image.open(images.save_image(open_image(samples["la-png"]), tmp_path / "b.jpg").path) as jpeg:
        assert jpeg.mode == "L"
    with Image.open(images.save_image(open_image(samples["png16"]), tmp_path / "c.jpg").path) as jpeg:
        assert jpeg.mode == "L" and level(jpeg, (63, 0)) > 240
    with Image.open(images.save_image(open_image(samples["palette-png"]), tmp_path / "d.png").path) as png:
        assert png.mode == "RGBA" and bands(png, (2, 2))[3] == 0
    with Image.open(images.save_image(open_image(samples["la-png"]), tmp_path / "e.webp").path) as webp:
        assert webp.mode == "RGBA"
    with Image.open(images.save_image(open_image(samples["cmyk-jpeg"]), tmp_path / "f.png").path) as png:
        assert png.mode == "RGB"


def test_save_options(samples: dict[str, Path], tmp_path: Path) -> None:
    photo = open_image(samples["photo-jpeg"])
    small = images.save_image(photo, tmp_path / "low.jpg", quality=20)
    large = images.save_image(photo, tmp_path / "high.jpg", quality=95)
    assert small.bytes < large.bytes
    progressive = images.save_image(photo, tmp_path / "p.jpg", progressive=True, optimize=True)
    with Image.open(progressive.path) as jpeg:
        assert jpeg.info.get("progressive") or jpeg.info.get("progression")
    lossless = images.save_image(photo, tmp_path / "l.webp", lossless=True)
    with Image.open(lossless.path) as webp:
        assert webp.convert("RGB").tobytes() == photo.tobytes()
    assert images.save_image(photo, tmp_path / "x.bin", format="png").format == "png"
    with pytest.raises(ValueError, match="quality: does not apply to png"):
        images.save_image(photo, tmp_path / "q.png", quality=50)
    with pytest.raises(ValueError, match="progressive: only applies to jpeg"):
        images.save_image(photo, tmp_path / "q.webp", progressive=True)
    with pytest.raises(ValueError, match="cannot tell the output format"):
        images.save_image(photo, tmp_path / "q.bin")


def test_save_writes_metadata_left_on_the_image(samples: dict[str, Path], tmp_path: Path) -> None:
    tagged = open_image(samples["orientation-6"])
    kept = images.save_image(tagged, tmp_path / "kept.jpg")
    with Image.open(kept.path) as jpeg:
        assert jpeg.getexif()[0x0112] == 6
    stripped = images.save_image(images.strip(tagged), tmp_path / "stripped.webp")
    with Image.open(stripped.path) as webp:
        assert "exif" not in webp.info
    grey = images.grayscale(open_image(samples["icc-jpeg"]))  # RGB profile on grey pixels
    with Image.open(images.save_image(grey, tmp_path / "grey.jpg").path) as jpeg:
        assert "icc_profile" not in jpeg.info
    with Image.open(images.save_image(open_image(samples["icc-jpeg"]), tmp_path / "icc.png").path) as png:
        assert png.info["icc_profile"] == factory.ICC_SWAPPED


def test_save_is_atomic_when_it_fails(
    samples: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"previous")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="I/O error"):
        images.save_image(open_image(samples["photo-png"]), target)
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["out.png"]


# --------------------------------------------------------------------------- recipes: validation


@pytest.fixture
def root(tmp_path: Path, samples: dict[str, Path]) -> Path:
    folder = tmp_path / "root"
    (folder / "photos" / "in").mkdir(parents=True)
    factory.photo(folder / "photos" / "in" / "cat.jpg", (640, 480))
    factory.rgba_png(folder / "logo.png")
    return folder


def recipe_errors(data: Mapping[str, object], roots: list[Path]) -> list[str]:
    with pytest.raises(RecipeError) as caught:
        parse_recipe(data, roots)
    return list(caught.value.errors)


def one_output(*ops: object, path: str = "out/a.jpg") -> dict[str, object]:
    return {"input": "photos/in/cat.jpg", "outputs": [{"path": path, "ops": list(ops)}]}


SAVE: dict[str, object] = {"op": "save"}


def test_recipe_errors_name_the_field_and_are_all_collected(root: Path) -> None:
    data = {
        "input": "photos/in/cat.jpg",
        "outputs": [
            {"path": "out/a.webp", "ops": [{"op": "resize", "width": 800}, {"op": "save"}]},
            {
                "path": "out/b.jpg",
                "ops": [
                    {"op": "resize", "width": -3},
                    {"op": "twirl"},
                    {"op": "blur", "sigma": True, "radius": 2},
                    {"op": "save", "quality": 101},
                ],
            },
        ],
    }
    assert recipe_errors(data, [root]) == [
        "outputs[1].ops[0].width: expected a positive integer up to 8192, got -3",
        'outputs[1].ops[1].op: unknown op "twirl" (ops: auto_orient, resize, thumbnail, crop, rotate, '
        "flip, flop, srgb, grayscale, blur, sharpen, watermark, placeholder, strip, save)",
        "outputs[1].ops[2].radius: unknown option for blur (options: sigma)",
        "outputs[1].ops[2].sigma: expected a number above 0, at most 250, got true",
        "outputs[1].ops[3].quality: expected an integer from 1 to 100, got 101",
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (one_output({"op": "resize", "width": 10}), "outputs[0].ops: the last op must be save"),
        (one_output(SAVE, {"op": "flip"}), "outputs[0].ops[0]: save must be the last op"),
        (one_output({"op": "save", "format": "gif"}), "outputs[0].ops[0].format: expected one of jpeg"),
        (
            one_output({"op": "save", "format": "png"}),
            "outputs[0].path: suffix .jpg does not match format png",
        ),
        (one_output(SAVE, path="out/a.png"), None),
        (
            one_output({"op": "save", "quality": 80}, path="out/a.png"),
            "ops[0].quality: does not apply to png",
        ),
        (one_output({"op": "save", "lossless": True}), "outputs[0].ops[0].lossless: only applies to webp"),
        (one_output(SAVE, path="out/a.gif"), "outputs[0].path: cannot tell the output format"),
        (
            one_output({"op": "resize", "width": 9, "mode": "fill"}, SAVE),
            "ops[0].height: required by mode fill",
        ),
        (one_output({"op": "resize", "mode": "fit"}, SAVE), "outputs[0].ops[0].width: width, height or both"),
        (one_output({"op": "resize", "width": 9, "mode": "zoom"}, SAVE), "ops[0].mode: expected one of fit,"),
        (
            one_output({"op": "resize", "width": 9, "gravity": "smart"}, SAVE),
            "smart only applies to mode fill",
        ),
        (
            one_output({"op": "crop", "box": [5, 5, 1, 1]}, SAVE),
            "ops[0].box: expected [left, top, right, bottom]",
        ),
        (one_output({"op": "crop", "box": [0, 0, 9, 9], "width": 3}, SAVE), "ops[0].box: give either box or"),
        (one_output({"op": "rotate"}, SAVE), "outputs[0].ops[0].angle: required"),
        (
            one_output({"op": "strip", "keep": ["gps"]}, SAVE),
            'ops[0].keep: expected a list drawn from "exif"',
        ),
        (one_output({"op": "watermark"}, SAVE), "ops[0].image: give exactly one of image and text"),
        (
            one_output({"op": "watermark", "text": "x", "color": "nope"}, SAVE),
            "ops[0].color: expected a colour",
        ),
        (one_output({"op": "thumbnail", "width": 2.5}, SAVE), "ops[0].width: expected a positive integer"),
        (one_output(["resize", {"width": 9}], SAVE), 'outputs[0].ops[0]: expected an object like {"op"'),
        ({"input": "photos/in/cat.jpg", "outputs": []}, "outputs: expected a list of 1 to 64 outputs"),
        ({"input": "photos/in/cat.jpg", "outputs": [{"ops": [SAVE]}]}, "outputs[0].path: expected a path"),
        (one_output(SAVE) | {"extra": 1}, "extra: unknown field (fields: input, outputs)"),
        ({"outputs": [{"path": "a.jpg", "ops": [SAVE]}]}, "input: required"),
    ],
)
def test_recipe_validation_messages(root: Path, data: Mapping[str, object], expected: str | None) -> None:
    if expected is None:
        parse_recipe(data, [root])
        return
    errors = recipe_errors(data, [root])
    assert any(expected in error for error in errors), errors


@pytest.mark.parametrize(
    ("op", "option"),
    [
        ("rotate", "angle"),
        ("blur", "sigma"),
        ("sharpen", "radius"),
        ("watermark", "opacity"),
        ("watermark", "size"),
        ("placeholder", "sigma"),
    ],
)
def test_an_integer_too_large_for_a_float_is_an_error_naming_its_option(
    root: Path, op: str, option: str
) -> None:
    """math.isfinite(10**400) raised OverflowError: a transient error, retried, naming no field."""
    extra = {"text": "x"} if op == "watermark" else {}
    for value in (10**400, -(10**400)):
        errors = recipe_errors(one_output({"op": op, option: value, **extra}, SAVE), [root])
        assert any(error.startswith(f"outputs[0].ops[0].{option}: expected ") for error in errors), errors


def test_duplicate_outputs_are_rejected(root: Path) -> None:
    output = {"path": "out/a.jpg", "ops": [SAVE]}
    data = {
        "input": "photos/in/cat.jpg",
        "outputs": [output, {"path": str(root / "out/a.jpg"), "ops": [SAVE]}],
    }
    assert recipe_errors(data, [root]) == ["outputs[1].path: same file as outputs[0]"]


def test_an_output_may_not_be_the_input(root: Path) -> None:
    """It was replaced by the output: a retry then started from the processed file."""
    os.link(root / "photos/in/cat.jpg", root / "photos/in/also-cat.jpg")
    for path in ("photos/in/cat.jpg", "photos/in/also-cat.jpg"):
        data = {"input": "photos/in/cat.jpg", "outputs": [{"path": path, "ops": [SAVE]}]}
        assert recipe_errors(data, [root]) == [
            "outputs[0].path: same file as input (a retry would start from this run's output)"
        ]


def test_an_output_may_not_be_a_watermark_image_of_the_recipe(root: Path) -> None:
    """The photo replaced the logo: this run's later outputs, its retry and every later recipe then
    stamped the wrong mark."""
    mark = {"op": "watermark", "image": "logo.png"}
    data = {
        "input": "photos/in/cat.jpg",
        "outputs": [
            {"path": "out/a.jpg", "ops": [mark, SAVE]},
            {"path": "logo.png", "ops": [SAVE]},
        ],
    }
    assert recipe_errors(data, [root]) == [
        "outputs[1].path: same file as the watermark image of outputs[0].ops[0] (it would be replaced)"
    ]


@pytest.mark.parametrize(("first", "second"), [("out/a", "out/a/b.png"), ("out/x/y.png", "out/x")])
def test_an_output_inside_another_output_is_a_recipe_error(root: Path, first: str, second: str) -> None:
    """A file and a folder of one name: it failed at the first save (retried), and only later as fatal."""
    data = {
        "input": "photos/in/cat.jpg",
        "outputs": [
            {"path": first, "ops": [{"op": "save", "format": "png"}]},
            {"path": second, "ops": [{"op": "save", "format": "png"}]},
        ],
    }
    assert recipe_errors(data, [root]) == [
        "outputs[1].path: one of outputs[0].path and it lies inside the other"
    ]


def test_large_watermark_images_are_not_all_kept_for_the_whole_run(tmp_path: Path) -> None:
    """Eight 4000x4000 marks on an 8x8 image: each was decoded and kept to the end (1.9 GB for eight
    7000x7000 ones), though the budget held a few pixels and the docs say one image at a time."""
    root = tmp_path / "root"
    root.mkdir()
    Image.new("RGB", (8, 8), "grey").save(root / "tiny.png")
    outputs = []
    for n in range(8):
        Image.new("RGBA", (4000, 4000), (n, 0, 0, 128)).save(root / f"mark{n}.png")
        mark = {"op": "watermark", "image": f"mark{n}.png"}
        outputs.append({"path": f"out/{n}.png", "ops": [mark, {"op": "save"}]})
    script = (
        "import json, resource, sys\n"
        "from pathlib import Path\n"
        "from spoolpipe.images import parse_recipe, run_recipe\n"
        "root = Path(sys.argv[1])\n"
        "run_recipe(parse_recipe(json.loads(sys.argv[2]), [root]))\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\n"
    )

    def peak_mb(marks: int) -> int:
        recipe = json.dumps({"input": "tiny.png", "outputs": outputs[:marks]})
        ran = subprocess.run(
            [sys.executable, "-c", script, str(root), recipe], capture_output=True, text=True
        )
        assert ran.returncode == 0, ran.stderr
        return int(ran.stdout)

    one, eight = peak_mb(1), peak_mb(8)
    assert sorted(os.listdir(root / "out")) == [f"{n}.png" for n in range(8)]
    assert eight - one < 150, f"peak {one} MB with one mark, {eight} MB with eight: each was kept (64 MB)"


def test_a_file_whose_decoding_runs_out_of_memory_is_rejected_naming_it(tmp_path: Path) -> None:
    """A 4x4 PNG whose IDAT claims 4 GB: on a host without overcommit Pillow's read raised a bare
    MemoryError, retried as transient (five times, "MemoryError:"), never naming the file."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    at = data.index(b"IDAT") - 4
    data[at : at + 4] = (0xFFFF0073).to_bytes(4, "big")
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(data))
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # a small host\n"
        "from spoolpipe.images import ImageRejected, open_image\n"
        "try:\n"
        "    open_image(sys.argv[1])\n"
        "except ImageRejected as exc:\n"
        "    print(exc)\n"
    )
    ran = subprocess.run([sys.executable, "-c", script, str(bad)], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith(f"{bad}: cannot decode"), ran.stdout
    assert "memory" in ran.stdout


def test_an_output_name_the_file_system_refuses_is_a_recipe_error(root: Path) -> None:
    data = {"input": "photos/in/cat.jpg", "outputs": [{"path": "out/" + "a" * 252 + ".jpg", "ops": [SAVE]}]}
    [error] = recipe_errors(data, [root])
    assert error.startswith("outputs[0].path: ")
    assert "the name is 256 bytes, longer than the file system allows (255)" in error


def test_an_output_path_longer_than_the_file_system_allows_is_a_recipe_error(root: Path) -> None:
    """Over PATH_MAX (4096 bytes) Path.is_dir raised ENAMETOOLONG: a raw OSError, retried."""
    data = {
        "input": "photos/in/cat.jpg",
        "outputs": [{"path": "/".join(["d" * 250] * 18) + "/x.jpg", "ops": [SAVE]}],
    }
    [error] = recipe_errors(data, [root])
    assert error.startswith("outputs[0].path: ")
    assert "longer than the file system allows (4095)" in error
    # The longest that fits, counting the temp file written beside it, is written.
    room = 4095 - 18 - len("/x.png") - len(os.fsencode(root.resolve()))  # .NAME.RANDOM.tmp: 18 more
    full, rest = divmod(room - 2, 251)  # "/" and 250 bytes a folder; the last takes what is left
    folders = ["d" * 250] * full + ["e" * (rest + 1)]
    target = "/".join([*folders, "x.png"])
    run_recipe(
        parse_recipe({"input": "photos/in/cat.jpg", "outputs": [{"path": target, "ops": [SAVE]}]}, [root])
    )
    assert len(os.fsencode(root.resolve() / target)) + 18 == 4095
    assert os.listdir(root.resolve().joinpath(*folders)) == ["x.png"]
    too_long = {"input": "photos/in/cat.jpg", "outputs": [{"path": target + "x", "ops": [SAVE]}]}
    assert "longer than the file system allows (4095)" in recipe_errors(too_long, [root])[0]


def test_a_long_output_name_the_file_system_allows_is_written(root: Path, tmp_path: Path) -> None:
    """The temp file beside it is named after it, 18 bytes longer: ENAMETOOLONG, retried as a
    transient error for a name that is legal."""
    (tmp_path / "long").mkdir()
    target = tmp_path / "long" / ("a" * 251 + ".png")  # 255 bytes
    images.save_image(Image.new("RGB", (4, 4)), target)
    assert os.listdir(tmp_path / "long") == [target.name]


def test_paths_stay_inside_the_roots(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    factory.photo(outside / "secret.jpg")
    (root / "photos" / "escape.jpg").symlink_to(outside / "secret.jpg")
    (root / "photos" / "elsewhere").symlink_to(outside)
    cases = {
        "../outside/secret.jpg": "input: '../outside/secret.jpg': '..' is not allowed",
        "photos/../photos/in/cat.jpg": "'..' is not allowed",
        str(outside / "secret.jpg"): "is outside the image roots",
        "photos/escape.jpg": "'photos/escape.jpg' leads outside the image roots through a symbolic link",
        "photos/elsewhere/secret.jpg": "leads outside the image roots through a symbolic link",
        "photos/in/missing.jpg": "input: 'photos/in/missing.jpg' does not exist",
        "photos": "input: 'photos' is not a regular file",
    }
    for source, expected in cases.items():
        errors = recipe_errors({"input": source, "outputs": [{"path": "a.jpg", "ops": [SAVE]}]}, [root])
        assert any(expected in error for error in errors), (source, errors)
    for target, expected in {
        "../a.jpg": "outputs[0].path: '../a.jpg': '..' is not allowed",
        str(outside / "a.jpg"): "outputs[0].path: ",
        "photos/elsewhere/new/a.jpg": "through a symbolic link",
        "photos/in": "outputs[0].path: 'photos/in' is a folder",
        str(root): f"outputs[0].path: '{root}' is a folder",  # it said: leads outside through a link
        "photos/in/cat.jpg/x.jpg": "is not a folder",
    }.items():
        errors = recipe_errors(one_output(SAVE, path=target), [root])
        assert any(expected in error for error in errors), (target, errors)


def test_paths_resolve_against_the_first_root_and_may_use_any_root(root: Path, tmp_path: Path) -> None:
    second = tmp_path / "second"
    second.mkdir()
    recipe = parse_recipe(one_output(SAVE, path=str(second / "x" / "a.jpg")), [root, second])
    assert recipe.input == root.resolve() / "photos" / "in" / "cat.jpg"
    assert recipe.outputs[0].path == second.resolve() / "x" / "a.jpg"
    assert recipe.outputs[0].save.format == "JPEG"
    with pytest.raises(ValueError, match="need at least one root"):
        parse_recipe(one_output(SAVE), [])
    with pytest.raises(ValueError, match="does not exist"):
        parse_recipe(one_output(SAVE), [tmp_path / "nowhere"])


def test_watermark_paths_are_confined_too(root: Path, tmp_path: Path) -> None:
    factory.rgba_png(tmp_path / "outside-logo.png")
    errors = recipe_errors(
        one_output({"op": "watermark", "image": str(tmp_path / "outside-logo.png")}, SAVE), [root]
    )
    assert errors == [
        f"outputs[0].ops[0].image: '{tmp_path / 'outside-logo.png'}' is outside the image roots"
    ]


# --------------------------------------------------------------------------- recipes: running


class RecordingBudget(PixelBudget):
    def __init__(self) -> None:
        super().__init__(1000)
        self.held: list[float] = []

    @contextmanager
    def hold(self, megapixels: float) -> Iterator[None]:
        self.held.append(megapixels)
        with super().hold(megapixels):
            yield


def test_run_recipe_end_to_end(root: Path) -> None:
    data = {
        "input": "photos/in/cat.jpg",
        "outputs": [
            {
                "path": "photos/out/cat-800.webp",
                "ops": [
                    {"op": "auto_orient"},
                    {"op": "resize", "width": 400, "mode": "fit"},
                    {"op": "strip"},
                    {"op": "save", "format": "webp", "quality": 80},
                ],
            },
            {
                "path": "photos/out/cat-thumb.jpg",
                "ops": [{"op": "thumbnail", "width": 200, "height": 200}, {"op": "save", "quality": 70}],
            },
            {
                "path": "photos/out/cat-card.png",
                "ops": [
                    {"op": "resize", "width": 120, "height": 120, "mode": "cover", "gravity": "smart"},
                    {"op": "watermark", "image": "logo.png", "gravity": "southwest", "opacity": 0.8},
                    {"op": "grayscale"},
                    {"op": "save", "optimize": True},
                ],
            },
            {"path": "photos/out/cat-lqip.webp", "ops": [{"op": "placeholder", "size": 16}, SAVE]},
        ],
    }
    budget = RecordingBudget()
    results = run_recipe(parse_recipe(data, [root]), budget=budget)
    out = root.resolve() / "photos" / "out"
    expected = [
        ("cat-800.webp", "webp", (400, 300)),
        ("cat-thumb.jpg", "jpeg", (200, 150)),
        ("cat-card.png", "png", (120, 120)),
        ("cat-lqip.webp", "webp", (16, 12)),
    ]
    assert [(Path(str(r["path"])).name, r["format"], (r["width"], r["height"])) for r in results] == expected
    for result, (name, fmt, size) in zip(results, expected, strict=True):
        with Image.open(out / name) as written:
            assert (written.format, written.size) == (fmt.upper(), size)
        assert result["bytes"] == (out / name).stat().st_size
        assert result["sha256"] == images.file_sha256(out / name)
    with Image.open(out / "cat-card.png") as card:
        assert card.mode == "L"
    assert sorted(os.listdir(out)) == sorted(name for name, _, _ in expected)  # no temp files
    assert budget.held == [pytest.approx(3 * 640 * 480 / 1e6)]
    assert budget.in_use == 0


def test_run_recipe_decodes_small_when_every_output_shrinks_first(root: Path) -> None:
    data = {
        "input": "photos/in/cat.jpg",
        "outputs": [
            {"path": "t1.jpg", "ops": [{"op": "thumbnail", "width": 100}, SAVE]},
            {"path": "t2.jpg", "ops": [{"op": "placeholder"}, SAVE]},
        ],
    }
    recipe = parse_recipe(data, [root])
    assert recipe.decode_size((640, 480), 1) == (100, 75)  # covers the largest output
    budget = RecordingBudget()
    results = run_recipe(recipe, budget=budget)
    assert [(r["width"], r["height"]) for r in results] == [(100, 75), (16, 12)]
    assert budget.held == [pytest.approx(3 * 160 * 120 / 1e6)]  # JPEG decoded at 1/4 scale


def test_decode_size_covers_each_output_as_its_leading_shrink_sees_the_source(root: Path) -> None:
    def outputs(*ops_lists: list[dict[str, object]]) -> dict[str, object]:
        return {
            "input": "photos/in/cat.jpg",
            "outputs": [{"path": f"o{i}.png", "ops": [*ops, SAVE]} for i, ops in enumerate(ops_lists)],
        }

    recipe = parse_recipe(
        outputs(
            [{"op": "thumbnail", "width": 100}],
            [{"op": "auto_orient"}, {"op": "resize", "width": 200}],
        ),
        [root],
    )
    # Stored 480x640, EXIF 6 (upright 640x480): both shrink the upright picture, so the widths turn.
    assert recipe.decode_size((480, 640), 6) == (150, 200)
    assert recipe.decode_size((480, 640), 1) == (200, 267)
    fill = parse_recipe(outputs([{"op": "resize", "width": 100, "height": 100, "mode": "fill"}]), [root])
    assert fill.decode_size((640, 480), 1) == (134, 100)  # covers the box before the crop
    cropped = parse_recipe(
        outputs([{"op": "thumbnail", "width": 100}], [{"op": "crop", "width": 50}]), [root]
    )
    assert cropped.decode_size((640, 480), 1) is None  # a crop needs every pixel


@pytest.mark.parametrize("orientation", range(1, 9))
def test_outputs_shrunk_on_load_keep_their_size_and_orientation(root: Path, orientation: int) -> None:
    factory.oriented_jpeg(root / "o.jpg", orientation, size=(640, 480))
    data = {
        "input": "o.jpg",
        "outputs": [
            {"path": "thumb.png", "ops": [{"op": "thumbnail", "width": 80, "height": 80}, SAVE]},
            {"path": "fit.png", "ops": [{"op": "auto_orient"}, {"op": "resize", "width": 120}, SAVE]},
        ],
    }
    results = run_recipe(parse_recipe(data, [root]))
    assert [(r["width"], r["height"]) for r in results] == [(80, 60), (120, 90)]
    for name in ("thumb.png", "fit.png"):
        with Image.open(root / name) as written:
            corners_ok(written)


_PNG_HEADER_SCRIPT = """
import re, sys
from contextlib import contextmanager
from pathlib import Path
from spoolpipe.images import PixelBudget, parse_recipe, recipe_megapixels, run_recipe

def peak():  # VmHWM, KiB: this process's memory high-water mark
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read())[1])

class Watched(PixelBudget):
    @contextmanager
    def hold(self, megapixels):
        print("asking", peak() - start)
        with super().hold(megapixels):
            yield

root = Path(sys.argv[1])
outputs = [{"path": "t.jpg", "ops": [{"op": "thumbnail", "width": 64}, {"op": "save"}]}]
recipe = parse_recipe({"input": "big.png", "outputs": outputs}, [root])
start = peak()
print("estimate", recipe_megapixels(recipe), peak() - start)
run_recipe(recipe, budget=Watched(1000))
"""


def _in_a_fresh_interpreter(script: str, folder: Path) -> str:
    """What ``script`` prints, run with ``folder`` as its argument in a new Python that imports this
    spoolpipe: a process whose heap and imports no earlier test has touched, as a pool process's."""
    package = Path(images.__file__).parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-c", script, str(folder)], env=env, capture_output=True, text=True, check=True
    )
    return run.stdout


def test_a_png_is_not_decoded_to_estimate_it_or_before_its_budget_is_held(tmp_path: Path) -> None:
    """Pillow's PNG getexif decodes the image when no eXIf chunk precedes the pixels (most PNGs):
    reading the orientation from the header cost a worker's main process 225 MB and 5 s of CPU for
    six activities on a 7000x7000 PNG, outside the budget."""
    Image.new("RGB", (3000, 3000), (90, 120, 30)).save(tmp_path / "big.png", compress_level=1)
    printed = _in_a_fresh_interpreter(_PNG_HEADER_SCRIPT, tmp_path)
    estimate, asking = (line.split() for line in printed.splitlines())
    assert estimate[:2] == ["estimate", str(3 * 9.0)]
    # Decoded, the 9 Mpx are 36 MB (four bytes a pixel); the header is a few KB.
    assert int(estimate[2]) < 12_000, printed
    assert int(asking[1]) < 12_000, printed
    with Image.open(tmp_path / "t.jpg") as thumb:
        assert thumb.size == (64, 64)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_the_exif_orientation_of_a_png_is_honoured(root: Path, orientation: int) -> None:
    with Image.open(factory.oriented_jpeg(root / "o.jpg", orientation, size=(640, 480))) as jpeg:
        jpeg.save(root / "o.png", exif=jpeg.getexif())  # an eXIf chunk, written before the pixels
    data = {
        "input": "o.png",
        "outputs": [
            {"path": "thumb.png", "ops": [{"op": "thumbnail", "width": 80, "height": 80}, SAVE]},
            {"path": "fit.png", "ops": [{"op": "auto_orient"}, {"op": "resize", "width": 120}, SAVE]},
        ],
    }
    recipe = parse_recipe(data, [root])
    assert images.recipe_megapixels(recipe) == pytest.approx(3 * 640 * 480 / 1e6)
    results = run_recipe(recipe)
    assert [(r["width"], r["height"]) for r in results] == [(80, 60), (120, 90)]
    for name in ("thumb.png", "fit.png"):
        with Image.open(root / name) as written:
            corners_ok(written)


def test_a_smaller_output_made_after_a_larger_one_matches_a_direct_thumbnail(root: Path) -> None:
    factory.photo(root / "big.jpg", (1200, 900))
    sides = (900, 300, 120)
    data = {
        "input": "big.jpg",
        "outputs": [
            {"path": f"t{side}.png", "ops": [{"op": "thumbnail", "width": side, "height": side}, SAVE]}
            for side in sides
        ],
    }
    run_recipe(parse_recipe(data, [root]))
    source = open_image(root / "big.jpg")
    for side in sides:
        direct = images.thumbnail(source, side, side)
        with Image.open(root / f"t{side}.png") as made:
            assert made.size == direct.size
            difference = ImageStat.Stat(ImageChops.difference(made.convert("RGB"), direct)).mean
            assert max(difference) < 2.0, (side, difference)


def test_a_cropped_output_is_never_the_base_of_a_later_fit(root: Path) -> None:
    data = {
        "input": "photos/in/cat.jpg",
        "outputs": [
            {
                "path": "square.png",
                "ops": [{"op": "resize", "width": 400, "height": 400, "mode": "fill"}, SAVE],
            },
            {"path": "wide.png", "ops": [{"op": "resize", "width": 100}, SAVE]},
        ],
    }
    results = run_recipe(parse_recipe(data, [root]))
    assert [(r["width"], r["height"]) for r in results] == [(400, 400), (100, 75)]


def test_run_recipe_takes_the_first_gif_frame_and_applies_limits(root: Path) -> None:
    factory.animated_gif(root / "anim.gif")
    recipe = parse_recipe({"input": "anim.gif", "outputs": [{"path": "first.png", "ops": [SAVE]}]}, [root])
    run_recipe(recipe)
    with Image.open(root / "first.png") as first:
        assert near(first.convert("RGB").getpixel((1, 1)), factory.RED)
    with pytest.raises(ImageRejected, match=r"anim\.gif: not an image in an allowed format"):
        run_recipe(recipe, limits=Limits(formats=frozenset({"PNG"})))


def test_run_recipe_reports_op_failures_by_path(root: Path) -> None:
    recipe = parse_recipe(one_output({"op": "crop", "box": [5000, 0, 6000, 10]}, SAVE), [root])
    with pytest.raises(
        RecipeError, match=r"outputs\[0\]\.ops\[0\]: crop box .* lies outside the 640x480 image"
    ):
        run_recipe(recipe)
    assert not (root / "out").exists()


def test_run_recipe_rechecks_links_made_after_validation(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    recipe = parse_recipe(one_output(SAVE, path="late/a.jpg"), [root])
    (root / "late").symlink_to(outside)
    with pytest.raises(RecipeError, match="changed into a link"):
        run_recipe(recipe)
    assert os.listdir(outside) == []


def test_the_documented_recipes_run(tmp_path: Path) -> None:
    docs = Path(__file__).resolve().parents[1] / "docs" / "images.md"
    blocks = re.findall(r"```json\n(.*?)```", docs.read_text(), re.DOTALL)
    recipes = [json.loads(block) for block in blocks if '"input"' in block and '"outputs"' in block]
    assert len(recipes) == 2
    for recipe in recipes:
        source = tmp_path / recipe["input"]
        source.parent.mkdir(parents=True, exist_ok=True)
        factory.oriented_jpeg(source, 6, size=(1200, 900))
        for output in recipe["outputs"]:
            for op in output["ops"]:
                if "image" in op:
                    (tmp_path / op["image"]).parent.mkdir(parents=True, exist_ok=True)
                    factory.rgba_png(tmp_path / op["image"])
        results = run_recipe(parse_recipe(recipe, [tmp_path]))
        assert len(results) == len(recipe["outputs"])
        for result in results:
            width, height = result["width"], result["height"]
            assert isinstance(width, int) and isinstance(height, int)
            assert width >= height  # oriented: the stored 900x1200 became landscape


# --------------------------------------------------------------------------- pixel budget


def test_budget_never_exceeds_its_capacity_under_concurrency() -> None:
    budget = PixelBudget(10)
    lock = threading.Lock()
    in_use, peak = [0.0], [0.0]
    rng = random.Random(3)
    sizes = [rng.uniform(0.5, 6) for _ in range(60)]

    def job(size: float) -> None:
        with budget.hold(size):
            with lock:
                in_use[0] += size
                peak[0] = max(peak[0], in_use[0])
            time.sleep(0.002)
            with lock:
                in_use[0] -= size

    threads = [threading.Thread(target=job, args=(s,)) for s in sizes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert 6 < peak[0] <= 10
    assert budget.in_use == 0


def test_budget_runs_an_oversized_image_alone_without_deadlock() -> None:
    budget = PixelBudget(10)
    small_started = threading.Event()
    release_small = threading.Event()
    events: list[str] = []

    def small() -> None:
        with budget.hold(4):
            small_started.set()
            release_small.wait(5)
            events.append("small done")

    def big() -> None:
        with budget.hold(25):
            events.append(f"big running, in use {budget.in_use}")

    first = threading.Thread(target=small)
    first.start()
    small_started.wait(5)
    second = threading.Thread(target=big)
    second.start()
    time.sleep(0.05)
    assert events == []  # the big one waits for the small one to finish
    release_small.set()
    for thread in (first, second):
        thread.join(timeout=5)
    assert events == ["small done", "big running, in use 25.0"]
    assert budget.in_use == 0


def test_budget_serves_waiters_in_order() -> None:
    budget = PixelBudget(10)
    order: list[str] = []
    gate = threading.Event()

    def holder() -> None:
        with budget.hold(8):
            gate.wait(5)

    def waiter(name: str, size: float) -> None:
        with budget.hold(size):
            order.append(name)

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    time.sleep(0.02)
    for name, size in (("big", 9), ("small", 1)):
        threads.append(threading.Thread(target=waiter, args=(name, size)))
        threads[-1].start()
        time.sleep(0.02)
    gate.set()
    for thread in threads:
        thread.join(timeout=5)
    assert order == ["big", "small"]  # the small one fit earlier but did not jump the queue


def test_budget_capacity_rules() -> None:
    assert PixelBudget().capacity > 0  # automatic
    budget = PixelBudget(5)
    budget.capacity = 0
    assert budget.capacity > 0
    with pytest.raises(ValueError, match="capacity"):
        PixelBudget(-1)
    with pytest.raises(ValueError, match="megapixels"), budget.hold(-1):
        pass


_REUSE_SCRIPT = """
import resource, sys
from pathlib import Path
from spoolpipe.images import parse_recipe, run_recipe

root = Path(sys.argv[1])
recipe = parse_recipe(
    {
        "input": "photo.jpg",
        "outputs": [
            {"path": f"t{side}.jpg", "ops": [{"op": "thumbnail", "width": side}, {"op": "save"}]}
            for side in (1600, 256)
        ],
    },
    [root],
)
for _ in range(2):
    run_recipe(recipe)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
run_recipe(recipe)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the heap is kept through glibc's mallopt")
def test_the_next_photo_reuses_the_freed_pixel_memory(tmp_path: Path) -> None:
    # A 12 Mpx JPEG decoded at 2000x1500, then 1600 px and 256 px: the source, resampling's
    # intermediate and the 1600 px output, 29 MB at once. glibc returned all of it at the end
    # of every run (free heap over twice its largest freed chunk), and the next run faulted
    # those 7,000 pages in again. A fresh interpreter that frees no larger image first (glibc's
    # thresholds follow the largest chunk freed so far), as a worker's pool process.
    Image.linear_gradient("L").resize((4000, 3000)).convert("RGB").save(tmp_path / "photo.jpg", quality=90)
    faults = int(_in_a_fresh_interpreter(_REUSE_SCRIPT, tmp_path).split()[-1])
    assert faults < 700, f"{faults} page faults in the third run (fresh pages for its pixels)"


def test_a_tagged_temporary_name_that_is_a_file_the_recipe_reads_is_never_replaced(root: Path) -> None:
    """With temp_tag an output's temporary file is removed first: an input of that very name stays."""
    hidden = root / "photos" / "in" / ".a.png.T1.tmp"
    Image.new("RGB", (64, 48), "red").save(hidden, format="PNG")
    before = hidden.read_bytes()
    recipe = parse_recipe(
        {"input": str(hidden), "outputs": [{"path": "photos/in/a.png", "ops": [SAVE]}]}, [root]
    )
    [saved] = run_recipe(recipe, temp_tag="T1")
    assert hidden.read_bytes() == before
    assert Image.open(str(saved["path"])).size == (64, 48)
