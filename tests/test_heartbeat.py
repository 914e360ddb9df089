"""The heartbeat document, built and written in-process, read back the way ``status`` reads it."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import pytest

from harness import make_repository
from spoolpipe import config, heartbeat
from spoolpipe.activity import format_time
from spoolpipe.control import Incarnation
from spoolpipe.repository import Repository
from spoolpipe.views.status import live_workers

STARTED = 1_700_000_000.0


def _document(running: list[heartbeat.Running], pool_size: int = 2) -> dict[str, object]:
    return heartbeat.document(
        worker_id="nas",
        host="nas.example",
        pid=4242,
        started=STARTED,
        lock_mode="flock",
        pool_size=pool_size,
        concurrency={"t.wide": 8, "t.narrow": 1},
        running=running,
        circuits={},
    )


def test_it_says_what_runs_sorted_with_start_times_by_the_shared_clock() -> None:
    later = heartbeat.Running("b-2", "t.wide", 3, STARTED + 60, 30.0)
    earlier = heartbeat.Running("a-1", "t.narrow", 1, STARTED + 5, 600.0)
    doc = _document([later, earlier])
    assert doc["running"] == ["a-1", "b-2"]
    assert doc["activities"] == [
        {
            "id": "a-1",
            "type": "t.narrow",
            "attempt": 1,
            "started_at": format_time(STARTED + 5),
            "timeout_seconds": 600.0,
        },
        {
            "id": "b-2",
            "type": "t.wide",
            "attempt": 3,
            "started_at": format_time(STARTED + 60),
            "timeout_seconds": 30.0,
        },
    ]
    assert doc["started_at"] == format_time(STARTED)
    # ...and a request file can name exactly this run of the worker.
    assert Incarnation.from_json(doc) == Incarnation("nas.example", 4242, format_time(STARTED))


def test_a_type_runs_at_most_as_often_at_once_as_the_running_pool_has_processes() -> None:
    assert _document([], pool_size=2)["types"] == {"t.narrow": 1, "t.wide": 2}
    assert _document([], pool_size=16)["types"] == {"t.narrow": 1, "t.wide": 8}


def test_status_reads_back_what_a_heartbeat_wrote(tmp_path: Path) -> None:
    root = make_repository(tmp_path)
    repo = Repository(root)
    running = heartbeat.Running("a-1", "t.narrow", 2, time.time() - 10, 600.0)
    heartbeat.write(repo, "nas", _document([running]))
    heartbeat.write(repo, "nas", _document([]))  # the next heartbeat replaces it
    settings = config.load(root, "nas").settings
    [seen] = live_workers(repo, settings, time.time())
    assert (seen["worker"], seen["host"], seen["pid"], seen["pool_size"]) == ("nas", "nas.example", 4242, 2)
    assert seen["running"] == [] and seen["activities"] == []
    assert sorted(p.name for p in repo.heartbeats.iterdir() if not p.name.startswith(".")) == ["nas.json"]
    assert not list(repo.tmp.glob("heartbeat-*"))


def test_a_heartbeat_that_cannot_be_written_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = Repository(make_repository(tmp_path))
    shutil.rmtree(repo.heartbeats)
    repo.heartbeats.write_text("in the way")  # e.g. the shared file system is gone for a moment
    with caplog.at_level(logging.WARNING, "spoolpipe.worker"):
        heartbeat.write(repo, "nas", _document([]))
    assert "cannot write heartbeat:" in caplog.text
    assert repo.heartbeats.read_text() == "in the way"
