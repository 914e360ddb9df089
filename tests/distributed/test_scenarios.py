"""spoolpipe end to end on a real GlusterFS volume: each FUSE mount of the volume is one machine.

Every scenario runs real ``spoolpipe worker`` processes. A worker stands for a process on one
machine: its repository path is on that machine's own mount, and it runs in a UTS namespace with
the machine's host name (``machine-a``, ``machine-b``), so that filelock cannot prove a peer
dead through its pid and a lease is taken over only by age, as between real machines.
Processors live on local disk and count their side effects in a local directory
(``REPO/effects`` is a symlink to it): the effects are the ground truth of what really ran.
Worker logs (stderr) are on local disk too, under the test's tmp dir, as ``worker-ID.stderr``.

Each scenario prints one line of figures (also repeated at the end of the pytest run) and
asserts them; docs/reliability.md has the latest figures and what each scenario proves.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from gluster import GlusterVolume, MountFactory, is_dead_mount
from harness import (
    effects,
    ids_in,
    kill_group,
    leftovers,
    make_repository_on,
    records,
    start_worker_as,
    unparsable_json,
    wait_for,
)

from spoolpipe.activity import new_id

Figures = Callable[[str], None]


# -- machines and workers ----------------------------------------------------------------------


@dataclass
class Machine:
    """One machine: its own mount of the volume, and the repository's path under that mount."""

    name: str
    mount: Path
    repo: Path

    @property
    def hostname(self) -> str:
        return f"machine-{self.name}"


@dataclass
class Workers:
    """Worker processes on machines; logs on local disk. Everything still running is killed at teardown."""

    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    where: dict[str, Machine] = field(default_factory=dict)

    def start(
        self, machine: Machine, worker_id: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        proc = start_worker_as(
            machine.repo,
            worker_id,
            *args,
            log=self.log_path(worker_id),
            hostname=machine.hostname,
            env=env,
        )
        self.procs[worker_id] = proc
        self.where[worker_id] = machine
        return proc

    def restart(self, worker_id: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.start(self.where[worker_id], worker_id, *args, env=env)

    def log_path(self, worker_id: str) -> Path:
        return self.logs / f"worker-{worker_id}.stderr"

    def log(self, worker_id: str) -> str:
        try:
            return self.log_path(worker_id).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self, worker_id: str) -> bool:
        return self.procs[worker_id].poll() is None

    def kill(self, worker_id: str) -> None:
        """SIGKILL the worker and its pool processes (the process group), as a crash would."""
        kill_group(self.procs[worker_id])

    def stop(self, worker_id: str, timeout: float = 30) -> int | None:
        """SIGTERM (drain); SIGKILL if it does not exit in time. Returns the exit code of the SIGTERM."""
        proc = self.procs[worker_id]
        if proc.poll() is not None:
            return proc.returncode
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            return None

    def stop_all(self, timeout: float = 30) -> dict[str, int | None]:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        return {w: self.stop(w, timeout) for w in self.procs}

    def kill_all(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the pool processes too, even if the leader is gone
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)


@pytest.fixture
def workers(tmp_path: Path, gluster_mount: MountFactory) -> Iterator[Workers]:
    """Depends on gluster_mount so that workers are gone before their mounts are unmounted."""
    team = Workers(tmp_path)
    try:
        yield team
    finally:
        team.kill_all()


@dataclass
class Cluster:
    """A repository on the volume and the machines that mount it."""

    tmp: Path
    machines: dict[str, Machine]
    effects: Path

    @property
    def a(self) -> Machine:
        return self.machines["a"]

    @property
    def b(self) -> Machine:
        return self.machines["b"]


ClusterFactory = Callable[..., Cluster]


@pytest.fixture
def cluster(
    gluster: GlusterVolume, gluster_mount: MountFactory, tmp_path: Path, unique_name: Callable[[], str]
) -> ClusterFactory:
    """``cluster(properties, machines=("a", "b"), volume=..., coherent=False, extra_processors="")``.

    Creates the repository through the first machine's mount and waits until every other mount
    sees it. Processors and effects are on local disk.
    """

    def make(
        properties: str = "",
        *,
        machines: tuple[str, ...] = ("a", "b"),
        volume: GlusterVolume | None = None,
        coherent: bool = False,
        extra_processors: str = "",
        envs: dict[str, dict[str, str]] | None = None,
    ) -> Cluster:
        vol = volume or gluster
        mounts = {
            m: gluster_mount(m, volume=vol, coherent=coherent, env=(envs or {}).get(m)) for m in machines
        }
        rel = Path(unique_name()) / "repo"
        first = machines[0]
        make_repository_on(
            mounts[first] / rel,
            tmp_path / "procs",
            properties,
            extra_processors=extra_processors,
            effects_dir=tmp_path / "effects",
        )
        found = {m: Machine(m, mounts[m], mounts[m] / rel) for m in machines}
        for m in found.values():
            wait_for(lambda m=m: (m.repo / "spoolpipe.properties").exists(), 10, f"repo on {m.mount}")
        return Cluster(tmp_path, found, tmp_path / "effects")

    return make


# -- activities and checks -----------------------------------------------------------------------


def publish(
    repo: Path, type_: str, data: dict[str, Any] | None = None, *, not_before: str | None = None
) -> str:
    """Publish an activity the way the format asks writers to: a hidden temp name, then a rename."""
    aid = new_id()
    doc: dict[str, Any] = {"id": aid, "type": type_, "data": data or {}}
    if not_before is not None:
        doc["not_before"] = not_before
    tmp = repo / "inbox" / f".{aid}.json.tmp"
    tmp.write_text(json.dumps(doc))
    os.rename(tmp, repo / "inbox" / f"{aid}.json")
    return aid


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def held_by(repo: Path, worker: str) -> set[str]:
    """Stems of every claim in running/ owned by ``worker``, committed or not."""
    found = set()
    for name in os.listdir(repo / "running"):
        parts = name.removesuffix(".json").split("~")
        if len(parts) >= 3 and parts[2] == worker:
            found.add("~".join(parts[:3]))
    return found


def count_done(repo: Path) -> int:
    return sum(1 for n in os.listdir(repo / "done") if n.endswith(".json"))


@dataclass
class Tally:
    """What a finished run left: asserted by every scenario, printed as its figures."""

    done: dict[str, dict[str, Any]]
    duplicates: int
    lost: list[str]
    corrupt: list[str]
    failed: list[str]
    left: dict[str, list[str]]


def tally(repo: Path, expected: set[str]) -> Tally:
    corrupt = unparsable_json(repo)
    done = records(repo / "done") if not corrupt else {}
    # A record's id is its file name, so a completion twice would show as two names with one id,
    # a record under a wrong name, or an activity both done and failed.
    ids = Counter(r.get("id") for r in done.values())
    failed = ids_in(repo / "failed")
    duplicates = sum(n - 1 for n in ids.values() if n > 1) + sum(1 for i, r in done.items() if r.get("id") != i)
    duplicates += len(set(failed) & set(done))
    lost = sorted(expected - set(done))
    return Tally(done, duplicates, lost, corrupt, failed, leftovers(repo))


# -- scenario 1 ----------------------------------------------------------------------------------


def test_scenario_1_two_machines_random_sigkills_everything_exactly_once(
    cluster: ClusterFactory, workers: Workers, scenario_figures: Figures
) -> None:
    """2 workers per mount, 700 parents with 2 follow-ups each, random SIGKILLs and restarts."""
    c = cluster("pool.size = 2\nscan.interval-seconds = 0.5\n")
    parents, children = 700, 2
    expected_total = parents * (1 + children)
    parent_ids = {publish(c.a.repo, "t.parent", {"children": children}) for _ in range(parents)}
    names = {"a1": c.a, "a2": c.a, "b1": c.b, "b2": c.b}
    for worker_id, machine in names.items():
        workers.start(machine, worker_id)
    repo = c.a.repo
    rng = random.Random(1)
    kills = claims_recovered = 0
    recovery: list[float] = []
    unrecovered = 0
    t0 = time.monotonic()
    deadline = t0 + 150
    while count_done(repo) < expected_total:
        assert time.monotonic() < deadline, f"stuck at {count_done(repo)}/{expected_total}"
        time.sleep(rng.uniform(0.5, 1.5))
        holding = [w for w in sorted(names) if held_by(repo, w)]
        if kills >= 12 or not holding:
            continue
        victim = rng.choice(holding)
        workers.kill(victim)
        killed_at = time.monotonic()
        held = held_by(repo, victim)
        kills += 1
        claims_recovered += len(held)
        # The peers (on both machines) find the dead worker's lock free and requeue its claims.
        try:
            wait_for(lambda v=victim: not held_by(repo, v), 20, f"{victim}'s claims recovered by peers")
            recovery.append(time.monotonic() - killed_at)
        except AssertionError:
            unrecovered += 1
        workers.restart(victim)
    elapsed = time.monotonic() - t0
    exits = workers.stop_all()
    t = tally(repo, parent_ids)
    # every parent's declared follow-ups exist, and no child exists that no parent declared
    declared = {c for p in parent_ids if p in t.done for c in t.done[p]["spoolpipe"]["follow_ups"]}
    children_done = {i for i, r in t.done.items() if r["type"] == "t.child"}
    lost = len(t.lost) + len(declared - children_done)
    ran = Counter(e[0] for e in effects(repo, "t.parent") + effects(repo, "t.child"))
    reruns = sum(ran.values()) - len(ran)
    scenario_figures(
        f"scenario 1: activities={len(t.done)} kills={kills} claims-recovered={claims_recovered} "
        f"recovery-seconds={max(recovery, default=0):.2f} duplicates={t.duplicates} lost={lost} "
        f"corrupt={len(t.corrupt)} re-executions={reruns} elapsed-seconds={elapsed:.1f}"
    )
    assert t.corrupt == []
    assert len(t.done) == expected_total and t.duplicates == 0 and lost == 0
    assert len(declared) == parents * children and declared == children_done
    assert all(len(t.done[p]["spoolpipe"]["follow_ups"]) == children for p in parent_ids)
    assert all(t.done[ch]["data"]["parent"] in parent_ids for ch in children_done)
    assert t.failed == []
    assert t.left == {}, t.left
    assert set(ran) == set(t.done), "every completed activity ran, and nothing else ran"
    assert kills >= 8 and claims_recovered >= kills
    assert unrecovered == 0, "every dead worker's claims were recovered by its peers"
    assert max(recovery) < 10
    assert all(code == 0 for code in exits.values()), exits
    hosts = Counter(r["spoolpipe"]["host"] for r in t.done.values())
    assert set(hosts) == {"machine-a", "machine-b"}, hosts
