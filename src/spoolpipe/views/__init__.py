"""Read-only views of a repository: what ``status``, ``list`` and ``inspect`` print (and the page serves).

Each returns one JSON-serialisable document whose fields are a stable contract,
described in ``docs/operations.md`` ("Seeing what happens"). Everything read from
the repository is untrusted: names, types and reasons come back escaped
(``activity.printable``), and nothing a file holds can make a view fail.
"""

from __future__ import annotations

from .listing import STATES, State, entries
from .status import status
from .story import story

__all__ = ["STATES", "State", "entries", "status", "story"]
