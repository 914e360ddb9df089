from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import pytest

from spoolpipe import config
from spoolpipe.config import ConfigError, Settings, config_files, load
from spoolpipe.processor import timeout_for

REPO_ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def shared(repo: Path, text: str) -> Path:
    return write(repo / "spoolpipe.properties", text)


def worker(repo: Path, worker_id: str, text: str) -> Path:
    return write(repo / "workers" / f"{worker_id}.properties", text)


def errors_of(repo: Path, worker_id: str | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(repo, worker_id, cpu_count=4)
    return info.value.errors


# --------------------------------------------------------------------------
# Defaults
# --------------------------------------------------------------------------


def test_defaults_without_any_file(tmp_path: Path) -> None:
    loaded = load(tmp_path, "w1", cpu_count=4)
    s = loaded.settings
    assert loaded.warnings == ()
    assert s.sources == ()
    assert s.processors == ()
    assert s.processors_path == ()
    assert s.pool_size == 4
    assert s.concurrency_default == 0  # the pool size
    assert dict(s.concurrency) == {}
    assert s.timeout_seconds == 300.0
    assert dict(s.timeouts) == {}
    assert s.retry_max_attempts == 5
    assert s.retry_backoff_seconds == 2.0
    assert s.retry_backoff_max_seconds == 600.0
    assert s.retry_jitter == 0.25
    assert s.claims_lock == "auto"
    assert s.claims_lease_seconds == 30.0
    assert s.scan_interval_seconds == 2.0
    assert s.scan_watch is True
    assert s.inbox_settle_seconds == 5.0
    assert s.limits_activity_bytes == 1048576
    assert s.shutdown_grace_seconds == 30.0
    assert s.heartbeat_interval_seconds == 5.0
    assert s.failures_handler == "spoolpipe.failure"
    assert s.durability_fsync is True
    assert s.log_level == "INFO"
    assert s.images_roots == ()
    assert s.images_max_megapixels == 0.0
    assert dict(s.custom) == {}
    assert s.concurrency_for("anything") == 4
    assert timeout_for(s, "anything") == 300.0


def test_pool_size_zero_uses_cpus_of_this_machine(tmp_path: Path) -> None:
    s = load(tmp_path).settings
    assert s.pool_size >= 1
    assert s.concurrency_for("x") == s.pool_size


def test_schema_covers_every_settings_field() -> None:
    static = {o.key.replace(".", "_").replace("-", "_") for o in config.OPTIONS if o.default is not None}
    fields = {f.name for f in dataclasses.fields(Settings)}
    per_type = {"concurrency", "timeouts", "max_attempts", "backoffs", "retry_on"}
    processor_options = {"processor_options", "option_sources"}
    families = {"schedules", "circuits", "commands", "http_endpoints"}
    assert fields - static == per_type | processor_options | families | {"custom", "sources", "key_sources"}
    assert static <= fields


def test_every_schema_default_is_valid_and_used(tmp_path: Path) -> None:
    s = load(tmp_path, cpu_count=3).settings
    for opt in config.OPTIONS:
        assert opt.description.strip()
        if opt.default is None:
            assert opt.example
            continue
        value = opt.kind.parse(opt.default, tmp_path)
        name = opt.key.replace(".", "_").replace("-", "_")
        if opt.key in ("pool.size", "concurrency.default"):
            assert value == 0
        else:
            assert getattr(s, name) == value, opt.key


# --------------------------------------------------------------------------
# Bad values
# --------------------------------------------------------------------------

BAD_VALUES = [
    ("pool.size", "many", "'many' is not an integer; expected an integer from 0 to 1024"),
    ("pool.size", "-1", "'-1' is out of range; expected an integer from 0 to 1024"),
    ("pool.size", "2.5", "'2.5' is not an integer; expected an integer from 0 to 1024"),
    ("pool.size", "", "'' is not an integer; expected an integer from 0 to 1024"),
    # int() and float() take these too: a typo or a digit from another script, not a number.
    ("pool.size", "1_0", "'1_0' is not an integer; expected an integer from 0 to 1024"),
    ("pool.size", "\u0663", "'\u0663' is not an integer; expected an integer from 0 to 1024"),
    # A typo such as 10000 forked that many processes, each importing every processor module.
    ("pool.size", "1025", "'1025' is out of range; expected an integer from 0 to 1024"),
    (
        "timeout.seconds",
        "1_0",
        "'1_0' is not a number; expected a number > 0, at most 3153600000 (100 years)",
    ),
    ("retry.max-attempts", "0", "'0' is out of range; expected an integer from 1 to 999999"),
    ("limits.activity-bytes", "1", "'1' is out of range; expected an integer >= 2"),
    ("concurrency.default", "x", "'x' is not an integer; expected an integer >= 0"),
    ("concurrency.image.resize", "-2", "'-2' is out of range; expected an integer >= 0"),
    ("timeout.seconds", "0", "'0' is out of range; expected a number > 0, at most 3153600000 (100 years)"),
    (
        "timeout.seconds",
        "soon",
        "'soon' is not a number; expected a number > 0, at most 3153600000 (100 years)",
    ),
    (
        "timeout.seconds",
        "inf",
        "'inf' is not a finite number; expected a number > 0, at most 3153600000 (100 years)",
    ),
    (
        "timeout.seconds",
        "nan",
        "'nan' is not a finite number; expected a number > 0, at most 3153600000 (100 years)",
    ),
    ("timeout.image", "-1", "'-1' is out of range; expected a number > 0, at most 3153600000 (100 years)"),
    (
        "retry.backoff-seconds",
        "-0.5",
        "'-0.5' is out of range; expected a number >= 0, at most 3153600000 (100 years)",
    ),
    # A name counts attempts to 999,999: attempt 1,000,000 was read back as attempt 1, for ever.
    ("retry.max-attempts", "5000000", "'5000000' is out of range; expected an integer from 1 to 999999"),
    ("retry.max-attempts.t.x", "1000000", "'1000000' is out of range; expected an integer from 1 to 999999"),
    ("retry.jitter", "1.5", "'1.5' is out of range; expected a number between 0 and 1"),
    ("retry.jitter", "-0.1", "'-0.1' is out of range; expected a number between 0 and 1"),
    ("images.max-megapixels", "-3", "'-3' is out of range; expected a number >= 0"),
    # A retry that far ahead got a name no parser reads back: it ran again at once, as attempt 1.
    (
        "retry.backoff-seconds",
        "1e13",
        "'1e13' is out of range; expected a number >= 0, at most 3153600000 (100 years)",
    ),
    # filelock refuses a lease whose refresh interval exceeds threading.TIMEOUT_MAX: exit 70.
    (
        "claims.lease-seconds",
        "1e11",
        "'1e11' is out of range; expected a number > 0, at most 3153600000 (100 years)",
    ),
    (
        "scan.watch",
        "maybe",
        "'maybe' is not a boolean; expected a boolean (true/false, yes/no, on/off or 1/0)",
    ),
    (
        "claims.lock",
        "nfs",
        "'nfs' is not a valid choice; expected one of auto, flock, lease, strict",
    ),
    (
        "log.level",
        "verbose",
        "'verbose' is not a valid choice; expected one of DEBUG, INFO, WARNING, ERROR",
    ),
    (
        "failures.handler",
        "-oops",
        "'-oops' is not a valid activity type name; expected an activity type name "
        f"matching {config.TYPE_PATTERN}, or nothing to disable",
    ),
    (
        "processors",
        "good.module, my-module",
        "'my-module' is not a Python module name; expected comma-separated Python module names",
    ),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD_VALUES)
def test_bad_value_reports_file_line_key(tmp_path: Path, key: str, value: str, message: str) -> None:
    path = shared(tmp_path, f"# comment\n\n{key} = {value}\n")
    assert errors_of(tmp_path) == [f"{path}:3: {key}: {message}"]


# Values that made validation raise (ValueError, RecursionError, UnicodeEncodeError) instead of an error
# at their line: a hot reload of one killed the worker, --check, submit and reload crashed (exit 70).
_DEEP = "[" * 100_000 + "]" * 100_000
UNCHECKED_VALUES = [
    ("command.x.ok-exit-codes", "\u00b2", "'\u00b2' is not an exit code"),  # '²'.isdigit(), int('²') fails
    ("command.x.retry-exit-codes", "1, \u0663", "'\u0663' is not an exit code"),  # ARABIC-INDIC THREE
    ("pool.size", "1" * 5000, "is out of range"),  # over int()'s 4300 digits
    ("limits.activity-bytes", "0" * 4999 + "7", None),  # leading zeros do not count: 7
    ("metrics.port", "0" * 5000, None),  # 0: none
    ("metrics.port", "9" * 5000, "is out of range"),
    ("command.x.argv", _DEEP, "is not JSON"),
    ("http.x.headers", '{"a": ' + _DEEP + "}", "not JSON"),
    ("metrics.file", "/tmp/\\uD800.prom", "which no file name can hold"),  # a lone surrogate
    ("processors.path", "lib, \\uDBFF", "which no file name can hold"),
    ("files.roots", "\\uDCE9x", None),  # a byte no encoding gave (surrogateescape): a name holds it
    ("command.x.cwd", "/srv/\\uD800", "which no file name can hold"),
    # Data nested 101 levels was accepted (the limit of a whole document), then each tick quarantined.
    ("schedule.x.data", '{"a": ' + "[" * 100 + "]" * 100 + "}", "nested more than 100 levels deep"),
    # The .properties escape made a lone surrogate: "not UTF-8: invalid byte at offset 7".
    ("schedule.x.data", '{"a": "\\ud800"}', "lone surrogate"),
]


@pytest.mark.parametrize(("key", "value", "message"), UNCHECKED_VALUES)
def test_a_value_validation_cannot_read_is_an_error_at_its_line(
    tmp_path: Path, key: str, value: str, message: str | None
) -> None:
    path = shared(tmp_path, f"# c\n{key} = {value}\n")
    if message is None:
        load(tmp_path)
        return
    errors = [e for e in errors_of(tmp_path) if e.startswith(f"{path}:2: {key}: ")]
    assert len(errors) == 1 and message in errors[0], errors_of(tmp_path)


def test_error_example_from_spec(tmp_path: Path) -> None:
    path = shared(tmp_path, "\n" * 11 + "pool.size = many\n")
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    expected = "expected an integer from 0 to 1024"
    assert str(info.value) == (f"{path}:12: pool.size: 'many' is not an integer; {expected}")


def test_all_errors_are_reported_together(tmp_path: Path) -> None:
    a = shared(tmp_path, "pool.size = x\nretry.jitter = 2\nscan.watch = yes\n")
    b = worker(tmp_path, "w1", "\n\nlog.level = loud\n")
    errors = errors_of(tmp_path, "w1")
    assert errors == [
        f"{a}:1: pool.size: 'x' is not an integer; expected an integer from 0 to 1024",
        f"{a}:2: retry.jitter: '2' is out of range; expected a number between 0 and 1",
        f"{b}:3: log.level: 'loud' is not a valid choice; expected one of DEBUG, INFO, WARNING, ERROR",
    ]
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "w1")
    assert str(info.value) == "\n".join(errors)


def test_overridden_bad_value_is_still_an_error(tmp_path: Path) -> None:
    path = shared(tmp_path, "pool.size = x\npool.size = 2\n")
    said = "expected an integer from 0 to 1024"
    assert errors_of(tmp_path) == [f"{path}:1: pool.size: 'x' is not an integer; {said}"]


def test_continuation_lines_report_the_line_the_key_starts_on(tmp_path: Path) -> None:
    path = shared(
        tmp_path,
        "# header\nprocessors = a,\\\n    b,\\\n    c\npool.size = \\\n    lots\nretry.jitter = 9\n",
    )
    assert errors_of(tmp_path) == [
        f"{path}:5: pool.size: 'lots' is not an integer; expected an integer from 0 to 1024",
        f"{path}:7: retry.jitter: '9' is out of range; expected a number between 0 and 1",
    ]


def test_line_numbers_with_crlf_and_cr_line_endings(tmp_path: Path) -> None:
    path = tmp_path / "spoolpipe.properties"
    path.write_bytes(b"# a\r\nprocessors = x,\\\r\n  y\r\r\npool.size = z\r\n")
    said = "expected an integer from 0 to 1024"
    assert errors_of(tmp_path) == [f"{path}:5: pool.size: 'z' is not an integer; {said}"]


def test_continued_value_is_joined(tmp_path: Path) -> None:
    shared(tmp_path, "processors = a,\\\n    b.c,\\\n    d\n")
    assert load(tmp_path).settings.processors == ("a", "b.c", "d")


def test_invalid_unicode_escape_is_an_error_with_line(tmp_path: Path) -> None:
    path = shared(tmp_path, "pool.size = 2\ncustom.x = \\u12\n")
    errors = errors_of(tmp_path)
    assert len(errors) == 1
    assert errors[0].startswith(f"{path}:2: invalid escape sequence")


def test_unreadable_file_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "spoolpipe.properties").mkdir()
    errors = errors_of(tmp_path)
    assert len(errors) == 1
    assert errors[0].startswith(f"{tmp_path / 'spoolpipe.properties'}: cannot read file")


def test_a_fifo_or_a_dangling_link_in_place_of_a_file_is_an_error_naming_it(tmp_path: Path) -> None:
    """Reading a FIFO blocked the worker (and stop, status) for good; a dangling link was read as
    no file at all, every key at its default, without a word."""
    os.mkfifo(tmp_path / "spoolpipe.properties")
    [error] = errors_of(tmp_path)
    assert error == f"{tmp_path / 'spoolpipe.properties'}: cannot read file: it is a FIFO, not a file"
    (tmp_path / "spoolpipe.properties").unlink()
    (tmp_path / "spoolpipe.properties").symlink_to(tmp_path / "gone.properties")
    [error] = errors_of(tmp_path)
    assert error == (
        f"{tmp_path / 'spoolpipe.properties'}: cannot read file: it is a symbolic link to "
        f"{tmp_path / 'gone.properties'}, which does not exist"
    )
    (tmp_path / "real.properties").write_text("pool.size = 3\n")
    (tmp_path / "spoolpipe.properties").unlink()
    (tmp_path / "spoolpipe.properties").symlink_to(tmp_path / "real.properties")  # a link is followed
    assert load(tmp_path).settings.pool_size == 3


# --------------------------------------------------------------------------
# Unknown keys and warnings
# --------------------------------------------------------------------------


def test_unknown_key_warns_with_suggestion(tmp_path: Path) -> None:
    path = shared(tmp_path, "# c\npool.szie = 3\n")
    loaded = load(tmp_path, cpu_count=2)
    assert loaded.warnings == (f"{path}:2: unknown key 'pool.szie'; did you mean 'pool.size'?",)
    assert loaded.settings.pool_size == 2


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("POOL.SIZE", "pool.size"),
        ("retry.max-attempt", "retry.max-attempts"),
        ("concurency.image", "concurrency.image"),
        ("timeuot.image", "timeout.image"),
        ("costum.colour", "custom.colour"),
        ("retry.maxattempts.mail", "retry.max-attempts.mail"),  # was 'retry.on.maxattempts.mail'
        ("retry.max-attempt.mail.send", "retry.max-attempts.mail.send"),
        ("timeuot.mail.send", "timeout.mail.send"),
    ],
)
def test_unknown_key_suggestions(tmp_path: Path, key: str, suggestion: str) -> None:
    path = shared(tmp_path, f"{key} = 1\n")
    assert load(tmp_path).warnings == (f"{path}:1: unknown key {key!r}; did you mean {suggestion!r}?",)


def test_unknown_key_without_close_match_has_no_suggestion(tmp_path: Path) -> None:
    path = shared(tmp_path, "zebra.stripes = 3\n")
    assert load(tmp_path).warnings == (f"{path}:1: unknown key 'zebra.stripes'",)


def test_an_unknown_key_of_a_junk_line_is_shown_cut_not_whole(tmp_path: Path) -> None:
    """A 200 KB line was quoted whole in the warning, at every start and reload."""
    junk = "10.0.0.1," * 20_000
    path = shared(tmp_path, f"{junk}\n")
    [warning] = load(tmp_path).warnings
    assert warning == f"{path}:1: unknown key {junk[:200]!r}... ({len(junk)} characters)"


def test_later_key_wins_within_a_file_and_repeat_warns(tmp_path: Path) -> None:
    path = shared(tmp_path, "pool.size = 2\n\npool.size = 3\n")
    loaded = load(tmp_path)
    assert loaded.settings.pool_size == 3
    assert loaded.warnings == (f"{path}:3: 'pool.size' is set again; this replaces line 1",)


def test_a_third_setting_of_a_key_points_at_the_line_it_replaces(tmp_path: Path) -> None:
    """Each repetition said "replaces line 1", though the line it overrides is the one before."""
    path = shared(tmp_path, "pool.size = 1\npool.size = 2\npool.size = 3\n")
    loaded = load(tmp_path)
    assert loaded.settings.pool_size == 3
    assert loaded.warnings == (
        f"{path}:2: 'pool.size' is set again; this replaces line 1",
        f"{path}:3: 'pool.size' is set again; this replaces line 2",
    )


# --------------------------------------------------------------------------
# Files, precedence, paths
# --------------------------------------------------------------------------


def test_config_files(tmp_path: Path) -> None:
    assert config_files(tmp_path, None) == (tmp_path / "spoolpipe.properties",)
    assert config_files(tmp_path, "w1") == (
        tmp_path / "spoolpipe.properties",
        tmp_path / "workers" / "w1.properties",
    )


def test_config_files_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert config_files(Path("repo"), "w") == (
        tmp_path / "repo" / "spoolpipe.properties",
        tmp_path / "repo" / "workers" / "w.properties",
    )


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "../x", "a\\b", "a\0b"])
def test_bad_worker_id_is_rejected(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        config_files(tmp_path, bad)
    with pytest.raises(ValueError):
        load(tmp_path, bad)


def test_per_worker_file_overrides_shared(tmp_path: Path) -> None:
    a = shared(tmp_path, "pool.size = 2\nretry.max-attempts = 3\nconcurrency.x = 4\n")
    b = worker(tmp_path, "w1", "pool.size = 8\nconcurrency.x = 0\n")
    s1 = load(tmp_path, "w1").settings
    assert (s1.pool_size, s1.retry_max_attempts, s1.concurrency_for("x")) == (8, 3, 0)
    assert s1.sources == (a, b)
    s2 = load(tmp_path, "w2").settings
    assert (s2.pool_size, s2.retry_max_attempts, s2.concurrency_for("x")) == (2, 3, 4)
    assert s2.sources == (a,)


def test_worker_file_alone(tmp_path: Path) -> None:
    b = worker(tmp_path, "w1", "log.level = debug\n")
    s = load(tmp_path, "w1").settings
    assert s.log_level == "DEBUG"
    assert s.sources == (b,)


def test_relative_paths_resolve_against_defining_file(tmp_path: Path) -> None:
    shared(tmp_path, "processors.path = lib, /opt/abs ,\nimages.roots = media\n")
    worker(tmp_path, "w1", "images.roots = local, ../shared-media\n")
    s = load(tmp_path, "w1").settings
    assert s.processors_path == (tmp_path / "lib", Path("/opt/abs"))
    assert s.images_roots == (tmp_path / "workers" / "local", tmp_path / "shared-media")
    assert load(tmp_path).settings.images_roots == (tmp_path / "media",)
    worker(tmp_path, "w2", "processors.path = plugins\n")
    assert load(tmp_path, "w2").settings.processors_path == (tmp_path / "workers" / "plugins",)


def test_relative_repo_gives_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared(tmp_path / "repo", "processors.path = lib\n")
    monkeypatch.chdir(tmp_path)
    s = load(Path("repo")).settings
    assert s.processors_path == (tmp_path / "repo" / "lib",)
    assert s.sources == (tmp_path / "repo" / "spoolpipe.properties",)


# --------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------


def test_per_type_concurrency_and_timeouts(tmp_path: Path) -> None:
    shared(
        tmp_path,
        "pool.size = 6\n"
        "concurrency.default = 2\n"
        "concurrency.image.resize = 3\n"
        "concurrency.video = 0\n"
        "timeout.seconds = 60\n"
        "timeout.image.resize = 12.5\n",
    )
    s = load(tmp_path).settings
    assert s.concurrency_default == 2
    assert dict(s.concurrency) == {"image.resize": 3, "video": 0}
    assert s.concurrency_for("image.resize") == 3
    assert s.concurrency_for("video") == 0
    assert s.concurrency_for("other") == 2
    assert dict(s.timeouts) == {"image.resize": 12.5}
    assert timeout_for(s, "image.resize") == 12.5
    assert timeout_for(s, "other") == 60.0


def test_concurrency_default_zero_means_pool_size(tmp_path: Path) -> None:
    shared(tmp_path, "pool.size = 3\n")
    s = load(tmp_path, cpu_count=16).settings
    assert (s.pool_size, s.concurrency_for("x")) == (3, 3)


@pytest.mark.parametrize(
    ("line", "bad_type"),
    [
        ("concurrency.bad\\ type = 3", "bad type"),
        ("concurrency. = 3", ""),
        ("timeout.-x = 3", "-x"),
        ("concurrency.a/b = 1", "a/b"),
        ("timeout." + "x" * 129 + " = 1", "x" * 129),
    ],
)
def test_bad_type_name_in_key_is_an_error(tmp_path: Path, line: str, bad_type: str) -> None:
    path = shared(tmp_path, line + "\n")
    key = line.split(" = ")[0].replace("\\ ", " ")
    assert errors_of(tmp_path) == [
        f"{path}:1: {key}: {bad_type!r} is not a valid activity type name; "
        f"expected an activity type name matching {config.TYPE_PATTERN}"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("Yes", True),
        ("on", True),
        ("1", True),
        ("false", False),
        ("False", False),
        ("no", False),
        ("OFF", False),
        ("0", False),
        ("yes   ", True),
    ],
)
def test_booleans(tmp_path: Path, text: str, expected: bool) -> None:
    shared(tmp_path, f"scan.watch = {text}\ndurability.fsync:{text}\n")
    s = load(tmp_path).settings
    assert s.scan_watch is expected
    assert s.durability_fsync is expected


def test_properties_syntax(tmp_path: Path) -> None:
    shared(
        tmp_path,
        "! bang comment\n"
        "pool.size: 3\n"
        "retry.max-attempts 7\n"
        "   log.level=warning\n"
        "custom.greeting = gr\\u00fc\\u00df dich\n"
        "custom.with\\ space = a \\\n"
        "   b\n",
    )
    s = load(tmp_path).settings
    assert (s.pool_size, s.retry_max_attempts, s.log_level) == (3, 7, "WARNING")
    assert dict(s.custom) == {"greeting": "grüß dich", "with space": "a b"}


def test_lists_are_stripped_and_empties_dropped(tmp_path: Path) -> None:
    shared(tmp_path, "processors = a ,, b.c ,  ,\n")
    assert load(tmp_path).settings.processors == ("a", "b.c")


def test_choices_are_case_insensitive(tmp_path: Path) -> None:
    shared(tmp_path, "claims.lock = LEASE\nlog.level = error\n")
    s = load(tmp_path).settings
    assert (s.claims_lock, s.log_level) == ("lease", "ERROR")


def test_failures_handler_can_be_disabled(tmp_path: Path) -> None:
    shared(tmp_path, "failures.handler =\n")
    assert load(tmp_path).settings.failures_handler == ""


def test_custom_keys_are_free_form(tmp_path: Path) -> None:
    shared(tmp_path, "custom.thumbnail.quality = 85\ncustom.anything-GOES here ok\n")
    loaded = load(tmp_path)
    assert loaded.warnings == ()
    assert dict(loaded.settings.custom) == {
        "thumbnail.quality": "85",
        "anything-GOES": "here ok",
    }


def test_lease_must_cover_two_heartbeats(tmp_path: Path) -> None:
    path = shared(tmp_path, "claims.lease-seconds = 8\n")
    assert errors_of(tmp_path) == [
        f"{path}:1: claims.lease-seconds: 8 is less than twice heartbeat.interval-seconds "
        "(5); expected a number >= 10"
    ]
    path = shared(tmp_path, "heartbeat.interval-seconds = 20\n")
    assert errors_of(tmp_path) == [
        f"{path}:1: heartbeat.interval-seconds: 20 is more than half of "
        "claims.lease-seconds (30); expected a number <= 15"
    ]
    shared(tmp_path, "heartbeat.interval-seconds = 20\nclaims.lease-seconds = 40\n")
    assert load(tmp_path).settings.claims_lease_seconds == 40.0


def test_utf8_and_latin1_files(tmp_path: Path) -> None:
    write(tmp_path / "spoolpipe.properties", "\ufeffcustom.name = Zoë\n", encoding="utf-8")
    loaded = load(tmp_path)
    assert loaded.warnings == ()
    assert dict(loaded.settings.custom) == {"name": "Zoë"}
    write(tmp_path / "spoolpipe.properties", "custom.name = Zoë\n", encoding="latin-1")
    assert dict(load(tmp_path).settings.custom) == {"name": "Zoë"}


def test_a_byte_order_mark_is_ignored_in_a_file_that_falls_back_to_latin1(tmp_path: Path) -> None:
    """The BOM was kept: the first key became 'ï»¿concurrency.t.slow', only an unknown key."""
    (tmp_path / "spoolpipe.properties").write_bytes(b"\xef\xbb\xbfconcurrency.t.slow = 0\n# r\xe9sum\xe9\n")
    loaded = load(tmp_path)
    assert loaded.warnings == ()
    assert dict(loaded.settings.concurrency) == {"t.slow": 0}


@pytest.mark.parametrize(
    ("data", "line"),
    [
        ("pool.size = 2\nconcurrency.t.slow = 0\n".encode("utf-16"), 1),  # FF FE, then UTF-16LE
        ("pool.size = 2\n".encode("utf-16-be"), 1),  # no BOM: NUL bytes
        ("# ok\n\npool.size = 2\n".encode("utf-32-le"), 1),
        (b"# ok\npool.size = 2\ncustom.x = a\0b\n", 3),
    ],
)
def test_a_file_saved_as_utf16_is_an_error_not_junk_keys(tmp_path: Path, data: bytes, line: int) -> None:
    """It decoded into junk keys: the worker started with every key at its default, and warnings."""
    path = tmp_path / "spoolpipe.properties"
    path.write_bytes(data)
    [error] = errors_of(tmp_path)
    assert error.startswith(f"{path}:{line}: "), error
    assert "save it as UTF-8" in error


# --------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------


def test_settings_are_immutable_hashable_and_picklable(tmp_path: Path) -> None:
    shared(tmp_path, "concurrency.a = 1\ntimeout.a = 2\ncustom.k = v\n")
    s = load(tmp_path).settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.pool_size = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.concurrency["a"] = 2  # type: ignore[index]
    clone = pickle.loads(pickle.dumps(s))
    assert clone == s
    assert hash(clone) == hash(s)


def test_config_error_is_picklable() -> None:
    err = ConfigError(["a:1: x", "b:2: y"])
    clone = pickle.loads(pickle.dumps(err))
    assert clone.errors == ["a:1: x", "b:2: y"]
    assert str(clone) == "a:1: x\nb:2: y"
    assert ConfigError("one").errors == ["one"]


# --------------------------------------------------------------------------
# Rendering and docs
# --------------------------------------------------------------------------


def test_render_defaults_round_trip(tmp_path: Path) -> None:
    text = config.render_defaults()
    path = shared(tmp_path, text)
    loaded = load(tmp_path, cpu_count=4)
    assert loaded.warnings == ()
    assert loaded.settings == dataclasses.replace(
        load(tmp_path / "empty", cpu_count=4).settings, sources=(path,)
    )


def test_render_defaults_lists_every_key(tmp_path: Path) -> None:
    text = config.render_defaults()
    assert text.isascii()
    assert all(len(line) <= 79 for line in text.splitlines())
    lines = text.splitlines()
    for opt in config.OPTIONS:
        if opt.default is None:  # an example may take several lines (a schedule needs two keys)
            assert all("#" + line in lines for line in opt.example.splitlines()), opt.key
        else:
            assert any(line.startswith("#" + opt.key + " =") for line in lines), opt.key
    assert not [line for line in lines if line and not line.startswith("#")]  # nothing set twice
    assert "#concurrency.image.resize = 2" in lines


def test_rendered_examples_are_valid_when_uncommented(tmp_path: Path) -> None:
    text = "".join(
        line[1:] + "\n"
        for line in config.render_defaults().splitlines()
        if line.startswith("#") and " = " in line and not line.startswith("# ")
    )
    shared(tmp_path, text)
    loaded = load(tmp_path)
    assert loaded.warnings == ()
    assert loaded.settings.concurrency_for("image.resize") == 2


def test_describe_keys_is_a_table_of_every_key() -> None:
    table = config.describe_keys()
    rows = table.splitlines()
    assert rows[0].startswith("| Key |")
    assert len(rows) == 2 + len(config.OPTIONS)
    for opt in config.OPTIONS:
        assert f"| `{opt.key}` |" in table


def test_docs_table_is_in_sync() -> None:
    docs = (REPO_ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert config.describe_keys() in docs, (
        "docs/configuration.md is out of date: paste spoolpipe.config.describe_keys() into it"
    )


def test_javaproperties_imported_later_is_the_whole_package_with_the_classes_config_uses() -> None:
    """spoolpipe loads only javaproperties' line format; a later ``import javaproperties`` gets it all."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from spoolpipe.config import _properties\n"
        "assert 'javaproperties' not in sys.modules and 'xml.etree.ElementTree' not in sys.modules\n"
        "import javaproperties\n"
        "assert javaproperties.KeyValue is _properties.reading.KeyValue\n"
        "assert javaproperties.loads('a = 1') == {'a': '1'}\n"
        "assert javaproperties.loads_xml(javaproperties.dumps_xml({'b': '2'})) == {'b': '2'}\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert (run.returncode, run.stdout, run.stderr) == (0, "ok\n", "")
