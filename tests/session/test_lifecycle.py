"""Sessions on the local backend: lifecycle, streaming, refs, control, errors."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from beamagent import MessageType, Runtime
from beamagent import runtime as runtime_module
from beamagent.errors import (
    BadQueryRef,
    InvalidOption,
    NoActiveQuery,
    QueryComplete,
    QueryInProgress,
    SessionNotFound,
    StopTimeout,
    UnknownBackend,
    UnknownControlMethod,
)
from beamagent.session import actor as actor_module
from supervisors import monitor, whereis


@pytest.fixture
def rt() -> Iterator[Runtime]:
    with Runtime(store=":memory:") as runtime:
        yield runtime


def test_full_lifecycle(rt: Runtime) -> None:
    session = rt.start_session(backend="local")
    assert re.fullmatch(r"session_[0-9a-f]{32}", session.session_id)
    assert session.health() == "ready"
    messages = session.query("hello world")
    assert [m.type for m in messages] == [
        MessageType.SYSTEM,
        MessageType.ASSISTANT,
        MessageType.RESULT,
    ]
    assert messages[1].content == "hello world"
    assert messages[-1].content == "hello world"
    assert all(m.session_id == session.session_id for m in messages)
    assert messages[0].system_info is not None
    assert messages[0].system_info["model"] == "local-echo"
    info = session.session_info()
    assert info["session_id"] == session.session_id
    assert info["backend"] == "local" == session.backend()
    assert info["state"] == "ready"
    assert info["model"] == "local-echo"
    assert session.adapter_module() == "beamagent.backends.local"
    assert session.supported_models()[0]["value"] == "local-echo"
    assert session.supported_commands()
    assert session.supported_agents() == ["general"]
    assert session.account_info()["provider"] == "local"
    assert session.server_health()["healthy"] is True
    assert rt.session(session.session_id) == session
    session.stop()
    assert session.health() == "unknown"
    with pytest.raises(SessionNotFound):
        session.query("anyone?")
    with pytest.raises(SessionNotFound):
        rt.session(session.session_id)


def test_scripted_replies_and_structured_json(rt: Runtime) -> None:
    session = rt.start_session(
        backend="local",
        replies=[
            "first",
            [
                {
                    "type": "assistant",
                    "message": {"content": [{"type": "text", "text": '{"ok": true}'}]},
                }
            ],
        ],
    )
    assert session.query("a")[-1].content == "first"
    assert session.query("b")[-1].content == '{"ok": true}'
    assert session.query("c")[-1].content == "c"  # then it echoes

    def reply(prompt: str, params: dict[str, Any]) -> str:
        return f"{prompt.upper()} (temperature={params.get('temperature')})"

    other = rt.start_session(backend="local", reply=reply, query_defaults={"temperature": 0})
    assert other.query("hi")[-1].content == "HI (temperature=0)"
    assert other.query("hi", temperature=1)[-1].content == "HI (temperature=1)"


def test_error_reply_is_delivered_and_session_stays_usable(rt: Runtime) -> None:
    session = rt.start_session(
        backend="local",
        replies=[
            [
                {"type": "error", "error": "model overloaded"},
                {"type": "result", "subtype": "error", "is_error": True, "result": ""},
            ]
        ],
    )
    messages = session.query("x")
    assert [m.type for m in messages] == [MessageType.SYSTEM, MessageType.ERROR, MessageType.RESULT]
    assert messages[-1].is_error is True
    assert session.query("y")[-1].content == "y"


def test_streaming_order_and_receive_message(rt: Runtime) -> None:
    session = rt.start_session(backend="local", replies=[["one", "two", "three"]])
    streamed = list(session.stream("go"))
    assert [m.type for m in streamed] == [
        MessageType.SYSTEM,
        MessageType.ASSISTANT,
        MessageType.ASSISTANT,
        MessageType.ASSISTANT,
        MessageType.RESULT,
    ]
    assert [m.content for m in streamed[1:4]] == ["one", "two", "three"]
    assert streamed[-1].content == "onetwothree"
    ref = session.send_query("again")
    received = []
    while True:
        try:
            received.append(session.receive_message(ref, timeout=5))
        except QueryComplete:
            break
    assert [m.type for m in received][-1] is MessageType.RESULT
    with pytest.raises(QueryComplete):
        session.receive_message(ref, timeout=5)


def test_bad_ref_and_query_in_progress(rt: Runtime) -> None:
    import threading

    release = threading.Event()

    def reply(prompt: str, params: dict[str, Any]) -> Any:
        def slow() -> Iterator[str]:
            yield "partial"
            release.wait(5)
            yield "done"

        return slow() if prompt == "slow" else prompt

    session = rt.start_session(backend="local", reply=reply)
    old = session.send_query("fast")
    list(_drain(session, old))
    ref = session.send_query("slow")
    try:
        with pytest.raises(BadQueryRef):
            session.receive_message(old, timeout=1)
        with pytest.raises(QueryInProgress):
            session.send_query("another")
        with pytest.raises(QueryInProgress):
            session.query("another")
        assert session.health() == "active_query"
    finally:
        release.set()
    assert [m.content for m in _drain(session, ref)][-1] == "partialdone"
    assert session.health() == "ready"


def _drain(session: Any, ref: Any) -> Iterator[Any]:
    while True:
        try:
            yield session.receive_message(ref, timeout=5)
        except QueryComplete:
            return


def test_control_model_and_permission_mode(rt: Runtime) -> None:
    session = rt.start_session(backend="local", model="local-echo", permission_mode="default")
    assert session.set_model("local-large") == "local-large"
    assert session.session_info()["model"] == "local-large"
    assert session.query("x")[0].system_info["model"] == "local-large"  # type: ignore[index]
    assert session.set_permission_mode("plan") == "plan"
    assert session.session_info()["permission_mode"] == "plan"
    assert session.send_control("echo", {"a": 1}) == {"echo": {"a": 1}}
    assert session.send_control("setModel", {"model": "local-echo"}) == {"model": "local-echo"}
    assert session.send_control("setPermissionMode", {"mode": "default"}) == {
        "permission_mode": "default"
    }
    assert session.send_control("setMaxThinkingTokens", {"max_thinking_tokens": 1024}) == {
        "max_thinking_tokens": 1024
    }
    assert session.send_control("stopTask") == {"stopped": False}
    with pytest.raises(UnknownControlMethod):
        session.send_control("teleport")
    with pytest.raises(InvalidOption):
        session.send_control("setMaxThinkingTokens", {"max_thinking_tokens": -1})
    with pytest.raises(NoActiveQuery):
        session.interrupt()
    with pytest.raises(InvalidOption):
        session.set_model("")


def test_bad_options_are_typed_errors(rt: Runtime) -> None:
    with pytest.raises(UnknownBackend, match="nope"):
        rt.start_session(backend="nope")
    with pytest.raises(InvalidOption, match="colour"):
        rt.start_session(backend="local", colour="blue")
    with pytest.raises(InvalidOption, match="session_id"):
        rt.start_session(backend="local", session_id="has spaces")
    with pytest.raises(InvalidOption, match="replies"):
        rt.start_session(backend="local", replies="not a list")
    session = rt.start_session(backend="local", session_id="mine-1")
    assert session.session_id == "mine-1"
    with pytest.raises(InvalidOption, match="already running"):
        rt.start_session(backend="local", session_id="mine-1")
    with pytest.raises(InvalidOption, match="prompt"):
        session.query(42)  # type: ignore[arg-type]
    assert session.query("still fine")[-1].content == "still fine"


def test_history_is_recorded_before_delivery(rt: Runtime) -> None:
    session = rt.start_session(backend="local")
    for message in session.stream("record me"):
        stored = rt._store.get_session_messages(session.session_id)
        assert any(m.get("uuid") == message.uuid for m in stored)
    types = [m["type"] for m in rt._store.get_session_messages(session.session_id)]
    assert types == ["user", "system", "assistant", "result"]


@pytest.mark.parametrize("codec", ["messages", "jsonl"])
def test_a_local_query_sends_the_session_no_messages_of_its_own(
    codec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The local agent answers within the call that sends it the prompt: its output is
    # handled right after that call, not told to the session (a trip through its mailbox
    # each), and the blocking query's timeout is never armed.
    received: list[Any] = []
    timers: list[Any] = []
    on_receive = actor_module.SessionActor.on_receive
    send_after = actor_module.send_after

    def counting(self: Any, message: Any) -> Any:
        received.append(message)
        return on_receive(self, message)

    def counting_timers(target: Any, message: Any, seconds: float) -> Any:
        timers.append(message)
        return send_after(target, message, seconds)

    monkeypatch.setattr(actor_module.SessionActor, "on_receive", counting)
    monkeypatch.setattr(actor_module, "send_after", counting_timers)
    with Runtime(store=":memory:") as rt:
        session = rt.start_session(backend="local", codec=codec)
        received.clear()
        timers.clear()
        for i in range(10):
            assert session.query(f"q{i}", timeout=30)[-1].content == f"q{i}"
        assert received == []
        assert timers == []


def test_session_info_lists_are_the_callers_own(rt: Runtime) -> None:
    # Idle sessions share the lists their backend and tools report (one copy for all):
    # what session_info hands out must be copies, so a caller's edit stays its own.
    first, second = rt.start_session(backend="local"), rt.start_session(backend="local")
    info = first.session_info()
    info["supported_models"].append("mine")
    info["supported_agents"].clear()
    info["tools"].append("mine")
    for session in (first, second):
        again = session.session_info()
        assert "mine" not in again["supported_models"]
        assert again["supported_agents"] == ["general"]
        assert again["tools"] == []


def test_a_stop_not_confirmed_in_time_is_a_typed_error_and_the_stop_goes_on(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A session whose reply blocks takes its whole shutdown time (5 s) to stop; stops
    # queue in the sessions' supervisor. The wait used to end in a raw pykka.Timeout.
    release = threading.Event()

    def reply(prompt: str, params: Any) -> Iterator[str]:
        yield "first"
        release.wait(30)
        yield "never seen"

    monkeypatch.setattr(runtime_module, "CALL_TIMEOUT", 0.5)  # the stop's wait, shortened
    session = rt.start_session(backend="local", reply=reply)
    ref = whereis(rt._session_name(session.session_id))
    assert ref is not None
    down = monitor(ref, watcher=None)
    session.send_query("hang")
    try:
        with pytest.raises(StopTimeout) as raised:
            session.stop()
        assert raised.value.session_id == session.session_id
        assert isinstance(raised.value, TimeoutError)
        down.wait(30)  # and the stop it asked for is carried out
    finally:
        release.set()
    with pytest.raises(SessionNotFound):
        session.session_info()
