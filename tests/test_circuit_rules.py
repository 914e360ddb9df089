"""The circuit-breaker state machine, driven in-process with a clock of our own (no sleeping)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolpipe import check, config
from spoolpipe.activity import format_time
from spoolpipe.circuit import Change, Circuits, Rule, State, published_circuits, status_lines
from spoolpipe.processor import Registration

MAIL = "mail.send"


class Clock:
    """The rules and the transitions heard, for one set of breakers."""

    def __init__(self, rules: dict[str, Rule]) -> None:
        self.rules = rules
        self.changes: list[Change] = []
        self.circuits = Circuits(lambda: self.rules, self.changes.append)

    def states(self) -> list[tuple[str, State]]:
        return [(c.type, c.state) for c in self.changes]


def fail(
    c: Circuits, at: float, type_: str = MAIL, ending: str = "retry", batch: tuple[str, ...] = ()
) -> None:
    c.ended(type_, ending, at, set(batch))


@pytest.fixture
def world() -> Clock:
    return Clock({MAIL: Rule(failures=3, window=10, cool_down=30)})


def test_a_closed_circuit_admits_everything_and_failures_below_the_threshold_keep_it_closed(
    world: Clock,
) -> None:
    c = world.circuits
    fail(c, 0)
    fail(c, 1, ending="failed")
    assert not c.holds(MAIL)
    assert c.admit(MAIL, "a") and c.admit(MAIL, "b")
    assert world.changes == []
    assert c.published(5, 1000) == {}


def test_n_failures_within_the_window_open_it_with_a_line_worth_reading(world: Clock) -> None:
    c = world.circuits
    for t in (0, 1, 2):
        fail(c, t)
    assert c.holds(MAIL)
    assert not c.admit(MAIL, "a")
    assert world.states() == [(MAIL, State.OPEN)]
    assert world.changes[0].message == (
        "circuit for mail.send open after 3 failures in 10s: not claiming mail.send for 30s"
    )
    assert c.next_change() == 32
    assert c.holding([MAIL, "other"]) == {MAIL: 32}


def test_failures_older_than_the_window_do_not_count(world: Clock) -> None:
    c = world.circuits
    fail(c, 0)
    fail(c, 5)
    fail(c, 10.5)  # the first is out of the window by now
    assert not c.holds(MAIL)
    fail(c, 11)
    assert c.holds(MAIL)


def test_successes_and_skips_are_not_failures(world: Clock) -> None:
    c = world.circuits
    for t in range(10):
        c.ended(MAIL, "done", t, set())
        c.ended(MAIL, "skipped", t, set())
    fail(c, 10)
    fail(c, 11)
    assert not c.holds(MAIL) and world.changes == []


def test_other_types_and_types_without_a_rule_are_never_held(world: Clock) -> None:
    c = world.circuits
    for t in range(5):
        fail(c, t, type_="other")
    assert not c.holds("other") and c.admit("other", "x")
    for t in range(3):
        fail(c, t)
    assert c.admit("other", "y")


def opened(world: Clock) -> Circuits:
    c = world.circuits
    for t in (0, 1, 2):
        fail(c, t)
    return c


def test_after_the_cool_down_exactly_one_probe_goes_through(world: Clock) -> None:
    c = opened(world)
    c.tick(31, set())
    assert c.holds(MAIL), "still open before the cool-down is over"
    c.tick(32, set())
    assert world.states()[-1] == (MAIL, State.HALF_OPEN)
    assert not c.holds(MAIL), "half-open: its activities may be looked at again"
    assert c.next_change() == float("inf")
    assert c.admit(MAIL, "probe")
    assert world.changes[-1].message == "circuit for mail.send half-open: probing with probe"
    assert c.holds(MAIL) and not c.admit(MAIL, "second"), "one probe at a time"
    assert c.published(40, 1000)[MAIL]["probe"] == "probe"


def test_the_probe_succeeding_closes_the_circuit(world: Clock) -> None:
    c = opened(world)
    c.tick(32, set())
    c.admit(MAIL, "probe")
    c.ended(MAIL, "done", 33, {"probe"})
    assert world.states()[-1] == (MAIL, State.CLOSED)
    assert world.changes[-1].message == "circuit for mail.send closed: probe probe succeeded"
    assert not c.holds(MAIL) and c.admit(MAIL, "a") and c.admit(MAIL, "b")
    assert c.published(34, 1000) == {}
    fail(c, 34)
    fail(c, 35)
    assert not c.holds(MAIL), "closing forgets the failures before it"


def test_the_probe_failing_opens_it_for_another_cool_down(world: Clock) -> None:
    c = opened(world)
    c.tick(32, set())
    c.admit(MAIL, "probe")
    c.ended(MAIL, "failed", 33, {"probe"})
    assert world.states()[-1] == (MAIL, State.OPEN)
    assert world.changes[-1].message == (
        "circuit for mail.send open again, probe probe failed: not claiming mail.send for 30s"
    )
    assert c.holds(MAIL) and c.next_change() == 63
    c.tick(62, set())
    assert c.holds(MAIL)
    c.tick(63, set())
    assert c.admit(MAIL, "second probe")


def test_only_the_probe_decides_while_half_open(world: Clock) -> None:
    c = opened(world)
    c.tick(32, set())
    c.admit(MAIL, "probe")
    c.ended(MAIL, "retry", 33, {"older"})  # one that ran before the circuit opened
    c.ended(MAIL, "done", 33, {"older"})
    assert world.states()[-1] == (MAIL, State.HALF_OPEN) and c.holds(MAIL)


def test_endings_while_open_change_nothing(world: Clock) -> None:
    c = opened(world)
    count = len(world.changes)
    c.ended(MAIL, "done", 5, {"running before"})
    fail(c, 6, batch=("running before",))
    assert len(world.changes) == count and c.next_change() == 32


def test_a_probe_that_is_skipped_or_vanishes_lets_the_next_one_probe(world: Clock) -> None:
    c = opened(world)
    c.tick(32, set())
    c.admit(MAIL, "probe")
    c.ended(MAIL, "skipped", 33, {"probe"})
    assert not c.holds(MAIL) and c.admit(MAIL, "next")
    c.tick(34, {"next"})
    assert c.holds(MAIL), "still out: still the probe"
    c.tick(35, set())  # its claim was lost, say: no ending will come
    assert world.states()[-1] == (MAIL, State.HALF_OPEN)
    assert "probe next ended without an outcome" in world.changes[-1].message
    assert c.admit(MAIL, "third")


def test_changed_rules_apply_to_the_next_decision_and_removing_them_closes_the_circuit(world: Clock) -> None:
    c = opened(world)
    world.rules = {MAIL: Rule(failures=3, window=10, cool_down=5)}
    assert c.next_change() == 7
    c.tick(7, set())
    assert not c.holds(MAIL)
    c.admit(MAIL, "probe")
    world.rules = {}
    assert not c.holds(MAIL) and c.admit(MAIL, "any")
    fail(c, 7.5, batch=("probe",))  # the probe's ending, heard before the next tick
    c.tick(8, {"probe"})
    assert world.states()[-1] == (MAIL, State.CLOSED)
    assert world.changes[-1].message == "circuit for mail.send closed: its keys were removed"
    world.rules = {MAIL: Rule(failures=1)}
    fail(c, 9)
    assert c.holds(MAIL), "a lower threshold applies at the next failure"


def test_a_batch_cannot_fail_more_than_it_takes_to_open_and_a_probe_is_alone(world: Clock) -> None:
    c = world.circuits
    assert c.batch_limit("other") is None
    assert c.batch_limit(MAIL) == 3
    fail(c, 0)
    assert c.batch_limit(MAIL) == 2
    fail(c, 1)
    assert c.batch_limit(MAIL) == 1
    fail(c, 2)
    assert c.batch_limit(MAIL) == 1
    c.tick(32, set())
    assert c.batch_limit(MAIL) == 1


def test_published_times_are_by_the_shared_clock() -> None:
    world = Clock({MAIL: Rule(failures=1, window=10, cool_down=30)})
    c = world.circuits
    fail(c, 100)
    shared = 1_800_000_000.0  # the shared clock when the monotonic one says 110
    assert c.published(110, shared) == {
        MAIL: {
            "state": "open",
            "since": format_time(shared - 10),
            "until": format_time(shared + 20),
            "failures": 1,
            "probe": None,
        }
    }


def test_status_reads_heartbeat_circuits_field_by_field() -> None:
    good = {"state": "open", "since": "s", "until": "u", "failures": 3, "probe": None}
    workers = [
        {"worker": "w2", "circuits": {MAIL: good}},
        {"worker": "w1", "circuits": {MAIL: {**good, "state": "half-open", "probe": "p\x1b[2J"}}},
        {"worker": "w3", "circuits": ["not", "a", "map"]},
        {
            "worker": "w4",
            "circuits": {"x": {"state": "closed"}, "y": "junk", "z": {"state": "open", "failures": True}},
        },
        {"worker": 5, "circuits": {MAIL: good}},
        {"worker": "w5"},
    ]
    found = published_circuits(workers)
    assert [(c["type"], c["worker"], c["state"]) for c in found] == [
        (MAIL, "w1", "half-open"),
        (MAIL, "w2", "open"),
        ("z", "w4", "open"),
    ]
    assert found[0]["probe"] == "p\\x1b[2J"
    assert found[2]["failures"] is None and found[2]["since"] is None
    lines = status_lines(found)
    assert lines[0] == "  circuit half-open: mail.send on w1, probe p\\x1b[2J"
    assert lines[1] == (
        "  circuit open: mail.send on w2 after 3 failures, since s, probe at u; "
        "its activities wait in the inbox"
    )


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.sampled_from(["open", "half-open", "closed"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
CIRCUIT_FIELDS = st.sampled_from(["state", "since", "until", "failures", "probe"])


@given(st.dictionaries(st.text(max_size=8), JSON_VALUES | st.dictionaries(CIRCUIT_FIELDS, JSON_VALUES)))
def test_no_heartbeat_circuits_can_make_status_fail(circuits: dict[str, object]) -> None:
    """A "state" that was a list or an object raised TypeError (unhashable): status crashed with exit 70."""
    found = published_circuits([{"worker": "w", "circuits": circuits}])
    assert all(c["state"] in ("open", "half-open") for c in found)
    assert len(status_lines(found)) == len(found)


def write(repo: Path, text: str) -> Path:
    path = repo / "spoolpipe.properties"
    path.write_text(text)
    return path


def test_keys_give_rules_with_defaults(tmp_path: Path) -> None:
    write(
        tmp_path,
        "circuit.mail.send.failures = 5\ncircuit.mail.send.cool-down-seconds = 2m\n"
        "circuit.pdf.failures = 2\ncircuit.pdf.window-seconds = 30s\n",
    )
    rules = config.load(tmp_path).settings.circuits
    assert rules == {"mail.send": Rule(5, 60, 120), "pdf": Rule(2, 30, 60)}


def test_bad_circuit_keys_are_errors_with_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "circuit.a.failures = 0\n"
        "circuit.b.window-seconds = 10\n"
        "circuit.c.failures = 2\ncircuit.c.cool-down-seconds = soon\n"
        "circuit.d.failures = 1\ncircuit.d.colldown = 3\n"
        "circuit.bad/type.failures = 1\n",
    )
    with pytest.raises(config.ConfigError) as caught:
        config.load(tmp_path)
    text = str(caught.value)
    assert f"{path}:1: circuit.a.failures: '0' is out of range; expected an integer >= 1" in text
    assert f"{path}:2: circuit.b.window-seconds: circuit 'b' has no circuit.b.failures" in text
    assert f"{path}:4: circuit.c.cool-down-seconds: 'soon' is not a duration" in text
    assert f"{path}:6: circuit.d.colldown: unknown field 'colldown'" in text
    assert f"{path}:7: circuit.bad/type.failures: 'bad/type' is not a valid type" in text


def test_worker_check_warns_about_a_circuit_for_a_type_nobody_here_handles(tmp_path: Path) -> None:
    def noop(activity: object, ctx: object) -> None:
        return None

    write(
        tmp_path,
        "processors = m.a\nfailures.handler =\ncircuit.t.gone.failures = 2\ncircuit.t.a.failures = 2\n",
    )
    registry = {"t.a": Registration("t.a", noop, frozenset(), None, "m.a", module="m.a")}
    assert check.review(config.load(tmp_path).settings, registry) == [
        "circuit.t.gone.* is set, but no processor imported here handles 't.gone'"
    ]


def test_a_circuit_opened_by_one_failure_says_so_in_the_singular() -> None:
    """It said "open after 1 failures", in the log and in status."""
    world = Clock({MAIL: Rule(failures=1, window=10, cool_down=30)})
    fail(world.circuits, 0)
    assert world.changes[0].message.startswith("circuit for mail.send open after 1 failure in 10s:")
    found = published_circuits([{"worker": "w1", "circuits": world.circuits.published(1, 1000)}])
    assert status_lines(found)[0].startswith("  circuit open: mail.send on w1 after 1 failure, since ")
