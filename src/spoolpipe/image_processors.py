"""Image work as activities: the no-Python ``image.process`` type and step pipelines bound to a type.

- ``image.process``: the activity's ``data`` is a recipe (docs/images.md). It is
  validated in full against ``images.roots`` before any work; a bad recipe or a
  refused image is ``Fatal`` (never retried). The result is one dict per output.
- ``pipeline_processor(type, build)``: registers a processor that opens
  ``data["input"]`` (confined to ``images.roots``, under ``open_image``'s
  limits), runs the ``Pipeline`` that ``build()`` returns over it, and returns a
  JSON summary. A step that timed out in a thread taints the process; the
  attempt then fails with ``recycle_process = True`` so the worker replaces it.

Both declare how many megapixels an activity will hold (``recipe_megapixels``,
``input_megapixels``), so the worker keeps the image work running at once under
``images.max-megapixels``. Pillow is imported only inside the functions that
do image work: every worker imports this module.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from .activity import Activity
from .config import Settings
from .processor import Context, Fatal, FollowUp, processor
from .storable import MAX_DEPTH

if TYPE_CHECKING:  # steps (and asyncio) are imported by the first pipeline run: the daemon never needs them
    from .images import Limits
    from .steps import Pipeline, PipelineResult, StepResult

__all__ = [
    "ACTIVITY_KEY",
    "FOLLOW_UP_KEY",
    "IMAGE_PROCESS",
    "INPUT_PATH_KEY",
    "LOG_KEY",
    "RESERVED_KEYS",
    "ROOTS_KEY",
    "SETTINGS_KEY",
    "FollowUpFunction",
    "ProcessTainted",
    "configure_pixel_budget",
    "image_roots",
    "input_megapixels",
    "pipeline_processor",
    "recipe_megapixels",
    "resolve_input",
]

IMAGE_PROCESS: Final = "image.process"
"""The built-in activity type whose ``data`` is a recipe."""

# Keys a pipeline_processor adds to the initial context, next to the activity's data.
ACTIVITY_KEY: Final = "activity"
"""The ``Activity`` being run (id, type, data, attempt)."""
INPUT_PATH_KEY: Final = "input_path"
"""The real path of ``data["input"]``, checked to lie in ``images.roots``."""
ROOTS_KEY: Final = "roots"
"""The image roots as real paths (a tuple of ``Path``); the first one anchors relative paths."""
FOLLOW_UP_KEY: Final = "follow_up"
"""``follow_up(type, data=None, *, key=None, delay=None)``: ask for a follow-up (thread-safe)."""
LOG_KEY: Final = "log"
"""The attempt's logger (``logs/activities/ID~N.log``)."""
SETTINGS_KEY: Final = "settings"
"""The worker's ``config.Settings`` (``custom`` holds the ``custom.*`` keys)."""
RESERVED_KEYS: Final = frozenset(
    {ACTIVITY_KEY, INPUT_PATH_KEY, ROOTS_KEY, FOLLOW_UP_KEY, LOG_KEY, SETTINGS_KEY, "image"}
)  # "image": steps.IMAGE_KEY (test_image_processors checks they agree)
"""Context keys the activity's data may not use."""

FollowUpFunction = Callable[..., None]

_budget_lock = threading.Lock()
_budget_share: float | None = None


class ProcessTainted(RuntimeError):
    """A step timed out in a thread that cannot be stopped: fail the attempt and replace the process."""

    recycle_process = True


def configure_pixel_budget(settings: Settings) -> float:
    """Set this process's ``PIXEL_BUDGET`` to ``images.max-megapixels``; returns the capacity.

    Across pool processes the worker admits image activities by their estimated
    megapixels (``input_megapixels``); inside one activity, ``run_recipe`` (and any code
    that calls ``PIXEL_BUDGET.hold``) holds from it. Idempotent and cheap: image processors call
    it at the start of every activity, so a hot-reloaded setting applies.
    """
    from .images import PIXEL_BUDGET

    global _budget_share
    capacity = settings.images_max_megapixels
    with _budget_lock:
        if capacity != _budget_share:
            PIXEL_BUDGET.capacity = capacity
            _budget_share = capacity
    return PIXEL_BUDGET.capacity


def input_megapixels(activity: Activity, settings: Settings) -> float:
    """What running ``activity`` will hold: ``WORKING_COPIES`` times its input's decoded megapixels.

    Read from the image header only (no decode), so the worker can afford it
    before claiming. Whatever is wrong with the input is left for the processor
    to report: this raises and the worker counts nothing.
    """
    from PIL import Image

    from . import images

    path = images.resolve_path(activity.data["input"], settings.images_roots)
    with Image.open(path) as header:
        width, height = header.size
    return images.WORKING_COPIES * width * height / 1e6


def recipe_megapixels(activity: Activity, settings: Settings) -> float:
    """What ``image.process`` will hold: ``input_megapixels``, but at the size the JPEG is decoded to.

    A recipe whose outputs all start by shrinking decodes its input small
    (``images.run_recipe``), so the worker can admit more of them at once.
    Raises, like ``input_megapixels``, whatever is wrong with the recipe.
    """
    from . import images

    return images.recipe_megapixels(images.parse_recipe(activity.data, settings.images_roots))


def image_roots(settings: Settings) -> tuple[Path, ...]:
    """The configured roots as real paths; ``Fatal`` when none is configured or one is unusable.

    A root that is missing or not a folder fails the activity at once, naming
    the root: retrying cannot fix a configuration, and five attempts only hide it.
    """
    if not settings.images_roots:
        raise Fatal(
            "no image roots configured: set images.roots in spoolpipe.properties "
            "to the folders image activities may read and write"
        )
    from . import images

    try:
        return images.real_roots(settings.images_roots)
    except ValueError as exc:
        where = settings.key_sources.get("images.roots", "spoolpipe.properties")
        raise Fatal(f"{exc} (check images.roots at {where})") from exc


def resolve_input(
    value: object, roots: Sequence[Path], *, field: str = "input", kind: Literal["file", "folder"] = "file"
) -> Path:
    """``images.resolve_path`` for a processor: a refused path is ``Fatal``, naming ``field``."""
    from . import images

    try:
        return images.resolve_path(value, roots, kind=kind)
    except images.PathRejected as exc:
        raise Fatal(f"{field}: {exc}") from None


# --------------------------------------------------------------------------- image.process


@processor(IMAGE_PROCESS, follow_ups=(), megapixels=recipe_megapixels)
def process_recipe(activity: Activity, ctx: Context) -> list[dict[str, object]]:
    """Run the recipe in ``activity.data``; bad recipes and refused images fail at once."""
    from . import images

    configure_pixel_budget(ctx.settings)
    roots = image_roots(ctx.settings)
    try:
        recipe = images.parse_recipe(activity.data, roots)
    except images.RecipeError as exc:
        raise Fatal(f"invalid recipe: {exc}") from exc
    try:
        outputs = images.run_recipe(recipe, temp_tag=activity.id)
    except images.RecipeError as exc:
        raise Fatal(f"recipe failed: {exc}") from exc
    except images.ImageRejected as exc:
        raise Fatal(f"image refused: {exc.reason}") from exc
    for output in outputs:
        ctx.log.info(
            "wrote %s (%sx%s %s)", output["path"], output["width"], output["height"], output["format"]
        )
    return outputs


# --------------------------------------------------------------------------- pipelines


class _FollowUps:
    """``ctx.follow_up`` for steps: serialised across step threads, closed when the run ends.

    Each step attempt gets an :class:`_AttemptFollowUps` in its place (``begin``): what an attempt
    that fails asked for is never made.
    """

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._lock = threading.Lock()
        self._open = True
        self._asked = 0  # follow-ups asked for in this run, by every attempt: the default keys

    def __call__(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        delay: float | None = None,
    ) -> None:
        self.add(type, data, key, delay, None)

    def begin(self) -> _AttemptFollowUps:
        return _AttemptFollowUps(self)

    def add(
        self,
        type: str,
        data: Mapping[str, Any] | None,
        key: str | None,
        delay: float | None,
        pending: dict[str, FollowUp] | None,
    ) -> None:
        """Check a follow-up and keep it, or, with ``pending`` (by key), add it there to keep later."""
        from .steps import StepFatal

        with self._lock:
            if not self._open:
                raise StepFatal(f"follow-up {type!r} asked for after the pipeline run ended")
            self._asked += 1  # steps running at once each number theirs apart from the others'
            if key is None:
                key = str(self._asked)
            try:
                made = self._ctx.check_follow_up(type, data, key=key, delay=delay, pending=pending or {})
                if pending is None:
                    self._ctx.keep([made])
                else:
                    pending[made.key] = made
            except Fatal as exc:  # an undeclared type is a bug: no point retrying the step
                raise StepFatal(str(exc)) from exc

    def keep(self, follow_ups: Sequence[FollowUp]) -> None:
        from .steps import StepFatal

        with self._lock:
            try:
                self._ctx.keep(follow_ups)
            except Fatal as exc:  # two steps running at once used one key
                raise StepFatal(str(exc)) from exc

    def close(self) -> None:
        with self._lock:
            self._open = False


class _AttemptFollowUps:
    """The follow-ups one step attempt asks for, checked at once, made only by :meth:`keep`."""

    def __init__(self, run: _FollowUps) -> None:
        self._run = run
        self._pending: dict[str, FollowUp] = {}  # by key, in the order asked for

    def __call__(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        delay: float | None = None,
    ) -> None:
        self._run.add(type, data, key, delay, self._pending)

    def keep(self) -> None:
        """The attempt did not fail: its follow-ups are made (an attempt that failed keeps none)."""
        pending, self._pending = self._pending, {}
        self._run.keep(list(pending.values()))


def _jsonable(value: object, levels: int = MAX_DEPTH - 2) -> tuple[bool, object]:
    """``value`` as JSON data (paths become strings, tuples lists), or ``(False, None)``.

    Lists and objects may nest ``levels`` deep: the summary and its ``outputs`` are
    the first two of the ``MAX_DEPTH`` a result may have (a dict holding itself never ends).
    """
    if value is None or isinstance(value, str | bool | int):
        return True, value
    if isinstance(value, float):
        return (True, value) if math.isfinite(value) else (False, None)
    if isinstance(value, Path):
        return True, str(value)
    if levels < 1 and isinstance(value, list | tuple | Mapping):
        return False, None
    if isinstance(value, list | tuple):
        items = [_jsonable(v, levels - 1) for v in value]
        return (True, [v for _, v in items]) if all(ok for ok, _ in items) else (False, None)
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        pairs = {k: _jsonable(v, levels - 1) for k, v in value.items()}
        if all(ok for ok, _ in pairs.values()):
            return True, {k: v for k, (_, v) in pairs.items()}
    return False, None


def _summary(
    result: PipelineResult, initial: Mapping[str, Any], input_path: Path, image_size: tuple[int, int]
) -> dict[str, Any]:
    """Input, each step's status, and every step output that is JSON data (images are left out)."""
    outputs: dict[str, object] = {}
    for key, value in result.items():
        if key in initial and initial[key] is value:
            continue
        ok, converted = _jsonable(value)
        if ok:
            outputs[key] = converted
    return {
        "input": str(input_path),
        "width": image_size[0],
        "height": image_size[1],
        "steps": {name: step.status.value for name, step in result.step_results.items()},
        "outputs": outputs,
    }


def _retryable(result: StepResult) -> bool:
    from .steps import StepStatus

    failed = [item for item in result.items if item.status is StepStatus.FAILED]
    if failed:
        return any(_retryable(item) for item in failed)
    return result.retryable


def pipeline_processor(
    type_: str,
    build: Callable[[], Pipeline],
    *,
    follow_ups: tuple[str, ...] | None = None,
    timeout: float | None = None,
    limits: Limits | None = None,
    summary: Callable[[PipelineResult], Any] | None = None,
    draft: tuple[int, int] | None = None,
) -> Callable[[Activity, Context], Any]:
    """Register a processor for ``type_`` that runs ``build()``'s pipeline over ``data["input"]``.

    The input is opened with ``open_image`` (``limits``, default
    ``images.DEFAULT_LIMITS``) after being confined to
    ``images.roots``, and normalised to L, LA, RGB or RGBA (not auto-oriented).
    When every step needs at most a ``draft=(w, h)`` box of the image, a JPEG
    input is decoded just large enough for it (``open_image``'s ``draft``).
    The initial context holds the activity's data (top-level keys) plus
    ``RESERVED_KEYS``: ``activity``, ``input_path``, ``roots``, ``follow_up``,
    ``log`` and ``settings``. ``follow_ups`` are the types steps may create
    (None: any type, the rule of every processor form).

    Outcomes: the result is ``summary(result)`` if given, else a JSON summary
    (input, size, each step's status, the JSON-able step outputs). A bad input,
    an invalid graph, or a failure of steps that were all non-retryable is
    ``Fatal``; other step failures are retried per ``retry.*``; a step left
    running in a thread after its timeout raises ``ProcessTainted`` so the
    worker replaces this process. ``build`` runs once per activity.
    """

    def run(activity: Activity, ctx: Context) -> Any:
        from . import images

        caps = limits or images.DEFAULT_LIMITS
        configure_pixel_budget(ctx.settings)
        roots = image_roots(ctx.settings)
        if "input" not in activity.data:
            raise Fatal("input: required (the image to process, a path inside images.roots)")
        clashes = sorted(key for key in activity.data if key in RESERVED_KEYS)
        if clashes:
            raise Fatal(f"data field(s) {', '.join(clashes)} are reserved for the pipeline context")
        input_path = resolve_input(activity.data["input"], roots)
        try:
            decoded = images.open_image(
                input_path,
                max_bytes=caps.max_bytes,
                max_pixels=caps.max_pixels,
                formats=caps.formats,
                draft=draft,
            )
            image = images.normalize_mode(decoded)
        except images.ImageRejected as exc:
            raise Fatal(f"image refused: {exc.reason}") from exc
        except ValueError as exc:
            raise Fatal(f"image refused: {input_path}: unsupported pixel mode ({exc})") from exc
        import asyncio

        from .steps import PipelineGraphError, PipelineRunError, StepStatus, any_step_abandoned

        pipeline = build()
        follow_up = _FollowUps(ctx)
        initial: dict[str, Any] = {
            **activity.data,
            ACTIVITY_KEY: activity,
            INPUT_PATH_KEY: input_path,
            ROOTS_KEY: roots,
            FOLLOW_UP_KEY: follow_up,
            LOG_KEY: ctx.log,
            SETTINGS_KEY: ctx.settings,
        }
        try:
            result = asyncio.run(pipeline.run(image, initial))
        except PipelineGraphError as exc:
            raise Fatal(f"pipeline cannot run: {exc}") from exc
        except PipelineRunError as exc:
            if pipeline.tainted or any_step_abandoned():
                raise ProcessTainted(f"{exc} (a step thread was abandoned: replacing the process)") from exc
            failed = [r for r in exc.result.step_results.values() if r.status is StepStatus.FAILED]
            if failed and not any(_retryable(r) for r in failed):
                raise Fatal(str(exc)) from exc
            raise
        finally:
            follow_up.close()
        if any_step_abandoned():
            ctx.log.warning("a step thread of an earlier run is still running; this process is tainted")
        ctx.log.info("pipeline done: %s", ", ".join(result.step_results) or "no steps")
        if summary is not None:
            return summary(result)
        return _summary(result, initial, input_path, image.size)

    run.__qualname__ = f"pipeline_processor[{type_}]"
    run.__module__ = getattr(build, "__module__", __name__)
    processor(type_, follow_ups=follow_ups, timeout=timeout, megapixels=input_megapixels)(run)
    return run
