"""Backend data never crashes a handler: structured junk in, canonical messages out.

Each handler gets lines built from its own protocol's vocabulary (message
types, methods, field names) with hostile values: wrong types, NaN and
Infinity, lone surrogate escapes, deep nesting, invalid UTF-8. Whatever it
makes of them, it must not raise (the session actor would crash on it) but
for ``ProtocolError``, which the session turns into a clean ``SessionError``;
and every message it produces must be storable as strict JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from beamagent.backends.base import BackendHandler, Connected
from beamagent.backends.claude import ClaudeHandler, HookMatcher
from beamagent.backends.codex import CodexHandler
from beamagent.backends.local import LocalHandler
from beamagent.backends.openai import OpenAIHandler
from beamagent.backends.permissions import Allow
from beamagent.errors import ProtocolError
from beamagent.messages import Message

FAKES = Path(__file__).parent / "fakes"

KEYS = (
    "type", "subtype", "request_id", "request", "response", "message", "content", "text",
    "session_id", "isReplay", "model", "tool_name", "input", "id", "method", "params", "result",
    "error", "item", "turn", "threadId", "turnId", "delta", "status", "tokenUsage", "total",
    "requestId", "willRetry", "durationMs", "summary", "command", "cwd", "changes",
    "aggregatedOutput", "exitCode", "server", "tool", "arguments", "callId", "itemId", "reason",
    "grantRoot", "thread", "choices", "finish_reason", "tool_calls", "index", "function", "name",
    "usage", "op", "data", "body", "code", "callback_id", "tool_use_id", "commands", "models",
    "agents", "account", "uuid", "native_session_id", "duration_ms", "total_cost_usd", "is_error",
)  # fmt: skip
WORDS = (
    "system", "init", "assistant", "user", "result", "control_request", "control_response",
    "control_cancel_request", "keep_alive", "can_use_tool", "hook_callback", "success", "error",
    "initialize", "init", "beamagent_init", "beamagent_1", "hook_0", "turn/started",
    "turn/completed", "item/started", "item/completed", "item/agentMessage/delta",
    "thread/tokenUsage/updated", "serverRequest/resolved", "item/commandExecution/requestApproval",
    "item/fileChange/requestApproval", "execCommandApproval", "applyPatchApproval",
    "agentMessage", "reasoning", "commandExecution", "fileChange", "mcpToolCall", "completed",
    "failed", "interrupted", "declined", "inProgress", "event", "done", "http_error",
    "transport_error", "cancelled", "[DONE]", "text_delta", "text", "tool_use", "tool_result",
)  # fmt: skip

hostile_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-2, max_value=3)  # request ids collide with ours
    | st.integers()
    | st.floats()  # NaN and infinities included
    | st.sampled_from(WORDS)
    | st.text(
        st.characters() | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=8
    )
)
junk = st.recursive(
    hostile_scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=3), children, max_size=5)
    ),
    max_leaves=12,
)


Shape = dict[str, Any] | list[Any] | tuple[str, ...] | None


def shaped(shape: Shape) -> st.SearchStrategy[Any]:
    """Values of a protocol's shape in which any part may be junk instead.

    A shape is a dict of field shapes, ``[item shape]``, a tuple of the words
    a field takes (type names, methods), or None (any value). Mostly the
    right shape is drawn, so that deep paths are reached, with junk there.
    """
    if shape is None:
        return junk
    if isinstance(shape, tuple):
        return st.one_of(st.sampled_from(shape), st.sampled_from(shape), junk)
    if isinstance(shape, list):
        right: st.SearchStrategy[Any] = st.lists(shaped(shape[0]), min_size=1, max_size=3)
    else:
        right = st.fixed_dictionaries({}, optional={k: shaped(v) for k, v in shape.items()})
    return st.one_of(right, right, right, junk)  # mostly the right shape, so depth is reached


BLOCKS = [
    {
        "type": ("text", "tool_use", "tool_result", "thinking"),
        "text": None,
        "id": None,
        "name": None,
        "input": None,
        "content": None,
    }
]
CLAUDE = {
    "type": ("system", "assistant", "user", "result", "control_request", "control_response",
             "control_cancel_request", "keep_alive", "stream_event", "error"),
    "subtype": ("init", "success", "error", "error_max_turns"),
    "session_id": None, "model": None, "isReplay": None,
    "request_id": None, "uuid": None, "result": None, "is_error": None, "errors": None,
    "request": {"subtype": ("can_use_tool", "hook_callback", "mcp_message", "initialize"),
                "tool_name": None, "input": None, "callback_id": ("hook_0", "hook_1"),
                "tool_use_id": None, "permission_suggestions": None, "description": None},
    "response": {"subtype": ("success", "error"),
                 "request_id": ("beamagent_init", "beamagent_1", "ctl_1", "init"), "error": None,
                 "response": {"commands": None, "models": None, "agents": None, "account": None}},
    "message": {"content": BLOCKS, "usage": None, "model": None, "id": None},
    "event": {"delta": {"type": None, "text": None}},
}  # fmt: skip
ITEM = {
    "type": ("agentMessage", "reasoning", "commandExecution", "fileChange", "mcpToolCall"),
    "id": None, "text": None, "summary": None, "command": None, "cwd": None,
    "status": ("completed", "failed", "declined", "inProgress"),
    "aggregatedOutput": None, "exitCode": None, "changes": None,
    "server": None, "tool": None, "arguments": None, "result": None, "error": None,
}  # fmt: skip
CODEX = {
    "id": None,
    "method": ("turn/started", "turn/completed", "item/started", "item/completed",
               "item/agentMessage/delta", "error", "thread/tokenUsage/updated",
               "serverRequest/resolved", "item/commandExecution/requestApproval",
               "item/fileChange/requestApproval", "execCommandApproval", "applyPatchApproval",
               "mcpServer/elicitation/request"),
    "error": {"code": None, "message": None},
    "result": {"thread": {"id": None, "model": None, "path": None}, "turn": {"id": None},
               "userAgent": None},
    "params": {"item": ITEM, "delta": None, "willRetry": None, "requestId": None,
               "turn": {"id": None, "status": ("completed", "failed", "interrupted"),
                        "error": None, "durationMs": None},
               "tokenUsage": {"total": None}, "error": {"message": None},
               "command": None, "cwd": None, "reason": None, "itemId": None},
}  # fmt: skip
OPENAI_CHUNK = {
    "id": None, "model": None, "usage": None, "error": None,
    "choices": [{"finish_reason": ("stop", "length", "tool_calls"), "delta": {
        "content": None,
        "tool_calls": [{"index": None, "id": None, "function": {"name": None, "arguments": None}}],
    }}],
}  # fmt: skip


def _wire(obj: Any) -> bytes:
    """``obj`` as a backend could write it: NaN tokens and \\ud800 escapes allowed."""
    return json.dumps(obj).encode() + b"\n"


def lines(shape: Shape) -> st.SearchStrategy[list[bytes]]:
    """Lines a backend speaking ``shape`` could send, and a few that are not even JSON."""
    return st.lists(
        shaped(shape).map(_wire)
        | shaped(shape).map(lambda o: _wire(o).replace(b"e", b"\xff", 1))
        | st.binary(max_size=40).map(lambda b: b + b"\n"),
        max_size=6,
    )


def _strict(message: Message) -> None:
    text = json.dumps(message.to_dict(), allow_nan=False, ensure_ascii=False)
    text.encode("utf-8")


def _feed(handler: BackendHandler, data: bytes) -> None:
    try:
        output, _leftover = handler.handle_data(data)
    except ProtocolError:
        return
    for message in output.messages:
        _strict(message)
    for call in output.calls:  # the answers to the backend's requests must encode too
        handler.on_call_result(call.key, call.fn(), None)


def _active(handler: BackendHandler) -> BackendHandler:
    handler.on_connected(Connected({}))
    handler.encode_query("hi", {})
    return handler


junk_settings = settings(max_examples=max(100, settings().max_examples), deadline=None)


@given(lines(CLAUDE))
@junk_settings
def test_claude_handler(data: list[bytes]) -> None:
    handler = ClaudeHandler(
        {
            "cli_path": str(FAKES / "fake_claude.py"),
            "session_id": "s",
            "hooks": {"PreToolUse": [HookMatcher(None, [lambda *_: None, lambda *_: None])]},
            "permission_handler": lambda *_: Allow(),
        }
    )
    _feed(_active(handler), b"".join(data))


@given(lines(CODEX))
@junk_settings
def test_codex_handler(data: list[bytes]) -> None:
    handler = CodexHandler(
        {
            "cli_path": str(FAKES / "fake_codex.py"),
            "session_id": "s",
            "permission_handler": lambda *_: Allow(),
        }
    )
    handler.on_connected(Connected({}))
    handler.native_session_id = "thread-1"  # as if thread/start had answered
    handler.encode_query("hi", {})
    _feed(handler, b"".join(data))


@given(lines(CLAUDE))
@junk_settings
def test_local_handler(data: list[bytes]) -> None:
    _feed(_active(LocalHandler({"session_id": "s"})), b"".join(data))


OPS = st.sampled_from(["event", "event", "event", "done", "http_error", "transport_error"])


@given(st.lists(st.tuples(OPS | st.sampled_from(WORDS), shaped(OPENAI_CHUNK)), max_size=6))
@junk_settings
def test_openai_handler(events: list[tuple[str, Any]]) -> None:
    handler = OpenAIHandler({"base_url": "http://127.0.0.1:9/v1", "model": "m", "session_id": "s"})
    _active(handler)
    request_id = handler._turn.request_id if handler._turn else 0
    data = b"".join(
        # What the transport delivers: server-sent event data (JSON text, or not) per line.
        _wire({"op": op, "id": request_id, "data": json.dumps(value), "status": value})
        for op, value in events
    )
    _feed(handler, data)
