"""Read-only views of a repository: what ``status``, ``list`` and ``inspect`` print (and the page serves).

Each returns one JSON-serialisable document whose fields are a stable contract,
described in ``docs/operations.md`` ("Seeing what happens"). Everything read from
the repository is untrusted: names, types and reasons come back escaped
(``activity.printable``), and nothing a file holds can make a view fail.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .listing import STATES, State, entries

if TYPE_CHECKING:
    from .status import status
    from .story import story

__all__ = ["STATES", "State", "entries", "status", "story"]

#: Imported on first use: every command's parser needs ``STATES``, only two commands these.
_ON_FIRST_USE = {"status": ".status", "story": ".story"}


def __getattr__(name: str) -> Any:
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_ON_FIRST_USE[name], __name__), name)
    globals()[name] = value  # in place of the submodule of the same name the import bound here
    return value
