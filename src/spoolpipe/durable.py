"""Atomic, durable file writes: temp file on the same file system, fsync, rename, fsync the directory.

Writes can be grouped: a ``Durability`` collects the directories whose entries
changed and flushes them together at a barrier, so a batch of commits costs a
few flushes instead of two per file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import cast

from . import _libc
from ._mounts import filesystem_type

_syncfs = cast("Callable[[int], int] | None", _libc.function("syncfs", [ctypes.c_int]))

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


_renameat2 = cast(
    "Callable[[int, bytes, int, bytes, int], int] | None",
    _libc.function(
        "renameat2", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    ),
)
# Refusals of RENAME_NOREPLACE (NFS, SMB, GlusterFS's FUSE client): the kernel answers them without
# touching the file, so trying costs one cheap system call; no per-file-system memory is kept.
_REFUSED = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP})
#: A path as the moves here take it: a ``str`` on the hot path, or a ``Path``.
StrPath = str | os.PathLike[str]


def _rename_noreplace(
    source: StrPath, target: StrPath, source_dir: int = _AT_FDCWD, target_dir: int = _AT_FDCWD
) -> bool:
    """``renameat2(RENAME_NOREPLACE)``; False when this file system does not offer it."""
    if _renameat2 is None:
        return False
    if _renameat2(source_dir, os.fsencode(source), target_dir, os.fsencode(target), _RENAME_NOREPLACE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _REFUSED:
        return False
    raise OSError(code, os.strerror(code), os.fspath(source), None, os.fspath(target))


def take(source: StrPath, target: StrPath) -> bool:
    """Rename ``source`` to ``target``; of several takers of one source only one succeeds.

    False when ``source`` is gone (someone else took it). Never replaces ``target``
    (``FileExistsError``): with ``RENAME_NOREPLACE`` where the file system has it,
    otherwise by looking first, which is safe because every name spoolpipe takes
    into has a single writer by protocol (``docs/repository-format.md``).
    """
    try:
        if _rename_noreplace(source, target):
            return True
    except FileNotFoundError:
        return False
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, "File exists", os.fspath(target))
    try:
        os.rename(source, target)
    except FileNotFoundError:
        # An NFS client may retry a rename that already succeeded and report ENOENT: the target
        # was absent a moment ago and has a single writer, so if it is there now, this rename made it.
        return os.path.lexists(target)
    return True


def move_noreplace(
    source: StrPath, target: StrPath, *, source_dir: int | None = None, target_dir: int | None = None
) -> None:
    """Move a file only this process renames to ``target``, never replacing it (``FileExistsError``).

    ``RENAME_NOREPLACE`` where the file system has it, else ``link`` + ``unlink``,
    which refuses an existing target on every POSIX file system, NFS and GlusterFS
    included (a directory, which cannot be linked, is renamed after looking: its
    name is this process's own). Idempotent: a move interrupted between link and
    unlink is completed. ``source_dir`` and ``target_dir``: folder descriptors the
    names are relative to (``renameat``).
    """
    at = {"src_dir_fd": source_dir, "dst_dir_fd": target_dir}
    try:
        if _rename_noreplace(source, target, *(_AT_FDCWD if d is None else d for d in at.values())):
            return
        if stat.S_ISDIR(os.lstat(source, dir_fd=source_dir).st_mode):  # cannot be linked: look, then rename
            with contextlib.suppress(FileNotFoundError):
                os.lstat(target, dir_fd=target_dir)
                raise FileExistsError(errno.EEXIST, "File exists", os.fspath(target))
            os.rename(source, target, **at)
            return
        os.link(source, target, **at, follow_symlinks=False)
    except FileExistsError:  # a move interrupted after its link, by this or a client without renameat2
        if not os.path.samestat(os.lstat(source, dir_fd=source_dir), os.lstat(target, dir_fd=target_dir)):
            raise
    with contextlib.suppress(FileNotFoundError):
        os.unlink(source, dir_fd=source_dir)


def fsync_directory(path: StrPath | int) -> None:
    """Flush a folder, named or open (a descriptor, left open)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY) if not isinstance(path, int) else path
    try:
        os.fsync(fd)
    except OSError:
        pass  # some network file systems refuse fsync on a directory; their renames are synchronous
    finally:
        if fd is not path:
            os.close(fd)


class Durability:
    """Flushes at barriers. With ``enabled=False`` (``durability.fsync=false``) every flush is skipped."""

    def __init__(self, root: Path, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._root = root
        self._dirty_files: list[StrPath] = []
        self._dirty_dirs: set[str] = set()

    def wrote(self, path: StrPath) -> None:
        """``path`` got new content that must be on disk before it is renamed into place."""
        if self.enabled:
            self._dirty_files.append(path)

    def renamed(self, *paths: StrPath) -> None:
        """Entries in the parents of ``paths`` changed."""
        if self.enabled:
            self._dirty_dirs.update(os.path.dirname(os.fspath(p)) for p in paths)

    def changed(self, *directories: str) -> None:
        """Entries in ``directories`` changed (``renamed`` for callers that hold the directory already)."""
        if self.enabled:
            self._dirty_dirs.update(directories)

    def barrier(self) -> None:
        """Everything written or renamed so far is durable when this returns."""
        if not self.enabled or not (self._dirty_files or self._dirty_dirs):
            return
        if _syncfs is not None and len(self._dirty_files) + len(self._dirty_dirs) > 2:
            fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if _syncfs(fd) != 0:
                    raise OSError(ctypes.get_errno(), "syncfs failed", str(self._root))
            finally:
                os.close(fd)
        else:
            for path in self._dirty_files:
                with contextlib.suppress(FileNotFoundError):
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            for directory in self._dirty_dirs:
                with contextlib.suppress(FileNotFoundError):
                    fsync_directory(directory)
        self._dirty_files.clear()
        self._dirty_dirs.clear()


def write_file(path: StrPath, data: bytes, durability: Durability) -> None:
    """Create ``path`` (a temp name nobody else uses) with ``data``; durable after the next barrier."""
    fd = _create(path)
    try:
        write_all(fd, data)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)
    durability.wrote(path)


_LEASE = getattr(fcntl, "F_SETLEASE", None)  # Linux only: elsewhere no file is ever reused
_SPARE = "spare~"


class Spares:
    """Files this process is done with, kept in ``directory`` to become the next files it writes.

    A file queue creates one inode per activity and frees another; on ext4 without a journal a
    create right after many deletions costs 0.3-0.8 ms of kernel time (it steps over recently
    freed inodes one by one), against about 10 us for rewriting a file in place. So a finished
    claim's file is renamed here instead of deleted, and the next staged file is written into it.
    A spare is reused only if nobody else can write it: a regular file with one name, owned by
    this process's user and group as its new files are, that no other open file description
    refers to (the kernel grants a write lease only then); anything else is deleted and a new
    file created. Only on local file systems: a network client cannot see another machine's open
    files. Spares are named ``spare~WORKER~…`` (``worker``; none are kept without one); anyone may
    delete one at any time (``drop_left_by`` at the worker's start, ``sweep_tmp`` after an hour).
    """

    def __init__(self, directory: str, worker: str | None, limit: int = 64) -> None:
        self._directory = directory
        self._limit = limit if worker and _LEASE is not None and is_local(directory) else 0
        self._files: list[str] = []
        self._owner: tuple[int, int] | None = None  # (uid, gid) of the last file this process created
        self._serial = 0
        self._prefix = f"{_SPARE}{worker}~{os.getpid()}-{os.urandom(4).hex()}"
        self._mode = 0o644 & ~_umask() if self._limit else 0o644  # what write_file's files get

    @staticmethod
    def drop_left_by(directory: str, worker: str) -> None:
        """Delete every spare of ``worker`` (whose processes are all gone: the caller holds its lock)."""
        prefix = f"{_SPARE}{worker}~"
        with os.scandir(directory) as entries:
            names = [e.name for e in entries if e.name.startswith(prefix)]
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(f"{directory}/{name}")

    def keep(self, path: str) -> None:
        """``path`` is no longer wanted: keep it as a spare, or delete it (``FileNotFoundError`` if gone)."""
        if len(self._files) < self._limit:
            self._serial += 1
            spare = f"{self._directory}/{self._prefix}-{self._serial}.tmp"
            try:
                os.rename(path, spare)  # a fresh name of this process's own: nothing can be there
            except FileNotFoundError:
                if os.path.lexists(path):  # tmp/ is gone (deleted by hand): no spare, the file goes
                    os.unlink(path)
                    return
                raise
            self._files.append(spare)
        else:
            os.unlink(path)

    def write(self, path: str, data: bytes, durability: Durability) -> None:
        """``write_file``, into a spare when one is safe to reuse."""
        while self._files and self._owner is not None:
            if self._rewrite(self._files.pop(), path, data):
                durability.wrote(path)
                return
        write_file(path, data, durability)
        if self._owner is None and self._limit:
            st = os.lstat(path)
            self._owner = (st.st_uid, st.st_gid)

    def _rewrite(self, spare: str, path: str, data: bytes) -> bool:
        """Write ``data`` into ``spare`` and move it to ``path``; False if it was gone or unsafe to reuse.

        Checked and written under its name in ``tmp/``, which nobody opens: an open during the
        lease check would signal this process (``SIGIO``)."""
        try:
            fd = os.open(spare, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # swept away meanwhile, or read-only: its owner made it so
            with contextlib.suppress(OSError):
                os.unlink(spare)
            return False
        try:
            reusable = self._reusable(fd)
            if reusable:
                write_all(fd, data)
                os.ftruncate(fd, len(data))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(spare)
            raise
        finally:
            os.close(fd)
        if not reusable:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spare)
            return False
        try:
            return take(spare, path)  # False: swept away after the write
        except FileExistsError:
            self._files.append(spare)
            raise  # as write_file would

    def _reusable(self, fd: int) -> bool:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or (st.st_uid, st.st_gid) != self._owner:
            return False
        assert _LEASE is not None
        try:
            fcntl.fcntl(fd, _LEASE, fcntl.F_WRLCK)  # refused while anyone else has the file open
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EBUSY):
                self._limit = 0  # leases not offered here (NFS, FUSE): stop keeping spares
            return False
        fcntl.fcntl(fd, _LEASE, fcntl.F_UNLCK)
        if stat.S_IMODE(st.st_mode) != self._mode:
            os.fchmod(fd, self._mode)
        return True

    def drop(self) -> None:
        """Delete the spares (at exit)."""
        for spare in self._files:
            with contextlib.suppress(OSError):
                os.unlink(spare)
        self._files.clear()


_LOCAL_FILE_SYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "reiserfs", "bcachefs", "zfs", "tmpfs"}
)


def is_local(path: StrPath) -> bool:
    """Whether ``path`` is on a local file system, where a write lease sees every open of a file."""
    return filesystem_type(path) in _LOCAL_FILE_SYSTEMS


def _create(path: StrPath) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


def write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd`` (a write may take less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Bytes of a target's name its temp file keeps: 18 more make ``.NAME.RANDOM.tmp``, within NAME_MAX (255).
_TEMP_NAME_BYTES = 200


def temp_beside(target: Path, tag: str | None = None) -> Path:
    """A fresh hidden name beside ``target``, ``.NAME.RANDOM.tmp``, for a file to be renamed onto it;
    with ``tag`` (ASCII, at most 128 characters) ``.NAME.TAG.tmp``, the same each time. ``NAME`` is
    cut so that a target name as long as a file system allows still has one."""
    middle = os.urandom(6).hex() if tag is None else tag
    short = os.fsdecode(os.fsencode(target.name)[: _TEMP_NAME_BYTES - max(0, len(middle) - 12)])
    return target.with_name(f".{short}.{middle}.tmp")


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, tag: str | None = None) -> None:
    """Replace ``path`` with ``data``: readers see the old file or the new one, never part of one.

    For processors writing their own outputs; durable when it returns. ``path``
    is a ``str`` or path-like, ``data`` bytes or text (written as UTF-8). The
    directory must exist; an error names ``path``, never the hidden temp file
    (``.NAME.RANDOM.tmp`` beside it, removed on failure). With ``tag`` (the
    activity's id, say) the temp file is ``.NAME.TAG.tmp``, the same at every
    attempt: one a killed attempt left is replaced, not left to pile up.
    """
    target = Path(path)
    content = data.encode("utf-8") if isinstance(data, str) else data
    tmp = temp_beside(target, tag)
    if tag is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    try:
        publish(content, tmp, target, Durability(target.parent), replace=True)
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, str(target)) from exc


def publish(data: bytes, tmp: Path, final: Path, durability: Durability, *, replace: bool = False) -> None:
    """Write ``data`` at ``tmp`` and move it to ``final``, durable when this returns.

    Never replaces an existing ``final`` (``FileExistsError``) unless ``replace``.
    """
    write_file(tmp, data, durability)
    try:
        durability.barrier()
        if replace:
            os.replace(tmp, final)
        else:
            move_noreplace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    durability.renamed(final)
    durability.barrier()
