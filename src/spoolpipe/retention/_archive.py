"""Appending expired entries to ``archive/STATE-YYYY-MM-DD.tar.gz``, then deleting them, crash-safe.

An archive is only ever replaced whole: the new one is written in ``tmp/``,
flushed, and renamed over the old one. Entries are deleted only after that
rename is flushed. Between the two, a journal (``archive/.pending.json``) names
the archive's new file and the entries it now holds, so a purge killed in
between is completed by the next one instead of archiving those entries a
second time. An archive is a series of gzip members (one per run) holding tar
members, then a last gzip member holding the tar end-of-archive blocks:
appending copies the compressed bytes without that last member, so a day's
archive is not recompressed at every run, and the result is one ordinary
``.tar.gz`` for ``tar``, ``gzip`` and ``tarfile``.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import stat
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from ..activity import printable
from ..durable import fsync_directory, move_noreplace
from ..liveness import OwnLock
from ..repository import Repository
from ._expiry import (
    ARCHIVE_DIR,
    ARCHIVE_PATTERN,
    STATE_DIRS,
    STATES,
    Entry,
    Report,
    State,
    archive_name,
    referenced_ids,
)
from ._tree import Skipped, Stamp, fsync_dir_fd, node, open_dir, remove, stamp, still_archived, walk

#: Names the archive just published and the entries it holds, until they are deleted.
JOURNAL = ".pending.json"
#: Why an entry found expired is not taken after all: it is no longer the file the purge found.
CHANGED = "it changed since the purge found it"


def protected_ids(repo: Repository) -> set[str]:
    """Ids that are queued, claimed, being settled or reserved: their entries are never purged.

    Listed again before each archive is written and before its entries are
    deleted: an activity retried or requeued since the scan is protected again.
    """
    ids: set[str] = set()
    for directory in (repo.inbox, repo.running, repo.ids):
        with os.scandir(directory) as found:
            for item in found:
                ids |= referenced_ids(item.name)
    return ids


def _gzip_stored(data: bytes) -> bytes:
    """A gzip member holding ``data`` uncompressed: the same bytes whatever the zlib version."""
    block = b"\x01" + struct.pack("<HH", len(data), 0xFFFF ^ len(data)) + data
    return (
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + block + struct.pack("<II", zlib.crc32(data), len(data))
    )


#: The last gzip member of every archive: the two zero blocks that end a tar archive.
END_MEMBER = _gzip_stored(bytes(2 * tarfile.BLOCKSIZE))


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
    has no content to keep and is left out. Only the entry as it was found is
    taken (the name may hold a rerun's record by now), and a file only if it did
    not change while it was read (an attempt log still written): else :class:`Skipped`.
    """
    nodes = []
    base = STATE_DIRS[entry.state]
    for rel, parent, name, st in walk(dir_fd, entry.name):
        if rel == entry.name and not entry.is_still(st):
            raise Skipped(CHANGED)
        nodes.append(node(rel, st))
        info = _tarinfo(f"{base}/{rel}", st)
        mode = st.st_mode
        if stat.S_ISREG(mode):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=parent)
            try:
                if _identity(os.fstat(fd)) != _identity(st):
                    raise Skipped(CHANGED)
                info.size = st.st_size
                _write_member(out, info, _Exactly(fd, st.st_size))
                if _identity(os.fstat(fd)) != _identity(st):
                    raise Skipped("it changed while it was being archived")
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


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def sweep_temp(repo: Repository) -> None:
    """Archives a killed purge was writing: only the lock holder writes them, so each is stale.
    Upkeep: what cannot be removed (a folder of that name) is left for a person."""
    for path in repo.tmp.glob("archive.*.tmp"):
        with contextlib.suppress(OSError):
            path.unlink()


def appendable(archive_dir: Path, state: State, mtime: float) -> tuple[Path, os.stat_result | None]:
    """The archive for this state and day, with its stat if it exists; one not ending as spoolpipe
    ends its archives (not written by spoolpipe, or cut short) or not reading back whole (damaged)
    is left alone for ``...-DD.N.tar.gz``."""
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
                if existing.read() == END_MEMBER and _reads_back(path):
                    return path, st
        number += 1


#: Largest pax header read back when checking an archive (spoolpipe's hold a path, at most 64 levels deep).
_PAX_BYTES = 1 << 20


def _reads_back(path: Path) -> bool:
    """Whether every gzip member of the archive has its CRC and every tar header its checksum, up to the
    end-of-archive blocks: entries appended after a damaged part could not be read back. Streamed."""
    zero = bytes(tarfile.BLOCKSIZE)
    size: int | None = None  # from a pax header, for the member that follows it
    try:
        with gzip.open(path, "rb") as stream:
            while True:
                block = stream.read(tarfile.BLOCKSIZE)
                if block == zero:
                    return stream.read(tarfile.BLOCKSIZE) == zero and not stream.read(1)
                if len(block) < tarfile.BLOCKSIZE:
                    return False
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
                length = info.size if size is None else size
                size = None
                if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE):
                    if length > _PAX_BYTES:
                        return False
                    records = stream.read(length + -length % tarfile.BLOCKSIZE)
                    if len(records) < length + -length % tarfile.BLOCKSIZE:
                        return False
                    if info.type == tarfile.XHDTYPE:
                        size = _pax_size(records[:length])
                    continue
                left = length + -length % tarfile.BLOCKSIZE
                while left:
                    chunk = stream.read(min(left, 1 << 20))
                    if not chunk:
                        return False
                    left -= len(chunk)
    except (OSError, EOFError, ValueError, zlib.error, tarfile.TarError):
        return False


def _pax_size(records: bytes) -> int | None:
    """The ``size`` a pax header gives the member after it (for files of 8 GiB and more), if any."""
    found = None
    at = 0
    while at < len(records):
        space = records.index(b" ", at)
        length = int(records[at:space])
        if length <= space - at:
            raise ValueError("bad pax record")
        key, _, value = records[space + 1 : at + length - 1].partition(b"=")
        if key == b"size":
            found = int(value)
        at += length
    return found


def _copy(source: Path, out: IO[bytes], length: int) -> None:
    with open(source, "rb") as src:
        while length > 0:
            chunk = src.read(min(length, 1 << 20))
            if not chunk:
                raise OSError(f"{source} is shorter than it was")
            out.write(chunk)
            length -= len(chunk)


def archive_group(
    repo: Repository, group: Sequence[Entry], lock: OwnLock, report: Report, now: float
) -> None:
    """Append ``group`` (one state, one day) to its archive, publish it, then delete the entries."""
    state = group[0].state
    archive_dir = repo.root / ARCHIVE_DIR
    archive_dir.mkdir(exist_ok=True)
    target, old = appendable(archive_dir, state, group[0].mtime)
    tmp = repo.temp_path("archive")
    held: list[tuple[Entry, Stamp]] = []
    left_out: set[str] = set()  # names not to be archived after all (each said, if need be)
    state_fd = open_dir(str(repo.root / STATE_DIRS[state]), None)
    try:
        try:
            with open(tmp, "xb") as out:
                if old is not None:
                    _copy(target, out, old.st_size - len(END_MEMBER))
                with gzip.GzipFile(
                    filename="", mode="wb", compresslevel=6, fileobj=out, mtime=int(now)
                ) as packed:
                    live = protected_ids(repo)  # queued or running again since the scan: not expired now
                    for entry in group:
                        if entry.is_of(live):
                            left_out.add(entry.name)
                            continue
                        with tempfile.SpooledTemporaryFile(8 << 20, "w+b", dir=str(repo.tmp)) as chunk:
                            try:
                                entry_stamp = _tar_entry(chunk, state_fd, entry)
                            except FileNotFoundError:
                                left_out.add(entry.name)
                                continue  # removed meanwhile (by a person, or retried)
                            except (OSError, Skipped) as exc:  # unreadable, too deep, changed...
                                left_out.add(entry.name)
                                report.problems.append(
                                    f"{printable(entry.path)}: not archived into archive/{target.name}: {exc}"
                                )
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
            if not lock.held():
                report.problems.append(
                    f"archive/{target.name} not written: the retention lock was lost (this process was "
                    "paused?); the next purge goes on"
                )
                return
            if old is not None and _identity(os.lstat(target)) != _identity(old):
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
        except OSError as exc:  # a full disk, say: every entry of the group stays in place
            for entry in group:
                if entry.name not in left_out:
                    report.problems.append(
                        f"{printable(entry.path)}: not archived into archive/{target.name}: {exc}"
                    )
            return
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        report.archives[state].add(target.name)
        report.removed[state] += _delete_archived(state_fd, held, report, protected_ids(repo))
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
    try:
        with open(tmp, "xb") as out:
            out.write(json.dumps(doc, ensure_ascii=True).encode())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, repo.root / ARCHIVE_DIR / JOURNAL)
    except BaseException:  # a full disk: nothing is deleted, and no temp file is left behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(repo.root / ARCHIVE_DIR)


def _delete_archived(
    state_fd: int, held: Iterable[tuple[Entry, Stamp]], report: Report, protected: set[str]
) -> list[Entry]:
    """Delete the entries now in a durable archive, each only if it is still what was archived and
    its activity is not queued or running again (``protected``): else it stays, the archive holding a copy."""
    deleted = []
    for entry, archived in held:
        if entry.is_of(protected):
            report.problems.append(
                f"{printable(entry.path)}: archived, but its activity is queued or running again: kept"
            )
            continue
        try:
            if not still_archived(stamp(state_fd, entry.name), archived):
                report.problems.append(f"{printable(entry.path)}: changed after it was archived: kept")
                continue
            remove(state_fd, entry.name)
        except FileNotFoundError:
            continue
        except (OSError, Skipped) as exc:
            report.problems.append(f"{printable(entry.path)}: archived but not deleted: {exc}")
            continue
        deleted.append(entry)
    fsync_dir_fd(state_fd)
    return deleted


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
        and ARCHIVE_PATTERN.match(archive)
        and isinstance(inode, int)
        and isinstance(size, int)
    ):
        raise ValueError("malformed journal")
    return archive, inode, size, held


class NotAFile(Exception):
    """Something other than a file is where the purge keeps one: it purges nothing until it is moved."""


def complete_interrupted(repo: Repository, report: Report) -> None:
    """A purge killed after publishing an archive, before deleting what it holds: delete that now.

    Only if the archive's file is still the one the journal names (same inode
    and size): then the rename happened, and the entries are in it.
    """
    journal = repo.root / ARCHIVE_DIR / JOURNAL
    if os.path.lexists(journal) and (journal.is_symlink() or not journal.is_file()):
        raise NotAFile(f"archive/{JOURNAL} is not a regular file: nothing purged (move it away)")
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
            fd = open_dir(str(repo.root / STATE_DIRS[state]), None)
            try:
                report.completed += len(_delete_archived(fd, mine, report, protected_ids(repo)))
            finally:
                os.close(fd)
    journal.unlink()
    fsync_directory(repo.root / ARCHIVE_DIR)
