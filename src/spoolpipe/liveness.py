"""Whether a claim's owner is alive: every worker holds a lock on ``locks/<worker>.lock`` while it runs.

Built on filelock. ``flock`` (``FileLock``) is released by the kernel when the
process dies, so a dead worker's lock is free at once; it only works where the
file system honours flock across clients (local disks, GlusterFS, SMB). ``lease``
(``SoftFileLease``) is kept alive by a heartbeat and taken over by a peer that
saw it unrefreshed for ``claims.lease-seconds`` on its own monotonic clock, so
clock skew cannot expire a live worker (NFS). ``strict`` (``StrictSoftFileLock``)
fails closed: a dead worker's claims are recovered only once an operator frees its
lock (docs/repository-format.md says how). Lock files are never unlinked by spoolpipe.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import BaseFileLock, FileLock, Timeout

from ._mounts import filesystem_type

MODES = ("flock", "lease", "strict")
# File systems whose flock is shared by every client of the same data.
_FLOCK_FILESYSTEMS = {
    "ext2",
    "ext3",
    "ext4",
    "xfs",
    "btrfs",
    "tmpfs",
    "zfs",
    "f2fs",
    "reiserfs",
    "jfs",
    "overlay",
    "fuse.glusterfs",
    "glusterfs",
    "cifs",
    "smb3",
    "ramfs",
    "bcachefs",
}


class WorkerAlreadyRunning(Exception):
    """Another live process holds this worker id."""


def resolve_mode(mode: str, repository: Path) -> str:
    """``auto`` becomes flock where the file system honours it for every client, lease elsewhere (NFS)."""
    if mode != "auto":
        return mode
    return "flock" if filesystem_type(repository) in _FLOCK_FILESYSTEMS else "lease"


#: Refreshes of a lease per lease: others may take it once it went unrefreshed for a whole lease, so
#: a holder that did not run for (1 - 1/_REFRESHES) of one may have lost it (``OwnLock.held``).
_REFRESHES = 6


def _make_lock(
    path: Path,
    mode: str,
    lease_seconds: float,
    on_compromise: Callable[[object], None] | None = None,
    on_acquired: Callable[[int], None] | None = None,
) -> BaseFileLock:
    if mode == "flock":
        return FileLock(path, thread_local=False, on_acquired=on_acquired)
    # The lease and strict kinds are imported only by workers that use them: they are most of filelock.
    if mode == "lease":
        from filelock import SoftFileLease

        return SoftFileLease(
            path,
            lease_duration=lease_seconds,
            heartbeat_interval=lease_seconds / _REFRESHES,
            on_compromise=on_compromise,
            thread_local=False,
        )
    if mode == "strict":
        from filelock import StrictSoftFileLock

        return StrictSoftFileLock(path, thread_local=False)
    raise ValueError(f"unknown claims.lock mode {mode!r}; expected one of auto, {', '.join(MODES)}")


class _LeaseWatch:
    """Tells when a lease marker has gone unrefreshed for ``lease_seconds`` on this process's monotonic clock.

    ``SoftFileLease`` takes an expired lease over with an atomic exchange of two
    names (``renameat2``), which NFS and GlusterFS refuse; there it never takes
    over by itself, and its documentation leaves the break to the caller. A
    holder refreshes the marker, which changes its times, so an unchanged marker
    for a whole lease means nobody is refreshing it.
    """

    def __init__(self, path: Path, lease_seconds: float) -> None:
        self._path = path
        self._lease_seconds = lease_seconds
        self._seen: tuple[tuple[int, int, int], float] | None = None

    def expired(self) -> bool:
        try:
            st = os.lstat(self._path)
        except OSError:
            self._seen = None
            return False
        key, now = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns), time.monotonic()
        if self._seen is None or self._seen[0] != key:
            self._seen = (key, now)
            return False
        return now - self._seen[1] >= self._lease_seconds


def _take(lock: BaseFileLock, watch: _LeaseWatch | None) -> bool:
    """Try once to take ``lock``; break an expired lease the file system would not let filelock take over."""
    try:
        lock.acquire(blocking=False)
        return True
    except Timeout:
        if watch is None or not watch.expired():
            return False
    lock.break_lock()  # type: ignore[attr-defined]
    try:
        lock.acquire(blocking=False)
    except Timeout:
        return False
    return True


class OwnLock:
    """The lock a worker holds for its whole life; once it is lost, others may take the worker's claims."""

    def __init__(self, locks: Path, worker: str, mode: str, lease_seconds: float) -> None:
        self._path = locks / f"{worker}.lock"
        self._held = False
        self._lost = False
        self._fd: int | None = None
        self._lock = _make_lock(self._path, mode, lease_seconds, self._compromised, self._acquired)
        self._watch = _LeaseWatch(self._path, lease_seconds) if mode == "lease" else None
        self._lease_seconds = lease_seconds
        self._ran_at = 0.0  # when this process last ran a thread of its own (time.monotonic)
        self._stopped = threading.Event()

    def _compromised(self, _compromise: object) -> None:
        self._lost = True

    def _acquired(self, fd: int) -> None:
        self._fd = fd

    def acquire(self, wait: float, cancelled: Callable[[], bool] = lambda: False) -> bool:
        """Take the lock within ``wait`` seconds (a dead incarnation's lease is waited out and broken).

        False when ``cancelled()`` turned true while waiting.
        """
        deadline = time.monotonic() + wait
        while not _take(self._lock, self._watch):
            if cancelled():
                return False
            if time.monotonic() >= deadline:
                raise WorkerAlreadyRunning(self._lock.lock_file)
            time.sleep(min(0.1, wait))
        self._held = True
        if self._watch is not None:
            self._ran_at = time.monotonic()
            self._stopped.clear()
            threading.Thread(target=self._tick, name="spoolpipe-own-lease", daemon=True).start()
        return True

    def _tick(self) -> None:
        """Say, as often as the lease is refreshed, that this process runs: only a pause stops it."""
        while not self._stopped.wait(self._lease_seconds / _REFRESHES):
            self._ran_at = time.monotonic()

    def held(self) -> bool:
        """False until acquired, and once the lock is provably lost.

        A lease reports its own compromise. An flock is lost without a word when
        the file system that granted it goes away (a network client killed and
        remounted): the lock file we hold open then no longer is the file at the
        lock path, or cannot even be looked at.
        """
        if not self._held or self._lost:
            return False
        # A lease is refreshed six times per lease by a thread of this process: a process that did not
        # run for most of it (paused, suspended) may have lost it before that thread can tell. A thread
        # of our own that ticks as often tells a pause (every thread stopped) from a long step of the
        # thread looking (a big archive written, a slow disk).
        if self._watch is not None and time.monotonic() - self._ran_at > 0.8 * self._lease_seconds:
            self._lost = True
            return False
        if self._fd is None:
            return True
        try:
            mine, current = os.fstat(self._fd), os.stat(self._path)
        except OSError:
            return False
        return (mine.st_dev, mine.st_ino) == (current.st_dev, current.st_ino)

    def release(self) -> None:
        self._stopped.set()
        self._held = False
        self._fd = None
        with contextlib.suppress(Exception):
            self._lock.release()


class Prober:
    """Tells whether other workers are dead, keeping one contender per worker so lease age accumulates."""

    def __init__(self, locks: Path, mode: str, lease_seconds: float) -> None:
        self._locks = locks
        self._mode = mode
        self._lease_seconds = lease_seconds
        self._contenders: dict[str, tuple[BaseFileLock, _LeaseWatch | None]] = {}

    @contextlib.contextmanager
    def dead(self, worker: str) -> Iterator[bool]:
        """Yield True while holding ``worker``'s lock if it is dead (so it cannot come back meanwhile)."""
        if worker not in self._contenders:
            path = self._locks / f"{worker}.lock"
            watch = _LeaseWatch(path, self._lease_seconds) if self._mode == "lease" else None
            self._contenders[worker] = (_make_lock(path, self._mode, self._lease_seconds), watch)
        lock, watch = self._contenders[worker]
        try:
            taken = _take(lock, watch)
        except OSError:
            taken = False
        if not taken:
            yield False
            return
        try:
            yield True
        finally:
            with contextlib.suppress(Exception):
                lock.release()
