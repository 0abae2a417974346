"""Revert/rollback selectors: parsing, errors and resolution (pure functions)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beamagent.errors import InvalidSelector
from beamagent.store.selectors import (
    REVERT_FORMS,
    ROLLBACK_FORMS,
    DropCount,
    MatchKey,
    MessageMatch,
    VisibleCount,
    parse_revert_selector,
    parse_rollback_selector,
    revert_visible_count,
    rollback_visible_count,
    selector_to_dict,
)

# Ids a store can hold (no lone surrogate, no NUL: test_encoding covers those).
ids = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), min_size=1, max_size=8
)
counts = st.integers(min_value=-1000, max_value=1000)
revert_dicts = st.one_of(
    st.builds(lambda n: {"visible_message_count": n}, counts),
    st.builds(lambda x: {"message_id": x}, ids),
    st.builds(lambda x: {"uuid": x}, ids),
)
rollback_dicts = st.one_of(
    revert_dicts, st.builds(lambda n: {"count": n}, st.integers(min_value=0, max_value=1000))
)


@given(revert_dicts)
def test_revert_selector_round_trips(selector: dict[str, Any]) -> None:
    assert selector_to_dict(parse_revert_selector(selector)) == selector


@given(rollback_dicts)
def test_rollback_selector_round_trips(selector: dict[str, Any]) -> None:
    assert selector_to_dict(parse_rollback_selector(selector)) == selector


def test_typed_selectors_are_accepted() -> None:
    assert parse_revert_selector(VisibleCount(3)) == VisibleCount(3)
    match = MessageMatch(MatchKey.UUID, "u")
    assert parse_rollback_selector(match) is match
    assert parse_rollback_selector(DropCount(2)) == DropCount(2)
    assert MessageMatch("message_id", "m").key is MatchKey.MESSAGE_ID


@pytest.mark.parametrize(
    "selector",
    [
        {},
        {"count": 1},  # rollback only
        {"visible_message_count": 1, "uuid": "u"},
        {"visible_message_count": "3"},
        {"visible_message_count": True},
        {"visible_message_count": 1.0},
        {"message_id": ""},
        {"uuid": 7},
        {"seq": 3},
        [("uuid", "u")],
        "uuid",
        None,
        DropCount(1),
    ],
)
def test_bad_revert_selectors_list_the_accepted_forms(selector: Any) -> None:
    with pytest.raises(InvalidSelector) as caught:
        parse_revert_selector(selector)
    for form in REVERT_FORMS:
        assert form in str(caught.value)
    assert '{"count": n}' not in str(caught.value)


@pytest.mark.parametrize(
    "selector", [{"count": -1}, {"count": "1"}, DropCount(-2), {"counts": 1}, {"uuid": None}]
)
def test_bad_rollback_selectors_list_the_accepted_forms(selector: Any) -> None:
    with pytest.raises(InvalidSelector) as caught:
        parse_rollback_selector(selector)
    for form in ROLLBACK_FORMS:
        assert form in str(caught.value)


@given(st.dictionaries(st.text(), st.integers(), min_size=1, max_size=3))
def test_unknown_keys_are_rejected(selector: dict[str, int]) -> None:
    known = {"visible_message_count", "count", "uuid", "message_id"}
    if len(selector) == 1 and set(selector) <= known:
        return
    with pytest.raises(InvalidSelector):
        parse_rollback_selector(selector)


@given(counts, st.integers(min_value=0, max_value=500))
def test_revert_count_is_clamped(n: int, total: int) -> None:
    def never(match: MessageMatch) -> int | None:
        raise AssertionError("a count never looks messages up")

    assert revert_visible_count(VisibleCount(n), total, never) == max(0, min(n, total))


def test_revert_match_keeps_the_matched_message() -> None:
    found = {("uuid", "u3"): 3}

    def find(match: MessageMatch) -> int | None:
        return found.get((match.key.value, match.value))

    assert revert_visible_count(MessageMatch(MatchKey.UUID, "u3"), 10, find) == 3
    with pytest.raises(InvalidSelector, match="no message with message_id 'u3'"):
        revert_visible_count(MessageMatch(MatchKey.MESSAGE_ID, "u3"), 10, find)


keys_lists = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", None]), st.sampled_from(["x", "y", None])),
    max_size=12,
)


@given(keys_lists, st.integers(min_value=0, max_value=20))
def test_rollback_drop_count_floors_at_zero(visible: list[Any], n: int) -> None:
    assert rollback_visible_count(DropCount(n), visible) == max(0, len(visible) - n)


@given(keys_lists, counts)
def test_rollback_never_shows_more_than_visible(visible: list[Any], n: int) -> None:
    assert rollback_visible_count(VisibleCount(n), visible) == max(0, min(n, len(visible)))


@given(keys_lists, st.sampled_from(["a", "b", "c", "x", "y"]))
def test_rollback_match_is_the_first_match_inclusive(visible: list[Any], value: str) -> None:
    key = MatchKey.UUID if value in "abc" else MatchKey.MESSAGE_ID
    index = 0 if key is MatchKey.UUID else 1
    positions = [i for i, keys in enumerate(visible, start=1) if keys[index] == value]
    if positions:
        assert rollback_visible_count(MessageMatch(key, value), visible) == positions[0]
    else:
        with pytest.raises(InvalidSelector):
            rollback_visible_count(MessageMatch(key, value), visible)
