"""Notifications of new inbox entries, read from inotify directly.

A hint only: inotify sees what the local kernel does, not what other machines
write to a shared file system, so the worker still rescans the inbox. Read
here rather than through an observer thread, for two reasons measured in this
project: watchdog pairs ``IN_MOVED_FROM``/``IN_MOVED_TO`` through a 0.5 s delay
queue (a new file was seen half a second late), and its threads took a fifth of
the daemon's CPU, mostly on the daemon's own claims out of the inbox. Only
arrivals are asked for here, so claims cost nothing.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from pathlib import Path

from . import _libc

_IN_CLOEXEC = 0o2000000
_IN_NONBLOCK = 0o4000
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
# Arrivals: a rename into the folder, a file written in place (cp, editors), and any other new entry.
_ARRIVALS = _IN_MOVED_TO | _IN_CLOSE_WRITE | _IN_CREATE
_HEADER = struct.Struct("iIII")


class Arrivals:
    """Names that arrived in one directory since the last ``read``; ``fileno`` is pollable."""

    def __init__(self, directory: Path) -> None:
        init = _libc.function("inotify_init1", [ctypes.c_int])
        add = _libc.function("inotify_add_watch", [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32])
        if init is None or add is None:
            raise OSError(errno.ENOSYS, "inotify is not available on this system")
        fd: int = init(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_init1: {os.strerror(code)}")
        if add(fd, os.fsencode(directory), _ARRIVALS) < 0:
            code = ctypes.get_errno()
            os.close(fd)
            raise OSError(code, f"inotify_add_watch: {os.strerror(code)}", str(directory))
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def read(self) -> list[str] | None:
        """The names that arrived (maybe none); ``None`` when events were lost and only a rescan will do."""
        names: list[str] = []
        complete = True
        while True:
            try:
                buffer = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                break
            offset = 0
            while offset + _HEADER.size <= len(buffer):
                _wd, mask, _cookie, length = _HEADER.unpack_from(buffer, offset)
                start = offset + _HEADER.size
                offset = start + length
                if mask & (_IN_Q_OVERFLOW | _IN_IGNORED):
                    complete = False
                elif length:
                    names.append(os.fsdecode(buffer[start:offset].rstrip(b"\0")))
        return names if complete else None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
