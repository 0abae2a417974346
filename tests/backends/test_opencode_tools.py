"""Python tools on ``opencode``: the handler alone (the real CLI: ``test_opencode_tools_real.py``).

OpenCode gets the tool server through ``OPENCODE_CONFIG_CONTENT`` (merged with
the caller's own), the token through the environment; its tool parts of our
tools become ``mcp__beamagent__<tool>`` calls announced to the tool server;
a permission request for them is allowed without asking the handler.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from beamagent.backends.opencode import OpenCodeHandler
from beamagent.capabilities import Capability
from beamagent.errors import InvalidOption, UnsupportedCapability
from beamagent.messages import MessageType
from beamagent.tools import ToolServerAccess
from tests.backends.test_opencode import Driven, assistant, user

FAKE = str(Path(__file__).parent / "fakes" / "fake_opencode.py")
TOKEN = "tok-" + "y" * 40


def access() -> ToolServerAccess:
    return ToolServerAccess("http://127.0.0.1:9/mcp", TOKEN, tool_names=("add",))


def asked(*_: Any) -> Any:
    raise AssertionError("the permission handler must not be asked for the session's own tools")


def config_of(handler: OpenCodeHandler) -> dict[str, Any]:
    return dict(json.loads(handler.env["OPENCODE_CONFIG_CONTENT"]))


def test_the_tool_server_is_configured_through_the_environment_only() -> None:
    assert "tool_server" in OpenCodeHandler.option_names()
    assert Capability.IN_PROCESS_MCP in OpenCodeHandler.capabilities
    handler = OpenCodeHandler({"cli_path": FAKE, "tool_server": access()})

    assert config_of(handler) == {
        "mcp": {
            "beamagent": {
                "type": "remote",
                "url": "http://127.0.0.1:9/mcp",
                "headers": {"Authorization": "Bearer {env:BEAMAGENT_TOOLS_TOKEN}"},
                "enabled": True,
                "oauth": False,
            }
        },
        "permission": {"beamagent_*": "allow"},
    }
    assert handler.env["BEAMAGENT_TOOLS_TOKEN"] == TOKEN
    assert handler.argv is not None
    assert TOKEN not in " ".join(handler.argv)
    assert TOKEN not in handler.env["OPENCODE_CONFIG_CONTENT"]


def test_the_callers_own_config_content_is_kept_and_our_rule_comes_last() -> None:
    own = {
        "mcp": {"mine": {"type": "local", "command": ["x"]}},
        "permission": {"beamagent_*": "deny", "*": "ask"},
        "model": "fake/other",
    }
    env = {"OPENCODE_CONFIG_CONTENT": json.dumps(own)}
    handler = OpenCodeHandler({"cli_path": FAKE, "tool_server": access(), "env": env})

    config = config_of(handler)
    assert config["model"] == "fake/other"
    assert list(config["mcp"]) == ["mine", "beamagent"]
    assert list(config["permission"].items()) == [("*", "ask"), ("beamagent_*", "allow")]
    one_answer = {"OPENCODE_CONFIG_CONTENT": json.dumps({"permission": "ask"})}
    handler = OpenCodeHandler({"cli_path": FAKE, "tool_server": access(), "env": one_answer})
    assert config_of(handler)["permission"] == {"*": "ask", "beamagent_*": "allow"}
    with pytest.raises(InvalidOption, match="OPENCODE_CONFIG_CONTENT"):
        OpenCodeHandler(
            {"cli_path": FAKE, "tool_server": access(), "env": {"OPENCODE_CONFIG_CONTENT": "["}}
        )


def test_an_attached_server_cannot_take_tools() -> None:
    with pytest.raises(UnsupportedCapability, match="server of the session's own"):
        OpenCodeHandler({"base_url": "http://127.0.0.1:1", "tool_server": access()})


def tool_part(status: str, **state: Any) -> tuple[str, dict[str, Any]]:
    part = {
        "id": "prt_t",
        "messageID": "msg_2",
        "type": "tool",
        "tool": "beamagent_add",
        "callID": "call_9",
        "state": {"status": status, **state},
    }
    return ("message.part.updated", {"part": part})


def test_a_call_of_our_tool_is_ours_announced_and_allowed() -> None:
    driven = Driven(base_url=None, cli_path=FAKE, tool_server=access(), permission_handler=asked)
    driven.answer(driven.query(), 204)
    driven.events(user("msg_1"), assistant("msg_2", "msg_1"))

    running = driven.events(tool_part("running", input={"a": 2, "b": 40}))
    calls = driven.handler.tool_server.calls  # type: ignore[union-attr]
    assert asyncio.run(calls.claim("add", {"a": 2, "b": 40}, 0.0)) == "call_9"
    ask = {
        "id": "per_1",
        "permission": "beamagent_add",
        "patterns": ["*"],
        "tool": {"messageID": "msg_2", "callID": "call_9"},
    }
    allowed = driven.events(("permission.asked", ask))
    done = driven.events(tool_part("completed", input={"a": 2, "b": 40}, output="42"))

    [use] = running.messages
    assert (use.type, use.tool_name, use.tool_input, use.tool_use_id) == (
        MessageType.TOOL_USE,
        "mcp__beamagent__add",
        {"a": 2, "b": 40},
        "call_9",
    )
    assert not allowed.calls
    [reply] = [r for r in driven.requests(allowed) if "/permission/" in r["path"]]
    assert (reply["path"], reply["json"]) == ("/permission/per_1/reply", {"reply": "once"})
    [result] = done.messages
    assert (result.type, result.content, result.is_error) == (MessageType.TOOL_RESULT, "42", False)
