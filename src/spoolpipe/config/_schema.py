"""Load, type and validate spoolpipe's configuration.

Configuration lives in Java ``.properties`` files inside the shared repository
directory ``REPO``:

* ``REPO/spoolpipe.properties`` -- shared by every worker (optional);
* ``REPO/workers/<worker-id>.properties`` -- per-worker overrides (optional).

Later keys win within a file and the per-worker file wins over the shared one.
Every key is described exactly once, in :data:`OPTIONS`; validation, the
commented defaults file written by ``spoolpipe init`` (:func:`render_defaults`)
and the documentation table (:func:`describe_keys`) are all derived from it.

This module is pure: it reads files and returns values, it starts no threads
and never writes anything.

Files are decoded as UTF-8 (an initial byte-order mark is ignored); a file that
is not valid UTF-8 is decoded as ISO-8859-1, the encoding the ``.properties``
specification prescribes. ``\\uXXXX`` escapes work in both cases.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

import javaproperties

from .. import circuit
from ..activity import NAME_PATTERN, InvalidActivity, is_valid_name, parse_document
from ..builtins import specs as builtin_specs
from ..schedule import rules as schedule_rules
from ..storable import encode

__all__ = [
    "OPTIONS",
    "SHARED_FILE",
    "TYPE_PATTERN",
    "WORKERS_DIR",
    "BoolKind",
    "ChoiceKind",
    "ConfigError",
    "CronKind",
    "DurationKind",
    "ExceptionNamesKind",
    "Family",
    "FloatKind",
    "HostKind",
    "IntKind",
    "JsonObjectKind",
    "KeepKind",
    "Kind",
    "Loaded",
    "ModuleListKind",
    "Option",
    "PathListKind",
    "PortKind",
    "Settings",
    "StringKind",
    "SuffixFileKind",
    "TypeNameKind",
    "WorkerListKind",
    "config_files",
    "describe_keys",
    "load",
    "parse_duration",
    "render_defaults",
]

#: Name of the shared configuration file, directly inside the repository.
SHARED_FILE = "spoolpipe.properties"
#: Directory (inside the repository) holding ``<worker-id>.properties`` files.
WORKERS_DIR = "workers"
#: Regular expression (for ``re.fullmatch``) that every activity type name matches.
TYPE_PATTERN = NAME_PATTERN

_TYPE_RE = re.compile(TYPE_PATTERN)
_EOL_RE = re.compile(r"\r\n?|\n")  # the line terminators javaproperties splits on

Value = int | float | bool | str | tuple[str, ...] | tuple[Path, ...] | tuple[int, ...] | Path | None

K = TypeVar("K")
V = TypeVar("V")


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


class _Invalid(Exception):
    """A value failed validation; the argument says what is wrong with it."""


# --------------------------------------------------------------------------
# Kinds of values
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """How a raw string value is validated and converted."""

    @property
    def expected(self) -> str:
        """What a valid value looks like, for error messages and docs."""
        raise NotImplementedError

    def parse(self, raw: str, base: Path) -> Value:
        """Convert ``raw``; raise ``_Invalid`` when it is not acceptable.

        ``base`` is the directory of the file that defined the value, for
        resolving relative paths.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class IntKind(Kind):
    minimum: int

    @property
    def expected(self) -> str:
        return f"an integer >= {self.minimum}"

    def parse(self, raw: str, base: Path) -> int:
        text = raw.strip()
        try:
            number = int(text)
        except ValueError:
            raise _Invalid(f"{text!r} is not an integer") from None
        if number < self.minimum:
            raise _Invalid(f"{text!r} is out of range")
        return number


@dataclass(frozen=True)
class FloatKind(Kind):
    minimum: float
    #: True when ``minimum`` itself is not allowed (``> minimum``).
    exclusive: bool = False
    maximum: float | None = None

    @property
    def expected(self) -> str:
        if self.maximum is not None:
            return f"a number between {self.minimum:g} and {self.maximum:g}"
        return f"a number {'>' if self.exclusive else '>='} {self.minimum:g}"

    def parse(self, raw: str, base: Path) -> float:
        text = raw.strip()
        try:
            number = float(text)
        except ValueError:
            raise _Invalid(f"{text!r} is not a number") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise _Invalid(f"{text!r} is not a finite number")
        too_low = number <= self.minimum if self.exclusive else number < self.minimum
        if too_low or (self.maximum is not None and number > self.maximum):
            raise _Invalid(f"{text!r} is out of range")
        return number


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


@dataclass(frozen=True)
class BoolKind(Kind):
    @property
    def expected(self) -> str:
        return "a boolean (true/false, yes/no, on/off or 1/0)"

    def parse(self, raw: str, base: Path) -> bool:
        text = raw.strip()
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise _Invalid(f"{text!r} is not a boolean")


@dataclass(frozen=True)
class ChoiceKind(Kind):
    """One of a fixed set of words, matched case-insensitively.

    The value is normalised to the spelling given in ``choices``.
    """

    choices: tuple[str, ...]

    @property
    def expected(self) -> str:
        return "one of " + ", ".join(self.choices)

    def parse(self, raw: str, base: Path) -> str:
        text = raw.strip()
        for choice in self.choices:
            if text.lower() == choice.lower():
                return choice
        raise _Invalid(f"{text!r} is not a valid choice")


def _split_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


@dataclass(frozen=True)
class ModuleListKind(Kind):
    """Comma-separated dotted Python module names."""

    @property
    def expected(self) -> str:
        return "comma-separated Python module names"

    def parse(self, raw: str, base: Path) -> tuple[str, ...]:
        modules = _split_list(raw)
        for module in modules:
            if not all(part.isidentifier() for part in module.split(".")):
                raise _Invalid(f"{module!r} is not a Python module name")
        return tuple(modules)


@dataclass(frozen=True)
class PathListKind(Kind):
    """Comma-separated directories, resolved against the defining file's directory.

    Resolution is lexical (``os.path.abspath``): symlinks are not followed and
    the directories need not exist when the configuration is loaded.
    """

    @property
    def expected(self) -> str:
        return "comma-separated directories"

    def parse(self, raw: str, base: Path) -> tuple[Path, ...]:
        items = _split_list(raw)
        for item in items:
            if "\0" in item:
                raise _Invalid(f"{item!r} contains a NUL character")
        return tuple(Path(os.path.abspath(base / item)) for item in items)


@dataclass(frozen=True)
class TypeNameKind(Kind):
    """An activity type name (see :data:`TYPE_PATTERN`)."""

    allow_empty: bool = False

    @property
    def expected(self) -> str:
        text = f"an activity type name matching {TYPE_PATTERN}"
        return text + ", or nothing to disable" if self.allow_empty else text

    def parse(self, raw: str, base: Path) -> str:
        text = raw.strip()
        if text == "" and self.allow_empty:
            return text
        if not _TYPE_RE.fullmatch(text):
            raise _Invalid(f"{text!r} is not a valid activity type name")
        return text


@dataclass(frozen=True)
class StringKind(Kind):
    """Any string, kept verbatim."""

    @property
    def expected(self) -> str:
        return "any text"

    def parse(self, raw: str, base: Path) -> str:
        return raw


@dataclass(frozen=True)
class ExceptionNamesKind(Kind):
    """Comma-separated exception class names: ``OSError``, ``myproject.errors.Transient``."""

    @property
    def expected(self) -> str:
        return "comma-separated exception class names (module.QualifiedName, or a built-in's name)"

    def parse(self, raw: str, base: Path) -> tuple[str, ...]:
        names = _split_list(raw)
        for name in names:
            if not all(part.isidentifier() for part in name.split(".")):
                raise _Invalid(f"{name!r} is not a Python class name")
        return tuple(names)


# Kinds of the metrics keys


@dataclass(frozen=True)
class SuffixFileKind(Kind):
    """A file whose name ends in ``suffix``, resolved against the defining file's directory (lexically,
    as :class:`PathListKind`); empty: none (``None``)."""

    suffix: str

    @property
    def expected(self) -> str:
        return f"a file name ending in {self.suffix}, or nothing for none"

    def parse(self, raw: str, base: Path) -> Path | None:
        text = raw.strip()
        if text == "":
            return None
        name = os.path.basename(text)
        if "\0" in text:
            raise _Invalid(f"{text!r} contains a NUL character")
        if not name.endswith(self.suffix) or name.startswith("."):
            raise _Invalid(f"{text!r} does not name a file ending in {self.suffix}")
        return Path(os.path.abspath(base / text))


@dataclass(frozen=True)
class PortKind(Kind):
    """A TCP port; 0 or empty: none."""

    @property
    def expected(self) -> str:
        return "a TCP port from 1 to 65535, or 0 or nothing for none"

    def parse(self, raw: str, base: Path) -> int:
        text = raw.strip()
        if text == "":
            return 0
        if not text.isascii() or not text.isdigit():
            raise _Invalid(f"{text!r} is not a port number")
        if int(text) > 65535:
            raise _Invalid(f"{text!r} is out of range")
        return int(text)


_HOST_NAME_RE = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


@dataclass(frozen=True)
class HostKind(Kind):
    """An IP address or a host name to listen on."""

    @property
    def expected(self) -> str:
        return "an IP address or a host name"

    def parse(self, raw: str, base: Path) -> str:
        text = raw.strip()
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            pass
        if len(text) > 253 or not _HOST_NAME_RE.fullmatch(text):
            raise _Invalid(f"{text!r} is not an IP address or a host name")
        return text


_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([smhd]?)", re.IGNORECASE)
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_EXPECTED = "a duration (30s, 15m, 2h, 1d; a plain number is seconds)"


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a plain number of seconds, or a number followed by s, m, h or d.

    Raises ``ValueError`` for anything else (negative numbers included).
    """
    m = _DURATION_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text.strip()!r} is not a duration")
    seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
    if not math.isfinite(seconds):
        raise ValueError(f"{text.strip()!r} is too long a duration")
    return seconds


@dataclass(frozen=True)
class DurationKind(Kind):
    """A duration as :func:`parse_duration` reads it, in seconds."""

    minimum: float = 0.0
    #: True when ``minimum`` itself is not allowed (``> minimum``).
    exclusive: bool = False

    @property
    def expected(self) -> str:
        return f"{_DURATION_EXPECTED} {'>' if self.exclusive else '>='} {self.minimum:g}s"

    def parse(self, raw: str, base: Path) -> float:
        try:
            seconds = parse_duration(raw)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
        if seconds < self.minimum or (self.exclusive and seconds == self.minimum):
            raise _Invalid(f"{raw.strip()!r} is out of range")
        return seconds


@dataclass(frozen=True)
class KeepKind(Kind):
    """How long to keep something: a duration above 0, or ``forever`` (``math.inf`` seconds)."""

    @property
    def expected(self) -> str:
        return f"{_DURATION_EXPECTED} > 0s, or forever"

    def parse(self, raw: str, base: Path) -> float:
        if raw.strip().lower() == "forever":
            return float("inf")
        return DurationKind(0.0, exclusive=True).parse(raw, base)


@dataclass(frozen=True)
class CronKind(Kind):
    """A five-field cron expression or an ``@`` name, checked with ``croniter`` (imported only here)."""

    @property
    def expected(self) -> str:
        return (
            "a five-field cron expression (minute hour day-of-month month day-of-week, in UTC) or one of "
            + ", ".join(schedule_rules.CRON_NICKNAMES)
        )

    def parse(self, raw: str, base: Path) -> str:
        try:
            return schedule_rules.parse_cron(raw).text
        except schedule_rules.InvalidRule as exc:
            raise _Invalid(str(exc)) from None


@dataclass(frozen=True)
class JsonObjectKind(Kind):
    """A JSON object (RFC 8259, as in activity files), kept as canonical JSON text."""

    @property
    def expected(self) -> str:
        return 'a JSON object, e.g. {"folder": "incoming"}'

    def parse(self, raw: str, base: Path) -> str:
        try:
            doc = parse_document(raw.strip().encode("utf-8", "surrogatepass"))
        except InvalidActivity as exc:
            raise _Invalid(
                exc.reason.replace("top level is", "the value is").replace(", expected an object", "")
            ) from None
        return schedule_rules.canonical_data(doc)


@dataclass(frozen=True)
class WorkerListKind(Kind):
    """Comma-separated worker ids."""

    @property
    def expected(self) -> str:
        return f"comma-separated worker ids matching {TYPE_PATTERN}"

    def parse(self, raw: str, base: Path) -> tuple[str, ...]:
        ids = _split_list(raw)
        for worker_id in ids:
            if not is_valid_name(worker_id):
                raise _Invalid(f"{worker_id!r} is not a valid worker id")
        return tuple(dict.fromkeys(ids))


# -- kinds of the built-in processors' keys (command.<name>.*, http.<name>.*) --


@dataclass(frozen=True)
class ArgvKind(Kind):
    """A JSON array of strings: a program, then argument templates with ``{field}`` placeholders."""

    @property
    def expected(self) -> str:
        return (
            'a JSON array of strings, the program first, e.g. ["/usr/bin/rsync", "-a", "--", "{source}"]; '
            "{field} is replaced by that data field, {{ and }} are literal braces"
        )

    def parse(self, raw: str, base: Path) -> tuple[str, ...]:
        try:
            doc = json.loads(raw)
        except ValueError:
            raise _Invalid(f"{raw.strip()!r} is not JSON") from None
        if not isinstance(doc, list) or not all(isinstance(item, str) for item in doc):
            raise _Invalid("the value is not an array of strings")
        try:
            builtin_specs.check_argv(doc)
        except builtin_specs.InvalidDefinition as exc:
            raise _Invalid(str(exc)) from None
        return tuple(doc)


@dataclass(frozen=True)
class ExitCodesKind(Kind):
    """Comma-separated process exit codes."""

    @property
    def expected(self) -> str:
        return "comma-separated exit codes from 0 to 255, or nothing"

    def parse(self, raw: str, base: Path) -> tuple[int, ...]:
        codes = []
        for item in _split_list(raw):
            if not item.isdigit() or int(item) > 255:
                raise _Invalid(f"{item!r} is not an exit code")
            codes.append(int(item))
        return tuple(dict.fromkeys(codes))


@dataclass(frozen=True)
class EnvNamesKind(Kind):
    """Comma-separated environment variable names."""

    @property
    def expected(self) -> str:
        return "comma-separated environment variable names, or nothing"

    def parse(self, raw: str, base: Path) -> tuple[str, ...]:
        names = _split_list(raw)
        for name in names:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise _Invalid(f"{name!r} is not an environment variable name")
        return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class DirectoryKind(Kind):
    """One directory, resolved against the defining file's directory (lexically, like PathListKind)."""

    @property
    def expected(self) -> str:
        return "a directory"

    def parse(self, raw: str, base: Path) -> Path:
        text = raw.strip()
        if not text or "\0" in text:
            raise _Invalid(f"{text!r} is not a directory name")
        return Path(os.path.abspath(base / text))


@dataclass(frozen=True)
class UrlKind(Kind):
    @property
    def expected(self) -> str:
        return "an http:// or https:// URL"

    def parse(self, raw: str, base: Path) -> str:
        try:
            return builtin_specs.check_url(raw)
        except builtin_specs.InvalidDefinition as exc:
            raise _Invalid(str(exc)) from None


@dataclass(frozen=True)
class HeadersKind(Kind):
    """A JSON object of HTTP header names to string values, kept as JSON text."""

    @property
    def expected(self) -> str:
        return 'a JSON object of header names to strings, e.g. {"Authorization": "Bearer 123"}'

    def parse(self, raw: str, base: Path) -> str:
        try:
            return json.dumps(dict(builtin_specs.parse_headers(raw)))
        except builtin_specs.InvalidDefinition as exc:
            raise _Invalid(str(exc)) from None


# --------------------------------------------------------------------------
# The schema
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One configuration key.

    A key containing ``<...>`` (``concurrency.<type>``, ``timeout.<type>``,
    ``custom.<name>``) is a pattern standing for a family of keys; it has no
    default (``default is None``) and ``example`` holds a sample line.
    """

    key: str
    kind: Kind
    #: The default as it is written in a properties file; None for patterns.
    default: str | None
    description: str
    example: str = ""

    @property
    def is_pattern(self) -> bool:
        return self.default is None

    @property
    def prefix(self) -> str:
        """For a pattern key, the literal part before the placeholder."""
        return self.key.split("<", 1)[0]

    @property
    def field(self) -> str:
        """For a key with a placeholder in the middle (``schedule.<name>.cron``), what follows it
        (``cron``); "" for every other key."""
        _, _, rest = self.key.partition(">.")
        return rest if "<" in self.key else ""

    @property
    def group(self) -> str:
        return self.key.split(".", 1)[0]


@dataclass(frozen=True)
class Family:
    """Keys with a placeholder in the middle, ``PREFIX<name>.FIELD``: one definition per name.

    The name is what lies between the prefix and the last dot and must match
    ``name_pattern``; each field is an :class:`Option` of key ``PREFIX<placeholder>.FIELD``
    in :data:`OPTIONS`. An unknown field or a bad name is an error, not a warning. With
    ``shared_only`` the keys may be set only in the shared file.
    """

    prefix: str
    placeholder: str
    name_pattern: str
    shared_only: bool = False

    def fields(self) -> dict[str, Option]:
        return {opt.field: opt for opt in OPTIONS if opt.field and opt.prefix == self.prefix}


_TYPE_NOTE = f"Type names match {TYPE_PATTERN}."

#: Every configuration key, in the order they are documented.
OPTIONS: tuple[Option, ...] = (
    Option(
        "processors",
        ModuleListKind(),
        "",
        "Comma-separated Python modules imported by every pool process; importing "
        "them registers their processors (for example myproject.processors).",
    ),
    Option(
        "processors.path",
        PathListKind(),
        "",
        "Comma-separated directories added to sys.path before the processor modules "
        "are imported. Relative paths are resolved against the directory of the file "
        "that sets this key: REPO for the shared file, REPO/workers for a "
        "per-worker file.",
    ),
    Option(
        "pool.size",
        IntKind(0),
        "0",
        "Number of worker processes in this daemon's pool. 0 means one per CPU available to the daemon.",
    ),
    Option(
        "concurrency.default",
        IntKind(0),
        "0",
        "Maximum number of concurrently running activities of a type that has no "
        "concurrency key of its own. 0 means the pool size.",
    ),
    Option(
        "concurrency.<type>",
        IntKind(0),
        None,
        "Maximum number of concurrently running activities of the given type on this "
        "worker, overriding concurrency.default. 0 means this worker never takes "
        f"activities of that type (useful in a per-worker file). {_TYPE_NOTE}",
        example="concurrency.image.resize = 2",
    ),
    Option(
        "timeout.seconds",
        FloatKind(0, exclusive=True),
        "300",
        "Wall-clock limit, in seconds, for running one activity.",
    ),
    Option(
        "timeout.<type>",
        FloatKind(0, exclusive=True),
        None,
        "Wall-clock limit, in seconds, for activities of the given type, overriding "
        f"timeout.seconds. {_TYPE_NOTE}",
        example="timeout.video.transcode = 3600",
    ),
    Option(
        "retry.max-attempts",
        IntKind(1),
        "5",
        "Number of attempts, including attempts that crashed their worker process, "
        "before an activity is failed. 1 disables retries.",
    ),
    Option(
        "retry.backoff-seconds",
        FloatKind(0),
        "2.0",
        "Delay, in seconds, before the second attempt of an activity; the delay "
        "doubles with every further attempt.",
    ),
    Option(
        "retry.backoff-max-seconds",
        FloatKind(0),
        "600.0",
        "Upper bound, in seconds, on the delay between attempts.",
    ),
    Option(
        "retry.jitter",
        FloatKind(0, maximum=1),
        "0.25",
        "Random fraction applied to each delay: 0.25 multiplies it by a random "
        "factor between 0.75 and 1.25. 0 disables jitter.",
    ),
    Option(
        "retry.max-attempts.<type>",
        IntKind(1),
        None,
        f"Number of attempts for activities of the given type, overriding retry.max-attempts. {_TYPE_NOTE}",
        example="retry.max-attempts.mail.send = 10",
    ),
    Option(
        "retry.backoff-seconds.<type>",
        FloatKind(0),
        None,
        "Delay, in seconds, before the second attempt of an activity of the given type, overriding "
        f"retry.backoff-seconds (it doubles in the same way). {_TYPE_NOTE}",
        example="retry.backoff-seconds.mail.send = 30",
    ),
    Option(
        "retry.on.<type>",
        ExceptionNamesKind(),
        None,
        "The exceptions that are retried for activities of the given type; any other exception fails "
        "the activity at once. A name matches when the exception's class or one of its base classes "
        "has that name: module and qualified name (myproject.errors.Transient) or, for a built-in, "
        "its bare name (OSError also matches FileNotFoundError). Wins over the processor's retry_on. "
        "Empty: not set (the processor's retry_on applies, or else every exception is retried). "
        f"{_TYPE_NOTE}",
        example="retry.on.mail.send = OSError, smtplib.SMTPServerDisconnected",
    ),
    Option(
        "claims.lock",
        ChoiceKind(("auto", "flock", "lease", "strict")),
        "auto",
        "How a worker makes sure no other worker runs an activity it has claimed: "
        "flock (file locks), lease (claims that other workers take over once their "
        "owner has been silent for claims.lease-seconds), strict (both), or auto "
        "(chosen from the filesystem).",
    ),
    Option(
        "claims.lease-seconds",
        FloatKind(0, exclusive=True),
        "30.0",
        "In lease mode, how long a worker may go silent before other workers take "
        "over its claims. Must be at least twice heartbeat.interval-seconds.",
    ),
    Option(
        "scan.interval-seconds",
        FloatKind(0, exclusive=True),
        "2.0",
        "Period, in seconds, of the full rescan of the repository. The rescan always "
        "runs: on network filesystems it is the only way to see files written by "
        "other machines.",
    ),
    Option(
        "scan.watch",
        BoolKind(),
        "true",
        "Listen to inotify: a file moved or written into inbox/ on this machine is looked at "
        "at once, not at the next periodic rescan (files other machines write are found by the rescan).",
    ),
    Option(
        "inbox.settle-seconds",
        FloatKind(0),
        "5.0",
        "An activity file that does not parse is presumed to still be being written, and is "
        "left alone, until it is this many seconds old by the shared file system's clock and "
        "has stayed unchanged this long while a worker watched it.",
    ),
    Option(
        "limits.activity-bytes",
        IntKind(2),
        "1048576",
        "Activity files larger than this many bytes are invalid.",
    ),
    Option(
        "limits.result-bytes",
        IntKind(4),
        "1048576",
        "Largest result, in bytes of compact JSON, a processor may return; a larger result "
        "fails its activity for good.",
    ),
    Option(
        "shutdown.grace-seconds",
        FloatKind(0),
        "30.0",
        "On SIGTERM, how long, in seconds, running activities may continue in order "
        "to finish before they are stopped and released to other workers.",
    ),
    Option(
        "heartbeat.interval-seconds",
        FloatKind(0, exclusive=True),
        "5.0",
        "How often, in seconds, a worker records that it is alive.",
    ),
    Option(
        "failures.handler",
        TypeNameKind(allow_empty=True),
        "spoolpipe.failure",
        "Type of the activity created for every activity that has failed for good, "
        "so that a processor can report or clean up. Empty disables it.",
    ),
    Option(
        "durability.fsync",
        BoolKind(),
        "true",
        "Flush files and directories to disk (fsync) after writing them, so that "
        "state survives a machine crash. Turning it off is faster but less safe.",
    ),
    Option(
        "log.level",
        ChoiceKind(("DEBUG", "INFO", "WARNING", "ERROR")),
        "INFO",
        "Logging level.",
    ),
    Option(
        "log.max-bytes",
        IntKind(0),
        "10485760",
        "Size in bytes at which the worker log, REPO/logs/workers/ID.log, is rotated: it becomes "
        "ID.log.1 (ID.log.1 becomes ID.log.2, and so on) and a new ID.log is started. 0 never "
        "rotates. Takes effect at restart.",
    ),
    Option(
        "log.backups",
        IntKind(1),
        "5",
        "How many rotated worker logs (ID.log.1 to ID.log.N) are kept; the oldest is deleted. "
        "Takes effect at restart.",
    ),
    Option(
        "images.roots",
        PathListKind(),
        "",
        "Comma-separated directories that image steps may read from and write to. "
        "Relative paths are resolved against the directory of the file that sets "
        "this key.",
    ),
    Option(
        "images.max-megapixels",
        FloatKind(0),
        "0",
        "Cap on the decoded megapixels held at the same time by all image work on "
        "this worker. 0 means automatic.",
    ),
    Option(
        "metrics.file",
        SuffixFileKind(".prom"),
        "",
        "File this worker writes its metrics to, in the Prometheus text format, at every "
        "heartbeat (a temp file renamed over it: never seen half-written), for node_exporter's "
        "textfile collector. Relative paths are resolved against the directory of the file "
        "that sets this key; use a path on local disk, one per worker (set it in "
        "REPO/workers/ID.properties when several workers share a machine). Empty: no file.",
    ),
    Option(
        "metrics.port",
        PortKind(),
        "0",
        "TCP port on which this worker serves its metrics over HTTP (GET /metrics) in the "
        "Prometheus text format; one port per worker on a machine. 0 or empty: not served.",
    ),
    Option(
        "metrics.host",
        HostKind(),
        "127.0.0.1",
        "Address metrics.port listens on: the default serves this machine only; 0.0.0.0 "
        "or :: serves every network.",
    ),
    Option(
        "processor.<type>.<key>",
        StringKind(),
        None,
        "A setting for the processor of the given type: it reads it as ctx.options[key], or typed with "
        "ctx.option(key, int, default). The key is the part after the last dot (letters, digits, _ "
        "and -); the type is everything between processor. and that dot. Values are checked by the "
        f"processor when it reads them (a bad one fails that activity). {_TYPE_NOTE}",
        example="processor.image.resize.quality = 80",
    ),
    Option(
        "retention.done",
        KeepKind(),
        "forever",
        "How long records in done/ are kept, judged by each record's modification time on the "
        "shared file system's clock; older ones are archived or deleted (retention.archive). "
        "forever keeps them. A purged id may be used again: a duplicate of it then runs.",
    ),
    Option(
        "retention.failed",
        KeepKind(),
        "forever",
        "How long records in failed/ are kept (as retention.done); forever keeps them.",
    ),
    Option(
        "retention.invalid",
        KeepKind(),
        "forever",
        "How long entries in invalid/ are kept (as retention.done); forever keeps them.",
    ),
    Option(
        "retention.logs",
        KeepKind(),
        "forever",
        "How long attempt logs in logs/activities/ are kept (as retention.done); forever keeps "
        "them. The logs of an activity that is queued or running are always kept.",
    ),
    Option(
        "retention.archive",
        BoolKind(),
        "true",
        "true: expired entries are moved into compressed archives, "
        "archive/STATE-YYYY-MM-DD.tar.gz (one per state and UTC day of the entry's "
        "modification time); false: they are deleted.",
    ),
    Option(
        "retention.interval",
        DurationKind(0.0, exclusive=True),
        "1h",
        "How often expired entries are looked for. One worker at a time does it "
        "(locks/~retention.lock), in a process of its own (spoolpipe purge --scheduled).",
    ),
    Option(
        "schedule.<name>.cron",
        CronKind(),
        None,
        "When the schedule <name> fires: a five-field cron expression evaluated in UTC "
        "(minute hour day-of-month month day-of-week), or @hourly, @daily, @weekly, @monthly, "
        "@yearly, @midnight. Set exactly one of cron and every. Names match "
        f"{schedule_rules.NAME_PATTERN}; schedule keys are read only from the shared file.",
        example="schedule.nightly.cron = 0 3 * * *",
    ),
    Option(
        "schedule.<name>.every",
        DurationKind(1),
        None,
        "Fire the schedule <name> every so long, a whole number of seconds up to 366d (30s, 15m, 2h, "
        "1d): at the "
        "multiples of it since 1970-01-01T00:00:00Z. Set exactly one of cron and every.",
        example="schedule.pulse.every = 15m\nschedule.pulse.type = reports.pulse",
    ),
    Option(
        "schedule.<name>.type",
        TypeNameKind(),
        None,
        "Type of the activity each tick of the schedule <name> becomes (required). Its id is "
        "schedule.<name>.<tick as YYYYMMDDTHHMMSSZ>.",
        example="schedule.nightly.type = reports.nightly",
    ),
    Option(
        "schedule.<name>.data",
        JsonObjectKind(),
        None,
        "The data of each activity of the schedule <name> (default {}), to which spoolpipe adds "
        f"{schedule_rules.TICK_FIELD}, the tick's time (a key of that name here is an error).",
        example='schedule.nightly.data = {"format": "pdf"}',
    ),
    Option(
        "schedule.<name>.workers",
        WorkerListKind(),
        None,
        "Comma-separated ids of the workers allowed to fire the schedule <name> (any worker "
        "may run the activities). Default: any worker.",
        example="schedule.nightly.workers = nas, backup",
    ),
    Option(
        "schedule.<name>.catch-up",
        ChoiceKind(schedule_rules.CATCH_UP_CHOICES),
        None,
        "Ticks of the schedule <name> that came due while no worker ran: none skips them, latest "
        "(the default) fires the most recent one once, all fires each of them, at most "
        f"{schedule_rules.CATCH_UP_CAP} (the most recent; a warning names the rule when older ones "
        "are skipped).",
        example="schedule.nightly.catch-up = latest",
    ),
    Option(
        "circuit.<type>.failures",
        IntKind(1),
        None,
        "Circuit breaker of the activity type <type> on this worker: once this many of its attempts "
        "ended in failed or retry (a timeout and a killed pool process count; a skip does not) within "
        "circuit.<type>.window-seconds, the worker claims no activity of that type for "
        "circuit.<type>.cool-down-seconds (they wait in the inbox, nothing is failed), then lets one "
        "through as a probe: its success closes the circuit, its failure opens it for another "
        "cool-down. Setting it turns the circuit on; each worker has its own circuits. "
        "Removing it closes the circuit. " + _TYPE_NOTE,
        example="circuit.mail.send.failures = 5",
    ),
    Option(
        "circuit.<type>.window-seconds",
        DurationKind(1),
        None,
        "How far back the failures of circuit.<type>.failures are counted (default "
        f"{circuit.DEFAULT_WINDOW_SECONDS:g}s). Only with circuit.<type>.failures.",
        example="circuit.mail.send.window-seconds = 2m",
    ),
    Option(
        "circuit.<type>.cool-down-seconds",
        DurationKind(1),
        None,
        "How long an open circuit claims no activity of <type> before it lets a probe through "
        f"(default {circuit.DEFAULT_COOL_DOWN_SECONDS:g}s). Only with circuit.<type>.failures.",
        example="circuit.mail.send.cool-down-seconds = 5m",
    ),
    Option(
        "command.<name>.argv",
        ArgvKind(),
        None,
        "The program a command activity naming <name> runs (data field command), as a JSON array: the "
        "program first (never taken from data), then its arguments. {field} in an argument is replaced by "
        "that field of the activity's data (a string or a number), and each argument stays one argument "
        "whatever the value holds: nothing goes through a shell. Required for each command. Names match "
        f"{builtin_specs.NAME_PATTERN}.",
        example='command.backup.argv = ["/usr/bin/rsync", "-a", "--", "{source}", "/backup/"]',
    ),
    Option(
        "command.<name>.cwd",
        DirectoryKind(),
        None,
        "Working directory of the command <name>. Default: the repository folder.",
        example="command.backup.cwd = /srv/data",
    ),
    Option(
        "command.<name>.timeout",
        DurationKind(0.1),
        None,
        "Longest the command <name> may run (30s, 15m, 2h): then its whole process group is killed and the "
        "activity is retried. Default, and never more than: timeout.command less one second.",
        example="command.backup.timeout = 10m",
    ),
    Option(
        "command.<name>.env",
        EnvNamesKind(),
        None,
        "Comma-separated names of the worker's environment variables passed to the command <name>; it "
        "gets no others. Default: PATH.",
        example="command.backup.env = PATH, HOME, LANG",
    ),
    Option(
        "command.<name>.ok-exit-codes",
        ExitCodesKind(),
        None,
        "Exit codes of the command <name> that mean done. Default: 0.",
        example="command.backup.ok-exit-codes = 0, 24",
    ),
    Option(
        "command.<name>.retry-exit-codes",
        ExitCodesKind(),
        None,
        "Exit codes of the command <name> that mean try again later (per retry.*); any other code not in "
        "ok-exit-codes fails the activity for good. Default: none.",
        example="command.backup.retry-exit-codes = 10, 12",
    ),
    Option(
        "http.<name>.url",
        UrlKind(),
        None,
        "Where an http.request activity naming <name> (data field endpoint; default: the endpoint named "
        "default) sends its data as a JSON body. Required for each endpoint. Redirects are not followed. "
        f"Names match {builtin_specs.NAME_PATTERN}.",
        example="http.alerts.url = https://chat.example.com/hooks/ops",
    ),
    Option(
        "http.<name>.method",
        ChoiceKind(builtin_specs.METHODS),
        None,
        "HTTP method of the endpoint <name> (GET sends no body). Default: POST.",
        example="http.alerts.method = POST",
    ),
    Option(
        "http.<name>.headers",
        HeadersKind(),
        None,
        "Extra request headers of the endpoint <name>, as a JSON object. Content-Type defaults to "
        "application/json.",
        example='http.alerts.headers = {"Authorization": "Bearer 123"}',
    ),
    Option(
        "http.<name>.timeout",
        DurationKind(0.1),
        None,
        "Longest a request to the endpoint <name> may take (connecting and reading) before it is retried. "
        "Default: 30s.",
        example="http.alerts.timeout = 10s",
    ),
    Option(
        "files.roots",
        PathListKind(),
        "",
        "Comma-separated directories that the files.move, files.copy, files.delete and files.archive "
        "activities may read from and write to; relative paths in their data start at the first. "
        "Relative paths here are resolved against the directory of the file that sets this key.",
    ),
    Option(
        "custom.<name>",
        StringKind(),
        None,
        "Free-form settings shared by all processors: any key starting with custom. and "
        "any value. They are not validated; processors find them in ctx.properties (Settings.custom), "
        "without the custom. prefix. For a setting of one processor, use processor.<type>.<key>.",
        example="custom.thumbnail.quality = 85",
    ),
)

_STATIC: dict[str, Option] = {opt.key: opt for opt in OPTIONS if not opt.is_pattern}
_PATTERNS: dict[str, Option] = {opt.prefix: opt for opt in OPTIONS if opt.is_pattern and not opt.field}
#: Every family of keys with a placeholder in the middle, by prefix.
FAMILIES: dict[str, Family] = {
    "schedule.": Family("schedule.", "name", schedule_rules.NAME_PATTERN, shared_only=True),
    "circuit.": Family("circuit.", "type", TYPE_PATTERN),
    "command.": Family("command.", "name", builtin_specs.NAME_PATTERN),
    "http.": Family("http.", "name", builtin_specs.NAME_PATTERN),
}
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

_GROUP_TITLES = {
    "processors": "Processors",
    "pool": "Worker pool",
    "concurrency": "Concurrency limits",
    "timeout": "Timeouts",
    "retry": "Retries",
    "claims": "Claiming activities",
    "scan": "Scanning the repository",
    "inbox": "Incoming activities",
    "limits": "Limits",
    "shutdown": "Shutdown",
    "heartbeat": "Heartbeats",
    "failures": "Failed activities",
    "durability": "Durability",
    "log": "Logging",
    "images": "Image processing",
    "metrics": "Metrics (Prometheus)",
    "processor": "Per-processor settings",
    "retention": "Cleaning up",
    "schedule": "Schedules",
    "circuit": "Circuit breakers",
    "command": "Built-in processor: command",
    "http": "Built-in processor: http.request",
    "files": "Built-in processors: files.*",
    "custom": "Custom settings for processors",
}


def _parse_default(opt: Option) -> Value:
    assert opt.default is not None
    return opt.kind.parse(opt.default, Path("/"))


_DEFAULTS: dict[str, Value] = {key: _parse_default(opt) for key, opt in _STATIC.items()}


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


class _FrozenMap(Mapping[K, V]):
    """A read-only, hashable, picklable mapping."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[K, V] | None = None) -> None:
        self._data: dict[K, V] = dict(data or {})

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return repr(self._data)

    def __reduce__(self) -> tuple[type[_FrozenMap[K, V]], tuple[dict[K, V]]]:
        return (type(self), (self._data,))


_NO_OPTIONS: Mapping[str, str] = _FrozenMap()


@dataclass(frozen=True)
class Settings:
    """The effective, validated configuration of one worker."""

    processors: tuple[str, ...]
    #: Absolute directories for sys.path.
    processors_path: tuple[Path, ...]
    #: Already resolved: never 0.
    pool_size: int
    #: Already resolved: never 0.
    concurrency_default: int
    #: Per-type limits from ``concurrency.<type>``; 0 means "never on this worker".
    concurrency: Mapping[str, int]
    timeout_seconds: float
    #: Per-type limits from ``timeout.<type>``.
    timeouts: Mapping[str, float]
    retry_max_attempts: int
    retry_backoff_seconds: float
    retry_backoff_max_seconds: float
    retry_jitter: float
    claims_lock: str
    claims_lease_seconds: float
    scan_interval_seconds: float
    scan_watch: bool
    inbox_settle_seconds: float
    limits_activity_bytes: int
    limits_result_bytes: int
    shutdown_grace_seconds: float
    heartbeat_interval_seconds: float
    #: Activity type created for failed activities; "" when disabled.
    failures_handler: str
    durability_fsync: bool
    log_level: str
    #: 0: never rotate the worker log.
    log_max_bytes: int
    log_backups: int
    #: Absolute directories.
    images_roots: tuple[Path, ...]
    #: 0 means automatic.
    images_max_megapixels: float
    #: Absolute; None: no metrics file.
    metrics_file: Path | None
    #: 0: no metrics served.
    metrics_port: int
    metrics_host: str
    #: Seconds to keep entries of each state; ``math.inf`` for forever.
    retention_done: float
    retention_failed: float
    retention_invalid: float
    retention_logs: float
    retention_archive: bool
    retention_interval: float
    #: ``command.<name>.*`` definitions, by name.
    commands: Mapping[str, builtin_specs.Command]
    #: ``http.<name>.*`` definitions, by name.
    http_endpoints: Mapping[str, builtin_specs.Endpoint]
    #: Absolute directories the ``files.*`` activities are confined to.
    files_roots: tuple[Path, ...]
    #: ``custom.*`` keys, without the ``custom.`` prefix.
    custom: Mapping[str, str]
    #: ``schedule.<name>.*`` rules, by name.
    schedules: Mapping[str, schedule_rules.Rule]
    #: ``circuit.<type>.*`` rules, by type.
    circuits: Mapping[str, circuit.Rule]
    #: The configuration files that were actually read, in precedence order.
    sources: tuple[Path, ...]
    #: Per-type ``retry.max-attempts.<type>``.
    max_attempts: Mapping[str, int] = _FrozenMap()
    #: Per-type ``retry.backoff-seconds.<type>``.
    backoffs: Mapping[str, float] = _FrozenMap()
    #: Per-type ``retry.on.<type>``: the exception names retried (an empty value is not kept).
    retry_on: Mapping[str, tuple[str, ...]] = _FrozenMap()
    #: ``processor.<type>.<key>``: type -> key -> raw value.
    processor_options: Mapping[str, Mapping[str, str]] = _FrozenMap()
    #: ``processor.<type>.<key>`` -> ``file:line`` of the line that set it (for error messages).
    option_sources: Mapping[str, str] = _FrozenMap()

    def concurrency_for(self, type_: str) -> int:
        """Maximum concurrent activities of ``type_`` here (0: never take it)."""
        return self.concurrency.get(type_, self.concurrency_default)

    def timeout_for(self, type_: str) -> float:
        """Wall-clock limit in seconds for one activity of ``type_``."""
        return self.timeouts.get(type_, self.timeout_seconds)

    def max_attempts_for(self, type_: str) -> int:
        """Attempts an activity of ``type_`` gets before it fails."""
        return self.max_attempts.get(type_, self.retry_max_attempts)

    def backoff_for(self, type_: str) -> float:
        """Delay before the second attempt of an activity of ``type_``."""
        return self.backoffs.get(type_, self.retry_backoff_seconds)

    def options_for(self, type_: str) -> Mapping[str, str]:
        """The ``processor.<type_>.*`` settings, by key (empty when there are none)."""
        return self.processor_options.get(type_, _NO_OPTIONS)

    @property
    def megapixel_cap(self) -> float:
        """``images.max-megapixels``, with 0 resolved to the automatic value."""
        return self.images_max_megapixels or automatic_megapixels()


def automatic_megapixels() -> float:
    """A quarter of physical memory at 4 bytes per pixel; 256 Mpx where that is unknown."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 256.0
    return ram / 4 / 4 / 1e6 if ram > 0 else 256.0


@dataclass(frozen=True)
class Loaded:
    """Result of :func:`load`: the settings plus non-fatal warnings (``file:line: ...``)."""

    settings: Settings
    warnings: tuple[str, ...] = ()


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


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


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("iso-8859-1")


def _read_entries(path: Path, errors: list[str]) -> list[_Entry] | None:
    """Parse one file; None when it does not exist."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        errors.append(f"{path}: cannot read file: {exc.strerror or exc}")
        return []
    entries: list[_Entry] = []
    line = 1
    try:
        for element in javaproperties.parse(_decode(data)):
            if isinstance(element, javaproperties.KeyValue):
                entries.append(_Entry(element.key, element.value, path, line))
            line += len(_EOL_RE.findall(element.source))
    except javaproperties.InvalidUEscapeError as exc:
        errors.append(
            f"{path}:{line}: invalid escape sequence '{exc.escape}'; "
            "expected \\u followed by four hexadecimal digits (rest of file not read)"
        )
    return entries


def _suggest(key: str) -> str | None:
    candidates = [k for k in _STATIC]
    if "." in key:
        rest = key.split(".", 1)[1]
        if rest:
            candidates += [prefix + rest for prefix in (*_PER_TYPE_PREFIXES, _CUSTOM_PREFIX)]
    lowered = {c.lower(): c for c in candidates}
    matches = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.75)
    return lowered[matches[0]] if matches else None


def _unknown_key_warning(entry: _Entry) -> str:
    message = f"{entry.where}: unknown key {entry.key!r}"
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
        first_line: dict[str, int] = {}
        for entry in entries:
            key = entry.key
            if key in first_line:
                warnings.append(f"{entry.where}: {key!r} is set again; this replaces line {first_line[key]}")
            else:
                first_line[key] = entry.line
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
                    if not _TYPE_RE.fullmatch(type_):
                        expected = f"an activity type name matching {TYPE_PATTERN}"
                        errors.append(
                            f"{entry.where}: {key}: {type_!r} is not a valid activity type "
                            f"name; expected {expected}"
                        )
                        continue
                    per_type[prefix][type_] = _PATTERNS[prefix].kind.parse(entry.value, path.parent)
                else:
                    warnings.append(_unknown_key_warning(entry))
            except _Invalid as exc:
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
        concurrency_default=cast(int, values["concurrency.default"]) or max(1, pool_size),
        concurrency=_FrozenMap(cast(dict[str, int], per_type["concurrency."])),
        timeout_seconds=cast(float, values["timeout.seconds"]),
        timeouts=_FrozenMap(cast(dict[str, float], per_type["timeout."])),
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
        commands=_FrozenMap(commands),
        http_endpoints=_FrozenMap(endpoints),
        files_roots=cast(tuple[Path, ...], values["files.roots"]),
        custom=_FrozenMap(custom),
        schedules=_FrozenMap(schedules),
        circuits=_FrozenMap(circuits),
        sources=tuple(sources),
        max_attempts=_FrozenMap(cast(dict[str, int], per_type["retry.max-attempts."])),
        backoffs=_FrozenMap(cast(dict[str, float], per_type["retry.backoff-seconds."])),
        retry_on=_FrozenMap({t: cast(tuple[str, ...], n) for t, n in per_type["retry.on."].items() if n}),
        processor_options=_FrozenMap({t: _FrozenMap(keys) for t, keys in options.items()}),
        option_sources=_FrozenMap(option_sources),
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
    elif not _TYPE_RE.fullmatch(type_):
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
        except _Invalid as exc:
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
            if seconds != int(seconds) or seconds > schedule_rules.EVERY_MAX_SECONDS:
                what = "longer than 366d" if seconds == int(seconds) else "not a whole number of seconds"
                errors.append(
                    f"{entry.where}: {entry.key}: {entry.value.strip()!r} is {what}; "
                    "expected a duration of whole seconds, at most 366d"
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


def _check_lease(values: dict[str, Value], where: dict[str, _Entry], errors: list[str]) -> None:
    """A lease must outlive at least two heartbeat intervals."""
    lease_key, beat_key = "claims.lease-seconds", "heartbeat.interval-seconds"
    lease, beat = cast(float, values[lease_key]), cast(float, values[beat_key])
    if lease >= 2 * beat:
        return
    if lease_key in where:
        errors.append(
            f"{where[lease_key].where}: {lease_key}: {lease:g} is less than twice "
            f"{beat_key} ({beat:g}); expected a number >= {2 * beat:g}"
        )
    elif beat_key in where:
        errors.append(
            f"{where[beat_key].where}: {beat_key}: {beat:g} is more than half of "
            f"{lease_key} ({lease:g}); expected a number <= {lease / 2:g}"
        )


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------

_HEADER = f"""\
# spoolpipe configuration
#
# This is the shared file, REPO/{SHARED_FILE}, read by every worker
# daemon. A worker can override any key for itself alone in
# REPO/{WORKERS_DIR}/<worker-id>.properties: keys there win over this file,
# and within one file a later line wins over an earlier one. Both files are
# optional; a key that is not set anywhere takes the default shown below.
#
# The syntax is that of Java .properties files: "key = value" (or "key: value"
# or "key value"), a line ending in a backslash continues on the next line,
# lines starting with # or ! are comments, and \\uXXXX escapes are understood.
# Files are read as UTF-8, or as ISO-8859-1 when they are not valid UTF-8.
# Relative paths are resolved against the directory of the file that sets them.
#
# Running daemons re-read these files when they change. When the new
# configuration is invalid they log the errors (file:line) and keep using the
# last valid one. Changes to processors, processors.path, processor.* and
# custom.* take effect by recycling the pool's processes as they become idle
# (as does a change to a processor module's file); pool.size takes effect at
# restart.
#
# Every key below is commented out and shows its default: uncomment a line,
# or append "key = value" at the end, to change it.
"""


def _comment(text: str) -> str:
    return textwrap.fill(text, width=79, initial_indent="# ", subsequent_indent="# ")


def _line(key: str, value: str) -> str:
    if value == "":
        return f"{key} ="
    return javaproperties.join_key_value(key, value, separator=" = ")


def render_defaults() -> str:
    """The commented ``spoolpipe.properties`` written by ``spoolpipe init``.

    Every key appears commented out with its default, and pattern keys as
    commented-out examples, so a key a user uncomments or appends is set once
    (no "set again" warning). Loading it yields exactly the defaults.
    """
    parts = [_HEADER]
    group = None
    for opt in OPTIONS:
        if opt.group != group:
            group = opt.group
            title = _GROUP_TITLES.get(group, group)
            parts.append(f"\n# {'=' * 77}\n# {title}\n# {'=' * 77}\n")
        parts.append("\n" + _comment(opt.description) + "\n")
        if opt.default is None:  # examples are written as properties lines already
            parts.extend(f"#{line}\n" for line in opt.example.splitlines())
        else:
            parts.append("#" + _line(opt.key, opt.default) + "\n")
    return "".join(parts)


def _md(text: str) -> str:
    text = text.replace("|", "\\|").replace("<", "\\<")
    return text.replace(TYPE_PATTERN, f"`{TYPE_PATTERN}`")


def describe_keys() -> str:
    """A Markdown table of every key (key, default, accepted values, meaning)."""
    rows = [
        "| Key | Default | Accepted values | Meaning |",
        "| --- | --- | --- | --- |",
    ]
    for opt in OPTIONS:
        if opt.default is None:
            default = "(none)"
        elif opt.default == "":
            default = "(empty)"
        else:
            default = f"`{opt.default}`"
        rows.append(f"| `{opt.key}` | {default} | {_md(opt.kind.expected)} | {_md(opt.description)} |")
    return "\n".join(rows) + "\n"
