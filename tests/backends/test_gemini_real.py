"""The ``gemini`` backend against the real, pinned ``gemini --acp`` and FakeModelServer.

Everything goes through the public Session API; the CLI runs in a
loopback-only network namespace where the machine allows it. Gemini CLI
first asks a router model (a structured-output side request) before each
turn: :func:`turns` leaves those out.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from beamagent import Runtime
from beamagent.backends.gemini import GeminiHandler
from beamagent.backends.permissions import Allow, Deny
from beamagent.errors import Interrupted, InvalidOption, SessionError
from beamagent.messages import Message, MessageType
from beamagent.testing import (
    FakeModelServer,
    LoopbackNamespace,
    RecordedRequest,
    Stall,
    Text,
    ToolCall,
    ensure_installed,
    gemini_env,
    is_side_request,
)
from tests.backends.conftest import (
    of_type,
    receive_until,
    recorder,
    session_starter,
    skip_without_clis,
    watch_incarnation,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # the CLIs may install first
WAIT = 30.0


@pytest.fixture(scope="session")
def gemini_cli() -> Path:
    """The pinned ``gemini`` executable (installed if needed)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        skip_without_clis("node and npm are needed to install and run the agent CLIs")
    return ensure_installed(("gemini",))["gemini"]


@pytest.fixture
def start(
    gemini_cli: Path,
    runtime: Runtime,
    server: FakeModelServer,
    sandbox: LoopbackNamespace | None,
    tmp_path: Path,
    work: Path,
) -> Any:
    """Start a gemini session against the fake server: ``start(**options)``."""
    return session_starter(runtime, "gemini", gemini_env(tmp_path / "home", server), sandbox, work)


def turns(server: FakeModelServer) -> list[RecordedRequest]:
    """The model requests of the conversation itself (no router side requests)."""
    return [r for r in server.model_requests() if not is_side_request(r.protocol, r.json)]


def conversation(messages: list[Message]) -> list[MessageType]:
    """The message types of a query, without the command list Gemini sends when it likes."""
    return [m.type for m in messages if not (m.type is MessageType.SYSTEM and m.subtype != "init")]


def test_plain_query(start: Any, server: FakeModelServer, work: Path) -> None:
    session = start()

    messages = session.query("ECHO:hello gemini", timeout=WAIT)

    assert conversation(messages) == [MessageType.SYSTEM, MessageType.ASSISTANT, MessageType.RESULT]
    init = messages[0]
    assert init.subtype == "init"
    assert init.system_info is not None
    assert init.system_info["cwd"] == str(work)
    result = messages[-1]
    assert result.content == "hello gemini"
    assert (result.subtype, result.is_error, result.stop_reason) == ("success", False, "end_turn")
    assert result.usage is not None
    assert result.usage["input_tokens"] > 0
    info = session.session_info()
    assert info["agent_info"]["name"] == "gemini-cli"
    assert info["agent_info"]["version"] == "0.61.0"
    assert info["native_session_id"] == init.system_info["native_session_id"]
    assert info["resumed"] is None  # a new session: nothing to resume
    assert (info["model"], info["permission_mode"]) == ("auto", "default")
    assert "yolo" in [m["id"] for m in info["supported_modes"]]
    [request] = turns(server)
    assert ":streamGenerateContent" in request.path
    assert "ECHO:hello gemini" in request.text


def test_streaming_and_two_turns_on_one_live_process(start: Any, server: FakeModelServer) -> None:
    session = start(include_partial_messages=True)
    pid = session.session_info()["pid"]

    streamed = list(session.stream("ECHO:streamed words", timeout=WAIT))
    second = session.query("ECHO:second turn", timeout=WAIT)

    deltas = of_type(streamed, "stream_event")
    assert "".join(d.content or "" for d in deltas) == "streamed words"
    kinds = [m.type for m in streamed]
    assert kinds.index(MessageType.STREAM_EVENT) < kinds.index(MessageType.ASSISTANT)
    assert kinds[-1] is MessageType.RESULT
    assert second[-1].content == "second turn"
    assert session.session_info()["pid"] == pid
    one, two = turns(server)
    assert "ECHO:second turn" not in one.text
    assert "ECHO:streamed words" in two.text  # the second turn carries the first
    assert "ECHO:second turn" in two.text


def test_tool_calls_allowed_and_denied(start: Any, server: FakeModelServer, work: Path) -> None:
    allowed, denied = work / "allowed", work / "denied"

    def decide(_tool: str, tool_input: dict[str, Any], _context: Any) -> Any:
        return Allow() if tool_input["title"] == f"touch {allowed}" else Deny("not that one")

    calls, handler = recorder(decide)
    session = start(permission_handler=handler)
    server.script([ToolCall(command=f"touch {allowed}"), Text("created it")])
    made = session.query("create the file", timeout=WAIT)
    server.script([ToolCall(command=f"touch {denied}"), Text("understood")])
    refused = session.query("create the other file", timeout=WAIT)

    assert allowed.exists()
    assert not denied.exists()
    (tool_name, tool_input, context), _ = calls
    assert tool_name == "execute"
    assert tool_input["title"] == f"touch {allowed}"
    assert (context.backend, context.session_id) == ("gemini", session.session_id)
    [use] = of_type(made, "tool_use")
    [result] = of_type(made, "tool_result")
    assert context.tool_use_id == use.tool_use_id == result.tool_use_id
    assert result.is_error is False
    assert made[-1].content == "created it"
    [refusal] = of_type(refused, "tool_result")
    assert refusal.is_error is True
    assert refusal.content == "denied: not that one"
    assert refused[-1].type is MessageType.RESULT


def test_interrupt_mid_turn_and_during_a_permission_request(
    start: Any, server: FakeModelServer, work: Path
) -> None:
    asked, release = threading.Event(), threading.Event()

    def waiting(*_: Any) -> Allow:
        asked.set()
        release.wait(WAIT)
        return Allow()

    session = start(permission_handler=waiting)
    server.script([Stall(WAIT)])
    ref = session.send_query("this one hangs")
    server.wait_for_requests(1, WAIT, predicate=lambda r: isinstance(r.turn, Stall))
    session.interrupt()
    receive_until(session, ref, Interrupted)

    target = work / "never-made"
    server.script([ToolCall(command=f"touch {target}")])
    ref = session.send_query("make the file")
    assert asked.wait(WAIT)
    session.interrupt()
    receive_until(session, ref, Interrupted)
    release.set()  # answered "cancelled" already: the late Allow is dropped

    after = session.query("ECHO:still usable", timeout=WAIT)
    assert after[-1].content == "still usable"
    assert not target.exists()


def test_killed_cli_restarts_and_the_conversation_continues_by_replay(
    start: Any, runtime: Runtime, server: FakeModelServer
) -> None:
    session = start()
    session.query("ECHO:remember the word pineapple", timeout=WAIT)
    server.script([Stall(WAIT)])
    ref = session.send_query("this turn dies")
    server.wait_for_requests(1, WAIT, predicate=lambda r: isinstance(r.turn, Stall))
    incarnation = watch_incarnation(runtime, session)

    os.killpg(session.session_info()["pid"], signal.SIGKILL)

    assert isinstance(receive_until(session, ref), SessionError)
    incarnation.wait(WAIT)
    server.script([Text("back")])
    assert session.query("back again", timeout=WAIT)[-1].content == "back"
    info = session.session_info()
    assert info["incarnation"] == 2
    assert info["resumed"] != "native"  # Gemini cannot load it: replayed
    last = turns(server)[-1]
    assert "remember the word pineapple" in last.text
    assert "back again" in last.text


def test_stop_then_resume_continues_by_replay(start: Any, server: FakeModelServer) -> None:
    session = start()
    session.query("ECHO:remember the word mango", timeout=WAIT)
    session.stop()

    resumed = start(resume=session.session_id)
    server.script([Text("still here")])
    assert resumed.query("what was the word?", timeout=WAIT)[-1].content == "still here"

    last = turns(server)[-1]
    assert "remember the word mango" in last.text
    assert "what was the word?" in last.text


def test_a_fork_continues_by_replay_up_to_its_fork_point(
    start: Any, runtime: Runtime, server: FakeModelServer
) -> None:
    session = start()
    session.query("ECHO:remember the word pineapple", timeout=WAIT)
    fork = runtime.fork_session(session)
    session.query("ECHO:only the parent knows mango", timeout=WAIT)

    forked = start(resume=fork.session_id)
    server.script([Text("forked")])
    assert forked.query("in the fork", timeout=WAIT)[-1].content == "forked"

    assert forked.session_info()["resumed"] == "replay"
    last = turns(server)[-1].text
    assert "remember the word pineapple" in last
    assert "in the fork" in last
    assert "mango" not in last  # the parent's turn after the fork point


def test_model_and_mode_at_start_and_live(start: Any, server: FakeModelServer, work: Path) -> None:
    calls, handler = recorder(lambda *_: Deny("asked"))
    session = start(model="gemini-2.5-pro", permission_mode="yolo", permission_handler=handler)
    assert session.session_info()["mode_id"] == "yolo"
    quiet = work / "yolo"
    server.script([ToolCall(command=f"touch {quiet}"), Text("done")])
    session.query("make it", timeout=WAIT)
    assert quiet.exists()  # yolo: nobody was asked
    assert calls == []
    assert "models/gemini-2.5-pro:" in turns(server)[-1].path

    assert session.set_model("gemini-3-flash-preview") == "gemini-3-flash-preview"
    assert session.set_permission_mode("default") == "default"
    asked = work / "asked"
    server.script([ToolCall(command=f"touch {asked}"), Text("fine")])
    session.query("make another", timeout=WAIT)

    assert not asked.exists()
    assert len(calls) == 1
    assert "models/gemini-3-flash-preview:" in turns(server)[-1].path
    info = session.session_info()
    assert (info["model"], info["permission_mode"], info["mode_id"]) == (
        "gemini-3-flash-preview",
        "default",
        "default",
    )
    with pytest.raises(InvalidOption, match="autoEdit"):
        session.set_permission_mode("no-such-mode")


def test_availability_and_not_routed_unless_enabled(runtime: Runtime, gemini_cli: Path) -> None:
    available, why = GeminiHandler.availability()
    assert available, why
    assert runtime.backend_availability()["gemini"][0] is False
    assert "not enabled" in runtime.backend_availability()["gemini"][1]
    with pytest.raises(InvalidOption, match="native_session_id"):
        runtime.start_session(backend="gemini", native_session_id="x")
