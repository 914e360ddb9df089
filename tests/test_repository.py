"""The repository protocol on a real directory: claim, stage, commit, finish, recover, quarantine.

No mocks: every test works on a fresh repository under ``tmp_path`` and looks at what is on disk.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spoolpipe import config
from spoolpipe.activity import Activity, ClaimName, new_id, parse_activity, parse_claim_name
from spoolpipe.record import Attempt, done_record, failed_record, follow_up_document
from spoolpipe.repository import (
    PROPERTIES_FILE,
    STATE_DIRS,
    SUPPORT_DIRS,
    Found,
    NotARepository,
    Rejected,
    Repository,
    Settled,
    Settlement,
    dumps,
)

ATTEMPT = Attempt("w1", "host", 1234, 1_795_334_400.0, 1_795_334_401.0)
LIMIT = 1 << 20


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    root = tmp_path / "repo"
    Repository.create(root, config.render_defaults())
    return Repository(root, fsync=False)


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def drop(repo: Repository, name: str, doc: Any) -> Path:
    path = repo.inbox / name
    path.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    return path


def read_ok(repo: Repository, name: str) -> Activity:
    return read_found(repo, name).activity


def read_found(repo: Repository, name: str) -> Found:
    found = repo.read(name, limit=LIMIT)
    assert isinstance(found, Found), found
    return found


def claim_file(repo: Repository, name: str, worker: str) -> ClaimName | None:
    """Read an inbox file and claim it, as a worker does."""
    found = read_found(repo, name)
    return repo.claim(name, found.activity, worker)


def claim_new(repo: Repository, activity_id: str = "job-7", worker: str = "w1", **doc: Any) -> ClaimName:
    name = f"{activity_id}.json"
    drop(repo, name, {"type": "t", **doc})
    claim = claim_file(repo, name, worker)
    assert isinstance(claim, ClaimName)
    return claim


def outcome_with_follow_ups(
    activity: Activity, keys: list[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    follow_ups = [follow_up_document(activity, "child", {"key": k}, k, None) for k in keys]
    record = done_record(activity, ATTEMPT, {"ok": True}, [f["id"] for f in follow_ups])
    return record, follow_ups


def load(path: Path) -> Any:
    return json.loads(path.read_bytes())


# -- layout ----------------------------------------------------------------------------------------


def test_create_makes_the_documented_layout(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    created = Repository.create(root, "# settings\n")
    for name in (*STATE_DIRS, *SUPPORT_DIRS):
        assert (root / name).is_dir(), name
    assert (root / PROPERTIES_FILE).read_text() == "# settings\n"
    assert set(created) >= {root / "inbox", root / "logs" / "activities", root / PROPERTIES_FILE}
    Repository(root).check()
    assert listing(root / "tmp") == []


def test_create_is_idempotent_and_never_overwrites_properties(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    Repository.create(root, config.render_defaults())
    (root / PROPERTIES_FILE).write_text("pool.size = 3\n")
    (root / "inbox" / "keep.json").write_text("{}")
    assert Repository.create(root, config.render_defaults()) == []
    assert (root / PROPERTIES_FILE).read_text() == "pool.size = 3\n"
    assert (root / "inbox" / "keep.json").read_text() == "{}"


def test_create_completes_a_partial_layout(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    Repository.create(root, "x = 1\n")
    shutil.rmtree(root / "reports")
    (root / "logs" / "workers").rmdir()
    assert sorted(Repository.create(root, "y = 2\n")) == [root / "logs" / "workers", root / "reports"]
    assert (root / PROPERTIES_FILE).read_text() == "x = 1\n"


def test_check_names_what_is_missing_and_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(NotARepository, match=r"missing inbox.*run: spoolpipe init"):
        Repository(tmp_path).check()


def test_submit_publishes_atomically_and_refuses_duplicates(repo: Repository) -> None:
    path = repo.submit(Activity("job-7", "t", {"n": 1}))
    assert path == repo.inbox / "job-7.json"
    assert read_ok(repo, "job-7.json") == Activity("job-7", "t", {"n": 1})
    assert listing(repo.tmp) == []
    assert os.path.samefile(repo.ids / "job-7", path)  # reserved before it was published
    with pytest.raises(FileExistsError):
        repo.submit(Activity("job-7", "t"))
    (repo.done / "done-1.json").write_text("{}")
    with pytest.raises(FileExistsError):
        repo.submit(Activity("done-1", "t"))


def _submit_racing(root: str, activity_id: str, priority: int, gate: Any, results: Any) -> None:
    gate.wait()
    try:
        Repository(Path(root)).submit(Activity(activity_id, "t", {"p": priority}, priority=priority))
        results.put(priority)
    except FileExistsError:
        results.put(None)


def test_submit_makes_ids_again_when_it_was_deleted(repo: Repository) -> None:
    repo.ids.rmdir()
    path = repo.submit(Activity("job-8", "t"))
    assert os.path.samefile(repo.ids / "job-8", path)


def test_of_two_submits_of_one_id_at_once_exactly_one_publishes(repo: Repository) -> None:
    """With different priorities both names were free: both submits said published, and a worker
    then quarantined one of them as a duplicate."""
    import multiprocessing

    mp = multiprocessing.get_context("fork")
    for round_ in range(20):
        activity_id = f"race-{round_}"
        gate, results = mp.Barrier(2), mp.Queue()
        racers = [
            mp.Process(target=_submit_racing, args=(str(repo.root), activity_id, p, gate, results))
            for p in (5, 9)
        ]
        for racer in racers:
            racer.start()
        outcomes = [results.get(timeout=30) for _ in racers]
        for racer in racers:
            racer.join(30)
        published = [p for p in outcomes if p is not None]
        assert len(published) == 1, (round_, outcomes)
        assert [
            n
            for n in listing(repo.inbox)
            if n.startswith(f"{activity_id}.") or n.startswith(f"{activity_id}~")
        ] == [f"{activity_id}.json" if published[0] == 5 else f"{activity_id}~p9.json"]
    assert [n for n in listing(repo.tmp) if n != ".clock-submit"] == []  # the losers' clock probe


# -- claim -----------------------------------------------------------------------------------------


def test_claim_moves_inbox_to_running_under_the_documented_name(repo: Repository) -> None:
    drop(repo, "job-7~3~1000.json", {"type": "t", "data": {"n": 1}})
    original = (repo.inbox / "job-7~3~1000.json").read_bytes()
    claim = claim_file(repo, "job-7~3~1000.json", "nas")
    assert claim == ClaimName("job-7", 3, "nas")
    assert listing(repo.inbox) == []
    assert listing(repo.running) == ["job-7~3~nas.json"]
    assert (repo.running / "job-7~3~nas.json").read_bytes() == original
    assert list(repo.claims()) == [claim]


def test_a_second_claim_of_the_same_file_fails(repo: Repository) -> None:
    drop(repo, "job-7.json", {"type": "t"})
    found = read_found(repo, "job-7.json")
    assert repo.claim("job-7.json", found.activity, "w1") == ClaimName("job-7", 1, "w1")
    assert repo.claim("job-7.json", found.activity, "w2") is None
    assert listing(repo.running) == ["job-7~1~w1.json"]


def test_a_claim_never_replaces_another_claim(repo: Repository) -> None:
    # Two inbox files carrying the same id, claimed by one worker in one scan: the second rename
    # must not overwrite the first claim (rename(2) replaces its target), or the first activity
    # vanishes without a trace and the id runs twice.
    drop(repo, "a.json", {"id": "X", "type": "t", "data": {"n": 1}})
    drop(repo, "b.json", {"id": "X", "type": "t", "data": {"n": 2}})
    assert isinstance(claim_file(repo, "a.json", "w1"), ClaimName)
    claimed_bytes = (repo.running / "X~1~w1.json").read_bytes()
    assert claim_file(repo, "b.json", "w1") is None
    assert (repo.running / "X~1~w1.json").read_bytes() == claimed_bytes
    assert listing(repo.inbox) == ["b.json"]


@pytest.mark.parametrize("how", ["renamed over", "rewritten in place"])
def test_a_claim_of_a_file_changed_since_it_was_read_goes_back_unrun(repo: Repository, how: str) -> None:
    drop(repo, "job.json", {"type": "t", "data": {"version": "old"}})
    found = read_found(repo, "job.json")
    if how == "renamed over":
        drop(repo, ".new", {"type": "t", "data": {"version": "new"}})
        os.rename(repo.inbox / ".new", repo.inbox / "job.json")
    else:
        drop(repo, "job.json", {"type": "t", "data": {"version": "newer"}})
    claim = repo.claim("job.json", found.activity, "w1")
    assert claim == ClaimName("job", 1, "w1")
    assert repo.reserve(claim, found.activity, "job.json", time.time(), stamp=found.stamp) == "changed"
    assert os.listdir(repo.ids) == []  # nothing reserved
    assert repo.put_back(claim, "job.json") is True
    assert listing(repo.running) == []
    assert read_ok(repo, "job.json").data["version"] in ("new", "newer")


def test_a_changed_claim_whose_name_was_taken_meanwhile_is_not_put_over_it(repo: Repository) -> None:
    drop(repo, "job.json", {"type": "t", "data": {"version": "old"}})
    found = read_found(repo, "job.json")
    drop(repo, "job.json", {"type": "t", "data": {"version": "new"}})
    claim = repo.claim("job.json", found.activity, "w1")
    assert claim is not None
    assert repo.reserve(claim, found.activity, "job.json", time.time(), stamp=found.stamp) == "changed"
    drop(repo, "job.json", {"type": "t", "data": {"version": "third"}})
    assert repo.put_back(ClaimName("job", 1, "w1"), "job.json") is False
    assert read_ok(repo, "job.json").data["version"] == "third"
    assert json.loads((repo.running / "job~1~w1.json").read_text())["data"]["version"] == "new"


def test_claims_lists_committed_and_uncommitted_claims_once(repo: Repository) -> None:
    a = claim_new(repo, "a")
    b = claim_new(repo, "b", worker="w2")
    c = claim_new(repo, "c", worker="w3")
    repo.stage(a, "done", {"id": "a"}, [{"id": "fa", "type": "t", "data": {}}])
    repo.stage(c, "done", {"id": "c"}, [{"id": "fc", "type": "t", "data": {}}])
    assert repo.commit(c)  # committed, not finished: still a claim to settle
    (repo.running / "not-a-claim.txt").write_text("")
    assert sorted(repo.claims(), key=lambda claim: claim.activity_id) == [a, b, c]


# -- stage, commit, finish -------------------------------------------------------------------------


def visible(repo: Repository) -> dict[str, list[str]]:
    """What anyone outside running/ can see."""
    return {d: listing(repo.root / d) for d in ("inbox", "done", "failed", "invalid")}


def claimed_activity(repo: Repository, claim: ClaimName) -> Activity:
    return parse_activity((repo.running / claim.name).read_bytes(), f"{claim.activity_id}.json")


def test_settle_publishes_follow_ups_and_the_record(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    Repository.create(root, "")
    repo = Repository(root, fsync=True)  # the real durability path, barriers included
    claim = claim_new(repo, data={"n": 1})
    activity = claimed_activity(repo, claim)
    assert repo.reserve(claim, activity, "job-7.json", time.time()) is None
    record, follow_ups = outcome_with_follow_ups(activity, ["1", "2"])

    settlement = Settlement(claim, "done", record, follow_ups)
    assert repo.settle([settlement]) == [Settled(settlement, "committed")]

    assert listing(repo.running) == []
    assert listing(repo.inbox) == sorted(f"{f['id']}.json" for f in follow_ups)
    for doc in follow_ups:
        assert load(repo.inbox / f"{doc['id']}.json") == doc
        assert read_ok(repo, f"{doc['id']}.json").id == doc["id"]
    assert listing(repo.done) == ["job-7.json"]
    assert load(repo.done / "job-7.json") == record
    assert listing(repo.tmp) == []
    assert listing(repo.ids) == []  # the id reservation goes with the claim
    assert list(repo.claims()) == []


def test_stage_shows_nothing_until_the_commit(repo: Repository) -> None:
    claim = claim_new(repo)
    record, follow_ups = outcome_with_follow_ups(claimed_activity(repo, claim), ["1"])
    staged = repo.stage(claim, "done", record, follow_ups)
    assert visible(repo) == {"inbox": [], "done": [], "failed": [], "invalid": []}
    assert (repo.running / claim.name).exists()
    assert repo.commit(claim) is True
    assert not (repo.running / claim.name).exists()
    assert visible(repo) == {"inbox": [], "done": [], "failed": [], "invalid": []}
    repo.finish([staged])
    assert visible(repo) == {
        "inbox": [f"{follow_ups[0]['id']}.json"],
        "done": ["job-7.json"],
        "failed": [],
        "invalid": [],
    }


def test_a_record_folder_deleted_by_hand_is_made_again_and_one_in_the_way_keeps_the_claim_committed(
    repo: Repository,
) -> None:
    repo.done.rmdir()
    claim = claim_new(repo)
    settlement = Settlement(claim, "done", {"id": "job-7"}, [])
    assert repo.settle([settlement]) == [Settled(settlement, "committed", restored=("done",))]
    assert listing(repo.done) == ["job-7.json"] and listing(repo.running) == []

    shutil.rmtree(repo.done)
    repo.done.write_text("a file where done/ was")
    claim = claim_new(repo, "job-8")
    [settled] = repo.settle([Settlement(claim, "done", {"id": "job-8"}, [])])
    assert settled.status == "committed" and isinstance(settled.error, NotADirectoryError)
    assert listing(repo.running) == [claim.staged("committed"), claim.staged("done")]
    repo.done.unlink()
    assert repo.recover(claim) == "finished"  # the next finish: the folder made again, the record in it
    assert listing(repo.done) == ["job-8.json"] and listing(repo.running) == []


def test_no_folder_is_made_again_where_the_repository_itself_is_away(repo: Repository) -> None:
    """A heartbeat made tmp/ and heartbeats/ in an empty mount point: the repository's mount was away."""
    for name in os.listdir(repo.root):
        path = repo.root / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    for folder in (repo.tmp, repo.heartbeats, repo.inbox, repo.done, repo.invalid, repo.ids):
        assert repo.restore(folder) is False
    assert os.listdir(repo.root) == []


def test_a_failed_outcome_goes_to_failed(repo: Repository) -> None:
    claim = claim_new(repo)
    record = failed_record(Activity("job-7", "t"), ATTEMPT, "boom", "tb")
    settlement = Settlement(claim, "failed", record, [])
    assert repo.settle([settlement]) == [Settled(settlement, "committed")]
    assert listing(repo.failed) == ["job-7.json"]
    assert load(repo.failed / "job-7.json") == record
    assert listing(repo.done) == []
    assert listing(repo.running) == []


def test_a_discarded_staging_leaves_only_the_claim(repo: Repository) -> None:
    claim = claim_new(repo)
    repo.stage(claim, "done", *outcome_with_follow_ups(Activity("job-7", "t"), ["1", "2", "3"]))
    repo.discard(claim)
    assert listing(repo.running) == [claim.name]
    record, follow_ups = outcome_with_follow_ups(Activity("job-7", "t"), ["1"])
    assert [s.status for s in repo.settle([Settlement(claim, "done", record, follow_ups)])] == ["committed"]
    assert listing(repo.inbox) == [f"{follow_ups[0]['id']}.json"]
    assert listing(repo.running) == []


def test_settle_commits_a_batch_and_reports_a_fenced_claim_as_lost(repo: Repository) -> None:
    kept, taken_over = claim_new(repo, "kept"), claim_new(repo, "taken")
    batch = [
        Settlement(claim, "done", *outcome_with_follow_ups(claimed_activity(repo, claim), ["1"]))
        for claim in (kept, taken_over)
    ]
    # The owner is presumed dead meanwhile; another worker recovers one claim as its next attempt.
    assert repo.recover(taken_over) == "requeued"
    assert [s.status for s in repo.settle(batch)] == ["committed", "lost"]
    assert listing(repo.done) == ["kept.json"]
    assert sorted(listing(repo.inbox)) == sorted([f"{batch[0].follow_ups[0]['id']}.json", "taken~2.json"])
    assert listing(repo.running) == []  # the lost claim's staged files are gone too


def test_settle_an_outcome_that_cannot_be_encoded_leaves_its_claim_unwritten(repo: Repository) -> None:
    good, bad = claim_new(repo, "good"), claim_new(repo, "bad")
    broken = Settlement(bad, "done", {"id": "bad", "result": {1, 2}}, [{"id": "child", "type": "t"}])
    fine = Settlement(good, "done", {"id": "good"}, [])
    [unwritten, committed] = repo.settle([broken, fine])
    assert (unwritten.status, type(unwritten.error)) == ("unwritten", TypeError)
    assert committed == Settled(fine, "committed")
    # Nothing of the broken outcome was published or stays staged; its claim is there to release.
    assert listing(repo.running) == [bad.name]
    assert listing(repo.inbox) == []
    assert listing(repo.done) == ["good.json"]


def test_commit_after_the_claim_was_recovered_is_fenced(repo: Repository) -> None:
    claim = claim_new(repo)
    activity = Activity("job-7", "t")
    repo.stage(claim, "done", *outcome_with_follow_ups(activity, ["1"]))
    # The owner is presumed dead; another worker recovers the uncommitted claim.
    assert repo.recover(claim) == "requeued"
    assert listing(repo.inbox) == ["job-7~2.json"]
    assert listing(repo.running) == []
    # The owner wakes up, stages its outcome again and tries to commit it.
    staged = repo.stage(claim, "done", *outcome_with_follow_ups(activity, ["1"]))
    assert repo.commit(claim) is False
    repo.finish([staged])  # even a confused owner that finishes anyway publishes nothing
    assert listing(repo.inbox) == ["job-7~2.json"]
    assert listing(repo.done) == []
    assert listing(repo.running) == []


def test_commit_after_a_release_is_fenced(repo: Repository) -> None:
    claim = claim_new(repo)
    repo.stage(claim, "done", *outcome_with_follow_ups(Activity("job-7", "t"), ["1"]))
    assert repo.release(claim, 1, None)
    assert repo.commit(claim) is False
    assert listing(repo.running) == []
    assert listing(repo.inbox) == ["job-7~1.json"]


def test_commit_is_idempotent_once_committed(repo: Repository) -> None:
    claim = claim_new(repo)
    staged = repo.stage(claim, "done", {"id": "job-7"}, [])
    assert repo.commit(claim) is True
    assert repo.commit(claim) is True  # an NFS client retrying the rename
    repo.finish([staged])
    assert listing(repo.done) == ["job-7.json"]
    assert listing(repo.running) == []


def test_recover_finishes_a_committed_claim_and_follow_ups_appear_once(repo: Repository) -> None:
    claim = claim_new(repo)
    record, follow_ups = outcome_with_follow_ups(Activity("job-7", "t"), ["1", "2", "3"])
    staged = repo.stage(claim, "done", record, follow_ups)
    repo.durability.barrier()
    assert repo.commit(claim)
    # ...and the worker crashes before finish. The committed claim is still there to settle:
    assert list(repo.claims()) == [claim]

    assert repo.recover(claim) == "finished"
    published = sorted(f"{f['id']}.json" for f in follow_ups)
    assert listing(repo.inbox) == published
    assert listing(repo.done) == ["job-7.json"]
    assert listing(repo.running) == []

    # A follow-up gets claimed meanwhile; finishing again must not publish anything a second time.
    child = follow_ups[0]["id"]
    assert isinstance(claim_file(repo, f"{child}.json", "w2"), ClaimName)
    repo.finish([staged])
    repo.finish([staged])
    assert repo.recover(claim) == "gone"
    assert listing(repo.inbox) == [p for p in published if p != f"{child}.json"]
    assert listing(repo.running) == [f"{child}~1~w2.json"]
    assert load(repo.done / "job-7.json") == record
    assert list(repo.claims()) == [ClaimName(child, 1, "w2")]


def test_recover_completes_what_a_finisher_that_died_half_way_left(repo: Repository) -> None:
    claim = claim_new(repo)
    record, follow_ups = outcome_with_follow_ups(Activity("job-7", "t"), ["1", "2"])
    staged = repo.stage(claim, "done", record, follow_ups)
    assert repo.commit(claim)
    # The first finisher published one follow-up, then died.
    first = staged.follow_ups[0]
    os.rename(repo.running / claim.staged("follow-up", first), repo.inbox / f"{first}.json")
    assert repo.recover(claim) == "finished"
    assert listing(repo.inbox) == sorted(f"{f['id']}.json" for f in follow_ups)
    assert listing(repo.done) == ["job-7.json"]
    assert listing(repo.running) == []


def test_recover_completes_a_publication_interrupted_between_link_and_unlink(repo: Repository) -> None:
    # A finisher on a client without renameat2 (NFS) moves by link + unlink, and died in between.
    claim = claim_new(repo)
    record, follow_ups = outcome_with_follow_ups(Activity("job-7", "t"), ["1"])
    repo.stage(claim, "done", record, follow_ups)
    assert repo.commit(claim)
    os.link(repo.running / claim.staged("done"), repo.done / "job-7.json")
    assert repo.recover(claim) == "finished"
    assert listing(repo.done) == ["job-7.json"]
    assert load(repo.done / "job-7.json") == record
    assert listing(repo.invalid) == []  # the record's own second name is not "another file there"
    assert listing(repo.running) == []


def test_finish_gives_up_only_its_own_reservation(repo: Repository) -> None:
    first = claim_new(repo)
    assert repo.reserve(first, claimed_activity(repo, first), "job-7.json", time.time()) is None
    staged = repo.stage(first, "done", {"id": "job-7"}, [])
    assert repo.commit(first)
    # Meanwhile the reservation was deleted by hand and another copy of the id reserved it.
    os.unlink(repo.ids / "job-7")
    drop(repo, "copy.json", {"id": "job-7", "type": "t"})
    second = claim_file(repo, "copy.json", "w2")
    assert isinstance(second, ClaimName)
    assert repo.reserve(second, claimed_activity(repo, second), "copy.json", time.time()) is None
    repo.finish([staged])
    assert listing(repo.done) == ["job-7.json"]
    assert os.path.samestat(os.lstat(repo.ids / "job-7"), os.lstat(repo.running / second.name))


def test_recover_requeues_an_uncommitted_claim_as_the_next_attempt(repo: Repository) -> None:
    drop(repo, "job-7~2~1000.json", {"type": "t", "data": {"n": 1}})
    claim = claim_file(repo, "job-7~2~1000.json", "w1")
    assert isinstance(claim, ClaimName)
    repo.stage(claim, "done", *outcome_with_follow_ups(Activity("job-7", "t", {}, 2), ["1"]))
    assert repo.recover(claim) == "requeued"
    assert listing(repo.inbox) == ["job-7~3.json"]
    assert listing(repo.running) == []
    activity = read_ok(repo, "job-7~3.json")
    assert (activity.id, activity.attempt, activity.not_before, dict(activity.data)) == (
        "job-7",
        3,
        None,
        {"n": 1},
    )


def test_recover_of_a_claim_that_is_gone_drops_its_staged_files(repo: Repository, tmp_path: Path) -> None:
    claim = claim_new(repo)
    repo.stage(claim, "done", *outcome_with_follow_ups(Activity("job-7", "t"), ["1"]))
    os.rename(repo.running / claim.name, tmp_path / "elsewhere.json")
    assert repo.recover(claim) == "gone"
    assert listing(repo.running) == []
    assert listing(repo.inbox) == []
    assert repo.recover(ClaimName("ghost", 1, "w9")) == "gone"


@pytest.mark.parametrize(
    ("attempt", "not_before", "expected"),
    [
        (1, None, "job-7~1.json"),
        (3, None, "job-7~3.json"),
        (4, 1_795_334_400.5, "job-7~4~1795334400500.json"),
    ],
)
def test_release_puts_the_claim_back_with_the_given_attempt(
    repo: Repository, attempt: int, not_before: float | None, expected: str
) -> None:
    name = "job-7.json" if attempt == 1 else f"job-7~{attempt}.json"
    drop(repo, name, {"type": "t"})
    claim = claim_file(repo, name, "w1")
    assert isinstance(claim, ClaimName)
    assert repo.release(claim, claim.attempt, not_before) is True
    assert listing(repo.inbox) == [expected]
    assert listing(repo.running) == []
    again = read_ok(repo, expected)
    assert again.attempt == attempt
    assert again.not_before == (None if not_before is None else pytest.approx(not_before))
    assert repo.release(claim, claim.attempt, None) is False


# -- read ------------------------------------------------------------------------------------------


def _read_in_thread(repo: Repository, name: str, **kwargs: Any) -> Any:
    """``read`` must return promptly; if it blocks (a FIFO opened without O_NONBLOCK) fail, don't hang."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(repo.read(name, **kwargs)), daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():
        path = repo.inbox / name
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK))  # unblock the reader
        pytest.fail(f"read({name!r}) blocked")
    return result[0]


def test_read_a_valid_file(repo: Repository) -> None:
    drop(repo, "job-7~2~1000.json", {"type": "t", "data": {"n": 1}})
    assert read_ok(repo, "job-7~2~1000.json") == Activity("job-7", "t", {"n": 1}, 2, 1.0)


def test_read_of_a_missing_file_is_none(repo: Repository) -> None:
    assert repo.read("nothing.json", limit=LIMIT) is None


def test_read_never_blocks_on_a_fifo(repo: Repository) -> None:
    os.mkfifo(repo.inbox / "pipe.json")
    found = _read_in_thread(repo, "pipe.json", limit=LIMIT)
    assert isinstance(found, Rejected)
    assert "pipe.json" in found.reason
    assert "FIFO" in found.reason


def test_read_never_follows_a_symlink(repo: Repository, tmp_path: Path) -> None:
    target = tmp_path / "outside.json"
    target.write_text(json.dumps({"type": "t"}))
    os.symlink(target, repo.inbox / "link.json")
    os.mkfifo(tmp_path / "outside.fifo")
    os.symlink(tmp_path / "outside.fifo", repo.inbox / "fifo-link.json")
    for name in ("link.json", "fifo-link.json"):
        found = _read_in_thread(repo, name, limit=LIMIT)
        assert isinstance(found, Rejected)
        assert "symbolic link" in found.reason
    assert target.read_text() == json.dumps({"type": "t"})


@pytest.mark.parametrize("kind", ["directory", "socket"])
def test_read_of_other_kinds_is_rejected(repo: Repository, kind: str) -> None:
    import socket

    path = repo.inbox / "thing.json"
    if kind == "directory":
        path.mkdir()
        expected = "a directory"
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()
        expected = "a socket"
    found = repo.read("thing.json", limit=LIMIT)
    assert isinstance(found, Rejected)
    assert expected in found.reason


def test_read_respects_the_size_limit(repo: Repository) -> None:
    limit = 100
    body = b'{"type": "t"}'
    drop(repo, "fits.json", body + b" " * (limit - len(body)))
    drop(repo, "big.json", body + b" " * (limit + 1 - len(body)))
    assert isinstance(repo.read("fits.json", limit=limit), Found)
    found = repo.read("big.json", limit=limit)
    assert isinstance(found, Rejected)
    assert "limits.activity-bytes=100" in found.reason
    assert "big.json" in found.reason


def test_an_unparsable_file_is_rejected_with_a_stamp_so_the_worker_can_wait(repo: Repository) -> None:
    path = drop(repo, "half.json", b'{"type": "t", "da')
    found = repo.read("half.json", limit=LIMIT)
    assert isinstance(found, Rejected)
    assert found.reason.startswith("half.json: malformed JSON at line 1")
    st = path.stat()
    assert found.stamp == (st.st_ino, st.st_size, st.st_mtime_ns)
    # Finished by its writer in the meantime: it is simply an activity.
    path.write_text('{"type": "t", "data": {}}')
    assert isinstance(repo.read("half.json", limit=LIMIT), Found)


def test_an_invalid_but_complete_file_also_carries_a_stamp(repo: Repository) -> None:
    drop(repo, "bad.json", {"type": "no spaces allowed"})
    found = repo.read("bad.json", limit=LIMIT)
    assert isinstance(found, Rejected)
    assert "bad type" in found.reason
    assert found.stamp is not None


def test_what_can_never_become_valid_has_no_stamp(repo: Repository) -> None:
    (repo.inbox / "dir").mkdir()
    drop(repo, "big.json", b" " * (LIMIT + 1))
    for name in ("dir", "big.json"):
        found = repo.read(name, limit=LIMIT)
        assert isinstance(found, Rejected) and found.stamp is None


# -- quarantine --------------------------------------------------------------------------------------


def _quarantined(repo: Repository, name: str, reason: str) -> Path:
    final = repo.quarantine(repo.inbox, name, reason)
    assert final is not None
    assert final.parent == repo.invalid
    assert final.name.startswith(f"{name}~")
    assert len(final.name) == len(name) + 1 + 26
    assert listing(final) == sorted([name, "reason.txt"])
    assert (final / "reason.txt").read_text() == reason + "\n"
    assert not os.path.lexists(repo.inbox / name)
    assert listing(repo.tmp) == []
    return final


def test_quarantine_a_file(repo: Repository) -> None:
    drop(repo, "junk.json", b"not json")
    final = _quarantined(repo, "junk.json", "junk.json: malformed JSON at line 1 column 1")
    assert (final / "junk.json").read_bytes() == b"not json"


def test_quarantine_a_directory(repo: Repository) -> None:
    (repo.inbox / "folder").mkdir()
    (repo.inbox / "folder" / "inside.json").write_text("{}")
    final = _quarantined(repo, "folder", "folder is a directory, not an activity file")
    assert (final / "folder" / "inside.json").read_text() == "{}"


def test_quarantine_a_fifo(repo: Repository) -> None:
    os.mkfifo(repo.inbox / "pipe")
    final = _quarantined(repo, "pipe", "pipe is a FIFO, not an activity file")
    assert stat.S_ISFIFO(os.lstat(final / "pipe").st_mode)


def test_quarantine_moves_the_symlink_itself_and_leaves_the_target(repo: Repository, tmp_path: Path) -> None:
    target = tmp_path / "precious.json"
    target.write_text('{"type": "t"}')
    os.symlink(target, repo.inbox / "link.json")
    final = _quarantined(repo, "link.json", "link.json is a symbolic link")
    assert os.path.islink(final / "link.json")
    assert os.readlink(final / "link.json") == str(target)
    assert target.read_text() == '{"type": "t"}'
    assert listing(tmp_path) == sorted(["precious.json", "repo"])


def test_quarantine_a_dangling_symlink(repo: Repository) -> None:
    os.symlink("/nonexistent/target", repo.inbox / "dangling.json")
    final = _quarantined(repo, "dangling.json", "dangling")
    assert os.readlink(final / "dangling.json") == "/nonexistent/target"


def test_quarantine_of_something_already_gone_returns_none(repo: Repository) -> None:
    assert repo.quarantine(repo.inbox, "gone.json", "whatever") is None
    assert listing(repo.invalid) == []
    assert listing(repo.tmp) == []


def test_quarantining_the_same_name_twice_keeps_both(repo: Repository) -> None:
    for content in (b"one", b"two"):
        drop(repo, "junk.json", content)
        assert repo.quarantine(repo.inbox, "junk.json", "junk") is not None
    contents = sorted((repo.invalid / d / "junk.json").read_bytes() for d in os.listdir(repo.invalid))
    assert contents == [b"one", b"two"]


# -- sweep_tmp ---------------------------------------------------------------------------------------


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def test_sweep_moves_an_interrupted_quarantine_into_invalid(repo: Repository) -> None:
    token = new_id()
    staging = repo.tmp / f"quarantine-{token}"
    staging.mkdir()
    (staging / "reason.txt").write_text("junk.json: malformed\n")
    (staging / "junk.json").write_text("junk")
    _age(staging, 120)
    repo.sweep_tmp(time.time())
    assert listing(repo.tmp) == []
    assert listing(repo.invalid) == [f"recovered~{token}"]
    assert listing(repo.invalid / f"recovered~{token}") == ["junk.json", "reason.txt"]
    assert (repo.invalid / f"recovered~{token}" / "junk.json").read_text() == "junk"


def test_sweep_leaves_a_young_quarantine_alone(repo: Repository) -> None:
    staging = repo.tmp / f"quarantine-{new_id()}"
    staging.mkdir()
    (staging / "junk.json").write_text("junk")
    repo.sweep_tmp(time.time())
    assert listing(repo.tmp) == [staging.name]
    assert listing(repo.invalid) == []


def test_sweep_drops_a_quarantine_that_never_got_its_payload(repo: Repository) -> None:
    staging = repo.tmp / f"quarantine-{new_id()}"
    staging.mkdir()
    (staging / "reason.txt").write_text("x\n")
    _age(staging, 120)
    repo.sweep_tmp(time.time())
    assert listing(repo.tmp) == []
    assert listing(repo.invalid) == []


def test_sweep_deletes_old_temp_files_only(repo: Repository) -> None:
    old = repo.tmp / f"submit.{new_id()}.tmp"
    old.write_text("{}")
    _age(old, 2 * 3600)
    young = repo.tmp / f"submit.{new_id()}.tmp"
    young.write_text("{}")
    repo.sweep_tmp(time.time())
    assert listing(repo.tmp) == [young.name]
    assert listing(repo.inbox) == []


def test_sweep_deletes_old_hidden_temp_files_of_reports_only(repo: Repository) -> None:
    """A failure processor killed while writing reports/ID.txt left its .ID.txt.RANDOM.tmp for good."""
    (repo.root / "reports").mkdir(exist_ok=True)
    old = repo.root / "reports" / ".P1.txt.0123456789ab.tmp"
    young = repo.root / "reports" / ".P2.txt.0123456789ab.tmp"
    report = repo.root / "reports" / "P3.txt"
    for path in (old, young, report):
        path.write_text("Activity P failed")
    for path in (old, report):
        _age(path, 2 * 3600)
    repo.sweep_tmp(time.time())
    assert listing(repo.root / "reports") == [young.name, report.name]


# -- retry_failed ------------------------------------------------------------------------------------


def test_retry_failed_moves_the_record_back_as_attempt_one(repo: Repository) -> None:
    record = failed_record(Activity("job-7", "t", {"n": 1}, 5), ATTEMPT, "boom", "tb")
    (repo.failed / "job-7.json").write_bytes(dumps(record))
    assert repo.retry_failed("job-7") == repo.inbox / "job-7.json"
    assert listing(repo.failed) == []
    again = read_ok(repo, "job-7.json")
    assert again == Activity("job-7", "t", {"n": 1}, 1, None, history=again.history)
    assert [h["reason"] for h in again.history] == ["boom"]
    assert load(repo.inbox / "job-7.json")["spoolpipe"] == {"history": [dict(again.history[0])]}
    assert "traceback" not in again.history[0]


def test_retry_failed_never_replaces_an_inbox_file(repo: Repository) -> None:
    record = failed_record(Activity("job-7", "t", {"n": 1}, 5), ATTEMPT, "boom", "tb")
    (repo.failed / "job-7.json").write_bytes(dumps(record))
    drop(repo, "job-7.json", {"type": "other"})
    with pytest.raises(FileExistsError):
        repo.retry_failed("job-7")
    assert load(repo.inbox / "job-7.json") == {"type": "other"}
    assert listing(repo.failed) == ["job-7.json"]


def test_retry_failed_never_deletes_the_record_of_the_retried_run(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between publishing the activity and dropping the old record, a worker ran it, failed it again
    and wrote its new failed/ID.json (deleting the old one itself): retry then deleted that record,
    and the activity was gone from every folder."""
    old = failed_record(Activity("job-7", "t", {"n": 1}, 5), ATTEMPT, "boom", "tb")
    (repo.failed / "job-7.json").write_bytes(dumps(old))
    new = failed_record(Activity("job-7", "t", {"n": 1}, 1), ATTEMPT, "boom again", "tb")
    publish = repo._publish_new

    def a_worker_runs_it_at_once(*args: Any) -> Path:
        published = publish(*args)
        published.unlink()  # claimed, run and failed by a fast worker
        (repo.failed / "job-7.json").unlink()
        (repo.failed / "job-7.json").write_bytes(dumps(new))
        return published

    monkeypatch.setattr(repo, "_publish_new", a_worker_runs_it_at_once)
    repo.retry_failed("job-7")
    assert listing(repo.failed) == ["job-7.json"]
    assert load(repo.failed / "job-7.json")["spoolpipe"]["reason"] == "boom again"
    assert listing(repo.tmp) == []


def test_retry_failed_of_an_unknown_id(repo: Repository) -> None:
    with pytest.raises(FileNotFoundError):
        repo.retry_failed("nope")


def test_count_ignores_temp_names(repo: Repository) -> None:
    for name in ("a.json", "b.json", ".c.json", "d.json.tmp", "e.part"):
        drop(repo, name, b"{}")
    assert repo.count(repo.inbox) == 2
    assert sorted(repo.inbox_entries()) == ["a.json", "b.json"]
    assert repo.inbox_entries()["a.json"] == os.lstat(repo.inbox / "a.json").st_ino


# -- a write that fails (disk full) ------------------------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, so writes fail with a real ENOSPC. Needs root and CAP_SYS_ADMIN."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path, leave: int) -> None:
    """Fill the file system of ``directory`` until at most ``leave`` bytes are free."""
    chunk = b"\0" * 4096
    with open(directory / "filler", "wb") as f, contextlib.suppress(OSError):
        while True:
            st = os.statvfs(directory)
            if st.f_bavail * st.f_frsize <= leave:
                break
            f.write(chunk)
            f.flush()


def test_a_settle_that_hits_a_full_disk_leaves_no_partial_file(tiny_fs: Path) -> None:
    root = tiny_fs / "repo"
    Repository.create(root, "")
    repo = Repository(root, fsync=True)
    claim = claim_new(repo)
    activity = Activity("job-7", "t")
    follow_ups = [follow_up_document(activity, "child", {"i": 1}, "1", None)]
    record = done_record(activity, ATTEMPT, {"blob": "x" * 64_000}, [follow_ups[0]["id"]])
    _fill(tiny_fs / "repo", leave=16 * 1024)

    [settled] = repo.settle([Settlement(claim, "done", record, follow_ups)])
    assert settled.status == "unwritten"
    assert isinstance(settled.error, OSError) and settled.error.errno == errno.ENOSPC
    # Nothing staged stays behind, half-written or whole; the claim is untouched...
    assert listing(repo.running) == [claim.name]
    assert listing(repo.inbox) == []
    # ...so the activity can be put back and run again.
    assert repo.release(claim, claim.attempt, None)
    assert listing(repo.inbox) == ["job-7~1.json"]
    assert listing(repo.running) == []
    assert listing(repo.done) == []


def test_a_submit_that_hits_a_full_disk_leaves_nothing(tiny_fs: Path) -> None:
    root = tiny_fs / "repo"
    Repository.create(root, "")
    repo = Repository(root, fsync=True)
    _fill(tiny_fs / "repo", leave=8 * 1024)
    with pytest.raises(OSError) as info:
        repo.submit(Activity("big", "t", {"blob": "x" * 64_000}))
    assert info.value.errno == errno.ENOSPC
    assert listing(repo.inbox) == [] and listing(repo.ids) == []
    assert listing(repo.tmp) == []


def test_claim_name_of_a_claim_round_trips_through_the_running_directory(repo: Repository) -> None:
    claim = claim_new(repo, "01M80FE64HTEC8XYP509KA1G1P", worker="nas.local")
    [name] = listing(repo.running)
    assert parse_claim_name(name) == claim


# -- moves where the file system has no RENAME_NOREPLACE (NFS, SMB, GlusterFS) -----------------------


@pytest.fixture
def without_renameat2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Take the fallback of durable's moves (link + unlink), as on GlusterFS: no RENAME_NOREPLACE."""
    from spoolpipe import durable

    monkeypatch.setattr(durable, "_renameat2", None)
    return tmp_path


def test_the_fallback_moves_files_and_directories_and_never_replaces(without_renameat2: Path) -> None:
    from spoolpipe.durable import move_noreplace, take

    base = without_renameat2
    (base / "file").write_text("mine")
    (base / "dir").mkdir()
    (base / "dir" / "inside").write_text("in")
    (base / "taken").write_text("theirs")
    (base / "taken-dir").mkdir()
    for move in (move_noreplace, take):
        with pytest.raises(FileExistsError):
            move(base / "file", base / "taken")
        with pytest.raises(FileExistsError):
            move(base / "dir", base / "taken-dir")
    assert (base / "taken").read_text() == "theirs" and os.listdir(base / "taken-dir") == []
    move_noreplace(base / "file", base / "moved")
    move_noreplace(base / "dir", base / "moved-dir")
    assert (base / "moved").read_text() == "mine" and not (base / "file").exists()
    assert (base / "moved-dir" / "inside").read_text() == "in" and not (base / "dir").exists()


def test_quarantine_works_through_the_fallback(without_renameat2: Path) -> None:
    root = without_renameat2 / "repo"
    Repository.create(root, "")
    repo = Repository(root, fsync=False)
    (repo.inbox / "junk.json").write_text("{")
    (repo.inbox / "folder").mkdir()
    for name in ("junk.json", "folder"):
        entry = repo.quarantine(repo.inbox, name, f"{name}: junk")
        assert entry is not None and (entry / name).exists(), name
    assert listing(repo.inbox) == [] and os.listdir(repo.tmp) == []


def test_spoolpipe_submit_on_a_full_disk_says_so_with_exit_1(tiny_fs: Path) -> None:
    """It printed a traceback and "crashed (a bug in spoolpipe)", exit 70."""
    root = tiny_fs / "repo"
    Repository.create(root, "")
    _fill(root, leave=8 * 1024)
    run = subprocess.run(
        [sys.executable, "-m", "spoolpipe", "submit", str(root), "t.x", json.dumps({"blob": "x" * 64_000})],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 1, run
    assert "spoolpipe submit: cannot publish the activity:" in run.stderr and "No space left" in run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""
    assert listing(root / "inbox") == [] and listing(root / "ids") == []


@pytest.mark.parametrize("step", [0.4, -0.4])
def test_small_steps_of_the_local_clock_that_add_up_are_noticed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: float
) -> None:
    """Each call was compared with the one before only: 20 steps of 0.4 s (under the 0.5 s a step
    must be) made the shared clock 8 s wrong until its next probe, 30 s later, and not_before work
    started early."""
    from spoolpipe.repository import SharedClock

    real = time.time
    shift = [0.0]
    monkeypatch.setattr(time, "time", lambda: real() + shift[0])  # this process's clock only
    clock = SharedClock(tmp_path / "probe")
    clock.now()  # probed: the file system's clock, the real one here
    for _ in range(20):
        shift[0] += step
        clock.now()
    assert abs(clock.now() - real()) < 0.3
