"""Bounded, non-blocking reads of files anyone may have put into a repository."""

from __future__ import annotations

import contextlib
import os
import stat
import time
from pathlib import Path
from typing import Any

from ..activity import InvalidActivity, format_time, parse_document, parse_time, printable
from ..repository import Repository, filesystem_now
from ..untrusted import read_regular

#: Largest record a view reads (a result may be 1 MiB, its activity's data as much again).
RECORD_BYTES = 8 << 20
#: Longest ``reason.txt`` of an invalid entry read.
_REASON_BYTES = 64 << 10


def shared_now(repo: Repository) -> float:
    """Now by the shared file system's clock: ages are judged by the clock every worker uses.

    Where the probe cannot be written (a read-only mount), the local clock has to do.
    """
    try:
        return filesystem_now(repo.tmp / ".clock-status")
    except OSError:
        return time.time()


def read_bytes(path: Path | str, limit: int) -> bytes | None:
    """At most ``limit`` bytes of a regular file (None otherwise), never following a link or blocking
    on a FIFO."""
    try:
        return read_regular(path, limit)[0]
    except OSError:
        return None


def invalid_reason(path: Path) -> str | None:
    """The first line of an ``invalid/`` entry's ``reason.txt``, escaped."""
    raw = read_bytes(path / "reason.txt", _REASON_BYTES)
    if raw is None:
        return None
    lines = raw.decode("utf-8", "surrogateescape").splitlines()
    return printable(lines[0]) if lines else ""


def read_document(path: Path | str, limit: int = RECORD_BYTES) -> dict[str, Any] | None:
    """A JSON object file (strict, as activities are parsed), or None when it is not one."""
    raw = read_bytes(path, limit)
    if raw is None:
        return None
    try:
        return parse_document(raw)
    except InvalidActivity:
        return None


def tail(path: Path | str, max_bytes: int, max_lines: int) -> list[str] | None:
    """The last lines of a text file, each escaped; None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        start = max(0, st.st_size - max_bytes)
        raw = os.pread(fd, max_bytes, start)
    except OSError:
        return None
    finally:
        os.close(fd)
    lines = raw.decode("utf-8", "surrogateescape").splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # the first one is cut
    return [printable(line) for line in lines[-max_lines:]]


def cut(value: str, chars: int) -> str:
    """``value``, or its first ``chars - 1`` characters and a visible "…" when it is longer."""
    return value if len(value) <= chars else value[: chars - 1] + "…"


def text(value: object, chars: int | None = None) -> str | None:
    """A string from an untrusted document, escaped (cut to ``chars`` first: escaping megabytes takes
    seconds); None for anything else."""
    if not isinstance(value, str):
        return None
    return printable(value if chars is None else cut(value, chars))


def integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def moment(value: object) -> float | None:
    """An ISO-8601 time from an untrusted document as epoch seconds; None if it is not one."""
    with contextlib.suppress(InvalidActivity, OverflowError, ValueError, OSError):
        return parse_time(value)
    return None


def age(now: float, then: float | None) -> float | None:
    return None if then is None else round(max(0.0, now - then), 1)


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    try:
        return format_time(epoch)
    except (OverflowError, ValueError, OSError):
        return None


def lstat(path: Path | str) -> os.stat_result | None:
    """The entry's own status (a link is not followed); None when it is gone or unreadable."""
    try:
        return os.lstat(path)
    except OSError:
        return None


def names(directory: Path) -> list[str]:
    """Every entry of a directory (an absent directory has none)."""
    try:
        with os.scandir(directory) as found:
            return [e.name for e in found]
    except FileNotFoundError:
        return []
