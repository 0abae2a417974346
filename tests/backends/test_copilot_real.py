"""The ``copilot`` backend against the real, pinned ``copilot --acp`` and FakeModelServer.

Everything goes through the public Session API; the CLI runs in a
loopback-only network namespace where the machine allows it. Copilot puts a
``<current_datetime>`` block before the user's prompt, so the fake model's
``ECHO:`` never fires: these tests script the model's turns instead.
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
from beamagent.backends.copilot import CopilotHandler
from beamagent.backends.permissions import Allow, Deny
from beamagent.errors import Interrupted, InvalidOption, SessionError, UnknownControlMethod
from beamagent.messages import Message, MessageType
from beamagent.testing import (
    FakeModelServer,
    LoopbackNamespace,
    Stall,
    Text,
    ToolCall,
    copilot_env,
    ensure_installed,
)
from tests._events import LogEvents, until_hibernating
from tests.backends.conftest import (
    group_members,
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
def copilot_cli() -> Path:
    """The pinned ``copilot`` executable (installed if needed)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        skip_without_clis("node and npm are needed to install and run the agent CLIs")
    return ensure_installed(("copilot",))["copilot"]


@pytest.fixture(scope="session")
def copilot_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the whole run: Copilot unpacks ~235 MB there at its first start."""
    return tmp_path_factory.mktemp("copilot-cache")


@pytest.fixture
def start(
    copilot_cli: Path,
    copilot_cache: Path,
    runtime: Runtime,
    server: FakeModelServer,
    sandbox: LoopbackNamespace | None,
    tmp_path: Path,
    work: Path,
) -> Any:
    """Start a copilot session against the fake server: ``start(**options)``."""
    env = copilot_env(tmp_path / "home", server, cache_dir=copilot_cache)
    return session_starter(runtime, "copilot", env, sandbox, work)


def conversation(messages: list[Message]) -> list[MessageType]:
    """The message types of a query, without the command list Copilot sends at each turn."""
    return [m.type for m in messages if not (m.type is MessageType.SYSTEM and m.subtype != "init")]


def test_plain_query(start: Any, server: FakeModelServer, work: Path) -> None:
    session = start()
    server.script([Text("hello copilot")])

    messages = session.query("say hello", timeout=WAIT)

    assert conversation(messages) == [MessageType.SYSTEM, MessageType.ASSISTANT, MessageType.RESULT]
    init, result = messages[0], messages[-1]
    assert init.subtype == "init"
    assert init.system_info is not None
    assert init.system_info["cwd"] == str(work)
    assert result.content == "hello copilot"
    assert (result.subtype, result.is_error, result.stop_reason) == ("success", False, "end_turn")
    assert result.usage is not None
    assert result.usage["input_tokens"] > 0
    assert result.usage["output_tokens"] > 0
    info = session.session_info()
    assert info["agent_info"]["name"] == "Copilot"
    assert info["agent_info"]["version"] == "1.0.102"
    assert info["model"] == "gpt-5.4"  # from COPILOT_MODEL
    assert info["native_session_id"] == init.system_info["native_session_id"]
    assert info["resumed"] is None  # a new session: nothing to resume
    assert info["permission_mode"].endswith("#agent")
    [request] = server.model_requests()
    assert request.path == "/v1/chat/completions"
    assert request.json["model"] == "gpt-5.4"
    assert "say hello" in request.text


def test_streaming_and_two_turns_on_one_live_process(start: Any, server: FakeModelServer) -> None:
    session = start(include_partial_messages=True)
    pid = session.session_info()["pid"]
    server.script([Text("streamed words"), Text("second answer")])

    streamed = list(session.stream("first question", timeout=WAIT))
    second = session.query("second question", timeout=WAIT)

    deltas = of_type(streamed, "stream_event")
    assert "".join(d.content or "" for d in deltas) == "streamed words"
    kinds = [m.type for m in streamed]
    assert kinds.index(MessageType.STREAM_EVENT) < kinds.index(MessageType.ASSISTANT)
    assert second[-1].content == "second answer"
    assert session.session_info()["pid"] == pid
    one, two = server.model_requests()
    assert "second question" not in one.text
    assert "first question" in two.text  # the second turn carries the first
    assert "streamed words" in two.text
    assert "second question" in two.text


def test_tool_calls_allowed_and_denied(start: Any, server: FakeModelServer, work: Path) -> None:
    allowed, denied = work / "allowed", work / "denied"

    def decide(_tool: str, tool_input: dict[str, Any], _context: Any) -> Any:
        return Allow() if tool_input["command"] == f"touch {allowed}" else Deny("not that one")

    calls, handler = recorder(decide)
    session = start(permission_handler=handler)
    server.script([ToolCall(command=f"touch {allowed}"), Text("created it")])
    made = session.query("create the file", timeout=WAIT)
    server.script([ToolCall(command=f"touch {denied}"), Text("never asked for")])
    refused = session.query("create the other file", timeout=WAIT)

    assert allowed.exists()
    assert not denied.exists()
    (tool_name, tool_input, context), _ = calls
    assert (tool_name, tool_input["command"]) == ("execute", f"touch {allowed}")
    assert (context.backend, context.session_id) == ("copilot", session.session_id)
    [use] = of_type(made, "tool_use")
    [result] = of_type(made, "tool_result")
    assert context.tool_use_id == use.tool_use_id == result.tool_use_id
    assert result.is_error is False
    assert made[-1].content == "created it"
    [refusal] = of_type(refused, "tool_result")
    assert refusal.is_error is True
    assert "rejected" in (refusal.content or "")
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

    server.script([Text("still usable")])
    assert session.query("are you there?", timeout=WAIT)[-1].content == "still usable"
    assert not target.exists()


def test_killed_cli_restarts_and_loads_its_session(
    start: Any, runtime: Runtime, server: FakeModelServer
) -> None:
    session = start()
    server.script([Text("pineapple noted"), Stall(WAIT)])
    session.query("remember the word pineapple", timeout=WAIT)
    native = session.session_info()["native_session_id"]
    ref = session.send_query("this turn dies")
    server.wait_for_requests(2, WAIT, predicate=lambda r: r.turn is not None)
    incarnation = watch_incarnation(runtime, session)
    launcher = session.session_info()["pid"]

    # The npm launcher runs the native binary as its child: kill the whole group.
    os.killpg(launcher, signal.SIGKILL)

    assert isinstance(receive_until(session, ref), SessionError)
    incarnation.wait(WAIT)
    assert group_members(launcher) == []
    server.script([Text("back")])
    assert session.query("back again", timeout=WAIT)[-1].content == "back"
    info = session.session_info()
    assert (info["incarnation"], info["resumed"], info["native_session_id"]) == (
        2,
        "native",
        native,
    )
    last = server.model_requests()[-1]
    assert "remember the word pineapple" in last.text
    assert "pineapple noted" in last.text
    assert "back again" in last.text


def test_stop_then_resume_loads_the_session(start: Any, server: FakeModelServer) -> None:
    session = start()
    server.script([Text("mango noted")])
    session.query("remember the word mango", timeout=WAIT)
    native = session.session_info()["native_session_id"]
    session.stop()

    resumed = start(resume=session.session_id)
    server.script([Text("it was mango")])
    assert resumed.query("what was the word?", timeout=WAIT)[-1].content == "it was mango"

    info = resumed.session_info()
    assert (info["resumed"], info["native_session_id"]) == ("native", native)
    last = server.model_requests()[-1]
    assert "remember the word mango" in last.text
    assert "what was the word?" in last.text


def test_a_fork_continues_by_replay_up_to_its_fork_point(
    start: Any, runtime: Runtime, server: FakeModelServer
) -> None:
    # Copilot has no session/fork: a fork starts a new ACP session and replays.
    session = start()
    server.script([Text("pineapple noted")])
    session.query("remember the word pineapple", timeout=WAIT)
    fork = runtime.fork_session(session)
    server.script([Text("mango noted")])
    session.query("only the parent knows mango", timeout=WAIT)

    forked = start(resume=fork.session_id)
    server.script([Text("forked")])
    assert forked.query("in the fork", timeout=WAIT)[-1].content == "forked"

    info = forked.session_info()
    assert info["resumed"] == "replay"
    assert info["native_session_id"] != session.session_info()["native_session_id"]
    last = server.model_requests()[-1].text
    assert "remember the word pineapple" in last
    assert "in the fork" in last
    assert "mango" not in last  # the parent's turn after the fork point


def test_an_idle_session_hibernates_and_loads_its_session(
    start: Any, server: FakeModelServer
) -> None:
    with LogEvents() as events:
        session = start(idle_timeout=1.0)
        server.script([Text("kiwi noted"), Text("awake")])
        session.query("remember the word kiwi", timeout=WAIT)
        launcher = session.session_info()["pid"]

        until_hibernating(events, session, WAIT)

        assert group_members(launcher) == []
        session.set_model("gpt-6-sol")  # kept for the woken CLI: COPILOT_MODEL
        messages = session.query("wake up", timeout=WAIT)

    assert messages[-1].content == "awake"
    info = session.session_info()
    assert (info["hibernations"], info["resumed"]) == (1, "native")
    last = server.model_requests()[-1]
    assert "remember the word kiwi" in last.text
    assert last.json["model"] == "gpt-6-sol"


def test_model_and_modes_live(start: Any, server: FakeModelServer) -> None:
    session = start(model="gpt-5.5-mini", permission_mode="plan")
    assert session.session_info()["mode_id"].endswith("#plan")
    server.script([Text("one"), Text("two")])
    session.query("first", timeout=WAIT)
    assert server.model_requests()[-1].json["model"] == "gpt-5.5-mini"  # COPILOT_MODEL

    assert session.set_model("gpt-6-sol") == "gpt-6-sol"  # session/set_model, not advertised
    assert session.set_permission_mode("agent") == "agent"
    session.query("second", timeout=WAIT)

    assert server.model_requests()[-1].json["model"] == "gpt-6-sol"
    info = session.session_info()
    assert info["model"] == "gpt-6-sol"
    assert info["mode_id"].endswith("#agent")
    with pytest.raises(InvalidOption, match="task_complete"):
        session.set_permission_mode("autopilot")
    with pytest.raises(InvalidOption, match="plan"):
        session.set_permission_mode("no-such-mode")
    # Any other ACP method goes through send_control, with the session id filled in.
    answer = session.send_control(
        "session/set_config_option", {"configId": "allow_all", "value": "off"}, timeout=WAIT
    )
    assert "allow_all" in [option["id"] for option in answer["configOptions"]]
    with pytest.raises(UnknownControlMethod):
        session.send_control("no/such/method", timeout=WAIT)


def test_availability_and_not_routed_unless_enabled(runtime: Runtime, copilot_cli: Path) -> None:
    available, why = CopilotHandler.availability()
    assert available, why
    assert runtime.backend_availability()["copilot"][0] is False
    assert "not enabled" in runtime.backend_availability()["copilot"][1]
    with pytest.raises(InvalidOption, match="allow_autopilot"):
        runtime.start_session(backend="copilot", permission_mode="autopilot")
