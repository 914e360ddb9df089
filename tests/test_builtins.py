"""The built-in processors: ``command``, ``http.request`` and ``files.*``.

The rules (templates, verdicts, definitions) are checked in-process; every type
is then run by real ``spoolpipe worker`` processes against real programs, a
real HTTP server and real folders, including what a hostile activity file
tries: shell syntax in data values, paths out of the roots, unconfigured names.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import javaproperties
import pytest

from harness import kill_group, make_repository, records, run_until_idle, start_worker, submit, wait_for
from spoolpipe import config
from spoolpipe.builtins import specs

PY = sys.executable
# A program that prints its arguments as one JSON array: what it really received.
ARGV_DUMP = "import json, sys; print(json.dumps(sys.argv[1:]))"


def prop_lines(pairs: dict[str, str]) -> str:
    return "".join(javaproperties.join_key_value(k, v) + "\n" for k, v in pairs.items())


def done(repo: Path) -> dict[str, dict[str, Any]]:
    return records(repo / "done")


def failed(repo: Path) -> dict[str, dict[str, Any]]:
    return records(repo / "failed")


def reason(repo: Path, activity_id: str) -> str:
    return str(failed(repo)[activity_id]["spoolpipe"]["reason"])


def attempt_log(repo: Path, activity_id: str, attempt: int = 1) -> str:
    return (repo / "logs" / "activities" / f"{activity_id}~{attempt}.log").read_text()


# --------------------------------------------------------------------------- pure rules


def test_each_filled_template_is_one_argument_whatever_the_value_holds() -> None:
    argv = ("/bin/tool", "--out={path}", "{n}", "{x}", "{{literal}}", "-", "{path}{n}")
    data = {"path": "a b; rm -rf /", "n": 7, "x": 2.5}
    assert specs.fill(argv, data) == [
        "/bin/tool",
        "--out=a b; rm -rf /",
        "7",
        "2.5",
        "{literal}",
        "-",
        "a b; rm -rf /7",
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "argv[1] {v}: the activity's data has no field 'v'"),
        ({"v": "a\0b"}, "NUL character"),
        ({"v": True}, "expected a string or a number, got bool"),
        ({"v": None}, "expected a string or a number, got NoneType"),
        ({"v": ["a", "b"]}, "expected a string or a number, got list"),
        ({"v": {"a": 1}}, "expected a string or a number, got dict"),
        ({"v": float("inf")}, "is not a finite number"),
    ],
)
def test_data_that_cannot_fill_a_template_is_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(specs.CannotFill, match=message.replace("[", r"\[").replace("{", r"\{")):
        specs.fill(("/bin/echo", "{v}"), data)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("[]", "the list is empty"),
        ('["{program}", "x"]', "the program (first element) cannot have a placeholder"),
        ('["/bin/echo", "{bad name}"]', "a placeholder is {field}"),
        ('["/bin/echo", "}"]', "a lone '}'"),
        ('["/bin/echo", "{"]', "a placeholder is {field}"),
        ('"/bin/echo"', "the value is not an array of strings"),
        ("/bin/echo hello", "is not JSON"),
        ('["/bin/echo", 3]', "the value is not an array of strings"),
    ],
)
def test_an_unusable_argv_is_a_configuration_error_at_its_line(
    tmp_path: Path, argv: str, message: str
) -> None:
    (tmp_path / "spoolpipe.properties").write_text(
        "log.level = INFO\n" + prop_lines({"command.x.argv": argv})
    )
    with pytest.raises(config.ConfigError) as caught:
        config.load(tmp_path)
    assert len(caught.value.errors) == 1
    error = caught.value.errors[0]
    assert error.startswith(f"{tmp_path / 'spoolpipe.properties'}:2: command.x.argv: "), error
    assert message in error


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ({"command.x.cwd": "/tmp"}, "command 'x' has no command.x.argv (required)"),
        (
            {
                "command.x.argv": '["/bin/true"]',
                "command.x.ok-exit-codes": "0, 3",
                "command.x.retry-exit-codes": "3",
            },
            "exit code(s) 3 are in both ok-exit-codes and retry-exit-codes",
        ),
        ({"command.x.ok-exit-codes": "256"}, "'256' is not an exit code"),
        ({"command.x.env": "PATH, 1X"}, "'1X' is not an environment variable name"),
        ({"command.x.shell": "yes"}, "unknown field 'shell'"),
        ({"command.a.b.argv": '["/bin/true"]'}, "'a.b' is not a valid name"),
        ({"http.x.method": "POST"}, "http 'x' has no http.x.url (required)"),
        ({"http.x.url": "ftp://example.com/"}, "is not an http:// or https:// URL"),
        ({"http.x.url": "http://user:pw@example.com/"}, "is not an http:// or https:// URL"),
        ({"http.x.method": "TRACE"}, "'TRACE' is not a valid choice"),
        ({"http.x.headers": '{"X-A": "1\\r\\nX-B: 2"}'}, "expected a string without line breaks"),
        ({"http.x.headers": '{"a b": "1"}'}, "'a b' is not a header name"),
        # a receiver that drops repeats by X-Spoolpipe-Activity could be fooled by the configuration
        (
            {"http.x.headers": '{"x-spoolpipe-attempt": "99"}'},
            "header 'x-spoolpipe-attempt' is set by spoolpipe on every request",
        ),
        ({"http.x.headers": '{"User-Agent": "mine"}'}, "header 'User-Agent' is set by spoolpipe"),
        # it passed, then every request failed with a UnicodeEncodeError, retried
        ({"http.x.headers": '{"X-Price": "5 \\u20ac"}'}, "header 'X-Price': '\u20ac' cannot be sent"),
        ({"http.x.timeout": "0"}, "'0' is out of range"),
        # each passed, then every request failed (UnicodeEncodeError, ValueError, refused), retried
        (
            {"http.x.url": "http://127.0.0.1:18777/caf\u00e9"},
            "'\u00e9' cannot be sent: percent-encode it (%C3%A9)",
        ),
        ({"http.x.url": "http://[::1/x"}, "Invalid IPv6 URL"),
        ({"http.x.url": "http://127.0.0.1:99999/"}, "the port is not a number from 1 to 65535"),
        ({"http.x.url": "http://127.0.0.1:0/"}, "the port is not a number from 1 to 65535"),
        ({"http.x.url": "http://127.0.0.1:x/"}, "the port is not a number from 1 to 65535"),
    ],
)
def test_bad_definitions_are_configuration_errors(
    tmp_path: Path, lines: dict[str, str], message: str
) -> None:
    (tmp_path / "spoolpipe.properties").write_text(prop_lines(lines))
    with pytest.raises(config.ConfigError) as caught:
        config.load(tmp_path)
    assert any(message in error for error in caught.value.errors), caught.value.errors


def test_definitions_load_with_their_defaults(tmp_path: Path) -> None:
    (tmp_path / "spoolpipe.properties").write_text(
        prop_lines(
            {
                "command.backup.argv": '["/usr/bin/rsync", "-a", "--", "{source}", "/backup/"]',
                "command.backup.cwd": "data",
                "http.alerts.url": "https://chat.example.com/hooks/ops",
                "http.alerts.headers": '{"Authorization": "Bearer 123"}',
                "files.roots": "shared, /srv/other",
            }
        )
    )
    settings = config.load(tmp_path).settings
    backup = settings.commands["backup"]
    assert backup.argv == ("/usr/bin/rsync", "-a", "--", "{source}", "/backup/")
    assert backup.cwd == tmp_path / "data"
    assert (backup.timeout, backup.env) == (None, ("PATH",))
    assert (backup.ok_exit_codes, backup.retry_exit_codes) == (frozenset({0}), frozenset())
    alerts = settings.http_endpoints["alerts"]
    assert (alerts.method, alerts.timeout, alerts.headers) == (
        "POST",
        30.0,
        (("Authorization", "Bearer 123"),),
    )
    assert settings.files_roots == (tmp_path / "shared", Path("/srv/other"))


def test_what_exit_codes_and_statuses_mean() -> None:
    command = specs.build_command("x", ("/bin/true",), ok_exit_codes=(0, 24), retry_exit_codes=(75,))
    assert [command.verdict(code) for code in (0, 24, 75, 1, 2, -9)] == [
        "done",
        "done",
        "retry",
        "fatal",
        "fatal",
        "retry",
    ]
    verdicts = {
        status: specs.Endpoint.verdict(status) for status in (200, 204, 301, 400, 404, 408, 429, 500, 503)
    }
    assert verdicts == {
        200: "done",
        204: "done",
        301: "fatal",
        400: "fatal",
        404: "fatal",
        408: "retry",
        429: "retry",
        500: "retry",
        503: "retry",
    }
    # The command's own limit always ends before the pool process is killed for the activity's timeout.
    assert command.deadline(300) == 299
    assert specs.build_command("x", ("/bin/true",), timeout=5).deadline(300) == 5
    assert specs.build_command("x", ("/bin/true",), timeout=500).deadline(300) == 299


def test_the_request_body_is_the_data_without_its_endpoint() -> None:
    body = specs.request_body({"endpoint": "alerts", "text": "disk full ✓", "n": 1})
    assert json.loads(body) == {"text": "disk full ✓", "n": 1}


# --------------------------------------------------------------------------- command, real workers


def command_repo(tmp_path: Path, commands: dict[str, list[str]], extra: str = "") -> Path:
    lines = {f"command.{name}.argv": json.dumps(argv) for name, argv in commands.items()}
    return make_repository(tmp_path, prop_lines(lines) + textwrap.dedent(extra))


def test_a_command_runs_and_its_result_records_exit_code_duration_and_output(tmp_path: Path) -> None:
    repo = command_repo(tmp_path, {"hello": ["/bin/echo", "hello", "{name}"]})
    activity = submit(repo, "command", {"command": "hello", "name": "world"})
    run_until_idle(repo)
    result = done(repo)[activity]["result"]
    assert result["command"] == "hello"
    assert result["exit_code"] == 0
    assert result["output_tail"] == "hello world\n"
    assert result["output_bytes"] == len("hello world\n")
    assert 0 <= result["duration_seconds"] < 60
    log = attempt_log(repo, activity)
    assert "hello world" in log and "exit code 0" in log


def test_injections_through_data_values_stay_single_literal_arguments(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    repo = command_repo(
        tmp_path,
        {"dump": [PY, "-c", ARGV_DUMP, "{a}", "--out={a}", "{b}", "{c}", "{d}", "{e}", "{f}"]},
        f"command.dump.cwd = {work}\n",
    )
    values = {
        "a": "x; rm -rf {work} ; touch semicolon",
        "b": "$(touch dollar)",
        "c": "`touch backtick`",
        "d": "line one\nline two && touch newline",
        "e": "-rf",
        "f": "--help",
    }
    ok = submit(repo, "command", {"command": "dump", **values})
    nul = submit(repo, "command", {"command": "dump", **values, "c": "before\0after"})
    run_until_idle(repo)
    received = json.loads(done(repo)[ok]["result"]["output_tail"])
    assert received == [
        values["a"],
        "--out=" + values["a"],
        values["b"],
        values["c"],
        values["d"],
        "-rf",
        "--help",
    ]
    assert sorted(os.listdir(work)) == []  # nothing was run by a shell
    assert "argv[6] {c} (data field 'c'): the value contains a NUL character" in reason(repo, nul)
    assert failed(repo)[nul]["spoolpipe"]["attempts"] == 1


def test_a_command_gets_only_the_environment_variables_allowed(tmp_path: Path) -> None:
    script = "import json, os; print(json.dumps(sorted(os.environ)))"
    repo = command_repo(
        tmp_path, {"env": [PY, "-c", script]}, "command.env.env = PATH, SPOOLPIPE_T_ALLOWED\n"
    )
    activity = submit(repo, "command", {"command": "env", "SPOOLPIPE_T_SECRET": "data cannot set it"})
    proc = start_worker(
        repo, "w1", "--until-idle", env={"SPOOLPIPE_T_ALLOWED": "yes", "SPOOLPIPE_T_SECRET": "no"}
    )
    try:
        assert proc.wait(120) == 0
    finally:
        kill_group(proc)
    names = set(json.loads(done(repo)[activity]["result"]["output_tail"]))
    assert {"PATH", "SPOOLPIPE_T_ALLOWED"} <= names
    assert "SPOOLPIPE_T_SECRET" not in names
    assert names <= {"PATH", "SPOOLPIPE_T_ALLOWED", "LC_CTYPE"}  # LC_CTYPE: Python's own coercion


def test_an_unconfigured_or_missing_command_name_is_refused(tmp_path: Path) -> None:
    repo = command_repo(tmp_path, {"hello": ["/bin/echo", "hi"]})
    unknown = submit(repo, "command", {"command": "rm"})
    missing = submit(repo, "command", {"argv": ["/bin/sh", "-c", "touch pwned"]})
    not_text = submit(repo, "command", {"command": ["hello"]})
    run_until_idle(repo)
    assert "command 'rm' is not configured on worker w1 (no command.rm.argv in the properties)" in reason(
        repo, unknown
    )
    assert "data.command: expected the name of a command.<name>" in reason(repo, missing)
    assert "data.command: expected the name" in reason(repo, not_text)
    assert not (repo / "pwned").exists()
    assert all(failed(repo)[i]["spoolpipe"]["attempts"] == 1 for i in (unknown, missing, not_text))


def test_exit_codes_decide_done_retry_or_failed(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    script = f'if [ -e "{marker}" ]; then exit 24; else touch "{marker}"; exit 75; fi'
    repo = command_repo(
        tmp_path,
        {"flaky": ["/bin/sh", "-c", script], "broken": ["/bin/sh", "-c", "echo oops >&2; exit 3"]},
        "command.flaky.ok-exit-codes = 0, 24\ncommand.flaky.retry-exit-codes = 75\n",
    )
    flaky = submit(repo, "command", {"command": "flaky"})
    broken = submit(repo, "command", {"command": "broken"})
    absent = submit(repo, "command", {"command": "absent"})
    run_until_idle(repo)
    record = done(repo)[flaky]
    assert (record["result"]["exit_code"], record["spoolpipe"]["attempts"]) == (24, 2)
    assert "exited 75 (retried)" in attempt_log(repo, flaky, 1)
    assert failed(repo)[broken]["spoolpipe"]["attempts"] == 1
    assert "command 'broken' exited 3 (ok-exit-codes: 0); output ends: 'oops'" in reason(repo, broken)
    assert "command 'absent' is not configured" in reason(repo, absent)


def test_a_program_that_cannot_start_fails_with_a_clear_reason(tmp_path: Path) -> None:
    repo = command_repo(tmp_path, {"ghost": ["/nonexistent/tool", "x"]})
    activity = submit(repo, "command", {"command": "ghost"})
    run_until_idle(repo)
    assert "command 'ghost' cannot start '/nonexistent/tool'" in reason(repo, activity)
    assert failed(repo)[activity]["spoolpipe"]["attempts"] == 1


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_hanging_command_is_killed_at_its_timeout_with_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f'sleep 300 & echo $! >> "{pids}"; echo $$ >> "{pids}"; echo started; sleep 301'
    repo = command_repo(
        tmp_path,
        {"hang": ["/bin/sh", "-c", script]},
        "command.hang.timeout = 1s\nretry.max-attempts = 2\n",
    )
    activity = submit(repo, "command", {"command": "hang"})
    run_until_idle(repo)
    record = failed(repo)[activity]
    assert record["spoolpipe"]["attempts"] == 2  # a timeout is retried, like any timeout
    assert (
        "command 'hang' timed out after 1s and was killed; output ends: 'started'"
        in record["spoolpipe"]["reason"]
    )
    started = [int(line) for line in pids.read_text().split()]
    assert len(started) == 4  # a shell and its background sleep, twice
    wait_for(lambda: not any(_alive(pid) for pid in started), 30, "the command and its children to be gone")


def test_a_command_dies_with_a_worker_killed_by_kill_9(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    repo = command_repo(tmp_path, {"hang": ["/bin/sh", "-c", f'echo $$ > "{pid_file}"; exec sleep 300']})
    submit(repo, "command", {"command": "hang"})
    proc = start_worker(repo, "w1")
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", 60, "the command to start")
        pid = int(pid_file.read_text())
        assert _alive(pid)
    finally:
        kill_group(proc)
    wait_for(lambda: not _alive(pid), 30, "the command to die with its pool process")


@pytest.mark.parametrize("how", ["SIGTERM", "stop --now"])
def test_a_command_released_at_shutdown_is_killed_with_its_children(tmp_path: Path, how: str) -> None:
    """The grace period over, the pool process is killed: the command's whole session goes with it,
    or it would run on while the activity, back in the inbox, runs again elsewhere."""
    pids = tmp_path / "pids"
    script = f'sleep 300 & echo $! >> "{pids}"; echo $$ >> "{pids}"; sleep 301; echo finished'
    repo = command_repo(tmp_path, {"hang": ["/bin/sh", "-c", script]}, "shutdown.grace-seconds = 1\n")
    activity = submit(repo, "command", {"command": "hang"})
    proc = start_worker(repo, "w1")
    try:
        wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, 60, "the command to start")
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:
            stop = [PY, "-m", "spoolpipe", "stop", str(repo), "w1", "--now"]
            assert subprocess.run(stop, capture_output=True, timeout=60).returncode == 0
        assert proc.wait(60) == 0
    finally:
        kill_group(proc)
    assert os.listdir(repo / "inbox") == [f"{activity}~1.json"]
    started = [int(line) for line in pids.read_text().split()]
    wait_for(lambda: not any(_alive(pid) for pid in started), 30, "the command and its children to be gone")


def test_a_command_gets_the_default_signal_handling_back(tmp_path: Path) -> None:
    """The pool process ignores SIGTERM; the program must not inherit that."""
    repo = command_repo(
        tmp_path,
        {"term": ["/bin/sh", "-c", "kill -TERM $$; echo survived"]},
        "retry.max-attempts = 1\n",
    )
    activity = submit(repo, "command", {"command": "term"})
    run_until_idle(repo)
    assert "command 'term' was killed by signal 15" in reason(repo, activity)


def test_a_changed_definition_applies_to_the_next_activity_without_a_restart(tmp_path: Path) -> None:
    repo = command_repo(tmp_path, {"say": ["/bin/echo", "old", "{word}"]})
    first = submit(repo, "command", {"command": "say", "word": "one"})
    proc = start_worker(repo, "w1")
    try:
        wait_for(lambda: first in done(repo), 60, "the first command")
        with (repo / "spoolpipe.properties").open("a") as properties:
            properties.write(prop_lines({"command.say.argv": '["/bin/echo", "new", "{word}"]'}))
        wait_for(
            lambda: "configuration reloaded" in (tmp_path / "worker-w1.stderr").read_text(), 60, "a reload"
        )
        second = submit(repo, "command", {"command": "say", "word": "two"})
        wait_for(lambda: second in done(repo), 60, "the second command")
    finally:
        kill_group(proc)
    assert done(repo)[first]["result"]["output_tail"] == "old one\n"
    assert done(repo)[second]["result"]["output_tail"] == "new two\n"


def test_output_is_bounded_to_its_tail(tmp_path: Path) -> None:
    script = "import sys; sys.stdout.write('x' * 300000 + 'THE END')"
    repo = command_repo(tmp_path, {"loud": [PY, "-c", script]})
    activity = submit(repo, "command", {"command": "loud"})
    run_until_idle(repo)
    result = done(repo)[activity]["result"]
    assert result["output_bytes"] == 300007
    assert result["output_tail"].endswith("xTHE END") and len(result["output_tail"]) == 2000
    log = attempt_log(repo, activity)
    assert "output (last 65536 of 300007 bytes)" in log
    assert len(log) < 70000


# --------------------------------------------------------------------------- http.request, a real server


class Server:
    """A real HTTP server in a thread whose answers the test scripts, path by path."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: dict[str, list[tuple[int, dict[str, str], bytes]]] = {}
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                owner.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
                )
                queue = owner.answers.get(self.path, [])
                status, headers, content = (
                    queue.pop(0) if len(queue) > 1 else (queue or [(200, {}, b"ok")])[0]
                )
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_POST = do_GET = do_PUT = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    started = Server()
    yield started
    started.close()


def http_repo(tmp_path: Path, endpoints: dict[str, str], extra: str = "") -> Path:
    lines = {f"http.{name}.url": url for name, url in endpoints.items()}
    return make_repository(tmp_path, prop_lines(lines) + textwrap.dedent(extra))


def test_a_request_sends_the_data_as_json_and_records_the_answer(tmp_path: Path, server: Server) -> None:
    server.answers["/hook"] = [(201, {}, b'{"id": 42}')]
    repo = http_repo(
        tmp_path,
        {"hook": f"http://127.0.0.1:{server.port}/hook"},
        prop_lines({"http.hook.headers": '{"Authorization": "Bearer s3cret"}'}),
    )
    activity = submit(repo, "http.request", {"endpoint": "hook", "text": "héllo", "n": [1, 2]})
    run_until_idle(repo)
    result = done(repo)[activity]["result"]
    assert (result["endpoint"], result["status"], result["body"]) == ("hook", 201, '{"id": 42}')
    [sent] = server.requests
    assert sent["method"] == "POST"
    assert json.loads(sent["body"]) == {"text": "héllo", "n": [1, 2]}
    assert sent["headers"]["Content-Type"] == "application/json; charset=utf-8"
    assert sent["headers"]["Authorization"] == "Bearer s3cret"
    assert sent["headers"]["X-Spoolpipe-Activity"] == activity


def test_server_errors_and_refused_connections_are_retried_until_it_recovers(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on, yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    repo = http_repo(
        tmp_path,
        {"default": f"http://127.0.0.1:{port}/flaky"},
        "retry.max-attempts = 1000\nretry.backoff-max-seconds = 0.2\n",
    )
    activity = submit(repo, "http.request", {"note": "no endpoint field: the default one"})
    proc = start_worker(repo, "w1", "--until-idle")
    try:
        first = repo / "logs" / "activities" / f"{activity}~1.log"
        wait_for(
            lambda: first.exists() and "Connection refused" in first.read_text(), 60, "a refused attempt"
        )
        server = Server(port)
        server.answers["/flaky"] = [(500, {}, b"down"), (503, {}, b"still down"), (200, {}, b"back")]
        try:
            assert proc.wait(120) == 0
        finally:
            server.close()
    finally:
        kill_group(proc)
    record = done(repo)[activity]
    assert record["result"]["status"] == 200 and record["result"]["body"] == "back"
    assert [r["path"] for r in server.requests] == ["/flaky"] * 3
    attempts = record["spoolpipe"]["attempts"]
    logs = [attempt_log(repo, activity, n) for n in range(1, attempts)]
    assert any("answered 500 (retried): 'down'" in log for log in logs)
    assert any("answered 503 (retried): 'still down'" in log for log in logs)


def test_client_errors_and_redirects_fail_at_once(tmp_path: Path, server: Server) -> None:
    server.answers["/missing"] = [(404, {}, b"no such hook")]
    server.answers["/moved"] = [(302, {"Location": "http://elsewhere.example/"}, b"")]
    # A Location urllib cannot parse raised a ValueError before the redirect was refused: retried.
    server.answers["/garbled"] = [(302, {"Location": "http://[oops/x"}, b"")] * 3
    base = f"http://127.0.0.1:{server.port}"
    repo = http_repo(
        tmp_path, {"missing": f"{base}/missing", "moved": f"{base}/moved", "garbled": f"{base}/garbled"}
    )
    missing = submit(repo, "http.request", {"endpoint": "missing"})
    moved = submit(repo, "http.request", {"endpoint": "moved"})
    garbled = submit(repo, "http.request", {"endpoint": "garbled"})
    unknown = submit(repo, "http.request", {"endpoint": "http://evil.example/"})
    run_until_idle(repo)
    assert f"POST {base}/missing answered 404: 'no such hook'" in reason(repo, missing)
    assert "a redirect to 'http://elsewhere.example/', which is not followed" in reason(repo, moved)
    assert "endpoint 'http://evil.example/' is not configured on worker w1" in reason(repo, unknown)
    assert "a redirect to 'http://[oops/x', which is not followed" in reason(repo, garbled)
    assert all(failed(repo)[i]["spoolpipe"]["attempts"] == 1 for i in (missing, moved, unknown, garbled))
    assert sorted(r["path"] for r in server.requests) == ["/garbled", "/missing", "/moved"]


def test_a_failure_handler_notifies_through_http_request(tmp_path: Path, server: Server) -> None:
    repo = http_repo(
        tmp_path,
        {"default": f"http://127.0.0.1:{server.port}/alerts"},
        "failures.handler = http.request\n",
    )
    doomed = submit(repo, "t.fatal", {"invoice": 7})
    run_until_idle(repo)
    [sent] = server.requests
    body = json.loads(sent["body"])
    assert body["failed"]["id"] == doomed
    assert body["failed"]["reason"] == "this can never work"
    assert body["failed"]["data"] == {"invoice": 7}


# --------------------------------------------------------------------------- files.*, real folders


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    (root / "in" / "a.txt").write_text("alpha")
    (root / "in" / "b.txt").write_text("beta")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (root / "in" / "link.txt").symlink_to(outside / "secret.txt")
    (root / "in" / "linked-folder").symlink_to(outside, target_is_directory=True)
    return root


def files_repo(tmp_path: Path, root: Path, extra: str = "") -> Path:
    return make_repository(tmp_path, f"files.roots = {root}\n{extra}")


def test_copy_move_and_delete_inside_the_roots(tmp_path: Path, tree: Path) -> None:
    (tree / "in" / "d.txt").write_text("delta")
    repo = files_repo(tmp_path, tree)
    copied = submit(repo, "files.copy", {"source": "in/a.txt", "target": "out/deep/a-copy.txt"})
    moved = submit(repo, "files.move", {"source": str(tree / "in" / "b.txt"), "target": "out/b.txt"})
    deleted = submit(repo, "files.delete", {"path": "in/d.txt"})
    gone = submit(repo, "files.delete", {"path": "in/never-there.txt"})
    run_until_idle(repo)
    assert (tree / "out" / "deep" / "a-copy.txt").read_text() == "alpha"
    assert done(repo)[copied]["result"]["bytes"] == 5
    assert (tree / "out" / "b.txt").read_text() == "beta" and not (tree / "in" / "b.txt").exists()
    assert done(repo)[moved]["result"]["moved"] is True
    assert not (tree / "in" / "d.txt").exists() and done(repo)[deleted]["result"]["deleted"] is True
    assert (tree / "in" / "a.txt").read_text() == "alpha"
    assert done(repo)[gone]["result"] == {"path": str(tree / "in" / "never-there.txt"), "deleted": False}
    assert [n for n in os.listdir(tree / "out") if n.startswith(".")] == []  # no temporary file left


def test_existing_targets_are_never_replaced_unless_the_data_says_so(tmp_path: Path, tree: Path) -> None:
    (tree / "in" / "c.txt").write_text("gamma")
    repo = files_repo(tmp_path, tree)
    refused_copy = submit(repo, "files.copy", {"source": "in/a.txt", "target": "in/b.txt"})
    refused_move = submit(repo, "files.move", {"source": "in/a.txt", "target": "in/c.txt"})
    run_until_idle(repo)
    assert 'in/b.txt exists; set "replace": true in the data to replace it' in reason(repo, refused_copy)
    assert "in/c.txt exists" in reason(repo, refused_move)
    assert [(tree / "in" / n).read_text() for n in ("a.txt", "b.txt", "c.txt")] == ["alpha", "beta", "gamma"]
    replaced = submit(repo, "files.copy", {"source": "in/a.txt", "target": "in/b.txt", "replace": True})
    run_until_idle(repo)
    assert done(repo)[replaced]["result"]["bytes"] == 5 and (tree / "in" / "b.txt").read_text() == "alpha"


def test_a_retry_after_an_interrupted_copy_or_move_finds_the_work_done(tmp_path: Path, tree: Path) -> None:
    """What an attempt killed after its rename but before its commit left: the retry is done, not failed."""
    (tree / "out").mkdir()
    (tree / "out" / "a.txt").write_text("alpha")  # copied already
    (tree / "out" / "moved.txt").write_text("moved")  # in/moved.txt was moved already
    (tree / "out" / "other.txt").write_text("not alpha")
    repo = files_repo(tmp_path, tree)
    copied = submit(repo, "files.copy", {"source": "in/a.txt", "target": "out/a.txt"})
    moved = submit(repo, "files.move", {"source": "in/moved.txt", "target": "out/moved.txt"})
    clash = submit(repo, "files.copy", {"source": "in/a.txt", "target": "out/other.txt"})
    lost = submit(repo, "files.move", {"source": "in/lost.txt", "target": "out/lost.txt"})
    run_until_idle(repo)
    assert done(repo)[copied]["result"]["bytes"] == 5
    assert done(repo)[moved]["result"] == {
        "source": str(tree / "in" / "moved.txt"),
        "target": str(tree / "out" / "moved.txt"),
        "moved": False,
    }
    assert "out/other.txt exists" in reason(repo, clash)
    assert (tree / "out" / "other.txt").read_text() == "not alpha"
    assert "data.source: 'in/lost.txt' does not exist" in reason(repo, lost)


@pytest.mark.parametrize(
    ("type_", "data", "message"),
    [
        ("files.copy", {"source": "../outside/secret.txt", "target": "in/x"}, "'..' is not allowed"),
        (
            "files.copy",
            {"source": "in/link.txt", "target": "in/x"},
            "leads outside the file roots through a symbolic link",
        ),
        (
            "files.copy",
            {"source": "in/linked-folder/secret.txt", "target": "in/x"},
            "through a symbolic link",
        ),
        (
            "files.copy",
            {"source": "in/a.txt", "target": "in/linked-folder/stolen.txt"},
            "through a symbolic link",
        ),
        ("files.copy", {"source": "in/a.txt", "target": "in/../../outside/x"}, "'..' is not allowed"),
        ("files.move", {"source": "in/a.txt", "target": "/etc/spoolpipe-test"}, "is outside the file roots"),
        (
            "files.move",
            {"source": "in/link.txt", "target": "in/x"},
            "is a symbolic link; name the file itself",
        ),
        ("files.delete", {"path": "ABSOLUTE_SECRET"}, "is outside the file roots"),
        ("files.delete", {"path": "in/link.txt"}, "is a symbolic link"),
        ("files.delete", {"path": "in/linked-folder/secret.txt"}, "through a symbolic link"),
        ("files.delete", {"path": "../outside/gone.txt"}, "'..' is not allowed"),
        ("files.delete", {"path": "in/a\0.txt"}, "expected a path"),
        ("files.delete", {"path": ["in/a.txt"]}, "expected a path"),
        (
            "files.archive",
            {"folder": "in/linked-folder", "older_than": 0, "archive": "x.zip"},
            "through a symbolic link",
        ),
        (
            "files.archive",
            {"folder": "in", "older_than": 0, "archive": "/tmp/x.zip"},
            "is outside the file roots",
        ),
    ],
)
def test_paths_escaping_the_roots_are_refused(
    tmp_path: Path, tree: Path, type_: str, data: dict[str, Any], message: str
) -> None:
    secret = tmp_path / "outside" / "secret.txt"
    data = {k: str(secret) if v == "ABSOLUTE_SECRET" else v for k, v in data.items()}
    repo = files_repo(tmp_path, tree)
    activity = submit(repo, type_, data)
    run_until_idle(repo)
    assert message in reason(repo, activity)
    assert failed(repo)[activity]["spoolpipe"]["attempts"] == 1
    assert secret.read_text() == "secret" and sorted(os.listdir(tmp_path / "outside")) == ["secret.txt"]
    assert (tree / "in" / "a.txt").read_text() == "alpha"


@pytest.mark.parametrize("type_", ["files.delete", "files.copy"])
def test_a_path_outside_the_roots_is_refused_in_the_same_words_whether_it_exists_or_not(
    tmp_path: Path, tree: Path, type_: str
) -> None:
    """It said "does not exist" for a missing one: anyone who may write the inbox could tell which
    paths exist on the worker's machine from the failed records."""
    repo = files_repo(tmp_path, tree)
    key = "path" if type_ == "files.delete" else "source"
    ids = {}
    for which in ("secret.txt", "nothing-here.txt"):
        path = str(tmp_path / "outside" / which)
        ids[which] = submit(repo, type_, {key: path, **({} if key == "path" else {"target": "in/x"})})
    run_until_idle(repo)
    for which, activity in ids.items():
        path = str(tmp_path / "outside" / which)
        assert reason(repo, activity) == f"data.{key}: {path!r} is outside the file roots"
    assert (tmp_path / "outside" / "secret.txt").read_text() == "secret"


def test_files_without_roots_are_refused(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    activity = submit(repo, "files.delete", {"path": str(tmp_path / "procs" / "e2e_procs.py")})
    run_until_idle(repo)
    assert "no file roots configured: set files.roots" in reason(repo, activity)
    assert (tmp_path / "procs" / "e2e_procs.py").exists()


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_archive_puts_old_files_in_a_readable_archive_then_removes_them(
    tmp_path: Path, tree: Path, suffix: str
) -> None:
    old = time.time() - 3 * 86400
    for name in ("a.txt", "b.txt"):
        os.utime(tree / "in" / name, (old, old))
    (tree / "in" / "ancient.txt").write_text("old")
    os.utime(tree / "in" / "ancient.txt", (100000, 100000))  # 1970: before any time a zip can hold
    (tree / "in" / "fresh.txt").write_text("new")
    (tree / "in" / "sub").mkdir()
    repo = files_repo(tmp_path, tree)
    target = f"archive/in-2026{suffix}"
    activity = submit(repo, "files.archive", {"folder": "in", "older_than": "2d", "archive": target})
    run_until_idle(repo)
    result = done(repo)[activity]["result"]
    assert (result["files"], result["names"], result["bytes"]) == (3, ["a.txt", "ancient.txt", "b.txt"], 12)
    data = (tree / target).read_bytes()
    if suffix == ".zip":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            contents = {name: archive.read(name) for name in archive.namelist()}
    else:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            contents = {m.name: archive.extractfile(m).read() for m in archive if m.isfile()}  # type: ignore[union-attr]
    assert contents == {"a.txt": b"alpha", "ancient.txt": b"old", "b.txt": b"beta"}
    assert sorted(os.listdir(tree / "in")) == ["fresh.txt", "link.txt", "linked-folder", "sub"]
    assert (tmp_path / "outside" / "secret.txt").exists()  # a link is never archived nor removed


def test_archive_refuses_an_existing_archive_and_removes_nothing(tmp_path: Path, tree: Path) -> None:
    old = time.time() - 3600
    os.utime(tree / "in" / "a.txt", (old, old))
    (tree / "archive.zip").write_bytes(b"precious")
    repo = files_repo(tmp_path, tree)
    exists = submit(repo, "files.archive", {"folder": "in", "older_than": "30m", "archive": "archive.zip"})
    bad_age = submit(repo, "files.archive", {"folder": "in", "older_than": "soon", "archive": "new.zip"})
    bad_name = submit(repo, "files.archive", {"folder": "in", "older_than": 60, "archive": "new.rar"})
    nothing = submit(repo, "files.archive", {"folder": "in", "older_than": "7d", "archive": "empty.zip"})
    run_until_idle(repo)
    assert "archive.zip exists; archives are never replaced" in reason(repo, exists)
    assert "data.older_than: expected a duration" in reason(repo, bad_age)
    assert "must end in .zip, .tar.gz or .tgz" in reason(repo, bad_name)
    assert done(repo)[nothing]["result"]["files"] == 0 and not (tree / "empty.zip").exists()
    assert (tree / "archive.zip").read_bytes() == b"precious" and (tree / "in" / "a.txt").exists()
    assert not (tree / "new.zip").exists() and not (tree / "new.rar").exists()


def test_a_worker_that_runs_no_builtin_work_never_imports_what_they_need(tmp_path: Path) -> None:
    """The built-in types are registered in every pool process; what they work with loads only on use.

    Nor does reading the configuration import javaproperties' XML support
    (``xml``, and through it ``urllib.request``, ``email`` and ``ssl``).
    """
    repo = make_repository(tmp_path, "pool.size = 1\n")
    activity = submit(repo, "t.noop")
    proc = start_worker(repo, "w1", "--until-idle", env={"PYTHONPROFILEIMPORTTIME": "1"})
    try:
        assert proc.wait(120) == 0
    finally:
        kill_group(proc)
    output = (tmp_path / "worker-w1.stderr").read_text()
    assert activity in done(repo)
    for type_ in ("command", "files.archive", "files.copy", "files.delete", "files.move", "http.request"):
        assert f" {type_}," in output  # registered
    imported = {
        line.rsplit("|", 1)[1].strip() for line in output.splitlines() if line.startswith("import time:")
    }
    assert "spoolpipe.confine" in imported  # imported by spoolpipe.builtins.files
    unused = {"zipfile", "tarfile", "filecmp", "urllib.request", "http.client", "email", "ssl", "xml"}
    assert sorted(imported & unused) == []
    assert "spoolpipe.config._properties" in imported  # which loads javaproperties.reading


def _blocks(text: str, language: str) -> list[str]:
    return [block.split("```", 1)[0] for block in text.split(f"```{language}\n")[1:]]


@pytest.mark.parametrize("doc", ["docs/builtins.md", "README.md"])
def test_the_documented_examples_are_valid(tmp_path: Path, doc: str) -> None:
    """The docs' properties blocks load without a problem, and their built-in activities fit them."""
    text = (Path(__file__).resolve().parent.parent / doc).read_text()
    properties = [
        block
        for block in _blocks(text, "properties")
        if "argv" in block or "http." in block or "files." in block
    ]
    (tmp_path / "spoolpipe.properties").write_text("".join(properties))
    loaded = config.load(tmp_path)
    assert loaded.warnings == ()
    builtin = {"command", "http.request", "files.copy", "files.move", "files.delete", "files.archive"}
    examples = [json.loads(block) for block in _blocks(text, "json") if block.startswith('{"type"')]
    activities = [a for a in examples if a["type"] in builtin]
    assert activities
    for activity in activities:
        if activity["type"] == "command":
            command = loaded.settings.commands[activity["data"]["command"]]
            specs.fill(command.argv, activity["data"])  # the example's data fills its argv
        if activity["type"] == "http.request":
            assert activity["data"]["endpoint"] in loaded.settings.http_endpoints


def test_targets_that_are_symbolic_links_are_never_written_through(tmp_path: Path, tree: Path) -> None:
    (tree / "out").mkdir()
    (tree / "out" / "trap.txt").symlink_to(tmp_path / "outside" / "secret.txt")
    (tree / "out" / "dangling.txt").symlink_to(tmp_path / "outside" / "planted.txt")
    repo = files_repo(tmp_path, tree)
    through = submit(repo, "files.copy", {"source": "in/a.txt", "target": "out/trap.txt", "replace": True})
    dangling = submit(repo, "files.move", {"source": "in/b.txt", "target": "out/dangling.txt"})
    archive = submit(repo, "files.archive", {"folder": "in", "older_than": 0, "archive": "out/trap.txt"})
    run_until_idle(repo)
    for activity in (through, dangling, archive):
        assert "is a symbolic link" in reason(repo, activity)
    assert (tmp_path / "outside" / "secret.txt").read_text() == "secret"
    assert not (tmp_path / "outside" / "planted.txt").exists()
    assert (tree / "in" / "b.txt").read_text() == "beta"


def test_archive_keeps_files_whose_names_are_not_utf8_and_says_so(tmp_path: Path, tree: Path) -> None:
    latin1 = os.path.join(os.fsencode(tree / "in"), b"caf\xe9.txt")
    with open(latin1, "wb") as f:
        f.write(b"latin-1")
    old = time.time() - 3600
    for path in (latin1, os.fsencode(tree / "in" / "a.txt")):
        os.utime(path, (old, old))
    repo = files_repo(tmp_path, tree)
    activity = submit(repo, "files.archive", {"folder": "in", "older_than": "1m", "archive": "a.zip"})
    run_until_idle(repo)
    result = done(repo)[activity]["result"]
    assert (result["names"], result["kept"]) == (["a.txt"], ["caf\\xe9.txt"])
    assert os.path.exists(latin1) and not (tree / "in" / "a.txt").exists()
    with zipfile.ZipFile(tree / "a.zip") as archive:
        assert archive.namelist() == ["a.txt"]


@pytest.fixture
def other_file_system(tmp_path: Path) -> Iterator[Path]:
    """A folder on another file system than ``tmp_path`` (tmpfs at /dev/shm, on every Linux)."""
    folder = Path(tempfile.mkdtemp(prefix="spoolpipe-test-", dir="/dev/shm"))
    try:
        assert folder.stat().st_dev != tmp_path.stat().st_dev, "/dev/shm is on the same file system here"
        yield folder
    finally:
        shutil.rmtree(folder)


def test_a_move_across_file_systems_copies_then_removes(
    tmp_path: Path, tree: Path, other_file_system: Path
) -> None:
    (other_file_system / "taken.txt").write_text("taken")
    repo = files_repo(tmp_path, tree, f"files.roots = {tree}, {other_file_system}\n")
    moved = submit(
        repo, "files.move", {"source": "in/a.txt", "target": str(other_file_system / "x" / "a.txt")}
    )
    refused = submit(
        repo, "files.move", {"source": "in/b.txt", "target": str(other_file_system / "taken.txt")}
    )
    run_until_idle(repo)
    assert done(repo)[moved]["result"]["moved"] is True
    assert (other_file_system / "x" / "a.txt").read_text() == "alpha" and not (tree / "in" / "a.txt").exists()
    assert "taken.txt exists" in reason(repo, refused)
    assert (tree / "in" / "b.txt").read_text() == "beta" and (
        other_file_system / "taken.txt"
    ).read_text() == "taken"
    assert sorted(os.listdir(other_file_system / "x")) == ["a.txt"]  # no temporary file left


def test_a_get_sends_no_body_and_says_no_content_type(tmp_path: Path, server: Server) -> None:
    server.answers["/ping"] = [(200, {}, b"pong")]
    repo = http_repo(
        tmp_path,
        {"ping": f"http://127.0.0.1:{server.port}/ping"},
        prop_lines({"http.ping.method": "GET"}),
    )
    activity = submit(repo, "http.request", {"endpoint": "ping", "ignored": 1})
    run_until_idle(repo)
    assert done(repo)[activity]["result"]["body"] == "pong"
    [sent] = server.requests
    assert (sent["method"], sent["body"]) == ("GET", b"")
    assert "Content-Type" not in sent["headers"]


def _open_by(pid: int, path: Path) -> bool:
    """Whether ``pid`` or one of its children holds ``path`` open."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [pid, *map(int, children.read_text().split())] if children.exists() else [pid]
    for each in pids:
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{each}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) == str(path):
                        return True
    return False


def test_a_folder_swapped_for_a_link_during_a_copy_never_lets_it_write_outside(
    tmp_path: Path, tree: Path
) -> None:
    """The target folder is confined, then (while the copy compares the existing target with the
    source) replaced by a link to outside: the copy still lands in the folder that was checked."""
    size = 64 << 20
    with open(tree / "in" / "big.bin", "wb") as source:
        source.truncate(size)
    (tree / "out").mkdir()
    with open(tree / "out" / "big.bin", "wb") as existing:  # as large: compared to its last byte
        existing.seek(size - 1)
        existing.write(b"x")
    outside = tmp_path / "outside"
    repo = files_repo(tmp_path, tree, "retry.max-attempts = 1\n")
    for n in range(2):
        (tree / "out" / f"sub{n}").mkdir()
        shutil.copyfile(tree / "out" / "big.bin", tree / "out" / f"sub{n}" / "big.bin")
        submit(repo, "files.copy", {"source": "in/big.bin", "target": f"out/sub{n}/big.bin"})
    proc = start_worker(repo, "w1", "--until-idle")
    try:
        for n in range(2):
            target = tree / "out" / f"sub{n}" / "big.bin"
            deadline = time.monotonic() + 60
            while not _open_by(proc.pid, target):  # no pause: the comparison lasts milliseconds
                assert time.monotonic() < deadline, "the copy never compared the existing target"
            (tree / "out" / f"sub{n}").rename(tree / "out" / f"moved{n}")
            (tree / "out" / f"sub{n}").symlink_to(outside, target_is_directory=True)
        assert proc.wait(120) == 0
    finally:
        kill_group(proc)
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    for n in range(2):
        assert [name for name in os.listdir(tree / "out" / f"moved{n}") if name.startswith(".")] == []


def test_a_copy_or_archive_removes_what_its_killed_attempts_left(tmp_path: Path, tree: Path) -> None:
    """An attempt killed mid-copy (its timeout, a crash) leaves its temporary file: the next removes it."""
    (tree / "out").mkdir()
    copy_id, archive_id, other_id = (f"ACT{n}" for n in range(3))
    left = [tree / "out" / f".a.txt.{copy_id}.tmp", tree / "out" / f".old.zip.{archive_id}.tmp"]
    for path in left:
        path.write_bytes(b"half a file")
    others = tree / "out" / f".a.txt.{other_id}.tmp"  # another activity's: not this one's to remove
    others.write_bytes(b"in progress")
    repo = files_repo(tmp_path, tree)
    submit(repo, "files.copy", {"source": "in/a.txt", "target": "out/a.txt"}, id=copy_id)
    old = time.time() - 3600
    os.utime(tree / "in" / "b.txt", (old, old))
    submit(
        repo, "files.archive", {"folder": "in", "older_than": "1m", "archive": "out/old.zip"}, id=archive_id
    )
    run_until_idle(repo)
    assert set(done(repo)) == {copy_id, archive_id}
    assert sorted(os.listdir(tree / "out")) == sorted(["a.txt", "old.zip", others.name])
    assert "removed" in attempt_log(repo, copy_id) and left[0].name in attempt_log(repo, copy_id)


def test_a_move_across_file_systems_interrupted_after_its_copy_is_done_on_retry(
    tmp_path: Path, tree: Path, other_file_system: Path
) -> None:
    """What a move killed (or refused the source's removal) between its copy and the removal left."""
    (other_file_system / "a.txt").write_text("alpha")  # the copy was made; in/a.txt is still there
    repo = files_repo(tmp_path, tree, f"files.roots = {tree}, {other_file_system}\n")
    moved = submit(repo, "files.move", {"source": "in/a.txt", "target": str(other_file_system / "a.txt")})
    run_until_idle(repo)
    assert done(repo)[moved]["result"]["moved"] is True
    assert not (tree / "in" / "a.txt").exists() and (other_file_system / "a.txt").read_text() == "alpha"


def test_a_move_onto_another_name_of_the_same_file_removes_the_source_name(
    tmp_path: Path, tree: Path
) -> None:
    os.link(tree / "in" / "a.txt", tree / "in" / "hard.txt")
    os.link(tree / "in" / "b.txt", tree / "in" / "hard-b.txt")
    repo = files_repo(tmp_path, tree)
    replaced = submit(repo, "files.move", {"source": "in/a.txt", "target": "in/hard.txt", "replace": True})
    kept = submit(repo, "files.move", {"source": "in/b.txt", "target": "in/hard-b.txt"})
    run_until_idle(repo)
    assert done(repo)[replaced]["result"]["moved"] is True and done(repo)[kept]["result"]["moved"] is True
    assert not (tree / "in" / "a.txt").exists() and (tree / "in" / "hard.txt").read_text() == "alpha"
    assert not (tree / "in" / "b.txt").exists() and (tree / "in" / "hard-b.txt").read_text() == "beta"


def test_archive_lists_at_most_1000_kept_names_and_counts_them_all(tmp_path: Path, tree: Path) -> None:
    old = time.time() - 3600
    for n in range(1100):
        path = os.path.join(os.fsencode(tree / "in"), b"odd-\xff-%d" % n)
        with open(path, "wb"):
            pass
        os.utime(path, (old, old))
    os.utime(tree / "in" / "a.txt", (old, old))
    repo = files_repo(tmp_path, tree)
    activity = submit(repo, "files.archive", {"folder": "in", "older_than": "1m", "archive": "a.zip"})
    run_until_idle(repo)
    result = done(repo)[activity]["result"]
    assert (result["files"], result["names"], result["kept_files"]) == (1, ["a.txt"], 1100)
    assert len(result["kept"]) == 1000 and result["kept"][0] == "odd-\\xff-0"


def test_a_write_error_names_the_file(tmp_path: Path, tree: Path) -> None:
    """A full disk (here: a file-size limit, EFBIG) fails the copy with a reason naming its target."""
    (tree / "in" / "big.bin").write_bytes(b"x" * (3 << 20))
    repo = files_repo(tmp_path, tree, "retry.max-attempts = 1\n")
    activity = submit(repo, "files.copy", {"source": "in/big.bin", "target": "out/big.bin"})
    limit = f"import resource; resource.setrlimit(resource.RLIMIT_FSIZE, ({2 << 20}, {2 << 20}))"
    run = "import runpy; runpy.run_module('spoolpipe', run_name='__main__', alter_sys=True)"
    argv = [PY, "-c", f"{limit}; {run}", "worker", str(repo), "--worker-id", "w1", "--until-idle"]
    proc = subprocess.run(argv, timeout=120)
    assert proc.returncode == 0
    assert f"File too large: '{tree / 'out' / 'big.bin'}'" in reason(repo, activity)
    assert os.listdir(tree / "out") == []


def test_a_missing_root_fails_only_the_activities_that_name_it(tmp_path: Path, tree: Path) -> None:
    missing = tmp_path / "unmounted"
    repo = files_repo(tmp_path, tree, f"files.roots = {tree}, {missing}\n")
    copied = submit(repo, "files.copy", {"source": "in/a.txt", "target": "in/a-copy.txt"})
    refused = submit(repo, "files.copy", {"source": "in/a.txt", "target": str(missing / "a.txt")})
    run_until_idle(repo)
    assert (tree / "in" / "a-copy.txt").read_text() == "alpha" and copied in done(repo)
    assert f"data.target: file root {missing} does not exist" in reason(repo, refused)


class Trickle:
    """A raw HTTP server whose one answer is ``head`` at once, then ``tail`` a byte every 0.3 s."""

    def __init__(self, head: bytes, tail: bytes) -> None:
        self.requests = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.head, self.tail = head, tail
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            self.requests += 1
            conn.sendall(self.head)
            for byte in self.tail:
                time.sleep(0.3)
                conn.sendall(bytes([byte]))


@pytest.mark.parametrize(
    ("head", "tail", "outcome"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\nstart", b"x" * 35, "done"),
        (b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"y" * 40 + b"\r\n\r\n", "failed"),
    ],
)
def test_the_endpoint_timeout_bounds_the_whole_request(
    tmp_path: Path, head: bytes, tail: bytes, outcome: str
) -> None:
    """A server that answers a byte at a time within each read's timeout: the answer's status known
    (2xx), the request is done with what came; before it, the attempt ends at the timeout, retried."""
    slow = Trickle(head, tail)
    repo = http_repo(
        tmp_path,
        {"slow": f"http://127.0.0.1:{slow.port}/"},
        "http.slow.timeout = 1s\ntimeout.http.request = 30\nretry.max-attempts = 1\n",
    )
    activity = submit(repo, "http.request", {"endpoint": "slow"})
    run_until_idle(repo)
    slow.listener.close()
    assert slow.requests == 1
    if outcome == "done":
        result = done(repo)[activity]["result"]
        assert (result["status"], result["body_complete"]) == (200, False)
        assert result["body"].startswith("start")
    else:
        expected = f"POST http://127.0.0.1:{slow.port}/: no answer within 1s (http.slow.timeout)"
        assert expected in reason(repo, activity)


def test_a_2xx_whose_body_cannot_be_read_in_full_is_done_not_sent_again(tmp_path: Path) -> None:
    broken = Trickle(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n", b"")
    repo = http_repo(tmp_path, {"hook": f"http://127.0.0.1:{broken.port}/"})
    activity = submit(repo, "http.request", {"endpoint": "hook"})
    run_until_idle(repo)
    broken.listener.close()
    assert broken.requests == 1
    result = done(repo)[activity]["result"]
    assert (result["status"], result["body"], result["body_complete"]) == (200, "hello", False)


@pytest.mark.parametrize(
    ("type_", "data", "precious"),
    [
        ("files.copy", {"source": "in/.report.c1.tmp", "target": "in/report"}, "in/.report.c1.tmp"),
        (
            "files.copy",
            {"source": "in/.a.txt.c1.tmp", "target": "in/a.txt", "replace": True},
            "in/.a.txt.c1.tmp",
        ),
        ("files.copy", {"source": "in/.fresh.c1.tmp", "target": "in/fresh"}, "in/.fresh.c1.tmp"),
        ("files.archive", {"folder": "in", "older_than": 0, "archive": "in/old.zip"}, "in/.old.zip.c1.tmp"),
    ],
)
def test_a_source_named_as_the_temporary_file_of_its_target_is_never_removed(
    tmp_path: Path, tree: Path, type_: str, data: dict[str, Any], precious: str
) -> None:
    """The temporary name is ``.NAME.ID.tmp``: a file of that name that is the source (or lies in the
    folder archived) is not a leftover of an earlier attempt, and is neither removed nor replaced."""
    (tree / precious).write_text("precious")
    (tree / "in" / "report").write_text("other")
    repo = files_repo(tmp_path, tree)
    submit(repo, type_, data, id="c1")
    run_until_idle(repo)
    assert (tree / precious).read_text() == "precious"
    assert f"{tree / precious} has the name of this activity's temporary file" in reason(repo, "c1")
    assert (tree / "in" / "report").read_text() == "other" and (tree / "in" / "a.txt").read_text() == "alpha"
    assert not (tree / "in" / "fresh").exists() and not (tree / "in" / "old.zip").exists()


def run_without_dac_override(repo: Path) -> None:
    """A worker (``--until-idle``) as root without the capabilities to pass over file permissions:
    as any other user, it gets only what the folders' modes allow it."""
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to drop capabilities"
    drop = "-dac_override,-dac_read_search"
    argv = [setpriv, f"--inh-caps={drop}", f"--bounding-set={drop}"]
    argv += [PY, "-m", "spoolpipe", "worker", str(repo), "--worker-id", "w1", "--until-idle"]
    assert subprocess.run(argv, timeout=120).returncode == 0


def test_folders_that_can_be_entered_but_not_listed_work_as_with_cp(tmp_path: Path, tree: Path) -> None:
    """A source folder of mode 0111 (enter only) and a drop box of 0333 (enter and write), not the
    worker's own: files are read from the one and written, moved and deleted in the other."""
    hidden, drop = tree / "in" / "xonly", tree / "out" / "drop"
    hidden.mkdir()
    drop.mkdir(parents=True)
    (hidden / "a.txt").write_text("alpha")
    (drop / "old.txt").write_text("old")
    for folder, mode in ((hidden, 0o111), (drop, 0o333)):
        os.chown(folder, 65534, 65534)
        folder.chmod(mode)
    repo = files_repo(tmp_path, tree, "retry.max-attempts = 1\n")
    copied = submit(repo, "files.copy", {"source": "in/xonly/a.txt", "target": "out/drop/a.txt"})
    moved = submit(repo, "files.move", {"source": "in/b.txt", "target": "out/drop/b.txt"})
    deleted = submit(repo, "files.delete", {"path": "out/drop/old.txt"})
    (tree / "old").mkdir()
    (tree / "old" / "c.txt").write_text("gamma")
    archived = submit(repo, "files.archive", {"folder": "old", "older_than": 0, "archive": "out/drop/c.zip"})
    run_without_dac_override(repo)
    assert set(done(repo)) == {copied, moved, deleted, archived}, failed(repo)
    assert sorted(os.listdir(drop)) == ["a.txt", "b.txt", "c.zip"]
    with zipfile.ZipFile(drop / "c.zip") as archive:
        assert archive.read("c.txt") == b"gamma"
    assert (drop / "a.txt").read_text() == "alpha" and (drop / "b.txt").read_text() == "beta"


def test_a_refusal_of_the_file_system_names_the_full_path(tmp_path: Path, tree: Path) -> None:
    """Every step runs relative to a folder descriptor: an error still names the whole path."""
    locked = tree / "locked"
    locked.mkdir()
    (locked / "f").write_text("f")
    os.chown(locked, 65534, 65534)
    locked.chmod(0o555)
    repo = files_repo(tmp_path, tree, "retry.max-attempts = 1\n")
    refusals = {
        submit(repo, "files.copy", {"source": "in/a.txt", "target": "locked/a.txt"}): f"'{locked / 'a.txt'}'",
        submit(
            repo, "files.copy", {"source": "in/a.txt", "target": "locked/new/a.txt"}
        ): f"'{locked / 'new'}'",
        submit(repo, "files.delete", {"path": "locked/f"}): f"'{locked / 'f'}'",
        submit(
            repo, "files.move", {"source": "locked/f", "target": "locked/h"}
        ): f"'{locked / 'f'}' -> '{locked / 'h'}'",
        submit(
            repo, "files.move", {"source": "locked/f", "target": "in/h"}
        ): f"'{locked / 'f'}' -> '{tree / 'in' / 'h'}'",
    }
    run_without_dac_override(repo)
    for activity, named in refusals.items():
        assert f"PermissionError: [Errno 13] Permission denied: {named}" in reason(repo, activity)
    assert os.listdir(locked) == ["f"] and not (tree / "in" / "h").exists()


TIMED_PROCESSOR = """
import dataclasses, signal
from spoolpipe.builtins import http

@processor("t.timed")
def timed(activity, ctx):
    ticks = []
    signal.signal(signal.SIGALRM, lambda signum, frame: ticks.append(signum))
    signal.setitimer(signal.ITIMER_REAL, 0.5, 0.5)
    http.request(dataclasses.replace(activity, type="http.request"), ctx)
    after = signal.getitimer(signal.ITIMER_REAL)
    ticks.clear()
    deadline = time.monotonic() + 10
    while len(ticks) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    signal.setitimer(signal.ITIMER_REAL, 0)
    return {"interval": after[1], "ticks_after": len(ticks)}
"""


def test_a_request_gives_back_the_timer_a_processor_had_set(tmp_path: Path, server: Server) -> None:
    """http.request bounds itself with SIGALRM in the pool process: a processor's own interval timer
    runs on after it, with the processor's handler."""
    lines = prop_lines({"http.default.url": f"http://127.0.0.1:{server.port}/"})
    repo = make_repository(tmp_path, lines, extra_processors=TIMED_PROCESSOR)
    activity = submit(repo, "t.timed")
    run_until_idle(repo)
    assert done(repo)[activity]["result"] == {"interval": 0.5, "ticks_after": 2}
    assert len(server.requests) == 1


def test_the_endpoint_timeout_bounds_a_name_lookup_that_gets_no_answer(tmp_path: Path) -> None:
    """A DNS server that never answers (glibc would wait 30 s, past the activity's own timeout of
    5 s): the request ends at http.<name>.timeout and is retried, the pool process not killed."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    address = f"127.{os.getpid() % 200 + 20}.{threading.get_ident() % 250 + 1}.53"
    silent.bind((address, 53))
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {address}\noptions timeout:10 attempts:3\n")
    repo = http_repo(
        tmp_path,
        {"slow": "http://nowhere.spoolpipe.test/"},
        "http.slow.timeout = 1s\ntimeout.http.request = 5\nretry.max-attempts = 1\n",
    )
    activity = submit(repo, "http.request", {"endpoint": "slow"})
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed to give the worker a resolv.conf of its own"
    mount = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    argv = [unshare, "--mount", "--", "sh", "-c", mount, str(resolv)]
    argv += [PY, "-m", "spoolpipe", "worker", str(repo), "--worker-id", "w1", "--until-idle"]
    try:
        assert subprocess.run(argv, timeout=120).returncode == 0
    finally:
        silent.close()
    expected = "POST http://nowhere.spoolpipe.test/: no answer within 1s (http.slow.timeout)"
    assert expected in reason(repo, activity)


def test_paths_through_a_root_configured_as_a_link_and_files_named_as_folders_are_refused(
    tmp_path: Path, tree: Path
) -> None:
    """The root's link is the operator's: a path through it that leaves by another link is said to
    leave through a link. A trailing / names a folder: a regular file so named is refused."""
    via = tmp_path / "via-link"
    via.symlink_to(tree, target_is_directory=True)
    repo = files_repo(tmp_path, via, "retry.max-attempts = 1\n")
    stolen = submit(
        repo, "files.copy", {"source": "in/a.txt", "target": str(via / "in" / "linked-folder" / "x")}
    )
    slashed = {
        submit(repo, type_, data): field
        for type_, data, field in [
            ("files.copy", {"source": "in/a.txt/", "target": "in/c.txt"}, "source"),
            ("files.move", {"source": "in/a.txt/", "target": "in/m.txt"}, "source"),
            ("files.delete", {"path": "in/b.txt/"}, "path"),
        ]
    }
    run_until_idle(repo)
    expected = f"data.target: {str(via / 'in' / 'linked-folder' / 'x')!r} leads outside the file roots"
    assert f"{expected} through a symbolic link" in reason(repo, stolen)
    for activity, field in slashed.items():
        assert f"data.{field}: 'in/{'b' if field == 'path' else 'a'}.txt/' is not a folder" in reason(
            repo, activity
        )
    assert sorted(os.listdir(tree / "in")) == ["a.txt", "b.txt", "link.txt", "linked-folder"]
    assert os.listdir(tmp_path / "outside") == ["secret.txt"]


def test_a_move_across_file_systems_whose_source_cannot_be_removed_leaves_no_copy(
    tmp_path: Path, tree: Path, other_file_system: Path
) -> None:
    """The copy is made, then the source's folder refuses its removal: the move fails, naming the
    source, and takes back the copy it made (one file, not two)."""
    locked = tree / "locked"
    locked.mkdir()
    (locked / "a.txt").write_text("alpha")
    os.chown(locked, 65534, 65534)
    locked.chmod(0o555)
    repo = files_repo(tmp_path, tree, f"files.roots = {tree}, {other_file_system}\nretry.max-attempts = 1\n")
    target = other_file_system / "a.txt"
    activity = submit(repo, "files.move", {"source": "locked/a.txt", "target": str(target)})
    run_without_dac_override(repo)
    assert f"Permission denied: '{locked / 'a.txt'}'" in reason(repo, activity)
    assert (locked / "a.txt").read_text() == "alpha"
    assert os.listdir(other_file_system) == []


def test_a_replacing_move_across_file_systems_whose_source_cannot_be_removed_keeps_the_old_target(
    tmp_path: Path, tree: Path, other_file_system: Path
) -> None:
    """With "replace": true the copy had taken the old target's place when the removal failed: the
    move failed and deleted its copy, and the file it was to replace was gone with it."""
    locked = tree / "locked"
    locked.mkdir()
    (locked / "a.txt").write_text("alpha")
    os.chown(locked, 65534, 65534)
    locked.chmod(0o555)
    target = other_file_system / "a.txt"
    target.write_text("the old target")
    other_file_system.chmod(0o777)
    repo = files_repo(tmp_path, tree, f"files.roots = {tree}, {other_file_system}\nretry.max-attempts = 1\n")
    activity = submit(repo, "files.move", {"source": "locked/a.txt", "target": str(target), "replace": True})
    run_without_dac_override(repo)
    assert f"Permission denied: '{locked / 'a.txt'}'" in reason(repo, activity)
    assert (locked / "a.txt").read_text() == "alpha"
    assert os.listdir(other_file_system) == ["a.txt"]  # nothing hidden left beside it
    assert target.read_text() == "the old target"


def test_a_replacing_move_killed_after_it_removed_the_source_leaves_nothing_hidden(
    tmp_path: Path, tree: Path, other_file_system: Path
) -> None:
    """Killed between the source's removal and dropping the kept old target: the retry drops it."""
    (tree / "in" / "a.txt").unlink()  # removed by the killed attempt, after its copy took the target's place
    (other_file_system / "a.txt").write_text("alpha")
    (other_file_system / ".a.txt.MOVE1.kept.tmp").write_text("the old target")
    repo = files_repo(tmp_path, tree, f"files.roots = {tree}, {other_file_system}\n")
    target = str(other_file_system / "a.txt")
    moved = submit(repo, "files.move", {"source": "in/a.txt", "target": target, "replace": True}, id="MOVE1")
    run_until_idle(repo)
    assert done(repo)[moved]["result"]["moved"] is False
    assert os.listdir(other_file_system) == ["a.txt"]


@pytest.mark.parametrize(
    ("answer", "status", "body", "complete"),
    [
        # cut before its Content-Length: read1 gave b"" as if it were the end (body_complete true)
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", 200, "abc", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", 200, "abc", True),
        # interim answers before the final one: a request that succeeded was failed as "answered 103"
        (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            200,
            "ok",
            True,
        ),
        (b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 201, "", True),
    ],
)
def test_what_a_2xx_answer_holds_however_it_arrives(
    tmp_path: Path, answer: bytes, status: int, body: str, complete: bool
) -> None:
    server = Trickle(answer, b"")
    repo = http_repo(tmp_path, {"hook": f"http://127.0.0.1:{server.port}/"}, "retry.max-attempts = 1\n")
    activity = submit(repo, "http.request", {"endpoint": "hook"})
    run_until_idle(repo)
    server.listener.close()
    result = done(repo)[activity]["result"]
    assert (result["status"], result["body"], result["body_complete"]) == (status, body, complete)


def test_a_status_past_599_is_fatal_not_retried(tmp_path: Path) -> None:
    server = Trickle(b"HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n", b"")
    repo = http_repo(tmp_path, {"hook": f"http://127.0.0.1:{server.port}/"}, "retry.max-attempts = 3\n")
    activity = submit(repo, "http.request", {"endpoint": "hook"})
    run_until_idle(repo)
    server.listener.close()
    assert server.requests == 1
    assert "answered 999" in reason(repo, activity)
