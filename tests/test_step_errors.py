"""Step error strategies (retry, skip, halt, ``retry_on``) and ``Pipeline.to_mermaid``.

The decision is a pure function, tested first as a table; then real pipelines of
real steps; then pipelines bound to activity types, run by a real worker process.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import imagefactory as factory
from harness import leftovers, make_repository, records, run_until_idle, submit
from spoolpipe.steps import (
    ErrorAction,
    ErrorPolicy,
    ErrorStrategy,
    Pipeline,
    PipelineCallback,
    PipelineConfig,
    PipelineGraphError,
    PipelineResult,
    PipelineRunError,
    PipelineStep,
    StepFailure,
    StepFatal,
    StepOutcome,
    StepReport,
    StepResult,
    StepStatus,
    decide_error,
    fan_out,
    max_retries,
    on_error,
    provides,
    requires,
    retry_on,
    timeout,
    when,
)

RETRY, SKIP, HALT = ErrorStrategy.RETRY, ErrorStrategy.SKIP, ErrorStrategy.HALT

# --- the decision, pure -----------------------------------------------------------------


def _failure(exception: type[BaseException] | None = OSError, *, retryable: bool = True) -> StepFailure:
    return StepFailure("boom", exception, retryable)


@pytest.mark.parametrize(
    ("policy", "failure", "retries_done", "action"),
    [
        # retry (the default): every retryable failure until the retries run out, then fail
        (ErrorPolicy(RETRY, 2), _failure(), 0, ErrorAction.RETRY),
        (ErrorPolicy(RETRY, 2), _failure(), 1, ErrorAction.RETRY),
        (ErrorPolicy(RETRY, 2), _failure(), 2, ErrorAction.FAIL),
        (ErrorPolicy(RETRY, 2), _failure(None), 0, ErrorAction.RETRY),  # a returned FAILED result
        (ErrorPolicy(RETRY, 2), _failure(StepFatal, retryable=False), 0, ErrorAction.FAIL),
        (ErrorPolicy(RETRY, 0), _failure(), 0, ErrorAction.FAIL),
        # skip and halt retry nothing unless retry_on says what
        (ErrorPolicy(SKIP, 5), _failure(), 0, ErrorAction.SKIP),
        (ErrorPolicy(HALT, 5), _failure(), 0, ErrorAction.HALT),
        (ErrorPolicy(SKIP, 1, (OSError,)), _failure(ConnectionError), 0, ErrorAction.RETRY),
        (ErrorPolicy(SKIP, 1, (OSError,)), _failure(ConnectionError), 1, ErrorAction.SKIP),
        (ErrorPolicy(HALT, 1, (OSError,)), _failure(ValueError), 0, ErrorAction.HALT),
        # retry_on narrows retry: other exceptions, and returned failures, fail at once
        (ErrorPolicy(RETRY, 3, (TimeoutError,)), _failure(TimeoutError), 0, ErrorAction.RETRY),
        (ErrorPolicy(RETRY, 3, (TimeoutError,)), _failure(ValueError), 0, ErrorAction.FAIL),
        (ErrorPolicy(RETRY, 3, (TimeoutError,)), _failure(None), 0, ErrorAction.FAIL),
        (ErrorPolicy(RETRY, 3, ()), _failure(), 0, ErrorAction.FAIL),
        # what no retry can fix is never retried, whatever retry_on names
        (ErrorPolicy(RETRY, 3, (Exception,)), _failure(StepFatal, retryable=False), 0, ErrorAction.FAIL),
        (ErrorPolicy(SKIP, 3, (Exception,)), _failure(StepFatal, retryable=False), 0, ErrorAction.SKIP),
    ],
)
def test_decide_error(
    policy: ErrorPolicy, failure: StepFailure, retries_done: int, action: ErrorAction
) -> None:
    assert decide_error(failure, retries_done=retries_done, policy=policy) is action


def test_strategies_and_filters_are_checked_when_declared() -> None:
    assert ErrorStrategy("skip") is SKIP and PipelineConfig(on_error=ErrorStrategy("halt")).on_error is HALT
    with pytest.raises(ValueError, match="'sometimes' is not a valid ErrorStrategy"):
        on_error("sometimes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry_on takes exception classes, got 'OSError'"):
        retry_on("OSError")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got <class 'int'>"):
        PipelineConfig(retry_on=(int,))  # type: ignore[arg-type]


# --- real pipelines ---------------------------------------------------------------------


def _image() -> Image.Image:
    return Image.new("RGB", (16, 16), "red")


def _run(pipeline: Pipeline, initial: dict[str, Any] | None = None) -> PipelineResult:
    return asyncio.run(pipeline.run(_image(), initial))


def _run_failing(pipeline: Pipeline, initial: dict[str, Any] | None = None) -> PipelineRunError:
    with pytest.raises(PipelineRunError) as info:
        _run(pipeline, initial)
    return info.value


def _pipeline(*steps: PipelineStep, **config: Any) -> Pipeline:
    pipeline = Pipeline(PipelineConfig(retry_delay=0.001, **config))
    for each in steps:
        pipeline.add_step(each)
    return pipeline


class Scripted(PipelineStep):
    """Raises the next exception of ``script`` on each attempt; provides ``<name>.out`` once it runs out."""

    def __init__(self, name: str, *exceptions: BaseException, needs: tuple[str, ...] = ()) -> None:
        super().__init__(name)
        self.script = list(exceptions)
        self.needs = needs
        self.calls = 0
        self._provided_context_keys = [f"{name}.out"]
        self._required_context_keys = list(needs)

    def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
        self.calls += 1
        if self.script:
            raise self.script.pop(0)
        return StepResult(StepStatus.COMPLETED, {f"{self.name}.out": [context[k] for k in self.needs]})


def _scripted(
    name: str,
    *exceptions: BaseException,
    needs: tuple[str, ...] = (),
    strategy: ErrorStrategy | None = None,
    only: tuple[type[BaseException], ...] | None = None,
    retries: int | None = None,
) -> Scripted:
    """A ``Scripted`` step whose ``process`` carries the decorators asked for."""

    def process(self: Scripted, image: Image.Image, context: dict[str, Any]) -> StepResult:
        return Scripted.process(self, image, context)

    if strategy is not None:
        process = on_error(strategy)(process)
    if only is not None:
        process = retry_on(*only)(process)
    if retries is not None:
        process = max_retries(retries)(process)
    decorated = type(f"Scripted_{name}", (Scripted,), {"process": process})
    made: Scripted = decorated(name, *exceptions, needs=needs)
    return made


def _outcomes(result: PipelineResult) -> dict[str, tuple[StepOutcome, str | None]]:
    return {name: (report.outcome, report.cause) for name, report in result.reports.items()}


def test_retry_is_the_default_and_fails_the_run_after_the_retries() -> None:
    flaky = _scripted("flaky", OSError("disk"), OSError("disk"), OSError("still"), retries=2)
    after = _scripted("after", needs=("flaky.out",))
    independent = _scripted("independent")
    error = _run_failing(_pipeline(flaky, after, independent))
    assert flaky.calls == 3 and after.calls == 0 and independent.calls == 1
    assert str(error) == "pipeline failed: step 'flaky': OSError: still"
    assert error.result.reports == {
        "flaky": StepReport(StepOutcome.FAILED, error="OSError: still"),
        "after": StepReport(StepOutcome.NOT_RUN, cause="flaky"),
        "independent": StepReport(StepOutcome.OK),
    }
    assert error.result.halted_by is None


def test_skip_skips_dependents_transitively_and_the_run_succeeds() -> None:
    optional = _scripted("optional", ValueError("no EXIF"), strategy=SKIP)
    uses = _scripted("uses", needs=("optional.out",))
    uses_uses = _scripted("uses-uses", needs=("uses.out",))
    independent = _scripted("independent")
    after_independent = _scripted("after-independent", needs=("independent.out",))
    result = _run(_pipeline(optional, uses, uses_uses, independent, after_independent))
    assert result.success
    assert _outcomes(result) == {
        "optional": (StepOutcome.SKIPPED, None),
        "uses": (StepOutcome.SKIPPED, "optional"),
        "uses-uses": (StepOutcome.SKIPPED, "optional"),  # the first of the chain, not "uses"
        "independent": (StepOutcome.OK, None),
        "after-independent": (StepOutcome.OK, None),
    }
    assert result.reports["optional"].error == "ValueError: no EXIF"
    assert result.step_results["optional"].status is StepStatus.SKIPPED
    assert result.step_results["optional"].error == "skipped on error: ValueError: no EXIF"
    assert optional.calls == 1  # skip retries nothing unless retry_on says so
    assert uses.calls == 0 and uses_uses.calls == 0
    assert result["after-independent.out"] == [[]]
    assert "optional.out" not in result and "uses.out" not in result


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of the step's own exception raised")


def test_a_step_whose_exception_cannot_be_printed_is_skipped_like_any_other() -> None:
    """The step's error was formatted with its str(), which raised out of Pipeline.run itself."""
    optional = _scripted("optional", _Unprintable(), strategy=SKIP)
    independent = _scripted("independent")
    result = _run(_pipeline(optional, independent))
    assert result.success
    assert result.reports["optional"].error == "_Unprintable: <str() of this _Unprintable failed>"
    assert _outcomes(result)["independent"] == (StepOutcome.OK, None)


def test_a_dependent_of_a_skipped_step_runs_with_the_initial_value() -> None:
    optional = _scripted("optional", ValueError("no"), strategy=SKIP)
    uses = _scripted("uses", needs=("optional.out",))
    result = _run(_pipeline(optional, uses), {"optional.out": "fallback"})
    assert result["uses.out"] == ["fallback"]
    assert _outcomes(result)["uses"] == (StepOutcome.OK, None)


def test_halt_stops_later_waves_and_names_the_step() -> None:
    seen: list[tuple[str, str]] = []

    class Recorder(PipelineCallback):
        async def after_step(self, step_name: str, result: StepResult) -> None:
            seen.append((step_name, result.status.value))

    gate = _scripted("gate", RuntimeError("quota exceeded"), OSError("never reached"), strategy=HALT)
    sibling = _scripted("sibling")  # same wave as gate: already running, so it finishes
    later = _scripted("later", needs=("sibling.out",))  # independent of gate, but in a later wave
    last = _scripted("last", needs=("later.out",))
    pipeline = _pipeline(gate, sibling, later, last)
    pipeline.add_callback(Recorder())
    error = _run_failing(pipeline)
    assert str(error) == "pipeline halted at step 'gate': RuntimeError: quota exceeded"
    result = error.result
    assert result.halted_by == "gate" and result.status is StepStatus.FAILED
    assert _outcomes(result) == {
        "gate": (StepOutcome.HALTED, None),
        "sibling": (StepOutcome.OK, None),
        "later": (StepOutcome.NOT_RUN, "gate"),
        "last": (StepOutcome.NOT_RUN, "gate"),
    }
    assert result.reports["gate"].error == "RuntimeError: quota exceeded"
    assert result.step_results["later"].error == "not run: the run halted at step 'gate'"
    assert gate.calls == 1 and sibling.calls == 1 and later.calls == 0 and last.calls == 0
    assert result["sibling.out"] == []
    assert sorted(seen) == [
        ("gate", "failed"),
        ("last", "not_started"),
        ("later", "not_started"),
        ("sibling", "completed"),
    ]


def test_a_halt_also_lists_the_other_failures_of_its_wave() -> None:
    gate = _scripted("gate", RuntimeError("stop"), strategy=HALT)
    broken = _scripted("broken", ValueError("bad"), retries=0)
    error = _run_failing(_pipeline(gate, broken))
    assert (
        str(error)
        == "pipeline halted at step 'gate': RuntimeError: stop; also failed: step 'broken': ValueError: bad"
    )
    assert error.result.errors == {"gate": "RuntimeError: stop", "broken": "ValueError: bad"}


def test_of_two_halts_in_one_wave_the_first_added_is_named() -> None:
    second = _scripted("second", RuntimeError("b"), strategy=HALT)
    first = _scripted("first", RuntimeError("a"), strategy=HALT)
    error = _run_failing(_pipeline(first, second))
    assert error.result.halted_by == "first"
    assert _outcomes(error.result) == {
        "first": (StepOutcome.HALTED, None),
        "second": (StepOutcome.HALTED, None),
    }
    assert (
        str(error)
        == "pipeline halted at step 'first': RuntimeError: a; also failed: step 'second': RuntimeError: b"
    )


def test_retry_on_retries_only_the_named_exceptions() -> None:
    # ConnectionError is an OSError: retried; the ValueError that follows fails at once.
    filtered = _scripted(
        "filtered",
        ConnectionError("reset"),
        OSError("busy"),
        ValueError("bad input"),
        only=(OSError,),
        retries=5,
    )
    error = _run_failing(_pipeline(filtered))
    assert filtered.calls == 3
    assert error.result.reports["filtered"] == StepReport(StepOutcome.FAILED, error="ValueError: bad input")

    recovers = _scripted("recovers", ConnectionError("reset"), only=(OSError,), retries=5)
    assert _run(_pipeline(recovers)).success and recovers.calls == 2


def test_retry_on_is_also_how_skip_and_halt_retry() -> None:
    # skip: the timeout is retried, the ValueError then skips the step
    class SlowOnce(PipelineStep):
        calls = 0

        @on_error(SKIP)
        @retry_on(TimeoutError)
        @max_retries(3)
        @timeout(0.05)
        @provides("slow.out")
        async def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            SlowOnce.calls += 1
            if SlowOnce.calls == 1:
                await asyncio.sleep(10)
            raise ValueError("corrupt")

    result = _run(_pipeline(SlowOnce()))
    assert SlowOnce.calls == 2
    assert result.reports["SlowOnce"] == StepReport(StepOutcome.SKIPPED, error="ValueError: corrupt")

    # halt: the retries run out, then the run halts
    stubborn = _scripted("stubborn", OSError("a"), OSError("b"), strategy=HALT, only=(OSError,), retries=1)
    assert str(_run_failing(_pipeline(stubborn))) == "pipeline halted at step 'stubborn': OSError: b"
    assert stubborn.calls == 2


def test_skip_ignores_max_retries_without_retry_on() -> None:
    once = _scripted("once", OSError("a"), OSError("b"), strategy=SKIP, retries=5)
    assert _run(_pipeline(once)).reports["once"].outcome is StepOutcome.SKIPPED
    assert once.calls == 1


def test_step_fatal_is_never_retried_even_when_retry_on_matches() -> None:
    fatal = _scripted("fatal", StepFatal("corrupt"), only=(Exception,), retries=3)
    assert _run_failing(_pipeline(fatal)).result.errors == {"fatal": "StepFatal: corrupt"}
    assert fatal.calls == 1


def test_pipeline_default_strategy_and_per_step_overrides() -> None:
    plain = _scripted("plain", ValueError("x"))
    retried = _scripted("retried", OSError("once"), strategy=RETRY)
    halts = _scripted("halts", ValueError("y"), needs=("retried.out",), strategy=HALT)
    after = _scripted("after", needs=("halts.out",))
    error = _run_failing(_pipeline(plain, retried, halts, after, on_error=SKIP))
    assert _outcomes(error.result) == {
        "plain": (StepOutcome.SKIPPED, None),  # the pipeline's default
        "retried": (StepOutcome.OK, None),  # its own strategy: retried, then succeeded
        "halts": (StepOutcome.HALTED, None),
        "after": (StepOutcome.NOT_RUN, "halts"),
    }
    assert plain.calls == 1 and retried.calls == 2


def test_pipeline_default_retry_on_and_per_step_override() -> None:
    by_default = _scripted("by-default", ConnectionError("a"), ValueError("b"))
    own = _scripted("own", ValueError("c"), only=(ValueError,))
    error = _run_failing(_pipeline(by_default, own, retry_on=(OSError,), max_retries=3))
    assert by_default.calls == 2  # ConnectionError retried, ValueError not
    assert own.calls == 2 and _outcomes(error.result)["own"] == (StepOutcome.OK, None)


def test_a_fan_out_step_gets_its_strategy_as_a_whole() -> None:
    class Thumbs(PipelineStep):
        @on_error(SKIP)
        @fan_out("sizes", as_key="size")
        @provides("thumbs")
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            return StepResult(StepStatus.COMPLETED, {"thumbs": image.resize((context["size"],) * 2)})

    publish = _scripted("publish", needs=("thumbs",))
    result = _run(_pipeline(Thumbs(), publish), {"sizes": [8, 0]})
    assert _outcomes(result) == {
        "Thumbs": (StepOutcome.SKIPPED, None),
        "publish": (StepOutcome.SKIPPED, "Thumbs"),
    }
    assert "item 1 (0): ValueError" in (result.reports["Thumbs"].error or "")
    statuses = [item.status for item in result.step_results["Thumbs"].items]
    assert statuses == [StepStatus.COMPLETED, StepStatus.FAILED]


def test_a_raising_when_predicate_follows_the_strategy() -> None:
    class Guarded(PipelineStep):
        @on_error(HALT)
        @when(lambda context: context["missing"])
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            return StepResult(StepStatus.COMPLETED)

    error = _run_failing(_pipeline(Guarded()))
    assert error.result.halted_by == "Guarded"
    assert "pipeline halted at step 'Guarded': @when predicate raised KeyError" in str(error)


def test_skipped_by_when_is_skipped_without_an_error() -> None:
    class Optional(PipelineStep):
        @when(lambda context: False)
        @provides("x")
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            return StepResult(StepStatus.COMPLETED, {"x": 1})

    result = _run(_pipeline(Optional(), _scripted("uses", needs=("x",))))
    assert result.reports == {
        "Optional": StepReport(StepOutcome.SKIPPED),
        "uses": StepReport(StepOutcome.SKIPPED, cause="Optional"),
    }


# --- to_mermaid -------------------------------------------------------------------------


def _declared(name: str, needs: tuple[str, ...] = (), gives: tuple[str, ...] = ()) -> PipelineStep:
    class Declared(PipelineStep):
        @requires(*needs)
        @provides(*gives)
        def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult:
            return StepResult(StepStatus.COMPLETED, {key: 1 for key in gives})

    return Declared(name)


def _drawn() -> Pipeline:
    """The pipeline docs/steps.md draws."""
    return _pipeline(
        _declared("publish", ("thumbs", "exif")),
        _declared("load", (), ("pixels",)),
        _declared("exif", (), ("exif",)),
        _declared("thumbs", ("pixels", "sizes"), ("thumbs",)),
    )


def test_to_mermaid_draws_waves_and_dependencies() -> None:
    assert _drawn().to_mermaid() == (
        "flowchart TD\n"
        '    subgraph wave1["wave 1"]\n'
        '        step1["load"]\n'
        '        step2["exif"]\n'
        "    end\n"
        '    subgraph wave2["wave 2"]\n'
        '        step3["thumbs"]\n'
        "    end\n"
        '    subgraph wave3["wave 3"]\n'
        '        step0["publish"]\n'
        "    end\n"
        '    step1 -->|"pixels"| step3\n'
        '    step3 -->|"thumbs"| step0\n'
        '    step2 -->|"exif"| step0\n'
    )


def test_the_diagram_in_the_docs_is_what_to_mermaid_draws() -> None:
    docs = (Path(__file__).resolve().parent.parent / "docs" / "steps.md").read_text()
    block = re.search(r"```mermaid\n(.*?)```", docs, re.DOTALL)
    assert block is not None and block.group(1) == _drawn().to_mermaid()


def test_to_mermaid_joins_the_keys_of_one_dependency_on_one_edge() -> None:
    pipeline = _pipeline(_declared("size", (), ("w", "h")), _declared("crop", ("w", "h")))
    assert pipeline.to_mermaid().endswith('    step0 -->|"w, h"| step1\n')
    assert Pipeline().to_mermaid() == "flowchart TD\n"


def test_to_mermaid_refuses_a_graph_that_cannot_run() -> None:
    with pytest.raises(PipelineGraphError, match="dependency cycle"):
        _pipeline(_declared("a", ("y",), ("x",)), _declared("b", ("x",), ("y",))).to_mermaid()


def test_to_mermaid_escapes_hostile_names() -> None:
    name = 'evil"]\nclick step0 call alert(1)\n%% #quot; <b>'
    text = _pipeline(_declared(name, (), ('k"|x',)), _declared("b", ('k"|x',))).to_mermaid()
    assert text.splitlines()[2] == (
        '        step0["evil#34;#93;#10;click step0 call alert#40;1#41;#10;#37;#37; #35;quot#59; #60;b#62;"]'
    )
    assert text.splitlines()[-1] == '    step0 -->|"k#34;#124;x"| step1'


_LABEL = re.compile(r'^        step0\["([^"\[\]\n]*)"\]$')


@given(st.text(min_size=1))
def test_no_name_can_break_out_of_its_label(name: str) -> None:
    lines = _pipeline(_declared(name)).to_mermaid().split("\n")
    assert lines[0] == "flowchart TD" and lines[1] == '    subgraph wave1["wave 1"]'
    label = _LABEL.match(lines[2])
    assert label is not None, lines[2]
    assert lines[3:] == ["    end", ""]
    # Mermaid turns each entity code #N; into the character N: the label shows the name as given.
    assert re.sub(r"#(\d+);", lambda code: chr(int(code.group(1))), label.group(1)) == name


# --- as an activity processor, run by a real worker --------------------------------------

PIPELINES = """
from spoolpipe.image_processors import pipeline_processor
from spoolpipe.steps import (
    ErrorStrategy, Pipeline, PipelineConfig, PipelineStep, StepFatal, StepResult, StepStatus,
    on_error, provides, requires, step,
)

def _ran(context, name):
    with open(context["roots"][0] / "ran.log", "a") as f:
        f.write(f"{context['activity'].id} {name}\\n")

class Exif(PipelineStep):
    @step("exif")
    @on_error(ErrorStrategy.SKIP)
    @provides("camera")
    def process(self, image, context):
        _ran(context, "exif")
        raise ValueError("no EXIF block")

class Caption(PipelineStep):
    @step("caption")
    @requires("camera")
    @provides("caption")
    def process(self, image, context):
        _ran(context, "caption")
        return StepResult(StepStatus.COMPLETED, {"caption": context["camera"]})

class Size(PipelineStep):
    @step("size")
    @provides("size")
    def process(self, image, context):
        _ran(context, "size")
        return StepResult(StepStatus.COMPLETED, {"size": list(image.size)})

def build_optional():
    pipeline = Pipeline(PipelineConfig(max_retries=0))
    for part in (Exif(), Caption(), Size()):
        pipeline.add_step(part)
    return pipeline

pipeline_processor("t.steps-skip", build_optional)

class Gate(PipelineStep):
    @step("gate")
    @provides("allowed")
    def process(self, image, context):
        _ran(context, "gate")
        if context["mode"] == "fatal":
            raise StepFatal("licence missing")
        raise RuntimeError("licence server down")

class Publish(PipelineStep):
    @step("publish")
    @requires("size")
    def process(self, image, context):
        _ran(context, "publish")
        return StepResult(StepStatus.COMPLETED)

def build_gated():
    pipeline = Pipeline(PipelineConfig(on_error=ErrorStrategy.HALT))
    for part in (Gate(), Size(), Publish()):
        pipeline.add_step(part)
    return pipeline

pipeline_processor("t.steps-halt", build_gated)
"""


def test_strategies_decide_the_activity_outcome_in_a_real_worker(tmp_path: Path) -> None:
    repo = make_repository(
        tmp_path,
        "images.roots = photos\nretry.max-attempts = 2\nretry.backoff-seconds = 0\n",
        extra_processors=PIPELINES,
    )
    (repo / "photos").mkdir()
    factory.photo(repo / "photos" / "cat.jpg", (40, 30))
    skipping = submit(repo, "t.steps-skip", {"input": "cat.jpg"})
    fatal = submit(repo, "t.steps-halt", {"input": "cat.jpg", "mode": "fatal"})
    transient = submit(repo, "t.steps-halt", {"input": "cat.jpg", "mode": "transient"})
    run_until_idle(repo)
    done, failed = records(repo / "done"), records(repo / "failed")

    # Skipped steps: the activity is done; its result says which steps were skipped.
    result = done[skipping]["result"]
    assert result["steps"] == {"exif": "skipped", "caption": "skipped", "size": "completed"}
    assert result["outputs"] == {"size": [40, 30]}
    log = (repo / "logs" / "activities" / f"{skipping}~1.log").read_text()
    assert "step 'exif' skipped: skipped on error: ValueError: no EXIF block" in log

    # Halted: the activity fails with a reason naming the step; later waves never ran.
    assert (
        failed[fatal]["spoolpipe"]["reason"] == "pipeline halted at step 'gate': StepFatal: licence missing"
    )
    assert failed[fatal]["spoolpipe"]["attempts"] == 1  # StepFatal: no point in another attempt
    # A transient error halts the run, not the activity's retries (retry.max-attempts = 2).
    record = failed[transient]["spoolpipe"]
    assert record["attempts"] == 2
    assert "pipeline halted at step 'gate': RuntimeError: licence server down" in record["reason"]

    ran = (repo / "photos" / "ran.log").read_text().splitlines()
    assert sorted(ran) == sorted(
        [f"{skipping} exif", f"{skipping} size"]
        + [f"{fatal} gate", f"{fatal} size"]
        + [f"{transient} gate", f"{transient} size"] * 2
    )
    assert leftovers(repo) == {}
