"""The heartbeat: the document a live worker keeps in ``heartbeats/<worker>.json``.

``status``, ``serve``, ``stop --wait`` and the other workers read it (its
fields are in docs/repository-format.md). Building it is pure, so what it says
is tested without a worker; writing it is the one small I/O edge.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .activity import format_time
from .durable import write_all
from .repository import Repository, dumps, made_again
from .untrusted import open_own

log = logging.getLogger("spoolpipe.worker")


@dataclass(frozen=True)
class Running:
    """One activity a pool process runs now; ``started`` is by the shared clock."""

    id: str
    type: str
    attempt: int
    started: float
    timeout_seconds: float


def document(
    *,
    worker_id: str,
    host: str,
    pid: int,
    started: float,
    lock_mode: str,
    pool_size: int,
    concurrency: Mapping[str, int],
    running: Iterable[Running],
    circuits: Mapping[str, Any],
) -> dict[str, Any]:
    """The heartbeat of a worker whose pool runs ``pool_size`` processes (what runs, not what is
    configured: a reloaded pool.size applies only at restart) and handles the types of ``concurrency``."""
    activities = sorted(running, key=lambda r: r.id)
    return {
        "worker": worker_id,
        "host": host,
        "pid": pid,
        "started_at": format_time(started),
        "lock_mode": lock_mode,
        "pool_size": pool_size,
        "types": {t: min(concurrency[t], pool_size) for t in sorted(concurrency)},
        "running": [r.id for r in activities],
        "activities": [
            {
                "id": r.id,
                "type": r.type,
                "attempt": r.attempt,
                "started_at": format_time(r.started),
                "timeout_seconds": r.timeout_seconds,
            }
            for r in activities
        ],
        "circuits": dict(circuits),
    }


def path(repo: Repository, worker_id: str) -> Path:
    return repo.heartbeats / f"{worker_id}.json"


def write(repo: Repository, worker_id: str, doc: Mapping[str, Any]) -> None:
    """Replace the worker's heartbeat; a failure is logged, not raised: the next heartbeat tries again."""
    # One temp name per worker: one killed mid-write leaves one file, which its next heartbeat reuses.
    tmp = repo.tmp / f"heartbeat-{worker_id}.tmp"
    try:
        for folder in (repo.tmp, repo.heartbeats):
            if repo.restore(folder):
                log.warning("%s", made_again(folder.name))
        fd = open_own(tmp, os.O_TRUNC)
        try:
            write_all(fd, dumps(doc))
            # Its age is its mtime by the file system's clock: GlusterFS (ctime) stamps a write with
            # the writing client's clock, a "set to now" with the server's.
            os.utime(fd, None)
        finally:
            os.close(fd)
        os.replace(tmp, path(repo, worker_id))
    except OSError as exc:
        log.warning("cannot write heartbeat: %s", exc)
