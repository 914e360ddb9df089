"""Real repositories and real worker processes for the end-to-end tests."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from spoolpipe import config
from spoolpipe.activity import Activity, new_id
from spoolpipe.repository import Repository

# Processors used by the end-to-end tests. Side effects are appended to
# REPO/effects/<type>.log so tests can count how often code really ran.
PROCESSORS = """
import json, os, time
from pathlib import Path
from spoolpipe import processor, Fatal, Processor

def _effect(ctx, activity):
    path = ctx.repository / "effects" / f"{activity.type}.log"
    with open(path, "a") as f:
        f.write(f"{activity.id} {activity.attempt} {ctx.worker_id} {time.time()}\\n")

@processor("t.parent", follow_ups=("t.child",))
def parent(activity, ctx):
    _effect(ctx, activity)
    time.sleep(activity.data.get("sleep", 0))
    for i in range(activity.data.get("children", 0)):
        ctx.follow_up("t.child", {"parent": activity.id, "i": i})
    return {"children": activity.data.get("children", 0)}

@processor("t.child")
def child(activity, ctx):
    _effect(ctx, activity)
    time.sleep(activity.data.get("sleep", 0))
    return activity.data["i"]

@processor("t.noop")
def noop(activity, ctx):
    return None

@processor("t.flaky")
def flaky(activity, ctx):
    _effect(ctx, activity)
    if activity.attempt < activity.data.get("succeed_on", 99):
        raise RuntimeError(f"flaky attempt {activity.attempt}")
    return "finally"

@processor("t.fatal")
def fatal(activity, ctx):
    raise Fatal("this can never work")

@processor("t.stuck")
def stuck(activity, ctx):
    _effect(ctx, activity)
    if activity.attempt < activity.data.get("unstick_on", 99):
        time.sleep(3600)
    return "unstuck"

@processor("t.slow")
def slow(activity, ctx):
    _effect(ctx, activity)
    time.sleep(activity.data.get("sleep", 1))
    return "slept"

@processor("t.dup")
def dup(activity, ctx):
    _effect(ctx, activity)
    time.sleep(activity.data.get("sleep", 0))
    return {"copy": activity.data.get("copy")}

@processor("t.crash")
def crash(activity, ctx):
    _effect(ctx, activity)
    os._exit(9)

class Mailer(Processor):
    type = "t.class"
    follow_ups = ("t.noop",)
    def process(self, activity, ctx):
        ctx.follow_up("t.noop", {"from": "class"})
        return {"class": True}
"""


def make_repository(base: Path, properties: str = "", *, extra_processors: str = "") -> Path:
    """A repository at ``base/repo`` whose processors live in ``base/procs/e2e_procs.py``."""
    return make_repository_on(base / "repo", base / "procs", properties, extra_processors=extra_processors)


def submit(repo: Path, type_: str, data: dict[str, Any] | None = None, **fields: Any) -> str:
    activity = Activity(
        fields.pop("id", None) or new_id(), type_, data or {}, 1, fields.pop("not_before", None)
    )
    Repository(repo, fsync=False).submit(activity)
    return activity.id


def drop(repo: Path, name: str, content: bytes | str) -> Path:
    """Drop a file into the inbox the way a person would: written in place."""
    path = repo / "inbox" / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def start_worker(
    repo: Path, worker_id: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log = open(repo.parent / f"worker-{worker_id}.stderr", "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        [sys.executable, "-m", "spoolpipe", "worker", str(repo), "--worker-id", worker_id, *args],
        stdout=log,
        stderr=log,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )


def run_until_idle(repo: Path, worker_id: str = "w1", timeout: float = 120) -> str:
    proc = start_worker(repo, worker_id, "--until-idle")
    try:
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    output = (repo.parent / f"worker-{worker_id}.stderr").read_text()
    assert proc.returncode == 0, output
    return output


@contextlib.contextmanager
def read_only_view(folder: Path, mount: Path) -> Iterator[Path]:
    """``folder`` bind-mounted read-only at ``mount`` (a new folder) while the block runs: a read-only
    mount of the same files (needs root, as the tests run in .ci/run)."""
    mount.mkdir()
    if subprocess.run(["mount", "--bind", str(folder), str(mount)], check=False).returncode != 0:
        raise AssertionError("cannot bind-mount (the tests run as root: .ci/run)")
    try:
        assert subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], check=False).returncode == 0
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Kill a worker and its pool processes, as a machine crash would."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    proc.wait(30)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def ids_in(directory: Path) -> list[str]:
    return [p.name[: -len(".json")] for p in directory.iterdir() if p.name.endswith(".json")]


def records(directory: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in directory.glob("*.json")}


def effects(repo: Path, type_: str) -> list[list[str]]:
    path = repo / "effects" / f"{type_}.log"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def leftovers(repo: Path) -> dict[str, list[str]]:
    """Anything that is neither settled nor empty: must be empty once all work is done.

    Spare files (``tmp/spare~…``) hold nothing: a live worker keeps some (test_spares checks they go)."""
    found = {}
    for name in ("inbox", "running", "ids"):
        entries = sorted(os.listdir(repo / name))
        if entries:
            found[name] = entries
    tmp = [n for n in os.listdir(repo / "tmp") if not n.startswith((".clock", "spare~"))]
    if tmp:
        found["tmp"] = tmp
    return found


def count_lines(text: str, needle: str) -> int:
    return sum(1 for line in text.splitlines() if needle in line)


def all_equal(values: Iterable[int]) -> bool:
    return len(set(values)) <= 1


# -- additions for tests/distributed: repositories on shared mounts, workers standing for machines --

FAKETIME_LIBRARY = next(
    iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))),
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
)


def make_repository_on(
    repo: Path,
    procs: Path,
    properties: str = "",
    *,
    extra_processors: str = "",
    effects_dir: Path | None = None,
) -> Path:
    """Like :func:`make_repository`, but at ``repo`` (e.g. on a shared mount) with processors in ``procs``.

    Keep ``procs`` on local disk so that a worker whose mount dies can still restart its pool.
    With ``effects_dir``, ``REPO/effects`` is a symlink to that (local) directory: side effects
    are then counted outside the file system under test, whichever mount a processor ran on.
    """
    Repository.create(repo, config.render_defaults())
    procs.mkdir(parents=True, exist_ok=True)
    (procs / "e2e_procs.py").write_text(PROCESSORS + textwrap.dedent(extra_processors))
    if effects_dir is None:
        (repo / "effects").mkdir(exist_ok=True)
    else:
        effects_dir.mkdir(parents=True, exist_ok=True)
        (repo / "effects").symlink_to(effects_dir, target_is_directory=True)
    settings = textwrap.dedent(
        f"""
        processors = e2e_procs
        processors.path = {procs}
        scan.interval-seconds = 0.2
        heartbeat.interval-seconds = 0.5
        retry.backoff-seconds = 0.05
        retry.jitter = 0
        inbox.settle-seconds = 0.5
        claims.lease-seconds = 3
        """
    )
    (repo / "spoolpipe.properties").write_text(settings + textwrap.dedent(properties))
    return repo


def faketime_env(offset: str) -> dict[str, str]:
    """Environment that makes a C program's wall clock run ``offset`` off (libfaketime, e.g. "+10m").

    The monotonic clock is left alone, as on a real machine whose wall clock is wrong. Needs
    Debian's ``libfaketime`` package. Good for a GlusterFS client; not
    for Python 3.11 (Debian 12's libfaketime 0.9.10 makes ``time.sleep()`` fail with EINVAL when the
    monotonic clock is not faked): use :func:`skewed_clock_env` for workers.
    """
    if not os.path.exists(FAKETIME_LIBRARY):
        raise FileNotFoundError(f"{FAKETIME_LIBRARY} missing: apt-get install libfaketime")
    return {"LD_PRELOAD": FAKETIME_LIBRARY, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


_SKEWED_CLOCK = """\
# Written by tests/harness.py: shift this process's wall clock (not its monotonic clock).
import os as _os
import time as _time

_offset = float(_os.environ.get("SPOOLPIPE_TEST_CLOCK_OFFSET") or 0)
_jumps = _os.environ.get("SPOOLPIPE_TEST_CLOCK_FILE")  # the offset read from this file: a clock step
_real_time, _real_time_ns = _time.time, _time.time_ns


def _shift():
    try:
        with open(_jumps) as f:
            return float(f.read() or 0)
    except (OSError, ValueError):
        return 0.0


if _jumps:
    _time.time = lambda: _real_time() + _shift()
    _time.time_ns = lambda: _real_time_ns() + int(_shift() * 1e9)
elif _offset:
    _time.time = lambda: _real_time() + _offset
    _time.time_ns = lambda: _real_time_ns() + int(_offset * 1e9)
"""


def skewed_clock_env(offset_seconds: float, directory: Path) -> dict[str, str]:
    """Environment under which Python processes (a worker and its pool) see a wall clock that is off.

    An injected clock: a ``sitecustomize`` module in ``directory`` shifts ``time.time()`` and
    ``time.time_ns()`` by ``offset_seconds``; monotonic clocks and the kernel's file times are left
    alone, as on a machine whose clock is wrong. (libfaketime does not work for CPython 3.11 here:
    with ``FAKETIME_DONT_FAKE_MONOTONIC=1`` every ``time.sleep()`` fails with EINVAL, without it
    ``threading`` waits hang; see :func:`faketime_env`, still fine for C programs.)
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(_SKEWED_CLOCK)
    path = os.pathsep.join(p for p in (str(directory), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "SPOOLPIPE_TEST_CLOCK_OFFSET": repr(float(offset_seconds))}


def jumping_clock_env(offset_file: Path, directory: Path) -> dict[str, str]:
    """Like :func:`skewed_clock_env`, the offset read from ``offset_file`` at each call: writing it steps
    the clock at once (an NTP step, a resumed VM), file times unchanged."""
    env = skewed_clock_env(0, directory)
    return {**env, "SPOOLPIPE_TEST_CLOCK_FILE": str(offset_file)}


def start_worker_as(
    repo: Path,
    worker_id: str,
    *args: str,
    log: Path,
    hostname: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a worker whose stderr goes to ``log`` (keep it off the mount under test).

    With ``hostname`` the worker runs in its own UTS namespace under that host name (needs root and
    ``unshare``), so workers on one machine look like workers on different machines: filelock then
    cannot see the other's pid, and a lease is taken over only by age, as across real machines.
    """
    command = [sys.executable, "-m", "spoolpipe", "worker", str(repo), "--worker-id", worker_id, *args]
    if hostname is not None:
        command = ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *command]
    out = open(log, "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        command,
        stdout=out,
        stderr=out,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )


def claims_of(repo: Path, worker: str) -> list[str]:
    """Uncommitted claims in ``running/`` held by ``worker``."""
    return [n for n in os.listdir(repo / "running") if n.endswith(f"~{worker}.json")]


def unparsable_json(
    repo: Path, directories: Iterable[str] = ("inbox", "running", "done", "failed")
) -> list[str]:
    """Every file in these directories that is not a complete JSON document (should be none).

    Files that vanish while being looked at (renamed by a worker meanwhile) are skipped.
    """
    bad = []
    for name in directories:
        for path in (repo / name).iterdir():
            try:
                if not path.is_file():
                    continue
                json.loads(path.read_bytes())
            except FileNotFoundError:
                continue
            except (ValueError, OSError) as exc:
                bad.append(f"{name}/{path.name}: {exc}")
    return bad
