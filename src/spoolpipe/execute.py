"""Running one activity's processor inside a pool process: its attempt log, its output, its result.

Whatever the processor returns, raises or prints becomes an :class:`Outcome`
the rest of spoolpipe can always store: results and follow-ups are checked
here, where they are produced (strict JSON, depth and size limits), and error
texts are bounded, with the full text in the attempt log.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .activity import Activity, is_priority
from .config import Settings
from .outcome import Outcome, Status
from .processor import Context, Fatal, FollowUp, registered
from .record import follow_up_document
from .storable import NotStorable, bounded_text, check_text, encode, reason_line, storable

#: Longest delay a follow-up may ask for: 100 years, so that its start time can always be written.
MAX_FOLLOW_UP_DELAY = 100 * 365.25 * 86400


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


def _message(exc: BaseException) -> str:
    """``str(exc)``, even for an exception whose ``__str__`` fails."""
    try:
        return str(exc)
    except Exception:
        return f"<str() of this {type(exc).__name__} failed>"


def _failed(status: Status, log: logging.Logger, attempt: int, message: str, text: str = "") -> Outcome:
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
        if not is_priority(f.priority):
            raise NotStorable(f"{what}: priority {f.priority!r} is not an integer from 0 to 9")
        limit = settings.limits_activity_bytes
        data, _ = storable(f.data, f"{what}: data", limit=limit, limit_key="limits.activity-bytes")
        # The daemon sets the real start time when it commits; written, it is just as long.
        not_before = None if delay is None else time.time() + delay
        size = len(encode(follow_up_document(activity, f.type, data, f.key, not_before, f.priority)))
        if size > limit:
            raise NotStorable(
                f"{what} is {size} bytes as an activity file, over limits.activity-bytes={limit}"
            )
        checked.append({"type": f.type, "data": data, "key": f.key, "delay": delay, "priority": f.priority})
    return Outcome("ok", result=checked_result, follow_ups=tuple(checked))


def execute(
    activity: Activity, log_path: str, worker_id: str, repository: Path, settings: Settings
) -> Outcome:
    """Run the activity's processor; whatever it does becomes an :class:`Outcome` that can be stored."""
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
    )
    attempt = activity.attempt
    try:
        try:
            result = registration.run(activity, ctx)
        except Fatal as exc:
            return _failed("fatal", log, attempt, _message(exc), traceback.format_exc())
        except Exception as exc:
            outcome = _failed(
                "error", log, attempt, f"{type(exc).__name__}: {_message(exc)}", traceback.format_exc()
            )
            return dataclasses.replace(outcome, recycle=bool(getattr(exc, "recycle_process", False)))
        try:
            return _checked(activity, settings, result, ctx.follow_ups)
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
