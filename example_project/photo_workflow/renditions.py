"""``photo.renditions``: a step pipeline bound to an activity type (the Python route).

``pipeline_processor`` opens ``data["input"]`` (the master; confined to
``images.roots``, under ``open_image``'s limits) and runs this pipeline on it:

    wave 1:  render  (fan-out: one run per entry of data["renditions"], in threads)
             describe (dominant colour and aspect ratio, at the same time)
    wave 2:  announce (async: builds the catalogue entry, asks for photo.index)

The data of the activity is in the context (``photo``, ``name``, ``renditions``,
...) next to the keys spoolpipe adds: ``activity``, ``input_path``, ``roots``,
``follow_up``, ``log`` and ``settings``. The activity's result is a JSON
summary with every step's status and the outputs below (images left out).
"""

from __future__ import annotations

import re
from typing import Any

from PIL import Image

from spoolpipe import images
from spoolpipe.image_processors import pipeline_processor
from spoolpipe.images import PIXEL_BUDGET
from spoolpipe.steps import (
    Pipeline,
    PipelineConfig,
    PipelineStep,
    StepFatal,
    StepResult,
    StepStatus,
    fan_out,
    max_retries,
    provides,
    requires,
    step,
    timeout,
)

from .layout import INDEX, RENDITIONS, rel, renditions_folder

_NAME = re.compile(r"\A[a-z0-9][a-z0-9-]{0,31}\Z")
_SUFFIXES = {"jpeg": ".jpg", "webp": ".webp", "png": ".png"}


def _spec(raw: object) -> dict[str, Any]:
    """One entry of ``data["renditions"]``, checked: it names a file and comes from a JSON file."""
    if not isinstance(raw, dict) or not _NAME.match(str(raw.get("name", ""))):
        raise StepFatal(f"rendition {raw!r}: needs a name of lower-case letters, digits and dashes")
    for side in ("width", "height"):
        value = raw.get(side)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= images.MAX_DIMENSION:
            raise StepFatal(f"rendition {raw['name']}: {side} must be an integer from 1 to 8192")
    if raw.get("format") not in _SUFFIXES:
        raise StepFatal(f"rendition {raw['name']}: format must be one of {', '.join(_SUFFIXES)}")
    return raw


class Render(PipelineStep):
    """Shrink the master to fit one box and save it (never enlarges)."""

    @step("render")
    @fan_out("renditions", as_key="rendition")
    @provides("written")
    @timeout(60.0)
    @max_retries(1)
    def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
        spec = _spec(context["rendition"])
        root = context["roots"][0]
        try:
            folder = renditions_folder(root, str(context["photo"]))
        except ValueError as exc:
            raise StepFatal(str(exc)) from exc
        # Several renders run at once in this process: take room for the copies they make.
        with PIXEL_BUDGET.hold(2 * image.width * image.height / 1e6):
            picture = images.resize(image, spec["width"], spec["height"], mode="fit")
            if spec.get("sharpen"):
                picture = images.sharpen(picture, radius=1.0, percent=60, threshold=2)
            folder.mkdir(parents=True, exist_ok=True)
            saved = images.save_image(
                picture,
                folder / f"{spec['name']}{_SUFFIXES[spec['format']]}",
                quality=spec.get("quality"),
                progressive=bool(spec.get("progressive", False)),
            )
        written = {
            "name": spec["name"],
            "path": rel(saved.path, root),
            "format": saved.format,
            "width": saved.width,
            "height": saved.height,
            "bytes": saved.bytes,
        }
        return StepResult(StepStatus.COMPLETED, {"written": written})


class Describe(PipelineStep):
    """Facts for the catalogue, computed while the renders run."""

    @step("describe")
    @provides("dominant_color", "aspect")
    def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
        return StepResult(
            StepStatus.COMPLETED,
            {"dominant_color": images.dominant_color(image), "aspect": round(image.width / image.height, 4)},
        )


class Announce(PipelineStep):
    """Build the catalogue entry and ask for ``photo.index``; async, as it does no Pillow work."""

    @step("announce")
    @requires("written", "dominant_color", "aspect")
    @provides("entry")
    async def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
        entry = {
            "photo": context["photo"],
            "name": context["name"],
            "original": context["original"],
            "master": rel(context["input_path"], context["roots"][0]),
            "sha256": context["sha256"],
            "width": image.width,
            "height": image.height,
            "aspect": context["aspect"],
            "dominant_color": context["dominant_color"],
            "renditions": {item["name"]: item for item in context["written"]},
            **context.get("extras", {}),
        }
        # Published only if the whole activity succeeds; the key keeps its id stable.
        context["follow_up"](INDEX, {"entry": entry}, key="index")
        return StepResult(StepStatus.COMPLETED, {"entry": entry})


def build() -> Pipeline:
    """A fresh pipeline per activity (cheap: steps hold no state)."""
    pipeline = Pipeline(PipelineConfig(max_retries=1, timeout=60.0))
    for part in (Render(), Describe(), Announce()):
        pipeline.add_step(part)
    return pipeline


pipeline_processor(RENDITIONS, build, follow_ups=(INDEX,), timeout=180.0)
