"""Read-only views of a repository: what ``status``, ``list`` and ``inspect`` print (and the page serves).

Each returns one JSON-serialisable document whose fields are a stable contract,
described in ``docs/operations.md`` ("Seeing what happens"). Everything read from
the repository is untrusted: names, types and reasons come back escaped
(``activity.printable``), and nothing a file holds can make a view fail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attributes
from .listing import STATES, State, entries

if TYPE_CHECKING:
    from .status import status
    from .story import story

__all__ = ["STATES", "State", "entries", "status", "story"]

#: Imported on first use: every command's parser needs ``STATES``, only two commands these.
__getattr__ = attributes(__name__, {"status": ".status", "story": ".story"})
