"""Cleaning up: retention limits, archives, spoolpipe purge, scheduled purges, worker log rotation.

Real repositories, real ``spoolpipe`` processes, real kills; ages are set with ``os.utime``.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from harness import (
    kill_group,
    make_repository,
    make_repository_on,
    read_only_view,
    run_until_idle,
    start_worker,
    submit,
    wait_for,
)
from spoolpipe import config, retention
from spoolpipe.config import ConfigError
from spoolpipe.repository import Repository
from spoolpipe.retention import END_MEMBER, Entry

DAY = 86400.0

LOGGING_SLEEPER = """
@processor("t.logsleep")
def logsleep(activity, ctx):
    ctx.log.info("working on it")
    time.sleep(activity.data.get("sleep", 60))
    return "woke"
"""


def system_tool(name: str) -> str | None:
    """The path of a system tool; under CI=true a missing one is a failure, not a reason to check less."""
    path = shutil.which(name)
    if path is None and os.environ.get("CI") == "true":
        raise AssertionError(
            f"{name} is needed to check archives with standard tools (apt-get install {name})"
        )
    return path


def purge(repo: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spoolpipe", "purge", str(repo), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def age(path: Path, seconds: float) -> None:
    """Make ``path`` look ``seconds`` old (by its modification time)."""
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def put(path: Path, content: str | bytes, old: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    if old:
        age(path, old)
    return path


def invalid_entry(repo: Path, name: str, old: float) -> Path:
    """An ``invalid/NAME~TOKEN/`` entry as a worker makes it: the original and its reason."""
    entry = repo / "invalid" / f"{name}~01JB{abs(hash(name)) % 10**8:08d}XXXXXXXXXXXXXX"
    entry.mkdir()
    (entry / name).write_text("{not json")
    (entry / "reason.txt").write_text(f"{name}: not JSON\n")
    age(entry, old)
    return entry


def members(repo: Path) -> Counter[str]:
    """How often each path is held across every archive (read with tarfile)."""
    found: Counter[str] = Counter()
    for archive in sorted((repo / "archive").glob("*.tar.gz")):
        with tarfile.open(archive) as tar:
            found.update(m.name for m in tar.getmembers())
    return found


def archived_bytes(repo: Path) -> dict[str, bytes]:
    found = {}
    for archive in sorted((repo / "archive").glob("*.tar.gz")):
        with tarfile.open(archive) as tar:
            for m in tar.getmembers():
                if m.isfile():
                    extracted = tar.extractfile(m)
                    assert extracted is not None
                    found[m.name] = extracted.read()
    return found


def snapshot(repo: Path) -> dict[str, tuple[int, float, bytes]]:
    """Every file and directory under the repository (but tmp/ and locks/): mode, mtime, content."""
    found = {}
    for path in sorted(repo.rglob("*")):
        if path.relative_to(repo).parts[0] in ("tmp", "locks"):
            continue
        st = path.lstat()
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        found[str(path.relative_to(repo))] = (st.st_mode, st.st_mtime, content)
    return found


# -- the pure part ------------------------------------------------------------------------------------


def test_only_entries_older_than_their_limit_and_of_no_live_id_expire() -> None:
    now = 1_000 * DAY
    entries = [
        Entry("done", "old.json", now - 11 * DAY),
        Entry("done", "young.json", now - 9 * DAY),
        Entry("done", "queued.json", now - 30 * DAY),  # its id is in inbox/ again (a duplicate)
        Entry("failed", "old.json", now - 11 * DAY),  # failed are kept for 20 days
        Entry("invalid", "x.json~01J", now - 2 * DAY),
        Entry("logs", "running~3.log", now - 30 * DAY),  # its activity runs
        Entry("logs", "old~1.log", now - 2 * DAY),
        Entry("logs", "edge~1.log", now - DAY),  # exactly the limit: kept
    ]
    limits: dict[retention.State, float] = {"done": 10 * DAY, "failed": 20 * DAY, "invalid": DAY, "logs": DAY}
    expired = retention.expired(entries, limits, now, {"queued", "running"})
    assert [e.path for e in expired] == ["done/old.json", "invalid/x.json~01J", "logs/activities/old~1.log"]
    forever = dict.fromkeys(retention.STATES, float("inf"))
    assert retention.expired(entries, forever, now, set()) == []


def test_retention_touches_only_names_spoolpipe_writes() -> None:
    assert retention.is_entry("done", "01M80FE64HTEC8XYP509KA1G1P.json")
    assert not retention.is_entry("done", "notes.txt")
    assert not retention.is_entry("done", ".x.json.tmp")
    assert not retention.is_entry("failed", "bad name.json")
    assert retention.is_entry("logs", "a.b~12.log")
    assert not retention.is_entry("logs", "a~x.log")
    assert not retention.is_entry("logs", "a.log")
    assert retention.is_entry("invalid", "anything~01M80FE64HTEC8XYP509KA1G1P")
    assert retention.is_entry("invalid", "recovered~01M80FE64HTEC8XYP509KA1G1P")
    assert not retention.is_entry("invalid", "x.part")
    # An operator's own folders: retention deleted them (archive off) or archived them.
    assert not retention.is_entry("invalid", "backup")
    assert not retention.is_entry("invalid", "a~notatoken")
    assert not retention.is_entry("invalid", "anything~01J")
    assert retention.entry_id("logs", "a.b~12.log") == "a.b"
    assert retention.entry_id("invalid", "a~01J") is None
    for name, activity in [
        ("X.json", "X"),
        ("X~2.json", "X"),
        ("X~2~99.json", "X"),
        ("X~1~w~done", "X"),
        ("X", "X"),
        ("X.json.part", "X"),  # being written
        # An id holding .json (a valid name): cut at its first .json, its own logs went while it ran.
        ("rep.json.v2.json", "rep.json.v2"),
        ("rep.json.v2~1~w.json", "rep.json.v2"),
        ("rep.json.v2~2~99.json", "rep.json.v2"),
    ]:
        assert activity in retention.referenced_ids(name), name


def test_an_entry_goes_to_the_archive_of_its_state_and_utc_day() -> None:
    midnight = 1_764_547_200.0  # 2025-12-01T00:00:00Z
    assert retention.archive_name("done", midnight - 0.001) == "done-2025-11-30.tar.gz"
    assert retention.archive_name("done", midnight) == "done-2025-12-01.tar.gz"
    assert retention.archive_name("logs", midnight, 2) == "logs-2025-12-01.2.tar.gz"
    groups = retention.by_archive(
        [
            Entry("done", "b.json", midnight + 5),
            Entry("done", "a.json", midnight - 5),
            Entry("failed", "c.json", midnight),
        ]
    )
    assert {name: [e.name for e in group] for name, group in groups.items()} == {
        "done-2025-11-30.tar.gz": ["a.json"],
        "done-2025-12-01.tar.gz": ["b.json"],
        "failed-2025-12-01.tar.gz": ["c.json"],
    }


def test_every_archive_ends_with_the_end_of_a_tar_archive() -> None:
    assert gzip.decompress(END_MEMBER) == bytes(1024)


def test_durations_and_forever_in_the_configuration(tmp_path: Path) -> None:
    assert [config.parse_duration(t) for t in ("30s", "15m", "2h", "1d", "90", "1.5h", " 2 d")] == [
        30.0,
        900.0,
        7200.0,
        86400.0,
        90.0,
        5400.0,
        172800.0,
    ]
    for bad in ("", "-1s", "1w", "1 h 2m", "forever"):
        with pytest.raises(ValueError):
            config.parse_duration(bad)
    defaults = config.load(tmp_path).settings
    assert defaults.retention_done == float("inf") and defaults.retention_archive is True
    assert defaults.retention_interval == 3600.0
    assert (defaults.log_max_bytes, defaults.log_backups) == (10485760, 5)
    (tmp_path / "spoolpipe.properties").write_text(
        "retention.done = 30d\nretention.logs = FOREVER\nretention.failed = soon\nretention.invalid = 0\n"
    )
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path)
    where = tmp_path / "spoolpipe.properties"
    assert info.value.errors == [
        f"{where}:3: retention.failed: 'soon' is not a duration; expected a duration (30s, 15m, 2h, 1d; "
        "a plain number is seconds) > 0s, at most 100 years, or forever",
        f"{where}:4: retention.invalid: '0' is out of range; expected a duration (30s, 15m, 2h, 1d; "
        "a plain number is seconds) > 0s, at most 100 years, or forever",
    ]


# -- spoolpipe purge ----------------------------------------------------------------------------------


def test_purge_archives_what_is_past_its_limit_and_nothing_younger(tmp_path: Path) -> None:
    repo = make_repository(
        tmp_path,
        "retention.done = 10d\nretention.failed = 20d\nretention.invalid = 5d\nretention.logs = 1d\n",
    )
    # Real records and attempt logs first, from a real worker.
    fatal, done = submit(repo, "t.fatal"), submit(repo, "t.noop")
    run_until_idle(repo)
    assert (repo / "failed" / f"{fatal}.json").exists() and (repo / "done" / f"{done}.json").exists()
    age(repo / "failed" / f"{fatal}.json", 21 * DAY)
    age(repo / "done" / f"{done}.json", 11 * DAY)
    age(repo / "logs" / "activities" / f"{fatal}~1.log", 2 * DAY)
    young = {
        put(repo / "done" / "young.json", '{"id": "young"}', old=9 * DAY),
        put(repo / "failed" / "young.json", '{"id": "young"}', old=19 * DAY),
        put(repo / "logs" / "activities" / "young~1.log", "still wanted\n", old=DAY - 600),
        invalid_entry(repo, "young.json", old=4 * DAY),
        put(repo / "done" / "notes.txt", "a person's file, not a record", old=400 * DAY),
    }
    old_invalid = invalid_entry(repo, "broken.json", old=6 * DAY)
    expected = {
        f"done/{done}.json": (repo / "done" / f"{done}.json").read_bytes(),
        f"failed/{fatal}.json": (repo / "failed" / f"{fatal}.json").read_bytes(),
        f"logs/activities/{fatal}~1.log": (repo / "logs" / "activities" / f"{fatal}~1.log").read_bytes(),
        f"invalid/{old_invalid.name}/broken.json": b"{not json",
        f"invalid/{old_invalid.name}/reason.txt": b"broken.json: not JSON\n",
    }

    result = purge(repo)
    assert result.returncode == 0, result.stderr
    assert "done: archived 1 into archive/done-" in result.stdout
    assert "failed: archived 1" in result.stdout and "invalid: archived 1" in result.stdout
    assert all(path.exists() for path in young)
    for name in expected:
        assert not (repo / name).exists(), name
    assert not old_invalid.exists()
    assert archived_bytes(repo) == expected
    assert members(repo)[f"invalid/{old_invalid.name}"] == 1  # the directory itself
    days = {time.strftime("%Y-%m-%d", time.gmtime(time.time() - d * DAY)) for d in (2, 6, 11, 21)}
    assert {p.name.split("-", 1)[1][:10] for p in (repo / "archive").glob("*.tar.gz")} <= days
    assert sorted(n for n in os.listdir(repo / "tmp") if not n.startswith(".clock")) == []

    tar = system_tool("tar")
    if tar is not None:  # the standard tools read them too, into a layout like the repository's
        out = tmp_path / "restored"
        out.mkdir()
        for archive in (repo / "archive").glob("*.tar.gz"):
            subprocess.run([tar, "-xzf", str(archive), "-C", str(out)], check=True)
        for name, content in expected.items():
            assert (out / name).read_bytes() == content
    gunzip = system_tool("gzip")
    if gunzip is not None:
        for archive in (repo / "archive").glob("*.tar.gz"):
            subprocess.run([gunzip, "-t", str(archive)], check=True)


def test_later_purges_append_to_the_days_archive_and_hold_each_entry_once(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "retention.done = 1d\n")
    when = time.time() - 3 * DAY
    first = put(repo / "done" / "first.json", '{"id": "first"}')
    os.utime(first, (when, when))
    assert purge(repo).returncode == 0
    second = put(repo / "done" / "second.json", '{"id": "second"}')
    os.utime(second, (when + 1, when + 1))
    nameless = b"odd\xffname~01JBZZZZZZZZZZZZZZZZZZZZZZ"  # not UTF-8: kept byte for byte
    entry = repo / "invalid" / os.fsdecode(nameless)
    entry.mkdir()
    put(entry / "reason.txt", "odd\\xffname: not JSON\n")
    os.mkfifo(entry / "a-fifo")
    os.symlink("/etc/passwd", entry / "a-link")
    os.utime(entry, (when, when))
    result = purge(repo, "--older-than", "2d")
    assert result.returncode == 0, result.stderr
    archives = sorted(p.name for p in (repo / "archive").glob("*.tar.gz"))
    day = time.strftime("%Y-%m-%d", time.gmtime(when))
    assert archives == [f"done-{day}.tar.gz", f"invalid-{day}.tar.gz"]
    assert members(repo) == Counter(
        {
            "done/first.json": 1,
            "done/second.json": 1,
            f"invalid/{entry.name}": 1,
            f"invalid/{entry.name}/reason.txt": 1,
            f"invalid/{entry.name}/a-fifo": 1,
            f"invalid/{entry.name}/a-link": 1,
        }
    )
    with tarfile.open(repo / "archive" / f"invalid-{day}.tar.gz") as tar:
        assert tar.getmember(f"invalid/{entry.name}/a-link").linkname == "/etc/passwd"
        assert tar.getmember(f"invalid/{entry.name}/a-fifo").isfifo()
    assert not entry.exists() and os.listdir(repo / "done") == []
    tar_tool = system_tool("tar")
    if tar_tool is not None:
        listing = subprocess.run(
            [tar_tool, "-tzf", str(repo / "archive" / f"done-{day}.tar.gz")], capture_output=True, check=True
        )
        assert listing.stdout.split() == [b"done/first.json", b"done/second.json"]
        out = tmp_path / "restored"
        out.mkdir()
        subprocess.run(
            [tar_tool, "-xzf", str(repo / "archive" / f"invalid-{day}.tar.gz"), "-C", str(out)], check=True
        )
        assert os.listdir(os.fsencode(out / "invalid")) == [nameless]


def test_with_archive_false_expired_entries_are_deleted(tmp_path: Path) -> None:
    repo = make_repository(
        tmp_path, "retention.archive = false\nretention.failed = 1h\nretention.invalid = 1h\n"
    )
    old = put(repo / "failed" / "old.json", "{}", old=7200)
    young = put(repo / "failed" / "young.json", "{}", old=1800)
    gone = invalid_entry(repo, "junk", old=7200)
    result = purge(repo)
    assert result.returncode == 0, result.stderr
    assert "failed: deleted 1" in result.stdout and "invalid: deleted 1" in result.stdout
    assert not old.exists() and not gone.exists() and young.exists()
    assert not (repo / "archive").exists() or list((repo / "archive").glob("*.tar.gz")) == []


def test_dry_run_lists_what_would_go_and_changes_nothing(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "retention.done = 1d\nretention.logs = 1d\n")
    put(repo / "done" / "old.json", "{}", old=2 * DAY)
    put(repo / "done" / "young.json", "{}", old=DAY / 2)
    put(repo / "logs" / "activities" / "old~1.log", "x\n", old=3 * DAY)
    before = snapshot(repo)
    result = purge(repo, "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(
        line.startswith("would archive done/old.json (2d 0h old) into archive/done-") for line in lines
    )
    assert any(line.startswith("would archive logs/activities/old~1.log (3d 0h old)") for line in lines)
    assert not any("young" in line for line in lines)
    assert "done: would archive 1 into archive/done-" in result.stdout
    assert snapshot(repo) == before


def test_a_dry_run_whose_reader_stops_early_exits_0_as_list_does(tmp_path: Path) -> None:
    """``spoolpipe purge --dry-run | head -1``: a broken pipe is no crash (it said exit 70)."""
    repo = make_repository(tmp_path, "retention.done = 1d\n")
    for i in range(500):  # more lines than a pipe's buffer holds
        put(repo / "done" / f"old-{i:04d}.json", "{}", old=2 * DAY)
    before = snapshot(repo)
    reader = subprocess.Popen(
        [sys.executable, "-m", "spoolpipe", "purge", str(repo), "--dry-run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout is not None and reader.stderr is not None
    assert reader.stdout.readline().startswith(b"would archive done/old-")
    reader.stdout.close()  # as head does after its line
    assert reader.wait(60) == 0
    assert b"crashed" not in reader.stderr.read()
    assert snapshot(repo) == before


@pytest.mark.parametrize("older_than", ["0", "0s", "36501d", "99999999999999999999d"])
def test_purge_older_than_is_bounded_as_the_retention_keys_are(tmp_path: Path, older_than: str) -> None:
    """--older-than 0 took every record, even one finished a moment ago; the keys refuse it."""
    repo = make_repository(tmp_path)
    record = put(repo / "done" / "a.json", "{}", old=0)
    result = purge(repo, "--older-than", older_than, "--dry-run")
    assert result.returncode == 2 and "--older-than" in result.stderr and "out of range" in result.stderr
    assert record.exists()


def test_purge_by_hand_overrides_limits_per_state_and_says_how_it_went(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)  # every limit: forever
    record = put(repo / "done" / "a.json", "{}", old=3 * DAY)
    log = put(repo / "logs" / "activities" / "a~1.log", "x\n", old=3 * DAY)
    nothing = purge(repo)
    assert (nothing.returncode, nothing.stdout) == (0, "nothing to purge\n")
    result = purge(repo, "--state", "logs", "--older-than", "2d")
    assert result.returncode == 0, result.stderr
    assert not log.exists() and record.exists()
    assert purge(repo, "--older-than", "soon").returncode == 2
    assert purge(repo, "--state", "everything").returncode == 2
    assert purge(repo, "--scheduled").returncode == 2  # needs --worker-id
    assert purge(tmp_path / "nowhere").returncode == 2
    (repo / "spoolpipe.properties").write_text("retention.done = soon\n")
    bad = purge(repo)
    assert bad.returncode == 2 and f"{repo / 'spoolpipe.properties'}:1: retention.done" in bad.stderr
    assert (
        "Exit codes: 0"
        in subprocess.run(
            [sys.executable, "-m", "spoolpipe", "purge", "--help"], capture_output=True, text=True, check=True
        ).stdout
    )


# -- one purge at a time, never what runs ---------------------------------------------------------------


def test_a_running_activitys_old_attempt_log_survives_a_scheduled_purge(tmp_path: Path) -> None:
    repo = make_repository(
        tmp_path,
        "retention.logs = 1d\nretention.done = 1d\nretention.interval = 1s\n",
        extra_processors=LOGGING_SLEEPER,
    )
    busy = submit(repo, "t.logsleep", {"sleep": 120})
    waiting = submit(repo, "t.noop", not_before=time.time() + 3600)
    worker = start_worker(repo, "w1")
    try:
        busy_log = repo / "logs" / "activities" / f"{busy}~1.log"
        wait_for(busy_log.exists, 60, "the running activity's attempt log")
        age(busy_log, 30 * DAY)
        waiting_log = put(
            repo / "logs" / "activities" / f"{waiting}~1.log", "an earlier attempt\n", old=30 * DAY
        )
        old_log = put(repo / "logs" / "activities" / "finished~1.log", "long ago\n", old=2 * DAY)
        old_record = put(repo / "done" / "finished.json", '{"id": "finished"}', old=2 * DAY)
        wait_for(lambda: not old_log.exists() and not old_record.exists(), 60, "a scheduled purge")
        assert busy_log.exists() and waiting_log.exists()
        assert list(os.listdir(repo / "running"))  # still running
        assert set(members(repo)) == {"logs/activities/finished~1.log", "done/finished.json"}
        worker_log = repo / "logs" / "workers" / "w1.log"
        wait_for(lambda: "purge: logs: archived 1" in worker_log.read_text(), 30, "the purge's log line")
        assert "purge: done: archived 1 into archive/done-" in worker_log.read_text()
    finally:
        kill_group(worker)


def test_a_held_lock_keeps_every_other_purge_out(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "retention.done = 1d\nretention.interval = 1s\n")
    record = put(repo / "done" / "old.json", "{}", old=2 * DAY)
    settings = config.load(repo).settings
    worker = None
    with retention.retention_lock(Repository(repo), settings, wait=0):
        by_hand = purge(repo)
        assert by_hand.returncode == 1 and "another purge holds" in by_hand.stderr
        worker = start_worker(repo, "w1")
        try:
            log = repo / "logs" / "workers" / "w1.log"
            wait_for(lambda: log.exists() and log.read_text().count("worker w1 started") == 1, 60, "start")
            time.sleep(3)  # several scheduled purges were due meanwhile
            assert record.exists()
        except BaseException:
            kill_group(worker)
            raise
    try:
        wait_for(lambda: not record.exists(), 60, "the purge once the lock is free")
        assert members(repo) == Counter({"done/old.json": 1})
    finally:
        kill_group(worker)


def big_backlog(repo: Path, count: int, days: int) -> dict[str, bytes]:
    """``count`` old records, attempt logs and invalid entries over ``days`` days: path -> content."""
    entries = {}
    now = time.time()
    for i in range(count):
        when = now - DAY * (2 + i % days) - i
        if i % 10 == 9:
            entry = repo / "invalid" / f"junk{i}~01JBXXXXXXXXXXXXXXXXXX{i:04d}"
            entry.mkdir()
            content = f"reason {i}\n".encode()
            (entry / "reason.txt").write_bytes(content)
            os.utime(entry, (when, when))
            entries[f"invalid/{entry.name}/reason.txt"] = content
            continue
        state, name = ("done", f"r{i:05d}.json") if i % 3 else ("logs/activities", f"r{i:05d}~1.log")
        content = json.dumps({"id": f"r{i:05d}", "type": "t.noop", "pad": "x" * (i % 500)}).encode()
        path = put(repo / state / name, content)
        os.utime(path, (when, when))
        entries[f"{state}/{name}"] = content
    return entries


def assert_each_in_exactly_one_place(repo: Path, entries: dict[str, bytes]) -> None:
    held = members(repo)
    archived = archived_bytes(repo)
    for name, content in entries.items():
        in_place = (repo / name).exists()
        assert held[name] + in_place == 1, f"{name}: {held[name]} archived copies, in place: {in_place}"
        if not in_place:
            assert archived[name] == content, name
    assert max(held.values(), default=1) == 1


def assert_nothing_lost(repo: Path, entries: dict[str, bytes]) -> None:
    """After a kill: each entry in place, or in one archive, or (killed before deleting it) both."""
    held = members(repo)
    archived = archived_bytes(repo)
    for name, content in entries.items():
        assert held[name] <= 1, f"{name}: {held[name]} archived copies"
        assert (repo / name).exists() or archived.get(name) == content, f"{name} is lost"


def archived_counts(lines: list[str]) -> int:
    """The entries a purge's summary lines (``STATE: archived N into ...``) say it archived."""
    return sum(int(line.split(" archived ")[1].split()[0]) for line in lines if ": archived " in line)


def test_two_workers_and_two_purges_by_hand_never_purge_at_once(tmp_path: Path) -> None:
    repo = make_repository(
        tmp_path,
        "retention.done = 1d\nretention.logs = 1d\nretention.invalid = 1d\nretention.interval = 1s\n",
    )
    entries = big_backlog(repo, 3000, 30)
    command = [sys.executable, "-m", "spoolpipe", "purge", str(repo)]
    by_hand = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"
    ]
    workers = [start_worker(repo, w) for w in ("w1", "w2")]
    try:
        outputs = [p.communicate(timeout=300) for p in by_hand]
        wait_for(lambda: not any((repo / n).exists() for n in entries), 300, "the backlog to be archived")
    finally:
        for w in workers:
            kill_group(w)
    for proc, (_, err) in zip(by_hand, outputs, strict=True):
        assert proc.returncode == 0 or (proc.returncode == 1 and "another purge holds" in err), err
    assert_each_in_exactly_one_place(repo, entries)
    said = [line for out, _ in outputs for line in out.splitlines()]
    for w in ("w1", "w2"):
        said += (repo / "logs" / "workers" / f"{w}.log").read_text().splitlines()
    assert archived_counts(said) == len(entries)  # each entry archived once, by one of them


def test_a_purge_killed_at_any_moment_loses_and_doubles_nothing(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "retention.done = 1d\nretention.logs = 1d\nretention.invalid = 1d\n")
    entries = big_backlog(repo, 4000, 40)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    killed = 0
    for i in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-m", "spoolpipe", "purge", str(repo)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(rng.uniform(0.1, 0.25 + 0.15 * i))  # the first kills land while the backlog is big
        if proc.poll() is None:
            killed += 1
        kill_group(proc)
        assert_nothing_lost(repo, entries)
    final = purge(repo)
    assert final.returncode == 0, f"seed {seed}: {final.stderr}"
    assert killed, f"seed {seed}: no purge was still running when killed"
    assert_each_in_exactly_one_place(repo, entries)
    assert not any((repo / n).exists() for n in entries), f"seed {seed}"
    assert not (repo / "archive" / ".pending.json").exists()
    assert [n for n in os.listdir(repo / "tmp") if not n.startswith(".clock")] == []


# -- the worker log ---------------------------------------------------------------------------------------


def test_the_worker_log_rotates_by_size_keeping_the_configured_backups(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "log.max-bytes = 3000\nlog.backups = 2\nlog.level = DEBUG\n")
    for _ in range(60):
        submit(repo, "t.noop")
    run_until_idle(repo)
    logs = repo / "logs" / "workers"
    assert sorted(os.listdir(logs)) == ["w1.log", "w1.log.1", "w1.log.2"]
    for name in os.listdir(logs):
        assert 0 < (logs / name).stat().st_size <= 3000, name
    newest, middle, oldest = ((logs / n).read_text().splitlines() for n in ("w1.log", "w1.log.1", "w1.log.2"))
    assert oldest[-1][:23] <= middle[0][:23] and middle[-1][:23] <= newest[0][:23]  # in order, by timestamp
    assert "worker w1 stopped" in newest[-1]

    (repo / "spoolpipe.properties").write_text(
        (repo / "spoolpipe.properties").read_text() + "log.max-bytes = 0\n"
    )
    for name in ("w1.log.1", "w1.log.2"):
        (logs / name).unlink()
    for _ in range(60):
        submit(repo, "t.noop")
    run_until_idle(repo)
    assert sorted(os.listdir(logs)) == ["w1.log"] and (logs / "w1.log").stat().st_size > 3000


def test_a_huge_log_backups_rotates_only_the_backups_there_are(tmp_path: Path) -> None:
    """Each rotation walked every number from log.backups down: 10**12 spun at 100% CPU for good,
    SIGTERM unheard."""
    repo = make_repository(tmp_path, "log.max-bytes = 2000\nlog.backups = 1000000000000\nlog.level = DEBUG\n")
    for _ in range(40):
        submit(repo, "t.noop")
    run_until_idle(repo, timeout=60)
    logs = repo / "logs" / "workers"
    names = sorted(os.listdir(logs), key=lambda n: int(n.rpartition(".")[2]) if n[-1].isdigit() else 0)
    assert len(names) >= 3 and names == ["w1.log", *(f"w1.log.{n}" for n in range(1, len(names)))]
    texts = [(logs / n).read_text() for n in reversed(names)]  # oldest first
    assert "worker w1 started" in texts[0] and "worker w1 stopped" in texts[-1]
    stamps = [line[:23] for text in texts for line in text.splitlines() if line[:4].isdigit()]
    assert stamps == sorted(stamps)  # nothing lost or out of order


def test_a_held_batch_of_lines_is_written_whole_in_order_and_still_rotated_by_size(tmp_path: Path) -> None:
    """A finished batch's lines are written together (one write per stream); rotation by size still
    happens between lines, so no file passes log.max-bytes and nothing is lost or reordered."""
    import logging

    from spoolpipe import worker_log

    logs = tmp_path / "logs"
    (logs / "workers").mkdir(parents=True)
    worker_log.configure(logs, "w1", "INFO", max_bytes=2000, backups=9)
    log = logging.getLogger("spoolpipe.worker")
    log_file = logs / "workers" / "w1.log"
    try:
        log.info("before the batch")
        with worker_log.held():
            for n in range(150):
                log.info("line %03d of the batch", n)
            assert "line 000" not in log_file.read_text()  # held until the batch ends
        log.info("after the batch")
    finally:
        for handler in logging.getLogger("spoolpipe").handlers:
            handler.close()
        logging.getLogger("spoolpipe").handlers.clear()
    names = sorted(
        os.listdir(logs / "workers"), key=lambda n: -int(n.rpartition(".")[2]) if n[-1].isdigit() else 0
    )
    assert len(names) >= 3 and names[-1] == "w1.log"
    for name in names:
        assert 0 < (logs / "workers" / name).stat().st_size <= 2000, name
    messages = [
        line.split("] ", 1)[1] for n in names for line in (logs / "workers" / n).read_text().splitlines()
    ]
    assert messages == [
        "before the batch",
        *(f"line {n:03d} of the batch" for n in range(150)),
        "after the batch",
    ]


_FULL_DISK_LOG = """
import logging, resource, signal, sys
from pathlib import Path
from spoolpipe import worker_log

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
worker_log.configure(Path(sys.argv[1]), "w1", "INFO")
log = logging.getLogger("spoolpipe.worker")
log.info("before")
size = (Path(sys.argv[1]) / "workers" / "w1.log").stat().st_size
room = int(sys.argv[2]) if len(sys.argv) > 2 else 0  # bytes left: a line cut short by a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (size + room, resource.RLIM_INFINITY))
for n in range(3):
    log.info("line %d", n)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
log.info("back again")
"""


def test_a_log_file_that_cannot_be_written_is_said_once_and_so_is_its_return(tmp_path: Path) -> None:
    """Every line that could not reach the file printed a traceback on stderr ("--- Logging
    error ---"): a full disk or an outage of the log's file system buried the worker's own lines."""
    logs = tmp_path / "logs"
    (logs / "workers").mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_LOG, str(logs)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    said = result.stderr
    assert "Logging error" not in said and "Traceback" not in said, said
    log_file = logs / "workers" / "w1.log"
    assert said.count(f"cannot write the log file {log_file}: File too large; ") == 1, said
    assert all(f"] line {n}\n" in said for n in range(3)), said
    messages = [line.split("] ", 1)[1] for line in log_file.read_text().splitlines()]
    assert messages[0] == "before" and messages[2] == "back again", messages
    assert re.fullmatch(
        r"the log file is written again: 3 lines since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d went to stderr only",
        messages[1],
    ), messages
    assert said.count("the log file is written again: 3 lines") == 1, said


def test_a_log_line_a_full_disk_cut_short_is_not_glued_to_the_next(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    (logs / "workers").mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_LOG, str(logs), "10"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = (logs / "workers" / "w1.log").read_text().splitlines()
    assert lines[0].endswith("] before") and len(lines) == 4, lines
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", lines[1]), lines  # the 10 bytes of "line 0" that were written
    assert lines[2].split("] ", 1)[1].startswith("the log file is written again: 3 lines since"), lines
    assert lines[3].endswith("] back again"), lines


def test_a_log_line_that_cannot_be_written_anywhere_does_not_raise(tmp_path: Path) -> None:
    """A full disk under the log file while stderr is closed: reporting the failed write raised
    ValueError out of the logging call, which would stop the worker. Once there is room, lines go on."""
    logs = tmp_path / "logs"
    (logs / "workers").mkdir(parents=True)
    closed_stderr = "import io, sys\nsys.stderr = io.StringIO()\nsys.stderr.close()\n"
    result = subprocess.run(
        [sys.executable, "-c", closed_stderr + _FULL_DISK_LOG, str(logs)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    messages = [line.split("] ", 1)[1] for line in (logs / "workers" / "w1.log").read_text().splitlines()]
    assert messages[0] == "before" and messages[1].startswith("the log file is written again: 3 lines since")
    assert messages[2:] == ["back again"]


def test_a_moved_worker_log_is_reopened(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "log.max-bytes = 100000\n")
    worker = start_worker(repo, "w1")
    log = repo / "logs" / "workers" / "w1.log"
    try:
        wait_for(lambda: log.exists() and "worker w1 started" in log.read_text(), 60, "start")
        log.rename(log.with_name("moved-away.log"))
        aid = submit(repo, "t.fatal")
        wait_for(lambda: log.exists() and f"failed {aid}" in log.read_text(), 60, "a new w1.log")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)


def test_only_what_is_unchanged_since_it_was_archived_may_be_deleted() -> None:
    directory, file = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644
    archived = (("e", directory, 1, 4096, 10), ("e/reason.txt", file, 2, 9, 10), ("e/x", file, 3, 5, 10))
    assert retention.still_archived(archived, archived)
    assert retention.still_archived(
        (("e", directory, 1, 4096, 99), ("e/x", file, 3, 5, 10)), archived
    )  # half deleted
    assert not retention.still_archived((("e", directory, 1, 4096, 99), ("e/new", file, 4, 1, 99)), archived)
    assert not retention.still_archived(
        (("e", directory, 1, 4096, 10), ("e/x", file, 3, 6, 11)), archived
    )  # grew
    assert not retention.still_archived(
        (("e", directory, 7, 4096, 10),), archived
    )  # another entry of that name


def test_a_dead_purges_lease_does_not_block_the_next_for_long(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "claims.lock = lease\nretention.done = 1d\nretention.logs = 1d\n")
    entries = big_backlog(repo, 1500, 10)
    holder = subprocess.Popen(
        [sys.executable, "-m", "spoolpipe", "purge", str(repo)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    marker = repo / "locks" / "~retention.lock"
    wait_for(marker.exists, 60, "the purge to take its lease")
    kill_group(holder)
    assert_nothing_lost(repo, entries)
    started = time.monotonic()
    # The holder is dead: filelock sees its pid gone on this host; from another host its lease would
    # expire after claims.lease-seconds (3 here). Either way the next purge gets the lock.
    result = purge(repo)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 60
    done = [n for n in entries if not n.startswith("invalid/")]
    assert not any((repo / n).exists() for n in done)
    assert_each_in_exactly_one_place(repo, entries)


def test_an_archive_that_is_not_a_folder_stops_the_purge_with_a_reason(tmp_path: Path) -> None:
    """It crashed (NotADirectoryError, exit 70), at every scheduled purge too."""
    repo = make_repository(tmp_path, "retention.done = 1d\n")
    record = put(repo / "done" / "old.json", "{}", old=2 * DAY)
    (repo / "archive").write_text("x")
    result = purge(repo)
    assert result.returncode == 1, result.stderr
    assert f"{repo / 'archive'} is not a folder" in result.stderr
    assert "Traceback" not in result.stderr
    assert record.exists()
    # The scheduled purge a worker runs says the same as a warning (it crashed, every interval).
    scheduled = purge(repo, "--scheduled", "--worker-id", "w1")
    assert scheduled.returncode == 0, scheduled.stderr
    log = (repo / "logs" / "workers" / "w1.log").read_text()
    assert "is not a folder: nothing purged" in log and "crashed" not in log and "Traceback" not in log
    assert record.exists()


def test_a_purge_journal_that_is_not_a_file_stops_the_purge_with_a_reason(tmp_path: Path) -> None:
    """``archive/.pending.json`` a directory: purge crashed in the journal's unlink (exit 70)."""
    repo = make_repository(tmp_path, "retention.done = 1d\n")
    record = put(repo / "done" / "old.json", "{}", old=2 * DAY)
    (repo / "archive" / ".pending.json").mkdir(parents=True)
    result = purge(repo)
    assert result.returncode == 1, result.stderr
    assert "archive/.pending.json is not a regular file" in result.stderr
    assert "Traceback" not in result.stderr and record.exists()


# -- what changes while a purge runs, damaged archives, attempt notes ----------------------------------


def start_purge(repo: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "spoolpipe", "purge", str(repo), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_an_entry_that_changes_or_is_queued_again_while_a_purge_runs_stays_in_place(tmp_path: Path) -> None:
    """A purge archived and deleted whatever was at a name it had scanned: a rerun's new record (filed
    under the old record's day), an attempt log still being written, the log of an activity queued again."""
    repo = make_repository(tmp_path, "retention.done = 1d\nretention.failed = 1d\nretention.logs = 1d\n")
    big = {f"done/big{i}.json" for i in range(8)}
    for name in big:
        put(repo / name, os.urandom(4 << 20), old=10 * DAY)  # done/ first: the purge is busy on it a while
    record = put(repo / "failed" / "X.json", '{"run": 1}', old=10 * DAY)
    growing = put(repo / "logs" / "activities" / "L~1.log", "first line\n", old=10 * DAY)
    requeued = put(repo / "logs" / "activities" / "Q~1.log", "an attempt of the first run\n", old=10 * DAY)
    proc = start_purge(repo)
    wait_for(lambda: any((repo / "tmp").glob("archive.*.tmp")), 60, "the purge to write done/'s archive")
    record.unlink()
    record.write_text('{"run": 2}')  # the rerun's record
    with growing.open("a") as log:
        log.write("a later line\n")
    submit(repo, "t.noop", id="Q")  # queued again
    out, err = proc.communicate(timeout=120)
    assert "done: archived 8" in out, out + err
    assert record.read_text() == '{"run": 2}'
    assert growing.read_text() == "first line\na later line\n"
    assert requeued.read_text() == "an attempt of the first run\n"
    assert set(members(repo)) == big  # nothing archived that stays, nothing filed under a wrong day
    assert "failed/X.json" in err and "logs/activities/L~1.log" in err, err


def test_a_days_archive_damaged_in_the_middle_is_left_as_it_is_and_the_day_goes_on_in_a_second(
    tmp_path: Path,
) -> None:
    """Only the archive's last 1029 bytes were checked: entries appended after a damaged middle could not
    be read back, and were deleted."""
    repo = make_repository(tmp_path, "retention.done = 1d\n")
    when = time.time() - 10 * DAY
    for name in "abc":
        put(repo / "done" / f"{name}.json", os.urandom(50_000))
        os.utime(repo / "done" / f"{name}.json", (when, when))
    assert purge(repo).returncode == 0
    (archive,) = (repo / "archive").glob("done-*.tar.gz")
    damaged = bytearray(archive.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    archive.write_bytes(damaged)
    new = os.urandom(50_000)
    put(repo / "done" / "new.json", new)
    os.utime(repo / "done" / "new.json", (when, when))
    result = purge(repo)
    assert result.returncode == 0, result.stderr
    second = archive.with_name(archive.name.replace(".tar.gz", ".2.tar.gz"))
    assert f"archived 1 into archive/{second.name}" in result.stdout
    assert archive.read_bytes() == damaged  # left as it is
    with tarfile.open(second) as tar:
        extracted = tar.extractfile("done/new.json")
        assert extracted is not None and extracted.read() == new
    assert not (repo / "done" / "new.json").exists()


def test_attempt_notes_go_with_the_attempt_logs(tmp_path: Path) -> None:
    """ID~N.attempt.json were never purged, and a later run of the same id listed the old run's note."""
    repo = make_repository(tmp_path, "retry.backoff-seconds = 0\n")
    flaky = submit(repo, "t.flaky", {"succeed_on": 2})
    run_until_idle(repo)
    activities = repo / "logs" / "activities"
    assert (activities / f"{flaky}~1.attempt.json").exists()
    for path in [*activities.iterdir(), repo / "done" / f"{flaky}.json"]:
        age(path, 100 * DAY)
    result = purge(repo, "--older-than", "1d")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(activities)) == []
    assert f"logs/activities/{flaky}~1.attempt.json" in members(repo)
    # The same id again, as its second attempt: no attempt 1 of this run is known.
    submit(repo, "t.flaky", {"succeed_on": 2}, id=flaky)
    (repo / "inbox" / f"{flaky}.json").rename(repo / "inbox" / f"{flaky}~2.json")
    run_until_idle(repo)
    history = json.loads((repo / "done" / f"{flaky}.json").read_text())["spoolpipe"]["attempt_history"]
    assert history[0] == {"attempt": 1, "outcome": "unknown"}


def test_an_id_being_written_into_the_inbox_keeps_its_record(tmp_path: Path) -> None:
    """repository-format.md: nothing of an id whose name starts ID.json in inbox/ goes; ID.json.part did."""
    repo = tmp_path / "repo"
    Repository.create(repo, config.render_defaults())
    put(repo / "done" / "a.json", "{}", old=10 * 86400)
    put(repo / "inbox" / "a.json.part", "{")
    result = purge(repo, "--older-than", "1d")
    assert result.returncode == 0, result.stderr
    assert (repo / "done" / "a.json").exists()


def test_a_queued_activity_whose_id_holds_json_keeps_its_old_attempt_log(tmp_path: Path) -> None:
    """inbox/rep.json.v2.json protected the id 'rep': rep.json.v2~1.log was archived while it waited."""
    repo = tmp_path / "repo"
    Repository.create(repo, config.render_defaults())
    for aid in ("rep.json.v2", "plain"):
        put(repo / "inbox" / f"{aid}.json", '{"type": "t.noop"}')
        put(repo / "logs" / "activities" / f"{aid}~1.log", "old attempt log\n", old=10 * 86400)
    result = purge(repo, "--older-than", "1d")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(repo / "logs" / "activities")) == ["plain~1.log", "rep.json.v2~1.log"]


def test_a_last_run_mark_in_the_future_does_not_stop_scheduled_purges(tmp_path: Path) -> None:
    """archive/.last-run a day ahead (a file server clock stepped back, a restored backup): every
    scheduled purge skipped, without a word, until the clock caught up."""
    repo = tmp_path / "repo"
    Repository.create(repo, config.render_defaults())
    (repo / "spoolpipe.properties").write_text("retention.done = 1d\nretention.interval = 10m\n")
    put(repo / "done" / "a.json", "{}", old=10 * 86400)
    (repo / "archive").mkdir(exist_ok=True)
    put(repo / "archive" / ".last-run", "", old=-86400)
    result = purge(repo, "--scheduled", "--worker-id", "w1")
    assert result.returncode == 0, result.stderr
    assert not (repo / "done" / "a.json").exists()


def test_a_temp_archive_name_that_cannot_be_removed_is_left_and_the_purge_goes_on(tmp_path: Path) -> None:
    """A folder named tmp/archive.X.tmp: the sweep of a killed purge's temp archives crashed (exit 70)."""
    repo = tmp_path / "repo"
    Repository.create(repo, config.render_defaults())
    put(repo / "done" / "a.json", "{}", old=10 * 86400)
    (repo / "tmp" / "archive.01M8T7YWB5EA6CBDFZP8VMHW8Z.tmp" / "x").mkdir(parents=True)
    result = purge(repo, "--older-than", "1d")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert not (repo / "done" / "a.json").exists()
    assert (repo / "tmp" / "archive.01M8T7YWB5EA6CBDFZP8VMHW8Z.tmp" / "x").is_dir()


def test_a_scheduled_purge_on_a_read_only_mount_says_so_without_a_traceback(tmp_path: Path) -> None:
    """``purge --scheduled`` crashed (exit 70) opening the worker's log on a read-only mount."""
    repo = make_repository(tmp_path, "retention.done = 1d\n")
    record = put(repo / "done" / "old.json", "{}", old=2 * DAY)
    with read_only_view(repo, tmp_path / "ro") as mount:
        result = purge(mount, "--scheduled", "--worker-id", "w1")
    assert "Traceback" not in result.stderr and "crashed" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    assert "logs/workers/w1.log" in result.stderr and "Read-only file system" in result.stderr
    assert record.exists()


def test_a_full_disk_names_each_entry_and_the_archive_that_could_not_be_written(tmp_path: Path) -> None:
    """It said 'done: 2 entries not archived: [Errno 28] ...' (no names), and 'nothing to purge'."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)]).returncode != 0:
        pytest.fail("cannot mount a tmpfs (the tests run as root: .ci/run)")
    try:
        repo = make_repository_on(mount / "repo", tmp_path / "procs", "retention.done = 1d\n")
        records = [put(repo / "done" / f"{n}.json", os.urandom(300_000), old=2 * DAY) for n in "ab"]
        free = os.statvfs(mount)
        (mount / "filler").write_bytes(bytes(free.f_bavail * free.f_frsize - 100_000))
        result = purge(repo)
        assert all(record.exists() for record in records)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    assert result.returncode == 1, result
    for name in ("done/a.json", "done/b.json"):
        assert f"{name}: not archived into archive/done-" in result.stderr, result.stderr
    assert "No space left on device" in result.stderr
    assert "nothing to purge" not in result.stdout and "nothing purged" in result.stdout


def test_a_state_folder_that_is_a_link_is_not_purged_and_said_so_dry_run_too(tmp_path: Path) -> None:
    """With retention.archive = false it said 'cannot take locks/~retention.lock: Not a directory'; a dry
    run listed the entries behind the link, which the real run does not touch."""
    repo = make_repository(tmp_path, "retention.done = 1d\nretention.archive = false\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    record = put(elsewhere / "old.json", "{}", old=2 * DAY)
    (repo / "done").rmdir()
    (repo / "done").symlink_to(elsewhere)
    for args in ((), ("--dry-run",)):
        result = purge(repo, *args)
        assert result.returncode == 2, result  # as every command refuses such a repository
        assert "retention.lock" not in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert f"{repo / 'done'} is a symbolic link" in result.stderr, result.stderr
        assert "old.json" not in result.stdout and record.exists()


def test_a_tree_too_deep_to_delete_is_left_whole(tmp_path: Path) -> None:
    """With retention.archive = false, reason.txt was deleted before the depth limit was found."""
    repo = make_repository(tmp_path, "retention.invalid = 1d\nretention.archive = false\n")
    entry = invalid_entry(repo, "deep.json", old=2 * DAY)
    deep = entry
    for _ in range(70):
        deep = deep / "d"
    deep.mkdir(parents=True)
    age(entry, 2 * DAY)
    result = purge(repo)
    assert result.returncode == 1 and "more than 64 directories deep" in result.stderr, result
    assert (entry / "reason.txt").read_text() == "deep.json: not JSON\n"
    assert (entry / "deep.json").exists() and deep.is_dir()


def test_a_limit_too_long_says_the_longest_there_is(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "retention.done = 36501d\n")
    result = purge(repo)
    assert result.returncode == 2 and "'36501d' is out of range" in result.stderr, result
    assert "at most 100 years" in result.stderr


def test_a_dry_run_names_the_archive_the_real_run_writes(tmp_path: Path) -> None:
    """It named the day's first archive even where that one is not spoolpipe's (the run used .2)."""
    repo = make_repository(tmp_path, "retention.done = 1d\n")
    record = put(repo / "done" / "old.json", "{}", old=2 * DAY)
    first = repo / "archive" / retention.archive_name("done", record.stat().st_mtime)
    put(first, "a person's file")
    second = first.name.replace(".tar.gz", ".2.tar.gz")
    dry = purge(repo, "--dry-run")
    assert f"would archive done/old.json (2d 0h old) into archive/{second}" in dry.stdout, dry
    assert f"done: would archive 1 into archive/{second}" in dry.stdout
    real = purge(repo)
    assert f"done: archived 1 into archive/{second}" in real.stdout, real


def test_a_shorter_interval_on_a_hot_reload_takes_effect_from_the_last_purge(tmp_path: Path) -> None:
    """The next purge stayed planned at the old interval (an hour) after retention.interval became 2s."""
    repo = make_repository(tmp_path, "retention.done = 1d\nretention.interval = 1h\n")
    worker = start_worker(repo, "w1")
    try:
        wait_for((repo / "archive" / ".last-run").exists, 60, "the worker's first scheduled purge")
        properties = repo / "spoolpipe.properties"
        properties.write_text(
            properties.read_text().replace("retention.interval = 1h", "retention.interval = 2s")
        )
        worker.send_signal(signal.SIGHUP)
        record = put(repo / "done" / "old.json", '{"id": "old"}', old=2 * DAY)
        wait_for(lambda: not record.exists(), 60, "a purge at the new interval")
        assert set(members(repo)) == {"done/old.json"}
    finally:
        kill_group(worker)


def test_an_attempt_log_of_a_seven_digit_attempt_is_purged(tmp_path: Path) -> None:
    """Names count attempts up to seven digits, retention took six: x~1234567.log stayed for good."""
    repo = tmp_path / "repo"
    Repository.create(repo, config.render_defaults())
    for name in ("x~1234567.log", "x~1234567.attempt.json", "y~12.log"):
        put(repo / "logs" / "activities" / name, "old\n", old=10 * 86400)
    put(repo / "logs" / "activities" / "z~12345678.log", "not a name spoolpipe writes\n", old=10 * 86400)
    result = purge(repo, "--older-than", "1d")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(repo / "logs" / "activities")) == ["z~12345678.log"]
    assert {"logs/activities/x~1234567.log", "logs/activities/x~1234567.attempt.json"} <= set(members(repo))


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_journal_that_cannot_be_written_leaves_no_temp_file_and_loses_nothing(tmp_path: Path) -> None:
    """Its temp file stayed in tmp/ when the archive fitted but archive/.pending.json did not (a full
    disk; here a file size limit the small, well-compressed archive stays under and the journal not)."""
    repo = make_repository(tmp_path, "retention.done = 1d\n")
    records = [put(repo / "done" / f"{i:04}.json", "{}", old=3 * DAY) for i in range(600)]
    result = subprocess.run(
        [sys.executable, "-m", "spoolpipe", "purge", str(repo)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_file_size_limit(40_000),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert all(r.exists() for r in records)
    assert [n for n in os.listdir(repo / "tmp") if not n.startswith(".")] == []
    assert purge(repo).returncode == 0  # room again: it goes on
    assert not any(r.exists() for r in records)
