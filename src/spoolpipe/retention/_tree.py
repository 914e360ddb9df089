"""Entries as trees reached by directory descriptors: walked, stamped and removed, never following a link."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator

#: Deepest directory tree inside an ``invalid/`` entry that is archived (deeper ones stay in place).
MAX_DEPTH = 64
#: What an entry looked like when it was archived: (path inside it, mode, inode, size, mtime) per node.
Stamp = tuple[tuple[str, int, int, int, int], ...]


class Skipped(Exception):
    """This entry cannot be archived (it stays in place); the message says why."""


def node(rel: str, st: os.stat_result) -> tuple[str, int, int, int, int]:
    return rel, st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns


def open_dir(name: str, dir_fd: int | None) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)


def walk(dir_fd: int, name: str) -> Iterator[tuple[str, int, str, os.stat_result]]:
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
        fd = open_dir(name, dir_fd)
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
                sub = open_dir(child, fd)
                stack.append((sub, f"{rel}/{child}", iter(sorted(os.listdir(sub)))))
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def stamp(dir_fd: int, name: str) -> Stamp:
    return tuple(node(rel, st) for rel, _, _, st in walk(dir_fd, name))


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


def remove(dir_fd: int, name: str) -> None:
    """Delete the entry ``name`` in ``dir_fd``: a file, or a whole tree (children first), by descriptors.

    A tree deeper than ``MAX_DEPTH`` is found so by walking it first: :class:`Skipped`, nothing deleted.
    """
    for _ in walk(dir_fd, name):
        pass
    _remove(dir_fd, name, 0)


def _remove(dir_fd: int, name: str, depth: int) -> None:
    st = os.lstat(name, dir_fd=dir_fd)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    if depth > MAX_DEPTH:  # it grew deeper since it was walked
        raise Skipped(f"more than {MAX_DEPTH} directories deep")
    fd = open_dir(name, dir_fd)
    try:
        for child in os.listdir(fd):
            _remove(fd, child, depth + 1)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def fsync_dir_fd(dir_fd: int) -> None:
    with contextlib.suppress(OSError):  # some network file systems refuse it; their unlinks are synchronous
        os.fsync(dir_fd)
