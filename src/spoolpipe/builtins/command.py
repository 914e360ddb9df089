"""The ``command`` type: run a program defined in the properties, its arguments filled from the data.

The activity names a ``command.<name>`` (data field ``command``); the program,
its working directory, environment, timeout and the meaning of its exit codes
come from the properties only. Arguments are passed to ``execve`` as a list,
never through a shell. The command runs in a session of its own, so a timeout
kills it with everything it started; so does its exit, for anything it left
running in its process group, and so does the daemon killing the pool process
running it (its own timeout, a stop whose grace period is over): the pool
process publishes the group for that. The program itself is also killed when
the pool process dies otherwise (the whole worker killed by ``kill -9``); what
it started in the background then survives.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import _libc, pool
from ..activity import Activity
from ..processor import Context, Fatal, processor, timeout_for
from . import specs

TYPE = "command"
#: Output (stdout and stderr together) kept for the attempt log: the last this many bytes.
LOG_TAIL_BYTES = 64 * 1024
#: Output kept in the result (``output_tail``): the last this many characters.
RESULT_TAIL_CHARS = 2000
#: How long output is still read after the program exited, from what it left running.
_LINGER_SECONDS = 0.5
_READ_SIZE = 65536


class CommandFailed(Exception):
    """The command ran but asked to be run again (a retry exit code, a signal, its timeout): retried."""


@dataclass(frozen=True)
class Ran:
    """What one run of a program did."""

    exit_code: int
    seconds: float
    #: The last ``LOG_TAIL_BYTES`` of its output.
    tail: bytes
    #: How many bytes of output it wrote in all.
    output_bytes: int
    timed_out: bool


def _exited(pid: int) -> bool:
    """Whether ``pid`` has exited, leaving it unreaped so its process group id stays reserved."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None and info.si_pid == pid


def _child_setup(published: Any) -> Callable[[], None]:
    """What the child runs before ``exec``: its process group published, and death with this process.

    The group goes into the pool process's ``progress`` (shared memory) before the
    program runs, so that the daemon killing the pool process kills all the program
    starts (``pool.Pool.kill``). It also asks for SIGKILL when the pool process dies
    (with a worker killed by ``kill -9``), which it would outlive in its own session
    otherwise. Resolved before the fork, so the child only makes system calls.
    """
    prctl = _libc.function("prctl", [ctypes.c_int, ctypes.c_ulong])
    parent = os.getpid()

    def setup() -> None:
        if published is not None:
            published[pool.COMMAND_GROUP] = os.getpid()  # its own session: the group's id
        if prctl is not None:
            prctl(_libc.PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # the pool process died before it could ask
                os._exit(1)

    return setup


def _unpublish(published: Any) -> None:
    if published is not None:
        published[pool.COMMAND_GROUP] = 0


def run(argv: list[str], cwd: Path, env: dict[str, str], limit: float) -> Ran:
    """Run ``argv`` in a new session; kill its process group at ``limit`` seconds, or once it exits.

    Raises ``OSError`` when the program cannot be started (missing, not executable, bad ``cwd``).
    """
    started = time.monotonic()
    deadline = started + limit
    published = pool.own_progress
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_child_setup(published),  # system calls only, between fork and exec: takes no lock
        )
    except BaseException:
        _unpublish(published)
        raise
    assert proc.stdout is not None
    tail = bytearray()
    total = 0
    timed_out = False
    exited_at: float | None = None
    eof = False
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while True:
                now = time.monotonic()
                if exited_at is None and _exited(proc.pid):
                    exited_at = now
                if exited_at is not None and (eof or now - exited_at >= _LINGER_SECONDS):
                    break
                if now >= deadline:
                    timed_out = True
                    break
                wait = min(deadline - now, 0.05 if eof or exited_at is not None else 0.2)
                if eof:
                    time.sleep(wait)
                    continue
                if selector.select(wait):
                    chunk = os.read(proc.stdout.fileno(), _READ_SIZE)
                    if not chunk:
                        eof = True
                    total += len(chunk)
                    tail += chunk
                    del tail[:-LOG_TAIL_BYTES]
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        _unpublish(published)  # before the reap frees the group's id for another
        proc.wait()
        proc.stdout.close()
    return Ran(proc.returncode, time.monotonic() - started, bytes(tail), total, timed_out)


def _output_text(ran: Ran) -> str:
    return ran.tail.decode("utf-8", "backslashreplace")


def _ending(text: str) -> str:
    """The last line of output, for a one-line reason."""
    lines = text.rstrip().splitlines()
    return f"; output ends: {lines[-1][-200:]!r}" if lines else "; no output"


@processor(TYPE, follow_ups=())
def run_command(activity: Activity, ctx: Context) -> dict[str, object]:
    """Run the configured command the activity names; see docs/builtins.md for outcomes."""
    try:
        name, command = specs.named(
            activity.data,
            specs.COMMAND_FIELD,
            ctx.settings.commands,
            noun="command",
            family="command",
            required="argv",
            article="a",
            worker_id=ctx.worker_id,
        )
    except specs.NotConfigured as exc:
        raise Fatal(str(exc)) from None
    try:
        argv = specs.fill(command.argv, activity.data)
    except specs.CannotFill as exc:
        raise Fatal(f"command {name!r}: {exc}") from None
    env = {key: os.environ[key] for key in command.env if key in os.environ}
    cwd = command.cwd or ctx.repository
    limit = command.deadline(timeout_for(ctx.settings, activity.type))
    ctx.log.info("command %s: running %s in %s (timeout %gs)", name, shlex.join(argv), cwd, limit)
    try:
        ran = run(argv, cwd, env, limit)
    except OSError as exc:
        raise Fatal(f"command {name!r} cannot start {argv[0]!r} in {cwd}: {exc.strerror or exc}") from None
    output = _output_text(ran)
    shown = f"last {len(ran.tail)} of {ran.output_bytes}" if len(ran.tail) < ran.output_bytes else "all"
    ctx.log.info(
        "command %s: exit code %d after %.3fs; output (%s bytes):\n%s",
        name,
        ran.exit_code,
        ran.seconds,
        shown,
        output,
    )
    if ran.timed_out:
        raise CommandFailed(f"command {name!r} timed out after {limit:g}s and was killed{_ending(output)}")
    verdict = command.verdict(ran.exit_code)
    if verdict == "retry":
        how = f"was killed by signal {-ran.exit_code}" if ran.exit_code < 0 else f"exited {ran.exit_code}"
        raise CommandFailed(f"command {name!r} {how} (retried){_ending(output)}")
    if verdict == "fatal":
        ok = ", ".join(map(str, sorted(command.ok_exit_codes))) or "none"
        raise Fatal(f"command {name!r} exited {ran.exit_code} (ok-exit-codes: {ok}){_ending(output)}")
    return {
        "command": name,
        "exit_code": ran.exit_code,
        "duration_seconds": round(ran.seconds, 3),
        "output_bytes": ran.output_bytes,
        "output_tail": output[-RESULT_TAIL_CHARS:],
    }
