"""The ``openai`` backend's own tool loop, against FakeModelServer's Chat Completions."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from beamagent import Runtime, Session
from beamagent.backends.permissions import Allow, Deny
from beamagent.errors import InvalidOption
from beamagent.messages import MessageType
from beamagent.testing import FakeModelServer, Text, ToolCall
from beamagent.tools import ToolContext, tool

WAIT = 10.0
seen: list[ToolContext] = []


@tool
def add(a: int, b: int, ctx: ToolContext) -> int:
    """Add two integers."""
    seen.append(ctx)
    return a + b


@tool
def boom() -> None:
    """Fails."""
    raise RuntimeError("kaboom")


@pytest.fixture
def http_server() -> Iterator[FakeModelServer]:
    with FakeModelServer(reply="default reply") as server:
        yield server


@pytest.fixture
def start(http_server: FakeModelServer) -> Iterator[Any]:
    seen.clear()
    with Runtime(store=":memory:", tools=[add, boom]) as rt:

        def start_session(**options: Any) -> Session:
            options.setdefault("base_url", http_server.url + "/v1")
            options.setdefault("model", "fake-model")
            return rt.start_session(backend="openai", **options)

        yield start_session
        assert rt.tool_server_url is None  # run in-process: no tool server, no mcp


def results(messages: list[Any]) -> list[Any]:
    return [m for m in messages if m.type is MessageType.TOOL_RESULT]


def test_the_loop_runs_the_tool_and_returns_its_result(
    start: Any, http_server: FakeModelServer
) -> None:
    http_server.script([ToolCall("", tool="add", arguments={"a": 2, "b": 3}), Text("it is 5")])
    session = start(tool_context={"run_id": "r1", "node_id": "n1"})

    messages = session.query("add", timeout=WAIT)

    assert [m.type for m in messages] == [
        MessageType.SYSTEM,
        MessageType.ASSISTANT,
        MessageType.TOOL_RESULT,
        MessageType.ASSISTANT,
        MessageType.RESULT,
    ]
    [result] = results(messages)
    assert (result.content, result.is_error, result.tool_name) == ("5", False, "add")
    assert result.duration_ms is not None
    [ctx] = seen
    assert (ctx.session_id, ctx.backend, ctx.run_id, ctx.node_id) == (
        session.session_id,
        "openai",
        "r1",
        "n1",
    )
    assert ctx.tool_use_id == result.tool_use_id
    first, second = http_server.model_requests()
    assert [t["function"]["name"] for t in first.json["tools"]] == ["add", "boom"]
    assert second.json["messages"][-1] == {
        "role": "tool",
        "tool_call_id": result.tool_use_id,
        "content": "5",
    }
    assert messages[-1].content == "it is 5"
    assert messages[-1].num_turns == 2
    # The exchange, tool round included, is the conversation's history.
    http_server.script([Text("again")])
    session.query("next", timeout=WAIT)
    history = http_server.model_requests()[-1].json["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant", "user"]


def test_denied_raising_and_bad_calls_are_error_results(
    start: Any, http_server: FakeModelServer
) -> None:
    def handler(name: str, tool_input: dict[str, Any], _context: Any) -> Any:
        return Deny("not today") if name == "add" and tool_input["a"] == 1 else Allow()

    http_server.script(
        [
            ToolCall("", tool="add", arguments={"a": 1, "b": 1}),
            ToolCall("", tool="boom", arguments={}),
            ToolCall("", tool="add", arguments={"a": "x"}),
            ToolCall("", tool="nope", arguments={}),
            Text("done"),
        ]
    )
    session = start(permission_handler=handler)

    messages = session.query("go", timeout=WAIT)

    assert [(r.content, r.is_error, r.subtype) for r in results(messages)] == [
        ("not today", True, "denied"),
        ("RuntimeError: kaboom", True, "error"),
        (
            "invalid arguments for tool 'add': missing required 'b'; a: expected integer, got "
            "string 'x'",
            True,
            "invalid",
        ),
        ("unknown tool 'nope'", True, "unknown"),
    ]
    assert seen == []
    assert messages[-1].content == "done"


def test_max_tool_rounds_ends_the_query_with_an_error(
    start: Any, http_server: FakeModelServer
) -> None:
    http_server.script([ToolCall("", tool="add", arguments={"a": 1, "b": 1})] * 3)
    session = start(max_tool_rounds=2)

    messages = session.query("loop", timeout=WAIT)

    assert len(results(messages)) == 2
    assert messages[-2].type is MessageType.ERROR
    assert messages[-1].subtype == "error_max_tool_rounds"
    assert messages[-1].is_error is True
    with pytest.raises(InvalidOption, match="max_tool_rounds"):
        start(max_tool_rounds=0)


def test_an_interrupt_while_a_tool_runs_ends_the_query(
    start: Any, http_server: FakeModelServer
) -> None:
    entered, release = threading.Event(), threading.Event()

    @tool
    def wait() -> str:
        """Blocks until released."""
        entered.set()
        release.wait(WAIT)
        return "late"

    http_server.script([ToolCall("", tool="wait", arguments={})])
    session = start(tools=[wait])
    ref = session.send_query("go")
    try:
        assert entered.wait(WAIT)
        session.interrupt()
    finally:
        release.set()
    assert session.health() == "ready"
    http_server.script([Text("fresh")])
    assert session.query("again", timeout=WAIT)[-1].content == "fresh"
    del ref


def test_async_tool_and_structured_result(start: Any, http_server: FakeModelServer) -> None:
    @tool
    async def lookup(key: str) -> dict[str, Any]:
        """Look up a key."""
        await asyncio.sleep(0)
        return {"key": key, "value": 1}

    http_server.script([ToolCall("", tool="lookup", arguments={"key": "k"}), Text("ok")])
    session = start(tools=[lookup])
    [result] = results(session.query("look", timeout=WAIT))
    assert json.loads(result.content or "") == {"key": "k", "value": 1}
