"""Cleaning up: records, invalid entries and attempt logs past their ``retention.*`` limit.

Expired entries go into ``archive/STATE-YYYY-MM-DD.tar.gz`` (``retention.archive``),
one per state and UTC day of the entry's modification time, or are deleted. The
pure part decides what is expired and where it goes (:func:`expired`,
:func:`archive_name`); the rest moves files, under one lock for the whole
repository (``locks/~retention.lock``: no worker id can have that name).

Crash safety rests on three rules. An archive is only ever replaced whole: the
new one is written in ``tmp/``, flushed, and renamed over the old one. Entries
are deleted only after that rename is flushed. Between the two, a journal
(``archive/.pending.json``) names the archive's new file and the entries it now
holds, so a purge killed in between is completed by the next one instead of
archiving those entries a second time. An archive is a series of gzip members
(one per run) holding tar members, then a last gzip member holding the tar
end-of-archive blocks: appending copies the compressed bytes without that last
member, so a day's archive is not recompressed at every run, and the result is
one ordinary ``.tar.gz`` for ``tar``, ``gzip`` and ``tarfile``.

A worker runs :func:`purge` in a process of its own (``spoolpipe purge
--scheduled``, started by :class:`ScheduledPurges`), so the daemon keeps
dispatching however big the backlog, and a purge killed at any point (with its
worker or alone) loses nothing.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import math
import os
import re
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal, get_args

from .activity import NAME_PATTERN, is_ignored, printable
from .config import Settings
from .durable import fsync_directory, move_noreplace
from .liveness import OwnLock, WorkerAlreadyRunning, resolve_mode
from .repository import Repository, filesystem_now

log = logging.getLogger("spoolpipe.retention")

#: What retention cleans up, each with its own ``retention.<state>`` limit.
State = Literal["done", "failed", "invalid", "logs"]
STATES: tuple[State, ...] = get_args(State)
#: Where each state's entries live, relative to the repository.
STATE_DIRS: Mapping[State, str] = {
    "done": "done",
    "failed": "failed",
    "invalid": "invalid",
    "logs": "logs/activities",
}
ARCHIVE_DIR = "archive"
#: The lock's name in ``locks/``: not a valid worker id, so it never is a worker's lock.
LOCK_NAME = "~retention"
JOURNAL = ".pending.json"
#: Touched by each scheduled purge that ran: the others skip until ``retention.interval`` has passed.
LAST_RUN = ".last-run"
#: Deepest directory tree inside an ``invalid/`` entry that is archived (deeper ones stay in place).
MAX_DEPTH = 64

_RECORD = re.compile(rf"\A({NAME_PATTERN})\.json\Z")
_ATTEMPT_LOG = re.compile(rf"\A({NAME_PATTERN})~[1-9][0-9]{{0,5}}\.log\Z")
_ARCHIVE = re.compile(r"\A(?:done|failed|invalid|logs)-[0-9]{4}-[0-9]{2}-[0-9]{2}(?:\.[0-9]+)?\.tar\.gz\Z")


# -- the pure part ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One thing retention may remove: ``STATE_DIRS[state]/name``, last modified at ``mtime``."""

    state: State
    name: str
    mtime: float

    @property
    def path(self) -> str:
        """Relative to the repository, as it is named inside an archive."""
        return f"{STATE_DIRS[self.state]}/{self.name}"


def entry_id(state: State, name: str) -> str | None:
    """The activity id an entry belongs to; None for ``invalid/`` entries, which belong to none."""
    pattern = _ATTEMPT_LOG if state == "logs" else _RECORD if state != "invalid" else None
    m = pattern.match(name) if pattern is not None else None
    return m.group(1) if m else None


def is_entry(state: State, name: str) -> bool:
    """Whether retention may touch ``name`` in that state's directory: only names spoolpipe writes there.

    A record is ``ID.json``, an attempt log ``ID~N.log``; an ``invalid/`` entry is any
    name but those a writer is still publishing (``.name``, ``*.tmp``, ``*.part``).
    """
    if state == "invalid":
        return not is_ignored(name)
    return entry_id(state, name) is not None


def referenced_id(name: str) -> str:
    """The id a name in ``inbox/``, ``running/`` or ``ids/`` is of: its part before ``~`` or ``.json``."""
    stem = name.split("~", 1)[0]
    return stem[: -len(".json")] if stem.endswith(".json") else stem


def expired(
    entries: Iterable[Entry], limits: Mapping[State, float], now: float, protected: set[str]
) -> list[Entry]:
    """The entries older than their state's limit (seconds; ``math.inf``: forever) by ``now``.

    An entry of an id in ``protected`` (queued, running or reserved) is never expired.
    """
    found = []
    for entry in entries:
        if now - entry.mtime <= limits[entry.state]:
            continue
        activity = entry_id(entry.state, entry.name)
        if activity is None or activity not in protected:
            found.append(entry)
    return found


def archive_name(state: State, mtime: float, number: int = 1) -> str:
    """``STATE-YYYY-MM-DD.tar.gz`` for the UTC day of ``mtime`` (``...-DD.N.tar.gz`` for ``number`` N > 1)."""
    day = datetime.fromtimestamp(min(max(mtime, 0.0), 253402300799.0), UTC).strftime("%Y-%m-%d")
    return f"{state}-{day}.tar.gz" if number == 1 else f"{state}-{day}.{number}.tar.gz"


def by_archive(entries: Iterable[Entry]) -> dict[str, list[Entry]]:
    """Entries grouped by the archive they go to, in name order."""
    groups: dict[str, list[Entry]] = {}
    for entry in sorted(entries, key=lambda e: (e.state, e.mtime, e.name)):
        groups.setdefault(archive_name(entry.state, entry.mtime), []).append(entry)
    return dict(sorted(groups.items()))


def limits_of(settings: Settings) -> dict[State, float]:
    return {
        "done": settings.retention_done,
        "failed": settings.retention_failed,
        "invalid": settings.retention_invalid,
        "logs": settings.retention_logs,
    }


def describe_age(seconds: float) -> str:
    """``3d 4h``, ``2h 5m``, ``40s``: an age for a person."""
    seconds = max(0, int(seconds))
    for unit, size, smaller, smaller_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} {seconds % size // smaller_size}{smaller}"
    return f"{seconds // 60}m" if seconds >= 60 else f"{seconds}s"


def _gzip_stored(data: bytes) -> bytes:
    """A gzip member holding ``data`` uncompressed: the same bytes whatever the zlib version."""
    block = b"\x01" + struct.pack("<HH", len(data), 0xFFFF ^ len(data)) + data
    return (
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + block + struct.pack("<II", zlib.crc32(data), len(data))
    )


#: The last gzip member of every archive: the two zero blocks that end a tar archive.
END_MEMBER = _gzip_stored(bytes(2 * tarfile.BLOCKSIZE))


@dataclass
class Report:
    """What a purge did (or, dry, would do), for the command's output and the worker log."""

    dry_run: bool
    archive: bool
    #: Per state: the entries archived or deleted (dry: that would be).
    removed: dict[State, list[Entry]] = field(default_factory=lambda: {s: [] for s in STATES})
    #: Archive names (in ``archive/``) written to, per state.
    archives: dict[State, set[str]] = field(default_factory=lambda: {s: set() for s in STATES})
    #: Entries a purge killed earlier had archived, deleted by this one.
    completed: int = 0
    #: One line per entry that could not be purged (it stays where it is).
    problems: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        """One line per state with anything to say."""
        verb = ("would archive" if self.archive else "would delete") if self.dry_run else None
        verb = verb or ("archived" if self.archive else "deleted")
        lines = []
        for state in STATES:
            count = len(self.removed[state])
            if count:
                names = sorted(self.archives[state])
                into = ", ".join(f"archive/{a}" for a in names)
                if len(names) > 3:
                    into = f"{len(names)} archives, archive/{names[0]} to archive/{names[-1]}"
                lines.append(f"{state}: {verb} {count}" + (f" into {into}" if into else ""))
        if self.completed:
            lines.append(f"deleted {self.completed} entries an interrupted purge had archived")
        return lines


# -- files --------------------------------------------------------------------------------------------

#: What an entry looked like when it was archived: (path inside it, mode, inode, size, mtime) per node.
Stamp = tuple[tuple[str, int, int, int, int], ...]


class Skipped(Exception):
    """This entry cannot be archived (it stays in place); the message says why."""


def _node(rel: str, st: os.stat_result) -> tuple[str, int, int, int, int]:
    return rel, st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns


def _open_dir(name: str, dir_fd: int | None) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)


def _walk(dir_fd: int, name: str) -> Iterator[tuple[str, int, str, os.stat_result]]:
    """Every node of the entry ``name`` in ``dir_fd`` (itself first), as (path, parent fd, name, lstat).

    Iterative and by file descriptors, so no path is ever too long to reach;
    links are never followed. Deeper than ``MAX_DEPTH``: :class:`Skipped`.
    """
    st = os.lstat(name, dir_fd=dir_fd)
    yield name, dir_fd, name, st
    if not stat.S_ISDIR(st.st_mode):
        return
    stack: list[tuple[int, str, Iterator[str]]] = []
    try:
        fd = _open_dir(name, dir_fd)
        stack.append((fd, name, iter(sorted(os.listdir(fd)))))
        while stack:
            fd, rel, children = stack[-1]
            child = next(children, None)
            if child is None:
                os.close(fd)
                stack.pop()
                continue
            st = os.lstat(child, dir_fd=fd)
            yield f"{rel}/{child}", fd, child, st
            if stat.S_ISDIR(st.st_mode):
                if len(stack) >= MAX_DEPTH:
                    raise Skipped(f"more than {MAX_DEPTH} directories deep")
                sub = _open_dir(child, fd)
                stack.append((sub, f"{rel}/{child}", iter(sorted(os.listdir(sub)))))
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def stamp(dir_fd: int, name: str) -> Stamp:
    return tuple(_node(rel, st) for rel, _, _, st in _walk(dir_fd, name))


def still_archived(current: Stamp, archived: Stamp) -> bool:
    """Whether what is in place now is (part of) what was archived, so deleting it loses nothing.

    Every node must be one archived, unchanged; only a directory may have lost
    children (its size and times change then): a deletion killed half-way.
    """
    nodes = {node[0]: node for node in archived}
    for rel, mode, inode, size, mtime in current:
        then = nodes.get(rel)
        if then is None or then[1:3] != (mode, inode):
            return False
        if not stat.S_ISDIR(mode) and then[3:] != (size, mtime):
            return False
    return True


def _tarinfo(arcname: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(arcname)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = int(st.st_mtime)
    return info


class _Exactly:
    """``size`` bytes of a file: zeros where it turned out shorter (it changed: it is then kept in place)."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd, self._left = fd, size

    def read(self, n: int) -> bytes:
        n = min(n, self._left)
        data = os.read(self._fd, n) if n else b""
        data += bytes(n - len(data))
        self._left -= n
        return data


def _write_member(out: IO[bytes], info: tarfile.TarInfo, source: _Exactly | None) -> None:
    out.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
    if source is None or not info.size:
        return
    left = info.size
    while left:
        chunk = source.read(min(left, 1 << 20))
        out.write(chunk)
        left -= len(chunk)
    out.write(bytes(-info.size % tarfile.BLOCKSIZE))


def _tar_entry(out: IO[bytes], dir_fd: int, entry: Entry) -> Stamp:
    """Write the tar members of ``entry`` (a file, or a tree for ``invalid/``) to ``out``; its stamp.

    Nothing is followed or opened but regular files (without blocking). A socket
    has no content to keep and is left out.
    """
    nodes = []
    base = STATE_DIRS[entry.state]
    for rel, parent, name, st in _walk(dir_fd, entry.name):
        nodes.append(_node(rel, st))
        info = _tarinfo(f"{base}/{rel}", st)
        mode = st.st_mode
        if stat.S_ISREG(mode):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=parent)
            try:
                opened = os.fstat(fd)
                if not os.path.samestat(opened, st):
                    raise Skipped("it changed while it was being archived")
                info.size = st.st_size
                _write_member(out, info, _Exactly(fd, st.st_size))
            finally:
                os.close(fd)
            continue
        if stat.S_ISDIR(mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=parent)
        elif stat.S_ISFIFO(mode):
            info.type = tarfile.FIFOTYPE
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        else:
            continue  # a socket
        _write_member(out, info, None)
    return tuple(nodes)


def _remove(dir_fd: int, name: str, depth: int = 0) -> None:
    """Delete the entry ``name`` in ``dir_fd``: a file, or a whole tree (children first), by descriptors."""
    st = os.lstat(name, dir_fd=dir_fd)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    if depth > MAX_DEPTH:
        raise Skipped(f"more than {MAX_DEPTH} directories deep")
    fd = _open_dir(name, dir_fd)
    try:
        for child in os.listdir(fd):
            _remove(fd, child, depth + 1)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def scan(repo: Repository, state: State) -> list[Entry]:
    """The entries of ``state`` in place now: regular files named as spoolpipe names them, or
    ``invalid/`` directories; links and anything else are never touched."""
    wanted = stat.S_ISDIR if state == "invalid" else stat.S_ISREG
    entries = []
    with os.scandir(repo.root / STATE_DIRS[state]) as found:
        for item in found:
            if not is_entry(state, item.name):
                continue
            try:
                st = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if wanted(st.st_mode):
                entries.append(Entry(state, item.name, st.st_mtime))
    return entries


def protected_ids(repo: Repository) -> set[str]:
    """Ids that are queued, claimed, being settled or reserved: their entries are never purged."""
    ids: set[str] = set()
    for directory in (repo.inbox, repo.running, repo.ids):
        with os.scandir(directory) as found:
            ids.update(referenced_id(item.name) for item in found)
    return ids


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


def purge(
    repo: Repository,
    limits: Mapping[State, float],
    *,
    archive: bool,
    dry_run: bool,
    lock: OwnLock,
) -> Report:
    """Archive (or delete) every entry past its state's limit; dry: only say which. Holds ``lock``.

    States missing from ``limits`` are kept. An interrupted purge's journal is
    completed first.
    """
    report = Report(dry_run, archive)
    if not dry_run:
        _complete_interrupted(repo, report)
        _sweep_temp(repo)
    now = filesystem_now(repo.tmp / ".clock-purge")
    entries = [e for s in STATES if limits.get(s, math.inf) < math.inf for e in scan(repo, s)]
    found = expired(entries, {s: limits.get(s, math.inf) for s in STATES}, now, protected_ids(repo))
    if dry_run:
        for entry in found:
            report.removed[entry.state].append(entry)
            if archive:
                report.archives[entry.state].add(archive_name(entry.state, entry.mtime))
        return report
    if not archive:
        _delete(repo, found, report)
        return report
    for group in by_archive(found).values():
        if not lock.held():
            report.problems.append("the retention lock was lost: stopped; the next purge goes on")
            break
        try:
            _archive_group(repo, group, lock, report, now)
        except OSError as exc:
            report.problems.append(f"{group[0].state}: {len(group)} entries not archived: {exc}")
    return report


def _sweep_temp(repo: Repository) -> None:
    """Archives a killed purge was writing: only the lock holder writes them, so each is stale."""
    for path in repo.tmp.glob("archive.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _appendable(archive_dir: Path, state: State, mtime: float) -> tuple[Path, os.stat_result | None]:
    """The archive for this state and day, with its stat if it exists; one not ending as spoolpipe
    ends its archives (not written by spoolpipe, or cut short) is left alone for ``...-DD.N.tar.gz``."""
    number = 1
    while True:
        path = archive_dir / archive_name(state, mtime, number)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return path, None
        if stat.S_ISREG(st.st_mode) and st.st_size >= len(END_MEMBER):
            with open(path, "rb") as existing:
                existing.seek(st.st_size - len(END_MEMBER))
                if existing.read() == END_MEMBER:
                    return path, st
        number += 1


def _copy(source: Path, out: IO[bytes], length: int) -> None:
    with open(source, "rb") as src:
        while length > 0:
            chunk = src.read(min(length, 1 << 20))
            if not chunk:
                raise OSError(f"{source} is shorter than it was")
            out.write(chunk)
            length -= len(chunk)


def _archive_group(
    repo: Repository, group: Sequence[Entry], lock: OwnLock, report: Report, now: float
) -> None:
    """Append ``group`` (one state, one day) to its archive, publish it, then delete the entries."""
    state = group[0].state
    archive_dir = repo.root / ARCHIVE_DIR
    archive_dir.mkdir(exist_ok=True)
    target, old = _appendable(archive_dir, state, group[0].mtime)
    tmp = repo.temp_path("archive")
    held: list[tuple[Entry, Stamp]] = []
    state_fd = _open_dir(str(repo.root / STATE_DIRS[state]), None)
    try:
        try:
            with open(tmp, "xb") as out:
                if old is not None:
                    _copy(target, out, old.st_size - len(END_MEMBER))
                with gzip.GzipFile(
                    filename="", mode="wb", compresslevel=6, fileobj=out, mtime=int(now)
                ) as packed:
                    for entry in group:
                        with tempfile.SpooledTemporaryFile(8 << 20, "w+b", dir=str(repo.tmp)) as chunk:
                            try:
                                entry_stamp = _tar_entry(chunk, state_fd, entry)
                            except FileNotFoundError:
                                continue  # removed meanwhile (by a person, or retried)
                            except (OSError, Skipped) as exc:
                                report.problems.append(f"{printable(entry.path)}: not archived: {exc}")
                                continue
                            chunk.seek(0)
                            while block := chunk.read(1 << 20):
                                packed.write(block)
                            held.append((entry, entry_stamp))
                out.write(END_MEMBER)
                out.flush()
                os.fsync(out.fileno())
            if not held:
                return
            if not lock.held() or (old is not None and _identity(os.lstat(target)) != _identity(old)):
                report.problems.append(
                    f"archive/{target.name} changed meanwhile: not written; the next purge goes on"
                )
                return
            written = os.lstat(tmp)
            _write_journal(repo, target.name, written, held)
            if old is None:
                move_noreplace(tmp, target)
            else:
                os.replace(tmp, target)
            fsync_directory(archive_dir)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        report.archives[state].add(target.name)
        report.removed[state] += _delete_archived(state_fd, held, report)
        (archive_dir / JOURNAL).unlink()
        fsync_directory(archive_dir)
    finally:
        os.close(state_fd)


def _write_journal(
    repo: Repository, archive: str, written: os.stat_result, held: Sequence[tuple[Entry, Stamp]]
) -> None:
    doc = {
        "archive": archive,
        "inode": written.st_ino,
        "size": written.st_size,
        "entries": [[entry.state, entry.name, entry.mtime, entry_stamp] for entry, entry_stamp in held],
    }
    tmp = repo.temp_path("archive")
    with open(tmp, "xb") as out:
        out.write(json.dumps(doc, ensure_ascii=True).encode())
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, repo.root / ARCHIVE_DIR / JOURNAL)
    fsync_directory(repo.root / ARCHIVE_DIR)


def _delete_archived(state_fd: int, held: Iterable[tuple[Entry, Stamp]], report: Report) -> list[Entry]:
    """Delete the entries now in a durable archive, each only if it is still what was archived."""
    deleted = []
    for entry, archived in held:
        try:
            if not still_archived(stamp(state_fd, entry.name), archived):
                report.problems.append(f"{printable(entry.path)}: changed after it was archived: kept")
                continue
            _remove(state_fd, entry.name)
        except FileNotFoundError:
            continue
        except (OSError, Skipped) as exc:
            report.problems.append(f"{printable(entry.path)}: archived but not deleted: {exc}")
            continue
        deleted.append(entry)
    _fsync(state_fd)
    return deleted


def _fsync(dir_fd: int) -> None:
    with contextlib.suppress(OSError):  # some network file systems refuse it; their unlinks are synchronous
        os.fsync(dir_fd)


def _journal_entries(doc: Any) -> tuple[str, int, int, list[tuple[Entry, Stamp]]]:
    """The archive, its file's inode and size, and what it holds, from a journal; ``ValueError`` if malformed.

    The journal is a file in the repository: anything in it is checked before it is used.
    """
    try:
        archive, inode, size = doc["archive"], doc["inode"], doc["size"]
        held = []
        for state, name, mtime, nodes in doc["entries"]:
            if state not in STATES or not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
                raise ValueError(f"bad entry {name!r}")
            entry_stamp = tuple((str(r), int(m), int(i), int(z), int(t)) for r, m, i, z, t in nodes)
            held.append((Entry(state, name, float(mtime)), entry_stamp))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed journal: {exc}") from None
    if not (
        isinstance(archive, str)
        and _ARCHIVE.match(archive)
        and isinstance(inode, int)
        and isinstance(size, int)
    ):
        raise ValueError("malformed journal")
    return archive, inode, size, held


def _complete_interrupted(repo: Repository, report: Report) -> None:
    """A purge killed after publishing an archive, before deleting what it holds: delete that now.

    Only if the archive's file is still the one the journal names (same inode
    and size): then the rename happened, and the entries are in it.
    """
    journal = repo.root / ARCHIVE_DIR / JOURNAL
    try:
        doc = json.loads(journal.read_bytes())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        report.problems.append(f"archive/{JOURNAL} unreadable ({exc}): removed")
        doc = None
    try:
        archive, inode, size, held = _journal_entries(doc)
    except ValueError as exc:
        if doc is not None:
            report.problems.append(f"archive/{JOURNAL}: {exc}: removed")
        held = []
    else:
        try:
            st = os.lstat(repo.root / ARCHIVE_DIR / archive)
        except FileNotFoundError:
            held = []
        else:
            if (st.st_ino, st.st_size) != (inode, size):
                held = []  # killed before the rename: the entries are all still in place
    for state in STATES:
        mine = [h for h in held if h[0].state == state]
        if mine:
            fd = _open_dir(str(repo.root / STATE_DIRS[state]), None)
            try:
                report.completed += len(_delete_archived(fd, mine, report))
            finally:
                os.close(fd)
    journal.unlink()
    fsync_directory(repo.root / ARCHIVE_DIR)


def _delete(repo: Repository, found: Iterable[Entry], report: Report) -> None:
    """``retention.archive = false``: delete each entry that still is as old as when it was found."""
    for state in STATES:
        mine = [e for e in found if e.state == state]
        if not mine:
            continue
        fd = _open_dir(str(repo.root / STATE_DIRS[state]), None)
        try:
            for entry in mine:
                try:
                    if os.lstat(entry.name, dir_fd=fd).st_mtime != entry.mtime:
                        continue  # changed since it was found: no longer what expired
                    _remove(fd, entry.name)
                except FileNotFoundError:
                    continue
                except (OSError, Skipped) as exc:
                    report.problems.append(f"{printable(entry.path)}: not deleted: {exc}")
                    continue
                report.removed[state].append(entry)
            _fsync(fd)
        finally:
            os.close(fd)


# -- the command and the worker's schedule ------------------------------------------------------------


def _ran_recently(repo: Repository, interval: float) -> bool:
    """A scheduled purge started less than half an interval ago (by the shared clock): skip this one."""
    marker = repo.root / ARCHIVE_DIR / LAST_RUN
    try:
        last = os.lstat(marker).st_mtime
    except FileNotFoundError:
        return False
    return filesystem_now(repo.tmp / ".clock-purge") - last < interval / 2


def _mark_run(repo: Repository) -> None:
    (repo.root / ARCHIVE_DIR).mkdir(exist_ok=True)
    marker = repo.root / ARCHIVE_DIR / LAST_RUN
    marker.touch()
    os.utime(marker, None)  # the file server's clock, not this machine's


def scheduled(repo: Repository, settings: Settings) -> Report | None:
    """What a worker runs every ``retention.interval``; None when skipped.

    Skipped when another purge holds the lock or one started less than half an
    interval ago, so however many workers there are, one purge runs per interval.
    """
    try:
        with retention_lock(repo, settings, wait=0.0) as lock:
            if _ran_recently(repo, settings.retention_interval):
                return None
            _mark_run(repo)
            return purge(
                repo, limits_of(settings), archive=settings.retention_archive, dry_run=False, lock=lock
            )
    except Busy:
        return None


#: At most this many problems are logged one by one; the rest are counted.
_PROBLEMS_SHOWN = 20


def run_command(
    repo: Repository,
    settings: Settings,
    *,
    states: Sequence[State],
    older_than: float | None,
    dry_run: bool,
    scheduled_run: bool,
) -> int:
    """``spoolpipe purge``: the exit code (0 done, 1 another purge holds the lock or entries stayed)."""
    if scheduled_run:
        report = scheduled(repo, settings)
        if report is not None:
            for line in report.summary():
                log.info("purge: %s", line)
            _say_problems(report.problems, lambda line: log.warning("purge: %s", line))
        return 0
    limits = {s: (older_than if older_than is not None else limits_of(settings)[s]) for s in states}
    try:
        with retention_lock(repo, settings, wait=5.0) as lock:
            report = purge(repo, limits, archive=settings.retention_archive, dry_run=dry_run, lock=lock)
    except Busy as exc:
        print(f"spoolpipe purge: {exc}", file=sys.stderr)
        return 1
    if dry_run:
        now = filesystem_now(repo.tmp / ".clock-purge")
        for state in STATES:
            for entry in report.removed[state]:
                where = f" into archive/{archive_name(state, entry.mtime)}" if report.archive else ""
                verb = "archive" if report.archive else "delete"
                print(f"would {verb} {printable(entry.path)} ({describe_age(now - entry.mtime)} old){where}")
    for line in report.summary() or ["nothing to purge"]:
        print(line)
    _say_problems(report.problems, lambda line: print(f"spoolpipe purge: {line}", file=sys.stderr))
    return 1 if report.problems else 0


def _say_problems(problems: Sequence[str], say: Any) -> None:
    for line in problems[:_PROBLEMS_SHOWN]:
        say(line)
    if len(problems) > _PROBLEMS_SHOWN:
        say(f"... and {len(problems) - _PROBLEMS_SHOWN} more entries that stayed in place")


def any_limit(settings: Settings) -> bool:
    return any(limit < math.inf for limit in limits_of(settings).values())


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
        self._next = 0.0

    def tick(self, settings: Settings, now: float) -> None:
        """Called from the daemon's loop (``now``: its monotonic clock); returns at once."""
        if self._process is not None:
            code = self._process.poll()
            if code is None:
                return
            if code != 0:
                log.error("scheduled purge (pid %d) exited with code %d", self._process.pid, code)
            self._process = None
        if now < self._next or not any_limit(settings):
            return
        self._next = now + settings.retention_interval
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
