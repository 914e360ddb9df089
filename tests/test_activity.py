"""Unit tests of the pure core: the activity model, names, ids, retry policy and record builders.

Everything here is the contract of ``docs/repository-format.md``; no file system access.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import string
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spoolpipe.activity import (
    NAME_PATTERN,
    Activity,
    ClaimName,
    InvalidActivity,
    derived_id,
    format_time,
    is_ignored,
    is_valid_name,
    nesting,
    new_id,
    parse_activity,
    parse_claim_name,
    parse_inbox_name,
    parse_running_name,
    parse_time,
    queued_name,
)
from spoolpipe.record import Attempt, done_record, failed_record, failure_document, follow_up_document
from spoolpipe.repository import dumps
from spoolpipe.retry import RetryPolicy

NAME = re.compile(rf"\A{NAME_PATTERN}\Z")
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ATTEMPT = Attempt("nas", "nas.local", 4242, 1_795_334_400.120, 1_795_334_400.310)


def parse(doc: Any, name: str = "a.json") -> Activity:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return parse_activity(raw, name)


def reason_of(raw: bytes, name: str = "a.json") -> str:
    with pytest.raises(InvalidActivity) as info:
        parse_activity(raw, name)
    assert info.value.reason == str(info.value)
    return info.value.reason


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# -- parse_activity: valid forms ------------------------------------------------------------------


def test_minimal_activity_takes_its_id_from_the_file_name() -> None:
    activity = parse({"type": "invoice.render"}, "01M80FE64HTEC8XYP509KA1G1P.json")
    assert activity == Activity("01M80FE64HTEC8XYP509KA1G1P", "invoice.render", {}, 1, None)


def test_id_field_wins_over_the_file_name() -> None:
    activity = parse({"id": "job-7", "type": "t", "data": {"n": 7}}, "whatever name.json")
    assert (activity.id, activity.type, dict(activity.data)) == ("job-7", "t", {"n": 7})


def test_file_name_without_json_suffix_is_used_whole() -> None:
    assert parse({"type": "t"}, "plain_name").id == "plain_name"


def test_other_top_level_fields_are_kept_but_not_interpreted() -> None:
    activity = parse({"type": "t", "note": "hello", "tags": [1, 2]}, "x.json")
    assert activity == Activity("x", "t", {}, 1, None, {"note": "hello", "tags": [1, 2]})
    assert activity.to_json()["note"] == "hello"


def test_data_is_handed_over_as_parsed() -> None:
    data = {"s": "é ✓", "n": -1.5, "nested": {"list": [1, None, True]}, "big": 10**30}
    assert dict(parse({"type": "t", "data": data}).data) == data


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-22T08:00:00Z", "2026-11-22T08:00:00+00:00"),
        ("2026-11-22T08:00:00z", "2026-11-22T08:00:00+00:00"),
        ("2026-11-22T08:00:00+01:00", "2026-11-22T08:00:00+01:00"),
        ("2026-11-22T08:00:00.250-05:30", "2026-11-22T08:00:00.250-05:30"),
        # A leap second (ISO 8601 and RFC 3339 allow second 60) is the next second: it was refused
        ("2016-12-31T23:59:60Z", "2017-01-01T00:00:00+00:00"),
        ("2016-12-31T23:59:60.5Z", "2017-01-01T00:00:00.5+00:00"),
    ],
)
def test_not_before_with_a_zone(text: str, expected: str) -> None:
    assert parse({"type": "t", "not_before": text}).not_before == pytest.approx(epoch(expected))


def test_not_before_null_means_no_earliest_start() -> None:
    assert parse({"type": "t", "not_before": None}).not_before is None


def test_canonical_retry_name_gives_the_attempt() -> None:
    activity = parse({"type": "t"}, "job-7~3.json")
    assert (activity.id, activity.attempt, activity.not_before) == ("job-7", 3, None)


def test_canonical_retry_name_with_time_gives_attempt_and_not_before() -> None:
    activity = parse({"id": "job-7", "type": "t"}, "job-7~4~1795334400123.json")
    assert (activity.id, activity.attempt) == ("job-7", 4)
    assert activity.not_before == pytest.approx(1_795_334_400.123)


def test_the_later_of_the_name_and_the_document_applies() -> None:
    """The name's time replaced the document's: ``early~1~1000.json`` of a 2030 activity ran at once."""
    doc = {"type": "t", "not_before": "2030-01-01T00:00:00Z"}
    assert parse(doc, "x~2~1000.json").not_before == parse_time("2030-01-01T00:00:00Z")
    doc = {"type": "t", "not_before": "1970-01-01T00:00:01Z"}  # a retry's backoff, later
    assert parse(doc, "x~2~5000.json").not_before == pytest.approx(5.0)


@pytest.mark.parametrize(
    "text", ["1969-12-31T23:59:59Z", "0001-01-01T00:00:00+14:00", "1960-06-01T12:00:00-05:00"]
)
def test_a_not_before_before_1970_is_past_so_due_now(text: str) -> None:
    """It was quarantined: "not_before is out of range (1970-01-01 to 9999-12-31)"."""
    assert parse({"type": "t", "not_before": text}).not_before is None
    assert parse({"id": "x", "type": "t", "not_before": text}, "x~2~3000.json").not_before == 3.0


def test_a_not_before_past_9999_is_invalid() -> None:
    reason = reason_of(b'{"type": "t", "not_before": "9999-12-31T23:59:59-01:00"}', "x.json")
    assert reason == "not_before is past 9999-12-31T23:59:59Z, the latest time spoolpipe can write"


def test_canonical_name_whose_document_id_differs_is_invalid() -> None:
    reason = reason_of(b'{"id": "other", "type": "t"}', "job-7~2.json")
    assert "job-7" in reason
    assert "other" in reason


def test_names_that_only_look_canonical_are_plain_names() -> None:
    # Attempt 0 and a leading zero are not spoolpipe's: the whole stem is the (invalid) id...
    # ... nor is a time past 9999-12-31, which no document could give (its file would wait forever).
    for name in (
        "x~0.json",
        "x~01.json",
        "x~1~1e5.json",
        "x~1~999999999999999.json",
        "x~2~253402300800000.json",
    ):
        assert parse_inbox_name(name).canonical is False
        with pytest.raises(InvalidActivity, match="not a valid id"):
            parse({"type": "t"}, name)
    # ...and with an id field they are attempt 1.
    assert parse({"id": "x", "type": "t"}, "x~0.json").attempt == 1


# -- parse_activity: every invalid input class names its problem -----------------------------------


def test_malformed_json_reports_line_and_column() -> None:
    reason = reason_of(b'{\n  "type": "t",\n  "data": }\n')
    assert "malformed JSON" in reason
    assert "line 3 column 11" in reason


def test_truncated_json_is_malformed() -> None:
    assert "malformed JSON at line 1" in reason_of(b'{"type": "t", "data": {"a"')


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_rejected(token: str) -> None:
    reason = reason_of(f'{{"type": "t", "data": {{"x": {token}}}}}'.encode())
    assert token.lstrip("-") in reason
    assert "RFC 8259" in reason


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"[]", "a JSON array"),
        (b'"t"', "a JSON string"),
        (b"1", "a JSON number"),
        (b"null", "JSON null"),  # it said "a JSON NoneType": Python's words
        (b"true", "JSON true"),
    ],
)
def test_top_level_must_be_an_object(raw: bytes, kind: str) -> None:
    assert reason_of(raw) == f"top level is {kind}, expected an object"


def test_missing_type() -> None:
    assert reason_of(b'{"data": {}}') == "missing required field 'type'"


@pytest.mark.parametrize("value", ["", "-x", ".x", "a b", "a/b", "é", "a" * 129, 5, None, ["t"], {"t": 1}])
def test_bad_type(value: Any) -> None:
    reason = reason_of(json.dumps({"type": value}).encode())
    assert reason.startswith("bad type")
    assert NAME_PATTERN in reason


def test_type_of_128_characters_is_fine() -> None:
    assert parse({"type": "a" * 128}).type == "a" * 128


@pytest.mark.parametrize("value", ["", "../x", "a~1", "a b", "x.json/", "a" * 129, 5, None, True])
def test_bad_id(value: Any) -> None:
    reason = reason_of(json.dumps({"id": value, "type": "t"}).encode())
    assert reason.startswith("bad id")
    assert NAME_PATTERN in reason


def test_no_id_and_a_file_name_that_is_not_an_id() -> None:
    reason = reason_of(b'{"type": "t"}', "my invoice.json")
    assert "no 'id' field" in reason
    assert "my invoice" in reason


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ([1], "a JSON array"),
        ("x", "a JSON string"),
        (5, "a JSON number"),
        (None, "JSON null"),
        (True, "JSON true"),
    ],
)
def test_data_must_be_an_object_in_json_words(value: Any, kind: str) -> None:
    reason = reason_of(json.dumps({"type": "t", "data": value}).encode())
    assert reason == f"'data' must be a JSON object, got {kind}"


def test_not_utf8_names_the_offset() -> None:
    assert reason_of(b'{"type": "\xff"}') == "not UTF-8: invalid byte at offset 10"


def test_latin1_text_is_not_utf8() -> None:
    assert "not UTF-8" in reason_of('{"type": "t", "data": {"name": "Müller"}}'.encode("latin-1"))


def test_byte_order_mark() -> None:
    assert "byte order mark" in reason_of(b'\xef\xbb\xbf{"type": "t"}')


@pytest.mark.parametrize("raw", [b"", b"   ", b"\n\t\r\n"])
def test_empty(raw: bytes) -> None:
    assert reason_of(raw) == "file is empty"


def test_duplicate_keys_at_top_level() -> None:
    assert "duplicate key 'type'" in reason_of(b'{"type": "a", "type": "b"}')


def test_duplicate_keys_inside_data() -> None:
    assert "duplicate key 'x'" in reason_of(b'{"type": "t", "data": {"x": 1, "x": 2}}')


@pytest.mark.parametrize("text", ["2026-11-22T08:00:00", "2026-11-22 08:00", "2026-11-22"])
def test_not_before_without_a_zone(text: str) -> None:
    reason = reason_of(json.dumps({"type": "t", "not_before": text}).encode())
    assert "no time zone" in reason
    assert text in reason


@pytest.mark.parametrize("text", ["tomorrow", "", "2026-13-01T00:00:00Z", "2026-11-22T08:00:00+25:00"])
def test_not_before_unparsable(text: str) -> None:
    reason = reason_of(json.dumps({"type": "t", "not_before": text}).encode())
    assert "not an ISO-8601 timestamp" in reason


@pytest.mark.parametrize("value", [1795334400, True, ["2026-11-22T08:00:00Z"]])
def test_not_before_must_be_a_string(value: Any) -> None:
    assert "must be an ISO-8601 string" in reason_of(json.dumps({"type": "t", "not_before": value}).encode())


def test_absurd_nesting_is_invalid_not_a_crash_and_said_so() -> None:
    """Valid JSON, but deeper than the decoder goes: the reason is the nesting, not "malformed"."""
    raw = b'{"type": "t", "data": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    assert reason_of(raw) == "lists and objects are nested more than 100 levels deep"


def test_absurdly_long_number_is_invalid_not_a_crash_and_said_so() -> None:
    reason = reason_of(b'{"type": "t", "data": {"x": ' + b"9" * 5000 + b"}}")
    assert reason == "a number has more than 4300 digits"


def test_a_duplicate_key_is_named_as_such() -> None:
    assert reason_of(b'{"type": "a", "type": "b"}') == "duplicate key 'type'"


# -- an accepted activity can always be recorded -----------------------------------------------------
#
# Whatever parse_activity accepts, a worker must be able to write its done/failed record
# (RFC 8259, UTF-8) and its follow-ups. Otherwise the activity crashes the worker at settle
# time, is requeued by recovery as the next attempt, and crashes the next worker too.


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        pytest.param(b'{"type": "t", "data": {"x": 1e400}}', "a.json", id="number-overflowing-to-inf"),
        pytest.param(b'{"type": "t", "data": {"x": -1e400}}', "a.json", id="number-overflowing-to-minus-inf"),
        pytest.param(b'{"type": "t", "data": {"x": "\\ud800"}}', "a.json", id="lone-surrogate-escape"),
        pytest.param(
            b'{"type": "t", "not_before": "0001-01-01T00:00:00Z"}', "a.json", id="not-before-year-1"
        ),
        pytest.param(
            b'{"type": "t", "not_before": "0001-01-01T00:00:00+14:00"}',
            "a.json",
            id="not-before-before-year-1",
        ),
    ],
)
def test_an_accepted_activity_can_be_recorded(raw: bytes, name: str) -> None:
    try:
        activity = parse_activity(raw, name)
    except InvalidActivity:
        return  # rejecting it up front is fine too
    for doc in (
        activity.to_json(),
        done_record(activity, ATTEMPT, None, []),
        failed_record(activity, ATTEMPT, "boom", ""),
    ):
        encoded = dumps(doc)
        json.loads(encoded, parse_constant=lambda token: pytest.fail(f"{token} written"))


# -- the property: parse_activity never raises anything but InvalidActivity -------------------------

_ALNUM = string.ascii_letters + string.digits
_ids = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(_ALNUM),
    st.text(alphabet=_ALNUM + "._-", max_size=127),
)
_names = st.one_of(
    _ids.map(lambda s: s + ".json"),
    st.builds(
        lambda i, n, ms: f"{i}~{n}{'' if ms is None else f'~{ms}'}.json",
        st.sampled_from(["a", "job-7", "01M80FE64HTEC8XYP509KA1G1P"]),
        st.integers(0, 10**7),
        st.none() | st.integers(0, 10**16),
    ),
    st.text(max_size=40),
)
_timestamps = st.one_of(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]) | st.none(),
    ).map(lambda d: d.isoformat()),
    st.text(max_size=30),
    st.integers(),
    st.none(),
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_field_values = {
    "type": st.one_of(_ids, _json),
    "id": st.one_of(_ids, st.sampled_from(["a", "job-7"]), _json),
    "data": st.one_of(st.dictionaries(st.text(max_size=8), _json, max_size=4), _json),
    "not_before": _timestamps,
}
_documents = st.fixed_dictionaries({}, optional={**_field_values, "extra": _json}).map(
    lambda d: json.dumps(d, allow_nan=True).encode()
)


def _mangle(raw: bytes, cut: int, junk: bytes) -> bytes:
    return raw[: cut % (len(raw) + 1)] + junk


_inputs = st.one_of(
    st.binary(max_size=200),
    _documents,
    st.builds(_mangle, _documents, st.integers(0, 500), st.binary(max_size=4)),
    _json.map(lambda d: json.dumps(d, allow_nan=True).encode()),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_inputs, name=_names)
def test_parse_activity_returns_a_valid_activity_or_raises_invalid_activity(raw: bytes, name: str) -> None:
    try:
        activity = parse_activity(raw, name)
    except InvalidActivity as exc:
        assert isinstance(exc.reason, str)
        assert exc.reason.strip()
        return
    assert isinstance(activity, Activity)
    assert NAME.match(activity.id)
    assert NAME.match(activity.type)
    assert isinstance(activity.data, dict)
    assert isinstance(activity.attempt, int)
    assert activity.attempt >= 1
    assert activity.not_before is None or (
        isinstance(activity.not_before, float) and math.isfinite(activity.not_before)
    )
    queued = parse_inbox_name(name)
    assert activity.attempt == queued.attempt
    if queued.canonical:
        assert activity.id == queued.stem


# -- names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ignored"),
    [
        (".hidden", True),
        (".a.json", True),
        ("a.json.tmp", True),
        ("a.tmp", True),
        ("a.part", True),
        ("a.json", False),
        ("tmp", False),
        ("a.tmp.json", False),
        ("a.partial", False),
        ("a~2~1000.json", False),
    ],
)
def test_is_ignored(name: str, ignored: bool) -> None:
    assert is_ignored(name) is ignored


def test_new_id_is_a_26_character_crockford_ulid() -> None:
    for _ in range(100):
        value = new_id()
        assert len(value) == 26
        assert set(value) <= set(CROCKFORD)
        assert value[0] in "01234567"  # 128 bits in 130: the first character carries 3 bits
        assert is_valid_name(value)


def test_new_id_starts_with_the_millisecond_time() -> None:
    now = 1_795_334_400.123
    prefix = new_id(now)[:10]
    assert sum(CROCKFORD.index(c) << (5 * (9 - i)) for i, c in enumerate(prefix)) == 1_795_334_400_123


def test_new_id_sorts_by_time() -> None:
    times = [1_000_000.0 + i * 0.001 for i in range(0, 5000, 7)] + [1.0, 2**40 / 1000, 1_795_334_400.5]
    shuffled = random.Random(1).sample(times, len(times))
    ids = {new_id(t): t for t in shuffled}
    assert [ids[i] for i in sorted(ids)] == sorted(times)


def test_new_id_is_unique() -> None:
    ids = [new_id(1_795_334_400.0) for _ in range(20_000)]
    assert len(set(ids)) == len(ids)


def test_derived_id_is_deterministic_and_a_valid_id() -> None:
    first = derived_id("01M80FE64HTEC8XYP509KA1G1P", "1")
    assert first == derived_id("01M80FE64HTEC8XYP509KA1G1P", "1")
    assert len(first) == 26
    assert is_valid_name(first)


def test_derived_id_differs_for_different_parts() -> None:
    ids = {
        derived_id("p", "1"),
        derived_id("p", "2"),
        derived_id("q", "1"),
        derived_id("p1"),
        derived_id("p", "1", ""),
        derived_id("p", "", "1"),
    }
    assert len(ids) == 6


@given(
    activity_id=_ids,
    attempt=st.integers(1, 999_999),
    ms=st.none() | st.integers(0, 253_402_300_799_000),  # up to 9999-12-31, the documented range
)
@settings(max_examples=100, deadline=None)
def test_queued_name_round_trips(activity_id: str, attempt: int, ms: int | None) -> None:
    not_before = None if ms is None else ms / 1000
    name = queued_name(activity_id, attempt, not_before)
    parsed = parse_inbox_name(name)
    assert (parsed.stem, parsed.attempt) == (activity_id, attempt)
    if not_before is None:
        assert parsed.not_before_ms is None
    else:
        assert parsed.not_before_ms / 1000 >= not_before  # never due early
        assert 0 <= parsed.not_before_ms - ms <= 1
    assert parsed.canonical  # always with the attempt: never taken for a file a person dropped
    # The same file read back: attempt and not_before come from the name alone.
    activity = parse_activity(b'{"type": "t"}', name)
    assert (activity.id, activity.attempt) == (activity_id, attempt)


def test_queued_name_shapes() -> None:
    assert queued_name("X", 1, None) == "X~1.json"
    assert queued_name("X", 2, None) == "X~2.json"
    assert queued_name("X", 3, 1_795_334_400.5) == "X~3~1795334400500.json"
    assert queued_name("X", 1, 1.0) == "X~1~1000.json"
    # Past every retry.max-attempts all the same, and still read back as such (not as attempt 1).
    assert queued_name("X", 10**8, None) == "X~9999999.json"
    assert parse_inbox_name("X~1000000.json").attempt == 1_000_000


def test_parse_inbox_name_of_a_foreign_name() -> None:
    parsed = parse_inbox_name("report 7.json")
    assert (parsed.stem, parsed.attempt, parsed.not_before_ms, parsed.canonical) == (
        "report 7",
        1,
        None,
        False,
    )


def test_parse_claim_name() -> None:
    claim = parse_claim_name("job-7~3~nas.local.json")
    assert claim == ClaimName("job-7", 3, "nas.local")
    assert claim is not None
    assert claim.name == "job-7~3~nas.local.json"
    assert claim.stem == "job-7~3~nas.local"


@pytest.mark.parametrize(
    "name",
    [
        "job~3.json",
        "job~0~w.json",
        "job~a~w.json",
        "job~3~w",
        "job~3~w~x.json",
        "~3~w.json",
        "job~3~.json",
        "",
    ],
)
def test_parse_claim_name_rejects_other_names(name: str) -> None:
    assert parse_claim_name(name) is None


@given(
    activity_id=_ids,
    attempt=st.integers(1, 999_999),
    worker=_ids,
)
@settings(max_examples=50, deadline=None)
def test_claim_name_round_trips(activity_id: str, attempt: int, worker: str) -> None:
    claim = ClaimName(activity_id, attempt, worker)
    assert parse_claim_name(claim.name) == claim


@pytest.mark.parametrize(
    ("name", "kind", "follow_up"),
    [
        ("job-7~3~nas.local.json", None, ""),
        ("job-7~3~nas.local~committed", "committed", ""),
        ("job-7~3~nas.local~done", "done", ""),
        ("job-7~3~nas.local~failed", "failed", ""),
        ("job-7~3~nas.local~follow-up~5GRXJ3I2ASRSMFPRMWCD3WRST6", "follow-up", "5GRXJ3I2ASRSMFPRMWCD3WRST6"),
    ],
)
def test_the_names_in_running_are_the_documented_ones(name: str, kind: str | None, follow_up: str) -> None:
    parsed = parse_running_name(name)
    assert parsed is not None
    assert (parsed.claim, parsed.kind, parsed.follow_up) == (
        ClaimName("job-7", 3, "nas.local"),
        kind,
        follow_up,
    )
    assert parsed.name == name
    assert parse_claim_name(name) == (parsed.claim if kind is None else None)


@pytest.mark.parametrize(
    "name",
    [
        "job~3~w~committed.json",
        "job~3~w~done~x",
        "job~3~w~follow-up",
        "job~3~w~follow-up~",
        "job~3~w~follow-up~a~b",
        "job~3~w~follow-up~bad id",
        "job~3~w~running",
        "job~3~w~DONE",
        "job~3~w~done\n",
        "not-a-claim.txt",
    ],
)
def test_other_names_in_running_are_not_spoolpipes(name: str) -> None:
    assert parse_running_name(name) is None


@given(activity_id=_ids, attempt=st.integers(1, 999_999), worker=_ids, follow_up=_ids)
@settings(max_examples=50, deadline=None)
def test_staged_names_round_trip(activity_id: str, attempt: int, worker: str, follow_up: str) -> None:
    claim = ClaimName(activity_id, attempt, worker)
    for kind in ("committed", "done", "failed", "follow-up"):
        parsed = parse_running_name(claim.staged(kind, follow_up))
        assert parsed is not None
        assert (parsed.claim, parsed.kind) == (claim, kind)
        assert parsed.follow_up == (follow_up if kind == "follow-up" else "")


def test_is_valid_name() -> None:
    assert is_valid_name("a")
    assert is_valid_name("A0._-z")
    assert not is_valid_name("a\n")
    assert not is_valid_name(b"a")
    assert not is_valid_name(None)
    assert not any(is_valid_name(c + "a") for c in "._-~ " + string.punctuation.replace("_", ""))


# -- retry policy --------------------------------------------------------------------------------


def test_retry_defaults_match_the_documented_defaults() -> None:
    assert RetryPolicy() == RetryPolicy(5, 2.0, 600.0, 0.25)


def test_delays_double_and_are_capped() -> None:
    policy = RetryPolicy(max_attempts=20, backoff_seconds=2.0, backoff_max_seconds=100.0, jitter=0)
    assert [policy.delay(n) for n in range(1, 9)] == [2, 4, 8, 16, 32, 64, 100, 100]


def test_a_huge_attempt_number_is_capped_not_an_overflow() -> None:
    policy = RetryPolicy(backoff_max_seconds=600.0, jitter=0)
    assert policy.delay(10_000) == 600.0


def test_zero_backoff_means_no_delay() -> None:
    assert RetryPolicy(backoff_seconds=0, jitter=0.5).delay(7) == 0.0


@pytest.mark.parametrize("jitter", [0.25, 0.5, 1.0])
def test_jitter_stays_within_its_bounds_and_varies(jitter: float) -> None:
    policy = RetryPolicy(backoff_seconds=2.0, backoff_max_seconds=600.0, jitter=jitter)
    rng = random.Random(42)
    for attempt, base in [(1, 2.0), (3, 8.0), (20, 600.0)]:
        delays = [policy.delay(attempt, rng) for _ in range(500)]
        assert min(delays) >= base * (1 - jitter) - 1e-9
        assert max(delays) <= base * (1 + jitter) + 1e-9
        assert min(delays) >= 0.0
        assert max(delays) - min(delays) > base * jitter  # actually spread, not a constant


def test_jitter_uses_the_given_rng() -> None:
    policy = RetryPolicy()
    assert policy.delay(2, random.Random(7)) == policy.delay(2, random.Random(7))


def test_gives_up_after() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.gives_up_after(n) for n in (1, 2, 3, 4)] == [False, False, True, True]
    assert RetryPolicy(max_attempts=1).gives_up_after(1)


# -- record builders -------------------------------------------------------------------------------


def test_done_record_shape() -> None:
    activity = Activity("01M80FE64HTEC8XYP509KA1G1P", "invoice.render", {"number": 7}, 1, None)
    record = done_record(activity, ATTEMPT, {"pages": 3}, ["7ZQ2M4K3D5HJ6N7P8R9S0T1V2W"])
    section = record.pop("spoolpipe")
    assert record == {
        "id": "01M80FE64HTEC8XYP509KA1G1P",
        "type": "invoice.render",
        "data": {"number": 7},
        "result": {"pages": 3},
    }
    started, finished = section.pop("started_at"), section.pop("finished_at")
    assert section.pop("attempt_history") == [
        {
            "attempt": 1,
            "worker": "nas",
            "host": "nas.local",
            "started_at": started,
            "finished_at": finished,
            "outcome": "done",
        }
    ]
    assert section == {
        "status": "done",
        "attempts": 1,
        "worker": "nas",
        "host": "nas.local",
        "pid": 4242,
        "follow_ups": ["7ZQ2M4K3D5HJ6N7P8R9S0T1V2W"],
    }
    for text, expected in ((started, ATTEMPT.started), (finished, ATTEMPT.finished)):
        moment = datetime.fromisoformat(text)
        assert moment.tzinfo is not None
        assert re.search(r"\.\d{3}[+-]\d\d:\d\d\Z", text), text
        assert moment.timestamp() == pytest.approx(expected, abs=0.001)


def test_done_record_with_a_null_result_keeps_the_key() -> None:
    record = done_record(Activity("a", "t"), ATTEMPT, None, [])
    assert "result" in record
    assert record["result"] is None
    assert record["spoolpipe"]["follow_ups"] == []


def test_failed_record_shape() -> None:
    activity = Activity("job-7", "t", {"n": 1}, 5, None)
    record = failed_record(activity, ATTEMPT, "RuntimeError: boom", "Traceback ...\n")
    section = record.pop("spoolpipe")
    assert record == {"id": "job-7", "type": "t", "data": {"n": 1}}
    assert set(section) == {
        "status",
        "attempts",
        "worker",
        "host",
        "pid",
        "started_at",
        "finished_at",
        "reason",
        "traceback",
        "attempt_history",
    }
    assert section["attempt_history"][-1]["outcome"] == "failed"
    assert section["attempt_history"][-1]["error"] == "RuntimeError: boom"
    assert (section["status"], section["attempts"], section["reason"], section["traceback"]) == (
        "failed",
        5,
        "RuntimeError: boom",
        "Traceback ...\n",
    )


def test_records_keep_the_activitys_other_top_level_fields() -> None:
    # docs/repository-format.md: "Other top-level fields are kept but ignored" and
    # "A record is the activity's own fields plus: ..." (result and the spoolpipe section).
    activity = parse_activity(b'{"type": "t", "note": "for the accountant", "tags": ["a"]}', "job-7.json")
    for record in (done_record(activity, ATTEMPT, 1, []), failed_record(activity, ATTEMPT, "boom", "")):
        assert record.get("note") == "for the accountant"
        assert record.get("tags") == ["a"]


def test_records_are_writable_json() -> None:
    activity = Activity("job-7", "t", {"s": "é"}, 2, 1_795_334_400.0)
    for record in (done_record(activity, ATTEMPT, {"x": [1]}, []), failed_record(activity, ATTEMPT, "r", "")):
        assert json.loads(dumps(record)) == record


def test_a_failed_record_read_back_is_the_same_activity_as_attempt_one() -> None:
    activity = Activity("job-7", "t", {"n": 1}, 5, None)
    raw = dumps(failed_record(activity, ATTEMPT, "boom", ""))
    assert parse_activity(raw, "job-7.json") == Activity("job-7", "t", {"n": 1}, 1, None)


def test_follow_up_ids_are_deterministic_per_parent_and_key() -> None:
    parent = Activity("01M80FE64HTEC8XYP509KA1G1P", "t")
    again = Activity("01M80FE64HTEC8XYP509KA1G1P", "t", {"other": "data"}, 3, None)
    first = follow_up_document(parent, "child", {"i": 1}, "1", None)
    assert first["id"] == follow_up_document(again, "child", {"i": 99}, "1", None)["id"]
    assert first["id"] == derived_id(parent.id, "1")
    others = {
        follow_up_document(parent, "child", {"i": 1}, "2", None)["id"],
        follow_up_document(parent, "child", {"i": 1}, "thumb", None)["id"],
        follow_up_document(Activity("other-parent", "t"), "child", {"i": 1}, "1", None)["id"],
    }
    assert first["id"] not in others
    assert len(others) == 3


def test_follow_up_document_shape() -> None:
    parent = Activity("p", "t")
    doc = follow_up_document(parent, "child", {"i": 1}, "1", None)
    assert doc == {"id": derived_id("p", "1"), "type": "child", "data": {"i": 1}, "parent": "p"}
    delayed = follow_up_document(parent, "child", {}, "2", 1_795_334_400.0)
    assert set(delayed) == {"id", "type", "data", "not_before", "parent"}
    assert datetime.fromisoformat(delayed["not_before"]).timestamp() == 1_795_334_400.0
    # It is an activity like any other: the inbox file parses back to the same thing.
    assert parse_activity(dumps(delayed), f"{delayed['id']}.json") == Activity(
        delayed["id"], "child", {}, 1, 1_795_334_400.0, {"parent": "p"}
    )


def test_failure_document_fields() -> None:
    activity = Activity("job-7", "invoice.render", {"n": 1}, 5, None)
    record = failed_record(activity, ATTEMPT, "RuntimeError: boom", "tb")
    doc = failure_document("spoolpipe.failure", record, 1_048_576)
    assert set(doc) == {"id", "type", "data", "parent"}
    assert doc["parent"] == "job-7"
    assert doc["type"] == "spoolpipe.failure"
    assert is_valid_name(doc["id"])
    assert doc["data"] == {
        "failed": {
            "id": "job-7",
            "type": "invoice.render",
            "data": {"n": 1},
            "reason": "RuntimeError: boom",
            "traceback": "tb",
            "attempts": 5,
            "worker": "nas",
            "host": "nas.local",
            "failed_at": record["spoolpipe"]["finished_at"],
            "record": "failed/job-7.json",
            "omitted": [],
        }
    }


def test_failure_ids_are_deterministic_but_differ_for_a_later_failure() -> None:
    activity = Activity("job-7", "t")
    record = failed_record(activity, ATTEMPT, "boom", "")
    assert failure_document("h", record, 1_048_576)["id"] == failure_document("h", record, 1_048_576)["id"]
    later = Attempt("nas", "nas.local", 4242, ATTEMPT.started + 60, ATTEMPT.finished + 60)
    assert (
        failure_document("h", record, 1_048_576)["id"]
        != failure_document("h", failed_record(activity, later, "boom", ""), 1_048_576)["id"]
    )


def _nested(levels: int) -> object:
    value: object = {}
    for _ in range(levels - 1):
        value = {"x": value}
    return value


def test_data_may_nest_as_deep_as_a_result_and_no_deeper() -> None:
    """Deeper data cannot be handed to a pool process (pickling runs out of recursion), so it is
    invalid on arrival rather than a crash of every worker that reads it."""
    deepest = parse_activity(json.dumps({"type": "t", "data": _nested(100)}).encode(), "a.json")
    assert nesting(deepest.data) == 100
    with pytest.raises(InvalidActivity, match="nested more than 100 levels deep"):
        parse_activity(json.dumps({"type": "t", "data": _nested(101)}).encode(), "a.json")
    with pytest.raises(InvalidActivity, match="nested more than 100 levels deep"):
        parse_activity(json.dumps({"type": "t", "other": [_nested(101)]}).encode(), "a.json")


def test_a_failure_activity_leaves_out_data_nested_too_deep_for_it() -> None:
    """The failed activity's data sits two levels down in the failure activity's: data as deep as
    may be would make the failure activity invalid, so it is left out (read from the record)."""
    for levels, omitted in ((98, []), (99, ["data"]), (100, ["data"])):
        record = failed_record(Activity("job-7", "t", _nested(levels)), ATTEMPT, "boom", "tb")
        doc = failure_document("spoolpipe.failure", record, 1_048_576)
        assert doc["data"]["failed"]["omitted"] == omitted, levels
        assert parse_activity(dumps(doc), f"{doc['id']}.json").data == doc["data"]


def test_the_latest_time_an_activity_may_give_can_be_written_in_any_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """9999-12-31T23:59:59Z is year 10000 fourteen hours east: written in UTC there, not a crash."""
    latest = parse_time("9999-12-31T23:59:59Z")
    monkeypatch.setenv("TZ", "EAST-14")
    time.tzset()
    try:
        assert datetime.fromisoformat(format_time(latest)).timestamp() == latest
        assert datetime.fromisoformat(format_time(0.0)).timestamp() == 0.0
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_reason_writes_a_name_as_the_escaping_rules_say() -> None:
    """repr() doubled backslashes and wrote an undecodable byte as \\udce9, not \\xe9."""
    name = os.fsdecode(b"caf\xe9 tab\\x41.json")
    with pytest.raises(InvalidActivity) as info:
        parse_activity(b'{"type": "t"}', name)
    assert "the file name 'caf\\xe9 tab\\x41' is not a valid id" in info.value.reason
