"""Kinds of values: how each key's raw text is validated and converted."""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..activity import (
    NAME_PATTERN,
    WORKER_ID_PATTERN,
    InvalidActivity,
    is_valid_worker_id,
    nesting,
    parse_document,
)
from ..builtins import specs as builtin_specs
from ..schedule import rules as schedule_rules
from ..storable import MAX_DEPTH, NotStorable, check_text

#: Regular expression (for ``re.fullmatch``) that every activity type name matches.
TYPE_PATTERN = NAME_PATTERN

TYPE_RE = re.compile(TYPE_PATTERN)

Value = int | float | bool | str | tuple[str, ...] | tuple[Path, ...] | tuple[int, ...] | Path | None


class Invalid(Exception):
    """A value failed validation; the argument says what is wrong with it."""


@dataclass(frozen=True)
class Kind:
    """How a raw string value is validated and converted.

    A kind with no fields of its own is a plain subclass: it inherits everything a dataclass
    would make for it, and each ``@dataclass`` costs a worker about 1 ms of start-up.
    """

    @property
    def expected(self) -> str:
        """What a valid value looks like, for error messages and docs."""
        raise NotImplementedError

    def parse(self, raw: str, base: Path) -> Value:
        """Convert ``raw``; raise ``Invalid`` when it is not acceptable.

        ``base`` is the directory of the file that defined the value, for
        resolving relative paths.
        """
        raise NotImplementedError


_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


def _integer(text: str, what: str, pattern: re.Pattern[str] = _INTEGER) -> int:
    """``text`` as an int, or ``Invalid`` saying it is not ``what``: only ASCII digits, as int() also
    takes "1_0" and digits of other scripts ('\u00b2'.isdigit() is true, int('\u00b2') fails), and
    a number too long for int() (4300 digits, leading zeros aside) is out of range."""
    if not pattern.fullmatch(text):
        raise Invalid(f"{text!r} is not {what}")
    digits = text.lstrip("+-").lstrip("0") or "0"
    try:
        number = int(digits)
    except ValueError:
        raise Invalid(f"{text!r} is out of range") from None
    return -number if text.startswith("-") else number


def parse_integer(raw: str) -> int:
    """Any integer as the configuration writes one (see ``_integer``); ``Invalid`` says why not."""
    return _integer(raw.strip(), "an integer")


@dataclass(frozen=True)
class IntKind(Kind):
    minimum: int
    maximum: int | None = None

    @property
    def expected(self) -> str:
        if self.maximum is not None:
            return f"an integer from {self.minimum} to {self.maximum}"
        return f"an integer >= {self.minimum}"

    def parse(self, raw: str, base: Path) -> int:
        text = raw.strip()
        number = _integer(text, "an integer")
        if number < self.minimum or (self.maximum is not None and number > self.maximum):
            raise Invalid(f"{text!r} is out of range")
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
        if not _NUMBER.fullmatch(text) and text.lower().lstrip("+-") not in ("inf", "infinity", "nan"):
            raise Invalid(f"{text!r} is not a number")
        number = float(text)
        if number != number or number in (float("inf"), float("-inf")):
            raise Invalid(f"{text!r} is not a finite number")
        too_low = number <= self.minimum if self.exclusive else number < self.minimum
        if too_low or (self.maximum is not None and number > self.maximum):
            raise Invalid(f"{text!r} is out of range")
        return number


#: Longest time, in seconds, a setting may give (100 years): a moment that far ahead can still be written.
MAX_SECONDS = 100 * 365 * 86_400


def as_seconds(value: object, *, zero: bool = False) -> float | None:
    """``value`` (an int or float, not a bool) as a number of seconds above 0 (from 0 with ``zero``),
    at most :data:`MAX_SECONDS`; None when it is not one (NaN, infinite, too large, a string...)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    in_range = (seconds >= 0 if zero else seconds > 0) and seconds <= MAX_SECONDS  # NaN fails both
    return seconds if in_range else None


@dataclass(frozen=True)
class SecondsKind(FloatKind):
    """A number of seconds, at most :data:`MAX_SECONDS` (1e13 made names no parser reads back)."""

    maximum: float | None = MAX_SECONDS

    @property
    def expected(self) -> str:
        return (
            f"a number {'>' if self.exclusive else '>='} {self.minimum:g}, at most {MAX_SECONDS} (100 years)"
        )


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


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
        raise Invalid(f"{text!r} is not a boolean")


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
        raise Invalid(f"{text!r} is not a valid choice")


def _check_file_name(text: str) -> None:
    """``Invalid`` unless ``text`` can name a file: no NUL, and nothing the file system encoding cannot
    write (a lone surrogate from a ``\\uD800`` escape), which open() refused only when the worker used it."""
    if "\0" in text:
        raise Invalid(f"{text!r} contains a NUL character")
    try:
        os.fsencode(text)
    except UnicodeEncodeError as exc:
        raise Invalid(f"{text!r} holds {text[exc.start]!r}, which no file name can hold") from None


def _split_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


class ModuleListKind(Kind):
    """Comma-separated dotted Python module names."""

    @property
    def expected(self) -> str:
        return "comma-separated Python module names"

    def parse(self, raw: str, base: Path) -> tuple[str, ...]:
        modules = _split_list(raw)
        for module in modules:
            if not all(part.isidentifier() for part in module.split(".")):
                raise Invalid(f"{module!r} is not a Python module name")
        return tuple(modules)


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
            _check_file_name(item)
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
        if not TYPE_RE.fullmatch(text):
            raise Invalid(f"{text!r} is not a valid activity type name")
        return text


class StringKind(Kind):
    """Any string, kept verbatim."""

    @property
    def expected(self) -> str:
        return "any text"

    def parse(self, raw: str, base: Path) -> str:
        return raw


class ExceptionNamesKind(Kind):
    """Comma-separated exception class names: ``OSError``, ``myproject.errors.Transient``."""

    @property
    def expected(self) -> str:
        return "comma-separated exception class names (module.QualifiedName, or a built-in's name)"

    def parse(self, raw: str, base: Path) -> tuple[str, ...]:
        names = _split_list(raw)
        for name in names:
            if not all(part.isidentifier() for part in name.split(".")):
                raise Invalid(f"{name!r} is not a Python class name")
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
        _check_file_name(text)
        if not name.endswith(self.suffix) or name.startswith("."):
            raise Invalid(f"{text!r} does not name a file ending in {self.suffix}")
        return Path(os.path.abspath(base / text))


class PortKind(Kind):
    """A TCP port; 0 or empty: none."""

    @property
    def expected(self) -> str:
        return "a TCP port from 1 to 65535, or 0 or nothing for none"

    def parse(self, raw: str, base: Path) -> int:
        text = raw.strip()
        if text == "":
            return 0
        port = _integer(text, "a port number", _DIGITS)
        if port > 65535:
            raise Invalid(f"{text!r} is out of range")
        return port


_HOST_NAME_RE = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


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
            raise Invalid(f"{text!r} is not an IP address or a host name")
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
    #: The longest allowed, in whole days (``None``: :data:`MAX_SECONDS`, 100 years).
    maximum_days: int | None = None

    @property
    def expected(self) -> str:
        most = "100 years" if self.maximum_days is None else f"{self.maximum_days}d"
        return f"{_DURATION_EXPECTED} {'>' if self.exclusive else '>='} {self.minimum:g}s, at most {most}"

    def parse(self, raw: str, base: Path) -> float:
        try:
            seconds = parse_duration(raw)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        longest = MAX_SECONDS if self.maximum_days is None else self.maximum_days * 86400
        if seconds < self.minimum or (self.exclusive and seconds == self.minimum) or seconds > longest:
            raise Invalid(f"{raw.strip()!r} is out of range")
        return seconds


class KeepKind(Kind):
    """How long to keep something: a duration above 0, or ``forever`` (``math.inf`` seconds)."""

    @property
    def expected(self) -> str:
        return f"{_DURATION_EXPECTED} > 0s, at most 100 years, or forever"

    def parse(self, raw: str, base: Path) -> float:
        if raw.strip().lower() == "forever":
            return float("inf")
        return DurationKind(0.0, exclusive=True).parse(raw, base)


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
            raise Invalid(str(exc)) from None


class JsonObjectKind(Kind):
    """A JSON object (RFC 8259, as in activity files), kept as canonical JSON text."""

    @property
    def expected(self) -> str:
        return 'a JSON object, e.g. {"folder": "incoming"}'

    def parse(self, raw: str, base: Path) -> str:
        try:  # a .properties \uD800 escape makes a lone surrogate, which no UTF-8 can hold
            check_text(raw, "the value (its .properties \\u escapes read)")
            doc = parse_document(raw.strip().encode("utf-8"))
        except NotStorable as exc:
            raise Invalid(str(exc)) from None
        except InvalidActivity as exc:
            raise Invalid(
                exc.reason.replace("top level is", "the value is").replace(", expected an object", "")
            ) from None
        if nesting(doc) > MAX_DEPTH:  # as an activity's data, itself level 1 (submit's DATA limit)
            raise Invalid(f"lists and objects nested more than {MAX_DEPTH} levels deep")
        return schedule_rules.canonical_data(doc)


class WorkerListKind(Kind):
    """Comma-separated worker ids."""

    @property
    def expected(self) -> str:
        return f"comma-separated worker ids matching {WORKER_ID_PATTERN}"

    def parse(self, raw: str, base: Path) -> tuple[str, ...]:
        ids = _split_list(raw)
        for worker_id in ids:
            if not is_valid_worker_id(worker_id):
                raise Invalid(f"{worker_id!r} is not a valid worker id")
        return tuple(dict.fromkeys(ids))


# -- kinds of the built-in processors' keys (command.<name>.*, http.<name>.*) --


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
        except (ValueError, RecursionError):  # nested too deep for json to read: no argv
            raise Invalid(f"{raw.strip()!r} is not JSON") from None
        if not isinstance(doc, list) or not all(isinstance(item, str) for item in doc):
            raise Invalid("the value is not an array of strings")
        try:
            builtin_specs.check_argv(doc)
        except builtin_specs.InvalidDefinition as exc:
            raise Invalid(str(exc)) from None
        return tuple(doc)


class ExitCodesKind(Kind):
    """Comma-separated process exit codes."""

    @property
    def expected(self) -> str:
        return "comma-separated exit codes from 0 to 255, or nothing"

    def parse(self, raw: str, base: Path) -> tuple[int, ...]:
        codes = []
        for item in _split_list(raw):
            code = _integer(item, "an exit code", _DIGITS)
            if code > 255:
                raise Invalid(f"{item!r} is not an exit code")
            codes.append(code)
        return tuple(dict.fromkeys(codes))


class EnvNamesKind(Kind):
    """Comma-separated environment variable names."""

    @property
    def expected(self) -> str:
        return "comma-separated environment variable names, or nothing"

    def parse(self, raw: str, base: Path) -> tuple[str, ...]:
        names = _split_list(raw)
        for name in names:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise Invalid(f"{name!r} is not an environment variable name")
        return tuple(dict.fromkeys(names))


class DirectoryKind(Kind):
    """One directory, resolved against the defining file's directory (lexically, like PathListKind)."""

    @property
    def expected(self) -> str:
        return "a directory"

    def parse(self, raw: str, base: Path) -> Path:
        text = raw.strip()
        if not text:
            raise Invalid(f"{text!r} is not a directory name")
        _check_file_name(text)
        return Path(os.path.abspath(base / text))


class UrlKind(Kind):
    @property
    def expected(self) -> str:
        return "an http:// or https:// URL"

    def parse(self, raw: str, base: Path) -> str:
        try:
            return builtin_specs.check_url(raw)
        except builtin_specs.InvalidDefinition as exc:
            raise Invalid(str(exc)) from None


class HeadersKind(Kind):
    """A JSON object of HTTP header names to string values, kept as JSON text."""

    @property
    def expected(self) -> str:
        return 'a JSON object of header names to strings, e.g. {"Authorization": "Bearer 123"}'

    def parse(self, raw: str, base: Path) -> str:
        try:
            return json.dumps(dict(builtin_specs.parse_headers(raw)))
        except builtin_specs.InvalidDefinition as exc:
            raise Invalid(str(exc)) from None
