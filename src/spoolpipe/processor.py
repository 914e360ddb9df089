"""Processors: the code that runs an activity of one type.

Two forms register into one registry: the ``@processor("type")`` decorator and a
``Processor`` subclass bound to one type (the drs.pypeline form). A processor
returns a JSON-serialisable result (stored with the done activity), raises
``Fatal`` to fail at once, or raises anything else to be retried per policy.

Both forms follow one rule for follow-ups: without ``follow_ups`` a processor
may create activities of any type; with ``follow_ups`` (even empty) only of
the types listed, and asking for another type fails the activity (``Fatal``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

from .activity import DEFAULT_PRIORITY, Activity, is_priority, is_valid_name
from .config import Settings

ProcessFunction = Callable[[Activity, "Context"], Any]
# Decoded megapixels an activity will hold, estimated before it is claimed (image work).
MegapixelEstimate = Callable[[Activity, Settings], float]


class Fatal(Exception):
    """Raise from a processor to fail the activity now, without further attempts."""


@dataclass(frozen=True)
class FollowUp:
    """An activity a processor asked for; published only when its parent commits."""

    type: str
    data: Mapping[str, Any]
    key: str
    delay: float | None = None
    priority: int = DEFAULT_PRIORITY


@dataclass
class Context:
    """What a processor may use besides its activity."""

    log: logging.Logger
    worker_id: str
    repository: Path
    settings: Settings

    @property
    def properties(self) -> Mapping[str, str]:
        """The ``custom.*`` properties, without the prefix: free-form settings for processors."""
        return self.settings.custom

    follow_up_types: frozenset[str] | None = None
    follow_ups: list[FollowUp] = field(default_factory=list)

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
        if not is_valid_name(type):
            raise Fatal(f"follow-up type {type!r} is not a valid activity type")
        if not is_priority(priority):
            raise Fatal(f"follow-up priority {priority!r} is not an integer from 0 to 9")
        if self.follow_up_types is not None and type not in self.follow_up_types:
            declared = ", ".join(sorted(self.follow_up_types)) or "none"
            raise Fatal(f"follow-up type {type!r} is not declared by this processor (declared: {declared})")
        key = str(len(self.follow_ups) + 1) if key is None else key
        if any(f.key == key for f in self.follow_ups):
            raise Fatal(f"follow-up key {key!r} used twice")
        self.follow_ups.append(FollowUp(type, dict(data or {}), key, delay, priority))


@dataclass(frozen=True)
class Registration:
    type: str
    run: ProcessFunction
    follow_up_types: frozenset[str] | None
    timeout: float | None
    origin: str
    megapixels: MegapixelEstimate | None = None


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
) -> Callable[[ProcessFunction], ProcessFunction]:
    """Register ``function(activity, ctx)`` as the processor of ``type``.

    ``follow_ups`` lists the only types it may create (None: any type).

    ``megapixels(activity, settings)`` estimates the decoded pixels an activity
    will hold; the worker then starts it only while the total held by its
    running activities stays under ``images.max-megapixels``.
    """

    def decorate(function: ProcessFunction) -> ProcessFunction:
        origin = f"{function.__module__}.{function.__qualname__}"
        declared = None if follow_ups is None else frozenset(follow_ups)
        _register(Registration(type, function, declared, timeout, origin, megapixels))
        return function

    return decorate


class Processor:
    """Class form: set ``type`` on a subclass and implement ``process``.

    ``follow_ups``, if set, lists the only types it may create (unset: any type,
    as for the decorator).
    """

    type: ClassVar[str]
    follow_ups: ClassVar[tuple[str, ...] | None] = None
    timeout: ClassVar[float | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "type" not in cls.__dict__:
            return
        origin = f"{cls.__module__}.{cls.__qualname__}"

        def run(activity: Activity, ctx: Context) -> Any:
            return cls().process(activity, ctx)

        declared = None if cls.follow_ups is None else frozenset(cls.follow_ups)
        _register(Registration(cls.type, run, declared, cls.timeout, origin))

    def process(self, activity: Activity, ctx: Context) -> Any:
        raise NotImplementedError


def registered() -> Mapping[str, Registration]:
    """The processors imported so far, by type (a read-only view: asked on every dispatch)."""
    return _view
