"""Persistent processes that run processors, so no process is spawned per activity.

The daemon owns every file operation; a pool process only imports processor
modules, runs one activity at a time and sends back the outcome. A process
stuck past its deadline is killed and replaced, the only way to really stop
code blocked in C.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import importlib
import io
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from .activity import Activity
from .config import Settings
from .processor import Context, Fatal, FollowUp, registered
from .record import follow_up_document
from .steps import any_step_abandoned
from .storable import NotStorable, bounded_text, check_text, encode, reason_line, storable

_PR_SET_PDEATHSIG = 1
_BUILTIN_MODULES = ("spoolpipe.failure", "spoolpipe.image_processors")
#: Longest delay a follow-up may ask for: 100 years, so that its start time can always be written.
MAX_FOLLOW_UP_DELAY = 100 * 365.25 * 86400


@dataclass(frozen=True)
class Setup:
    """What every pool process needs before its first activity."""

    modules: tuple[str, ...]
    paths: tuple[str, ...]
    repository: str
    worker_id: str
    settings: Settings


@dataclass(frozen=True)
class Task:
    activity: Activity
    log_path: str


@dataclass(frozen=True)
class Outcome:
    """What a processor did: ``status`` is ``ok``, ``error`` (retry per policy) or ``fatal``.

    ``result`` and the follow-ups' data are checked plain JSON values; ``error`` is one bounded
    line and ``traceback`` bounded (the full texts are in the attempt log).
    """

    status: str
    result: Any = None
    follow_ups: tuple[dict[str, Any], ...] = ()
    error: str = ""
    traceback: str = ""
    recycle: bool = False


class ProcessorImportError(Exception):
    """A processor module could not be imported: which one, where it was looked for, and the traceback."""

    def __init__(self, module: str, paths: Sequence[str], error: BaseException) -> None:
        self.module = module
        searched = ", ".join(p if os.path.isdir(p) else f"{p} (missing)" for p in paths) or "(empty)"
        self.traceback = "".join(traceback.format_exception(error))
        super().__init__(
            f"cannot import processor module {module!r}: {type(error).__name__}: {error}\n"
            f"processors.path: {searched} (searched before the rest of sys.path)\n{self.traceback}".rstrip()
        )


def import_processors(modules: Sequence[str], paths: Sequence[str]) -> None:
    """Import the built-in and configured processor modules; raises :class:`ProcessorImportError`."""
    for path in paths:
        if path not in sys.path:
            sys.path.insert(0, path)
    for module in (*_BUILTIN_MODULES, *modules):
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise ProcessorImportError(module, paths, exc) from exc


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


def reload_processors(modules: Sequence[str], paths: Sequence[str]) -> None:
    """Re-import changed processor modules here; raises :class:`ProcessorImportError` (old code stays)."""
    importlib.invalidate_caches()
    for module in modules:
        try:
            importlib.reload(sys.modules[module])
        except Exception as exc:
            raise ProcessorImportError(module, paths, exc) from exc


class _AttemptLog(io.TextIOBase):
    """The attempt's log file, created only when something is written, so silent attempts cost no file.

    The processor's logger writes to it, and so do ``print()`` and anything else
    written to ``sys.stdout`` or ``sys.stderr`` while the processor runs.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._file: io.TextIOWrapper | None = None

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]  # read-only at run time, as on any text stream
        return "utf-8"

    def fileno(self) -> int:
        """Code writing to a file descriptor (child processes, C code) still reaches the worker's stderr."""
        return 2

    def write(self, text: str) -> int:
        if self._file is None:
            self._file = open(self._path, "a", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        written = self._file.write(text)
        self._file.flush()
        return written

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


# One logger for every attempt, its handler swapped per activity: a logger per activity would never be
# freed (the logging module keeps every named logger) and each new one's setLevel clears a cache over all.
_activity_log = logging.getLogger("spoolpipe.activity")
_activity_log.propagate = False
_activity_log.setLevel(logging.DEBUG)
_ATTEMPT_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s")


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:
        os._exit(1)


def _message(exc: BaseException) -> str:
    """``str(exc)``, even for an exception whose ``__str__`` fails."""
    try:
        return str(exc)
    except Exception:
        return f"<str() of this {type(exc).__name__} failed>"


def _failed(status: str, log: logging.Logger, attempt: int, message: str, text: str = "") -> Outcome:
    """An attempt that failed: the whole text into the attempt log, a bounded one into the outcome."""
    log.error("attempt %d failed%s: %s\n%s", attempt, " for good" if status == "fatal" else "", message, text)
    return Outcome(status, error=reason_line(message), traceback=bounded_text(text))


def _checked(activity: Activity, settings: Settings, result: Any, follow_ups: Sequence[FollowUp]) -> Outcome:
    """The outcome as plain JSON values the daemon can always write; NotStorable says what cannot be."""
    checked_result, _ = storable(
        result, "result", limit=settings.limits_result_bytes, limit_key="limits.result-bytes"
    )
    checked: list[dict[str, Any]] = []
    for number, f in enumerate(follow_ups, 1):
        what = f"follow-up {number} ({f.type}, key {f.key!r})"
        if not isinstance(f.key, str):
            raise NotStorable(f"{what}: the key must be a string, not {type(f.key).__name__} {f.key!r}")
        check_text(f.key, f"{what}: key")
        delay = f.delay
        if delay is not None and (
            isinstance(delay, bool)
            or not isinstance(delay, (int, float))
            or not 0 <= delay <= MAX_FOLLOW_UP_DELAY
        ):
            raise NotStorable(
                f"{what}: delay {delay!r} is not a number of seconds from 0 to {MAX_FOLLOW_UP_DELAY:.0f}"
            )
        limit = settings.limits_activity_bytes
        data, _ = storable(f.data, f"{what}: data", limit=limit, limit_key="limits.activity-bytes")
        # The daemon sets the real start time when it commits; written, it is just as long.
        not_before = None if delay is None else time.time() + delay
        size = len(encode(follow_up_document(activity, f.type, data, f.key, not_before)))
        if size > limit:
            raise NotStorable(
                f"{what} is {size} bytes as an activity file, over limits.activity-bytes={limit}"
            )
        checked.append({"type": f.type, "data": data, "key": f.key, "delay": delay})
    return Outcome("ok", result=checked_result, follow_ups=tuple(checked))


def _run(task: Task, setup: Setup) -> Outcome:
    registration = registered().get(task.activity.type)
    if registration is None:
        return Outcome("error", error=f"no processor for type {task.activity.type!r} in this worker")
    attempt_log = _AttemptLog(task.log_path)
    handler = logging.StreamHandler(attempt_log)
    handler.setFormatter(_ATTEMPT_FORMAT)
    log = _activity_log
    log.addHandler(handler)
    saved_streams = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = attempt_log
    ctx = Context(
        log=log,
        worker_id=setup.worker_id,
        repository=Path(setup.repository),
        settings=setup.settings,
        follow_up_types=registration.follow_up_types,
    )
    attempt = task.activity.attempt
    try:
        try:
            result = registration.run(task.activity, ctx)
        except Fatal as exc:
            return _failed("fatal", log, attempt, _message(exc), traceback.format_exc())
        except Exception as exc:
            outcome = _failed(
                "error", log, attempt, f"{type(exc).__name__}: {_message(exc)}", traceback.format_exc()
            )
            return dataclasses.replace(outcome, recycle=bool(getattr(exc, "recycle_process", False)))
        try:
            return _checked(task.activity, setup.settings, result, ctx.follow_ups)
        except NotStorable as exc:
            return _failed("fatal", log, attempt, str(exc))
        except Exception as exc:  # e.g. a dict subclass whose items() raises
            message = f"the result could not be checked: {type(exc).__name__}: {_message(exc)}"
            return _failed("fatal", log, attempt, message, traceback.format_exc())
    finally:
        sys.stdout, sys.stderr = saved_streams
        log.removeHandler(handler)
        handler.close()
        attempt_log.close()


def _child_main(conn: Connection, setup: Setup) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    import_processors(setup.modules, setup.paths)
    conn.send(("ready", sorted(registered())))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        outcome = _run(message, setup)
        if any_step_abandoned() and not outcome.recycle:
            # A step thread outlived its timeout: only ending this process stops it.
            outcome = dataclasses.replace(outcome, recycle=True)
        try:
            conn.send(outcome)
        except Exception as exc:  # checked outcomes are plain values: this is only a last guard
            conn.send(Outcome("fatal", error=reason_line(f"outcome could not be sent back: {exc!r}")))
        if outcome.recycle:
            return


def how_it_ended(process: BaseProcess) -> str:
    """``exit code N`` or ``killed by SIGNAME``, once the (dead) process is reaped."""
    process.join(5)
    code = process.exitcode
    if code is None:
        return "exit code unknown: still running"
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


@dataclass
class Slot:
    """One pool process and what it is running."""

    index: int
    process: BaseProcess
    conn: Connection
    ready: bool = False
    task: Task | None = None
    deadline: float = 0.0


class Pool:
    """A fixed number of processes; each runs one activity at a time."""

    def __init__(self, size: int, setup: Setup) -> None:
        self._mp = multiprocessing.get_context("spawn")
        self.setup = setup
        self.slots = [self._spawn(i) for i in range(size)]
        self._stale: set[int] = set()  # pids of processes started before the setup or the code changed

    def _spawn(self, index: int) -> Slot:
        parent, child = self._mp.Pipe()
        process = self._mp.Process(
            target=_child_main, args=(child, self.setup), name=f"spoolpipe-pool-{index}", daemon=True
        )
        process.start()
        child.close()
        return Slot(index, process, parent)

    def mark_stale(self) -> None:
        """Every current process is to be replaced once it is idle (new settings or processor code)."""
        self._stale = {s.process.pid or 0 for s in self.slots}

    def is_stale(self, slot: Slot) -> bool:
        return (slot.process.pid or 0) in self._stale

    def idle(self) -> list[Slot]:
        return [s for s in self.slots if s.ready and s.task is None]

    def busy(self) -> list[Slot]:
        return [s for s in self.slots if s.task is not None]

    def send(self, slot: Slot, task: Task, deadline: float) -> None:
        slot.task, slot.deadline = task, deadline
        slot.conn.send(task)

    def wait(self, timeout: float, extra: Sequence[int]) -> list[tuple[Slot, Any]]:
        """Messages from pool processes; an ``EOFError`` value means the process died."""
        conns = {s.conn: s for s in self.slots}
        ready = multiprocessing.connection.wait([*conns, *extra], timeout=max(0.0, timeout))
        messages: list[tuple[Slot, Any]] = []
        for item in ready:
            slot = conns.get(item)  # type: ignore[call-overload]
            if slot is None:
                continue
            try:
                message = slot.conn.recv()
            except (EOFError, OSError):
                message = EOFError()
            except Exception as exc:  # garbled: the process cannot be trusted to answer again
                message = Outcome(
                    "fatal",
                    error=reason_line(f"unreadable answer from the pool process: {exc!r}"),
                    recycle=True,
                )
            messages.append((slot, message))
        return messages

    def replace(self, slot: Slot, *, kill: bool) -> None:
        """Kill (if asked) and replace a pool process; its task, if any, is the caller's to settle."""
        if kill:
            self.kill(slot)
        slot.process.join(5)
        slot.conn.close()
        self._stale.discard(slot.process.pid or 0)
        self.slots[slot.index] = self._spawn(slot.index)

    def kill(self, slot: Slot) -> None:
        """Kill a pool process without replacing it (stopping: :meth:`close` reaps it)."""
        if slot.process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.process.pid or 0, signal.SIGKILL)
        slot.process.join(5)

    def close(self) -> None:
        for slot in self.slots:
            with contextlib.suppress(OSError, ValueError):
                slot.conn.send(None)
        for slot in self.slots:
            slot.process.join(2)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(2)
            slot.conn.close()
