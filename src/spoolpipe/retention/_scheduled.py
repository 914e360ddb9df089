"""The worker's side: start ``spoolpipe purge --scheduled`` now and then (light: no archive code)."""

from __future__ import annotations

import contextlib
import logging
import math
import subprocess
import sys
from pathlib import Path

from ..config import Settings
from ._expiry import any_limit

log = logging.getLogger("spoolpipe.retention")


class ScheduledPurges:
    """Starts ``spoolpipe purge --scheduled`` every ``retention.interval``, one process at a time.

    A process of its own, not the daemon's loop: a big backlog is archived in
    one go (each day's archive written once) while the daemon keeps
    dispatching, and whatever goes wrong in there, a kill included, cannot
    stop the daemon. Nothing is started while every limit is ``forever``.
    """

    def __init__(self, root: Path, worker_id: str) -> None:
        self._command = [sys.executable, "-m", "spoolpipe", "purge", str(root), "--scheduled"]
        self._command += ["--worker-id", worker_id]
        self._process: subprocess.Popen[bytes] | None = None
        #: When the last purge was started (the daemon's monotonic clock); the next is planned from it
        #: at each tick, so a ``retention.interval`` changed by a hot reload takes effect at once.
        self._started = -math.inf

    def tick(self, settings: Settings, now: float) -> None:
        """Called from the daemon's loop (``now``: its monotonic clock); returns at once."""
        if self._process is not None:
            code = self._process.poll()
            if code is None:
                return
            if code != 0:
                log.error("scheduled purge (pid %d) exited with code %d", self._process.pid, code)
            self._process = None
        if now < self._started + settings.retention_interval or not any_limit(settings):
            return
        self._started = now
        try:
            self._process = subprocess.Popen(self._command, stdin=subprocess.DEVNULL)
        except OSError as exc:
            log.error("cannot start a scheduled purge: %s", exc)

    def stop(self) -> None:
        """Stop a purge still running (safe at any point: the next one completes its work)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(10)
        self._process = None
