"""Canonical messages: normalization of real CLI output, the stored form, value semantics."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beamagent.errors import InvalidOption
from beamagent.messages import (
    ContentBlock,
    ContentBlockType,
    Message,
    MessageType,
    StopReason,
    normalize,
    parse_stop_reason,
)

# --- strategies ---------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)


def _json(scalars: st.SearchStrategy[Any], leaves: int) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(max_size=5), children, max_size=3)
        ),
        max_leaves=leaves,
    )


json_values = _json(json_scalars, 8)
small_json = _json(json_scalars, 4)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
# NaN is a float json.loads accepts; normalize must survive it even though it breaks ==.
wild_values = _json(json_scalars | st.floats(), 6)
# What json.loads makes of \ud800 escapes: surrogate code points, lone or in pairs.
surrogate_texts = st.text(
    st.characters() | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=6
)
hostile_values = _json(json_scalars | st.floats() | surrogate_texts, 8)

KNOWN_KEYS = (
    "content", "result", "text", "thinking", "summary", "suggestion", "uuid", "session_id",
    "sessionId", "parent_tool_use_id", "tool_use_id", "tool_name", "tool_input", "name", "input",
    "id", "message_id", "model", "usage", "model_usage", "modelUsage", "stop_reason",
    "stopReason", "is_error", "subtype", "duration_ms", "duration_api_ms", "num_turns",
    "total_cost_usd", "errors", "structured_output", "permission_denials", "error", "error_info",
    "system_info", "request_id", "rate_limit_info", "thread_id", "threadId", "timestamp",
    "permissionMode", "tools", "claude_code_version", "version",
)  # fmt: skip

block_like = st.dictionaries(
    st.sampled_from(
        ["type", "text", "thinking", "id", "name", "input", "tool_use_id", "content", "is_error"]
    ),
    st.sampled_from(["text", "thinking", "tool_use", "tool_result", "raw", "image"]) | wild_values,
    max_size=4,
)
shaped_values = wild_values | st.lists(block_like | wild_values, max_size=3)


def _some_of(keys: tuple[str, ...], values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.dictionaries(st.sampled_from(keys), values, max_size=3) | wild_values


def _merged(*parts: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part)
    return merged


known_key_objects = st.builds(
    _merged,
    st.dictionaries(st.sampled_from(KNOWN_KEYS), shaped_values, max_size=6),
    st.fixed_dictionaries(
        {},
        optional={
            "message": _some_of(("content", "usage", "model", "id", "stop_reason"), shaped_values),
            "request": _some_of(("subtype", "tool_name", "input", "tool_use_id"), wild_values),
            "response": _some_of(("subtype", "request_id"), wild_values),
            "event": st.fixed_dictionaries(
                {"delta": _some_of(("type", "text"), st.just("text_delta") | wild_values)}
            ),
        },
    ),
    st.fixed_dictionaries({"type": st.sampled_from([t.value for t in MessageType]) | wild_values}),
)


def _opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


json_dicts = st.dictionaries(st.text(max_size=5), small_json, max_size=2)
short_texts = st.text(max_size=6)
content_blocks = st.builds(
    ContentBlock,
    st.sampled_from(ContentBlockType),
    text=_opt(short_texts),
    thinking=_opt(short_texts),
    id=_opt(short_texts),
    name=_opt(short_texts),
    input=_opt(json_dicts),
    tool_use_id=_opt(short_texts),
    content=small_json,
    is_error=_opt(st.booleans()),
    raw=_opt(json_dicts),
)
texts = _opt(short_texts)
numbers = _opt(st.integers(min_value=0) | st.floats(min_value=0, allow_infinity=False))
messages = st.builds(
    Message,
    st.sampled_from(MessageType),
    content=texts,
    content_blocks=st.lists(content_blocks, max_size=2),
    tool_name=texts,
    tool_input=_opt(json_dicts),
    tool_use_id=texts,
    parent_tool_use_id=texts,
    uuid=texts,
    session_id=texts,
    message_id=texts,
    model=texts,
    usage=_opt(json_dicts),
    model_usage=_opt(json_dicts),
    stop_reason=texts,
    stop_reason_parsed=_opt(st.sampled_from(StopReason)),
    is_error=_opt(st.booleans()),
    subtype=texts,
    duration_ms=numbers,
    duration_api_ms=numbers,
    num_turns=_opt(st.integers(min_value=0)),
    total_cost_usd=numbers,
    errors=_opt(st.lists(small_json, max_size=2)),
    structured_output=small_json,
    permission_denials=_opt(st.lists(json_dicts, max_size=2)),
    error_info=_opt(json_dicts),
    system_info=_opt(json_dicts),
    request_id=_opt(short_texts | st.integers()),
    request=_opt(json_dicts),
    response=_opt(json_dicts),
    rate_limit_info=_opt(json_dicts),
    thread_id=texts,
    timestamp=_opt(st.integers(min_value=0)),
    raw=_opt(json_dicts),
)


# --- properties ---------------------------------------------------------------------

# Big recursive examples cost ~10 ms each to draw: fewer of them keep each test well under a
# second, scaled from the active profile so a thorough profile still runs more.
heavy = settings(max_examples=max(20, settings().max_examples * 3 // 10))


@given(json_objects)
@heavy
def test_normalize_never_raises_on_arbitrary_json_objects(mapping: dict[str, Any]) -> None:
    message = normalize(mapping, now_ms=1)
    assert message.raw == mapping
    json.dumps(message.to_dict(), allow_nan=False)


@given(known_key_objects)
@heavy
def test_normalize_never_raises_on_known_keys_with_any_values(mapping: dict[str, Any]) -> None:
    message = normalize(mapping, now_ms=1)
    kind = mapping["type"]
    expected = kind if isinstance(kind, str) and kind in set(MessageType) else "raw"
    assert message.type == expected
    for key in ("uuid", "session_id"):
        if isinstance(mapping.get(key), str):
            assert getattr(message, key) == mapping[key]
    # Whatever got in is a value of the declared type, so the stored form survives.
    Message.from_dict(message.to_dict())


@given(json_objects)
@heavy
def test_normalized_messages_round_trip_through_the_stored_form(mapping: dict[str, Any]) -> None:
    message = normalize(mapping, now_ms=1)
    assert Message.from_dict(json.loads(json.dumps(message.to_dict()))) == message


@given(messages)
@heavy
def test_to_dict_from_dict_round_trips_every_message(message: Message) -> None:
    encoded = message.to_dict()
    json.dumps(encoded, allow_nan=False)
    assert Message.from_dict(encoded) == message
    assert Message.from_dict(json.loads(json.dumps(encoded))) == message


@given(content_blocks)
@heavy
def test_content_block_round_trips(block: ContentBlock) -> None:
    assert ContentBlock.from_dict(block.to_dict()) == block


@given(wild_values)
def test_content_block_from_dict_never_raises(value: Any) -> None:
    block = ContentBlock.from_dict(value)
    if not isinstance(value, dict):
        assert block.type is ContentBlockType.RAW


# --- real Claude Code stream-json lines ---------------------------------------------

SESSION = "0b4c6c52-29c7-4f57-9d0a-8d4b52a3f1de"

INIT: dict[str, Any] = {
    "type": "system",
    "subtype": "init",
    "cwd": "/tmp/work",
    "session_id": SESSION,
    "tools": ["Task", "Bash", "Read", "Edit"],
    "mcp_servers": [{"name": "fs", "status": "connected"}],
    "model": "claude-sonnet-4-5-20250929",
    "permissionMode": "default",
    "slash_commands": ["compact", "cost"],
    "apiKeySource": "ANTHROPIC_API_KEY",
    "claude_code_version": "2.1.197",
    "output_style": "default",
    "agents": ["general-purpose"],
    "skills": [],
    "plugins": [],
    "uuid": "5f1e2b1c-1d1a-4c55-9a8e-3d3f0e2a9b10",
}

ASSISTANT: dict[str, Any] = {
    "type": "assistant",
    "message": {
        "model": "claude-sonnet-4-5-20250929",
        "id": "msg_01XyZ",
        "type": "message",
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me "},
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "create it."},
            {
                "type": "tool_use",
                "id": "toolu_01",
                "name": "Bash",
                "input": {"command": "touch x", "description": "Create x"},
            },
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5, "service_tier": "standard"},
    },
    "parent_tool_use_id": None,
    "session_id": SESSION,
    "uuid": "a1",
}

USER_TOOL_RESULT: dict[str, Any] = {
    "type": "user",
    "message": {
        "role": "user",
        "content": [
            {"tool_use_id": "toolu_01", "type": "tool_result", "content": "", "is_error": False}
        ],
    },
    "parent_tool_use_id": None,
    "session_id": SESSION,
    "uuid": "u1",
    "tool_use_result": {"stdout": "", "stderr": "", "interrupted": False},
}

RESULT: dict[str, Any] = {
    "type": "result",
    "subtype": "success",
    "is_error": False,
    "duration_ms": 2345,
    "duration_api_ms": 2100,
    "num_turns": 2,
    "result": "Done.",
    "stop_reason": "end_turn",
    "session_id": SESSION,
    "total_cost_usd": 0.0123,
    "usage": {
        "input_tokens": 20,
        "output_tokens": 12,
        "server_tool_use": {"web_search_requests": 0},
    },
    "modelUsage": {
        "claude-sonnet-4-5-20250929": {"inputTokens": 20, "outputTokens": 12, "costUSD": 0.0123}
    },
    "permission_denials": [{"tool_name": "Bash", "tool_use_id": "toolu_02", "tool_input": {}}],
    "uuid": "r1",
}

CAN_USE_TOOL: dict[str, Any] = {
    "type": "control_request",
    "request_id": "b3f0c2d4-1",
    "request": {
        "subtype": "can_use_tool",
        "tool_name": "Bash",
        "input": {"command": "touch x"},
        "permission_suggestions": [{"type": "addRules", "behavior": "allow"}],
        "tool_use_id": "toolu_01",
    },
}


def test_system_init_fills_system_info() -> None:
    message = normalize(INIT, now_ms=7)
    assert message.type is MessageType.SYSTEM
    assert message.subtype == "init"
    assert message.session_id == SESSION
    assert message.uuid == INIT["uuid"]
    assert message.model == "claude-sonnet-4-5-20250929"
    info = message.system_info
    assert info is not None
    assert info["tools"] == ["Task", "Bash", "Read", "Edit"]
    assert info["mcp_servers"] == [{"name": "fs", "status": "connected"}]
    assert info["permission_mode"] == "default"
    assert info["api_key_source"] == "ANTHROPIC_API_KEY"
    assert info["version"] == "2.1.197"
    assert info["cwd"] == "/tmp/work"
    assert info["session_id"] == SESSION
    for key in ("model", "slash_commands", "agents", "skills", "plugins"):
        assert info[key] == INIT[key]
    assert "permissionMode" not in info
    assert message.raw == INIT
    assert message.timestamp == 7


def test_system_without_init_has_no_system_info() -> None:
    assert normalize({"type": "system", "subtype": "status"}).system_info is None


def test_assistant_blocks_and_metadata_come_from_message() -> None:
    message = normalize(ASSISTANT, now_ms=0)
    assert message.type is MessageType.ASSISTANT
    assert message.content == "Let me create it."
    assert [b.type for b in message.content_blocks] == [
        ContentBlockType.TEXT,
        ContentBlockType.THINKING,
        ContentBlockType.TEXT,
        ContentBlockType.TOOL_USE,
    ]
    tool_use = message.content_blocks[3]
    assert (tool_use.id, tool_use.name) == ("toolu_01", "Bash")
    assert tool_use.input == {"command": "touch x", "description": "Create x"}
    assert message.content_blocks[1].thinking == "hmm"
    assert message.message_id == "msg_01XyZ"
    assert message.model == "claude-sonnet-4-5-20250929"
    assert message.usage == {"input_tokens": 10, "output_tokens": 5, "service_tier": "standard"}
    assert message.stop_reason == "tool_use"
    assert message.stop_reason_parsed is StopReason.TOOL_USE_STOP
    assert (message.session_id, message.uuid) == (SESSION, "a1")
    assert message.parent_tool_use_id is None


def test_assistant_blocks_from_top_level_content() -> None:
    message = normalize({"type": "assistant", "content": [{"type": "text", "text": "hi"}]})
    assert message.content == "hi"
    assert message.content_blocks == (ContentBlock("text", text="hi"),)


def test_assistant_with_only_a_tool_use_has_no_text_content() -> None:
    message = normalize(
        {
            "type": "assistant",
            "message": {"content": [{"type": "tool_use", "id": "t", "name": "n"}]},
        }
    )
    assert message.content is None
    assert len(message.content_blocks) == 1


def test_user_tool_result() -> None:
    message = normalize(USER_TOOL_RESULT, now_ms=0)
    assert message.type is MessageType.USER
    (block,) = message.content_blocks
    assert block.type is ContentBlockType.TOOL_RESULT
    assert (block.tool_use_id, block.content, block.is_error) == ("toolu_01", "", False)
    assert message.content is None
    assert message.raw is not None
    assert message.raw["tool_use_result"]["interrupted"] is False


def test_user_prompt_with_string_content() -> None:
    message = normalize({"type": "user", "message": {"role": "user", "content": "hello"}})
    assert message.content == "hello"
    assert message.content_blocks == ()


def test_result_with_usage_and_model_usage() -> None:
    message = normalize(RESULT, now_ms=0)
    assert message.type is MessageType.RESULT
    assert message.content == "Done."
    assert message.subtype == "success"
    assert message.is_error is False
    assert (message.duration_ms, message.duration_api_ms, message.num_turns) == (2345, 2100, 2)
    assert message.total_cost_usd == pytest.approx(0.0123)
    assert message.stop_reason_parsed is StopReason.END_TURN
    assert message.usage == RESULT["usage"]
    assert message.model_usage == RESULT["modelUsage"]
    assert message.permission_denials == tuple(RESULT["permission_denials"])
    assert message.session_id == SESSION


def test_result_content_falls_back_to_content() -> None:
    assert normalize({"type": "result", "content": "c"}).content == "c"
    assert normalize({"type": "result", "result": "r", "content": "c"}).content == "r"
    assert normalize({"type": "result", "result": 5, "content": "c"}).content == "c"


def test_control_request_can_use_tool() -> None:
    message = normalize(CAN_USE_TOOL, now_ms=0)
    assert message.type is MessageType.CONTROL_REQUEST
    assert message.request_id == "b3f0c2d4-1"
    assert message.request == CAN_USE_TOOL["request"]
    assert message.subtype == "can_use_tool"
    assert message.tool_name == "Bash"
    assert message.tool_input == {"command": "touch x"}
    assert message.tool_use_id == "toolu_01"


def test_control_response_request_id_inside_or_at_top_level() -> None:
    inside = normalize(
        {
            "type": "control_response",
            "response": {"subtype": "success", "request_id": "req_1", "response": {"pid": 1}},
        }
    )
    assert (inside.request_id, inside.subtype) == ("req_1", "success")
    assert inside.response == {"subtype": "success", "request_id": "req_1", "response": {"pid": 1}}
    top = normalize({"type": "control_response", "request_id": "req_2", "response": {}})
    assert top.request_id == "req_2"


def test_error_message_content_and_info() -> None:
    message = normalize({"type": "error", "error": {"message": "overloaded", "code": 529}})
    assert message.content == "overloaded"
    assert message.error_info == {"message": "overloaded", "code": 529}
    assert normalize({"type": "error", "error": "boom"}).content == "boom"


def test_stream_event_text_delta_becomes_content() -> None:
    message = normalize(
        {
            "type": "stream_event",
            "event": {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "He"}},
        }
    )
    assert message.content == "He"


def test_tool_use_message_reads_name_and_input() -> None:
    message = normalize({"type": "tool_use", "name": "Bash", "input": {"c": 1}, "id": "t9"})
    assert (message.tool_name, message.tool_input, message.tool_use_id) == ("Bash", {"c": 1}, "t9")


def test_camel_case_keys() -> None:
    message = normalize(
        {"type": "result", "sessionId": "s", "threadId": "t", "durationMs": 5, "stopReason": "x"}
    )
    assert (message.session_id, message.thread_id, message.duration_ms) == ("s", "t", 5)
    assert message.stop_reason_parsed is StopReason.UNKNOWN_STOP


@pytest.mark.parametrize(
    "mapping",
    [{}, {"type": "thread.started", "thread_id": "th"}, {"type": 3}, {"type": None}],
)
def test_missing_or_unknown_type_is_raw(mapping: dict[str, Any]) -> None:
    message = normalize(mapping, now_ms=0)
    assert message.type is MessageType.RAW
    assert message.raw == mapping


def test_raw_messages_keep_common_fields() -> None:
    message = normalize({"type": "turn.started", "session_id": "s", "uuid": "u"})
    assert (message.type, message.session_id, message.uuid) == (MessageType.RAW, "s", "u")


def test_bad_typed_values_are_dropped_not_raised() -> None:
    mapping = {
        "type": "result",
        "content": 5,
        "message": "x",
        "usage": [],
        "num_turns": "3",
        "is_error": 1,
        "duration_ms": True,
        "uuid": 7,
        "errors": "e",
        "request_id": 1.5,
    }
    message = normalize(mapping, now_ms=0)
    assert message.type is MessageType.RESULT
    for name in ("content", "usage", "num_turns", "is_error", "duration_ms", "uuid", "errors"):
        assert getattr(message, name) is None, name
    assert message.request_id is None
    assert message.raw == mapping
    bad_assistant = normalize({"type": "assistant", "message": "x", "content": 5})
    assert (bad_assistant.content, bad_assistant.content_blocks) == (None, ())


def test_non_mapping_input_becomes_raw() -> None:
    message = normalize([1, 2], now_ms=0)  # type: ignore[arg-type]
    assert message.type is MessageType.RAW
    assert message.raw == {"value": [1, 2]}


def test_timestamp() -> None:
    assert normalize({"type": "text"}, now_ms=42).timestamp == 42
    assert normalize({"type": "text", "timestamp": 9}, now_ms=42).timestamp == 9
    assert normalize({"type": "text", "timestamp": True}, now_ms=42).timestamp == 42
    assert normalize({"type": "text", "timestamp": "2026-01-01"}, now_ms=42).timestamp == 42
    before = time.time_ns() // 1_000_000
    stamped = normalize({"type": "text"}).timestamp
    after = time.time_ns() // 1_000_000
    assert stamped is not None
    assert before <= stamped <= after


def test_deeply_nested_values_do_not_hit_the_recursion_limit() -> None:
    nested: Any = "leaf"
    for _ in range(5000):
        nested = {"k": [nested]}
    message = normalize({"type": "result", "structured_output": nested}, now_ms=0)
    node = message.structured_output
    assert node is not nested
    for _ in range(5000):
        node = node["k"][0]
    assert node == "leaf"


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("end_turn", StopReason.END_TURN),
        ("max_tokens", StopReason.MAX_TOKENS),
        ("stop_sequence", StopReason.STOP_SEQUENCE),
        ("refusal", StopReason.REFUSAL),
        ("tool_use", StopReason.TOOL_USE_STOP),
        ("cancelled", StopReason.UNKNOWN_STOP),
        (None, None),
    ],
)
def test_parse_stop_reason(raw: str | None, parsed: StopReason | None) -> None:
    assert parse_stop_reason(raw) == parsed
    assert Message("result", stop_reason=raw).stop_reason_parsed == parsed


# --- value semantics ----------------------------------------------------------------


def test_message_type_is_exactly_the_reference_set() -> None:
    assert {t.value for t in MessageType} == {
        "text", "assistant", "tool_use", "tool_result", "system", "result", "error", "user",
        "control", "control_request", "control_response", "stream_event", "rate_limit_event",
        "tool_progress", "tool_use_summary", "thinking", "auth_status", "prompt_suggestion", "raw",
    }  # fmt: skip


def test_mappings_are_not_shared_with_the_caller() -> None:
    mapping = {"type": "result", "usage": {"n": [1]}, "errors": ["a"]}
    message = normalize(mapping, now_ms=0)
    mapping["usage"]["n"].append(2)  # type: ignore[index]
    mapping["errors"].append("b")  # type: ignore[attr-defined]
    assert message.usage == {"n": [1]}
    assert message.errors == ("a",)
    assert message.raw == {"type": "result", "usage": {"n": [1]}, "errors": ["a"]}

    tool_input: dict[str, Any] = {"cmd": ["ls"]}
    built = Message("tool_use", tool_input=tool_input)
    tool_input["cmd"].append("-l")
    assert built.tool_input == {"cmd": ["ls"]}
    exported = built.to_dict()
    exported["tool_input"]["cmd"].append("-a")
    assert built.tool_input == {"cmd": ["ls"]}


def test_to_dict_omits_none_and_uses_strings() -> None:
    message = Message(MessageType.RESULT, content="4", stop_reason="end_turn", timestamp=3)
    assert message.to_dict() == {
        "type": "result",
        "content": "4",
        "stop_reason": "end_turn",
        "stop_reason_parsed": "end_turn",
        "timestamp": 3,
    }


def test_constructor_validates_types() -> None:
    with pytest.raises(InvalidOption, match="unknown message type"):
        Message("bogus")
    with pytest.raises(InvalidOption, match=r"Message\.content must be str"):
        Message("text", content=5)  # type: ignore[arg-type]
    with pytest.raises(InvalidOption, match=r"Message\.num_turns"):
        Message("result", num_turns=True)
    with pytest.raises(InvalidOption, match="expected a mapping"):
        Message("result", usage=[1])  # type: ignore[arg-type]
    with pytest.raises(InvalidOption, match="unknown content block type"):
        ContentBlock("image")


def test_from_dict_rejects_bad_stored_forms() -> None:
    with pytest.raises(InvalidOption, match="'type'"):
        Message.from_dict({"content": "x"})
    with pytest.raises(InvalidOption, match="unknown message type"):
        Message.from_dict({"type": "nope"})
    with pytest.raises(InvalidOption, match="uuid"):
        Message.from_dict({"type": "text", "uuid": 1})
    assert Message.from_dict({"type": "text", "future_field": 1}) == Message("text")


def test_with_fields_stamps_and_rederives_stop_reason() -> None:
    message = Message("result", stop_reason="end_turn")
    stamped = message.with_fields(session_id="s", thread_id="t")
    assert (stamped.session_id, stamped.thread_id) == ("s", "t")
    assert message.session_id is None
    assert message.with_fields(stop_reason="max_tokens").stop_reason_parsed is StopReason.MAX_TOKENS
    explicit = message.with_fields(stop_reason="x", stop_reason_parsed="end_turn")
    assert explicit.stop_reason_parsed is StopReason.END_TURN
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        message.content = "x"  # type: ignore[misc]


def test_content_block_from_dict() -> None:
    image = {"type": "image", "source": {"type": "base64", "data": "AA=="}}
    raw_block = ContentBlock.from_dict(image)
    assert raw_block.type is ContentBlockType.RAW
    assert raw_block.raw == image
    assert raw_block.to_dict() == {"type": "raw", "raw": image}
    assert ContentBlock.from_dict("x") == ContentBlock("raw", raw={"value": "x"})
    text = ContentBlock.from_dict({"type": "text", "text": 5, "id": "i"})
    assert text == ContentBlock("text", id="i")
    assert text.to_dict() == {"type": "text", "id": "i"}


# --- canonical JSON: what a backend sends never makes a message unstorable ---------------


def _strict_json(message: Message) -> str:
    """The stored form as strict JSON text, encodable as UTF-8 (what the store writes)."""
    for copy in (True, False):
        text = json.dumps(message.to_dict(copy=copy), allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
    return text


@given(
    st.dictionaries(st.sampled_from(KNOWN_KEYS) | surrogate_texts, hostile_values, max_size=6),
    st.sampled_from([t.value for t in MessageType]),
)
@heavy
def test_normalized_messages_are_always_strict_json(mapping: dict[str, Any], kind: str) -> None:
    message = normalize({**mapping, "type": kind}, now_ms=1)
    _strict_json(message)
    assert Message.from_dict(message.to_dict()) == message  # no NaN left to break ==


def test_non_finite_numbers_become_null_and_number_fields_drop_them() -> None:
    raw = {
        "type": "result",
        "duration_ms": math.nan,
        "total_cost_usd": math.inf,
        "usage": {"input_tokens": 3, "cost": -math.inf, "per": [math.nan, 1.5]},
    }

    message = normalize(raw, now_ms=1)

    assert (message.duration_ms, message.total_cost_usd) == (None, None)
    assert message.usage == {"input_tokens": 3, "cost": None, "per": [None, 1.5]}
    assert message.raw is not None
    assert message.raw["duration_ms"] is None
    assert json.loads(_strict_json(message))["usage"]["cost"] is None


def test_the_constructor_refuses_non_finite_number_fields_and_nulls_nested_ones() -> None:
    with pytest.raises(InvalidOption, match="duration_ms must be a finite number"):
        Message("result", duration_ms=math.nan)
    with pytest.raises(InvalidOption, match="total_cost_usd must be a finite number"):
        Message("result", total_cost_usd=-math.inf)
    message = Message("result", usage={"x": math.nan}, structured_output=[math.inf])
    assert (message.usage, message.structured_output) == ({"x": None}, [None])


def test_surrogates_become_valid_unicode_everywhere() -> None:
    lone, pair = "a\ud800b", "\ud83d\ude00"
    message = normalize(
        {
            "type": "assistant",
            "session_id": lone,
            "message": {"content": [{"type": "text", "text": lone + pair}]},
            lone: {"key": pair},
        },
        now_ms=1,
    )

    assert message.session_id == "a\ufffdb"
    assert message.content == "a\ufffdb\U0001f600"  # a pair is joined into its character
    assert message.raw is not None
    assert message.raw["a\ufffdb"] == {"key": "\U0001f600"}
    _strict_json(message)
    built = Message("text", content=lone, content_blocks=[ContentBlock("text", text=lone)])
    assert built.content == built.content_blocks[0].text == "a\ufffdb"
    assert built.with_fields(uuid=lone).uuid == "a\ufffdb"
