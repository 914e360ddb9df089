"""A real GlusterFS volume with several FUSE client mounts, for spoolpipe's distributed tests.

Each FUSE mount of the same volume stands for one machine: it has its own ``glusterfs`` client
process, its own kernel and client-side caches, and its own lock state on the brick. Killing a
mount's client process with SIGKILL is how a test makes that "machine" crash.

Needs Linux, root, ``/dev/fuse`` and Debian's ``glusterfs-server`` + ``glusterfs-client``
(``.ci/install-gluster.sh``). Nothing here installs packages; :func:`ensure_glusterd` starts the
daemon directly (there is no systemd here) and leaves it running.

Facts this module relies on (Debian 12, GlusterFS 10.3):

* ``gluster volume create`` refuses ``localhost``/``127.0.0.1`` as the brick host, but accepts
  ``127.0.0.2`` (still loopback, still "local" to glusterd), so no hostname or /etc/hosts setup
  is needed. A brick on the root filesystem needs ``force``.
* ``mount.glusterfs`` mishandles ``-o fopen-keep-cache=false`` (it passes ``==false``), so clients
  are started by running ``glusterfs`` directly, with a pid file so the exact client process of a
  mount is known.

No pytest import here: this module is usable from scripts and benchmarks as well.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = [
    "COHERENT_CLIENT_ARGS",
    "COHERENT_VOLUME_OPTIONS",
    "DEFAULT_HOST",
    "GlusterError",
    "GlusterVolume",
    "MountFactory",
    "ensure_gluster",
    "ensure_glusterd",
    "gluster_available",
    "is_dead_mount",
    "reap_stale_volumes",
]

#: Brick and volfile host. Loopback, but not one of the names the gluster CLI rejects.
DEFAULT_HOST = "127.0.0.2"

#: Volume options that switch off the client-side caches which make another client's changes
#: show up only after ~1 s (md-cache, quick-read) and cause spurious ESTALE (open-behind).
COHERENT_VOLUME_OPTIONS: Mapping[str, str] = {
    "performance.stat-prefetch": "off",
    "performance.quick-read": "off",
    "performance.open-behind": "off",
}

#: ``glusterfs`` client arguments that switch off the kernel's FUSE attribute/dentry caches and
#: its page cache across opens. With COHERENT_VOLUME_OPTIONS too, another mount's writes are
#: visible within milliseconds.
COHERENT_CLIENT_ARGS: tuple[str, ...] = (
    "--attribute-timeout=0",
    "--entry-timeout=0",
    "--negative-timeout=0",
    "--fopen-keep-cache=false",
)

_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
_GLUSTERD_PIDFILE = "/run/glusterd.pid"
_START_LOCK = "/run/spoolpipe-glusterd-start.lock"
_GLUSTERD_LOG = Path("/var/log/glusterfs/glusterd.log")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_RETRYABLE = ("Another transaction is in progress", "Locking failed", "try again later")


class GlusterError(RuntimeError):
    """GlusterFS could not be set up or driven as asked."""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN_DIRS))


def _binary(name: str) -> str:
    path = _which(name)
    if path is None:
        raise GlusterError(f"{name} not found (apt-get install glusterfs-server glusterfs-client)")
    return path


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _run(argv: Sequence[str], *, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise GlusterError(f"timed out after {timeout:.0f}s: {' '.join(argv)}") from exc


def _gluster(*args: str, timeout: float = 120.0, ok_if: Sequence[str] = ()) -> str:
    """Run the gluster CLI in script mode; retry while glusterd is busy with another transaction."""
    argv = [_binary("gluster"), "--mode=script", *args]
    deadline = time.monotonic() + timeout
    while True:
        proc = _run(argv, timeout=max(5.0, deadline - time.monotonic()))
        out = (proc.stdout + proc.stderr).strip()
        if proc.returncode == 0:
            return out
        if any(s in out for s in ok_if):
            return out
        if any(s in out for s in _RETRYABLE) and time.monotonic() < deadline:
            time.sleep(0.5)
            continue
        raise GlusterError(f"`gluster {' '.join(args)}` failed (rc={proc.returncode}): {out}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _wait_pid_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def glusterd_running() -> bool:
    """True if a glusterd answers the CLI."""
    gluster = _which("gluster")
    if gluster is None:
        return False
    try:
        proc = _run([gluster, "--mode=script", "--timeout=10", "volume", "list"], timeout=20)
    except GlusterError:
        return False
    return proc.returncode == 0


def ensure_glusterd(timeout: float = 60.0) -> None:
    """Start glusterd (directly, without systemd) unless one is already running; leave it running."""
    if glusterd_running():
        return
    glusterd = _binary("glusterd")
    with open(_START_LOCK, "a+") as lock:  # one starter at a time (pytest-xdist)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if glusterd_running():
            return
        # glusterd daemonizes; its own session so it outlives the test run.
        proc = subprocess.run(
            [glusterd, "-p", _GLUSTERD_PIDFILE, "--log-level", "INFO"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
            check=False,
        )
        if proc.returncode != 0:
            raise GlusterError(
                f"glusterd exited {proc.returncode}: {(proc.stdout + proc.stderr).strip()}\n"
                f"{_tail(_GLUSTERD_LOG)}"
            )
        deadline = time.monotonic() + timeout
        while not glusterd_running():
            if time.monotonic() > deadline:
                raise GlusterError(f"glusterd did not answer in {timeout:.0f}s\n{_tail(_GLUSTERD_LOG)}")
            time.sleep(0.2)


def gluster_available() -> str | None:
    """None if real GlusterFS volumes and FUSE mounts can be made here, else the reason why not.

    Starts glusterd if it is installed but not running (that is part of "usable").
    """
    if not sys.platform.startswith("linux"):
        return f"GlusterFS FUSE mounts need Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return "must run as root (glusterd and FUSE mounts)"
    for name in ("glusterd", "gluster", "glusterfs", "umount"):
        if _which(name) is None:
            return f"`{name}` not found (apt-get install glusterfs-server glusterfs-client)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (no FUSE in this kernel/container)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"cannot open /dev/fuse: {exc}"
    try:
        ensure_glusterd()
    except (GlusterError, OSError, subprocess.SubprocessError) as exc:
        return f"cannot start glusterd: {exc}"
    return None


def is_dead_mount(path: Path) -> bool:
    """True if path is a FUSE mount whose client is gone (ENOTCONN)."""
    try:
        os.statvfs(path)  # statfs always reaches the FUSE daemon; stat may be served from cache
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def _proc_mounts() -> list[tuple[str, str, str]]:
    """(source, mountpoint, fstype) of every mount, mountpoints unescaped."""
    result = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                mnt = parts[1].encode().decode("unicode_escape")
                result.append((parts[0], mnt, parts[2]))
    return result


def _is_mounted(path: Path) -> bool:
    p = str(path)
    return any(mnt == p for _, mnt, _ in _proc_mounts())


def _umount(path: Path) -> None:
    """Unmount, lazily if busy or dead; no error if not mounted."""
    umount = _binary("umount")
    for _ in range(10):  # mounts can be stacked at one path
        if not _is_mounted(path):
            return
        proc = _run([umount, str(path)], timeout=30)
        if proc.returncode != 0:
            proc = _run([umount, "-l", str(path)], timeout=30)
            if proc.returncode != 0 and _is_mounted(path):
                raise GlusterError(f"cannot unmount {path}: {proc.stderr.strip()}")
    if _is_mounted(path):
        raise GlusterError(f"{path} is still mounted after 10 unmounts")


def _volume_list() -> list[str]:
    out = _gluster("volume", "list", ok_if=("No volumes present",))
    return [v for v in out.splitlines() if v and " " not in v]


def _delete_volume(name: str, *, remove_bricks: bool) -> None:
    bricks: list[str] = []
    with contextlib.suppress(GlusterError):
        info = _gluster("volume", "info", name)
        bricks = [m.group(1) for m in re.finditer(r"^Brick\d+: [^:]+:(/.*)$", info, re.M)]
    for src, mnt, fstype in _proc_mounts():
        if fstype == "fuse.glusterfs" and src.endswith(f":/{name}"):
            with contextlib.suppress(GlusterError):
                _umount(Path(mnt))
    _gluster("volume", "stop", name, "force", ok_if=("does not exist", "is not in the started state"))
    _gluster("volume", "delete", name, ok_if=("does not exist",))
    if remove_bricks:
        for brick in bricks:
            shutil.rmtree(brick, ignore_errors=True)


def reap_stale_volumes(prefix: str = "sptest") -> list[str]:
    """Delete volumes named ``{prefix}-{pid}-...`` whose creating process is gone (crashed runs)."""
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)-[0-9a-f]+$")
    reaped = []
    for vol in _volume_list():
        m = pattern.match(vol)
        if m and not _pid_alive(int(m.group(1))):
            _delete_volume(vol, remove_bricks=True)
            reaped.append(vol)
    return reaped


@dataclass
class _Mount:
    name: str
    path: Path
    client_args: tuple[str, ...]
    pid_file: Path
    log_file: Path
    env: tuple[tuple[str, str], ...] = ()


class GlusterVolume:
    """One started one-brick volume and the FUSE mounts made of it through this object."""

    def __init__(self, name: str, host: str, brick: Path, base: Path) -> None:
        self.name = name
        self.host = host
        self.brick = brick
        self.base = base
        self._mounts: dict[Path, _Mount] = {}
        self._destroyed = False

    def __repr__(self) -> str:
        return f"GlusterVolume({self.name!r}, brick={str(self.brick)!r}, mounts={self.mounts!r})"

    def __enter__(self) -> GlusterVolume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    @property
    def mounts(self) -> list[Path]:
        """Mount points made by :meth:`mount` and not yet unmounted (dead ones included)."""
        return list(self._mounts)

    # -- mounts ---------------------------------------------------------------------------

    def mount(
        self,
        name: str,
        *,
        coherent: bool = False,
        client_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> Path:
        """Mount the volume at ``base/mnt/<name>`` with a new glusterfs client; return the path.

        ``coherent=True`` adds COHERENT_CLIENT_ARGS (no kernel caching). ``client_args`` are
        extra ``glusterfs`` arguments (e.g. ``--attribute-timeout=0``). ``env`` is added to the
        client's environment (e.g. libfaketime's, for a machine whose clock is off: with the
        volume's default ``features.ctime=on`` a client stamps the files it writes with its clock).
        """
        if self._destroyed:
            raise GlusterError(f"volume {self.name} was destroyed")
        if not _NAME_RE.match(name):
            raise GlusterError(f"bad mount name {name!r}")
        args = (*(COHERENT_CLIENT_ARGS if coherent else ()), *client_args)
        path = self.base / "mnt" / name
        if path in self._mounts or _is_mounted(path):
            raise GlusterError(f"{path} is already mounted")
        path.mkdir(parents=True, exist_ok=True)
        run_dir = self.base / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        m = _Mount(
            name, path, args, run_dir / f"{name}.pid", run_dir / f"{name}.log", tuple((env or {}).items())
        )
        with contextlib.suppress(FileNotFoundError):
            m.pid_file.unlink()
        self._start_client(m)
        self._mounts[path] = m
        return path

    def _start_client(self, m: _Mount) -> None:
        argv = [
            _binary("glusterfs"),
            "--process-name",
            "fuse",
            f"--volfile-server={self.host}",
            f"--volfile-id=/{self.name}",
            f"--pid-file={m.pid_file}",
            f"--log-file={m.log_file}",
            *m.client_args,
            str(m.path),
        ]
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            start_new_session=True,
            check=False,
            env={**os.environ, **dict(m.env)},
        )
        if proc.returncode != 0:
            raise GlusterError(
                f"glusterfs client for {m.path} exited {proc.returncode}: "
                f"{(proc.stdout + proc.stderr).strip()}\n{_tail(m.log_file)}"
            )
        deadline = time.monotonic() + 30
        while True:
            if _is_mounted(m.path) and self._read_pid(m) is not None:
                try:
                    os.listdir(m.path)
                    return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                with contextlib.suppress(GlusterError):
                    _umount(m.path)
                raise GlusterError(f"mount {m.path} did not come up in 30s\n{_tail(m.log_file)}")
            time.sleep(0.05)

    def _get(self, path: Path) -> _Mount:
        try:
            return self._mounts[Path(path)]
        except KeyError:
            raise GlusterError(f"{path} is not a mount of volume {self.name}") from None

    @staticmethod
    def _read_pid(m: _Mount) -> int | None:
        try:
            return int(m.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def client_pid(self, path: Path) -> int | None:
        """Pid of the live glusterfs client serving this mount, or None if it is gone."""
        pid = self._read_pid(self._get(path))
        if pid is None or not _pid_alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        return pid if str(path).encode() in cmdline else None

    def kill_client(self, path: Path) -> int:
        """SIGKILL the FUSE client of this mount (a machine crash); return its pid.

        Afterwards the brick has dropped that client's locks, and the mount answers ENOTCONN
        until :meth:`remount` or :meth:`unmount`.
        """
        pid = self.client_pid(path)
        if pid is None:
            raise GlusterError(f"no live glusterfs client for {path}")
        os.kill(pid, signal.SIGKILL)
        if not _wait_pid_gone(pid, 10):
            raise GlusterError(f"glusterfs client {pid} survived SIGKILL")
        return pid

    @contextlib.contextmanager
    def frozen_client(self, path: Path) -> Iterator[int]:
        """SIGSTOP the mount's client for the block (a hung machine), SIGCONT it afterwards."""
        pid = self.client_pid(path)
        if pid is None:
            raise GlusterError(f"no live glusterfs client for {path}")
        os.kill(pid, signal.SIGSTOP)
        try:
            yield pid
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def unmount(self, path: Path) -> None:
        """Unmount (lazily if busy or dead), stop its client, remove the empty mount point."""
        m = self._get(path)
        pid = self.client_pid(m.path)
        _umount(m.path)
        if pid is not None and not _wait_pid_gone(pid, 10):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_pid_gone(pid, 5)
        del self._mounts[m.path]
        with contextlib.suppress(OSError):
            m.path.rmdir()

    def remount(self, path: Path) -> Path:
        """Unmount (lazily: works on a dead mount with open files) and mount again, same args."""
        m = self._get(path)
        self.unmount(m.path)
        return self.mount(m.name, client_args=m.client_args, env=dict(m.env))

    # -- volume ---------------------------------------------------------------------------

    def set_options(self, options: Mapping[str, str]) -> None:
        """``gluster volume set`` each option; live clients switch to the new graph."""
        for key, value in options.items():
            _gluster("volume", "set", self.name, key, value)

    def destroy(self) -> None:
        """Unmount everything, stop and delete the volume, remove the brick. Idempotent."""
        if self._destroyed:
            return
        errors = []
        for path in list(self._mounts):
            try:
                self.unmount(path)
            except GlusterError as exc:
                errors.append(str(exc))
        try:
            _delete_volume(self.name, remove_bricks=False)
        except GlusterError as exc:
            errors.append(str(exc))
        shutil.rmtree(self.brick, ignore_errors=True)
        self._destroyed = True
        if errors:
            raise GlusterError("; ".join(errors))


class MountFactory(Protocol):
    """Type of the ``gluster_mount`` pytest fixture: mount a volume for one test."""

    def __call__(
        self,
        label: str,
        *,
        volume: GlusterVolume | None = None,
        coherent: bool = False,
        client_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> Path: ...


def ensure_gluster(
    base: Path,
    *,
    volume_options: Mapping[str, str] | None = None,
    coherent: bool = False,
    prefix: str = "sptest",
    host: str = DEFAULT_HOST,
) -> GlusterVolume:
    """Start glusterd if needed and create + start a new uniquely named one-brick volume.

    The brick is ``base/bricks/<volume>``; mounts go under ``base/mnt``. ``coherent=True``
    applies COHERENT_VOLUME_OPTIONS; ``volume_options`` are applied after those. Installs
    nothing. Volumes of earlier runs with the same prefix whose process died are deleted first.
    """
    ensure_glusterd()
    with contextlib.suppress(GlusterError):
        reap_stale_volumes(prefix)
    base = Path(base).resolve()
    name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if not _NAME_RE.match(name):
        raise GlusterError(f"bad volume name {name!r}")
    brick = base / "bricks" / name
    brick.mkdir(parents=True)
    vol = GlusterVolume(name, host, brick, base)
    try:
        # force: the brick is on the root filesystem, which gluster otherwise refuses.
        _gluster("volume", "create", name, f"{host}:{brick}", "force")
        options = {**(COHERENT_VOLUME_OPTIONS if coherent else {}), **(volume_options or {})}
        vol.set_options(options)
        _gluster("volume", "start", name)
        _wait_brick_online(name)
    except BaseException:
        with contextlib.suppress(GlusterError):
            vol.destroy()
        raise
    return vol


def _wait_brick_online(name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        out = _gluster("volume", "status", name, "--xml")
        if re.search(r"<node>.*?<status>1</status>", out, re.S):
            return
        if time.monotonic() > deadline:
            raise GlusterError(f"brick of {name} not online after {timeout:.0f}s:\n{out}")
        time.sleep(0.2)
