"""Reading files that anyone with write access to the repository may have put there.

A name in ``running/``, ``failed/`` or ``logs/`` may be a FIFO (``open`` waits for
a writer for ever), a link out of the repository (its content disclosed, or its
mtime reset by the clock probe), or ``/dev/zero`` (read whole, the memory
fills). Every such read goes through :func:`read_regular`, and every file of
spoolpipe's own under a fixed name (a probe, a heartbeat's temp file) is opened
by :func:`open_own`.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class NotARegularFile(OSError):
    """The name is a link, a FIFO, a device or a folder, or the file is larger than asked for."""


def kind_of(mode: int) -> str:
    """What a file that is not an activity file is, in a reason's words."""
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


def read_regular(path: str | Path, limit: int) -> tuple[bytes, os.stat_result]:
    """The bytes of the regular file at ``path`` and its status, if it holds at most ``limit`` bytes.

    Never follows a link and never waits: :class:`NotARegularFile` says what is there instead
    (a link, a FIFO, a device, a folder, or too many bytes); other ``OSError`` as ``open`` raises
    them (``FileNotFoundError``...).
    """
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotARegularFile(errno.ELOOP, f"is {kind_of(stat.S_IFLNK)}") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFile(errno.EINVAL, f"is {kind_of(st.st_mode)}")
        if st.st_size > limit:
            raise NotARegularFile(errno.EFBIG, f"is {st.st_size} bytes, more than {limit}")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:  # it may grow while read: never more than limit + 1 bytes
            chunk = os.read(fd, min(max(st.st_size - size + 1, 1 << 16), limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise NotARegularFile(errno.EFBIG, f"is more than {limit} bytes")
        return b"".join(chunks), st
    finally:
        os.close(fd)


_OWN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
#: What ``open`` says of a link, a FIFO with no reader, a folder or a running program in the way.
_IN_THE_WAY = (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.ETXTBSY)


def open_own(path: str | Path, flags: int = 0) -> int:
    """A descriptor for writing spoolpipe's own file at ``path`` (created if need be, ``flags`` added):
    a link, FIFO or device put under that name is removed, never written through."""
    try:
        fd = os.open(path, _OWN_FLAGS | flags, 0o644)
    except OSError as exc:
        if exc.errno not in _IN_THE_WAY:
            raise
        os.unlink(path)  # a folder stays: IsADirectoryError
        fd = os.open(path, _OWN_FLAGS | os.O_EXCL | flags, 0o644)
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a device: left alone
        os.close(fd)
        os.unlink(path)
        fd = os.open(path, _OWN_FLAGS | os.O_EXCL | flags, 0o644)
    return fd
