"""The intake on a real inbox, and what an outcome means (pure): both called directly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from spoolpipe.activity import Activity
from spoolpipe.intake import Intake
from spoolpipe.outcome import Done, Failed, Outcome, Retry, decide
from spoolpipe.repository import Found, Repository
from spoolpipe.retry import RetryPolicy

NOW = 1_800_000_000.0


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    Repository.create(tmp_path / "repo", "")
    return Repository(tmp_path / "repo", fsync=False)


def drop(repo: Repository, name: str, doc: dict[str, object] | str) -> None:
    (repo.inbox / name).write_text(doc if isinstance(doc, str) else json.dumps(doc))


def intake_of(repo: Repository) -> Intake:
    intake = Intake(repo, limit=lambda: 1 << 20, settle=lambda: 0.0)
    intake.rescan()
    return intake


def take(intake: Intake, want: int, *, admit=lambda a: True, handled=lambda t: t != "other", now=NOW):  # type: ignore[no-untyped-def]
    quarantined: list[str] = []
    verdict = lambda a: "run" if admit(a) else "type waits"  # noqa: E731 - a refusal: by its type
    found = intake.take(now, verdict, handled, want, lambda name, reason: quarantined.append(name) or True)
    for name, _ in found:
        intake.forget(name)
    return [name for name, _ in found], quarantined


def test_files_are_read_only_when_their_turn_comes(repo: Repository) -> None:
    for i in range(5):
        drop(repo, f"a{i}.json", {"type": "t"})
    intake = intake_of(repo)
    assert len(intake) == 5
    for i in range(2, 5):
        (repo.inbox / f"a{i}.json").write_text("not json yet")  # never looked at below
    assert take(intake, 2) == (["a0.json", "a1.json"], [])


def test_delayed_and_unhandled_entries_wait_without_blocking_the_rest(repo: Repository) -> None:
    drop(repo, "a-later.json", {"type": "t", "not_before": "2030-01-01T00:00:00Z"})
    drop(repo, "b-other.json", {"type": "other"})
    drop(repo, "c-now.json", {"type": "t"})
    drop(repo, "d-retry~2~1700000000000.json", {"id": "d-retry", "type": "t"})  # due long ago
    drop(repo, "e-retry~3~1900000000000.json", {"id": "e-retry", "type": "t"})  # due after NOW
    intake = intake_of(repo)
    assert take(intake, 10) == (["c-now.json", "d-retry~2~1700000000000.json"], [])
    assert sorted(d.id for d in intake.delayed(NOW, lambda t: t != "other")) == ["a-later", "e-retry"]
    assert intake.next_due() == 1_893_456_000.0  # 2030-01-01, the earliest of the two
    assert take(intake, 10, now=1_950_000_000.0)[0] == ["a-later.json", "e-retry~3~1900000000000.json"]
    intake.reconsider(lambda t: True)  # the configuration now handles "other"
    assert take(intake, 10, handled=lambda t: True)[0] == ["b-other.json"]


def test_an_entry_refused_for_capacity_keeps_its_place_and_is_read_again_at_its_turn(
    repo: Repository,
) -> None:
    drop(repo, "a.json", {"type": "busy"})
    drop(repo, "a2.json", {"type": "busy"})
    drop(repo, "b.json", {"type": "t"})
    intake = intake_of(repo)
    assert take(intake, 10, admit=lambda a: a.type != "busy")[0] == ["b.json"]
    os.unlink(repo.inbox / "a.json")  # claimed by another worker meanwhile: not handed out
    assert take(intake, 10)[0] == ["a2.json"]


def test_arrivals_join_without_a_listing_and_vanished_names_leave_at_the_next(repo: Repository) -> None:
    intake = intake_of(repo)
    drop(repo, "new.json", {"type": "t"})
    drop(repo, "gone.json", {"type": "t"})
    intake.add(["new.json", "gone.json", ".hidden.json", "x.part"])
    assert len(intake) == 2
    os.unlink(repo.inbox / "gone.json")
    intake.rescan()
    assert len(intake) == 1
    assert take(intake, 10)[0] == ["new.json"]


def test_junk_is_quarantined_once_settled(repo: Repository) -> None:
    drop(repo, "junk.json", "{")
    (repo.inbox / "folder.json").mkdir()
    intake = intake_of(repo)
    assert take(intake, 10) == ([], ["folder.json", "junk.json"])
    assert intake.unsettled() == 0


def test_a_half_written_file_waits_for_the_settle_time(repo: Repository) -> None:
    drop(repo, "half.json", '{"type": ')
    intake = Intake(repo, limit=lambda: 1 << 20, settle=lambda: 3600.0)
    intake.rescan()
    now = os.stat(repo.inbox / "half.json").st_mtime + 10
    assert take(intake, 10, now=now) == ([], [])
    assert intake.unsettled() == 1
    drop(repo, "half.json", {"type": "t"})  # the writer finished
    intake.add(["half.json"])  # inotify: closed after writing
    assert take(intake, 10, now=now) == (["half.json"], [])
    assert intake.unsettled() == 0


POLICY = RetryPolicy(max_attempts=3, backoff_seconds=2.0, backoff_max_seconds=600.0, jitter=0.0)


@pytest.mark.parametrize(
    ("status", "attempt", "decision"),
    [
        ("ok", 1, Done()),
        ("ok", 3, Done()),
        ("fatal", 1, Failed()),
        ("error", 1, Retry(2.0)),
        ("error", 2, Retry(4.0)),
        ("error", 3, Failed()),
    ],
)
def test_what_an_outcome_means(status: str, attempt: int, decision: object) -> None:
    assert decide(Outcome(status), attempt, POLICY) == decision  # type: ignore[arg-type]


def test_an_activity_is_what_the_intake_hands_out(repo: Repository) -> None:
    drop(repo, "a.json", {"type": "t", "data": {"n": 1}})
    intake = intake_of(repo)
    found = intake.take(NOW, lambda a: "run", lambda t: True, 1, lambda n, r: True)
    st = os.stat(repo.inbox / "a.json")
    # With the stamp of the file it was read from: the claim checks it took that very file.
    assert found == [("a.json", Found(Activity("a", "t", {"n": 1}), (st.st_ino, st.st_size, st.st_mtime_ns)))]


def test_a_delayed_file_rewritten_in_place_is_read_again_when_it_is_noticed(repo: Repository) -> None:
    """Its entry waited for the not_before it no longer has, until the worker restarted."""
    drop(repo, "later.json", {"type": "t", "not_before": "2099-01-01T00:00:00Z"})
    intake = intake_of(repo)
    assert take(intake, 10) == ([], [])
    drop(repo, "later.json", {"type": "t"})  # now due at once
    intake.add(["later.json"])  # as inotify reports a file written in place
    assert take(intake, 10) == (["later.json"], [])


def _publish(repo: Repository, name: str, doc: dict[str, object]) -> None:
    """Replace ``name`` the documented way: write a temp file, rename it over the old one."""
    tmp = repo.inbox / f".{name}.tmp"
    tmp.write_text(json.dumps(doc))
    os.rename(tmp, repo.inbox / name)


@pytest.mark.parametrize("noticed_by", ["inotify", "listing"])
def test_a_file_of_a_type_nobody_runs_replaced_by_a_runnable_one_runs(
    repo: Repository, noticed_by: str
) -> None:
    """A typo in the type, fixed by publishing the file again under its name, waited until a restart."""
    drop(repo, "job.json", {"type": "other"})  # nobody here runs "other"
    intake = intake_of(repo)
    assert take(intake, 10) == ([], [])
    _publish(repo, "job.json", {"type": "t"})
    if noticed_by == "inotify":
        intake.add(["job.json"])
    else:  # polling only, or another machine's rename on NFS: the next listing sees a new file
        intake.rescan()
    assert take(intake, 10) == (["job.json"], [])


def test_a_delayed_file_replaced_by_a_due_one_is_noticed_by_the_next_listing(repo: Repository) -> None:
    drop(repo, "later.json", {"type": "t", "not_before": "2099-01-01T00:00:00Z"})
    intake = intake_of(repo)
    assert take(intake, 10) == ([], [])
    _publish(repo, "later.json", {"type": "t"})
    intake.rescan()
    assert take(intake, 10) == (["later.json"], [])


def test_a_listing_does_not_read_again_what_it_set_aside_unchanged(repo: Repository) -> None:
    """Files of types other machines run may be many: a listing costs no read of them."""
    drop(repo, "job.json", {"type": "other"})
    drop(repo, "later.json", {"type": "t", "not_before": "2099-01-01T00:00:00Z"})
    intake = intake_of(repo)
    assert take(intake, 10) == ([], [])
    reads: list[str] = []
    read = repo.read
    repo.read = lambda name, *, limit: reads.append(name) or read(name, limit=limit)  # type: ignore[method-assign]
    for _ in range(3):
        intake.rescan()
        assert take(intake, 10) == ([], [])
    assert reads == []
    assert intake.set_aside() == {"other"}


def test_a_type_at_capacity_never_hides_other_types_however_many_of_it_wait(repo: Repository) -> None:
    """Entries refused for capacity went back to the front of the line, and a call looked past at most
    256 of them: with more of a type at its concurrency ahead, no other type ran at all."""
    for i in range(600):
        drop(repo, f"a{i:04}~p9.json", {"type": "a", "priority": 9})
    drop(repo, "b0.json", {"type": "b"})
    drop(repo, "b1.json", {"type": "b"})
    intake = intake_of(repo)
    only_b = lambda a: a.type == "b"  # noqa: E731 - "a" is at its concurrency
    calls, found = 0, []
    while not found:  # each call reads at most 256 refused entries, and says when it stopped short
        found, _ = take(intake, 1, admit=only_b)
        calls += 1
        assert found or intake.cut_short
    assert (found, calls) == (["b0.json"], 3)
    assert take(intake, 1, admit=only_b) == (["b1.json"], [])  # those waiting are not read again
    # Once a may run again, its entries come first, in order.
    assert take(intake, 2) == (["a0000~p9.json", "a0001~p9.json"], [])
    assert intake.next_due() == 0.0 and len(intake) == 598


def test_an_entry_waiting_at_capacity_that_is_rewritten_is_read_again(repo: Repository) -> None:
    """The parsed copy of a file refused for capacity was kept until its turn: a type or priority a
    person wrote into it meanwhile was ignored (it waited for its old type's capacity)."""
    drop(repo, "a0.json", {"type": "a"})
    intake = intake_of(repo)
    assert take(intake, 1, admit=lambda a: False) == ([], [])
    drop(repo, "a0.json", {"type": "b"})
    intake.add(["a0.json"])  # inotify's report
    assert take(intake, 1, admit=lambda a: a.type == "b") == (["a0.json"], [])


def test_a_copy_of_an_id_in_flight_holds_back_no_other_activity_of_its_type(repo: Repository) -> None:
    """One refusal of a waiting entry marked its whole type refused for the call: a second copy of an id
    in flight kept every other activity of that type waiting, with capacity free."""
    drop(repo, "x~1.json", {"id": "x", "type": "a"})
    for i in range(3):
        drop(repo, f"y{i}.json", {"type": "a"})
    intake = intake_of(repo)
    in_flight = {"x"}  # its other copy runs

    def admit(activity: Activity) -> str:
        return "wait" if activity.id in in_flight else "run"

    first = intake.take(NOW, admit, lambda t: True, 1, lambda n, r: True)  # type: ignore[arg-type]
    assert [name for name, _ in first] == ["y0.json"]
    rest = intake.take(NOW, admit, lambda t: True, 5, lambda n, r: True)  # type: ignore[arg-type]
    assert [name for name, _ in rest] == ["y1.json", "y2.json"]
