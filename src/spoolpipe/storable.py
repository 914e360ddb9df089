"""What spoolpipe can write down: pure checks and bounds for what processors hand back.

A processor's result, its follow-ups' data and its error texts end up in JSON
files that other processes must be able to read back. They are checked in the
pool process that produced them, so that what cannot be stored fails its
activity with a precise reason instead of failing the daemon that writes it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: Deepest nesting of lists and objects in a stored value (a value that is a list is level 1).
MAX_DEPTH = 100
#: Longest reason, in characters, in a record, a failure activity or a log line.
REASON_CHARS = 500
#: Longest traceback, in characters, in a record or a failure activity.
TRACEBACK_CHARS = 20_000

_SHOWN_KEY_CHARS = 40
_CUT_NOTE = "\n[... {} characters cut; the full text is in the attempt log ...]\n"
_UNREADABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def message_of(exc: BaseException) -> str:
    """``str(exc)``, even for an exception whose ``__str__`` fails (it is a processor's code)."""
    try:
        return str(exc)
    except BaseException:
        return f"<str() of this {type(exc).__name__} failed>"


class NotStorable(ValueError):
    """A value that cannot be written as RFC 8259 JSON in UTF-8 within the limits; says where and why."""


class _OverBudget(Exception):
    """The byte budget ran out while checking: the value is over its size limit."""


def _compact(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def shown(value: object) -> str:
    """``repr(value)`` for a reason: at most 100 characters, even for a repr that raises."""
    try:
        text = repr(value)
    except Exception:  # a broken __repr__, or an int too long to print
        text = f"<a {type(value).__name__}>"
    return text if len(text) <= 100 else f"{text[:97]}..."


def encode(doc: Any) -> bytes:
    """A document as spoolpipe writes it: compact UTF-8 JSON (no NaN), one line."""
    return _compact(doc) + b"\n"


def _where(path: list[str]) -> str:
    return "".join(path)


def _check(value: Any, path: list[str], budget: list[int]) -> None:
    """Raise NotStorable for the first part of ``value`` JSON cannot hold; ``budget`` counts bytes down."""
    # Every value costs at least one byte: a cyclic or shared structure runs out of budget, not of time.
    budget[0] -= 1
    if budget[0] < 0:
        raise _OverBudget
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotStorable(
                f"{_where(path)}: {value!r} is not valid JSON (RFC 8259 has no NaN or Infinity)"
            )
        return
    if isinstance(value, str):
        budget[0] -= len(value)
        if budget[0] < 0:
            raise _OverBudget
        check_text(value, _where(path))
        return
    if isinstance(value, (dict, list, tuple)) and len(path) > MAX_DEPTH:
        raise NotStorable(
            f"{_where(path[:8])}...: lists and objects nested more than {MAX_DEPTH} levels deep"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotStorable(
                    f"{_where(path)}: key {key!r} ({type(key).__name__}): JSON object keys must be strings"
                )
            shown = key if len(key) <= _SHOWN_KEY_CHARS else key[:_SHOWN_KEY_CHARS] + "..."
            path.append(f"[{json.dumps(shown)}]")
            _check(key, path, budget)
            _check(item, path, budget)
            path.pop()
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            path.append(f"[{index}]")
            _check(item, path, budget)
            path.pop()
        return
    raise NotStorable(
        f"{_where(path)}: a {type(value).__name__} is not JSON "
        "(expected an object, list, string, number, true, false or null)"
    )


def check_text(value: str, what: str) -> None:
    """Raise NotStorable if ``value`` holds a lone surrogate, which UTF-8 cannot encode."""
    bad = re.search("[\ud800-\udfff]", value)
    if bad is not None:
        raise NotStorable(
            f"{what}: the string holds a lone surrogate {bad.group()!r} at index {bad.start()}, "
            "which is not valid UTF-8"
        )


def storable(value: Any, what: str, *, limit: int, limit_key: str) -> tuple[Any, int]:
    """``value`` as plain JSON values (what reading it back gives) and its encoded size.

    Raises NotStorable naming ``what`` (e.g. ``result``) and the part at fault; a value over
    ``limit`` bytes is refused with the name of the setting, ``limit_key``.
    """
    if value is None and limit >= 4:  # most processors return nothing: no need to encode it
        return None, 4
    try:
        _check(value, [what], [limit])
        encoded = _compact(value)
    except NotStorable:
        raise
    except _OverBudget:
        raise NotStorable(f"{what} is more than {limit} bytes as JSON, over {limit_key}={limit}") from None
    except (ValueError, TypeError, RecursionError, UnicodeEncodeError) as exc:  # e.g. an int too long
        raise NotStorable(f"{what} cannot be written as JSON: {type(exc).__name__}: {exc}") from None
    if len(encoded) > limit:
        raise NotStorable(f"{what} is {len(encoded)} bytes as JSON, over {limit_key}={limit}")
    return json.loads(encoded), len(encoded)


def readable(text: str) -> str:
    """``text`` with lone surrogates escaped, so it can be written as UTF-8 anywhere."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def reason_line(text: str, limit: int = REASON_CHARS) -> str:
    """One readable line of at most ``limit`` characters: whitespace runs (newlines too) become one
    space, control characters and lone surrogates are escaped, and a longer text is cut with a note.
    """
    collapsed = " ".join(text.split())
    head = _UNREADABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), collapsed[:limit])
    if len(collapsed) <= limit and len(head) <= limit:
        return head
    note = f" ... [cut: {len(collapsed)} characters in all; the full text is in the attempt log]"
    return head[: max(0, limit - len(note))] + note


def bounded_text(text: str, limit: int = TRACEBACK_CHARS) -> str:
    """``text`` (a traceback) readable and at most ``limit`` characters: its start and its end."""
    text = readable(text)
    if len(text) <= limit:
        return text
    keep = max(0, limit - len(_CUT_NOTE.format(len(text)))) // 2
    return text[:keep] + _CUT_NOTE.format(len(text) - 2 * keep) + text[len(text) - keep :]
