"""The inbox as one worker knows it: names to try, in order, read only when their turn comes.

The index is filled by a full listing of ``inbox/`` at start-up and every
``scan.interval-seconds`` (the only way to see files other machines wrote) and,
in between, by the names inotify reports as they arrive, so a new file is
looked at at once without listing the whole inbox again. A file is read only
when it is next in line, so a worker with a backlog of 100,000 starts its first
activity at once and holds names, not documents. Delayed activities wait in
the order of their ``not_before``; types this worker does not run are set aside
until the configuration changes.

Activities due now go by priority, highest first, then by name (spoolpipe's
ids sort by age). Until a file is read its priority is the one its name says
(``~pP``; none: the default), so that ordering costs no read; once read, its
document's priority decides: a file whose document asks for less goes back in
line at that priority, one asking for more runs at once (it is at the front
already), and one put back (delayed, at capacity, its type set aside) waits
at its document's priority.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from .activity import DEFAULT_PRIORITY, Activity, is_ignored, parse_inbox_name
from .repository import Found, Rejected, Repository, made_again

log = logging.getLogger("spoolpipe.worker")

#: An entry due now: minus its priority, then its name. Heap order: highest priority, then name (ULIDs: age).
_Entry = tuple[int, str]
#: An entry due later: its due time, minus its priority, and its name.
_Later = tuple[float, int, str]
# Entries refused looked past per call: bounds the work of one call on a deep inbox.
_LOOKAHEAD = 256
# Entries of one type asked per call when each is refused on its own (an image too large for the
# budget left, a copy of an id in flight): then the rest of that type waits for the next call.
_TRIES = 8
#: What ``admit`` says of one activity: it runs; it waits; nothing of its type may run now (its
#: concurrency reached, its circuit open): the rest of that type is not asked in the same call.
Verdict = Literal["run", "wait", "type waits"]


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
        # Entries read and refused for now (their type at its concurrency, the image budget...), out of
        # the line, in a line of their type: asked again head first (read again then), they never stand
        # in front of other types (a deep backlog of one type at its concurrency hid them all). Names
        # only: a backlog of documents is never held.
        self._waiting: dict[str, list[_Entry]] = {}
        self._waiting_of: dict[str, str] = {}  # name -> the type whose line it waits in
        self._known: set[str] = set()
        self._heap: list[_Entry] = []  # due now
        self._later: list[_Later] = []  # due at a time the name or the document gave
        self._ranks: dict[str, int] = {}  # name -> its document's priority, where its name says another
        self._delayed: dict[str, Delayed] = {}
        self._unhandled: dict[str, str] = {}  # name -> type nobody here runs
        self._suspects: dict[str, tuple[tuple[int, int, int], float]] = {}
        # name -> inode of the file set aside (unhandled or delayed): a listing that shows another one
        # under that name (published again with a rename) has it read again
        self._inodes: dict[str, int] = {}
        self._held: set[str] = set()  # their quarantine failed: left alone until the next listing
        #: The last ``take`` stopped at ``_LOOKAHEAD`` refused entries with more in line: take again soon.
        self.cut_short = False

    # -- what is there -------------------------------------------------------------------------

    def rescan(self) -> None:
        """List the inbox: new names join the index, vanished ones leave it."""
        try:
            listing = self._repo.inbox_entries()
        except FileNotFoundError:
            if not self._repo.restore(self._repo.inbox):
                raise  # the whole repository is away (its mount gone), or a file is in the way
            log.warning("%s", made_again("inbox"))
            listing = {}
        present = listing.keys()
        self._held.clear()
        gone = self._known - present
        self._known -= gone
        for name in gone:
            self._ranks.pop(name, None)
            self._waiting_of.pop(name, None)
            self._delayed.pop(name, None)
            self._unhandled.pop(name, None)
            self._suspects.pop(name, None)
            self._inodes.pop(name, None)
        self.add(present - self._known)
        for name in self._suspects:  # not yet parsable: look again
            self._queue(name)
        for name, inode in list(self._inodes.items()):  # replaced, or numbered otherwise by the listing
            if listing.get(name, inode) != inode:
                self._read_again(name)
                self._inodes[name] = listing[name]

    def add(self, names: Iterable[str]) -> None:
        """Names that arrived (inotify) or were found (a listing)."""
        for name in names:
            if name in self._held:  # put back by a quarantine that failed (inotify saw it come back)
                continue
            if name in self._known or is_ignored(name):
                if name in self._waiting_of:  # rewritten while it waited: in line again as it is now
                    del self._waiting_of[name]
                    self._queue(name)
                elif name in self._suspects or name in self._delayed or name in self._unhandled:
                    self._inodes.pop(name, None)
                    self._read_again(name)  # rewritten in place, or published again under its name
                continue
            self._known.add(name)
            queued = parse_inbox_name(name)
            rank = -(DEFAULT_PRIORITY if queued.priority is None else queued.priority)
            if queued.not_before_ms is None:
                heapq.heappush(self._heap, (rank, name))
            else:
                heapq.heappush(self._later, (queued.not_before_ms / 1000, rank, name))

    def _queue(self, name: str) -> None:
        """Put a known name back in line, due now, at the priority known for it."""
        priority = self._ranks.get(name)
        if priority is None:
            priority = parse_inbox_name(name).priority
        heapq.heappush(self._heap, (-(DEFAULT_PRIORITY if priority is None else priority), name))

    def _read_again(self, name: str) -> None:
        """Another version of a known file: what was decided from the last one no longer holds."""
        self._delayed.pop(name, None)
        self._unhandled.pop(name, None)
        self._queue(name)

    def forget(self, name: str) -> None:
        """A name handed out: it is claimed (or gone) unless it comes back under a new name."""
        self._known.discard(name)
        self._ranks.pop(name, None)
        self._inodes.pop(name, None)

    def reconsider(self, handled: Callable[[str], bool]) -> None:
        """The configuration changed: set-aside types may be runnable now."""
        for name, type_ in list(self._unhandled.items()):
            if handled(type_):
                del self._unhandled[name]
                self._queue(name)

    # -- what may run ------------------------------------------------------------------------------

    def take(
        self,
        now: float,
        admit: Callable[[Activity], Verdict],
        handled: Callable[[str], bool],
        want: int,
        quarantine: Callable[[str, str], bool],
        priority: int | None = None,
    ) -> list[tuple[str, Found]]:
        """Up to ``want`` activities due by ``now`` (the shared clock) that ``admit`` lets run, in order.

        Entries ``admit`` refuses wait in the line of their type (``Verdict``), asked
        again head first; at most ``_LOOKAHEAD`` refusals are looked past per call
        (``cut_short`` says so). Unparsable files are quarantined once settled (``quarantine``
        returns False when that failed: the entry is then left alone until the next listing).
        With ``priority``, only entries in line at that priority are looked at.
        """
        while self._later and self._later[0][0] <= now:
            _, rank, name = heapq.heappop(self._later)
            heapq.heappush(self._heap, (rank, name))
        floor = None if priority is None else -priority
        chosen: list[tuple[str, Found]] = []
        refused = 0
        asked: set[str] = set()  # types nothing more of which may run now: not asked again in this call
        tries: Counter[str] = Counter()  # refused on their own in this call, by type
        aside: list[tuple[str, _Entry]] = []  # refused in this call: in their type's line after it
        while len(chosen) < want and refused < _LOOKAHEAD:
            waiting = self._best_waiting(asked, floor)
            ahead = self._heap[0] if self._heap and (floor is None or self._heap[0][0] == floor) else None
            if waiting is not None and (ahead is None or waiting[0] <= ahead):
                entry, type_ = waiting  # its turn: read again below, as it is now
                heapq.heappop(self._waiting[type_])
                del self._waiting_of[entry[1]]
                heapq.heappush(self._heap, entry)
                continue
            if ahead is None:
                break
            rank, name = heapq.heappop(self._heap)
            if name not in self._known or name in self._waiting_of:  # gone, or waiting in its type's line
                continue
            read = self._repo.read(name, limit=self._limit())
            if read is None:
                self._known.discard(name)
                continue
            if isinstance(read, Rejected):
                if read.stamp is None or self._settled(name, read.stamp, now):
                    self._suspects.pop(name, None)
                    self._known.discard(name)
                    if not quarantine(name, read.reason):
                        self._held.add(name)
                continue
            self._suspects.pop(name, None)
            found = read.activity
            if found.priority != -rank:  # the name said otherwise: from now on in line as the document says
                self._ranks[name] = found.priority
            if not handled(found.type):
                self._set_aside(name, read)
                self._unhandled[name] = found.type
                continue
            if found.priority < -rank:  # its name said more: back in line behind what is ahead of it
                heapq.heappush(self._heap, (-found.priority, name))
                continue
            if found.not_before is not None and found.not_before > now:
                self._set_aside(name, read)
                self._delayed[name] = Delayed(found.id, found.type, found.not_before)
                heapq.heappush(self._later, (found.not_before, -found.priority, name))
                continue
            self._delayed.pop(name, None)
            verdict = "type waits" if found.type in asked else admit(found)
            if verdict == "run":
                chosen.append((name, read))
                continue
            aside.append((found.type, (-found.priority, name)))
            self._waiting_of[name] = found.type
            refused += 1
            if verdict == "wait":
                tries[found.type] += 1
            if verdict == "type waits" or tries[found.type] >= _TRIES:
                asked.add(found.type)
        for type_, entry in aside:
            heapq.heappush(self._waiting.setdefault(type_, []), entry)
        self.cut_short = refused >= _LOOKAHEAD and len(chosen) < want
        return chosen

    def _best_waiting(self, asked: set[str], floor: int | None) -> tuple[_Entry, str] | None:
        """The first entry waiting in the line of its type, of a type not refused in this call."""
        best: tuple[_Entry, str] | None = None
        for type_, line in list(self._waiting.items()):
            while line and self._waiting_of.get(line[0][1]) != type_:
                heapq.heappop(line)  # claimed, gone, or read again since (in line again as it is now)
            if not line:
                del self._waiting[type_]
            elif (
                type_ not in asked
                and (floor is None or line[0][0] == floor)
                and (best is None or line[0] < best[0])
            ):
                best = (line[0], type_)
        return best

    def _set_aside(self, name: str, read: Found) -> None:
        """Remember which file ``name`` was when it was set aside (kept if a listing numbered it)."""
        self._inodes.setdefault(name, read.stamp[0])

    def _settled(self, name: str, stamp: tuple[int, int, int], now: float) -> bool:
        """Whether a file that does not parse is done being written, so it may be quarantined.

        Its modification time must be ``inbox.settle-seconds`` old by the shared
        file system's clock, and it must have stayed unchanged that long while this
        worker watched it: a writer whose clock is behind cannot make a file it is
        still writing look old. A modification time in the future (a writer whose
        clock is ahead, a restored backup) says nothing of its age: watching decides.
        """
        settle = self._settle()
        seen = self._suspects.get(name)
        watched = time.monotonic()
        if seen is None or seen[0] != stamp:
            self._suspects[name] = (stamp, watched)
            watched_for = 0.0
        else:
            watched_for = watched - seen[1]
        age = now - stamp[2] / 1e9
        return watched_for >= settle and (age >= settle or age < 0)

    # -- what is left --------------------------------------------------------------------------------

    def top_priority(self) -> int | None:
        """The highest priority of the entries due now and not waiting at capacity, as far as known."""
        return -self._heap[0][0] if self._heap else None

    def next_due(self) -> float:
        """When the earliest waiting entry is due (0: now; inf: nothing waits)."""
        if self._heap or self._waiting:
            return 0.0
        return self._later[0][0] if self._later else float("inf")

    def delayed(self, now: float, handled: Callable[[str], bool]) -> list[Delayed]:
        """The handled activities waiting for a later time; reads those known only by name so far."""
        for due, _, name in self._later:
            if (
                due > now
                and name in self._known
                and name not in self._delayed
                and name not in self._unhandled
            ):
                read = self._repo.read(name, limit=self._limit())
                if isinstance(read, Found):
                    self._set_aside(name, read)
                    found = read.activity
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
