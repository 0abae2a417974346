"""The ``claude`` backend against the real, pinned Claude Code CLI and FakeModelServer.

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
from beamagent.backends.claude import ClaudeHandler, HookMatcher
from beamagent.backends.permissions import Allow, Deny, PermissionContext
from beamagent.errors import Interrupted, InvalidOption, UnknownControlMethod
from beamagent.messages import ContentBlockType, MessageType
from beamagent.testing import (
    ErrorStatus,
    FakeModelServer,
    LoopbackNamespace,
    Stall,
    Text,
    ToolCall,
    claude_env,
)
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
    """Start a claude session against the fake server: ``start(**options)``."""
    return session_starter(runtime, "claude", claude_env(tmp_path / "home", server), sandbox, work)


def tool_uses(messages: list[Any]) -> list[Any]:
    return [
        block
        for m in of_type(messages, "assistant")
        for block in m.content_blocks
        if block.type is ContentBlockType.TOOL_USE
    ]


def tool_results(messages: list[Any]) -> list[Any]:
    return [
        block
        for m in of_type(messages, "user")
        for block in m.content_blocks
        if block.type is ContentBlockType.TOOL_RESULT
    ]


def test_plain_query(start: Any, server: FakeModelServer, work: Path) -> None:
    session = start()

    messages = session.query("ECHO:hello there", timeout=WAIT)

    assert [m.type for m in messages] == [
        MessageType.SYSTEM,
        MessageType.ASSISTANT,
        MessageType.RESULT,
    ]
    init, reply, result = messages
    assert init.subtype == "init"
    assert init.system_info is not None
    assert init.system_info["cwd"] == str(work)
    assert reply.content == "hello there"
    assert result.content == "hello there"
    assert result.is_error is False
    assert result.usage is not None
    assert result.usage["input_tokens"] > 0
    assert all(m.session_id == session.session_id for m in messages)
    info = session.session_info()
    assert info["native_session_id"] == init.raw["session_id"]  # type: ignore[index]
    assert info["state"] == "ready"
    # The initialize handshake fed the metadata accessors.
    assert session.account_info()["apiKeySource"] == "ANTHROPIC_API_KEY"
    assert any(m.get("value") == "sonnet" for m in session.supported_models())
    assert any(c.get("name") == "debug" for c in session.supported_commands())
    assert "general-purpose" in json.dumps(session.supported_agents())
    [request] = server.model_requests()
    assert "hello there" in request.text


def test_streaming_order_and_permission_callback_off_the_session_thread(
    start: Any, server: FakeModelServer, work: Path
) -> None:
    target = work / "streamed"
    server.script([ToolCall(command=f"touch {target}"), Text("made it")])
    release = threading.Event()
    callback_threads: list[str] = []

    def slow_handler(tool_name: str, tool_input: dict[str, Any], context: Any) -> Allow:
        callback_threads.append(threading.current_thread().name)
        # The turn cannot finish before this returns: what the test receives
        # meanwhile was streamed, not batched at the end.
        assert release.wait(WAIT)
        return Allow()

    session = start(permission_handler=slow_handler)
    ref = session.send_query("make the file")
    first = session.receive_message(ref, timeout=WAIT)
    second = session.receive_message(ref, timeout=WAIT)
    # The session still answers calls while the callback blocks.
    assert session.health() == "active_query"
    release.set()
    rest = []
    while not rest or rest[-1].type is not MessageType.RESULT:
        rest.append(session.receive_message(ref, timeout=WAIT))

    assert first.type is MessageType.SYSTEM
    assert first.subtype == "init"
    assert second.type is MessageType.ASSISTANT
    assert [b.name for b in tool_uses([second])] == ["Bash"]
    assert [m.type for m in rest] == [
        MessageType.USER,
        MessageType.ASSISTANT,
        MessageType.RESULT,
    ]
    assert rest[-1].content == "made it"
    assert target.exists()
    assert callback_threads
    assert callback_threads[0].startswith("beamagent-callback-")
    stamps = [m.timestamp or 0 for m in [first, second, *rest]]
    assert stamps == sorted(stamps)


def test_two_turns_on_one_live_process(start: Any, server: FakeModelServer) -> None:
    session = start()
    pid = session.session_info()["pid"]

    first = session.query("ECHO:first turn", timeout=WAIT)
    second = session.query("ECHO:second turn", timeout=WAIT)

    assert first[-1].content == "first turn"
    assert second[-1].content == "second turn"
    assert session.session_info()["pid"] == pid
    one, two = server.model_requests()
    assert "ECHO:second turn" not in one.text
    # The second request carries the first turn: one conversation, one process.
    assert "ECHO:first turn" in two.text
    assert "ECHO:second turn" in two.text


def test_tool_call_allowed_runs_the_command(
    start: Any, server: FakeModelServer, work: Path
) -> None:
    target = work / "allowed-file"
    server.script([ToolCall(command=f"touch {target}"), Text("created")])
    calls, handler = recorder(lambda *_: Allow())
    session = start(permission_handler=handler)

    messages = session.query("create the file", timeout=WAIT)

    assert target.exists()
    [(tool_name, tool_input, context)] = calls
    assert tool_name == "Bash"
    assert tool_input["command"] == f"touch {target}"
    assert isinstance(context, PermissionContext)
    assert context.backend == "claude"
    assert context.session_id == session.session_id
    [use] = tool_uses(messages)
    assert context.tool_use_id == use.id
    [result_block] = tool_results(messages)
    assert result_block.is_error is False
    assert messages[-1].content == "created"


def test_tool_call_denied_has_no_side_effect_and_the_model_sees_why(
    start: Any, server: FakeModelServer, work: Path
) -> None:
    target = work / "denied-file"
    server.script([ToolCall(command=f"touch {target}"), Text("ok, I will not")])
    calls, handler = recorder(lambda *_: Deny("touching files is not allowed in this test"))
    session = start(permission_handler=handler)

    messages = session.query("create the file", timeout=WAIT)

    assert not target.exists()
    assert len(calls) == 1
    [result_block] = tool_results(messages)
    assert result_block.is_error is True
    assert "touching files is not allowed in this test" in json.dumps(result_block.content)
    result = messages[-1]
    assert result.content == "ok, I will not"
    assert result.permission_denials
    assert result.permission_denials[0]["tool_name"] == "Bash"
    # The model's next request carries the denial as the tool's result.
    second = server.model_requests()[-1]
    assert "touching files is not allowed in this test" in second.text


def test_without_a_permission_handler_tools_are_denied_with_a_clear_message(
    start: Any, server: FakeModelServer, work: Path
) -> None:
    target = work / "default-denied"
    server.script([ToolCall(command=f"touch {target}"), Text("denied")])
    session = start()

    messages = session.query("create the file", timeout=WAIT)

    assert not target.exists()
    [result_block] = tool_results(messages)
    assert "no permission_handler" in json.dumps(result_block.content)
    assert "permission_default='allow'" in server.model_requests()[-1].text


def test_permission_default_allow(start: Any, server: FakeModelServer, work: Path) -> None:
    target = work / "default-allowed"
    server.script([ToolCall(command=f"touch {target}"), Text("done")])
    session = start(permission_default="allow")

    session.query("create the file", timeout=WAIT)

    assert target.exists()


def test_a_failing_permission_handler_denies(
    start: Any, server: FakeModelServer, work: Path
) -> None:
    target = work / "handler-failed"
    server.script([ToolCall(command=f"touch {target}"), Text("denied")])

    def broken(*_: Any) -> Allow:
        raise RuntimeError("handler exploded")

    session = start(permission_handler=broken)
    messages = session.query("create the file", timeout=WAIT)

    assert not target.exists()
    assert "handler exploded" in json.dumps(tool_results(messages)[0].content)
    assert session.health() == "ready"


def test_allow_with_updated_input_runs_the_rewritten_command(
    start: Any, server: FakeModelServer, work: Path
) -> None:
    asked, rewritten = work / "asked", work / "rewritten"
    server.script([ToolCall(command=f"touch {asked}"), Text("done")])
    session = start(
        permission_handler=lambda _n, i, _c: Allow(
            updated_input={**i, "command": f"touch {rewritten}"}
        )
    )

    session.query("create the file", timeout=WAIT)

    assert rewritten.exists()
    assert not asked.exists()


def test_hook_callbacks_run_and_can_block(start: Any, server: FakeModelServer, work: Path) -> None:
    target = work / "hooked"
    server.script([ToolCall(command=f"touch {target}"), Text("blocked")])
    seen: list[tuple[dict[str, Any], str | None]] = []

    def pre_tool_use(hook_input: dict[str, Any], tool_use_id: str | None, _ctx: Any) -> Any:
        seen.append((hook_input, tool_use_id))
        return {
            "hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": "deny",
                "permissionDecisionReason": "blocked by the test hook",
            }
        }

    session = start(
        permission_default="allow", hooks={"PreToolUse": [HookMatcher("Bash", [pre_tool_use])]}
    )
    messages = session.query("create the file", timeout=WAIT)

    assert not target.exists()
    [(hook_input, tool_use_id)] = seen
    assert hook_input["hook_event_name"] == "PreToolUse"
    assert hook_input["tool_name"] == "Bash"
    assert tool_use_id == tool_uses(messages)[0].id
    assert "blocked by the test hook" in server.model_requests()[-1].text


def test_interrupt_mid_turn_leaves_a_usable_session(start: Any, server: FakeModelServer) -> None:
    server.script([Stall(WAIT)])
    session = start()
    ref = session.send_query("this one hangs")
    server.wait_for_requests(1, WAIT, predicate=lambda r: r.turn is not None)

    session.interrupt()

    with pytest.raises(Interrupted):
        session.receive_message(ref, timeout=WAIT)
    after = session.query("ECHO:after the interrupt", timeout=WAIT)
    assert after[-1].content == "after the interrupt"
    assert after[-1].is_error is False


def test_killed_cli_restarts_and_resumes_the_conversation(
    start: Any, runtime: Runtime, server: FakeModelServer
) -> None:
    session = start()
    session.query("ECHO:remember the word pineapple", timeout=WAIT)
    native = session.session_info()["native_session_id"]
    server.script([Stall(WAIT)])
    ref = session.send_query("this turn dies")
    server.wait_for_requests(2, WAIT, predicate=lambda r: r.turn is not None)
    incarnation = watch_incarnation(runtime, session)

    os.kill(session.session_info()["pid"], signal.SIGKILL)

    error = receive_until(session, ref)
    assert "exited with status -9" in str(error)
    incarnation.wait(WAIT)
    messages = session.query("ECHO:back again", timeout=WAIT)
    assert messages[-1].content == "back again"
    info = session.session_info()
    assert info["incarnation"] == 2
    assert info["resumed"] == "native"
    assert info["native_session_id"] == native
    # The resumed CLI sent the earlier turns along with the new prompt.
    last = server.model_requests()[-1]
    assert "remember the word pineapple" in last.text
    assert "back again" in last.text


def test_model_error_status_gives_an_error_message_and_a_usable_session(
    start: Any, server: FakeModelServer
) -> None:
    server.script([ErrorStatus(500, headers={"x-should-retry": "false"})])
    session = start()

    messages = session.query("this fails", timeout=WAIT)

    [error] = of_type(messages, "error")
    assert "500" in (error.content or "")
    assert error.error_info is not None
    assert error.error_info["api_error_status"] == 500
    assert messages[-1].type is MessageType.RESULT
    assert messages[-1].is_error is True
    assert session.health() == "ready"
    assert session.query("ECHO:fine now", timeout=WAIT)[-1].content == "fine now"


def test_set_model_and_permission_mode_apply_to_the_live_cli(
    start: Any, server: FakeModelServer
) -> None:
    session = start()
    pid = session.session_info()["pid"]

    assert session.set_model("claude-haiku-4-5") == "claude-haiku-4-5"
    session.set_permission_mode("plan")
    messages = session.query("ECHO:switched", timeout=WAIT)

    assert server.model_requests()[-1].json["model"] == "claude-haiku-4-5"
    [init] = [m for m in of_type(messages, "system") if m.subtype == "init"]
    assert init.system_info is not None
    assert init.system_info["permission_mode"] == "plan"
    assert session.session_info()["pid"] == pid
    assert session.session_info()["model"] == "claude-haiku-4-5"


def test_send_control_is_matched_by_request_id(start: Any) -> None:
    session = start()

    assert session.send_control("mcpStatus", timeout=WAIT) == {"mcpServers": []}
    with pytest.raises(UnknownControlMethod):
        session.send_control("noSuchControl", timeout=WAIT)
    # Universal controls still work and reach the CLI.
    assert session.send_control("setModel", {"model": "claude-haiku-4-5"}) == {
        "model": "claude-haiku-4-5"
    }


def test_start_options_reach_the_cli(start: Any, server: FakeModelServer) -> None:
    session = start(
        model="claude-sonnet-4-5",
        system_prompt="You are a terse test agent.",
        disallowed_tools=["WebFetch", "WebSearch"],
        max_turns=3,
    )

    messages = session.query("ECHO:configured", timeout=WAIT)

    [init] = [m for m in of_type(messages, "system") if m.subtype == "init"]
    assert init.system_info is not None
    assert "WebFetch" not in init.system_info["tools"]
    assert "Bash" in init.system_info["tools"]
    request = server.model_requests()[-1].json
    assert request["model"] == "claude-sonnet-4-5"
    assert "You are a terse test agent." in json.dumps(request["system"])


def test_availability_and_bad_cli_path(
    runtime: Runtime, clis: dict[str, Path], tmp_path: Path
) -> None:
    available, why = ClaudeHandler.availability()
    assert available, why
    assert str(clis["claude"]) in why or "claude" in why
    # Installed, but routing never picks it unless enabled: no paid agent by surprise.
    assert runtime.backend_availability()["claude"][0] is False
    assert "not enabled" in runtime.backend_availability()["claude"][1]
    with Runtime(store=":memory:", backends=["claude", "local"]) as enabled:
        assert enabled.backend_availability()["claude"][0] is True
        assert [b.name for b in enabled.available_backends()] == ["claude", "local"]

    with pytest.raises(InvalidOption, match="cli_path"):
        runtime.start_session(backend="claude", cli_path=str(tmp_path / "no-such-claude"))


def test_a_stored_session_resumes_by_its_native_id(start: Any, server: FakeModelServer) -> None:
    first = start()
    first.query("ECHO:remember the word mango", timeout=WAIT)
    native = first.session_info()["native_session_id"]
    first.stop()

    second = start(native_session_id=native)
    messages = second.query("ECHO:and now", timeout=WAIT)

    assert messages[-1].content == "and now"
    assert second.session_info()["resumed"] == "native"
    assert second.session_info()["native_session_id"] == native
    assert "remember the word mango" in server.model_requests()[-1].text


def test_a_native_id_with_nothing_on_disk_starts_afresh_under_that_id(
    start: Any, server: FakeModelServer
) -> None:
    native = str(uuid.uuid4())

    session = start(native_session_id=native)
    messages = session.query("ECHO:fresh", timeout=WAIT)

    assert messages[-1].content == "fresh"
    info = session.session_info()
    assert (info["resumed"], info["resume_missing"]) == (None, True)
    assert info["native_session_id"] == native
    assert messages[0].raw is not None
    assert messages[0].raw["session_id"] == native


def test_interrupt_while_a_permission_request_is_pending(
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
    release.set()  # the late answer is dropped: the CLI cancelled the request

    result = session.query("still usable?", timeout=WAIT)[-1]
    assert (result.subtype, result.is_error) == ("success", False)
    assert not target.exists()
    # The model is told the tool use was rejected by the interrupt, then gets the new prompt.
    last = server.model_requests()[-1].text
    assert "Request interrupted by user for tool use" in last
    assert "still usable?" in last


def test_an_idle_session_hibernates_and_resumes_with_its_context(
    start: Any, server: FakeModelServer
) -> None:
    with LogEvents() as events:
        session = start(idle_timeout=1.0)
        session.query("ECHO:remember the word pineapple", timeout=WAIT)
        before = session.session_info()
        pid, native = before["pid"], before["native_session_id"]

        until_hibernating(events, session, WAIT)

        assert group_members(pid) == []  # the CLI and everything it started are gone
        info = session.session_info()
        assert info["state"] == "hibernating"
        assert "pid" not in info
        assert info["native_session_id"] == native
        session.set_model("claude-haiku-4-5")  # kept for the woken CLI, which is not started
        assert session.health() == "hibernating"
        messages = session.query("ECHO:back again", timeout=WAIT)

    assert messages[-1].content == "back again"
    info = session.session_info()
    assert (info["state"], info["incarnation"], info["hibernations"]) == ("ready", 1, 1)
    assert info["resumed"] == "native"  # claude --resume=<native id>
    assert info["native_session_id"] == native
    assert info["pid"] != pid
    # The woken CLI sent the earlier turn along with the new prompt, to the new model.
    last = server.model_requests()[-1]
    assert "remember the word pineapple" in last.text
    assert "back again" in last.text
    assert last.json["model"] == "claude-haiku-4-5"


# --- context across resume and forks --------------------------------------------------------


def test_stop_then_resume_continues_natively(
    start: Any, runtime: Runtime, server: FakeModelServer
) -> None:
    session = start()
    session.query("ECHO:remember the word pineapple", timeout=WAIT)
    native = session.session_info()["native_session_id"]
    session.stop()

    resumed = start(resume=session.session_id)
    messages = resumed.query("ECHO:which word?", timeout=WAIT)

    assert messages[-1].content == "which word?"
    info = resumed.session_info()
    assert (info["resumed"], info["native_session_id"]) == ("native", native)
    last = server.model_requests()[-1].text
    assert "remember the word pineapple" in last
    assert "beamagent-replay" not in last  # the CLI's own transcript, no preamble


def test_a_fork_forks_the_native_conversation(
    start: Any, runtime: Runtime, server: FakeModelServer
) -> None:
    session = start()
    session.query("ECHO:remember the word pineapple", timeout=WAIT)
    parent_native = session.session_info()["native_session_id"]
    fork = runtime.fork_session(session)

    forked = start(resume=fork.session_id)
    messages = forked.query("ECHO:in the fork", timeout=WAIT)

    assert messages[-1].content == "in the fork"
    info = forked.session_info()
    assert info["resumed"] == "native"
    assert info["forked_from"] == parent_native
    assert info["native_session_id"] not in (None, parent_native)  # a conversation of its own
    assert runtime.get_session(fork.session_id).native_session_id == info["native_session_id"]
    last = server.model_requests()[-1].text
    assert "remember the word pineapple" in last
    assert "beamagent-replay" not in last
    # The parent's conversation did not get the fork's turn.
    session.query("ECHO:parent again", timeout=WAIT)
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

    assert messages[-1].content == "in the fork"  # the prompt is a block of its own
    assert forked.session_info()["resumed"] == "replay"
    last = server.model_requests()[-1].text
    assert "beamagent-replay" in last
    assert "remember the word pineapple" in last
    assert "mango" not in last
    # The preamble went once: the next turn is the CLI's own conversation.
    forked.query("ECHO:again", timeout=WAIT)
    assert server.model_requests()[-1].text.count("beamagent-replay>") == 2  # open + close tag


def test_a_resume_without_a_transcript_replays(
    start: Any, runtime: Runtime, server: FakeModelServer, tmp_path: Path
) -> None:
    session = start()
    session.query("ECHO:remember the word pineapple", timeout=WAIT)
    native = session.session_info()["native_session_id"]
    session.stop()
    for transcript in (tmp_path / "home").rglob(f"{native}.jsonl"):
        transcript.unlink()  # e.g. another machine, or a cleaned home

    resumed = start(resume=session.session_id)
    resumed.query("ECHO:which word?", timeout=WAIT)

    info = resumed.session_info()
    assert (info["resumed"], info["resume_missing"]) == ("replay", True)
    assert "remember the word pineapple" in server.model_requests()[-1].text


# --- parity with the SDKs -----------------------------------------------------------------


def test_set_max_thinking_tokens_in_camel_case_reaches_the_cli(
    start: Any, server: FakeModelServer
) -> None:
    session = start(model="claude-sonnet-4-5")  # a model with a thinking budget

    answer = session.send_control("setMaxThinkingTokens", {"maxThinkingTokens": 3000}, timeout=WAIT)
    session.query("ECHO:think", timeout=WAIT)

    assert answer == {"max_thinking_tokens": 3000}
    assert server.model_requests()[-1].json["thinking"] == {
        "type": "enabled",
        "budget_tokens": 3000,
    }
    assert session.session_info()["max_thinking_tokens"] == 3000
    session.send_control("setMaxThinkingTokens", {"max_thinking_tokens": 0}, timeout=WAIT)
    session.query("ECHO:no thinking", timeout=WAIT)
    assert server.model_requests()[-1].json["thinking"] == {"type": "disabled"}


def test_stop_task_stops_one_task_not_the_turn(start: Any) -> None:
    session = start()

    # The CLI's stop_task request (it answers even for a task it does not know).
    assert session.send_control("stopTask", {"task_id": "no-such-task"}, timeout=WAIT) == {
        "task_id": "no-such-task"
    }
    with pytest.raises(InvalidOption, match="interrupt"):
        session.send_control("stopTask", {}, timeout=WAIT)
    assert session.health() == "ready"


def test_permission_modes_are_checked(start: Any, server: FakeModelServer) -> None:
    session = start()

    with pytest.raises(InvalidOption, match="no-such-mode"):
        session.set_permission_mode("no-such-mode")
    with pytest.raises(InvalidOption, match="acceptEdits"):
        session.send_control("setPermissionMode", {"mode": "no-such-mode"})
    assert session.set_permission_mode("acceptEdits") == "acceptEdits"
    with pytest.raises(InvalidOption, match="permission_mode"):
        start(permission_mode="no-such-mode")


def test_session_info_reports_the_model_the_cli_runs(start: Any) -> None:
    session = start(model="sonnet")  # an alias the CLI resolves

    [init] = [m for m in session.query("ECHO:hi", timeout=WAIT) if m.subtype == "init"]

    info = session.session_info()
    assert init.system_info is not None
    assert info["model"] == init.system_info["model"] != "sonnet"
    assert info["requested_model"] == "sonnet"
