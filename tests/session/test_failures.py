"""Interrupts, timeouts, overflow, crashes, transport death and restarts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

import supervisors
from beamagent import LocalExit, Message, MessageType, Runtime
from beamagent.backends.base import Connected, HandlerOutput, SessionState
from beamagent.backends.local import LocalHandler
from beamagent.errors import (
    BufferOverflow,
    ConnectTimeout,
    Interrupted,
    InvalidOption,
    QueryInProgress,
    QueryTimeout,
    SessionError,
    TransportError,
)
from beamagent.session import handle as handle_module
from tests.session._gated import Gate as GatedGate
from tests.session._gated import GatedLocal


class Gate:
    """A slow scripted reply: yields 'partial', then waits for release()."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()

    def reply(self, prompt: str, params: Mapping[str, Any]) -> Any:
        if not prompt.startswith("slow"):
            return prompt

        def slow() -> Iterator[str]:
            yield "partial"
            self.entered.set()
            self.released.wait(5)
            yield "rest"

        return slow()


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    yield g
    g.released.set()


@pytest.fixture
def rt() -> Iterator[Runtime]:
    with Runtime(store=":memory:") as runtime:
        yield runtime


def session_ref(rt: Runtime, session_id: str) -> Any:
    return rt._session_ref(session_id)


def test_interrupt_during_slow_reply_returns_to_ready(rt: Runtime, gate: Gate) -> None:
    session = rt.start_session(backend="local", reply=gate.reply)
    ref = session.send_query("slow one")
    assert session.receive_message(ref, timeout=5).type is MessageType.SYSTEM
    assert session.receive_message(ref, timeout=5).content == "partial"
    assert gate.entered.wait(5)
    outcome: list[BaseException] = []

    def consumer() -> None:
        try:
            session.receive_message(ref, timeout=10)
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=consumer)
    waiter.start()
    # The consumer is parked; interrupting answers it.
    _wait_parked(rt, session.session_id)
    session.interrupt()
    waiter.join(5)
    assert len(outcome) == 1
    assert isinstance(outcome[0], Interrupted)
    assert session.health() == "ready"
    gate.released.set()  # the agent now sees the interrupt and ends its turn
    assert session.query("next")[-1].content == "next"


def _wait_parked(rt: Runtime, session_id: str) -> None:
    """Block until the session actor holds a parked consumer (event-driven, via asks)."""
    process = supervisors.lookup(session_ref(rt, session_id))
    done = threading.Event()
    for _ in range(500):
        query = process._query  # type: ignore[union-attr]
        if query is not None and query.consumer is not None:
            return
        done.wait(0.01)
    raise AssertionError("consumer never parked")


def test_interrupt_of_a_blocking_query_raises_interrupted(rt: Runtime, gate: Gate) -> None:
    session = rt.start_session(backend="local", reply=gate.reply)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            session.query("slow")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert gate.entered.wait(5)
    session.interrupt()
    thread.join(5)
    assert len(errors) == 1
    assert isinstance(errors[0], Interrupted)
    gate.released.set()
    assert session.query("after")[-1].content == "after"


def test_blocking_query_timeout_recovers(rt: Runtime, gate: Gate) -> None:
    session = rt.start_session(backend="local", reply=gate.reply)
    with pytest.raises(QueryTimeout):
        session.query("slow", timeout=0.2)
    assert session.health() == "ready"
    gate.released.set()
    assert session.query("works again")[-1].content == "works again"


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_postponed_query_whose_caller_gave_up_is_never_sent(
    rt: Runtime, gate: Gate, api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The session drains an interrupted query, so the next one is postponed; its caller
    # gives up first, on the handle's own bound (the session is given no timeout of its
    # own, as if it were too busy to enforce one). At most once: the backend never sees
    # that prompt, even once it could.
    monkeypatch.setattr(handle_module, "_timeouts", lambda timeout: (None, timeout))
    prompts: list[str] = []

    def reply(prompt: str, params: Mapping[str, Any]) -> Any:
        prompts.append(prompt)
        return gate.reply(prompt, params)

    session = rt.start_session(backend="local", reply=reply)
    session.send_query("slow one")
    assert gate.entered.wait(5)
    session.interrupt()  # the session is ready, and drains the slow reply

    def give_up() -> Any:
        if api == "sync":
            return session.query("given up", timeout=0.2)
        return asyncio.run(session.aquery("given up", timeout=0.2))

    with pytest.raises(QueryTimeout, match="did not answer query"):
        give_up()
    gate.released.set()  # the drain ends: the postponed query would be sent now
    assert session.query("next")[-1].content == "next"
    assert prompts == ["slow one", "next"]
    stored = rt.get_session_messages(session.session_id)
    assert [m.content for m in stored if m.type is MessageType.USER] == ["slow one", "next"]


def test_receive_timeout_keeps_the_query(rt: Runtime, gate: Gate) -> None:
    session = rt.start_session(backend="local", reply=gate.reply)
    ref = session.send_query("slow")
    session.receive_message(ref, 5)
    session.receive_message(ref, 5)
    with pytest.raises(QueryTimeout):
        session.receive_message(ref, timeout=0.1)
    gate.released.set()
    rest = [session.receive_message(ref, 5) for _ in range(2)]
    assert rest[0].content == "rest"
    assert rest[1].type is MessageType.RESULT


def test_stream_left_early_interrupts(rt: Runtime, gate: Gate) -> None:
    session = rt.start_session(backend="local", reply=gate.reply)
    for message in session.stream("slow"):
        if message.content == "partial":
            break
    assert session.health() == "ready"
    gate.released.set()
    assert session.query("ok")[-1].content == "ok"


def test_buffer_overflow_errors_then_restarts(rt: Runtime) -> None:
    def reply(prompt: str, params: Mapping[str, Any]) -> Any:
        # Streamed, so that the 5000 bytes arrive on their own: an unterminated line.
        return (item for item in [b"x" * 5000]) if prompt == "overflow" else prompt

    session = rt.start_session(backend="local", reply=reply, buffer_max=1000, error_linger=0)
    old = session_ref(rt, session.session_id)
    mon = supervisors.monitor(old, watcher=None)
    with pytest.raises(BufferOverflow):
        session.query("overflow")
    assert isinstance(mon.wait(5).reason, supervisors.Crashed)
    # The same handle talks to the restarted session.
    assert session.query("fresh")[-1].content == "fresh"
    assert session.session_info()["incarnation"] == 2


def test_transport_death_gives_session_error_then_restart(rt: Runtime) -> None:
    def reply(prompt: str, params: Mapping[str, Any]) -> Any:
        return [LocalExit(3)] if prompt == "die" else prompt

    session = rt.start_session(backend="local", reply=reply, error_linger=0.5)
    old = session_ref(rt, session.session_id)
    mon = supervisors.monitor(old, watcher=None)
    with pytest.raises(TransportError, match="exited with status 3"):
        session.query("die")
    assert session.health() == "error"
    assert session.session_info()["state"] == "error"
    # A call made during the linger is not carried out by the failed incarnation: it
    # waits for the restarted session and runs there, once.
    assert session.query("during the linger")[-1].content == "during the linger"
    assert isinstance(mon.wait(5).reason, supervisors.Crashed)
    assert session.query("alive again")[-1].content == "alive again"
    assert session.health() == "ready"


@pytest.mark.parametrize("asynchronous", [False, True], ids=["query", "aquery"])
def test_a_query_held_by_a_restart_keeps_its_own_timeout(rt: Runtime, asynchronous: bool) -> None:
    """Its timeout counts from the call, not from the restart: past it, it is never sent."""
    prompts: list[str] = []

    def reply(prompt: str, params: Mapping[str, Any]) -> Any:
        prompts.append(prompt)
        return [LocalExit(3)] if prompt == "die" else prompt

    session = rt.start_session(backend="local", reply=reply, error_linger=2.0)
    with pytest.raises(TransportError):
        session.query("die")
    # Made during the 2 s linger, with 1 s to live: the restarted session must not get it
    # with a fresh second (it used to, answering a second late or more).
    late = (
        (lambda: asyncio.run(session.aquery("too late", timeout=1.0)))
        if asynchronous
        else (lambda: session.query("too late", timeout=1.0))
    )
    with pytest.raises(QueryTimeout, match="prompt was not sent"):
        late()
    assert "too late" not in prompts
    assert session.query("alive again")[-1].content == "alive again"


class CrashingHandler(LocalHandler):
    """A handler with bugs: it raises on any output containing CRASH, or REFUSE.

    REFUSE raises an expected error (a ``ReplyError``), which answers a caller when a
    call raises it; raised while handling the backend's output, it is still a crash.
    """

    @staticmethod
    def _check(text: str) -> None:
        if "CRASH" in text:
            raise RuntimeError("handler bug")
        if "REFUSE" in text:
            raise InvalidOption("handler bug")

    def handle_data(self, buffer: bytes) -> tuple[HandlerOutput, bytes]:
        self._check(buffer.decode(errors="replace"))
        return super().handle_data(buffer)

    def handle_messages(self, messages: Sequence[Message]) -> HandlerOutput:
        for message in messages:
            self._check(message.content or "")
        return super().handle_messages(messages)


@pytest.mark.parametrize("codec", ["messages", "jsonl"])
def test_handler_crash_restarts_session_and_handle_survives(codec: str) -> None:
    with Runtime(store=":memory:", backends={"crashy": CrashingHandler}) as rt:
        session = rt.start_session(backend="crashy", codec=codec)
        old = session_ref(rt, session.session_id)
        mon = supervisors.monitor(old, watcher=None)
        with pytest.raises(SessionError, match="crashed") as info:
            session.query("CRASH now")
        assert info.value.delivered
        reason = mon.wait(5).reason
        assert isinstance(reason, supervisors.Crashed)
        assert isinstance(reason.exception, RuntimeError)
        assert session.query("fine")[-1].content == "fine"
        children = rt.sessions_supervisor.which_children()
        assert [c.restarts for c in children] == [1]
        # The prompt reached the backend: it is history, recorded before the crash.
        stored = rt._store.get_session_messages(session.session_id)
        assert [m["content"] for m in stored if m["type"] == "user"] == ["CRASH now", "fine"]


@pytest.mark.parametrize("codec", ["messages", "jsonl"])
@pytest.mark.parametrize("word", ["CRASH", "REFUSE"])
def test_a_handler_crash_after_a_call_does_not_fail_the_call(codec: str, word: str) -> None:
    # The handler crashes on output the call caused; the call itself succeeded.
    with Runtime(store=":memory:", backends={"crashy": CrashingHandler}) as rt:
        session = rt.start_session(backend="crashy", codec=codec)
        old = session_ref(rt, session.session_id)
        mon = supervisors.monitor(old, watcher=None)
        ref = session.send_query(f"{word} now")
        assert ref.session_id == session.session_id
        reason = mon.wait(5).reason
        assert isinstance(reason, supervisors.Crashed)
        if word == "REFUSE":  # an expected error from the output is a crash all the same
            assert isinstance(reason.exception.__cause__, InvalidOption)
        with pytest.raises(SessionError, match="restarted"):
            session.receive_message(ref, 5)
        assert session.query("fine")[-1].content == "fine"


class SilentHandler(LocalHandler):
    """Never completes its handshake."""

    def on_connected(self, event: Connected) -> HandlerOutput:
        return HandlerOutput(state=SessionState.INITIALIZING)


def test_init_timeout_fails_the_start_without_restarts() -> None:
    with Runtime(store=":memory:", backends={"silent": SilentHandler}) as rt:
        with pytest.raises(ConnectTimeout, match="handshake"):
            rt.start_session(backend="silent", init_timeout=0.2)
        assert rt.sessions_supervisor.which_children() == []


def test_transport_that_cannot_start() -> None:
    from beamagent.backends.base import SubprocessTransport, Transport

    class MissingBinary(LocalHandler):
        def open_transport(self) -> Transport:
            return SubprocessTransport(["/nonexistent/agent-cli", "--flag"])

    with Runtime(store=":memory:", backends={"missing": MissingBinary}) as rt:
        with pytest.raises(TransportError, match="cannot start"):
            rt.start_session(backend="missing")
        assert rt.sessions_supervisor.which_children() == []


def test_an_in_process_handshake_that_fails_fails_the_start_with_its_error() -> None:
    # The local backend's handshake runs inside the session's on_start: its failure
    # still reaches start_session as the backend's typed error, and nothing stays up.
    gate = GatedGate()
    gate.fail_once = True
    with Runtime(store=":memory:", backends={"gated": GatedLocal}) as rt:
        with pytest.raises(TransportError, match="exited with status 3") as info:
            rt.start_session(backend="gated", gate=gate, session_id="failing")
        assert info.value.reason == ("cli_exit", 3)
        assert rt.sessions_supervisor.which_children() == []
        assert supervisors.whereis(rt._session_name("failing")) is None


class CrashingHandshake(LocalHandler):
    """Raises while it handles the backend's Connected, inside the session's on_start."""

    def on_connected(self, event: Connected) -> HandlerOutput:
        raise RuntimeError("handshake bug")


def test_a_handler_crash_in_an_in_process_handshake_fails_the_start() -> None:
    with Runtime(store=":memory:", backends={"crashy": CrashingHandshake}) as rt:
        with pytest.raises(SessionError, match="crashed") as info:
            rt.start_session(backend="crashy")
        assert info.value.reason == "crashed"
        assert rt.sessions_supervisor.which_children() == []


def test_a_query_cut_off_by_a_restart_reports_a_session_error(rt: Runtime, gate: Gate) -> None:
    session = rt.start_session(backend="local", reply=gate.reply, error_linger=0)
    ref = session.send_query("slow")
    session.receive_message(ref, 5)
    old = session_ref(rt, session.session_id)
    mon = supervisors.monitor(old, watcher=None)
    supervisors.kill(old)  # the actor dies under the query; its supervisor restarts it
    mon.wait(5)
    with pytest.raises(SessionError, match="restarted"):
        session.receive_message(ref, 5)
    gate.released.set()
    assert session.query("after the restart")[-1].content == "after the restart"


def test_unknown_native_control_error_names_the_method(rt: Runtime) -> None:
    from beamagent.errors import UnknownControlMethod

    session = rt.start_session(backend="local")
    process = supervisors.lookup(session_ref(rt, session.session_id))
    assert process is not None
    with pytest.raises(UnknownControlMethod) as info:
        session.send_control("teleport")
    assert info.value.method == "teleport"
    assert str(info.value).count("teleport") == 1


def test_a_slow_plain_reply_callable_does_not_block_the_session(rt: Runtime) -> None:
    release = threading.Event()
    entered = threading.Event()

    def reply(prompt: str, params: Mapping[str, Any]) -> Any:
        if prompt == "fast":
            return "done fast"
        entered.set()
        release.wait(10)  # a plain callable (not a generator) that takes its time
        return f"done {prompt}"

    session = rt.start_session(backend="local", reply=reply, drain_timeout=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(QueryTimeout):
            session.query("slow", timeout=0.3)  # returns at its timeout, not the reply's
        assert time.monotonic() - started < 5
        assert entered.is_set()
        entered.clear()
        ref = session.send_query("slow again")
        assert entered.wait(5)
        assert session.health() == "active_query"  # answered while the reply works
        with pytest.raises(QueryInProgress):
            session.send_query("second")
        session.interrupt()
        with pytest.raises(Interrupted):
            session.receive_message(ref, timeout=5)
    finally:
        release.set()
    assert session.query("fast")[-1].content == "done fast"
