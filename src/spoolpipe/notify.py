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
from collections.abc import Callable
from pathlib import Path

from . import _libc

_IN_CLOEXEC = 0o2000000
_IN_NONBLOCK = 0o4000
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_UNMOUNT = 0x2000
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_DONT_FOLLOW = 0x02000000
# Arrivals: a rename into the folder, a file written in place (cp, editors), and any other new entry;
# and the folder itself deleted or moved away (unmounted and ignored come unasked). A link in the
# inbox's place is not followed: the names of the folder it points to are not the inbox's.
_ARRIVALS = _IN_MOVED_TO | _IN_CLOSE_WRITE | _IN_CREATE | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_DONT_FOLLOW
# The watch no longer is on the folder at the path: watched again, and what arrived meanwhile is unknown.
_WATCH_GONE = _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_UNMOUNT | _IN_IGNORED
_HEADER = struct.Struct("iIII")


class Arrivals:
    """Names that arrived in one directory since the last ``read``; ``fileno`` is pollable.

    The watch follows the folder, not its path: once the folder is deleted, moved away or its file
    system unmounted, the path is watched again (at every ``read`` until it exists), or a worker
    whose inbox was made again would hear nothing more for the rest of its life.
    """

    def __init__(self, directory: Path) -> None:
        init = _libc.function("inotify_init1", [ctypes.c_int])
        add = _libc.function("inotify_add_watch", [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32])
        remove = _libc.function("inotify_rm_watch", [ctypes.c_int, ctypes.c_int])
        if init is None or add is None or remove is None:
            raise OSError(errno.ENOSYS, "inotify is not available on this system")
        self._add: Callable[[int, bytes, int], int] = add
        self._remove: Callable[[int, int], int] = remove
        fd: int = init(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_init1: {os.strerror(code)}")
        self._fd = fd
        self._path = os.fsencode(directory)
        if not self._watch():
            code = ctypes.get_errno()
            os.close(fd)
            raise OSError(code, f"inotify_add_watch: {os.strerror(code)}", str(directory))

    def _watch(self) -> bool:
        self._wd = self._add(self._fd, self._path, _ARRIVALS)
        return self._wd >= 0

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
                wd, mask, _cookie, length = _HEADER.unpack_from(buffer, offset)
                start = offset + _HEADER.size
                offset = start + length
                if mask & _IN_Q_OVERFLOW:
                    complete = False
                elif mask & _WATCH_GONE:
                    complete = False
                    if wd == self._wd:  # not an earlier watch's last word
                        self._remove(self._fd, wd)  # kept on a folder moved away: no longer ours
                        self._wd = -1
                elif length and wd == self._wd:
                    names.append(os.fsdecode(buffer[start:offset].rstrip(b"\0")))
        if self._wd < 0 and self._watch():
            complete = False  # what arrived while nothing was watched
        return names if complete else None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
