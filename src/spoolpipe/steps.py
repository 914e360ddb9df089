"""Image step pipeline with PixelPiper's API, scheduled by declared data dependencies.

Steps declare what they read (``@requires``) and write (``@provides``); the pipeline
checks that graph before running anything, runs independent steps concurrently in
waves, and enforces the declarations after each step. What a failure means is each
step's error strategy (retry, skip, halt; ``decide_error``). Sync steps run in a worker
thread so blocking Pillow work never stalls the event loop and timeouts can fire.
A thread cannot be killed, so a timed-out thread marks the process tainted
(``Pipeline.tainted`` / ``any_step_abandoned()``) for the daemon to recycle it.
See docs/steps.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import reprlib
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, TypeVar, runtime_checkable

from .config import MAX_SECONDS, as_seconds
from .mermaid import label_text
from .storable import message_of

if TYPE_CHECKING:  # only in annotations: a worker with no image work never imports Pillow
    from PIL import Image

__all__ = [
    "IMAGE_KEY",
    "ErrorAction",
    "ErrorPolicy",
    "ErrorStrategy",
    "Pipeline",
    "PipelineCallback",
    "PipelineConfig",
    "PipelineError",
    "PipelineGraphError",
    "PipelineResult",
    "PipelineRunError",
    "PipelineStep",
    "StepFailure",
    "StepFatal",
    "StepOutcome",
    "StepReport",
    "StepResult",
    "StepStatus",
    "TimingCallback",
    "any_step_abandoned",
    "decide_error",
    "fan_out",
    "max_retries",
    "on_error",
    "provides",
    "requires",
    "retry_on",
    "step",
    "timeout",
    "when",
]

logger = logging.getLogger(__name__)

IMAGE_KEY = "image"
"""Context key whose value, if a step provides it, becomes ``PipelineResult.image``."""

# Shared by every pipeline in the process: Pillow releases the GIL, so threads give
# real parallelism without pickling images (see docs/steps.md for the measurements).
_EXECUTOR = ThreadPoolExecutor(thread_name_prefix="spoolpipe-step")
_DOUBLINGS: Final = 64  # retry backoff doubles at most this often: 2.0 ** 1024 overflows a float
_abandoned = False


def any_step_abandoned() -> bool:
    """True once any pipeline in this process left a timed-out step running in a thread."""
    return _abandoned


class StepStatus(Enum):
    """Outcome of a step (PixelPiper's members; ``NOT_STARTED`` marks steps blocked by a failure)."""

    NOT_STARTED = "not_started"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass
class StepResult:
    """What a step returns: ``data`` is merged into the run context when COMPLETED.

    ``retryable=False`` on a FAILED result stops further attempts. ``items`` holds the
    per-item results of a fan-out step, in item order.
    """

    status: StepStatus
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    retryable: bool = True
    items: list[StepResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        try:  # a status given by its value ("completed") is that status
            self.status = StepStatus(self.status)
        except ValueError:
            names = ", ".join(f"StepStatus.{s.name}" for s in StepStatus)
            wrong = self.status
            raise ValueError(f"StepResult status must be a StepStatus ({names}), not {wrong!r}") from None


class StepFatal(Exception):
    """Raise from a step to fail it without retrying (bad input, not a transient fault)."""


@runtime_checkable
class AttemptScope(Protocol):
    def keep(self) -> None:
        """The attempt did not fail: its effects stand (``StepFatal`` if they cannot)."""


@runtime_checkable
class PerAttempt(Protocol):
    """A context value whose effects belong to one step attempt (``follow_up``): each attempt gets
    ``begin()``'s scope in its place, kept only if the attempt does not fail."""

    def begin(self) -> AttemptScope: ...


# --- error strategies (pure) ------------------------------------------------------------


class ErrorStrategy(StrEnum):
    """What a step's failure does to the run, once the step is not retried (any more)."""

    RETRY = "retry"
    """Retry every retryable failure (unless ``retry_on`` narrows it), then fail the step:
    its dependents are not run, independent steps still are, and the run fails."""
    SKIP = "skip"
    """Skip the step: its dependents are skipped too, and the run goes on and can succeed."""
    HALT = "halt"
    """Stop the run: no later wave starts, and the run fails naming this step."""


class ErrorAction(Enum):
    """``decide_error``'s answer for one failed attempt."""

    RETRY = "retry"
    FAIL = "fail"
    SKIP = "skip"
    HALT = "halt"


_FINAL_ACTION: Final = {
    ErrorStrategy.RETRY: ErrorAction.FAIL,
    ErrorStrategy.SKIP: ErrorAction.SKIP,
    ErrorStrategy.HALT: ErrorAction.HALT,
}

ExceptionTypes = tuple[type[BaseException], ...]


@dataclass(frozen=True)
class StepFailure:
    """One failed attempt, as ``decide_error`` sees it.

    ``exception`` is the type raised (``TimeoutError`` for a timeout), or None when
    the step returned a FAILED result or broke its contract. ``retryable`` is False
    for what no retry can fix (``StepFatal``, ``retryable=False``, contract breaks).
    """

    error: str
    exception: type[BaseException] | None
    retryable: bool


@dataclass(frozen=True)
class ErrorPolicy:
    """A step's effective error settings: its decorators, else its pipeline's config."""

    strategy: ErrorStrategy
    max_retries: int
    retry_on: ExceptionTypes | None = None

    def retries(self, exception: type[BaseException] | None) -> bool:
        """Whether a retryable failure of this kind is worth another attempt.

        Without ``retry_on`` the ``retry`` strategy retries everything retryable and
        ``skip`` / ``halt`` retry nothing; with it, only exceptions of those types.
        """
        if self.retry_on is None:
            return self.strategy is ErrorStrategy.RETRY
        return exception is not None and issubclass(exception, self.retry_on)


def decide_error(failure: StepFailure, *, retries_done: int, policy: ErrorPolicy) -> ErrorAction:
    """What a failed attempt means: another attempt, or the strategy's final action."""
    if failure.retryable and retries_done < policy.max_retries and policy.retries(failure.exception):
        return ErrorAction.RETRY
    return _FINAL_ACTION[policy.strategy]


class StepOutcome(StrEnum):
    """What happened to a step in one run (``PipelineResult.reports``)."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"
    HALTED = "halted"
    NOT_RUN = "not_run"


@dataclass(frozen=True)
class StepReport:
    """A step's outcome in one run, and why.

    ``error`` is the step's own failure (FAILED, HALTED, or SKIPPED by the ``skip``
    strategy). ``cause`` is the step this one was skipped or not run because of:
    the first of the chain (the step that failed, halted or was skipped itself).
    """

    outcome: StepOutcome
    error: str | None = None
    cause: str | None = None


class PipelineError(Exception):
    """Base class for errors raised by :class:`Pipeline`."""


class PipelineGraphError(PipelineError, ValueError):
    """The step graph cannot run: unknown key, duplicate provider or name, or a cycle."""

    def __init__(self, message: str, *, step: str, key: str | None) -> None:
        super().__init__(message)
        self.step = step
        self.key = key


class PipelineRunError(PipelineError, RuntimeError):
    """A run had failed steps or halted; ``result`` holds every step's outcome."""

    def __init__(self, result: PipelineResult) -> None:
        halted_by = result.halted_by
        failures = [(name, error) for name, error in result.errors.items() if name != halted_by]
        details = "; ".join(f"step {name!r}: {error}" for name, error in failures)
        if halted_by is None:
            message = f"pipeline failed: {details}"
        else:
            message = f"pipeline halted at step {halted_by!r}: {result.errors[halted_by]}"
            message += f"; also failed: {details}" if details else ""
        super().__init__(message)
        self.result = result


class PipelineResult(dict[str, Any]):
    """Final context of a run (a dict, like PixelPiper's ``run()``) plus its outcome."""

    def __init__(
        self,
        context: Mapping[str, Any],
        *,
        status: StepStatus,
        image: Image.Image,
        step_results: dict[str, StepResult],
        reports: dict[str, StepReport],
        halted_by: str | None = None,
    ) -> None:
        super().__init__(context)
        self.status = status
        self.image = image
        self.step_results = step_results
        self.reports = reports
        """Each step's ``StepReport`` by name, in insertion order."""
        self.halted_by = halted_by
        """The step whose ``halt`` strategy stopped the run (the first, by insertion order)."""

    @property
    def success(self) -> bool:
        return self.status is StepStatus.COMPLETED

    @property
    def errors(self) -> dict[str, str]:
        """Error message of every FAILED step, by step name."""
        return {
            name: result.error or "failed"
            for name, result in self.step_results.items()
            if result.status is StepStatus.FAILED
        }


# --- decorators ---------------------------------------------------------------------

_F = TypeVar("_F", bound=Callable[..., Any])
_META_ATTR = "_spoolpipe_step_meta"


@dataclass
class _StepMeta:
    name: str | None = None
    requires: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    timeout: float | None = None
    max_retries: int | None = None
    when: Callable[[Mapping[str, Any]], bool] | None = None
    fan_out: str | None = None
    fan_out_as: str = "item"
    on_error: ErrorStrategy | None = None
    retry_on: ExceptionTypes | None = None


def _meta(method: Callable[..., Any]) -> _StepMeta:
    """Metadata lives on the ``process`` function so decorators compose in any order."""
    meta = getattr(method, _META_ATTR, None)
    if not isinstance(meta, _StepMeta):
        meta = _StepMeta()
        setattr(method, _META_ATTR, meta)
    return meta


def step(name: str | None = None) -> Callable[[_F], _F]:
    """Name the step (default: the class name, or the name given to the constructor)."""

    def decorate(method: _F) -> _F:
        _meta(method).name = name
        return method

    return decorate


def _declaring(kind: Literal["requires", "provides"], keys: tuple[str, ...]) -> Callable[[_F], _F]:
    """Add ``keys`` to the step's ``kind`` keys (first mention first), whatever the decorator order."""

    def decorate(method: _F) -> _F:
        meta = _meta(method)
        setattr(meta, kind, tuple(dict.fromkeys(keys + getattr(meta, kind))))
        return method

    return decorate


def requires(*keys: str) -> Callable[[_F], _F]:
    """Context keys the step reads; the step runs after their providers."""
    return _declaring("requires", keys)


def provides(*keys: str) -> Callable[[_F], _F]:
    """Context keys the step must return in ``StepResult.data`` (checked after each run)."""
    return _declaring("provides", keys)


def _seconds(name: str, value: object, *, zero: bool = False) -> float:
    """``value`` as a number of seconds, above 0 (from 0 with ``zero``) and at most ``MAX_SECONDS``.

    NaN timed every attempt out at once and an infinite delay slept for ever.
    """
    seconds = as_seconds(value, zero=zero)
    if seconds is not None:
        return seconds
    bound = ">= 0" if zero else "> 0"
    raise ValueError(f"{name} must be a number of seconds {bound}, at most {MAX_SECONDS}, got {value!r}")


def _count(name: str, value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def timeout(seconds: float) -> Callable[[_F], _F]:
    """Per-attempt time limit, overriding ``PipelineConfig.timeout``."""
    seconds = _seconds("timeout", seconds)

    def decorate(method: _F) -> _F:
        _meta(method).timeout = seconds
        return method

    return decorate


def max_retries(count: int) -> Callable[[_F], _F]:
    """Retries after the first attempt: ``max_retries(2)`` means up to 3 attempts."""
    count = _count("max_retries", count)

    def decorate(method: _F) -> _F:
        _meta(method).max_retries = count
        return method

    return decorate


def on_error(strategy: ErrorStrategy) -> Callable[[_F], _F]:
    """The step's error strategy, overriding ``PipelineConfig.on_error``."""
    chosen = ErrorStrategy(strategy)

    def decorate(method: _F) -> _F:
        _meta(method).on_error = chosen
        return method

    return decorate


def _exception_types(types: Iterable[object]) -> ExceptionTypes:
    """``types`` checked to be exception classes: a typo must not silently retry nothing."""
    checked: list[type[BaseException]] = []
    for kind in types:
        if not (isinstance(kind, type) and issubclass(kind, BaseException)):
            raise TypeError(f"retry_on takes exception classes, got {kind!r}")
        checked.append(kind)
    return tuple(checked)


def retry_on(*exceptions: type[BaseException]) -> Callable[[_F], _F]:
    """Retry only exceptions of these types (a timeout counts as ``TimeoutError``).

    Other failures get the step's strategy at once. Overrides ``PipelineConfig.retry_on``.
    """
    types = _exception_types(exceptions)

    def decorate(method: _F) -> _F:
        _meta(method).retry_on = types
        return method

    return decorate


def when(predicate: Callable[[Mapping[str, Any]], bool]) -> Callable[[_F], _F]:
    """Run the step only if ``predicate(context)`` is true, else report it SKIPPED."""

    def decorate(method: _F) -> _F:
        _meta(method).when = predicate
        return method

    return decorate


def fan_out(key: str, *, as_key: str = "item") -> Callable[[_F], _F]:
    """Run the step once per element of the list ``context[key]``, concurrently.

    Each run sees its element as ``context[as_key]``. Every provided key ends up in
    the context as a list in element order.
    """

    def decorate(method: _F) -> _F:
        meta = _meta(method)
        meta.fan_out = key
        meta.fan_out_as = as_key
        return method

    return decorate


# --- steps, config, callbacks ---------------------------------------------------------


class PipelineStep(ABC):
    """Base class for steps: override ``process`` (``def`` or ``async def``).

    Sync ``process`` runs in a worker thread; use it for blocking Pillow work. An
    ``async def`` ``process`` runs on the event loop and must not block it.
    """

    def __init__(self, name: str | None = None) -> None:
        meta = getattr(type(self).process, _META_ATTR, None)
        self._step_meta = meta if isinstance(meta, _StepMeta) else _StepMeta()
        self._name = name or self._step_meta.name or type(self).__name__
        required = list(self._step_meta.requires)
        if self._step_meta.fan_out is not None:
            required = [k for k in required if k != self._step_meta.fan_out_as]
            required.append(self._step_meta.fan_out)
        self._required_context_keys = list(dict.fromkeys(required))
        self._provided_context_keys = list(self._step_meta.provides)

    @property
    def name(self) -> str:
        return self._name

    @property
    def required_context_keys(self) -> list[str]:
        return self._required_context_keys

    @property
    def provided_context_keys(self) -> list[str]:
        return self._provided_context_keys

    def validate_context(self, context: Mapping[str, Any]) -> bool:
        """True if every required key is present in ``context``."""
        return all(key in context for key in self._required_context_keys)

    @abstractmethod
    def process(self, image: Image.Image, context: dict[str, Any]) -> StepResult | Awaitable[StepResult]:
        """Process ``image``; ``context`` is a private copy, so return outputs in ``data``."""


@dataclass
class PipelineConfig:
    """Defaults for steps without ``@max_retries`` / ``@timeout`` / ``@on_error`` / ``@retry_on``.

    ``retry_delay`` is the backoff base: retry n waits ``retry_delay * 2 ** (n - 1)`` (the
    exponent stops at 64, the wait at ``MAX_SECONDS``).
    """

    max_retries: int = 3
    timeout: float = 30.0
    retry_delay: float = 0.05
    on_error: ErrorStrategy = ErrorStrategy.RETRY
    retry_on: ExceptionTypes | None = None

    def __post_init__(self) -> None:
        self.on_error = ErrorStrategy(self.on_error)
        if self.retry_on is not None:
            self.retry_on = _exception_types(self.retry_on)
        self.max_retries = _count("max_retries", self.max_retries)
        self.timeout = _seconds("timeout", self.timeout)
        self.retry_delay = _seconds("retry_delay", self.retry_delay, zero=True)


class PipelineCallback:
    """Observer hooks, each called exactly once per step per run.

    ``before_step`` when the step's wave starts, ``after_step`` with its final result
    (after all retries). Steps of one wave, and concurrent runs, call hooks
    concurrently. A raising hook is logged and never changes the run's outcome.
    """

    async def before_step(self, step_name: str) -> None:
        pass

    async def after_step(self, step_name: str, result: StepResult) -> None:
        pass


class TimingCallback(PipelineCallback):
    """Records each step's wall time in ``step_timings`` (latest run wins per name)."""

    def __init__(self) -> None:
        self.step_timings: dict[str, float] = {}
        # Keyed by task, as concurrent steps and runs interleave their hooks.
        self._starts: dict[tuple[asyncio.Task[Any] | None, str], float] = {}

    async def before_step(self, step_name: str) -> None:
        self._starts[asyncio.current_task(), step_name] = time.perf_counter()
        logger.info("Starting step", extra={"step": step_name})

    async def after_step(self, step_name: str, result: StepResult) -> None:
        start = self._starts.pop((asyncio.current_task(), step_name), None)
        if start is None:
            return
        duration = time.perf_counter() - start
        self.step_timings[step_name] = duration
        logger.info(
            "Finished step",
            extra={"step": step_name, "duration": duration, "status": result.status.value},
        )


# --- pipeline -------------------------------------------------------------------------


@dataclass
class _Plan:
    waves: list[list[PipelineStep]]
    providers: dict[str, str]


@dataclass
class _Run:
    """One run's state, shared by the steps of a wave (they only read it)."""

    image: Image.Image
    context: dict[str, Any]
    plan: _Plan
    results: dict[str, StepResult] = field(default_factory=dict)
    reports: dict[str, StepReport] = field(default_factory=dict)
    halted_by: str | None = None

    def root_cause(self, provider: str) -> str:
        """The step at the start of the chain that left ``provider`` without output."""
        return self.reports[provider].cause or provider


def _failed(error: str, *, retryable: bool = True) -> StepResult:
    return StepResult(StepStatus.FAILED, error=error, retryable=retryable)


def _raised(exc: BaseException, *, retryable: bool = True) -> tuple[StepResult, type[BaseException]]:
    """A step attempt that raised ``exc`` (whose ``str()`` is the step's code: it may fail too)."""
    return _failed(f"{type(exc).__name__}: {message_of(exc)}", retryable=retryable), type(exc)


class Pipeline:
    """Runs steps over an image; one instance can serve many concurrent runs.

    Nothing about a run is stored on the pipeline: each ``run()`` has its own context.
    """

    def __init__(
        self,
        config: PipelineConfig | None = None,
        callbacks: list[PipelineCallback] | None = None,
    ) -> None:
        self.steps: list[PipelineStep] = []
        self.config = config or PipelineConfig()
        self.callbacks: list[PipelineCallback] = list(callbacks or [])
        self._tainted = False

    def add_step(self, step: PipelineStep) -> None:
        self.steps.append(step)

    def add_callback(self, callback: PipelineCallback) -> None:
        self.callbacks.append(callback)

    @property
    def tainted(self) -> bool:
        """True once a sync step of this pipeline timed out and its thread kept running.

        The thread cannot be stopped and may hold CPU, memory or the image; the
        hosting process should finish what it is doing and be replaced.
        """
        return self._tainted

    def validate(self, context_keys: Iterable[str] = ()) -> None:
        """Raise :class:`PipelineGraphError` unless the steps can run.

        ``context_keys`` are the keys the initial context will hold; they count as
        provided.
        """
        self._plan(list(self.steps), context_keys)

    def to_mermaid(self) -> str:
        """A Mermaid flowchart: a subgraph per wave, a node per step, an edge per dependency.

        Each edge goes from provider to dependent, labelled with the keys it carries.
        Required keys that no step provides count as initial context. Names and keys
        are escaped, so no name can end a label. Raises :class:`PipelineGraphError`
        for duplicate names or providers and for cycles, as ``run()`` would.
        """
        steps = list(self.steps)
        provided = {key for s in steps for key in s.provided_context_keys}
        inputs = {key for s in steps for key in s.required_context_keys if key not in provided}
        plan = self._plan(steps, inputs)
        node = {s.name: f"step{index}" for index, s in enumerate(steps)}
        lines = ["flowchart TD"]
        for number, wave in enumerate(plan.waves, 1):
            lines.append(f'    subgraph wave{number}["wave {number}"]')
            lines.extend(f'        {node[s.name]}["{label_text(s.name)}"]' for s in wave)
            lines.append("    end")
        for dependent in (s for wave in plan.waves for s in wave):
            carried: dict[str, list[str]] = {}
            for key in dependent.required_context_keys:
                if key in plan.providers:
                    carried.setdefault(plan.providers[key], []).append(key)
            lines.extend(
                f'    {node[provider]} -->|"{label_text(", ".join(keys))}"| {node[dependent.name]}'
                for provider, keys in carried.items()
            )
        return "\n".join(lines) + "\n"

    async def run(
        self, image: Image.Image, initial_context: Mapping[str, Any] | None = None
    ) -> PipelineResult:
        """Run every step; return the final context or raise :class:`PipelineRunError`.

        ``initial_context`` is copied, never mutated. Raises
        :class:`PipelineGraphError` before running anything if the graph is invalid.
        """
        steps = list(self.steps)
        context = dict(initial_context or {})
        state = _Run(image, context, self._plan(steps, context))
        for wave in state.plan.waves:
            outcomes = await asyncio.gather(*(self._evaluate(step, state) for step in wave))
            for step, (outcome, report) in zip(wave, outcomes, strict=True):
                state.results[step.name] = outcome
                state.reports[step.name] = report
                if outcome.status is StepStatus.COMPLETED:
                    context.update(outcome.data)
                if report.outcome is StepOutcome.HALTED and state.halted_by is None:
                    state.halted_by = step.name
        failed = any(r.status is StepStatus.FAILED for r in state.results.values())
        result = PipelineResult(
            context,
            status=StepStatus.FAILED if failed else StepStatus.COMPLETED,
            image=context.get(IMAGE_KEY, image),
            step_results={step.name: state.results[step.name] for step in steps},
            reports={step.name: state.reports[step.name] for step in steps},
            halted_by=state.halted_by,
        )
        if failed:
            raise PipelineRunError(result)
        return result

    @staticmethod
    def _plan(steps: list[PipelineStep], context_keys: Iterable[str]) -> _Plan:
        """Check the graph and group steps into waves whose members are independent."""
        initial = set(context_keys)
        names: set[str] = set()
        providers: dict[str, str] = {}
        for step in steps:
            if step.name in names:
                raise PipelineGraphError(f"two steps are named {step.name!r}", step=step.name, key=None)
            names.add(step.name)
            for key in step.provided_context_keys:
                if key in providers:
                    raise PipelineGraphError(
                        f"key {key!r} is provided by both step {providers[key]!r} and step {step.name!r}",
                        step=step.name,
                        key=key,
                    )
                providers[key] = step.name
        edges: dict[str, list[tuple[str, str]]] = {}
        for step in steps:
            edges[step.name] = []
            for key in step.required_context_keys:
                if key in providers:
                    edges[step.name].append((key, providers[key]))
                elif key not in initial:
                    raise PipelineGraphError(
                        f"step {step.name!r} requires {key!r}, which no step provides "
                        "and the initial context lacks",
                        step=step.name,
                        key=key,
                    )
        waves: list[list[PipelineStep]] = []
        done: set[str] = set()
        pending = list(steps)
        while pending:
            wave = [s for s in pending if all(p in done for _, p in edges[s.name])]
            if not wave:
                raise _cycle_error(pending[0].name, edges, done)
            waves.append(wave)
            done.update(s.name for s in wave)
            pending = [s for s in pending if s.name not in done]
        return _Plan(waves, providers)

    async def _evaluate(self, step: PipelineStep, state: _Run) -> tuple[StepResult, StepReport]:
        await self._notify("before_step", step.name)
        result, report = await self._decide(step, state)
        failed = report.outcome in (StepOutcome.FAILED, StepOutcome.HALTED) or report.error is not None
        log = logger.warning if failed else logger.debug
        log("step %r %s: %s", step.name, report.outcome.value, result.error or "ok")
        await self._notify("after_step", step.name, result)
        return result, report

    def _policy(self, step: PipelineStep) -> ErrorPolicy:
        meta, config = step._step_meta, self.config
        return ErrorPolicy(
            strategy=config.on_error if meta.on_error is None else meta.on_error,
            max_retries=config.max_retries if meta.max_retries is None else meta.max_retries,
            retry_on=config.retry_on if meta.retry_on is None else meta.retry_on,
        )

    async def _decide(self, step: PipelineStep, state: _Run) -> tuple[StepResult, StepReport]:
        """Block, skip, or run the step (once, or once per fan-out item)."""
        if state.halted_by is not None:
            halted = f"not run: the run halted at step {state.halted_by!r}"
            return (
                StepResult(StepStatus.NOT_STARTED, error=halted),
                StepReport(StepOutcome.NOT_RUN, cause=state.halted_by),
            )
        for key in step.required_context_keys:
            provider = state.plan.providers.get(key)
            if provider is not None and state.results[provider].status in (
                StepStatus.FAILED,
                StepStatus.NOT_STARTED,
            ):
                return (
                    StepResult(
                        StepStatus.NOT_STARTED,
                        error=f"not run: step {provider!r}, provider of {key!r}, did not complete",
                    ),
                    StepReport(StepOutcome.NOT_RUN, cause=state.root_cause(provider)),
                )
        context = state.context
        meta = step._step_meta
        policy = self._policy(step)
        try:
            valid = step.validate_context(context)
        except Exception as exc:  # an override's own check (PixelPiper's hook): a bug, never retried
            refused = _failed(f"step {step.name!r}: validate_context raised {exc!r}", retryable=False)
            return _conclude(refused, _give_up(refused, policy))
        if not valid:
            missing = next((k for k in step.required_context_keys if k not in context), None)
            if missing is None:  # every key is there: the override refused for its own reasons
                refusal = f"step {step.name!r}: validate_context refused the context"
                refused = _failed(refusal, retryable=False)
                return _conclude(refused, _give_up(refused, policy))
            provider = state.plan.providers[missing]
            return (
                StepResult(
                    StepStatus.SKIPPED, error=f"skipped: {missing!r} missing as step {provider!r} was skipped"
                ),
                StepReport(StepOutcome.SKIPPED, cause=state.root_cause(provider)),
            )
        if meta.when is not None:
            try:
                wanted = meta.when(MappingProxyType(context))
            except Exception as exc:
                broken = _failed(f"@when predicate raised {exc!r}", retryable=False)
                return _conclude(broken, _give_up(broken, policy))
            if not wanted:
                return (
                    StepResult(StepStatus.SKIPPED, error="skipped: @when predicate is false"),
                    StepReport(StepOutcome.SKIPPED),
                )
        if meta.fan_out is None:
            return _conclude(*await self._attempts(step, state.image, context, policy))
        return _conclude(
            *await self._fan_out(step, state.image, context, meta.fan_out, meta.fan_out_as, policy)
        )

    async def _fan_out(
        self,
        step: PipelineStep,
        image: Image.Image,
        context: dict[str, Any],
        key: str,
        as_key: str,
        policy: ErrorPolicy,
    ) -> tuple[StepResult, ErrorAction | None]:
        """One run per element; if any element fails, the step as a whole gets its strategy's action."""
        values = context[key]
        if not isinstance(values, list | tuple):
            wrong = _failed(
                f"step {step.name!r}: fan-out key {key!r} holds {type(values).__name__}, expected a list",
                retryable=False,
            )
            return wrong, _give_up(wrong, policy)
        runs = await asyncio.gather(
            *(self._attempts(step, image, {**context, as_key: value}, policy) for value in values)
        )
        items = [item for item, _ in runs]
        failures = [
            f"item {index} ({reprlib.repr(value)}): {item.error}"
            for index, (value, item) in enumerate(zip(values, items, strict=True))
            if item.status is StepStatus.FAILED
        ]
        if failures:
            action = next(action for _, action in runs if action is not None)
            return StepResult(StepStatus.FAILED, error="; ".join(failures), items=items), action
        data = {
            k: [item.data[k] if item.status is StepStatus.COMPLETED else None for item in items]
            for k in step.provided_context_keys
        }
        return StepResult(StepStatus.COMPLETED, data=data, items=items), None

    async def _attempts(
        self, step: PipelineStep, image: Image.Image, context: Mapping[str, Any], policy: ErrorPolicy
    ) -> tuple[StepResult, ErrorAction | None]:
        """Attempts until one does not fail or ``decide_error`` stops retrying; its action if it failed."""
        limit = self.config.timeout if step._step_meta.timeout is None else step._step_meta.timeout
        retries_done = 0
        while True:
            # A fresh copy per attempt: a failed attempt's edits must not leak, nor its effects.
            scopes = {k: v.begin() for k, v in context.items() if isinstance(v, PerAttempt)}
            result, exception = await self._attempt(step, image, {**context, **scopes}, limit)
            if result.status is not StepStatus.FAILED:
                try:
                    for scope in scopes.values():
                        scope.keep()
                    return result, None
                except StepFatal as exc:
                    result, exception = _raised(exc, retryable=False)
            failure = StepFailure(result.error or "failed", exception, result.retryable)
            action = decide_error(failure, retries_done=retries_done, policy=policy)
            if action is not ErrorAction.RETRY:
                return result, action
            retries_done += 1
            delay = min(MAX_SECONDS, self.config.retry_delay * 2.0 ** min(retries_done - 1, _DOUBLINGS))
            logger.info(
                "retrying step %r (retry %d of %d) in %.3fs: %s",
                step.name,
                retries_done,
                policy.max_retries,
                delay,
                result.error,
            )
            await asyncio.sleep(delay)

    async def _attempt(
        self, step: PipelineStep, image: Image.Image, context: dict[str, Any], limit: float
    ) -> tuple[StepResult, type[BaseException] | None]:
        """One attempt's result, and the type of exception it raised (``TimeoutError`` for a timeout)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = asyncio.timeout(limit)
        timed_out = _failed(f"step {step.name!r} timed out after {limit}s")
        outcome: object
        try:
            if inspect.iscoroutinefunction(step.process):
                async with deadline:
                    pending = step.process(image, context)
                    outcome = await pending if inspect.isawaitable(pending) else pending
            else:
                future = _EXECUTOR.submit(step.process, image, context)
                try:
                    async with deadline:
                        returned = await asyncio.wrap_future(future)
                except TimeoutError:
                    if deadline.expired() and not future.cancel() and not future.done():
                        self._abandon(step, limit)
                    raise
                outcome = returned
        except TimeoutError as exc:
            if deadline.expired():
                return timed_out, TimeoutError
            return _raised(exc)
        except StepFatal as exc:
            return _raised(exc, retryable=False)
        except Exception as exc:
            return _raised(exc)
        if loop.time() - started > limit:
            # Finished, but late (an async step blocked the loop): discard the result.
            return timed_out, TimeoutError
        return _check(step, outcome), None

    def _abandon(self, step: PipelineStep, limit: float) -> None:
        global _abandoned
        self._tainted = _abandoned = True
        logger.error(
            "step %r exceeded %ss in a worker thread that cannot be stopped; "
            "this process is tainted and should be recycled",
            step.name,
            limit,
        )

    async def _notify(self, hook: str, *args: Any) -> None:
        for callback in list(self.callbacks):
            try:
                await getattr(callback, hook)(*args)
            except Exception:
                logger.exception("callback %r.%s failed", callback, hook)


def _give_up(result: StepResult, policy: ErrorPolicy) -> ErrorAction:
    """The action for a failure found before any attempt ran (never retried: nothing ran)."""
    failure = StepFailure(result.error or "failed", None, retryable=False)
    return decide_error(failure, retries_done=0, policy=policy)


def _conclude(result: StepResult, action: ErrorAction | None) -> tuple[StepResult, StepReport]:
    """A step's final result and report, with its strategy's action applied to a failure."""
    if result.status is StepStatus.COMPLETED:
        return result, StepReport(StepOutcome.OK)
    if result.status is not StepStatus.FAILED:
        return result, StepReport(StepOutcome.SKIPPED)  # the step returned SKIPPED itself
    error = result.error or "failed"
    if action is ErrorAction.SKIP:
        skipped = dataclasses.replace(result, status=StepStatus.SKIPPED, error=f"skipped on error: {error}")
        return skipped, StepReport(StepOutcome.SKIPPED, error=error)
    if action is ErrorAction.HALT:
        return result, StepReport(StepOutcome.HALTED, error=error)
    return result, StepReport(StepOutcome.FAILED, error=error)


def _check(step: PipelineStep, outcome: object) -> StepResult:
    """Hold a step to its declared outputs; contract breaks are bugs, so never retried."""
    if not isinstance(outcome, StepResult):
        return _failed(
            f"step {step.name!r} returned {type(outcome).__name__}, expected StepResult",
            retryable=False,
        )
    if outcome.status is StepStatus.FAILED:
        return outcome if outcome.error else dataclasses.replace(outcome, error="failed")
    if outcome.status is StepStatus.SKIPPED:
        return outcome
    if outcome.status is not StepStatus.COMPLETED:
        return _failed(
            f"step {step.name!r} returned status {outcome.status.name}",
            retryable=False,
        )
    if not isinstance(outcome.data, Mapping):  # merged into the context: a string's letters would be keys
        kind = type(outcome.data).__name__
        return _failed(f"step {step.name!r} returned data of type {kind}, expected a dict", retryable=False)
    for key in step.provided_context_keys:
        if key not in outcome.data:
            return _failed(f"step {step.name!r} did not provide declared key {key!r}", retryable=False)
    for key in outcome.data:
        if key not in step.provided_context_keys:
            return _failed(
                f"step {step.name!r} returned undeclared key {key!r} (add it to @provides)",
                retryable=False,
            )
    return outcome


def _cycle_error(
    start: str, edges: Mapping[str, list[tuple[str, str]]], done: set[str]
) -> PipelineGraphError:
    """Walk unmet dependencies from ``start`` until a step repeats, naming each link."""
    path: list[tuple[str, str, str]] = []
    seen: dict[str, int] = {}
    current = start
    while current not in seen:
        seen[current] = len(path)
        key, provider = next((k, p) for k, p in edges[current] if p not in done)
        path.append((current, key, provider))
        current = provider
    cycle = path[seen[current] :]
    links = "; ".join(f"step {name!r} requires {key!r} from {by!r}" for name, key, by in cycle)
    first_step, first_key, _ = cycle[0]
    return PipelineGraphError(f"dependency cycle: {links}", step=first_step, key=first_key)
