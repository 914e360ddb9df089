"""Running a validated recipe: one guarded decode, shrunk on load, then every output from it."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Final

from PIL import Image, ImageFile

from ..confine import _inside
from ..durable import temp_beside
from ._budget import PIXEL_BUDGET, WORKING_COPIES, PixelBudget
from ._decode import DEFAULT_LIMITS, ImageRejected, Limits, decode, open_image, open_lazy
from ._ops import _orientation, normalize_mode
from ._recipe import Op, Output, Recipe, RecipeError, Size
from ._save import save_image

DERIVE_GAP: Final = 3
"""A smaller output starts from a larger one's shrunk image when that is at least this many times its size.

The reducing gap at which Pillow finds an integer reduce followed by resampling
indistinguishable from resampling alone; the hand-written scripts people
compare with make their small sizes from the large one the same way.
"""


def _working(image: Image.Image, name: str) -> Image.Image:
    try:
        return normalize_mode(image)
    except ValueError as exc:
        raise ImageRejected(f"{name}: unsupported pixel mode {image.mode} ({exc})") from exc


def _ready_folder(target: Path, roots: tuple[Path, ...], where: str) -> None:
    """Create missing folders, then re-check that no link moved the target out of the roots."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if Path(os.path.realpath(target.parent)) != target.parent or not _inside(target.parent, roots):
        raise RecipeError([f"{where}: {target.parent} changed into a link since the recipe was validated"])


@dataclasses.dataclass(frozen=True)
class _Shrunk:
    """An output's image right after its leading shrink (an op that ``rescales()``), for the next outputs."""

    prefix: tuple[Op, ...]
    op: Op
    image: Image.Image

    def serves(self, prefix: tuple[Op, ...], op: Op, size: Size) -> bool:
        """Whether ``op`` after ``prefix`` may make its ``size`` result from this image."""
        return (
            self.prefix == prefix
            and type(self.op) is type(op)
            and op.rescales()
            and self.image.width >= DERIVE_GAP * size[0]
            and self.image.height >= DERIVE_GAP * size[1]
        )


def _make(
    output: Output,
    where: str,
    source: Image.Image,
    orientation: int,
    shrunk: _Shrunk | None,
    load_mark: Callable[[Path], Image.Image],
) -> tuple[Image.Image, _Shrunk | None]:
    """Run ``output``'s ops; returns its image and what the next outputs may shrink from."""
    image, start = source, 0
    plan = output.leading_shrink(source.size, orientation)
    if plan is not None:
        index, size, _ = plan
        op, prefix = output.ops[index], output.ops[:index]
        if shrunk is not None and shrunk.serves(prefix, op, size):
            image, start = op.shrink(shrunk.image, size), index + 1
            shrunk = _Shrunk(prefix, op, image)
    for j in range(start, len(output.ops)):
        op = output.ops[j]
        try:
            image = op.apply(image, load_mark)
        except ImageRejected:
            raise
        except ValueError as exc:
            raise RecipeError([f"{where}.ops[{j}]: {exc}"]) from exc
        if plan is not None and j == plan[0] and op.rescales():
            shrunk = _Shrunk(output.ops[:j], op, image)
    return image, shrunk


def _header_orientation(lazy: ImageFile.ImageFile) -> int:
    """The EXIF orientation as far as the header tells, without decoding a pixel.

    Pillow's PNG ``getexif`` decodes the whole image when no eXIf chunk precedes
    the pixels (most PNGs): outside the budget, in the worker's main process when
    it estimates. Only a JPEG is drafted, so a PNG's is not needed before decoding;
    the outputs follow the orientation of the decoded image.
    """
    if lazy.format == "PNG" and "exif" not in lazy.info:
        return 1
    return _orientation(lazy)


def _shrink_on_load(recipe: Recipe, lazy: ImageFile.ImageFile) -> None:
    """Draft ``lazy`` down to ``recipe.decode_size`` (nothing is decoded)."""
    target = recipe.decode_size(lazy.size, _header_orientation(lazy))
    if target is not None:
        lazy.draft(None, target)


def recipe_megapixels(recipe: Recipe, *, limits: Limits = DEFAULT_LIMITS) -> float:
    """What ``run_recipe`` will hold from its budget, read from the input's header alone."""
    with open_lazy(recipe.input, limits.max_bytes, limits.max_pixels, limits.formats) as lazy:
        _shrink_on_load(recipe, lazy)
        return WORKING_COPIES * lazy.width * lazy.height / 1e6


#: Watermark images up to this many pixels are decoded once per run; larger ones each time they are used,
#: so that a run holds at most one of them (they are not counted by the budget).
KEPT_MARK_PIXELS: Final = 1 << 20


def run_recipe(
    recipe: Recipe,
    *,
    limits: Limits = DEFAULT_LIMITS,
    budget: PixelBudget = PIXEL_BUDGET,
    temp_tag: str | None = None,
) -> list[dict[str, object]]:
    """Decode the input once and write every output; returns one dict per output.

    Each dict holds path, format, width, height, bytes and sha256 of the file
    written. A JPEG is decoded at the largest DCT scale that still covers every
    output's leading shrink (``Recipe.decode_size``), and an output may start
    from an earlier output's shrunk image (``DERIVE_GAP``). The run holds
    ``WORKING_COPIES`` times the decoded megapixels from ``budget`` throughout.
    Each file is replaced atomically, but outputs are written one after
    another: a failure can leave earlier ones done. ``temp_tag`` names their
    temporary files (``save_image``), so that a retry replaces what a killed run left.
    """
    if Path(os.path.realpath(recipe.input)) != recipe.input:
        raise RecipeError(["input: changed into a link since the recipe was validated"])
    marks: dict[Path, Image.Image] = {}  # small ones, used again by later outputs

    def load_mark(path: Path) -> Image.Image:
        if path in marks:
            return marks[path]
        decoded = open_image(
            path, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels, formats=limits.formats
        )
        mark = _working(decoded, str(path))
        if mark.width * mark.height <= KEPT_MARK_PIXELS:  # a larger one is decoded again where used
            marks[path] = mark
        return mark

    results: list[dict[str, object]] = []
    read = recipe.files_read()
    with ExitStack() as held:
        name = str(recipe.input)
        with open_lazy(recipe.input, limits.max_bytes, limits.max_pixels, limits.formats) as lazy:
            _shrink_on_load(recipe, lazy)
            held.enter_context(budget.hold(WORKING_COPIES * lazy.width * lazy.height / 1e6))
            source = _working(decode(lazy, name), name)
        orientation = _orientation(source)
        shrunk: _Shrunk | None = None
        for i, output in enumerate(recipe.outputs):
            image, shrunk = _make(output, f"outputs[{i}]", source, orientation, shrunk, load_mark)
            _ready_folder(output.path, recipe.roots, f"outputs[{i}].path")
            save = output.save
            # Never the name of a file the recipe reads: the tagged temporary file is replaced first.
            tag = None if temp_tag is None or temp_beside(output.path, temp_tag) in read else temp_tag
            try:
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
                    temp_tag=tag,
                )
            except ValueError as exc:  # the encoder refusing this image: a retry would get the same
                raise RecipeError([f"outputs[{i}]: cannot save {output.path} ({exc})"]) from exc
            results.append({**dataclasses.asdict(saved), "path": str(saved.path)})
    return results
