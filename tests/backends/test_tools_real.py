"""Python tools on the REAL ``claude`` and ``codex`` CLIs, served by the runtime's tool server.

The fake model is scripted to call the tool (``ToolCall(tool="add", ...)``):
the CLI calls our MCP server, the function runs here, and the model's next
request must carry the result. The CLIs run in a loopback-only namespace
where the machine allows it; the tool server listens there too.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from beamagent import Runtime
from beamagent.backends.permissions import Allow, Deny
from beamagent.messages import ContentBlockType, Message, MessageType
from beamagent.testing import (
    FakeModelServer,
    LoopbackNamespace,
    Text,
    ToolCall,
    claude_env,
    codex_env,
)
from beamagent.tools import ToolServerConfig, tool
from supervisors import kill, whereis
from tests.backends._sample_tools import _clear_calls, add, calls, explode, shout  # noqa: F401
from tests.backends.conftest import prefix

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
WAIT = 60.0
BACKENDS = ["claude", "codex"]


@pytest.fixture
def tools_runtime(sandbox: LoopbackNamespace | None) -> Iterator[Runtime]:
    """A runtime whose sessions get ``add`` and ``explode``; its tool server is in the sandbox."""
    config = ToolServerConfig(netns=[sandbox.path] if sandbox else [])
    with Runtime(store=":memory:", tools=[add, explode], tool_server=config) as rt:
        yield rt


@pytest.fixture
def start(
    clis: dict[str, Path],
    tools_runtime: Runtime,
    server: FakeModelServer,
    sandbox: LoopbackNamespace | None,
    tmp_path: Path,
) -> Any:
    """``start(backend, **options)``: a real CLI session against the fake model."""
    count = iter(range(100))

    def start_session(backend: str, **options: Any) -> Any:
        home = tmp_path / f"home-{next(count)}"
        work = home / "work"
        work.mkdir(parents=True)
        env_of = claude_env if backend == "claude" else codex_env
        if backend == "codex":
            (work / ".git").mkdir()  # codex wants a repository
        return tools_runtime.start_session(
            backend=backend,
            env=env_of(home, server),
            inherit_env=False,
            command_prefix=prefix(sandbox),
            cwd=str(work),
            **options,
        )

    return start_session


def tool_result_texts(messages: list[Message]) -> list[tuple[str, bool | None]]:
    """The tool results a query delivered, whatever the backend's shape."""
    found = []
    for message in messages:
        if message.type is MessageType.TOOL_RESULT:  # its block says the same again
            found.append((message.content or "", bool(message.is_error)))
            continue
        for block in message.content_blocks:
            if block.type is ContentBlockType.TOOL_RESULT:
                content = block.content
                if isinstance(content, list):
                    content = "".join(str(c.get("text", "")) for c in content)
                found.append((str(content), bool(block.is_error)))
    return found


def result_message(messages: list[Message]) -> Message:
    """The message that carries the tool's result (with its timing)."""
    return next(
        m
        for m in messages
        if m.type is MessageType.TOOL_RESULT
        or any(b.type is ContentBlockType.TOOL_RESULT for b in m.content_blocks)
    )


def last_tool_output(server: FakeModelServer) -> str:
    """What the CLI sent back to the model after the tool ran (the last request's body)."""
    return server.model_requests()[-1].text


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_model_calls_a_python_tool_and_gets_its_result(
    start: Any, server: FakeModelServer, backend: str
) -> None:
    server.script([ToolCall("", tool="add", arguments={"a": 2, "b": 40}), Text("it is 42")])
    session = start(backend)

    messages = session.query("add 2 and 40", timeout=WAIT)

    [ctx] = calls
    assert ctx.session_id == session.session_id
    assert ctx.backend == backend
    assert ctx.tool_name == "add"
    assert ctx.tool_use_id  # the CLI passed its call id to the server
    assert tool_result_texts(messages) == [("42", False)]
    assert result_message(messages).duration_ms is not None  # the server's timing
    assert '"42"' in last_tool_output(server) or "42" in last_tool_output(server)
    assert messages[-1].type is MessageType.RESULT
    assert messages[-1].content == "it is 42"
    info = session.session_info()
    assert info["tools"] == ["add", "explode"]
    assert info["tool_server_url"] == session.session_info()["tool_server_url"]
    assert info["tool_server_url"].startswith("http://127.0.0.1:")
    # Stored once: the CLI's own report of the call, not a second copy from the server.
    stored = session._runtime.get_session_messages(session.session_id)
    assert len(tool_result_texts(stored)) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_denied_call_does_not_run_and_the_model_is_told(
    start: Any, server: FakeModelServer, backend: str
) -> None:
    asked: list[tuple[str, dict[str, Any]]] = []

    def deny(name: str, tool_input: dict[str, Any], _context: Any) -> Deny:
        asked.append((name, tool_input))
        return Deny("adding is forbidden today")

    server.script([ToolCall("", tool="add", arguments={"a": 1, "b": 1}), Text("ok")])
    session = start(backend, permission_handler=deny)

    messages = session.query("add", timeout=WAIT)

    assert calls == []
    assert asked == [("add", {"a": 1, "b": 1})]  # asked once, by the tool server
    [(text, is_error)] = tool_result_texts(messages)
    assert "adding is forbidden today" in text
    assert is_error is True
    assert "adding is forbidden today" in last_tool_output(server)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_allowed_call_with_updated_input_runs_with_it(
    start: Any, server: FakeModelServer, backend: str
) -> None:
    def double_b(_name: str, tool_input: dict[str, Any], _context: Any) -> Allow:
        return Allow(updated_input={**tool_input, "b": tool_input["b"] * 2})

    server.script([ToolCall("", tool="add", arguments={"a": 1, "b": 10}), Text("ok")])
    session = start(backend, permission_handler=double_b)

    messages = session.query("add", timeout=WAIT)

    assert tool_result_texts(messages) == [("21", False)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_raising_tool_gives_the_model_an_error_result(
    start: Any, server: FakeModelServer, backend: str
) -> None:
    server.script([ToolCall("", tool="explode", arguments={"reason": "on purpose"}), Text("oh")])
    session = start(backend)

    messages = session.query("explode", timeout=WAIT)

    [(text, is_error)] = tool_result_texts(messages)
    assert "RuntimeError: exploded: on purpose" in text
    assert is_error is True
    assert "exploded: on purpose" in last_tool_output(server)
    assert messages[-1].content == "oh"
    assert session.query("ECHO:still alive", timeout=WAIT)[-1].content == "still alive"


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_sessions_never_see_each_others_tools(
    start: Any, server: FakeModelServer, tools_runtime: Runtime, backend: str
) -> None:
    server.script([Text("one")])
    adder = start(backend)
    adder.query("hello", timeout=WAIT)
    first = server.model_requests()[-1].text
    server.script([Text("two")])
    shouter = start(backend, tools=[shout])
    shouter.query("hello", timeout=WAIT)
    second = server.model_requests()[-1].text

    # What the model is offered (Codex lists deferred MCP tools by namespace only).
    if backend == "claude":
        assert "mcp__beamagent__add" in first
        assert "mcp__beamagent__shout" not in first
        assert "mcp__beamagent__shout" in second
        assert "mcp__beamagent__add" not in second
    assert shouter.session_info()["tools"] == ["shout"]
    # And what each token reaches on the server.
    state = tools_runtime._tool_state
    assert state is not None
    for session, names in ((adder, ["add", "explode"]), (shouter, ["shout"])):
        grant_names = [
            g.tools.names() for g in state._grants.values() if g.session_id == session.session_id
        ]
        assert [list(n) for n in grant_names] == [names]
    # A call of the other session's tool is refused.
    server.script([ToolCall("", tool="mcp__beamagent__add", arguments={"a": 1, "b": 2}), Text("x")])
    messages = shouter.query("add please", timeout=WAIT)
    assert calls == []
    assert all(is_error for _text, is_error in tool_result_texts(messages))


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_tool_server_killed_mid_session_is_restarted(
    start: Any, server: FakeModelServer, tools_runtime: Runtime, backend: str
) -> None:
    session = start(backend)
    server.script([ToolCall("", tool="add", arguments={"a": 1, "b": 2}), Text("first")])
    assert tool_result_texts(session.query("add", timeout=WAIT)) == [("3", False)]
    url = session.session_info()["tool_server_url"]
    name = ("beamagent", tools_runtime.id, "tools")
    before = whereis(name)
    assert before is not None

    kill(before)

    server.script([ToolCall("", tool="add", arguments={"a": 5, "b": 5}), Text("second")])
    messages = session.query("add again", timeout=WAIT)
    assert tool_result_texts(messages) == [("10", False)]
    assert session.session_info()["tool_server_url"] == url  # same port, same token
    assert whereis(name) not in (None, before)


def test_the_tool_server_refuses_a_missing_or_wrong_token(
    start: Any, server: FakeModelServer, tools_runtime: Runtime
) -> None:
    server.script([Text("hi")])
    session = start("claude")
    session.query("hello", timeout=WAIT)
    url = session.session_info()["tool_server_url"]
    # The server's first socket is in this process's namespace, on the same port.
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}
    missing = httpx.post(url, json=body, headers=headers)
    wrong = httpx.post(url, json=body, headers={**headers, "Authorization": "Bearer nope"})
    assert missing.status_code == 401
    assert wrong.status_code == 401
    assert "add" not in missing.text + wrong.text
    # session_info never shows the token
    state = tools_runtime._tool_state
    assert state is not None
    info = json.dumps(session.session_info(), default=str)
    assert all(len(token) > 20 for token in state._grants)  # digests, not tokens, are kept
    assert "Bearer" not in info


def test_kill_the_tool_server_under_load_nothing_hangs(
    start: Any, server: FakeModelServer, tools_runtime: Runtime
) -> None:
    sessions = [start("claude") for _ in range(3)]
    rounds = 3
    server.script(
        [
            turn
            for _ in range(rounds * len(sessions))
            for turn in (ToolCall("", tool="add", arguments={"a": 1, "b": 1}), Text("done"))
        ]
    )
    outcomes: list[tuple[str, bool | None]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(session: Any) -> None:
        for _ in range(rounds):
            try:
                found = tool_result_texts(session.query("add", timeout=WAIT))
            except BaseException as exc:
                errors.append(exc)
                return
            with lock:
                outcomes.extend(found)

    threads = [threading.Thread(target=work, args=(s,)) for s in sessions]
    for thread in threads:
        thread.start()
    name = ("beamagent", tools_runtime.id, "tools")
    for seen in (2, 6, 10):  # kill it three times while the queries run
        server.wait_for_requests(seen, WAIT, lambda r: r.turn is not None)
        ref = whereis(name)
        if ref is not None:
            kill(ref)
    for thread in threads:
        thread.join(WAIT * rounds)
        assert not thread.is_alive(), "a query hung"
    assert errors == []
    assert outcomes  # each call either succeeded or gave the model an error result
    assert all(text == "2" or is_error for text, is_error in outcomes)


release = threading.Event()


@tool(timeout=0.3)
def stuck(seconds: float) -> str:
    """Waits (for longer than its timeout)."""
    release.wait(seconds)
    return "finished"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_tool_that_exceeds_its_timeout_is_reported_as_timed_out(
    start: Any, server: FakeModelServer, backend: str
) -> None:
    release.clear()
    server.script([ToolCall("", tool="stuck", arguments={"seconds": 30}), Text("gave up")])
    session = start(backend, tools=[stuck])
    try:
        messages = session.query("wait", timeout=WAIT)
    finally:
        release.set()  # the abandoned call's thread ends
    [(text, is_error)] = tool_result_texts(messages)
    assert "timed out after 0.3 s" in text
    assert "abandoned" in text
    assert is_error is True
    assert messages[-1].content == "gave up"
