"""javaproperties' reader and writer, imported without its XML support.

``import javaproperties`` also imports its XML module, and with it
``urllib.request``, ``http.client``, ``email`` and ``ssl``: 30 of the 200 ms a
worker took to start on a small host, for a format spoolpipe never reads. The
two submodules of the line format are loaded here under a bare stand-in for the
package (its ``__init__`` not run), which is then dropped again: whoever
imports ``javaproperties`` later gets the whole package, built around these
same module objects, so its classes and exceptions are the ones used here.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import TYPE_CHECKING

_PACKAGE = "javaproperties"


def _line_format() -> tuple[ModuleType, ModuleType]:
    if _PACKAGE in sys.modules:  # imported in full already (by a processor, say)
        return importlib.import_module(f"{_PACKAGE}.reading"), importlib.import_module(f"{_PACKAGE}.writing")
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None:
        raise ModuleNotFoundError(f"No module named {_PACKAGE!r}", name=_PACKAGE)
    sys.modules[_PACKAGE] = importlib.util.module_from_spec(spec)
    try:
        return importlib.import_module(f"{_PACKAGE}.reading"), importlib.import_module(f"{_PACKAGE}.writing")
    finally:
        del sys.modules[_PACKAGE]


if TYPE_CHECKING:
    from javaproperties import reading, writing
else:
    reading, writing = _line_format()

__all__ = ["reading", "writing"]
