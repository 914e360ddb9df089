"""The C library's functions that Python's ``os`` lacks (syncfs, renameat2, inotify, prctl...).

Looked up in the symbols already loaded into this process (``dlopen(NULL)``), which
include the C library: no ``ctypes.util.find_library``, whose import and search cost
more of a worker's start-up than everything else it does before its first activity.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

PR_SET_PDEATHSIG = 1
"""``prctl`` option (linux/prctl.h): the signal a process gets when its parent dies."""


@functools.cache
def _loaded() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def function(name: str, argtypes: list[Any], restype: Any = ctypes.c_int) -> Any | None:
    """``name`` from the C library with errno kept (``ctypes.get_errno``); None where there is none."""
    try:
        found = getattr(_loaded(), name)
    except AttributeError:  # not in this C library (or none was loaded: None has no such attribute)
        return None
    found.argtypes = argtypes
    found.restype = restype
    return found
