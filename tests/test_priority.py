"""Priorities: the name carries them so a worker orders a backlog without reading it; the document decides.

Pure name grammar and intake order in-process; the rest with real worker processes (pool.size = 1 runs
one activity at a time, so the order the processor saw is the order the worker chose).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import drop, kill_group, make_repository, run_until_idle, start_worker, wait_for
from spoolpipe.activity import (
    Activity,
    InvalidActivity,
    derived_id,
    is_valid_name,
    new_id,
    new_name,
    parse_activity,
    parse_inbox_name,
    parse_running_name,
    queued_name,
)
from spoolpipe.intake import Intake
from spoolpipe.repository import Repository

SPOOLPIPE = [sys.executable, "-m", "spoolpipe"]
T0 = 1_790_000_000.0
NOW = 1_800_000_000.0

# ``p.rec`` and ``p.slow`` append their key to effects/order.log: the order activities ran in.
PROCESSORS = """
def _record(activity, ctx):
    with open(ctx.repository / "effects" / "order.log", "a") as f:
        f.write(f"{activity.data['key']} {activity.attempt} {ctx.worker_id}\\n")
    if activity.attempt < activity.data.get("succeed_on", 1):
        raise RuntimeError(f"attempt {activity.attempt} fails")
    time.sleep(activity.data.get("sleep", 0))
    return activity.data["key"]

@processor("p.rec")
def rec(activity, ctx):
    return _record(activity, ctx)

@processor("p.slow")  # a type of its own: its pace makes its batches one activity long
def slow(activity, ctx):
    return _record(activity, ctx)

@processor("p.fan", follow_ups=("p.rec",))
def fan(activity, ctx):
    for key, priority in activity.data["children"]:
        if priority is None:
            ctx.follow_up("p.rec", {"key": key}, key=key)
        else:
            ctx.follow_up("p.rec", {"key": key}, key=key, priority=priority)
    return len(activity.data["children"])
"""


def order(repo: Path) -> list[str]:
    path = repo / "effects" / "order.log"
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def put(
    repo: Path, key: str, priority: int = 5, *, at: float | None = None, type_: str = "p.rec", **data: object
) -> str:
    """Submit as ``spoolpipe submit`` does; ``at`` sets the id's age (ULIDs sort by time)."""
    activity = Activity(new_id(at), type_, {"key": key, **data}, 1, None, priority=priority)
    Repository(repo, fsync=False).submit(activity)
    return activity.id


def one_at_a_time(tmp_path: Path, properties: str = "") -> Path:
    return make_repository(tmp_path, "pool.size = 1\n" + properties, extra_processors=PROCESSORS)


# -- the name grammar (pure) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "stem", "attempt", "not_before_ms", "priority"),
    [
        ("A1.json", "A1", 1, None, None),
        ("A1~p9.json", "A1", 1, None, 9),
        ("A1~p0.json", "A1", 1, None, 0),
        ("A1~3.json", "A1", 3, None, None),
        ("A1~3~p2.json", "A1", 3, None, 2),
        ("A1~3~1700000000000~p7.json", "A1", 3, 1_700_000_000_000, 7),
        ("A1~3~1700000000000.json", "A1", 3, 1_700_000_000_000, None),
    ],
)
def test_inbox_names_say_attempt_start_and_priority(
    name: str, stem: str, attempt: int, not_before_ms: int | None, priority: int | None
) -> None:
    queued = parse_inbox_name(name)
    assert (queued.stem, queued.attempt, queued.not_before_ms, queued.priority) == (
        stem,
        attempt,
        not_before_ms,
        priority,
    )


@pytest.mark.parametrize("name", ["A1~p10.json", "A1~pp.json", "A1~P9.json", "A1~p9~3.json", "A1~p9"])
def test_names_that_only_look_like_priorities_are_plain_names(name: str) -> None:
    queued = parse_inbox_name(name)
    assert (queued.canonical, queued.priority, queued.attempt) == (False, None, 1)


def test_written_names_carry_a_priority_other_than_the_default() -> None:
    assert new_name("A1") == "A1.json"
    assert new_name("A1", 5) == "A1.json"
    assert new_name("A1", 9) == "A1~p9.json"
    assert queued_name("A1", 2, None, 0) == "A1~2~p0.json"
    assert queued_name("A1", 2, 1_700_000_000.5, 8) == "A1~2~1700000000500~p8.json"
    assert queued_name("A1", 2, 1_700_000_000.5) == "A1~2~1700000000500.json"
    for priority in range(10):
        name = queued_name("A1", 4, 1_700_000_000.0, priority)
        parsed = parse_inbox_name(name)
        expected = None if priority == 5 else priority
        assert (parsed.stem, parsed.attempt, parsed.priority) == ("A1", 4, expected)


def test_a_staged_follow_up_name_carries_its_priority() -> None:
    running = parse_running_name("P1~1~w1~follow-up~F1~p9")
    assert running is not None and running.follow_up == "F1~p9"


def test_the_document_gives_the_priority_and_the_name_the_id() -> None:
    assert parse_activity(b'{"type": "t"}', "A1.json").priority == 5
    assert parse_activity(b'{"type": "t", "priority": 0}', "A1.json").priority == 0
    assert parse_activity(b'{"type": "t", "priority": 9}', "A1~p9.json").priority == 9
    # The document decides: a name that says another priority does not change it.
    assert parse_activity(b'{"type": "t"}', "A1~p9.json").priority == 5
    activity = parse_activity(b'{"type": "t", "priority": 2}', "A1~p2.json")
    assert activity.id == "A1" and activity.to_json()["priority"] == 2
    assert "priority" not in parse_activity(b'{"type": "t", "priority": 5}', "A1.json").to_json()
    with pytest.raises(InvalidActivity, match="file name says id 'A1'"):
        parse_activity(b'{"id": "B2", "type": "t", "priority": 9}', "A1~p9.json")


@pytest.mark.parametrize("value", ["9", "high", True, False, 9.0, 2.5, -1, 10, None, [9], {"p": 9}])
def test_a_priority_that_is_not_an_integer_from_0_to_9_is_invalid(value: object) -> None:
    raw = json.dumps({"type": "t", "priority": value}).encode()
    with pytest.raises(InvalidActivity) as caught:
        parse_activity(raw, "A1.json")
    assert caught.value.reason == (
        f"bad priority {json.dumps(value)}: must be an integer from 0 to 9 "
        "(higher runs first; without the field: 5)"
    )


# -- the order of one worker's intake (in-process, on a real inbox) ----------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    Repository.create(tmp_path / "repo", "")
    return Repository(tmp_path / "repo", fsync=False)


def taken(  # type: ignore[no-untyped-def]
    repo: Repository, intake: Intake, want: int = 100, *, admit=lambda a: True, handled=lambda t: True
) -> list[str]:
    """The ids handed out, in order; their files leave the inbox as a claim would take them."""
    verdict = lambda a: "run" if admit(a) else "type waits"  # noqa: E731 - a refusal: by its type
    found = intake.take(NOW, verdict, handled, want, lambda name, reason: None)
    for name, read in found:
        intake.forget(name)
        os.rename(repo.inbox / name, repo.running / f"{read.activity.id}~1~w1.json")
    return [read.activity.id for _, read in found]


def dropped(repo: Repository, name: str, doc: dict[str, object]) -> None:
    (repo.inbox / name).write_text(json.dumps(doc))


def test_intake_goes_by_priority_then_by_name(repo: Repository) -> None:
    for name, doc in [
        ("b1.json", {"type": "t"}),
        ("a1~p2.json", {"type": "t", "priority": 2}),
        ("c1~p9.json", {"type": "t", "priority": 9}),
        ("a2.json", {"type": "t"}),
        ("a0~3~p9.json", {"id": "a0", "type": "t", "priority": 9}),  # a retry: same line as new ones
        ("z1~p7.json", {"type": "t", "priority": 7}),
        ("a3~2~1700000000000~p7.json", {"id": "a3", "type": "t", "priority": 7}),  # due long ago
        ("a4~2~1900000000000~p9.json", {"id": "a4", "type": "t", "priority": 9}),  # due after NOW
    ]:
        dropped(repo, name, doc)
    intake = Intake(repo, limit=lambda: 1 << 20, settle=lambda: 0.0)
    intake.rescan()
    assert taken(repo, intake) == ["a0", "c1", "a3", "z1", "a2", "b1", "a1"]
    assert [d.id for d in intake.delayed(NOW, lambda t: True)] == ["a4"]


def test_intake_reads_names_only_until_their_turn(repo: Repository) -> None:
    dropped(repo, "h~p9.json", {"type": "t", "priority": 9})
    for i in range(5):
        (repo.inbox / f"low{i}~p1.json").write_text("not json yet")  # never read below
    intake = Intake(repo, limit=lambda: 1 << 20, settle=lambda: 0.0)
    intake.rescan()
    assert taken(repo, intake, 1) == ["h"]


def test_a_plain_name_is_in_line_at_the_default_until_read_then_at_its_documents_priority(
    repo: Repository,
) -> None:
    dropped(repo, "a-low.json", {"type": "t", "priority": 1})  # read at its default turn, then put back
    dropped(repo, "b-mid.json", {"type": "t"})
    dropped(repo, "c-high.json", {"type": "t", "priority": 9})  # runs at its default turn
    dropped(repo, "d~p3.json", {"type": "t", "priority": 3})
    dropped(repo, "e~p7.json", {"type": "t", "priority": 7})
    dropped(repo, "f~p8.json", {"type": "t", "priority": 2})  # the name said more than the document
    intake = Intake(repo, limit=lambda: 1 << 20, settle=lambda: 0.0)
    intake.rescan()
    assert taken(repo, intake) == ["e", "b-mid", "c-high", "d", "f", "a-low"]


def test_an_entry_put_back_waits_at_its_documents_priority(repo: Repository) -> None:
    dropped(repo, "a-busy.json", {"type": "busy", "priority": 9})
    dropped(repo, "b~p7.json", {"type": "t", "priority": 7})
    dropped(repo, "c.json", {"type": "t"})
    intake = Intake(repo, limit=lambda: 1 << 20, settle=lambda: 0.0)
    intake.rescan()
    # "busy" is at its concurrency: the rest runs meanwhile.
    assert taken(repo, intake, 2, admit=lambda a: a.type != "busy") == ["b", "c"]
    dropped(repo, "d~p8.json", {"type": "t", "priority": 8})
    intake.rescan()
    assert taken(repo, intake) == ["a-busy", "d"]  # read as a 9 once: ahead of an 8 that came later


def test_a_batch_never_passes_a_higher_priority(repo: Repository) -> None:
    for name, doc in [
        ("a~p9.json", {"type": "t", "priority": 9}),
        ("b~p9.json", {"type": "t", "priority": 9}),
        ("c.json", {"type": "t"}),
    ]:
        dropped(repo, name, doc)
    intake = Intake(repo, limit=lambda: 1 << 20, settle=lambda: 0.0)
    intake.rescan()
    found = intake.take(NOW, lambda a: "run", lambda t: True, 10, lambda n, r: None, 9)
    assert [read.activity.id for _, read in found] == ["a", "b"]


# -- real workers -------------------------------------------------------------------------------------


def test_a_worker_runs_a_mixed_backlog_by_priority_then_oldest_first(tmp_path: Path) -> None:
    repo = one_at_a_time(tmp_path)
    priorities = [5, 1, 9, 5, 0, 7, 9, 3, 5, 8, 2, 6, 4, 9, 1, 5, 7, 0, 3, 8]
    submitted = []
    for age, priority in enumerate(priorities):
        key = f"k{age:02d}-p{priority}"
        put(repo, key, priority, at=T0 + age)  # k00 is the oldest
        submitted.append((priority, age, key))
    names = os.listdir(repo / "inbox")
    assert sum(n.endswith("~p9.json") for n in names) == 3 and sum("~" not in n for n in names) == 4
    run_until_idle(repo)
    assert order(repo) == [key for _, _, key in sorted(submitted, key=lambda s: (-s[0], s[1]))]
    done = [json.loads(p.read_text()) for p in (repo / "done").iterdir()]
    assert sorted(d.get("priority", 5) for d in done) == sorted(priorities)


def test_submit_priority_writes_it_into_the_name_and_the_document(tmp_path: Path) -> None:
    repo = one_at_a_time(tmp_path)
    put(repo, "old-default", at=T0)

    def submit(*args: str) -> subprocess.CompletedProcess[str]:
        command = [*SPOOLPIPE, "submit", str(repo), "p.rec", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    low = submit('{"key": "new-low"}', "--priority", "0")
    high = submit('{"key": "new-high"}', "--priority", "9")
    plain = submit('{"key": "new-default"}')
    assert (low.returncode, high.returncode, plain.returncode) == (0, 0, 0), low.stderr + high.stderr
    high_id = high.stdout.strip()
    assert json.loads((repo / "inbox" / f"{high_id}~p9.json").read_text())["priority"] == 9
    plain_doc = json.loads((repo / "inbox" / f"{plain.stdout.strip()}.json").read_text())
    assert "priority" not in plain_doc
    for bad in ("10", "-1", "high", "2.5"):
        refused = submit('{"key": "bad"}', "--priority", bad)
        assert refused.returncode == 2, refused.stderr
        assert "--priority" in refused.stderr
    assert len(os.listdir(repo / "inbox")) == 4
    taken_id = submit('{"key": "again"}', "--id", high_id, "--priority", "3")
    assert taken_id.returncode == 2 and f"inbox/{high_id}~p9.json" in taken_id.stderr
    run_until_idle(repo)
    assert order(repo) == ["new-high", "old-default", "new-default", "new-low"]
    assert json.loads((repo / "done" / f"{high_id}.json").read_text())["priority"] == 9


def test_follow_ups_get_the_priority_the_processor_gives_them(tmp_path: Path) -> None:
    repo = one_at_a_time(tmp_path)
    children = [["c-low", 1], ["c-default", None], ["c-high", 9], ["c-zero", 0], ["c-seven", 7]]
    parent = Activity("P1", "p.fan", {"children": children}, 1, None)
    Repository(repo, fsync=False).submit(parent)
    run_until_idle(repo)
    assert order(repo) == ["c-high", "c-seven", "c-default", "c-low", "c-zero"]
    done = {p.stem: json.loads(p.read_text()) for p in (repo / "done").glob("*.json")}
    assert done[derived_id("P1", "c-high")]["priority"] == 9
    assert "priority" not in done[derived_id("P1", "c-default")]
    assert done["P1"]["spoolpipe"]["follow_ups"] == [derived_id("P1", key) for key, _ in children]


@pytest.mark.parametrize("bad", ["9", True, 10, 2.5])
def test_a_follow_up_with_a_bad_priority_fails_its_parent_and_publishes_nothing(
    tmp_path: Path, bad: object
) -> None:
    repo = one_at_a_time(tmp_path)
    parent = Activity("P1", "p.fan", {"children": [["ok", 9], ["bad", bad]]}, 1, None)
    Repository(repo, fsync=False).submit(parent)
    run_until_idle(repo)
    failed = json.loads((repo / "failed" / "P1.json").read_text())
    assert f"follow-up priority {bad!r} is not an integer from 0 to 9" in failed["spoolpipe"]["reason"]
    assert order(repo) == []  # not even the good one ran: nothing was published


def test_a_bad_priority_is_quarantined_with_the_reason(tmp_path: Path) -> None:
    repo = one_at_a_time(tmp_path)
    bad = {"q-string.json": "9", "q-bool.json": True, "q-big.json": 10, "q-float.json": 9.5, "q-neg.json": -1}
    for name, value in bad.items():
        drop(repo, name, json.dumps({"type": "p.rec", "data": {"key": name}, "priority": value}))
    drop(repo, "fine.json", json.dumps({"type": "p.rec", "data": {"key": "fine"}, "priority": 9}))
    run_until_idle(repo)
    assert order(repo) == ["fine"]
    reasons = {}
    for entry in (repo / "invalid").iterdir():
        (original,) = [p.name for p in entry.iterdir() if p.name != "reason.txt"]
        reasons[original] = (entry / "reason.txt").read_text()
    assert sorted(reasons) == sorted(bad)
    for name, value in bad.items():
        assert f"bad priority {json.dumps(value)}: must be an integer from 0 to 9" in reasons[name]
    assert os.listdir(repo / "inbox") == [] and os.listdir(repo / "running") == []


def test_a_copied_file_with_a_priority_inside_is_ordered_as_documented(tmp_path: Path) -> None:
    """A plain name is in line at 5 until its turn; then its document's priority decides."""
    repo = one_at_a_time(tmp_path)
    put(repo, "named-7", 7, at=T0)
    put(repo, "named-3", 3, at=T0)
    drop(repo, "b-plain-5.json", json.dumps({"type": "p.rec", "data": {"key": "plain-5"}}))
    drop(repo, "c-cp-9.json", json.dumps({"type": "p.rec", "data": {"key": "cp-9"}, "priority": 9}))
    drop(repo, "a-cp-1.json", json.dumps({"type": "p.rec", "data": {"key": "cp-1"}, "priority": 1}))
    run_until_idle(repo)
    # cp-9 waits for its default turn (after the 7, after plain-5 whose name sorts first);
    # cp-1 is read at its default turn and goes back in line behind the 3.
    assert order(repo) == ["named-7", "plain-5", "cp-9", "named-3", "cp-1"]
    done = {
        record["data"]["key"]: record
        for record in map(json.loads, map(Path.read_text, (repo / "done").iterdir()))
    }
    assert (done["cp-9"]["priority"], done["cp-1"]["priority"]) == (9, 1)


def test_a_retry_keeps_its_priority(tmp_path: Path) -> None:
    repo = one_at_a_time(tmp_path, "retry.backoff-seconds = 0.05\n")
    put(repo, "flaky-9", 9, at=T0 + 10, succeed_on=2)
    for i in range(4):
        put(repo, f"d{i}", at=T0 + i, type_="p.slow", sleep=1.0)  # flaky-9 is due again long before d0 ends
    run_until_idle(repo)
    assert order(repo) == ["flaky-9", "d0", "flaky-9", "d1", "d2", "d3"]


def test_spoolpipe_retry_and_recovery_keep_the_priority(tmp_path: Path) -> None:
    repo = one_at_a_time(tmp_path, "retry.max-attempts = 1\n")
    failing = put(repo, "fails", 8, succeed_on=9)
    run_until_idle(repo)
    assert json.loads((repo / "failed" / f"{failing}.json").read_text())["priority"] == 8
    retried = subprocess.run(
        [*SPOOLPIPE, "retry", str(repo), failing], capture_output=True, text=True, timeout=60, check=False
    )
    assert retried.returncode == 0, retried.stderr
    assert sorted(os.listdir(repo / "inbox")) == [f"{failing}~p8.json"]
    (repo / "inbox" / f"{failing}~p8.json").unlink()

    # A worker killed while running a priority-9 activity: its recovered claim keeps the priority.
    stuck = put(repo, "stuck", 9, sleep=3600)
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: order(repo) == ["fails", "stuck"], 60, "the stuck activity to start")
    finally:
        kill_group(worker, signal.SIGKILL)
    claims = [n for n in os.listdir(repo / "running") if n.endswith(".json")]
    assert claims == [f"{stuck}~1~w1.json"]
    claim = parse_running_name(claims[0])
    assert claim is not None
    Repository(repo, fsync=False).recover(claim.claim)  # what the next worker does on its start
    assert sorted(os.listdir(repo / "inbox")) == [f"{stuck}~2~p9.json"]


def test_two_workers_run_a_mixed_backlog_each_exactly_once(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "pool.size = 2\n", extra_processors=PROCESSORS)
    keys = [f"k{i:03d}" for i in range(120)]
    for i, key in enumerate(keys):
        put(repo, key, i % 10, at=T0 + i)
    # Copies a person made under other names, priorities inside: still one run per id.
    first = next((repo / "inbox").glob("*~p9.json"))
    drop(repo, "copy-of-first.json", first.read_text())
    workers = [start_worker(repo, w, "--until-idle") for w in ("w1", "w2")]
    try:
        for worker in workers:
            assert worker.wait(120) == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                kill_group(worker)
    assert sorted(order(repo)) == keys
    assert len(list((repo / "done").iterdir())) == len(keys)
    (quarantined,) = list((repo / "invalid").iterdir())
    assert "duplicate id" in (quarantined / "reason.txt").read_text()
    assert os.listdir(repo / "inbox") == [] and os.listdir(repo / "running") == []


def test_a_higher_priority_arriving_ends_a_long_batch_after_its_running_activity(tmp_path: Path) -> None:
    """A batch is sized from its type's pace so far: once that type slowed down, a ~p9 arriving waited
    for the whole batch (107 activities, 32 s) though the rest of the batch was still in the inbox."""
    repo = one_at_a_time(tmp_path, "durability.fsync = false\n")
    for i in range(2000):
        put(repo, f"fast{i}")
    for i in range(1000):
        put(repo, f"slow{i}", sleep=0.05)
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: "slow5" in order(repo), 60, "the slow ones to run, in batches sized for fast ones")
        put(repo, "urgent", 9)
        wait_for(lambda: "urgent" in order(repo), 60, "the urgent one")
        ran = order(repo)
        late = ran.index("urgent") - ran.index("slow5")
        assert late < 20, late  # a few, not a batch sized for activities 100 times as quick
    finally:
        kill_group(worker)


def test_a_follow_up_is_in_line_by_the_age_of_its_first_ancestor(tmp_path: Path) -> None:
    """Follow-up ids were base32 hashes, which sort after every ULID: a follow-up of the same priority
    ran after every activity submitted since, however long it had waited (for ever, under a stream)."""
    repo = one_at_a_time(tmp_path)
    start = time.time() - 60
    put(repo, "fan", at=start, type_="p.fan", children=[["child", None]])
    put(repo, "busy", at=start + 1, sleep=1.0)
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: "busy" in order(repo), 30, "the busy one to start (the child is queued by then)")
        for i in range(3):
            put(repo, f"later{i}")  # submitted now: younger than the child's first ancestor
        wait_for(lambda: len(order(repo)) == 5, 30, "all of them")
    finally:
        kill_group(worker)
    ran = order(repo)
    assert ran.index("child") < ran.index("later0") < ran.index("later1") < ran.index("later2"), ran


def test_ids_made_in_one_millisecond_still_sort_in_the_order_they_were_made() -> None:
    """Within a millisecond a ULID's random part decided: three submitted at once ran in any order."""
    ids = [new_id(1_800_000_000.0) for _ in range(1000)]
    assert ids == sorted(ids) and len(set(ids)) == 1000


def test_derived_ids_begin_with_their_first_ancestors_time() -> None:
    root = new_id(1_800_000_000.0)
    child = derived_id(root, "1")
    grandchild = derived_id(child, "x")
    assert child[:10] == grandchild[:10] == root[:10] and len(child) == len(grandchild) == 26
    assert derived_id(root, "1") == child != derived_id(root, "2")  # deterministic, and per key
    assert derived_id("invoice-7", "1")[:10] == "0000000000"  # no time in a chosen id: as old as can be
    assert all(is_valid_name(i) for i in (child, grandchild, derived_id("invoice-7", "1")))
