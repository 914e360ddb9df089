"""Fixtures giving tests a real GlusterFS volume with several FUSE mounts ("machines").

``gluster``           session-wide volume with stock GlusterFS options (what users get).
``gluster_coherent``  session-wide volume with client caches off (COHERENT_VOLUME_OPTIONS).
``gluster_mount``     factory: ``gluster_mount("a")`` mounts ``gluster`` once more for this test
                      and unmounts it at teardown; ``gluster_mount("a", volume=other)`` for others.

When GlusterFS is not usable: with ``CI=true`` every test using these fixtures fails loudly with
the reason; elsewhere they are skipped with a note on how to enable them.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # also works under --import-mode=importlib
    sys.path.insert(0, _HERE)
_TESTS = str(Path(__file__).resolve().parent.parent)
if _TESTS not in sys.path:  # tests/harness.py, for the end-to-end scenarios
    sys.path.append(_TESTS)

from gluster import (  # noqa: E402
    GlusterError,
    GlusterVolume,
    MountFactory,
    ensure_gluster,
    gluster_available,
)

ENABLE_HINT = (
    "to enable: `sudo apt-get install glusterfs-server glusterfs-client` "
    "(or `sudo bash .ci/install-gluster.sh`) and run pytest as root on Linux with /dev/fuse"
)

_availability: list[str | None] = []  # memo: checked once per session


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _unusable(reason: str) -> NoReturn:
    if _in_ci():
        pytest.fail(
            f"GlusterFS is REQUIRED in CI but is not usable: {reason}. "
            "Run `bash .ci/install-gluster.sh` as root before the tests.",
            pytrace=False,
        )
    pytest.skip(f"GlusterFS not usable ({reason}); {ENABLE_HINT}")


def _require_gluster() -> None:
    if not _availability:
        _availability.append(gluster_available())
    reason = _availability[0]
    if reason is not None:
        _unusable(reason)


def _make_volume(factory: pytest.TempPathFactory, label: str, *, coherent: bool) -> GlusterVolume:
    _require_gluster()
    t0 = time.monotonic()
    try:
        vol = ensure_gluster(factory.mktemp(label), coherent=coherent)
    except GlusterError as exc:
        _unusable(f"cannot create a volume: {exc}")
    print(f"\n[gluster] volume {vol.name} ready in {time.monotonic() - t0:.2f}s", file=sys.stderr)
    return vol


@pytest.fixture(scope="session")
def gluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlusterVolume]:
    """A started one-brick volume with stock options; destroyed at the end of the session."""
    vol = _make_volume(tmp_path_factory, "gluster", coherent=False)
    try:
        yield vol
    finally:
        vol.destroy()


@pytest.fixture(scope="session")
def gluster_coherent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlusterVolume]:
    """Like ``gluster`` but with md-cache, quick-read and open-behind off."""
    vol = _make_volume(tmp_path_factory, "gluster-coherent", coherent=True)
    try:
        yield vol
    finally:
        vol.destroy()


_mount_ids = itertools.count()


@pytest.fixture
def gluster_mount(gluster: GlusterVolume) -> Iterator[MountFactory]:
    """Mount a volume (default: ``gluster``) for this test only; each mount is one "machine"."""
    made: list[tuple[GlusterVolume, Path]] = []

    def mount(
        label: str,
        *,
        volume: GlusterVolume | None = None,
        coherent: bool = False,
        client_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> Path:
        vol = volume or gluster
        path = vol.mount(
            f"{label}-{os.getpid()}-{next(_mount_ids)}", coherent=coherent, client_args=client_args, env=env
        )
        made.append((vol, path))
        return path

    yield mount
    errors = []
    for vol, path in reversed(made):
        if path in vol.mounts:
            try:
                vol.unmount(path)
            except GlusterError as exc:
                errors.append(str(exc))
    if errors:
        raise GlusterError("; ".join(errors))


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[], str]:
    """Names for per-test directories on the shared volume."""
    counter = itertools.count()
    stem = "".join(c if c.isalnum() else "_" for c in request.node.name)[:40]
    return lambda: f"{stem}-{os.getpid()}-{time.time_ns()}-{next(counter)}"


# -- figures of the end-to-end scenarios (test_scenarios.py), repeated at the end of the run ------

_FIGURES: list[str] = []


@pytest.fixture
def scenario_figures() -> Callable[[str], None]:
    """``record("scenario N: k=v ...")``: print the line now and again in pytest's closing summary."""

    def record(line: str) -> None:
        print(f"\n{line}")
        _FIGURES.append(line)

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("spoolpipe scenario figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
