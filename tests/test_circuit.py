"""Circuit breakers with real worker processes: a type whose downstream is down stops being claimed
(its activities wait in the inbox, others keep running), one probe goes through after each cool-down,
and the circuit closes once the downstream is back; status shows it; timeouts count."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import effects, ids_in, kill_group, leftovers, make_repository, start_worker, submit, wait_for
from spoolpipe.activity import is_ignored, parse_inbox_name

TIMEOUT = 90

PROCESSORS = """
@processor("t.down")
def downstream(activity, ctx):
    if (ctx.repository / "downstream-down").exists():
        _effect(ctx, activity)
        raise ConnectionError("downstream is down")
    _effect(ctx, activity)
    return "sent"

@processor("t.hang")
def hang(activity, ctx):
    _effect(ctx, activity)
    if (ctx.repository / "downstream-down").exists():
        time.sleep(3600)
    return "answered"
"""

PROPERTIES = """\
pool.size = 2
concurrency.t.down = 1
retry.max-attempts = 50
retry.backoff-seconds = 1
retry.backoff-max-seconds = 2
circuit.t.down.failures = 3
circuit.t.down.window-seconds = 1m
circuit.t.down.cool-down-seconds = 3
"""

OPENED = "circuit for t.down open after 3 failures in 60s: not claiming t.down for 3s"


def repository(tmp_path: Path, properties: str = PROPERTIES) -> Path:
    repo = make_repository(tmp_path, properties, extra_processors=PROCESSORS)
    (repo / "downstream-down").write_text("")
    return repo


def log_of(repo: Path, worker: str = "w1") -> str:
    return (repo.parent / f"worker-{worker}.stderr").read_text()


def status(repo: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "spoolpipe", "status", str(repo), "--json"],
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert out.returncode == 0, out.stderr
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def inbox_ids(repo: Path) -> set[str]:
    return {parse_inbox_name(n).stem for n in os.listdir(repo / "inbox") if not is_ignored(n)}


def probes_only_while_not_closed(log: str) -> int:
    """Replay the worker log: while the circuit of t.down is not closed, each t.down attempt must be
    the probe just named, one per probe. Returns how many probes ran."""
    probe: str | None = None
    open_, probes = False, 0
    pattern = re.compile(
        r"circuit for t\.down (open|closed)|probing with (\S+)|(?:retry|done|failed) (\S+) \(t\.down"
    )
    for line in log.splitlines():
        m = pattern.search(line)
        if m is None:
            continue
        if m.group(1) == "open":
            open_, probe = True, None
        elif m.group(1) == "closed":
            open_ = False
        elif m.group(2):
            assert open_ and probe is None, line
            probe = m.group(2)
        elif open_:
            assert m.group(3) == probe, f"claimed while the circuit was open: {line}"
            probe, probes = None, probes + 1
    return probes


def test_a_failing_type_waits_behind_its_circuit_probes_and_runs_once_the_downstream_is_back(
    tmp_path: Path,
) -> None:
    repo = repository(tmp_path)
    down = [submit(repo, "t.down", {"n": i}) for i in range(6)]
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: OPENED in log_of(repo), TIMEOUT, "the circuit to open")
        assert len(effects(repo, "t.down")) == 3, "exactly the failures it takes to open it ran"
        assert ids_in(repo / "failed") == []
        assert inbox_ids(repo) == set(down), "every t.down activity waits in the inbox"

        others = [submit(repo, "t.child", {"i": i}) for i in range(4)]
        wait_for(lambda: set(others) <= set(ids_in(repo / "done")), TIMEOUT, "other types to keep running")
        assert not set(down) & set(ids_in(repo / "done"))

        def shown_open() -> bool:
            circuits = status(repo)["circuits"]
            return any(
                c["type"] == "t.down" and c["worker"] == "w1" and c["state"] == "open" for c in circuits
            )

        wait_for(shown_open, TIMEOUT, "status --json to show the open circuit")
        text = subprocess.run(
            [sys.executable, "-m", "spoolpipe", "status", str(repo)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        ).stdout
        assert "circuit open: t.down on w1" in text or "circuit half-open: t.down on w1" in text, text

        wait_for(lambda: "circuit for t.down open again, probe" in log_of(repo), TIMEOUT, "a failed probe")
        assert ids_in(repo / "failed") == []

        (repo / "downstream-down").unlink()
        wait_for(lambda: set(down) <= set(ids_in(repo / "done")), TIMEOUT, "every t.down activity to be done")
        log = log_of(repo)
        assert re.search(r"circuit for t\.down closed: probe \S+ succeeded", log), log
        assert probes_only_while_not_closed(log) >= 2
        assert ids_in(repo / "failed") == []
        wait_for(lambda: status(repo)["circuits"] == [], TIMEOUT, "status to show no circuit once it closed")
    finally:
        kill_group(worker)


def test_timeouts_count_as_failures(tmp_path: Path) -> None:
    repo = repository(
        tmp_path,
        "pool.size = 1\nretry.max-attempts = 50\n"
        "timeout.t.hang = 1\ncircuit.t.hang.failures = 2\ncircuit.t.hang.cool-down-seconds = 1h\n",
    )
    hung = [submit(repo, "t.hang") for _ in range(4)]
    worker = start_worker(repo, "w1")
    try:
        wait_for(
            lambda: (
                "circuit for t.hang open after 2 failures in 60s: not claiming t.hang for 3600s"
                in log_of(repo)
            ),
            TIMEOUT,
            "two timeouts to open the circuit",
        )
        assert len(effects(repo, "t.hang")) == 2
        assert inbox_ids(repo) == set(hung)
        # more of the held type than a worker looks past for one it may run: they must not stand in the way
        hung += [submit(repo, "t.hang") for _ in range(300)]
        child = submit(repo, "t.child", {"i": 0})
        wait_for(lambda: child in ids_in(repo / "done"), TIMEOUT, "another type to run meanwhile")
        assert len(effects(repo, "t.hang")) == 2, "nothing of t.hang claimed during the cool-down"
        assert inbox_ids(repo) == set(hung)
    finally:
        kill_group(worker)


def test_removing_the_keys_closes_the_circuit_at_once(tmp_path: Path) -> None:
    repo = repository(tmp_path, PROPERTIES.replace("cool-down-seconds = 3", "cool-down-seconds = 1h"))
    down = [submit(repo, "t.down") for _ in range(4)]
    worker = start_worker(repo, "w1")
    try:
        wait_for(
            lambda: "circuit for t.down open after 3 failures" in log_of(repo), TIMEOUT, "the circuit to open"
        )
        (repo / "downstream-down").unlink()
        properties = repo / "spoolpipe.properties"
        properties.write_text(
            "\n".join(k for k in properties.read_text().splitlines() if "circuit." not in k)
        )
        wait_for(lambda: set(down) <= set(ids_in(repo / "done")), TIMEOUT, "the held activities to run")
        assert "circuit for t.down closed: its keys were removed" in log_of(repo)
    finally:
        kill_group(worker)


def test_until_idle_waits_for_the_cool_down_and_no_wait_leaves_them_queued(tmp_path: Path) -> None:
    repo = repository(tmp_path, PROPERTIES.replace("cool-down-seconds = 3", "cool-down-seconds = 2"))
    down = [submit(repo, "t.down") for _ in range(5)]
    # --no-wait: nothing else to do once the circuit is open and the retries are delayed: exit 0
    quick = start_worker(repo, "w1", "--until-idle", "--no-wait")
    assert quick.wait(TIMEOUT) == 0
    assert OPENED.replace("3s", "2s") in log_of(repo)
    assert "activities of t.down wait behind an open circuit: left queued" in log_of(repo)
    assert inbox_ids(repo) == set(down) and ids_in(repo / "failed") == []

    batch = start_worker(repo, "w2", "--until-idle")
    try:
        wait_for(
            lambda: "--until-idle: waiting for the open circuit of t.down" in log_of(repo, "w2"),
            TIMEOUT,
            "w2 to wait",
        )
        (repo / "downstream-down").unlink()
        assert batch.wait(TIMEOUT) == 0
    finally:
        if batch.poll() is None:
            kill_group(batch)
    assert set(down) <= set(ids_in(repo / "done"))
    assert leftovers(repo) == {}


def test_pool_processes_that_die_count_as_failures(tmp_path: Path) -> None:
    repo = repository(
        tmp_path,
        "pool.size = 1\nretry.max-attempts = 50\n"
        "circuit.t.crash.failures = 2\ncircuit.t.crash.cool-down-seconds = 1h\n",
    )
    crashing = [submit(repo, "t.crash") for _ in range(4)]
    worker = start_worker(repo, "w1")
    try:
        wait_for(
            lambda: "circuit for t.crash open after 2 failures in 60s" in log_of(repo),
            TIMEOUT,
            "two dead pool processes to open the circuit",
        )
        child = submit(repo, "t.child", {"i": 0})
        wait_for(lambda: child in ids_in(repo / "done"), TIMEOUT, "another type to run meanwhile")
        assert len(effects(repo, "t.crash")) == 2
        assert inbox_ids(repo) == set(crashing) and ids_in(repo / "failed") == []
    finally:
        kill_group(worker)
