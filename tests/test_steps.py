"""Tests for spoolpipe.steps: PixelPiper compatibility and the fixes on top of it."""

from __future__ import annotations

import asyncio
import copy
import runpy
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageFilter

from spoolpipe.steps import (
    IMAGE_KEY,
    Pipeline,
    PipelineCallback,
    PipelineConfig,
    PipelineGraphError,
    PipelineResult,
    PipelineRunError,
    PipelineStep,
    StepFatal,
    StepResult,
    StepStatus,
    TimingCallback,
    any_step_abandoned,
    fan_out,
    max_retries,
    provides,
    requires,
    step,
    timeout,
    when,
)

# --- PixelPiper's README example -------------------------------------------------------
# Its two code blocks, verbatim except for the import lines: pixelpiper.* became
# spoolpipe.steps, and `from examples.image_steps import ImageResizeStep` went away
# because the class from the first block sits in the same file.
README_EXAMPLE = """
from PIL import Image
from typing import Dict, Any
from spoolpipe.steps import PipelineStep, StepResult, StepStatus
from spoolpipe.steps import step, requires, provides, timeout, max_retries

class ImageResizeStep(PipelineStep):
    \"\"\"Resizes an image based on the target size.\"\"\"

    @step(name="image_resize")
    @requires("input_size")
    @provides("resized_image", "resize_factor")
    @timeout(10.0)
    @max_retries(2)
    async def process(self, image: Image.Image, context: Dict[str, Any]) -> StepResult:
        try:
            target_size = context["input_size"]
            width, height = image.size
            resize_factor = target_size / max(width, height)
            new_size = (int(width * resize_factor), int(height * resize_factor))
            resized_image = image.resize(new_size)

            return StepResult(
                status=StepStatus.COMPLETED,
                data={"resized_image": resized_image, "resize_factor": resize_factor}
            )
        except Exception as e:
            return StepResult(status=StepStatus.FAILED, data={}, error=str(e))

import asyncio
from PIL import Image
from spoolpipe.steps import Pipeline, PipelineConfig
from spoolpipe.steps import TimingCallback

async def main():
    config = PipelineConfig(max_retries=3, timeout=15.0)
    pipeline = Pipeline(config, callbacks=[TimingCallback()])

    # Add processing steps
    pipeline.add_step(ImageResizeStep())

    # Create a sample image
    image = Image.new("RGB", (800, 600), color="white")
    context = {"input_size": 400}

    try:
        result = await pipeline.run(image, context)
        print("Pipeline completed successfully!")
        print("Results:", result)
    except Exception as e:
        print("Pipeline failed:", e)

if __name__ == "__main__":
    asyncio.run(main())
"""


def _readme_example(tmp_path: Path, run_name: str) -> dict[str, Any]:
    script = tmp_path / "readme_example.py"
    script.write_text(README_EXAMPLE)
    return runpy.run_path(str(script), run_name=run_name)


def test_pixelpiper_readme_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _readme_example(tmp_path, "__main__")
    out = capsys.readouterr().out
    assert "Pipeline completed successfully!" in out
    assert "'resize_factor': 0.5" in out


def test_readme_step_results_and_timing(tmp_path: Path) -> None:
    resize_step = _readme_example(tmp_path, "readme_example")["ImageResizeStep"]
    timing = TimingCallback()
    pipeline = Pipeline(PipelineConfig(max_retries=3, timeout=15.0), callbacks=[timing])
    pipeline.add_step(resize_step())
    image = Image.new("RGB", (800, 600), color="white")
    result = asyncio.run(pipeline.run(image, {"input_size": 400}))
    assert isinstance(result, dict)
    assert result.success and result.status is StepStatus.COMPLETED
    assert result["resized_image"].size == (400, 300)
    assert result["resize_factor"] == 0.5
    assert result.step_results["image_resize"].status is StepStatus.COMPLETED
    assert result.image is image  # no step provided IMAGE_KEY
    assert set(timing.step_timings) == {"image_resize"}
    assert timing.step_timings["image_resize"] >= 0


# --- helpers --------------------------------------------------------------------------


def _image(size: int = 64, color: str = "red") -> Image.Image:
    return Image.new("RGB", (size, size), color=color)


def _run(
    pipeline: Pipeline,
    context: Mapping[str, Any] | None = None,
    image: Image.Image | None = None,
) -> PipelineResult:
    return asyncio.run(pipeline.run(image or _image(), context))


def _run_failing(
    pipeline: Pipeline,
    context: Mapping[str, Any] | None = None,
    image: Image.Image | None = None,
) -> PipelineResult:
    with pytest.raises(PipelineRunError) as info:
        _run(pipeline, context, image)
    assert not info.value.result.success
    return info.value.result


def _pipeline(*steps: PipelineStep, **config: Any) -> Pipeline:
    pipeline = Pipeline(PipelineConfig(**config))
    for s in steps:
        pipeline.add_step(s)
    return pipeline


class Counting(PipelineStep):
    """Base for steps that count their attempts."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.calls = 0


# --- decorators one by one ------------------------------------------------------------


def test_step_name_from_decorator_class_and_constructor() -> None:
    class Named(PipelineStep):
        @step("named")
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            return StepResult(StepStatus.COMPLETED)

    class Unnamed(PipelineStep):
        @step()
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            return StepResult(StepStatus.COMPLETED)

    assert Named().name == "named"
    assert Unnamed().name == "Unnamed"
    assert Named("override").name == "override"


def test_requires_and_provides_declare_keys_and_order_steps() -> None:
    class Gray(PipelineStep):
        @requires("source")
        @provides("gray")
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            return StepResult(StepStatus.COMPLETED, {"gray": context["source"].convert("L")})

    class Source(PipelineStep):
        @provides("source")
        async def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            return StepResult(StepStatus.COMPLETED, {"source": image.copy()})

    gray = Gray()
    assert gray.required_context_keys == ["source"]
    assert gray.provided_context_keys == ["gray"]
    # Added in the "wrong" order: scheduling follows requires/provides, not insertion.
    result = _run(_pipeline(gray, Source()))
    assert result["gray"].mode == "L"
    assert result.step_results["Gray"].status is StepStatus.COMPLETED


def test_timeout_decorator_overrides_config() -> None:
    class Slow(PipelineStep):
        @timeout(0.05)
        @max_retries(0)
        async def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            await asyncio.sleep(1.0)
            return StepResult(StepStatus.COMPLETED)

    pipeline = _pipeline(Slow(), timeout=30.0)
    result = _run_failing(pipeline)
    assert "timed out after 0.05s" in result.errors["Slow"]
    assert not pipeline.tainted  # an awaiting coroutine is cancelled, nothing is left running


def test_config_timeout_applies_without_decorator() -> None:
    class Slow(PipelineStep):
        async def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            await asyncio.sleep(1.0)
            return StepResult(StepStatus.COMPLETED)

    result = _run_failing(_pipeline(Slow(), timeout=0.05, max_retries=0))
    assert "timed out" in result.errors["Slow"]


def test_decorator_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        timeout(0)
    with pytest.raises(ValueError):
        max_retries(-1)
    with pytest.raises(ValueError):
        PipelineConfig(max_retries=-1)


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), 1e300, True, "5"])
def test_a_time_limit_that_is_no_number_of_seconds_is_refused_where_it_is_written(seconds: Any) -> None:
    """``@timeout(nan)`` timed every attempt out at once ("exceeded nans") and tainted the process."""
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
        timeout(seconds)
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
        PipelineConfig(timeout=seconds)


@pytest.mark.parametrize("delay", [float("nan"), float("inf"), -1.0, "0.1"])
def test_a_retry_delay_that_is_no_number_of_seconds_is_refused(delay: Any) -> None:
    """An infinite ``retry_delay`` slept for ever at the first retry."""
    with pytest.raises(ValueError, match="retry_delay must be a number of seconds >= 0"):
        PipelineConfig(retry_delay=delay)


@pytest.mark.parametrize("count", [1.5, True, "3", None])
def test_a_retry_count_must_be_a_whole_number(count: Any) -> None:
    with pytest.raises(ValueError, match="max_retries must be an integer >= 0"):
        max_retries(count)
    with pytest.raises(ValueError, match="max_retries must be an integer >= 0"):
        PipelineConfig(max_retries=count)


def test_many_retries_without_delay_run_to_their_end() -> None:
    """The backoff ``retry_delay * 2 ** n`` overflowed a float after about 1,000 retries."""

    class Flaky(Counting):
        @step("flaky")
        @provides("done")
        @max_retries(1100)
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            self.calls += 1
            if self.calls <= 1100:
                raise RuntimeError("not yet")
            return StepResult(StepStatus.COMPLETED, {"done": True})

    flaky = Flaky()
    result = _run(_pipeline(flaky, retry_delay=0.0))
    assert result.success and flaky.calls == 1101


def test_a_result_status_given_as_its_name_counts_and_a_wrong_one_fails_the_step_saying_so() -> None:
    """``StepResult("completed")`` crashed the run with ``'str' object has no attribute 'name'``."""

    class Named(PipelineStep):
        @step("named")
        @provides("x")
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            return StepResult("completed", {"x": 1})  # type: ignore[arg-type]

    class Wrong(PipelineStep):
        @step("wrong")
        @max_retries(0)
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            return StepResult("done")  # type: ignore[arg-type]

    assert _run(_pipeline(Named()))["x"] == 1
    failed = _run_failing(_pipeline(Wrong()))
    error = failed.step_results["wrong"].error or ""
    assert "StepResult status must be a StepStatus" in error and "'done'" in error


def test_sync_and_async_steps_both_run() -> None:
    class SyncBlur(PipelineStep):
        @provides("blurred")
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            return StepResult(StepStatus.COMPLETED, {"blurred": image.filter(ImageFilter.BLUR)})

    class AsyncFlip(PipelineStep):
        @provides("flipped")
        async def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            return StepResult(StepStatus.COMPLETED, {"flipped": flipped})

    result = _run(_pipeline(SyncBlur(), AsyncFlip()))
    assert result["blurred"].size == result["flipped"].size == (64, 64)


def test_step_providing_image_key_sets_final_image() -> None:
    class Thumb(PipelineStep):
        @provides(IMAGE_KEY)
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            return StepResult(StepStatus.COMPLETED, {IMAGE_KEY: image.resize((8, 8))})

    result = _run(_pipeline(Thumb()))
    assert result.image.size == (8, 8)


# --- graph validation -----------------------------------------------------------------


def _keyed(name: str, needs: tuple[str, ...], gives: tuple[str, ...]) -> PipelineStep:
    class Keyed(PipelineStep):
        @requires(*needs)
        @provides(*gives)
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            ran_steps.append(name)
            return StepResult(StepStatus.COMPLETED, {k: name for k in gives})

    return Keyed(name)


ran_steps: list[str] = []


def test_missing_provider_names_step_and_key() -> None:
    pipeline = _pipeline(_keyed("thumb", ("exif",), ("t",)))
    with pytest.raises(PipelineGraphError) as info:
        pipeline.validate()
    assert info.value.step == "thumb" and info.value.key == "exif"
    assert "'thumb'" in str(info.value) and "'exif'" in str(info.value)


def test_initial_context_keys_count_as_provided() -> None:
    pipeline = _pipeline(_keyed("thumb", ("exif",), ("t",)))
    pipeline.validate(["exif"])
    assert _run(pipeline, {"exif": {}})["t"] == "thumb"


def test_duplicate_provider_names_both_steps_and_key() -> None:
    pipeline = _pipeline(_keyed("a", (), ("k",)), _keyed("b", (), ("k",)))
    with pytest.raises(PipelineGraphError) as info:
        pipeline.validate()
    assert info.value.step == "b" and info.value.key == "k"
    assert "'a'" in str(info.value) and "'b'" in str(info.value) and "'k'" in str(info.value)


def test_duplicate_step_names_rejected() -> None:
    pipeline = _pipeline(_keyed("a", (), ("x",)), _keyed("a", (), ("y",)))
    with pytest.raises(PipelineGraphError, match="two steps are named 'a'"):
        pipeline.validate()


def test_cycle_names_steps_and_keys() -> None:
    pipeline = _pipeline(
        _keyed("start", (), ("s",)),
        _keyed("a", ("s", "y"), ("x",)),
        _keyed("b", ("x",), ("y",)),
    )
    with pytest.raises(PipelineGraphError) as info:
        pipeline.validate()
    message = str(info.value)
    assert message.startswith("dependency cycle")
    assert "step 'a' requires 'y' from 'b'" in message
    assert "step 'b' requires 'x' from 'a'" in message
    assert (info.value.step, info.value.key) == ("a", "y")


def test_self_cycle() -> None:
    with pytest.raises(PipelineGraphError, match="step 'a' requires 'x' from 'a'"):
        _pipeline(_keyed("a", ("x",), ("x",))).validate()


def test_run_validates_before_running_anything() -> None:
    ran_steps.clear()
    pipeline = _pipeline(_keyed("ok", (), ("o",)), _keyed("bad", ("nope",), ()))
    with pytest.raises(PipelineGraphError, match="'nope'"):
        _run(pipeline)
    assert ran_steps == []


# --- provides check -------------------------------------------------------------------


def test_missing_declared_key_fails_step_naming_step_and_key() -> None:
    class Partial(Counting):
        @provides("width", "height")
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            self.calls += 1
            return StepResult(StepStatus.COMPLETED, {"width": image.width})

    partial = Partial()
    result = _run_failing(_pipeline(partial))
    assert result.errors["Partial"] == "step 'Partial' did not provide declared key 'height'"
    assert partial.calls == 1  # a broken contract is not retried
    assert "width" not in result


def test_undeclared_key_fails_step() -> None:
    class Extra(PipelineStep):
        @provides("width")
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            return StepResult(StepStatus.COMPLETED, {"width": 1, "height": 2})

    result = _run_failing(_pipeline(Extra()))
    assert "undeclared key 'height'" in result.errors["Extra"]


@pytest.mark.parametrize("data", ["x", None, [("x", 1)], 7])
def test_result_data_that_is_no_dict_fails_the_step_naming_it(data: Any) -> None:
    """A string passed the key checks (its characters are keys), then context.update raised
    ValueError; None raised TypeError: both crashed Pipeline.run, naming no step."""

    class Odd(Counting):
        @provides("x")
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            self.calls += 1
            return StepResult(StepStatus.COMPLETED, data=data)

    odd = Odd()
    result = _run_failing(_pipeline(odd))
    assert result.errors["Odd"] == f"step 'Odd' returned data of type {type(data).__name__}, expected a dict"
    assert odd.calls == 1  # a broken contract is not retried
    assert "x" not in result


@pytest.mark.parametrize("refusal", ["false", "raise"])
def test_a_validate_context_that_refuses_a_full_context_fails_the_step_naming_it(refusal: str) -> None:
    """PixelPiper's hook may refuse for its own reasons: the search for a missing key found none and
    Pipeline.run crashed with "RuntimeError: coroutine raised StopIteration"."""

    class Picky(Counting):
        @requires("size")
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            self.calls += 1
            return StepResult(StepStatus.COMPLETED)

        def validate_context(self, context: Mapping[str, Any]) -> bool:
            if refusal == "raise" and context["size"] <= 0:
                raise ValueError("size must be positive")
            return bool(context["size"] > 0)

    picky = Picky()
    result = _run_failing(_pipeline(picky, max_retries=2), {"size": -1})
    expected = "validate_context refused the context"
    if refusal == "raise":
        expected = "validate_context raised ValueError('size must be positive')"
    assert result.errors["Picky"] == f"step 'Picky': {expected}"
    assert picky.calls == 0  # never run, never retried
    assert _run(_pipeline(Picky()), {"size": 3}).success


def test_non_step_result_fails() -> None:
    class Wrong(PipelineStep):
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            return None  # type: ignore[return-value]

    assert "returned NoneType" in _run_failing(_pipeline(Wrong())).errors["Wrong"]


# --- waves ----------------------------------------------------------------------------


def _sleeper(name: str, events: list[tuple[str, str]], sync: bool) -> PipelineStep:
    class AsyncSleeper(PipelineStep):
        async def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            events.append(("start", name))
            await asyncio.sleep(0.3)
            events.append(("end", name))
            return StepResult(StepStatus.COMPLETED)

    class SyncSleeper(PipelineStep):
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            events.append(("start", name))
            time.sleep(0.3)
            events.append(("end", name))
            return StepResult(StepStatus.COMPLETED)

    return SyncSleeper(name) if sync else AsyncSleeper(name)


@pytest.mark.parametrize("sync", [False, True])
def test_independent_steps_overlap(sync: bool) -> None:
    events: list[tuple[str, str]] = []
    _run(_pipeline(_sleeper("a", events, sync), _sleeper("b", events, sync)))
    # Both started before either finished: they ran concurrently.
    assert [kind for kind, _ in events[:2]] == ["start", "start"]


def test_dependent_steps_run_in_later_wave() -> None:
    order: list[str] = []

    class First(PipelineStep):
        @provides("x")
        async def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            await asyncio.sleep(0.05)
            order.append("first")
            return StepResult(StepStatus.COMPLETED, {"x": 1})

    class Second(PipelineStep):
        @requires("x")
        async def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            order.append(f"second saw x={context['x']}")
            return StepResult(StepStatus.COMPLETED)

    _run(_pipeline(Second(), First()))
    assert order == ["first", "second saw x=1"]


# --- timeouts -------------------------------------------------------------------------


def test_blocking_sync_step_times_out_and_taints() -> None:
    finished = threading.Event()

    class Blocking(PipelineStep):
        @timeout(0.1)
        @max_retries(0)
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            time.sleep(1.0)
            finished.set()
            return StepResult(StepStatus.COMPLETED)

    pipeline = _pipeline(Blocking())
    assert not pipeline.tainted
    began = time.monotonic()
    result = _run_failing(pipeline)
    assert time.monotonic() - began < 0.9 and not finished.is_set()  # did not wait for it
    assert result.step_results["Blocking"].status is StepStatus.FAILED
    assert "timed out after 0.1s" in result.errors["Blocking"]
    assert pipeline.tainted
    assert any_step_abandoned()
    assert not _pipeline(Blocking()).tainted  # the flag is per pipeline


def test_blocking_pillow_work_times_out_and_late_result_is_discarded() -> None:
    stop = threading.Event()
    returned = threading.Event()
    big = Image.effect_noise((1500, 1500), 50).convert("RGB")

    class HeavyBlur(PipelineStep):
        @provides("blurred")
        @timeout(0.05)
        @max_retries(0)
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            out = image
            while not stop.is_set():
                out = image.filter(ImageFilter.GaussianBlur(8))
            returned.set()
            return StepResult(StepStatus.COMPLETED, {"blurred": out})

    pipeline = _pipeline(HeavyBlur())
    try:
        result = _run_failing(pipeline, image=big)
    finally:
        stop.set()
    assert returned.wait(10)
    assert result.step_results["HeavyBlur"].status is StepStatus.FAILED
    assert "blurred" not in result
    assert pipeline.tainted


def test_async_step_blocking_the_loop_is_not_reported_successful() -> None:
    class LoopBlocker(PipelineStep):
        @timeout(0.1)
        @max_retries(0)
        async def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            time.sleep(0.3)  # the PixelPiper trap: blocking work inside async def
            return StepResult(StepStatus.COMPLETED)

    result = _run_failing(_pipeline(LoopBlocker()))
    assert "timed out" in result.errors["LoopBlocker"]


def test_timeout_is_retried_per_policy() -> None:
    class Slow(Counting):
        @timeout(0.05)
        @max_retries(1)
        async def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            self.calls += 1
            await asyncio.sleep(1.0)
            return StepResult(StepStatus.COMPLETED)

    slow = Slow()
    _run_failing(_pipeline(slow))
    assert slow.calls == 2


def test_step_raising_timeout_error_itself_is_an_ordinary_failure() -> None:
    class Raises(PipelineStep):
        @max_retries(0)
        async def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            raise TimeoutError("upstream slow")

    assert _run_failing(_pipeline(Raises())).errors["Raises"] == "TimeoutError: upstream slow"


# --- retries --------------------------------------------------------------------------


class AlwaysRaises(Counting):
    def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
        self.calls += 1
        raise OSError("disk hiccup")


def _always_raises(retries: int) -> Counting:
    class Flaky(AlwaysRaises):
        @max_retries(retries)
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            return super().process(image, context)

    return Flaky()


@pytest.mark.parametrize(("retries", "attempts"), [(0, 1), (1, 2), (2, 3)])
def test_max_retries_counts_retries_after_first_attempt(retries: int, attempts: int) -> None:
    flaky = _always_raises(retries)
    result = _run_failing(_pipeline(flaky, retry_delay=0.001))
    assert flaky.calls == attempts
    assert result.errors["Flaky"] == "OSError: disk hiccup"


def test_config_max_retries_is_the_default() -> None:
    flaky = AlwaysRaises()
    _run_failing(_pipeline(flaky, max_retries=1, retry_delay=0.001))
    assert flaky.calls == 2


def test_max_retries_zero_succeeds_on_first_attempt() -> None:
    class Once(Counting):
        @max_retries(0)
        @provides("w")
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            self.calls += 1
            return StepResult(StepStatus.COMPLETED, {"w": image.width})

    once = Once()
    assert _run(_pipeline(once))["w"] == 64
    assert once.calls == 1


def test_retry_then_success() -> None:
    class FailsTwice(Counting):
        @max_retries(2)
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            self.calls += 1
            if self.calls < 3:
                raise RuntimeError("transient")
            return StepResult(StepStatus.COMPLETED)

    step_ = FailsTwice()
    assert _run(_pipeline(step_, retry_delay=0.001)).success
    assert step_.calls == 3


def test_backoff_is_exponential() -> None:
    stamps: list[float] = []

    class Flaky(PipelineStep):
        @max_retries(2)
        async def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            stamps.append(time.monotonic())
            raise RuntimeError("again")

    _run_failing(_pipeline(Flaky(), retry_delay=0.05))
    assert len(stamps) == 3
    assert stamps[1] - stamps[0] >= 0.05
    assert stamps[2] - stamps[1] >= 0.1


def test_returned_failure_is_retried_unless_non_retryable() -> None:
    class Returns(Counting):
        def __init__(self, retryable: bool) -> None:
            super().__init__(f"returns-{retryable}")
            self.retryable = retryable

        @max_retries(2)
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            self.calls += 1
            return StepResult(StepStatus.FAILED, error="bad", retryable=self.retryable)

    retried, final = Returns(True), Returns(False)
    result = _run_failing(_pipeline(retried, final, retry_delay=0.001))
    assert retried.calls == 3
    assert final.calls == 1
    assert result.errors == {"returns-True": "bad", "returns-False": "bad"}


def test_step_fatal_is_not_retried() -> None:
    class Fatal(Counting):
        @max_retries(5)
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            self.calls += 1
            raise StepFatal("corrupt input")

    fatal = Fatal()
    result = _run_failing(_pipeline(fatal))
    assert fatal.calls == 1
    assert result.errors["Fatal"] == "StepFatal: corrupt input"


# --- failures and results -------------------------------------------------------------


def _broken(name: str, key: str) -> PipelineStep:
    class Broken(PipelineStep):
        @provides(key)
        @max_retries(0)
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            raise ValueError(f"{name} broke")

    return Broken(name)


def test_failure_reports_all_errors_and_blocks_dependents_only() -> None:
    ran: list[str] = []

    class NeedsOne(PipelineStep):
        @requires("one")
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            ran.append("needs-one")
            return StepResult(StepStatus.COMPLETED)

    class Independent(PipelineStep):
        @provides("ind")
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            ran.append("independent")
            return StepResult(StepStatus.COMPLETED, {"ind": True})

    pipeline = _pipeline(_broken("b1", "one"), _broken("b2", "two"), NeedsOne(), Independent())
    with pytest.raises(PipelineRunError) as info:
        _run(pipeline)
    result = info.value.result
    assert result.status is StepStatus.FAILED
    assert "ValueError: b1 broke" in str(info.value) and "ValueError: b2 broke" in str(info.value)
    assert set(result.errors) == {"b1", "b2"}
    assert result.step_results["NeedsOne"].status is StepStatus.NOT_STARTED
    assert ran == ["independent"] and result["ind"] is True


def test_callbacks_see_every_step_once() -> None:
    seen: list[tuple[str, str, str | None]] = []

    class Recorder(PipelineCallback):
        async def before_step(self, step_name: str) -> None:
            seen.append(("before", step_name, None))

        async def after_step(self, step_name: str, result: StepResult) -> None:
            seen.append(("after", step_name, result.status.value))

    class Broken(PipelineCallback):
        async def before_step(self, step_name: str) -> None:
            raise RuntimeError("observer bug")

    pipeline = _pipeline(_keyed("one", (), ("x",)))
    pipeline.add_callback(Broken())
    pipeline.add_callback(Recorder())
    assert _run(pipeline).success  # a raising callback is logged, not fatal
    assert seen == [("before", "one", None), ("after", "one", "completed")]


# --- per-run isolation ----------------------------------------------------------------


def test_concurrent_runs_do_not_mix_contexts() -> None:
    class Measure(PipelineStep):
        @requires("tag")
        @provides("size", "tag_seen")
        async def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            await asyncio.sleep(0.01 * (5 - context["tag"]))  # finish in reverse order
            return StepResult(StepStatus.COMPLETED, {"size": image.size, "tag_seen": context["tag"]})

    class Shrink(PipelineStep):
        @requires("size", "tag")
        @provides("half")
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            w, h = context["size"]
            return StepResult(StepStatus.COMPLETED, {"half": image.resize((w // 2, h // 2))})

    pipeline = _pipeline(Measure(), Shrink())

    async def many() -> list[PipelineResult]:
        return await asyncio.gather(*(pipeline.run(_image(10 * (i + 1)), {"tag": i}) for i in range(5)))

    results = asyncio.run(many())
    for i, result in enumerate(results):
        assert result["tag_seen"] == i
        assert result["size"] == (10 * (i + 1),) * 2
        assert result["half"].size == (5 * (i + 1),) * 2
    assert not hasattr(pipeline, "context")


def test_caller_context_is_never_mutated() -> None:
    class Mutator(PipelineStep):
        @requires("opts")
        @provides("out")
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            context["opts"] = "clobbered"  # only its private copy
            context["junk"] = 1
            return StepResult(StepStatus.COMPLETED, {"out": 1})

    caller = {"opts": {"quality": 80}}
    snapshot = copy.deepcopy(caller)
    result = _run(_pipeline(Mutator()), caller)
    assert caller == snapshot
    assert result["opts"] == {"quality": 80} and "junk" not in result and result["out"] == 1

    failing = _pipeline(_always_raises(0))
    _run_failing(failing, caller)
    assert caller == snapshot


# --- conditional steps ----------------------------------------------------------------


def _conditional(predicate: Callable[[Mapping[str, Any]], bool]) -> Pipeline:
    class Watermark(PipelineStep):
        @when(predicate)
        @provides("marked")
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            return StepResult(StepStatus.COMPLETED, {"marked": image.convert("L")})

    class Publish(PipelineStep):
        @requires("marked")
        @provides("published")
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            return StepResult(StepStatus.COMPLETED, {"published": True})

    return _pipeline(Watermark(), Publish())


def test_when_false_skips_step_and_its_dependents() -> None:
    result = _run(_conditional(lambda ctx: ctx["mode"] == "public"), {"mode": "draft"})
    assert result.success
    assert result.step_results["Watermark"].status is StepStatus.SKIPPED
    assert result.step_results["Publish"].status is StepStatus.SKIPPED
    assert "'marked'" in (result.step_results["Publish"].error or "")
    assert "marked" not in result


def test_when_true_runs_step() -> None:
    result = _run(_conditional(lambda ctx: ctx["mode"] == "public"), {"mode": "public"})
    assert result["marked"].mode == "L" and result["published"] is True


def test_when_predicate_error_fails_step() -> None:
    result = _run_failing(_conditional(lambda ctx: ctx["missing"]))
    assert "predicate raised KeyError" in result.errors["Watermark"]


# --- fan-out --------------------------------------------------------------------------


class Thumbs(PipelineStep):
    @fan_out("sizes", as_key="size")
    @provides("thumbs")
    @max_retries(0)
    def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
        size = context["size"]
        return StepResult(StepStatus.COMPLETED, {"thumbs": image.resize((size, size))})


def test_fan_out_runs_once_per_item_in_order() -> None:
    thumbs = Thumbs()
    assert thumbs.required_context_keys == ["sizes"]
    result = _run(_pipeline(thumbs), {"sizes": [32, 8, 16]}, _image(100))
    assert [t.size for t in result["thumbs"]] == [(32, 32), (8, 8), (16, 16)]
    assert len(result.step_results["Thumbs"].items) == 3


def test_fan_out_empty_list() -> None:
    assert _run(_pipeline(Thumbs()), {"sizes": []})["thumbs"] == []


def test_fan_out_reports_every_failing_item() -> None:
    result = _run_failing(_pipeline(Thumbs()), {"sizes": [16, 0, 8, -1]})
    error = result.errors["Thumbs"]
    assert "item 1 (0): ValueError" in error and "item 3 (-1): ValueError" in error
    statuses = [r.status for r in result.step_results["Thumbs"].items]
    assert statuses == [
        StepStatus.COMPLETED,
        StepStatus.FAILED,
        StepStatus.COMPLETED,
        StepStatus.FAILED,
    ]
    assert "thumbs" not in result


def test_fan_out_needs_a_list() -> None:
    result = _run_failing(_pipeline(Thumbs()), {"sizes": 32})
    assert "expected a list" in result.errors["Thumbs"]


def test_an_async_step_that_catches_its_cancellation_is_still_reported_timed_out() -> None:
    class Stubborn(PipelineStep):
        @step("stubborn")
        @timeout(0.05)
        @max_retries(0)
        @provides("x")
        async def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                await asyncio.sleep(0.2)  # goes on after being cancelled
            return StepResult(StepStatus.COMPLETED, {"x": 1})

    failed = _run_failing(_pipeline(Stubborn()))
    assert failed.step_results["stubborn"].error == "step 'stubborn' timed out after 0.05s"
    assert "x" not in failed
