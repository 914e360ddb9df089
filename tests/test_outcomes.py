"""What a processor returns or raises can never stop the daemon, and every failure reaches its handler.

Real repositories and real worker processes: a result the daemon cannot store fails its activity
with a reason, a huge failure still reaches the failure processor, and a daemon that does crash
says so in its log and its exit code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import make_repository, records, run_until_idle, start_worker, submit, wait_for

HOSTILE = """
import multiprocessing
from spoolpipe import processor, Fatal

@processor("h.surrogate")
def surrogate(activity, ctx):
    return {"name": "bad \\ud800 text"}

@processor("h.deep")
def deep(activity, ctx):
    value = []
    for _ in range(700):
        value = [value]
    return value

@processor("h.big")
def big(activity, ctx):
    return "x" * 5000

@processor("h.nan")
def nan(activity, ctx):
    return {"ratio": float("nan")}

@processor("h.bad-follow-up", follow_ups=("t.noop",))
def bad_follow_up(activity, ctx):
    ctx.follow_up("t.noop", {"text": "\\udfff"})
    return "ok"

@processor("h.follow-up", follow_ups=("t.noop",))
def follow_up(activity, ctx):
    ctx.follow_up("t.noop", {"x": "y" * activity.data.get("size", 1)},
                  key=activity.data.get("key"), delay=activity.data.get("delay"))
    return "ok"

@processor("h.int-key", follow_ups=("t.noop",))
def int_key(activity, ctx):
    ctx.follow_up("t.noop", key=5)
    return "ok"

@processor("h.surrogate-key", follow_ups=("t.noop",))
def surrogate_key(activity, ctx):
    ctx.follow_up("t.noop", key="\\udc00")
    return "ok"

@processor("h.nan-delay", follow_ups=("t.noop",))
def nan_delay(activity, ctx):
    ctx.follow_up("t.noop", delay=float("nan"))
    return "ok"

@processor("h.huge-error")
def huge_error(activity, ctx):
    raise RuntimeError("first line\\n" + "E" * 2_000_000 + "\\nlast line")

@processor("h.surrogate-error")
def surrogate_error(activity, ctx):
    raise Fatal("cannot \\ud800 cope")

@processor("h.fail-big-data")
def fail_big_data(activity, ctx):
    raise Fatal("the data was not good enough")
"""


def _repository(tmp_path: Path, properties: str = "") -> Path:
    return make_repository(
        tmp_path, "pool.size = 1\nretry.max-attempts = 2\n" + properties, extra_processors=HOSTILE
    )


def _worker_log(repo: Path) -> str:
    return (repo / "logs" / "workers" / "w1.log").read_text()


def _failed_then_next_done(
    tmp_path: Path, type_: str, properties: str = ""
) -> tuple[Path, dict[str, object]]:
    """Run one hostile activity and, after it, an ordinary one; both must settle in one daemon run."""
    repo = _repository(tmp_path, properties)
    bad = submit(repo, type_)
    good = submit(repo, "t.noop")
    run_until_idle(repo)
    assert good in records(repo / "done"), "the daemon did not run the next activity"
    failed = records(repo / "failed")
    assert list(failed) == [bad]
    section = failed[bad]["spoolpipe"]
    assert section["attempts"] == 1, "a result that cannot be stored must fail at once, not be retried"
    assert (repo / "reports" / f"{bad}.txt").exists(), "the failure processor did not run"
    assert "Traceback" not in _worker_log(repo)
    return repo, section


def test_a_result_with_a_lone_surrogate_fails_its_activity_and_the_daemon_runs_on(tmp_path: Path) -> None:
    _, section = _failed_then_next_done(tmp_path, "h.surrogate")
    reason = str(section["reason"])
    assert 'result["name"]' in reason and "surrogate" in reason and "UTF-8" in reason, reason


def test_a_result_nested_700_deep_fails_its_activity_with_the_depth_limit(tmp_path: Path) -> None:
    _, section = _failed_then_next_done(tmp_path, "h.deep")
    reason = str(section["reason"])
    assert reason.startswith("result[0][0]") and "nested more than 100 levels deep" in reason, reason
    assert "pool process died" not in reason


def test_a_result_over_limits_result_bytes_fails_its_activity(tmp_path: Path) -> None:
    _, section = _failed_then_next_done(tmp_path, "h.big", "limits.result-bytes = 1000\n")
    assert section["reason"] == "result is more than 1000 bytes as JSON, over limits.result-bytes=1000"


def test_a_nan_result_fails_its_activity(tmp_path: Path) -> None:
    _, section = _failed_then_next_done(tmp_path, "h.nan")
    assert 'result["ratio"]' in str(section["reason"]) and "NaN" in str(section["reason"]), section


def test_follow_up_data_that_cannot_be_stored_fails_its_parent_and_publishes_nothing(tmp_path: Path) -> None:
    repo, section = _failed_then_next_done(tmp_path, "h.bad-follow-up")
    reason = str(section["reason"])
    assert reason.startswith("follow-up 1 (t.noop, key '1'): data[\"text\"]"), reason
    # only the ordinary activity and the failure activity ran: no follow-up was published
    assert {r["type"] for r in records(repo / "done").values()} == {"t.noop", "spoolpipe.failure"}


@pytest.mark.parametrize(
    ("type_", "data", "reason"),
    [
        ("h.int-key", {}, "follow-up 1 (t.noop, key 5): the key must be a string, not int 5"),
        ("h.nan-delay", {}, "follow-up 1 (t.noop, key '1'): delay nan is not a number of seconds from 0 to"),
        ("h.surrogate-key", {}, "follow-up 1 (t.noop, key '\\udc00'): key: the string holds a lone"),
        # data within the limit, but not once it is an activity file with id and type
        ("h.follow-up", {"size": 1480}, "follow-up 1 (t.noop, key '1') is 15"),
    ],
)
def test_a_follow_up_the_daemon_could_not_write_fails_its_parent(
    tmp_path: Path, type_: str, data: dict[str, object], reason: str
) -> None:
    repo = _repository(tmp_path, "limits.activity-bytes = 1500\n")
    bad = submit(repo, type_, data)
    good = submit(repo, "t.noop")
    run_until_idle(repo)
    assert good in records(repo / "done")
    section = records(repo / "failed")[bad]["spoolpipe"]
    assert section["reason"].startswith(reason), section["reason"]
    assert section["attempts"] == 1
    assert sorted(r["type"] for r in records(repo / "done").values()) == ["spoolpipe.failure", "t.noop"]
    assert list((repo / "invalid").iterdir()) == []


def test_an_error_text_with_a_lone_surrogate_is_recorded_escaped(tmp_path: Path) -> None:
    _, section = _failed_then_next_done(tmp_path, "h.surrogate-error")
    assert section["reason"] == "cannot \\ud800 cope", section


def test_a_two_megabyte_exception_still_reaches_the_failure_handler(tmp_path: Path) -> None:
    repo = _repository(tmp_path, "retry.max-attempts = 2\n")
    bad = submit(repo, "h.huge-error")
    good = submit(repo, "t.noop")
    run_until_idle(repo)
    assert good in records(repo / "done")
    failed_path = repo / "failed" / f"{bad}.json"
    section = json.loads(failed_path.read_bytes())["spoolpipe"]
    reason = section["reason"]
    assert "\n" not in reason and len(reason) <= 500, reason[:1000]
    assert reason.startswith("RuntimeError: first line E")
    whole = "RuntimeError: first line " + "E" * 2_000_000 + " last line"
    assert f"{len(whole)} characters in all" in reason, reason
    assert len(section["traceback"]) <= 20_000
    assert failed_path.stat().st_size < 100_000
    assert (repo / "reports" / f"{bad}.txt").exists(), "the failure processor did not run"
    assert list((repo / "invalid").iterdir()) == []
    # the full message is kept in the attempt logs, and the worker log holds only bounded lines
    for attempt in (1, 2):
        attempt_log = (repo / "logs" / "activities" / f"{bad}~{attempt}.log").read_text()
        assert "E" * 2_000_000 + "\nlast line" in attempt_log
    assert max(len(line) for line in _worker_log(repo).splitlines()) < 1000


def test_a_failure_of_activity_data_near_the_size_limit_still_reaches_the_failure_handler(
    tmp_path: Path,
) -> None:
    repo = _repository(tmp_path)
    # Just under limits.activity-bytes; numbers written as 1E9 grow when written back (1000000000.0).
    numbers = ",".join(["1E9"] * 250_000)
    document = f'{{"type": "h.fail-big-data", "data": {{"numbers": [{numbers}], "pad": "'
    document += "p" * (1_048_576 - len(document) - 3) + '"}}'
    assert len(document) == 1_048_576
    (repo / "inbox" / "big.json").write_text(document)
    good = submit(repo, "t.noop")
    run_until_idle(repo)
    assert good in records(repo / "done")
    assert list((repo / "invalid").iterdir()) == []
    failed = records(repo / "failed")
    assert list(failed) == ["big"]
    assert failed["big"]["spoolpipe"]["reason"] == "the data was not good enough"
    report = (repo / "reports" / "big.txt").read_text()
    assert "the data was not good enough" in report
    assert "1000000000.0" in report, "the report must show the data, read from the failed record"
    failure = next(r for r in records(repo / "done").values() if r["type"] == "spoolpipe.failure")
    assert "data" not in failure["data"]["failed"]
    assert failure["data"]["failed"]["omitted"] == ["data"]
    assert failure["data"]["failed"]["record"] == "failed/big.json"


CRASH_IN_DAEMON = """
import multiprocessing, os
from spoolpipe import processor
import spoolpipe.attempt as _attempt

@processor("h.record-bug")
def record_bug(activity, ctx):
    return "fine"

# Fault injection in spoolpipe itself (this module is imported in the daemon and its pool
# processes): a bug in building one activity's record, where records are built.
_done_record = _attempt.done_record

def _buggy_done_record(activity, *args):
    if activity.type == "h.record-bug":
        raise KeyError("injected record bug")
    return _done_record(activity, *args)

_attempt.done_record = _buggy_done_record

if multiprocessing.current_process().name == "MainProcess":
    # ...and a bug in the daemon's loop once REPO/crash-now exists.
    import spoolpipe.worker as _worker

    _heartbeat = _worker.Worker._heartbeat

    def _buggy_heartbeat(self):
        if (self.root / "crash-now").exists():
            raise ZeroDivisionError("injected daemon bug")
        return _heartbeat(self)

    _worker.Worker._heartbeat = _buggy_heartbeat
"""


def test_a_bug_settling_one_activity_fails_that_activity_not_the_daemon(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "pool.size = 1\n", extra_processors=CRASH_IN_DAEMON)
    bad = submit(repo, "h.record-bug")
    good = submit(repo, "t.noop")
    run_until_idle(repo)
    assert good in records(repo / "done")
    failed = records(repo / "failed")
    assert list(failed) == [bad]
    section = failed[bad]["spoolpipe"]
    assert section["reason"] == "spoolpipe could not record the outcome: KeyError: 'injected record bug'"
    assert section["attempts"] == 1
    assert "injected record bug" in section["traceback"]
    assert (repo / "reports" / f"{bad}.txt").exists()
    log = _worker_log(repo)
    assert "Traceback" in log and "KeyError: 'injected record bug'" in log


def test_an_unexpected_daemon_exception_is_logged_with_its_traceback_and_exits_70(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "pool.size = 1\n", extra_processors=CRASH_IN_DAEMON)
    first = submit(repo, "t.noop")
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: first in records(repo / "done"), 60, "the first activity")
        (repo / "crash-now").touch()
        code = worker.wait(60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert code == 70
    log = _worker_log(repo)
    assert "Traceback (most recent call last)" in log
    assert "ZeroDivisionError: injected daemon bug" in log
    last = log.rstrip().splitlines()[-1]
    assert "worker w1 crashed" in last and "exit code 70" in last, last
