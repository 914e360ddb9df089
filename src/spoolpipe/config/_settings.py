"""What a load yields: :class:`Settings` (frozen, hashable, picklable) and :class:`Loaded`."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .. import circuit
from ..builtins import specs as builtin_specs
from ..schedule import rules as schedule_rules

K = TypeVar("K")
V = TypeVar("V")


class FrozenMap(Mapping[K, V]):
    """A read-only, hashable, picklable mapping."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[K, V] | None = None) -> None:
        self._data: dict[K, V] = dict(data or {})

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return repr(self._data)

    def __reduce__(self) -> tuple[type[FrozenMap[K, V]], tuple[dict[K, V]]]:
        return (type(self), (self._data,))


_NO_OPTIONS: Mapping[str, str] = FrozenMap()


@dataclass(frozen=True)
class Settings:
    """The effective, validated configuration of one worker."""

    processors: tuple[str, ...]
    #: Absolute directories for sys.path.
    processors_path: tuple[Path, ...]
    #: Already resolved: never 0.
    pool_size: int
    #: 0: ``pool_size``, resolved when asked (:meth:`concurrency_for`), so that a worker given settings
    #: with the pool it runs (a reloaded pool.size waits for a restart) takes as many as it runs.
    concurrency_default: int
    #: Per-type limits from ``concurrency.<type>``; 0 means "never on this worker".
    concurrency: Mapping[str, int]
    timeout_seconds: float
    #: Per-type limits from ``timeout.<type>``.
    timeouts: Mapping[str, float]
    retry_max_attempts: int
    retry_backoff_seconds: float
    retry_backoff_max_seconds: float
    retry_jitter: float
    claims_lock: str
    claims_lease_seconds: float
    scan_interval_seconds: float
    scan_watch: bool
    inbox_settle_seconds: float
    limits_activity_bytes: int
    limits_result_bytes: int
    shutdown_grace_seconds: float
    heartbeat_interval_seconds: float
    #: Activity type created for failed activities; "" when disabled.
    failures_handler: str
    durability_fsync: bool
    log_level: str
    #: 0: never rotate the worker log.
    log_max_bytes: int
    log_backups: int
    #: Absolute directories.
    images_roots: tuple[Path, ...]
    #: 0 means automatic.
    images_max_megapixels: float
    #: Absolute; None: no metrics file.
    metrics_file: Path | None
    #: 0: no metrics served.
    metrics_port: int
    metrics_host: str
    #: Seconds to keep entries of each state; ``math.inf`` for forever.
    retention_done: float
    retention_failed: float
    retention_invalid: float
    retention_logs: float
    retention_archive: bool
    retention_interval: float
    #: ``command.<name>.*`` definitions, by name.
    commands: Mapping[str, builtin_specs.Command]
    #: ``http.<name>.*`` definitions, by name.
    http_endpoints: Mapping[str, builtin_specs.Endpoint]
    #: Absolute directories the ``files.*`` activities are confined to.
    files_roots: tuple[Path, ...]
    #: ``custom.*`` keys, without the ``custom.`` prefix.
    custom: Mapping[str, str]
    #: ``schedule.<name>.*`` rules, by name.
    schedules: Mapping[str, schedule_rules.Rule]
    #: ``circuit.<type>.*`` rules, by type.
    circuits: Mapping[str, circuit.Rule]
    #: The configuration files that were actually read, in precedence order.
    sources: tuple[Path, ...]
    #: Per-type ``retry.max-attempts.<type>``.
    max_attempts: Mapping[str, int] = FrozenMap()
    #: Per-type ``retry.backoff-seconds.<type>``.
    backoffs: Mapping[str, float] = FrozenMap()
    #: Per-type ``retry.on.<type>``: the exception names retried (an empty value is not kept).
    retry_on: Mapping[str, tuple[str, ...]] = FrozenMap()
    #: ``processor.<type>.<key>``: type -> key -> raw value.
    processor_options: Mapping[str, Mapping[str, str]] = FrozenMap()
    #: ``processor.<type>.<key>`` -> ``file:line`` of the line that set it (for error messages).
    option_sources: Mapping[str, str] = FrozenMap()
    #: Each key of :data:`OPTIONS` set in a file (``processors``...) -> ``file:line`` of the line that
    #: set it (for error messages: only the properties reader knows where a line starts).
    key_sources: Mapping[str, str] = FrozenMap()

    def concurrency_for(self, type_: str) -> int:
        """Maximum concurrent activities of ``type_`` here (0: never take it)."""
        return self.concurrency.get(type_, self.concurrency_default or self.pool_size)

    def max_attempts_for(self, type_: str) -> int:
        """Attempts an activity of ``type_`` gets before it fails."""
        return self.max_attempts.get(type_, self.retry_max_attempts)

    def backoff_for(self, type_: str) -> float:
        """Delay before the second attempt of an activity of ``type_``."""
        return self.backoffs.get(type_, self.retry_backoff_seconds)

    def options_for(self, type_: str) -> Mapping[str, str]:
        """The ``processor.<type_>.*`` settings, by key (empty when there are none)."""
        return self.processor_options.get(type_, _NO_OPTIONS)

    @property
    def heartbeat_silence_seconds(self) -> float:
        """How long a worker's heartbeat may go unrewritten before ``status`` and ``stop`` count it gone."""
        return max(3 * self.heartbeat_interval_seconds, self.claims_lease_seconds)

    @property
    def megapixel_cap(self) -> float:
        """``images.max-megapixels``, with 0 resolved to the automatic value."""
        return self.images_max_megapixels or automatic_megapixels()


def automatic_megapixels() -> float:
    """A quarter of physical memory at 4 bytes per pixel; 256 Mpx where that is unknown."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 256.0
    return ram / 4 / 4 / 1e6 if ram > 0 else 256.0


@dataclass(frozen=True)
class Loaded:
    """Result of :func:`load`: the settings plus non-fatal warnings (``file:line: ...``)."""

    settings: Settings
    warnings: tuple[str, ...] = ()
