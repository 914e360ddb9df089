"""What may be written down: checks of processor output, bounded reasons, compact failure activities."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolpipe.activity import Activity, parse_activity
from spoolpipe.record import Attempt, failed_record, failure_document
from spoolpipe.storable import MAX_DEPTH, NotStorable, bounded_text, encode, reason_line, storable

ATTEMPT = Attempt("nas", "nas.local", 4242, 1_795_334_400.0, 1_795_334_401.0)


def _nested(levels: int) -> Any:
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


def _refusal(value: Any, limit: int = 1_000_000) -> str:
    with pytest.raises(NotStorable) as caught:
        storable(value, "result", limit=limit, limit_key="limits.result-bytes")
    return str(caught.value)


def test_plain_json_is_stored_as_what_reading_it_back_gives() -> None:
    value = {"a": (1, 2.5, None, True), "b": {"c": "zoë"}}
    plain, size = storable(value, "result", limit=1000, limit_key="limits.result-bytes")
    assert plain == {"a": [1, 2.5, None, True], "b": {"c": "zoë"}}
    assert size == len(json.dumps(plain, ensure_ascii=False, separators=(",", ":")).encode())
    storable(_nested(MAX_DEPTH), "result", limit=1000, limit_key="k")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (_nested(MAX_DEPTH + 1), "result[0][0][0][0][0][0][0]...: lists and objects nested more than 100"),
        ({"x": [1, "a\ud800"]}, 'result["x"][1]: the string holds a lone surrogate'),
        ({"\udc80": 1}, "result[\"\\udc80\"]: the string holds a lone surrogate '\\udc80' at index 0"),
        ({"r": float("inf")}, 'result["r"]: inf is not valid JSON (RFC 8259 has no NaN or Infinity)'),
        ({1: "a", "1": "b"}, "result: key 1 (int): JSON object keys must be strings"),
        ({"s": {1}}, 'result["s"]: a set is not JSON'),
        ({"n": 10**5000}, "result cannot be written as JSON: ValueError: Exceeds the limit"),
    ],
)
def test_what_json_cannot_hold_is_refused_naming_the_part(value: Any, reason: str) -> None:
    assert _refusal(value).startswith(reason)


def test_the_size_limit_is_the_compact_utf8_size() -> None:
    assert _refusal("é" * 10, limit=21) == "result is 22 bytes as JSON, over limits.result-bytes=21"
    assert (
        _refusal("x" * 100, limit=21) == "result is more than 21 bytes as JSON, over limits.result-bytes=21"
    )


def test_cyclic_and_exponentially_shared_values_are_refused_quickly() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    assert "nested more than 100" in _refusal(cyclic)
    # a billion shared leaves within three levels: only the byte budget stops it
    shallow: list[Any] = [[["x"] * 1000] * 1000] * 1000
    assert _refusal(shallow) == "result is more than 1000000 bytes as JSON, over limits.result-bytes=1000000"


@given(st.text())
def test_a_reason_is_always_one_bounded_writable_line(text: str) -> None:
    line = reason_line(text)
    assert len(line) <= 500
    assert line.splitlines() == ([line] if line else [])
    assert not {unicodedata.category(c) for c in line} & {"Cc", "Cs", "Zl", "Zp"}
    line.encode("utf-8")


def test_a_long_reason_keeps_its_start_and_says_how_long_it_was() -> None:
    line = reason_line("RuntimeError: boom\n" + "x" * 10_000)
    assert line.startswith("RuntimeError: boom xxx")
    assert line.endswith(" ... [cut: 10019 characters in all; the full text is in the attempt log]")
    assert reason_line("a\x1b[2J\tb \ud800") == "a\\x1b[2J b \\ud800"


def test_a_long_traceback_keeps_its_start_and_end() -> None:
    text = "Traceback (most recent call last):\n" + "y" * 100_000 + "\nRuntimeError: end \udfff"
    bounded = bounded_text(text)
    assert len(bounded) <= 20_000
    assert bounded.startswith("Traceback (most recent call last):\nyyy")
    assert bounded.endswith("\nRuntimeError: end \\udfff")
    assert "characters cut; the full text is in the attempt log" in bounded


def test_a_failure_activity_leaves_out_data_then_traceback_to_stay_under_the_limit() -> None:
    activity = Activity("job-7", "invoice.render", {"blob": "b" * 5000}, 2)
    record = failed_record(activity, ATTEMPT, "boom\n" * 1000, "t" * 30_000)
    assert len(record["spoolpipe"]["reason"]) <= 500 and len(record["spoolpipe"]["traceback"]) <= 20_000
    whole = failure_document("spoolpipe.failure", record, 1_048_576)
    assert whole["data"]["failed"]["omitted"] == [] and whole["data"]["failed"]["data"] == activity.data
    without_data = failure_document("spoolpipe.failure", record, 21_000)
    assert (
        without_data["data"]["failed"]["omitted"] == ["data"] and "data" not in without_data["data"]["failed"]
    )
    assert without_data["data"]["failed"]["traceback"] == record["spoolpipe"]["traceback"]
    small = failure_document("spoolpipe.failure", record, 4096)
    assert small["data"]["failed"]["omitted"] == ["data", "traceback"]
    written = encode(small)
    assert len(written) <= 4096
    # what is written is an ordinary activity file
    assert parse_activity(written, f"{small['id']}.json").type == "spoolpipe.failure"
