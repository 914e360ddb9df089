"""Inotify arrivals, on a real directory: what arrives is heard at once, what leaves is not."""

from __future__ import annotations

import multiprocessing.connection
import os
from pathlib import Path

from spoolpipe.notify import Arrivals


def test_arrivals_are_heard_at_once_and_departures_not_at_all(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (tmp_path / "elsewhere").mkdir()
    arrivals = Arrivals(inbox)
    try:
        assert arrivals.read() == []
        (tmp_path / "a.json").write_text("{}")
        os.rename(tmp_path / "a.json", inbox / "a.json")  # an atomic publication
        # pollable: the daemon waits on it with its pool pipes, and it is ready without delay
        assert multiprocessing.connection.wait([arrivals], timeout=5) == [arrivals]
        assert arrivals.read() == ["a.json"]
        (inbox / "b.json").write_text("{}")  # written in place: created, then closed after writing
        (inbox / "dir").mkdir()
        assert arrivals.read() == ["b.json", "b.json", "dir"]
        os.rename(inbox / "a.json", tmp_path / "elsewhere" / "a.json")  # a claim
        os.unlink(inbox / "b.json")
        assert multiprocessing.connection.wait([arrivals], timeout=0.2) == []
        assert arrivals.read() == []
    finally:
        arrivals.close()


def test_a_watched_directory_that_goes_away_asks_for_a_rescan(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    arrivals = Arrivals(inbox)
    try:
        inbox.rmdir()
        assert arrivals.read() is None
    finally:
        arrivals.close()


def test_an_inbox_made_again_is_heard_again(tmp_path: Path) -> None:
    """The watch went with the deleted inbox and was never added again: the worker, told to
    rescan once, heard nothing for the rest of its life, and picked files up a scan interval late."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    arrivals = Arrivals(inbox)
    try:
        inbox.rmdir()
        assert arrivals.read() is None
        assert arrivals.read() == []  # nothing to watch yet: tried again at every read
        inbox.mkdir()  # as the worker's rescan makes it again
        assert arrivals.read() is None  # watched again, and a rescan: anything may be in it already
        assert arrivals.read() == []
        (inbox / "a.json").write_text("{}")
        assert multiprocessing.connection.wait([arrivals], timeout=5) == [arrivals]
        assert arrivals.read() == ["a.json", "a.json"]
    finally:
        arrivals.close()


def test_an_inbox_moved_away_and_replaced_is_the_one_heard(tmp_path: Path) -> None:
    """Renamed away, the old folder kept the watch: arrivals in the new inbox went unheard."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    arrivals = Arrivals(inbox)
    try:
        inbox.rename(tmp_path / "inbox.old")
        inbox.mkdir()
        assert arrivals.read() is None  # a rescan: the new folder may hold anything
        (tmp_path / "inbox.old" / "old.json").write_text("{}")
        (tmp_path / "a.json").write_text("{}")
        os.rename(tmp_path / "a.json", inbox / "a.json")
        assert multiprocessing.connection.wait([arrivals], timeout=5) == [arrivals]
        assert arrivals.read() == ["a.json"]
    finally:
        arrivals.close()
