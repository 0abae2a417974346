"""Instructions and parse_next: the decoding table, garbage in, and round trips."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beamagent.errors import InvalidNext
from beamagent.graph import (
    MAX_ROUTE_COUNT,
    DroppedEntry,
    End,
    Instruction,
    Retry,
    Route,
    Sub,
    Yield,
    decode_next,
    parse_next,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)

instructions = st.one_of(
    st.builds(Route, st.text(min_size=1), st.integers(1, MAX_ROUTE_COUNT)),
    st.builds(Yield, st.text(min_size=1)),
    st.builds(Sub, st.text(min_size=1)),
    st.just(End()),
    st.builds(Retry, st.none() | st.text()),
)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        # The rows of the Agens table.
        ({"type": "route", "value": "a"}, [Route("a", 1)]),
        ({"type": "yield", "value": "j"}, [Yield("j")]),
        ({"type": "sub", "value": "job2"}, [Sub("job2")]),
        ({"type": "end"}, [End()]),
        ({"type": "retry"}, [Retry()]),
        # Where we differ: the retry reason is kept.
        ({"type": "retry", "value": "why"}, [Retry("why")]),
        ({"type": "retry", "value": ""}, [Retry()]),
        ({"type": "retry", "value": 5}, [Retry()]),
        # end ignores any value; route honours a count.
        ({"type": "end", "value": "x"}, [End()]),
        ({"type": "route", "value": "a", "count": 3}, [Route("a", 3)]),
        ({"type": "route", "value": "a", "count": MAX_ROUTE_COUNT}, [Route("a", MAX_ROUTE_COUNT)]),
        ({"type": "route", "value": "a", "extra": [1, 2]}, [Route("a")]),
        # Dropped: bad counts.
        ({"type": "route", "value": "a", "count": 0}, []),
        ({"type": "route", "value": "a", "count": -1}, []),
        ({"type": "route", "value": "a", "count": "2"}, []),
        ({"type": "route", "value": "a", "count": 2.0}, []),
        ({"type": "route", "value": "a", "count": True}, []),
        ({"type": "route", "value": "a", "count": MAX_ROUTE_COUNT + 1}, []),
        # Dropped: missing, empty or non-string values.
        ({"type": "route"}, []),
        ({"type": "route", "value": ""}, []),
        ({"type": "route", "value": None}, []),
        ({"type": "yield", "value": 3}, []),
        ({"type": "sub", "value": ["a"]}, []),
        ({"type": "sub", "value": {"id": "a"}}, []),
        # Dropped: unknown or malformed types, non-string keys.
        ({"type": "goto", "value": "a"}, []),
        ({"type": "Route", "value": "a"}, []),
        ({"type": None, "value": "a"}, []),
        ({"type": ["route"], "value": "a"}, []),
        ({"value": "a"}, []),
        ({}, []),
        ({1: "route", 2: "a"}, []),
        ({("type",): "route"}, []),
        # Dropped: entries that are not objects.
        (None, []),
        (5, []),
        ("route", []),
        (["route", "a"], []),
        ([{"type": "end"}], []),
    ],
)
def test_parse_next_entry(entry: Any, expected: list[Instruction]) -> None:
    assert parse_next([entry]) == expected


def test_parse_next_of_none_is_empty() -> None:
    assert parse_next(None) == []
    assert decode_next(None) == ([], [])


@pytest.mark.parametrize("entries", [5, "x", "route", {"type": "end"}, 1.5, True, b"[]", {1, 2}])
def test_a_next_that_is_not_a_list_is_invalid_next(entries: Any) -> None:
    # Agens: invalid_next. A str or a dict must not be taken apart into dropped "entries".
    with pytest.raises(InvalidNext, match="next that is not a list") as info:
        parse_next(entries)
    assert info.value.value == entries
    assert info.value.node_id is None
    with pytest.raises(InvalidNext):
        decode_next(entries)


def test_invalid_next_names_the_node_and_the_value() -> None:
    error = InvalidNext("bad").at_node("review")
    assert error.node_id == "review"
    assert "node 'review' gave a next that is not a list: 'bad' (a str)" in str(error)
    long = InvalidNext("x" * 10_000)
    assert len(str(long)) < 500  # the value is shortened, not copied whole


def test_parse_next_keeps_order_and_drops_junk_between() -> None:
    entries = [
        1,
        None,
        {},
        {"type": "route", "value": "a"},
        [[{"type": "end"}]],
        {"type": "yield", "value": "j"},
        {"type": {"nested": ["junk"]}},
        {"type": "end"},
    ]
    assert parse_next(entries) == [Route("a"), Yield("j"), End()]


def test_parse_next_accepts_a_tuple_and_instruction_objects() -> None:
    assert parse_next(({"type": "sub", "value": "s"}, Route("b", 2), End())) == [
        Sub("s"),
        Route("b", 2),
        End(),
    ]


def test_parse_next_max_count_is_configurable() -> None:
    entry = {"type": "route", "value": "a", "count": 5}
    assert parse_next([entry], max_count=4) == []
    assert parse_next([entry], max_count=5) == [Route("a", 5)]


def test_dropped_entries_are_logged_as_warnings(caplog: pytest.LogCaptureFixture) -> None:
    from beamagent.log import event_dict

    caplog.set_level(logging.DEBUG, logger="beamagent")
    parse_next([{"type": "rout", "value": "b"}, {"type": "end"}, 7])
    dropped = [event_dict(r) for r in caplog.records]
    dropped = [e for e in dropped if e["event"] == "next_entry_dropped"]
    assert [e["index"] for e in dropped] == [0, 2]
    assert [e["reason"] for e in dropped] == ["unknown type 'rout'", "entry is not an object: int"]
    assert all(
        r.levelname == "WARNING" for r in caplog.records if r.msg and "dropped" in str(r.msg)
    )


def test_decode_next_reports_the_dropped_entries_without_logging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="beamagent")
    entries = [{"type": "rout", "value": "b"}, Route("c"), "junk", {"type": "end"}]
    instructions, dropped = decode_next(entries)
    assert caplog.records == []
    assert instructions == [Route("c"), End()]
    assert dropped == [
        DroppedEntry(0, {"type": "rout", "value": "b"}, "unknown type 'rout'"),
        DroppedEntry(2, "junk", "entry is not an object: str"),
    ]
    assert dropped[1].to_dict() == {
        "index": 2,
        "entry": "'junk'",
        "reason": "entry is not an object: str",
        "source": "next",
    }


@given(json_values)
def test_parse_next_of_json_raises_only_invalid_next(value: Any) -> None:
    try:
        result = parse_next(value)
    except InvalidNext:
        assert value is not None
        assert not isinstance(value, list)
        return
    assert isinstance(value, list) or value is None
    assert all(isinstance(i, Route | Yield | Sub | End | Retry) for i in result)
    if isinstance(value, list):
        instructions, dropped = decode_next(value)
        assert instructions == result
        assert len(result) + len(dropped) == len(value)  # every entry is kept or reported


class _Odd:
    """An object no JSON decoder makes, whose repr fails while ``broken`` is set (so that
    Hypothesis can still print a failing example)."""

    broken = False

    def __repr__(self) -> str:
        if _Odd.broken:
            raise RuntimeError("no repr")
        return "_Odd()"


# Arbitrary Python values: JSON, instruction objects, and things JSON never holds.
any_values = st.recursive(
    json_values
    | instructions
    | st.binary()
    | st.complex_numbers()
    | st.floats()
    | st.builds(object)
    | st.builds(_Odd)
    | st.sampled_from([Route, End, type, Ellipsis, NotImplemented]),
    lambda children: (
        st.lists(children)
        | st.tuples(children, children)
        | st.frozensets(st.integers() | st.text())
        | st.dictionaries(st.text() | st.integers() | st.none(), children)
        | st.builds(lambda pairs: dict(pairs), st.lists(st.tuples(st.just("type"), children)))
    ),
    max_leaves=25,
)


@given(any_values)
def test_parse_next_lets_only_beamagent_errors_escape(value: Any) -> None:
    _Odd.broken = True
    try:
        result = parse_next(value)
    except InvalidNext as exc:  # the one error it documents; any other fails the test
        str(exc)  # the message can be built whatever the value is
        return
    finally:
        _Odd.broken = False
    assert all(isinstance(i, Route | Yield | Sub | End | Retry) for i in result)


@given(st.lists(json_values | instructions))
def test_parse_next_never_raises_on_lists_of_junk(value: list[Any]) -> None:
    result = parse_next(value)
    assert all(isinstance(i, Route | Yield | Sub | End | Retry) for i in result)


@given(st.lists(instructions))
def test_to_dict_round_trips_through_parse_next(items: list[Instruction]) -> None:
    assert parse_next([i.to_dict() for i in items]) == items


def test_to_dict_forms() -> None:
    assert Route("a").to_dict() == {"type": "route", "value": "a"}
    assert Route("a", 2).to_dict() == {"type": "route", "value": "a", "count": 2}
    assert Yield("j").to_dict() == {"type": "yield", "value": "j"}
    assert Sub("s").to_dict() == {"type": "sub", "value": "s"}
    assert End().to_dict() == {"type": "end"}
    assert Retry().to_dict() == {"type": "retry"}
    assert Retry("why").to_dict() == {"type": "retry", "value": "why"}


@pytest.mark.parametrize(
    "build",
    [
        lambda: Route("a", 0),
        lambda: Route("a", -2),
        lambda: Route("a", True),
        lambda: Route("a", 1.0),  # type: ignore[arg-type]
        lambda: Route(""),
        lambda: Route(None),  # type: ignore[arg-type]
        lambda: Yield(""),
        lambda: Sub(3),  # type: ignore[arg-type]
    ],
)
def test_instruction_validation(build: Any) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is checked elsewhere
        build()


def test_retry_reason_must_be_a_string() -> None:
    with pytest.raises(TypeError):
        Retry(5)  # type: ignore[arg-type]
    assert Retry("") == Retry()


def test_instructions_are_frozen_and_hashable() -> None:
    route = Route("a", 2)
    with pytest.raises(AttributeError):
        route.count = 3  # type: ignore[misc]
    assert len({Route("a"), Route("a", 1), End(), End()}) == 2
