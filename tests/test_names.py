"""Hostile file names: whatever name the file system accepts is quarantined, and written escaped.

Names with line breaks, terminal escape sequences, bytes that are not UTF-8 and names of the
longest length the file system allows, on real directories and real worker processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import drop, effects, leftovers, make_repository, run_until_idle, start_worker, wait_for
from spoolpipe import config
from spoolpipe.activity import MAX_ATTEMPTS, invalid_entry_name, new_id, printable
from spoolpipe.repository import Repository

NAME_MAX = 255
# Each as the file system gives it to Python: undecodable bytes as surrogate escapes.
HOSTILE = {
    "newline": "forged.json\n2026-01-01 00:00:00,000 ERROR [w1] forged line",
    "ansi": "\x1b[2J\x1b[31mred\x1b]0;title\x07.json",
    "bytes": os.fsdecode(b"caf\xe9-\xff\xfe.json"),
    "ascii-255": "a" * (NAME_MAX - len(".json")) + ".json",
    "multibyte-255": "\u00e9" * 123 + "\u20ac" + "x.json",  # 2-byte and 3-byte characters
}


def test_the_hostile_names_are_what_they_claim() -> None:
    assert len(os.fsencode(HOSTILE["ascii-255"])) == NAME_MAX
    assert len(os.fsencode(HOSTILE["multibyte-255"])) == NAME_MAX


# -- the pure escaping ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain-name.json", "plain-name.json"),
        ("two\nlines\r\tx", "two\\nlines\\r\\tx"),
        ("\x1b[31mred\x07\x7f", "\\x1b[31mred\\x07\\x7f"),
        (os.fsdecode(b"caf\xe9"), "caf\\xe9"),  # a byte that is not UTF-8, as the byte
        ("caf\u00e9 \u20ac \U0001f600", "caf\u00e9 \u20ac \U0001f600"),  # printable text stays readable
        ("\u0085\u2028\u2029", "\\u0085\\u2028\\u2029"),  # line breaks beyond ASCII
        ("evil\u202eexe.txt", "evil\\u202eexe.txt"),  # a bidi override could disguise a name
        ("\U000e0041", "\\U000e0041"),
    ],
)
def test_printable_escapes_what_a_terminal_or_log_reader_would_act_on(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert printable(shown) == shown, "escaping twice changes nothing"
    assert shown.isprintable()
    shown.encode("utf-8")  # strict: always writable as UTF-8


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_the_invalid_entry_name_fits_and_is_cut_on_a_character_boundary(kind: str) -> None:
    token = new_id()
    stored = invalid_entry_name(HOSTILE[kind], token)
    assert len(stored.encode("utf-8")) <= NAME_MAX
    assert stored.endswith(f"~{token}")
    shown = printable(HOSTILE[kind])
    assert shown.startswith(stored[: -len(token) - 1]), "a prefix of the escaped name, whole characters"


def test_a_short_name_is_stored_whole() -> None:
    assert invalid_entry_name("junk.json", "T0KEN") == "junk.json~T0KEN"


# -- the repository: any name, from any state directory, all or nothing ---------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    root = tmp_path / "repo"
    Repository.create(root, config.render_defaults())
    return Repository(root, fsync=False)


def _reason_line(entry: Path) -> str:
    text = (entry / "reason.txt").read_text(encoding="utf-8")
    assert text.endswith("\n") and text.count("\n") == 1, f"one line: {text!r}"
    return text[:-1]


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_any_name_is_quarantined_with_the_original_kept(repo: Repository, kind: str) -> None:
    name = HOSTILE[kind]
    (repo.inbox / name).write_bytes(b"junk")
    final = repo.quarantine(repo.inbox, name, f"{name}: malformed JSON at line 1 column 1")
    assert final is not None and final.parent == repo.invalid
    assert len(os.fsencode(final.name)) <= NAME_MAX
    assert (final / name).read_bytes() == b"junk", "the entry is kept under its own name"
    assert _reason_line(final) == f"{printable(name)}: malformed JSON at line 1 column 1"
    assert os.listdir(repo.inbox) == [] and os.listdir(repo.tmp) == []


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_an_entry_named_reason_txt_keeps_both_itself_and_its_reason(repo: Repository, kind: str) -> None:
    entry = repo.inbox / "reason.txt"
    if kind == "file":
        entry.write_bytes(b"junk")
    else:
        entry.mkdir()
    final = repo.quarantine(repo.inbox, "reason.txt", "reason.txt: not an activity file")
    assert final is not None
    assert _reason_line(final) == "reason.txt: not an activity file"
    kept = final / "reason.txt~entry"
    assert kept.read_bytes() == b"junk" if kind == "file" else kept.is_dir()
    assert os.listdir(repo.inbox) == [] and os.listdir(repo.tmp) == []


def test_an_entry_is_quarantined_out_of_running(repo: Repository) -> None:
    claim = "job-7~1~w2.json"
    (repo.running / claim).write_text('{"type": "t"}')
    final = repo.quarantine(repo.running, claim, f"{claim}: duplicate id job-7")
    assert final is not None and (final / claim).read_text() == '{"type": "t"}'
    assert os.listdir(repo.running) == [] and os.listdir(repo.tmp) == []


def test_a_reason_with_line_breaks_is_written_on_one_line(repo: Repository) -> None:
    (repo.inbox / "junk.json").write_bytes(b"junk")
    final = repo.quarantine(repo.inbox, "junk.json", "junk.json: first\nsecond\x1b[0m")
    assert final is not None
    assert _reason_line(final) == "junk.json: first\\nsecond\\x1b[0m"


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_quarantine_failing_half_way_puts_the_entry_back(repo: Repository) -> None:
    # invalid/ on another file system: the entry is already in tmp/ when the last rename fails (EXDEV)
    with _tmpfs(repo.invalid, "1m"):
        (repo.inbox / "junk.json").write_bytes(b"junk")
        with pytest.raises(OSError):
            repo.quarantine(repo.inbox, "junk.json", "junk.json: malformed")
        assert os.listdir(repo.inbox) == ["junk.json"]
        assert (repo.inbox / "junk.json").read_bytes() == b"junk"
        assert os.listdir(repo.tmp) == [], "no staging folder is left"
        assert os.listdir(repo.invalid) == []


def test_an_interrupted_quarantine_that_cannot_reach_invalid_waits_in_tmp(repo: Repository) -> None:
    staging = repo.tmp / f"quarantine-{new_id()}"
    staging.mkdir()
    (staging / "junk.json").write_bytes(b"junk")
    then = time.time() - 120
    os.utime(staging, (then, then))
    with _tmpfs(repo.invalid, "1m"):
        repo.sweep_tmp(time.time())  # a worker starting up: must not stop it
        assert os.listdir(repo.tmp) == [staging.name]
    repo.sweep_tmp(time.time())
    assert os.listdir(repo.tmp) == []
    assert (repo.invalid / f"recovered~{staging.name.split('-', 1)[1]}" / "junk.json").read_bytes() == b"junk"


def test_a_full_disk_leaves_no_staging_folders(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "disk", "256k") as disk:
        root = disk / "repo"
        Repository.create(root, config.render_defaults())
        repo = Repository(root, fsync=False)
        (repo.inbox / "junk.json").write_bytes(b"junk")
        with contextlib.suppress(OSError), open(disk / "filler", "wb", buffering=0) as filler:
            while True:
                filler.write(b"\0" * 4096)
        for _ in range(3):
            with pytest.raises(OSError):
                repo.quarantine(repo.inbox, "junk.json", "junk.json: malformed " + "x" * 8192)
        assert os.listdir(repo.inbox) == ["junk.json"]
        assert os.listdir(repo.tmp) == []
        assert os.listdir(repo.invalid) == []


# -- real workers ------------------------------------------------------------------------------------

_LOG_LINE = re.compile(r"\A\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \[w1\] ")


def test_a_worker_quarantines_hostile_names_with_one_line_reasons_and_no_forged_log_lines(
    tmp_path: Path,
) -> None:
    repo = make_repository(tmp_path, "inbox.settle-seconds = 0.3\n")
    for name in HOSTILE.values():
        drop(repo, name, b"{not json")
    worker = start_worker(repo, "w1")
    try:
        wanted = len(HOSTILE)
        wait_for(lambda: len(os.listdir(repo / "invalid")) == wanted, 60, "every hostile name quarantined")
        wait_for(lambda: "tmp" not in leftovers(repo), 10, "tmp/ to be empty")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    assert leftovers(repo) == {}
    stored = {}
    for entry in (repo / "invalid").iterdir():
        assert len(os.fsencode(entry.name)) <= NAME_MAX
        [original] = [n for n in os.listdir(entry) if n != "reason.txt"]
        stored[original] = _reason_line(entry)
    for name in HOSTILE.values():
        assert stored[name].startswith(f"{printable(name)}: malformed JSON"), stored[name]
    log = (repo / "logs" / "workers" / "w1.log").read_text(encoding="utf-8")
    for line in log.splitlines():
        assert _LOG_LINE.match(line), f"not a line the worker wrote: {line!r}"
        assert "\x1b" not in line and "\x07" not in line
    assert "forged line" in log  # the newline name was logged, escaped, on the worker's own line
    assert printable(HOSTILE["newline"]) in log


def test_status_escapes_names_in_text_and_json(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    drop(repo, "job.json", json.dumps({"type": "evil\x1b[2J\ntype"}))  # no activity: not shown as a type
    drop(repo, "evil\x1b[2J\nname.json", json.dumps({"id": "ok", "type": "t.nobody"}))
    command = [sys.executable, "-m", "spoolpipe", "status", str(repo)]
    text = subprocess.run(command, capture_output=True, check=True).stdout.decode()
    assert "\x1b" not in text
    assert "(evil\\x1b[2J\\nname.json)" in text
    report = json.loads(subprocess.run([*command, "--json"], capture_output=True, check=True).stdout)
    assert report["inbox_by_type"] == {"t.nobody": 1}
    assert (report["inbox"]["oldest_ready"], report["inbox"]["unreadable"]) == ("evil\\x1b[2J\\nname.json", 1)
    assert report["unhandled_types"] == ["t.nobody"]


def test_status_escapes_what_a_heartbeat_file_says(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    # A heartbeat names the worker its file does (a worker id has no escapes): the rest is anyone's.
    heartbeat = {"worker": "w", "host": "evil\nhost\x1b[2J", "pid": 1, "running": [], "types": {"t\x07": 1}}
    (repo / "heartbeats" / "w.json").write_text(json.dumps(heartbeat))
    command = [sys.executable, "-m", "spoolpipe", "status", str(repo)]
    text = subprocess.run(command, capture_output=True, check=True).stdout.decode()
    assert "  w on evil\\nhost\\x1b[2J pid 1, running 0" in text
    assert "\x1b" not in text and "\x07" not in text
    report = json.loads(subprocess.run([*command, "--json"], capture_output=True, check=True).stdout)
    [worker] = report["workers"]
    assert (worker["worker"], worker["host"], worker["types"]) == ("w", "evil\\nhost\\x1b[2J", {"t\\x07": 1})


def test_a_worker_whose_quarantines_fail_leaves_the_file_in_the_inbox_and_logs_it_escaped(
    tmp_path: Path,
) -> None:
    repo = make_repository(tmp_path, "inbox.settle-seconds = 0.3\n")
    name = HOSTILE["newline"]
    drop(repo, name, b"{not json")
    log = repo / "logs" / "workers" / "w1.log"
    with _tmpfs(repo / "invalid", "1m"):  # every quarantine fails after the move (EXDEV)
        worker = start_worker(repo, "w1")
        try:
            failed = "cannot quarantine"
            wait_for(lambda: log.exists() and failed in log.read_text(), 60, "a failed quarantine")

            def put_back() -> bool:  # between two tries (the worker tries again at each scan)
                staging = [n for n in os.listdir(repo / "tmp") if n.startswith("quarantine-")]
                return os.listdir(repo / "inbox") == [name] and staging == []

            wait_for(put_back, 10, "the file back in the inbox and no staging folder")
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(30) == 0
    for line in log.read_text(encoding="utf-8").splitlines():
        assert _LOG_LINE.match(line), f"not a line the worker wrote: {line!r}"
    assert f"cannot quarantine {printable(name)}: " in log.read_text(encoding="utf-8")
    worker = start_worker(repo, "w1")  # with invalid/ back, the same file is quarantined
    try:
        wait_for(lambda: len(os.listdir(repo / "invalid")) == 1, 60, "the quarantine")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    assert leftovers(repo) == {}


def test_an_attempt_past_the_limit_a_name_can_count_fails_for_good(tmp_path: Path) -> None:
    """Attempt 1,000,000 (a worker killed during attempt 999,999) got a name no parser read back as one
    (six digits): it ran again as attempt 1, so retry.max-attempts never triggered."""
    repo = make_repository(tmp_path, f"retry.max-attempts = {MAX_ATTEMPTS}\n")
    doc = {"id": "x", "type": "t.stuck", "data": {"unstick_on": MAX_ATTEMPTS + 2}}
    drop(repo, f"x~{MAX_ATTEMPTS}.json", json.dumps(doc))
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: len(effects(repo, "t.stuck")) == 1, 30, "attempt 999999 to run")
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    run_until_idle(repo, timeout=30)  # w1 again: its dead claim counts as an attempt
    assert [int(run[1]) for run in effects(repo, "t.stuck")] == [MAX_ATTEMPTS]
    record = json.loads((repo / "failed" / "x.json").read_text())
    reason = record["spoolpipe"]["reason"]
    assert f"attempt {MAX_ATTEMPTS + 1} exceeds retry.max-attempts={MAX_ATTEMPTS}" in reason


def test_an_inbox_name_never_makes_an_activity_due_before_its_document_says(tmp_path: Path) -> None:
    """``early~1~1000.json`` of a 2030 activity ran at once (the name's time replaced the document's);
    one of 1960 was quarantined (out of range) rather than due now, as any past time."""
    repo = make_repository(tmp_path)
    drop(repo, "early~1~1000.json", json.dumps({"type": "t.noop", "not_before": "2030-01-01T00:00:00Z"}))
    drop(repo, "old.json", json.dumps({"type": "t.noop", "not_before": "1960-01-01T00:00:00Z"}))
    drop(repo, "older~2~1000.json", json.dumps({"type": "t.noop", "not_before": "0001-01-01T00:00:00Z"}))
    worker = start_worker(repo, "w1")
    try:
        wait_for(lambda: (repo / "done" / "old.json").exists(), 30, "the activity of 1960")
        wait_for(lambda: (repo / "done" / "older.json").exists(), 30, "the activity of year 1")
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
    assert os.listdir(repo / "inbox") == ["early~1~1000.json"] and os.listdir(repo / "invalid") == []
