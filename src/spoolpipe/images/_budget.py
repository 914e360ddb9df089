"""The memory budget: image work in one process waits until its decoded pixels fit."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

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
