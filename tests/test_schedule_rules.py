"""The pure core of schedules (ticks, catch-up, ids, state documents) and their configuration keys."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolpipe import config
from spoolpipe.activity import is_valid_name
from spoolpipe.schedule.rules import (
    CATCH_UP_CAP,
    ON_TIME_SECONDS,
    TICK_FIELD,
    Cron,
    Every,
    InvalidRule,
    Rule,
    due,
    parse_cron,
    parse_tick_id,
    tick_id,
    ticks_between,
)
from spoolpipe.schedule.state import State, parse_state


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# -- ticks ---------------------------------------------------------------------------------------


def test_every_ticks_are_multiples_of_the_period_since_the_epoch() -> None:
    every = Every(30)
    assert every.latest(utc("2026-12-01 12:00:29.9")) == utc("2026-12-01 12:00:00")
    assert every.latest(utc("2026-12-01 12:00:30")) == utc("2026-12-01 12:00:30")
    assert every.next(utc("2026-12-01 12:00:30")) == utc("2026-12-01 12:01:00")
    assert every.next(utc("2026-12-01 12:00:29.999")) == utc("2026-12-01 12:00:30")


@given(st.integers(1, 86400 * 3), st.floats(0, 4e9, allow_nan=False))
def test_every_latest_and_next_bracket_any_time(seconds: int, at: float) -> None:
    every = Every(seconds)
    latest, following = every.latest(at), every.next(at)
    assert latest is not None and latest <= at < following
    assert following - latest == seconds and latest % seconds == 0


def test_cron_is_evaluated_in_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        cron = parse_cron("0 3 * * *")
        assert cron.next(utc("2026-12-01 03:00:00")) == utc("2026-12-02 03:00:00")
        assert cron.latest(utc("2026-12-01 03:00:00")) == utc("2026-12-01 03:00:00")
        assert cron.latest(utc("2026-12-01 02:59:59")) == utc("2026-11-30 03:00:00")
        assert parse_cron("@midnight").next(utc("2026-12-01 12:00")) == utc("2026-12-02 00:00")
        assert parse_cron("@hourly").latest(utc("2026-12-01 12:34:56")) == utc("2026-12-01 12:00")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("61 * * * *", "not a valid cron expression"),
        ("* * * *", "has 4 fields; expected five"),
        ("0 0 3 * * *", "has 6 fields; expected five"),
        ("@reboot", "is not one of @hourly"),
        ("H * * * *", "R (random) and H (hashed) fields are not allowed"),
        ("R 3 * * *", "R (random) and H (hashed) fields are not allowed"),
        ("0 0 31 2 *", "never comes due"),
        ("", "has 0 fields"),
    ],
)
def test_bad_cron_expressions_are_refused_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(InvalidRule) as caught:
        parse_cron(text)
    assert why in str(caught.value)


def test_cron_month_and_day_names_are_fine() -> None:
    assert parse_cron("  30  8 * jan,dec mon-fri ").text == "30 8 * jan,dec mon-fri"
    assert parse_cron("@DAILY").text == "@daily"


def test_ticks_between_keeps_the_latest_and_says_when_it_cut() -> None:
    ticks, cut = ticks_between(Every(10), 100, 150, 100)
    assert ticks == [110, 120, 130, 140, 150] and not cut
    ticks, cut = ticks_between(Every(10), 100, 150, 2)
    assert ticks == [140, 150] and cut
    assert ticks_between(Every(10), 150, 150, 5) == ([], False)
    ticks, cut = ticks_between(
        parse_cron("*/15 * * * *"), utc("2026-12-01 11:59"), utc("2026-12-01 12:31"), 9
    )
    assert ticks == [utc("2026-12-01 12:00"), utc("2026-12-01 12:15"), utc("2026-12-01 12:30")]


# -- catch-up --------------------------------------------------------------------------------------


def rule(catch_up: str = "latest", seconds: int = 10) -> Rule:
    return Rule("pulse", Every(seconds), "t.noop", "{}", (), catch_up)  # type: ignore[arg-type]


def test_on_time_ticks_fire_in_every_mode() -> None:
    for mode in ("none", "latest", "all"):
        assert due(rule(mode), through=100, now=110.2, taken_up=50).ticks == (110,)


def test_catch_up_after_ticks_were_missed() -> None:
    # Dealt with up to 100; the worker took the rule up at 135 and looks at 135.5.
    assert due(rule("none"), 100, 135.5, 135).ticks == ()
    assert due(rule("latest"), 100, 135.5, 135).ticks == (130,)
    assert due(rule("all"), 100, 135.5, 135).ticks == (110, 120, 130)
    # Ticks after the worker took the rule up fire under none while on time: 140 came due while the
    # worker was held up (it looks at 151), 150 is on time.
    assert due(rule("none"), 100, 151, 135).ticks == (150,)


def test_catch_up_none_fires_no_tick_a_held_up_worker_missed() -> None:
    """A running worker held up (paused, busy) fired every tick it had missed under none, up to 100
    at once, where latest fires one."""
    assert due(rule("none", 1), 100, 110.5, 50).ticks == (110,)  # 101 to 109 missed, 110 on time
    late = due(rule("none", 3600), 0, 3600 + ON_TIME_SECONDS + 1, 0)
    assert (late.ticks, late.skipped) == ((), 3600)
    assert due(rule("none", 3600), 0, 3600 + ON_TIME_SECONDS - 1, 0).ticks == (3600,)


def test_catch_up_all_is_capped_and_says_so() -> None:
    result = due(rule("all", 1), 0, 1000, 1000)
    assert len(result.ticks) == CATCH_UP_CAP and result.cut
    assert result.ticks[-1] == 1000 and result.ticks[0] == 1000 - CATCH_UP_CAP + 1
    assert not due(rule("all", 1), 1000 - CATCH_UP_CAP, 1000, 1000).cut


def test_nothing_at_or_before_through_fires_again() -> None:
    for mode in ("none", "latest", "all"):
        assert due(rule(mode), through=110, now=119, taken_up=0).ticks == ()


# -- ids and activities ---------------------------------------------------------------------------------


def test_tick_ids_are_valid_activity_ids_and_round_trip() -> None:
    name = "n" * 64
    tick = utc("2026-12-01 03:00:00")
    activity_id = tick_id(name, tick)
    assert activity_id == f"schedule.{name}.20261201T030000Z"
    assert is_valid_name(activity_id)
    assert parse_tick_id(activity_id) == (name, tick)
    assert parse_tick_id("schedule.x.20261301T000000Z") is None  # month 13
    assert parse_tick_id("01M80FE64HTEC8XYP509KA1G1P") is None


def test_a_ticks_activity_carries_the_rule_data_and_the_tick_time() -> None:
    r = Rule("nightly", parse_cron("0 3 * * *"), "reports.nightly", '{"format":"pdf"}')
    doc = r.activity(utc("2026-12-01 03:00:00"))
    assert doc["id"] == "schedule.nightly.20261201T030000Z" and doc["type"] == "reports.nightly"
    assert doc["data"]["format"] == "pdf"
    assert datetime.fromisoformat(doc["data"][TICK_FIELD]).timestamp() == utc("2026-12-01 03:00:00")


def test_rules_are_hashable_and_compare_by_definition() -> None:
    assert hash(rule()) == hash(rule()) and rule() == rule()
    assert rule("all") != rule() and Cron("@daily") != Every(86400)


# -- state documents ------------------------------------------------------------------------------------


def test_state_round_trips_and_merges_forward() -> None:
    state = State("every 10s", 50.0, 120.0, 120.0, "schedule.pulse.19700101T000200Z")
    doc = state.to_json("pulse", "w1", 121.0)
    assert parse_state(json.dumps(doc).encode()) == state
    behind = State("every 10s", 50.0, 100.0, 100.0, "schedule.pulse.19700101T000140Z")
    assert behind.merged(state) == state
    assert state.merged(behind) == state


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"expression": 1}',
        b'{"expression": "every 1s", "defined_at": "yesterday", "through": 5}',
        b'{"expression": "every 1s", "defined_at": "2026-12-01T00:00:00", "through": "2026-12-01T00:00:00"}',
        b'{"expression": "every 1s", "defined_at": "2026-12-01T00:00:00Z", '
        b'"through": "2026-12-01T00:00:00Z", "last_id": "../../etc"}',
        b"[" * 100000,
    ],
)
def test_anything_else_is_not_a_state(raw: bytes) -> None:
    assert parse_state(raw) is None


# -- configuration keys ----------------------------------------------------------------------------------


def load(tmp_path: Path, text: str, worker: str = "") -> config.Settings:
    (tmp_path / "spoolpipe.properties").write_text(textwrap.dedent(text))
    if worker:
        (tmp_path / "workers").mkdir(exist_ok=True)
        (tmp_path / "workers" / "w1.properties").write_text(textwrap.dedent(worker))
    return config.load(tmp_path, "w1" if worker else None).settings


def errors(tmp_path: Path, text: str, worker: str = "") -> list[str]:
    with pytest.raises(config.ConfigError) as caught:
        load(tmp_path, text, worker)
    return caught.value.errors


def test_schedule_keys_make_rules(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """\
        schedule.nightly.cron = 0 3 * * *
        schedule.nightly.type = reports.nightly
        schedule.nightly.data = {"format": "pdf", "pages": [1, 2]}
        schedule.nightly.workers = nas, backup
        schedule.nightly.catch-up = ALL
        schedule.pulse.every = 15m
        schedule.pulse.type = t.pulse
        """,
    )
    nightly, pulse = settings.schedules["nightly"], settings.schedules["pulse"]
    assert nightly == Rule(
        "nightly",
        Cron("0 3 * * *"),
        "reports.nightly",
        '{"format":"pdf","pages":[1,2]}',
        ("nas", "backup"),
        "all",
    )
    assert pulse == Rule("pulse", Every(900), "t.pulse")
    assert pulse.fired_by("anyone") and nightly.fired_by("nas") and not nightly.fired_by("pi")


def test_every_problem_is_an_error_with_file_and_line(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        """\
        schedule.a.cron = 61 * * * *
        schedule.a.type = t.a
        schedule.b.every = 1s
        schedule.b.type = t.b
        schedule.b.data = {"x": }
        schedule.c.every = 1s
        schedule.c.tpye = t.c
        schedule.d.e.every = 1s
        schedule.f.every = 1s
        schedule.f.cron = @daily
        schedule.f.type = t.f
        schedule.g.type = t.g
        schedule.h.every = 1s
        schedule.i.every = 1.5s
        schedule.i.type = t.i
        schedule.j.every = 1s
        schedule.j.type = t.j
        schedule.j.data = {"scheduled_for": "mine"}
        schedule.k.every = 0s
        schedule.k.type = t.k
        schedule.l.every = 1s
        schedule.l.type = t.l
        schedule.l.workers = good, ../bad
        schedule.m.every = 367d
        schedule.m.type = t.m
        """,
    )
    path = tmp_path / "spoolpipe.properties"
    expected = {
        1: "schedule.a.cron: '61 * * * *' is not a valid cron expression",
        5: "schedule.b.data: malformed JSON",
        7: "schedule.c.tpye: unknown field 'tpye'; expected one of cron, every, type, data, workers, catch",
        8: "schedule.d.e.every: 'd.e' is not a valid name",
        10: "schedule.f.cron: schedule 'f' sets both cron (line 10) and every (line 9)",
        12: "schedule 'g' has neither schedule.g.cron nor schedule.g.every",
        13: "schedule 'h' has no schedule.h.type (required)",
        14: "schedule.i.every: '1.5s' is not a whole number of seconds; expected a duration of whole",
        18: "schedule.j.data: the key 'scheduled_for' is reserved",
        19: "schedule.k.every: '0s' is out of range",
        23: "schedule.l.workers: '../bad' is not a valid worker id",
        24: "schedule.m.every: '367d' is out of range; expected a duration (30s, 15m, 2h, 1d; a plain",
    }
    for line, text in expected.items():
        assert any(e.startswith(f"{path}:{line}: {text}") for e in found), (line, found)
    assert len(found) == len(expected), found  # a rule with a bad value gets no second error


@pytest.mark.parametrize("value", ["0", "-1", "1e12"])
def test_an_every_out_of_range_names_the_limit_the_docs_give(tmp_path: Path, value: str) -> None:
    """It said "at most 100 years", though every is at most 366d."""
    found = errors(tmp_path, f"schedule.k.every = {value}\nschedule.k.type = t.k\n")
    path = tmp_path / "spoolpipe.properties"
    assert len(found) == 1 and found[0].startswith(f"{path}:1: schedule.k.every: {value!r} is ")
    assert found[0].endswith(
        "; expected a duration (30s, 15m, 2h, 1d; a plain number is seconds) >= 1s, at most 366d"
    )


def test_the_key_table_gives_catch_up_its_default() -> None:
    """It said (none), though a rule without catch-up has latest."""
    assert "| `schedule.<name>.catch-up` | `latest` |" in config.describe_keys()


def test_schedules_are_read_only_from_the_shared_file(tmp_path: Path) -> None:
    found = errors(tmp_path, "", worker="schedule.p.every = 1s\n")
    assert found == [
        f"{tmp_path / 'workers' / 'w1.properties'}:1: schedule.p.every: schedule.* keys are read only "
        "from REPO/spoolpipe.properties, so that every worker sees the same definitions; move it there"
    ]


def test_an_activity_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        f"""\
        limits.activity-bytes = 100
        schedule.big.every = 1s
        schedule.big.type = t.big
        schedule.big.data = {{"blob": "{"x" * 100}"}}
        """,
    )
    assert len(found) == 1 and found[0].startswith(
        f"{tmp_path / 'spoolpipe.properties'}:4: schedule.big.data:"
    )
    assert "over limits.activity-bytes=100" in found[0]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400), ("45", 45), ("1.5", 1.5), (" 2 H ", 7200)],
)
def test_durations(text: str, seconds: float) -> None:
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "-1s", "1w", "1e3", "nan", "inf", "1 s s", "\u0661s"])
def test_not_durations(text: str) -> None:
    with pytest.raises(ValueError):
        config.parse_duration(text)
