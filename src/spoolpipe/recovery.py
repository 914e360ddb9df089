"""Settling claims whose attempt ended without its process: dead workers', and this worker's own.

A claim's file says everything needed: committed ones are finished (their
outcome was decided), uncommitted ones go back to the inbox. Whether the
interrupted attempt counts is the one decision made here: a crash or a timeout
counts against the activity; being put back because a batch neighbour died, or
because the worker stopped, does not.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .activity import ClaimName
from .attempt import Item, counted
from .liveness import Prober
from .repository import Repository

log = logging.getLogger("spoolpipe.worker")


@dataclass
class Abandoned:
    """What became of a batch whose process ended early."""

    interrupted: list[Item] = field(default_factory=list)  # to settle with their reason (a pool process)
    untouched: list[str] = field(default_factory=list)  # inbox names never claimed


@dataclass
class Recovery:
    repo: Repository
    prober: Prober
    worker_id: str
    stopping: Callable[[], bool]  # a stop requested: recovery ends between two claims

    def claim_of(self, item: Item) -> ClaimName:
        return ClaimName(item.activity.id, item.activity.attempt, self.worker_id)

    def claims_by_worker(self) -> dict[str, list[ClaimName]]:
        grouped: dict[str, list[ClaimName]] = {}
        for claim in self.repo.claims():
            grouped.setdefault(claim.worker, []).append(claim)
        return grouped

    def recover(self, active: Iterable[Item], *, own_only: bool) -> int:
        """Settle this worker's claims that nothing runs (``active`` does), and, unless ``own_only``,
        those of every dead worker. How many were settled."""
        running = {self.claim_of(i).stem for i in active}
        settled = 0
        for worker, claims in self.claims_by_worker().items():
            if worker == self.worker_id:
                stale = [c for c in claims if c.stem not in running]
                whose = "left by an earlier run of" if own_only else "abandoned by"
                settled += self._settle(f"{whose} this worker ({worker})", stale)
            elif not own_only:
                with self.prober.dead(worker) as dead:
                    if dead:
                        settled += self._settle(f"of dead worker {worker}", claims)
                        self.repo.drop_spares(worker)
        return settled

    def recoverable(self) -> bool:
        """Whether any claim waits to be settled by this worker (its own, or a dead worker's)."""
        for worker in self.claims_by_worker():
            if worker == self.worker_id:
                return True
            with self.prober.dead(worker) as dead:
                if dead:
                    return True
        return False

    def _settle(self, whose: str, claims: list[ClaimName]) -> int:
        """Settle ``claims`` until they are all settled or a stop is requested; how many were.

        Each claim is settled on its own, so whatever a stop leaves is as it was: still claimed,
        for the next recovery (this worker's next start, or whichever worker finds them)."""
        if not claims:
            return 0
        listing = self.repo.staged_files()
        outcomes: Counter[str] = Counter()
        for claim in claims:
            if self.stopping():
                break
            outcomes[self.repo.recover(claim, listing)] += 1
        self.repo.durability.barrier()
        settled = outcomes.total()
        details = ", ".join(f"{n} {k}" for k, n in outcomes.items())
        if settled == len(claims):
            log.warning("recovered %s %s: %s", counted(settled, "claim"), whose, details)
        else:
            log.warning(
                "recovered %d of %s %s%s; stopping, so the other %d stay in running/ for the next recovery",
                settled,
                counted(len(claims), "claim"),
                whose,
                f" ({details})" if details else "",
                len(claims) - settled,
            )
        return settled

    def abandoned(self, batch: Sequence[Item], current: int, ran: int, reason: str) -> Abandoned:
        """A batch whose process ended while item ``current`` ran (or had its outcome checked and
        written): its attempt was interrupted (``reason``); the first ``ran`` items whose outcome was
        not committed yet ran, and count as a crash does; the others are put back as they were,
        their attempts not counted."""
        result = Abandoned()
        for index, item in enumerate(batch):
            claim = self.claim_of(item)
            state = self.repo.claim_state(claim)
            if state == "committed":
                self.repo.recover(claim)
            elif state == "claimed" and index == current and not item.interrupted:
                result.interrupted.append(Item("", item.activity, interrupted=reason))
            elif state == "claimed":
                # An interrupted attempt whose settling died too counts, as a crash does.
                self._put_back(claim, claim.attempt + 1 if item.interrupted or index < ran else claim.attempt)
            elif item.name:
                result.untouched.append(item.name)
        self.repo.durability.barrier()
        return result

    def release(self, batch: Sequence[Item], ran: int, why: str) -> None:
        """Stopping while the batch runs: every claim goes back as it was (committed ones are
        finished), but for those of the first ``ran`` items, which ran, and whose outcome was not
        committed yet: they count as a crash does."""
        for index, item in enumerate(batch):
            claim = self.claim_of(item)
            state = self.repo.claim_state(claim)
            if state == "committed":
                self.repo.recover(claim)
            elif state == "claimed" and index < ran:
                if self._put_back(claim, claim.attempt + 1):
                    log.warning(
                        "%s ran, but its outcome was lost: its next attempt is queued", item.activity.id
                    )
            elif state == "claimed" and self._put_back(claim, claim.attempt):
                log.warning("released %s back to the inbox: %s", item.activity.id, why)
        self.repo.durability.barrier()

    def _put_back(self, claim: ClaimName, attempt: int) -> bool:
        if not self.repo.release(claim, attempt, None):
            return False
        self.repo.discard(claim)
        return True
