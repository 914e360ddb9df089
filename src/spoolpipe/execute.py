"""Running one activity's processor inside a pool process: its attempt log, its output, its result.

Whatever the processor returns, raises or prints becomes an :class:`Outcome`
the rest of spoolpipe can always store: results and follow-ups are checked
here, where they are produced (strict JSON, depth and size limits), and error
texts are bounded, with the full text in the attempt log.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import numbers
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeGuard

from .activity import Activity, is_priority
from .config import MAX_SECONDS, Settings
from .outcome import Outcome, Status
from .processor import Context, Fatal, FollowUp, Registration, Retry, Skip, registered
from .record import follow_up_document
from .retry import retried
from .storable import NotStorable, bounded_text, check_text, encode, message_of, reason_line, shown, storable
from .untrusted import open_own

#: Longest delay a follow-up or a Retry may ask for: 100 years (of 365 days, as every other bound of
#: seconds), so that its start time can always be written.
MAX_FOLLOW_UP_DELAY = MAX_SECONDS


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
        """Written at once; on a full disk (or a log that cannot be opened) the text is dropped: the
        attempt goes on, and the worker log tells of the failure to record its outcome, if any."""
        try:
            if self._file is None:
                fd = open_own(self._path, os.O_APPEND)  # never through a link put in its place
                self._file = os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace")
            self._file.write(text)
            self._file.flush()
        except OSError:
            pass
        return len(text)

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # what could not be flushed was dropped already
                self._file.close()
        super().close()


# One logger for every attempt, its handler swapped per activity: a logger per activity would never be
# freed (the logging module keeps every named logger) and each new one's setLevel clears a cache over all.
_activity_log = logging.getLogger("spoolpipe.activity")
_activity_log.propagate = False
_activity_log.setLevel(logging.DEBUG)
_ATTEMPT_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s")


# Examining what a processor raised or returned runs its code (``__str__``, ``__getattr__``, a
# property, ``items()``), which may raise anything, SystemExit too: each look is guarded, so that it
# fails the activity and never the pool process (which would take its batch-mates along).


def _traceback() -> str:
    """The traceback being handled, even when formatting it runs code that fails."""
    try:
        return traceback.format_exc()
    except BaseException:
        return ""


def _recycles(exc: BaseException) -> bool:
    """Whether the exception asks for a fresh pool process (``recycle_process``)."""
    try:
        return bool(getattr(exc, "recycle_process", False))
    except BaseException:  # a proxy whose __getattr__ raises KeyError, say
        return False


def _failed(status: Status, log: logging.Logger, attempt: int, message: str, text: str = "") -> Outcome:
    """An attempt that failed: the whole text into the attempt log, a bounded one into the outcome."""
    log.error("attempt %d failed%s: %s\n%s", attempt, " for good" if status == "fatal" else "", message, text)
    return Outcome(status, error=reason_line(message), traceback=bounded_text(text))


def _valid_delay(delay: object) -> TypeGuard[numbers.Real]:
    """A number of seconds from 0 to 100 years (NaN is not one, nor is a bool, nor 10**400)."""
    if isinstance(delay, bool) or not isinstance(delay, numbers.Real):
        return False
    try:
        return 0 <= float(delay) <= MAX_FOLLOW_UP_DELAY
    except (OverflowError, ValueError, TypeError):  # too large for a float, or a Real whose float() fails
        return False


def _checked(activity: Activity, settings: Settings, result: Any, follow_ups: Sequence[FollowUp]) -> Outcome:
    """The outcome as plain JSON values the daemon can always write; NotStorable says what cannot be."""
    checked_result, _ = storable(
        result, "result", limit=settings.limits_result_bytes, limit_key="limits.result-bytes"
    )
    checked: list[dict[str, Any]] = []
    for number, f in enumerate(follow_ups, 1):
        what = f"follow-up {number} ({f.type}, key {shown(f.key)})"
        if not isinstance(f.key, str):
            raise NotStorable(f"{what}: the key must be a string, not {type(f.key).__name__} {shown(f.key)}")
        check_text(f.key, f"{what}: key")
        delay = f.delay
        if delay is not None and not _valid_delay(delay):
            seconds_range = f"from 0 to {MAX_FOLLOW_UP_DELAY:.0f}"
            raise NotStorable(f"{what}: delay {shown(delay)} is not a number of seconds {seconds_range}")
        seconds = None if delay is None else float(delay)
        if not is_priority(f.priority):
            raise NotStorable(f"{what}: priority {shown(f.priority)} is not an integer from 0 to 9")
        limit = settings.limits_activity_bytes
        data, _ = storable(f.data, f"{what}: data", limit=limit, limit_key="limits.activity-bytes")
        # The daemon sets the real start time when it commits; written, it is just as long.
        not_before = None if seconds is None else time.time() + seconds
        size = len(encode(follow_up_document(activity, f.type, data, f.key, not_before, f.priority)))
        if size > limit:
            raise NotStorable(
                f"{what} is {size} bytes as an activity file, over limits.activity-bytes={limit}"
            )
        checked.append({"type": f.type, "data": data, "key": f.key, "delay": seconds, "priority": f.priority})
    return Outcome("ok", result=checked_result, follow_ups=tuple(checked))


def _retry_requested(exc: Retry, log: logging.Logger, attempt: int, text: str) -> Outcome:
    """``raise Retry(reason, delay=)``: retried after that delay; a delay that is no number of seconds
    is the processor's bug, and fails the activity."""
    reason = message_of(exc) or "the processor asked for a retry"
    try:
        delay: object = exc.delay
    except BaseException:  # a subclass whose delay property raises
        delay = "<unreadable>"
    if delay is None:
        seconds = None
    elif _valid_delay(delay):
        seconds = float(delay)
    else:
        message = f"Retry delay {shown(delay)} is not a number of seconds from 0 to {MAX_FOLLOW_UP_DELAY:.0f}"
        return _failed("fatal", log, attempt, f"{message} (reason: {reason})", text)
    when = "" if seconds is None else f" in {seconds:g}s"
    log.warning("attempt %d asks to be retried%s: %s", attempt, when, reason)
    return Outcome(
        "error",
        error=reason_line(reason),
        traceback=bounded_text(text),
        delay=seconds,
    )


def _skipped(exc: Skip, log: logging.Logger, attempt: int, follow_ups: Sequence[FollowUp]) -> Outcome:
    reason = message_of(exc) or "the processor had nothing to do"
    dropped = f" ({len(follow_ups)} follow-up(s) it asked for are discarded)" if follow_ups else ""
    log.info("attempt %d skipped%s: %s", attempt, dropped, reason)
    return Outcome("skipped", error=reason_line(reason))


def _not_retried(exc: Exception, registration: Registration, settings: Settings) -> str:
    """Why an exception is fatal under ``retry.on.<type>`` / ``retry_on``; "" if it is retried."""
    names = settings.retry_on.get(registration.type)
    if retried(exc, names, registration.retry_on):
        return ""
    if names is not None:
        return f"not retried: retry.on.{registration.type} = {', '.join(names)}"
    listed = ", ".join(c.__name__ for c in registration.retry_on or ())
    return f"not retried: the processor's retry_on is ({listed})"


def _confined(registration: Registration, activity: Activity, ctx: Context) -> Any:
    """Run the processor on its own copy of the activity, in this process, with this umask.

    The record is made of the activity as it was read: a processor that changes
    its ``data`` in place (adds a set, clears it) must not change what is stored.
    A processor that forks and returns in the child too must not answer twice:
    the child ends here. One that changes the umask changes it for itself only,
    not for the records and logs spoolpipe writes next.
    """
    forks = _forks[0]
    own = activity
    if activity.data or activity.extra:
        own = dataclasses.replace(
            activity, data=copy.deepcopy(activity.data), extra=copy.deepcopy(activity.extra)
        )
    try:
        return registration.run(own, ctx)
    finally:
        if _forks[0] != forks:  # this is a child the processor forked
            os._exit(0)
        os.umask(_UMASK)


def _forked() -> None:
    _forks[0] += 1


# Forks so far, counted in each child: no getpid() per activity to tell a processor's child. The umask
# every pool process keeps, its daemon's: set back after each processor, one call.
_forks = [0]
os.register_at_fork(after_in_child=_forked)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def execute(
    activity: Activity,
    log_path: str,
    worker_id: str,
    repository: Path,
    settings: Settings,
    returned: Callable[[], None] = lambda: None,
) -> Outcome:
    """Run the activity's processor; whatever it does becomes an :class:`Outcome` that can be stored.

    ``returned`` is called as soon as the processor has returned or raised: from then on its attempt
    has run, whatever happens to its outcome."""
    registration = registered().get(activity.type)
    if registration is None:
        return Outcome("error", error=f"no processor for type {activity.type!r} in this worker")
    attempt_log = _AttemptLog(log_path)
    handler = logging.StreamHandler(attempt_log)
    handler.setFormatter(_ATTEMPT_FORMAT)
    log = _activity_log
    log.addHandler(handler)
    saved_streams = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = attempt_log
    ctx = Context(
        log=log,
        worker_id=worker_id,
        repository=repository,
        settings=settings,
        follow_up_types=registration.follow_up_types,
        activity_type=activity.type,
    )
    attempt = activity.attempt
    try:
        try:
            try:
                result = _confined(registration, activity, ctx)
            finally:
                returned()
        except Fatal as exc:
            reason = message_of(exc) or "the processor said it can never succeed"
            return _failed("fatal", log, attempt, reason, _traceback())
        except Retry as exc:
            return _retry_requested(exc, log, attempt, _traceback())
        except Skip as exc:
            return _skipped(exc, log, attempt, ctx.follow_ups)
        except Exception as exc:
            message = f"{type(exc).__name__}: {message_of(exc)}"
            why_fatal = _not_retried(exc, registration, settings)
            if why_fatal:
                outcome = _failed("fatal", log, attempt, f"{message} ({why_fatal})", _traceback())
            else:
                outcome = _failed("error", log, attempt, message, _traceback())
            return dataclasses.replace(outcome, recycle=_recycles(exc))
        except BaseException as exc:  # sys.exit(), KeyboardInterrupt, GeneratorExit raised by the processor
            # An error of the processor like any other, not the death of its process (which took its
            # batch-mates along and said only "exit code 3"); the process is replaced all the same.
            message = f"{type(exc).__name__}: {message_of(exc)}"
            outcome = _failed("error", log, attempt, message, _traceback())
            return dataclasses.replace(outcome, recycle=True)
        try:
            return _checked(activity, settings, result, ctx.follow_ups)
        except NotStorable as exc:
            return _failed("fatal", log, attempt, str(exc))
        except BaseException as exc:  # e.g. a dict subclass whose items() raises
            message = f"the result could not be checked: {type(exc).__name__}: {message_of(exc)}"
            return _failed("fatal", log, attempt, message, _traceback())
    finally:
        sys.stdout, sys.stderr = saved_streams
        log.removeHandler(handler)
        handler.close()
        attempt_log.close()
