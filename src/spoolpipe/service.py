"""``spoolpipe systemd-unit``: a systemd service that runs one worker the way it is meant to be stopped.

The daemon drains on SIGTERM within ``shutdown.grace-seconds`` and reloads on
SIGHUP; the unit says so (``KillSignal``, ``ExecReload``) and gives the drain
its time (``TimeoutStopSec`` = grace + :data:`STOP_MARGIN_SECONDS`).
``KillMode=mixed`` sends SIGTERM to the daemon alone (its pool processes must
not be interrupted mid-activity: the daemon stops them itself) and, should
anything be left when the daemon exits or the timeout passes, SIGKILL to every
process of the unit, pool processes included. Rendering is pure; the command
reads the repository's configuration for the grace period.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import PurePosixPath

#: Added to shutdown.grace-seconds: releasing claims, closing the pool, a slow shared file system.
STOP_MARGIN_SECONDS = 15
_BARE = re.compile(r"\A[A-Za-z0-9_./:@+=,-]+\Z")  # a word systemd reads as it is, unquoted
_USER = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\Z")
# Hardening that would hide or freeze a repository lying below these directories is left out.
_PRIVATE_TMP_HIDES = ("/tmp", "/var/tmp")
_PROTECT_SYSTEM_FREEZES = ("/usr", "/boot", "/efi", "/etc")


class UnitError(ValueError):
    """The unit cannot say this (a path with a line break, an impossible user name)."""


@dataclass(frozen=True)
class Unit:
    """What the unit of one worker depends on."""

    repository: str  # absolute
    worker_id: str
    python: str  # absolute path of the interpreter that has spoolpipe installed
    grace_seconds: float
    user: str | None = None


def _plain(text: str, what: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise UnitError(f"{what} {text!r} holds a control character; a unit file cannot say it")
    if any(0xDC80 <= ord(c) <= 0xDCFF for c in text):  # bytes of a name that is not UTF-8
        raise UnitError(f"{what} {text!r} is not UTF-8; systemd refuses such a unit file")
    return text.replace("%", "%%")  # systemd expands %-specifiers in these settings


def quote(arg: str, what: str = "argument", *, command: bool = True) -> str:
    """One word of a systemd command line (or, not ``command``, of a path list), exactly as given:
    quotes, % and \\ escaped, and $ on a command line (where systemd expands variables)."""
    if _BARE.match(arg):
        return arg
    escaped = _plain(arg, what).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped.replace("$", "$$") if command else escaped}"'


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(PurePosixPath(path).is_relative_to(root) for root in roots)


def render(unit: Unit) -> str:
    """The unit file's text."""
    if not os.path.isabs(unit.repository) or not os.path.isabs(unit.python):
        raise UnitError("the repository and the interpreter must be absolute paths")
    if unit.user is not None and not _USER.match(unit.user):
        raise UnitError(f"--user {unit.user!r} is not a user name")
    repo = quote(unit.repository, "repository path", command=False)
    command = " ".join(
        quote(a)
        for a in (unit.python, "-m", "spoolpipe", "worker", unit.repository, "--worker-id", unit.worker_id)
    )
    stop_seconds = math.ceil(unit.grace_seconds) + STOP_MARGIN_SECONDS
    hardening = [
        "NoNewPrivileges=yes",
        "RestrictSUIDSGID=yes",
        "ProtectKernelTunables=yes",
        "ProtectControlGroups=yes",
    ]
    if not _under(unit.repository, _PRIVATE_TMP_HIDES):
        hardening.append("PrivateTmp=yes")
    if not _under(unit.repository, _PROTECT_SYSTEM_FREEZES):
        hardening.append("ProtectSystem=full")
    lines = [
        f"# spoolpipe worker {unit.worker_id}: written by `spoolpipe systemd-unit`.",
        f"# Regenerate it when shutdown.grace-seconds changes (now {unit.grace_seconds:g}s).",
        "# See docs/operations.md, Running as a service.",
        "[Unit]",
        # A backslash ending a line would continue it: the description only shows it, as \x5c.
        f"Description=spoolpipe worker {_plain(unit.worker_id, 'id')} on "
        + _plain(unit.repository, "path").replace("\\", "\\x5c"),
        "Wants=network-online.target",
        "After=network-online.target",
        f"RequiresMountsFor={repo}",
        "",
        "[Service]",
        # Started once it says so (READY=1, with its signal handlers in place): a reload or stop
        # asked for while it starts waits for that; taking the lock may wait a lease.
        "Type=notify",
        "NotifyAccess=main",
        "TimeoutStartSec=infinity",
        *([f"User={unit.user}"] if unit.user else []),
        f"ExecStart={command}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "# SIGTERM to the daemon only: it stops claiming, lets running work finish within",
        "# shutdown.grace-seconds, then releases what is left; SIGKILL to all that remains.",
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={stop_seconds}",
        "Restart=on-failure",
        "RestartSec=10",
        *hardening,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def notify(state: str) -> None:
    """Tell systemd how the service is (``READY=1``, ``STOPPING=1``) through ``$NOTIFY_SOCKET``
    (``Type=notify``); nothing when it is not set (not started by systemd). Never raises."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address.startswith(("/", "@")):
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(state.encode(), address)


def interpreter() -> str:
    """This interpreter's absolute path, as started (a venv's ``bin/python`` link is kept, not resolved)."""
    return os.path.abspath(sys.executable)
