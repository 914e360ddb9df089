"""The inbox as one worker knows it: names to try, in order, read only when their turn comes.

The index is filled by a full listing of ``inbox/`` at start-up and every
``scan.interval-seconds`` (the only way to see files other machines wrote) and,
in between, by the names inotify reports as they arrive, so a new file is
looked at at once without listing the whole inbox again. A file is read only
when it is next in line, so a worker with a backlog of 100,000 starts its first
activity at once and holds names, not documents. Delayed activities wait in
the order of their ``not_before``; types this worker does not run are set aside
until the configuration changes.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .activity import Activity, is_ignored, parse_inbox_name
from .repository import Rejected, Repository

#: A waiting entry: its due time (0 for now) and its name. Heap order: due, then name (ULIDs: age).
_Entry = tuple[float, str]
# Entries refused for capacity looked past per call: bounds the work of one call on a deep inbox.
_LOOKAHEAD = 256


@dataclass(frozen=True)
class Delayed:
    """A handled activity waiting for its ``not_before``."""

    id: str
    type: str
    due: float


class Intake:
    """Which inbox names to consider next; ``take`` reads them and says what may run."""

    def __init__(self, repo: Repository, *, limit: Callable[[], int], settle: Callable[[], float]) -> None:
        self._repo = repo
        self._limit = limit
        self._settle = settle
        self._parsed: dict[str, Activity] = {}  # read, but refused for now (its type was at capacity)
        self._known: set[str] = set()
        self._heap: list[_Entry] = []
        self._delayed: dict[str, Delayed] = {}
        self._unhandled: dict[str, str] = {}  # name -> type nobody here runs
        self._suspects: dict[str, tuple[tuple[int, int, int], float]] = {}

    # -- what is there -------------------------------------------------------------------------

    def rescan(self) -> None:
        """List the inbox: new names join the index, vanished ones leave it."""
        present = set(self._repo.inbox_names())
        gone = self._known - present
        self._known -= gone
        for name in gone:
            self._parsed.pop(name, None)
            self._delayed.pop(name, None)
            self._unhandled.pop(name, None)
            self._suspects.pop(name, None)
        self.add(present - self._known)
        for name in self._suspects:  # not yet parsable: look again
            heapq.heappush(self._heap, (0.0, name))

    def add(self, names: Iterable[str]) -> None:
        """Names that arrived (inotify) or were found (a listing)."""
        for name in names:
            if name in self._known or is_ignored(name):
                if name in self._suspects:  # rewritten in place: look again
                    heapq.heappush(self._heap, (0.0, name))
                continue
            self._known.add(name)
            queued = parse_inbox_name(name)
            due = queued.not_before_ms / 1000 if queued.not_before_ms is not None else 0.0
            heapq.heappush(self._heap, (due, name))

    def forget(self, name: str) -> None:
        """A name handed out: it is claimed (or gone) unless it comes back under a new name."""
        self._known.discard(name)

    def reconsider(self, handled: Callable[[str], bool]) -> None:
        """The configuration changed: set-aside types may be runnable now."""
        for name, type_ in list(self._unhandled.items()):
            if handled(type_):
                del self._unhandled[name]
                heapq.heappush(self._heap, (0.0, name))

    # -- what may run ------------------------------------------------------------------------------

    def take(
        self,
        now: float,
        admit: Callable[[Activity], bool],
        handled: Callable[[str], bool],
        want: int,
        quarantine: Callable[[str, str], None],
    ) -> list[tuple[str, Activity]]:
        """Up to ``want`` activities due by ``now`` (the shared clock) that ``admit`` lets run, in order.

        Entries ``admit`` refuses (their type is at its concurrency) keep their
        place, parsed, for the next call; at most ``_LOOKAHEAD`` of them are
        looked past per call. Unparsable files are quarantined once settled.
        """
        chosen: list[tuple[str, Activity]] = []
        refused: list[_Entry] = []
        while self._heap and len(chosen) < want and len(refused) < _LOOKAHEAD and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            name = entry[1]
            if name not in self._known:
                continue
            found = self._parsed.pop(name, None) or self._repo.read(name, limit=self._limit())
            if found is None:
                self._known.discard(name)
                continue
            if isinstance(found, Rejected):
                if found.stamp is None or self._settled(name, found.stamp, now):
                    self._suspects.pop(name, None)
                    self._known.discard(name)
                    quarantine(name, found.reason)
                continue
            self._suspects.pop(name, None)
            if not handled(found.type):
                self._unhandled[name] = found.type
                continue
            if found.not_before is not None and found.not_before > now:
                self._delayed[name] = Delayed(found.id, found.type, found.not_before)
                heapq.heappush(self._heap, (found.not_before, name))
                continue
            self._delayed.pop(name, None)
            if not admit(found):
                self._parsed[name] = found
                refused.append(entry)
                continue
            chosen.append((name, found))
        for entry in refused:
            heapq.heappush(self._heap, entry)
        return chosen

    def _settled(self, name: str, stamp: tuple[int, int, int], now: float) -> bool:
        """Whether a file that does not parse is done being written, so it may be quarantined.

        Its modification time must be ``inbox.settle-seconds`` old by the shared
        file system's clock, and it must have stayed unchanged that long while this
        worker watched it: a writer whose clock is behind cannot make a file it is
        still writing look old.
        """
        settle = self._settle()
        seen = self._suspects.get(name)
        watched = time.monotonic()
        if seen is None or seen[0] != stamp:
            self._suspects[name] = (stamp, watched)
            watched_for = 0.0
        else:
            watched_for = watched - seen[1]
        return watched_for >= settle and now - stamp[2] / 1e9 >= settle

    # -- what is left --------------------------------------------------------------------------------

    def next_due(self) -> float:
        """When the earliest waiting entry is due (0: now; inf: nothing waits)."""
        return self._heap[0][0] if self._heap else float("inf")

    def delayed(self, now: float, handled: Callable[[str], bool]) -> list[Delayed]:
        """The handled activities waiting for a later time; reads those known only by name so far."""
        for due, name in self._heap:
            if (
                due > now
                and name in self._known
                and name not in self._delayed
                and name not in self._unhandled
            ):
                found = self._repo.read(name, limit=self._limit())
                if isinstance(found, Activity):
                    if handled(found.type):
                        self._delayed[name] = Delayed(found.id, found.type, max(due, found.not_before or 0.0))
                    else:
                        self._unhandled[name] = found.type
        return [d for name, d in self._delayed.items() if name in self._known and d.due > now]

    def set_aside(self) -> set[str]:
        """The types of the entries set aside until ``reconsider`` (not run here for now)."""
        return {type_ for name, type_ in self._unhandled.items() if name in self._known}

    def unsettled(self) -> int:
        """Files that do not parse yet (maybe still being written)."""
        return len(self._suspects)

    def __len__(self) -> int:
        return len(self._known)
