"""Image step pipeline with PixelPiper's API, scheduled by declared data dependencies.

Steps declare what they read (``@requires``) and write (``@provides``); the pipeline
checks that graph before running anything, runs independent steps concurrently in
waves, and enforces the declarations after each step. Sync steps run in a worker
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
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:  # only in annotations: a worker with no image work never imports Pillow
    from PIL import Image

__all__ = [
    "IMAGE_KEY",
    "Pipeline",
    "PipelineCallback",
    "PipelineConfig",
    "PipelineError",
    "PipelineGraphError",
    "PipelineResult",
    "PipelineRunError",
    "PipelineStep",
    "StepFatal",
    "StepResult",
    "StepStatus",
    "TimingCallback",
    "any_step_abandoned",
    "fan_out",
    "max_retries",
    "provides",
    "requires",
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


class StepFatal(Exception):
    """Raise from a step to fail it without retrying (bad input, not a transient fault)."""


class PipelineError(Exception):
    """Base class for errors raised by :class:`Pipeline`."""


class PipelineGraphError(PipelineError, ValueError):
    """The step graph cannot run: unknown key, duplicate provider or name, or a cycle."""

    def __init__(self, message: str, *, step: str, key: str | None) -> None:
        super().__init__(message)
        self.step = step
        self.key = key


class PipelineRunError(PipelineError, RuntimeError):
    """A run had failed steps; ``result`` holds every step's outcome."""

    def __init__(self, result: PipelineResult) -> None:
        details = "; ".join(f"step {name!r}: {error}" for name, error in result.errors.items())
        super().__init__(f"pipeline failed: {details}")
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
    ) -> None:
        super().__init__(context)
        self.status = status
        self.image = image
        self.step_results = step_results

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


def timeout(seconds: float) -> Callable[[_F], _F]:
    """Per-attempt time limit, overriding ``PipelineConfig.timeout``."""
    if seconds <= 0:
        raise ValueError(f"timeout must be > 0, got {seconds!r}")

    def decorate(method: _F) -> _F:
        _meta(method).timeout = seconds
        return method

    return decorate


def max_retries(count: int) -> Callable[[_F], _F]:
    """Retries after the first attempt: ``max_retries(2)`` means up to 3 attempts."""
    if count < 0:
        raise ValueError(f"max_retries must be >= 0, got {count!r}")

    def decorate(method: _F) -> _F:
        _meta(method).max_retries = count
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
    """Defaults for steps without ``@max_retries`` / ``@timeout``.

    ``retry_delay`` is the backoff base: retry n waits ``retry_delay * 2 ** (n - 1)``.
    """

    max_retries: int = 3
    timeout: float = 30.0
    retry_delay: float = 0.05

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries!r}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout!r}")
        if self.retry_delay < 0:
            raise ValueError(f"retry_delay must be >= 0, got {self.retry_delay!r}")


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


def _failed(error: str, *, retryable: bool = True) -> StepResult:
    return StepResult(StepStatus.FAILED, error=error, retryable=retryable)


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

    async def run(
        self, image: Image.Image, initial_context: Mapping[str, Any] | None = None
    ) -> PipelineResult:
        """Run every step; return the final context or raise :class:`PipelineRunError`.

        ``initial_context`` is copied, never mutated. Raises
        :class:`PipelineGraphError` before running anything if the graph is invalid.
        """
        steps = list(self.steps)
        context = dict(initial_context or {})
        plan = self._plan(steps, context)
        results: dict[str, StepResult] = {}
        for wave in plan.waves:
            outcomes = await asyncio.gather(
                *(self._evaluate(step, image, context, plan, results) for step in wave)
            )
            for step, outcome in zip(wave, outcomes, strict=True):
                results[step.name] = outcome
                if outcome.status is StepStatus.COMPLETED:
                    context.update(outcome.data)
        failed = any(r.status is StepStatus.FAILED for r in results.values())
        result = PipelineResult(
            context,
            status=StepStatus.FAILED if failed else StepStatus.COMPLETED,
            image=context.get(IMAGE_KEY, image),
            step_results={step.name: results[step.name] for step in steps},
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

    async def _evaluate(
        self,
        step: PipelineStep,
        image: Image.Image,
        context: dict[str, Any],
        plan: _Plan,
        results: Mapping[str, StepResult],
    ) -> StepResult:
        await self._notify("before_step", step.name)
        result = await self._decide(step, image, context, plan, results)
        log = logger.warning if result.status is StepStatus.FAILED else logger.debug
        log("step %r %s: %s", step.name, result.status.value, result.error or "ok")
        await self._notify("after_step", step.name, result)
        return result

    async def _decide(
        self,
        step: PipelineStep,
        image: Image.Image,
        context: dict[str, Any],
        plan: _Plan,
        results: Mapping[str, StepResult],
    ) -> StepResult:
        """Block, skip, or run the step (once, or once per fan-out item)."""
        for key in step.required_context_keys:
            provider = plan.providers.get(key)
            if provider is not None and results[provider].status in (
                StepStatus.FAILED,
                StepStatus.NOT_STARTED,
            ):
                return StepResult(
                    StepStatus.NOT_STARTED,
                    error=f"not run: step {provider!r}, provider of {key!r}, did not complete",
                )
        if not step.validate_context(context):
            key = next(k for k in step.required_context_keys if k not in context)
            return StepResult(
                StepStatus.SKIPPED,
                error=f"skipped: {key!r} missing as step {plan.providers[key]!r} was skipped",
            )
        meta = step._step_meta
        if meta.when is not None:
            try:
                wanted = meta.when(MappingProxyType(context))
            except Exception as exc:
                return _failed(f"@when predicate raised {exc!r}", retryable=False)
            if not wanted:
                return StepResult(StepStatus.SKIPPED, error="skipped: @when predicate is false")
        if meta.fan_out is None:
            return await self._attempts(step, image, context)
        return await self._fan_out(step, image, context, meta.fan_out, meta.fan_out_as)

    async def _fan_out(
        self,
        step: PipelineStep,
        image: Image.Image,
        context: dict[str, Any],
        key: str,
        as_key: str,
    ) -> StepResult:
        values = context[key]
        if not isinstance(values, list | tuple):
            return _failed(
                f"step {step.name!r}: fan-out key {key!r} holds {type(values).__name__}, expected a list",
                retryable=False,
            )
        items = await asyncio.gather(
            *(self._attempts(step, image, {**context, as_key: value}) for value in values)
        )
        failures = [
            f"item {index} ({reprlib.repr(value)}): {item.error}"
            for index, (value, item) in enumerate(zip(values, items, strict=True))
            if item.status is StepStatus.FAILED
        ]
        if failures:
            return StepResult(StepStatus.FAILED, error="; ".join(failures), items=list(items))
        data = {
            k: [item.data[k] if item.status is StepStatus.COMPLETED else None for item in items]
            for k in step.provided_context_keys
        }
        return StepResult(StepStatus.COMPLETED, data=data, items=list(items))

    async def _attempts(
        self, step: PipelineStep, image: Image.Image, context: Mapping[str, Any]
    ) -> StepResult:
        """First attempt plus up to ``max_retries`` retries of retryable failures."""
        meta = step._step_meta
        retries = self.config.max_retries if meta.max_retries is None else meta.max_retries
        limit = self.config.timeout if meta.timeout is None else meta.timeout
        attempt = 0
        while True:
            # A fresh copy per attempt: a failed attempt's edits must not leak.
            result = await self._attempt(step, image, dict(context), limit)
            if result.status is not StepStatus.FAILED or not result.retryable or attempt >= retries:
                return result
            attempt += 1
            delay = self.config.retry_delay * 2 ** (attempt - 1)
            logger.info(
                "retrying step %r (retry %d of %d) in %.3fs: %s",
                step.name,
                attempt,
                retries,
                delay,
                result.error,
            )
            await asyncio.sleep(delay)

    async def _attempt(
        self, step: PipelineStep, image: Image.Image, context: dict[str, Any], limit: float
    ) -> StepResult:
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
                return timed_out
            return _failed(f"{type(exc).__name__}: {exc}")
        except StepFatal as exc:
            return _failed(f"{type(exc).__name__}: {exc}", retryable=False)
        except Exception as exc:
            return _failed(f"{type(exc).__name__}: {exc}")
        if loop.time() - started > limit:
            # Finished, but late (an async step blocked the loop): discard the result.
            return timed_out
        return _check(step, outcome)

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
