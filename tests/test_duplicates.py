"""One id, one activity: copies of an id dropped at any moment, with three real workers.

Whatever the timing, exactly one copy of an id runs to completion and every other
copy ends in ``invalid/`` with a reason that names the id and where the other copy is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import (
    effects,
    kill_group,
    leftovers,
    make_repository,
    records,
    start_worker,
    submit,
    wait_for,
)

EXTRA = """
@processor("t.gate")
def gate(activity, ctx):
    _effect(ctx, activity)
    if not (ctx.repository / "gate").exists():
        raise Fatal("the gate is closed")
    return "through"
"""

WORKERS = ("w1", "w2", "w3")


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    repo = make_repository(
        tmp_path,
        "pool.size = 2\nretry.backoff-seconds = 2\nretry.max-attempts = 3\n",
        extra_processors=EXTRA,
    )
    procs = [start_worker(repo, w) for w in WORKERS]
    for w in WORKERS:  # started (signals handled) before the test may stop them
        wait_for(lambda w=w: (repo / "heartbeats" / f"{w}.json").exists(), 30, f"{w} to start")
    yield repo
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc, worker in zip(procs, WORKERS, strict=True):
        try:
            assert proc.wait(30) == 0, (repo.parent / f"worker-{worker}.stderr").read_text()
        finally:
            if proc.poll() is None:
                kill_group(proc)


def publish(repo: Path, name: str, doc: dict[str, object]) -> None:
    """Drop a copy atomically, as a careful script would."""
    tmp = repo / "inbox" / f".{name}.part"
    tmp.write_text(json.dumps(doc))
    os.rename(tmp, repo / "inbox" / name)


def invalid_reasons(repo: Path) -> list[str]:
    return [(entry / "reason.txt").read_text() for entry in (repo / "invalid").iterdir()]


def settled(repo: Path, ids: list[str], copies: int) -> bool:
    if leftovers(repo) or os.listdir(repo / "ids"):
        return False
    done_or_failed = set(records(repo / "done")) | set(records(repo / "failed"))
    return set(ids) <= done_or_failed and len(os.listdir(repo / "invalid")) == len(ids) * (copies - 1)


def assert_one_each(repo: Path, ids: list[str], copies: int) -> None:
    ran = Counter(line[0] for line in effects(repo, "t.dup"))
    assert {i: ran[i] for i in ids} == dict.fromkeys(ids, 1)
    done = records(repo / "done")
    assert set(ids) <= set(done)
    reasons = invalid_reasons(repo)
    assert len(reasons) == len(ids) * (copies - 1)
    for activity_id in ids:
        mine = [r for r in reasons if f"duplicate id {activity_id}:" in r]
        assert len(mine) == copies - 1, (activity_id, reasons)
        for reason in mine:
            assert reason.count("\n") == 1
            assert "another copy is running/" in reason or f"done/{activity_id}.json" in reason, reason
    assert leftovers(repo) == {}
    assert os.listdir(repo / "ids") == []


def test_copies_dropped_at_the_same_moment_run_once(repo: Path) -> None:
    ids = [f"pair{i:02d}" for i in range(16)]
    for activity_id in ids:
        for copy in ("a", "b"):
            name = f"{activity_id}.json" if copy == "a" else f"{activity_id}-{copy}.json"
            publish(repo, name, {"id": activity_id, "type": "t.dup", "data": {"copy": copy}})
    wait_for(lambda: settled(repo, ids, 2), 60, "every pair settled")
    assert_one_each(repo, ids, 2)


def test_bursts_of_copies_run_once(repo: Path) -> None:
    ids = [f"burst{i}" for i in range(6)]
    for round_ in range(4):
        for activity_id in ids:
            doc = {"id": activity_id, "type": "t.dup", "data": {"copy": round_, "sleep": 0.05}}
            publish(repo, f"{activity_id}-r{round_}.json", doc)
        time.sleep(0.15)
    wait_for(lambda: settled(repo, ids, 4), 60, "every burst settled")
    assert_one_each(repo, ids, 4)


def test_a_copy_of_a_running_waiting_failed_or_done_activity_is_refused(repo: Path) -> None:
    running = submit(repo, "t.dup", {"sleep": 2, "copy": "first"}, id="busy")
    wait_for(lambda: any(n.startswith("busy~1~") for n in os.listdir(repo / "running")), 30, "busy running")
    publish(repo, "busy.json", {"type": "t.dup", "data": {"copy": "same name"}})
    publish(repo, "other-name.json", {"id": "busy", "type": "t.dup", "data": {"copy": "other name"}})

    waiting = submit(repo, "t.flaky", {"succeed_on": 2}, id="later")
    wait_for(lambda: any(n.startswith("later~2~") for n in os.listdir(repo / "inbox")), 30, "later waiting")
    publish(repo, "later.json", {"type": "t.flaky", "data": {"succeed_on": 1}})

    failed = submit(repo, "t.fatal", id="broken")
    wait_for(lambda: (repo / "failed" / "broken.json").exists(), 30, "broken failed")
    failed_before = (repo / "failed" / "broken.json").read_bytes()
    publish(repo, "broken.json", {"type": "t.dup"})

    # Its reservation goes only after the record is published and flushed: a copy arriving between the
    # two is refused for the copy it finds (done/busy.json) rather than for the finished record.
    finished = lambda: (repo / "done" / "busy.json").exists() and not (repo / "ids" / "busy").exists()  # noqa: E731
    wait_for(finished, 30, "busy done and its reservation gone")
    done_before = (repo / "done" / "busy.json").read_bytes()
    publish(repo, "busy-again.json", {"id": "busy", "type": "t.dup", "data": {"copy": "late"}})

    wait_for(lambda: (repo / "done" / "later.json").exists(), 30, "later done")
    wait_for(lambda: len(os.listdir(repo / "invalid")) == 5 and not leftovers(repo), 30, "copies quarantined")

    reasons = invalid_reasons(repo)
    by_id = {i: [r for r in reasons if f"duplicate id {i}:" in r] for i in (running, waiting, failed)}
    assert len(by_id["busy"]) == 3 and len(by_id["later"]) == 1 and len(by_id["broken"]) == 1, reasons
    assert sum("another copy is running/busy~1~" in r for r in by_id["busy"]) == 2, reasons
    assert "done/busy.json exists" in next(r for r in by_id["busy"] if r.startswith("busy-again.json"))
    assert "another copy is inbox/later~2~" in by_id["later"][0]
    assert "failed/broken.json exists" in by_id["broken"][0]
    # Each copy is kept under the name it had in the inbox (not its claim's), so `mv` restores it.
    kept = {entry.name.rsplit("~", 1)[0]: sorted(os.listdir(entry)) for entry in (repo / "invalid").iterdir()}
    published = ["busy.json", "other-name.json", "later.json", "broken.json", "busy-again.json"]
    assert kept == {name: sorted([name, "reason.txt"]) for name in published}, kept
    assert all(r.count("\n") == 1 for r in reasons)
    # The activity that ran is the first one, once; the records are untouched.
    assert [line[0] for line in effects(repo, "t.dup")] == ["busy"]
    assert records(repo / "done")["busy"]["result"] == {"copy": "first"}
    assert (repo / "done" / "busy.json").read_bytes() == done_before
    assert (repo / "failed" / "broken.json").read_bytes() == failed_before
    assert [line[1] for line in effects(repo, "t.flaky")] == ["1", "2"]
    assert not (repo / "done" / "broken.json").exists()
    assert os.listdir(repo / "ids") == []


def test_hard_linked_copies_are_two_copies(repo: Path) -> None:
    original = repo / "tmp" / "linked.json"
    original.write_text(json.dumps({"id": "linked", "type": "t.dup"}))
    os.link(original, repo / "inbox" / ".a.part")
    os.link(original, repo / "inbox" / ".b.part")
    original.unlink()
    os.rename(repo / "inbox" / ".a.part", repo / "inbox" / "a.json")
    os.rename(repo / "inbox" / ".b.part", repo / "inbox" / "b.json")
    wait_for(lambda: settled(repo, ["linked"], 2), 30, "linked copies settled")
    assert_one_each(repo, ["linked"], 2)


def _retry(repo: Path, *ids: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "spoolpipe", "retry", str(repo), *ids],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_retry_runs_the_original_once_and_keeps_its_history(repo: Path) -> None:
    activity_id = "gated"
    publish(repo, "gated.json", {"type": "t.gate", "data": {"n": 7}, "note": "kept"})
    wait_for(lambda: (repo / "failed" / "gated.json").exists(), 30, "gated failed")
    first = records(repo / "failed")["gated"]
    (repo / "gate").touch()
    # Two operators retry at once: one succeeds, the other is told the id is taken.
    both = [_retry(repo, activity_id), _retry(repo, activity_id)]
    outputs = [p.communicate(timeout=30) for p in both]
    codes = sorted(p.returncode for p in both)
    assert codes in ([0, 0], [0, 1]), outputs
    wait_for(lambda: (repo / "done" / "gated.json").exists() and not leftovers(repo), 30, "gated done")
    time.sleep(0.5)
    assert [line[0] for line in effects(repo, "t.gate")] == ["gated", "gated"]
    assert not (repo / "failed" / "gated.json").exists()
    done = records(repo / "done")["gated"]
    assert (done["data"], done["note"], done["result"]) == ({"n": 7}, "kept", "through")
    history = done["spoolpipe"]["history"]
    assert [h["reason"] for h in history] == [first["spoolpipe"]["reason"]]
    assert history[0]["finished_at"] == first["spoolpipe"]["finished_at"]
    assert len(os.listdir(repo / "invalid")) == codes.count(0) - 1
