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
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

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
        text = "".join(line for _, line in lines)
        if self._stderr is not None:
            try:
                self._stderr.write(text)
                self._stderr.flush()
            except Exception:  # closed or gone (a service without a terminal): the file still gets it
                pass
        try:
            self._to_file([line for _, line in lines])
        except Exception:  # a full disk, a file system away: said on stderr, and the next line tries again
            self._report(lines[0][0])

    def _report(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # stderr closed as well: there is nowhere left to say it
            self.handleError(record)

    def _to_file(self, lines: list[str]) -> None:
        with contextlib.suppress(OSError):  # the file system is away: the write below says so
            self.reopenIfNeeded()
        if self.stream is None and not self._reopen():
            return  # the lines went to stderr; the next ones try the file again
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
            try:
                self.stream.write(text)
                self.stream.flush()
            except Exception:  # not kept buffered to fail again at every flush: the next line reopens
                stream, self.stream = self.stream, None
                with contextlib.suppress(Exception):
                    stream.close()
                raise

    def _reopen(self) -> bool:
        """Open the log again, making its folder again if it was deleted; False if it cannot be."""
        try:
            os.makedirs(os.path.dirname(self.baseFilename), exist_ok=True)
            self.stream = self._open()
        except OSError:
            return False
        self._statstream()
        return True

    def _rotate(self) -> None:
        stream, self.stream = self.stream, None  # reopened by the next write if a rename fails
        if stream is not None:
            stream.close()
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
