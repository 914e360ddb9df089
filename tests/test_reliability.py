"""Nothing lost, nothing done twice: several workers, random SIGKILLs, junk, paused workers."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.synchronize
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from harness import (
    drop,
    effects,
    ids_in,
    kill_group,
    leftovers,
    make_repository,
    records,
    run_until_idle,
    start_worker,
    submit,
    wait_for,
)
from spoolpipe.activity import new_id
from spoolpipe.liveness import OwnLock
from spoolpipe.repository import Found, Repository


def _claims_of(repo: Path, worker: str) -> int:
    return sum(1 for n in os.listdir(repo / "running") if n.endswith(f"~{worker}.json"))


def test_three_workers_with_random_sigkills_complete_everything_exactly_once(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "pool.size = 2\n")
    parents, children = 300, 2
    for _ in range(parents):
        submit(repo, "t.parent", {"children": children, "sleep": 0.2})
    expected = parents * (1 + children)
    rng = random.Random(7)
    workers = {f"w{i}": start_worker(repo, f"w{i}") for i in range(3)}
    kills = claims_killed = 0
    deadline = time.monotonic() + 300
    try:
        while len(os.listdir(repo / "done")) < expected:
            assert time.monotonic() < deadline, f"stuck at {len(os.listdir(repo / 'done'))}/{expected}"
            time.sleep(rng.uniform(0.5, 1.0))
            holding = [w for w in sorted(workers) if _claims_of(repo, w)]
            if kills < 10 and holding:
                victim = rng.choice(holding)
                kill_group(workers[victim])
                kills += 1
                claims_killed += _claims_of(repo, victim)
                workers[victim] = start_worker(repo, victim)
    finally:
        for proc in workers.values():
            proc.send_signal(signal.SIGTERM)
        for proc in workers.values():
            proc.wait(60)
    done = ids_in(repo / "done")
    assert kills >= 5 and claims_killed >= kills
    assert len(done) == expected == len(set(done))
    assert ids_in(repo / "failed") == []
    assert leftovers(repo) == {}
    # every parent's declared follow-ups exist, and no follow-up exists without its parent
    all_records = records(repo / "done")
    declared = [
        c for r in all_records.values() if r["type"] == "t.parent" for c in r["spoolpipe"]["follow_ups"]
    ]
    assert sorted(declared) == sorted(i for i, r in all_records.items() if r["type"] == "t.child")
    # the claims held by killed workers ran again as their next attempt
    ran = Counter(e[0] for e in effects(repo, "t.parent") + effects(repo, "t.child"))
    assert set(ran) == set(done)
    reruns = sum(ran.values()) - expected
    assert reruns >= 1
    assert sum(1 for r in all_records.values() if r["spoolpipe"]["attempts"] > 1) >= 1
    print(
        f"\nchaos: activities={expected} kills={kills} claims-killed={claims_killed} re-executions={reruns}"
    )


def _claim_everything(
    root: str,
    worker: str,
    names: list[str],
    ready: multiprocessing.synchronize.Barrier,
    queue: multiprocessing.Queue[list[str]],
) -> None:
    repo = Repository(Path(root), fsync=False)
    ready.wait()
    won = []
    for name in names:
        found = repo.read(name, limit=1 << 20)
        if found is None:  # claimed by another worker already
            continue
        assert isinstance(found, Found)
        if repo.claim(name, found.activity, worker) is not None:
            won.append(name)
    queue.put(won)


def test_concurrent_claims_are_exclusive(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    contended = 0
    # On a loaded machine one claimer may finish before the others are scheduled: race again.
    for _ in range(5):
        names = [f"{new_id()}.json" for _ in range(2000)]
        for name in names:
            drop(repo, name, b'{"type": "t.noop"}')
        queue: multiprocessing.Queue[list[str]] = ctx.Queue()
        ready = ctx.Barrier(4)  # all start together, however long each took to start
        procs = [
            ctx.Process(target=_claim_everything, args=(str(repo), f"c{i}", names, ready, queue))
            for i in range(4)
        ]
        for p in procs:
            p.start()
        won = [queue.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
        claimed = [n for w in won for n in w]
        assert sorted(claimed) == sorted(names)  # each file claimed exactly once
        contended = sum(1 for w in won if w)
        if contended >= 2:
            break
    assert contended >= 2  # they really competed


JUNK: dict[str, bytes] = {
    "malformed.json": b'{"type": "t.noop", "data": {',
    "nan.json": b'{"type": "t.noop", "data": {"x": NaN}}',
    "infinity.json": b'{"type": "t.noop", "data": {"x": -Infinity}}',
    "array.json": b'[{"type": "t.noop"}]',
    "string.json": b'"t.noop"',
    "no-type.json": b'{"data": {}}',
    "bad-type.json": b'{"type": "has space"}',
    "numeric-type.json": b'{"type": 3}',
    "bad-id.json": b'{"type": "t.noop", "id": "../../etc"}',
    "data-not-object.json": b'{"type": "t.noop", "data": [1, 2]}',
    "latin1.json": '{"type": "t.noop", "data": {"name": "café"}}'.encode("latin-1"),
    "bom.json": b'\xef\xbb\xbf{"type": "t.noop"}',
    "empty.json": b"",
    "duplicate-keys.json": b'{"type": "t.noop", "type": "t.fatal"}',
    "bad-not-before.json": b'{"type": "t.noop", "not_before": "tomorrow"}',
    "naive-not-before.json": b'{"type": "t.noop", "not_before": "2030-01-01T00:00:00"}',
    "binary.json": bytes(range(256)),
    "bad name!.json": b'{"type": "t.noop"}',
    "deep.json": b"[" * 100000 + b"]" * 100000,
    # Parses, but nested too deep to hand to a pool process (pickling it ran out of recursion).
    "nested-data.json": b'{"type": "t.noop", "data": {"x": ' + b"[" * 600 + b"]" * 600 + b"}}",
}


def test_junk_is_quarantined_with_reasons_while_valid_work_completes(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "limits.activity-bytes = 4096\ninbox.settle-seconds = 0.3\n")
    worker = start_worker(repo, "w1")
    try:
        valid = []
        for name, content in JUNK.items():
            drop(repo, name, content)
            valid.append(submit(repo, "t.noop"))
        drop(repo, "oversized.json", json.dumps({"type": "t.noop", "data": {"x": "y" * 5000}}))
        (repo / "inbox" / "a-directory").mkdir()
        os.mkfifo(repo / "inbox" / "a-fifo")
        (repo / "inbox" / "link.json").symlink_to(repo / "done")
        outside = tmp_path / "outside.json"
        outside.write_text('{"type": "t.noop"}')
        (repo / "inbox" / "escape.json").symlink_to(outside)
        # ignored names: atomic writers' temp files are never touched
        drop(repo, ".hidden.json", b"{")
        drop(repo, "partial.json.part", b"{")
        drop(repo, "writing.tmp", b"{")
        junk_count = len(JUNK) + 5
        wait_for(lambda: len(os.listdir(repo / "invalid")) == junk_count, 60, "every junk file quarantined")
        wait_for(lambda: set(valid) <= set(ids_in(repo / "done")), 60, "the valid activities")
        assert worker.poll() is None, "the worker must stay up"
        reasons = {}
        for entry in (repo / "invalid").iterdir():
            name = entry.name.rsplit("~", 1)[0]
            assert (entry / name).exists() or (entry / name).is_symlink(), f"{entry} lost its payload"
            reasons[name] = (entry / "reason.txt").read_text()
        assert "NaN" in reasons["nan.json"]
        assert "top level is a JSON array" in reasons["array.json"]
        assert "missing required field 'type'" in reasons["no-type.json"]
        assert "bad id" in reasons["bad-id.json"]
        assert "not UTF-8" in reasons["latin1.json"]
        assert "over limits.activity-bytes=4096" in reasons["oversized.json"]
        assert "directory" in reasons["a-directory"]
        assert "FIFO" in reasons["a-fifo"]
        assert "symbolic link" in reasons["escape.json"]
        assert "duplicate key" in reasons["duplicate-keys.json"]
        assert "no time zone" in reasons["naive-not-before.json"]
        assert "is not a valid id" in reasons["bad name!.json"]
        assert "nested more than 100 levels deep" in reasons["nested-data.json"]
        assert sorted(os.listdir(repo / "inbox")) == [".hidden.json", "partial.json.part", "writing.tmp"]
        assert outside.read_text() == '{"type": "t.noop"}'
        # each was quarantined once: no payload appears twice
        assert len(reasons) == junk_count
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0


def test_a_half_written_file_is_not_quarantined(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "inbox.settle-seconds = 3\n")
    worker = start_worker(repo, "w1")
    try:
        path = drop(repo, "copied.json", b'{"type": "t.noop", "da')
        time.sleep(1.5)
        assert os.listdir(repo / "invalid") == []
        with path.open("ab") as f:
            f.write(b'ta": {"n": 1}}')
        wait_for(lambda: "copied" in ids_in(repo / "done"), 20, "the completed file to run")
        assert os.listdir(repo / "invalid") == []
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0


def test_an_id_already_done_is_not_run_twice(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    drop(repo, "job.json", '{"type": "t.parent"}')
    run_until_idle(repo)
    drop(repo, "job.json", '{"type": "t.parent"}')
    run_until_idle(repo)
    assert len(effects(repo, "t.parent")) == 1
    [entry] = (repo / "invalid").iterdir()
    assert "duplicate id job" in (entry / "reason.txt").read_text()


def test_a_paused_worker_that_lost_its_lease_cannot_commit(tmp_path: Path) -> None:
    repo = make_repository(
        tmp_path, "claims.lock = lease\nclaims.lease-seconds = 2\nheartbeat.interval-seconds = 0.5\n"
    )
    aid = submit(repo, "t.slow", {"sleep": 2})
    paused = start_worker(repo, "paused")
    wait_for(lambda: len(effects(repo, "t.slow")) == 1, 20, "the first attempt to start")
    os.killpg(paused.pid, signal.SIGSTOP)
    rescuer = start_worker(repo, "rescuer")
    try:
        wait_for(lambda: aid in ids_in(repo / "done"), 40, "the rescuer to recover and finish")
        done = records(repo / "done")[aid]
        assert done["spoolpipe"]["worker"] == "rescuer"
        assert done["spoolpipe"]["attempts"] == 2
        os.killpg(paused.pid, signal.SIGCONT)
        time.sleep(4)  # the paused attempt's sleep ends and it tries to commit
        assert ids_in(repo / "done") == [aid]
        assert records(repo / "done")[aid]["spoolpipe"]["worker"] == "rescuer"
        stderr = (repo.parent / "worker-paused.stderr").read_text()
        assert "lost" in stderr
        assert leftovers(repo) == {}
    finally:
        for proc in (paused, rescuer):
            os.killpg(proc.pid, signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def test_submit_publishes_atomically_and_ids_are_unique(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    ids = {new_id() for _ in range(10000)}
    assert len(ids) == 10000
    aid = submit(repo, "t.noop", {"k": "v"})
    assert json.loads((repo / "inbox" / f"{aid}.json").read_text()) == {
        "id": aid,
        "type": "t.noop",
        "data": {"k": "v"},
    }
    assert [n for n in os.listdir(repo / "tmp") if not n.startswith(".")] == []
    run_until_idle(repo)
    assert ids_in(repo / "done") == [aid]


def _kill_holder_and_wait(repo: Path, mode: str) -> tuple[Path, float]:
    """Two workers share the work; one is SIGKILLed while it holds claims. Returns how long recovery took."""
    for _ in range(40):
        submit(repo, "t.slow", {"sleep": 0.2})
    victim = start_worker(repo, "victim")
    wait_for(lambda: _claims_of(repo, "victim") >= 1, 30, "the victim to hold claims")
    kill_group(victim)
    held = _claims_of(repo, "victim")
    assert held >= 1
    killed_at = time.monotonic()
    survivor = start_worker(repo, "survivor")
    try:
        if mode == "strict":
            time.sleep(3)
            assert _claims_of(repo, "victim") == held, (
                "strict mode must not take a dead worker's claims by itself"
            )
            for claim in (repo / "locks" / "victim.lock.filelock" / "claims").iterdir():
                claim.unlink()  # the operator's step, as docs/repository-format.md describes
        wait_for(lambda: _claims_of(repo, "victim") == 0, 60, "the victim's claims to be recovered")
        recovered_after = time.monotonic() - killed_at
        wait_for(lambda: len(ids_in(repo / "done")) == 40, 120, "all activities")
    finally:
        survivor.send_signal(signal.SIGTERM)
        survivor.wait(60)
    done = ids_in(repo / "done")
    assert len(done) == len(set(done)) == 40
    assert leftovers(repo) == {}
    return repo, recovered_after


def test_flock_mode_recovers_a_killed_worker_at_once(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "claims.lock = flock\npool.size = 2\n")
    _, after = _kill_holder_and_wait(repo, "flock")
    assert after < 20


def test_lease_mode_recovers_a_killed_worker(tmp_path: Path) -> None:
    # On one host the lease's owner is provably dead at once (its pid is gone); across hosts the
    # lease must first go unrefreshed for claims.lease-seconds (tests/distributed shows that case).
    repo = make_repository(tmp_path, "claims.lock = lease\nclaims.lease-seconds = 2\npool.size = 2\n")
    _, after = _kill_holder_and_wait(repo, "lease")
    assert after < 30


def test_strict_mode_fails_closed_until_the_operator_clears_the_dead_claim(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "claims.lock = strict\npool.size = 2\n")
    _kill_holder_and_wait(repo, "strict")


def test_a_worker_never_runs_one_activity_in_two_pool_processes(tmp_path: Path) -> None:
    """Rescans find names that a pool process was handed but has not claimed yet: never hand them twice."""
    repo = make_repository(tmp_path, "pool.size = 2\nscan.interval-seconds = 0.01\n")
    ids = [submit(repo, "t.child", {"i": i}) for i in range(1500)]
    run_until_idle(repo)
    ran = Counter(e[0] for e in effects(repo, "t.child"))
    assert {i: ran[i] for i in ids} == dict.fromkeys(ids, 1)
    assert sorted(ids_in(repo / "done")) == sorted(ids)
    assert leftovers(repo) == {}


REPLACER = """
@processor("t.replace")
def replace(activity, ctx):
    # Replaces a waiting inbox file with a new document under the same name, as a person's
    # `mv new.json inbox/NAME` does, while that file is already in this batch.
    target = activity.data.get("replace")
    new = json.dumps({"type": "t.replace", "data": {"version": "new"}})
    if activity.data.get("how") == "rename":
        staged = ctx.repository / "inbox" / ".replacement"
        staged.write_text(new)
        os.rename(staged, ctx.repository / "inbox" / target)
    elif activity.data.get("how") == "rewrite":
        (ctx.repository / "inbox" / target).write_text(new)
    return activity.data.get("version")
"""


@pytest.mark.parametrize("how", ["rename", "rewrite"])
def test_a_file_replaced_after_it_was_read_runs_what_it_holds_when_claimed(tmp_path: Path, how: str) -> None:
    """A waiting file renamed over (or rewritten in place) after the daemon read it but before its
    claim: what runs, and what the record says, is the document that was claimed; nothing is lost."""
    repo = make_repository(tmp_path, "pool.size = 1\n", extra_processors=REPLACER)
    drop(repo, "a0.json", '{"type": "t.replace", "data": {"version": "warm-up"}}')  # learns the pace
    drop(repo, "b1.json", json.dumps({"type": "t.replace", "data": {"replace": "b2.json", "how": how}}))
    drop(repo, "b2.json", '{"type": "t.replace", "data": {"version": "old"}}')
    for i in range(8):  # a backlog, so that b1 and b2 go to the pool process in one batch
        drop(repo, f"c{i}.json", '{"type": "t.replace", "data": {"version": "filler"}}')
    run_until_idle(repo)
    done = records(repo / "done")
    assert done["b2"]["result"] == "new", done["b2"]
    assert done["b2"]["data"] == {"version": "new"}
    assert len(done) == 11
    assert leftovers(repo) == {}


def test_junk_with_a_modification_time_in_the_future_is_quarantined_once_it_stays_unchanged(
    tmp_path: Path,
) -> None:
    """A file restored by tar, or written through a machine whose clock is ahead: its age by the
    shared clock never reaches inbox.settle-seconds, but it stayed unchanged while watched."""
    repo = make_repository(tmp_path, "inbox.settle-seconds = 0.5\n")
    path = drop(repo, "future.json", b"{not json")
    os.utime(path, (4_102_444_800, 4_102_444_800))  # 2100-01-01
    run_until_idle(repo, timeout=30)
    [entry] = (repo / "invalid").iterdir()
    assert "malformed JSON" in (entry / "reason.txt").read_text()
    assert os.listdir(repo / "inbox") == []


MIX = """
@processor("t.mix")
def mix(activity, ctx):
    _effect(ctx, activity)
    if activity.attempt == 1 and "crash_after" in activity.data:
        time.sleep(activity.data["crash_after"])
        os._exit(3)
    return "ok"
"""


def _runs(repo: Path) -> Counter[str]:
    return Counter(line[0] for line in effects(repo, "t.mix"))


def _mixed_batch(repo: Path, crash_after: float) -> str:
    """60 quick activities with one that crashes its process in the middle (in name order); its id."""
    for i in range(40):
        submit(repo, "t.mix", {"n": i})
    crasher = submit(repo, "t.mix", {"crash_after": crash_after})
    for i in range(20):
        submit(repo, "t.mix", {"n": 40 + i})
    return crasher


def test_a_batch_neighbour_that_runs_long_then_crashes_reruns_nothing_that_finished(tmp_path: Path) -> None:
    """Outcomes wait for a group commit: it comes while the next processor runs, not after it, so
    a process that dies later takes no finished activity with it (they ran again, as attempt 1)."""
    repo = make_repository(tmp_path, "pool.size = 1\n", extra_processors=MIX)
    crasher = _mixed_batch(repo, crash_after=0.5)
    run_until_idle(repo)
    runs = _runs(repo)
    done = records(repo / "done")
    assert len(done) == 61
    assert {i: n for i, n in runs.items() if n > 1} == {crasher: 2}
    assert done[crasher]["spoolpipe"]["attempts"] == 2
    assert leftovers(repo) == {}


def test_an_activity_run_again_after_its_outcome_was_lost_says_so_in_its_record(tmp_path: Path) -> None:
    """A process that dies within a group commit's wait loses the outcomes of activities that ran:
    they run again, and count that as an attempt, as after any crash."""
    repo = make_repository(tmp_path, "pool.size = 1\n", extra_processors=MIX)
    _mixed_batch(repo, crash_after=0.0)
    run_until_idle(repo)
    done = records(repo / "done")
    assert len(done) == 61
    for activity_id, n in _runs(repo).items():
        assert done[activity_id]["spoolpipe"]["attempts"] == n, (activity_id, n)
    assert leftovers(repo) == {}


UNRULY = """
@processor("t.forks")
def forks(activity, ctx):
    _effect(ctx, activity)
    os.fork()  # and both processes return
    return "once"

@processor("t.mutates")
def mutates(activity, ctx):
    activity.data["tags"] = {"a", "b"}  # not JSON
    activity.data.pop("keep")
    return "changed its data"

@processor("t.umask")
def umask(activity, ctx):
    os.umask(0o777)
    return "umask"
"""


def test_what_a_processor_does_to_its_process_does_not_reach_the_record(tmp_path: Path) -> None:
    """A processor that forks and returns twice, changes its activity's data in place, or changes the
    umask: each activity is done once, with the document as it was submitted, readable by all."""
    repo = make_repository(tmp_path, "pool.size = 1\nretry.max-attempts = 3\n", extra_processors=UNRULY)
    forked = submit(repo, "t.forks")
    mutated = submit(repo, "t.mutates", {"keep": "me"})
    masked = submit(repo, "t.umask")
    after = [submit(repo, "t.noop") for _ in range(3)]
    run_until_idle(repo, timeout=60)
    done = records(repo / "done")
    assert set(done) == {forked, mutated, masked, *after}, os.listdir(repo / "failed")
    assert len(effects(repo, "t.forks")) == 1
    assert done[forked]["result"] == "once"
    assert done[mutated]["data"] == {"keep": "me"}
    assert done[mutated]["spoolpipe"]["attempts"] == 1
    for activity_id in (masked, *after):
        assert (repo / "done" / f"{activity_id}.json").stat().st_mode & 0o444 == 0o444
    assert leftovers(repo) == {}


LINGERING = """
import threading

@processor("t.lingers")
def lingers(activity, ctx):
    threading.Thread(target=time.sleep, args=(3600,)).start()  # not a daemon thread: outlives the return
    return "returned"
"""


def test_a_pool_process_that_does_not_exit_when_asked_does_not_hold_up_the_worker(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, extra_processors=LINGERING)
    submit(repo, "t.lingers")
    started = time.monotonic()
    run_until_idle(repo, timeout=30)
    assert time.monotonic() - started < 20
    assert len(records(repo / "done")) == 1


def test_a_worker_resumed_after_its_lease_was_taken_claims_nothing_until_it_holds_it_again(
    tmp_path: Path,
) -> None:
    """Paused past its lease, a worker whose claims another worker took must not claim more the
    moment it wakes (for the ~1 s its lease's own refresh takes to notice the loss): the other
    worker would take those claims too, and they would run twice."""
    repo = make_repository(
        tmp_path,
        "claims.lock = lease\nclaims.lease-seconds = 2\nheartbeat.interval-seconds = 0.5\n"
        "scan.interval-seconds = 0.3\npool.size = 2\n",
    )
    ids = [submit(repo, "t.slow", {"sleep": 0.05}) for _ in range(400)]
    paused = start_worker(repo, "paused")
    wait_for(lambda: len(effects(repo, "t.slow")) >= 10, 30, "the paused worker to run some")
    os.killpg(paused.pid, signal.SIGSTOP)
    rescuer = start_worker(repo, "rescuer")
    try:
        wait_for(lambda: any(e[2] == "rescuer" for e in effects(repo, "t.slow")), 30, "the rescuer to run")
        os.killpg(paused.pid, signal.SIGCONT)
        wait_for(lambda: len(ids_in(repo / "done")) == len(ids), 120, "every activity")
    finally:
        for proc in (paused, rescuer):
            os.killpg(proc.pid, signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    ran_by: dict[str, set[str]] = {}
    for activity_id, _, worker, _ in effects(repo, "t.slow"):
        ran_by.setdefault(activity_id, set()).add(worker)
    both = [i for i, workers in ran_by.items() if len(workers) == 2]
    # Only what the paused worker's two pool processes were running when it stopped runs twice.
    assert len(both) <= 2, both
    assert leftovers(repo) == {}


WHO = """
@processor("t.who")
def who(activity, ctx):
    with open(ctx.repository / "effects" / "t.who.log", "a") as f:
        f.write(f"{activity.id} {os.getppid()} {time.time()}\\n")  # the daemon's pid
    time.sleep(0.05)
"""


def test_a_worker_that_cannot_take_its_lock_back_claims_nothing(tmp_path: Path) -> None:
    """Paused past its lease while another process took the same worker id: once resumed it may
    not claim anything while that process holds the id's lock (it did, between tries)."""
    repo = make_repository(
        tmp_path,
        "claims.lock = lease\nclaims.lease-seconds = 1\nheartbeat.interval-seconds = 0.25\n",
        extra_processors=WHO,
    )
    old = start_worker(repo, "w1")
    wait_for(lambda: (repo / "heartbeats" / "w1.json").exists(), 20, "the first worker to start")
    os.killpg(old.pid, signal.SIGSTOP)
    time.sleep(2)
    new = start_worker(repo, "w1")
    try:

        def new_one_runs() -> bool:
            with contextlib.suppress(OSError, ValueError):
                return json.loads((repo / "heartbeats" / "w1.json").read_text())["pid"] == new.pid
            return False

        wait_for(new_one_runs, 20, "the new one to take the id over")
        os.killpg(old.pid, signal.SIGCONT)
        resumed = time.time()
        ids = [submit(repo, "t.who") for _ in range(100)]
        wait_for(lambda: set(ids) <= set(ids_in(repo / "done")), 60, "the new work")
    finally:
        for proc in (old, new):
            os.killpg(proc.pid, signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    runs = [line.split() for line in (repo / "effects" / "t.who.log").read_text().splitlines()]
    assert [r for r in runs if int(r[1]) == old.pid and float(r[2]) > resumed] == []
    assert len(runs) == len(ids)


EXITS = """
@processor("t.exits")
def exits(activity, ctx):
    _effect(ctx, activity)
    raise SystemExit(3)
"""


def test_a_processor_that_calls_sys_exit_fails_with_that_said(tmp_path: Path) -> None:
    repo = make_repository(
        tmp_path, "pool.size = 1\nretry.max-attempts = 2\nretry.backoff-seconds = 0\n", extra_processors=EXITS
    )
    aid = submit(repo, "t.exits")
    others = [submit(repo, "t.noop") for _ in range(5)]
    run_until_idle(repo)
    failed = records(repo / "failed")[aid]["spoolpipe"]
    assert failed["reason"] == "SystemExit: 3"
    assert failed["attempts"] == 2
    assert "raise SystemExit(3)" in failed["traceback"]
    assert set(others) <= set(ids_in(repo / "done"))


HOSTILE = """
from spoolpipe import Retry

class ApiError(Exception):  # proxy-style: unknown attributes raise KeyError, not AttributeError
    def __getattr__(self, name):
        return {}[name]

class Unsayable(Exception):
    def __str__(self):
        raise KeyboardInterrupt

class Undelayed(Retry):
    @property
    def delay(self):
        raise SystemExit(4)

    @delay.setter
    def delay(self, value):
        pass

class Unlisted(dict):
    def items(self):
        raise SystemExit(5)

@processor("h.proxy")
def proxy(activity, ctx):
    raise ApiError("HTTP 400")

@processor("h.proxy-fatal", retry_on=(OSError,))
def proxy_fatal(activity, ctx):
    raise ApiError("HTTP 400")

@processor("h.unsayable")
def unsayable(activity, ctx):
    raise Unsayable()

@processor("h.undelayed")
def undelayed(activity, ctx):
    raise Undelayed("later")

@processor("h.unlisted")
def unlisted(activity, ctx):
    return Unlisted(a=1)

@processor("h.silent-fatal")
def silent_fatal(activity, ctx):
    raise Fatal()

@processor("h.mate")
def mate(activity, ctx):
    _effect(ctx, activity)
"""


@pytest.mark.parametrize(
    ("type_", "reason", "attempts"),
    [
        ("h.proxy", "ApiError: HTTP 400", 2),
        ("h.proxy-fatal", "ApiError: HTTP 400 (not retried: the processor's retry_on is (OSError))", 1),
        ("h.unsayable", "Unsayable: <str() of this Unsayable failed>", 2),
        ("h.undelayed", "Retry delay '<unreadable>' is not a number of seconds", 1),
        ("h.unlisted", "the result could not be checked: SystemExit: 5", 1),
        ("h.silent-fatal", "the processor said it can never succeed", 1),  # it was ""
    ],
)
def test_an_exception_whose_examination_raises_fails_only_its_own_activity(
    tmp_path: Path, type_: str, reason: str, attempts: int
) -> None:
    """Examining it (getattr, str, delay, the result) raised in turn: the pool process died, and its
    batch-mates, done but not yet committed, ran again (some failed for good, never having failed)."""
    settings = "pool.size = 1\nretry.max-attempts = 2\nretry.backoff-seconds = 0\n"
    repo = make_repository(tmp_path, settings, extra_processors=HOSTILE)
    mates = [submit(repo, "h.mate") for _ in range(30)]
    hostile = [submit(repo, type_) for _ in range(4)]
    run_until_idle(repo)
    assert sorted(run[0] for run in effects(repo, "h.mate")) == sorted(mates)  # each exactly once
    assert set(mates) <= set(ids_in(repo / "done"))
    failed = records(repo / "failed")
    for aid in hostile:
        assert failed[aid]["spoolpipe"]["reason"].startswith(reason), failed[aid]["spoolpipe"]
        assert failed[aid]["spoolpipe"]["attempts"] == attempts


def test_a_worker_out_of_file_descriptors_says_so_and_how_to_give_it_more(tmp_path: Path) -> None:
    """It said "file system error: Too many open files", every second, with no word of the limit."""
    import resource
    import subprocess
    import sys

    repo = make_repository(tmp_path)
    submit(repo, "t.noop")

    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))

    log = tmp_path / "w.stderr"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spoolpipe", "worker", str(repo), "--worker-id", "w1"],
            stdout=out,
            stderr=out,
            preexec_fn=few_descriptors,
            start_new_session=True,
        )
    try:
        wait_for(lambda: "out of file descriptors" in log.read_text(), 30, "the worker to say why")
    finally:
        kill_group(proc)
    said = next(line for line in log.read_text().splitlines() if "out of file descriptors" in line)
    assert "this process may open 16" in said and "ulimit -n" in said, said


def test_a_claim_past_the_attempt_limit_fails_without_running(tmp_path: Path) -> None:
    """As after crashes of every attempt (each counts), or a name written so by hand."""
    repo = make_repository(tmp_path, "retry.max-attempts = 5\n")
    drop(repo, "job~6.json", '{"type": "t.parent"}')
    run_until_idle(repo)
    assert effects(repo, "t.parent") == []
    failed = records(repo / "failed")["job"]["spoolpipe"]
    assert failed["attempts"] == 6
    assert failed["reason"] == (
        "gave up: attempt 6 exceeds retry.max-attempts=5 (as its file name says: attempts whose "
        "worker died or was killed count too)"
    )


POOLED = """
import concurrent.futures

@processor("t.pooled")
def pooled(activity, ctx):
    with concurrent.futures.ProcessPoolExecutor(2) as executor:
        return sum(executor.map(abs, [1, -2, 3]))
"""


def test_a_processor_may_start_processes_of_its_own(tmp_path: Path) -> None:
    """It failed with 'daemonic processes are not allowed to have children'."""
    repo = make_repository(tmp_path, extra_processors=POOLED)
    aid = submit(repo, "t.pooled")
    run_until_idle(repo)
    assert records(repo / "done")[aid]["result"] == 6


def test_pool_processes_of_a_stopped_daemon_stop_claiming_before_its_lease_can_be_taken(
    tmp_path: Path,
) -> None:
    """Only the daemon refreshes the lease; its pool processes went on claiming their batches while it
    was stopped, and the worker that took the lease over ran those claims again."""
    repo = make_repository(tmp_path, "claims.lock = lease\nclaims.lease-seconds = 2\npool.size = 1\n")
    first = start_worker(repo, "w1")
    try:
        for i in range(300):
            submit(repo, "t.dup", id=f"f{i:03d}")  # quick ones: the batches grow
        wait_for(lambda: len(os.listdir(repo / "done")) >= 300, 60, "the warm-up")
        due = time.time() + 1.0
        for i in range(40):
            submit(repo, "t.dup", {"sleep": 0.5}, id=f"a{i:03d}", not_before=due)
        time.sleep(due - time.time() + 0.4)
        os.kill(first.pid, signal.SIGSTOP)  # the daemon only: its pool process runs on
        second = start_worker(repo, "w2")
        try:
            time.sleep(8)
            os.kill(first.pid, signal.SIGCONT)
            wait_for(lambda: len(os.listdir(repo / "done")) >= 340, 90, "every activity")
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(30)
    finally:
        os.kill(first.pid, signal.SIGCONT)
        first.send_signal(signal.SIGTERM)
        first.wait(30)
    runs = Counter(e[0] for e in effects(repo, "t.dup"))
    twice = sorted(i for i, n in runs.items() if n > 1)
    assert len(twice) <= 1, twice  # at most the one running when the daemon stopped


def test_a_worker_whose_ids_folder_was_deleted_creates_it_again_and_goes_on(tmp_path: Path) -> None:
    """Deleting ``ids/`` by hand made every claim fail and requeue, two error lines each, every 5 s."""
    repo = make_repository(tmp_path)
    proc = start_worker(repo, "w1")
    log = tmp_path / "worker-w1.stderr"
    try:
        wait_for(lambda: "worker w1 started" in log.read_text(), 60, "the worker to start")
        (repo / "ids").rmdir()
        names = [f"n{i}" for i in range(5)]
        for name in names:  # as a person would (submit would make ids/ again itself)
            drop(repo, f"{name}.json", json.dumps({"type": "t.noop"}))
        wait_for(lambda: sorted(ids_in(repo / "done")) == sorted(names), 60, "every activity done")
    finally:
        kill_group(proc, signal.SIGTERM)
        proc.wait(60)
    text = log.read_text()
    assert text.count("ids/ was missing") == 1, text
    assert "cannot reserve id" not in text and "ERROR" not in text
    assert leftovers(repo) == {}


def test_a_file_in_place_of_ids_is_said_once_not_per_activity_and_nothing_is_lost(tmp_path: Path) -> None:
    """Each claim said "cannot reserve id ...: Not a directory", every 5 s: 10,000 waiting made
    10,000 error lines every 5 s."""
    repo = make_repository(tmp_path, "pool.size = 1\n")
    proc = start_worker(repo, "w1")
    log = tmp_path / "worker-w1.stderr"
    try:
        wait_for(lambda: "worker w1 started" in log.read_text(), 60, "the worker to start")
        (repo / "ids").rmdir()
        (repo / "ids").write_text("in the way\n")
        names = [f"n{i}" for i in range(20)]
        for name in names:
            drop(repo, f"{name}.json", json.dumps({"type": "t.noop"}))
        wait_for(lambda: "ids is not a folder" in log.read_text(), 60, "the worker to say why")
        time.sleep(6)  # every activity claimed and requeued at least once more
        (repo / "ids").unlink()
        (repo / "ids").mkdir()
        wait_for(lambda: sorted(ids_in(repo / "done")) == sorted(names), 60, "every activity done")
    finally:
        kill_group(proc, signal.SIGTERM)
        proc.wait(60)
    text = log.read_text()
    assert text.count("ids is not a folder") == 1, text
    assert "cannot reserve id" not in text, text
    assert leftovers(repo) == {}


@pytest.mark.parametrize("folder", ["done", "inbox"])
def test_a_record_or_follow_up_whose_folder_is_gone_waits_for_it_and_is_never_lost(
    tmp_path: Path, folder: str
) -> None:
    """``done/`` (or ``inbox/``) moved away while an activity ran, a file in its place: its record (or
    follow-ups) was thrown away as "published by an earlier finish", though the log said done."""
    repo = make_repository(tmp_path, "pool.size = 1\nscan.interval-seconds = 0.5\n")
    proc = start_worker(repo, "w1")
    try:
        parent = submit(repo, "t.parent", {"sleep": 1.0, "children": 2})
        wait_for(lambda: effects(repo, "t.parent") != [], 30, "the parent to start")
        (repo / folder).rename(tmp_path / f"{folder}.old")
        (repo / folder).write_text("in the way")  # a worker makes a lost folder again, not in a file's place
        time.sleep(3)  # the parent ends (after 1 s) while the folder is gone; a few scans go by
        (repo / folder).unlink()
        (repo / folder).mkdir()
        wait_for(lambda: len(ids_in(repo / "done")) == 3, 60, "the parent and both children done")
    finally:
        kill_group(proc, signal.SIGTERM)
        proc.wait(60)
    children = [e[0] for e in effects(repo, "t.child")]
    assert sorted(ids_in(repo / "done")) == sorted([parent, *children]) and len(set(children)) == 2
    assert len(effects(repo, "t.parent")) == 1
    assert os.listdir(tmp_path / f"{folder}.old") == []
    assert leftovers(repo) == {}


def test_a_worker_whose_log_folder_was_deleted_makes_it_again_and_goes_on(tmp_path: Path) -> None:
    """Deleting logs/workers/ made the next log line raise: the worker crashed (70) and then hung."""
    repo = make_repository(tmp_path)
    proc = start_worker(repo, "w1")
    try:
        wait_for(lambda: (repo / "logs" / "workers" / "w1.log").exists(), 60, "the worker log")
        wait_for(lambda: "worker w1 started" in (tmp_path / "worker-w1.stderr").read_text(), 60, "start")
        import shutil

        shutil.rmtree(repo / "logs" / "workers")
        activity = submit(repo, "t.noop")
        wait_for(lambda: activity in ids_in(repo / "done"), 60, "the activity done")
        wait_for(lambda: (repo / "logs" / "workers" / "w1.log").exists(), 30, "the log made again")
        assert proc.poll() is None
    finally:
        kill_group(proc, signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0
    assert f"done {activity}" in (repo / "logs" / "workers" / "w1.log").read_text()


def test_a_worker_whose_inbox_was_deleted_hears_new_arrivals_again_at_once(tmp_path: Path) -> None:
    """The inbox's inotify watch went with the deleted folder and was never added again: the worker
    made inbox/ again, and from then on saw each new activity only at its next scan (60 s here)."""
    import shutil

    repo = make_repository(tmp_path, "scan.interval-seconds = 60\n")
    proc = start_worker(repo, "w1")
    try:
        wait_for(lambda: "worker w1 started" in (tmp_path / "worker-w1.stderr").read_text(), 60, "start")
        shutil.rmtree(repo / "inbox")
        wait_for(lambda: (repo / "inbox").is_dir(), 30, "the worker to make inbox/ again")
        time.sleep(0.5)
        activity = submit(repo, "t.noop")
        wait_for(lambda: activity in ids_in(repo / "done"), 10, "the activity done long before a scan")
        shutil.rmtree(repo / "inbox")  # and by hand, this time (unless the worker is quicker)
        (repo / "inbox").mkdir(exist_ok=True)
        time.sleep(0.5)
        again = submit(repo, "t.noop")
        wait_for(lambda: again in ids_in(repo / "done"), 10, "the next one as soon")
    finally:
        kill_group(proc, signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0


def test_an_entry_that_cannot_be_quarantined_is_tried_again_at_the_next_scan(tmp_path: Path) -> None:
    """A symlink in the inbox with invalid/ gone (a file in its place): the failed quarantine was
    retried 860 times a second."""
    repo = make_repository(tmp_path, "scan.interval-seconds = 1\n")
    proc = start_worker(repo, "w1")
    log = tmp_path / "worker-w1.stderr"
    try:
        wait_for(lambda: "worker w1 started" in log.read_text(), 60, "the worker to start")
        (repo / "invalid").rmdir()
        (repo / "invalid").write_text("in the way\n")
        (repo / "inbox" / "link.json").symlink_to("/etc/passwd")
        time.sleep(3)
        tries = log.read_text().count("cannot quarantine link.json")
        (repo / "invalid").unlink()
        (repo / "invalid").mkdir()
        wait_for(lambda: len(os.listdir(repo / "invalid")) == 1, 30, "the link quarantined")
        activity = submit(repo, "t.noop")
        wait_for(lambda: activity in ids_in(repo / "done"), 30, "work going on")
    finally:
        kill_group(proc, signal.SIGTERM)
        proc.wait(60)
    assert 1 <= tries <= 10, tries  # about once per scan (1 s) for 3 s
    assert (repo / "inbox").is_dir() and not os.listdir(repo / "inbox")


def test_a_worker_makes_invalid_again_when_it_is_deleted(tmp_path: Path) -> None:
    """``rm -rf invalid`` to clear the junk out: every junk file after it stayed in the inbox, and
    each scan logged "cannot quarantine" for each of them, until a person made the folder."""
    import shutil

    repo = make_repository(tmp_path, "scan.interval-seconds = 0.5\n")
    proc = start_worker(repo, "w1")
    log = tmp_path / "worker-w1.stderr"
    try:
        wait_for(lambda: "worker w1 started" in log.read_text(), 60, "the worker to start")
        drop(repo, "old-junk.json", "[]")
        wait_for(lambda: len(os.listdir(repo / "invalid")) == 1, 30, "the first junk quarantined")
        shutil.rmtree(repo / "invalid")
        (repo / "inbox" / "link.json").symlink_to("/etc/passwd")
        drop(repo, "array.json", "[1]")
        made = lambda: (repo / "invalid").is_dir()  # noqa: E731
        wait_for(lambda: made() and len(os.listdir(repo / "invalid")) == 2, 30, "both quarantined")
        time.sleep(1.5)  # three scans: a failed quarantine would be tried and logged again meanwhile
    finally:
        kill_group(proc, signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0
    text = log.read_text()
    assert text.count("invalid/ was missing (deleted by hand?): created it again") == 1, text
    assert "cannot quarantine" not in text, text
    assert os.listdir(repo / "inbox") == []


def test_a_worker_makes_heartbeats_and_reports_again_when_they_are_deleted(tmp_path: Path) -> None:
    """Deleted by hand, heartbeats/ stayed gone (the worker looked dead to status and stop, with a
    warning per heartbeat) and reports/ made every failure report fail five times."""
    import shutil

    repo = make_repository(tmp_path, "heartbeat.interval-seconds = 0.2\n")
    proc = start_worker(repo, "w1")
    try:
        wait_for(lambda: (repo / "heartbeats" / "w1.json").exists(), 60, "the first heartbeat")
        shutil.rmtree(repo / "heartbeats")
        shutil.rmtree(repo / "reports")
        failed = submit(repo, "t.fatal")
        wait_for(lambda: (repo / "reports" / f"{failed}.txt").exists(), 60, "the failure report")
        wait_for(lambda: (repo / "heartbeats" / "w1.json").exists(), 30, "a heartbeat again")
    finally:
        kill_group(proc, signal.SIGTERM)
        proc.wait(60)
    text = (tmp_path / "worker-w1.stderr").read_text()
    assert text.count("heartbeats/ was missing") == 1
    assert "cannot write heartbeat" not in text
    assert records(repo / "failed")[failed]["spoolpipe"]["attempts"] == 1
    assert len(records(repo / "done")) == 1  # the failure activity, at its first attempt


def test_the_failure_processor_writes_no_report_through_a_link_in_place_of_reports(tmp_path: Path) -> None:
    """reports/ replaced by a symbolic link while a worker ran: the failure report was written
    wherever it pointed. Now the failure activity's attempt fails, and is retried, until a folder
    is back."""
    import shutil

    repo = make_repository(tmp_path, "retry.backoff-seconds = 0.2\nretry.max-attempts = 20\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = start_worker(repo, "w1")
    log = tmp_path / "worker-w1.stderr"
    try:
        wait_for(lambda: "worker w1 started" in log.read_text(), 60, "start")  # it refuses such a link
        shutil.rmtree(repo / "reports")
        (repo / "reports").symlink_to(elsewhere)
        failed = submit(repo, "t.fatal")
        wait_for(
            lambda: "reports is a symbolic link, not a folder" in log.read_text() or os.listdir(elsewhere),
            60,
            "the refusal",
        )
        assert os.listdir(elsewhere) == []
        (repo / "reports").unlink()
        (repo / "reports").mkdir()
        wait_for(
            lambda: (repo / "reports" / f"{failed}.txt").exists(), 60, "the report once reports/ is back"
        )
    finally:
        kill_group(proc, signal.SIGTERM)
        proc.wait(60)
    assert os.listdir(elsewhere) == []


def test_a_worker_makes_done_and_failed_again_when_they_are_deleted(tmp_path: Path) -> None:
    """Deleted by hand (to clear them out), done/ and failed/ stayed gone: every outcome stayed
    committed in running/, with a file system error every few seconds, until a person made them."""
    import shutil

    repo = make_repository(tmp_path, "scan.interval-seconds = 0.5\n")
    proc = start_worker(repo, "w1")
    log = tmp_path / "worker-w1.stderr"
    try:
        wait_for(lambda: "worker w1 started" in log.read_text(), 60, "start")
        shutil.rmtree(repo / "done")
        shutil.rmtree(repo / "failed")
        first = submit(repo, "t.noop")
        failed = submit(repo, "t.fatal")
        made = lambda name: (repo / name).is_dir()  # noqa: E731
        wait_for(lambda: made("failed") and failed in ids_in(repo / "failed"), 30, "the failure published")
        wait_for(
            lambda: made("done") and len(ids_in(repo / "done")) == 2, 30, "it and the failure activity done"
        )
        later = submit(repo, "t.noop")
        wait_for(lambda: later in ids_in(repo / "done"), 30, "the next one done")
        time.sleep(1.5)  # three scans: a stuck claim would be retried and logged meanwhile
    finally:
        kill_group(proc, signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0
    text = log.read_text()
    assert first in ids_in(repo / "done")
    assert text.count("done/ was missing (deleted by hand?): created it again") == 1, text
    assert text.count("failed/ was missing (deleted by hand?): created it again") == 1, text
    assert "file system error" not in text and "not published yet" not in text, text
    assert os.listdir(repo / "running") == []


def test_nothing_is_published_through_a_link_put_in_place_of_done_or_inbox(tmp_path: Path) -> None:
    """A symbolic link put in place of done/ (or failed/, inbox/) while a worker ran was followed by
    the publishing rename: records and follow-ups landed wherever it pointed (/etc, for a worker run
    as root). Now nothing moves through it; the claim stays committed until a folder is back."""
    import shutil

    repo = make_repository(tmp_path, "scan.interval-seconds = 0.3\n")
    proc = start_worker(repo, "w1")
    log = tmp_path / "worker-w1.stderr"
    elsewhere = {name: tmp_path / f"elsewhere-{name}" for name in ("done", "inbox")}
    try:
        parent = submit(repo, "t.parent", {"sleep": 1.5, "children": 1})
        wait_for(lambda: len(effects(repo, "t.parent")) == 1, 60, "the parent to start")
        for name, target in elsewhere.items():
            target.mkdir()
            shutil.move(repo / name, tmp_path / f"{name}.moved")
            (repo / name).symlink_to(target)
        committed = f"{parent}~1~w1~committed"
        wait_for(
            lambda: committed in os.listdir(repo / "running") or os.listdir(elsewhere["done"]),
            30,
            "the parent's outcome committed",
        )
        time.sleep(1)  # a few recoveries, each of which tries to publish it again
        assert {name: os.listdir(target) for name, target in elsewhere.items()} == {"done": [], "inbox": []}
        assert committed in os.listdir(repo / "running")
        for name in elsewhere:
            (repo / name).unlink()
            shutil.move(tmp_path / f"{name}.moved", repo / name)
        wait_for(
            lambda: len(ids_in(repo / "done")) == 2,
            30,
            "the parent and its child done once the folders are back",
        )
    finally:
        kill_group(proc, signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0
    assert {name: os.listdir(target) for name, target in elsewhere.items()} == {"done": [], "inbox": []}
    assert parent in ids_in(repo / "done")
    assert len(effects(repo, "t.child")) == 1
    assert "inbox is a symbolic link, not a folder: spoolpipe does not follow it" in log.read_text()
    assert os.listdir(repo / "running") == []


def test_a_worker_whose_tmp_folder_was_deleted_leaves_no_committed_marks_behind(tmp_path: Path) -> None:
    """Spare files could not go to tmp/: every ~committed mark stayed in running/, and each scan
    "recovered" more of them as claims abandoned by this worker."""
    import shutil

    repo = make_repository(tmp_path, "scan.interval-seconds = 0.3\n")
    proc = start_worker(repo, "w1")
    try:
        wait_for(lambda: "worker w1 started" in (tmp_path / "worker-w1.stderr").read_text(), 60, "start")
        shutil.rmtree(repo / "tmp")
        ids = [f"a{i}" for i in range(8)]
        for activity_id in ids:  # as a person would: submit needs tmp/
            drop(repo, f"{activity_id}.json", json.dumps({"type": "t.noop"}))
        wait_for(lambda: set(ids) <= set(ids_in(repo / "done")), 60, "every activity done")
        time.sleep(1)  # a few scans
        assert os.listdir(repo / "running") == []
    finally:
        kill_group(proc, signal.SIGTERM)
        proc.wait(60)
    assert "abandoned by this worker" not in (tmp_path / "worker-w1.stderr").read_text()
    assert (repo / "tmp").is_dir()  # made again at the next heartbeat


def test_a_lease_holder_busy_in_one_long_step_still_holds_its_lease(tmp_path: Path) -> None:
    """Any gap over 0.8 of a lease between two looks counted as a pause: a purge writing one large
    archive for longer than that gave up on it at every run ("changed meanwhile"), though the lease's
    own refresh thread had kept it all along. A pause stops every thread; a long step does not."""
    lock = OwnLock(tmp_path, "purger", "lease", lease_seconds=1.0)
    assert lock.acquire(5)
    try:
        assert lock.held()
        time.sleep(1.5)  # one long step of the thread that holds it: the lease is refreshed meanwhile
        assert lock.held()
    finally:
        lock.release()
