"""The worker daemon: finds activities, claims them, runs them in the pool, commits the outcome.

One thread owns every file operation, so claims, commits and recovery never
race inside a worker. Filesystem notifications only wake the loop early; a
full inbox scan every ``scan.interval-seconds`` is what finds files written by
other machines.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from . import config
from .activity import Activity, ClaimName, OutcomeKind, format_time, printable
from .liveness import OwnLock, Prober, WorkerAlreadyRunning, resolve_mode
from .pool import (
    Outcome,
    Pool,
    ProcessorImportError,
    Setup,
    Slot,
    Task,
    how_it_ended,
    import_processors,
    processor_files,
    reload_processors,
)
from .processor import registered
from .record import Attempt, done_record, failed_record, failure_document, follow_up_document
from .repository import Rejected, Repository, Settlement, SharedClock, dumps
from .retry import RetryPolicy
from .storable import reason_line

log = logging.getLogger("spoolpipe.worker")
# Outcomes are committed in groups: one flush to disk serves many activities.
_GROUP_COMMIT_SIZE = 64
_GROUP_COMMIT_SECONDS = 0.02
#: Exit code of a worker stopped by an unexpected exception (a bug): EX_SOFTWARE of sysexits.h.
EXIT_CRASH = 70


class StartupError(Exception):
    """The worker cannot start; the message says why and what to do."""


@dataclass
class _Running:
    """A claimed activity and its pool slot."""

    claim: ClaimName
    activity: Activity
    started: float
    megapixels: float = 0.0


@dataclass
class _Settled:
    """An outcome waiting for the next group commit."""

    claim: ClaimName
    activity: Activity
    started: float
    outcome: OutcomeKind
    record: Any
    follow_ups: list[Any]
    summary: str
    #: The failure that replaced an outcome which could not be written: nothing is left to fall back on.
    last_resort: bool = False


def default_worker_id() -> str:
    host = socket.gethostname().split(".")[0]
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in host).strip("-._")
    return cleaned or "worker"


def _counted(number: int, noun: str, plural: str = "") -> str:
    """``1 attempt``, ``2 attempts``: log lines read as sentences."""
    return f"{number} {noun}" if number == 1 else f"{number} {plural or noun + 's'}"


def _policy(settings: config.Settings) -> RetryPolicy:
    return RetryPolicy(
        settings.retry_max_attempts,
        settings.retry_backoff_seconds,
        settings.retry_backoff_max_seconds,
        settings.retry_jitter,
    )


class Worker:
    """``spoolpipe worker``: run until signalled (or, with ``until_idle``, until nothing is left).

    With ``until_idle`` the worker waits for delayed activities (``not_before``,
    retry backoff) it could run, unless ``no_wait``: then it leaves them queued.
    """

    def __init__(
        self,
        root: Path,
        worker_id: str,
        *,
        until_idle: bool = False,
        no_wait: bool = False,
        log_level: str | None = None,
    ) -> None:
        self.root = root
        self.log_level = log_level
        self.worker_id = worker_id
        self.until_idle = until_idle
        self.no_wait = no_wait
        self._waiting_for: tuple[str, float] | None = None  # the delayed activity --until-idle last named
        self.host = socket.gethostname()
        self.repo = Repository(root)
        self._stopping = False
        self._reload_requested = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._queue: dict[str, Activity] = {}
        self._order: list[str] = []
        self._starved = True
        self._pending: list[_Settled] = []
        self._pending_since = 0.0
        self._next_due = float("inf")
        self._running: dict[int, _Running] = {}
        self._observer: Any = None
        self._unsettled = 0
        self._estimates: dict[str, float] = {}
        self._suspects: dict[str, tuple[tuple[int, int, int], float]] = {}

    # -- start-up ------------------------------------------------------------------------------

    def _load(self) -> config.Settings:
        loaded = config.load(self.root, self.worker_id)
        for warning in loaded.warnings:
            log.warning("%s", warning)
        return loaded.settings

    def _start(self) -> bool:
        """Load, lock and spawn the pool; False when a signal stopped the worker before it could start."""
        self.repo.check()
        try:
            self.settings = self._load()
        except config.ConfigError as exc:
            raise StartupError(f"invalid configuration:\n{exc}") from None
        self.repo.durability.enabled = self.settings.durability_fsync
        logging.getLogger("spoolpipe").setLevel(self.log_level or self.settings.log_level)
        self._config_stamp = self._config_mtimes()
        try:
            import_processors(self.settings.processors, [str(p) for p in self.settings.processors_path])
        except ProcessorImportError as exc:
            raise StartupError(str(exc)) from None
        self._code_stamp = processor_files(self.settings.processors)
        self.lock_mode = resolve_mode(self.settings.claims_lock, self.root)
        self.own_lock = OwnLock(
            self.repo.locks, self.worker_id, self.lock_mode, self.settings.claims_lease_seconds
        )
        try:
            # A lease left by a dead incarnation on another host expires only after lease-seconds.
            lease = self.settings.claims_lease_seconds
            wait = lease * 1.5 if self.lock_mode == "lease" else 5.0
            if not self.own_lock.acquire(wait=wait, cancelled=lambda: self._stopping):
                return False
        except WorkerAlreadyRunning:
            raise StartupError(
                f"worker id {self.worker_id!r} is already running "
                f"(lock {self.repo.locks / self.worker_id}.lock; "
                f"see heartbeats/{self.worker_id}.json); give this worker another --worker-id"
            ) from None
        self.prober = Prober(self.repo.locks, self.lock_mode, self.settings.claims_lease_seconds)
        self.clock = SharedClock(self.repo.heartbeats / f".clock-{self.worker_id}")
        self.started = self.clock.now()
        self.repo.sweep_tmp(self.clock.now())
        self._recover(own_only=True)
        self.pool = Pool(self.settings.pool_size, self._setup())
        log.info(
            "worker %s started on %s (pid %d): repository %s, lock mode %s, %d pool processes, types: %s",
            self.worker_id,
            self.host,
            os.getpid(),
            self.root,
            self.lock_mode,
            self.settings.pool_size,
            ", ".join(self._handled_types()) or "none",
        )
        return True

    def _setup(self) -> Setup:
        s = self.settings
        return Setup(
            s.processors,
            tuple(str(p) for p in s.processors_path),
            str(self.root),
            self.worker_id,
            s,
        )

    def _handled_types(self) -> list[str]:
        return sorted(t for t in registered() if self.settings.concurrency_for(t) > 0)

    # -- signals and wake-ups --------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"!")

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload_requested = True
        else:
            if self._stopping:
                log.warning("second %s: stopping now", signal.Signals(signum).name)
                self._grace_deadline = 0.0
            self._stopping = True
        self._wake()

    def _start_watching(self) -> None:
        if not self.settings.scan_watch:
            return
        try:
            from watchdog.events import FileSystemEvent, FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:  # pragma: no cover - watchdog is a dependency
            return
        worker = self

        class _Hint(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                worker._hinted = True
                worker._wake()

        observer = Observer()
        try:
            observer.schedule(_Hint(), str(self.repo.inbox), recursive=False)
            observer.daemon = True
            observer.start()
        except OSError as exc:
            log.warning(
                "no filesystem notifications (%s); polling every %ss",
                exc,
                self.settings.scan_interval_seconds,
            )
            return
        self._observer = observer

    # -- the loop ----------------------------------------------------------------------------------

    def run(self) -> int:
        """0 once stopped; ``EXIT_CRASH`` after an unexpected exception, logged with its traceback."""
        # Signals are ours from the start: a SIGTERM while waiting for the lock stops the worker cleanly.
        previous = {
            s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        started = False
        try:
            started = self._start()
            if not started:
                log.info("worker %s stopped before it started", self.worker_id)
                return 0
            self._loop()
            self._shutdown()
            log.info("worker %s stopped", self.worker_id)
            return 0
        except StartupError:
            raise
        except Exception:
            log.critical("unexpected error in worker %s (a bug in spoolpipe):", self.worker_id, exc_info=True)
            if started:
                try:
                    self._shutdown()
                except Exception:
                    log.critical("cannot shut down cleanly either:", exc_info=True)
            # Claims left behind are recovered at the next start, each as its next attempt.
            log.critical("worker %s crashed: exit code %d", self.worker_id, EXIT_CRASH)
            return EXIT_CRASH
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _loop(self) -> None:
        self._hinted = True
        self._start_watching()
        self._grace_deadline = float("inf")
        self._next_scan = self._next_recovery = self._next_heartbeat = 0.0
        while True:
            try:
                if not self._step():
                    return
            except OSError as exc:
                # A shared file system can fail for a while (server gone, ENOTCONN, ESTALE, disk
                # full). Nothing in memory is needed to recover: claims on disk say it all.
                log.error("file system error: %s; retrying in 1s", exc)
                self._pending.clear()
                time.sleep(1.0)

    def _step(self) -> bool:
        """One turn of the loop; False when the worker should stop."""
        now = time.monotonic()
        if self._stopping:
            if self._grace_deadline == float("inf"):
                self._grace_deadline = now + self.settings.shutdown_grace_seconds
                log.info(
                    "stopping: no new claims; %d running activities may finish within %ss",
                    len(self._running),
                    self.settings.shutdown_grace_seconds,
                )
            if not self._running:
                return False
            if now >= self._grace_deadline:
                self._release_all("shutdown grace period over")
                return False
        if not self.own_lock.held():
            self._lost_lock()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.settings.heartbeat_interval_seconds
            self._heartbeat()
            self._maybe_reload()
            self._maybe_reload_code()
        if not self._stopping:
            if now >= self._next_recovery:
                self._next_recovery = now + self.settings.scan_interval_seconds
                self._recover(own_only=False)
            if now >= self._next_scan or (self._hinted and self._starved):
                self._hinted = False
                self._next_scan = now + self.settings.scan_interval_seconds
                self._scan()
            self._dispatch()
            if self.until_idle and self._idle():
                log.info("nothing left to run: exiting (--until-idle)")
                return False
        deadlines = [
            self._next_heartbeat,
            self._next_scan,
            self._grace_deadline,
            self._next_deadline(),
            self._next_due,
        ]
        if self._pending:
            deadlines.append(self._pending_since + _GROUP_COMMIT_SECONDS)
        self._settle(self.pool.wait(min(deadlines) - now, [self._wake_r]))
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass
        self._enforce_timeouts()
        if self._pending and (
            len(self._pending) >= _GROUP_COMMIT_SIZE
            or not self._running
            or self._stopping
            or time.monotonic() - self._pending_since >= _GROUP_COMMIT_SECONDS
        ):
            self._flush()
        return True

    def _shutdown(self) -> None:
        while self._pending:  # a flush may queue the failure of an outcome it could not write
            self._flush()
        if self._observer is not None:
            # watchdog logs a spurious error when its reader thread is stopped mid-read.
            logging.getLogger("watchdog").setLevel(logging.CRITICAL)
            self._observer.unschedule_all()
            self._observer.stop()
            self._observer.join(2)
        self.pool.close()
        with contextlib.suppress(OSError):
            (self.repo.heartbeats / f"{self.worker_id}.json").unlink()
        self.own_lock.release()

    # -- finding and claiming work -------------------------------------------------------------------

    def _scan(self) -> None:
        names = self.repo.inbox_names()
        present = set(names)
        self._queue = {n: a for n, a in self._queue.items() if n in present}
        self._starved = False
        self._unsettled = 0
        fresh = [n for n in names if n not in self._queue]
        if not fresh:
            return
        now = self.clock.now()
        self._suspects = {n: seen for n, seen in self._suspects.items() if n in present}
        for name in fresh:
            found = self.repo.read(name, limit=self.settings.limits_activity_bytes)
            if found is None:
                continue
            if isinstance(found, Rejected):
                if found.stamp is None or self._settled(name, found.stamp, now):
                    self._quarantine(self.repo.inbox, name, found.reason)
                else:
                    self._unsettled += 1
            else:  # a duplicate id is found out when it is claimed (Repository.reserve)
                self._queue[name] = found
        self._order = sorted(self._queue, key=lambda n: (self._queue[n].not_before or 0.0, n))
        queued_ids = {a.id for a in self._queue.values()}
        self._estimates = {k: v for k, v in self._estimates.items() if k in queued_ids}

    def _settled(self, name: str, stamp: tuple[int, int, int], now: float) -> bool:
        """Whether a file that does not parse is done being written, so it may be quarantined.

        Its modification time must be ``inbox.settle-seconds`` old by the shared
        file system's clock, and it must have stayed unchanged that long while this
        worker watched it: a writer whose clock is behind cannot make a file it is
        still writing look old.
        """
        settle = self.settings.inbox_settle_seconds
        seen = self._suspects.get(name)
        watched = time.monotonic()
        if seen is None or seen[0] != stamp:
            self._suspects[name] = (stamp, watched)
            watched_for = 0.0
        else:
            watched_for = watched - seen[1]
        return watched_for >= settle and now - stamp[2] / 1e9 >= settle

    def _quarantine(self, directory: Path, name: str, reason: str) -> None:
        try:
            where = self.repo.quarantine(directory, name, reason)
        except OSError as exc:
            log.error("cannot quarantine %s: %s", printable(name), printable(str(exc)))
            return
        if where is not None:
            log.warning("invalid: %s -> %s", printable(reason), where.relative_to(self.root))

    def _capacity(self) -> Counter[str]:
        return Counter(r.activity.type for r in self._running.values())

    def _runnable(self, activity: Activity, now: float, busy: Counter[str]) -> bool:
        if activity.type not in registered():
            return False
        if busy[activity.type] >= self.settings.concurrency_for(activity.type):
            return False
        if activity.not_before is not None and activity.not_before > now:
            return False
        need = self._megapixels(activity)
        held = sum(r.megapixels for r in self._running.values())
        # An image bigger than the whole cap still runs, alone, rather than never.
        return not held or held + need <= self.settings.megapixel_cap

    def _megapixels(self, activity: Activity) -> float:
        """The decoded megapixels ``activity`` will hold, by its processor's estimate (0 if none)."""
        estimate = registered()[activity.type].megapixels
        if estimate is None:
            return 0.0
        if activity.id not in self._estimates:
            try:
                self._estimates[activity.id] = max(0.0, float(estimate(activity, self.settings)))
            except Exception:  # the processor itself will report what is wrong with its input
                self._estimates[activity.id] = 0.0
        return self._estimates[activity.id]

    def _handles(self, type_: str) -> bool:
        return type_ in registered() and self.settings.concurrency_for(type_) > 0

    def _dispatch(self) -> None:
        idle = self.pool.idle()
        self._next_due = float("inf")
        if not idle:
            return
        now, busy = self.clock.now(), self._capacity()
        next_due = float("inf")
        skipped: list[str] = []
        position = 0
        while idle and position < len(self._order):
            name = self._order[position]
            position += 1
            activity = self._queue.get(name)
            if activity is None:
                continue
            if not self._runnable(activity, now, busy):
                if activity.not_before is not None and activity.not_before > now:
                    next_due = min(next_due, activity.not_before - now)
                skipped.append(name)
                continue
            del self._queue[name]
            try:
                claim = self.repo.claim(name, activity, self.worker_id)
            except OSError as exc:
                log.error("cannot claim %s: %s", printable(name), printable(str(exc)))
                continue
            if claim is None:
                continue
            try:
                duplicate = self.repo.reserve(claim, activity, name)
            except OSError as exc:
                log.error("cannot reserve id %s: %s; requeueing it", activity.id, exc)
                self._requeue_unsettled(claim, exc)
                continue
            if duplicate is not None:
                self._quarantine(self.repo.running, claim.name, duplicate)
                continue
            if activity.attempt > self.settings.retry_max_attempts:
                self._fail(
                    claim,
                    activity,
                    now,
                    f"gave up: attempt {activity.attempt} exceeds retry.max-attempts="
                    f"{self.settings.retry_max_attempts}; the previous attempt was interrupted "
                    "(its worker died or was killed)",
                    "",
                )
                continue
            busy[activity.type] += 1
            slot = idle.pop()
            log.debug("claimed %s (%s, attempt %d)", activity.id, activity.type, activity.attempt)
            task = Task(activity, str(self.repo.attempt_log(activity)))
            megapixels = self._estimates.pop(activity.id, 0.0)
            self._running[slot.index] = _Running(claim, activity, now, megapixels)
            self.pool.send(slot, task, time.monotonic() + self._timeout(activity.type))
        self._order = skipped + self._order[position:]
        self._starved = bool(idle)
        # Wake up when the earliest waiting activity becomes due, not at the next periodic scan.
        self._next_due = time.monotonic() + next_due

    def _timeout(self, type_: str) -> float:
        if type_ in self.settings.timeouts:
            return self.settings.timeouts[type_]
        registration = registered().get(type_)
        if registration is not None and registration.timeout is not None:
            return registration.timeout
        return self.settings.timeout_seconds

    def _next_deadline(self) -> float:
        deadlines = [s.deadline for s in self.pool.busy()]
        return min(deadlines, default=float("inf"))

    def _idle(self) -> bool:
        """Nothing this worker could run remains: nothing running, queued, unsettled or recoverable."""
        if self._running or self._pending or self._unsettled or self._hinted:
            return False
        handled = [a for a in self._queue.values() if self._handles(a.type)]
        now = self.clock.now()
        delayed = [a for a in handled if a.not_before is not None and a.not_before > now]
        if len(delayed) < len(handled):
            return False
        for worker in self._claims_by_worker():
            if worker == self.worker_id:
                return False
            with self.prober.dead(worker) as dead:
                if dead:
                    return False
        if not delayed:
            return True
        count = _counted(len(delayed), "delayed activity", "delayed activities")
        if self.no_wait:
            log.info("%s left queued (--until-idle --no-wait)", count)
            return True
        self._say_waiting(delayed, count, now)
        return False

    def _say_waiting(self, delayed: list[Activity], count: str, now: float) -> None:
        """Say once what ``--until-idle`` waits for, and until when (again when the next one changes)."""
        first = min(delayed, key=lambda a: (a.not_before or 0.0, a.id))
        due = first.not_before or now
        if self._waiting_for == (first.id, due):
            return
        self._waiting_for = (first.id, due)
        log.info(
            "--until-idle: waiting for %s; the next, %s (%s), is due at %s (in %.1fs)",
            count,
            first.id,
            first.type,
            format_time(due),
            due - now,
        )

    # -- settling outcomes ---------------------------------------------------------------------------

    def _settle(self, messages: list[tuple[Slot, Any]]) -> None:
        for slot, message in messages:
            if isinstance(message, tuple) and message and message[0] == "ready":
                slot.ready = True
                continue
            running = self._running.pop(slot.index, None)
            slot.task = None
            if isinstance(message, EOFError):
                ended = how_it_ended(slot.process)
                self.pool.replace(slot, kill=False)
                if running is not None:
                    self._interrupted(running, f"pool process died ({ended})")
                continue
            if running is not None and isinstance(message, Outcome):
                self._outcome(running, message)
                if message.recycle or self.pool.is_stale(slot):
                    self.pool.replace(slot, kill=True)
        for slot in self.pool.idle():
            if self.pool.is_stale(slot):
                self.pool.replace(slot, kill=True)

    def _enforce_timeouts(self) -> None:
        now = time.monotonic()
        for slot in self.pool.busy():
            if now < slot.deadline:
                continue
            running = self._running.pop(slot.index, None)
            limit = self._timeout(running.activity.type) if running else 0.0
            self.pool.replace(slot, kill=True)
            if running is not None:
                log.warning(
                    "%s (%s) timed out after %ss: pool process killed",
                    running.activity.id,
                    running.activity.type,
                    limit,
                )
                self._interrupted(running, f"timed out after {limit}s; the processor was killed")

    def _interrupted(self, running: _Running, reason: str) -> None:
        """An attempt that ended without an answer from its processor: note it in the attempt's log."""
        self._note_in_attempt_log(running.activity, reason)
        self._outcome(running, Outcome("error", error=reason))

    def _note_in_attempt_log(self, activity: Activity, text: str) -> None:
        with (
            contextlib.suppress(OSError),
            self.repo.attempt_log(activity).open(
                "a", encoding="utf-8", errors="backslashreplace"
            ) as attempt_log,
        ):
            attempt_log.write(f"{format_time(self.clock.now())} ERROR {text} (worker {self.worker_id})\n")

    def _unrecordable(
        self,
        claim: ClaimName,
        activity: Activity,
        started: float,
        exc: Exception,
        *,
        last_resort: bool = False,
    ) -> None:
        """An outcome this worker cannot record fails its activity, never the daemon."""
        text = "".join(traceback.format_exception(exc))
        reason = f"spoolpipe could not record the outcome: {type(exc).__name__}: {exc}"
        log.error("%s: %s", activity.id, reason_line(reason), exc_info=True)
        self._note_in_attempt_log(activity, f"{reason}\n{text}")
        if not last_resort and not any(p.claim == claim for p in self._pending):
            try:
                self._fail(claim, activity, started, reason, text, last_resort=True)
                return
            except Exception:
                log.error("cannot fail %s either:", activity.id, exc_info=True)
        log.error("%s stays claimed until its claim is recovered (as its next attempt)", activity.id)

    def _attempt(self, started: float) -> Attempt:
        return Attempt(self.worker_id, self.host, os.getpid(), started, self.clock.now())

    def _outcome(self, running: _Running, outcome: Outcome) -> None:
        """Settle one attempt; whatever goes wrong with this one activity fails it, not the daemon."""
        try:
            self._settle_outcome(running, outcome)
        except OSError:
            raise
        except Exception as exc:
            self._unrecordable(running.claim, running.activity, running.started, exc)

    def _settle_outcome(self, running: _Running, outcome: Outcome) -> None:
        activity, claim = running.activity, running.claim
        self._hinted = True
        if outcome.status == "ok":
            self._done(running, outcome)
        elif outcome.status == "fatal" or _policy(self.settings).gives_up_after(activity.attempt):
            self._fail(claim, activity, running.started, outcome.error, outcome.traceback)
        else:
            delay = _policy(self.settings).delay(activity.attempt)
            try:
                released = self.repo.release(claim, activity.attempt + 1, self.clock.now() + delay)
            except OSError as exc:
                log.error("cannot requeue %s: %s", activity.id, exc)
                return
            if released:
                log.warning(
                    "retry %s (%s) attempt %d in %.1fs: %s",
                    activity.id,
                    activity.type,
                    activity.attempt + 1,
                    delay,
                    reason_line(outcome.error),
                )
            else:
                log.warning("lost the claim on %s before it could be retried; it was taken over", activity.id)

    def _done(self, running: _Running, outcome: Outcome) -> None:
        activity = running.activity
        now = self.clock.now()
        follow_ups = [
            follow_up_document(
                activity,
                f["type"],
                f["data"],
                f["key"],
                None if f["delay"] is None else now + float(f["delay"]),
            )
            for f in outcome.follow_ups
        ]
        record = done_record(
            activity, self._attempt(running.started), outcome.result, [f["id"] for f in follow_ups]
        )
        extra = f", {_counted(len(follow_ups), 'follow-up')}" if follow_ups else ""
        summary = (
            f"done {activity.id} ({activity.type}, attempt {activity.attempt}) in "
            f"{now - running.started:.2f}s{extra}"
        )
        self._defer(_Settled(running.claim, activity, running.started, "done", record, follow_ups, summary))

    def _fail(
        self,
        claim: ClaimName,
        activity: Activity,
        started: float,
        reason: str,
        traceback: str,
        *,
        last_resort: bool = False,
    ) -> None:
        record = failed_record(activity, self._attempt(started), reason, traceback)
        handler = self.settings.failures_handler
        follow_ups = (
            []
            if not handler or activity.type == handler
            else [failure_document(handler, record, self.settings.limits_activity_bytes)]
        )
        summary = (
            f"failed {activity.id} ({activity.type}) after {_counted(activity.attempt, 'attempt')}: "
            f"{record['spoolpipe']['reason']}"
        )
        self._defer(_Settled(claim, activity, started, "failed", record, follow_ups, summary, last_resort))

    def _defer(self, item: _Settled) -> None:
        """Queue an outcome for the next group commit."""
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(item)

    def _flush(self) -> None:
        """Commit every pending outcome as one batch: stage all, one barrier, commit all, publish all."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        for settled, item in zip(
            self.repo.settle([Settlement(i.claim, i.outcome, i.record, i.follow_ups) for i in pending]),
            pending,
            strict=True,
        ):
            if settled.status == "committed":
                (log.info if item.outcome == "done" else log.error)("%s", item.summary)
            elif settled.status == "lost":
                log.warning(
                    "claim on %s was lost (taken over after this worker was presumed dead); "
                    "outcome discarded",
                    item.claim.activity_id,
                )
            elif isinstance(settled.error, OSError):
                self._requeue_unsettled(item.claim, settled.error)
            elif settled.error is not None:  # e.g. a record that cannot be encoded: fail that activity
                self._unrecordable(
                    item.claim, item.activity, item.started, settled.error, last_resort=item.last_resort
                )

    def _requeue_unsettled(self, claim: ClaimName, exc: OSError) -> None:
        """A write failed (disk full...): nothing half-written stays, and the activity stays retryable."""
        log.error("cannot record the outcome of %s: %s; requeueing it", claim.activity_id, exc)
        try:
            self.repo.release(claim, claim.attempt, self.clock.now() + 5.0)
        except OSError as again:
            log.error(
                "cannot requeue %s either (%s); it stays claimed until this worker restarts",
                claim.activity_id,
                again,
            )
        if exc.errno == errno.ENOSPC:
            time.sleep(0.5)

    def _release_all(self, why: str) -> None:
        for slot in self.pool.busy():
            running = self._running.pop(slot.index, None)
            self.pool.kill(slot)  # stopping: no replacement
            if running is not None and self.repo.release(running.claim, running.activity.attempt, None):
                log.warning("released %s back to the inbox: %s", running.activity.id, why)
        self.repo.durability.barrier()

    def _lost_lock(self) -> None:
        """Abandon running work (others may take its claims) and take the lock again before claiming more."""
        if self._running:
            log.error(
                "this worker lost its lock (paused, or cut off from the file system): abandoning running work"
            )
        for slot in self.pool.busy():
            self._running.pop(slot.index, None)
            self.pool.replace(slot, kill=True)
        self.own_lock.release()
        self.own_lock = OwnLock(
            self.repo.locks, self.worker_id, self.lock_mode, self.settings.claims_lease_seconds
        )
        try:
            self.own_lock.acquire(wait=self.settings.claims_lease_seconds * 3)
        except WorkerAlreadyRunning:
            log.error("cannot take this worker's lock back yet; retrying")
            return
        log.info("lock re-acquired")

    # -- recovery ------------------------------------------------------------------------------------

    def _claims_by_worker(self) -> dict[str, list[ClaimName]]:
        grouped: dict[str, list[ClaimName]] = {}
        for claim in self.repo.claims():
            grouped.setdefault(claim.worker, []).append(claim)
        return grouped

    def _recover(self, *, own_only: bool) -> None:
        self._flush()
        active = {r.claim.stem for r in self._running.values()}
        for worker, claims in self._claims_by_worker().items():
            if worker == self.worker_id:
                stale = [c for c in claims if c.stem not in active]
                whose = "left by an earlier run of" if own_only else "abandoned by"
                self._recover_claims(f"{whose} this worker ({worker})", stale)
            elif not own_only:
                with self.prober.dead(worker) as dead:
                    if dead:
                        self._recover_claims(f"of dead worker {worker}", claims)

    def _recover_claims(self, whose: str, claims: list[ClaimName]) -> None:
        if not claims:
            return
        outcomes = Counter(self.repo.recover(c) for c in claims)
        self.repo.durability.barrier()
        log.warning(
            "recovered %s %s: %s",
            _counted(len(claims), "claim"),
            whose,
            ", ".join(f"{n} {k}" for k, n in outcomes.items()),
        )
        self._hinted = True

    # -- heartbeat and configuration -------------------------------------------------------------------

    def _heartbeat(self) -> None:
        # What runs, not what is configured: a reloaded pool.size applies only at restart.
        pool_size = len(self.pool.slots)
        doc = {
            "worker": self.worker_id,
            "host": self.host,
            "pid": os.getpid(),
            "started_at": format_time(self.started),
            "lock_mode": self.lock_mode,
            "pool_size": pool_size,
            "types": {t: min(self.settings.concurrency_for(t), pool_size) for t in self._handled_types()},
            "running": sorted(r.activity.id for r in self._running.values()),
        }
        target = self.repo.heartbeats / f"{self.worker_id}.json"
        # One temp name per worker: one killed mid-write leaves one file, which its next heartbeat reuses.
        tmp = self.repo.tmp / f"heartbeat-{self.worker_id}.tmp"
        try:
            tmp.write_bytes(dumps(doc))
            os.replace(tmp, target)
        except OSError as exc:
            log.warning("cannot write heartbeat: %s", exc)

    def _config_mtimes(self) -> tuple[float | None, ...]:
        stamps: list[float | None] = []
        for path in config.config_files(self.root, self.worker_id):
            try:
                stamps.append(path.stat().st_mtime_ns)
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def _maybe_reload(self) -> None:
        stamp = self._config_mtimes()
        if stamp == self._config_stamp and not self._reload_requested:
            return
        self._config_stamp = stamp
        self._reload_requested = False
        try:
            settings = self._load()
            if (settings.processors, settings.processors_path) != (
                self.settings.processors,
                self.settings.processors_path,
            ):
                import_processors(settings.processors, [str(p) for p in settings.processors_path])
        except (config.ConfigError, ProcessorImportError) as exc:
            log.error("configuration change rejected, keeping the previous configuration:\n%s", exc)
            return
        old = self.settings
        self.settings = settings
        self.repo.durability.enabled = settings.durability_fsync
        logging.getLogger("spoolpipe").setLevel(self.log_level or settings.log_level)
        if settings != old:  # pool processes hold the settings: replace them as they become idle
            self.pool.setup = self._setup()
            self.pool.mark_stale()
        if settings.pool_size != len(self.pool.slots):
            log.warning(
                "pool.size = %d takes effect at restart; until then the pool keeps its %s",
                settings.pool_size,
                _counted(len(self.pool.slots), "process", "processes"),
            )
        log.info("configuration reloaded from %s", ", ".join(str(p) for p in settings.sources))

    def _maybe_reload_code(self) -> None:
        """Re-import configured processor modules whose file changed, then replace the pool's processes."""
        stamp = processor_files(self.settings.processors)
        changed = sorted(m for m in stamp.keys() & self._code_stamp.keys() if stamp[m] != self._code_stamp[m])
        self._code_stamp = stamp
        if not changed:
            return
        files = ", ".join(stamp[m][0] for m in changed)
        try:
            reload_processors(changed, [str(p) for p in self.settings.processors_path])
        except ProcessorImportError as exc:
            log.error(
                "processor code changed (%s) but cannot be imported, keeping the running pool processes:\n%s",
                files,
                exc,
            )
            return
        log.info("processor code changed (%s): replacing pool processes as they become idle", files)
        self.pool.mark_stale()


def iter_heartbeats(repo: Repository) -> Iterator[tuple[dict[str, Any], float]]:
    """Every heartbeat document and its mtime (by the shared file system's clock)."""
    import json

    for path in sorted(repo.heartbeats.glob("*.json")):
        try:
            mtime = path.stat().st_mtime
            yield json.loads(path.read_text()), mtime
        except (OSError, ValueError):
            continue
