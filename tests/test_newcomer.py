"""Contract slips a newcomer hits (issue 7, item 5): each test failed before its fix."""

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
    effects,
    ids_in,
    kill_group,
    make_repository,
    records,
    run_until_idle,
    start_worker,
    submit,
    wait_for,
)
from spoolpipe import config, write_atomic
from spoolpipe.activity import format_time
from spoolpipe.config import ConfigError
from spoolpipe.repository import Repository


def _stderr(repo: Path, worker: str = "w1") -> str:
    return (repo.parent / f"worker-{worker}.stderr").read_text()


def _stop(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            kill_group(worker)


# -- configuration -----------------------------------------------------------------------------


def test_the_init_header_says_pool_size_applies_at_restart() -> None:
    header = config.render_defaults().split("\n\n# ===", 1)[0]
    prose = " ".join(header.replace("#", " ").split())
    assert "pool.size takes effect at restart" in prose
    assert "pool.size take effect by recycling" not in prose


def test_a_reloaded_pool_size_is_not_reported_before_restart(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "pool.size = 1\n")
    worker = start_worker(repo, "w1")
    beat = repo / "heartbeats" / "w1.json"
    try:
        wait_for(beat.exists, 20, "the first heartbeat")
        props = repo / "spoolpipe.properties"
        props.write_text(props.read_text() + "pool.size = 3\n")
        wait_for(lambda: "configuration reloaded" in _stderr(repo), 20, "the reload")
        time.sleep(1.2)  # two more heartbeats
        doc = json.loads(beat.read_text())
        assert doc["pool_size"] == 1
        assert doc["types"]["t.noop"] == 1
        assert "takes effect at restart" in _stderr(repo)
    finally:
        _stop(worker)


def test_init_writes_defaults_commented_so_appended_keys_load_without_warnings(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    Repository.create(root, config.render_defaults())
    props = root / config.SHARED_FILE
    text = props.read_text()
    uncommented = text.replace("\n#retry.max-attempts = 5\n", "\nretry.max-attempts = 7\n")
    assert uncommented != text
    props.write_text(uncommented + "pool.size = 2\n")
    loaded = config.load(root, "w1")
    assert loaded.warnings == ()
    assert loaded.settings.pool_size == 2
    assert loaded.settings.retry_max_attempts == 7


def test_unknown_keys_are_reported_with_the_errors_of_the_same_load(tmp_path: Path) -> None:
    (tmp_path / config.SHARED_FILE).write_text("pool.szie = 2\nretry.max-attempts = none\n")
    with pytest.raises(ConfigError) as caught:
        config.load(tmp_path)
    text = str(caught.value)
    assert ":2: retry.max-attempts: 'none' is not an integer" in text
    assert ":1: unknown key 'pool.szie'; did you mean 'pool.size'?" in text
    assert caught.value.warnings == [
        f"{tmp_path / config.SHARED_FILE}:1: unknown key 'pool.szie'; did you mean 'pool.size'?"
    ]


# -- crashes and idleness ------------------------------------------------------------------------

KILLER = """
import signal

@processor("t.sigkill")
def sigkill(activity, ctx):
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_crashed_pool_process_is_reported_with_its_exit_code_or_signal(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "retry.max-attempts = 1\n", extra_processors=KILLER)
    exited = submit(repo, "t.crash")
    killed = submit(repo, "t.sigkill")
    run_until_idle(repo)
    failed = records(repo / "failed")
    assert "pool process died (exit code 9)" in failed[exited]["spoolpipe"]["reason"]
    assert "pool process died (killed by SIGKILL)" in failed[killed]["spoolpipe"]["reason"]


def test_until_idle_says_what_it_waits_for_and_no_wait_leaves_it_queued(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    later = time.time() + 3600
    delayed = submit(repo, "t.noop", not_before=later)
    now = submit(repo, "t.noop")
    worker = start_worker(repo, "w1", "--until-idle")
    try:
        wait_for(lambda: "--until-idle: waiting" in _stderr(repo), 20, "the waiting message")
        assert worker.poll() is None
        line = next(x for x in _stderr(repo).splitlines() if "--until-idle: waiting" in x)
        assert delayed in line
        assert format_time(later)[:16] in line  # until when, to the minute
    finally:
        kill_group(worker)
    assert now in ids_in(repo / "done")
    proc = start_worker(repo, "w2", "--until-idle", "--no-wait")
    assert proc.wait(60) == 0
    assert os.listdir(repo / "inbox") == [f"{delayed}.json"]
    assert "1 delayed activity left queued" in _stderr(repo, "w2")


def test_no_wait_needs_until_idle(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "spoolpipe", "worker", str(repo), "--no-wait"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--no-wait" in result.stderr and "--until-idle" in result.stderr


# -- processors ----------------------------------------------------------------------------------

UNDECLARED = """
class Undeclared(Processor):
    type = "t.undeclared"
    def process(self, activity, ctx):
        ctx.follow_up("t.noop", {"from": "undeclared class"})
        return "ok"

@processor("t.printer")
def printer(activity, ctx):
    import sys
    print("printed to stdout", activity.id)
    print("printed to stderr", file=sys.stderr)
    ctx.log.info("logged")
    assert sys.stdout.encoding == "utf-8" and sys.stderr.fileno() == 2  # code asking for them still works
    return "printed"

@processor("t.loggers")
def loggers(activity, ctx):
    import logging
    return len(logging.Logger.manager.loggerDict)
"""


def test_a_class_without_follow_ups_may_create_any_type_like_a_function(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, extra_processors=UNDECLARED)
    aid = submit(repo, "t.undeclared")
    run_until_idle(repo)
    done = records(repo / "done")
    assert done[aid]["result"] == "ok"
    assert len(done) == 2


def test_print_in_a_processor_goes_to_the_attempt_log(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, extra_processors=UNDECLARED)
    aid = submit(repo, "t.printer")
    output = run_until_idle(repo)
    assert records(repo / "done")[aid]["result"] == "printed"
    attempt_log = (repo / "logs" / "activities" / f"{aid}~1.log").read_text()
    assert f"printed to stdout {aid}" in attempt_log
    assert "printed to stderr" in attempt_log
    assert "logged" in attempt_log
    assert "printed to" not in output


def test_loggers_in_a_pool_process_stay_flat_over_1000_activities(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "pool.size = 1\ndurability.fsync = false\n", extra_processors=UNDECLARED)
    worker = start_worker(repo, "w1")
    try:
        first = submit(repo, "t.loggers")
        wait_for(lambda: first in ids_in(repo / "done"), 30, "the first count")
        noops = {submit(repo, "t.noop") for _ in range(1000)}
        wait_for(lambda: noops <= set(ids_in(repo / "done")), 300, "1000 activities")
        last = submit(repo, "t.loggers")
        wait_for(lambda: last in ids_in(repo / "done"), 30, "the last count")
    finally:
        _stop(worker)
    done = records(repo / "done")
    assert done[first]["spoolpipe"]["pid"] == done[last]["spoolpipe"]["pid"]
    assert done[last]["result"] == done[first]["result"]


VERSIONED = """
from spoolpipe import processor

@processor("t.version")
def version(activity, ctx):
    import time
    time.sleep(activity.data.get("sleep", 0))
    return {VERSION!r}
"""


def test_a_changed_processor_module_is_picked_up_by_recycling_the_pool(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "processors = e2e_procs, versioned\npool.size = 1\n")
    module = tmp_path / "procs" / "versioned.py"
    module.write_text(VERSIONED.replace("{VERSION!r}", "'one'"))
    worker = start_worker(repo, "w1")
    try:
        first = submit(repo, "t.version", {"sleep": 2})
        wait_for(lambda: (repo / "running" / f"{first}~1~w1.json").exists(), 30, "the first to run")
        module.write_text(VERSIONED.replace("{VERSION!r}", "'second'"))  # while the only process is busy
        wait_for(lambda: "processor code changed" in _stderr(repo), 20, "the recycle")
        wait_for(lambda: first in ids_in(repo / "done"), 30, "the first version")
        second = submit(repo, "t.version")
        wait_for(lambda: second in ids_in(repo / "done"), 30, "the second version")
    finally:
        _stop(worker)
    done = records(repo / "done")
    assert (done[first]["result"], done[second]["result"]) == ("one", "second")
    assert str(module) in _stderr(repo)


def _change(path: Path, text: str) -> None:
    """A new version of a file, its modification time surely different from the old one's."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


HALF_WAY = """
from spoolpipe import processor

@processor("t.extra")
def extra(activity, ctx):
    return "code of a module that did not import"

raise ImportError("half way")
"""


def _name_extra_and_see_it_rejected(repo: Path) -> None:
    """Once worker w1 runs, add the module ``extra`` to its processors and wait for the rejection."""
    wait_for(lambda: "worker w1 started" in _stderr(repo), 30, "the worker")
    properties = repo / "spoolpipe.properties"
    _change(
        properties,
        properties.read_text().replace("processors = e2e_procs", "processors = e2e_procs, extra"),
    )
    wait_for(lambda: "configuration change rejected" in _stderr(repo), 30, "the rejection")


def test_a_module_rejected_at_a_reload_runs_none_of_its_code(tmp_path: Path) -> None:
    """Its @processor ran before the error: the worker said "rejected" and ran t.extra anyway."""
    repo = make_repository(tmp_path, "pool.size = 1\nprocessors = e2e_procs\n")
    (tmp_path / "procs" / "extra.py").write_text(HALF_WAY)
    worker = start_worker(repo, "w1")
    try:
        _name_extra_and_see_it_rejected(repo)
        extra = submit(repo, "t.extra")
        noop = submit(repo, "t.noop")
        wait_for(lambda: noop in ids_in(repo / "done"), 30, "other work")
        worker.send_signal(signal.SIGHUP)  # and a recycled pool process does not run it either
        time.sleep(1)
    finally:
        _stop(worker)
    assert extra not in ids_in(repo / "done") and extra not in ids_in(repo / "failed")
    assert any(name.startswith(extra) for name in os.listdir(repo / "inbox"))


@pytest.mark.parametrize("broken", ["half way", "missing"])
def test_a_module_fixed_after_its_rejection_is_taken_without_another_reload(
    tmp_path: Path, broken: str
) -> None:
    """Only the properties file was watched: the fixed (or created) module waited for a SIGHUP."""
    repo = make_repository(tmp_path, "pool.size = 1\nprocessors = e2e_procs\n")
    module = tmp_path / "procs" / "extra.py"
    if broken == "half way":
        module.write_text(HALF_WAY)
    worker = start_worker(repo, "w1")
    try:
        _name_extra_and_see_it_rejected(repo)
        extra = submit(repo, "t.extra")
        _change(module, HALF_WAY.replace('raise ImportError("half way")', ""))
        wait_for(lambda: extra in ids_in(repo / "done"), 30, "the fixed module's work")
    finally:
        _stop(worker)
    assert _stderr(repo).count("configuration change rejected") == 1


def test_a_type_renamed_in_a_new_version_of_its_module_is_gone_and_the_new_one_runs(tmp_path: Path) -> None:
    """The old type ran on with the old function; moving a type to another function was refused."""
    repo = make_repository(tmp_path, "pool.size = 1\nprocessors = e2e_procs, versioned\n")
    module = tmp_path / "procs" / "versioned.py"
    module.write_text(
        "from spoolpipe import processor\n@processor('t.old')\ndef handle(a, ctx):\n    return 'v1'\n"
    )
    worker = start_worker(repo, "w1")
    try:
        first = submit(repo, "t.old")
        wait_for(lambda: first in ids_in(repo / "done"), 30, "v1")
        _change(
            module,
            "from spoolpipe import processor\n@processor('t.new')\ndef handle(a, ctx):\n    return 'v2'\n"
            "@processor('t.newer')\ndef handle_newer(a, ctx):\n    return 'v2b'\n",
        )
        wait_for(lambda: "processor code changed" in _stderr(repo), 30, "the new code")
        old, new, newer = submit(repo, "t.old"), submit(repo, "t.new"), submit(repo, "t.newer")
        wait_for(lambda: {new, newer} <= set(ids_in(repo / "done")), 30, "v2")
        time.sleep(0.5)
    finally:
        _stop(worker)
    done = records(repo / "done")
    assert (done[first]["result"], done[new]["result"], done[newer]["result"]) == ("v1", "v2", "v2b")
    assert old not in done and any(name.startswith(old) for name in os.listdir(repo / "inbox"))


def test_a_new_processors_path_takes_the_modules_found_there(tmp_path: Path) -> None:
    """processors.path changed to a folder with another version of the module: the old one ran on."""
    for version in ("v1", "v2"):
        folder = tmp_path / version
        folder.mkdir()
        code = f"@processor('t.version')\ndef v(a, ctx):\n    return {version!r}\n"
        (folder / "versioned.py").write_text("from spoolpipe import processor\n" + code)
    repo = make_repository(tmp_path, "pool.size = 1\nprocessors = e2e_procs, versioned\n")
    properties = repo / "spoolpipe.properties"
    properties.write_text(
        properties.read_text().replace(
            f"processors.path = {tmp_path / 'procs'}",
            f"processors.path = {tmp_path / 'procs'}, {tmp_path / 'v1'}",
        )
    )
    worker = start_worker(repo, "w1")
    try:
        first = submit(repo, "t.version")
        wait_for(lambda: first in ids_in(repo / "done"), 30, "v1")
        _change(properties, properties.read_text().replace(str(tmp_path / "v1"), str(tmp_path / "v2")))
        wait_for(lambda: "configuration reloaded" in _stderr(repo), 30, "the reload")
        second = submit(repo, "t.version")
        wait_for(lambda: second in ids_in(repo / "done"), 30, "v2")
    finally:
        _stop(worker)
    done = records(repo / "done")
    assert (done[first]["result"], done[second]["result"]) == ("v1", "v2")


def test_an_import_error_names_the_module_the_paths_and_shows_the_traceback(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "processors = e2e_procs, broken\n")
    (tmp_path / "procs" / "broken.py").write_text("import e2e_procs\nimport no_such_dependency\n")
    proc = start_worker(repo, "w1", "--until-idle")
    assert proc.wait(60) == 3
    output = _stderr(repo)
    assert "cannot import processor module 'broken'" in output
    assert "No module named 'no_such_dependency'" in output
    assert str(tmp_path / "procs") in output
    assert "Traceback" in output and 'broken.py", line 2' in output


#: Ways a module ends the process at import: ``os._exit`` skips every handler, so it is refused
#: while the module imports.
EXITS_AT_IMPORT = ["import sys; sys.exit(0)", "raise KeyboardInterrupt", "import os; os._exit(0)"]


@pytest.mark.parametrize("line", EXITS_AT_IMPORT)
def test_a_module_that_exits_at_import_is_an_import_error_not_a_clean_stop(tmp_path: Path, line: str) -> None:
    """sys.exit(0) at import made the worker exit 0 having done nothing (a supervisor sees a clean
    stop); at a reload it hung the daemon for good, its lock held. os._exit(0) ended it with 0 and
    not a line in its log."""
    repo = make_repository(tmp_path, "processors = e2e_procs, exits\n")
    (tmp_path / "procs" / "exits.py").write_text(line + "\n")
    proc = start_worker(repo, "w1", "--until-idle")
    assert proc.wait(60) == 3
    assert "cannot import processor module 'exits'" in _stderr(repo)


@pytest.mark.parametrize("line", EXITS_AT_IMPORT)
def test_a_module_that_exits_at_reload_is_rejected_and_the_worker_goes_on(tmp_path: Path, line: str) -> None:
    repo = make_repository(tmp_path, "heartbeat.interval-seconds = 0.5\n")
    (tmp_path / "procs" / "exits.py").write_text(line + "\n")
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: (repo / "heartbeats" / "w1.json").exists(), 20, "the worker")
        props = repo / "spoolpipe.properties"
        props.write_text(props.read_text() + "processors = e2e_procs, exits\n")
        wait_for(lambda: "configuration change rejected" in _stderr(repo), 20, "the rejection")
        assert "cannot import processor module 'exits'" in _stderr(repo)
        activity = submit(repo, "t.noop")
        wait_for(lambda: activity in ids_in(repo / "done"), 20, "the worker to go on")
    finally:
        _stop(worker)


def test_an_import_error_at_reload_names_the_module_and_shows_the_traceback(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    (tmp_path / "procs" / "broken.py").write_text("raise RuntimeError('broken at import')\n")
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: (repo / "heartbeats" / "w1.json").exists(), 20, "the worker")
        props = repo / "spoolpipe.properties"
        props.write_text(props.read_text() + "processors = e2e_procs, broken\n")
        wait_for(lambda: "configuration change rejected" in _stderr(repo), 20, "the rejection")
        output = _stderr(repo)
        assert "cannot import processor module 'broken'" in output
        assert str(tmp_path / "procs") in output
        assert "RuntimeError: broken at import" in output and "Traceback" in output
    finally:
        _stop(worker)


# -- write_atomic --------------------------------------------------------------------------------


def test_write_atomic_takes_str_paths_and_text(tmp_path: Path) -> None:
    write_atomic(str(tmp_path / "a.txt"), "héllo")
    assert (tmp_path / "a.txt").read_bytes() == "héllo".encode()
    write_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(FileNotFoundError) as caught:
        write_atomic(tmp_path / "missing" / "c.txt", "x")
    assert caught.value.filename == str(tmp_path / "missing" / "c.txt")
    assert ".tmp" not in str(caught.value)
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.bin"]


# -- wording and shutdown ------------------------------------------------------------------------


def test_log_wording_counts_and_own_claims(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "retry.max-attempts = 2\n")
    parent = submit(repo, "t.parent", {"children": 1})
    failing = submit(repo, "t.fatal")
    Repository(repo, fsync=False).inbox.joinpath(f"{parent}.json").rename(
        repo / "running" / f"{parent}~1~w1.json"
    )
    output = run_until_idle(repo)
    assert f"failed {failing} (t.fatal) after 1 attempt:" in output
    assert "1 follow-up\n" in output or "1 follow-up " in output
    assert "follow-ups" not in output
    assert "recovered 1 claim left by an earlier run of this worker (w1)" in output
    assert "dead worker w1" not in output


def test_text_status_shows_concurrency_as_words(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "concurrency.t.noop = 1\n")
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: (repo / "heartbeats" / "w1.json").exists(), 20, "the worker")
        out = subprocess.run(
            [sys.executable, "-m", "spoolpipe", "status", str(repo)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    finally:
        _stop(worker)
    assert "t.noop (concurrency 1)" in out
    assert "t.noopx1" not in out


COUNTED = """
with open(os.path.join(os.path.dirname(__file__), "imports.log"), "a") as _f:
    _f.write(f"{os.getpid()}\\n")
"""


def _group(pgid: int) -> set[int]:
    """The processes of a process group (a worker and its pool processes), from /proc."""
    members = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                members.add(int(entry))
    return members


def test_stopping_after_the_grace_period_spawns_no_replacement_processes(tmp_path: Path) -> None:
    repo = make_repository(
        tmp_path, "pool.size = 2\nshutdown.grace-seconds = 0.2\n", extra_processors=COUNTED
    )
    a, b = submit(repo, "t.slow", {"sleep": 60}), submit(repo, "t.slow", {"sleep": 60})
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: len(effects(repo, "t.slow")) == 2, 30, "both activities to run")
        before = _group(worker.pid)
        assert len(before) == 3  # the daemon and its two pool processes
        worker.send_signal(signal.SIGTERM)
        seen = set(before)
        while worker.poll() is None:
            seen |= _group(worker.pid)
            time.sleep(0.005)
        assert worker.returncode == 0
    finally:
        if worker.poll() is None:
            kill_group(worker)
    assert seen == before  # no replacement process was started while stopping
    assert sorted(os.listdir(repo / "inbox")) == sorted([f"{a}~1.json", f"{b}~1.json"])
