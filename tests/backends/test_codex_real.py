"""The ``codex`` backend against the real, pinned ``codex app-server`` and FakeModelServer.

Everything goes through the public Session API. The CLI runs in a
loopback-only network namespace where the machine allows it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from beamagent import Runtime
from beamagent.backends.codex import CodexHandler
from beamagent.backends.permissions import Allow, Deny, PermissionContext
from beamagent.errors import Interrupted, TransportError, UnknownControlMethod
from beamagent.messages import MessageType
from beamagent.testing import (
    ErrorStatus,
    FakeModelServer,
    LoopbackNamespace,
    Stall,
    Text,
    ToolCall,
    codex_env,
)
from supervisors import Crashed
from tests._events import LogEvents, until_hibernating
from tests.backends.conftest import (
    group_members,
    of_type,
    receive_until,
    recorder,
    session_starter,
    watch_incarnation,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # `clis` may install first
WAIT = 30.0


@pytest.fixture
def start(
    clis: dict[str, Path],
    runtime: Runtime,
    server: FakeModelServer,
    sandbox: LoopbackNamespace | None,
    tmp_path: Path,
    work: Path,
) -> Any:
    """Start a codex session against the fake server: ``start(**options)``."""
    return session_starter(runtime, "codex", codex_env(tmp_path / "home", server), sandbox, work)


def outputs(server: FakeModelServer) -> list[str]:
    """The tool outputs the last Responses request carried back to the model."""
    return [
        str(item.get("output"))
        for item in server.model_requests()[-1].json["input"]
        if item.get("type") == "function_call_output"
    ]


def test_plain_query(start: Any, server: FakeModelServer, work: Path) -> None:
    session = start()

    messages = session.query("ECHO:hello codex", timeout=WAIT)

    assert [m.type for m in messages] == [
        MessageType.SYSTEM,
        MessageType.ASSISTANT,
        MessageType.RESULT,
    ]
    init, reply, result = messages
    assert init.subtype == "init"
    assert init.system_info is not None
    assert init.system_info["cwd"] == str(work)
    assert reply.content == "hello codex"
    assert result.content == "hello codex"
    assert (result.subtype, result.is_error) == ("success", False)
    assert result.usage is not None
    assert result.usage["input_tokens"] > 0
    assert result.usage["output_tokens"] > 0
    info = session.session_info()
    assert info["native_session_id"] == info["thread_id"] == init.thread_id
    assert info["model"] == "gpt-5.5"
    [request] = server.model_requests()
    assert request.path == "/v1/responses"
    assert "ECHO:hello codex" in request.text


def test_streaming_order_with_deltas(start: Any) -> None:
    session = start(include_partial_messages=True)

    messages = list(session.stream("ECHO:streamed words", timeout=WAIT))

    kinds = [m.type for m in messages]
    assert kinds[0] is MessageType.SYSTEM
    assert kinds[-2:] == [MessageType.ASSISTANT, MessageType.RESULT]
    deltas = of_type(messages, "stream_event")
    assert deltas
    assert kinds.index(MessageType.STREAM_EVENT) < kinds.index(MessageType.ASSISTANT)
    assert "".join(d.content or "" for d in deltas) == "streamed words"


def test_messages_stream_while_an_approval_is_pending(
    start: Any, server: FakeModelServer, work: Path
) -> None:
    target = work / "streamed"
    server.script([ToolCall(command=f"touch {target}"), Text("made it")])
    release = threading.Event()
    threads: list[str] = []

    def slow_handler(_tool: str, _input: dict[str, Any], _context: Any) -> Allow:
        threads.append(threading.current_thread().name)
        assert release.wait(WAIT)
        return Allow()

    session = start(permission_handler=slow_handler)
    ref = session.send_query("make the file")
    init = session.receive_message(ref, timeout=WAIT)
    use = session.receive_message(ref, timeout=WAIT)
    # Delivered while the approval blocks the turn: streamed, not batched.
    assert session.health() == "active_query"
    release.set()
    rest = []
    while not rest or rest[-1].type is not MessageType.RESULT:
        rest.append(session.receive_message(ref, timeout=WAIT))

    assert init.type is MessageType.SYSTEM
    assert use.type is MessageType.TOOL_USE
    assert use.tool_name == "command_execution"
    assert [m.type for m in rest] == [
        MessageType.TOOL_RESULT,
        MessageType.ASSISTANT,
        MessageType.RESULT,
    ]
    assert rest[0].tool_use_id == use.tool_use_id
    assert target.exists()
    assert threads[0].startswith("beamagent-callback-")


def test_two_turns_on_one_live_process(start: Any, server: FakeModelServer) -> None:
    session = start()
    pid = session.session_info()["pid"]

    assert session.query("ECHO:first turn", timeout=WAIT)[-1].content == "first turn"
    assert session.query("ECHO:second turn", timeout=WAIT)[-1].content == "second turn"

    assert session.session_info()["pid"] == pid
    one, two = server.model_requests()
    assert "ECHO:second turn" not in one.text
    assert "ECHO:first turn" in two.text
    assert "ECHO:second turn" in two.text


def test_approval_allowed_runs_the_command(start: Any, server: FakeModelServer, work: Path) -> None:
    target = work / "allowed"
    server.script([ToolCall(command=f"touch {target}"), Text("created")])
    calls, handler = recorder(lambda *_: Allow())
    session = start(permission_handler=handler)

    messages = session.query("create the file", timeout=WAIT)

    assert target.exists()
    [(tool_name, tool_input, context)] = calls
    assert tool_name == "command_execution"
    assert f"touch {target}" in tool_input["command"]
    assert tool_input["cwd"]
    assert isinstance(context, PermissionContext)
    assert (context.backend, context.session_id) == ("codex", session.session_id)
    [use] = of_type(messages, "tool_use")
    [result] = of_type(messages, "tool_result")
    assert context.tool_use_id == use.tool_use_id == result.tool_use_id
    assert result.is_error is False
    assert messages[-1].content == "created"


def test_approval_denied_has_no_side_effect_and_the_model_sees_it(
    start: Any, server: FakeModelServer, work: Path
) -> None:
    target = work / "denied"
    server.script([ToolCall(command=f"touch {target}"), Text("understood")])
    calls, handler = recorder(lambda *_: Deny("no files today"))
    session = start(permission_handler=handler)

    messages = session.query("create the file", timeout=WAIT)

    assert not target.exists()
    assert len(calls) == 1
    [result] = of_type(messages, "tool_result")
    assert result.is_error is True
    assert messages[-1].content == "understood"
    [output] = outputs(server)
    assert "rejected" in output.lower()
    # Codex cannot pass the message on; it is ours only, and said to be.
    assert "no files today" not in json.dumps(server.model_requests()[-1].json)
    assert "no files today" in (result.content or "")
    assert "not sent to the model" in (result.content or "")
    answers = session.session_info()["permission_answers"]
    assert answers == {"deny_message": False, "updated_input": False}


def test_allow_with_an_updated_input_is_declined_not_run_as_asked(
    start: Any, server: FakeModelServer, work: Path
) -> None:
    asked, rewritten = work / "asked", work / "rewritten"
    server.script([ToolCall(command=f"touch {asked}"), Text("ok")])
    session = start(
        permission_handler=lambda _n, i, _c: Allow(
            updated_input={**i, "command": f"touch {rewritten}"}
        )
    )

    messages = session.query("create the file", timeout=WAIT)

    # Codex cannot run the rewritten command: it runs nothing rather than the original.
    assert not asked.exists()
    assert not rewritten.exists()
    [result] = of_type(messages, "tool_result")
    assert result.is_error is True
    assert "updated_input" in (result.content or "")
    assert "rejected" in outputs(server)[0].lower()


def test_allow_with_the_same_input_runs_it(start: Any, server: FakeModelServer, work: Path) -> None:
    target = work / "same"
    server.script([ToolCall(command=f"touch {target}"), Text("ok")])
    session = start(permission_handler=lambda _n, i, _c: Allow(updated_input=dict(i)))

    session.query("create the file", timeout=WAIT)

    assert target.exists()


def test_without_a_permission_handler_commands_are_declined(
    start: Any, server: FakeModelServer, work: Path
) -> None:
    target = work / "default-denied"
    server.script([ToolCall(command=f"touch {target}"), Text("declined")])
    session = start()

    session.query("create the file", timeout=WAIT)

    assert not target.exists()
    assert "rejected" in outputs(server)[0].lower()


def test_permission_default_allow(start: Any, server: FakeModelServer, work: Path) -> None:
    target = work / "default-allowed"
    server.script([ToolCall(command=f"touch {target}"), Text("done")])
    session = start(permission_default="allow")

    session.query("create the file", timeout=WAIT)

    assert target.exists()


def test_interrupt_mid_turn(start: Any, server: FakeModelServer) -> None:
    server.script([Stall(WAIT)])
    session = start()
    ref = session.send_query("this one hangs")
    server.wait_for_requests(1, WAIT, predicate=lambda r: r.turn is not None)

    session.interrupt()

    receive_until(session, ref, Interrupted)
    after = session.query("ECHO:after the interrupt", timeout=WAIT)
    assert after[-1].content == "after the interrupt"


def test_killed_cli_restarts_and_resumes_the_thread(
    start: Any, runtime: Runtime, server: FakeModelServer
) -> None:
    session = start()
    session.query("ECHO:remember the word pineapple", timeout=WAIT)
    thread = session.session_info()["thread_id"]
    server.script([Stall(WAIT)])
    ref = session.send_query("this turn dies")
    server.wait_for_requests(2, WAIT, predicate=lambda r: r.turn is not None)
    incarnation = watch_incarnation(runtime, session)

    # The npm launcher runs the native binary as its child: kill the CLI's whole group.
    os.killpg(session.session_info()["pid"], signal.SIGKILL)

    receive_until(session, ref)
    incarnation.wait(WAIT)
    messages = session.query("ECHO:back again", timeout=WAIT)
    assert messages[-1].content == "back again"
    info = session.session_info()
    assert info["incarnation"] == 2
    assert info["resumed"] == "native"
    assert info["thread_id"] == thread
    last = server.model_requests()[-1]
    assert "remember the word pineapple" in last.text
    assert "back again" in last.text


def test_a_restart_resumes_the_thread_codex_last_reported(
    start: Any, runtime: Runtime, server: FakeModelServer
) -> None:
    # Nothing to resume under this id: codex starts a new thread, whose id the session keeps.
    session = start(native_session_id=str(uuid.uuid4()))
    session.query("ECHO:remember the word pineapple", timeout=WAIT)
    info = session.session_info()
    assert info["resume_missing"] is True
    thread = info["thread_id"]
    incarnation = watch_incarnation(runtime, session)

    os.killpg(info["pid"], signal.SIGKILL)
    incarnation.wait(WAIT)
    messages = session.query("ECHO:back again", timeout=WAIT)

    assert messages[-1].content == "back again"
    info = session.session_info()
    assert info["incarnation"] == 2
    # The thread that holds the conversation, not the id first asked for.
    assert (info["thread_id"], info["resumed"]) == (thread, "native")
    assert "remember the word pineapple" in server.model_requests()[-1].text


def test_model_error_status_gives_an_error_message_and_a_usable_session(
    start: Any, server: FakeModelServer
) -> None:
    server.script([ErrorStatus(500)])
    session = start()

    messages = session.query("this fails", timeout=WAIT)

    [error] = of_type(messages, "error")
    assert error.content
    result = messages[-1]
    assert result.type is MessageType.RESULT
    assert (result.subtype, result.is_error) == ("error", True)
    assert session.health() == "ready"
    assert session.query("ECHO:fine now", timeout=WAIT)[-1].content == "fine now"


def test_model_and_approval_policy_changes_apply_to_the_next_turn(
    start: Any, server: FakeModelServer, work: Path
) -> None:
    session = start()
    pid = session.session_info()["pid"]

    session.set_model("gpt-6-sol")
    session.set_permission_mode("never")
    target = work / "never-asked"
    server.script([ToolCall(command=f"echo {target}"), Text("ok")])
    messages = session.query("run it", timeout=WAIT)

    assert server.model_requests()[-1].json["model"] == "gpt-6-sol"
    [init] = of_type(messages, "system")
    assert init.system_info is not None
    assert init.system_info["permission_mode"] == "never"
    assert session.session_info()["pid"] == pid


def test_send_control_uses_the_app_server_methods(start: Any) -> None:
    session = start()

    models = session.send_control("model/list", timeout=WAIT)
    assert any(m["id"] == "gpt-5.5" for m in models["data"])
    with pytest.raises(UnknownControlMethod):
        session.send_control("no/such/method", timeout=WAIT)


def test_availability(clis: dict[str, Path]) -> None:
    available, why = CodexHandler.availability()
    assert available, why


def test_thread_start_options_reach_codex(start: Any, server: FakeModelServer) -> None:
    session = start(developer_instructions="Answer like a pirate.", sandbox="read-only")

    session.query("ECHO:ahoy", timeout=WAIT)

    assert "Answer like a pirate." in json.dumps(server.model_requests()[-1].json)


def test_interrupt_while_an_approval_is_pending(
    start: Any, server: FakeModelServer, work: Path
) -> None:
    target = work / "never-made"
    server.script([ToolCall(command=f"touch {target}")])
    asked, release = threading.Event(), threading.Event()

    def waiting_handler(*_: Any) -> Allow:
        asked.set()
        assert release.wait(WAIT)
        return Allow()

    session = start(permission_handler=waiting_handler)
    ref = session.send_query("make the file")
    assert asked.wait(WAIT)

    session.interrupt()
    receive_until(session, ref, Interrupted)
    release.set()  # the late answer is dropped: codex withdrew the request

    assert session.query("ECHO:still usable", timeout=WAIT)[-1].content == "still usable"
    assert not target.exists()


def test_killing_only_the_npm_launcher_ends_the_session_and_its_whole_group(
    start: Any, runtime: Runtime, server: FakeModelServer
) -> None:
    session = start()
    session.query("ECHO:remember the word mango", timeout=WAIT)
    launcher = session.session_info()["pid"]
    assert [pid for pid in group_members(launcher) if pid != launcher], "no native binary"
    server.script([Stall(WAIT)])
    ref = session.send_query("this turn loses its launcher")
    server.wait_for_requests(2, WAIT, predicate=lambda r: r.turn is not None)
    incarnation = watch_incarnation(runtime, session)

    # The orphaned native binary keeps stdout open: only watching the launcher notices.
    os.kill(launcher, signal.SIGKILL)

    error = receive_until(session, ref)
    assert isinstance(error, TransportError)
    assert error.reason == ("cli_exit", -signal.SIGKILL)
    assert f"exited with status {-signal.SIGKILL}" in str(error)
    down = incarnation.wait(WAIT)
    assert isinstance(down.reason, Crashed)
    assert group_members(launcher) == []
    messages = session.query("ECHO:back after the launcher died", timeout=WAIT)
    assert messages[-1].content == "back after the launcher died"
    info = session.session_info()
    assert info["incarnation"] == 2
    assert info["pid"] != launcher
    assert "remember the word mango" in server.model_requests()[-1].text


def test_an_idle_session_hibernates_and_resumes_its_thread(
    start: Any, server: FakeModelServer
) -> None:
    with LogEvents() as events:
        session = start(idle_timeout=1.0)
        session.query("ECHO:remember the word pineapple", timeout=WAIT)
        before = session.session_info()
        launcher, thread = before["pid"], before["thread_id"]

        until_hibernating(events, session, WAIT)

        # The npm launcher and the native binary it started are both gone.
        assert group_members(launcher) == []
        info = session.session_info()
        assert info["state"] == "hibernating"
        assert "pid" not in info
        assert info["thread_id"] == thread
        session.set_model("gpt-6-sol")  # kept for the woken CLI, which is not started
        assert session.health() == "hibernating"
        messages = session.query("ECHO:back again", timeout=WAIT)

    assert messages[-1].content == "back again"
    info = session.session_info()
    assert (info["state"], info["incarnation"], info["hibernations"]) == ("ready", 1, 1)
    assert info["resumed"] == "native"  # thread/resume
    assert info["thread_id"] == thread
    assert info["pid"] != launcher
    last = server.model_requests()[-1]
    assert "remember the word pineapple" in last.text
    assert "back again" in last.text
    assert last.json["model"] == "gpt-6-sol"


# --- context across resume and forks --------------------------------------------------------


def test_stop_then_resume_continues_the_thread(
    start: Any, runtime: Runtime, server: FakeModelServer
) -> None:
    session = start()
    session.query("ECHO:remember the word pineapple", timeout=WAIT)
    thread = session.session_info()["thread_id"]
    session.stop()

    resumed = start(resume=session.session_id)
    messages = resumed.query("ECHO:which word?", timeout=WAIT)

    assert messages[-1].content == "which word?"
    info = resumed.session_info()
    assert (info["resumed"], info["thread_id"]) == ("native", thread)
    last = server.model_requests()[-1].text
    assert "remember the word pineapple" in last
    assert "beamagent-replay" not in last


def test_a_fork_forks_the_thread(start: Any, runtime: Runtime, server: FakeModelServer) -> None:
    session = start()
    session.query("ECHO:remember the word pineapple", timeout=WAIT)
    parent_thread = session.session_info()["thread_id"]
    fork = runtime.fork_session(session)

    forked = start(resume=fork.session_id)
    messages = forked.query("ECHO:in the fork", timeout=WAIT)

    assert messages[-1].content == "in the fork"
    info = forked.session_info()
    assert (info["resumed"], info["forked_from"]) == ("native", parent_thread)
    assert info["thread_id"] not in (None, parent_thread)
    assert runtime.get_session(fork.session_id).native_session_id == info["thread_id"]
    last = server.model_requests()[-1].text
    assert "remember the word pineapple" in last
    assert "beamagent-replay" not in last
    session.query("ECHO:parent again", timeout=WAIT)  # the parent's thread did not get it
    assert "in the fork" not in server.model_requests()[-1].text


def test_a_fork_whose_parent_went_on_replays_up_to_its_fork_point(
    start: Any, runtime: Runtime, server: FakeModelServer
) -> None:
    session = start()
    session.query("ECHO:remember the word pineapple", timeout=WAIT)
    fork = runtime.fork_session(session)
    session.query("ECHO:only the parent knows mango", timeout=WAIT)

    forked = start(resume=fork.session_id)
    messages = forked.query("ECHO:in the fork", timeout=WAIT)

    assert messages[-1].content == "in the fork"  # the prompt is an input item of its own
    assert forked.session_info()["resumed"] == "replay"
    last = server.model_requests()[-1].text
    assert "beamagent-replay" in last
    assert "remember the word pineapple" in last
    assert "mango" not in last


def test_a_fork_of_a_thread_codex_cannot_fork_replays(
    start: Any, runtime: Runtime, server: FakeModelServer
) -> None:
    session = start()
    session.query("ECHO:remember the word pineapple", timeout=WAIT)
    session.stop()
    # The parent's thread is gone (another machine, a cleaned home): thread/fork fails.
    runtime.store_write("update_session", session.session_id, native_session_id=str(uuid.uuid4()))
    fork = runtime.fork_session(session)

    forked = start(resume=fork.session_id)
    forked.query("ECHO:in the fork", timeout=WAIT)

    info = forked.session_info()
    assert (info["fork_missing"], info["forked_from"], info["resumed"]) == (True, None, "replay")
    last = server.model_requests()[-1].text
    assert "beamagent-replay" in last
    assert "remember the word pineapple" in last
