"""The recipe schema: ops as frozen dataclasses whose fields say how each option is checked.

``parse_recipe`` validates a whole recipe before any work and reports every
problem at once, each named by its JSON path.
"""

from __future__ import annotations

import dataclasses
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, TypeVar

from PIL import Image, ImageColor

from ..confine import _existing_file, _got, _Invalid, output_file, real_roots
from ._ops import (
    _CENTERING,
    _METADATA_KEYS,
    _RESIZE_KINDS,
    MAX_DIMENSION,
    Gravity,
    ResizeMode,
    _bicubic,
    _resample,
    auto_orient,
    blur,
    crop,
    crop_box,
    fit_within,
    flip,
    flop,
    grayscale,
    placeholder,
    resize,
    rotate,
    sharpen,
    strip,
    thumbnail,
    to_srgb,
    watermark,
)
from ._save import _FORMAT_NAMES, _SUFFIX_FORMATS, _format_for, _save_problems


class RecipeError(ValueError):
    """An invalid recipe; ``errors`` lists every problem, each starting with its JSON path."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = tuple(errors)


_Check = Callable[[object, tuple[Path, ...]], object]


def _by(check: _Check) -> dict[str, _Check]:
    """Field metadata: how the recipe parser validates (and normalises) the option."""
    return {"check": check}


def _int(low: int, high: int, what: str) -> _Check:
    def check(value: object, roots: tuple[Path, ...]) -> object:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Invalid(f"expected {what}, got {_got(value)}")
        return value

    return check


def _number(low: float, high: float, what: str, *, open_low: bool = False) -> _Check:
    def check(value: object, roots: tuple[Path, ...]) -> object:
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and (
                isinstance(value, int)
                or math.isfinite(value)  # an int compares exactly: isfinite(10**400) raised
            )
        ):
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


_DIM: Final = _int(1, MAX_DIMENSION, f"a positive integer up to {MAX_DIMENSION}")
_GRAVITY: Final = _choice([*_CENTERING, "smart"])
_PLAIN_GRAVITY: Final = _choice(list(_CENTERING))
_MarkLoader = Callable[[Path], Image.Image]
Size = tuple[int, int]


@dataclass(frozen=True)
class Op(ABC):
    """A validated recipe step; its options are the fields of the subclass."""

    name: ClassVar[str]
    orients: ClassVar[bool] = False
    """Whether it applies the EXIF orientation (so the image it yields may be turned)."""

    @abstractmethod
    def apply(self, image: Image.Image, load_mark: _MarkLoader) -> Image.Image:
        """Run the step; ``load_mark`` decodes watermark images (under the run's limits)."""

    def problems(self) -> Iterator[tuple[str, str]]:
        """Checks across options, as (option, message)."""
        return iter(())

    def shrinks_to(self, size: Size) -> Size | None:
        """As an output's first op, on an image of ``size``: a size of the image it resamples
        that is big enough for its result (``None``: it needs every pixel). A JPEG is then
        decoded at the largest DCT scale that still covers it (libvips' shrink-on-load)."""
        return None

    def rescales(self) -> bool:
        """Whether ``shrink`` can make this op's result from a larger result of the same kind."""
        return False

    def shrink(self, larger: Image.Image, size: Size) -> Image.Image:
        """This op's result at ``size`` made from ``larger``, a result of an op of the same
        class whose ``rescales()`` is true too (a 256 px thumbnail from the 1600 px one)."""
        raise NotImplementedError(f"{self.name} cannot be made from a larger result")


@dataclass(frozen=True)
class _PlainOp(Op):
    """An op without options: ``function(image)``."""

    function: ClassVar[Callable[[Image.Image], Image.Image]]

    def apply(self, image: Image.Image, load_mark: _MarkLoader) -> Image.Image:
        return type(self).function(image)


@dataclass(frozen=True)
class AutoOrientOp(_PlainOp):
    name: ClassVar[str] = "auto_orient"
    orients: ClassVar[bool] = True
    function = auto_orient


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

    def shrinks_to(self, size: Size) -> Size | None:
        kind = _RESIZE_KINDS[self.mode]
        if kind == "fit":
            return fit_within(size, self.width, self.height)
        if self.width is None or self.height is None:
            return None
        if kind == "exact":
            return min(self.width, size[0]), min(self.height, size[1])
        # fill covers the box, pad fits it: either way the whole image is resampled by this scale.
        pick = max if kind == "fill" else min
        scale = min(1.0, pick(self.width / size[0], self.height / size[1]))
        return min(size[0], math.ceil(size[0] * scale)), min(size[1], math.ceil(size[1] * scale))

    def rescales(self) -> bool:
        return _RESIZE_KINDS[self.mode] == "fit" and not self.upscale

    def shrink(self, larger: Image.Image, size: Size) -> Image.Image:
        return _resample(larger, size)

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
    orients: ClassVar[bool] = True
    width: int | None = field(default=None, metadata=_by(_DIM))
    height: int | None = field(default=None, metadata=_by(_DIM))

    def apply(self, image: Image.Image, load_mark: _MarkLoader) -> Image.Image:
        return thumbnail(image, self.width, self.height)

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.width is None and self.height is None:
            yield "width", "width, height or both are required"

    def shrinks_to(self, size: Size) -> Size | None:
        return fit_within(size, self.width, self.height)

    def rescales(self) -> bool:
        return True

    def shrink(self, larger: Image.Image, size: Size) -> Image.Image:
        return _bicubic(larger, size)


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
class FlipOp(_PlainOp):
    name: ClassVar[str] = "flip"
    function = flip


@dataclass(frozen=True)
class FlopOp(_PlainOp):
    name: ClassVar[str] = "flop"
    function = flop


@dataclass(frozen=True)
class SrgbOp(_PlainOp):
    name: ClassVar[str] = "srgb"
    function = to_srgb


@dataclass(frozen=True)
class GrayscaleOp(_PlainOp):
    name: ClassVar[str] = "grayscale"
    function = grayscale


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

    def shrinks_to(self, size: Size) -> Size | None:
        return fit_within(size, self.size, self.size)


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

    def leading_shrink(self, size: Size, orientation: int) -> tuple[int, Size, bool] | None:
        """Where this output first shrinks a source of stored ``size``: (op index, its result's
        size, whether the op sees the source turned by ``orientation``); ``None`` if it does not."""
        turned = False
        for index, op in enumerate(self.ops):
            turned = turned or (op.orients and orientation >= 5)  # 5-8 swap width and height
            if isinstance(op, AutoOrientOp):
                continue
            target = op.shrinks_to((size[1], size[0]) if turned else size)
            return None if target is None else (index, target, turned)
        return None


@dataclass(frozen=True)
class Recipe:
    """A validated recipe: real paths, confined to ``roots`` (themselves real paths)."""

    input: Path
    outputs: tuple[Output, ...]
    roots: tuple[Path, ...]

    def files_read(self) -> set[Path]:
        """The input and every watermark image: the files a run reads."""
        return {self.input} | {path for _, path in _watermark_images(self.outputs)}

    def decode_size(self, size: Size, orientation: int) -> Size | None:
        """What a source of stored ``size`` and EXIF ``orientation`` may be decoded down to.

        The smallest size, in the file's orientation, that covers what every
        output's leading shrink needs; ``None`` when some output needs every pixel.
        """
        needs: list[Size] = []
        for output in self.outputs:
            plan = output.leading_shrink(size, orientation)
            if plan is None:
                return None
            _, (width, height), turned = plan
            needs.append((height, width) if turned else (width, height))
        return max(w for w, _ in needs), max(h for _, h in needs)


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
        path = output_file(raw.get("path"), roots)
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


def _same_file(path: Path, other: Path) -> bool:
    """Whether ``path`` (which may not exist yet) names the file ``other`` is, by path or by hard link."""
    if path == other:
        return True
    try:
        return os.path.samefile(path, other)
    except OSError:
        return False


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
            nested = next(
                (j for p, j in seen.items() if p in output.path.parents or output.path in p.parents), None
            )
            if output.path in seen:
                errors.append(f"outputs[{i}].path: same file as outputs[{seen[output.path]}]")
            elif nested is not None:
                errors.append(
                    f"outputs[{i}].path: one of outputs[{nested}].path and it lies inside the other"
                )
            elif source is not None and _same_file(output.path, source):
                errors.append(
                    f"outputs[{i}].path: same file as input (a retry would start from this run's output)"
                )
            seen.setdefault(output.path, i)
            outputs.append(output)
        errors += _marks_replaced(outputs)
    if errors or source is None:
        raise RecipeError(errors)
    return Recipe(source, tuple(outputs), resolved)


def _watermark_images(outputs: Sequence[Output]) -> list[tuple[str, Path]]:
    """The image files the outputs' watermark steps read, each with where in the recipe it is named."""
    return [
        (f"outputs[{i}].ops[{k}]", op.image)
        for i, output in enumerate(outputs)
        for k, op in enumerate(output.ops)
        if isinstance(op, WatermarkOp) and op.image is not None
    ]


def _marks_replaced(outputs: Sequence[Output]) -> list[str]:
    """An output that is a watermark image of the recipe would replace it for later outputs and retries."""
    marks = _watermark_images(outputs)
    return [
        f"outputs[{i}].path: same file as the watermark image of {where} (it would be replaced)"
        for i, output in enumerate(outputs)
        for where, mark in marks
        if _same_file(output.path, mark)
    ]
