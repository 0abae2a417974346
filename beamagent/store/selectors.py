"""Revert and rollback selectors: parsing, validation and resolution (pure functions).

A selector says where a history is cut. ``revert_session`` accepts::

    {"visible_message_count": n}   keep the first n messages (clamped to [0, count])
    {"message_id": "..."}          keep up to and including the first message with this id
    {"uuid": "..."}                the same, matched on ``uuid``

``thread_rollback`` accepts those three plus ``{"count": n}`` (hide the last n visible
messages, floor 0). The typed forms (:class:`VisibleCount`, :class:`DropCount`,
:class:`MessageMatch`) are accepted as well.

>>> parse_revert_selector({"visible_message_count": 2})
VisibleCount(n=2)
>>> rollback_visible_count(DropCount(5), [("u1", None), ("u2", None)])
0
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from beamagent.errors import InvalidSelector
from beamagent.store.base import storable

__all__ = [
    "REVERT_FORMS",
    "ROLLBACK_FORMS",
    "DropCount",
    "MatchKey",
    "MessageMatch",
    "RevertSelector",
    "RollbackSelector",
    "VisibleCount",
    "parse_revert_selector",
    "parse_rollback_selector",
    "revert_visible_count",
    "rollback_visible_count",
    "selector_to_dict",
]

REVERT_FORMS = ('{"visible_message_count": n}', '{"message_id": id}', '{"uuid": id}')
ROLLBACK_FORMS = ('{"count": n}', *REVERT_FORMS)


class MatchKey(enum.StrEnum):
    """Which message field a :class:`MessageMatch` compares."""

    MESSAGE_ID = "message_id"
    UUID = "uuid"


@attrs.frozen
class VisibleCount:
    """Keep the first ``n`` messages visible (``n`` is clamped when resolved)."""

    n: int


@attrs.frozen
class DropCount:
    """Hide the last ``n`` visible messages (rollback only; ``n >= 0``)."""

    n: int


@attrs.frozen
class MessageMatch:
    """Keep everything up to and including the first message whose ``key`` is ``value``."""

    key: MatchKey = attrs.field(converter=MatchKey)
    value: str


RevertSelector = VisibleCount | MessageMatch
RollbackSelector = VisibleCount | DropCount | MessageMatch

#: ``(uuid, message_id)`` of one message, as rollback resolution needs it.
MessageKeys = tuple[str | None, str | None]


def _invalid(selector: Any, forms: Sequence[str], why: str) -> InvalidSelector:
    return InvalidSelector(f"{why}: {selector!r}; accepted forms are {', '.join(forms)}")


def _parse(selector: Any, forms: Sequence[str], allow_drop: bool) -> RevertSelector | DropCount:
    if isinstance(selector, VisibleCount | MessageMatch) or (
        allow_drop and isinstance(selector, DropCount)
    ):
        if isinstance(selector, DropCount) and selector.n < 0:
            raise _invalid(selector, forms, "a count must be >= 0")
        if isinstance(selector, MessageMatch):
            _check_match_value(selector, selector.key.value, selector.value, forms)
        return selector
    if not isinstance(selector, Mapping) or len(selector) != 1:
        raise _invalid(selector, forms, "a selector is a mapping with exactly one key")
    ((key, value),) = selector.items()
    if key == "visible_message_count" or (allow_drop and key == "count"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _invalid(selector, forms, f"{key} must be an integer")
        if key == "count":
            if value < 0:
                raise _invalid(selector, forms, "count must be >= 0")
            return DropCount(value)
        return VisibleCount(value)
    if key in ("message_id", "uuid"):
        _check_match_value(selector, key, value, forms)
        return MessageMatch(MatchKey(key), value)
    raise _invalid(selector, forms, "unknown selector")


def _check_match_value(selector: Any, key: str, value: Any, forms: Sequence[str]) -> None:
    if not isinstance(value, str) or not value:
        raise _invalid(selector, forms, f"{key} must be a non-empty string")
    if not storable(value):
        # No stored message can have it: ids are stored as valid text.
        raise _invalid(
            selector,
            forms,
            f"{key} is not valid text for a store (it holds a lone surrogate or a NUL)",
        )


def parse_revert_selector(selector: Any) -> RevertSelector:
    """Validate a ``revert_session`` selector, or raise :class:`InvalidSelector`."""
    parsed = _parse(selector, REVERT_FORMS, allow_drop=False)
    assert not isinstance(parsed, DropCount)
    return parsed


def parse_rollback_selector(selector: Any) -> RollbackSelector:
    """Validate a ``thread_rollback`` selector, or raise :class:`InvalidSelector`."""
    return _parse(selector, ROLLBACK_FORMS, allow_drop=True)


def selector_to_dict(selector: RollbackSelector) -> dict[str, Any]:
    """The JSON form of a parsed selector (what ``extra.view.selector`` stores)."""
    if isinstance(selector, VisibleCount):
        return {"visible_message_count": selector.n}
    if isinstance(selector, DropCount):
        return {"count": selector.n}
    return {selector.key.value: selector.value}


def _clamp(n: int, high: int) -> int:
    return max(0, min(n, high))


def revert_visible_count(
    selector: RevertSelector, total: int, find_seq: Callable[[MessageMatch], int | None]
) -> int:
    """How many messages a revert leaves visible in a session of ``total`` messages.

    ``find_seq`` returns the seq (1-based) of the first message matching, or ``None``.
    A match that is not found raises :class:`InvalidSelector`.
    """
    if isinstance(selector, VisibleCount):
        return _clamp(selector.n, total)
    seq = find_seq(selector)
    if seq is None:
        raise InvalidSelector(f"no message with {selector.key.value} {selector.value!r}")
    return seq


def rollback_visible_count(selector: RollbackSelector, visible: Sequence[MessageKeys]) -> int:
    """How many of a thread's ``visible`` messages stay visible after a rollback.

    ``visible`` lists ``(uuid, message_id)`` of the thread's visible messages in order.
    A rollback never shows more than is visible now.
    """
    if isinstance(selector, DropCount):
        return max(0, len(visible) - selector.n)
    if isinstance(selector, VisibleCount):
        return _clamp(selector.n, len(visible))
    index = 0 if selector.key is MatchKey.UUID else 1
    for position, keys in enumerate(visible, start=1):
        if keys[index] == selector.value:
            return position
    raise InvalidSelector(
        f"no visible message of the thread has {selector.key.value} {selector.value!r}"
    )
