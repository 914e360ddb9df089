"""Stop and reload workers from any machine: one request file per worker in ``REPO/control/``.

``spoolpipe stop`` and ``spoolpipe reload`` write ``control/WORKER.REQUEST``
(``stop``, ``stop-now``, ``reload``); the worker takes the file at its next
heartbeat and does what SIGTERM, a second SIGTERM or SIGHUP would do. A request
names the run of the worker it is for (host, pid, start time, as its heartbeat
says): a worker that starts later discards a request meant for an earlier run,
so an old request never stops a new worker, and no file ever addresses more
than one worker. The contract is in ``docs/repository-format.md`` (*Control
requests*).

Pure part first (names, documents, which run a request is for), then the files.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from . import config
from .activity import InvalidActivity, format_time, is_valid_name, parse_document, printable
from .attempt import counted
from .durable import publish
from .liveness import Prober, resolve_mode
from .repository import Repository, dumps, filesystem_now
from .untrusted import read_regular

log = logging.getLogger("spoolpipe.control")

CONTROL_DIR = "control"
#: A request is a few hundred bytes; anything much larger is not one.
MAX_REQUEST_BYTES = 64 * 1024
#: How often ``--wait`` looks again.
_POLL_SECONDS = 0.2


class Request(enum.Enum):
    """What a request file asks of its worker (the file name's suffix)."""

    RELOAD = "reload"  # re-read the configuration, like SIGHUP
    STOP = "stop"  # drain: claim nothing more, let running work finish, exit 0 (SIGTERM)
    STOP_NOW = "stop-now"  # release running work to the inbox at once, exit 0


@dataclass(frozen=True)
class Incarnation:
    """One run of a worker, as its heartbeat shows it: the target a request names."""

    host: str
    pid: int
    started_at: str

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "started_at": self.started_at}

    @staticmethod
    def from_json(doc: object) -> Incarnation | None:
        """The run a heartbeat or a request's ``target`` describes; None unless well-formed."""
        if not isinstance(doc, dict):
            return None
        host, pid, started_at = doc.get("host"), doc.get("pid"), doc.get("started_at")
        if not (isinstance(host, str) and isinstance(started_at, str)):
            return None
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return None
        return Incarnation(host, pid, started_at)

    def describe(self) -> str:
        return f"pid {self.pid} on {printable(self.host)}, started {printable(self.started_at)}"


def request_name(worker_id: str, request: Request) -> str:
    """``WORKER.REQUEST``: the file name of a request (worker ids are valid names, so no ``/``)."""
    return f"{worker_id}.{request.value}"


def parse_request_name(name: str) -> tuple[str, Request] | None:
    """The worker and request a file name stands for; None for any other name."""
    worker_id, dot, suffix = name.rpartition(".")
    if not dot or not is_valid_name(worker_id):
        return None
    try:
        return worker_id, Request(suffix)
    except ValueError:
        return None


def request_document(
    worker_id: str, request: Request, target: Incarnation, requested_at: float, by: str
) -> dict[str, Any]:
    return {
        "request": request.value,
        "worker": worker_id,
        "target": target.to_json(),
        "requested_at": format_time(requested_at),
        "by": by,
    }


@dataclass(frozen=True)
class Taken:
    """A request file a worker took, read: for which run, from whom; ``problem`` if it is no request."""

    request: Request
    target: Incarnation | None
    by: str = ""
    requested_at: str = ""
    problem: str = ""


def parse_request(worker_id: str, request: Request, raw: bytes) -> Taken:
    """Read a request file's content; a file that does not say what its name says is a problem."""
    try:
        doc = parse_document(raw)
    except InvalidActivity as exc:
        return Taken(request, None, problem=f"not a JSON object ({exc.reason})")
    if doc.get("request") != request.value or doc.get("worker") != worker_id:
        return Taken(request, None, problem='its "request" and "worker" fields do not match its name')
    target = Incarnation.from_json(doc.get("target"))
    if target is None:
        return Taken(request, None, problem='no valid "target" (host, pid, started_at)')
    by, at = doc.get("by"), doc.get("requested_at")
    return Taken(request, target, by if isinstance(by, str) else "", at if isinstance(at, str) else "")


def verdict(taken: Taken, me: Incarnation) -> Literal["obey", "earlier run", "unreadable"]:
    """Whether the worker run ``me`` does what ``taken`` asks: only if it is the run it names."""
    if taken.target is None:
        return "unreadable"
    return "obey" if taken.target == me else "earlier run"


# -- the worker's side -------------------------------------------------------------------------------


class Mailbox:
    """The request files of one worker run; :meth:`take` returns what it must do, in order."""

    def __init__(self, repo: Repository, worker_id: str, me: Incarnation) -> None:
        self.repo = repo
        self.worker_id = worker_id
        self.me = me
        self.directory = repo.root / CONTROL_DIR
        self._warned: set[tuple[str, int | None]] = set()

    def take(self) -> list[Request]:
        """Take (rename away, read, delete) this worker's request files; the ones meant for this run.

        A request for an earlier run of this worker id, or a file that is no
        request, is deleted and logged, never obeyed. Never raises: a file system
        that fails is retried at the next heartbeat.
        """
        obey = []
        for request in Request:
            taken = self._take(request)
            if taken is None:
                continue
            where = f"{CONTROL_DIR}/{request_name(self.worker_id, request)}"
            judged = verdict(taken, self.me)
            if judged == "obey":
                log.info(
                    "%s requested through %s by %s at %s",
                    request.value,
                    where,
                    printable(taken.by) or "(unknown)",
                    printable(taken.requested_at) or "(unknown time)",
                )
                obey.append(request)
            elif judged == "earlier run":
                assert taken.target is not None
                log.info(
                    "discarded %s: meant for an earlier run of this worker (%s)",
                    where,
                    taken.target.describe(),
                )
            else:
                log.warning(
                    "discarded %s: %s (use spoolpipe %s to write one)",
                    where,
                    taken.problem,
                    request.value.split("-")[0],
                )
        return obey

    def _take(self, request: Request) -> Taken | None:
        name = request_name(self.worker_id, request)
        source = self.directory / name
        held = self.repo.temp_path(f"control-{name}")
        try:
            # The rename takes exactly the version there now: one written meanwhile stays for next time.
            os.rename(source, held)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn_once(name, exc)
            return None
        try:
            return parse_request(self.worker_id, request, _read_small(held))
        except OSError as exc:
            return Taken(request, None, problem=f"cannot be read: {exc.strerror or exc}")
        finally:
            _remove(held)

    def _warn_once(self, name: str, exc: OSError) -> None:
        key = (name, exc.errno)
        if key not in self._warned:
            self._warned.add(key)
            log.warning("cannot take %s/%s: %s", CONTROL_DIR, name, exc)


def _read_small(path: Path) -> bytes:
    """A regular file's content, if it is no larger than a request can be; never follows a link."""
    return read_regular(path, MAX_REQUEST_BYTES)[0]


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


# -- the command's side ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Live:
    """A worker whose heartbeat is recent: its id, its run, and what it runs now."""

    worker_id: str
    run: Incarnation
    running: int


def _settings(root: Path, worker_id: str) -> config.Settings | None:
    """The worker's settings, else the shared ones, else None (a worker keeps its last valid ones)."""
    for who in (worker_id, None):
        try:
            return config.load(root, who).settings
        except (config.ConfigError, ValueError):
            continue
    return None


def _heartbeat(repo: Repository, worker_id: str) -> tuple[dict[str, Any], float] | None:
    """The worker's heartbeat document and its mtime (by the shared clock), if it is one."""
    path = repo.heartbeats / f"{worker_id}.json"
    try:
        mtime = path.lstat().st_mtime
        return parse_document(_read_small(path)), mtime  # a heartbeat is a file anyone may write
    except (OSError, InvalidActivity):
        return None


def _lock_free(repo: Repository, worker_id: str, s: config.Settings) -> bool:
    """With flock, whether the worker's lock is free: then it is dead, whatever its heartbeat says."""
    if resolve_mode(s.claims_lock, repo.root) != "flock":
        return False  # a lease is judged dead only after a whole lease of watching: trust the heartbeat
    with Prober(repo.locks, "flock", s.claims_lease_seconds).dead(worker_id) as dead:
        return dead


def live_worker(repo: Repository, worker_id: str, now: float) -> Live | None:
    """The live run of ``worker_id`` by its heartbeat and the shared clock ``now``; None if none."""
    judged = judge_liveness(repo, worker_id, now)
    return judged if isinstance(judged, Live) else None


def judge_liveness(repo: Repository, worker_id: str, now: float) -> Live | str:
    """The live run of ``worker_id``, or why it is not alive.

    Alive: its heartbeat is recent (as for ``status``) and, where locks are flock, it holds its lock.
    """
    found = _heartbeat(repo, worker_id)
    if found is None:
        return f"no readable heartbeats/{worker_id}.json"
    doc, mtime = found
    run = Incarnation.from_json(doc)
    if run is None or doc.get("worker") != worker_id:
        return f"heartbeats/{worker_id}.json is not a heartbeat of {worker_id!r}"
    s = _settings(repo.root, worker_id)
    # With no valid configuration at all, be generous: a request to a dead run is harmless.
    silence = 600.0 if s is None else s.heartbeat_silence_seconds
    if now - mtime > silence:
        return f"its last heartbeat is {now - mtime:.0f}s old, more than the {silence:g}s of silence allowed"
    if s is not None and _lock_free(repo, worker_id, s):
        return f"its heartbeat is recent, but nothing holds locks/{worker_id}.lock: its process is gone"
    running = doc.get("running")
    return Live(worker_id, run, len(running) if isinstance(running, list) else 0)


def live_workers(repo: Repository, now: float) -> list[Live]:
    """Every worker alive now, by id."""
    ids = sorted(p.name[: -len(".json")] for p in repo.heartbeats.glob("*.json"))
    return [w for i in ids if is_valid_name(i) and (w := live_worker(repo, i, now)) is not None]


def write_request(repo: Repository, target: Live, request: Request, now: float) -> Path:
    """Publish ``control/WORKER.REQUEST`` atomically (a newer request replaces an unread one)."""
    directory = repo.root / CONTROL_DIR
    directory.mkdir(exist_ok=True)
    by = f"{socket.gethostname()} pid {os.getpid()}"
    doc = request_document(target.worker_id, request, target.run, now, by)
    final = directory / request_name(target.worker_id, request)
    publish(dumps(doc), repo.temp_path("control"), final, repo.durability, replace=True)
    return final


_SAYS = {
    Request.STOP: "it claims nothing more, lets running work finish within shutdown.grace-seconds "
    "(then releases it to the inbox) and exits",
    Request.STOP_NOW: "it releases its running work to the inbox at once and exits",
    Request.RELOAD: "it re-reads its configuration (its log says whether the change was accepted)",
}


def _now(repo: Repository) -> float:
    """The shared clock; the local one on a read-only mount (where no request can be written anyway)."""
    try:
        return filesystem_now(repo.tmp / ".clock-control")
    except OSError:
        return time.time()


def _targets(
    repo: Repository, ids: Sequence[str], every: bool, now: float, err: TextIO
) -> tuple[list[Live], int]:
    if every:
        found = live_workers(repo, now)
        if not found:
            print("error: no live worker in this repository (heartbeats/ shows none recent)", file=err)
            return [], 1
        return found, 0
    targets, code = [], 0
    for worker_id in dict.fromkeys(ids):
        judged = judge_liveness(repo, worker_id, now)
        if isinstance(judged, Live):
            targets.append(judged)
        else:
            print(f"error: no live worker {worker_id!r} ({judged})", file=err)
            code = 1
    return targets, code


def _reload_refused(repo: Repository, target: Live, err: TextIO) -> bool:
    """A reload the worker would reject (invalid configuration) is not sent; say why."""
    try:
        config.load(repo.root, target.worker_id)
    except config.ConfigError as exc:
        print(
            f"error: not sent to {target.worker_id}: its configuration is invalid, "
            f"the worker would keep its current one:\n{exc}",
            file=err,
        )
        return True
    return False


def request_workers(
    repo: Repository,
    ids: Sequence[str],
    *,
    every: bool,
    request: Request,
    wait: bool,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """``spoolpipe stop`` / ``reload``: write one request per target; the exit code.

    0 every target got its request (and, with ``wait``, stopped or took it); 1 a
    worker is not alive (or, waiting, stopped before it took a reload); 2 a
    reload refused because the target's configuration is invalid.
    """
    now = _now(repo)
    targets, code = _targets(repo, ids, every, now, err)
    sent: list[tuple[Live, Path, int]] = []
    for target in targets:
        if request is Request.RELOAD and _reload_refused(repo, target, err):
            code = 2
            continue
        try:
            path = write_request(repo, target, request, now)
        except OSError as exc:  # control/ a file, a link to nothing, read-only...
            print(
                f"error: cannot send {request.value} to {target.worker_id}: "
                f"{printable(str(exc.filename or CONTROL_DIR))}: {exc.strerror or exc}",
                file=err,
            )
            code = 1
            continue
        try:
            inode = path.lstat().st_ino
        except FileNotFoundError:  # taken already
            inode = -1
        sent.append((target, path, inode))
        running = counted(target.running, "activity running", "activities running")
        print(
            f"{target.worker_id}: {request.value} requested ({target.run.describe()}, {running}): "
            f"{_SAYS[request]}",
            file=out,
        )
    if wait and sent:
        code = max(code, _wait(repo, request, sent, out, err))
    return code


def _wait(
    repo: Repository, request: Request, sent: list[tuple[Live, Path, int]], out: TextIO, err: TextIO
) -> int:
    """Block until each stop target's run has ended, or each reload target took its request."""
    code = 0
    pending = list(sent)
    while pending:
        now = _now(repo)
        still = []
        for target, path, inode in pending:
            alive = live_worker(repo, target.worker_id, now)
            gone = alive is None or alive.run != target.run
            taken = _taken(path, inode)
            if request is Request.RELOAD and taken:
                print(f"{target.worker_id}: took the reload request", file=out)
            elif request is Request.RELOAD and gone:
                print(f"error: {target.worker_id} stopped before it took the reload request", file=err)
                code = 1
            elif request is not Request.RELOAD and gone:
                how = "stopped" if taken else "is gone without taking the request (killed?)"
                print(f"{target.worker_id}: {how}", file=out)
            else:
                still.append((target, path, inode))
        pending = still
        if pending:
            time.sleep(_POLL_SECONDS)
    return code


def _taken(path: Path, inode: int) -> bool:
    try:
        return path.lstat().st_ino != inode
    except FileNotFoundError:
        return True
