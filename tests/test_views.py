"""status, list and inspect on a repository with work in every state, run by a real worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness import drop, kill_group, make_repository, start_worker, submit, wait_for
from spoolpipe.activity import Activity
from spoolpipe.attempt_notes import earlier_attempts, note_path
from spoolpipe.config import parse_duration
from spoolpipe.views.text import duration

WAITING = """
@processor("t.wait")
def wait(activity, ctx):
    go = ctx.repository / "effects" / "go"
    deadline = time.monotonic() + 120
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return "released"
"""

PROPERTIES = """
pool.size = 2
retry.max-attempts = 3
timeout.t.wait = 250
"""

HOSTILE_NAME = "evil\x1b[2J\nname.json"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spoolpipe", *args], capture_output=True, text=True, timeout=120
    )


def as_json(*args: str) -> Any:
    result = cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _watch_twice(repo: Path, *extra: str) -> tuple[int, str]:
    """Run ``status --watch 0.2`` until it has drawn twice, then Ctrl-C it: its exit code and output."""
    out = repo.parent / f"watch{len(extra)}.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spoolpipe", "status", str(repo), "--watch", "0.2", *extra],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            marker = '"counts"' if extra else "workers alive:"
            wait_for(lambda: out.read_text().count(marker) >= 2, 60, "two redraws")
            proc.send_signal(signal.SIGINT)
            code = proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return code, out.read_text()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Work in every state; every view captured while the worker runs, then once more after kill -9."""
    repo = make_repository(tmp_path_factory.mktemp("views"), PROPERTIES, extra_processors=WAITING)
    ids = {
        "parent": submit(repo, "t.parent", {"children": 2}),
        "flaky": submit(repo, "t.flaky", {}),
        "fatal": submit(repo, "t.fatal", {}),
        "delayed": submit(repo, "t.noop", {}, not_before=time.time() + 3600),
        "unhandled": submit(repo, "t.nobody", {}, not_before=time.time() - 3600),  # due already
        "running": submit(repo, "t.wait", {}),
    }
    drop(repo, HOSTILE_NAME, "{not json")
    drop(repo, "orphan.json", json.dumps({"type": "t.noop", "parent": {"\x1b[2J": 1}}))
    worker = start_worker(repo, "w1")
    seen: dict[str, Any] = {"repo": repo, "ids": ids}
    try:

        def settled() -> bool:
            heartbeat = repo / "heartbeats" / "w1.json"
            running = json.loads(heartbeat.read_text()).get("activities", []) if heartbeat.exists() else []
            return (
                len(os.listdir(repo / "done")) == 6  # parent, 2 children, orphan, 2 failure reports
                and len(os.listdir(repo / "failed")) == 2
                and len(os.listdir(repo / "invalid")) == 1
                and [a["id"] for a in running] == [ids["running"]]
            )

        wait_for(settled, 90, "work in every state")
        r = str(repo)
        seen["status"] = as_json("status", r)
        seen["status_text"] = cli("status", r).stdout
        seen["lists"] = {state: cli("list", r, state) for state in ("inbox", "running", "done", "failed")}
        seen["lists"]["invalid"] = cli("list", r, "invalid")
        seen["failed_fatal"] = as_json("list", r, "failed", "--type", "t.fatal")
        seen["done_two"] = as_json("list", r, "done", "--limit", "2")
        seen["done_all"] = as_json("list", r, "done")
        seen["done_since"] = as_json("list", r, "done", "--since", "1d")
        seen["bad_since"] = cli("list", r, "done", "--since", "soon")
        seen["bad_state"] = cli("list", r, "lost")
        seen["stories"] = {name: as_json("inspect", r, i) for name, i in ids.items()}
        children = seen["stories"]["parent"]["follow_ups"]
        seen["child"] = as_json("inspect", r, children[0]["id"])
        orphan = json.loads((repo / "done" / "orphan.json").read_text())
        seen["orphan"] = as_json("inspect", r, orphan["id"])
        seen["flaky_text"] = cli("inspect", r, ids["flaky"])
        seen["unknown"] = cli("inspect", r, "no-such-id")
        seen["hostile_id"] = cli("inspect", r, "\x1b[2J")
        seen["watch"] = _watch_twice(repo)
        seen["watch_json"] = _watch_twice(repo, "--json")
        kill_group(worker)  # kill -9: its claim stays behind, its heartbeat goes stale
        horizon = 3.0  # claims.lease-seconds, longer than 3 heartbeat intervals
        time.sleep(horizon + 0.5)
        seen["after_kill"] = as_json("status", r)
        seen["after_kill_text"] = cli("status", r).stdout
        (repo / "effects" / "go").touch()  # another worker recovers the claim as attempt 2 and runs it
        again = start_worker(repo, "w2", "--until-idle", "--no-wait")
        assert again.wait(60) == 0
        seen["recovered"] = as_json("inspect", r, ids["running"])
        assert cli("retry", r, ids["flaky"]).returncode == 0  # a second run, which fails again
        (repo / "inbox" / f"{ids['delayed']}.json").unlink()  # so that --until-idle waits only for it
        again = start_worker(repo, "w2", "--until-idle")
        assert again.wait(60) == 0
        seen["second_run"] = as_json("inspect", r, ids["flaky"])
    finally:
        kill_group(worker)
    return seen


# -- status ------------------------------------------------------------------------------------------


def test_status_counts_every_state_and_splits_ready_from_delayed(world: dict[str, Any]) -> None:
    report = world["status"]
    assert report["counts"] == {"inbox": 2, "running": 1, "done": 6, "failed": 2, "invalid": 1}
    inbox = report["inbox"]
    assert (inbox["ready"], inbox["delayed"], inbox["unreadable"], inbox["complete"]) == (1, 1, 0, True)
    assert inbox["oldest_ready"] == f"{world['ids']['unhandled']}.json"
    assert inbox["oldest_ready_seconds"] >= 0 and inbox["oldest_waiting_seconds"] >= 0
    assert report["inbox_by_type"] == {"t.noop": 1, "t.nobody": 1}
    assert report["unhandled_types"] == ["t.nobody"]
    assert report["done_by_status"] == {"done": 6}


def test_status_shows_what_each_live_worker_runs_and_for_how_long(world: dict[str, Any]) -> None:
    report = world["status"]
    [worker] = report["workers"]
    assert worker["worker"] == "w1"
    assert report["hosts"] == {socket.gethostname(): ["w1"]}
    assert worker["last_seen_seconds"] < 3
    [running] = worker["activities"]
    assert (running["id"], running["type"], running["attempt"]) == (world["ids"]["running"], "t.wait", 1)
    assert running["timeout_seconds"] == 250
    assert 0 <= running["running_seconds"] < 250
    assert report["stuck"] == []
    text = world["status_text"]
    assert f"runs {world['ids']['running']} (t.wait, attempt 1) for " in text
    assert "waiting: 1 ready, 1 delayed" in text
    assert "inbox 2  running 1  done 6  failed 2  invalid 1" in text


def test_status_after_kill_9_shows_the_claim_left_behind_as_stuck(world: dict[str, Any]) -> None:
    report = world["after_kill"]
    assert report["workers"] == []
    [stuck] = report["stuck"]
    assert (stuck["id"], stuck["worker"], stuck["type"]) == (world["ids"]["running"], "w1", "t.wait")
    assert stuck["path"] == f"running/{world['ids']['running']}~1~w1.json"
    assert "not alive" in stuck["why"]
    assert stuck["timeout_seconds"] == 250
    assert stuck["running_seconds"] >= 3
    assert sorted(report["unhandled_types"]) == ["t.nobody", "t.noop"]  # nobody is alive
    [line] = [line for line in world["after_kill_text"].splitlines() if "stuck:" in line]
    assert f"stuck: {world['ids']['running']} (t.wait) attempt 1 on w1, running " in line
    assert line.endswith("the next worker to scan recovers it")


def test_inspect_after_kill_9_shows_the_interrupted_attempt_as_unknown(world: dict[str, Any]) -> None:
    story = world["recovered"]
    assert story["state"] == "done"
    assert [(a["attempt"], a["outcome"], a.get("worker")) for a in story["attempts"]] == [
        (1, "unknown", None),
        (2, "done", "w2"),
    ]


def test_status_watch_redraws_until_ctrl_c_and_exits_0(world: dict[str, Any]) -> None:
    code, out = world["watch"]
    assert code == 0, out
    assert out.count("workers alive: 1") >= 2
    assert "Traceback" not in out
    code, out = world["watch_json"]
    assert code == 0, out
    documents = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(documents) >= 2
    assert all(d["counts"]["failed"] == 2 for d in documents)


# -- list --------------------------------------------------------------------------------------------


def test_list_failed_has_one_line_per_activity_with_attempts_and_reason(world: dict[str, Any]) -> None:
    result = world["lists"]["failed"]
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    flaky = next(line for line in lines if world["ids"]["flaky"] in line)
    assert "t.flaky  attempt 3  " in flaky
    assert flaky.endswith("RuntimeError: flaky attempt 3")
    fatal = next(line for line in lines if world["ids"]["fatal"] in line)
    assert "t.fatal  attempt 1  " in fatal
    assert "this can never work" in fatal
    [only] = world["failed_fatal"]
    assert (only["id"], only["type"], only["state"]) == (world["ids"]["fatal"], "t.fatal", "failed")


def test_list_other_states(world: dict[str, Any]) -> None:
    ids = world["ids"]
    inbox = world["lists"]["inbox"].stdout.splitlines()
    assert len(inbox) == 2
    assert "not before" in next(line for line in inbox if ids["delayed"] in line)
    [unhandled] = [line for line in inbox if line.startswith(f"{ids['unhandled']}  t.nobody  attempt 1")]
    assert "not before" not in unhandled  # its earliest start is past: it is not delayed
    [running] = world["lists"]["running"].stdout.splitlines()
    assert running.startswith(f"{ids['running']}  t.wait  attempt 1  ")
    assert "on w1" in running
    assert len(world["lists"]["done"].stdout.splitlines()) == 6


def test_list_newest_first_with_limit_and_since(world: dict[str, Any]) -> None:
    everything = world["done_all"]
    times = [entry["at"] for entry in everything]
    assert times == sorted(times, reverse=True)
    assert [e["path"] for e in world["done_two"]] == [e["path"] for e in everything[:2]]
    assert [e["id"] for e in world["done_since"]] == [e["id"] for e in everything]
    for bad in (world["bad_since"], world["bad_state"]):
        assert bad.returncode == 2, bad.stderr
        assert "Traceback" not in bad.stderr
    assert "soon" in world["bad_since"].stderr


def test_list_invalid_shows_the_escaped_name_and_its_reason(world: dict[str, Any]) -> None:
    result = world["lists"]["invalid"]
    [line] = result.stdout.splitlines()
    assert "\x1b" not in result.stdout
    assert line.startswith("invalid/evil\\x1b[2J\\nname.json~")
    assert "malformed JSON" in line


# -- inspect -----------------------------------------------------------------------------------------


def test_inspect_a_failed_activity_tells_every_attempt_its_logs_and_its_failure_report(
    world: dict[str, Any],
) -> None:
    story = world["stories"]["flaky"]
    assert story["state"] == "failed"
    assert story["locations"] == [{"state": "failed", "path": f"failed/{world['ids']['flaky']}.json"}]
    attempts = story["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert [a["outcome"] for a in attempts] == ["retry", "retry", "failed"]
    assert {a["worker"] for a in attempts} == {"w1"}
    assert [a["error"] for a in attempts] == [f"RuntimeError: flaky attempt {n}" for n in (1, 2, 3)]
    assert all(a["started_at"] <= a["finished_at"] for a in attempts)
    assert story["reason"] == "RuntimeError: flaky attempt 3"
    assert "Traceback (most recent call last)" in story["traceback"]
    assert [log["attempt"] for log in story["logs"]] == [1, 2, 3]
    assert story["logs"][2]["path"] == f"logs/activities/{world['ids']['flaky']}~3.log"
    assert any("flaky attempt 3" in line for line in story["logs"][2]["tail"])
    [report] = story["follow_ups"]
    assert (report["type"], report["state"]) == ("spoolpipe.failure", "done")
    text = world["flaky_text"].stdout
    assert "attempt 2 retry by w1 on " in text
    assert "RuntimeError: flaky attempt 2" in text
    assert f"log of attempt 3: logs/activities/{world['ids']['flaky']}~3.log" in text


def test_inspect_after_spoolpipe_retry_tells_both_runs(world: dict[str, Any]) -> None:
    story = world["second_run"]
    assert story["state"] == "failed"
    runs = [(a["run"], a["attempt"], a["outcome"], a["worker"]) for a in story["attempts"]]
    assert runs == [
        (0, 1, "retry", "w1"),
        (0, 2, "retry", "w1"),
        (0, 3, "failed", "w1"),
        (1, 1, "retry", "w2"),
        (1, 2, "retry", "w2"),
        (1, 3, "failed", "w2"),
    ]
    reports = [f for f in story["follow_ups"] if f["type"] == "spoolpipe.failure"]
    assert [r["state"] for r in reports] == ["done"]  # the second failure's report


def test_inspect_links_parent_and_follow_ups(world: dict[str, Any]) -> None:
    parent = world["stories"]["parent"]
    assert parent["state"] == "done"
    assert parent["result"] == {"children": 2}
    assert [(f["type"], f["state"]) for f in parent["follow_ups"]] == [("t.child", "done")] * 2
    child = world["child"]
    assert child["parent"] == {
        "id": world["ids"]["parent"],
        "state": "done",
        "type": "t.parent",
        "valid": True,
    }
    [attempt] = child["attempts"]
    assert (attempt["worker"], attempt["outcome"]) == ("w1", "done")


def test_inspect_running_delayed_and_untrusted_parent(world: dict[str, Any]) -> None:
    running = world["stories"]["running"]
    assert running["state"] == "running"
    [attempt] = running["attempts"]
    assert (attempt["attempt"], attempt["worker"], attempt["outcome"]) == (1, "w1", "running")
    assert attempt["host"] == socket.gethostname()
    assert attempt["started_at"] <= running["now"]
    # Every documented field of every attempt, null where the repository does not say (they were left out).
    fields = {"run", "attempt", "worker", "host", "started_at", "finished_at", "outcome", "error"}
    assert (attempt["finished_at"], attempt["error"]) == (None, None)
    for story in [*world["stories"].values(), world["recovered"]]:
        assert all(set(a) == fields for a in story["attempts"]), story["attempts"]
    assert world["stories"]["delayed"]["state"] == "delayed"
    assert world["stories"]["unhandled"]["state"] == "inbox"
    parent = world["orphan"]["parent"]  # a person's file said "parent": {"\x1b[2J": 1}
    assert parent["valid"] is False
    assert "\x1b" not in parent["id"]
    assert parent["state"] is None


def test_inspect_of_an_unknown_id_exits_1_and_of_an_invalid_id_2_as_retry_does(world: dict[str, Any]) -> None:
    assert world["unknown"].returncode == 1, world["unknown"].stderr
    assert "no activity 'no-such-id'" in world["unknown"].stderr
    hostile = world["hostile_id"]  # bad usage, as for retry: no activity can ever have this id
    assert hostile.returncode == 2, hostile.stderr
    assert (
        "'\\x1b[2J' is not a valid id" in hostile.stderr
    )  # escaped once, as everywhere (the backslash was doubled)
    assert "\x1b" not in hostile.stderr
    for result in (world["unknown"], hostile):
        assert "Traceback" not in result.stderr
        assert result.stdout == ""


# -- pure parts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("15m", 900.0), ("2h", 7200.0), ("1d", 86400.0), ("90", 90.0), ("1.5m", 90.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "-1s", "1w", "1e3", "nan", "1 s s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_ages_read_at_a_glance() -> None:
    assert [duration(s) for s in (None, 0.4, 42, 90, 4000, 200000)] == [
        "-",
        "0.4s",
        "42s",
        "1.5m",
        "1.1h",
        "2.3d",
    ]


def test_attempt_notes_anyone_could_write_never_reach_a_record(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    (logs / "activities").mkdir(parents=True)
    activity = Activity("a", "t", attempt=4)
    note_path(logs, "a", 1).write_text('{"run": 0, "attempt": 1, "worker": NaN}')  # not strict JSON
    note_path(logs, "a", 2).write_text('{"run": 0, "attempt": 2, "worker": ["x"], "outcome": "retry"}')
    note_path(logs, "a", 3).write_text('{"run": 1, "attempt": 3, "outcome": "retry"}')  # an earlier run's
    assert earlier_attempts(logs, activity) == [
        {"attempt": 1, "outcome": "unknown"},
        {"attempt": 2, "outcome": "retry"},
        {"attempt": 3, "outcome": "unknown"},
    ]
    # An inbox name may claim any attempt number: a record lists only the latest earlier ones.
    assert len(earlier_attempts(logs, Activity("a", "t", attempt=999_999))) == 50


def test_list_into_a_reader_that_stops_early_exits_0_without_a_traceback(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    for i in range(3000):  # more lines than a pipe holds
        drop(repo, f"job-{i:04d}.json", '{"type": "t.noop"}')
    proc = subprocess.Popen(
        [sys.executable, "-m", "spoolpipe", "list", str(repo), "inbox"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # like `| head -1`
    proc.stdout.close()
    code = proc.wait(60)
    stderr = proc.stderr.read().decode()
    assert first.startswith(b"job-")
    assert code == 0, stderr
    assert "Traceback" not in stderr


def test_inspect_shows_a_timed_out_attempt_and_the_one_that_succeeded(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "timeout.t.stuck = 1\n")
    stuck = submit(repo, "t.stuck", {"unstick_on": 2})
    worker = start_worker(repo, "w1", "--until-idle")
    try:
        assert worker.wait(90) == 0
    finally:
        kill_group(worker)
    story = as_json("inspect", str(repo), stuck)
    assert story["state"] == "done"
    first, second = story["attempts"]
    assert (first["attempt"], first["outcome"], first["worker"]) == (1, "retry", "w1")
    assert "timed out after 1.0s" in first["error"]
    assert (second["attempt"], second["outcome"], story["result"]) == (2, "done", "unstuck")


def test_inspect_of_a_quarantined_activity_says_why_it_can_never_run(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    drop(repo, "lone.json", '{"type": "t.ok", "data": {"a": "\\ud800"}}')  # not UTF-8 once decoded
    worker = start_worker(repo, "w1", "--until-idle")
    try:
        assert worker.wait(90) == 0
    finally:
        kill_group(worker)
    story = as_json("inspect", str(repo), "lone")
    assert story["state"] == "invalid"
    assert "unpaired" in story["reason"], story
    assert story["reason"].startswith("lone.json: "), story
    shown = cli("inspect", str(repo), "lone").stdout
    assert f"reason: {story['reason']}" in shown


def test_status_counts_as_waiting_work_only_what_a_worker_would_run(tmp_path: Path) -> None:
    """A file with a string type is not yet an activity: its id, data and not_before must hold too."""
    repo = make_repository(tmp_path)
    drop(repo, "ok.json", json.dumps({"type": "t.ok"}))
    drop(repo, "bad\xff.json".encode("latin-1").decode("utf-8", "surrogateescape"), '{"type": "t.ok"}')
    drop(repo, "new\nline.json", '{"type": "t.ok"}')  # no id field, and the name is no id
    drop(repo, "list.json", '{"type": "t.ok", "data": [1]}')
    drop(repo, "when.json", '{"type": "t.ok", "not_before": 5}')
    report = as_json("status", str(repo))
    inbox = report["inbox"]
    assert (inbox["ready"], inbox["unreadable"]) == (1, 4), inbox
    assert report["inbox_by_type"] == {"t.ok": 1}
    text = cli("status", str(repo)).stdout
    assert "(ok.json)" in text and "bad" not in text.split("oldest")[-1], text


def test_status_survives_heartbeats_anyone_could_have_written(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    beats = repo / "heartbeats"
    (beats / "list.json").write_text("[1, 2]")
    (beats / "nan.json").write_text('{"worker": NaN}')
    odd = {
        "worker": "odd",
        "host": ["not", "a", "string"],
        "pid": "4242",
        "types": {"t.x": "many", "t.y": 1},
        "running": "everything",
        "activities": [
            "x",
            {"id": 5},
            {"id": "a\x1b[2J", "started_at": "yesterday", "timeout_seconds": True, "attempt": 1.5},
        ],
    }
    (beats / "odd.json").write_text(json.dumps(odd))
    result = cli("status", str(repo), "--json")
    assert result.returncode == 0, result.stderr
    [worker] = json.loads(result.stdout)["workers"]
    assert (worker["worker"], worker["host"], worker["pid"], worker["running"]) == ("odd", None, None, [])
    assert worker["types"] == {"t.y": 1}
    assert worker["activities"] == [
        {
            "id": "a\\x1b[2J",
            "type": None,
            "attempt": None,
            "started_at": None,
            "running_seconds": None,
            "timeout_seconds": None,
        }
    ]
    text = cli("status", str(repo))
    assert text.returncode == 0, text.stderr
    assert "\x1b" not in text.stdout


def test_status_watch_goes_on_while_the_repository_is_away(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    out = tmp_path / "watch.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spoolpipe", "status", str(repo), "--watch", "0.1"],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: "workers alive" in out.read_text(), 60, "a first drawing")
            (repo / "done").rename(tmp_path / "done-away")  # as if the mount went away
            wait_for(lambda: "cannot read the repository" in out.read_text(), 60, "the error shown")
            (tmp_path / "done-away").rename(repo / "done")
            seen = out.read_text().count("workers alive")
            wait_for(lambda: out.read_text().count("workers alive") > seen, 60, "drawing again")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "Traceback" not in out.read_text()


def test_status_where_the_clock_probe_cannot_be_written_uses_the_local_clock(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    (repo / "tmp" / ".clock-status").symlink_to(tmp_path / "no-such-dir" / "probe")
    submit(repo, "t.noop")
    result = cli("status", str(repo), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["inbox"]["ready"] == 1


def _done_listing(repo: Path, follow_ups: list[Any]) -> dict[str, Any]:
    """A hand-written ``done/p.json`` whose record lists ``follow_ups``."""
    record = {
        "id": "p",
        "type": "t.parent",
        "data": {},
        "result": None,
        "spoolpipe": {"status": "done", "attempts": 1, "follow_ups": follow_ups},
    }
    (repo / "done" / "p.json").write_text(json.dumps(record))
    return record


def test_inspect_lists_follow_ups_gone_or_not_ids_as_the_record_names_them(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    _done_listing(repo, ["gone-child", "\x1b[2J", 7])
    story = as_json("inspect", str(repo), "p")
    gone, hostile, number = story["follow_ups"]
    assert gone == {"id": "gone-child", "state": None, "type": None, "valid": True}
    assert (hostile["id"], hostile["valid"], number["id"]) == ("\\x1b[2J", False, "7")
    [attempt] = story["attempts"]  # a record written before attempt histories: its last attempt
    assert (attempt["attempt"], attempt["outcome"]) == (1, "done")


def test_inspect_says_how_many_follow_ups_it_left_out(tmp_path: Path) -> None:
    """1,500 listed: it showed "follow-ups: 1000" and 1,000 entries, with no word of the rest."""
    repo = make_repository(tmp_path)
    record = _done_listing(repo, [f"c{i}" for i in range(1500)])
    story = as_json("inspect", str(repo), "p")
    assert (len(story["follow_ups"]), story["follow_ups_left_out"]) == (1000, 500)
    said = cli("inspect", str(repo), "p").stdout.splitlines()
    assert "follow-ups: 1500" in said
    assert "  ... and 500 more, not looked up" in said
    (repo / "done" / "p.json").write_text(json.dumps({**record, "spoolpipe": {"status": "done"}}))
    assert as_json("inspect", str(repo), "p")["follow_ups_left_out"] == 0


def test_inspect_of_an_activity_waiting_for_its_retry_shows_no_running_attempt(tmp_path: Path) -> None:
    """Its inbox name ID~N~MS.json is not a claim name ID~N~WORKER.json."""
    repo = make_repository(tmp_path, "retry.backoff-seconds = 600\n")
    submit(repo, "t.flaky", {"succeed_on": 3}, id="fl")
    worker = start_worker(repo, "w1", "--until-idle", "--no-wait")
    assert worker.wait(60) == 0
    [name] = os.listdir(repo / "inbox")
    assert name.startswith("fl~2~")
    result = subprocess.run(
        [sys.executable, "-m", "spoolpipe", "inspect", str(repo), "fl", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    story = json.loads(result.stdout)
    assert story["state"] == "delayed"
    assert [(a["attempt"], a["outcome"]) for a in story["attempts"]] == [(1, "retry")]


def test_watch_keeps_its_output_to_what_it_renders(tmp_path: Path) -> None:
    """A turn that could not read the repository wrote a line of text among the JSON lines."""
    import io

    from spoolpipe.views.watch import watch

    turns = iter([OSError(2, "No such file or directory"), '{"a": 1}', KeyboardInterrupt()])

    def render() -> str:
        turn = next(turns)
        if isinstance(turn, BaseException):
            raise turn
        return turn

    out, err = io.StringIO(), io.StringIO()
    assert watch(render, 0.01, out, err) == 0
    assert out.getvalue() == '{"a": 1}\n'
    assert "cannot read the repository" in err.getvalue()
