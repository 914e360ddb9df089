"""The one lock for the whole repository's purging, ``locks/~retention.lock``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from ..config import Settings
from ..liveness import OwnLock, WorkerAlreadyRunning, resolve_mode
from ..repository import Repository

#: The lock's name in ``locks/``: not a valid worker id, so it never is a worker's lock.
LOCK_NAME = "~retention"


class Busy(Exception):
    """Another purge holds the retention lock."""


def lock_mode(settings: Settings, root: Path) -> str:
    """``flock`` where every client shares it, else a lease: a dead holder never blocks purging for good."""
    return "flock" if resolve_mode(settings.claims_lock, root) == "flock" else "lease"


@contextlib.contextmanager
def retention_lock(repo: Repository, settings: Settings, wait: float) -> Iterator[OwnLock]:
    """Hold ``locks/~retention.lock``; :class:`Busy` if it is not free within ``wait`` seconds.

    A lease left by a dead holder is broken once it went unrefreshed for
    ``claims.lease-seconds``, so in lease mode the wait is at least that long.
    """
    mode = lock_mode(settings, repo.root)
    lock = OwnLock(repo.locks, LOCK_NAME, mode, settings.claims_lease_seconds)
    if mode == "lease":
        wait = max(wait, settings.claims_lease_seconds * 1.5)
    try:
        lock.acquire(wait)
    except WorkerAlreadyRunning:
        raise Busy(f"another purge holds {repo.locks / LOCK_NAME}.lock; try again later") from None
    try:
        yield lock
    finally:
        lock.release()
