"""The command line as a user runs it: real processes, real repositories, exit codes and messages."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from harness import read_only_view
from spoolpipe import config
from spoolpipe.activity import Activity, ClaimName, parse_activity
from spoolpipe.cli import build_parser
from spoolpipe.record import Attempt, done_record, failed_record
from spoolpipe.repository import PROPERTIES_FILE, STATE_DIRS, SUPPORT_DIRS, Found, Repository, dumps

SPOOLPIPE = [sys.executable, "-m", "spoolpipe"]
ULID = re.compile(r"\A[0-9A-HJKMNP-TV-Z]{26}\Z")
ATTEMPT = Attempt("w1", "host", 1, 1_795_334_400.0, 1_795_334_401.0)


@dataclass
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"spoolpipe {' '.join(self.args)} -> {self.returncode}\n{self.stdout}\n{self.stderr}"


def run_all(*commands: tuple[str, ...], stdin: str | None = None) -> list[Result]:
    """Run several ``spoolpipe`` commands at once (each one is a fresh interpreter)."""
    procs = [
        (
            args,
            subprocess.Popen(
                [*SPOOLPIPE, *args],
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for args in commands
    ]
    results = []
    for args, proc in procs:
        out, err = proc.communicate(stdin, timeout=60)
        results.append(Result(args, proc.returncode, out, err))
    return results


def run(*args: str, stdin: str | None = None) -> Result:
    return run_all(args, stdin=stdin)[0]


def ok(*args: str, stdin: str | None = None) -> Result:
    result = run(*args, stdin=stdin)
    assert result.returncode == 0, str(result)
    return result


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    Repository.create(root, config.render_defaults())
    return root


def inbox_doc(repo: Path, activity_id: str) -> dict[str, Any]:
    raw = (repo / "inbox" / f"{activity_id}.json").read_bytes()
    parse_activity(raw, f"{activity_id}.json")  # what submit writes is a valid activity
    doc: dict[str, Any] = json.loads(raw)
    return doc


# -- help ------------------------------------------------------------------------------------------

HELP = {
    (): [
        "init",
        "submit",
        "worker",
        "status",
        "list",
        "inspect",
        "retry",
        "stop",
        "reload",
        "systemd-unit",
        "serve",
        "--version",
    ],
    ("init",): ["REPO"],
    ("submit",): ["REPO", "TYPE", "DATA", "--id", "--delay", "--verbose"],
    ("worker",): ["REPO", "--worker-id", "--until-idle", "--no-wait", "--log-level", "--check"],
    ("status",): ["REPO", "--json", "--watch", "SECONDS", "Exit codes"],
    ("list",): ["REPO", "STATE", "--type", "--since", "DURATION", "--limit", "--json", "Exit codes"],
    ("inspect",): ["REPO", "ID", "--json", "Exit codes: 0 shown; 1 no activity with this id"],
    ("retry",): ["REPO", "ID", "--all-failed"],
    ("stop",): ["REPO", "WORKER", "--all", "--now", "--wait", "Exit codes"],
    ("reload",): ["REPO", "WORKER", "--all", "--wait", "Exit codes"],
    ("systemd-unit",): ["REPO", "--worker-id", "--user", "Exit codes"],
}


def test_help_of_every_command_exits_0_and_names_its_arguments() -> None:
    *results, version = run_all(*((*command, "--help") for command in HELP), ("--version",))
    assert version.returncode == 0
    assert version.stdout.startswith("spoolpipe ")
    for (command, expected), result in zip(HELP.items(), results, strict=True):
        assert result.returncode == 0, str(result)
        assert result.stdout.startswith(f"usage: spoolpipe {' '.join(command)}".rstrip()), str(result)
        for word in expected:
            assert word in result.stdout, f"{word!r} missing from {result}"


def test_every_command_states_its_exit_codes() -> None:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert commands
    for name, parser in commands.items():
        assert "Exit codes: 0 " in parser.format_help(), (
            f"spoolpipe {name} --help does not state its exit codes"
        )


# -- init ------------------------------------------------------------------------------------------


def test_init_with_the_console_script_creates_the_layout_and_is_idempotent(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "spoolpipe"
    assert script.exists(), "the spoolpipe console script is not installed next to the interpreter"
    root = tmp_path / "spool"
    first = subprocess.run([str(script), "init", str(root)], capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    for name in (*STATE_DIRS, *SUPPORT_DIRS):
        assert (root / name).is_dir(), name
    properties = root / PROPERTIES_FILE
    assert properties.is_file()
    text = properties.read_text()
    for key in ("processors", "pool.size", "retry.max-attempts", "claims.lock", "inbox.settle-seconds"):
        assert re.search(rf"^#?\s*{re.escape(key)}\s*[=:]", text, re.MULTILINE), key
    created = first.stdout.splitlines()
    assert f"created {root}" in created
    assert f"created {root / 'inbox'}" in created
    assert f"created {properties}" in created
    assert all(line.startswith("created ") for line in created)
    assert os.listdir(root / "tmp") == []
    assert list(config.load(root).warnings) == []  # the commented defaults load cleanly

    properties.write_text("pool.size = 3\n")
    again = ok("init", str(root))
    assert again.stdout == f"{root} is already a complete repository; nothing changed\n"
    assert properties.read_text() == "pool.size = 3\n"


# -- submit ----------------------------------------------------------------------------------------


def test_submit_writes_valid_activities(repo: Path) -> None:
    before = time.time()
    plain, from_stdin, no_data, later = run_all(
        ("submit", str(repo), "invoice.render", '{"number": 7}'),
        ("submit", str(repo), "t.x", "-", "--id", "from-stdin", "-v"),
        ("submit", str(repo), "t.x", "--id", "no-data"),
        ("submit", str(repo), "t.x", "{}", "--id", "later", "--delay", "90"),
        stdin='{"text": "héllo"}',
    )
    after = time.time()
    for result in (plain, from_stdin, no_data, later):
        assert result.returncode == 0, str(result)

    activity_id = plain.stdout.strip()
    assert ULID.match(activity_id), plain.stdout
    assert inbox_doc(repo, activity_id) == {
        "id": activity_id,
        "type": "invoice.render",
        "data": {"number": 7},
    }

    assert from_stdin.stdout == "from-stdin\n"
    assert inbox_doc(repo, "from-stdin") == {"id": "from-stdin", "type": "t.x", "data": {"text": "héllo"}}
    assert no_data.stdout == "no-data\n"
    assert inbox_doc(repo, "no-data")["data"] == {}
    assert str(repo / "inbox" / "from-stdin.json") in from_stdin.stderr

    not_before = datetime.fromisoformat(inbox_doc(repo, "later")["not_before"])
    assert not_before.tzinfo is not None
    assert before + 90 - 2 <= not_before.timestamp() <= after + 90 + 2
    activity = parse_activity((repo / "inbox" / "later.json").read_bytes(), "later.json")
    assert activity.not_before == pytest.approx(not_before.timestamp())

    assert sorted(os.listdir(repo / "inbox")) == sorted(
        f"{i}.json" for i in (activity_id, "from-stdin", "no-data", "later")
    )
    assert [n for n in os.listdir(repo / "tmp") if not n.startswith(".clock")] == []


BAD_SUBMITS = {
    ("bad type", "{}"): "TYPE 'bad type' is not a valid type",
    ("t.x", '{"a": '): "DATA: malformed JSON at line 1 column 7",
    ("t.x", "[1, 2]"): "DATA: top level is a JSON array, expected an object",
    ("t.x", "null"): "DATA: top level is JSON null, expected an object",  # it said "a JSON NoneType"
    ("t.x", '"text"'): "DATA: top level is a JSON string, expected an object",
    ("t.x", "true"): "DATA: top level is JSON true, expected an object",
    ("t.x", "7.5"): "DATA: top level is a JSON number, expected an object",
    ("t.x", "{}", "--id", "no/slash"): "--id 'no/slash' is not a valid id",
    ("t.x", "{}", "--delay", "-1"): "--delay must be a number of seconds >= 0",
    ("t.x", "{}", "--delay", "3e11"): "--delay reaches past 9999-12-31",
    ("t.x", "{}", "--delay", "1e300"): "--delay reaches past 9999-12-31",
    (
        "t.x",
        '{"x": "' + "y" * 5000 + '"}',
    ): "bytes, over limits.activity-bytes=4096",
    ("t.x", '{"x": ' * 100 + "{}" + "}" * 100): "DATA: lists and objects nested more than 100 levels deep",
}


def test_options_may_come_before_the_last_optional_argument(repo: Path) -> None:
    """`submit REPO TYPE --priority 3 DATA` took DATA as missing, then refused it: "spoolpipe: error:
    unrecognized arguments", with no command named; so did `stop REPO --wait ID`, `schedule REPO
    --json NAME`. And `status --watch abc` said "invalid _watch_interval value"."""
    early, unknown, watch = run_all(
        ("submit", str(repo), "t.x", "--priority", "3", "--id", "early", '{"n": 1}'),
        ("submit", str(repo), "t.x", "--bogus", "3", "{}"),
        ("status", str(repo), "--watch", "abc"),
    )
    assert early.returncode == 0, str(early)
    assert json.loads((repo / "inbox" / "early~p3.json").read_text())["data"] == {"n": 1}
    assert unknown.returncode == 2
    assert "spoolpipe submit: error: unrecognized arguments: --bogus" in unknown.stderr
    assert watch.returncode == 2
    assert "argument --watch: 'abc': give a number of seconds > 0, at most 86400" in watch.stderr


def test_submit_rejects_bad_input_with_exit_2_naming_the_problem(repo: Path) -> None:
    with (repo / PROPERTIES_FILE).open("a") as f:
        f.write("limits.activity-bytes = 4096\n")
    results = run_all(*(("submit", str(repo), *args) for args in BAD_SUBMITS))
    for message, result in zip(BAD_SUBMITS.values(), results, strict=True):
        assert result.returncode == 2, str(result)
        assert message in result.stderr, str(result)
        assert "Traceback" not in result.stderr
        assert result.stdout == ""
    assert os.listdir(repo / "inbox") == []
    # Nothing half-published; a --delay reads the shared clock through its probe file.
    assert [n for n in os.listdir(repo / "tmp") if not n.startswith(".clock")] == []


def test_submit_rejects_a_number_that_is_not_a_finite_float(repo: Path) -> None:
    # 1e400 is RFC 8259 syntax but becomes infinity: it cannot be written back as JSON.
    result = run("submit", str(repo), "t.x", '{"a": 1e400}')
    assert result.returncode == 2, str(result)
    assert "Traceback" not in result.stderr
    assert os.listdir(repo / "inbox") == []
    assert os.listdir(repo / "tmp") == []


def test_submit_refuses_data_that_is_not_utf_8_with_exit_2(repo: Path) -> None:
    """A DATA argument of bytes that are not UTF-8 ended in UnicodeEncodeError, exit 70."""
    result = run("submit", str(repo), "t.x", '{"a": "\udcff"}')  # the argument's bytes: {"a": "\xff"}
    assert result.returncode == 2, str(result)
    assert "error: DATA: not UTF-8" in result.stderr, str(result)
    assert os.listdir(repo / "inbox") == []


def test_submit_refuses_an_id_that_is_already_in_inbox_or_done(repo: Path) -> None:
    Repository(repo, fsync=False).submit(Activity("dup", "t.x"))
    (repo / "done" / "finished.json").write_bytes(
        dumps(done_record(Activity("finished", "t.x"), ATTEMPT, 1, []))
    )
    again, done = run_all(
        ("submit", str(repo), "t.x", "--id", "dup"), ("submit", str(repo), "t.x", "--id", "finished")
    )
    for result, activity_id in ((again, "dup"), (done, "finished")):
        assert result.returncode == 2, str(result)
        assert activity_id in result.stderr
        assert "already exists" in result.stderr
    assert os.listdir(repo / "inbox") == ["dup.json"]


@pytest.mark.parametrize(
    ("directory", "name"),
    [
        pytest.param("inbox", "dup~2~1000.json", id="waiting-for-its-retry"),
        pytest.param("running", "dup~1~w1.json", id="running-now"),
    ],
)
def test_submit_refuses_an_id_that_is_retrying_or_running(repo: Path, directory: str, name: str) -> None:
    # An id waiting as a retry would run twice (two inbox files, two claims, one done record);
    # an id being run would be quarantined as a duplicate after submit said it was accepted.
    (repo / directory / name).write_bytes(dumps({"id": "dup", "type": "t.x", "data": {}}))
    result = run("submit", str(repo), "t.x", "--id", "dup")
    assert result.returncode == 2, str(result)
    assert "dup" in result.stderr
    assert os.listdir(repo / "inbox") == ([name] if directory == "inbox" else [])


# -- not a repository ------------------------------------------------------------------------------


def test_init_where_no_repository_can_be_made_exits_2_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "spoolpipe.properties").symlink_to(tmp_path / "nowhere")
    results = run_all(
        ("init", str(tmp_path / "a-file")),
        ("init", str(tmp_path / "a-file" / "sub")),
        ("init", str(tmp_path / "linked")),
        ("init", ""),
    )
    for result in results:
        assert result.returncode == 2, str(result)
        assert "Traceback" not in result.stderr, str(result)
    assert str(tmp_path / "a-file") in results[0].stderr
    assert "spoolpipe.properties" in results[2].stderr
    assert "REPO must not be empty" in results[3].stderr
    assert (tmp_path / "a-file").read_text() == "x"
    assert (tmp_path / "linked" / "spoolpipe.properties").is_symlink()


def test_commands_on_a_non_repository_exit_2_and_say_to_run_init(tmp_path: Path) -> None:
    where = str(tmp_path)
    results = run_all(
        ("submit", where, "t.x", "{}"),
        ("status", where, "--json"),
        ("retry", where, "x"),
        ("worker", where, "--worker-id", "w1", "--until-idle"),
    )
    for result in results:
        assert result.returncode == 2, str(result)
        assert f"spoolpipe init {tmp_path}" in result.stderr, str(result)
        assert "Traceback" not in result.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("folder", ["ids", "inbox", "tmp"])
def test_a_file_in_place_of_a_layout_folder_is_named_not_a_crash(repo: Path, folder: str) -> None:
    """ids/ as a file: every command crashed in Repository.check (FileExistsError, exit 70)."""
    shutil.rmtree(repo / folder)
    (repo / folder).write_text("in the way\n")
    results = run_all(
        ("submit", str(repo), "t.x", "{}"),
        ("status", str(repo), "--json"),
        ("worker", str(repo), "--worker-id", "w1", "--until-idle"),
    )
    for result in results:
        assert result.returncode == 2, str(result)
        assert f"{repo / folder} is not a folder" in result.stderr, str(result)
        assert "Traceback" not in result.stderr
    assert (repo / folder).read_text() == "in the way\n"


# -- status ----------------------------------------------------------------------------------------


def _heartbeat(repo: Path, worker: str, types: dict[str, int], age: float) -> None:
    path = repo / "heartbeats" / f"{worker}.json"
    doc = {
        "worker": worker,
        "host": f"{worker}.local",
        "pid": 4242,
        "started_at": "2026-11-22T08:00:00.000+00:00",
        "lock_mode": "flock",
        "pool_size": 2,
        "types": types,
        "running": [],
    }
    path.write_text(json.dumps(doc))
    then = time.time() - age
    os.utime(path, (then, then))


def _populate(repo: Path) -> None:
    inbox = repo / "inbox"
    (inbox / "a.json").write_text('{"type": "t.handled"}')
    (inbox / "b~2~1000.json").write_text('{"type": "t.orphan"}')
    (inbox / "c.json").write_text('{"type": "t.orphan"}')
    (inbox / ".being-written.json").write_text("{")
    (inbox / "d.json.part").write_text("{")
    (repo / "running" / "e~1~w1.json").write_text('{"type": "t.handled"}')
    # A claim committed but not yet finished counts once, as running.
    store = Repository(repo, fsync=False)
    (inbox / "g.json").write_text('{"type": "t.handled"}')
    found = store.read("g.json", limit=1 << 20)
    assert isinstance(found, Found)
    activity = found.activity
    claim = store.claim("g.json", activity, "w2")
    assert isinstance(claim, ClaimName)
    store.stage(claim, "done", done_record(activity, ATTEMPT, None, []), [])
    assert store.commit(claim)
    (repo / "done" / "done-0.json").write_text("{}")
    # a skipped record, and one whose data only mentions the word
    (repo / "done" / "done-1.json").write_text('{"result": null, "spoolpipe": {"status": "skipped"}}')
    (repo / "done" / "done-2.json").write_text('{"data": {"s": "skipped"}, "spoolpipe": {"status": "done"}}')
    (repo / "failed" / "f.json").write_text("{}")
    (repo / "invalid" / "junk.json~01M80FE64HTEC8XYP509KA1G1P").mkdir()
    _heartbeat(repo, "alive", {"t.handled": 2, "t.never": 0}, age=1)
    _heartbeat(repo, "dead", {"t.handled": 2, "t.orphan": 1}, age=3600)


def test_status_counts_and_live_workers(repo: Path) -> None:
    _populate(repo)
    as_json, as_text = run_all(("status", str(repo), "--json"), ("status", str(repo)))
    report = json.loads(as_json.stdout)
    assert report["counts"] == {"inbox": 3, "running": 2, "done": 3, "failed": 1, "invalid": 1}
    assert list(report["counts"]) == ["inbox", "running", "done", "failed", "invalid"]
    # a record whose data only mentions the word is not skipped; one without a status is unknown
    assert report["done_by_status"] == {"done": 1, "skipped": 1, "unknown": 1}
    assert isinstance(report["workers"], list)
    assert [w["worker"] for w in report["workers"]] == ["alive"]
    assert report["workers"][0]["host"] == "alive.local"
    assert report["unhandled_types"] == ["t.orphan"]

    assert as_text.returncode == 0, str(as_text)
    out = as_text.stdout
    assert "inbox 3  running 2  done 3  failed 1  invalid 1" in out
    assert "done by status: done 1, skipped 1, unknown 1" in out
    assert "workers alive: 1" in out
    assert "alive on alive.local pid 4242" in out
    assert "dead" not in out
    warnings = [line for line in out.splitlines() if "no live worker handles" in line]
    assert len(warnings) == 1
    assert "'t.orphan'" in warnings[0]


# -- retry -----------------------------------------------------------------------------------------


def _fail(repo: Path, activity_id: str) -> None:
    record = failed_record(Activity(activity_id, "t.x", {"n": 1}, 5), ATTEMPT, "boom", "tb")
    (repo / "failed" / f"{activity_id}.json").write_bytes(dumps(record))


def test_retry_moves_failed_records_back_as_attempt_one(repo: Path) -> None:
    for name in ("f1", "f2", "f3"):
        _fail(repo, name)
    one = ok("retry", str(repo), "f1")
    assert one.stdout == "requeued f1\n"
    assert sorted(os.listdir(repo / "failed")) == ["f2.json", "f3.json"]
    activity = parse_activity((repo / "inbox" / "f1.json").read_bytes(), "f1.json")
    assert (activity.id, activity.type, dict(activity.data), activity.attempt) == ("f1", "t.x", {"n": 1}, 1)

    rest = ok("retry", str(repo), "--all-failed")
    assert sorted(rest.stdout.splitlines()) == ["requeued f2", "requeued f3"]
    assert os.listdir(repo / "failed") == []
    assert sorted(os.listdir(repo / "inbox")) == ["f1.json", "f2.json", "f3.json"]


def test_retry_refuses_a_record_whose_activity_would_be_over_the_size_limit(repo: Path) -> None:
    """Its history grows with each retry: it was requeued (exit 0), then quarantined by the worker."""
    _fail(repo, "f1")
    size = len((repo / "failed" / "f1.json").read_bytes())
    with (repo / PROPERTIES_FILE).open("a") as f:
        f.write(f"limits.activity-bytes = {size // 2}\n")
    result = run("retry", str(repo), "f1")
    assert result.returncode == 1, str(result)
    assert f"over limits.activity-bytes={size // 2}" in result.stderr
    assert os.listdir(repo / "failed") == ["f1.json"] and os.listdir(repo / "inbox") == []


def test_retry_into_a_reader_that_stops_early_requeues_everything_and_exits_0(repo: Path) -> None:
    """``| head -1``: every later "requeued" line was reported as an error and the exit was 1."""
    for i in range(600):
        _fail(repo, f"f{i}")
    command = f"{sys.executable} -m spoolpipe retry {shlex.quote(str(repo))} --all-failed 2>err.txt | head -1"
    run_ = subprocess.run(
        ["bash", "-c", command + "; echo ${PIPESTATUS[0]}"],
        capture_output=True,
        text=True,
        cwd=repo.parent,
        env={**os.environ},
        check=True,
        timeout=120,
    )
    assert run_.stdout.splitlines()[-1] == "0", run_
    assert (repo.parent / "err.txt").read_text() == ""
    assert os.listdir(repo / "failed") == [] and len(os.listdir(repo / "inbox")) == 600


def test_retry_usage_and_errors(repo: Path) -> None:
    _fail(repo, "f1")
    (repo / "inbox" / "f1.json").write_text('{"type": "t.x"}')
    neither, both, problems = run_all(
        ("retry", str(repo)),
        ("retry", str(repo), "f1", "--all-failed"),
        ("retry", str(repo), "nope", "f1"),
    )
    for result in (neither, both):
        assert result.returncode == 2, str(result)
        assert "--all-failed" in result.stderr
    assert problems.returncode == 1, str(problems)
    assert "failed/nope.json does not exist" in problems.stderr
    assert "an activity with id f1 already exists: inbox/f1.json" in problems.stderr
    assert os.listdir(repo / "failed") == ["f1.json"]
    assert (repo / "inbox" / "f1.json").read_text() == '{"type": "t.x"}'


def test_retry_refuses_what_is_not_an_id_and_touches_nothing_outside_failed(
    repo: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    record = failed_record(Activity("evil", "t.x"), ATTEMPT, "boom", "tb")
    (outside / "rec.json").write_bytes(dumps(record))
    _fail(repo, "f1")
    results = run_all(
        ("retry", str(repo), "../../outside/rec"),
        ("retry", str(repo), ""),
        ("retry", str(repo), "f1", "a/b"),
    )
    for result in results:
        assert result.returncode == 2, str(result)
        assert "is not a valid id" in result.stderr, str(result)
        assert result.stdout == ""
    assert (outside / "rec.json").exists()
    assert os.listdir(repo / "inbox") == []
    assert os.listdir(repo / "failed") == ["f1.json"]


def test_retry_all_failed_skips_what_is_not_a_record_file_and_requeues_the_rest(repo: Path) -> None:
    for name in ("aa", "zz"):
        _fail(repo, name)
    (repo / "failed" / "dir.json").mkdir()
    os.mkfifo(repo / "failed" / "fifo.json")  # opening it for reading would block forever
    (repo / "failed" / "link.json").symlink_to(repo / "failed" / "aa.json")
    mismatch = failed_record(Activity("other", "t.x"), ATTEMPT, "boom", "tb")
    (repo / "failed" / "mismatch.json").write_bytes(dumps(mismatch))
    result = run("retry", str(repo), "--all-failed")
    assert result.returncode == 1, str(result)
    assert sorted(result.stdout.splitlines()) == ["requeued aa", "requeued zz"]
    assert "failed/dir.json cannot be retried: it is a directory" in result.stderr
    assert "failed/fifo.json cannot be retried: it is a FIFO" in result.stderr
    assert "failed/link.json cannot be retried: it is a symbolic link" in result.stderr
    assert "failed/mismatch.json cannot be retried: its id is 'other'" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(repo / "inbox")) == ["aa.json", "zz.json"]
    assert sorted(os.listdir(repo / "failed")) == ["dir.json", "fifo.json", "link.json", "mismatch.json"]


# -- an invalid configuration ------------------------------------------------------------------------


def test_list_and_inspect_refuse_an_invalid_configuration_as_documented(repo: Path) -> None:
    properties = repo / PROPERTIES_FILE
    line = len(properties.read_text().splitlines()) + 1
    with properties.open("a") as f:
        f.write("pool.size = q\n")
    for result in run_all(("list", str(repo), "done"), ("inspect", str(repo), "nosuch")):
        assert result.returncode == 2, str(result)
        assert f"{properties}:{line}:" in result.stderr, str(result)
        assert "Traceback" not in result.stderr


def test_an_invalid_configuration_stops_status_and_worker_with_file_and_line(repo: Path) -> None:
    properties = repo / PROPERTIES_FILE
    line = len(properties.read_text().splitlines()) + 1
    with properties.open("a") as f:
        f.write("pool.size = many\n")
    where = f"{properties}:{line}:"
    worker, status = run_all(
        ("worker", str(repo), "--worker-id", "w1", "--until-idle"), ("status", str(repo))
    )
    assert worker.returncode == 2, str(worker)  # the documented code for an invalid configuration
    assert where in worker.stderr, str(worker)
    assert "pool.size" in worker.stderr
    assert "Traceback" not in worker.stderr
    assert status.returncode == 2, str(status)
    assert where in status.stderr, str(status)


@pytest.mark.parametrize("seconds", ["0", "-1", "nan", "inf", "1e10"])
def test_status_watch_takes_a_number_of_seconds_up_to_a_day(repo: Path, seconds: str) -> None:
    """``--watch 1e10`` drew once, then crashed in time.sleep (OverflowError, exit 70)."""
    result = run("status", str(repo), "--watch", seconds)
    assert result.returncode == 2, str(result)
    assert "give a number of seconds > 0, at most 86400" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_init_on_a_link_to_nothing_is_refused_and_makes_nothing(tmp_path: Path) -> None:
    (tmp_path / "repo").symlink_to(tmp_path / "nowhere")
    result = run("init", str(tmp_path / "repo"))
    assert result.returncode == 2, str(result)
    assert "symbolic link to nothing" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("command", [("worker", "--check"), ("graph",), ("systemd-unit",)])
def test_an_empty_worker_id_is_refused_not_the_host_name(repo: Path, command: tuple[str, ...]) -> None:
    """A script passing an unset ``$WID`` ran as the host's default worker."""
    result = run(command[0], str(repo), "--worker-id", "", *command[1:])
    assert result.returncode == 2, str(result)
    assert "--worker-id '' must match" in result.stderr


def test_commands_on_a_read_only_mount_say_what_they_cannot_do_without_a_traceback(
    repo: Path, tmp_path: Path
) -> None:
    """schedule, stop --all and purge --dry-run crashed (exit 70) where the clock probe or the purge
    lock could not be written."""
    with read_only_view(repo, tmp_path / "ro") as mount:
        schedule = run("schedule", str(mount))
        stop = run("stop", str(mount), "--all")
        purge = run("purge", str(mount), "--dry-run")
    for result in (schedule, stop, purge):
        assert "Traceback" not in result.stderr and "crashed" not in result.stderr, str(result)
    assert schedule.returncode == 0, str(schedule)
    assert stop.returncode == 1 and "no live worker" in stop.stderr, str(stop)
    assert purge.returncode == 1 and "cannot take locks/~retention.lock" in purge.stderr, str(purge)
