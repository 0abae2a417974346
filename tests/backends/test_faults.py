"""Protocol-level faults, injected by small fake CLIs (python scripts in ``fakes/``).

The real handlers and transports run against processes that misbehave on
purpose: noise on stdout, a 10 MB line, data Python's json accepts but JSON
does not, a CLI that never answers (at start, or a turn), one that exits at
once or mid-turn, a stderr flood, a slow drip of bytes, a launcher killed
while its child lives on, and a JSON-RPC peer whose request ids collide with
ours. Every failure is a typed error, a session that was ready is restarted
by its supervisor, and no process of the failed incarnation's group is left.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pykka
import pytest

from beamagent import Runtime, Session
from beamagent.backends.base import HandlerOutput
from beamagent.backends.claude import ClaudeHandler
from beamagent.backends.permissions import Deny
from beamagent.errors import (
    BufferOverflow,
    ConnectTimeout,
    InvalidOption,
    QueryTimeout,
    SessionError,
    TransportError,
)
from beamagent.messages import MessageType
from supervisors import Crashed, MonitorRef
from tests.backends.conftest import group_members, receive_until, recorder, watch_incarnation

FAKES = Path(__file__).parent / "fakes"
TEN_MB = 10 * 1024 * 1024


WAIT = 30.0


def fake_claude(
    runtime: Runtime, mode: str, script: str = "fake_claude.py", **options: Any
) -> Session:
    env = {"FAKE_MODE": mode, **options.pop("env", {})}
    return runtime.start_session(
        backend="claude",
        cli_path=str(FAKES / script),
        command_prefix=[sys.executable],
        env=env,
        **options,
    )


def crashed(incarnation: MonitorRef, pid: int) -> BaseException:
    """Wait for a failed incarnation to end; check it left no process; return its error.

    It must end abnormally, so that its supervisor restarts it.
    """
    down = incarnation.wait(WAIT)
    assert isinstance(down.reason, Crashed), down.reason
    assert group_members(pid) == []
    return down.reason.exception


def same_error(reason: BaseException, caught: BaseException) -> bool:
    """The session ended with the error its caller got (the caller's copy says delivered)."""
    return type(reason) is type(caught) and str(reason) == str(caught)


def assert_restarted(session: Session, old_pid: int) -> None:
    """The session's supervisor started a second incarnation, on a new process."""
    info = session.session_info()
    assert info["incarnation"] == 2
    assert info["pid"] != old_pid
    assert info["state"] in ("connecting", "initializing", "ready")


def test_garbage_lines_are_skipped(runtime: Runtime) -> None:
    session = fake_claude(runtime, "garbage")

    for prompt in ("first", "second"):
        messages = session.query(prompt, timeout=10)
        assert [m.type for m in messages] == [
            MessageType.SYSTEM,
            MessageType.ASSISTANT,
            MessageType.RESULT,
        ]
        assert messages[1].content == f"echo: {prompt}"
    assert session.health() == "ready"
    assert session.supported_models() == [{"value": "fake-model"}]
    pid = session.session_info()["pid"]
    session.stop()
    assert group_members(pid) == []


def test_a_10_mb_line_is_delivered_whole_when_the_buffer_allows_it(runtime: Runtime) -> None:
    session = fake_claude(runtime, "huge", env={"FAKE_SIZE": str(TEN_MB)}, buffer_max=3 * TEN_MB)

    messages = session.query("big", timeout=30)

    [assistant] = [m for m in messages if m.type is MessageType.ASSISTANT]
    assert assistant.content == "x" * TEN_MB
    assert messages[-1].type is MessageType.RESULT
    assert session.health() == "ready"


def test_a_line_beyond_buffer_max_fails_the_session_with_buffer_overflow(
    runtime: Runtime,
) -> None:
    session = fake_claude(runtime, "huge", env={"FAKE_SIZE": str(TEN_MB)})
    pid = session.session_info()["pid"]
    incarnation = watch_incarnation(runtime, session)

    with pytest.raises(BufferOverflow, match="more than 10000000 unparsed bytes") as caught:
        session.query("too big", timeout=30)

    assert same_error(crashed(incarnation, pid), caught.value)  # the CLI was ended with it
    assert_restarted(session, pid)


def test_buffer_max_bounds_unparsed_bytes_not_complete_lines(runtime: Runtime) -> None:
    # The local agent echoes the prompt twice (assistant, result) in one chunk of ~10 MB.
    session = runtime.start_session(backend="local")
    prompt = "p" * (5 * 1024 * 1024)

    messages = session.query(prompt, timeout=WAIT)

    assert [m.content for m in messages[1:]] == [prompt, prompt]
    assert session.health() == "ready"


def test_an_oversized_remainder_fails_after_the_complete_lines_before_it(
    runtime: Runtime,
) -> None:
    line = b'{"type": "assistant", "content": "complete"}\n'

    def reply(prompt: str, params: Any) -> Any:
        if prompt != "go":
            return prompt
        return (item for item in [line + b"x" * 2000])  # streamed: one chunk of its own

    session = runtime.start_session(backend="local", reply=reply, buffer_max=1000)
    incarnation = watch_incarnation(runtime, session)

    with pytest.raises(BufferOverflow, match="more than 1000 unparsed bytes"):
        session.query("go", timeout=WAIT)

    down = incarnation.wait(WAIT)
    assert isinstance(down.reason, Crashed)
    assert isinstance(down.reason.exception, BufferOverflow)
    history = runtime.get_session_messages(session.session_id)
    assert [m.content for m in history][-1] == "complete"  # parsed and recorded first
    assert session.query("again", timeout=WAIT)[-1].content == "again"
    assert session.session_info()["incarnation"] == 2


def test_a_cli_that_hangs_at_start_times_out(runtime: Runtime) -> None:
    with pytest.raises(ConnectTimeout, match=r"did not finish its handshake within 0\.5 s"):
        fake_claude(runtime, "hang", init_timeout=0.5)

    assert runtime.live_sessions() == []


def test_a_cli_that_exits_at_once_reports_its_status_and_stderr(runtime: Runtime) -> None:
    with pytest.raises(TransportError, match="status 3") as caught:
        fake_claude(runtime, "exit")

    assert "configuration is broken" in str(caught.value)
    assert runtime.live_sessions() == []


def test_a_missing_executable_is_a_clear_error(runtime: Runtime, tmp_path: Path) -> None:
    with pytest.raises(InvalidOption, match="no-such-cli"):
        runtime.start_session(backend="codex", cli_path=str(tmp_path / "no-such-cli"))


def fake_codex(runtime: Runtime, log: Path, **options: Any) -> Session:
    return runtime.start_session(
        backend="codex",
        cli_path=str(FAKES / "fake_codex.py"),
        command_prefix=[sys.executable],
        env={"FAKE_LOG": str(log)},
        **options,
    )


def test_codex_id_spaces_are_kept_apart_amid_noise(runtime: Runtime, tmp_path: Path) -> None:
    log = tmp_path / "received.jsonl"
    calls, handler = recorder(lambda *_: Deny("not on my machine"))

    session = fake_codex(runtime, log, permission_handler=handler)
    messages = session.query("hi", timeout=10)

    # The server's request 0 went to the permission handler and was answered as such...
    [(tool_name, tool_input, _context)] = calls
    assert (tool_name, tool_input["command"]) == ("command_execution", "rm -rf /")
    received = [json.loads(line) for line in log.read_text().splitlines()]
    answers = [m for m in received if "method" not in m and m.get("id") == 0]
    assert answers == [{"id": 0, "result": {"decision": "decline"}}]
    # ...while our own request 0 (initialize) got its response: the session is ready.
    assert received[0]["method"] == "initialize"
    assert received[0]["id"] == 0
    assert "jsonrpc" not in received[0]
    assert [m.type for m in messages] == [
        MessageType.SYSTEM,
        MessageType.ASSISTANT,
        MessageType.RESULT,
    ]
    assert messages[1].content == "echo: hi"
    assert session.session_info()["thread_id"] == "thread-fake-1"
    assert session.health() == "ready"


def test_a_launcher_killed_while_its_child_lives_on_ends_the_session(
    runtime: Runtime, tmp_path: Path
) -> None:
    hang_once = {"FAKE_HANG_ONCE": str(tmp_path / "hung")}
    session = fake_claude(runtime, "hang_turn", "fake_launcher.py", env=hang_once)
    launcher = session.session_info()["pid"]
    [child] = [pid for pid in group_members(launcher) if pid != launcher]
    ref = session.send_query("never answered")
    assert session.receive_message(ref, timeout=WAIT).type is MessageType.SYSTEM  # turn started
    incarnation = watch_incarnation(runtime, session)

    # The child keeps stdout open and would never end the turn: the launcher's exit must.
    os.kill(launcher, signal.SIGKILL)

    error = receive_until(session, ref, TransportError)
    assert error.reason == ("cli_exit", -signal.SIGKILL)  # type: ignore[attr-defined]
    assert f"exited with status {-signal.SIGKILL}" in str(error)
    assert crashed(incarnation, launcher) is not None
    assert child not in group_members(launcher)
    assert session.query("answered", timeout=WAIT)[-1].content == "echo: answered"
    assert session.session_info()["resumed"] == "replay"  # the fake keeps no transcript
    assert_restarted(session, launcher)
    assert session.health() == "ready"


def test_a_cli_that_dies_mid_turn_fails_the_query_and_is_restarted(runtime: Runtime) -> None:
    session = fake_claude(runtime, "die", error_linger=2.0)
    pid = session.session_info()["pid"]
    incarnation = watch_incarnation(runtime, session)

    with pytest.raises(TransportError, match="exited with status 5") as caught:
        session.query("this turn kills it", timeout=WAIT)

    assert caught.value.reason == ("cli_exit", 5)
    assert "segfault in the middle of a turn" in str(caught.value)
    assert session.health() == "error"  # lingers in error, then its supervisor restarts it
    assert session.session_info()["error"] == str(caught.value)
    assert same_error(crashed(incarnation, pid), caught.value)
    # The prompt that reached the dead backend is history too, with what came before the exit.
    history = runtime.get_session_messages(session.session_id)
    assert [(m.type, m.content) for m in history] == [
        (MessageType.USER, "this turn kills it"),
        (MessageType.SYSTEM, None),
    ]
    assert_restarted(session, pid)
    with pytest.raises(TransportError, match="exited with status 5"):
        session.query("the restarted CLI dies too", timeout=WAIT)


def test_nan_infinity_surrogates_and_bad_utf8_become_canonical_messages(tmp_path: Path) -> None:
    # A real SQLite file: the store writes strict JSON as UTF-8.
    with Runtime(store=str(tmp_path / "sessions.db")) as runtime:
        session = fake_claude(runtime, "weird")

        messages = session.query("strange data", timeout=WAIT)

        system, lone, bad, result = messages
        assert system.system_info is not None
        assert system.system_info["cost"] is None
        assert lone.content == "lone \ufffd surrogate in strange data"
        assert lone.usage == {"input_tokens": None}
        assert bad.content == "bad \ufffd\ufffd bytes"
        assert (result.type, result.content) == (MessageType.RESULT, "done \ufffd")
        assert (result.duration_ms, result.total_cost_usd) == (None, None)
        assert result.usage == {"big": None}
        for message in messages:
            json.dumps(message.to_dict(), allow_nan=False, ensure_ascii=False).encode()
        # Nothing crashed: the prompt and the answers are history, the session lives on.
        history = runtime.get_session_messages(session.session_id)
        assert [(m.type, m.content) for m in history] == [
            (MessageType.USER, "strange data"),
            *((m.type, m.content) for m in messages),
        ]
        assert session.query("again", timeout=WAIT)[-1].content == "done \ufffd"
        assert session.session_info()["incarnation"] == 1
        assert session.health() == "ready"


def test_a_cli_that_never_answers_a_turn_times_out_and_the_session_is_ready_again(
    runtime: Runtime, tmp_path: Path
) -> None:
    hang_once = {"FAKE_HANG_ONCE": str(tmp_path / "hung")}
    session = fake_claude(runtime, "hang_turn", env=hang_once, drain_timeout=0.5)
    pid = session.session_info()["pid"]

    with pytest.raises(QueryTimeout, match="interrupted and the session is ready again"):
        session.query("never answered", timeout=0.5)

    # The CLI ignored the interrupt too: the session drops the query and serves the next
    # one once drain_timeout has passed (it waits for it, no error).
    assert session.health() == "ready"
    assert session.query("answered", timeout=WAIT)[-1].content == "echo: answered"
    info = session.session_info()
    assert (info["incarnation"], info["pid"]) == (1, pid)  # no restart was needed
    session.stop()
    assert group_members(pid) == []


def test_a_stderr_flood_neither_blocks_the_cli_nor_grows_without_bound(
    runtime: Runtime,
) -> None:
    # 16 MB on stderr per turn: far beyond a pipe's buffer, so unread it would block the CLI.
    session = fake_claude(runtime, "stderr_flood", error_linger=0)
    pid = session.session_info()["pid"]
    incarnation = watch_incarnation(runtime, session)

    assert session.query("flooded", timeout=WAIT)[-1].content == "echo: flooded"
    with pytest.raises(TransportError, match="exited with status 4") as caught:
        session.query("flooded to death", timeout=WAIT)

    message = str(caught.value)
    assert message.endswith("fake claude: the last words after the flood")
    assert len(message) < 500  # the tail of stderr, not 16 MB of it
    assert same_error(crashed(incarnation, pid), caught.value)
    assert_restarted(session, pid)


def test_a_slow_drip_of_bytes_still_parses(runtime: Runtime) -> None:
    # One byte at a time, 2 ms apart: lines, and UTF-8 characters, arrive in pieces.
    session = fake_claude(runtime, "drip")

    messages = session.query("échec ✓ 日本語", timeout=WAIT)

    assert [m.type for m in messages] == [
        MessageType.SYSTEM,
        MessageType.ASSISTANT,
        MessageType.RESULT,
    ]
    assert messages[1].content == "echo: échec ✓ 日本語"
    assert session.health() == "ready"


class CrashingClaude(ClaudeHandler):
    """A handler with a bug: it raises on any output that mentions CRASH."""

    def handle_data(self, buffer: bytes) -> tuple[HandlerOutput, bytes]:
        if b"CRASH" in buffer:
            raise RuntimeError("handler bug")
        return super().handle_data(buffer)


def test_a_crashed_session_ends_its_cli_and_the_cli_s_children() -> None:
    with Runtime(store=":memory:", backends={"crashy": CrashingClaude}) as runtime:
        session = runtime.start_session(
            backend="crashy",
            cli_path=str(FAKES / "fake_launcher.py"),
            command_prefix=[sys.executable],
            env={"FAKE_MODE": "echo"},
        )
        launcher = session.session_info()["pid"]
        assert len(group_members(launcher)) == 2  # the launcher and its child
        incarnation = watch_incarnation(runtime, session)

        with pytest.raises(SessionError, match="crashed"):
            session.query("CRASH", timeout=WAIT)

        assert isinstance(crashed(incarnation, launcher), RuntimeError)
        assert_restarted(session, launcher)


def test_a_cli_that_is_not_logged_in_gives_an_error_result_and_turns_unhealthy(
    runtime: Runtime,
) -> None:
    session = fake_claude(runtime, "not_logged_in")
    messages = session.query("hello", timeout=WAIT)
    result = messages[-1]
    assert result.type is MessageType.RESULT
    assert result.is_error is True
    assert result.subtype != "success"  # an error result, not a 'successful' one
    assert any(m.type is MessageType.ERROR and "Not logged in" in str(m.content) for m in messages)
    assert session.session_info()["backend_health"][0] == "unhealthy"
    # Routing stops choosing it. The session told the registry before it answered the
    # query, so this later call to the registry sees it.
    assert runtime.backend_health()["claude"] == "unhealthy"
    runtime.set_health("claude", None)  # after `claude /login`


def test_thirty_sessions_answer_without_a_thread_each_for_their_cli(runtime: Runtime) -> None:
    threads_before = threading.active_count()
    actors_before = len(pykka.ActorRegistry.get_all())
    sessions = [fake_claude(runtime, "echo") for _ in range(30)]

    refs = [session.send_query(f"turn {n}") for n, session in enumerate(sessions)]
    for number, (session, ref) in enumerate(zip(sessions, refs, strict=True)):
        messages = [session.receive_message(ref, timeout=WAIT) for _ in range(3)]
        assert messages[-1].type is MessageType.RESULT
        assert messages[-1].content == f"echo: turn {number}"

    # Each session is an actor (a thread of its own until processes share a scheduler);
    # its CLI's pipes and exit add nothing per session: the I/O loop is one thread.
    actors = len(pykka.ActorRegistry.get_all()) - actors_before
    assert threading.active_count() - threads_before <= actors + 2
    pids = [session.session_info()["pid"] for session in sessions]
    for session in sessions:
        session.stop()
    assert [pid for pid in pids if group_members(pid)] == []


def test_a_cli_that_stops_reading_stdin_blocks_neither_its_session_nor_others(
    runtime: Runtime,
) -> None:
    deaf = fake_claude(runtime, "deaf")
    other = fake_claude(runtime, "echo")
    pid = deaf.session_info()["pid"]

    # Far beyond a pipe's buffer: written as the CLI reads, which it never does.
    ref = deaf.send_query("x" * (4 * 1024 * 1024))

    assert deaf.health() == "active_query"  # the session's thread is not stuck in a write
    assert other.query("meanwhile", timeout=WAIT)[-1].content == "echo: meanwhile"
    with pytest.raises(QueryTimeout):
        deaf.receive_message(ref, timeout=0.5)  # nothing came; its own timeouts still work
    deaf.stop()
    assert group_members(pid) == []
