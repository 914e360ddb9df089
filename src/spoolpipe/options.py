"""Reading one processor's settings (``processor.<type>.<key>``): a raw string made a typed value.

Pure: :func:`parse_option` converts or says, in a ``ValueError``, what is wrong and
what was expected; ``Context.option`` adds the key and the ``file:line`` that set it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, cast

from .config import BoolKind, FloatKind, parse_integer

T = TypeVar("T")

_BOOL = BoolKind()
_FLOAT = FloatKind(-math.inf)


def parse_option(raw: str, kind: Callable[[str], T]) -> T:
    """``raw`` as ``kind``: ``str`` (as written), ``int``, ``float`` (finite), ``bool`` (as
    ``BoolKind``: true/false, yes/no, on/off, 1/0) or any other callable taking the string
    (``Path``, ``Decimal``...), any exception of which means "does not parse".
    """
    if not callable(kind):
        raise TypeError(f"the kind of a setting must be a type or a callable, not {kind!r}")
    text = raw.strip()
    if kind is str:
        return cast(T, raw)
    if kind is bool:
        try:
            return cast(T, _BOOL.parse(raw, Path()))
        except Exception as exc:  # config's own "not a boolean"
            raise ValueError(f"{exc}; expected {_BOOL.expected}") from None
    if kind is int or kind is float:  # as the configuration's own keys: ASCII digits, no "1_0"
        try:
            return cast(T, parse_integer(raw) if kind is int else _FLOAT.parse(raw, Path()))
        except Exception as exc:  # config's own "not an integer", "not a number", "out of range"
            raise ValueError(str(exc)) from None
    try:
        return kind(raw)
    except Exception as exc:  # whatever the conversion raises (decimal.InvalidOperation...)
        name = getattr(kind, "__name__", repr(kind))
        raise ValueError(f"{text!r} is not a valid {name}: {type(exc).__name__}: {exc}") from None
