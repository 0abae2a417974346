"""Python tools on the ``local`` backend: run in-process, like the ``openai`` loop.

A reply asks for a call with a :class:`LocalToolCall` item; the handler runs
it through ``beamagent.tools.invoke`` (permission handler, arguments, timeout)
off the session's thread and hands the outcome back to the reply.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from beamagent import Runtime
from beamagent.backends.local import LocalToolCall
from beamagent.backends.permissions import Allow, Deny
from beamagent.errors import Interrupted
from beamagent.messages import ContentBlockType, Message, MessageType
from beamagent.tools import ToolOutcome, tool
from tests.backends._sample_tools import _clear_calls, add, calls, explode, shout  # noqa: F401
from tests.backends.conftest import receive_until

WAIT = 30.0


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    with Runtime(store=":memory:", tools=[add, explode]) as rt:
        yield rt


def adder(prompt: str, _params: Any) -> Any:
    """The model: calls a tool named in the prompt, then says what it got."""
    name, _, arguments = prompt.partition(" ")
    args = dict(part.split("=") for part in arguments.split()) if arguments else {}
    typed = {k: int(v) if v.isdigit() else v for k, v in args.items()}
    outcome = yield LocalToolCall(name, typed)
    assert isinstance(outcome, ToolOutcome)
    yield f"{'error' if outcome.is_error else 'got'}: {outcome.content}"


def tool_uses(messages: list[Message]) -> list[Any]:
    return [b for m in messages for b in m.content_blocks if b.type is ContentBlockType.TOOL_USE]


def tool_results(messages: list[Message]) -> list[Message]:
    return [m for m in messages if m.type is MessageType.TOOL_RESULT]


@pytest.mark.parametrize("codec", ["messages", "jsonl"])
def test_the_reply_calls_a_tool_and_gets_its_outcome(runtime: Runtime, codec: str) -> None:
    session = runtime.start_session(backend="local", reply=adder, codec=codec)

    messages = session.query("add a=2 b=40", timeout=WAIT)

    [ctx] = calls
    [use] = tool_uses(messages)
    [result] = tool_results(messages)
    assert (ctx.session_id, ctx.backend, ctx.tool_name) == (session.session_id, "local", "add")
    assert ctx.tool_use_id == use.id == result.tool_use_id
    assert (use.name, use.input) == ("add", {"a": 2, "b": 40})
    assert (result.content, result.is_error, result.subtype) == ("42", False, "ok")
    assert result.duration_ms is not None
    assert messages[-1].type is MessageType.RESULT
    assert messages[-1].content == "got: 42"
    assert [m.type for m in messages] == [
        MessageType.SYSTEM,
        MessageType.ASSISTANT,  # the tool_use block
        MessageType.TOOL_RESULT,
        MessageType.ASSISTANT,
        MessageType.RESULT,
    ]
    assert messages[0].system_info is not None
    assert messages[0].system_info["tools"] == ["add", "explode"]  # what the agent is offered
    info = session.session_info()
    assert info["tools"] == ["add", "explode"]
    assert "tool_server_url" not in info  # in-process: no tool server
    assert runtime.tool_server_url is None
    stored = runtime.get_session_messages(session.session_id)
    assert len(tool_uses(stored)) == 1
    assert len(tool_results(stored)) == 1


def test_a_denied_call_does_not_run_and_the_reply_is_told(runtime: Runtime) -> None:
    asked: list[tuple[str, dict[str, Any], Any]] = []

    def deny(name: str, tool_input: dict[str, Any], context: Any) -> Deny:
        asked.append((name, tool_input, context))
        return Deny("adding is forbidden today")

    session = runtime.start_session(backend="local", reply=adder, permission_handler=deny)

    messages = session.query("add a=1 b=1", timeout=WAIT)

    assert calls == []
    [(name, tool_input, context)] = asked
    assert (name, tool_input) == ("add", {"a": 1, "b": 1})
    [result] = tool_results(messages)
    assert context.tool_use_id == result.tool_use_id
    assert (result.content, result.is_error, result.subtype) == (
        "adding is forbidden today",
        True,
        "denied",
    )
    assert messages[-1].content == "error: adding is forbidden today"


def test_an_allowed_call_with_updated_input_runs_with_it(runtime: Runtime) -> None:
    def double_b(_name: str, tool_input: dict[str, Any], _context: Any) -> Allow:
        return Allow(updated_input={**tool_input, "b": tool_input["b"] * 2})

    session = runtime.start_session(backend="local", reply=adder, permission_handler=double_b)

    assert session.query("add a=1 b=10", timeout=WAIT)[-1].content == "got: 21"


def test_a_raising_tool_or_bad_arguments_give_an_error_outcome(runtime: Runtime) -> None:
    session = runtime.start_session(backend="local", reply=adder)

    raised = session.query("explode reason=on_purpose", timeout=WAIT)
    invalid = session.query("add a=x", timeout=WAIT)

    [result] = tool_results(raised)
    assert (result.is_error, result.subtype) == (True, "error")
    assert result.content == "RuntimeError: exploded: on_purpose"
    assert raised[-1].content == "error: RuntimeError: exploded: on_purpose"
    [bad] = tool_results(invalid)
    assert (bad.is_error, bad.subtype) == (True, "invalid")
    assert calls == []
    assert session.query("hello", timeout=WAIT)[-1].type is MessageType.RESULT  # lives on


def test_two_sessions_never_see_each_others_tools(runtime: Runtime) -> None:
    adding = runtime.start_session(backend="local", reply=adder)
    shouting = runtime.start_session(backend="local", reply=adder, tools=[shout])

    first = adding.query("shout text=hi", timeout=WAIT)
    second = shouting.query("shout text=hi", timeout=WAIT)
    refused = shouting.query("add a=1 b=2", timeout=WAIT)

    assert first[0].system_info is not None
    assert second[0].system_info is not None
    assert first[0].system_info["tools"] == ["add", "explode"]
    assert second[0].system_info["tools"] == ["shout"]
    assert first[-1].content == "error: unknown tool 'shout'"
    assert second[-1].content == "got: HI"
    assert refused[-1].content == "error: unknown tool 'add'"
    assert calls == []


def test_list_replies_and_runtime_wide_tools_reach_local_sessions(runtime: Runtime) -> None:
    replies = [[LocalToolCall("add", {"a": 1, "b": 2}, id="call_mine"), "done"]]
    session = runtime.start_session(backend="local", replies=replies)

    messages = session.query("go", timeout=WAIT)

    [result] = tool_results(messages)
    assert (result.tool_use_id, result.content) == ("call_mine", "3")
    assert messages[-1].content == "done"
    assert [c.tool_use_id for c in calls] == ["call_mine"]


def test_an_interrupt_while_a_tool_runs_ends_the_query_and_drops_the_late_result(
    runtime: Runtime,
) -> None:
    started, release = threading.Event(), threading.Event()

    @tool
    def slow() -> str:
        """Waits until released."""
        started.set()
        release.wait(WAIT)
        return "late"

    session = runtime.start_session(
        backend="local", tools=[slow], replies=[[LocalToolCall("slow"), "never said"]]
    )
    ref = session.send_query("go")
    assert started.wait(WAIT)

    session.interrupt()
    receive_until(session, ref, Interrupted)
    release.set()

    after = session.query("still here", timeout=WAIT)
    assert after[-1].content == "still here"
    assert tool_results(after) == []
    stored = runtime.get_session_messages(session.session_id)
    assert [m.content for m in tool_results(stored)] == []  # the late result was dropped
