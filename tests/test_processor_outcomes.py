"""What a processor can say: Retry with its own delay, Skip, retry_on / retry.on.<type>, per-type retry
policy, per-processor settings (processor.<type>.<key>) and the one follow-up rule of both forms.

The pure parts (decide, exception matching, option parsing, the configuration keys, registration
checks) are tested in-process; everything else with real repositories and real worker processes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from harness import effects, ids_in, make_repository, records, run_until_idle, start_worker, submit, wait_for
from spoolpipe import Context, Fatal, Processor, config, processor
from spoolpipe.activity import parse_inbox_name
from spoolpipe.options import parse_option
from spoolpipe.outcome import Done, Failed, Outcome, Skipped, decide
from spoolpipe.outcome import Retry as RetryLater
from spoolpipe.retry import RetryPolicy, retried

# -- decide(): pure ------------------------------------------------------------------------------

POLICY = RetryPolicy(max_attempts=3, backoff_seconds=2.0, backoff_max_seconds=600.0, jitter=0.0)


def test_decide_done_and_skipped() -> None:
    assert decide(Outcome("ok", result=1), 1, POLICY) == Done()
    assert decide(Outcome("skipped", error="nothing new"), 1, POLICY) == Skipped()
    # a skip is never retried nor failed, even on the last attempt
    assert decide(Outcome("skipped"), 3, POLICY) == Skipped()


def test_decide_retry_uses_the_processors_delay_instead_of_the_policys() -> None:
    assert decide(Outcome("error", delay=45.0), 1, POLICY) == RetryLater(45.0)
    assert decide(Outcome("error", delay=0.0), 2, POLICY) == RetryLater(0.0)
    assert decide(Outcome("error"), 1, POLICY) == RetryLater(2.0)
    assert decide(Outcome("error"), 2, POLICY) == RetryLater(4.0)


def test_decide_an_explicit_retry_at_the_attempt_limit_fails() -> None:
    assert decide(Outcome("error", delay=5.0), 3, POLICY) == Failed()
    assert decide(Outcome("fatal", delay=5.0), 1, POLICY) == Failed()


# -- which exceptions are retried: pure ----------------------------------------------------------


class Transient(Exception):
    pass


class DiskHiccup(Transient):
    pass


TRANSIENT = f"{__name__}.Transient"


def test_a_name_matches_the_exception_class_and_its_bases() -> None:
    assert retried(FileNotFoundError(), ("OSError",), None)  # a base class, by its bare built-in name
    assert retried(FileNotFoundError(), ("builtins.OSError",), None)
    assert retried(DiskHiccup(), (TRANSIENT,), None)  # by module and qualified name, through the MRO
    assert not retried(ValueError(), ("OSError", TRANSIENT), None)
    assert not retried(DiskHiccup(), ("Transient",), None)  # a bare name is a built-in's only
    assert not retried(OSError(), ("FileNotFoundError",), None)  # a subclass name does not match a base


def test_names_from_the_properties_win_over_the_processors_classes() -> None:
    assert retried(KeyError(), ("KeyError",), (OSError,))
    assert not retried(OSError(), ("KeyError",), (OSError,))
    assert retried(ConnectionResetError(), None, (ConnectionError,))
    assert not retried(KeyError(), None, (ConnectionError,))
    assert retried(KeyError(), None, None)  # neither: every exception


# -- processor.<type>.<key> values: pure ---------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "kind", "value"),
    [
        (" 85 ", int, 85),
        ("-3", int, -3),
        ("0.5", float, 0.5),
        ("1e3", float, 1000.0),
        ("Yes", bool, True),
        ("off", bool, False),
        ("0", bool, False),
        (" as written ", str, " as written "),
        ("/srv/out", Path, Path("/srv/out")),
        ("1.10", Decimal, Decimal("1.10")),
    ],
)
def test_options_parse_as_the_kind_asked_for(raw: str, kind: Any, value: Any) -> None:
    parsed = parse_option(raw, kind)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(
    ("raw", "kind", "message"),
    [
        ("high", int, "'high' is not an integer"),
        ("8.5", int, "'8.5' is not an integer"),
        ("", int, "'' is not an integer"),
        ("fast", float, "'fast' is not a number"),
        ("nan", float, "'nan' is not a finite number"),
        ("1_0", float, "'1_0' is not a number"),  # float() takes these, the configuration's keys do not
        ("\u0663", float, "'\u0663' is not a number"),
        ("1" * 5000, int, f"'{'1' * 5000}' is out of range"),  # not int()'s advice on set_int_max_str_digits
        ("maybe", bool, "'maybe' is not a boolean; expected a boolean (true/false, yes/no, on/off or 1/0)"),
        ("1,5", Decimal, "'1,5' is not a valid Decimal"),
    ],
)
def test_an_option_that_does_not_parse_says_what_is_wrong(raw: str, kind: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_option(raw, kind)
    assert str(info.value).startswith(message)


# -- the configuration keys: pure (config.load reads files, writes nothing) ----------------------


def test_per_type_retry_keys_and_processor_settings_load(tmp_path: Path) -> None:
    (tmp_path / "spoolpipe.properties").write_text(
        "retry.max-attempts = 4\n"
        "retry.max-attempts.mail.send = 9\n"
        "retry.backoff-seconds.mail.send = 30\n"
        "retry.on.mail.send = OSError, smtplib.SMTPServerDisconnected\n"
        "retry.on.other =\n"
        "processor.image.resize.quality = 80\n"
        "processor.image.resize.out-dir = web\n"
        "custom.still = works\n"
    )
    (tmp_path / "workers").mkdir()
    (tmp_path / "workers" / "w1.properties").write_text("processor.image.resize.quality = 60\n")
    loaded = config.load(tmp_path, "w1")
    s = loaded.settings
    assert loaded.warnings == ()
    assert (s.max_attempts_for("mail.send"), s.max_attempts_for("x")) == (9, 4)
    assert (s.backoff_for("mail.send"), s.backoff_for("x")) == (30.0, 2.0)
    assert dict(s.retry_on) == {"mail.send": ("OSError", "smtplib.SMTPServerDisconnected")}
    assert dict(s.options_for("image.resize")) == {"quality": "60", "out-dir": "web"}
    assert dict(s.options_for("image")) == {}
    assert s.option_sources["processor.image.resize.quality"] == f"{tmp_path}/workers/w1.properties:1"
    assert dict(s.custom) == {"still": "works"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "processor.quality = 1",
            "processor.quality: '' is not a valid activity type name; expected processor.<type>.<key>",
        ),
        (
            "processor.image.resize. = 1",
            "processor.image.resize.: '' is not a valid setting name; expected processor.<type>.<key>",
        ),
        (
            "processor.-bad.k = 1",
            "processor.-bad.k: '-bad' is not a valid activity type name",
        ),
        (
            "processor.t.a\\ b = 1",
            "processor.t.a b: 'a b' is not a valid setting name",
        ),
        ("retry.on.t = 1oops", "retry.on.t: '1oops' is not a Python class name; expected comma-separated"),
        ("retry.on.bad/type = OSError", "retry.on.bad/type: 'bad/type' is not a valid activity type name"),
        (
            "retry.max-attempts.t = 0",
            "retry.max-attempts.t: '0' is out of range; expected an integer from 1 to 999999",
        ),
        ("retry.backoff-seconds.t = -1", "retry.backoff-seconds.t: '-1' is out of range"),
    ],
)
def test_bad_per_type_and_processor_keys_are_errors_with_file_and_line(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "spoolpipe.properties"
    path.write_text("# header\n" + line + "\n")
    with pytest.raises(config.ConfigError) as info:
        config.load(tmp_path)
    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith(f"{path}:2: {message}"), info.value.errors[0]


# -- registration: one follow-up rule, one check, in both forms (pure) ----------------------------


def test_a_bare_string_as_follow_ups_is_refused_in_both_forms() -> None:
    with pytest.raises(ValueError, match=r"follow_ups of .* must be a tuple of activity types"):
        processor("reg.decorated", follow_ups="t.noop")(lambda activity, ctx: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"follow_ups of .* must be a tuple of activity types"):

        class Mistyped(Processor):
            type = "reg.class"
            follow_ups = "t.noop"  # type: ignore[assignment]

    with pytest.raises(ValueError, match="'bad type' is not a valid activity type"):
        processor("reg.bad-name", follow_ups=("bad type",))(lambda activity, ctx: None)


def test_retry_on_must_name_exception_classes_in_both_forms() -> None:
    with pytest.raises(ValueError, match=r"retry_on of .* must be a tuple of exception classes"):
        processor("reg.retry-on", retry_on=("OSError",))(lambda activity, ctx: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"retry_on of .* must be a tuple of exception classes"):

        class NotAnException(Processor):
            type = "reg.retry-on-class"
            retry_on = (int,)  # type: ignore[assignment]


def test_a_types_timeout_setting_wins_over_its_processors_which_wins_over_timeout_seconds(
    tmp_path: Path,
) -> None:
    """One decision for the worker's kill, its heartbeat, the status view and the built-ins' own
    deadlines (the settings alone know nothing of a processor's ``timeout``)."""
    from spoolpipe.processor import timeout_for

    processor("reg.timed", timeout=30)(lambda activity, ctx: None)
    processor("reg.timed-overridden", timeout=30)(lambda activity, ctx: None)
    (tmp_path / "spoolpipe.properties").write_text(
        "timeout.seconds = 60\ntimeout.reg.timed-overridden = 5\ntimeout.reg.untimed-overridden = 7\n"
    )
    settings = config.load(tmp_path).settings
    assert timeout_for(settings, "reg.timed") == 30
    assert timeout_for(settings, "reg.timed-overridden") == 5
    assert timeout_for(settings, "reg.untimed-overridden") == 7
    assert timeout_for(settings, "reg.nothing-declared") == 60


# -- end to end: real workers --------------------------------------------------------------------

PROCESSORS = """
from spoolpipe import Retry, Skip

class Transient(Exception):
    pass

class DiskHiccup(Transient):
    pass

_ERRORS = {"FileNotFoundError": FileNotFoundError, "ValueError": ValueError, "KeyError": KeyError,
           "ConnectionResetError": ConnectionResetError, "DiskHiccup": DiskHiccup}

@processor("o.later")
def later(activity, ctx):
    _effect(ctx, activity)
    if activity.attempt < activity.data.get("succeed_on", 99):
        raise Retry("the printer is busy", delay=activity.data.get("delay"))
    return "printed"

@processor("o.bad-delay")
def bad_delay(activity, ctx):
    raise Retry("soon", delay=activity.data.get("delay", -5))

@processor("o.skip", follow_ups=("t.noop",))
def skip(activity, ctx):
    ctx.follow_up("t.noop", {"never": "published"})
    raise Skip("nothing new since yesterday")

def _raise_on_first(ctx, activity):
    _effect(ctx, activity)
    if activity.attempt == 1:
        raise _ERRORS[activity.data["raise"]]("first attempt")
    return "second attempt"

@processor("o.configured")
def configured(activity, ctx):
    return _raise_on_first(ctx, activity)

@processor("o.declared", retry_on=(ConnectionError,))
def declared(activity, ctx):
    return _raise_on_first(ctx, activity)

class Declared(Processor):
    type = "o.declared-class"
    retry_on = (ConnectionError,)
    def process(self, activity, ctx):
        return _raise_on_first(ctx, activity)

@processor("o.options")
def options(activity, ctx):
    return {
        "quality": ctx.option("quality", int, 80),
        "sharp": ctx.option("sharp", bool, False),
        "ratio": ctx.option("ratio", float, 1.0),
        "label": ctx.option("label", str, "none"),
        "all": dict(ctx.options),
    }

@processor("o.declares", follow_ups=("t.noop",))
def declares(activity, ctx):
    ctx.follow_up(activity.data["type"], {})
    return "asked"

class Declares(Processor):
    type = "o.declares-class"
    follow_ups = ("t.noop",)
    def process(self, activity, ctx):
        ctx.follow_up(activity.data["type"], {})
        return "asked"

@processor("o.any")
def any_type(activity, ctx):
    ctx.follow_up("t.child", {"i": 0})
    return "asked"
"""


def _repository(tmp_path: Path, properties: str = "") -> Path:
    return make_repository(tmp_path, "pool.size = 1\n" + properties, extra_processors=PROCESSORS)


def _queued(repo: Path, activity_id: str) -> tuple[int, float | None]:
    """The attempt and not-before time (seconds) of the one inbox file of ``activity_id``."""
    names = [n for n in os.listdir(repo / "inbox") if n.startswith(activity_id)]
    assert len(names) == 1, names
    queued = parse_inbox_name(names[0])
    return queued.attempt, None if queued.not_before_ms is None else queued.not_before_ms / 1000


def _status(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spoolpipe", "status", str(repo), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _reason(repo: Path, activity_id: str) -> str:
    reason: str = records(repo / "failed")[activity_id]["spoolpipe"]["reason"]
    return reason


def test_retry_with_a_delay_requeues_the_activity_not_before_that_delay(tmp_path: Path) -> None:
    # The policy's backoff is 0.05 s (harness): an hour can only come from the processor.
    repo = _repository(tmp_path)
    aid = submit(repo, "o.later", {"delay": 3600})
    started = time.time()
    run_until_idle_no_wait(repo)
    attempt, not_before = _queued(repo, aid)
    assert attempt == 2, "a Retry counts as an attempt"
    assert not_before is not None and not_before >= started + 3590
    assert "retry" in (repo / "logs" / "workers" / "w1.log").read_text()
    assert "the printer is busy" in (repo / "logs" / "workers" / "w1.log").read_text()


def run_until_idle_no_wait(repo: Path) -> None:
    """One worker run that leaves delayed activities queued."""
    proc = start_worker(repo, "w1", "--until-idle", "--no-wait")
    assert proc.wait(120) == 0, (repo.parent / "worker-w1.stderr").read_text()


def test_retry_counts_attempts_and_fails_at_the_types_attempt_limit(tmp_path: Path) -> None:
    repo = _repository(tmp_path, "retry.max-attempts = 10\nretry.max-attempts.o.later = 3\n")
    aid = submit(repo, "o.later", {"delay": 0.01})
    succeeds = submit(repo, "o.later", {"delay": 0, "succeed_on": 2}, id="succeeds")
    run_until_idle(repo)
    failed = records(repo / "failed")
    assert list(failed) == [aid]
    assert failed[aid]["spoolpipe"]["attempts"] == 3
    assert failed[aid]["spoolpipe"]["reason"] == "the printer is busy"
    assert sorted(int(e[1]) for e in effects(repo, "o.later") if e[0] == aid) == [1, 2, 3]
    done = records(repo / "done")[succeeds]
    assert (done["result"], done["spoolpipe"]["attempts"]) == ("printed", 2)


def test_a_retry_delay_that_is_not_a_number_of_seconds_fails_the_activity(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    aid = submit(repo, "o.bad-delay")
    huge = submit(repo, "o.bad-delay", {"delay": 10**400})  # too large for a float: it crashed the process
    run_until_idle(repo)
    assert _reason(repo, aid).startswith("Retry delay -5 is not a number of seconds from 0 to")
    assert records(repo / "failed")[aid]["spoolpipe"]["attempts"] == 1
    assert _reason(repo, huge).startswith("Retry delay 1000000000")
    assert "is not a number of seconds from 0 to" in _reason(repo, huge)
    assert records(repo / "failed")[huge]["spoolpipe"]["attempts"] == 1


def test_skip_is_done_with_status_skipped_and_discards_follow_ups(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    aid = submit(repo, "o.skip")
    other = submit(repo, "t.noop")
    run_until_idle(repo)
    done = records(repo / "done")
    assert set(done) == {aid, other}, "the follow-up asked for before Skip must not be published"
    section = done[aid]["spoolpipe"]
    assert section["status"] == "skipped"
    assert section["reason"] == "nothing new since yesterday"
    assert section["follow_ups"] == []
    assert done[aid]["result"] is None
    assert done[other]["spoolpipe"]["status"] == "done"
    assert os.listdir(repo / "inbox") == [] and records(repo / "failed") == {}
    log = (repo / "logs" / "workers" / "w1.log").read_text()
    assert f"skipped {aid} (o.skip, attempt 1): nothing new since yesterday" in log
    status = _status(repo, "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["counts"]["done"] == 2
    assert report["done_by_status"] == {"done": 1, "skipped": 1}
    assert "done by status: done 1, skipped 1" in _status(repo).stdout


def test_retry_on_from_the_properties_retries_only_the_exceptions_named(tmp_path: Path) -> None:
    repo = _repository(tmp_path, "retry.on.o.configured = OSError, e2e_procs.Transient\n")
    by_base = submit(repo, "o.configured", {"raise": "FileNotFoundError"})
    by_qualified_base = submit(repo, "o.configured", {"raise": "DiskHiccup"})
    other = submit(repo, "o.configured", {"raise": "ValueError"})
    run_until_idle(repo)
    done = records(repo / "done")
    assert done[by_base]["spoolpipe"]["attempts"] == 2
    assert done[by_qualified_base]["spoolpipe"]["attempts"] == 2
    failed = records(repo / "failed")
    assert list(failed) == [other]
    assert failed[other]["spoolpipe"]["attempts"] == 1
    assert _reason(repo, other) == (
        "ValueError: first attempt (not retried: retry.on.o.configured = OSError, e2e_procs.Transient)"
    )


@pytest.mark.parametrize("type_", ["o.declared", "o.declared-class"])
def test_retry_on_of_the_processor_retries_only_its_exceptions(tmp_path: Path, type_: str) -> None:
    repo = _repository(tmp_path)
    retried_one = submit(repo, type_, {"raise": "ConnectionResetError"})
    fatal_one = submit(repo, type_, {"raise": "KeyError"})
    run_until_idle(repo)
    assert records(repo / "done")[retried_one]["spoolpipe"]["attempts"] == 2
    assert list(records(repo / "failed")) == [fatal_one]
    assert _reason(repo, fatal_one) == (
        "KeyError: 'first attempt' (not retried: the processor's retry_on is (ConnectionError))"
    )


def test_retry_on_from_the_properties_wins_over_the_processors(tmp_path: Path) -> None:
    repo = _repository(tmp_path, "retry.on.o.declared = KeyError\n")
    now_retried = submit(repo, "o.declared", {"raise": "KeyError"})
    now_fatal = submit(repo, "o.declared", {"raise": "ConnectionResetError"})
    run_until_idle(repo)
    assert records(repo / "done")[now_retried]["spoolpipe"]["attempts"] == 2
    assert list(records(repo / "failed")) == [now_fatal]


def test_per_type_max_attempts_and_backoff(tmp_path: Path) -> None:
    repo = _repository(
        tmp_path,
        "retry.max-attempts = 6\nretry.max-attempts.t.flaky = 2\n",
    )
    limited = submit(repo, "t.flaky", {"succeed_on": 4})
    unlimited = submit(repo, "o.configured", {"raise": "KeyError"})
    run_until_idle(repo)
    assert records(repo / "failed")[limited]["spoolpipe"]["attempts"] == 2
    assert records(repo / "done")[unlimited]["spoolpipe"]["attempts"] == 2
    # the per-type backoff replaces the 0.05 s of retry.backoff-seconds for that type only
    # (and is capped by retry.backoff-max-seconds, 600 s, like the global one)
    (repo / "spoolpipe.properties").write_text(
        (repo / "spoolpipe.properties").read_text() + "retry.backoff-seconds.t.flaky = 300\n"
    )
    slow_retry = submit(repo, "t.flaky", {"succeed_on": 2})
    quick_retry = submit(repo, "o.configured", {"raise": "KeyError"})
    started = time.time()
    run_until_idle_no_wait(repo)
    attempt, not_before = _queued(repo, slow_retry)
    assert attempt == 2
    assert not_before is not None and not_before >= started + 290
    attempt, not_before = _queued(repo, quick_retry)
    assert attempt == 2
    assert not_before is not None and not_before < started + 60


def test_processor_settings_reach_ctx_option_typed_with_defaults(tmp_path: Path) -> None:
    repo = _repository(
        tmp_path,
        "processor.o.options.quality = 95\nprocessor.o.options.sharp = yes\nprocessor.o.other.quality = 1\n",
    )
    (repo / "workers" / "w1.properties").write_text("processor.o.options.label = from w1\n")
    aid = submit(repo, "o.options")
    run_until_idle(repo)
    assert records(repo / "done")[aid]["result"] == {
        "quality": 95,
        "sharp": True,
        "ratio": 1.0,
        "label": "from w1",
        "all": {"quality": "95", "sharp": "yes", "label": "from w1"},
    }


def test_a_bad_option_value_fails_the_activity_with_key_and_file_line_not_the_worker(
    tmp_path: Path,
) -> None:
    repo = _repository(tmp_path)
    props = repo / "spoolpipe.properties"
    props.write_text(props.read_text() + "processor.o.options.quality = high\n")
    line = len(props.read_text().splitlines())
    bad = submit(repo, "o.options")
    after = submit(repo, "t.noop")
    run_until_idle(repo)
    assert _reason(repo, bad) == f"{props}:{line}: processor.o.options.quality: 'high' is not an integer"
    assert records(repo / "failed")[bad]["spoolpipe"]["attempts"] == 1
    assert after in records(repo / "done")


def test_a_hot_reloaded_option_changes_what_the_next_activity_sees(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    worker = start_worker(repo, "w1")
    stderr = repo.parent / "worker-w1.stderr"
    try:
        first = submit(repo, "o.options")
        wait_for(lambda: first in ids_in(repo / "done"), 30, "the first activity")
        props = repo / "spoolpipe.properties"
        props.write_text(props.read_text() + "processor.o.options.quality = 50\n")
        stamp = props.stat().st_mtime + 2
        os.utime(props, (stamp, stamp))
        wait_for(lambda: "configuration reloaded" in stderr.read_text(), 30, "the reload")
        second = submit(repo, "o.options")
        wait_for(lambda: second in ids_in(repo / "done"), 30, "the second activity")
        done = records(repo / "done")
        assert (done[first]["result"]["quality"], done[second]["result"]["quality"]) == (80, 50)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0


@pytest.mark.parametrize("type_", ["o.declares", "o.declares-class"])
def test_both_forms_refuse_a_follow_up_of_an_undeclared_type(tmp_path: Path, type_: str) -> None:
    repo = _repository(tmp_path)
    undeclared = submit(repo, type_, {"type": "t.child"})
    declared = submit(repo, type_, {"type": "t.noop"})
    anything = submit(repo, "o.any")
    run_until_idle(repo)
    assert list(records(repo / "failed")) == [undeclared]
    assert _reason(repo, undeclared) == (
        "follow-up type 't.child' is not declared by this processor (declared: t.noop)"
    )
    assert records(repo / "failed")[undeclared]["spoolpipe"]["attempts"] == 1
    done = records(repo / "done")
    assert len(done[declared]["spoolpipe"]["follow_ups"]) == 1
    assert len(done[anything]["spoolpipe"]["follow_ups"]) == 1, "no declaration: any type"
    assert {r["type"] for r in done.values()} >= {"t.noop", "t.child", "spoolpipe.failure"}


def test_a_worker_whose_processor_declares_follow_ups_as_a_string_does_not_start(tmp_path: Path) -> None:
    repo = make_repository(
        tmp_path,
        extra_processors='@processor("o.typo", follow_ups="t.noop")\ndef typo(activity, ctx): ...\n',
    )
    proc = start_worker(repo, "w1", "--until-idle")
    assert proc.wait(60) == 3
    stderr = (repo.parent / "worker-w1.stderr").read_text()
    assert (
        "follow_ups of e2e_procs.typo must be a tuple of activity types (or None: any), not 't.noop'"
        in stderr
    )


def test_an_attempt_log_on_a_full_disk_does_not_end_the_attempt(tmp_path: Path) -> None:
    """/dev/full refuses every write (ENOSPC), as a full disk does: the processor's output is lost,
    its outcome is not (closing the log raised in the pool process and killed it: every activity
    burnt its attempts while the disk was full)."""
    from spoolpipe.activity import Activity
    from spoolpipe.execute import execute

    @processor("o.prints-on-a-full-disk")
    def prints(activity: Any, ctx: Any) -> str:
        print("hello " * 1000)
        ctx.log.info("and a log line")
        return "printed"

    settings = config.load(tmp_path).settings
    outcome = execute(Activity("a", "o.prints-on-a-full-disk"), "/dev/full", "w1", tmp_path, settings)
    assert (outcome.status, outcome.result) == ("ok", "printed")


@pytest.mark.parametrize("data", [[1, 2], [], "text", 3])
def test_follow_up_data_that_is_not_an_object_is_the_processors_bug(tmp_path: Path, data: Any) -> None:
    """[1, 2] raised a TypeError (retried, five times); [] became {} without a word."""
    ctx = Context(logging.getLogger("test"), "w", tmp_path, config.load(tmp_path).settings)
    with pytest.raises(Fatal, match="follow-up data must be a JSON object"):
        ctx.follow_up("t.noop", data)
    assert ctx.follow_ups == []


@pytest.mark.parametrize(
    ("keys", "reason"),
    [
        (["2", None], "follow-up key '2' used twice, by follow-ups 1 and 2"),  # it blamed '2', given once
        ([None, "1"], "follow-up key '1' used twice, by follow-ups 1 and 2"),
        (["a", "b", "a"], "follow-up key 'a' used twice, by follow-ups 1 and 3"),
    ],
)
def test_a_key_used_twice_says_which_follow_ups_and_that_the_default_is_the_number(
    tmp_path: Path, keys: list[str | None], reason: str
) -> None:
    ctx = Context(logging.getLogger("test"), "w", tmp_path, config.load(tmp_path).settings)
    with pytest.raises(Fatal) as raised:
        for key in keys:
            ctx.follow_up("t.noop", {}, key=key)
    assert str(raised.value) == f"{reason} (one without key= has its number as its key)"
    assert len(ctx.follow_ups) == len(keys) - 1


@pytest.mark.parametrize("timeout", ["10", 0, -1, float("nan"), float("inf"), True, 10**400])
def test_a_processor_timeout_must_be_seconds_in_both_forms(timeout: Any) -> None:
    """ "10" or 10**400 crashed the worker at its first timeout check (exit 70, on every start);
    0, -1 or nan killed every attempt at once."""
    with pytest.raises(ValueError, match=r"timeout of .* must be a number of seconds > 0"):
        processor("reg.timeout", timeout=timeout)(lambda activity, ctx: None)
    given = timeout
    with pytest.raises(ValueError, match=r"timeout of .* must be a number of seconds > 0"):

        class BadTimeout(Processor):
            type = "reg.timeout-class"
            timeout = given
