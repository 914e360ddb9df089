"""The memory budget: image work in one process waits until its decoded pixels fit."""

from __future__ import annotations

import ctypes
import os
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from .. import _libc
from ..config import automatic_megapixels

WORKING_COPIES: Final = 3
"""A recipe run holds this many times its decoded megapixels: source, output in progress, op result."""


class PixelBudget:
    """A weighted semaphore counted in megapixels, shared by the image jobs of one process.

    ``hold(mpx)`` waits until the pixels fit under ``capacity``. Waiters are served
    in arrival order, so a large image is not starved by a stream of small ones;
    an image larger than the whole capacity runs once nothing else is held,
    alone, instead of waiting forever. A capacity of 0 means automatic.
    """

    def __init__(self, capacity: float = 0) -> None:
        self._cond = threading.Condition()
        self._capacity = self._checked(capacity)
        self._in_use = 0.0
        self._holders = 0
        self._queue: deque[object] = deque()

    @staticmethod
    def _checked(capacity: float) -> float:
        if not capacity >= 0:
            raise ValueError(f"capacity must be >= 0 megapixels, got {capacity}")
        return capacity or automatic_megapixels()

    @property
    def capacity(self) -> float:
        return self._capacity

    @capacity.setter
    def capacity(self, megapixels: float) -> None:
        with self._cond:
            self._capacity = self._checked(megapixels)
            self._cond.notify_all()

    @property
    def in_use(self) -> float:
        return self._in_use

    @contextmanager
    def hold(self, megapixels: float) -> Iterator[None]:
        if not megapixels >= 0:
            raise ValueError(f"megapixels must be >= 0, got {megapixels}")
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                self._cond.wait_for(
                    lambda: (
                        self._queue[0] is ticket
                        and (self._holders == 0 or self._in_use + megapixels <= self._capacity)
                    )
                )
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()
            self._holders += 1
            self._in_use += megapixels
        try:
            yield
        finally:
            with self._cond:
                self._holders -= 1
                self._in_use = self._in_use - megapixels if self._holders else 0.0
                self._cond.notify_all()


PIXEL_BUDGET: Final = PixelBudget()
"""The process-wide budget ``run_recipe`` uses by default (automatic capacity)."""


# glibc's mallopt parameters (malloc.h); HEAP_KEPT // 2 is the ceiling of its dynamic mmap threshold (64-bit).
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
HEAP_KEPT: Final = 64 * 1024 * 1024
"""Freed heap a process doing image work keeps for its next image instead of returning it (glibc)."""
_heap_kept: bool | None = None


def keep_freed_heap() -> bool:
    """Let the next image reuse this one's freed pixel memory instead of faulting in fresh pages.

    Pillow allocates pixels with ``malloc``, in blocks of at most 16 MB. glibc
    gives the top of its heap back to the kernel once more is free there than
    its trim threshold, which it keeps at twice the largest ``mmap`` chunk
    freed so far (at first one decoded image). A job holds more than that at
    once (source, resampling's intermediate, output: 29 MB for a 12 Mpx JPEG
    decoded at 2000x1500 and shrunk to 1600 px), so at the end of every job
    all of it went back and the next job faulted it in again: 7,100 page
    faults and 8-12 ms of kernel time per photo, 72 ms instead of 60. Pinned
    at glibc's own ceilings (mmap threshold 32 MB, above Pillow's blocks; trim
    threshold ``HEAP_KEPT``), a process keeps up to ``HEAP_KEPT`` of freed
    heap for its next image. Applied once per process, at its first decode;
    returns whether the settings are in effect (glibc only; elsewhere nothing
    changes).
    """
    global _heap_kept
    if _heap_kept is None:
        try:
            glibc = bool(os.confstr("CS_GNU_LIBC_VERSION"))
        except (AttributeError, ValueError, OSError):  # no confstr, or not glibc
            glibc = False
        mallopt = _libc.function("mallopt", [ctypes.c_int, ctypes.c_int]) if glibc else None
        # The mmap threshold first: setting either one freezes glibc's dynamic threshold where it is.
        _heap_kept = bool(
            mallopt is not None
            and mallopt(_M_MMAP_THRESHOLD, HEAP_KEPT // 2)
            and mallopt(_M_TRIM_THRESHOLD, HEAP_KEPT)
        )
    return _heap_kept
