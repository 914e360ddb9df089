"""The worker daemon: reads the inbox, hands batches to its pool processes, supervises them.

One activity's path: the intake finds it (``Intake.take``), the admission puts
it in a batch for an idle pool process (``Admission.hand_out``), which claims,
runs, decides and commits it (``attempt.Attempts``) and reports back; the daemon
logs the report (``_finished``). Everything else is supervision: timeouts, dead pool
processes, recovery of dead workers' claims, heartbeats (the document is
``heartbeat``'s), reloads (what changed is ``reload``'s), shutdown; when
``--until-idle`` is done is ``idle``'s decision.
Filesystem notifications bring new names at once; a full listing every
``scan.interval-seconds`` is what finds files written by other machines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import math
import os
import resource
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import circuit, config, control, heartbeat, service, worker_log
from .activity import format_time
from .admission import Admission, handles
from .attempt import Item, Setup, counted, quarantine
from .idle import UntilIdle
from .intake import Intake
from .liveness import OwnLock, Prober, WorkerAlreadyRunning, resolve_mode
from .notify import Arrivals
from .pool import (
    Died,
    Event,
    Finished,
    Pool,
    ProcessorImportError,
    import_processors,
)
from .processor import registered, timeout_for
from .recovery import Recovery
from .reload import Reloads, load
from .repository import Repository, SharedClock
from .retention import ScheduledPurges
from .schedule.fire import Scheduler

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger("spoolpipe.worker")
#: Exit code of a worker stopped by an unexpected exception (a bug): EX_SOFTWARE of sysexits.h.
EXIT_CRASH = 70


class StartupError(Exception):
    """The worker cannot start; the message says why and what to do."""

    #: The documented exit code (docs/operations.md "Exit codes").
    exit_code = 3


class InvalidConfiguration(StartupError):
    """The worker cannot start because its configuration is invalid: a configuration error, exit 2."""

    exit_code = 2


def default_worker_id() -> str:
    host = socket.gethostname().split(".")[0]
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in host).strip("-._")
    return cleaned or "worker"


def _os_error(exc: OSError) -> str:
    """What the loop says of an OSError: out of file descriptors is no file system's fault."""
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return (
            f"out of file descriptors ({exc}): this process may open {soft}; raise the limit "
            "(ulimit -n, or LimitNOFILE= in the systemd unit), or lower pool.size"
        )
    return f"file system error: {exc}"


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
        self._until_idle = UntilIdle(no_wait=no_wait)
        self.host = socket.gethostname()
        self.repo = Repository(root, worker=worker_id)
        self._stopping = False
        self._reload_requested = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._arrivals: Arrivals | None = None
        self._interrupted: list[Item] = []  # claims whose attempt ended without an answer, to settle
        self._rescan = True
        self.metrics: Metrics | None = None  # only with metrics.file or metrics.port
        self._metrics_off: Metrics | None = None  # switched off by a reload: its counters go on if back
        self._purges = ScheduledPurges(root, worker_id)

    # -- start-up ------------------------------------------------------------------------------

    def _start(self) -> bool:
        """Load, lock and spawn the pool; False when a signal stopped the worker before it could start."""
        self.repo.check()
        try:
            self.settings = load(self.root, self.worker_id)
        except config.ConfigError as exc:
            raise InvalidConfiguration(f"invalid configuration:\n{exc}") from None
        self._adopt()
        try:
            import_processors(self.settings.processors, [str(p) for p in self.settings.processors_path])
        except ProcessorImportError as exc:
            raise StartupError(str(exc)) from None
        self.reloads = Reloads(self.root, self.worker_id, self.settings)
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
        except OSError as exc:  # another user's lock file, a folder in the way
            lock = self.repo.locks / f"{self.worker_id}.lock"
            raise StartupError(f"cannot take its lock {lock}: {exc.strerror or exc}") from None
        self.prober = Prober(self.repo.locks, self.lock_mode, self.settings.claims_lease_seconds)
        self.recovery = Recovery(self.repo, self.prober, self.worker_id, lambda: self._stopping)
        self.clock = SharedClock(self.repo.heartbeats / f".clock-{self.worker_id}")
        self.circuits = circuit.Circuits(lambda: self.settings.circuits, self._circuit_changed)
        self.schedules = Scheduler(
            self.repo, self.worker_id, self.repo.heartbeats / f".clock-{self.worker_id}"
        )
        self.started = self.clock.now()
        self.requests = control.Mailbox(
            self.repo, self.worker_id, control.Incarnation(self.host, os.getpid(), format_time(self.started))
        )
        self.repo.drop_spares(self.worker_id)  # of an earlier run of this worker: its lock is ours
        self.pool = Pool(self.settings.pool_size, self._setup())  # started once there is work
        try:
            self._configure_metrics()
        except OSError as exc:
            self.own_lock.release()
            raise StartupError(str(exc)) from None
        self._recover(own_only=True)
        self.intake = Intake(
            self.repo,
            limit=lambda: self.settings.limits_activity_bytes,
            settle=lambda: self.settings.inbox_settle_seconds,
        )
        self.admission = Admission(
            self.intake, self.pool, self.circuits, lambda: self.settings, self._quarantine
        )
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
        service.notify("READY=1")  # its signal handlers are in place: systemd may reload or stop it now
        return True

    def _setup(self) -> Setup:
        s = self.settings
        return Setup(
            s.processors,
            tuple(str(p) for p in s.processors_path),
            str(self.root),
            self.worker_id,
            self.host,
            os.getpid(),
            s,
        )

    def _adopt(self) -> None:
        """What of the settings the daemon applies itself, at start and at each reload."""
        self.repo.durability.enabled = self.settings.durability_fsync
        logging.getLogger("spoolpipe").setLevel(self.log_level or self.settings.log_level)

    def _handled_types(self) -> list[str]:
        return sorted(t for t in registered() if self._handles(t))

    def _handles(self, type_: str) -> bool:
        return handles(self.settings, type_)

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

    def _obey(self, request: control.Request) -> None:
        """A request file for this run: reload is SIGHUP, stop is SIGTERM, stop-now ends the grace at once."""
        if request is control.Request.RELOAD:
            self._reload_requested = True
            return
        self._stopping = True
        if request is control.Request.STOP_NOW:
            self._grace_deadline = 0.0
        self._wake()

    def _watch_as_set(self) -> None:
        """Start or stop watching the inbox as ``scan.watch`` now says (after a reload)."""
        if self.settings.scan_watch and self._arrivals is None:
            self._start_watching()
        elif not self.settings.scan_watch and self._arrivals is not None:
            self._arrivals.close()
            self._arrivals = None

    def _start_watching(self) -> None:
        if not self.settings.scan_watch:
            return
        try:
            self._arrivals = Arrivals(self.repo.inbox)
        except OSError as exc:
            log.warning(
                "no filesystem notifications (%s); polling every %ss",
                exc,
                self.settings.scan_interval_seconds,
            )

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
                log.error("%s; retrying in 1s", _os_error(exc))
                self._rescan = True
                time.sleep(1.0)

    def _step(self) -> bool:
        """One turn of the loop; False when the worker should stop."""
        now = time.monotonic()
        if self._stopping and not self._stop_step(now):
            return False
        if not self.own_lock.held():
            self._lost_lock()
            if not self.own_lock.held():
                self.pool.may_claim_until(-math.inf)
                return True  # claims, runs and writes nothing until the lock is this worker's again
        if self.lock_mode == "lease":  # others take a lease unrefreshed for one: stop short of that
            self.pool.may_claim_until(now + 0.75 * self.settings.claims_lease_seconds)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.settings.heartbeat_interval_seconds
            self._heartbeat()
            for request in self.requests.take():  # spoolpipe stop / reload, from any machine
                self._obey(request)
            self._reload()
            if not self._stopping:
                self._purges.tick(self.settings, now)
                self._sweep()
        elif self._reload_requested:  # SIGHUP: at once, not at the next heartbeat
            self._reload()
        if not self._stopping:
            if now >= self._next_recovery:
                self._next_recovery = now + self.settings.scan_interval_seconds
                self._recover(own_only=False)
            if now >= self._next_scan or self._rescan:
                self._rescan = False
                self._next_scan = now + self.settings.scan_interval_seconds
                self.intake.rescan()
            if not self.until_idle:  # a batch run leaves schedules to the workers that stay
                self.intake.add(self.schedules.fire(self.settings.schedules, self.clock.now()))
            self._dispatch()
            if self.until_idle and self._idle():
                log.info("nothing left to run: exiting (--until-idle)")
                return False
        events = self.pool.wait(self._timeout(now), self._wakers())
        with worker_log.held():  # a batch's lines, one write
            for event in events:
                self._handle(event)
        self._drain_wakers()
        self._enforce_timeouts()
        return True

    def _sweep(self) -> None:
        """What crashes left, on any machine; upkeep, which never keeps the loop from its work."""
        try:
            self.repo.sweep_tmp(self.clock.now())
        except OSError as exc:
            log.warning("cannot sweep tmp/, reports/ and ids/: %s", exc)

    def _timeout(self, now: float) -> float:
        """How long the loop may wait for an event: until the next thing it must do by itself."""
        deadlines = [self._next_heartbeat, self._grace_deadline, self._next_deadline()]
        if self._stopping:  # it scans, hands out and fires nothing more: those deadlines never move on
            return min(deadlines) - now
        deadlines.append(self._next_scan)
        due, shared_now = self.intake.next_due(), self.clock.now()
        idle = self.pool.idle() or not self.pool.slots  # the pool starts with the first work
        if shared_now < due < float("inf") and idle:
            # Wake up when the earliest waiting activity becomes due, not at the next periodic scan.
            # (One due already but not handed out waits for a pool process to finish: no busy loop.)
            deadlines.append(now + due - shared_now)
        if self.intake.cut_short and idle:  # it looked past as many as it may at once: on at once
            deadlines.append(now)
        deadlines.append(now + self.schedules.next_fire() - shared_now)  # at its time, not a heartbeat's
        deadlines.append(self.circuits.next_change())  # a cool-down's end: time for a probe
        return min(deadlines) - now

    def _wakers(self) -> list[Any]:
        wakers: list[Any] = [self._wake_r] if self._arrivals is None else [self._wake_r, self._arrivals]
        return wakers if self.metrics is None else wakers + self.metrics.waitables()

    def _drain_wakers(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass
        if self._arrivals is not None:
            names = self._arrivals.read()
            if names is None:  # events were lost
                self._rescan = True
            else:
                self.intake.add(names)
        if self.metrics is not None:
            self.metrics.serve()

    def _stop_step(self, now: float) -> bool:
        """Stopping: let running work end within the grace period; False once the worker may exit."""
        if self._grace_deadline == float("inf"):
            service.notify("STOPPING=1")
            self._grace_deadline = now + self.settings.shutdown_grace_seconds
            for slot in self.pool.busy():
                slot.end_after_current()
            log.info(
                "stopping: no new claims; %s may finish within %ss",
                counted(len(self.pool.busy()), "running activity", "running activities"),
                self.settings.shutdown_grace_seconds,
            )
        if not self.pool.busy():
            return False
        if now >= self._grace_deadline:
            self._release_all("shutdown grace period over")
            return False
        return True

    def _shutdown(self) -> None:
        service.notify("STOPPING=1")  # again, if it stopped without a drain (a start that failed)
        self._purges.stop()
        for item in self._interrupted:  # never settled: a crash counts as an attempt
            log.warning(
                "%s (%s): attempt %d %s; stopping, so queued as its next attempt with no record of this",
                item.activity.id,
                item.activity.type,
                item.activity.attempt,
                item.interrupted,
            )
            self.repo.recover(self.recovery.claim_of(item))
        self.repo.durability.barrier()
        self.pool.close()
        self.repo.drop_spares(self.worker_id)
        if self._arrivals is not None:
            self._arrivals.close()
        if self.metrics is not None:
            self.metrics.close(self.clock.now())
        with contextlib.suppress(OSError):
            heartbeat.path(self.repo, self.worker_id).unlink()
        self.own_lock.release()

    # -- handing out work ------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Give each idle pool process a batch (``Admission``), interrupted attempts first, to settle."""
        self.circuits.tick(time.monotonic(), self._in_flight())
        if not self.pool.slots:
            if not self._interrupted and self.intake.next_due() > self.clock.now():
                return
            self.pool.start()  # only once there is work: an idle start costs no processes
        for slot in self.pool.idle():
            if self.pool.is_stale(slot):  # new settings or processor code: a fresh process runs the next
                self.pool.replace(slot)
        idle = self.pool.idle()
        while idle and self._interrupted:
            self.admission.send(idle.pop(), [self._interrupted.pop(0)])
        if idle:
            # One copy of an id at a time in this worker: its pool processes share one claim name for it.
            self.admission.hand_out(idle, self._in_flight(), self.clock.now())
        self.admission.make_way()

    def _in_flight(self) -> set[str]:
        return {i.activity.id for s in self.pool.busy() for i in s.batch} | {
            i.activity.id for i in self._interrupted
        }

    def _circuit_changed(self, change: circuit.Change) -> None:
        log.log(change.level, "%s", change.message)
        if not self.circuits.holds(change.type):  # its set-aside activities may be claimed again
            self.intake.reconsider(self.admission.claimable)

    def _quarantine(self, name: str, reason: str) -> bool:
        """False when the entry could not be moved (and is still in the inbox)."""
        report = quarantine(self.repo, self.repo.inbox, name, reason)
        if report is None:
            return True  # gone meanwhile
        log.log(report.level, "%s", report.message)
        if self.metrics is not None:
            self.metrics.count(report)
        return report.quarantined

    def _next_deadline(self) -> float:
        deadlines = [0.0]
        for slot in self.pool.busy():
            timed = slot.timed()
            if timed is not None:
                deadlines.append(timed[1] + timeout_for(self.settings, timed[0].activity.type))
        return min(deadlines[1:], default=float("inf"))

    def _idle(self) -> bool:
        """Nothing this worker could run remains: nothing running, queued, unsettled or recoverable,
        and nothing ``--until-idle`` waits for (``idle.verdict``)."""
        if self.pool.busy() or self._interrupted or self._rescan or self.intake.unsettled():
            return False
        now = self.clock.now()
        if self.intake.next_due() <= now:
            return False
        if self.recovery.recoverable():
            return False
        held = self.circuits.holding(self.intake.set_aside())
        return self._until_idle.idle(
            held, lambda: self.intake.delayed(now, self._handles), now, time.monotonic()
        )

    # -- what pool processes say ---------------------------------------------------------------------

    def _handle(self, event: Event) -> None:
        if isinstance(event, Finished):
            self._finished(event)
        elif isinstance(event, Died):
            self._died(event)

    def _finished(self, event: Finished) -> None:
        metrics = self.metrics
        batch_ids = {i.activity.id for i in event.batch}
        for report in event.reports:
            log.log(report.level, "%s", report.message)
            if metrics is not None:
                metrics.count(report)
            if report.ending is not None:
                self.circuits.ended(report.type, report.ending, time.monotonic(), batch_ids)
        self.admission.finished(event)
        self.intake.add(item.name for item in event.batch[event.taken :])  # untouched: still in the inbox
        if self._arrivals is None and self.intake.next_due() > self.clock.now():
            self._rescan = True  # nothing else to do: look for its follow-ups and retries now
        if (event.recycle or self.pool.is_stale(event.slot)) and not self._stopping:
            self.pool.replace(event.slot)

    def _died(self, event: Died) -> None:
        self.admission.freed(event.slot)
        self._abandoned(event.batch, event.current, event.ran, f"pool process died ({event.how})")
        if not self._stopping:
            self.pool.replace(event.slot)

    def _enforce_timeouts(self) -> None:
        now = time.monotonic()
        for slot in self.pool.busy():
            timed = slot.timed()
            if timed is None:
                continue
            item, started = timed
            limit = timeout_for(self.settings, item.activity.type)
            if now < started + limit:
                continue
            batch, index, ran = slot.batch, int(slot.progress[0]), slot.ran()
            if slot.current() is None:  # stopped (SIGSTOP) or stuck outside any activity
                log.warning(
                    "pool process %d did not start its batch within %ss, or did not answer once done: killed",
                    slot.index,
                    limit,
                )
            else:
                log.warning(
                    "%s (%s) timed out after %ss: pool process killed",
                    item.activity.id,
                    item.activity.type,
                    limit,
                )
                if self.metrics is not None:
                    self.metrics.timed_out(item.activity.type)
            self.pool.kill(slot)
            slot.batch = ()
            self.admission.freed(slot)
            self._abandoned(batch, index, ran, f"timed out after {limit}s; the processor was killed")
            self.pool.replace(slot)

    def _abandoned(self, batch: Sequence[Item], current: int, ran: int, reason: str) -> None:
        abandoned = self.recovery.abandoned(batch, current, ran, reason)
        self._interrupted += abandoned.interrupted
        self.intake.add(abandoned.untouched)

    def _release_all(self, why: str) -> None:
        for slot in self.pool.busy():
            batch, slot.batch = slot.batch, ()
            self.pool.kill(slot)  # stopping: no replacement
            self.recovery.release(batch, slot.ran(), why)

    def _recover(self, *, own_only: bool) -> None:
        active = [i for s in self.pool.busy() for i in s.batch] + self._interrupted
        settled = self.recovery.recover(active, own_only=own_only)
        if settled:
            self._rescan = True
            if self.metrics is not None:
                self.metrics.recovered(settled)

    def _lost_lock(self) -> None:
        """Abandon running work (others may take its claims) and take the lock again before claiming more."""
        if self.pool.busy():
            log.error(
                "this worker lost its lock (paused, or cut off from the file system): abandoning running work"
            )
        for slot in self.pool.busy():
            slot.batch = ()
            self.pool.replace(slot)
        self._interrupted.clear()
        self.own_lock.release()
        self.own_lock = OwnLock(
            self.repo.locks, self.worker_id, self.lock_mode, self.settings.claims_lease_seconds
        )
        try:
            if not self.own_lock.acquire(
                wait=self.settings.claims_lease_seconds * 3, cancelled=lambda: self._stopping
            ):
                return
        except WorkerAlreadyRunning:
            log.error("cannot take this worker's lock back yet; retrying")
            return
        log.info("lock re-acquired")
        self._rescan = True

    # -- heartbeat and reload -------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        now, mono = self.clock.now(), time.monotonic()
        running = []
        for slot in self.pool.busy():
            current = slot.current()
            if current is not None:
                activity, started = current[0].activity, current[1]
                timeout = timeout_for(self.settings, activity.type)
                running.append(
                    heartbeat.Running(
                        activity.id, activity.type, activity.attempt, now - (mono - started), timeout
                    )
                )
        doc = heartbeat.document(
            worker_id=self.worker_id,
            host=self.host,
            pid=os.getpid(),
            started=self.started,
            lock_mode=self.lock_mode,
            pool_size=self.pool.size,
            concurrency={t: self.settings.concurrency_for(t) for t in self._handled_types()},
            running=running,
            circuits=self.circuits.published(mono, now),
        )
        heartbeat.write(self.repo, self.worker_id, doc)
        if self.metrics is not None:
            self.metrics.heartbeat(now)

    def _reload(self) -> None:
        """Take new settings and processor code as ``Reloads`` finds them: pool processes hold both, so
        they are replaced as they become idle."""
        requested, self._reload_requested = self._reload_requested, False
        settings = self.reloads.settings(self.settings, requested)
        if settings is not None:
            # pool.size waits for a restart: until then concurrency.default = 0 means the pool that runs
            old, self.settings = self.settings, dataclasses.replace(settings, pool_size=self.pool.size)
            try:
                self._configure_metrics()
            except OSError as exc:
                log.error("metrics: %s", exc)
            self._adopt()
            self._watch_as_set()
            # The next heartbeat was planned with the old interval: a shorter one applies now.
            beat = time.monotonic() + self.settings.heartbeat_interval_seconds
            self._next_heartbeat = min(self._next_heartbeat, beat)
            if self.settings != old:
                self.pool.setup = self._setup()
                self.pool.mark_stale()
                self.intake.reconsider(self._handles)
            self.reloads.reloaded(settings, self.pool.size)
        if self.reloads.code(self.settings):
            self.pool.mark_stale()
            self.intake.reconsider(self._handles)  # types the new code registers run what waited

    def _configure_metrics(self) -> None:
        """Start, change or stop reporting metrics as the settings say; ``OSError`` if they cannot be."""
        s = self.settings
        if s.metrics_file is None and not s.metrics_port:
            if self.metrics is not None:
                self.metrics.close(self.clock.now())
                self._metrics_off, self.metrics = self.metrics, None  # its counters, if they come back
            return
        if self.metrics is None:
            self.metrics = self._metrics_off or self._new_metrics()
        self.metrics.configure(s.metrics_file, s.metrics_host, s.metrics_port, self.clock.now())

    def _new_metrics(self) -> Metrics:
        from .metrics import Metrics  # only now: a worker without metrics never loads prometheus_client

        known = registered()
        return Metrics(self.repo, self.worker_id, self.started, lambda t: t in known, self._handled_types())
