"""The C library's functions that Python's ``os`` lacks (syncfs, renameat2, inotify).

Looked up in the symbols already loaded into this process (``dlopen(NULL)``), which
include the C library: no ``ctypes.util.find_library``, whose import and search cost
more of a worker's start-up than everything else it does before its first activity.
"""

from __future__ import annotations

import ctypes
from typing import Any


def function(name: str, argtypes: list[Any], restype: Any = ctypes.c_int) -> Any | None:
    """``name`` from the C library with errno kept (``ctypes.get_errno``); None where there is none."""
    try:
        found = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    found.argtypes = argtypes
    found.restype = restype
    return found
