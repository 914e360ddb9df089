"""Files anyone may have put in a repository's folders, read by workers and by the read-only commands:
a FIFO, a link out of the repository, /dev/zero. Never followed, never waited on, never read whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import (
    ids_in,
    kill_group,
    make_repository,
    records,
    run_until_idle,
    start_worker,
    submit,
    wait_for,
)
from spoolpipe.activity import Activity
from spoolpipe.repository import Repository, filesystem_now

TIMEOUT = 60


def spoolpipe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spoolpipe", *args], capture_output=True, text=True, timeout=TIMEOUT
    )


def test_a_dead_workers_claim_that_is_a_fifo_or_a_device_never_wedges_recovery(tmp_path: Path) -> None:
    """Recovery read a claim's priority with read_bytes(): a FIFO blocked the daemon in open() before
    it started anything, SIGTERM and all; /dev/zero filled its memory."""
    repo = make_repository(tmp_path)
    os.mkfifo(repo / "running" / "x~1~ghost.json")
    (repo / "running" / "z~1~ghost.json").symlink_to("/dev/zero")
    ok = submit(repo, "t.noop")
    output = run_until_idle(repo, timeout=TIMEOUT)
    assert ok in ids_in(repo / "done"), output[-3000:]
    assert os.listdir(repo / "running") == []
    quarantined = os.listdir(repo / "invalid")
    assert any(n.startswith("x") for n in quarantined) and any(n.startswith("z") for n in quarantined)


def test_a_fifo_as_a_failed_record_makes_its_copy_a_duplicate_not_a_wedged_pool_process(
    tmp_path: Path,
) -> None:
    """The duplicate check read failed/ID.json with read_bytes(): a FIFO there held the pool process
    for ever, the activity in running/ and the worker unable to finish."""
    repo = make_repository(tmp_path)
    os.mkfifo(repo / "failed" / "x.json")
    (repo / "inbox" / "x.json").write_text('{"type": "t.noop"}')
    other = submit(repo, "t.noop")
    output = run_until_idle(repo, timeout=TIMEOUT)
    assert other in ids_in(repo / "done"), output[-3000:]
    assert os.listdir(repo / "running") == []
    [invalid] = [n for n in os.listdir(repo / "invalid") if n.startswith("x")]
    assert "failed/x.json exists" in (repo / "invalid" / invalid / "reason.txt").read_text()


def test_attempt_notes_that_are_fifos_or_devices_are_read_as_missing(tmp_path: Path) -> None:
    """A note was read with read_bytes() after an lstat: inspect hung on a FIFO (and serve's threads
    with it), /dev/zero ended it in a MemoryError, and the pool process writing the record wedged."""
    repo = make_repository(tmp_path, "timeout.seconds = 20\n")
    (repo / "inbox" / "q~3.json").write_text('{"type": "t.noop"}')
    notes = repo / "logs" / "activities"
    notes.mkdir(parents=True, exist_ok=True)
    os.mkfifo(notes / "q~1.attempt.json")
    (notes / "q~2.attempt.json").symlink_to("/dev/zero")
    inspected = spoolpipe("inspect", str(repo), "q")
    assert inspected.returncode == 0, inspected.stderr
    run_until_idle(repo, timeout=TIMEOUT)
    history = records(repo / "done")["q"]["spoolpipe"]["attempt_history"]
    assert [(a["attempt"], a["outcome"]) for a in history[:2]] == [(1, "unknown"), (2, "unknown")]
    inspected = spoolpipe("inspect", str(repo), "q", "--json")
    assert inspected.returncode == 0, inspected.stderr


def test_the_failure_report_never_copies_a_record_from_outside_the_repository(tmp_path: Path) -> None:
    """A failed/ID.json linked to a file elsewhere was followed: its content went into reports/."""
    repo = make_repository(tmp_path)
    secret = tmp_path / "secret.json"
    secret.write_text('{"data": {"api_key": "SECRET"}}')
    (repo / "failed" / "victim.json").symlink_to(secret)
    Repository(repo, fsync=False).submit(
        Activity("report", "spoolpipe.failure", {"failed": {"id": "victim", "omitted": ["data"]}}, 1)
    )
    run_until_idle(repo, timeout=TIMEOUT)
    assert not (repo / "reports" / "victim.txt").exists()
    reason = records(repo / "failed")["report"]["spoolpipe"]["reason"]
    assert "failed/victim.json" in reason and "symbolic link" in reason


def test_the_clock_probe_never_follows_a_link(tmp_path: Path) -> None:
    """status, serve, submit and the worker touch a probe file to read the file system's clock: a link
    put in its place made them create files, or reset the mtime of any file, outside the repository."""
    repo = make_repository(tmp_path)
    victim, created = tmp_path / "victim", tmp_path / "created-by-status"
    victim.write_text("x")
    os.utime(victim, (1_000_000_000, 1_000_000_000))
    (repo / "tmp" / ".clock-status").symlink_to(created)
    probe = repo / "tmp" / ".clock-probe"
    probe.symlink_to(victim)
    assert abs(filesystem_now(probe) - time.time()) < 60
    assert victim.stat().st_mtime == 1_000_000_000
    assert probe.is_file() and not probe.is_symlink()
    status = spoolpipe("status", str(repo), "--json")
    assert status.returncode == 0, status.stderr
    json.loads(status.stdout)
    assert not created.exists()


def test_a_link_in_place_of_a_heartbeats_temp_file_is_never_written_through(tmp_path: Path) -> None:
    """The heartbeat was written to tmp/heartbeat-ID.tmp with write_bytes(), which follows a link."""
    repo = make_repository(tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    (repo / "tmp" / "heartbeat-w1.tmp").symlink_to(outside)
    ok = submit(repo, "t.noop")
    output = run_until_idle(repo, timeout=TIMEOUT)
    assert ok in ids_in(repo / "done")
    assert outside.read_text() == "keep me"
    assert "cannot write heartbeat" not in output


def test_links_in_place_of_the_logs_are_never_written_through(tmp_path: Path) -> None:
    """The attempt log (logs/activities/ID~N.log) and the worker log were opened with open(..., "a"),
    which follows a link: a processor's output was appended to any file the worker could write."""
    repo = make_repository(tmp_path, "retry.backoff-seconds = 0.1\n")
    aid = submit(repo, "t.flaky", {"succeed_on": 2})
    outside = {name: tmp_path / f"{name}.txt" for name in ("attempt", "worker")}
    for path in outside.values():
        path.write_text("keep me")
    (repo / "logs" / "activities").mkdir(parents=True, exist_ok=True)
    (repo / "logs" / "activities" / f"{aid}~1.log").symlink_to(outside["attempt"])
    (repo / "logs" / "workers").mkdir(parents=True, exist_ok=True)
    (repo / "logs" / "workers" / "w1.log").symlink_to(outside["worker"])
    run_until_idle(repo, timeout=TIMEOUT)
    assert aid in ids_in(repo / "done")
    assert {name: path.read_text() for name, path in outside.items()} == {
        "attempt": "keep me",
        "worker": "keep me",
    }
    assert "flaky attempt 1" in (repo / "logs" / "activities" / f"{aid}~1.log").read_text()
    assert f"{aid} (t.flaky)" in (repo / "logs" / "workers" / "w1.log").read_text()


def test_inspect_escapes_the_names_of_an_ids_invalid_entries(tmp_path: Path) -> None:
    """An invalid/ folder named after the id with escapes in it went raw to the terminal."""
    repo = make_repository(tmp_path)
    aid = submit(repo, "t.noop")
    hostile = f"{aid}~\x1b]0;owned\x07\x1b[2J"
    (repo / "invalid" / hostile).mkdir()
    (repo / "invalid" / hostile / "reason.txt").write_text("junk\n")
    for args in ((), ("--json",)):
        shown = spoolpipe("inspect", str(repo), aid, *args)
        assert shown.returncode == 0, shown.stderr
        assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
        assert "invalid/" in shown.stdout


def test_status_counts_only_heartbeats_of_the_worker_their_name_says(tmp_path: Path) -> None:
    """Any JSON object in heartbeats/ was a live worker: "None on None pid None", or a copy naming
    another worker, which hid the warning that no live worker runs a waiting type."""
    repo = make_repository(tmp_path)
    (repo / "heartbeats" / "notes.json").write_text('{"type": "x"}')
    (repo / "heartbeats" / "old-copy.json").write_text('{"worker": "nas", "types": {"t.noop": 1}}')
    submit(repo, "t.noop")
    shown = spoolpipe("status", str(repo), "--json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert (status["workers"], status["unhandled_types"]) == ([], ["t.noop"])


def test_a_folder_this_user_may_not_read_is_an_error_naming_it_not_a_crash(tmp_path: Path) -> None:
    """status, list and inspect on a repository with a folder of another user's crashed with a
    traceback, exit 70 (a bug). Root is made an ordinary user here: no CAP_DAC_OVERRIDE."""
    repo = make_repository(tmp_path)
    aid = submit(repo, "t.noop")
    (repo / "running").chmod(0)
    drop = "-dac_override,-dac_read_search"
    unprivileged = ["setpriv", "--bounding-set", drop, "--inh-caps", drop] if os.geteuid() == 0 else []
    try:
        for args in (("status", str(repo)), ("list", str(repo), "running"), ("inspect", str(repo), aid)):
            command = [*unprivileged, sys.executable, "-m", "spoolpipe", *args]
            shown = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
            assert shown.returncode == 2, shown
            assert (
                f"{repo / 'running'}: Permission denied" in shown.stderr and "Traceback" not in shown.stderr
            )
    finally:
        (repo / "running").chmod(0o755)


def test_the_workers_own_note_in_an_attempt_log_never_follows_a_link(tmp_path: Path) -> None:
    """The note a worker appends to the log of an attempt it timed out was opened with open(.., "a")."""
    extra = """
        @processor("t.relink")
        def relink(activity, ctx):
            print("started")  # the attempt log exists now
            log = ctx.repository / "logs" / "activities" / f"{activity.id}~{activity.attempt}.log"
            log.unlink()
            log.symlink_to(ctx.repository.parent / "victim.txt")
            time.sleep(30)
    """
    repo = make_repository(tmp_path, "timeout.t.relink = 1\nretry.max-attempts = 1\n", extra_processors=extra)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    aid = submit(repo, "t.relink")
    run_until_idle(repo, timeout=TIMEOUT)
    assert aid in ids_in(repo / "failed")
    assert victim.read_text() == "keep me"
    assert "timed out" in (repo / "logs" / "activities" / f"{aid}~1.log").read_text()


def _victim(tmp_path: Path) -> Path:
    """A folder outside the repository, as /etc is: what a link in place of a repository folder points to."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "passwd.json").write_text("root:x:0:0\n")
    (victim / "job.json").write_text(json.dumps({"type": "t.noop", "data": {}}))
    return victim


@pytest.mark.parametrize("folder", ["inbox", "invalid", "tmp", "heartbeats", "reports"])
def test_a_link_in_place_of_a_repository_folder_is_refused_and_nothing_it_points_to_moves(
    tmp_path: Path, folder: str
) -> None:
    """inbox/ made a link to another folder: the worker ran what was there and moved every other
    file of it into invalid/ (/etc/passwd, for a worker run as root with a writable repository)."""
    repo = make_repository(tmp_path)
    victim = _victim(tmp_path)
    for name in os.listdir(repo / folder):
        os.unlink(repo / folder / name)
    (repo / folder).rmdir()
    (repo / folder).symlink_to(victim, target_is_directory=True)
    result = spoolpipe("worker", str(repo), "--worker-id", "w1", "--until-idle")
    assert result.returncode == 2, result
    assert f"{repo / folder} is a symbolic link" in result.stderr
    assert sorted(os.listdir(victim)) == ["job.json", "passwd.json"]
    assert spoolpipe("status", str(repo)).returncode == 2


def test_an_inbox_swapped_for_a_link_under_a_running_worker_takes_nothing_from_where_it_points(
    tmp_path: Path,
) -> None:
    """Exchanged atomically (no moment without an inbox for the worker to make again), as an attacker
    with write access to the repository would, retrying until it wins the race."""
    import ctypes

    repo = make_repository(tmp_path, "scan.interval-seconds = 0.2\n")
    victim = _victim(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(victim, target_is_directory=True)
    libc = ctypes.CDLL(None, use_errno=True)
    rename_exchange = 2

    def exchange() -> None:
        at_cwd = -100
        code = libc.renameat2(at_cwd, bytes(link), at_cwd, bytes(repo / "inbox"), rename_exchange)
        assert code == 0, os.strerror(ctypes.get_errno())

    proc = start_worker(repo, "w1")
    try:
        wait_for(lambda: (repo / "heartbeats" / "w1.json").exists(), 60, "the worker to start")
        exchange()  # inbox/ is the link now, and the real inbox is at link
        time.sleep(2)  # scans and notifications meanwhile
        assert sorted(os.listdir(victim)) == ["job.json", "passwd.json"]
        exchange()  # the real inbox is back
        activity = submit(repo, "t.noop")
        wait_for(lambda: activity in ids_in(repo / "done"), 30, "the worker to go on")
    finally:
        kill_group(proc, signal.SIGTERM)
        proc.wait(60)
    assert sorted(os.listdir(victim)) == ["job.json", "passwd.json"]
    assert os.listdir(repo / "invalid") == []
