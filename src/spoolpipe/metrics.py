"""A worker's Prometheus metrics: counted by the daemon, written to ``metrics.file``, served on
``metrics.port``.

Imported only when one of those keys is set, so that a worker without metrics
never loads ``prometheus_client``. The daemon counts what its pool processes
report (:meth:`Metrics.count`, one call per report), what its recovery settles
and what it quarantines; queue depths are counted from directory listings
(names only) at every heartbeat, when the file is rewritten too. The HTTP
endpoint runs inside the daemon's loop rather than in a thread: a daemon with a
single thread can fork its pool processes. The names, types and labels are
documented in docs/operations.md ("Metrics").
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder, generate_latest

from .attempt import Report
from .durable import temp_beside
from .outcome import ENDINGS, Ending
from .repository import Repository

log = logging.getLogger("spoolpipe.worker")

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call] # no ``_created`` twin of every counter and histogram

#: Run-time buckets from a millisecond to four hours, in seconds.
BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400)
#: At most this many distinct ``type`` label values; any further type counts as :data:`OTHER_TYPE`.
MAX_TYPES = 100
#: The ``type`` label of a type beyond :data:`MAX_TYPES` or without a processor here; no type can be
#: named so (a type name starts with a letter or a digit).
OTHER_TYPE = "_other"

State = Literal["inbox", "running", "done", "failed", "invalid"]
STATES: tuple[State, ...] = ("inbox", "running", "done", "failed", "invalid")


class TypeLabels:
    """Bounded ``type`` label values: types with a processor in this worker (set by code, not by
    activity files), at most :data:`MAX_TYPES` of them; anything else is :data:`OTHER_TYPE`."""

    def __init__(self, known: Callable[[str], bool], limit: int = MAX_TYPES) -> None:
        self._known = known
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, type_: str) -> str:
        if type_ in self._seen:
            return type_
        if len(self._seen) < self._limit and self._known(type_):
            self._seen.add(type_)
            return type_
        return OTHER_TYPE


def queue_depths(repo: Repository) -> dict[State, int]:
    """Entries per state directory, from listings alone (no file is opened): claims in ``running/``."""
    listed: tuple[tuple[State, Path], ...] = (
        ("inbox", repo.inbox),
        ("done", repo.done),
        ("failed", repo.failed),
        ("invalid", repo.invalid),
    )
    depths: dict[State, int] = {"running": sum(1 for _ in repo.claims())}
    for state, directory in listed:
        depths[state] = repo.count(directory)
    return depths


def write_metrics_file(path: Path, data: bytes) -> None:
    """Replace ``path`` by a fresh temp file beside it (``.NAME.RANDOM.tmp``, which the textfile
    collector ignores), removed again when the write or the rename fails.

    Not flushed to disk: a lost write only shows an older heartbeat.
    """
    tmp = temp_beside(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# -- HTTP ----------------------------------------------------------------------------------------

#: Largest request head read; a longer one is answered 431.
MAX_REQUEST_BYTES = 8192
#: Most connections open at once; more wait in the listen backlog.
MAX_CONNECTIONS = 16
#: A connection that has not sent a whole request head by then is closed.
REQUEST_SECONDS = 5.0
#: How long an answer may take to send (the daemon's loop waits meanwhile).
SEND_SECONDS = 1.0


@dataclass(frozen=True)
class Answer:
    status: str
    content_type: str
    body: bytes
    head_only: bool = False

    def encode(self) -> bytes:
        head = (
            f"HTTP/1.1 {self.status}\r\nContent-Type: {self.content_type}\r\n"
            f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n"
        )
        return head.encode("ascii") + (b"" if self.head_only else self.body)


def _plain(status: str, text: str) -> Answer:
    return Answer(status, "text/plain; charset=utf-8", (text + "\n").encode())


def answer(request: bytes, registry: CollectorRegistry) -> Answer:
    """The answer to a complete request head (anything a client sends: it is untrusted)."""
    lines = request.decode("latin-1").split("\n")
    parts = lines[0].strip().split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _plain("400 Bad Request", "bad request")
    method, target = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return _plain("405 Method Not Allowed", "only GET and HEAD")
    if target not in ("/metrics", "/"):
        return _plain("404 Not Found", "metrics are at /metrics")
    accept = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "accept":
            accept = value.strip()
    try:
        encoder, content_type = choose_encoder(accept)
        body = encoder(registry)
    except Exception:  # an Accept header the library cannot satisfy: the plain text format
        body, content_type = generate_latest(registry), "text/plain; version=0.0.4; charset=utf-8"
    return Answer("200 OK", content_type, body, head_only=method == "HEAD")


def request_head(data: bytes) -> bytes | None:
    """The request head once it is complete (``None``: not yet)."""
    for end in (b"\r\n\r\n", b"\n\n"):
        at = data.find(end)
        if at >= 0:
            return data[:at]
    return None


class Endpoint:
    """``metrics.port``: a listening socket and its connections, served a step at a time by the
    daemon's loop (:meth:`serve` never blocks but to send an answer, at most ``SEND_SECONDS``)."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self._listener = socket.socket(family, kind, proto)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(address)
            self._listener.listen(MAX_CONNECTIONS)
            self._listener.setblocking(False)
        except BaseException:
            self._listener.close()
            raise
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._registry = registry
        self._open: dict[socket.socket, tuple[bytearray, float]] = {}

    def waitables(self) -> list[socket.socket]:
        """What the loop waits on: new connections (while there is room) and open ones."""
        room = [self._listener] if len(self._open) < MAX_CONNECTIONS else []
        return [*room, *self._open]

    def serve(self) -> None:
        """Accept, read and answer whatever is ready; close connections that are done or too slow."""
        now = time.monotonic()
        while len(self._open) < MAX_CONNECTIONS:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # nothing waiting (or out of descriptors: the next turn tries again)
                break
            conn.setblocking(False)
            self._open[conn] = (bytearray(), now)
        for conn, (received, since) in list(self._open.items()):
            try:
                chunk = conn.recv(MAX_REQUEST_BYTES + 1 - len(received))
            except (BlockingIOError, InterruptedError):
                chunk = None
            except OSError:
                self._close(conn)
                continue
            if chunk == b"":
                self._close(conn)
                continue
            received += chunk or b""
            head = request_head(bytes(received))
            if head is not None:
                self._send(conn, answer(head, self._registry))
            elif len(received) > MAX_REQUEST_BYTES:
                self._send(conn, _plain("431 Request Header Fields Too Large", "request too large"))
            elif now - since > REQUEST_SECONDS:
                self._close(conn)

    def _send(self, conn: socket.socket, reply: Answer) -> None:
        try:
            conn.settimeout(SEND_SECONDS)
            conn.sendall(reply.encode())
        except OSError:
            pass  # the client went away or does not read: its loss
        self._close(conn)

    def _close(self, conn: socket.socket) -> None:
        self._open.pop(conn, None)
        conn.close()

    def close(self) -> None:
        for conn in list(self._open):
            self._close(conn)
        self._listener.close()


# -- the metrics ---------------------------------------------------------------------------------


class Metrics:
    """Every series of one worker, labelled ``worker``, in a registry of its own."""

    def __init__(
        self,
        repo: Repository,
        worker_id: str,
        started: float,
        known: Callable[[str], bool],
        types: Iterable[str],
    ) -> None:
        self.repo = repo
        self.worker_id = worker_id
        self.registry = CollectorRegistry()
        self._types = TypeLabels(known)
        self.file: Path | None = None
        self.endpoint: Endpoint | None = None
        self._listen: tuple[str, int] | None = None  # what the endpoint was asked for
        self._series: dict[tuple[str, Ending], tuple[Counter, Histogram]] = {}
        self._file_error = ""  # the last write error logged, said once until it changes
        r, w = self.registry, ("worker",)
        self._finished = Counter(
            "spoolpipe_activities_finished",
            "Attempts that ended, by activity type and outcome (failed: for good; retry: queued again).",
            ("worker", "type", "outcome"),
            registry=r,
        )
        self._duration = Histogram(
            "spoolpipe_run_duration_seconds",
            "How long processors ran, by activity type.",
            ("worker", "type"),
            buckets=BUCKETS,
            registry=r,
        )
        self._timeouts = Counter(
            "spoolpipe_timeouts",
            "Attempts whose processor overran its timeout and was killed, by activity type.",
            ("worker", "type"),
            registry=r,
        )
        self._depth = Gauge(
            "spoolpipe_queue_depth",
            "Entries per state directory of the repository (running: claims), at the last heartbeat.",
            ("worker", "state"),
            registry=r,
        )
        self._recovered = Counter(
            "spoolpipe_claims_recovered",
            "Claims of dead workers (and of this worker's earlier runs) this worker settled.",
            w,
            registry=r,
        ).labels(worker_id)
        self._invalid = Counter(
            "spoolpipe_invalid_files", "Entries this worker moved into invalid/.", w, registry=r
        ).labels(worker_id)
        self._up = Gauge("spoolpipe_worker_up", "1 while the worker runs, 0 once stopped.", w, registry=r)
        self._start = Gauge(
            "spoolpipe_worker_start_time_seconds",
            "When the worker started, in seconds since the epoch (shared file system clock).",
            w,
            registry=r,
        )
        self._heartbeat = Gauge(
            "spoolpipe_heartbeat_time_seconds",
            "When these figures were last refreshed, in seconds since the epoch (shared file system clock).",
            w,
            registry=r,
        )
        self._up.labels(worker_id).set(1)
        self._start.labels(worker_id).set(started)
        for type_ in types:  # counted from 0: the first increase is seen as one
            label = self._types(type_)
            self._timeouts.labels(worker_id, label)
            for ending in ENDINGS:
                self._finished.labels(worker_id, label, ending)

    def configure(self, file: Path | None, host: str, port: int, now: float) -> None:
        """Write to ``file`` (now, once) and serve on ``host:port`` (``port`` 0: not served) from now
        on, both refreshed at once (no reader sees a running worker without its heartbeat time);
        ``OSError`` if the file cannot be written or the port cannot be had."""
        if (
            self.file is not None and file != self.file
        ):  # the old file says the worker no longer reports there
            self._up.labels(self.worker_id).set(0)
            self._write()
            self._up.labels(self.worker_id).set(1)
        self.file = file
        listen = (host, port) if port else None
        if self.endpoint is not None and self._listen != listen:
            self.endpoint.close()
            self.endpoint = None
        self._listen = listen
        if listen is not None and self.endpoint is None:
            try:
                self.endpoint = Endpoint(host, port, self.registry)
            except OSError as exc:
                raise OSError(f"cannot serve metrics on {host} port {port}: {exc.strerror or exc}") from None
        self._up.labels(self.worker_id).set(1)  # again, if it was switched off
        self._refresh(now)
        if file is not None:
            try:
                write_metrics_file(file, generate_latest(self.registry))
            except OSError as exc:
                raise OSError(f"cannot write metrics.file {file}: {exc.strerror or exc}") from None

    # -- counting (the daemon's hot path: a few dictionary look-ups per report) ------------------

    def count(self, report: Report) -> None:
        if report.ending is not None:
            key = (self._types(report.type), report.ending)
            series = self._series.get(key)
            if series is None:  # once per (bounded) label pair
                finished = self._finished.labels(self.worker_id, *key)
                series = self._series[key] = (finished, self._duration.labels(self.worker_id, key[0]))
            series[0].inc()
            if report.seconds is not None:
                series[1].observe(report.seconds)
        if report.quarantined:
            self._invalid.inc()

    def recovered(self, claims: int) -> None:
        self._recovered.inc(claims)

    def timed_out(self, type_: str) -> None:
        self._timeouts.labels(self.worker_id, self._types(type_)).inc()

    # -- refreshing, writing, serving -------------------------------------------------------------

    def heartbeat(self, now: float) -> None:
        """Count the queues and rewrite the file (a failure is logged, once until it changes)."""
        self._refresh(now)
        self._write()

    def _refresh(self, now: float) -> None:
        try:
            for state, depth in queue_depths(self.repo).items():
                self._depth.labels(self.worker_id, state).set(depth)
        except OSError as exc:
            log.warning("metrics: cannot count the queues: %s", exc)
        self._heartbeat.labels(self.worker_id).set(now)

    def _write(self) -> None:
        if self.file is None:
            return
        try:
            write_metrics_file(self.file, generate_latest(self.registry))
        except OSError as exc:
            if str(exc) != self._file_error:
                log.warning("metrics: cannot write %s: %s", self.file, exc)
            self._file_error = str(exc)
        else:
            self._file_error = ""

    def waitables(self) -> list[socket.socket]:
        return [] if self.endpoint is None else self.endpoint.waitables()

    def serve(self) -> None:
        if self.endpoint is not None:
            self.endpoint.serve()

    def close(self, now: float) -> None:
        """The worker stops: the file says so (``spoolpipe_worker_up 0``), the port is closed."""
        self._refresh(now)
        self._up.labels(self.worker_id).set(0)
        self._write()
        if self.endpoint is not None:
            with contextlib.suppress(OSError):
                self.endpoint.close()
            self.endpoint = None
