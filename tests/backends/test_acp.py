"""The ACP client (``beamagent.backends.acp``): pure decisions, the handler fed bytes, and
the whole session against a small fake ACP agent (``fakes/fake_acp.py``) that misbehaves
on demand: malformed JSON, invalid JSON-RPC, unknown notifications and requests, an exit
during ``initialize``, an error answer to ``session/prompt``.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beamagent import Runtime, Session
from beamagent.backends.acp import (
    AcpHandler,
    acp_usage,
    permission_outcome,
    resolve_mode,
    result_subtype,
)
from beamagent.backends.base import Connected, HandlerOutput, SessionState
from beamagent.backends.copilot import CopilotHandler
from beamagent.backends.gemini import GeminiHandler
from beamagent.backends.permissions import Allow, Deny
from beamagent.errors import (
    Interrupted,
    InvalidOption,
    SessionError,
    TransportError,
    UnsupportedCapability,
)
from beamagent.messages import MessageType
from supervisors import Crashed
from tests._events import LogEvents
from tests.backends.conftest import receive_until, recorder, watch_incarnation

FAKE = Path(__file__).parent / "fakes" / "fake_acp.py"
WAIT = 30.0


# --- pure decisions ------------------------------------------------------------------------

COPILOT_MODES = [
    {"id": "https://agentclientprotocol.com/protocol/session-modes#agent", "name": "Agent"},
    {"id": "https://agentclientprotocol.com/protocol/session-modes#plan", "name": "Plan"},
]


def test_resolve_mode_takes_ids_short_names_and_names() -> None:
    gemini = [{"id": "default", "name": "Default"}, {"id": "yolo", "name": "YOLO"}]
    assert resolve_mode("yolo", gemini) == "yolo"
    assert resolve_mode("YOLO", gemini) == "yolo"
    assert resolve_mode("plan", COPILOT_MODES) == COPILOT_MODES[1]["id"]
    assert resolve_mode(COPILOT_MODES[0]["id"], COPILOT_MODES) == COPILOT_MODES[0]["id"]
    assert resolve_mode("Agent", COPILOT_MODES) == COPILOT_MODES[0]["id"]
    assert resolve_mode("autopilot", COPILOT_MODES) is None
    assert resolve_mode("x", [{"name": "no id"}]) is None


GEMINI_OPTIONS = [
    {"optionId": "proceed_always", "kind": "allow_always"},
    {"optionId": "proceed_once", "kind": "allow_once"},
    {"optionId": "cancel", "kind": "reject_once"},
]


def test_permission_outcome_maps_decisions_onto_offered_options() -> None:
    def chosen(options: list[dict[str, str]], decision: Any) -> Any:
        return permission_outcome(options, decision).get("optionId")

    assert chosen(GEMINI_OPTIONS, Allow()) == "proceed_once"
    assert chosen(GEMINI_OPTIONS, Allow(updated_permissions=[{"remember": True}])) == (
        "proceed_always"
    )
    assert chosen(GEMINI_OPTIONS, Deny("no")) == "cancel"
    only_always = [{"optionId": "a", "kind": "reject_always"}]
    assert chosen(only_always, Deny("no")) == "a"
    assert permission_outcome(only_always, Allow()) == {"outcome": "cancelled"}
    assert permission_outcome([], Deny()) == {"outcome": "cancelled"}
    kindless = [{"optionId": "Proceed_Once"}, {"optionId": "cancel"}]
    assert chosen(kindless, Allow()) == "Proceed_Once"
    assert chosen(kindless, Deny()) == "cancel"


KINDS = ("allow_once", "allow_always", "reject_once", "reject_always", "something_else")
IDS = ("allow", "proceed_once", "cancel", "deny", "reject_once", "x", "y")
options_strategy = st.lists(
    st.fixed_dictionaries(
        {"optionId": st.sampled_from(IDS) | st.text(max_size=8), "kind": st.sampled_from(KINDS)}
    ),
    max_size=6,
    unique_by=lambda o: o["optionId"],
)


@given(options_strategy, st.booleans(), st.booleans())
def test_permission_outcome_never_turns_a_denial_into_an_allow(
    options: list[dict[str, str]], allow: bool, remember: bool
) -> None:
    decision = Allow(updated_permissions=[1] if remember else None) if allow else Deny("no")
    outcome = permission_outcome(options, decision)
    kinds = {o["kind"] for o in options}
    if outcome["outcome"] == "cancelled":
        wanted = ("allow_once", "allow_always") if allow else ("reject_once", "reject_always")
        assert not kinds & set(wanted)
        return
    [picked] = [o for o in options if o["optionId"] == outcome["optionId"]][:1]
    if allow:
        assert not picked["kind"].startswith("reject")
        if kinds & {"allow_once", "allow_always"}:
            assert picked["kind"].startswith("allow")
    else:
        assert not picked["kind"].startswith("allow")
        if kinds & {"reject_once", "reject_always"}:
            assert picked["kind"].startswith("reject")


def test_result_subtype_and_usage() -> None:
    assert result_subtype("end_turn") == ("success", False)
    assert result_subtype("cancelled") == ("interrupted", True)
    assert result_subtype("max_tokens") == ("error_max_tokens", True)
    assert result_subtype("refusal") == ("refusal", True)
    assert result_subtype("something_new") == ("error_something_new", True)
    copilot = {"stopReason": "end_turn", "usage": {"inputTokens": 9, "cachedReadTokens": 0}}
    assert acp_usage(copilot) == ({"input_tokens": 9, "cached_read_tokens": 0}, None)
    gemini = {
        "stopReason": "end_turn",
        "_meta": {
            "quota": {
                "token_count": {"input_tokens": 10, "output_tokens": 3},
                "model_usage": [{"model": "g", "token_count": {"input_tokens": 10}}],
            }
        },
    }
    assert acp_usage(gemini) == (
        {"input_tokens": 10, "output_tokens": 3},
        {"g": {"input_tokens": 10}},
    )
    assert acp_usage({"usage": "nonsense"}) == (None, None)


# --- the handler, fed bytes ---------------------------------------------------------------------


class Agent:
    """Drives an :class:`AcpHandler` as the agent would, without a process."""

    def __init__(self, handler_cls: type[AcpHandler] = AcpHandler, **options: Any) -> None:
        options.setdefault("session_id", "s1")
        if handler_cls is AcpHandler:
            options.setdefault("command", ["agent"])
        self.handler = handler_cls(options)
        out = self.handler.on_connected(Connected({"pid": 1}))
        assert out.state is SessionState.INITIALIZING
        self.sent: list[dict[str, Any]] = [json.loads(w) for w in out.writes]

    def feed(self, *objects: Any, raw: bytes = b"") -> HandlerOutput:
        data = b"".join(json.dumps(o).encode() + b"\n" for o in objects) + raw
        out, leftover = self.handler.handle_data(data)
        assert leftover == b""
        self.sent += [json.loads(w) for w in out.writes]
        return out

    def request(self, method: str) -> dict[str, Any]:
        """The last request (with an id) we sent to ``method``."""
        return [m for m in self.sent if m.get("method") == method and "id" in m][-1]

    def answer(self, method: str, result: Any) -> HandlerOutput:
        return self.feed({"jsonrpc": "2.0", "id": self.request(method)["id"], "result": result})

    def update(self, body: dict[str, Any]) -> HandlerOutput:
        params = {"sessionId": "acp-1", "update": body}
        return self.feed({"jsonrpc": "2.0", "method": "session/update", "params": params})

    def ready(self, **session: Any) -> HandlerOutput:
        init = {
            "protocolVersion": 1,
            "agentInfo": {"name": "fake"},
            "agentCapabilities": {"loadSession": True},
        }
        self.answer("initialize", init)
        return self.answer("session/new", {"sessionId": "acp-1", **session})


def test_handshake_prompt_and_updates_become_canonical_messages() -> None:
    agent = Agent(include_partial_messages=True)
    [init] = agent.sent
    assert init["jsonrpc"] == "2.0"
    assert init["params"]["protocolVersion"] == 1
    assert init["params"]["clientCapabilities"] == {
        "fs": {"readTextFile": False, "writeTextFile": False},
        "terminal": False,
    }
    out = agent.ready(modes={"availableModes": [{"id": "default"}], "currentModeId": "default"})
    assert out.state is SessionState.READY
    assert agent.request("session/new")["params"]["mcpServers"] == []
    assert agent.handler.permission_mode == "default"

    query = agent.handler.encode_query("hello", {})
    [prompt] = [json.loads(w) for w in query.writes]
    assert prompt["params"] == {"sessionId": "acp-1", "prompt": [{"type": "text", "text": "hello"}]}
    assert [m.subtype for m in query.messages] == ["init"]
    agent.sent.append(prompt)

    messages = []
    for body in (
        {"sessionUpdate": "agent_thought_chunk", "content": {"type": "text", "text": "let me "}},
        {"sessionUpdate": "agent_thought_chunk", "content": {"type": "text", "text": "think"}},
        {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "Run"}},
        {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "ning"}},
        {
            "sessionUpdate": "tool_call",
            "toolCallId": "t1",
            "kind": "execute",
            "title": "ls",
            "status": "pending",
            "rawInput": {"command": "ls"},
        },
        {"sessionUpdate": "tool_call_update", "toolCallId": "t1", "status": "in_progress"},
        {
            "sessionUpdate": "tool_call_update",
            "toolCallId": "t1",
            "status": "completed",
            "content": [{"type": "content", "content": {"type": "text", "text": "a.txt"}}],
        },
        {"sessionUpdate": "plan", "entries": [{"content": "x", "status": "pending"}]},
        {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "Done."}},
        {"sessionUpdate": "usage_update", "used": 10, "size": 100},
    ):
        messages += agent.update(body).messages
    end = agent.answer(
        "session/prompt", {"stopReason": "end_turn", "usage": {"inputTokens": 7}}
    ).messages
    messages += end

    assert [(m.type.value, m.subtype) for m in messages] == [
        ("thinking", None),
        ("stream_event", None),
        ("stream_event", None),
        ("assistant", None),
        ("tool_use", None),
        ("tool_progress", None),
        ("tool_result", None),
        ("system", "plan"),
        ("stream_event", None),
        ("assistant", None),
        ("result", "success"),
    ]
    thinking, _, _, running, use, _, result, plan, _, done, final = messages
    assert thinking.content == "let me think"
    assert running.content == "Running"
    assert (use.tool_name, use.tool_input, use.tool_use_id) == ("execute", {"command": "ls"}, "t1")
    assert (result.tool_use_id, result.content, result.is_error) == ("t1", "a.txt", False)
    assert plan.system_info == {"entries": [{"content": "x", "status": "pending"}]}
    assert done.content == "Done."
    assert (final.content, final.is_error, final.stop_reason) == ("Done.", False, "end_turn")
    assert final.usage == {"input_tokens": 7}


def test_agent_requests_have_their_own_id_space() -> None:
    agent = Agent()
    agent.ready()
    prompt = json.loads(agent.handler.encode_query("hi", {}).writes[0])
    agent.sent.append(prompt)
    # The agent's request carries the same id as our pending prompt.
    out = agent.feed(
        {"jsonrpc": "2.0", "id": prompt["id"], "method": "terminal/create", "params": {}}
    )
    assert not out.messages
    [refusal] = [json.loads(w) for w in out.writes]
    assert refusal["id"] == prompt["id"]
    assert refusal["error"]["code"] == -32601
    # The prompt is still pending: its answer still ends the turn.
    end = agent.answer("session/prompt", {"stopReason": "end_turn"})
    assert [m.type for m in end.messages] == [MessageType.RESULT]


def test_permission_without_a_handler_rejects_and_closes_the_tool_call() -> None:
    agent = Agent()
    agent.ready()
    agent.sent.append(json.loads(agent.handler.encode_query("go", {}).writes[0]))
    ask = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "session/request_permission",
        "params": {
            "sessionId": "acp-1",
            "toolCall": {"toolCallId": "t9", "kind": "execute", "title": "rm -rf x"},
            "options": GEMINI_OPTIONS,
        },
    }
    out = agent.feed(ask)
    # Gemini asks before it announces the call: the tool_use comes with the request.
    [use] = out.messages
    assert (use.type, use.tool_use_id, use.tool_input) == (
        MessageType.TOOL_USE,
        "t9",
        {"title": "rm -rf x", "kind": "execute"},
    )
    [answer] = [json.loads(w) for w in out.writes]
    assert answer == {
        "jsonrpc": "2.0",
        "id": 0,
        "result": {"outcome": {"outcome": "selected", "optionId": "cancel"}},
    }
    end = agent.answer("session/prompt", {"stopReason": "end_turn"}).messages
    closed, result = end
    assert (closed.type, closed.tool_use_id, closed.is_error) == (
        MessageType.TOOL_RESULT,
        "t9",
        True,
    )
    assert closed.content is not None
    assert closed.content.startswith("denied: beamagent denied")
    assert result.type is MessageType.RESULT


def test_a_loaded_conversation_is_not_delivered_again() -> None:
    agent = Agent(native_session_id="old")
    agent.answer(
        "initialize",
        {"protocolVersion": 1, "agentCapabilities": {"loadSession": True}},
    )
    load = agent.request("session/load")
    assert load["params"]["sessionId"] == "old"
    assert agent.handler.resume_natively()
    replayed = agent.feed(
        {
            "jsonrpc": "2.0",
            "method": "session/update",
            "params": {
                "sessionId": "old",
                "update": {
                    "sessionUpdate": "agent_message_chunk",
                    "content": {"type": "text", "text": "from before"},
                },
            },
        }
    )
    assert not replayed.messages
    out = agent.answer("session/load", {})
    assert out.state is SessionState.READY
    assert out.info is not None
    assert out.info["native_session_id"] == "old"
    assert agent.handler.resume_natively()


def test_a_failed_load_starts_a_new_session_and_does_not_claim_native_resume() -> None:
    agent = Agent(native_session_id="gone")
    agent.answer("initialize", {"protocolVersion": 1, "agentCapabilities": {"loadSession": True}})
    failed = agent.feed(
        {
            "jsonrpc": "2.0",
            "id": agent.request("session/load")["id"],
            "error": {"code": -32002, "message": "no such session"},
        }
    )
    assert failed.state is None
    out = agent.answer("session/new", {"sessionId": "fresh"})
    assert out.state is SessionState.READY
    assert agent.handler.resume_natively() is False
    assert agent.handler.info()["native_session_id"] == "fresh"
    assert agent.handler.info()["resume_missing"] is True


def test_an_agent_that_cannot_load_gets_a_new_session() -> None:
    agent = Agent(native_session_id="old")
    assert agent.handler.resume_natively() is True  # it will try
    agent.answer("initialize", {"protocolVersion": 1, "agentCapabilities": {}})
    out = agent.answer("session/new", {"sessionId": "new"})
    assert out.state is SessionState.READY
    assert agent.handler.resume_natively() is False
    assert agent.handler.info()["resume_missing"] is True


def test_options_are_checked() -> None:
    with pytest.raises(InvalidOption, match="command"):
        AcpHandler({})
    with pytest.raises(InvalidOption, match="mcp_servers"):
        AcpHandler({"command": ["x"], "mcp_servers": ["not a mapping"]})
    with pytest.raises(InvalidOption, match="mcp_servers"):
        AcpHandler({"command": ["x"], "mcp_servers": [{"bad": object()}]})
    with pytest.raises(InvalidOption, match="auth_method"):
        AcpHandler({"command": ["x"], "auth_method": 3})
    assert "cli_path" not in AcpHandler.option_names()
    assert "command" not in CopilotHandler.option_names()


def test_gemini_never_loads_natively_and_copilot_does(tmp_path: Path) -> None:
    fake_cli = str(FAKE)
    assert "native_session_id" not in GeminiHandler.option_names()
    gemini = Agent(GeminiHandler, cli_path=fake_cli)
    assert gemini.handler.resume_natively() is False
    gemini.answer(
        "initialize",
        {
            "protocolVersion": 1,
            "agentCapabilities": {"loadSession": True},
            "authMethods": [{"id": "oauth-personal"}, {"id": "gemini-api-key"}],
        },
    )
    assert gemini.request("authenticate")["params"] == {"methodId": "gemini-api-key"}
    gemini.answer("authenticate", {})
    assert gemini.request("session/new")  # not session/load, whatever the agent advertises

    copilot = Agent(CopilotHandler, cli_path=fake_cli, native_session_id="c1", model="gpt-x")
    assert copilot.handler.resume_natively() is True
    assert copilot.handler.env["COPILOT_MODEL"] == "gpt-x"
    copilot.answer("initialize", {"protocolVersion": 1, "agentCapabilities": {"loadSession": True}})
    assert copilot.request("session/load")["params"]["sessionId"] == "c1"


def test_a_loaded_copilot_session_gets_its_model_set() -> None:
    # A loaded Copilot session keeps the model it had, whatever COPILOT_MODEL says.
    agent = Agent(CopilotHandler, cli_path=str(FAKE), native_session_id="c1", model="gpt-x")
    agent.answer("initialize", {"protocolVersion": 1, "agentCapabilities": {"loadSession": True}})
    assert agent.answer("session/load", {}).state is None
    assert agent.request("session/set_model")["params"] == {"sessionId": "c1", "modelId": "gpt-x"}
    assert agent.answer("session/set_model", {}).state is SessionState.READY

    fresh = Agent(CopilotHandler, cli_path=str(FAKE), model="gpt-x")
    fresh.answer("initialize", {"protocolVersion": 1})
    assert fresh.answer("session/new", {"sessionId": "c2"}).state is SessionState.READY


def test_the_replay_preamble_goes_before_the_first_prompt() -> None:
    agent = Agent()
    agent.ready()
    preambles = iter(["<earlier turns>\n"])
    # The context branch's BackendHandler.take_replay_prompt: once, then the prompt alone.
    agent.handler.take_replay_prompt = lambda prompt: next(preambles, "") + prompt  # type: ignore[attr-defined]

    first = json.loads(agent.handler.encode_query("hello", {}).writes[0])
    agent.sent.append(first)
    agent.answer("session/prompt", {"stopReason": "end_turn"})
    second = json.loads(agent.handler.encode_query("again", {}).writes[0])

    assert first["params"]["prompt"] == [{"type": "text", "text": "<earlier turns>\nhello"}]
    assert second["params"]["prompt"] == [{"type": "text", "text": "again"}]


def test_copilot_refuses_autopilot_unless_allowed() -> None:
    with pytest.raises(InvalidOption, match="task_complete"):
        CopilotHandler({"cli_path": str(FAKE), "permission_mode": "autopilot"})
    agent = Agent(CopilotHandler, cli_path=str(FAKE))
    agent.ready(modes={"availableModes": COPILOT_MODES, "currentModeId": COPILOT_MODES[0]["id"]})
    with pytest.raises(InvalidOption, match="allow_autopilot"):
        agent.handler.set_permission_mode("https://x/session-modes#autopilot")
    allowed = CopilotHandler(
        {"cli_path": str(FAKE), "permission_mode": "autopilot", "allow_autopilot": True}
    )
    assert allowed.permission_mode == "autopilot"


def test_modes_and_models_are_checked_against_what_the_agent_offers() -> None:
    agent = Agent()
    agent.ready()  # neither modes nor models offered
    with pytest.raises(UnsupportedCapability):
        agent.handler.set_model("m2")
    with pytest.raises(UnsupportedCapability):
        agent.handler.set_permission_mode("yolo")

    agent = Agent()
    agent.ready(
        modes={"availableModes": [{"id": "default"}, {"id": "yolo"}], "currentModeId": "default"},
        models={"availableModels": [{"modelId": "m1"}], "currentModelId": "m1"},
    )
    with pytest.raises(InvalidOption, match="offers: default, yolo"):
        agent.handler.set_permission_mode("nope")
    out = agent.handler.set_permission_mode("YOLO")
    assert out is not None
    assert json.loads(out.writes[0])["params"]["modeId"] == "yolo"
    out = agent.handler.set_model("m2")
    assert out is not None
    assert json.loads(out.writes[0])["method"] == "session/set_model"


def test_a_mode_asked_for_at_start_is_set_before_the_session_is_ready() -> None:
    agent = Agent(permission_mode="yolo", model="m2")
    agent.answer("initialize", {"protocolVersion": 1})
    out = agent.answer(
        "session/new",
        {
            "sessionId": "acp-1",
            "modes": {"availableModes": [{"id": "default"}, {"id": "yolo"}]},
            "models": {"availableModels": [{"modelId": "m1"}], "currentModelId": "m1"},
        },
    )
    assert out.state is None  # not before the agent took both
    assert agent.request("session/set_mode")["params"]["modeId"] == "yolo"
    assert agent.request("session/set_model")["params"]["modelId"] == "m2"
    assert agent.answer("session/set_mode", {}).state is None
    assert agent.answer("session/set_model", {}).state is SessionState.READY


def test_a_mode_the_agent_does_not_offer_fails_the_start() -> None:
    agent = Agent(permission_mode="yolo")
    agent.answer("initialize", {"protocolVersion": 1})
    out = agent.answer("session/new", {"sessionId": "acp-1"})
    assert out.error is not None
    assert "permission_mode='yolo'" in out.error
    agent = Agent(permission_mode="yolo")
    agent.answer("initialize", {"protocolVersion": 1})
    out = agent.answer(
        "session/new", {"sessionId": "acp-1", "modes": {"availableModes": [{"id": "default"}]}}
    )
    assert out.error is not None
    assert "it offers: default" in out.error


def test_handshake_failures_are_clear() -> None:
    agent = Agent()
    out = agent.answer("initialize", {"protocolVersion": 2})
    assert out.error is not None
    assert "protocol version 2" in out.error

    agent = Agent(auth_method="key")
    out = agent.answer("initialize", {"protocolVersion": 1, "authMethods": [{"id": "oauth"}]})
    assert out.error is not None
    assert "does not offer auth method 'key'" in out.error

    agent = Agent()
    agent.answer("initialize", {"protocolVersion": 1, "authMethods": [{"id": "oauth"}]})
    out = agent.feed(
        {
            "jsonrpc": "2.0",
            "id": agent.request("session/new")["id"],
            "error": {"code": -32000, "message": "Authentication required"},
        }
    )
    assert out.error is not None
    assert "Authentication required" in out.error
    assert "auth_method=" in out.error


def test_malformed_lines_fail_the_handler_after_what_came_before() -> None:
    agent = Agent(include_partial_messages=True)
    agent.ready()
    agent.sent.append(json.loads(agent.handler.encode_query("go", {}).writes[0]))
    chunk = {
        "jsonrpc": "2.0",
        "method": "session/update",
        "params": {
            "sessionId": "acp-1",
            "update": {
                "sessionUpdate": "agent_message_chunk",
                "content": {"type": "text", "text": "partial"},
            },
        },
    }
    out = agent.feed(chunk, raw=b"not json at all\n")
    assert out.error is not None
    assert "not a JSON object" in out.error
    assert [m.type for m in out.messages] == [MessageType.STREAM_EVENT, MessageType.ASSISTANT]

    agent = Agent()
    agent.ready()
    out = agent.feed({"jsonrpc": "2.0", "method": 12})
    assert out.error is not None
    assert "not JSON-RPC 2.0" in out.error


# --- the whole session, against the fake agent ---------------------------------------------------


@pytest.fixture
def acp_runtime() -> Iterator[Runtime]:
    with Runtime(store=":memory:", backends={"fake_acp": AcpHandler}) as rt:
        yield rt


@pytest.fixture
def fake(acp_runtime: Runtime, tmp_path: Path) -> Any:
    """``fake(mode, **options)``: a session on the fake ACP agent in ``mode``."""
    log_path = tmp_path / "fake.log"

    def start(mode: str = "ok", **options: Any) -> Session:
        env = {
            "FAKE_MODE": mode,
            "FAKE_LOG": str(log_path),
            "FAKE_STATE": str(tmp_path / "state.json"),
            "FAKE_ONCE": str(tmp_path / "faulted"),
            **options.pop("env", {}),
        }
        return acp_runtime.start_session(
            backend="fake_acp",
            command=[sys.executable, str(FAKE)],
            env=env,
            cwd=str(tmp_path),
            **options,
        )

    start.log = lambda: [json.loads(line) for line in log_path.read_text().splitlines()]  # type: ignore[attr-defined]
    return start


def test_the_fake_agent_end_to_end(fake: Any) -> None:
    session = fake("ok", include_partial_messages=True)

    first = session.query("hello", timeout=WAIT)
    second = session.query("again", timeout=WAIT)

    assert [m.type.value for m in first] == [
        "system",
        "thinking",
        "stream_event",
        "stream_event",
        "assistant",
        "system",
        "result",
    ]
    assert first[-1].content == "echo: hello (turn 1)"
    assert second[-1].content == "echo: again (turn 2)"
    assert first[-1].usage == {"input_tokens": 5, "output_tokens": 2}
    info = session.session_info()
    assert info["agent_info"] == {"name": "fake-acp", "version": "0.0.1"}
    assert info["model"] == "m1"
    assert info["permission_mode"] == "default"
    assert [m["modelId"] for m in session.supported_models()] == ["m1", "m2"]

    assert session.set_permission_mode("yolo") == "yolo"
    assert session.set_model("m2") == "m2"
    with pytest.raises(InvalidOption, match="offers: default, yolo"):
        session.set_permission_mode("plan")
    session.query("third", timeout=WAIT)
    sent = [m.get("method") for m in fake.log()]
    assert sent[:2] == ["initialize", "session/new"]  # no authenticate: none configured
    assert "session/set_mode" in sent
    assert "session/set_model" in sent


def test_malformed_json_fails_the_session_which_restarts_and_loads_its_conversation(
    fake: Any, acp_runtime: Runtime
) -> None:
    session = fake("malformed")
    incarnation = watch_incarnation(acp_runtime, session)
    ref = session.send_query("first words")

    error = receive_until(session, ref)

    assert isinstance(error, SessionError)  # "protocol", or "restarted" if read after that
    down = incarnation.wait(WAIT)
    assert isinstance(down.reason, Crashed)
    crash = down.reason.exception
    assert isinstance(crash, SessionError)
    assert crash.reason == "protocol"
    assert "not a JSON object" in str(crash)
    assert "this is not json" in str(crash)
    # History intact: the prompt and what the agent said before it broke are stored.
    stored = acp_runtime.get_session_messages(session.session_id)
    assert [m.type for m in stored] == [MessageType.USER, MessageType.SYSTEM, MessageType.ASSISTANT]
    assert stored[-1].content == "half an answer"
    # The restarted session loads the ACP session: the agent remembers the first turn.
    after = session.query("next words", timeout=WAIT)
    assert after[-1].content == "echo: next words (turn 2)"
    info = session.session_info()
    assert (info["incarnation"], info["resumed"]) == (2, "native")


def test_invalid_json_rpc_fails_the_session_with_a_clear_error(
    fake: Any, acp_runtime: Runtime
) -> None:
    session = fake("invalid_rpc")
    incarnation = watch_incarnation(acp_runtime, session)
    ref = session.send_query("go")

    assert isinstance(receive_until(session, ref), SessionError)

    crash = incarnation.wait(WAIT).reason.exception
    assert isinstance(crash, SessionError)
    assert "not JSON-RPC 2.0" in str(crash)
    assert "'method': 12" in str(crash) or '"method": 12' in str(crash)
    assert session.query("again", timeout=WAIT)[-1].content == "echo: again (turn 2)"


def test_unknown_notifications_and_requests_are_logged_and_refused(fake: Any) -> None:
    with LogEvents("beamagent.backends.acp") as events:
        session = fake("unknown")
        messages = session.query("hello", timeout=WAIT)

    assert messages[-1].content == "echo: hello (turn 1)"
    assert session.health() == "ready"
    assert events.matching("acp_notification_ignored", method="fake/telemetry")
    assert events.matching("acp_update_ignored", kind="brand_new_kind")
    assert events.matching("acp_response_unmatched", id=4242)
    assert events.matching("acp_request_refused", method="fs/read_text_file")
    prompt_id = next(m["id"] for m in fake.log() if m.get("method") == "session/prompt")
    [refusal] = [m for m in fake.log() if "error" in m]
    assert refusal["id"] == prompt_id  # the agent's id space, answered in it
    assert refusal["error"]["code"] == -32601


def test_an_agent_that_exits_during_initialize_fails_the_start(fake: Any) -> None:
    with pytest.raises(TransportError, match="exited with status 3") as caught:
        fake("exit_in_initialize")
    assert "cannot initialize" in str(caught.value)


def test_an_error_answer_to_a_prompt_is_an_error_result(fake: Any) -> None:
    session = fake("prompt_error")

    messages = session.query("boom", timeout=WAIT)

    assert [m.type.value for m in messages] == ["system", "error", "result"]
    error, result = messages[1:]
    assert "model exploded" in (error.content or "")
    assert error.error_info == {
        "code": -32603,
        "message": "model exploded",
        "data": {"why": "test"},
    }
    assert (result.subtype, result.is_error) == ("error", True)
    assert session.health() == "ready"
    assert session.query("fine", timeout=WAIT)[-1].content == "echo: fine (turn 2)"


def test_permission_answers_map_onto_the_offered_options(fake: Any) -> None:
    decisions = iter(
        [
            Allow(),
            Deny("not this one"),
            Allow(updated_permissions=["remember"]),
            Allow({"x": 1}),
            Deny("stop everything", interrupt=True),
            Allow(),
        ]
    )
    calls, handler = recorder(lambda *_: next(decisions))
    session = fake("permission", permission_handler=handler)

    outcomes = [session.query(f"turn {n}", timeout=WAIT) for n in range(6)]

    assert [m[-1].content for m in outcomes] == [
        "option proceed_once",
        "option cancel",
        "option proceed_always",
        "option cancel",  # an updated input cannot be carried: rejected, not run as it was
        "option cancel",
        "option proceed_once",  # the agent read everything before this turn
    ]
    log = fake.log()
    answers = [i for i, m in enumerate(log) if m.get("id") == 0 and "result" in m]
    assert log[answers[4] + 1]["method"] == "session/cancel"  # after Deny(interrupt=True)
    tool_name, tool_input, context = calls[0]
    assert (tool_name, tool_input) == ("execute", {"command": "touch it"})
    assert context.backend == "acp"  # the handler's name, whatever the runtime calls it
    assert context.tool_use_id == "call_1"
    results = [m for m in outcomes[1] if m.type is MessageType.TOOL_RESULT]
    assert [(r.is_error, r.content) for r in results] == [(True, "cancel")]


def test_interrupt_while_a_permission_request_is_pending(fake: Any) -> None:
    asked, release = threading.Event(), threading.Event()

    def waiting(*_: Any) -> Allow:
        asked.set()
        release.wait(WAIT)
        return Allow()

    session = fake("permission", permission_handler=waiting)
    ref = session.send_query("make it")
    assert asked.wait(WAIT)

    session.interrupt()
    receive_until(session, ref, Interrupted)
    release.set()  # the late answer is dropped: the request was answered "cancelled"
    # The next query waits until the cancelled turn has ended: the agent has read it all.
    assert session.query("again", timeout=WAIT)[-1].content == "option proceed_once"

    log = fake.log()
    answers = [m["result"]["outcome"] for m in log if m.get("id") == 0 and "result" in m]
    assert answers == [
        {"outcome": "cancelled"},
        {"outcome": "selected", "optionId": "proceed_once"},
    ]
    assert any(m.get("method") == "session/cancel" for m in log)


def test_interrupt_mid_turn_sends_session_cancel(fake: Any) -> None:
    session = fake("hang")
    ref = session.send_query("wait for ever")
    assert session.receive_message(ref, timeout=WAIT).subtype == "init"

    session.interrupt()

    receive_until(session, ref, Interrupted)
    # The next query waits until the cancelled turn has ended (its stopReason: cancelled).
    assert session.query("again", timeout=WAIT)[-1].content == "echo: again (turn 2)"
    assert any(m.get("method") == "session/cancel" for m in fake.log())
