"""Admission: what an idle pool process is handed next.

A batch is activities due now, of one type, that may run here: within the
type's concurrency (``concurrency.*``) and its circuit, within the image budget
(``images.megapixels``), never two copies of one id at once in this worker, and
as many as run in about ``BATCH_SECONDS`` at the type's pace so far. The
worker only sends what this hands out and reports back what finished.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial

from .activity import Activity
from .attempt import Item, counted
from .circuit import Circuits
from .config import Settings
from .intake import Intake, Verdict
from .pool import Finished, Pool, Slot
from .processor import registered

log = logging.getLogger("spoolpipe.worker")
#: Most activities handed to a pool process at once (each is still timed on its own).
BATCH_MAX = 128
#: How long a batch should take: short activities are batched up to this, long ones are not.
BATCH_SECONDS = 0.05


def handles(settings: Settings, type_: str) -> bool:
    """Whether a worker with these settings runs ``type_``: its processor is here and may run."""
    return type_ in registered() and settings.concurrency_for(type_) > 0


class Admission:
    """Hands batches to idle pool processes; keeps each type's pace and each busy process's megapixels."""

    def __init__(
        self,
        intake: Intake,
        pool: Pool,
        circuits: Circuits,
        settings: Callable[[], Settings],
        quarantine: Callable[[str, str], bool],
    ) -> None:
        self._intake = intake
        self._pool = pool
        self._circuits = circuits
        self._settings = settings
        self._quarantine = quarantine  # False when the entry could not be moved
        self._pace: dict[str, float] = {}  # seconds per activity, by type (one entry per handled type)
        self._megapixels: dict[int, float] = {}  # held by the batch of each busy slot

    def hand_out(self, idle: Sequence[Slot], in_flight: set[str], now: float) -> None:
        """Send each idle slot a batch while there is work it may take (``now``: the shared clock)."""
        busy = Counter(i.activity.type for s in self._pool.busy() for i in s.batch[:1])
        share = len(self._intake) // (2 * len(self._pool.slots))  # leave work for every process
        for slot in idle:
            found = self._take(now, lambda a: self._admit(a, busy, in_flight), 1)
            if not found:
                return
            first = found[0].activity
            limit = self._circuits.batch_limit(first.type) or BATCH_MAX
            size = min(share, self._batch_size(first.type), limit)
            if size > 1 and registered()[first.type].megapixels is None:
                found += self._take(  # never past a higher priority of another type
                    now,
                    partial(_fresh_of_type, first.type, in_flight),
                    size - 1,
                    first.priority,
                )
            busy[first.type] += 1
            self._megapixels[slot.index] = self._estimate(first)
            self.send(slot, found)

    def make_way(self) -> None:
        """A higher priority than a busy batch's waits and no process is idle: the batch of the lowest
        priority ends after its running activity, its rest back in the inbox (a batch sized from a
        quicker pace can run for long)."""
        top = self._intake.top_priority()
        busy = self._pool.busy()
        if top is None or self._pool.idle() or any(s.ending() for s in busy):
            return
        behind = [s for s in busy if len(s.batch) > 1 and s.batch[0].activity.priority < top]
        if behind:
            min(behind, key=lambda s: (s.batch[0].activity.priority, -len(s.batch))).end_after_current()

    def send(self, slot: Slot, batch: Sequence[Item]) -> None:
        log.debug("handing %s to pool process %d", counted(len(batch), "activity", "activities"), slot.index)
        self._pool.send(slot, batch)

    def finished(self, event: Finished) -> None:
        """A batch came back: its type's pace (smoothed), and its slot holds no megapixels any more."""
        if event.taken:
            type_, took = event.batch[0].activity.type, event.seconds / event.taken
            pace = self._pace.get(type_)
            self._pace[type_] = took if pace is None else 0.7 * pace + 0.3 * took
        self.freed(event.slot)

    def freed(self, slot: Slot) -> None:
        """The slot's batch is over (finished, died or killed)."""
        self._megapixels.pop(slot.index, None)

    def claimable(self, type_: str) -> bool:
        """Handled here and not held by an open circuit (those are set aside until it lets one through)."""
        return handles(self._settings(), type_) and not self._circuits.holds(type_)

    def _take(
        self, now: float, admit: Callable[[Activity], Verdict], want: int, priority: int | None = None
    ) -> list[Item]:
        found = self._intake.take(now, admit, self.claimable, want, self._quarantine, priority)
        for name, _ in found:
            self._intake.forget(name)
        return [Item(name, read.activity, read.stamp) for name, read in found]

    def _admit(self, activity: Activity, busy: Counter[str], in_flight: set[str]) -> Verdict:
        settings = self._settings()
        if busy[activity.type] >= settings.concurrency_for(activity.type):
            return "type waits"
        if activity.id in in_flight:  # another copy of it runs
            return "wait"
        held = sum(self._megapixels.get(s.index, 0.0) for s in self._pool.busy())
        # An image bigger than the whole cap still runs, alone, rather than never.
        if held and held + self._estimate(activity) > settings.megapixel_cap:
            return "wait"  # a smaller one may fit
        if not self._circuits.admit(activity.type, activity.id):  # half-open: this one is the probe
            return "type waits"
        return "run" if _fresh(activity, in_flight) else "wait"

    def _batch_size(self, type_: str) -> int:
        """As many as run in about ``BATCH_SECONDS`` at this type's pace so far: short ones share a
        message and a flush to disk, long ones go one at a time so every process has its share."""
        pace = self._pace.get(type_)
        return 1 if pace is None else max(1, min(BATCH_MAX, int(BATCH_SECONDS / max(pace, 1e-6))))

    def _estimate(self, activity: Activity) -> float:
        """The decoded megapixels ``activity`` will hold, by its processor's estimate (0 if none)."""
        estimate = registered()[activity.type].megapixels
        if estimate is None:
            return 0.0
        try:
            return max(0.0, float(estimate(activity, self._settings())))
        except Exception:  # the processor itself will report what is wrong with its input
            return 0.0


def _fresh_of_type(type_: str, in_flight: set[str], activity: Activity) -> Verdict:
    """What fills a batch: more of its type (never two copies of one id)."""
    if activity.type != type_:
        return "type waits"
    return "run" if _fresh(activity, in_flight) else "wait"


def _fresh(activity: Activity, in_flight: set[str]) -> bool:
    """Not in flight yet (and from now on it is)."""
    if activity.id in in_flight:
        return False
    in_flight.add(activity.id)
    return True
