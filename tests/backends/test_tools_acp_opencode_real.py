"""Python tools on the REAL ``gemini``, ``copilot`` and ``opencode`` CLIs, over the tool server.

As ``test_tools_real.py`` does for Claude Code and Codex: the fake model is
scripted to call the tool, the CLI calls our MCP server, the function runs
here, and the model's next request must carry the result. One session per
backend goes through a call, a denied call, a raising tool and a killed tool
server (the CLIs take seconds to start); a second one, with another tool
set, shows the two never see each other's tools. The CLIs run in a
loopback-only namespace where the machine allows it; the tool server listens
there too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from beamagent import Runtime, Session
from beamagent.backends.permissions import Allow, Deny
from beamagent.messages import Message, MessageType
from beamagent.testing import (
    FakeModelServer,
    LoopbackNamespace,
    Protocol,
    RecordedRequest,
    Text,
    ToolCall,
    copilot_env,
    ensure_installed,
    gemini_env,
    is_side_request,
    opencode_env,
)
from beamagent.tools import ToolServerAccess, ToolServerConfig
from supervisors import kill, whereis
from tests._events import LogEvents
from tests.backends._sample_tools import _clear_calls, add, calls, explode, shout  # noqa: F401
from tests.backends.conftest import group_members, skip_without_clis

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
WAIT = 60.0
BACKENDS = ["gemini", "copilot", "opencode"]
# How each CLI names our server's tools to its model.
OFFERED = {"gemini": "mcp_beamagent_{}", "copilot": "beamagent-{}", "opencode": "beamagent_{}"}


@pytest.fixture(scope="module")
def clis() -> dict[str, Path]:
    import shutil

    if shutil.which("node") is None or shutil.which("npm") is None:
        skip_without_clis("node and npm are needed to install and run the agent CLIs")
    return ensure_installed(("gemini", "copilot", "opencode"))


@pytest.fixture(scope="module")
def copilot_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Copilot unpacks ~235 MB at its first start: once for the module."""
    return tmp_path_factory.mktemp("copilot-cache")


class Tokens:
    """The bearer tokens the runtime handed out (to look for them where they must not be)."""

    def __init__(self, rt: Runtime) -> None:
        state = rt._tool_state
        assert state is not None
        self.seen: list[str] = []
        grant = state.grant

        def recording(*args: Any, **kwargs: Any) -> ToolServerAccess:
            access = grant(*args, **kwargs)
            self.seen.append(access.token)
            return access

        state.grant = recording  # type: ignore[method-assign]


@pytest.fixture
def tools_runtime(sandbox: LoopbackNamespace | None) -> Iterator[tuple[Runtime, Tokens]]:
    """A runtime whose sessions get ``add`` and ``explode``; its tool server is in the sandbox."""
    config = ToolServerConfig(netns=[sandbox.path] if sandbox else [])
    with Runtime(store=":memory:", tools=[add, explode], tool_server=config) as rt:
        rt.start_tool_server()
        yield rt, Tokens(rt)


@pytest.fixture
def start(
    clis: dict[str, Path],
    copilot_cache: Path,
    tools_runtime: tuple[Runtime, Tokens],
    server: FakeModelServer,
    sandbox: LoopbackNamespace | None,
    tmp_path: Path,
) -> Any:
    """``start(backend, **options)``: a real CLI session against the fake model; its home."""
    count = iter(range(100))
    rt, _tokens = tools_runtime

    def start_session(backend: str, **options: Any) -> tuple[Session, Path]:
        home = tmp_path / f"home-{next(count)}"
        work = home / "work"
        work.mkdir(parents=True)
        if backend == "gemini":
            env = gemini_env(home, server)
        elif backend == "copilot":
            env = copilot_env(home, server, cache_dir=copilot_cache)
        else:
            env = opencode_env(home, server)
        prefix: list[str] = []
        if sandbox is not None:
            # opencode serve is a server this process reaches: it runs behind a forwarder.
            prefix = sandbox.server_prefix() if backend == "opencode" else sandbox.prefix()
        session = rt.start_session(
            backend=backend,
            env=env,
            inherit_env=False,
            command_prefix=prefix,
            cwd=str(work),
            **options,
        )
        return session, home

    return start_session


def turns(server: FakeModelServer) -> list[RecordedRequest]:
    """The model requests of the conversations (no router or title side requests)."""
    return [r for r in server.model_requests() if not is_side_request(r.protocol, r.json)]


def tool_outputs(request: RecordedRequest) -> list[str]:
    """The tool results a model request carries back to the model, as text."""
    body = request.json if isinstance(request.json, dict) else {}
    if request.protocol is Protocol.GEMINI:
        return [
            json.dumps(part["functionResponse"])
            for content in body.get("contents", [])
            for part in content.get("parts", [])
            if "functionResponse" in part
        ]
    return [
        m["content"] if isinstance(m.get("content"), str) else json.dumps(m.get("content"))
        for m in body.get("messages", [])
        if m.get("role") == "tool"
    ]


def of(messages: list[Message], kind: MessageType) -> list[Message]:
    return [m for m in messages if m.type is kind]


def our_uses(messages: list[Message], name: str = "add") -> list[Message]:
    return [
        m for m in of(messages, MessageType.TOOL_USE) if m.tool_name == f"mcp__beamagent__{name}"
    ]


def the_call(messages: list[Message], name: str = "add") -> tuple[Message, Message]:
    """The query's one call of our tool ``name``: its tool_use and its tool_result."""
    [use] = our_uses(messages, name)
    [result] = [
        m for m in of(messages, MessageType.TOOL_RESULT) if m.tool_use_id == use.tool_use_id
    ]
    return use, result


@pytest.mark.parametrize("backend", BACKENDS)
def test_calls_denials_errors_and_a_killed_tool_server_on_one_live_session(
    start: Any, server: FakeModelServer, tools_runtime: tuple[Runtime, Tokens], backend: str
) -> None:
    rt, tokens = tools_runtime
    decisions: list[Any] = []

    def permission(name: str, tool_input: dict[str, Any], context: Any) -> Any:
        decisions.append((name, tool_input, context.tool_use_id))
        if tool_input.get("a") == 666:
            return Deny("adding is forbidden today")
        return Allow()

    with LogEvents("beamagent") as logged:
        session, home = start(backend, permission_handler=permission)

        # 1. The model calls the tool; the function runs here with the call's context.
        server.script([ToolCall("", tool="add", arguments={"a": 40000, "b": 2345}), Text("42345!")])
        messages = session.query("add 40000 and 2345", timeout=WAIT)

        [ctx] = calls
        use, result = the_call(messages)
        assert (ctx.session_id, ctx.backend, ctx.tool_name) == (session.session_id, backend, "add")
        assert ctx.tool_use_id == use.tool_use_id  # the CLI's own call id
        assert use.tool_input == {"a": 40000, "b": 2345}
        assert (result.content, result.is_error) == ("42345", False)
        assert result.duration_ms is not None  # the tool server's timing
        assert decisions == [("add", {"a": 40000, "b": 2345}, use.tool_use_id)]  # asked once
        assert "42345" in tool_outputs(turns(server)[-1])[-1]  # the model got the result
        assert messages[-1].type is MessageType.RESULT
        assert messages[-1].content == "42345!"
        stored = rt.get_session_messages(session.session_id)
        assert len(our_uses(stored)) == 1
        assert len([m for m in of(stored, MessageType.TOOL_RESULT) if m.content == "42345"]) == 1
        info = session.session_info()
        assert info["tools"] == ["add", "explode"]
        assert info["tool_server_url"] == rt.tool_server_url

        # 2. A denied call does not run; the model is told why.
        server.script([ToolCall("", tool="add", arguments={"a": 666, "b": 1}), Text("ok then")])
        denied = session.query("add 666 and 1", timeout=WAIT)
        assert len(calls) == 1
        _use, refusal = the_call(denied)
        assert refusal.is_error is True
        assert "adding is forbidden today" in (refusal.content or "")
        assert "adding is forbidden today" in tool_outputs(turns(server)[-1])[-1]
        assert denied[-1].content == "ok then"

        # 3. A raising tool gives the model an error result; the session lives on.
        server.script(
            [ToolCall("", tool="explode", arguments={"reason": "on purpose"}), Text("oh")]
        )
        failed = session.query("explode", timeout=WAIT)
        _use, error = the_call(failed, "explode")
        assert error.is_error is True
        assert "RuntimeError: exploded: on purpose" in (error.content or "")
        assert "exploded: on purpose" in tool_outputs(turns(server)[-1])[-1]
        assert failed[-1].content == "oh"

        # 4. The tool server killed: restarted on the same port, the next call works.
        name = ("beamagent", rt.id, "tools")
        before = whereis(name)
        assert before is not None
        kill(before)
        server.script([ToolCall("", tool="add", arguments={"a": 5, "b": 5}), Text("ten")])
        again = session.query("add again", timeout=WAIT)
        assert the_call(again)[1].content == "10"
        assert whereis(name) not in (None, before)

        # The token: never on a command line, in our logs or in the CLI's files; in its
        # environment only where it is read from there (OpenCode; ACP: over stdin).
        [token] = tokens.seen
        environments = []
        for pid in group_members(session.session_info()["pid"]):
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                assert token.encode() not in fh.read()
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environments.append(fh.read())
        assert any(token.encode() in env for env in environments) is (backend == "opencode")
        assert token not in json.dumps(session.session_info(), default=str)
    assert logged.matching("tool_called", session_id=session.session_id)
    assert token not in json.dumps(list(logged._events), default=str)  # every event
    for path in home.rglob("*"):
        if path.is_file() and "node_modules" not in path.parts:
            assert token.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_sessions_never_see_each_others_tools(
    start: Any, server: FakeModelServer, backend: str
) -> None:
    offered = OFFERED[backend]
    server.script([Text("one")])
    adder, _ = start(backend)
    adder.query("hello", timeout=WAIT)
    first = turns(server)[-1].text
    server.script([Text("two")])
    shouter, _ = start(backend, tools=[shout])
    shouter.query("hello", timeout=WAIT)
    second = turns(server)[-1].text

    # What each model is offered.
    assert offered.format("add") in first
    assert offered.format("shout") not in first
    assert offered.format("shout") in second
    assert offered.format("add") not in second
    assert shouter.session_info()["tools"] == ["shout"]

    # The model of one session calls the other's tool (by the name the CLI would give it):
    # it is not offered, and the tool server would not run it for this session's token.
    server.script(
        [ToolCall("", tool=offered.format("add"), arguments={"a": 1, "b": 2}), Text("no")]
    )
    messages = shouter.query("add please", timeout=WAIT)
    assert calls == []
    # The CLI itself refuses it, and says so to the model.
    [refusal] = tool_outputs(turns(server)[-1])
    assert offered.format("add") in refusal
    assert any(why in refusal for why in ("not found", "does not exist", "unavailable"))
    assert messages[-1].type is MessageType.RESULT


def test_gemini_with_tools_keeps_the_users_allowed_tools(
    clis: dict[str, Path],
    tools_runtime: tuple[Runtime, Tokens],
    server: FakeModelServer,
    sandbox: LoopbackNamespace | None,
    tmp_path: Path,
) -> None:
    """The user's ``tools.allowed`` still applies with our ``--allowed-tools`` on the argv."""
    rt, _tokens = tools_runtime
    home = tmp_path / "home"
    work = home / "work"
    work.mkdir(parents=True)
    env = gemini_env(home, server)
    settings_file = home / ".gemini" / "settings.json"
    settings = json.loads(settings_file.read_text())
    settings_file.write_text(
        json.dumps({**settings, "tools": {"allowed": ["run_shell_command(touch)"]}})
    )
    asked: list[str] = []

    def refuse(tool_name: str, _input: Any, _context: Any) -> Deny:
        asked.append(tool_name)
        return Deny("the user's settings allow it: it must not be asked")

    session = rt.start_session(
        backend="gemini",
        env=env,
        inherit_env=False,
        command_prefix=sandbox.prefix() if sandbox is not None else [],
        cwd=str(work),
        permission_handler=refuse,
    )
    made = work / "made"
    server.script([ToolCall(command=f"touch {made}"), Text("done")])
    messages = session.query("make it", timeout=WAIT)
    assert asked == []
    assert made.exists()
    assert messages[-1].type is MessageType.RESULT
