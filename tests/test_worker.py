"""The worker daemon end to end: real repositories, real worker processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from harness import (
    count_lines,
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


def test_results_and_follow_ups_are_stored_and_published(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    parents = [submit(repo, "t.parent", {"children": 3}) for _ in range(5)]
    klass = submit(repo, "t.class")
    run_until_idle(repo)
    done = records(repo / "done")
    assert len(done) == 5 + 15 + 2
    for pid in parents:
        record = done[pid]
        assert record["result"] == {"children": 3}
        assert record["spoolpipe"]["status"] == "done"
        assert record["spoolpipe"]["worker"] == "w1"
        children = record["spoolpipe"]["follow_ups"]
        assert len(children) == 3
        assert sorted(done[c]["result"] for c in children) == [0, 1, 2]
        assert all(done[c]["data"]["parent"] == pid for c in children)
    assert done[klass]["result"] == {"class": True}
    assert leftovers(repo) == {}


def test_fatal_fails_at_once_and_the_failure_processor_reports(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    aid = submit(repo, "t.fatal", {"invoice": 7})
    run_until_idle(repo)
    failed = records(repo / "failed")
    assert list(failed) == [aid]
    section = failed[aid]["spoolpipe"]
    assert section["reason"] == "this can never work"
    assert section["attempts"] == 1
    assert "Fatal" in section["traceback"]
    report = (repo / "reports" / f"{aid}.txt").read_text()
    assert "this can never work" in report and '"invoice": 7' in report
    # the failure activity itself is done, exactly once
    assert sum(1 for r in records(repo / "done").values() if r["type"] == "spoolpipe.failure") == 1


def test_a_failing_failure_processor_never_loops(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "failures.handler = t.fatal\nretry.max-attempts = 2\n")
    aid = submit(repo, "t.flaky")
    run_until_idle(repo)
    failed = records(repo / "failed")
    # the activity failed, its failure activity failed too, and nothing more was created
    assert len(failed) == 2
    assert aid in failed
    assert {r["type"] for r in failed.values()} == {"t.flaky", "t.fatal"}
    assert leftovers(repo) == {}


def test_retries_back_off_exponentially_then_succeed(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "retry.backoff-seconds = 0.4\nretry.max-attempts = 5\n")
    aid = submit(repo, "t.flaky", {"succeed_on": 3})
    run_until_idle(repo)
    runs = effects(repo, "t.flaky")
    assert [int(r[1]) for r in runs] == [1, 2, 3]
    times = [float(r[3]) for r in runs]
    assert times[1] - times[0] >= 0.4
    assert times[2] - times[1] >= 0.8
    done = records(repo / "done")[aid]
    assert done["result"] == "finally" and done["spoolpipe"]["attempts"] == 3
    log = (repo / "logs" / "activities" / f"{aid}~1.log").read_text()
    assert "flaky attempt 1" in log


def test_retries_are_bounded_by_max_attempts(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "retry.max-attempts = 3\n")
    aid = submit(repo, "t.flaky")
    run_until_idle(repo)
    assert len(effects(repo, "t.flaky")) == 3
    failed = records(repo / "failed")[aid]["spoolpipe"]
    assert failed["attempts"] == 3 and "flaky attempt 3" in failed["reason"]


def test_not_before_is_honoured(tmp_path: Path) -> None:
    # Long scan and heartbeat periods: the worker must wake up for the due time by itself.
    repo = make_repository(
        tmp_path, "scan.interval-seconds = 30\nheartbeat.interval-seconds = 10\nclaims.lease-seconds = 30\n"
    )
    start = time.time()
    submit(repo, "t.slow", {"sleep": 0}, not_before=start + 1.5)
    drop(
        repo,
        "later.json",
        json.dumps(
            {
                "type": "t.slow",
                "data": {"sleep": 0},
                "not_before": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start + 2.5)),
            }
        ),
    )
    run_until_idle(repo)
    ran = sorted(float(r[3]) for r in effects(repo, "t.slow"))
    assert len(ran) == 2
    assert start + 1.5 <= ran[0] < start + 4.5
    assert int(start + 2.5) <= ran[1] < start + 5.5


def test_a_file_with_a_mistyped_type_published_again_fixed_runs_without_a_restart(tmp_path: Path) -> None:
    """Polling only, as on NFS where another machine's rename is seen by the next listing alone."""
    repo = make_repository(tmp_path, "scan.watch = false\n")
    worker = start_worker(repo, "w1")
    try:
        drop(repo, "job.json", json.dumps({"type": "t.nopp", "data": {}}))  # nobody runs t.nopp
        drop(repo, "zz.json", json.dumps({"type": "t.noop", "data": {}}))  # in line after job.json
        wait_for(lambda: (repo / "done" / "zz.json").exists(), 30, "job.json read and set aside")
        assert (repo / "inbox" / "job.json").exists()
        staged = repo / "inbox" / ".job.json.tmp"
        staged.write_text(json.dumps({"type": "t.noop", "data": {}}))
        os.rename(staged, repo / "inbox" / "job.json")
        wait_for(lambda: (repo / "done" / "job.json").exists(), 30, "the fixed file done")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    assert json.loads((repo / "done" / "job.json").read_text())["type"] == "t.noop"
    assert os.listdir(repo / "inbox") == []


def test_the_longest_ids_fit_every_name_the_protocol_makes(tmp_path: Path) -> None:
    """128-character activity ids run by a 64-character worker id: claims, commits, follow-ups and
    failure reports are all names of at most 255 bytes (longer worker ids made them fail for ever)."""
    repo = make_repository(tmp_path)
    parent = submit(repo, "t.parent", {"children": 2}, id="P" * 128)
    fatal = submit(repo, "t.fatal", id="F" * 128)
    given_up = "G" * 128  # named at the highest attempt a name holds: past retry.max-attempts, so failed
    drop(repo, f"{given_up}~9999999.json", json.dumps({"type": "t.noop"}))
    output = run_until_idle(repo, "w" * 64, timeout=60)
    assert "too long" not in output
    done, failed = records(repo / "done"), records(repo / "failed")
    assert done[parent]["result"] == {"children": 2}
    assert sorted(r["type"] for r in done.values()) == ["spoolpipe.failure"] * 2 + ["t.child"] * 2 + [
        "t.parent"
    ]
    assert sorted(failed) == sorted([fatal, given_up])
    assert failed[given_up]["spoolpipe"]["attempts"] == 9999999
    assert leftovers(repo) == {}
    submit(repo, "t.noop", id="N" * 128)
    longer = start_worker(repo, "w" * 65, "--until-idle")  # its names could not all be made: refused
    assert longer.wait(30) == 2
    assert "at most 64 characters" in (repo.parent / f"worker-{'w' * 65}.stderr").read_text()
    assert os.listdir(repo / "inbox") == [f"{'N' * 128}.json"]


def test_a_processor_can_stop_the_programs_it_starts_with_sigterm_and_sigint(tmp_path: Path) -> None:
    """Pool processes leave SIGTERM, SIGINT and SIGHUP to their daemon, but a program a processor starts
    gets them back: an ignored signal stays ignored across exec, and terminate() then waited for ever."""
    extra = """
        import signal, subprocess

        @processor("t.terminate")
        def terminate(activity, ctx):
            codes = {}
            for name in ("SIGTERM", "SIGINT", "SIGHUP"):
                child = subprocess.Popen(["sleep", "60"])
                time.sleep(0.3)
                child.send_signal(getattr(signal, name))
                try:
                    codes[name] = child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    codes[name] = "ignored"
            return codes
    """
    repo = make_repository(tmp_path, extra_processors=extra)
    job = submit(repo, "t.terminate")
    run_until_idle(repo, timeout=90)
    result = json.loads((repo / "done" / f"{job}.json").read_text())["result"]
    assert result == {"SIGTERM": -signal.SIGTERM, "SIGINT": -signal.SIGINT, "SIGHUP": -signal.SIGHUP}


def test_a_running_worker_finishes_a_quarantine_a_crash_interrupted(tmp_path: Path) -> None:
    """Not only the next worker to start: one restarted within the minute, or a pool process killed
    mid-quarantine while its daemon runs on, left the entry hidden in tmp/, counted nowhere."""
    repo = make_repository(tmp_path)
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: (repo / "heartbeats" / "w1.json").exists(), 30, "the worker running")
        staging = repo / "tmp" / "quarantine-01M8VBQ7MQF5KK743E78ZKDAFX"  # as a crash leaves it
        staging.mkdir()
        (staging / "reason.txt").write_text("junk.json: malformed JSON\n")
        (staging / "junk.json").write_text("{junk")
        then = time.time() - 120  # older than any quarantine still under way
        os.utime(staging, (then, then))
        recovered = repo / "invalid" / "recovered~01M8VBQ7MQF5KK743E78ZKDAFX"
        wait_for(recovered.exists, 30, "the interrupted quarantine finished")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    assert sorted(os.listdir(recovered)) == ["junk.json", "reason.txt"]
    assert (recovered / "junk.json").read_text() == "{junk"
    assert not staging.exists()


def test_a_worker_whose_ids_folder_is_deleted_goes_on_running_work(tmp_path: Path) -> None:
    """Each heartbeat's sweep listed ids/ unguarded: with a heartbeat due at every turn of the loop the
    worker logged a file system error each second and never handed out work again."""
    repo = make_repository(tmp_path)  # heartbeat.interval-seconds = 0.5
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: (repo / "heartbeats" / "w1.json").exists(), 30, "the worker running")
        os.rmdir(repo / "ids")
        time.sleep(1.5)  # a few heartbeats
        jobs = [submit(repo, "t.noop") for _ in range(3)]
        wait_for(lambda: all((repo / "done" / f"{j}.json").exists() for j in jobs), 30, "the work done")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    assert "file system error" not in (repo.parent / "worker-w1.stderr").read_text()
    assert (repo / "ids").is_dir()


def test_stopping_now_while_an_outcome_is_written_counts_the_attempt_that_ran(tmp_path: Path) -> None:
    """The processor had returned; its outcome (a large result) was being encoded and written when the
    second SIGTERM released the batch: released as the same attempt, it ran again as attempt 1."""
    extra = """
        @processor("t.finish_slowly")
        def finish_slowly(activity, ctx):
            _effect(ctx, activity)
            go, returning = ctx.repository / "effects" / "go", ctx.repository / "effects" / "returning"
            while activity.attempt == 1 and not go.exists():
                time.sleep(0.01)
            result = list(range(5_000_000))  # takes a while to check and encode after the return
            returning.touch()
            return result
    """
    repo = make_repository(
        tmp_path, "limits.result-bytes = 100000000\nshutdown.grace-seconds = 60\n", extra_processors=extra
    )
    job = submit(repo, "t.finish_slowly")
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: effects(repo, "t.finish_slowly"), 30, "the processor running")
        worker.send_signal(signal.SIGTERM)  # drain: it lets the running one finish
        (repo / "effects" / "go").touch()
        wait_for((repo / "effects" / "returning").exists, 30, "the processor returning", interval=0.001)
        worker.send_signal(signal.SIGTERM)  # now: release what is left
        assert worker.wait(60) == 0
    finally:
        kill_group(worker)
    log = (repo.parent / "worker-w1.stderr").read_text()
    assert "ran, but its outcome was lost: its next attempt is queued" in log, log[-3000:]
    run_until_idle(repo, "w2")
    assert [e[1] for e in effects(repo, "t.finish_slowly")] == ["1", "2"]
    assert json.loads((repo / "done" / f"{job}.json").read_text())["spoolpipe"]["attempts"] == 2


def test_a_stuck_processor_is_killed_by_its_timeout_and_retried(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "timeout.t.stuck = 1\n")
    aid = submit(repo, "t.stuck", {"unstick_on": 2})
    started = time.monotonic()
    output = run_until_idle(repo)
    assert time.monotonic() - started < 30
    assert records(repo / "done")[aid]["result"] == "unstuck"
    assert [r[1] for r in effects(repo, "t.stuck")] == ["1", "2"]
    assert "timed out after 1.0s" in output
    assert "timed out" in (repo / "logs" / "activities" / f"{aid}~1.log").read_text()


def test_a_result_that_hangs_while_it_is_checked_is_killed_by_the_timeout(tmp_path: Path) -> None:
    """The processor returned a dict whose items() never ends: its clock had stopped at the return, so
    nothing killed it, the slot was lost for good and the next activity never ran."""
    extra = """
        class _Endless(dict):
            def items(self):
                while True:
                    time.sleep(0.05)

        @processor("t.hang_after")
        def hang_after(activity, ctx):
            _effect(ctx, activity)
            return _Endless(a=1) if activity.attempt == 1 else {"fine": True}
    """
    repo = make_repository(tmp_path, "pool.size = 1\ntimeout.t.hang_after = 1\n", extra_processors=extra)
    aid = submit(repo, "t.hang_after")
    ok = submit(repo, "t.noop")
    output = run_until_idle(repo, timeout=60)
    assert f"{aid} (t.hang_after) timed out after 1.0s" in output, output[-3000:]
    assert records(repo / "done")[aid]["result"] == {"fine": True}
    assert records(repo / "done")[aid]["spoolpipe"]["attempts"] == 2
    assert ok in ids_in(repo / "done")


def test_a_deep_backlog_of_a_type_at_its_concurrency_never_holds_up_other_types(tmp_path: Path) -> None:
    """Refused entries stayed at the front of the line and one look went past at most 256 of them: with
    more of a type at its concurrency ahead, the other pool process idled until that backlog shrank."""
    repo = make_repository(tmp_path, "pool.size = 2\nconcurrency.t.slow = 1\ndurability.fsync = false\n")
    for _ in range(700):
        submit(repo, "t.slow", {"sleep": 0.2})
    other = submit(repo, "t.noop")
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: other in ids_in(repo / "done"), 60, "the other type to run")
        assert len(effects(repo, "t.slow")) < 20  # it ran beside the first few, not after the backlog
    finally:
        kill_group(worker)


def test_a_delayed_file_starts_on_time_before_the_pool_has_started(tmp_path: Path) -> None:
    """The wake-up for the earliest delayed entry waited for an idle pool process, and there were none
    before the first work: a file named ID~2~MS.json started at the next scan or heartbeat instead."""
    repo = make_repository(
        tmp_path, "scan.interval-seconds = 30\nheartbeat.interval-seconds = 20\nclaims.lease-seconds = 60\n"
    )
    due = time.time() + 2.0
    drop(repo, f"late~2~{int(due * 1000)}.json", '{"id": "late", "type": "t.slow", "data": {"sleep": 0}}')
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: effects(repo, "t.slow"), 30, "the delayed activity to start")
    finally:
        kill_group(worker)
    started = float(effects(repo, "t.slow")[0][3])
    assert due <= started < due + 1.5, started - due


def test_a_pool_process_stopped_while_idle_is_replaced_once_its_batch_overstays(tmp_path: Path) -> None:
    """A batch sent to a process an admin had SIGSTOPped never had a running item, so no timeout
    applied: the worker ran nothing more, for good, and status called it alive and idle."""
    extra = """
        @processor("t.pid")
        def pid(activity, ctx):
            _effect(ctx, activity)
            return os.getpid()
    """
    repo = make_repository(tmp_path, "pool.size = 1\ntimeout.t.pid = 2\n", extra_processors=extra)
    first = submit(repo, "t.pid")
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: first in ids_in(repo / "done"), 30, "the first activity")
        stopped = int(records(repo / "done")[first]["result"])
        os.kill(stopped, signal.SIGSTOP)
        later = [submit(repo, "t.pid") for _ in range(3)]
        wait_for(lambda: set(later) <= set(ids_in(repo / "done")), 30, "the later ones, in a new process")
    finally:
        kill_group(worker)
    assert all(records(repo / "done")[i]["result"] != stopped for i in later)
    assert all(records(repo / "done")[i]["spoolpipe"]["attempts"] == 1 for i in later)  # never started
    assert "did not start its batch within 2.0s" in (repo.parent / "worker-w1.stderr").read_text()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_draining_worker_waits_without_spinning(tmp_path: Path) -> None:
    """While stopping, the scan's deadline was still waited for but never moved on: the loop's wait was
    0 for the whole of shutdown.grace-seconds, a core at 100% (for hours with a long grace)."""
    repo = make_repository(tmp_path, "shutdown.grace-seconds = 60\nscan.interval-seconds = 0.5\n")
    submit(repo, "t.slow", {"sleep": 8})
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: effects(repo, "t.slow"), 30, "the activity to start")
        worker.send_signal(signal.SIGTERM)
        time.sleep(1.5)  # the scan deadline is past
        before = _cpu_seconds(worker.pid)
        time.sleep(3)
        assert _cpu_seconds(worker.pid) - before < 0.5  # a spinning loop uses about 3 s of it
        assert worker.wait(30) == 0
    finally:
        kill_group(worker)


def test_a_crashing_processor_counts_as_attempts_then_fails(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "retry.max-attempts = 2\n")
    aid = submit(repo, "t.crash")
    ok = submit(repo, "t.noop")
    run_until_idle(repo)
    assert len(effects(repo, "t.crash")) == 2
    assert "pool process died" in records(repo / "failed")[aid]["spoolpipe"]["reason"]
    assert ok in ids_in(repo / "done")


def test_sigterm_lets_running_work_finish(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "shutdown.grace-seconds = 20\n")
    aid = submit(repo, "t.slow", {"sleep": 1.5})
    worker = start_worker(repo, "w1")
    wait_for(lambda: len(effects(repo, "t.slow")) == 1, 20, "the activity to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert ids_in(repo / "done") == [aid]
    assert leftovers(repo) == {}
    assert not (repo / "heartbeats" / "w1.json").exists()


def test_sigterm_releases_work_that_outlives_the_grace_period(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "shutdown.grace-seconds = 0.5\n")
    aid = submit(repo, "t.slow", {"sleep": 30})
    worker = start_worker(repo, "w1")
    wait_for(lambda: len(effects(repo, "t.slow")) == 1, 20, "the activity to start")
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert time.monotonic() - started < 10
    # released as the same attempt: a shutdown is not the activity's fault
    assert os.listdir(repo / "inbox") == [f"{aid}~1.json"]
    assert os.listdir(repo / "running") == []


def test_a_killed_worker_is_recovered_by_a_restart(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    aid = submit(repo, "t.stuck", {"unstick_on": 2})
    worker = start_worker(repo, "w1")
    wait_for(lambda: len(effects(repo, "t.stuck")) == 1, 20, "the activity to start")
    kill_group(worker)
    assert len(os.listdir(repo / "running")) == 1
    # on restart the worker recovers its own dead claim; the crash counts as attempt 1
    output = run_until_idle(repo, "w1")
    assert "recovered 1 claim left by an earlier run of this worker (w1)" in output
    assert [r[1] for r in effects(repo, "t.stuck")] == ["1", "2"]
    assert records(repo / "done")[aid]["spoolpipe"]["attempts"] == 2
    assert leftovers(repo) == {}


def test_a_stop_during_recovery_leaves_the_rest_for_the_next_start(tmp_path: Path) -> None:
    """A SIGTERM while a worker recovers claims ends the recovery between two claims: the stop is
    not held up by thousands of claims, and every claim left is recovered at the next start."""
    repo = make_repository(
        tmp_path,
        # The daemon's own SIGTERM, once, while it starts: before its recovery of its earlier claims.
        extra_processors=(
            "\nimport signal as _signal\n"
            "_marker = Path(__file__).parent / 'stop-at-import'\n"
            "if _marker.exists():\n"
            "    _marker.unlink()\n"
            "    os.kill(os.getpid(), _signal.SIGTERM)\n"
        ),
    )
    claims = [f"a{i:04d}~1~w1.json" for i in range(300)]
    for name in claims:
        (repo / "running" / name).write_text(json.dumps({"type": "t.noop", "data": {}}))
    (tmp_path / "procs" / "stop-at-import").touch()
    worker = start_worker(repo, "w1")
    assert worker.wait(60) == 0
    output = (repo.parent / "worker-w1.stderr").read_text()
    assert (
        "recovered 0 of 300 claims left by an earlier run of this worker (w1); stopping, "
        "so the other 300 stay in running/ for the next recovery"
    ) in output, output
    assert sorted(os.listdir(repo / "running")) == claims
    assert os.listdir(repo / "inbox") == []
    output = run_until_idle(repo, "w1")
    assert "recovered 300 claims left by an earlier run of this worker (w1): 300 requeued" in output
    assert len(ids_in(repo / "done")) == 300
    assert {r["spoolpipe"]["attempts"] for r in records(repo / "done").values()} == {2}
    assert leftovers(repo) == {}


def test_a_bad_hot_reload_keeps_the_last_good_configuration(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    worker = start_worker(repo, "w1")
    try:
        first = submit(repo, "t.noop")
        wait_for(lambda: first in ids_in(repo / "done"), 20, "the first activity")
        props = repo / "spoolpipe.properties"
        good = props.read_text()
        props.write_text(good + "pool.size = many\n")
        stderr = repo.parent / "worker-w1.stderr"
        wait_for(lambda: "configuration change rejected" in stderr.read_text(), 20, "the rejection")
        line = len((good + "pool.size = many\n").splitlines())
        assert f"spoolpipe.properties:{line}: pool.size" in stderr.read_text()
        second = submit(repo, "t.noop")
        wait_for(lambda: second in ids_in(repo / "done"), 20, "work under the old configuration")
        # a good change then takes effect: this worker stops taking t.noop
        props.write_text(good + "concurrency.t.noop = 0\n")
        wait_for(lambda: "configuration reloaded" in stderr.read_text(), 20, "the reload")
        third = submit(repo, "t.noop")
        time.sleep(1.5)
        assert os.listdir(repo / "inbox") == [f"{third}.json"]
        assert worker.poll() is None
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0


def test_per_worker_properties_route_types_between_workers(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    (repo / "workers" / "a.properties").write_text("concurrency.t.child = 0\n")
    (repo / "workers" / "b.properties").write_text("concurrency.t.parent = 0\n")
    a = start_worker(repo, "a")
    b = start_worker(repo, "b")
    try:
        for _ in range(4):
            submit(repo, "t.parent", {"children": 2})
        wait_for(lambda: len(ids_in(repo / "done")) == 12, 60, "all activities")
        assert {r[2] for r in effects(repo, "t.parent")} == {"a"}
        assert {r[2] for r in effects(repo, "t.child")} == {"b"}
    finally:
        for w in (a, b):
            w.send_signal(signal.SIGTERM)
            assert w.wait(30) == 0


def test_a_second_worker_with_the_same_id_refuses_to_start(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    first = start_worker(repo, "same")
    try:
        wait_for(lambda: (repo / "heartbeats" / "same.json").exists(), 20, "the first worker")
        second = start_worker(repo, "same", "--until-idle")
        assert second.wait(30) == 3
        assert "already running" in (repo.parent / "worker-same.stderr").read_text()
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(30)


def test_the_worker_log_and_attempt_logs_are_written(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    aid = submit(repo, "t.fatal")
    run_until_idle(repo)
    worker_log = (repo / "logs" / "workers" / "w1.log").read_text()
    assert count_lines(worker_log, f"failed {aid}") == 1
    assert "worker w1 started" in worker_log
    assert "this can never work" in (repo / "logs" / "activities" / f"{aid}~1.log").read_text()


def test_image_work_is_admitted_by_megapixels_across_pool_processes(tmp_path: Path) -> None:
    repo = make_repository(
        tmp_path,
        "pool.size = 3\nimages.max-megapixels = 10\n",
        extra_processors="""
        @processor("t.pixels", megapixels=lambda activity, settings: activity.data["mpx"])
        def pixels(activity, ctx):
            _effect(ctx, activity)
            time.sleep(0.6)
            with open(ctx.repository / "effects" / "t.pixels.end", "a") as f:
                f.write(f"{activity.id} {time.time()}\\n")
        """,
    )
    big = [submit(repo, "t.pixels", {"mpx": 8}) for _ in range(3)]
    small = [submit(repo, "t.pixels", {"mpx": 3}) for _ in range(3)]
    run_until_idle(repo)
    starts = {e[0]: float(e[3]) for e in effects(repo, "t.pixels")}
    ends = {
        line.split()[0]: float(line.split()[1])
        for line in (repo / "effects" / "t.pixels.end").read_text().splitlines()
    }
    spans = {i: (starts[i], ends[i]) for i in big + small}

    def overlap(a: str, b: str) -> bool:
        return spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]

    # 8 + 8 > 10: two big ones never ran at once; 3 + 3 + 3 <= 10: the small ones did
    assert not any(overlap(a, b) for a in big for b in big if a < b)
    assert any(overlap(a, b) for a in small for b in small if a < b)


def _pool_exit() -> None:
    os._exit(0)


def test_the_command_group_of_a_pool_process_that_died_is_never_killed() -> None:
    """Its published group id is stale once no zombie holds it: after a pool process died on its own,
    the daemon SIGKILLed whatever group had taken that id since (another program's)."""
    import ctypes
    import multiprocessing
    import multiprocessing.sharedctypes
    import subprocess

    from spoolpipe.pool import COMMAND_GROUP, Pool, Slot

    innocent = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a group of its own
    try:
        context = multiprocessing.get_context("fork")
        died = context.Process(target=_pool_exit)
        died.start()
        died.join(30)
        progress = multiprocessing.sharedctypes.RawArray(ctypes.c_double, COMMAND_GROUP + 1)
        progress[COMMAND_GROUP] = innocent.pid  # as if its command's group had had that id
        parent, _child = context.Pipe()
        Pool.kill(object.__new__(Pool), Slot(0, died, parent, progress))
        time.sleep(0.2)
        assert innocent.poll() is None, "a process spoolpipe does not own was killed"
    finally:
        innocent.kill()
        innocent.wait()
