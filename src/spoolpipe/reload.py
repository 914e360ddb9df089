"""New settings and processor code for a running worker, without a restart.

At each heartbeat the worker asks whether its configuration files changed (by
their mtimes) or a reload was requested (SIGHUP, ``spoolpipe reload``), and
whether a configured processor module's file changed. A change that does not
load or import is rejected and the running configuration kept: a typo in a
properties file never stops a worker. A rejected import is tried again once a
file its error went through, or a ``processors.path`` folder, changes. What new settings change in the daemon
(pool processes, metrics, log level) the worker applies itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from . import config
from .attempt import counted
from .pool import ProcessorImportError, import_processors, processor_files

log = logging.getLogger("spoolpipe.worker")


def load(root: Path, worker_id: str) -> config.Settings:
    """The worker's settings, their warnings logged; ``config.ConfigError`` when they are invalid."""
    loaded = config.load(root, worker_id)
    for warning in loaded.warnings:
        log.warning("%s", warning)
    return loaded.settings


def _mtimes(paths: Iterable[str | Path]) -> tuple[int | None, ...]:
    """Modification times (None: gone) by which a change to ``paths`` is noticed."""
    stamps: list[int | None] = []
    for path in paths:
        try:
            stamps.append(os.stat(path).st_mtime_ns)
        except OSError:
            stamps.append(None)
    return tuple(stamps)


def _taken_at_start(new: config.Settings, old: config.Settings) -> list[tuple[str, object, object]]:
    """The keys a running worker took once, at start: (key, new value, the value it runs with)."""
    return [
        ("claims.lock", new.claims_lock, old.claims_lock),
        ("claims.lease-seconds", new.claims_lease_seconds, old.claims_lease_seconds),
        ("log.max-bytes", new.log_max_bytes, old.log_max_bytes),
        ("log.backups", new.log_backups, old.log_backups),
    ]


def _check_running_lease(new: config.Settings, start: config.Settings) -> None:
    """A lease must outlive two heartbeats: the lease this worker took at start, not the one it reads."""
    beat, lease = new.heartbeat_interval_seconds, start.claims_lease_seconds
    if lease < config.HEARTBEATS_PER_LEASE * beat:
        most = lease / config.HEARTBEATS_PER_LEASE
        where = new.key_sources.get("heartbeat.interval-seconds")
        raise config.ConfigError(
            ("" if where is None else f"{where}: ")
            + f"heartbeat.interval-seconds: {beat:g} is more than half of the claims.lease-seconds this "
            f"worker runs with ({lease:g}, taken at start); expected a number <= {most:g}, or a "
            "restart to take both"
        )


class Reloads:
    """What changed since the worker took ``settings`` and imported their processors."""

    def __init__(self, root: Path, worker_id: str, settings: config.Settings) -> None:
        self.root = root
        self.worker_id = worker_id
        self._retry_after: tuple[str, ...] = ()  # a rejected import's files: a fix there is a change
        self._stamp: tuple[tuple[int | None, ...], ...] = (_mtimes(config.config_files(root, worker_id)), ())
        self._code_stamp = processor_files(settings.processors)
        self._at_start = settings

    def settings(self, running: config.Settings, requested: bool) -> config.Settings | None:
        """The settings to run from now on, when the files changed or a reload was ``requested``; None
        when nothing changed or the change is rejected (logged), and ``running`` stays."""
        files = _mtimes(config.config_files(self.root, self.worker_id))  # before reading them
        if (files, _mtimes(self._retry_after)) == self._stamp and not requested:
            return None
        self._retry_after = ()
        try:
            settings = load(self.root, self.worker_id)
            _check_running_lease(settings, self._at_start)
            if (settings.processors, settings.processors_path) != (
                running.processors,
                running.processors_path,
            ):
                # Modules imported before run again: a new processors.path may find other files.
                import_processors(
                    settings.processors, [str(p) for p in settings.processors_path], again=settings.processors
                )
        except Exception as exc:  # a bug in reading a value must never kill the worker: logged, traceback too
            expected = isinstance(exc, config.ConfigError | ProcessorImportError)
            log.error(
                "configuration change rejected, keeping the previous configuration:\n%s",
                exc,
                exc_info=not expected,
            )
            if isinstance(exc, ProcessorImportError):
                self._retry_after = exc.files
            return None
        finally:
            self._stamp = (files, _mtimes(self._retry_after))
        return settings

    def reloaded(self, settings: config.Settings, pool_size: int) -> None:
        """Say the new settings apply, once the worker applied them, and what of them waits for a restart."""
        if settings.pool_size != pool_size:
            log.warning(
                "pool.size = %d takes effect at restart; until then the pool keeps its %s",
                settings.pool_size,
                counted(pool_size, "process", "processes"),
            )
        start = self._at_start
        for key, now, then in _taken_at_start(settings, start):
            if now != then:
                log.warning("%s = %s takes effect at restart; until then the worker keeps %s", key, now, then)
        gone = [m for m in start.processors if m not in settings.processors]
        if gone:
            log.warning(
                "processors: removing %s takes effect at restart; until then its types still run here",
                ", ".join(gone),
            )
        sources = ", ".join(str(p) for p in settings.sources) or "no file (every key at its default)"
        log.info("configuration reloaded from %s", sources)

    def code(self, running: config.Settings) -> bool:
        """Re-import configured processor modules whose file changed; True when they did and the pool's
        processes must be replaced (False also when the new code does not import: logged)."""
        stamp = processor_files(running.processors)
        changed = sorted(m for m in stamp.keys() & self._code_stamp.keys() if stamp[m] != self._code_stamp[m])
        self._code_stamp = stamp
        if not changed:
            return False
        files = ", ".join(stamp[m][0] for m in changed)
        try:
            import_processors(running.processors, [str(p) for p in running.processors_path], again=changed)
        except ProcessorImportError as exc:
            log.error(
                "processor code changed (%s) but cannot be imported, keeping the running pool processes:\n%s",
                files,
                exc,
            )
            return False
        log.info("processor code changed (%s): replacing pool processes as they become idle", files)
        return True
