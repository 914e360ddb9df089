"""Reading, merging and validating the ``.properties`` files into :class:`Settings`."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

from .. import circuit
from ..builtins import specs as builtin_specs
from ..schedule import rules as schedule_rules
from ..storable import encode
from ._kinds import TYPE_PATTERN, TYPE_RE, Invalid, Value
from ._properties import reading
from ._schema import FAMILIES, OPTIONS, Option
from ._settings import FrozenMap, Loaded, Settings

#: Name of the shared configuration file, directly inside the repository.
SHARED_FILE = "spoolpipe.properties"
#: Directory (inside the repository) holding ``<worker-id>.properties`` files.
WORKERS_DIR = "workers"

_EOL_RE = re.compile(r"\r\n?|\n")  # the line terminators javaproperties splits on


class ConfigError(Exception):
    """The configuration could not be loaded.

    ``errors`` holds one line per problem, normally of the form
    ``<path>:<line>: <key>: <what is wrong>; expected <what is expected>``;
    ``warnings`` holds the warnings of the same load (unknown keys...), so that
    all its problems are reported together; ``str()`` joins errors, then
    warnings, with newlines.
    """

    errors: list[str]
    warnings: list[str]

    def __init__(self, errors: str | Iterable[str], warnings: Iterable[str] = ()) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        self.warnings = list(warnings)
        super().__init__(self.errors, self.warnings)  # keeps the exception picklable

    def __str__(self) -> str:
        return "\n".join([*self.errors, *self.warnings])


_STATIC: dict[str, Option] = {opt.key: opt for opt in OPTIONS if not opt.is_pattern}
_PATTERNS: dict[str, Option] = {opt.prefix: opt for opt in OPTIONS if opt.is_pattern and not opt.field}
_PER_TYPE_PREFIXES = (
    "concurrency.",
    "timeout.",
    "retry.max-attempts.",
    "retry.backoff-seconds.",
    "retry.on.",
)
_CUSTOM_PREFIX = "custom."
_PROCESSOR_PREFIX = "processor."
_OPTION_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")


def _parse_default(opt: Option) -> Value:
    assert opt.default is not None
    return opt.kind.parse(opt.default, Path("/"))


_DEFAULTS: dict[str, Value] = {key: _parse_default(opt) for key, opt in _STATIC.items()}


@dataclass(frozen=True)
class _Entry:
    key: str
    value: str
    path: Path
    line: int

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def _check_worker_id(worker_id: str) -> None:
    if worker_id in ("", ".", "..") or "/" in worker_id or "\\" in worker_id or "\0" in worker_id:
        raise ValueError(f"invalid worker id {worker_id!r}")


def config_files(repo: Path, worker_id: str | None) -> tuple[Path, ...]:
    """The files :func:`load` reads, lowest precedence first, whether they exist or not.

    Paths are absolute. Raises ``ValueError`` for a worker id that cannot be
    a file name.
    """
    base = Path(os.path.abspath(repo))
    files = [base / SHARED_FILE]
    if worker_id is not None:
        _check_worker_id(worker_id)
        files.append(base / WORKERS_DIR / f"{worker_id}.properties")
    return tuple(files)


class _NotText(Exception):
    """Bytes no properties file holds; the arguments: the line they are on, and what to say."""


def _decode(data: bytes) -> str:
    """UTF-8, a leading byte-order mark ignored, else ISO-8859-1 as the ``.properties`` specification
    prescribes; ``_NotText`` for UTF-16 or UTF-32 (a BOM, or NUL bytes), which either decoding turned
    into junk keys: the worker ran with every key at its default."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _NotText(1, "the file is saved as UTF-16 (it starts with a UTF-16 byte-order mark)")
    if b"\0" in data:
        line = 1 + len(_EOL_RE.findall(data[: data.index(b"\0")].decode("iso-8859-1")))
        raise _NotText(line, "a NUL byte: the file is not text (saved as UTF-16 or UTF-32?)")
    data = data.removeprefix(b"\xef\xbb\xbf")  # before the fallback, which would keep it as 'ï»¿'
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("iso-8859-1")


def _read_bytes(path: Path) -> bytes | None:
    """A properties file's bytes (a link is followed); None when there is none.

    Never blocks on a FIFO; one that is not a regular file, or a link to nothing,
    is an ``OSError`` saying so: read as no file, it would set every key to its default.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        if os.path.islink(path):
            raise OSError(
                errno.ENOENT, f"it is a symbolic link to {os.readlink(path)}, which does not exist"
            ) from None
        return None
    try:
        kind = stat.S_IFMT(os.fstat(fd).st_mode)
        if kind != stat.S_IFREG:
            name = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}
            raise OSError(errno.EINVAL, f"it is {name.get(kind, 'a device')}, not a file")
        with open(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def _read_entries(path: Path, errors: list[str]) -> list[_Entry] | None:
    """Parse one file; None when it does not exist."""
    try:
        data = _read_bytes(path)
    except OSError as exc:
        errors.append(f"{path}: cannot read file: {exc.strerror or exc}")
        return []
    if data is None:
        return None
    entries: list[_Entry] = []
    line = 1
    try:
        text = _decode(data)
    except _NotText as exc:
        errors.append(f"{path}:{exc.args[0]}: {exc.args[1]}; save it as UTF-8 (file not read)")
        return []
    try:
        for element in reading.parse(text):
            if isinstance(element, reading.KeyValue):
                entries.append(_Entry(element.key, element.value, path, line))
            line += len(_EOL_RE.findall(element.source))
    except reading.InvalidUEscapeError as exc:
        errors.append(
            f"{path}:{line}: invalid escape sequence '{exc.escape}'; "
            "expected \\u followed by four hexadecimal digits (rest of file not read)"
        )
    return entries


#: Longest key a suggestion is sought for, well over a per-type prefix and a 128-character type: each
#: candidate is compared with the whole key (a 12 KB junk line took 44 s and 490 MB).
_SUGGEST_MAX_CHARS = 200


def _suggest(key: str) -> str | None:
    import difflib  # only for a key that is not known: most loads have none

    if len(key) > _SUGGEST_MAX_CHARS:
        return None
    candidates = [k for k in _STATIC]
    parts = key.split(".")
    # The ways the key may end in a type (types hold dots too) after a misspelt prefix of up to three
    # parts: retry.maxattempts.mail.send may be retry.max-attempts. + mail.send, or + send.
    tails = [".".join(parts[i:]) for i in range(1, min(len(parts), 4)) if all(parts[i:])]
    candidates += [prefix + tail for prefix in (*_PER_TYPE_PREFIXES, _CUSTOM_PREFIX) for tail in tails]
    lowered = {c.lower(): c for c in candidates}
    matches = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.75)
    return lowered[matches[0]] if matches else None


#: Longest unknown key quoted whole in its warning (a junk line is cut, said at every reload).
_KEY_SHOWN = 200


def _unknown_key_warning(entry: _Entry) -> str:
    key = entry.key
    if len(key) > _KEY_SHOWN:
        message = f"{entry.where}: unknown key {key[:_KEY_SHOWN]!r}... ({len(key)} characters)"
    else:
        message = f"{entry.where}: unknown key {key!r}"
    suggestion = _suggest(entry.key)
    return f"{message}; did you mean {suggestion!r}?" if suggestion else message


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load(repo: Path, worker_id: str | None = None, *, cpu_count: int | None = None) -> Loaded:
    """Read, merge and validate the configuration of ``worker_id`` in ``repo``.

    ``cpu_count`` overrides the number of CPUs used to resolve ``pool.size = 0``
    (default: the CPUs this process may run on). Raises :class:`ConfigError`
    listing every problem found, and ``ValueError`` for an impossible worker id.
    """
    errors: list[str] = []
    warnings: list[str] = []
    sources: list[Path] = []
    values: dict[str, Value] = dict(_DEFAULTS)
    where: dict[str, _Entry] = {}
    custom: dict[str, str] = {}
    per_type: dict[str, dict[str, Value]] = {prefix: {} for prefix in _PER_TYPE_PREFIXES}
    options: dict[str, dict[str, str]] = {}
    option_sources: dict[str, str] = {}
    members: dict[str, dict[str, dict[str, tuple[Value | None, _Entry]]]] = {
        prefix: {} for prefix in FAMILIES
    }

    for path in config_files(repo, worker_id):
        entries = _read_entries(path, errors)
        if entries is None:
            continue
        shared = not sources
        sources.append(path)
        set_at: dict[str, int] = {}  # the line that sets each key so far
        for entry in entries:
            key = entry.key
            if key in set_at:
                warnings.append(f"{entry.where}: {key!r} is set again; this replaces line {set_at[key]}")
            set_at[key] = entry.line
            try:
                if key in _STATIC:
                    values[key] = _STATIC[key].kind.parse(entry.value, path.parent)
                    where[key] = entry
                elif key.startswith(_CUSTOM_PREFIX):
                    custom[key[len(_CUSTOM_PREFIX) :]] = entry.value
                elif key.startswith(_PROCESSOR_PREFIX):
                    _processor_option(entry, options, option_sources, errors)
                elif key.startswith(tuple(FAMILIES)):
                    _read_member(entry, shared, path.parent, members, errors)
                elif key.startswith(_PER_TYPE_PREFIXES):
                    prefix = _per_type_prefix(key)
                    type_ = key[len(prefix) :]
                    if not TYPE_RE.fullmatch(type_):
                        expected = f"an activity type name matching {TYPE_PATTERN}"
                        errors.append(
                            f"{entry.where}: {key}: {type_!r} is not a valid activity type "
                            f"name; expected {expected}"
                        )
                        continue
                    per_type[prefix][type_] = _PATTERNS[prefix].kind.parse(entry.value, path.parent)
                else:
                    warnings.append(_unknown_key_warning(entry))
            except Invalid as exc:
                kind = (_STATIC.get(key) or _PATTERNS[_per_type_prefix(key)]).kind
                errors.append(f"{entry.where}: {key}: {exc}; expected {kind.expected}")

    _check_lease(values, where, errors)
    schedules = _build_schedules(members["schedule."], cast(int, values["limits.activity-bytes"]), errors)
    circuits = _build_circuits(members["circuit."], errors)
    build_command = builtin_specs.build_command
    commands = _build_definitions(members["command."], "command", ("argv",), build_command, errors)
    endpoints = _build_definitions(members["http."], "http", ("url",), builtin_specs.build_endpoint, errors)
    if errors:
        raise ConfigError(errors, warnings)

    pool_size = cast(int, values["pool.size"]) or (cpu_count if cpu_count is not None else _cpu_count())
    settings = Settings(
        processors=cast(tuple[str, ...], values["processors"]),
        processors_path=cast(tuple[Path, ...], values["processors.path"]),
        pool_size=max(1, pool_size),
        concurrency_default=cast(int, values["concurrency.default"]),
        concurrency=FrozenMap(cast(dict[str, int], per_type["concurrency."])),
        timeout_seconds=cast(float, values["timeout.seconds"]),
        timeouts=FrozenMap(cast(dict[str, float], per_type["timeout."])),
        retry_max_attempts=cast(int, values["retry.max-attempts"]),
        retry_backoff_seconds=cast(float, values["retry.backoff-seconds"]),
        retry_backoff_max_seconds=cast(float, values["retry.backoff-max-seconds"]),
        retry_jitter=cast(float, values["retry.jitter"]),
        claims_lock=cast(str, values["claims.lock"]),
        claims_lease_seconds=cast(float, values["claims.lease-seconds"]),
        scan_interval_seconds=cast(float, values["scan.interval-seconds"]),
        scan_watch=cast(bool, values["scan.watch"]),
        inbox_settle_seconds=cast(float, values["inbox.settle-seconds"]),
        limits_activity_bytes=cast(int, values["limits.activity-bytes"]),
        limits_result_bytes=cast(int, values["limits.result-bytes"]),
        shutdown_grace_seconds=cast(float, values["shutdown.grace-seconds"]),
        heartbeat_interval_seconds=cast(float, values["heartbeat.interval-seconds"]),
        failures_handler=cast(str, values["failures.handler"]),
        durability_fsync=cast(bool, values["durability.fsync"]),
        log_level=cast(str, values["log.level"]),
        log_max_bytes=cast(int, values["log.max-bytes"]),
        log_backups=cast(int, values["log.backups"]),
        images_roots=cast(tuple[Path, ...], values["images.roots"]),
        images_max_megapixels=cast(float, values["images.max-megapixels"]),
        metrics_file=cast(Path | None, values["metrics.file"]),
        metrics_port=cast(int, values["metrics.port"]),
        metrics_host=cast(str, values["metrics.host"]),
        retention_done=cast(float, values["retention.done"]),
        retention_failed=cast(float, values["retention.failed"]),
        retention_invalid=cast(float, values["retention.invalid"]),
        retention_logs=cast(float, values["retention.logs"]),
        retention_archive=cast(bool, values["retention.archive"]),
        retention_interval=cast(float, values["retention.interval"]),
        commands=FrozenMap(commands),
        http_endpoints=FrozenMap(endpoints),
        files_roots=cast(tuple[Path, ...], values["files.roots"]),
        custom=FrozenMap(custom),
        schedules=FrozenMap(schedules),
        circuits=FrozenMap(circuits),
        sources=tuple(sources),
        max_attempts=FrozenMap(cast(dict[str, int], per_type["retry.max-attempts."])),
        backoffs=FrozenMap(cast(dict[str, float], per_type["retry.backoff-seconds."])),
        retry_on=FrozenMap({t: cast(tuple[str, ...], n) for t, n in per_type["retry.on."].items() if n}),
        processor_options=FrozenMap({t: FrozenMap(keys) for t, keys in options.items()}),
        option_sources=FrozenMap(option_sources),
        key_sources=FrozenMap({key: entry.where for key, entry in where.items()}),
    )
    return Loaded(settings=settings, warnings=tuple(warnings))


def _per_type_prefix(key: str) -> str:
    """The per-type family ``key`` belongs to (the longest prefix that matches)."""
    return max((p for p in _PER_TYPE_PREFIXES if key.startswith(p)), key=len)


def _processor_option(
    entry: _Entry, options: dict[str, dict[str, str]], sources: dict[str, str], errors: list[str]
) -> None:
    """``processor.<type>.<key>``: the key is the part after the last dot, the type the part before it."""
    type_, _, name = entry.key[len(_PROCESSOR_PREFIX) :].rpartition(".")
    if not _OPTION_NAME_RE.fullmatch(name):
        errors.append(
            f"{entry.where}: {entry.key}: {name!r} is not a valid setting name; expected "
            "processor.<type>.<key> with a key of letters, digits, _ and - after the last dot"
        )
    elif not TYPE_RE.fullmatch(type_):
        errors.append(
            f"{entry.where}: {entry.key}: {type_!r} is not a valid activity type name; expected "
            f"processor.<type>.<key> with a type matching {TYPE_PATTERN}"
        )
    else:
        options.setdefault(type_, {})[name] = entry.value
        sources[entry.key] = entry.where


def _read_member(
    entry: _Entry,
    shared: bool,
    base: Path,
    members: dict[str, dict[str, dict[str, tuple[Value | None, _Entry]]]],
    errors: list[str],
) -> None:
    """One ``PREFIX<name>.FIELD`` key: checked and filed under its family and name (later lines win)."""
    family = next(f for prefix, f in FAMILIES.items() if entry.key.startswith(prefix))
    fields = family.fields()
    shape = f"{family.prefix}<{family.placeholder}>.<field>"
    name, _, field = entry.key[len(family.prefix) :].rpartition(".")
    if family.shared_only and not shared:
        errors.append(
            f"{entry.where}: {entry.key}: {family.prefix}* keys are read only from REPO/{SHARED_FILE}, "
            "so that every worker sees the same definitions; move it there"
        )
    elif not name:
        errors.append(f"{entry.where}: {entry.key}: expected a key of the form {shape}")
    elif not re.fullmatch(family.name_pattern, name):
        errors.append(
            f"{entry.where}: {entry.key}: {name!r} is not a valid {family.placeholder}; "
            f"expected a {family.placeholder} matching {family.name_pattern}"
        )
    elif field not in fields:
        errors.append(
            f"{entry.where}: {entry.key}: unknown field {field!r}; expected one of " + ", ".join(fields)
        )
        members[family.prefix].setdefault(name, {})[field] = (None, entry)  # reported: no more on it
    else:
        kind = fields[field].kind
        try:
            value = kind.parse(entry.value, base)
        except Invalid as exc:
            errors.append(f"{entry.where}: {entry.key}: {exc}; expected {kind.expected}")
            members[family.prefix].setdefault(name, {})[field] = (None, entry)  # reported: no more on it
            return
        members[family.prefix].setdefault(name, {})[field] = (value, entry)


def _build_schedules(
    members: dict[str, dict[str, tuple[Value | None, _Entry]]], activity_bytes: int, errors: list[str]
) -> dict[str, schedule_rules.Rule]:
    """The rules of ``schedule.<name>.*``; each problem is an error at the line at fault."""
    rules: dict[str, schedule_rules.Rule] = {}
    for name, fields in members.items():
        if any(value is None for value, _ in fields.values()):
            continue  # a bad value, already reported
        first = min((entry for _, entry in fields.values()), key=lambda e: e.line)
        prefix = f"schedule.{name}."
        timing: schedule_rules.Timing | None = None
        if "cron" in fields and "every" in fields:
            later = max(fields["cron"][1], fields["every"][1], key=lambda e: e.line)
            errors.append(
                f"{later.where}: {later.key}: schedule {name!r} sets both cron (line "
                f"{fields['cron'][1].line}) and every (line {fields['every'][1].line}); expected exactly one"
            )
            continue
        if "cron" in fields:
            timing = schedule_rules.Cron(cast(str, fields["cron"][0]))
        elif "every" in fields:
            seconds, entry = cast(float, fields["every"][0]), fields["every"][1]
            if seconds != int(seconds):  # the kind checked the range
                errors.append(
                    f"{entry.where}: {entry.key}: {entry.value.strip()!r} is not a whole number of seconds; "
                    f"expected a duration of whole seconds, at most {schedule_rules.EVERY_MAX_DAYS}d"
                )
                continue
            timing = schedule_rules.Every(int(seconds))
        else:
            errors.append(f"{first.where}: schedule {name!r} has neither {prefix}cron nor {prefix}every")
            continue
        if "type" not in fields:
            errors.append(f"{first.where}: schedule {name!r} has no {prefix}type (required)")
            continue
        data = cast(str, fields["data"][0]) if "data" in fields else "{}"
        if "data" in fields and schedule_rules.TICK_FIELD in json.loads(data):
            entry = fields["data"][1]
            errors.append(
                f"{entry.where}: {entry.key}: the key {schedule_rules.TICK_FIELD!r} is reserved for the "
                "tick's time, which spoolpipe adds; expected a JSON object without it"
            )
            continue
        rule = schedule_rules.Rule(
            name,
            timing,
            cast(str, fields["type"][0]),
            data,
            cast(tuple[str, ...], fields["workers"][0]) if "workers" in fields else (),
            cast(schedule_rules.CatchUp, fields["catch-up"][0]) if "catch-up" in fields else "latest",
        )
        size = len(encode(rule.activity(0.0)))  # every tick's file has this size
        if size > activity_bytes:
            entry = fields.get("data", fields["type"])[1]
            errors.append(
                f"{entry.where}: {entry.key}: each activity of schedule {name!r} would be {size} bytes, "
                f"over limits.activity-bytes={activity_bytes}"
            )
            continue
        rules[name] = rule
    return rules


def _build_circuits(
    members: dict[str, dict[str, tuple[Value | None, _Entry]]], errors: list[str]
) -> dict[str, circuit.Rule]:
    """The rules of ``circuit.<type>.*``; a window or cool-down without failures is an error at its line."""
    rules: dict[str, circuit.Rule] = {}
    for type_, fields in members.items():
        if any(value is None for value, _ in fields.values()):
            continue  # a bad value, already reported
        if "failures" not in fields:
            first = min((entry for _, entry in fields.values()), key=lambda e: e.line)
            errors.append(
                f"{first.where}: {first.key}: circuit {type_!r} has no circuit.{type_}.failures, which "
                "turns it on; expected it beside this key"
            )
            continue
        rules[type_] = circuit.Rule(
            cast(int, fields["failures"][0]),
            cast(float, fields["window-seconds"][0])
            if "window-seconds" in fields
            else circuit.DEFAULT_WINDOW_SECONDS,
            cast(float, fields["cool-down-seconds"][0])
            if "cool-down-seconds" in fields
            else circuit.DEFAULT_COOL_DOWN_SECONDS,
        )
    return rules


D = TypeVar("D")


def _build_definitions(
    members: dict[str, dict[str, tuple[Value | None, _Entry]]],
    prefix: str,
    required: tuple[str, ...],
    build: Callable[..., D],
    errors: list[str],
) -> dict[str, D]:
    """``build(name, field=value...)`` for each ``PREFIX.<name>``, its fields as keywords (``-`` as ``_``)."""
    built: dict[str, D] = {}
    for name, fields in members.items():
        if any(value is None for value, _ in fields.values()):
            continue  # a bad value, already reported
        first = min((entry for _, entry in fields.values()), key=lambda e: e.line)
        missing = [f"{prefix}.{name}.{field}" for field in required if field not in fields]
        if missing:
            errors.append(f"{first.where}: {prefix} {name!r} has no {', '.join(missing)} (required)")
            continue
        try:
            built[name] = build(name, **{f.replace("-", "_"): value for f, (value, _) in fields.items()})
        except builtin_specs.InvalidDefinition as exc:
            errors.append(f"{first.where}: {prefix} {name!r}: {exc}")
    return built


#: A claim lease outlives at least this many heartbeat intervals: one late heartbeat must not let
#: another worker recover a live worker's claims.
HEARTBEATS_PER_LEASE = 2


def _check_lease(values: dict[str, Value], where: dict[str, _Entry], errors: list[str]) -> None:
    lease_key, beat_key = "claims.lease-seconds", "heartbeat.interval-seconds"
    lease, beat = cast(float, values[lease_key]), cast(float, values[beat_key])
    if lease >= HEARTBEATS_PER_LEASE * beat:
        return
    if lease_key in where:
        errors.append(
            f"{where[lease_key].where}: {lease_key}: {lease:g} is less than twice "
            f"{beat_key} ({beat:g}); expected a number >= {HEARTBEATS_PER_LEASE * beat:g}"
        )
    elif beat_key in where:
        errors.append(
            f"{where[beat_key].where}: {beat_key}: {beat:g} is more than half of "
            f"{lease_key} ({lease:g}); expected a number <= {lease / HEARTBEATS_PER_LEASE:g}"
        )
