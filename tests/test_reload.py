"""What a running worker notices of a changed configuration, driven in-process on a real repository
(and, at the end, by real workers)."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import pytest

from harness import effects, ids_in, make_repository, start_worker, submit, wait_for
from spoolpipe import config
from spoolpipe.reload import Reloads


def _edit(root: Path, text: str, stamp: int) -> None:
    """Write the worker's own properties file with an mtime of its own (file times can be coarse)."""
    path = root / "workers" / "w1.properties"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    os.utime(path, ns=(stamp, stamp))


def test_changed_files_or_a_request_give_new_settings_and_nothing_else_does(tmp_path: Path) -> None:
    root = make_repository(tmp_path)
    running = config.load(root, "w1").settings
    reloads = Reloads(root, "w1", running)
    assert reloads.settings(running, requested=False) is None
    again = reloads.settings(running, requested=True)  # SIGHUP or spoolpipe reload: read them anyway
    assert again == running
    _edit(root, "timeout.seconds = 7\n", 1_000_000_000_000)
    changed = reloads.settings(running, requested=False)
    assert changed is not None and changed.timeout_seconds == 7
    assert reloads.settings(changed, requested=False) is None  # noticed once


def test_a_change_that_does_not_load_is_rejected_once_and_the_running_settings_stay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_repository(tmp_path)
    running = config.load(root, "w1").settings
    reloads = Reloads(root, "w1", running)
    _edit(root, "timeout.seconds = soon\n", 1_000_000_000_000)
    with caplog.at_level(logging.ERROR, "spoolpipe.worker"):
        assert reloads.settings(running, requested=False) is None
        assert reloads.settings(running, requested=False) is None
    rejected = [r.getMessage() for r in caplog.records]
    assert len(rejected) == 1
    assert rejected[0].startswith("configuration change rejected, keeping the previous configuration:\n")
    assert "timeout.seconds" in rejected[0]
    _edit(root, "timeout.seconds = 9\n", 2_000_000_000_000)  # fixed: taken at the next look
    fixed = reloads.settings(running, requested=False)
    assert fixed is not None and fixed.timeout_seconds == 9


def test_a_new_pool_size_is_said_to_wait_for_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_repository(tmp_path, "pool.size = 2\n")
    running = config.load(root, "w1").settings
    reloads = Reloads(root, "w1", running)
    _edit(root, "pool.size = 5\n", 1_000_000_000_000)
    settings = reloads.settings(running, requested=False)
    assert settings is not None
    with caplog.at_level(logging.INFO, "spoolpipe.worker"):
        reloads.reloaded(settings, pool_size=2)
    said = [r.getMessage() for r in caplog.records]
    assert said[0] == "pool.size = 5 takes effect at restart; until then the pool keeps its 2 processes"
    assert said[1].startswith("configuration reloaded from ") and "w1.properties" in said[1]


def test_what_a_worker_takes_only_at_start_is_said_to_wait_for_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A reload said "configuration reloaded" and nothing else: the heartbeat still said flock."""
    root = make_repository(tmp_path, "claims.lock = flock\n")
    running = config.load(root, "w1").settings
    reloads = Reloads(root, "w1", running)
    _edit(root, "claims.lock = lease\nprocessors =\n", 1_000_000_000_000)
    settings = reloads.settings(running, requested=False)
    assert settings is not None
    with caplog.at_level(logging.INFO, "spoolpipe.worker"):
        reloads.reloaded(settings, pool_size=settings.pool_size)
    said = [r.getMessage() for r in caplog.records]
    assert "claims.lock = lease takes effect at restart; until then the worker keeps flock" in said
    assert any(
        m.startswith("processors: removing ")
        and m.endswith("takes effect at restart; until then its types still run here")
        for m in said
    ), said


def test_no_configuration_edit_kills_a_running_worker(tmp_path: Path) -> None:
    """Each of these values raised out of validation (ValueError, RecursionError), or passed it and
    then failed at open(): the worker exited 70 at the reload, its claims left in running/."""
    repo = make_repository(tmp_path)
    props = repo / "spoolpipe.properties"
    good = props.read_text()
    stderr = repo.parent / "worker-w1.stderr"
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: (repo / "heartbeats" / "w1.json").exists(), 20, "the worker to start")
        bad = [
            'command.x.ok-exit-codes = \u00b2\ncommand.x.argv = ["true"]\n',
            "pool.size = " + "1" * 5000 + "\n",
            "command.x.argv = " + "[" * 100_000 + "]" * 100_000 + "\n",
            "metrics.file = /tmp/\\uD800.prom\n",
        ]
        for n, edit in enumerate(bad, 1):
            props.write_text(good + edit)
            os.utime(props, ns=(n * 10**12, n * 10**12))  # file times can be coarse
            wait_for(
                lambda n=n: stderr.read_text().count("configuration change rejected") == n,  # type: ignore[misc]
                20,
                f"rejection {n}",
            )
            assert worker.poll() is None, stderr.read_text()
        aid = submit(repo, "t.noop")
        wait_for(lambda: aid in ids_in(repo / "done"), 20, "work under the last good configuration")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, stderr.read_text()


def test_a_smaller_pool_size_changes_nothing_until_a_restart(tmp_path: Path) -> None:
    """The log said the pool keeps its 2 processes, but concurrency.default (0: the pool size) followed
    the new pool.size: activities ran one at a time and the heartbeat said 1."""
    repo = make_repository(tmp_path, "pool.size = 2\nshutdown.grace-seconds = 0.5\n")
    props = repo / "spoolpipe.properties"
    stderr = repo.parent / "worker-w1.stderr"
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: (repo / "heartbeats" / "w1.json").exists(), 20, "the worker to start")
        props.write_text(props.read_text() + "pool.size = 1\n")
        os.utime(props, ns=(10**12, 10**12))
        wait_for(lambda: "configuration reloaded" in stderr.read_text(), 20, "the reload")
        assert "pool.size = 1 takes effect at restart; until then the pool keeps its 2 processes" in (
            stderr.read_text()
        )
        for _ in range(2):
            submit(repo, "t.slow", {"sleep": 30})
        wait_for(lambda: len(effects(repo, "t.slow")) == 2, 20, "both to run at once, as before")
        heartbeat = json.loads((repo / "heartbeats" / "w1.json").read_text())
        assert (heartbeat["pool_size"], heartbeat["types"]["t.slow"]) == (2, 2)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, stderr.read_text()


def test_new_processor_code_runs_what_waited_in_the_inbox_for_its_type(tmp_path: Path) -> None:
    """An activity set aside because no processor here runs its type: a module edit that registers the
    type ran new ones at once, but the one that had waited stayed in the inbox until a restart."""
    repo = make_repository(tmp_path, "heartbeat.interval-seconds = 0.5\n")
    procs = tmp_path / "procs" / "e2e_procs.py"
    stderr = repo.parent / "worker-w1.stderr"
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: (repo / "heartbeats" / "w1.json").exists(), 20, "the worker to start")
        early = submit(repo, "t.later")
        time.sleep(1.5)  # notified at once: set aside, as no processor here runs its type
        procs.write_text(
            procs.read_text() + '\n@processor("t.later")\ndef later(activity, ctx):\n    return 1\n'
        )
        os.utime(procs, ns=(10**12, 10**12))  # file times can be coarse
        wait_for(lambda: early in ids_in(repo / "done"), 20, "the activity that waited to run")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, stderr.read_text()


def _heartbeats_within(repo: Path, seconds: float) -> int:
    """How many times the heartbeat file is written within ``seconds``."""
    path, seen, writes = repo / "heartbeats" / "w1.json", set(), 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        stamp = os.stat(path).st_mtime_ns
        if stamp not in seen:
            seen.add(stamp)
            writes += 1
        time.sleep(0.02)
    return writes - 1  # the first one seen was written before


def test_a_shorter_heartbeat_interval_applies_at_the_reload(tmp_path: Path) -> None:
    """The next heartbeat had been planned with the old interval: a worker whose interval went from 60s
    back to 1s wrote none (and read no stop or reload request) for up to a minute."""
    repo = make_repository(tmp_path, "heartbeat.interval-seconds = 1\nclaims.lease-seconds = 300\n")
    stderr = repo.parent / "worker-w1.stderr"
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: (repo / "heartbeats" / "w1.json").exists(), 20, "the worker to start")
        _edit(repo, "heartbeat.interval-seconds = 60\n", 10**12)
        wait_for(lambda: stderr.read_text().count("configuration reloaded") == 1, 20, "the first reload")
        beat = repo / "heartbeats" / "w1.json"
        before = beat.stat().st_mtime_ns
        wait_for(lambda: beat.stat().st_mtime_ns != before, 20, "a heartbeat planning the next in 60s")
        (repo / "workers" / "w1.properties").unlink()
        worker.send_signal(signal.SIGHUP)
        wait_for(lambda: stderr.read_text().count("configuration reloaded") == 2, 20, "the second reload")
        assert _heartbeats_within(repo, 3.5) >= 2
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, stderr.read_text()


def test_a_heartbeat_interval_the_running_lease_cannot_cover_is_rejected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """claims.lease-seconds is taken at start: the check against twice the interval used the new value
    of that key, so a worker came to run with a lease of 30s and heartbeats every 120s."""
    root = make_repository(tmp_path)
    running = config.load(root, "w1").settings
    reloads = Reloads(root, "w1", running)
    _edit(root, "heartbeat.interval-seconds = 120\nclaims.lease-seconds = 300\n", 10**12)
    with caplog.at_level(logging.ERROR, "spoolpipe.worker"):
        assert reloads.settings(running, requested=False) is None
    assert "heartbeat.interval-seconds: 120 is more than half of the claims.lease-seconds" in caplog.text
    # named where it is set, as every other configuration error is
    assert f"{root / 'workers' / 'w1.properties'}:1: heartbeat.interval-seconds: 120 is more" in caplog.text


def test_reloads_after_a_pool_size_change_keep_the_pool_processes_when_nothing_changed(
    tmp_path: Path,
) -> None:
    """pool.size waits for a restart, but the settings compared with it in: every later reload, changed
    or not, replaced every pool process (processors lost what they keep loaded)."""
    extra = """
        @processor("t.pid")
        def pid(activity, ctx):
            return os.getpid()
    """
    repo = make_repository(tmp_path, "pool.size = 1\n", extra_processors=extra)
    stderr = repo.parent / "worker-w1.stderr"
    worker = start_worker(repo, "w1")

    def run_one() -> int:
        aid = submit(repo, "t.pid")
        wait_for(lambda: aid in ids_in(repo / "done"), 20, "the activity")
        return int(json.loads((repo / "done" / f"{aid}.json").read_text())["result"])

    try:
        wait_for(lambda: (repo / "heartbeats" / "w1.json").exists(), 20, "the worker to start")
        _edit(repo, "pool.size = 2\n", 10**12)
        wait_for(lambda: stderr.read_text().count("configuration reloaded") == 1, 20, "the reload")
        first = run_one()
        for n in (2, 3):
            worker.send_signal(signal.SIGHUP)
            wait_for(lambda n=n: stderr.read_text().count("configuration reloaded") == n, 20, "a reload")  # type: ignore[misc]
            assert run_one() == first
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, stderr.read_text()
