"""Metrics: real workers write metrics.file and serve metrics.port, read with the library's parser."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from harness import drop, kill_group, make_repository, run_until_idle, start_worker, submit, wait_for
from spoolpipe.config import ConfigError, load
from spoolpipe.metrics import OTHER_TYPE, TypeLabels, answer, request_head

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample, by name and labels, as prometheus_client's own parser reads the text."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, reply.getheader("Content-Type") or "", reply.read().decode()
    finally:
        conn.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0


def finished(found: Samples, type_: str, outcome: str) -> float | None:
    return value(found, "spoolpipe_activities_finished_total", worker="w1", type=type_, outcome=outcome)


def test_file_and_http_count_what_happened(tmp_path: Path) -> None:
    port = free_port()
    prom = tmp_path / "textfile" / "spoolpipe.prom"
    prom.parent.mkdir()
    repo = make_repository(tmp_path, f"metrics.file = {prom}\nmetrics.port = {port}\n")
    for _ in range(3):
        submit(repo, "t.noop")
    submit(repo, "t.fatal")
    submit(repo, "t.flaky", {"succeed_on": 2})  # one retry, then done
    submit(repo, "t.nobody.handles.this")  # stays queued; its type never becomes a label
    drop(repo, "junk.json", "{not json")
    before = time.time()
    proc = start_worker(repo, "w1")
    try:
        expected = {
            ("t.noop", "done"): 3,
            ("t.fatal", "failed"): 1,
            ("t.flaky", "retry"): 1,
            ("t.flaky", "done"): 1,
            ("spoolpipe.failure", "done"): 1,  # the report of the failed one
            ("t.fatal", "retry"): 0,
            ("t.noop", "failed"): 0,
        }

        def counted_over_http() -> bool:
            try:
                found = samples(scrape(port)[2])
            except ConnectionRefusedError:  # not listening yet
                return False
            return all(finished(found, t, o) == n for (t, o), n in expected.items()) and (
                value(found, "spoolpipe_invalid_files_total", worker="w1") == 1
            )

        wait_for(counted_over_http, 60, "the counters over HTTP")
        status, content_type, text = scrape(port)
        assert status == 200 and content_type.startswith("text/plain")
        over_http = samples(text)
        assert value(over_http, "spoolpipe_run_duration_seconds_count", worker="w1", type="t.noop") == 3
        assert value(over_http, "spoolpipe_run_duration_seconds_count", worker="w1", type="t.flaky") == 2
        assert value(over_http, "spoolpipe_claims_recovered_total", worker="w1") == 0
        assert value(over_http, "spoolpipe_worker_up", worker="w1") == 1
        started = value(over_http, "spoolpipe_worker_start_time_seconds", worker="w1")
        assert started is not None and before - 5 < started < time.time() + 5
        types = {dict(labels).get("type") for (_, labels) in over_http} - {None}
        assert "t.nobody.handles.this" not in types and OTHER_TYPE not in types

        def depths_in_file() -> bool:
            found = samples(prom.read_text()) if prom.exists() else {}
            depth = {
                state: value(found, "spoolpipe_queue_depth", worker="w1", state=state)
                for state in ("inbox", "running", "done", "failed", "invalid")
            }
            return depth == {"inbox": 1, "running": 0, "done": 5, "failed": 1, "invalid": 1}

        wait_for(depths_in_file, 30, "the queue depths in the file")
        in_file = samples(prom.read_text())
        assert all(finished(in_file, t, o) == n for (t, o), n in expected.items())
        assert value(in_file, "spoolpipe_invalid_files_total", worker="w1") == 1
        assert value(in_file, "spoolpipe_worker_up", worker="w1") == 1
        assert scrape(port, "/nothing")[0] == 404
    finally:
        stop(proc)
    # stopped: the file says so, and the port is closed
    assert value(samples(prom.read_text()), "spoolpipe_worker_up", worker="w1") == 0
    with pytest.raises(OSError):
        scrape(port)
    assert not [n for n in os.listdir(prom.parent) if n != prom.name]  # no temp file left


def test_recovered_claims_are_counted(tmp_path: Path) -> None:
    prom = tmp_path / "w1.prom"
    repo = make_repository(tmp_path, f"metrics.file = {prom}\n")
    aid = submit(repo, "t.stuck", {"unstick_on": 2})
    proc = start_worker(repo, "w1")
    wait_for(lambda: any(n.startswith(aid) for n in os.listdir(repo / "running")), 30, "the claim")
    kill_group(proc)  # kill -9: the claim stays behind
    run_until_idle(repo)  # the next run of w1 recovers it as attempt 2, which succeeds
    found = samples(prom.read_text())
    assert value(found, "spoolpipe_claims_recovered_total", worker="w1") == 1
    assert finished(found, "t.stuck", "done") == 1
    assert value(found, "spoolpipe_worker_up", worker="w1") == 0


def test_timeouts_are_counted(tmp_path: Path) -> None:
    prom = tmp_path / "w1.prom"
    repo = make_repository(tmp_path, f"metrics.file = {prom}\ntimeout.t.stuck = 0.5\n")
    submit(repo, "t.stuck", {"unstick_on": 2})  # attempt 1 hangs and is killed; attempt 2 is done
    run_until_idle(repo)
    found = samples(prom.read_text())
    assert value(found, "spoolpipe_timeouts_total", worker="w1", type="t.stuck") == 1
    assert finished(found, "t.stuck", "retry") == 1
    assert finished(found, "t.stuck", "done") == 1
    assert value(found, "spoolpipe_run_duration_seconds_count", worker="w1", type="t.stuck") == 1


def test_the_file_is_never_seen_half_written(tmp_path: Path) -> None:
    prom = tmp_path / "w1.prom"
    repo = make_repository(tmp_path, f"metrics.file = {prom}\nheartbeat.interval-seconds = 0.02\n")
    for _ in range(200):
        submit(repo, "t.noop")
    proc = start_worker(repo, "w1")
    try:
        wait_for(prom.exists, 30, "the metrics file")
        versions: set[float] = set()
        deadline = time.monotonic() + 60
        while len(versions) < 50 and time.monotonic() < deadline:
            text = prom.read_text()
            assert text.endswith("\n")
            found = samples(text)  # a torn file would fail to parse, or lack its last families
            beat = value(found, "spoolpipe_heartbeat_time_seconds", worker="w1")
            assert beat is not None and value(found, "spoolpipe_worker_up", worker="w1") == 1
            versions.add(beat)
        assert len(versions) >= 50, "the worker did not rewrite the file often enough to tell"
    finally:
        stop(proc)


def _listening_addresses(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of sockets listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):  # a kernel without IPv6
            continue
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                address, hex_port = fields[1].split(":")
                if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    found.append(address)
    return found


def test_metrics_are_served_on_loopback_unless_metrics_host_says_otherwise(tmp_path: Path) -> None:
    assert load(tmp_path).settings.metrics_host == "127.0.0.1"
    port = free_port()
    repo = make_repository(tmp_path, f"metrics.port = {port}\n")
    proc = start_worker(repo, "w1")
    try:
        wait_for(lambda: bool(_listening_addresses(port)), 30, "the metrics port")
        assert _listening_addresses(port) == ["0100007F"]  # 127.0.0.1 only
        # someone who connects and says nothing, or sends junk, does not hold up the next scrape
        silent = socket.create_connection(("127.0.0.1", port))
        junk = socket.create_connection(("127.0.0.1", port))
        junk.sendall(b"\x00\xff garbage\r\n\r\n")
        assert scrape(port)[0] == 200
        assert junk.recv(100).startswith(b"HTTP/1.1 400")
        silent.close()
        junk.close()
        # metrics.host on a hot reload: the port moves to every address
        with (repo / "spoolpipe.properties").open("a") as f:
            f.write("metrics.host = 0.0.0.0\n")
        wait_for(lambda: _listening_addresses(port) == ["00000000"], 30, "the port on 0.0.0.0")
        assert scrape(port)[0] == 200
    finally:
        stop(proc)


def test_metrics_can_be_switched_on_by_a_reload(tmp_path: Path) -> None:
    prom = tmp_path / "later.prom"
    repo = make_repository(tmp_path)
    proc = start_worker(repo, "w1")
    try:
        wait_for(lambda: (repo / "heartbeats" / "w1.json").exists(), 30, "the worker")
        submit(repo, "t.noop")
        wait_for(lambda: len(os.listdir(repo / "done")) == 1, 30, "the activity")
        with (repo / "spoolpipe.properties").open("a") as f:
            f.write(f"metrics.file = {prom}\n")
        wait_for(prom.exists, 30, "the metrics file")
        submit(repo, "t.noop")
        wait_for(lambda: finished(samples(prom.read_text()), "t.noop", "done") == 1, 30, "the count")
        # moved to another file: the old one says the worker no longer reports there
        moved = tmp_path / "moved.prom"
        properties = (repo / "spoolpipe.properties").read_text()
        (repo / "spoolpipe.properties").write_text(properties.replace(str(prom), str(moved)))
        wait_for(moved.exists, 30, "the new metrics file")
        assert value(samples(moved.read_text()), "spoolpipe_worker_up", worker="w1") == 1
        assert value(samples(prom.read_text()), "spoolpipe_worker_up", worker="w1") == 0
        # switched off: the last file says so too
        (repo / "spoolpipe.properties").write_text(properties.replace(f"metrics.file = {prom}", ""))
        wait_for(
            lambda: value(samples(moved.read_text()), "spoolpipe_worker_up", worker="w1") == 0,
            30,
            "metrics switched off",
        )
        # and on again: the counters go on from where they were (they start at 0 with the worker only)
        (repo / "spoolpipe.properties").write_text(properties.replace(str(prom), str(moved)))
        wait_for(
            lambda: value(samples(moved.read_text()), "spoolpipe_worker_up", worker="w1") == 1,
            30,
            "metrics switched on again",
        )
        submit(repo, "t.noop")
        wait_for(lambda: finished(samples(moved.read_text()), "t.noop", "done") == 2, 30, "the count")
    finally:
        stop(proc)


BAD = [
    ("metrics.file = /var/lib/node_exporter/spoolpipe.txt", "does not name a file ending in .prom"),
    ("metrics.file = /var/lib/node_exporter/.prom", "does not name a file ending in .prom"),
    ("metrics.file = /var/lib/node_exporter/", "does not name a file ending in .prom"),
    ("metrics.port = 70000", "'70000' is out of range; expected a TCP port from 1 to 65535"),
    ("metrics.port = -1", "'-1' is not a port number"),
    ("metrics.port = http", "'http' is not a port number"),
    ("metrics.port = \uff19\uff11\uff10\uff10", "is not a port number"),  # fullwidth digits
    ("metrics.host = my host", "'my host' is not an IP address or a host name"),
    ("metrics.host =", "'' is not an IP address or a host name"),
]


@pytest.mark.parametrize(("line", "message"), BAD)
def test_bad_metrics_keys_are_configuration_errors_with_file_and_line(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "spoolpipe.properties"
    path.write_text(f"# metrics\n\n{line}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    (error,) = info.value.errors
    assert error.startswith(f"{path}:3: {line.split(' =')[0]}: ") and message in error


def test_good_metrics_keys(tmp_path: Path) -> None:
    (tmp_path / "workers").mkdir()
    (tmp_path / "workers" / "w1.properties").write_text(
        "metrics.file = ../m/w1.prom\nmetrics.port = 9187\nmetrics.host = ::\n"
    )
    s = load(tmp_path, "w1").settings
    assert (s.metrics_file, s.metrics_port, s.metrics_host) == (tmp_path / "m" / "w1.prom", 9187, "::")
    (tmp_path / "spoolpipe.properties").write_text("metrics.port =\nmetrics.file =\n")
    s = load(tmp_path).settings
    assert (s.metrics_file, s.metrics_port) == (None, 0)


def test_a_worker_whose_metrics_cannot_be_reported_does_not_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        repo = make_repository(tmp_path, f"metrics.port = {port}\n")
        proc = start_worker(repo, "w1")
        assert proc.wait(60) == 3
    log = (tmp_path / "worker-w1.stderr").read_text()
    assert f"cannot serve metrics on 127.0.0.1 port {port}" in log
    (repo / "spoolpipe.properties").write_text(f"metrics.file = {tmp_path}/missing/w1.prom\n")
    proc = start_worker(repo, "w2")
    assert proc.wait(60) == 3
    assert (
        f"cannot write metrics.file {tmp_path}/missing/w1.prom" in (tmp_path / "worker-w2.stderr").read_text()
    )
    (repo / "spoolpipe.properties").write_text("metrics.port = 99999\n")
    proc = start_worker(repo, "w3")
    assert proc.wait(60) == 2  # an invalid configuration, not a start-up failure
    assert f"{repo / 'spoolpipe.properties'}:1: metrics.port" in (tmp_path / "worker-w3.stderr").read_text()


def test_a_metrics_file_that_cannot_be_replaced_leaves_no_temp_file_beside_it(tmp_path: Path) -> None:
    """A directory where the file should be: the worker cannot start, and leaves nothing in the folder."""
    folder = tmp_path / "textfiles"
    (folder / "w1.prom").mkdir(parents=True)
    repo = make_repository(tmp_path / "r", f"metrics.file = {folder}/w1.prom\n")
    proc = start_worker(repo, "w1")
    assert proc.wait(60) == 3
    assert f"cannot write metrics.file {folder}/w1.prom" in (tmp_path / "r" / "worker-w1.stderr").read_text()
    assert os.listdir(folder) == ["w1.prom"]


def _imports_of_a_worker_run(repo: Path) -> str:
    """What ``python -X importtime`` says a whole ``worker --until-idle`` run imported."""
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "spoolpipe", "worker", str(repo), "--until-idle"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    return run.stderr.decode()


def test_without_metrics_prometheus_client_is_never_imported(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "plain")
    submit(repo, "t.noop")
    assert "prometheus_client" not in _imports_of_a_worker_run(repo)
    assert len(os.listdir(repo / "done")) == 1
    repo = make_repository(tmp_path / "metrics", f"metrics.file = {tmp_path}/w.prom\n")
    submit(repo, "t.noop")
    assert "prometheus_client" in _imports_of_a_worker_run(repo)


# -- the pure parts, in-process --------------------------------------------------------------------


def test_type_labels_are_bounded() -> None:
    labels = TypeLabels(lambda t: t.startswith("known."), limit=2)
    assert labels("known.a") == "known.a"
    assert labels("unknown") == OTHER_TYPE
    assert labels("known.b") == "known.b"
    assert labels("known.c") == OTHER_TYPE  # over the cap
    assert labels("known.a") == "known.a"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x", "200 OK"),
        (b"GET /?x=1 HTTP/1.0", "200 OK"),
        (b"POST /metrics HTTP/1.1", "405 Method Not Allowed"),
        (b"GET /../../etc/passwd HTTP/1.1", "404 Not Found"),
        (b"GET /metrics", "400 Bad Request"),
        (b"\xff\xfe\x00", "400 Bad Request"),
        (b"", "400 Bad Request"),
    ],
)
def test_answers_to_any_request(request_bytes: bytes, status: str) -> None:
    assert answer(request_bytes, CollectorRegistry()).status == status


def test_head_and_openmetrics() -> None:
    registry = CollectorRegistry()
    head = answer(b"HEAD /metrics HTTP/1.1", registry)
    assert head.encode().endswith(b"\r\n\r\n")
    om = answer(b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0", registry)
    assert om.content_type.startswith("application/openmetrics-text") and om.body.endswith(b"# EOF\n")


def test_request_head_is_complete_only_at_the_blank_line() -> None:
    assert request_head(b"GET / HTTP/1.1\r\nHost: x\r\n") is None
    assert request_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b"GET / HTTP/1.1\r\nHost: x"
    assert request_head(b"GET / HTTP/1.0\n\n") == b"GET / HTTP/1.0"


def test_the_first_file_a_worker_writes_already_has_its_heartbeat_and_up(tmp_path: Path) -> None:
    """Read at once, before any heartbeat: a dashboard must never see a running worker without them."""
    prom = tmp_path / "w1.prom"
    slow_beats = "claims.lease-seconds = 120\nheartbeat.interval-seconds = 30\n"
    repo = make_repository(tmp_path, f"metrics.file = {prom}\n{slow_beats}")
    proc = start_worker(repo, "w1")
    try:
        deadline = time.monotonic() + 30
        while not prom.exists():  # no pause: the very first version written is the one read
            assert time.monotonic() < deadline and proc.poll() is None, "no metrics file"
        found = samples(prom.read_text())
        assert value(found, "spoolpipe_worker_up", worker="w1") == 1
        beat = value(found, "spoolpipe_heartbeat_time_seconds", worker="w1")
        assert beat is not None and abs(beat - time.time()) < 60
    finally:
        stop(proc)
