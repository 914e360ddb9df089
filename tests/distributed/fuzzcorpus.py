"""A deterministic corpus of inbox files that can never run, generated with hypothesis.

Every entry is invalid by construction, for one reason the repository format names
(docs/repository-format.md): not UTF-8, a byte order mark, not JSON, truncated JSON, NaN or an
infinite number, a number CPython will not read (over 4300 digits), nesting deeper than the
parser goes, a top level that is not an object, a missing or ill-typed field, an id or type
outside ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``, duplicate keys, a ``not_before`` without a zone,
or a spoolpipe-style name (``ID~N.json``) whose id disagrees with the content.

``corpus(n)`` runs a ``@given`` function with ``derandomize=True`` and no database, so the same
hypothesis version gives the same files on every run, and collects what it was given.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

#: (kind, file name stem or None for a generated one, content). The kind says why it is invalid.
Junk = tuple[str, str | None, bytes]

_valid_names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,20}\Z")
_bad_names = st.text(max_size=140).filter(lambda s: NAME.fullmatch(s) is None)
_json_leaf: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**9), 10**9),
    st.text(max_size=20),
    st.floats(allow_nan=False, allow_infinity=False),
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_data = st.dictionaries(st.text(max_size=8), _json, max_size=4)


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


@st.composite
def _activity(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": draw(_valid_names), "data": draw(_data)}
    if draw(st.booleans()):
        doc["id"] = draw(_valid_names)
    return doc


@st.composite
def _random_bytes(draw: st.DrawFn) -> Junk:
    raw = draw(st.binary(max_size=300))
    try:  # the odds are nil, but random bytes that happen to be a JSON object are not junk
        if isinstance(json.loads(raw), dict):
            raw = b"\xff" + raw
    except ValueError:
        pass
    return ("random bytes", None, raw)


@st.composite
def _truncated(draw: st.DrawFn) -> Junk:
    raw = _dump(draw(_activity()))
    return ("truncated JSON", None, raw[: draw(st.integers(0, len(raw) - 1))])


@st.composite
def _wrong_type(draw: st.DrawFn) -> Junk:
    doc = draw(_activity())
    field = draw(st.sampled_from(["type", "data", "id", "missing type"]))
    if field == "missing type":
        del doc["type"]
    elif field == "data":
        doc["data"] = draw(st.one_of(st.lists(_json_leaf, max_size=3), _json_leaf))
    else:
        doc[field] = draw(
            st.one_of(st.integers(), st.booleans(), st.lists(_json_leaf, max_size=2), _bad_names)
        )
    return ("missing type" if field == "missing type" else f"wrong {field}", None, _dump(doc))


@st.composite
def _not_finite(draw: st.DrawFn) -> Junk:
    doc = draw(_activity())
    doc["data"][draw(st.text(max_size=5))] = draw(
        st.sampled_from([float("nan"), float("inf"), -float("inf")])
    )
    return ("NaN or Infinity", None, _dump(doc))


@st.composite
def _huge_number(draw: st.DrawFn) -> Junk:
    doc = _dump(draw(_activity()))[:-1]
    if draw(st.booleans()):
        number = f"{draw(st.integers(1, 9))}e{draw(st.integers(309, 10**6))}"  # overflows to inf
        kind = "out-of-range float"
    else:
        number = str(draw(st.integers(1, 9))) + "0" * draw(st.integers(4300, 20_000))
        kind = "integer over 4300 digits"
    return (kind, None, doc + b', "huge": ' + number.encode() + b"}")


@st.composite
def _deep(draw: st.DrawFn) -> Junk:
    depth = draw(st.integers(2_000, 40_000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    inner = opener * depth + b"1" * (opener == b'{"a":') + closer * depth
    if opener == b"[":
        inner = opener * depth + closer * depth
    return ("deep nesting", None, b'{"type": "t.noop", "data": {"deep": ' + inner + b"}}")


@st.composite
def _not_utf8(draw: st.DrawFn) -> Junk:
    raw = _dump(draw(_activity()))
    how = draw(st.sampled_from(["latin-1 byte", "utf-16", "bom"]))
    if how == "latin-1 byte":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\xfe", b"\xc0", b"\xe9"])) + raw[at:]
        if at == len(raw) - 1 and raw.endswith(b"\xe9"):
            raw += b"\xff"
    elif how == "utf-16":
        raw = raw.decode().encode("utf-16")
    else:
        raw = b"\xef\xbb\xbf" + raw
    return (f"not UTF-8 ({how})", None, raw)


@st.composite
def _not_an_object(draw: st.DrawFn) -> Junk:
    value = draw(st.one_of(st.lists(_json, max_size=3), _json_leaf))
    return ("top level not an object", None, _dump(value))


@st.composite
def _misc(draw: st.DrawFn) -> Junk:
    doc = draw(_activity())
    kind = draw(st.sampled_from(["duplicate key", "naive not_before", "bad not_before", "name mismatch"]))
    if kind == "duplicate key":
        raw = _dump(doc)[:-1] + b', "type": ' + _dump(doc["type"]) + b"}"
        return (kind, None, raw)
    if kind == "naive not_before":
        doc["not_before"] = "2030-01-01T00:00:00"
    elif kind == "bad not_before":
        doc["not_before"] = draw(
            st.one_of(st.text(max_size=12).filter(lambda s: s.strip() != ""), st.integers())
        )
    else:
        own = draw(_valid_names)
        doc["id"] = own + "x"
        return (kind, f"{own}~2", _dump(doc))
    return (kind, None, _dump(doc))


JUNK = st.one_of(
    _random_bytes(),
    _truncated(),
    _wrong_type(),
    _not_finite(),
    _huge_number(),
    _deep(),
    _not_utf8(),
    _not_an_object(),
    _misc(),
)


def corpus(n: int) -> list[Junk]:
    """About ``n`` junk entries, the same ones on every run (duplicate contents removed)."""
    found: dict[bytes, Junk] = {}

    @settings(
        max_examples=n,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(JUNK)
    def collect(junk: Junk) -> None:
        found.setdefault(junk[2], junk)

    collect()
    return list(found.values())
