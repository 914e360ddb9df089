"""The pure core of the built-in processors: what the properties define and what an outcome means.

Nothing here does I/O, so the configuration (``config.load``) builds these
definitions and tests check the rules in-process. An activity only ever
*names* a definition; what runs, where, and with which environment comes from
the properties alone.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from ..activity import KEY_NAME_PATTERN

#: Regular expression (``re.fullmatch``) a ``command.<name>`` or ``http.<name>`` name matches.
NAME_PATTERN = KEY_NAME_PATTERN
#: A placeholder's name inside ``{...}`` in ``command.<name>.argv``: a data field of the activity.
FIELD_PATTERN = r"[A-Za-z_][A-Za-z0-9_]{0,63}"
#: The data field of a ``command`` activity naming its ``command.<name>``.
COMMAND_FIELD = "command"
#: The data field of an ``http.request`` activity naming its ``http.<name>``; it is not sent.
ENDPOINT_FIELD = "endpoint"
#: The ``http.<name>`` used by an ``http.request`` activity whose data has no ``endpoint``.
DEFAULT_ENDPOINT = "default"
#: Methods ``http.<name>.method`` accepts; ``GET`` sends no body.
METHODS = ("POST", "PUT", "PATCH", "DELETE", "GET")
#: Client errors that are retried: the server asks to be asked again later.
RETRIED_CLIENT_ERRORS = frozenset({408, 429})

Verdict = Literal["done", "retry", "fatal"]

_FIELD_RE = re.compile(FIELD_PATTERN)
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_URL_RE = re.compile(r"https?://[^\s/?#@]+(?:[/?#][^\s]*)?", re.IGNORECASE)


class InvalidDefinition(ValueError):
    """A value in the properties that cannot define a command or an endpoint; says why."""


class CannotFill(ValueError):
    """An activity's data that cannot fill a command's arguments; says which argument and field."""


class NotConfigured(ValueError):
    """An activity naming no definition, or one the properties do not hold; says which key is missing."""


D = TypeVar("D")


def named(
    data: Mapping[str, object],
    field: str,
    definitions: Mapping[str, D],
    *,
    noun: str,
    family: str,
    required: str,
    article: Literal["a", "an"],
    worker_id: str,
    default: str | None = None,
) -> tuple[str, D]:
    """The name ``data[field]`` gives, and its ``family.<name>.*`` definition from the properties."""
    name = data.get(field, default)
    if not isinstance(name, str):
        raise NotConfigured(f"data.{field}: expected the name of {article} {family}.<name> of the properties")
    found = definitions.get(name)
    if found is None:
        raise NotConfigured(
            f"{noun} {name!r} is not configured on worker {worker_id} "
            f"(no {family}.{name}.{required} in the properties)"
        )
    return name, found


@dataclass(frozen=True)
class Placeholder:
    """``{field}`` in an argument template: replaced by the activity's ``data[field]``."""

    field: str


Part = str | Placeholder


def parse_template(element: str) -> tuple[Part, ...]:
    """One argument template as literal text and placeholders; ``{{`` and ``}}`` are literal braces."""
    if "\0" in element:
        raise InvalidDefinition(f"{element!r} contains a NUL character")
    parts: list[Part] = []
    literal: list[str] = []
    i = 0
    while i < len(element):
        char = element[i]
        if char in "{}" and element[i : i + 2] == char * 2:
            literal.append(char)
            i += 2
        elif char == "{":
            end = element.find("}", i)
            name = element[i + 1 : end] if end != -1 else ""
            if not _FIELD_RE.fullmatch(name):
                raise InvalidDefinition(
                    f"{element!r}: a placeholder is {{field}} with a field name matching {FIELD_PATTERN} "
                    "(write {{ and }} for literal braces)"
                )
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(Placeholder(name))
            i = end + 1
        elif char == "}":
            raise InvalidDefinition(f"{element!r}: a lone '}}' (write }}}} for a literal brace)")
        else:
            literal.append(char)
            i += 1
    if literal:
        parts.append("".join(literal))
    return tuple(parts)


def check_argv(argv: Sequence[str]) -> None:
    """A usable ``command.<name>.argv``: a program (never filled from data), then argument templates."""
    if not argv:
        raise InvalidDefinition("the list is empty; the first element is the program to run")
    for element in argv:
        parse_template(element)
    if any(isinstance(part, Placeholder) for part in parse_template(argv[0])):
        raise InvalidDefinition(f"{argv[0]!r}: the program (first element) cannot have a placeholder")
    if not argv[0]:
        raise InvalidDefinition("the program (first element) is empty")


def _argument(value: object, where: str) -> str:
    if isinstance(value, str):
        if "\0" in value:
            raise CannotFill(f"{where}: the value contains a NUL character")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CannotFill(f"{where}: expected a string or a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise CannotFill(f"{where}: {value!r} is not a finite number")
    return repr(value) if isinstance(value, float) else str(value)


def fill(argv: Sequence[str], data: Mapping[str, object]) -> list[str]:
    """The arguments to run: each template filled from ``data``, each one whole argument whatever it holds."""
    filled: list[str] = []
    for index, element in enumerate(argv):
        text: list[str] = []
        for part in parse_template(element):
            if isinstance(part, str):
                text.append(part)
                continue
            where = f"argv[{index}] {{{part.field}}}"
            if part.field not in data:
                raise CannotFill(f"{where}: the activity's data has no field {part.field!r}")
            text.append(_argument(data[part.field], f"{where} (data field {part.field!r})"))
        filled.append("".join(text))
    return filled


@dataclass(frozen=True)
class Command:
    """``command.<name>.*``: what a ``command`` activity naming ``name`` runs, and what its exit means."""

    name: str
    argv: tuple[str, ...]
    #: None: the repository folder.
    cwd: Path | None
    #: None: the activity's own timeout (``timeout.command``) less a second, so this one acts first.
    timeout: float | None
    #: Names of the worker's environment variables the command gets (the only ones it gets).
    env: tuple[str, ...]
    ok_exit_codes: frozenset[int]
    retry_exit_codes: frozenset[int]

    def verdict(self, exit_code: int) -> Verdict:
        """Done for an ok code; retried for a retry code or a death by signal; else fatal."""
        if exit_code in self.ok_exit_codes:
            return "done"
        if exit_code in self.retry_exit_codes or exit_code < 0:
            return "retry"
        return "fatal"

    def deadline(self, activity_timeout: float) -> float:
        """Seconds the command may run: its own timeout, never past the activity's (the pool kills then)."""
        return within(self.timeout, activity_timeout)


def within(timeout: float | None, activity_timeout: float) -> float:
    """``timeout`` (None: none of its own), capped so that it acts before the activity's own timeout
    (which kills the pool process): a second before it, or at half of it when that is under two seconds."""
    limit = max(activity_timeout - 1.0, activity_timeout / 2)
    return limit if timeout is None else min(timeout, limit)


def build_command(
    name: str,
    argv: tuple[str, ...],
    cwd: Path | None = None,
    timeout: float | None = None,
    env: tuple[str, ...] = ("PATH",),
    ok_exit_codes: tuple[int, ...] = (0,),
    retry_exit_codes: tuple[int, ...] = (),
) -> Command:
    """A checked :class:`Command`; ``InvalidDefinition`` when ok and retry codes overlap."""
    check_argv(argv)
    both = sorted(set(ok_exit_codes) & set(retry_exit_codes))
    if both:
        raise InvalidDefinition(
            f"exit code(s) {', '.join(map(str, both))} are in both ok-exit-codes and retry-exit-codes"
        )
    return Command(name, argv, cwd, timeout, env, frozenset(ok_exit_codes), frozenset(retry_exit_codes))


def check_url(url: str) -> str:
    """An absolute ``http://`` or ``https://`` URL without spaces or credentials, that ``urllib`` can
    send (ASCII, a valid host and port); returns it stripped."""
    import urllib.parse

    text = url.strip()
    if not _URL_RE.fullmatch(text) or any(ord(c) < 0x21 or c == "\x7f" for c in text):
        raise InvalidDefinition(f"{text!r} is not an http:// or https:// URL (without user:password@)")
    odd = next((c for c in text if not c.isascii()), None)
    if odd is not None:
        escaped = urllib.parse.quote(odd)
        raise InvalidDefinition(f"{text!r}: {odd!r} cannot be sent: percent-encode it ({escaped})")
    try:
        port = urllib.parse.urlsplit(text).port
    except ValueError as exc:  # Invalid IPv6 URL; a port out of range or not a number
        why = str(exc) if "IPv6" in str(exc) else "the port is not a number from 1 to 65535"
        raise InvalidDefinition(f"{text!r}: {why}") from None
    if port == 0:
        raise InvalidDefinition(f"{text!r}: the port is not a number from 1 to 65535")
    return text


#: The headers every request carries from spoolpipe (lower case): an endpoint may not set them.
OWN_HEADERS = frozenset({"user-agent", "x-spoolpipe-activity", "x-spoolpipe-attempt"})


def parse_headers(text: str) -> tuple[tuple[str, str], ...]:
    """Headers from a JSON object of header names to string values (no line breaks in either)."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:  # nested too deep for json to read: no headers
        raise InvalidDefinition(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidDefinition("expected a JSON object of header names to values")
    headers: list[tuple[str, str]] = []
    for key, value in doc.items():
        if not _HEADER_NAME_RE.fullmatch(key):
            raise InvalidDefinition(f"{key!r} is not a header name")
        if key.lower() in OWN_HEADERS:
            raise InvalidDefinition(
                f"header {key!r} is set by spoolpipe on every request (a receiver may drop repeats by "
                "X-Spoolpipe-Activity); leave it out"
            )
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise InvalidDefinition(f"header {key!r}: expected a string without line breaks")
        try:
            value.encode("latin-1")  # what http.client sends a header value as
        except UnicodeEncodeError as exc:
            raise InvalidDefinition(
                f"header {key!r}: {value[exc.start]!r} cannot be sent (header values are Latin-1); "
                "percent-encode it or leave it out"
            ) from None
        headers.append((key, value))
    return tuple(headers)


@dataclass(frozen=True)
class Endpoint:
    """``http.<name>.*``: where an ``http.request`` activity naming ``name`` sends its data."""

    name: str
    url: str
    method: str
    headers: tuple[tuple[str, str], ...]
    timeout: float

    @staticmethod
    def verdict(status: int) -> Verdict:
        """2xx done; 5xx, 408 and 429 retried; anything else (4xx, a redirect, 600 and up) fatal."""
        if 200 <= status < 300:
            return "done"
        if 500 <= status < 600 or status in RETRIED_CLIENT_ERRORS:
            return "retry"
        return "fatal"


def build_endpoint(
    name: str, url: str, method: str = "POST", headers: str = "{}", timeout: float = 30.0
) -> Endpoint:
    """An :class:`Endpoint` from ``http.<name>.*`` (``headers`` as the JSON text the key holds)."""
    return Endpoint(name, check_url(url), method, parse_headers(headers), timeout)


def request_body(data: Mapping[str, object]) -> bytes:
    """What ``http.request`` sends: the activity's data without ``endpoint``, as compact UTF-8 JSON."""
    body = {key: value for key, value in data.items() if key != ENDPOINT_FIELD}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
