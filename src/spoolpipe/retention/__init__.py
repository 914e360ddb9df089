"""Cleaning up: records, invalid entries and attempt logs past their ``retention.*`` limit.

Expired entries go into ``archive/STATE-YYYY-MM-DD.tar.gz`` (``retention.archive``),
one per state and UTC day of the entry's modification time, or are deleted, under
one lock for the whole repository. A worker runs each purge in a process of its
own (``spoolpipe purge --scheduled``), so the daemon keeps dispatching however
big the backlog, and a purge killed at any point loses nothing.

- ``_expiry``: the pure core: entry names, expiry, archive names, a purge's report;
- ``_tree``: entries walked, stamped and removed by directory descriptors;
- ``_archive``: the tar.gz appending and its journal (crash safety);
- ``_lock``: ``locks/~retention.lock``;
- ``_purge``: a purge, and the ``spoolpipe purge`` command;
- ``_scheduled``: :class:`ScheduledPurges`, what the worker's loop calls.

What needs ``tarfile`` and ``gzip`` (``END_MEMBER``, ``run_command``) is imported
on first use: a worker imports this package, and most never write an archive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attributes
from ._expiry import (
    STATES,
    Entry,
    State,
    archive_name,
    by_archive,
    entry_id,
    expired,
    is_entry,
    referenced_ids,
)
from ._lock import retention_lock
from ._scheduled import ScheduledPurges
from ._tree import still_archived

if TYPE_CHECKING:
    from ._archive import END_MEMBER
    from ._purge import run_command

__all__ = [
    "END_MEMBER",
    "STATES",
    "Entry",
    "ScheduledPurges",
    "State",
    "archive_name",
    "by_archive",
    "entry_id",
    "expired",
    "is_entry",
    "referenced_ids",
    "retention_lock",
    "run_command",
    "still_archived",
]

__getattr__ = attributes(__name__, {"END_MEMBER": "._archive", "run_command": "._purge"})
