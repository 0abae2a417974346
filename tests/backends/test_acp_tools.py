"""Python tools on ACP agents (``gemini``, ``copilot``, any ACP agent): the handler, fed bytes.

The real CLIs are in ``test_acp_tools_real.py``; here: what goes to the agent
(its argv, ``session/new``'s ``mcpServers``), how the agent's report of a call
of ours becomes canonical messages, and that the agent's permission request
for one is allowed without asking the permission handler (the tool server
asks it, once per call).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from beamagent.backends.acp import AcpHandler
from beamagent.backends.copilot import CopilotHandler
from beamagent.backends.gemini import GeminiHandler, configured_allowed_tools
from beamagent.capabilities import Capability
from beamagent.messages import MessageType
from beamagent.tools import ToolServerAccess
from tests.backends.test_acp import GEMINI_OPTIONS, Agent

FAKE = str(Path(__file__).parent / "fakes" / "fake_acp.py")
TOKEN = "tok-" + "x" * 40


def access() -> ToolServerAccess:
    return ToolServerAccess("http://127.0.0.1:9/mcp", TOKEN, tool_names=("add", "shout"))


def asked(*_: Any) -> Any:
    raise AssertionError("the permission handler must not be asked for the session's own tools")


def ready(agent: Agent, http: bool = True) -> Any:
    init = {
        "protocolVersion": 1,
        "agentInfo": {"name": "fake"},
        "agentCapabilities": {"mcpCapabilities": {"http": http, "sse": http}},
        "authMethods": [{"id": "gemini-api-key"}],
    }
    out = agent.answer("initialize", init)
    if out.error:
        return out
    if agent.handler.auth_method is not None:
        agent.answer("authenticate", {})
    return agent.answer("session/new", {"sessionId": "acp-1"})


def start_turn(agent: Agent) -> None:
    agent.sent.append(json.loads(agent.handler.encode_query("go", {}).writes[0]))


@pytest.mark.parametrize("handler_cls", [AcpHandler, GeminiHandler, CopilotHandler])
def test_the_backends_declare_and_take_tools(handler_cls: type[AcpHandler]) -> None:
    assert "tool_server" in handler_cls.option_names()
    assert Capability.IN_PROCESS_MCP in handler_cls.capabilities


def test_the_tool_server_goes_in_session_new_and_the_token_never_in_argv() -> None:
    gemini = Agent(GeminiHandler, cli_path=FAKE, tool_server=access())
    copilot = Agent(CopilotHandler, cli_path=FAKE, tool_server=access())
    ready(gemini)
    ready(copilot)

    [server] = gemini.request("session/new")["params"]["mcpServers"]
    assert server == {
        "type": "http",
        "name": "beamagent",
        "url": "http://127.0.0.1:9/mcp",
        "headers": [
            {"name": "x-beamagent-structured-content", "value": "always"},
            {"name": "Authorization", "value": f"Bearer {TOKEN}"},
        ],
    }
    [server] = copilot.request("session/new")["params"]["mcpServers"]
    assert server["headers"] == [{"name": "Authorization", "value": f"Bearer {TOKEN}"}]
    # Told not to ask before calling them (the tool server asks the permission handler).
    assert gemini.handler.argv[-2:] == ["--allowed-tools", "mcp_beamagent_add,mcp_beamagent_shout"]
    assert copilot.handler.argv[-2:] == ["--allow-tool", "beamagent"]
    for agent in (gemini, copilot):
        assert TOKEN not in " ".join(agent.handler.argv)
        assert TOKEN not in json.dumps(agent.handler.info(), default=str)
        assert TOKEN not in repr(agent.handler.options)


def test_a_loaded_session_gets_the_tool_server_too() -> None:
    agent = Agent(CopilotHandler, cli_path=FAKE, native_session_id="c1", tool_server=access())
    agent.answer(
        "initialize",
        {
            "protocolVersion": 1,
            "agentCapabilities": {"loadSession": True, "mcpCapabilities": {"http": True}},
        },
    )
    [server] = agent.request("session/load")["params"]["mcpServers"]
    assert server["name"] == "beamagent"


def test_the_users_own_mcp_servers_come_first() -> None:
    mine = {"type": "http", "name": "mine", "url": "http://x/mcp", "headers": []}
    agent = Agent(mcp_servers=[mine], tool_server=access())
    ready(agent)
    names = [s["name"] for s in agent.request("session/new")["params"]["mcpServers"]]
    assert names == ["mine", "beamagent"]


def test_an_agent_without_mcp_over_http_cannot_take_tools() -> None:
    agent = Agent(tool_server=access())
    out = ready(agent, http=False)
    assert out.error is not None
    assert "mcpCapabilities.http" in out.error
    assert "tools=[]" in out.error
    assert not [m for m in agent.sent if m.get("method") == "session/new"]


def test_a_gemini_call_of_our_tool_is_ours_allowed_and_announced() -> None:
    agent = Agent(GeminiHandler, cli_path=FAKE, tool_server=access(), permission_handler=asked)
    ready(agent)
    start_turn(agent)
    call = {
        "toolCallId": "mcp_beamagent_add__1",
        "status": "pending",
        "title": "add (beamagent MCP Server)",
        "content": [{"type": "content", "content": {"type": "text", "text": '{"a":2,"b":40}'}}],
        "kind": "other",
    }
    # Should Gemini ask anyway (it asks before it announces): allowed, nobody asked.
    ask = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "session/request_permission",
        "params": {"sessionId": "acp-1", "toolCall": call, "options": GEMINI_OPTIONS},
    }
    out = agent.feed(ask)
    assert not out.calls
    [answer] = [json.loads(w) for w in out.writes]
    assert answer["result"] == {"outcome": {"outcome": "selected", "optionId": "proceed_once"}}
    [use] = out.messages
    assert (use.type, use.tool_name, use.tool_input, use.tool_use_id) == (
        MessageType.TOOL_USE,
        "mcp__beamagent__add",
        {"a": 2, "b": 40},
        "mcp_beamagent_add__1",
    )
    # The tool server, given this call without an id, gets it.
    calls = agent.handler.tool_server.calls  # type: ignore[union-attr]
    assert asyncio.run(calls.claim("add", {"a": 2, "b": 40}, 0.0)) == "mcp_beamagent_add__1"

    done = {"sessionUpdate": "tool_call_update", "toolCallId": "mcp_beamagent_add__1"}
    text = [{"type": "content", "content": {"type": "text", "text": "42"}}]
    [result] = agent.update({**done, "status": "completed", "content": text}).messages
    assert (result.type, result.content, result.is_error) == (MessageType.TOOL_RESULT, "42", False)


def test_a_copilot_call_of_our_tool_is_ours_and_allowed_by_its_call_id() -> None:
    agent = Agent(CopilotHandler, cli_path=FAKE, tool_server=access(), permission_handler=asked)
    ready(agent)
    start_turn(agent)
    announced = {
        "sessionUpdate": "tool_call",
        "toolCallId": "call_7",
        "title": "beamagent-shout",
        "kind": "other",
        "status": "pending",
        "rawInput": {"text": "hi"},
    }
    [use] = agent.update(announced).messages
    assert (use.tool_name, use.tool_input) == ("mcp__beamagent__shout", {"text": "hi"})
    # Copilot's request names the bare tool: it is ours by the announced call id.
    ask = {
        "jsonrpc": "2.0",
        "id": 5,
        "method": "session/request_permission",
        "params": {
            "sessionId": "acp-1",
            "toolCall": {"toolCallId": "call_7", "title": "shout", "kind": "other"},
            "options": [
                {"optionId": "allow_once", "kind": "allow_once"},
                {"optionId": "reject_once", "kind": "reject_once"},
            ],
        },
    }
    out = agent.feed(ask)
    assert not out.calls
    [answer] = [json.loads(w) for w in out.writes]
    assert answer["result"]["outcome"]["optionId"] == "allow_once"


def test_other_tools_and_other_servers_are_not_ours() -> None:
    calls: list[Any] = []

    def handler(name: str, tool_input: dict[str, Any], _context: Any) -> Any:
        calls.append(name)
        from beamagent.backends.permissions import Deny

        return Deny("no")

    agent = Agent(CopilotHandler, cli_path=FAKE, tool_server=access(), permission_handler=handler)
    ready(agent)
    start_turn(agent)
    for title in ("other-add", "add", "beamagent-unknown", "bash"):
        call = {"toolCallId": title, "title": title, "kind": "execute", "status": "pending"}
        [use] = agent.update({"sessionUpdate": "tool_call", **call}).messages
        assert use.tool_name == "execute"
        ask = {
            "jsonrpc": "2.0",
            "id": title,
            "method": "session/request_permission",
            "params": {"sessionId": "acp-1", "toolCall": call, "options": GEMINI_OPTIONS},
        }
        assert agent.feed(ask).calls  # the permission handler decides these


def test_gemini_keeps_the_users_allowed_tools_beside_its_own(tmp_path: Path) -> None:
    """``--allowed-tools`` replaces Gemini's ``tools.allowed`` setting: ours carry it along."""
    home, system = tmp_path / "home", tmp_path / "etc"
    (home / ".gemini").mkdir(parents=True)
    system.mkdir()
    (home / ".gemini" / "settings.json").write_text(
        "{\n  // the user's own, with comments as Gemini allows\n"
        '  "tools": {"allowed": ["run_shell_command(git)", "mcp_beamagent_add", 7]}\n}\n'
    )
    env = {"HOME": str(home), "GEMINI_CLI_SYSTEM_SETTINGS_PATH": str(system / "settings.json")}
    gemini = Agent(GeminiHandler, cli_path=FAKE, tool_server=access(), env=env)
    assert gemini.handler.argv[-2:] == [
        "--allowed-tools",
        "run_shell_command(git),mcp_beamagent_add,mcp_beamagent_shout",
    ]
    # The system settings override the user's (Gemini replaces arrays by scope).
    (system / "settings.json").write_text('{"tools": {"allowed": ["read_file"]}}')
    assert configured_allowed_tools(env) == ["read_file"]
    # A malformed file is as if absent; GEMINI_CLI_HOME wins over HOME.
    (system / "settings.json").write_text("{not json")
    assert configured_allowed_tools({**env, "GEMINI_CLI_HOME": str(tmp_path)}) == []
    # A "//" inside a string is not a comment.
    (home / ".gemini" / "settings.json").write_text(
        '{"tools": {"allowed": ["web_fetch(https://example.org)"]}} // trailing'
    )
    assert configured_allowed_tools(env) == ["web_fetch(https://example.org)"]
