"""One activity's path, inside a pool process: claim, run, decide, commit.

Each pool process does the file work of the activities it is given, so that it
runs on every core; the processes of one worker coordinate through the
repository exactly as workers on different machines do. A batch of short
activities is committed together (one flush to disk for all of them); the
daemon only reads the inbox, hands out batches, supervises timeouts and logs
what each batch reports.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .activity import Activity, ClaimName, format_time, printable
from .attempt_notes import earlier_attempts, write_note
from .config import Settings
from .execute import execute
from .outcome import Done, Ending, Failed, Outcome, Retry, Skipped, decide
from .record import (
    Attempt,
    attempt_entry,
    done_record,
    failed_record,
    failure_document,
    follow_up_document,
    skipped_record,
)
from .repository import Busy, Duplicate, Repository, Settlement, SharedClock, Stamp, made_again
from .retry import RetryPolicy
from .storable import reason_line
from .untrusted import open_own

# Outcomes are committed in groups: one flush to disk serves many activities.
GROUP_COMMIT_SIZE = 64
GROUP_COMMIT_SECONDS = 0.02


@dataclass(frozen=True)
class Setup:
    """What every pool process needs before its first activity."""

    modules: tuple[str, ...]
    paths: tuple[str, ...]
    repository: str
    worker_id: str
    host: str
    pid: int  # the daemon's: records name the worker process that answers for them
    settings: Settings


@dataclass(frozen=True)
class Item:
    """An inbox entry to claim and run, or (``interrupted``) a claim whose attempt ended without an answer."""

    name: str
    activity: Activity
    stamp: Stamp | None = None  # of the file ``activity`` was read from; the claim must take that file
    interrupted: str = ""


@dataclass(frozen=True)
class Report:
    """A line for the worker log, written by the daemon, and what it counts as (metrics)."""

    level: int
    message: str
    #: Set when an attempt ended: how, its activity's type, and how long its processor ran
    #: (``None``: it did not run in this attempt, e.g. a timed-out attempt settled afterwards).
    ending: Ending | None = None
    type: str = ""
    seconds: float | None = None
    #: Set when an entry was moved into ``invalid/``.
    quarantined: bool = False


def _step_abandoned() -> bool:
    """``steps.any_step_abandoned``, without importing the pipeline machinery into processes that
    never run a step (a module not imported has run no step)."""
    steps = sys.modules.get("spoolpipe.steps")
    return steps is not None and bool(steps.any_step_abandoned())


def counted(number: int, noun: str, plural: str = "") -> str:
    """``1 attempt``, ``2 attempts``: log lines read as sentences."""
    return f"{number} {noun}" if number == 1 else f"{number} {plural or noun + 's'}"


def policy(settings: Settings, type_: str) -> RetryPolicy:
    """The retry policy of activities of ``type_`` (``retry.*``, with their per-type keys)."""
    return RetryPolicy(
        settings.max_attempts_for(type_),
        settings.backoff_for(type_),
        settings.retry_backoff_max_seconds,
        settings.retry_jitter,
    )


def quarantine(
    repo: Repository, directory: Path, name: str, reason: str, *, original: str | None = None
) -> Report | None:
    """Move an entry into ``invalid/`` (as ``original``, see ``Repository.quarantine``); the line
    the worker log gets for it (``None``: it was gone). An ``invalid/`` deleted by hand is made again."""
    restored = ""
    try:
        try:
            where = repo.quarantine(directory, name, reason, original=original)
        except FileNotFoundError:
            if repo.restore(repo.invalid):
                restored = f"; {made_again('invalid')}"
            elif not repo.invalid.is_dir():  # else made meanwhile, by another process
                raise
            where = repo.quarantine(directory, name, reason, original=original)
    except OSError as exc:
        return Report(logging.ERROR, f"cannot quarantine {printable(name)}: {printable(str(exc))}{restored}")
    if where is None:
        return None
    message = f"invalid: {printable(reason)} -> {where.relative_to(repo.root)}{restored}"
    return Report(logging.WARNING, message, quarantined=True)


@dataclass
class _Pending:
    """An outcome waiting for the next group commit."""

    settlement: Settlement
    activity: Activity
    started: float
    summary: str
    seconds: float | None
    #: How the attempt ended once committed: the settlement's outcome, or a skip.
    ending: Ending
    #: The failure that replaced an outcome which could not be written: nothing is left to fall back on.
    last_resort: bool = False


class _CommitDeadline:
    """Commits the outcomes waiting for a group commit once they waited twice ``GROUP_COMMIT_SECONDS``,
    while a processor runs.

    Between activities the pool process checks that deadline itself; a processor
    that runs long, hangs until its timeout or ends its process would otherwise
    hold its finished batch-mates uncommitted, and they would run again. The
    pool process's main thread holds ``lock`` except while a processor runs: the
    deadline's thread commits only then.
    """

    def __init__(self, commit: Callable[[], None]) -> None:
        self.lock = threading.Lock()
        self._commit = commit
        self._armed = threading.Condition()
        self._due: float | None = None
        self._armed_for: float | None = None  # the last ``due`` handed to the thread (main thread only)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, due: float | None) -> None:
        """A processor starts: what is pending is committed at ``due`` (``None``: nothing is pending).

        One group of pending outcomes has one ``due``, so the thread is woken once per group, not
        once per activity. Not a context manager: this runs for every activity, and ``end`` must
        follow in a ``finally``.
        """
        if due is not None and due != self._armed_for:
            self._armed_for = due
            if self._thread is None:
                self._thread = threading.Thread(target=self._wait, name="spoolpipe-commit", daemon=True)
                self._thread.start()
            with self._armed:
                self._due = due
                self._armed.notify()
        self.lock.release()

    def committed(self) -> None:
        """Nothing is pending any more: the thread need not take the lock at the last ``due``."""
        if self._due is not None:
            with self._armed:
                self._due = None

    def end(self) -> None:
        """The processor returned: the main thread holds ``lock`` again; a commit that failed here raises."""
        self.lock.acquire()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _wait(self) -> None:
        while True:
            with self._armed:
                while self._due is None or self._due > time.monotonic():
                    self._armed.wait(None if self._due is None else self._due - time.monotonic())
                self._due = None
            with self.lock:  # taken while a processor runs, or once the main thread is done with it
                try:
                    self._commit()  # nothing, when the main thread committed between activities itself
                except BaseException as exc:  # raised in the main thread when its processor returns
                    self._error = exc


#: How often a pool process says that ``ids/`` is not a folder while it is not.
_IDS_SAID_EVERY = 60.0


#: Index in a pool process's ``progress`` of how many items of its batch have run: their processors
#: returned (or they were settled without one). A daemon that ends the batch counts those attempts.
RAN = 5


def _ran_until(progress: Any, taken: int) -> None:
    """The items before ``taken`` have run: a daemon that ends the batch now counts their attempts, even
    while an outcome is still being checked and written (its clock goes on: timeouts)."""
    progress[RAN] = taken


@dataclass
class Attempts:
    """The activity path of one pool process."""

    setup: Setup
    reports: list[Report] = field(default_factory=list)
    _pending: list[_Pending] = field(default_factory=list)
    _pending_since: float = 0.0
    _ids_said_until: float = 0.0  # when to say again that ids/ is not a folder (monotonic)

    def __post_init__(self) -> None:
        root = Path(self.setup.repository)
        self.repo = Repository(root, fsync=self.setup.settings.durability_fsync, worker=self.setup.worker_id)
        self.clock = SharedClock(self.repo.heartbeats / f".clock-{self.setup.worker_id}")
        self.settings = self.setup.settings
        self.worker_id = self.setup.worker_id
        self._deadline = _CommitDeadline(self.commit)

    def run(self, batch: Sequence[Item], progress: Any) -> tuple[list[Report], int, bool]:
        """Run a batch in order: the reports, how many items were taken (the rest were not touched),
        and whether this process is to be replaced.

        ``progress`` tells the daemon which item runs since when (timeouts). A
        processor that asks for its process to be replaced ends the batch early.
        """
        self.reports = []
        taken, recycle = 0, False
        with self._deadline.lock:
            for index, item in enumerate(batch):
                # The worker is stopping, its settings or code changed, or it may have lost its lock:
                # the rest stays in the inbox.
                if progress[2] or time.monotonic() > progress[3]:
                    break
                if item.activity.attempt > 1 and self._pending:
                    # A retry may be of one that crashed its process: what is done is committed first.
                    self.commit()
                progress[0], progress[1] = index, time.monotonic()
                taken = index + 1
                ran = functools.partial(_ran_until, progress, taken)
                recycle = self._one(item, ran)
                ran()
                if self._pending and (
                    len(self._pending) >= GROUP_COMMIT_SIZE
                    or time.monotonic() - self._pending_since >= GROUP_COMMIT_SECONDS
                ):
                    self.commit()
                if recycle:
                    break
            self.commit()
        progress[0], progress[1] = -1, time.monotonic()  # done: the answer is due now
        return self.reports, taken, recycle

    def _report(self, level: int, message: str) -> None:
        self.reports.append(Report(level, message))

    # -- claim and run ---------------------------------------------------------------------------

    def _one(self, item: Item, returned: Callable[[], None]) -> bool:
        """Claim and run one item; True if its processor asked for this process to be replaced.
        ``returned`` is called once its processor has returned."""
        activity = item.activity
        if item.interrupted:
            claim = ClaimName(activity.id, activity.attempt, self.worker_id)
            self._note_in_attempt_log(activity, item.interrupted)
            self._outcome(claim, activity, self.clock.now(), Outcome("error", error=item.interrupted))
            return False
        taken = self._claim(item)
        if taken is None:
            return False
        claim, started = taken, self.clock.now()
        limit = self.settings.max_attempts_for(activity.type)
        if activity.attempt > limit:
            per_type = activity.type in self.settings.max_attempts
            key = f"retry.max-attempts.{activity.type}" if per_type else "retry.max-attempts"
            reason = (
                f"gave up: attempt {activity.attempt} exceeds {key}={limit} (as its file name says: "
                "attempts whose worker died or was killed count too)"
            )
            self._outcome(claim, activity, started, Outcome("fatal", error=reason))
            return False
        log_path = self.repo.attempt_log(activity)
        ran = time.monotonic()
        # Later than the check between activities, which commits a quick batch's outcomes by itself:
        # the thread only acts on a processor that runs long.
        due = self._pending_since + 2 * GROUP_COMMIT_SECONDS if self._pending else None
        self._deadline.start(due)
        try:
            outcome = execute(activity, log_path, self.worker_id, self.repo.root, self.settings, returned)
        finally:
            self._deadline.end()
        self._outcome(claim, activity, started, outcome, time.monotonic() - ran)
        # A step thread that outlived its timeout is stopped only by ending this process.
        return outcome.recycle or _step_abandoned()

    def _reserve(self, claim: ClaimName, item: Item) -> Duplicate | Busy | Literal["changed"] | None:
        """``Repository.reserve``, after creating ``ids/`` again if somebody deleted it."""
        try:
            return self.repo.reserve(claim, item.activity, item.name, self.clock.now(), stamp=item.stamp)
        except FileNotFoundError:
            if self.repo.restore(self.repo.ids):  # else another process just did (or the claim is gone)
                self._report(
                    logging.WARNING,
                    f"{made_again('ids')}; the reservations it held are gone, so the ids running when "
                    "it was deleted are no longer kept from running twice",
                )
        return self.repo.reserve(claim, item.activity, item.name, self.clock.now(), stamp=item.stamp)

    def _claim(self, item: Item) -> ClaimName | None:
        """Claim the entry and make its id this claim's; ``None`` if taken, a duplicate, or unreachable."""
        activity = item.activity
        try:
            claim = self.repo.claim(item.name, activity, self.worker_id)
        except OSError as exc:
            self._report(logging.ERROR, f"cannot claim {printable(item.name)}: {printable(str(exc))}")
            return None
        if claim is None:
            return None
        assert item.stamp is not None  # only an interrupted item has none, and it is not claimed
        try:
            reserved = self._reserve(claim, item)
        except OSError as exc:
            if os.path.isdir(self.repo.ids):
                self._report(logging.ERROR, f"cannot reserve id {activity.id}: {exc}; requeueing it")
            elif time.monotonic() >= self._ids_said_until:  # one line for them all, not one per claim
                self._ids_said_until = time.monotonic() + _IDS_SAID_EVERY
                self._report(
                    logging.ERROR,
                    f"{self.repo.ids} is not a folder: no activity can run here until it is one again "
                    "(move what is there out of the way); the activities claimed meanwhile go back to "
                    f"the inbox (said once every {_IDS_SAID_EVERY:g}s)",
                )
            self._requeue_unwritten(claim, exc, said=True)
            return None
        if reserved == "changed":
            self._put_back(item)
            return None
        if isinstance(reserved, Duplicate):
            self._quarantine(self.repo.running, claim.name, reserved.reason, original=item.name)
            return None
        if isinstance(reserved, Busy):
            self._report(logging.INFO, f"{reserved.reason}: {activity.id} goes back to the inbox for 1s")
            self.repo.release(claim, claim.attempt, self.clock.now() + 1.0, activity.priority)
            return None
        return claim

    def _put_back(self, item: Item) -> None:
        """The file claimed was renamed over or rewritten since the daemon read it: its document is
        not ``item.activity``. It goes back to the inbox unrun, to be read again."""
        claim = ClaimName(item.activity.id, item.activity.attempt, self.worker_id)
        name = printable(item.name)
        if self.repo.put_back(claim, item.name):
            self._report(
                logging.INFO, f"{name} changed after it was read: back in the inbox, to be read again"
            )
        else:
            self._quarantine(
                self.repo.running,
                claim.name,
                f"{name} changed after it was read, and another file took its name in the inbox meanwhile",
                original=item.name,
            )

    def _quarantine(self, directory: Path, name: str, reason: str, *, original: str | None = None) -> None:
        report = quarantine(self.repo, directory, name, reason, original=original)
        if report is not None:
            self.reports.append(report)

    # -- deciding --------------------------------------------------------------------------------

    def _outcome(
        self,
        claim: ClaimName,
        activity: Activity,
        started: float,
        outcome: Outcome,
        seconds: float | None = None,
    ) -> None:
        """Settle one attempt (its processor ran ``seconds``, if at all); whatever goes wrong with this
        one activity fails it, not the daemon."""
        try:
            self._decide(claim, activity, started, outcome, seconds)
        except OSError:
            raise
        except Exception as exc:
            self._unrecordable(claim, activity, started, exc)

    def _decide(
        self, claim: ClaimName, activity: Activity, started: float, outcome: Outcome, seconds: float | None
    ) -> None:
        decision = decide(outcome, activity.attempt, policy(self.settings, activity.type))
        if isinstance(decision, Done):
            self._done(claim, activity, started, outcome, seconds)
        elif isinstance(decision, Skipped):
            self._skip(claim, activity, started, outcome.error, seconds)
        elif isinstance(decision, Failed):
            self._fail(claim, activity, started, outcome.error, outcome.traceback, seconds=seconds)
        elif isinstance(decision, Retry):
            self._retry(claim, activity, started, decision.delay, outcome.error, seconds)

    def _retry(
        self,
        claim: ClaimName,
        activity: Activity,
        started: float,
        delay: float,
        error: str,
        seconds: float | None,
    ) -> None:
        # Before the release: the next attempt may be claimed, and its record written, at once.
        note = attempt_entry(activity.attempt, self._attempt(started), "retry", error)
        write_note(self.repo.logs, self.repo.tmp, activity, note)
        try:
            released = self.repo.release(
                claim, activity.attempt + 1, self.clock.now() + delay, activity.priority
            )
        except OSError as exc:
            self._report(logging.ERROR, f"cannot requeue {activity.id}: {exc}")
            return
        if released:
            message = (
                f"retry {activity.id} ({activity.type}) attempt {activity.attempt + 1} in {delay:.1f}s: "
                f"{reason_line(error)}"
            )
            self.reports.append(Report(logging.WARNING, message, "retry", activity.type, seconds))
        else:
            self._report(
                logging.WARNING,
                f"lost the claim on {activity.id} before it could be retried; it was taken over",
            )

    def _attempt(self, started: float) -> Attempt:
        return Attempt(self.worker_id, self.setup.host, self.setup.pid, started, self.clock.now())

    def _done(
        self, claim: ClaimName, activity: Activity, started: float, outcome: Outcome, seconds: float | None
    ) -> None:
        now = self.clock.now()
        follow_ups = [
            follow_up_document(
                activity,
                f["type"],
                f["data"],
                f["key"],
                None if f["delay"] is None else now + float(f["delay"]),
                f["priority"],
            )
            for f in outcome.follow_ups
        ]
        record = done_record(
            activity,
            self._attempt(started),
            outcome.result,
            [f["id"] for f in follow_ups],
            earlier_attempts(self.repo.logs, activity),
        )
        extra = f", {counted(len(follow_ups), 'follow-up')}" if follow_ups else ""
        summary = (
            f"done {activity.id} ({activity.type}, attempt {activity.attempt}) in {now - started:.2f}s{extra}"
        )
        settlement = Settlement(claim, "done", record, follow_ups)
        self._defer(_Pending(settlement, activity, started, summary, seconds, "done"))

    def _skip(
        self, claim: ClaimName, activity: Activity, started: float, reason: str, seconds: float | None
    ) -> None:
        earlier = earlier_attempts(self.repo.logs, activity)
        record = skipped_record(activity, self._attempt(started), reason, earlier)
        summary = f"skipped {activity.id} ({activity.type}, attempt {activity.attempt}): {reason}"
        settlement = Settlement(claim, "done", record, [])
        self._defer(_Pending(settlement, activity, started, summary, seconds, "skipped"))

    def _fail(
        self,
        claim: ClaimName,
        activity: Activity,
        started: float,
        reason: str,
        text: str,
        *,
        seconds: float | None = None,
        last_resort: bool = False,
    ) -> None:
        record = failed_record(
            activity, self._attempt(started), reason, text, earlier_attempts(self.repo.logs, activity)
        )
        handler = self.settings.failures_handler
        follow_ups = (
            []
            if not handler or activity.type == handler
            else [failure_document(handler, record, self.settings.limits_activity_bytes)]
        )
        summary = (
            f"failed {activity.id} ({activity.type}) after {counted(activity.attempt, 'attempt')}: "
            f"{record['spoolpipe']['reason']}"
        )
        settlement = Settlement(claim, "failed", record, follow_ups)
        self._defer(_Pending(settlement, activity, started, summary, seconds, "failed", last_resort))

    def _unrecordable(
        self,
        claim: ClaimName,
        activity: Activity,
        started: float,
        exc: Exception,
        *,
        last_resort: bool = False,
    ) -> None:
        """An outcome this worker cannot record fails its activity, never the worker."""
        text = "".join(traceback.format_exception(exc))
        reason = f"spoolpipe could not record the outcome: {type(exc).__name__}: {exc}"
        self._report(logging.ERROR, f"{activity.id}: {reason_line(reason)}\n{text.rstrip()}")
        self._note_in_attempt_log(activity, f"{reason}\n{text}")
        if not last_resort and not any(p.settlement.claim == claim for p in self._pending):
            try:
                self._fail(claim, activity, started, reason, text, last_resort=True)
                return
            except Exception:
                self._report(logging.ERROR, f"cannot fail {activity.id} either:\n{traceback.format_exc()}")
        self._report(
            logging.ERROR, f"{activity.id} stays claimed until its claim is recovered (as its next attempt)"
        )

    def _note_in_attempt_log(self, activity: Activity, text: str) -> None:
        line = f"{format_time(self.clock.now())} ERROR {text} (worker {self.worker_id})\n"
        with contextlib.suppress(OSError):  # never through a link put in its place
            fd = open_own(self.repo.attempt_log(activity), os.O_APPEND)
            with os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace") as log:
                log.write(line)

    # -- committing ------------------------------------------------------------------------------

    def _defer(self, item: _Pending) -> None:
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(item)

    def commit(self) -> None:
        """Commit every pending outcome as one batch (a failure that replaces one is committed too)."""
        if not self._pending:
            return
        self._deadline.committed()
        while self._pending:
            pending, self._pending = self._pending, []
            by_claim = {p.settlement.claim: p for p in pending}
            for settled in self.repo.settle([p.settlement for p in pending]):
                item = by_claim[settled.settlement.claim]
                if settled.status == "committed":
                    level = logging.ERROR if item.ending == "failed" else logging.INFO
                    self.reports.append(
                        Report(level, item.summary, item.ending, item.activity.type, item.seconds)
                    )
                    for folder in settled.restored:
                        self._report(logging.WARNING, made_again(folder))
                    if settled.error is not None:
                        self._report(
                            logging.ERROR,
                            f"{item.activity.id} is committed but not published yet: "
                            f"{printable(str(settled.error))}; it stays in running/ and is published "
                            "once that folder can be written again",
                        )
                elif settled.status == "lost":
                    self._report(
                        logging.WARNING,
                        f"claim on {item.activity.id} was lost (taken over after this worker was presumed "
                        "dead); outcome discarded",
                    )
                elif isinstance(settled.error, OSError):
                    self._requeue_unwritten(item.settlement.claim, settled.error)
                else:
                    error = settled.error or RuntimeError("unknown")
                    self._unrecordable(
                        item.settlement.claim,
                        item.activity,
                        item.started,
                        error,
                        last_resort=item.last_resort,
                    )

    def _requeue_unwritten(self, claim: ClaimName, exc: OSError, *, said: bool = False) -> None:
        """A write failed (disk full...): nothing half-written stays, and the activity stays retryable.

        ``said``: the caller has logged why already (nothing ran, there is no outcome to speak of)."""
        if not said:
            self._report(
                logging.ERROR, f"cannot record the outcome of {claim.activity_id}: {exc}; requeueing it"
            )
        try:
            self.repo.release(claim, claim.attempt, self.clock.now() + 5.0)
        except OSError as again:
            self._report(
                logging.ERROR,
                f"cannot requeue {claim.activity_id} either ({again}); "
                "it stays claimed until it is recovered",
            )
        if exc.errno == errno.ENOSPC:
            time.sleep(0.5)
