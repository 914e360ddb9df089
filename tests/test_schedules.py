"""Schedules with real worker processes: each tick becomes exactly one activity, across workers,
restarts and kill -9; catch-up; the workers restriction; errors; hot reload; spoolpipe schedule."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from harness import (
    effects,
    jumping_clock_env,
    kill_group,
    leftovers,
    make_repository,
    run_until_idle,
    skewed_clock_env,
    start_worker,
    submit,
    wait_for,
)
from spoolpipe.activity import Activity, format_time, parse_inbox_name
from spoolpipe.repository import Repository
from spoolpipe.schedule.fire import Scheduler
from spoolpipe.schedule.rules import CATCH_UP_CAP, Every, Rule, parse_tick_id, tick_id

TIMEOUT = 60


def fired(repo: Path, rule: str) -> list[float]:
    """Every tick of ``rule`` that became an activity (done, failed, queued or running), sorted."""
    ids = [p.stem for d in ("done", "failed") for p in (repo / d).glob("*.json")]
    ids += [parse_inbox_name(n).stem for n in os.listdir(repo / "inbox")]
    ids += [n.split("~", 1)[0] for n in os.listdir(repo / "running")]
    ticks = [parsed[1] for i in set(ids) if (parsed := parse_tick_id(i)) is not None and parsed[0] == rule]
    return sorted(ticks)


def copies(repo: Path) -> list[str]:
    """Every file of a schedule's activity, in every state directory (one per tick if none is doubled)."""
    names = [p.stem for d in ("done", "failed") for p in (repo / d).glob("*.json")]
    names += [parse_inbox_name(n).stem for n in os.listdir(repo / "inbox")]
    names += [n.split("~", 1)[0] for n in os.listdir(repo / "running") if n.endswith(".json")]
    return sorted(n for n in names if n.startswith("schedule."))


def done_ticks(repo: Path, rule: str) -> list[float]:
    return sorted(t for p in (repo / "done").glob("*.json") if (t := _tick(p.stem, rule)) is not None)


def _tick(activity_id: str, rule: str) -> float | None:
    parsed = parse_tick_id(activity_id)
    return parsed[1] if parsed is not None and parsed[0] == rule else None


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(TIMEOUT)
        assert proc.returncode == 0


def log_of(repo: Path, worker: str) -> str:
    return (repo.parent / f"worker-{worker}.stderr").read_text()


def state(repo: Path, rule: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((repo / "schedules" / f"{rule}.json").read_text())
    return doc


def stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def pulse(name: str, catch_up: str = "latest", type_: str = "t.dup", every: str = "1s") -> str:
    keys = {"every": every, "type": type_, "catch-up": catch_up}
    return "".join(f"schedule.{name}.{key} = {value}\n" for key, value in keys.items())


def sleep_until_just_before_a_tick(period: float = 1.0, before: float = 0.05) -> None:
    now = time.time()
    time.sleep((period - before - now % period) % period)


def test_each_tick_fires_exactly_once_across_workers_restarts_and_kills(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, pulse("pulse", "latest") + 'schedule.pulse.data = {"from": "pulse"}\n')
    workers = {f"w{i}": start_worker(repo, f"w{i}") for i in range(3)}
    try:
        wait_for(lambda: len(done_ticks(repo, "pulse")) >= 2, TIMEOUT, "the first ticks")
        for turn in range(6):
            victim = f"w{turn % 3}"
            sleep_until_just_before_a_tick(before=0.02 * (turn + 1))  # each turn lands elsewhere near a tick
            if turn % 2 == 0:
                kill_group(workers[victim])  # kill -9 the daemon and its pool, as a crash would
            else:
                stop(workers[victim])  # a clean restart
            time.sleep(0.3)
            workers[victim] = start_worker(repo, victim)
            time.sleep(0.8)
        count = len(fired(repo, "pulse"))
        wait_for(lambda: len(fired(repo, "pulse")) >= count + 2, TIMEOUT, "ticks after the last restart")
    finally:
        stop(*workers.values())
    ticks = fired(repo, "pulse")
    assert len(ticks) >= 10
    assert ticks == [ticks[0] + i for i in range(len(ticks))], "a tick is missing"  # one worker always ran
    assert copies(repo) == sorted(tick_id("pulse", t) for t in ticks), "a tick became two activities"
    assert os.listdir(repo / "invalid") == []
    runs = [(line[0], line[1]) for line in effects(repo, "t.dup")]
    assert len(runs) == len(set(runs)), "an attempt of a tick ran twice"
    for path in (repo / "done").glob("schedule.pulse.*.json"):
        record = json.loads(path.read_text())
        assert record["data"]["from"] == "pulse"
        assert stamp(record["data"]["scheduled_for"]) == _tick(path.stem, "pulse")
    last = state(repo, "pulse")
    assert stamp(last["last_fired"]) == ticks[-1] and last["last_id"] == tick_id("pulse", ticks[-1])
    # Fired ticks not run yet wait in the inbox, each with its reservation in ids/; nothing else is left.
    left = leftovers(repo)
    assert set(left) <= {"inbox", "ids"}
    assert left.get("ids", []) == sorted(parse_inbox_name(n).stem for n in left.get("inbox", []))


# Records the shared file system's clock when it runs: a tick must never run before its time.
WHEN = """
@processor("t.when")
def when(activity, ctx):
    probe = ctx.repository / "tmp" / f".when-{activity.id}"
    probe.touch()
    return {"fs_time": os.stat(probe).st_mtime}
"""


def test_ticks_fire_once_and_never_early_whatever_the_workers_clocks_say(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, pulse("pulse", type_="t.when"), extra_processors=WHEN)
    workers = [
        start_worker(repo, "ahead", env=skewed_clock_env(45, tmp_path / "ahead")),
        start_worker(repo, "behind", env=skewed_clock_env(-45, tmp_path / "behind")),
        start_worker(repo, "right"),
    ]
    try:
        wait_for(lambda: len(done_ticks(repo, "pulse")) >= 6, TIMEOUT, "ticks")
    finally:
        stop(*workers)
    ticks = fired(repo, "pulse")
    assert ticks == [ticks[0] + i for i in range(len(ticks))]
    assert copies(repo) == sorted(tick_id("pulse", t) for t in ticks) and os.listdir(repo / "invalid") == []
    for tick in done_ticks(repo, "pulse"):
        record = json.loads((repo / "done" / f"{tick_id('pulse', tick)}.json").read_text())
        assert record["result"]["fs_time"] >= tick, "a tick ran before its time"
        assert stamp(record["data"]["scheduled_for"]) == tick
    log = log_of(repo, "ahead") + log_of(repo, "behind") + log_of(repo, "right")
    assert "fired as" in log


# Records the real time it runs at: CLOCK_REALTIME, which a shifted time.time() leaves alone.
REAL = """
@processor("t.real")
def real(activity, ctx):
    return {"real": time.clock_gettime(time.CLOCK_REALTIME)}
"""


def test_a_workers_clock_jump_neither_starts_work_early_nor_stalls_ticks(tmp_path: Path) -> None:
    """An NTP step of +120 s ran every not_before activity at once and stopped the ticks until the
    clock was probed again 30 s later (for the length of the jump); a step back stalled them too."""
    repo = make_repository(tmp_path, pulse("pulse", type_="t.real"), extra_processors=REAL)
    offset = tmp_path / "offset"
    offset.write_text("0")
    worker = start_worker(repo, "w1", env=jumping_clock_env(offset, tmp_path / "shim"))
    try:
        wait_for(lambda: len(done_ticks(repo, "pulse")) >= 2, TIMEOUT, "the first ticks")
        times = [time.time() + 4 + i for i in range(3)]
        starts = {submit(repo, "t.real", not_before=when): when for when in times}
        offset.write_text("120")  # forward
        count = len(fired(repo, "pulse"))
        wait_for(lambda: len(fired(repo, "pulse")) >= count + 3, 20, "ticks after a jump forward")
        offset.write_text("-120")  # and back, past where it was
        count = len(fired(repo, "pulse"))
        wait_for(lambda: len(fired(repo, "pulse")) >= count + 3, 20, "ticks after a jump back")
        wait_for(lambda: all((repo / "done" / f"{i}.json").exists() for i in starts), 20, "the activities")
    finally:
        stop(worker)
    for activity_id, not_before in starts.items():
        ran = json.loads((repo / "done" / f"{activity_id}.json").read_text())["result"]["real"]
        assert ran >= not_before, f"{activity_id} started {not_before - ran:.1f}s before its not_before"
    ticks = fired(repo, "pulse")
    assert ticks == [ticks[0] + i for i in range(len(ticks))], "a tick was dropped"
    for tick in done_ticks(repo, "pulse"):
        record = json.loads((repo / "done" / f"{tick_id('pulse', tick)}.json").read_text())
        assert record["result"]["real"] >= tick, "a tick ran before its time"


def test_a_worker_that_joins_while_another_runs_says_no_tick_was_missed(tmp_path: Path) -> None:
    """w1 lagged behind its ticks (a busy machine) as w2 started: w2 logged the ticks w1 was about to
    fire as "came due while no worker fired it"."""
    repo = make_repository(tmp_path, pulse("each", "all", "t.noop"))
    w1 = start_worker(repo, "w1")
    w2 = None
    try:
        wait_for(lambda: len(fired(repo, "each")) >= 2, TIMEOUT, "ticks")
        os.killpg(w1.pid, signal.SIGSTOP)  # alive (heartbeat fresh for 1.5 s, its lock held), not firing
        time.sleep(1.2)
        w2 = start_worker(repo, "w2")
        wait_for(lambda: "schedule each" in log_of(repo, "w2"), TIMEOUT, "w2 to take the rule up")
    finally:
        os.killpg(w1.pid, signal.SIGCONT)
        stop(w1, *([w2] if w2 else []))
    assert "came due while no worker fired it" not in log_of(repo, "w2"), log_of(repo, "w2")
    ticks = fired(repo, "each")
    assert ticks == [ticks[0] + i for i in range(len(ticks))], "a tick left out or fired twice"


@pytest.mark.parametrize(
    ("catch_up", "ends", "says"),
    [
        # Ticks 14, 15, 16, then 20: latest dropped 17 to 19 of a paused (or busy) worker without a
        # word; only a take-up said so. The range ends with the tick that fires.
        ("latest", 0, "the latest fires"),
        # none fired every tick that came due while the worker was paused, all at once on resume (up
        # to 100), where latest fires one. The range ends before the tick on time.
        ("none", 1, "none of them fires"),
    ],
)
def test_ticks_a_paused_worker_leaves_out_by_catch_up_are_logged(
    tmp_path: Path, catch_up: str, ends: int, says: str
) -> None:
    repo = make_repository(tmp_path, pulse("held", catch_up, "t.noop"))
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: len(fired(repo, "held")) >= 2, TIMEOUT, "ticks")
        os.killpg(worker.pid, signal.SIGSTOP)
        time.sleep(3.5)
        os.killpg(worker.pid, signal.SIGCONT)
        count = len(fired(repo, "held"))
        wait_for(lambda: len(fired(repo, "held")) >= count + 2, TIMEOUT, "ticks after the pause")
    finally:
        os.killpg(worker.pid, signal.SIGCONT)
        stop(worker)
    ticks = fired(repo, "held")
    gaps = [(a, b) for a, b in itertools.pairwise(ticks) if b - a > 1]
    assert len(gaps) == 1, ticks
    (before, after), log = gaps[0], log_of(repo, "w1")
    line = f"ticks came due while this worker was held up (paused or busy), {format_time(before + 1)} to "
    assert f"{line}{format_time(after - ends)}; catch-up = {catch_up}: {says}" in log, log


def test_a_rule_dealt_with_into_the_future_goes_on_from_now(tmp_path: Path) -> None:
    """A file system clock that was ahead for one look left "through" in the future: the rule then
    fired nothing, silently, until real time caught up (a year, for a typo in date -s)."""
    repo = Repository(make_repository(tmp_path), fsync=False)
    scheduler = Scheduler(repo, "w1", repo.heartbeats / ".clock-w1")
    rules = {"p": Rule("p", Every(1), "t.noop")}
    assert scheduler.fire(rules, time.time()) == []  # takes the rule up: its state is written
    path = repo.root / "schedules" / "p.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "through": "2030-01-01T00:00:00.000+00:00"}))
    published: list[str] = []
    deadline = time.time() + 3.5
    while time.time() < deadline:
        published += scheduler.fire(rules, time.time())
        time.sleep(0.02)
    assert len(published) >= 2
    assert stamp(state(repo.root, "p")["through"]) < time.time() + 1


def test_ticks_missed_before_a_take_up_are_logged_once_from_the_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The line was logged again at every look until a tick fired, and its range began at the 100th
    tick before the take-up, not at the first missed one."""
    repo = Repository(make_repository(tmp_path), fsync=False)
    rules = {"p": Rule("p", Every(1), "t.noop", catch_up="none")}
    assert Scheduler(repo, "w0", repo.heartbeats / ".clock-w0").fire(rules, time.time()) == []
    path = repo.root / "schedules" / "p.json"
    through = float(int(time.time()) - 500)
    path.write_text(json.dumps({**json.loads(path.read_text()), "through": format_time(through)}))
    scheduler = Scheduler(repo, "w1", repo.heartbeats / ".clock-w1")
    with caplog.at_level(logging.INFO, "spoolpipe.schedule"):
        deadline = time.time() + 2.5
        while time.time() < deadline:
            scheduler.fire(rules, time.time())
            time.sleep(0.02)
    said = [
        r.getMessage() for r in caplog.records if "ticks came due while no worker fired it" in r.getMessage()
    ]
    assert len(said) == 1, said
    assert f"fired it, {format_time(through + 1)} to " in said[0]


def test_catch_up_after_every_worker_was_stopped_for_several_ticks(tmp_path: Path) -> None:
    rules = (
        pulse("skip", "none", "t.noop") + pulse("last", "latest", "t.noop") + pulse("each", "all", "t.noop")
    )
    repo = make_repository(tmp_path, rules)
    workers = [start_worker(repo, "w1"), start_worker(repo, "w2")]
    wait_for(lambda: all(len(fired(repo, r)) >= 2 for r in ("skip", "last", "each")), TIMEOUT, "ticks")
    stop(*workers)
    before = {r: fired(repo, r)[-1] for r in ("skip", "last", "each")}
    time.sleep(4.5)  # four ticks or more come due while no worker runs
    workers = [start_worker(repo, "w1"), start_worker(repo, "w2")]
    try:
        wait_for(
            lambda: all(fired(repo, r)[-1] >= before[r] + 8 for r in ("skip", "last", "each")),
            TIMEOUT,
            "ticks",
        )
    finally:
        stop(*workers)
    logs = log_of(repo, "w1") + log_of(repo, "w2")
    ends: dict[str, set[float]] = {}  # the last missed tick, as each worker saw it when it took the rule up
    for rule in ("skip", "last", "each"):
        found = re.findall(
            rf"schedule {rule}: ticks came due while no worker fired it, (\S+) to (\S+);", logs
        )
        assert found, logs
        assert {stamp(first) for first, _ in found} == {before[rule] + 1}
        ends[rule] = {stamp(last) for _, last in found}
        assert min(ends[rule]) - before[rule] >= 4

    def after(rule: str) -> list[float]:
        return [t for t in fired(repo, rule) if t > before[rule]]

    assert not [t for t in after("skip") if t <= min(ends["skip"])], "catch-up = none fired a missed tick"
    caught_up = {t for t in after("last") if t <= max(ends["last"])}
    assert caught_up and caught_up <= ends["last"], (
        "catch-up = latest fired other than the latest missed tick"
    )
    ticks = fired(repo, "each")
    assert ticks == [ticks[0] + i for i in range(len(ticks))], "catch-up = all left a tick out"
    assert os.listdir(repo / "invalid") == []


def test_old_ticks_never_fire_again_once_their_records_are_purged(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, pulse("pulse", "all", "t.noop"))
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: len(done_ticks(repo, "pulse")) >= 3, TIMEOUT, "ticks")
    finally:
        stop(worker)
    first_run = fired(repo, "pulse")
    purged = set(done_ticks(repo, "pulse"))
    for path in (repo / "done").glob("*.json"):
        path.unlink()  # retention, or a person
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: len(done_ticks(repo, "pulse")) >= 3, TIMEOUT, "ticks after the restart")
    finally:
        stop(worker)
    again = fired(repo, "pulse")
    assert not set(again) & purged, "an old tick fired again"
    new = sorted(set(again) - set(first_run))
    assert new[0] == first_run[-1] + 1  # catch-up = all: nothing left out either


def test_catch_up_all_is_capped_with_a_warning(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, pulse("burst", "all", "t.noop"))
    (repo / "schedules").mkdir()
    long_ago = time.time() - 300
    (repo / "schedules" / "burst.json").write_text(
        json.dumps(
            {
                "schedule": "burst",
                "expression": "every 1s",
                "defined_at": datetime.fromtimestamp(long_ago).astimezone().isoformat(),
                "through": datetime.fromtimestamp(long_ago).astimezone().isoformat(),
                "last_fired": None,
                "last_id": None,
            }
        )
    )
    started = time.time()
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: len(done_ticks(repo, "burst")) >= CATCH_UP_CAP + 1, TIMEOUT, "the catch-up")
    finally:
        stop(worker)
    ticks = fired(repo, "burst")
    caught_up = [t for t in ticks if t <= started]
    assert CATCH_UP_CAP - 2 <= len(caught_up) <= CATCH_UP_CAP  # the latest 100 up to its first look
    assert ticks == [ticks[0] + i for i in range(len(ticks))]
    assert ticks[0] > long_ago + 150
    assert "WARNING [w1] schedule burst: catch-up = all fires at most 100 missed ticks" in log_of(repo, "w1")


def test_only_the_workers_named_fire_a_rule(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, pulse("picky", type_="t.noop") + "schedule.picky.workers = w2\n")
    workers = {w: start_worker(repo, w) for w in ("w1", "w2", "w3")}
    try:
        wait_for(lambda: len(done_ticks(repo, "picky")) >= 3, TIMEOUT, "ticks")
        stop(workers.pop("w2"))
        stopped = time.time()
        time.sleep(3)
        assert all(t < stopped for t in fired(repo, "picky")), "a tick fired without w2"
    finally:
        stop(*workers.values())
    assert "fired as schedule.picky." in log_of(repo, "w2")
    assert "fired as" not in log_of(repo, "w1") + log_of(repo, "w3")
    assert state(repo, "picky")["updated_by"] == "w2"
    # The activities themselves run on any worker.
    runners = {json.loads(p.read_text())["spoolpipe"]["worker"] for p in (repo / "done").glob("*.json")}
    assert runners <= {"w1", "w2", "w3"}


def test_a_bad_cron_expression_is_a_configuration_error_with_file_and_line(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, "schedule.bad.cron = 0 25 * * *\nschedule.bad.type = t.noop\n")
    lines = (repo / "spoolpipe.properties").read_text().splitlines()
    line = lines.index("schedule.bad.cron = 0 25 * * *") + 1
    where = f"{repo / 'spoolpipe.properties'}:{line}: schedule.bad.cron: '0 25 * * *' is not a valid cron"
    worker = start_worker(repo, "w1")
    assert worker.wait(TIMEOUT) == 2  # an invalid configuration
    assert where in log_of(repo, "w1")
    listing = spoolpipe("schedule", str(repo))
    assert listing.returncode == 2 and where in listing.stderr


def test_hot_reload_changes_and_removes_a_rule_from_its_next_tick(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, pulse("pulse", type_="t.noop"))
    properties = repo / "spoolpipe.properties"
    original = properties.read_text()
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: len(done_ticks(repo, "pulse")) >= 2, TIMEOUT, "ticks")
        # An invalid change is refused with file:line and the rule keeps firing.
        properties.write_text(original + "schedule.pulse.cron = 0 99 * * *\n")
        wait_for(lambda: "configuration change rejected" in log_of(repo, "w1"), TIMEOUT, "the rejection")
        assert f"{properties}:" in log_of(repo, "w1").split("configuration change rejected", 1)[1]
        count = len(fired(repo, "pulse"))
        wait_for(lambda: len(fired(repo, "pulse")) >= count + 2, TIMEOUT, "ticks after the rejection")
        # Another expression, type and data: the new rule fires from its next tick, nothing is caught up.
        changed = time.time()
        properties.write_text(
            original + pulse("pulse", type_="t.dup", every="3s") + 'schedule.pulse.data = {"copy": 3}\n'
        )
        wait_for(lambda: len(effects(repo, "t.dup")) >= 2, TIMEOUT, "ticks of the changed rule")
        new = [
            t
            for p in (repo / "done").glob("*.json")
            if json.loads(p.read_text())["type"] == "t.dup"
            for t in [_tick(p.stem, "pulse")]
            if t is not None
        ]
        assert new and all(t % 3 == 0 and t > changed for t in new)
        for path in (repo / "done").glob("*.json"):
            record = json.loads(path.read_text())
            if record["type"] == "t.dup":
                assert record["result"] == {"copy": 3}
        assert state(repo, "pulse")["expression"] == "every 3s"
        # Removed: no more ticks once the reload is in.
        properties.write_text(original.replace(pulse("pulse", type_="t.noop"), ""))
        wait_for(lambda: "no longer fired by this worker" in log_of(repo, "w1"), TIMEOUT, "the removal")
        removed = time.time()
        time.sleep(3.5)
        assert all(t <= removed for t in fired(repo, "pulse"))
    finally:
        stop(worker)


def test_a_batch_run_never_fires_schedules(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, pulse("pulse", type_="t.noop"))
    submit(repo, "t.slow", {"sleep": 2.5})  # keeps the batch run busy across two ticks
    run_until_idle(repo)
    assert fired(repo, "pulse") == [] and not (repo / "schedules").exists()
    assert len(list((repo / "done").glob("*.json"))) == 1


def test_a_tick_fires_at_its_time_not_at_the_next_heartbeat(tmp_path: Path) -> None:
    slow = "heartbeat.interval-seconds = 30\nscan.interval-seconds = 30\nclaims.lease-seconds = 90\n"
    repo = make_repository(tmp_path, slow + pulse("quick", type_="t.noop", every="2s"))
    worker = start_worker(repo, "w1")
    try:
        # Without the tick among the loop's deadlines, only a heartbeat (every 30 s) would fire them.
        wait_for(lambda: len(done_ticks(repo, "quick")) >= 3, 15, "three ticks two seconds apart")
    finally:
        stop(worker)


def test_state_files_that_are_not_state_files_never_stop_a_worker(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, pulse("junk", type_="t.noop") + pulse("dir", type_="t.noop"))
    (repo / "schedules").mkdir()
    (repo / "schedules" / "junk.json").write_bytes(b"\x00\xff{not json")
    (repo / "schedules" / "dir.json").mkdir()
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: len(done_ticks(repo, "junk")) >= 2, TIMEOUT, "ticks of the rule with a junk state")
        (repo / "inbox" / "other.json").write_text('{"type": "t.noop"}')
        wait_for(lambda: (repo / "done" / "other.json").exists(), TIMEOUT, "other work")
    finally:
        stop(worker)
    log = log_of(repo, "w1")
    assert "schedule junk: " in log and "is not a state file; starting afresh" in log
    assert "schedule dir: " in log and "trying again in 5s" in log
    assert state(repo, "junk")["expression"] == "every 1s"


def spoolpipe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spoolpipe", *args], capture_output=True, text=True, timeout=TIMEOUT
    )


def test_schedule_command_lists_rules_last_and_next_ticks(tmp_path: Path) -> None:
    repo = make_repository(
        tmp_path,
        textwrap.dedent(
            """\
            schedule.nightly.cron = 0 3 * * *
            schedule.nightly.type = reports.nightly
            schedule.nightly.data = {"format": "pdf"}
            schedule.nightly.workers = nas, backup
            schedule.nightly.catch-up = none
            """
        )
        + pulse("pulse", type_="t.noop"),
    )
    listing = spoolpipe("schedule", str(repo), "--json")
    assert listing.returncode == 0, listing.stderr
    doc = json.loads(listing.stdout)
    assert [s["name"] for s in doc["schedules"]] == ["nightly", "pulse"]
    nightly, pulse_rule = doc["schedules"]
    assert nightly == {
        "name": "nightly",
        "expression": "cron 0 3 * * *",
        "cron": "0 3 * * *",
        "every_seconds": None,
        "type": "reports.nightly",
        "data": {"format": "pdf"},
        "workers": ["nas", "backup"],
        "catch_up": "none",
        "state_file": "schedules/nightly.json",
        "last_fired": None,
        "last_id": None,
        "through": None,
        "next": nightly["next"],
    }
    assert len(nightly["next"]) == 3
    assert [datetime.fromisoformat(t).astimezone().utctimetuple()[3:6] for t in nightly["next"]] == [
        (3, 0, 0)
    ] * 3
    assert pulse_rule["every_seconds"] == 1 and pulse_rule["last_fired"] is None
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: len(done_ticks(repo, "pulse")) >= 1, TIMEOUT, "a tick")
    finally:
        stop(worker)
    doc = json.loads(spoolpipe("schedule", str(repo), "pulse", "--json", "--next", "5").stdout)
    (only,) = doc["schedules"]
    assert only["last_id"] == tick_id("pulse", stamp(only["last_fired"]))
    assert stamp(only["next"][0]) > stamp(only["last_fired"]) and len(only["next"]) == 5
    assert stamp(only["next"][1]) - stamp(only["next"][0]) == 1
    text = spoolpipe("schedule", str(repo))
    assert text.returncode == 0
    assert "nightly: cron 0 3 * * * -> reports.nightly  (workers: nas, backup; catch-up: none)" in text.stdout
    assert "  last fired: never" in text.stdout and f"({only['last_id']})" in text.stdout
    assert spoolpipe("schedule", str(repo), "nope").returncode == 1
    bare = spoolpipe("schedule", str(make_repository(tmp_path / "bare")))
    assert bare.returncode == 0 and bare.stdout.startswith("no schedules")
    assert spoolpipe("schedule", str(tmp_path)).returncode == 2
    assert spoolpipe("schedule", str(repo), "--next", "-1").returncode == 2


@pytest.mark.parametrize("moment", ["9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00"])
def test_a_state_time_past_what_spoolpipe_writes_counts_as_absent(tmp_path: Path, moment: str) -> None:
    """A time past 9999 (or before year 1) UTC crashed spoolpipe schedule (exit 70: year 10000 is out
    of range) and made a worker log a traceback every 5 s."""
    repo = make_repository(tmp_path, pulse("pulse", type_="t.noop") + pulse("cron", type_="t.noop"))
    (repo / "spoolpipe.properties").write_text(
        (repo / "spoolpipe.properties")
        .read_text()
        .replace("schedule.cron.every = 1s", "schedule.cron.cron = * * * * *")
    )
    (repo / "schedules").mkdir()
    for rule, expression in (("pulse", "every 1s"), ("cron", "cron * * * * *")):
        doc = {"expression": expression, "defined_at": moment, "through": moment, "last_fired": None}
        (repo / "schedules" / f"{rule}.json").write_text(json.dumps({**doc, "last_id": None}))
    listing = spoolpipe("schedule", str(repo))
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.count("last fired: never") == 2 and "none" not in listing.stdout
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: len(done_ticks(repo, "pulse")) >= 2, TIMEOUT, "ticks of the rule")
    finally:
        stop(worker)
    log = log_of(repo, "w1")
    assert "Traceback" not in log and "is not a state file; starting afresh" in log


def test_a_state_fired_without_an_id_lists_no_none(tmp_path: Path) -> None:
    repo = make_repository(tmp_path, pulse("pulse", type_="t.noop"))
    (repo / "schedules").mkdir()
    when = "2026-01-01T00:00:00+00:00"
    doc = {"expression": "every 1s", "defined_at": when, "through": when, "last_fired": when, "last_id": None}
    (repo / "schedules" / "pulse.json").write_text(json.dumps(doc))
    listing = spoolpipe("schedule", str(repo))
    assert listing.returncode == 0 and "  last fired: " in listing.stdout and "None" not in listing.stdout


def test_schedule_next_has_a_documented_maximum(tmp_path: Path) -> None:
    """--next 99999999999 ran unbounded."""
    repo = make_repository(tmp_path, pulse("pulse", type_="t.noop"))
    refused = spoolpipe("schedule", str(repo), "--next", "99999999999")
    assert refused.returncode == 2 and "--next must be from 0 to 1000" in refused.stderr
    (listed,) = json.loads(spoolpipe("schedule", str(repo), "--json", "--next", "1000").stdout)["schedules"]
    assert len(listed["next"]) == 1000


# -- publish_once, the repository's side of firing a tick ----------------------------------------------


def tick_activity(activity_id: str = "schedule.p.20261201T120000Z") -> Activity:
    return Activity(activity_id, "t.noop", {"scheduled_for": "2026-12-01T12:00:00.000+00:00"})


def test_publish_once_publishes_an_id_once_with_its_reservation(tmp_path: Path) -> None:
    repo = Repository(make_repository(tmp_path), fsync=False)
    now = time.time()
    assert repo.publish_once(tick_activity(), now) == "published"
    published = os.lstat(repo.inbox / "schedule.p.20261201T120000Z.json")
    assert os.path.samestat(os.lstat(repo.ids / "schedule.p.20261201T120000Z"), published)
    assert repo.publish_once(tick_activity(), now) == "taken"
    assert os.listdir(repo.inbox) == ["schedule.p.20261201T120000Z.json"]
    assert [n for n in os.listdir(repo.tmp) if not n.startswith(".")] == []
    run_until_idle(repo.root)  # the claim finds the reservation its own: it runs, once
    assert os.listdir(repo.done) == ["schedule.p.20261201T120000Z.json"] and os.listdir(repo.invalid) == []
    assert os.listdir(repo.ids) == []
    # Its record keeps it taken; so does a failed record; the reservation is given back.
    assert repo.publish_once(tick_activity(), now) == "taken"
    (repo.failed / "schedule.p.20261201T130000Z.json").write_text("{}")
    assert repo.publish_once(tick_activity("schedule.p.20261201T130000Z"), now) == "taken"
    assert os.listdir(repo.ids) == [] and os.listdir(repo.inbox) == []


def test_publish_once_leaves_a_persons_copy_alone(tmp_path: Path) -> None:
    repo = Repository(make_repository(tmp_path), fsync=False)
    (repo.inbox / "schedule.p.20261201T120000Z.json").write_text('{"type": "t.noop", "data": {"mine": 1}}')
    assert repo.publish_once(tick_activity(), time.time()) == "taken"
    assert json.loads((repo.inbox / "schedule.p.20261201T120000Z.json").read_text())["data"] == {"mine": 1}
    assert os.listdir(repo.ids) == []


def test_publish_once_takes_over_the_reservation_of_a_publisher_that_died(tmp_path: Path) -> None:
    repo = Repository(make_repository(tmp_path), fsync=False)
    # A publisher killed between its link and its move: the file is in tmp/, ids/ID is linked to it.
    orphan = repo.tmp / "publish-once.01M8RS0ZR2Z420Y7NWGDYGHW0N.tmp"
    orphan.write_text(json.dumps(tick_activity().to_json()))
    os.link(orphan, repo.ids / "schedule.p.20261201T120000Z")
    now = time.time()
    assert repo.publish_once(tick_activity(), now) == "busy"  # it may still be publishing
    assert repo.publish_once(tick_activity(), now + 61) == "published"
    assert not orphan.exists()
    published = os.lstat(repo.inbox / "schedule.p.20261201T120000Z.json")
    assert published.st_nlink == 2  # its inbox name and its reservation, nothing else
    assert os.path.samestat(os.lstat(repo.ids / "schedule.p.20261201T120000Z"), published)
    # A reservation with no file at all (its publisher died after unlinking its temp file) too.
    (repo.ids / "schedule.p.20261201T130000Z").write_text("")
    assert repo.publish_once(tick_activity("schedule.p.20261201T130000Z"), now + 61) == "published"


def test_a_worker_with_an_older_definition_neither_fires_it_nor_undoes_the_newer(tmp_path: Path) -> None:
    repo = Repository(make_repository(tmp_path), fsync=False)
    old = Scheduler(repo, "old", repo.heartbeats / ".clock-old")
    new = Scheduler(repo, "new", repo.heartbeats / ".clock-new")
    every_second = {"p": Rule("p", Every(1), "t.noop")}
    every_other = {"p": Rule("p", Every(2), "t.noop")}
    assert old.fire(every_second, time.time()) == []  # takes the rule up: its first tick is the next
    time.sleep(0.05)
    assert new.fire(every_other, time.time()) == []  # reloaded later: its definition wins
    assert state(repo.root, "p")["expression"] == "every 2s"
    by_old: list[str] = []
    by_new: list[str] = []
    deadline = time.time() + 4.5
    while time.time() < deadline:
        by_old += old.fire(every_second, time.time())
        by_new += new.fire(every_other, time.time())
        time.sleep(0.02)
    assert by_old == [] and len(by_new) >= 2
    ticks = [_tick(name[: -len(".json")], "p") for name in by_new]
    assert all(t is not None and t % 2 == 0 for t in ticks)
    assert state(repo.root, "p")["expression"] == "every 2s"


@pytest.mark.parametrize("blocker", ["file", "dangling link"])
def test_a_schedules_path_that_is_no_folder_is_said_and_retried_not_spun_on(
    tmp_path: Path, blocker: str
) -> None:
    """A file in the way of schedules/ read as "another worker created the state meanwhile": the rule was
    looked at again at once, for ever (a core at 100%, nothing logged, nothing fired)."""
    repo = Repository(make_repository(tmp_path), fsync=False)
    if blocker == "file":
        (repo.root / "schedules").write_text("junk")
    else:
        (repo.root / "schedules").symlink_to(tmp_path / "nowhere")
    scheduler = Scheduler(repo, "w1", repo.heartbeats / ".clock-w1")
    now = time.time()
    assert scheduler.fire({"p": Rule("p", Every(1), "t.noop")}, now) == []
    assert scheduler.next_fire() >= now + 4  # RETRY_SECONDS later, not at once
