"""The activity model: what an activity file may contain and how spoolpipe names it.

Pure: parsing bytes and names, no file system access. Everything here is the
contract written down in ``docs/repository-format.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeGuard, get_args

from .storable import MAX_DEPTH

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
#: A worker id: shorter than an activity id, so that every name the protocol makes of both (the longest:
#: ``ID~ATTEMPT~WORKER~follow-up~FID~pP``, 241 bytes) fits the file systems' 255.
WORKER_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
#: The name of a ``schedule.<name>``, ``command.<name>`` or ``http.<name>``: one segment of a property key
#: (so no dot), short enough to sit inside an activity id.
KEY_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
#: The highest ``retry.max-attempts``: a name counts attempts up to seven digits, so that the attempt after
#: the last allowed one (a crash counts) still reads back as itself and is given up, never as attempt 1.
MAX_ATTEMPTS = 999_999
_NAMED_ATTEMPTS = 9_999_999
#: An attempt number in a file name: at most seven digits (``_NAMED_ATTEMPTS``), no leading zero.
ATTEMPT_PATTERN = "[1-9][0-9]{0,6}"
_NAME = re.compile(rf"\A{NAME_PATTERN}\Z")
_WORKER_ID = re.compile(rf"\A{WORKER_ID_PATTERN}\Z")
# A queued name written by spoolpipe itself: ``ID~ATTEMPT[~NOT_BEFORE_MS][~pPRIORITY].json``, or
# ``ID~pPRIORITY.json`` (a new activity whose priority is not the default).
_QUEUED = re.compile(
    rf"\A(?P<id>{NAME_PATTERN})(?:~(?P<attempt>{ATTEMPT_PATTERN})(?:~(?P<nb>[0-9]{{1,15}}))?)?"
    r"(?:~p(?P<priority>[0-9]))?\.json\Z"
)
# A claim in running/: ``ID~ATTEMPT~WORKER.json``, or a file staged beside it: ``ID~ATTEMPT~WORKER~KIND``
# (``KIND`` one of committed, done, failed) or ``ID~ATTEMPT~WORKER~follow-up~FID``.
_CLAIM = re.compile(
    rf"\A(?P<id>{NAME_PATTERN})~(?P<attempt>{ATTEMPT_PATTERN})~(?P<worker>{NAME_PATTERN})"
    rf"(?:\.json|~(?P<kind>committed|done|failed|follow-up~(?P<follow_up>{NAME_PATTERN}(?:~p[0-9])?)))\Z"
)
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Fields spoolpipe interprets or writes itself; any other top-level field is carried along untouched.
_KNOWN_FIELDS = frozenset({"id", "type", "data", "not_before", "priority", "result", "spoolpipe"})
#: Priorities an activity may have: higher runs first; one without the field has the default.
PRIORITIES = range(10)
DEFAULT_PRIORITY = 5
# The latest timestamp spoolpipe can write back: 9999-12-31 (and it writes none before 1970).
LATEST = 253402300799.0


class InvalidActivity(ValueError):
    """The file can never become a valid activity; ``reason`` says why, for a person."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Longest file name (in bytes) the supported file systems accept.
NAME_MAX = 255
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(char: str) -> str:
    code = ord(char)
    if char in _ESCAPES:
        return _ESCAPES[char]
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8, as os.fsdecode hands it over
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` safe to write into a line of a log, ``reason.txt`` or a terminal, and always valid UTF-8.

    A name may hold anything the file system accepts: each character that is not
    printable (line breaks, terminal escapes, bidi overrides, bytes that are not
    UTF-8) is written as ``\\n``, ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``; an undecodable
    byte as ``\\xNN`` of the byte itself (80 to ff; C1 controls are ``\\u0080``...).
    Backslashes are kept, so escaping twice changes nothing and can be done at every edge.
    """
    return "".join(c if c.isprintable() else _escaped(c) for c in text)


def invalid_entry_name(name: str, token: str) -> str:
    """The name of ``invalid/NAME~TOKEN/`` for an entry named ``name``: printable, within ``NAME_MAX`` bytes.

    Cut on a character boundary; the entry inside keeps its own name and
    ``reason.txt`` the whole (escaped) original.
    """
    suffix = f"~{token}"
    budget = NAME_MAX - len(suffix.encode())
    return printable(name).encode()[:budget].decode("utf-8", "ignore") + suffix


_INVALID_ENTRY = re.compile(rf".+~[{_CROCKFORD}]{{26}}", re.DOTALL)


def is_invalid_entry_name(name: str) -> bool:
    """Whether ``name`` is one ``invalid_entry_name`` makes (``NAME~TOKEN``, the token a ULID)."""
    return _INVALID_ENTRY.fullmatch(name) is not None


def is_valid_name(value: object) -> bool:
    """Whether ``value`` is a usable activity id or type."""
    return isinstance(value, str) and _NAME.match(value) is not None


def is_valid_worker_id(value: object) -> bool:
    return isinstance(value, str) and _WORKER_ID.match(value) is not None


def is_ignored(name: str) -> bool:
    """Names writers use while publishing atomically; never touched in the inbox."""
    return name.startswith(".") or name.endswith((".tmp", ".part"))


def new_id(now: float | None = None) -> str:
    """A ULID: 48-bit millisecond time then 80 random bits, Crockford base32, sortable by creation.

    Within one millisecond each id of this process is the one before plus one (monotonic ULIDs), so
    ids sort in the order they were made; a forked process starts its own run from random bits.
    """
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    with _LAST_LOCK:
        if ms == _last_id[0] >> 80 and value <= _last_id[0]:
            value = _last_id[0] + 1
        _last_id[0] = value
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


_LAST_LOCK = threading.Lock()
_last_id = [0]  # the last id this process made, as a number
os.register_at_fork(after_in_child=lambda: _last_id.__setitem__(0, 0))


#: The time of a ULID: its first 10 characters (48 bits of milliseconds).
_ULID_TIME = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{9}")
_NO_TIME = "0" * 10


def derived_id(*parts: str) -> str:
    """A deterministic id from ``parts``, so a repeated commit names the same follow-up.

    It begins with the time of ``parts[0]`` (the parent id) when that begins with a ULID's (as ids
    made here do: a derived one too), else as old as can be: ids sort by name, so a follow-up is in
    line by the age of its first ancestor, not after everything submitted since.
    """
    parent = parts[0] if parts else ""
    time_part = parent[:10] if len(parent) == 26 and _ULID_TIME.match(parent) else _NO_TIME
    value = int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:10], "big")
    return time_part + "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(75, -1, -5))


@dataclass(frozen=True)
class QueuedName:
    """What an inbox file name tells before its content is read.

    ``priority`` is what the name says (``None``: it says nothing, the file is
    ordered as :data:`DEFAULT_PRIORITY` until it is read); the document decides.
    """

    stem: str
    attempt: int = 1
    not_before_ms: int | None = None
    canonical: bool = False
    priority: int | None = None


def parse_inbox_name(name: str) -> QueuedName:
    """Split a spoolpipe-written name; any other name is attempt 1 with its stem as id."""
    m = _QUEUED.match(name) if "~" in name else None  # most names are plain: no regex for them
    if m:
        stem, attempt, nb, priority = m.groups()
        if (attempt or priority) and not (nb and int(nb) > LATEST * 1000):  # a time no document gives
            return QueuedName(
                stem,
                int(attempt) if attempt else 1,
                int(nb) if nb else None,
                True,
                int(priority) if priority else None,
            )
    stem = name[: -len(".json")] if name.endswith(".json") else name
    return QueuedName(stem)


def priority_mark(priority: int) -> str:
    """What a name carries for ``priority``: nothing for the default, so most names stay as they were."""
    return "" if priority == DEFAULT_PRIORITY else f"~p{priority}"


def new_name(activity_id: str, priority: int = DEFAULT_PRIORITY) -> str:
    """The inbox name of a new activity (submit, retry, follow-ups): ``ID.json`` or ``ID~pP.json``."""
    return f"{activity_id}{priority_mark(priority)}.json"


def queued_name(
    activity_id: str, attempt: int, not_before: float | None, priority: int = DEFAULT_PRIORITY
) -> str:
    """The inbox name of a requeued activity: attempt, earliest start and priority are visible without a read.

    Always with the attempt, even the first, so that it never collides with a
    copy a person dropped as ``ID.json``.
    """
    mark = priority_mark(priority)
    attempt = min(attempt, _NAMED_ATTEMPTS)  # past every limit all the same: given up when claimed
    if not_before is None:
        return f"{activity_id}~{attempt}{mark}.json"
    ms = int(not_before * 1000)
    if ms / 1000 < not_before:  # rounded up: never due before not_before
        ms += 1
    suffix = f"~{ms}"
    return f"{activity_id}~{attempt}{suffix}{mark}.json"


#: What an activity's attempt ended as.
OutcomeKind = Literal["done", "failed"]
#: The kinds of file staged beside a claim in ``running/``: its commit mark, its outcome record, a follow-up.
StagedKind = Literal["committed", "done", "failed", "follow-up"]
OUTCOMES: tuple[OutcomeKind, ...] = get_args(OutcomeKind)
_STAGED_KINDS: dict[str, StagedKind] = {kind: kind for kind in get_args(StagedKind)}


@dataclass(frozen=True)
class ClaimName:
    """The parts of a claim file name in ``running/``: ``ID~ATTEMPT~WORKER.json``."""

    activity_id: str
    attempt: int
    worker: str

    @property
    def name(self) -> str:
        return f"{self.stem}.json"

    @property
    def stem(self) -> str:
        return f"{self.activity_id}~{self.attempt}~{self.worker}"

    def staged(self, kind: StagedKind, follow_up: str = "") -> str:
        """The name of a file staged for this claim (``follow_up``: the follow-up's id, for that kind)."""
        if kind == "follow-up":
            return f"{self.stem}~follow-up~{follow_up}"
        return f"{self.stem}~{kind}"


@dataclass(frozen=True)
class RunningName:
    """A name in ``running/`` split: the claim it belongs to and, for a staged file, what it is."""

    claim: ClaimName
    kind: StagedKind | None = None  # None: the claim itself
    follow_up: str = ""  # the follow-up's inbox name without .json (FID or FID~pP), for kind "follow-up"

    @property
    def name(self) -> str:
        return self.claim.name if self.kind is None else self.claim.staged(self.kind, self.follow_up)


def parse_running_name(name: str) -> RunningName | None:
    """The inverse of ``ClaimName.name`` and ``ClaimName.staged``; None for any other name."""
    m = _CLAIM.match(name)
    if not m:
        return None
    claim = ClaimName(m.group("id"), int(m.group("attempt")), m.group("worker"))
    kind, follow_up = m.group("kind"), m.group("follow_up")
    if kind is None:
        return RunningName(claim)
    if follow_up is not None:
        return RunningName(claim, "follow-up", follow_up)
    return RunningName(claim, _STAGED_KINDS[kind])


def parse_claim_name(name: str) -> ClaimName | None:
    """The claim a claim file name (``ID~ATTEMPT~WORKER.json``, nothing staged) stands for."""
    parsed = parse_running_name(name)
    return parsed.claim if parsed is not None and parsed.kind is None else None


@dataclass(frozen=True)
class Activity:
    """One unit of work as a processor sees it."""

    id: str
    type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    attempt: int = 1
    not_before: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    # Earlier runs this activity was retried from (``spoolpipe retry``), oldest first.
    history: tuple[Mapping[str, Any], ...] = ()
    priority: int = DEFAULT_PRIORITY

    def to_json(self) -> dict[str, Any]:
        """The activity as a file: what ``submit`` writes and what a processor's follow-up becomes."""
        doc: dict[str, Any] = {**self.extra, "id": self.id, "type": self.type, "data": dict(self.data)}
        if self.not_before is not None:
            doc["not_before"] = format_time(self.not_before)
        if self.priority != DEFAULT_PRIORITY:
            doc["priority"] = self.priority
        if self.history:
            doc["spoolpipe"] = {"history": [dict(h) for h in self.history]}
        return doc


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON (RFC 8259)")


class _Infinite(Exception):
    """A number too large for a float (``1e400``): it could not be written back."""


def _finite_float(token: str) -> float:
    value = float(token)
    if math.isinf(value):
        raise _Infinite
    return value


class _Duplicate(Exception):
    """An object names one key twice: which value was meant cannot be known."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise _Duplicate(f"duplicate key {key!r}")
        doc[key] = value
    return doc


#: One decoder for every document (``json.loads`` with these hooks makes one per call).
_STRICT = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys
)


def nesting(value: object) -> int:
    """How deep lists and objects nest in ``value``: 0 for a scalar, 1 for ``[]`` or ``{}``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_document(raw: bytes) -> dict[str, Any]:
    """Strict RFC 8259 JSON object from bytes: UTF-8 only, no NaN/Infinity, no duplicate keys, and
    each field's value (``data``...) nested at most ``MAX_DEPTH`` levels, as a result may be: a
    deeper one cannot even be handed to a pool process."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raise InvalidActivity("file starts with a byte order mark; save it as UTF-8 without BOM")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidActivity(f"not UTF-8: invalid byte at offset {exc.start}") from None
    if not text.strip():
        raise InvalidActivity("file is empty")
    try:
        doc = _STRICT.decode(text)
    except _Infinite:
        raise InvalidActivity("a number is out of range (it would be infinite)") from None
    except _Duplicate as exc:
        raise InvalidActivity(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise InvalidActivity(f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:  # deeper than the decoder goes, so far deeper than MAX_DEPTH
        raise InvalidActivity(f"lists and objects are nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # an integer longer than Python converts
        digits = sys.get_int_max_str_digits()
        raise InvalidActivity(
            f"a number has more than {digits} digits" if "integer string conversion" in str(exc) else str(exc)
        ) from None
    if not isinstance(doc, dict):
        raise InvalidActivity(f"top level is {_json_kind(doc)}, expected an object")
    if text.count("[") + text.count("{") > MAX_DEPTH and nesting(doc) > MAX_DEPTH + 1:
        raise InvalidActivity(f"a field's lists and objects are nested more than {MAX_DEPTH} levels deep")
    if "\\u" in text:  # a lone surrogate, which cannot be written back, comes only from an escape
        try:
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidActivity("a string holds an unpaired \\u surrogate escape") from None
    return doc


def _json_kind(value: object) -> str:
    """What a JSON value is, in JSON's words (not Python's: "a JSON NoneType")."""
    if value is None or isinstance(value, bool):
        return f"JSON {json.dumps(value)}"
    if isinstance(value, list):
        return "a JSON array"
    return "a JSON string" if isinstance(value, str) else "a JSON number"


def parse_time(value: object) -> float:
    """An ISO-8601 timestamp with a zone as epoch seconds."""
    if not isinstance(value, str):
        raise InvalidActivity(f"not_before must be an ISO-8601 string, got {json.dumps(value)}")
    text = value.replace("Z", "+00:00").replace("z", "+00:00")
    leap = _LEAP_SECOND.search(text)  # second 60: the next second, as datetime has none
    try:
        moment = datetime.fromisoformat(
            text if leap is None else f"{text[: leap.start(1)]}59{text[leap.end(1) :]}"
        )
    except ValueError:
        raise InvalidActivity(f"not_before {value!r} is not an ISO-8601 timestamp") from None
    if moment.tzinfo is None:
        raise InvalidActivity(f"not_before {value!r} has no time zone (add Z or +hh:mm)")
    return moment.timestamp() + (0 if leap is None else 1)


_LEAP_SECOND = re.compile(r"T\d\d:?\d\d:?(60)")


def attempt_stem(activity_id: str, attempt: int) -> str:
    """What attempt ``attempt``'s files in ``logs/activities/`` are named after: ``ID~N``."""
    return f"{activity_id}~{attempt}"


def attempt_log_name(activity_id: str, attempt: int) -> str:
    """The name of attempt ``attempt``'s log in ``logs/activities/``: ``ID~N.log``."""
    return f"{attempt_stem(activity_id, attempt)}.log"


def format_time(epoch: float) -> str:
    """ISO-8601 in the local zone; in UTC where the local date would be past 9999 (or before 1)."""
    try:
        return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="milliseconds")
    except (OverflowError, ValueError):
        return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def is_priority(value: object) -> TypeGuard[int]:
    """Whether ``value`` is a priority: an integer from 0 to 9 (not a bool, a float or a string)."""
    return isinstance(value, int) and not isinstance(value, bool) and value in PRIORITIES


def parse_priority(value: object) -> int:
    """A ``priority`` field's value, or InvalidActivity saying what a priority must be."""
    if not is_priority(value):
        raise InvalidActivity(
            f"bad priority {json.dumps(value)}: must be an integer from 0 to 9 "
            f"(higher runs first; without the field: {DEFAULT_PRIORITY})"
        )
    return value


def document_priority(doc: Mapping[str, Any]) -> int:
    """The priority a document asks for; the default without the field."""
    return parse_priority(doc["priority"]) if "priority" in doc else DEFAULT_PRIORITY


def activity_from_document(doc: Mapping[str, Any], queued: QueuedName) -> Activity:
    """Validate a parsed document; the id comes from the document, else from the file name."""
    type_ = doc.get("type")
    if "type" not in doc:
        raise InvalidActivity("missing required field 'type'")
    if not is_valid_name(type_):
        raise InvalidActivity(f"bad type {json.dumps(type_)}: must match {NAME_PATTERN}")
    if "id" in doc:
        activity_id = doc["id"]
        if not is_valid_name(activity_id):
            raise InvalidActivity(f"bad id {json.dumps(activity_id)}: must match {NAME_PATTERN}")
        if queued.canonical and queued.stem != activity_id:
            raise InvalidActivity(f"file name says id {queued.stem!r} but the document says {activity_id!r}")
    elif is_valid_name(queued.stem):
        activity_id = queued.stem
    else:
        raise InvalidActivity(
            f"no 'id' field and the file name '{printable(queued.stem)}' is not a valid id ({NAME_PATTERN})"
        )
    data = doc.get("data", {})
    if not isinstance(data, dict):
        raise InvalidActivity(f"'data' must be a JSON object, got {_json_kind(data)}")
    not_before = parse_time(doc["not_before"]) if doc.get("not_before") is not None else None
    if not_before is not None and not (math.isfinite(not_before) and not_before <= LATEST):
        raise InvalidActivity("not_before is past 9999-12-31T23:59:59Z, the latest time spoolpipe can write")
    if not_before is not None and not_before < 0:  # before 1970: past, so due now as any past time
        not_before = None
    if queued.not_before_ms is not None:  # a retry's backoff (or a person's name): never the earlier
        not_before = max(not_before or 0.0, queued.not_before_ms / 1000)
    priority = document_priority(doc)
    extra = {k: v for k, v in doc.items() if k not in _KNOWN_FIELDS}
    return Activity(
        str(activity_id), str(type_), data, queued.attempt, not_before, extra, _history(doc), priority
    )


def _history(doc: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    section = doc.get("spoolpipe")
    history = section.get("history") if isinstance(section, dict) else None
    if not isinstance(history, list):
        return ()
    return tuple(h for h in history if isinstance(h, dict))


# What of a failed record's ``spoolpipe`` section a retried activity carries in its history.
_HISTORY_FIELDS = (
    "status",
    "attempts",
    "reason",
    "worker",
    "host",
    "started_at",
    "finished_at",
    "attempt_history",
)


def retried_activity(record: Mapping[str, Any]) -> Activity:
    """The activity a failed record came from, as a first attempt again, the record added to its history."""
    section = record.get("spoolpipe")
    if not isinstance(section, dict) or section.get("status") != "failed":
        raise InvalidActivity("not a failed record (no spoolpipe section with status failed)")
    original = {k: v for k, v in record.items() if k not in ("result", "spoolpipe", "not_before")}
    activity = activity_from_document(original, QueuedName(str(record.get("id", ""))))
    earlier = _history(record)
    entry = {k: section[k] for k in _HISTORY_FIELDS if k in section}
    return dataclasses.replace(activity, history=(*earlier, entry))


def parse_activity(raw: bytes, name: str) -> Activity:
    """Bytes of an inbox file named ``name`` to an Activity, or InvalidActivity."""
    return activity_from_document(parse_document(raw), parse_inbox_name(name))
