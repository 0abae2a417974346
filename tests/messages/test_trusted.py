"""The private trusted construction paths build exactly what the validating ones build."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from hypothesis import given

from beamagent.backends.jsonl import decode_lines
from beamagent.messages import (
    Message,
    MessageType,
    StopReason,
    _build_message,
    _normalize_owned,
    normalize,
)
from tests._fork import in_forked_child
from tests.messages.test_messages import heavy, json_objects, known_key_objects, messages


def _containers(value: Any) -> list[Any]:
    """Every dict and list reachable from ``value`` (iteratively: values may be deep)."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            if isinstance(item, list):
                found.append(item)
            stack.extend(item)
    return found


def _message_containers(message: Message) -> list[Any]:
    values = [getattr(message, f.name) for f in attrs.fields(Message)]
    values += [getattr(b, f.name) for b in message.content_blocks for f in attrs.fields(type(b))]
    return _containers(values)


def parsed_line(mapping: dict[str, Any]) -> dict[str, Any]:
    """``mapping`` as the library's decoders hand it over: written by a backend, parsed."""
    [parsed] = decode_lines(json.dumps(mapping).encode() + b"\n").objects
    return parsed


def _stored_text(message: Message) -> str:
    return json.dumps(message.to_dict(), allow_nan=False)


@given(known_key_objects)
@heavy
def test_owned_normalize_matches_normalize(mapping: dict[str, Any]) -> None:
    parsed = parsed_line(mapping)
    owned = _normalize_owned(parsed, now_ms=1)
    assert _stored_text(owned) == _stored_text(normalize(mapping, now_ms=1))
    assert owned.raw is parsed  # handed over, not copied


@given(json_objects)
@heavy
def test_trusted_messages_pass_the_validating_constructor(mapping: dict[str, Any]) -> None:
    message = _normalize_owned(parsed_line(mapping), now_ms=1)
    # evolve re-runs every converter and validator: same types, same values.
    assert attrs.evolve(message) == message
    assert normalize(mapping, now_ms=1) == message


@given(known_key_objects)
@heavy
def test_normalize_shares_no_container_with_the_caller(mapping: dict[str, Any]) -> None:
    message = normalize(mapping, now_ms=1)
    theirs = {id(c) for c in _containers(mapping)}
    assert not theirs & {id(c) for c in _message_containers(message)}


@given(messages)
@heavy
def test_stamping_matches_evolve(message: Message) -> None:
    stamped = message.with_fields(session_id="session_x", uuid=None)
    assert stamped == attrs.evolve(message, session_id="session_x", uuid=None)
    assert message.with_fields() == message


def test_build_message_defaults() -> None:
    built = _build_message(Message("user").type, {"content": "hi", "stop_reason": "end_turn"})
    assert built == Message("user", content="hi", stop_reason="end_turn")


@given(json_objects)
@heavy
def test_owned_normalize_stamps_like_with_fields(mapping: dict[str, Any]) -> None:
    stamped = _normalize_owned(parsed_line(mapping), now_ms=1, session_id="s")
    assert stamped == normalize(mapping, now_ms=1).with_fields(session_id="s")


def test_built_messages_take_the_constructors_defaults() -> None:
    built = _build_message(MessageType.RESULT, {"stop_reason": "end_turn", "num_turns": 2})
    assert built == Message("result", stop_reason="end_turn", num_turns=2)
    assert built.stop_reason_parsed is StopReason.END_TURN  # parsed when not given
    assert built.content_blocks == ()
    assert built.content is None
    explicit = _build_message(
        MessageType.RESULT, {"stop_reason": "end_turn", "stop_reason_parsed": None}
    )
    assert explicit.stop_reason_parsed is None  # given: kept, as from_dict needs
    assert not built.is_json_native
    assert _build_message(MessageType.USER, {"content": "hi"}, json_native=True).is_json_native


def test_built_messages_are_frozen_messages() -> None:
    built = _build_message(MessageType.USER, {"content": "hi", "uuid": "u1"}, json_native=True)
    assert type(built) is Message  # built as a plain-slot twin, then made a Message
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        built.content = "changed"  # type: ignore[misc]
    assert built.content == "hi"
    assert built == Message("user", content="hi", uuid="u1")


def test_a_built_text_block_and_handler_output_are_what_their_constructors_give() -> None:
    from beamagent.backends.base import HandlerOutput, _output
    from beamagent.messages import ContentBlock, _text_block

    block = _text_block("hé")
    assert type(block) is ContentBlock  # built as a plain-slot twin, then made one
    assert block == ContentBlock("text", text="hé")
    assert block.raw is None
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        block.text = "changed"  # type: ignore[misc]
    message = Message("user", content="hi")
    output = _output([message], [b"line\n"])
    assert type(output) is HandlerOutput
    assert output == HandlerOutput(messages=[message], writes=[b"line\n"])
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        output.error = "changed"  # type: ignore[misc]


def test_new_uuid_is_a_random_uuid4_string() -> None:
    import uuid

    from beamagent.messages import _new_uuid

    made = [_new_uuid() for _ in range(2000)]
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # lower-case hex, 8-4-4-4-12
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_new_uuids_made_ahead_are_not_shared_with_threads_or_a_forked_child() -> None:
    import os
    import threading

    from beamagent import messages

    made: list[list[str]] = [[] for _ in range(8)]

    def take(mine: list[str]) -> None:
        mine.extend(messages._new_uuid() for _ in range(500))

    threads = [threading.Thread(target=take, args=(m,)) for m in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    every = [u for m in made for u in m]
    assert len(set(every)) == len(every) == 4000

    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    messages._new_uuid()  # the batch the parent holds now
    from supervisors import _ids

    ahead = set(_ids._made)  # the ids made ahead, where _new_uuid takes them
    assert ahead
    child = in_forked_child(messages._new_uuid)  # must come from a batch of its own
    assert len(child) == 36
    assert child not in ahead
