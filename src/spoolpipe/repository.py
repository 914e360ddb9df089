"""The repository on disk: every state change an activity goes through is one rename.

``docs/repository-format.md`` is the contract this module implements; keep them
in step. Exclusivity comes from ``rename``: of two workers renaming the same
source only one succeeds. Whether a claim's owner is still alive is the job of
``liveness``; this module only moves files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .activity import (
    Activity,
    ClaimName,
    InvalidActivity,
    is_ignored,
    new_id,
    parse_activity,
    parse_claim_name,
    queued_name,
)
from .durable import Durability, publish, write_file
from .storable import encode

STATE_DIRS = ("inbox", "running", "done", "failed", "invalid")
SUPPORT_DIRS = ("tmp", "workers", "locks", "heartbeats", "logs", "logs/workers", "logs/activities", "reports")
PROPERTIES_FILE = "spoolpipe.properties"
_COMMITTED = "committed"
_OUTCOMES = ("done", "failed")
_FOLLOW_UP = "follow-up"
_QUARANTINE_PREFIX = "quarantine-"
_STALE_TMP_SECONDS = 3600.0
# Errors a network file system gives for a while without the file being at fault: try again later.
_TRANSIENT = frozenset({errno.ESTALE, errno.EIO, errno.ENOTCONN, errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT})
_STALE_QUARANTINE_SECONDS = 60.0


class NotARepository(Exception):
    """The directory lacks the layout ``spoolpipe init`` creates."""


@dataclass(frozen=True)
class Staged:
    """The files staged for a claim in ``running/``: its outcome record and its follow-ups."""

    claim: ClaimName
    record: str
    follow_ups: list[str]


@dataclass(frozen=True)
class Rejected:
    """An inbox entry that cannot run, and why.

    ``stamp`` (inode, size, mtime) is set when the content might still be being
    written: the caller quarantines it only once it has stayed unchanged long enough.
    """

    reason: str
    stamp: tuple[int, int, int] | None = None


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_ino, st.st_size, st.st_mtime_ns


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link (links are never followed)"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def dumps(doc: Any) -> bytes:
    """Compact, so that a record or follow-up is about as large as its content."""
    return encode(doc)


class Repository:
    """A repository directory shared by every worker that mounts it."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.inbox = root / "inbox"
        self.running = root / "running"
        self.done = root / "done"
        self.failed = root / "failed"
        self.invalid = root / "invalid"
        self.tmp = root / "tmp"
        self.workers = root / "workers"
        self.locks = root / "locks"
        self.heartbeats = root / "heartbeats"
        self.logs = root / "logs"
        self.reports = root / "reports"
        self.durability = Durability(root, enabled=fsync)

    # -- layout ------------------------------------------------------------------------------

    @staticmethod
    def create(root: Path, properties_text: str) -> list[Path]:
        """Create whatever of the layout is missing; never overwrite. Returns what was created."""
        created: list[Path] = []
        for name in (".", *STATE_DIRS, *SUPPORT_DIRS):
            path = (root / name).resolve() if name == "." else root / name
            if not path.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                created.append(path)
        properties = root / PROPERTIES_FILE
        if not properties.exists():
            repo = Repository(root)
            publish(
                properties_text.encode("latin-1", "backslashreplace"),
                repo.temp_path("init"),
                properties,
                repo.durability,
            )
            created.append(properties)
        return created

    def check(self) -> None:
        missing = [d for d in (*STATE_DIRS, *SUPPORT_DIRS) if not (self.root / d).is_dir()]
        if missing:
            raise NotARepository(
                f"{self.root} is not a spoolpipe repository (missing {', '.join(missing)}); "
                f"run: spoolpipe init {self.root}"
            )

    def temp_path(self, tag: str) -> Path:
        """A fresh name in ``tmp/``, on the same file system as every state directory."""
        return self.tmp / f"{tag}.{new_id()}.tmp"

    def attempt_log(self, activity: Activity) -> Path:
        return self.logs / "activities" / f"{activity.id}~{activity.attempt}.log"

    # -- writing new activities ----------------------------------------------------------------

    def known(self, activity_id: str) -> str | None:
        """Where an activity with this id already is (inbox, running, done, failed), if anywhere."""
        for directory, names in (
            (self.done, [f"{activity_id}.json"]),
            (self.failed, [f"{activity_id}.json"]),
        ):
            if any((directory / n).exists() for n in names):
                return directory.name
        for directory in (self.inbox, self.running):
            with os.scandir(directory) as entries:
                if any(
                    e.name == f"{activity_id}.json" or e.name.startswith(f"{activity_id}~") for e in entries
                ):
                    return directory.name
        return None

    def submit(self, activity: Activity) -> Path:
        """Publish a new activity into the inbox, atomically and durably."""
        final = self.inbox / f"{activity.id}.json"
        where = self.known(activity.id)
        if where is not None:
            raise FileExistsError(f"an activity with id {activity.id} already exists in {where}/")
        publish(dumps(activity.to_json()), self.temp_path("submit"), final, self.durability)
        return final

    # -- intake --------------------------------------------------------------------------------

    def inbox_names(self) -> list[str]:
        with os.scandir(self.inbox) as entries:
            return [e.name for e in entries if not is_ignored(e.name)]

    def read(self, name: str, *, limit: int) -> Activity | Rejected | None:
        """Read an inbox entry without following links or blocking on FIFOs; ``None`` if it is gone."""
        path = self.inbox / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return Rejected(f"{name} is {_kind(st.st_mode)}, not an activity file")
        if st.st_size > limit:
            return Rejected(f"{name} is {st.st_size} bytes, over limits.activity-bytes={limit}")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return Rejected(f"{name} is a symbolic link (links are never followed)")
            if exc.errno in _TRANSIENT:
                return None
            return Rejected(f"{name} cannot be read: {exc.strerror}", _stamp(st))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return Rejected(f"{name} is {_kind(st.st_mode)}, not an activity file")
            chunks: list[bytes] = []
            size = 0
            while size <= limit:
                chunk = os.read(fd, limit + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError as exc:
            if exc.errno in _TRANSIENT:
                return None
            return Rejected(f"{name} cannot be read: {exc.strerror}", _stamp(st))
        finally:
            os.close(fd)
        if size > limit:
            return Rejected(f"{name} is over limits.activity-bytes={limit} bytes")
        try:
            return parse_activity(b"".join(chunks), name)
        except InvalidActivity as exc:
            return Rejected(f"{name}: {exc.reason}", _stamp(st))

    def quarantine(self, name: str, reason: str) -> Path | None:
        """Move an inbox entry (of any kind) into ``invalid/`` with a reason. ``None`` if someone else did."""
        token = new_id()
        staging = self.tmp / f"{_QUARANTINE_PREFIX}{token}"
        staging.mkdir()
        write_file(staging / "reason.txt", (reason.rstrip() + "\n").encode(), self.durability)
        try:
            os.rename(self.inbox / name, staging / name)
        except FileNotFoundError:
            shutil.rmtree(staging, ignore_errors=True)
            return None
        self.durability.renamed(self.inbox / name, staging / name)
        self.durability.barrier()
        final = self.invalid / f"{name}~{token}"
        os.rename(staging, final)
        self.durability.renamed(staging, final)
        self.durability.barrier()
        return final

    def claim(self, name: str, activity: Activity, worker: str) -> ClaimName | None:
        """Take an inbox entry for ``worker``; ``None`` if another worker took it first."""
        claim = ClaimName(activity.id, activity.attempt, worker)
        target = self.running / claim.name
        if target.exists():  # this worker already runs this id: a duplicate, never replace it
            return None
        try:
            os.rename(self.inbox / name, target)
        except FileNotFoundError:
            # An NFS client may retry a rename that already succeeded and report ENOENT.
            return claim if target.exists() else None
        self.durability.renamed(self.inbox / name, target)
        return claim

    # -- running -------------------------------------------------------------------------------

    def claims(self) -> Iterator[ClaimName]:
        """Every claim in ``running/``, committed or not, including staged files left without a claim."""
        seen: set[str] = set()
        with os.scandir(self.running) as entries:
            names = [e.name for e in entries]
        for name in names:
            stem = name if name.endswith(".json") else "~".join(name.split("~")[:3]) + ".json"
            claim = parse_claim_name(stem)
            if claim is not None and claim.stem not in seen:
                seen.add(claim.stem)
                yield claim

    def _staged(self, claim: ClaimName) -> list[str]:
        prefix = claim.stem + "~"
        with os.scandir(self.running) as entries:
            return sorted(e.name for e in entries if e.name.startswith(prefix))

    def stage(self, claim: ClaimName, outcome: str, record: Any, follow_ups: Iterable[Any]) -> Staged:
        """Write a claim's outcome record and follow-ups where only a commit will make them visible.

        Durable after the next barrier; ``commit`` must come after that barrier.
        """
        staged = Staged(claim, f"{claim.stem}~{outcome}", [])
        try:
            for doc in follow_ups:
                name = f"{claim.stem}~{_FOLLOW_UP}~{doc['id']}"
                write_file(self.running / name, dumps(doc), self.durability)
                staged.follow_ups.append(name)
            write_file(self.running / staged.record, dumps(record), self.durability)
        except BaseException:
            self.discard(claim)
            raise
        return staged

    def discard(self, claim: ClaimName) -> None:
        """Delete whatever was staged for an uncommitted claim."""
        for name in self._staged(claim):
            if not name.endswith(_COMMITTED):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.running / name)

    def commit(self, claim: ClaimName) -> bool:
        """The commit point: a staged claim becomes its outcome. False when the claim was lost (fenced)."""
        committed = self.running / f"{claim.stem}~{_COMMITTED}"
        try:
            os.rename(self.running / claim.name, committed)
        except FileNotFoundError:
            # An NFS client may retry a rename that already succeeded and report ENOENT.
            if committed.exists():
                return True
            self.discard(claim)
            return False
        self.durability.renamed(committed)
        return True

    def finish(self, staged: Iterable[Staged]) -> None:
        """Publish committed claims' follow-ups, then their records; idempotent: anyone may complete them."""
        finished: list[ClaimName] = []
        for item in staged:
            for name in item.follow_ups:
                target = self.inbox / f"{name.rsplit('~', 1)[1]}.json"
                with contextlib.suppress(FileNotFoundError):
                    os.rename(self.running / name, target)
                    self.durability.renamed(target)
            outcome = item.record.rsplit("~", 1)[1]
            target = (self.done if outcome == "done" else self.failed) / f"{item.claim.activity_id}.json"
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.running / item.record, target)
                self.durability.renamed(target)
            finished.append(item.claim)
        self.durability.barrier()
        for claim in finished:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.running / f"{claim.stem}~{_COMMITTED}")

    def release(self, claim: ClaimName, attempt: int, not_before: float | None) -> bool:
        """Put a claim back into the inbox as ``attempt``; False when it was no longer there."""
        source = self.running / claim.name
        target = self.inbox / queued_name(claim.activity_id, attempt, not_before)
        try:
            os.rename(source, target)
        except FileNotFoundError:
            return False
        self.durability.renamed(source, target)
        return True

    def _committed(self, claim: ClaimName) -> Staged | None:
        names = self._staged(claim)
        if f"{claim.stem}~{_COMMITTED}" not in names:
            return None
        records = [n for n in names if n.rsplit("~", 1)[1] in _OUTCOMES]
        follow_ups = [n for n in names if n.split("~")[3] == _FOLLOW_UP]
        return Staged(claim, records[0] if records else f"{claim.stem}~done", follow_ups)

    def recover(self, claim: ClaimName) -> str:
        """Settle the claim of a dead worker: finish it if committed, else requeue it as the next attempt."""
        for _ in range(2):
            committed = self._committed(claim)
            if committed is not None:
                self.finish([committed])
                return "finished"
            if self.release(claim, claim.attempt + 1, None):
                self.discard(claim)
                self.durability.barrier()
                return "requeued"
        self.discard(claim)
        return "gone"

    # -- upkeep --------------------------------------------------------------------------------

    def sweep_tmp(self, now: float) -> None:
        """Finish quarantines a crash interrupted and drop temp files nobody will rename any more."""
        with os.scandir(self.tmp) as entries:
            stale = [e for e in entries]
        for entry in stale:
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            if entry.name.startswith(_QUARANTINE_PREFIX) and entry.is_dir(follow_symlinks=False):
                if age < _STALE_QUARANTINE_SECONDS:
                    continue
                if set(os.listdir(entry.path)) - {"reason.txt"}:
                    token = entry.name[len(_QUARANTINE_PREFIX) :]
                    with contextlib.suppress(FileNotFoundError):
                        os.rename(entry.path, self.invalid / f"recovered~{token}")
                else:
                    shutil.rmtree(entry.path, ignore_errors=True)
            elif age > _STALE_TMP_SECONDS:
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.unlink(entry.path)

    def retry_failed(self, activity_id: str) -> Path:
        """Send a failed activity back to the inbox as a first attempt."""
        source = self.failed / f"{activity_id}.json"
        target = self.inbox / f"{activity_id}.json"
        if target.exists():
            raise FileExistsError(f"inbox/{target.name} already exists")
        os.rename(source, target)
        self.durability.renamed(source, target)
        self.durability.barrier()
        return target

    def count(self, directory: Path) -> int:
        with os.scandir(directory) as entries:
            return sum(1 for e in entries if not is_ignored(e.name))


def filesystem_now(probe: Path) -> float:
    """The shared file system's idea of now: the mtime it gives a file we just touched."""
    try:
        os.utime(probe, None)
    except FileNotFoundError:
        probe.touch()
        # Some file systems (GlusterFS's ctime) stamp a new file with the creating client's clock;
        # only a "set to now" takes the server's.
        os.utime(probe, None)
    return probe.stat().st_mtime


class SharedClock:
    """Local time corrected to the shared file system's clock, re-probed every ``refresh`` seconds."""

    def __init__(self, probe: Path, refresh: float = 30.0) -> None:
        self._probe = probe
        self._refresh = refresh
        self._offset = 0.0
        self._probed_at = -refresh

    def now(self) -> float:
        local = time.monotonic()
        if local - self._probed_at >= self._refresh:
            with contextlib.suppress(OSError):
                self._offset = filesystem_now(self._probe) - time.time()
                self._probed_at = local
        return time.time() + self._offset
