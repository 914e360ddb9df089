"""When ``--until-idle`` is done and what it says it waits for, decided in-process (no worker)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from spoolpipe.activity import format_time
from spoolpipe.idle import UntilIdle, Wait, verdict
from spoolpipe.intake import Delayed

NOW = 1_700_000_000.0
MONO = 500.0


def _never() -> Sequence[Delayed]:
    raise AssertionError("read the delayed activities although a circuit makes the worker wait")


def test_nothing_held_and_nothing_delayed_is_idle() -> None:
    assert verdict({}, list, no_wait=False, now=NOW, monotonic=MONO).idle


def test_it_waits_for_the_earliest_delayed_activity_and_says_when_it_is_due() -> None:
    delayed = [Delayed("late", "t.a", NOW + 90), Delayed("soon", "t.b", NOW + 12.3)]
    found = verdict({}, lambda: delayed, no_wait=False, now=NOW, monotonic=MONO)
    assert not found.idle
    assert found.wait == Wait(
        ("soon", NOW + 12.3),
        f"--until-idle: waiting for 2 delayed activities; the next, soon (t.b), is due at "
        f"{format_time(NOW + 12.3)} (in 12.3s)",
    )


def test_no_wait_leaves_delayed_activities_queued_and_says_how_many() -> None:
    delayed = [Delayed("soon", "t.b", NOW + 5)]
    found = verdict({}, lambda: delayed, no_wait=True, now=NOW, monotonic=MONO)
    assert found.idle and found.wait is None
    assert found.notes == ("1 delayed activity left queued (--until-idle --no-wait)",)


def test_an_open_circuit_is_waited_for_like_a_delayed_activity_the_earliest_probe_first() -> None:
    held = {"t.mail": MONO + 30, "t.http": MONO + 4}
    found = verdict(held, _never, no_wait=False, now=NOW, monotonic=MONO)
    assert not found.idle
    assert found.wait == Wait(
        ("t.http", MONO + 4), "--until-idle: waiting for the open circuit of t.http: a probe in 4.0s"
    )


def test_no_wait_leaves_what_circuits_hold_queued_and_still_looks_at_delayed_ones() -> None:
    held = {"t.mail": MONO + 30, "t.http": MONO + 4}
    found = verdict(held, lambda: [Delayed("x", "t.a", NOW + 1)], no_wait=True, now=NOW, monotonic=MONO)
    assert found.idle
    assert found.notes == (
        "activities of t.http, t.mail wait behind an open circuit: left queued (--until-idle --no-wait)",
        "1 delayed activity left queued (--until-idle --no-wait)",
    )


def test_what_it_waits_for_is_said_once_and_again_when_it_changes(caplog: pytest.LogCaptureFixture) -> None:
    until_idle = UntilIdle(no_wait=False)
    first = [Delayed("soon", "t.b", NOW + 5)]
    with caplog.at_level(logging.INFO, "spoolpipe.worker"):
        for turn in range(3):  # the loop turns many times while it waits: one line
            assert not until_idle.idle({}, lambda: first, NOW + turn, MONO + turn)
        assert not until_idle.idle({}, lambda: [Delayed("next", "t.b", NOW + 9)], NOW + 6, MONO + 6)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2
    assert said[0].startswith("--until-idle: waiting for 1 delayed activity; the next, soon (t.b)")
    assert said[1].startswith("--until-idle: waiting for 1 delayed activity; the next, next (t.b)")
