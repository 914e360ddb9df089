"""The worker's log: each line to stderr and to ``logs/workers/ID.log``, formatted once.

A busy worker logs a line per activity. Written through one handler per stream,
each line was formatted three times and written, flushed and stat'ed twice: a
quarter of the daemon's time. :func:`held` lets the daemon write a finished
batch's lines with one write per stream.
"""

from __future__ import annotations

import contextlib
import io
import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from .attempt import counted
from .untrusted import open_own

_ROOT = "spoolpipe"


class WorkerLog(logging.handlers.WatchedFileHandler):
    """Writes every line to stderr and to the log file; never stops the worker.

    Reopens the file when it is moved (rotation by others) or its file system is
    remounted, and makes its folder again if that was deleted. With ``max_bytes``
    (``log.max-bytes``) it rotates the file by size: ``ID.log`` becomes
    ``ID.log.1`` (``.1`` becomes ``.2``...), keeping ``backups`` of them. Other
    processes appending to the log (a scheduled purge) give ``max_bytes=0``: they
    reopen it once it has been rotated, and only the daemon rotates it.
    """

    def __init__(self, path: Path, max_bytes: int = 0, backups: int = 1) -> None:
        super().__init__(path, encoding="utf-8")
        self.max_bytes, self.backups = max_bytes, backups
        self._stderr: TextIO | None = sys.stderr
        self._held: list[tuple[logging.LogRecord, str]] | None = None
        self._holders = 0
        #: Since when, and how many lines, the file could not be written (its file system away, full).
        self._outage: tuple[str, int] | None = None

    def _open(self) -> io.TextIOWrapper:
        """Appending, never through a link put in the log's place (anyone may write under logs/)."""
        return os.fdopen(
            open_own(self.baseFilename, os.O_APPEND), "a", encoding=self.encoding, errors=self.errors
        )

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self._report(record)
            return
        if self._held is not None:
            self._held.append((record, line))
        else:
            self._write([(record, line)])

    def hold(self) -> None:
        """Keep lines until :meth:`write_held` (called as often as this), then write them together."""
        self.acquire()
        try:
            self._holders += 1
            if self._held is None:
                self._held = []
        finally:
            self.release()

    def write_held(self) -> None:
        self.acquire()
        try:
            self._holders -= 1
            if self._holders == 0 and self._held is not None:
                lines, self._held = self._held, None
                if lines:
                    self._write(lines)
        finally:
            self.release()

    def _write(self, lines: list[tuple[logging.LogRecord, str]]) -> None:
        self._to_stderr("".join(line for _, line in lines))  # closed or gone: the file still gets them
        lines_out = [line for _, line in lines]
        if self._outage is not None:  # said before the lines, if they reach the file
            lines_out.insert(0, self._line(logging.INFO, self._back_again(*self._outage)))
        try:
            self._to_file(lines_out, after_outage=self._outage is not None)
        except Exception as exc:  # a full disk, a file system away: said once; the next line tries again
            self._drop()
            self._lost(lines[0][0], len(lines), exc)
            return
        if self._outage is not None:
            self._outage = None
            self._to_stderr(lines_out[0])

    def _lost(self, first: logging.LogRecord, count: int, exc: Exception) -> None:
        if self._outage is None:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._to_stderr(
                self._line(
                    logging.WARNING,
                    f"cannot write the log file {self.baseFilename}: {reason}; its lines go to stderr "
                    "only until it can be written again",
                )
            )
            self._outage = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(first.created)), 0)
        since, missed = self._outage
        self._outage = (since, missed + count)

    @staticmethod
    def _back_again(since: str, missed: int) -> str:
        return f"the log file is written again: {counted(missed, 'line')} since {since} went to stderr only"

    def _line(self, level: int, message: str) -> str:
        record = logging.makeLogRecord(
            {"name": __name__, "levelno": level, "levelname": logging.getLevelName(level), "msg": message}
        )
        return self.format(record) + self.terminator

    def _to_stderr(self, text: str) -> None:
        if self._stderr is not None:
            with contextlib.suppress(Exception):  # closed or gone: there is nowhere left to say it
                self._stderr.write(text)
                self._stderr.flush()

    def _report(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # stderr closed as well: there is nowhere left to say it
            self.handleError(record)

    def _to_file(self, lines: list[str], *, after_outage: bool = False) -> None:
        """Append ``lines``; raises (OSError, or ValueError of a stream closed under it) when it cannot."""
        try:
            self.reopenIfNeeded()
        except Exception:  # the old file's system went away (ENOTCONN), or closing it failed: a new one
            self._drop()
        if self.stream is None:
            self._reopen()
        if after_outage and self._ends_mid_line():  # a write a full disk cut short: not glued to it
            lines[0] = "\n" + lines[0]
        if not self.max_bytes:
            self._append("".join(lines))
            return
        # Rotated before a line would take the file past max_bytes (never while it is empty).
        assert self.stream is not None
        size = os.fstat(self.stream.fileno()).st_size
        chunk: list[str] = []
        for line in lines:
            length = len(line.encode("utf-8", "backslashreplace"))
            if size and size + length > self.max_bytes:
                self._append("".join(chunk))
                chunk, size = [], 0
                self._rotate()
            chunk.append(line)
            size += length
        self._append("".join(chunk))

    def _append(self, text: str) -> None:
        if text and self.stream is not None:
            self.stream.write(text)
            self.stream.flush()

    def _ends_mid_line(self) -> bool:
        """Whether the open log file ends in part of a line (read through a second, read-only open)."""
        assert self.stream is not None
        mine = os.fstat(self.stream.fileno())
        if not mine.st_size:
            return False
        try:
            fd = os.open(self.baseFilename, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            return os.path.samestat(os.fstat(fd), mine) and os.pread(fd, 1, mine.st_size - 1) != b"\n"
        finally:
            os.close(fd)

    def _drop(self) -> None:
        """Forget the open file, closed quietly: not kept to fail again at every line, the next reopens."""
        stream, self.stream = self.stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()

    def _reopen(self) -> None:
        """Open the log again, making its folder again if it was deleted."""
        os.makedirs(os.path.dirname(self.baseFilename), exist_ok=True)
        self.stream = self._open()
        self._statstream()

    def _rotate(self) -> None:
        self._drop()  # reopened by the next write if a rename fails
        base = self.baseFilename
        # Only the backups there are, in a row from .1: walking down from log.backups spun for good at 10**12.
        there = 0
        while there < self.backups - 1 and os.path.lexists(f"{base}.{there + 1}"):
            there += 1
        for n in range(there, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{base}.{n}", f"{base}.{n + 1}")
        os.replace(base, f"{base}.1")
        self._reopen()


def configure(logs: Path, worker_id: str, level: str | None, max_bytes: int = 0, backups: int = 1) -> None:
    """Send spoolpipe's logging to stderr and ``LOGS/workers/ID.log``, lines tagged with the worker id."""
    handler = WorkerLog(logs / "workers" / f"{worker_id}.log", max_bytes, backups)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [{worker_id}] %(message)s"))
    root = logging.getLogger(_ROOT)
    root.handlers.clear()
    root.addHandler(handler)
    root.setLevel(level or "INFO")
    root.propagate = False


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Lines logged meanwhile (by any thread) are written together at the end, in order."""
    handlers = [h for h in logging.getLogger(_ROOT).handlers if isinstance(h, WorkerLog)]
    for handler in handlers:
        handler.hold()
    try:
        yield
    finally:
        for handler in handlers:
            handler.write_held()
