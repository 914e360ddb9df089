"""Control and service: stop/reload through REPO/control/, worker --check, the systemd unit.

Real repositories, real worker processes, real signals; the request names and
the unit text are also checked in-process.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import (
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
from spoolpipe import check, config, control, service
from spoolpipe.activity import NAME_PATTERN
from spoolpipe.processor import Registration
from spoolpipe.repository import Repository

SPOOLPIPE = [sys.executable, "-m", "spoolpipe"]

# t.hold runs while REPO/hold/<worker id> exists: a test decides when it ends, no sleeping.
HOLD = """
@processor("t.hold")
def hold(activity, ctx):
    _effect(ctx, activity)
    while (ctx.repository / "hold" / ctx.worker_id).exists():
        time.sleep(0.02)
    return ctx.worker_id

@processor("t.props")
def props(activity, ctx):
    time.sleep(activity.data.get("sleep", 0))
    return dict(ctx.properties)
"""


def spoolpipe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SPOOLPIPE, *args], capture_output=True, text=True, timeout=120)


def repository(tmp_path: Path, properties: str = "") -> Path:
    repo = make_repository(tmp_path, properties, extra_processors=HOLD)
    (repo / "hold").mkdir()
    return repo


def holding(repo: Path, worker_id: str) -> Path:
    flag = repo / "hold" / worker_id
    flag.touch()
    return flag


def live(repo: Path, worker_id: str) -> bool:
    return (repo / "heartbeats" / f"{worker_id}.json").exists()


def stderr_of(repo: Path, worker_id: str) -> str:
    return (repo.parent / f"worker-{worker_id}.stderr").read_text()


def session(sid: int) -> list[int]:
    """Processes (zombies aside) in session ``sid``: a worker started by the harness and its pool."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            found.append(int(entry))
    return found


# -- stop --------------------------------------------------------------------------------------------


def test_stop_drains_a_worker_whose_processor_is_running(tmp_path: Path) -> None:
    repo = repository(tmp_path, "shutdown.grace-seconds = 300\npool.size = 2\n")
    flag = holding(repo, "w1")
    running = submit(repo, "t.hold")
    worker = start_worker(repo, "w1")
    wait_for(lambda: len(effects(repo, "t.hold")) == 1 and live(repo, "w1"), 30, "the activity to run")
    result = spoolpipe("stop", str(repo), "w1")
    assert result.returncode == 0, result
    assert "w1: stop requested" in result.stdout
    request = repo / "control" / "w1.stop"
    wait_for(lambda: "stopping: no new claims" in stderr_of(repo, "w1"), 30, "the worker to take its request")
    assert not request.exists()
    later = submit(repo, "t.noop")  # claims nothing more
    assert worker.poll() is None, "it lets the running activity finish"
    flag.unlink()
    assert worker.wait(60) == 0
    assert ids_in(repo / "done") == [running]
    assert records(repo / "done")[running]["result"] == "w1"
    assert os.listdir(repo / "inbox") == [f"{later}.json"]
    assert os.listdir(repo / "running") == []
    assert os.listdir(repo / "control") == []
    assert not live(repo, "w1")
    assert session(worker.pid) == []
    assert "stop requested through control/w1.stop by" in stderr_of(repo, "w1")


def test_stop_now_releases_the_running_activity_which_completes_on_another_worker(tmp_path: Path) -> None:
    repo = repository(tmp_path, "shutdown.grace-seconds = 300\n")
    holding(repo, "w1")
    aid = submit(repo, "t.hold")
    worker = start_worker(repo, "w1")
    wait_for(lambda: len(effects(repo, "t.hold")) == 1 and live(repo, "w1"), 30, "the activity to run")
    result = spoolpipe("stop", str(repo), "w1", "--now", "--wait")
    assert result.returncode == 0, result
    assert "w1: stopped" in result.stdout
    assert worker.wait(30) == 0
    assert os.listdir(repo / "inbox") == [f"{aid}~1.json"]  # the same attempt: not the activity's fault
    assert os.listdir(repo / "running") == []
    assert session(worker.pid) == []
    run_until_idle(repo, "w2")
    assert records(repo / "done")[aid]["result"] == "w2"
    assert [(e[1], e[2]) for e in effects(repo, "t.hold")] == [("1", "w1"), ("1", "w2")]


def test_stop_all_stops_every_live_worker_but_not_one_started_after_the_request(tmp_path: Path) -> None:
    # A long lease keeps a paused worker's heartbeat "recent": --all sends it a request too.
    repo = repository(tmp_path, "claims.lease-seconds = 120\n")
    first, second = start_worker(repo, "w1"), start_worker(repo, "w2")
    wait_for(lambda: live(repo, "w1") and live(repo, "w2"), 30, "both workers")
    os.kill(first.pid, signal.SIGSTOP)  # a hung machine: its lock is held, its heartbeat recent
    stopping = subprocess.Popen(
        [*SPOOLPIPE, "stop", str(repo), "--all", "--wait"], stdout=subprocess.PIPE, text=True
    )
    assert second.wait(30) == 0
    wait_for(lambda: (repo / "control" / "w1.stop").exists(), 30, "the request to the paused worker")
    kill_group(first)  # then the machine is power-cycled: this run never took its request
    out, _ = stopping.communicate(timeout=60)
    assert stopping.returncode == 0, out
    assert "w1: stop requested" in out and "w2: stop requested" in out
    assert "w2: stopped" in out
    assert "w1: is gone without taking the request (killed?)" in out
    restarted, newcomer = start_worker(repo, "w1"), start_worker(repo, "w3")
    try:
        discarded = "discarded control/w1.stop: meant for an earlier run of this worker"
        # The file goes (taken) a moment before the line is logged: wait for the line itself.
        wait_for(lambda: discarded in stderr_of(repo, "w1"), 30, "w1 to discard the old request")
        assert not (repo / "control" / "w1.stop").exists()
        for _ in range(4):
            submit(repo, "t.noop")
        wait_for(lambda: len(ids_in(repo / "done")) == 4, 30, "work done after the request")
        assert restarted.poll() is None and newcomer.poll() is None
    finally:
        result = spoolpipe("stop", str(repo), "w1", "w3", "--wait")
        assert result.returncode == 0, result
        assert restarted.wait(30) == 0 and newcomer.wait(30) == 0


def test_stop_or_reload_of_an_unknown_or_dead_worker_exits_1(tmp_path: Path) -> None:
    repo = repository(tmp_path)
    (repo / "heartbeats" / "gone.json").write_text(
        json.dumps(
            {"worker": "gone", "host": "h", "pid": 99999, "started_at": "2026-01-01T00:00:00.000+00:00"}
        )
    )
    os.utime(repo / "heartbeats" / "gone.json", (1_700_000_000, 1_700_000_000))  # silent for years
    beats = repo / "heartbeats"  # and junk anyone could leave there: never a live worker, never a crash
    (beats / "deep.json").write_text("[" * 50_000)
    (beats / "dir.json").mkdir()
    (beats / "link.json").symlink_to("/dev/zero")
    (beats / "odd.json").write_text('{"worker": "odd", "host": "\\ud800", "pid": true, "started_at": 1}')
    (beats / "big.json").write_bytes(b" " * (1 << 20) + b"{}")
    for args in (("stop", "nosuch"), ("stop", "gone", "--now"), ("reload", "gone"), ("stop", "--all")):
        result = spoolpipe(args[0], str(repo), *args[1:])
        assert result.returncode == 1, result
        assert "no live worker" in result.stderr
    assert not (repo / "control").exists() or os.listdir(repo / "control") == []
    for args in (("stop",), ("stop", "w1", "--all"), ("reload", "../w1")):
        result = spoolpipe(args[0], str(repo), *args[1:])
        assert result.returncode == 2, result
    assert spoolpipe("stop", str(tmp_path / "nowhere"), "--all").returncode == 2


def test_stop_of_a_worker_killed_moments_ago_says_its_lock_is_free_not_its_heartbeat_old(
    tmp_path: Path,
) -> None:
    """Its heartbeat is still recent (status lists it): the lock left with the process is the reason."""
    repo = repository(tmp_path, "claims.lease-seconds = 120\n")
    worker = start_worker(repo, "k9")
    wait_for(lambda: live(repo, "k9"), 30, "the worker")
    kill_group(worker)
    result = spoolpipe("stop", str(repo), "k9")
    assert result.returncode == 1, result
    assert (
        "error: no live worker 'k9' (its heartbeat is recent, but nothing holds locks/k9.lock"
        in result.stderr
    )
    old = spoolpipe("reload", str(repo), "nosuch")
    assert "error: no live worker 'nosuch' (no readable heartbeats/nosuch.json)" in old.stderr, old
    assert "error: no live worker in this repository" in spoolpipe("stop", str(repo), "--all").stderr


def test_request_files_that_are_not_requests_never_stop_or_crash_a_worker(tmp_path: Path) -> None:
    repo = repository(tmp_path)
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: live(repo, "w1"), 30, "the worker")
        control_dir = repo / "control"
        control_dir.mkdir()
        (control_dir / "w1.stop").touch()  # a bare flag is not a request
        (control_dir / "w1.stop-now").mkdir()
        (control_dir / "w1.stop-now" / "inside").write_text("x")
        (control_dir / "w1.reload").symlink_to("/etc/passwd")
        said = [
            "discarded control/w1.stop: not a JSON object",
            "discarded control/w1.stop-now: cannot be read",
            "discarded control/w1.reload: cannot be read",
        ]
        # The log line follows the rename that empties the folder: wait for the lines, not the folder.
        wait_for(lambda: all(line in stderr_of(repo, "w1") for line in said), 30, "the discards")
        assert os.listdir(control_dir) == []
        assert leftovers(repo) == {}  # a planted directory taken aside into tmp/ is removed whole
        aid = submit(repo, "t.noop")
        wait_for(lambda: aid in ids_in(repo / "done"), 30, "work after the junk")
        assert worker.poll() is None
    finally:
        result = spoolpipe("stop", str(repo), "w1", "--wait")
        assert result.returncode == 0, result
        assert worker.wait(30) == 0


# -- reload ------------------------------------------------------------------------------------------


def change_unnoticed(properties: Path, extra: str) -> None:
    """Append to the file, keeping its mtime (as rsync -t or a config tool may): no worker notices."""
    before = properties.stat()
    tmp = properties.with_name("new.properties")
    tmp.write_text(properties.read_text() + extra)
    os.utime(tmp, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(tmp, properties)


@pytest.mark.parametrize("how", ["spoolpipe reload", "SIGHUP"])
def test_reload_applies_a_changed_property(tmp_path: Path, how: str) -> None:
    repo = repository(tmp_path, "custom.colour = red\n")
    worker = start_worker(repo, "w1")
    try:
        first = submit(repo, "t.props")
        wait_for(lambda: first in ids_in(repo / "done"), 30, "the first activity")
        assert records(repo / "done")[first]["result"] == {"colour": "red"}
        change_unnoticed(repo / "spoolpipe.properties", "custom.colour = blue\n")
        if how == "SIGHUP":
            worker.send_signal(signal.SIGHUP)
            wait_for(lambda: "configuration reloaded" in stderr_of(repo, "w1"), 30, "the reload")
        else:
            result = spoolpipe("reload", str(repo), "w1", "--wait")
            assert result.returncode == 0, result
            assert "w1: took the reload request" in result.stdout
            assert not (repo / "control" / "w1.reload").exists()
        second = submit(repo, "t.props")
        wait_for(lambda: second in ids_in(repo / "done"), 30, "the second activity")
        assert records(repo / "done")[second]["result"] == {"colour": "blue"}
        assert worker.poll() is None
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0


def test_sighup_reloads_at_once_not_at_the_next_heartbeat(tmp_path: Path) -> None:
    """The docs say "at once on SIGHUP"; the reload waited for the next heartbeat (here a minute)."""
    properties = "custom.colour = red\nheartbeat.interval-seconds = 60\nclaims.lease-seconds = 300\n"
    repo = repository(tmp_path, properties)
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: "worker w1 started" in stderr_of(repo, "w1"), 30, "the worker")
        change_unnoticed(repo / "spoolpipe.properties", "custom.colour = blue\n")
        worker.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in stderr_of(repo, "w1"), 20, "the reload")
        done = submit(repo, "t.props")
        wait_for(lambda: done in ids_in(repo / "done"), 30, "the activity")
        assert records(repo / "done")[done]["result"] == {"colour": "blue"}
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0


def test_scan_watch_turned_on_by_a_reload_watches_the_inbox_from_then_on(tmp_path: Path) -> None:
    """The reload said "configuration reloaded" but the worker went on polling every 60 s."""
    repo = repository(tmp_path, "scan.watch = false\nscan.interval-seconds = 60\n")
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: "worker w1 started" in stderr_of(repo, "w1"), 30, "the worker")
        change_unnoticed(repo / "spoolpipe.properties", "scan.watch = true\n")
        worker.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in stderr_of(repo, "w1"), 30, "the reload")
        done = submit(repo, "t.props")
        wait_for(lambda: done in ids_in(repo / "done"), 20, "the activity, seen through inotify")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0


def test_a_request_that_cannot_be_written_is_an_error_naming_control_not_a_crash(tmp_path: Path) -> None:
    repo = repository(tmp_path)
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: live(repo, "w1"), 30, "the worker")
        shutil.rmtree(repo / "control", ignore_errors=True)
        (repo / "control").write_text("in the way")
        result = spoolpipe("stop", str(repo), "w1")
        assert result.returncode == 1, result
        assert "error: cannot send stop to w1:" in result.stderr and "control" in result.stderr
        assert "Traceback" not in result.stderr
        assert worker.poll() is None
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0


def test_an_activity_that_starts_after_a_reload_sees_the_new_settings(tmp_path: Path) -> None:
    """Batches are sized by a type's pace: quick activities then slow ones made a batch of slow ones
    that ran on in the old process for seconds after the reload, with the old settings."""
    repo = repository(tmp_path, "custom.colour = red\npool.size = 1\n")
    quick = [submit(repo, "t.props", id=f"a{i:04d}") for i in range(300)]
    slow = [submit(repo, "t.props", {"sleep": 0.2}, id=f"b{i:04d}") for i in range(20)]
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: set(quick) <= set(ids_in(repo / "done")), 60, "the quick ones")
        change_unnoticed(repo / "spoolpipe.properties", "custom.colour = blue\n")
        worker.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in stderr_of(repo, "w1"), 30, "the reload")
        reloaded = time.time()
        wait_for(lambda: set(slow) <= set(ids_in(repo / "done")), 60, "the slow ones")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    done = records(repo / "done")
    started = {i: datetime.fromisoformat(done[i]["spoolpipe"]["started_at"]).timestamp() for i in slow}
    later = [i for i in slow if started[i] > reloaded + 0.05]
    assert later, "the reload came after every slow activity had started: nothing was shown"
    assert {done[i]["result"]["colour"] for i in later} == {"blue"}


def test_reload_with_an_invalid_configuration_is_refused_with_file_and_line(tmp_path: Path) -> None:
    repo = repository(tmp_path)
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: live(repo, "w1"), 30, "the worker")
        (repo / "workers" / "w1.properties").write_text("pool.size = many\n")
        result = spoolpipe("reload", str(repo), "w1")
        assert result.returncode == 2, result
        assert f"{repo / 'workers' / 'w1.properties'}:1: pool.size" in result.stderr
        assert not (repo / "control" / "w1.reload").exists()
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0


def test_reload_wait_says_when_the_worker_died_before_taking_the_request(tmp_path: Path) -> None:
    repo = repository(tmp_path, "claims.lease-seconds = 120\n")
    worker = start_worker(repo, "w1")
    wait_for(lambda: live(repo, "w1"), 30, "the worker")
    os.kill(worker.pid, signal.SIGSTOP)
    reloading = subprocess.Popen(
        [*SPOOLPIPE, "reload", str(repo), "w1", "--wait"], stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: (repo / "control" / "w1.reload").exists(), 30, "the request")
    kill_group(worker)
    _, err = reloading.communicate(timeout=60)
    assert reloading.returncode == 1, err
    assert "w1 stopped before it took the reload request" in err


def test_sigterm_drains_and_leaves_no_pool_process_behind(tmp_path: Path) -> None:
    repo = repository(tmp_path, "pool.size = 2\nshutdown.grace-seconds = 300\n")
    flag = holding(repo, "w1")
    aid = submit(repo, "t.hold")
    worker = start_worker(repo, "w1")
    wait_for(lambda: len(effects(repo, "t.hold")) == 1, 30, "the activity to run")
    assert len(session(worker.pid)) == 3  # the daemon and its two pool processes
    worker.send_signal(signal.SIGTERM)
    wait_for(lambda: "stopping: no new claims" in stderr_of(repo, "w1"), 30, "the drain")
    flag.unlink()
    assert worker.wait(60) == 0
    assert ids_in(repo / "done") == [aid]
    assert session(worker.pid) == []


def test_pool_processes_die_with_a_killed_daemon(tmp_path: Path) -> None:
    # What the unit's KillMode=mixed counts on besides its own SIGKILL: no pool process outlives its daemon.
    repo = repository(tmp_path, "pool.size = 2\n")
    holding(repo, "w1")
    submit(repo, "t.hold")
    worker = start_worker(repo, "w1")
    wait_for(lambda: len(effects(repo, "t.hold")) == 1, 30, "the activity to run")
    assert len(session(worker.pid)) == 3
    os.kill(worker.pid, signal.SIGKILL)  # the daemon alone
    worker.wait(30)
    wait_for(lambda: session(worker.pid) == [], 30, "its pool processes to die with it")


# -- worker --check ------------------------------------------------------------------------------------


def test_worker_check_reports_types_and_warnings_without_lock_or_inbox(tmp_path: Path) -> None:
    repo = repository(tmp_path, "concurrency.t.nope = 1\nconcurrency.t.slow = 0\n")
    waiting = submit(repo, "t.noop")
    result = spoolpipe("worker", str(repo), "--worker-id", "w1", "--check")
    assert result.returncode == 0, result
    out = result.stdout
    assert "configuration of worker w1: " + str(repo / "spoolpipe.properties") in out
    for type_ in ("t.parent", "t.hold", "image.process", "spoolpipe.failure"):
        assert f"  {type_}  " in out
    assert "never taken here (concurrency 0): t.slow" in out
    assert "warning: concurrency.t.nope is set, but no processor imported here handles 't.nope'" in out
    assert "ok: worker w1 can start (1 warning)" in out
    assert os.listdir(repo / "inbox") == [f"{waiting}.json"]
    assert os.listdir(repo / "locks") == []
    assert os.listdir(repo / "heartbeats") == []
    assert not (repo / "logs" / "workers" / "w1.log").exists()


def test_worker_check_warns_of_a_processors_module_that_registers_nothing_and_a_missing_path(
    tmp_path: Path,
) -> None:
    """``processors = os`` (a name typed for the wrong thing) and a ``processors.path`` that does not
    exist both passed as "0 warnings": the worker started and its types never ran anywhere."""
    repo = repository(tmp_path)
    (tmp_path / "procs" / "no_procs.py").write_text("HELPER = 1\n")
    (repo / "workers" / "w1.properties").write_text(
        f"processors = e2e_procs, no_procs\nprocessors.path = {tmp_path / 'procs'}, /nonexistent/p\n"
    )
    result = spoolpipe("worker", str(repo), "--worker-id", "w1", "--check")
    assert result.returncode == 0, result
    out = result.stdout
    assert "warning: processors: no_procs registers no processor (no @processor in it)" in out, out
    assert "e2e_procs registers" not in out
    assert "warning: processors.path: /nonexistent/p is not a folder: nothing is imported from it" in out
    assert "ok: worker w1 can start (2 warnings)" in out


def test_worker_check_names_the_bad_configuration_line_and_exits_2(tmp_path: Path) -> None:
    repo = repository(tmp_path)
    (repo / "workers" / "w1.properties").write_text("# fine\ntimeout.seconds = soon\n")
    result = spoolpipe("worker", str(repo), "--worker-id", "w1", "--check")
    assert result.returncode == 2, result
    assert f"{repo / 'workers' / 'w1.properties'}:2: timeout.seconds" in result.stderr
    assert "Traceback" not in result.stderr
    assert spoolpipe("worker", str(repo), "--worker-id", "w2", "--check").returncode == 0


@pytest.mark.parametrize(
    ("source", "line", "error"),
    [
        ("x = 1\ndef broken(:\n", 2, "SyntaxError"),
        ("import os\n\nraise RuntimeError('no db')\n", 3, "RuntimeError"),
        # the registry's refusal: it named spoolpipe's own processor.py, not the module at fault
        ("from spoolpipe import processor\n\nprocessor('command')(lambda a, c: None)\n", 3, "ValueError"),
        # it ended --check with 0 and not a word: as if the worker could start
        ("import os\n\nos._exit(0)\n", 3, "ExitAtImport"),
    ],
)
def test_worker_check_names_where_a_processor_fails_to_import_and_exits_3(
    tmp_path: Path, source: str, line: int, error: str
) -> None:
    repo = repository(tmp_path)
    module = tmp_path / "procs" / "broken_procs.py"
    module.write_text(source)
    with (repo / "spoolpipe.properties").open("a") as f:
        f.write("processors = e2e_procs, broken_procs\n")
    result = spoolpipe("worker", str(repo), "--worker-id", "w1", "--check")
    assert result.returncode == 3, result
    assert result.stderr.startswith(f"{module}:{line}: {error}"), result.stderr
    assert "cannot import processor module 'broken_procs'" in result.stderr


def test_worker_check_names_the_processors_line_of_a_module_that_is_not_there(tmp_path: Path) -> None:
    repo = repository(tmp_path)
    own = repo / "workers" / "w1.properties"
    own.write_text("# this worker only\n\nprocessors = e2e_procs, e2e_typo\n")
    result = spoolpipe("worker", str(repo), "--worker-id", "w1", "--check")
    assert result.returncode == 3, result
    assert result.stderr.startswith(f"{own}:3: ModuleNotFoundError: No module named 'e2e_typo'"), (
        result.stderr
    )


def test_worker_check_diagnoses_a_long_junk_line_with_bounded_effort(tmp_path: Path) -> None:
    """Suggesting a key for an unknown one tried each dotted tail of it with each prefix: 'x.' * 6000
    took 44 s and 490 MB, and a line of 1500 addresses blocked a worker's reload 46 s."""
    import resource

    def one_gigabyte() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))

    repo = repository(tmp_path)
    addresses = ",".join(f"10.0.{i // 256}.{i % 256}" for i in range(15_000))  # no key: all of it is one
    with (repo / "spoolpipe.properties").open("a") as f:
        f.write("x." * 100_000 + "y = 1\n" + addresses + "\n")
    result = subprocess.run(
        [*SPOOLPIPE, "worker", str(repo), "--worker-id", "w1", "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=one_gigabyte,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("unknown key") == 2
    assert "ok: worker w1 can start (2 warnings)" in result.stdout


@pytest.mark.parametrize(
    ("properties", "said"),
    [
        ("metrics.file = /nonexistent/d/x.prom\n", "cannot write metrics.file /nonexistent/d/x.prom: "),
        ("metrics.port = 9\nmetrics.host = nonexistent.invalid\n", "cannot serve metrics on nonexistent"),
        ("metrics.port = 9\nmetrics.host = 10.99.99.99\n", "cannot serve metrics on 10.99.99.99 port 9: "),
        ("metrics.port = TAKEN\n", "cannot serve metrics on 127.0.0.1 port TAKEN: "),
    ],
)
def test_worker_check_exits_3_when_the_metrics_cannot_be_set_up_as_the_start_would(
    tmp_path: Path, properties: str, said: str
) -> None:
    """--check said "ok: worker w1 can start" (exit 0), then the worker refused to start (exit 3)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        repo = repository(tmp_path, properties.replace("TAKEN", port))
        result = spoolpipe("worker", str(repo), "--worker-id", "w1", "--check")
        assert result.returncode == 3, result
        assert said.replace("TAKEN", port) in result.stderr, result.stderr
        assert "ok: worker" not in result.stdout
        started = spoolpipe("worker", str(repo), "--worker-id", "w1", "--until-idle")
        assert started.returncode == 3 and said.replace("TAKEN", port) in started.stderr, started


def test_worker_check_beside_the_running_worker_is_not_refused_its_metrics_port(tmp_path: Path) -> None:
    """The running worker of the same id holds the port, which a reload keeps."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    repo = repository(tmp_path, f"metrics.port = {port}\nmetrics.file = metrics/w1.prom\n")
    (repo / "metrics").mkdir()
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: (repo / "heartbeats" / "w1.json").exists(), 20, "the worker to start")
        result = spoolpipe("worker", str(repo), "--worker-id", "w1", "--check")
        assert result.returncode == 0, result
        assert f"metrics.port {port} is in use by the running worker w1" in result.stdout
        assert os.listdir(repo / "metrics") == ["w1.prom"]  # the check's probe is gone
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0


def test_worker_check_names_the_processors_line_after_values_with_other_line_breaks(tmp_path: Path) -> None:
    """The line was found again by a regex over str.splitlines(), which also breaks at U+2028, \\x0b,
    \\x0c and \\x85, and reads a continued line as a line of its own."""
    repo = repository(tmp_path)
    own = repo / "workers" / "w1.properties"
    own.write_bytes(
        "custom.a = x\u2028y\x0bz\x0c\x85\ncustom.b = one,\\\n  processors = not this\n"
        "\nprocessors = e2e_procs, e2e_typo\n".encode()
    )
    result = spoolpipe("worker", str(repo), "--worker-id", "w1", "--check")
    assert result.returncode == 3, result
    assert result.stderr.startswith(f"{own}:5: ModuleNotFoundError: No module named 'e2e_typo'"), (
        result.stderr
    )


def test_review_warns_about_types_nobody_here_handles(tmp_path: Path) -> None:
    def noop(activity: object, ctx: object) -> None:
        return None

    repo = repository(tmp_path, "timeout.t.gone = 5\nfailures.handler = t.report\n")
    settings = config.load(repo).settings
    registry = {"t.a": Registration("t.a", noop, frozenset({"t.b", "t.a"}), None, "m.a", module="e2e_procs")}
    assert check.review(settings, registry) == [
        "timeout.t.gone is set, but no processor imported here handles 't.gone'",
        "t.a may create 't.b', which no processor imported here handles "
        "(a worker elsewhere must, or those activities wait forever)",
        "failures.handler = t.report: no processor imported here handles it",
    ]


# -- systemd-unit ----------------------------------------------------------------------------------------


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: apt-get install -y systemd (.ci/run does)")
    return tool


def test_a_worker_tells_systemd_when_it_is_ready_and_when_it_stops(tmp_path: Path) -> None:
    """``Type=notify``: a reload or stop asked for while the worker starts (its signal handlers not in
    place yet: SIGHUP killed it) waits for READY=1, sent once it has started."""
    import socket

    repo = repository(tmp_path)
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(60)
        worker = start_worker(repo, "w1", env={"NOTIFY_SOCKET": address})
        try:
            assert sock.recv(256) == b"READY=1"
            assert "worker w1 started" in stderr_of(repo, "w1")
            worker.send_signal(signal.SIGHUP)  # what systemctl reload does, at once
            wait_for(lambda: "configuration reloaded" in stderr_of(repo, "w1"), 30, "the reload")
            worker.send_signal(signal.SIGTERM)
            assert sock.recv(256) == b"STOPPING=1"
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
            assert worker.wait(30) == 0


def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    root = tmp_path / 'jobs 100% "$HOME" \\ n'  # every character a unit file must escape
    repo = repository(root, "shutdown.grace-seconds = 20.5\n")
    result = spoolpipe("systemd-unit", str(repo), "--worker-id", "nas-1", "--user", "spool")
    assert result.returncode == 0, result
    text = result.stdout
    lines = text.splitlines()
    for expected in (
        "Type=notify",
        "NotifyAccess=main",
        "TimeoutStartSec=infinity",
        "User=spool",
        "Restart=on-failure",
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={math.ceil(20.5) + service.STOP_MARGIN_SECONDS}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Wants=network-online.target",
        "After=network-online.target",
        "NoNewPrivileges=yes",
        f"RequiresMountsFor={service.quote(str(repo), command=False)}",
    ):
        assert expected in lines, f"{expected!r} missing from\n{text}"
    assert f"ExecStart={os.path.abspath(sys.executable)} -m spoolpipe worker " in text
    assert "PrivateTmp=yes" not in lines  # the repository is under /tmp: it would hide it
    unit = tmp_path / "spoolpipe-nas-1.service"
    unit.write_text(text)
    verify = subprocess.run(
        [systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=120
    )
    assert verify.returncode == 0, verify
    assert verify.stdout + verify.stderr == "", verify  # it warns about settings it ignores


def test_a_unit_for_a_path_ending_in_a_backslash_or_holding_a_dollar_says_that_path(tmp_path: Path) -> None:
    """A Description= ending in \\ continued onto the next line (Wants= became description); $ was
    written $$ in RequiresMountsFor=, where systemd does not undo it (only command lines do)."""
    repo = tmp_path / "r$x\\"
    assert spoolpipe("init", str(repo)).returncode == 0
    result = spoolpipe("systemd-unit", str(repo), "--worker-id", "nas")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    description = next(line for line in lines if line.startswith("Description="))
    assert not description.endswith("\\") and description.endswith("r$x\\x5c"), description
    assert lines[lines.index(description) + 1] == "Wants=network-online.target"
    mounts = next(line for line in lines if line.startswith("RequiresMountsFor="))
    assert "$$" not in mounts and "r$x" in mounts, mounts


def test_systemd_unit_refuses_what_a_unit_cannot_hold(tmp_path: Path) -> None:
    repo = repository(tmp_path / "line\nbreak")
    result = spoolpipe("systemd-unit", str(repo), "--worker-id", "w1")
    assert result.returncode == 2, result
    assert "control character" in result.stderr
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/not-utf-8-\xff"))  # systemd refuses such a unit file
    Repository.create(odd, config.render_defaults())
    command = [sys.executable, "-m", "spoolpipe", "systemd-unit", str(odd), "--worker-id", "w1"]
    unit = subprocess.run(command, capture_output=True, timeout=60)
    assert unit.returncode == 2, unit
    assert b"not UTF-8" in unit.stderr
    repo = repository(tmp_path / "fine")
    for args in (("--user", "a b"), ("--worker-id", "../x")):
        result = spoolpipe("systemd-unit", str(repo), *args)
        assert result.returncode == 2, result


def test_unit_hardening_keeps_a_repository_visible() -> None:
    def render(repo: str) -> list[str]:
        return service.render(service.Unit(repo, "w1", "/usr/bin/python3", 30.0)).splitlines()

    assert {"PrivateTmp=yes", "ProtectSystem=full", "TimeoutStopSec=45"} <= set(render("/srv/jobs"))
    assert "PrivateTmp=yes" not in render("/var/tmp/jobs")
    assert "ProtectSystem=full" not in render("/etc/spoolpipe/jobs")
    assert "User=" not in "".join(render("/srv/jobs"))


def test_quoting_escapes_what_systemd_would_expand() -> None:
    assert service.quote("/srv/jobs") == "/srv/jobs"
    assert service.quote('/a b/100%/$X/"q"\\') == '"/a b/100%%/$$X/\\"q\\"\\\\"'
    with pytest.raises(service.UnitError):
        service.quote("/a\nb")


# -- request names and documents -------------------------------------------------------------------------

names = st.from_regex(rf"\A{NAME_PATTERN}\Z")


@given(names, st.sampled_from(list(control.Request)))
def test_a_request_name_says_which_worker_and_what(worker_id: str, request: control.Request) -> None:
    assert control.parse_request_name(control.request_name(worker_id, request)) == (worker_id, request)


@pytest.mark.parametrize(
    "name", ["w1", "w1.stopp", ".stop", "w1.STOP", "a/b.stop", "w1.stop.tmp", "~w1.reload"]
)
def test_other_names_are_not_requests(name: str) -> None:
    assert control.parse_request_name(name) is None


ME = control.Incarnation("nas", 4242, "2026-12-01T12:00:00.000+00:00")


def test_a_request_is_obeyed_only_by_the_run_it_names() -> None:
    doc = control.request_document("w1", control.Request.STOP, ME, 1_795_334_400.0, "laptop pid 7")
    raw = json.dumps(doc).encode()
    taken = control.parse_request("w1", control.Request.STOP, raw)
    assert control.verdict(taken, ME) == "obey"
    assert taken.by == "laptop pid 7"
    restarted = control.Incarnation("nas", 4243, "2026-12-01T12:05:00.000+00:00")
    assert control.verdict(taken, restarted) == "earlier run"
    # a file whose content says another worker or request is not this one's
    assert control.verdict(control.parse_request("w2", control.Request.STOP, raw), ME) == "unreadable"
    assert control.verdict(control.parse_request("w1", control.Request.RELOAD, raw), ME) == "unreadable"


@given(
    st.binary(max_size=300)
    | st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(st.text(), st.text()))
)
def test_any_content_is_judged_without_raising(raw: bytes) -> None:
    taken = control.parse_request("w1", control.Request.STOP, raw)
    assert control.verdict(taken, ME) == "unreadable"
    assert taken.problem


@pytest.mark.parametrize("blocked", ["logs/workers/w1.log", "locks/w1.lock"])
def test_a_log_or_lock_the_worker_cannot_open_is_a_worker_that_cannot_start(
    tmp_path: Path, blocked: str
) -> None:
    """A log or lock file the worker could not open (another user's, or a folder in the way) crashed it
    with a traceback, exit 70 (a bug) at every restart, while worker --check said it could start."""
    repo = repository(tmp_path)
    (repo / blocked).mkdir()
    checked = spoolpipe("worker", str(repo), "--worker-id", "w1", "--check")
    assert checked.returncode == 3, checked
    assert (
        "the worker cannot start: cannot write its " in checked.stderr
        and str(repo / blocked) in checked.stderr
    )
    started = spoolpipe("worker", str(repo), "--worker-id", "w1", "--until-idle")
    assert started.returncode == 3, started
    assert str(repo / blocked) in started.stderr and "Traceback" not in started.stderr


def test_a_draining_worker_says_stopping_when_it_begins_to_stop(tmp_path: Path) -> None:
    """STOPPING=1 went out only once the drain was over: systemd showed a stopping worker as running
    for as long as shutdown.grace-seconds let its activities finish."""
    import socket

    repo = repository(tmp_path, "shutdown.grace-seconds = 30\n")
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(60)
        submit(repo, "t.slow", {"sleep": 4})
        worker = start_worker(repo, "w1", env={"NOTIFY_SOCKET": address})
        try:
            assert sock.recv(256) == b"READY=1"
            wait_for(lambda: effects(repo, "t.slow"), 30, "the activity to start")
            worker.send_signal(signal.SIGTERM)
            sock.settimeout(2)  # the activity has seconds left to run: said before it ends
            assert sock.recv(256) == b"STOPPING=1"
            assert worker.poll() is None
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
            worker.wait(30)
