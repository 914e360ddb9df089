"""Processors: the code that runs an activity of one type.

Two forms register into one registry: the ``@processor("type")`` decorator and a
``Processor`` subclass bound to one type (the drs.pypeline form). A processor
returns a JSON-serialisable result (stored with the done activity), raises
``Fatal`` to fail at once, ``Retry`` to be tried again (after its own delay),
``Skip`` when there is nothing to do, or anything else to be retried per policy
(only the exceptions in ``retry_on`` / ``retry.on.<type>``, when one is set).

Both forms follow one rule for follow-ups, checked by the same code: without
``follow_ups`` a processor may create activities of any type; with
``follow_ups`` (even empty) only of the types listed, and asking for another
type fails the activity (``Fatal``). A declaration that is not a collection of
valid type names (a bare string, say) is refused when the processor registers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

from .activity import DEFAULT_PRIORITY, Activity, is_priority, is_valid_name
from .config import MAX_SECONDS, Settings, as_seconds
from .options import parse_option
from .storable import shown

ProcessFunction = Callable[[Activity, "Context"], Any]
# Decoded megapixels an activity will hold, estimated before it is claimed (image work).
MegapixelEstimate = Callable[[Activity, Settings], float]
#: The exception classes a processor retries (``retry_on=``); None: every exception.
RetryOn = tuple[type[Exception], ...]

T = TypeVar("T")


class Fatal(Exception):
    """Raise from a processor to fail the activity now, without further attempts."""


class Retry(Exception):
    """Raise from a processor to try the activity again, ``delay`` seconds from now.

    ``delay=None`` waits the retry policy's backoff. It counts as an attempt: once
    ``retry.max-attempts`` (or ``retry.max-attempts.<type>``) attempts have been made,
    the activity fails with ``reason``. It is retried whatever ``retry_on`` says.
    """

    def __init__(self, reason: str = "", delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay

    def __reduce__(self) -> tuple[type[Retry], tuple[str, float | None]]:
        return (type(self), (self.reason, self.delay))


class Skip(Exception):
    """Raise from a processor when there is nothing to do: the activity is done, ``skipped``.

    Its record in ``done/`` has ``"status": "skipped"`` and the reason, no result,
    and no follow-ups: those asked for before the raise are discarded.
    """


@dataclass(frozen=True)
class FollowUp:
    """An activity a processor asked for; published only when its parent commits."""

    type: str
    data: Mapping[str, Any]
    key: str
    delay: float | None = None
    priority: int = DEFAULT_PRIORITY


_NONE_PENDING: Mapping[str, FollowUp] = MappingProxyType({})


@dataclass
class Context:
    """What a processor may use besides its activity."""

    log: logging.Logger
    worker_id: str
    repository: Path
    settings: Settings

    @property
    def properties(self) -> Mapping[str, str]:
        """The ``custom.*`` properties, without the prefix: free-form settings shared by all processors."""
        return self.settings.custom

    follow_up_types: frozenset[str] | None = None
    follow_ups: list[FollowUp] = field(default_factory=list)
    _numbers: dict[str, int] = field(default_factory=dict)  # each follow-up's key: its number
    #: The type of the activity being run: whose ``processor.<type>.*`` settings ``options`` holds.
    activity_type: str = ""

    @property
    def options(self) -> Mapping[str, str]:
        """This processor's ``processor.<type>.<key>`` settings, by key (read-only, raw strings)."""
        return self.settings.options_for(self.activity_type)

    def option(self, name: str, kind: Callable[[str], T], default: T) -> T:
        """Setting ``name`` as ``kind`` (``str``, ``int``, ``float``, ``bool`` or a callable), or
        ``default`` when it is not set. A value that does not parse fails the activity
        (``Fatal``) with the key and the ``file:line`` that set it.
        """
        raw = self.options.get(name)
        if raw is None:
            return default
        try:
            return parse_option(raw, kind)
        except ValueError as exc:
            key = f"processor.{self.activity_type}.{name}"
            where = self.settings.option_sources.get(key)
            raise Fatal(f"{where + ': ' if where else ''}{key}: {exc}") from None

    def follow_up(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        delay: float | None = None,
        priority: int = DEFAULT_PRIORITY,
    ) -> None:
        """Ask for a follow-up activity; ``key`` (default: call order) keeps its id stable across retries.

        ``priority`` (0-9, higher runs first) is the follow-up's own, not inherited from its parent.
        """
        self.keep([self.check_follow_up(type, data, key=key, delay=delay, priority=priority)])

    def check_follow_up(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        delay: float | None = None,
        priority: int = DEFAULT_PRIORITY,
        pending: Mapping[str, FollowUp] = _NONE_PENDING,
    ) -> FollowUp:
        """The follow-up :meth:`follow_up` would keep, after those kept and ``pending`` (by key, in the
        order asked for); ``Fatal`` if it is not one this processor may ask for."""
        if not is_valid_name(type):
            raise Fatal(f"follow-up type {type!r} is not a valid activity type")
        if not is_priority(priority):
            raise Fatal(f"follow-up priority {priority!r} is not an integer from 0 to 9")
        if self.follow_up_types is not None and type not in self.follow_up_types:
            declared = ", ".join(sorted(self.follow_up_types)) or "none"
            raise Fatal(f"follow-up type {type!r} is not declared by this processor (declared: {declared})")
        if data is not None and not isinstance(data, Mapping):  # dict([1, 2]) raised TypeError: retried
            raise Fatal(f"follow-up data must be a JSON object (a mapping), not a {data.__class__.__name__}")
        number = len(self.follow_ups) + len(pending) + 1
        key = str(number) if key is None else key
        earlier = self._numbers.get(key)
        if earlier is None and key in pending:  # the order of pending is looked up only to say so
            earlier = len(self.follow_ups) + list(pending).index(key) + 1
        if earlier is not None:
            raise Fatal(
                f"follow-up key {key!r} used twice, by follow-ups {earlier} and {number} "
                "(one without key= has its number as its key)"
            )
        return FollowUp(type, dict(data or {}), key, delay, priority)

    def keep(self, follow_ups: Sequence[FollowUp]) -> None:
        """Add follow-ups made by :meth:`check_follow_up` (their keys checked again: ``Fatal``)."""
        for follow_up in follow_ups:
            number = len(self.follow_ups) + 1
            earlier = self._numbers.setdefault(follow_up.key, number)
            if earlier != number:
                raise Fatal(
                    f"follow-up key {follow_up.key!r} used twice, by follow-ups {earlier} and {number}"
                )
            self.follow_ups.append(follow_up)


@dataclass(frozen=True)
class Registration:
    type: str
    run: ProcessFunction
    follow_up_types: frozenset[str] | None
    timeout: float | None
    origin: str
    megapixels: MegapixelEstimate | None = None
    retry_on: RetryOn | None = None
    #: The module that registered it: what a reload of that module replaces.
    module: str = ""


def _follow_up_types(declared: object, origin: str) -> frozenset[str] | None:
    """The one rule of both forms: None is any type, else a collection of valid type names."""
    if declared is None:
        return None
    if isinstance(declared, str | bytes) or not isinstance(declared, Iterable):
        raise ValueError(
            f"follow_ups of {origin} must be a tuple of activity types (or None: any), not {declared!r}"
        )
    types = frozenset(declared)
    bad = sorted(repr(t) for t in types if not is_valid_name(t))
    if bad:
        raise ValueError(f"follow_ups of {origin}: {', '.join(bad)} is not a valid activity type")
    return types


def _retry_on(declared: object, origin: str) -> RetryOn | None:
    """``retry_on``: None (every exception is retried), one exception class or a tuple of them."""
    if declared is None:
        return None
    classes = (declared,) if isinstance(declared, type) else declared
    if not isinstance(classes, tuple | list) or not all(
        isinstance(c, type) and issubclass(c, Exception) for c in classes
    ):
        raise ValueError(f"retry_on of {origin} must be a tuple of exception classes, not {declared!r}")
    return tuple(classes)


def _timeout(declared: object, origin: str) -> float | None:
    """``timeout``: None (``timeout.seconds`` applies) or a number of seconds, as the properties take it."""
    if declared is None:
        return None
    seconds = as_seconds(declared)
    if seconds is None:
        bound = f"a number of seconds > 0, at most {MAX_SECONDS}"
        raise ValueError(f"timeout of {origin} must be {bound}, not {shown(declared)}")
    return seconds


_registry: dict[str, Registration] = {}
_view: Mapping[str, Registration] = MappingProxyType(_registry)


def _register(registration: Registration) -> None:
    if not is_valid_name(registration.type):
        raise ValueError(f"processor type {registration.type!r} is not a valid activity type")
    existing = _registry.get(registration.type)
    if existing is not None and existing.origin != registration.origin:
        raise ValueError(
            f"two processors for type {registration.type!r}: {existing.origin} and {registration.origin}"
        )
    _registry[registration.type] = registration


def processor(
    type: str,
    *,
    follow_ups: tuple[str, ...] | None = None,
    timeout: float | None = None,
    megapixels: MegapixelEstimate | None = None,
    retry_on: RetryOn | type[Exception] | None = None,
) -> Callable[[ProcessFunction], ProcessFunction]:
    """Register ``function(activity, ctx)`` as the processor of ``type``.

    ``follow_ups`` lists the only types it may create (None: any type).
    ``retry_on`` lists the exception classes that are retried (None: every
    exception); any other exception fails the activity at once.
    ``retry.on.<type>`` in the properties wins over it.

    ``megapixels(activity, settings)`` estimates the decoded pixels an activity
    will hold; the worker then starts it only while the total held by its
    running activities stays under ``images.max-megapixels``.
    """

    def decorate(function: ProcessFunction) -> ProcessFunction:
        origin = f"{function.__module__}.{function.__qualname__}"
        declared = _follow_up_types(follow_ups, origin)
        retried = _retry_on(retry_on, origin)
        seconds = _timeout(timeout, origin)
        _register(
            Registration(type, function, declared, seconds, origin, megapixels, retried, function.__module__)
        )
        return function

    return decorate


class Processor:
    """Class form: set ``type`` on a subclass and implement ``process``.

    ``follow_ups``, if set, lists the only types it may create (unset: any type),
    and ``retry_on`` the exception classes that are retried (unset: every
    exception), as for the decorator.
    """

    type: ClassVar[str]
    follow_ups: ClassVar[tuple[str, ...] | None] = None
    timeout: ClassVar[float | None] = None
    retry_on: ClassVar[RetryOn | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "type" not in cls.__dict__:
            return
        origin = f"{cls.__module__}.{cls.__qualname__}"

        def run(activity: Activity, ctx: Context) -> Any:
            return cls().process(activity, ctx)

        declared = _follow_up_types(cls.follow_ups, origin)
        retried = _retry_on(cls.retry_on, origin)
        seconds = _timeout(cls.timeout, origin)
        _register(
            Registration(cls.type, run, declared, seconds, origin, retry_on=retried, module=cls.__module__)
        )

    def process(self, activity: Activity, ctx: Context) -> Any:
        raise NotImplementedError


def registrations() -> dict[str, Registration]:
    """A copy of the registry, for ``restore_registrations`` to put back when an import fails half-way."""
    return dict(_registry)


def restore_registrations(saved: Mapping[str, Registration]) -> None:
    _registry.clear()
    _registry.update(saved)


def forget_registrations(module: str) -> None:
    """Drop what ``module`` registered, before it runs again: a type it no longer registers goes."""
    for type_ in [t for t, r in _registry.items() if r.module == module]:
        del _registry[type_]


def registered() -> Mapping[str, Registration]:
    """The processors imported so far, by type (a read-only view: asked on every dispatch)."""
    return _view


def timeout_for(settings: Settings, type_: str) -> float:
    """How long one activity of ``type_`` may run: ``timeout.<type>``, else its processor's ``timeout``,
    else ``timeout.seconds``."""
    if type_ in settings.timeouts:
        return settings.timeouts[type_]
    registration = _view.get(type_)
    if registration is not None and registration.timeout is not None:
        return registration.timeout
    return settings.timeout_seconds
