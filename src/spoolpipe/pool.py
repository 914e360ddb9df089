"""Persistent pool processes and the daemon's protocol with them.

A pool process imports the processor modules once, then runs batches of
activities it is handed (``attempt.Attempts``: claim, run, commit) and
answers with what the daemon should log. The daemon sees only typed events:
:class:`Ready`, :class:`Finished`, :class:`Died`. Each process publishes which
item of its batch runs since when, so the daemon can enforce timeouts; a
process stuck past its deadline is killed and replaced, the only way to really
stop code blocked in C.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import math
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from . import _libc
from .attempt import RAN, Attempts, Item, Report, Setup
from .processor import forget_registrations, registrations, restore_registrations

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

_BUILTIN_MODULES = (
    "spoolpipe.failure",
    "spoolpipe.image_processors",
    "spoolpipe.builtins.command",
    "spoolpipe.builtins.files",
    "spoolpipe.builtins.http",
)


class ProcessorImportError(Exception):
    """A processor module could not be imported: which one, where it was looked for, and the traceback."""

    def __init__(self, module: str, paths: Sequence[str], error: BaseException) -> None:
        self.module = module
        searched = ", ".join(p if os.path.isdir(p) else f"{p} (missing)" for p in paths) or "(empty)"
        self.traceback = "".join(traceback.format_exception(error))
        # What a fix would change: the files the error went through, and the folders a missing
        # module would be created in.
        files = [frame.filename for frame in traceback.extract_tb(error.__traceback__)]
        if isinstance(error, SyntaxError) and error.filename:
            files.append(error.filename)
        self.files = tuple(dict.fromkeys(f for f in (*files, *paths) if not f.startswith("<")))
        super().__init__(
            f"cannot import processor module {module!r}: {type(error).__name__}: {error}\n"
            f"processors.path: {searched} (searched before the rest of sys.path)\n{self.traceback}".rstrip()
        )


class ExitAtImport(BaseException):
    """A module called ``os._exit`` while it imported: that would end the worker with no word in its
    log (and with 0, as a clean stop), so it raises this instead, an import error like any other."""


@contextlib.contextmanager
def _exit_refused() -> Iterator[None]:
    real = os._exit

    def refuse(status: int) -> NoReturn:
        raise ExitAtImport(f"os._exit({status}) called while the module imported")

    os._exit = refuse
    try:
        yield
    finally:
        os._exit = real


def import_processors(modules: Sequence[str], paths: Sequence[str], *, again: Sequence[str] = ()) -> None:
    """Import the built-in and configured processor modules, running those of ``again`` that were
    imported before once more (their code changed, or ``processors.path`` did).

    All or nothing: on :class:`ProcessorImportError` the processors registered and every module
    are as before, so that no code of a module that failed half-way runs (nor do pool processes
    forked afterwards inherit it).
    """
    for path in paths:
        if path not in sys.path:
            sys.path.insert(0, path)
    importlib.invalidate_caches()
    saved = registrations()
    fresh = [m for m in modules if m not in sys.modules]
    rerun = {m: sys.modules[m] for m in again if m in sys.modules}
    namespaces = {m: dict(module.__dict__) for m, module in rerun.items()}
    try:
        for name in (*_BUILTIN_MODULES, *modules):
            try:
                with _exit_refused():
                    if name in rerun:
                        forget_registrations(name)
                        importlib.reload(rerun[name])
                    else:
                        importlib.import_module(name)
            except BaseException as exc:  # sys.exit() at import too: it ended the worker as a clean stop
                raise ProcessorImportError(name, paths, exc) from exc
    except ProcessorImportError:
        restore_registrations(saved)
        for name in fresh:
            sys.modules.pop(name, None)
        for name, module in rerun.items():
            module.__dict__.clear()
            module.__dict__.update(namespaces[name])
            sys.modules[name] = module
        raise


def processor_files(modules: Sequence[str]) -> dict[str, tuple[str, int | None]]:
    """Each imported module's source file and its mtime (None once it is gone), to notice code changes."""
    files: dict[str, tuple[str, int | None]] = {}
    for name in modules:
        path = getattr(sys.modules.get(name), "__file__", None)
        if not path:
            continue
        try:
            files[name] = (path, os.stat(path).st_mtime_ns)
        except OSError:
            files[name] = (path, None)
    return files


#: Index in a slot's ``progress`` of the process group of the command its process runs (0: none).
#: ``builtins.command`` publishes it: that group is a session of its own, which would outlive a
#: killed pool process, so :meth:`Pool.kill` kills it too.
COMMAND_GROUP = 4
#: In a pool process: its ``progress`` (None in the daemon).
own_progress: Any = None


def _kill_command_group(progress: Any) -> None:
    group = int(progress[COMMAND_GROUP])
    if group > 0:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)


def _stopped(pid: int, wait: float = 1.0) -> bool:
    """Whether ``pid`` is stopped (``T`` in /proc), waiting up to ``wait`` s for a SIGSTOP to land."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        if state in (b"T", b"t"):
            return True
        if state in (b"Z", b"X") or time.monotonic() > deadline:
            return False
        time.sleep(0.001)


def _die_with_parent() -> None:
    prctl = _libc.function("prctl", [ctypes.c_int, ctypes.c_ulong])
    if prctl is not None:
        prctl(_libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:
        os._exit(1)


@dataclass(frozen=True)
class Ready:
    slot: Slot


@dataclass(frozen=True)
class Finished:
    """A batch ran: what to log, and the items it did not touch (``taken`` were)."""

    slot: Slot
    batch: tuple[Item, ...]
    reports: tuple[Report, ...]
    taken: int
    recycle: bool
    seconds: float  # from sending the batch to its answer


@dataclass(frozen=True)
class Died:
    """The process ended (crashed, killed, or stopped after a recycle request)."""

    slot: Slot
    batch: tuple[Item, ...]
    current: int  # index of the item that was running, -1 if none
    ran: int  # how many items had run (Slot.ran)
    how: str


Event = Ready | Finished | Died


@dataclass(frozen=True)
class _Answer:
    reports: tuple[Report, ...]
    taken: int
    recycle: bool


def _close_inherited(keep: int) -> None:
    """A forked process keeps only its pipe and the standard streams (not the daemon's lock, inotify...)."""
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd != keep:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _left_to_the_daemon(signum: int, frame: object) -> None:
    """A pool process does nothing on SIGINT, SIGTERM or SIGHUP: its daemon stops it."""


def _child_main(conn: Connection, setup: Setup, progress: Any, forked: bool) -> None:
    global own_progress
    _die_with_parent()
    own_progress = progress
    if forked:  # start as a spawned process would: no daemon log handlers, its own random state
        _close_inherited(conn.fileno())
        spoolpipe_log = logging.getLogger("spoolpipe")
        spoolpipe_log.handlers.clear()
        spoolpipe_log.setLevel(logging.NOTSET)
        spoolpipe_log.propagate = True
        random.seed()
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the daemon's to act on (Ctrl-C reaches all)
        signal.signal(s, _left_to_the_daemon)  # caught, not ignored: exec resets it for programs started here
    # Started as a daemon process (never outliving the daemon), but its processors may start processes
    # of their own (ProcessPoolExecutor): multiprocessing refuses that to a daemon process.
    import multiprocessing

    multiprocessing.current_process().daemon = False
    import_processors(setup.modules, setup.paths)
    attempts = Attempts(setup)
    conn.send("ready")
    try:
        while True:
            try:
                batch = conn.recv()
            except (EOFError, OSError):
                return
            if batch is None:
                return
            reports, taken, recycle = attempts.run(batch, progress)
            conn.send(_Answer(tuple(reports), taken, recycle))
            if recycle:
                return
    finally:
        attempts.repo.spares.drop()


def _reaped(process: BaseProcess, timeout: float) -> bool:
    """Whether the process ended within ``timeout`` seconds.

    Not ``join``: a forked pool process closes the pipe its end is signalled by
    (``_close_inherited``), so ``join`` finds it at once and then waits for the
    exit with no timeout: a process kept alive by a thread its processor left
    would block the daemon for good.
    """
    start = time.monotonic()
    while process.exitcode is None:  # a non-blocking waitpid
        waited = time.monotonic() - start
        if waited >= timeout:
            return False
        time.sleep(0.0005 if waited < 0.02 else 0.005)  # most end within milliseconds: an exit waits less
    return True


def how_it_ended(process: BaseProcess) -> str:
    """``exit code N`` or ``killed by SIGNAME``, once the (dead) process is reaped."""
    _reaped(process, 5)
    code = process.exitcode
    if code is None:
        return "exit code unknown: still running"
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


@dataclass(eq=False)
class Slot:
    """One pool process and the batch it runs."""

    index: int
    process: BaseProcess
    conn: Connection
    #: Shared with the process: [index of the running item or -1, monotonic time it started,
    #: 1 = stop, monotonic time until which it may claim (the worker holds its lock until then),
    #: process group of the command it runs or 0 (COMMAND_GROUP), how many items have run (RAN)].
    progress: Any
    ready: bool = False
    batch: tuple[Item, ...] = ()
    sent: float = 0.0  # time.monotonic() the batch was sent

    def current(self) -> tuple[Item, float] | None:
        """The item running now and since when (``time.monotonic``), if any."""
        index = int(self.progress[0])
        if 0 <= index < len(self.batch):
            return self.batch[index], float(self.progress[1])
        return None

    def timed(self) -> tuple[Item, float] | None:
        """What a timeout counts for, and since when: the item running, or else (a batch not started
        yet, or done and not answered yet) its first one, since it was sent or its last item ended."""
        current = self.current()
        if current is None and self.batch:
            return self.batch[0], float(self.progress[1])
        return current

    def end_after_current(self) -> None:
        """The process takes no more of its batch once the running item is done (the rest comes back)."""
        self.progress[2] = 1

    def ending(self) -> bool:
        return bool(self.progress[2])

    def ran(self) -> int:
        """How many items of its batch have run: their attempts count, whatever became of their outcomes."""
        return int(self.progress[RAN])


class Pool:
    """A fixed number of processes, started when there is first work for them.

    Processes are forked while the daemon has a single thread (fast: no new
    interpreter, modules already imported), spawned otherwise.
    """

    def __init__(self, size: int, setup: Setup) -> None:
        self.size = size
        self.setup = setup
        self.slots: list[Slot] = []
        self._stale: set[int] = set()  # pids of processes started before the setup or the code changed
        self._claims_until = math.inf

    def may_claim_until(self, until: float) -> None:
        """Pool processes claim only until ``until`` (``time.monotonic``, one clock for all processes):
        the lock of a worker whose daemon is stopped may be taken while its processes still run."""
        self._claims_until = until
        for slot in self.slots:
            slot.progress[3] = until

    def start(self) -> None:
        if not self.slots:
            self.slots = [self._spawn(i) for i in range(self.size)]

    def _spawn(self, index: int) -> Slot:
        import multiprocessing.sharedctypes  # here: a worker that never forks one need not import it

        forked = threading.active_count() == 1 and sys.platform.startswith("linux")
        mp: Any = multiprocessing.get_context("fork" if forked else "spawn")
        progress = multiprocessing.sharedctypes.RawArray(ctypes.c_double, 6)
        progress[0], progress[3] = -1, self._claims_until
        parent, child = mp.Pipe()
        process = mp.Process(
            target=_child_main,
            args=(child, self.setup, progress, forked),
            name=f"spoolpipe-pool-{index}",
            daemon=True,
        )
        process.start()
        child.close()
        return Slot(index, process, parent, progress)

    def mark_stale(self) -> None:
        """Every current process is to be replaced once it is idle (new settings or processor code):
        a busy one ends its batch after the activity it runs (the rest goes back to the daemon), so
        that every activity that starts from now on runs with the new."""
        self._stale = {s.process.pid or 0 for s in self.slots}
        for slot in self.busy():
            slot.end_after_current()

    def is_stale(self, slot: Slot) -> bool:
        return (slot.process.pid or 0) in self._stale

    def idle(self) -> list[Slot]:
        return [s for s in self.slots if s.ready and not s.batch]

    def busy(self) -> list[Slot]:
        return [s for s in self.slots if s.batch]

    def send(self, slot: Slot, batch: Sequence[Item]) -> None:
        slot.batch, slot.sent = tuple(batch), time.monotonic()
        slot.progress[0], slot.progress[2], slot.progress[RAN] = -1, 0, 0
        slot.progress[1] = slot.sent
        slot.conn.send(list(batch))

    def wait(self, timeout: float, extra: Sequence[Any]) -> list[Event]:
        """Events from pool processes, waiting at most ``timeout`` (or until one of ``extra`` is readable)."""
        import multiprocessing.connection

        conns = {s.conn: s for s in self.slots}
        ready = multiprocessing.connection.wait([*conns, *extra], timeout=max(0.0, timeout))
        events: list[Event] = []
        for item in ready:
            slot = conns.get(item)  # type: ignore[call-overload]
            if slot is not None:
                events.append(self._receive(slot))
        return events

    def _receive(self, slot: Slot) -> Event:
        batch, current = slot.batch, int(slot.progress[0])
        try:
            message = slot.conn.recv()
        except Exception:  # EOF: it died; garbled: it cannot be trusted to answer again
            slot.batch = ()
            self.kill(slot)
            current = current if 0 <= current < len(batch) else -1
            return Died(slot, batch, current, slot.ran(), how_it_ended(slot.process))
        if message == "ready":
            slot.ready = True
            return Ready(slot)
        slot.batch = ()
        return Finished(
            slot, batch, message.reports, message.taken, message.recycle, time.monotonic() - slot.sent
        )

    def replace(self, slot: Slot) -> None:
        """Kill and replace a pool process; its batch, if any, is the caller's to settle."""
        self.kill(slot)
        slot.conn.close()
        self._stale.discard(slot.process.pid or 0)
        self.slots[slot.index] = self._spawn(slot.index)

    def kill(self, slot: Slot) -> None:
        """Kill a pool process without replacing it (stopping: :meth:`close` reaps it), and the command
        it runs with everything that command started.

        Stopped first: a stopped process cannot reap its command, whose process group id thus
        stays reserved (never another's) while it is killed. A process that is gone (or ends before
        it stops) leaves its group alone: the id it published may be another program's by now.
        """
        pid = slot.process.pid or 0
        if slot.process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
            if _stopped(pid) and slot.process.is_alive():
                _kill_command_group(slot.progress)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _reaped(slot.process, 5)

    def close(self) -> None:
        for slot in self.slots:
            with contextlib.suppress(OSError, ValueError):
                slot.conn.send(None)
        for slot in self.slots:
            if not _reaped(slot.process, 2):  # asked to end, but something keeps it alive
                logging.getLogger("spoolpipe.worker").warning(
                    "pool process %d did not end within 2s of being asked (a thread a processor "
                    "started, maybe): killed",
                    slot.index,
                )
                slot.process.kill()
                _reaped(slot.process, 2)
            slot.conn.close()
