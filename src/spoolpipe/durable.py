"""Atomic, durable file writes: temp file on the same file system, fsync, rename, fsync the directory.

Writes can be grouped: a ``Durability`` collects the directories whose entries
changed and flushes them together at a barrier, so a batch of commits costs a
few flushes instead of two per file.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import cast


def _load_syncfs() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return cast("Callable[[int], int]", function)


_syncfs = _load_syncfs()


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some network file systems refuse fsync on a directory; their renames are synchronous
    finally:
        os.close(fd)


class Durability:
    """Flushes at barriers. With ``enabled=False`` (``durability.fsync=false``) every flush is skipped."""

    def __init__(self, root: Path, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._root = root
        self._dirty_files: list[Path] = []
        self._dirty_dirs: set[Path] = set()

    def wrote(self, path: Path) -> None:
        """``path`` got new content that must be on disk before it is renamed into place."""
        if self.enabled:
            self._dirty_files.append(path)

    def renamed(self, *paths: Path) -> None:
        """Entries in the parents of ``paths`` changed."""
        if self.enabled:
            self._dirty_dirs.update(p.parent for p in paths)

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


def write_file(path: Path, data: bytes, durability: Durability) -> None:
    """Create ``path`` (a temp name nobody else uses) with ``data``; durable after the next barrier."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)
    durability.wrote(path)


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Replace ``path`` with ``data``: readers see the old file or the new one, never part of one.

    For processors writing their own outputs; durable when it returns. ``path``
    is a ``str`` or path-like, ``data`` bytes or text (written as UTF-8). The
    directory must exist; an error names ``path``, never the hidden temp file
    (``.NAME.RANDOM.tmp`` beside it, removed on failure).
    """
    target = Path(path)
    content = data.encode("utf-8") if isinstance(data, str) else data
    tmp = target.with_name(f".{target.name}.{os.urandom(6).hex()}.tmp")
    try:
        publish(content, tmp, target, Durability(target.parent))
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, str(target)) from exc


def publish(data: bytes, tmp: Path, final: Path, durability: Durability) -> None:
    """Write ``data`` at ``tmp`` and rename it to ``final``, durable when this returns."""
    write_file(tmp, data, durability)
    try:
        durability.barrier()
        os.rename(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    durability.renamed(final)
    durability.barrier()
