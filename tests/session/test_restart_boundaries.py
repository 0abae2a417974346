"""Regression tests for the restart boundaries between sessions, store and registry.

Each test reproduces one way the OTP promise broke when an actor a session
depends on (or the session itself) restarted, and proves it holds now.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
from pykka.messages import ProxyCall

import supervisors
from beamagent import LocalExit, MessageType, Runtime
from beamagent.errors import QueryTimeout, SessionError, SessionNotFound, StoreError
from beamagent.testing.faults import disk_full
from tests.session._gated import Gate, GatedLocal


@pytest.fixture
def rt() -> Iterator[Runtime]:
    with Runtime(store=":memory:") as runtime:
        yield runtime


class Counting:
    """A ``reply`` callable that counts how often each prompt reached the backend."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: Counter[str] = Counter()
        self.entered = threading.Event()
        self.release = threading.Event()

    def reply(self, prompt: str, params: Mapping[str, Any]) -> Any:
        with self.lock:
            self.seen[prompt] += 1
        if prompt.startswith("hang"):

            def hang() -> Iterator[str]:
                yield "partial"
                self.entered.set()
                self.release.wait(10)
                yield "late"

            return hang()
        if prompt.startswith("die"):
            return [LocalExit(1)]
        return f"echo {prompt}"


def _state_after_start(rt: Runtime, session_id: str) -> str:
    """The session's state, asked of its process: answered once its ``on_start`` returned.

    An in-process backend's handshake begins inside ``on_start``: a kill that lands
    there fails the start itself (like any kill during a process's start).
    """
    ref = rt._session_ref(session_id)
    return str(ref.ask(ProxyCall(("health",), (), {}), timeout=5))


def _kill_session(rt: Runtime, session_id: str) -> supervisors.MonitorRef:
    ref = rt._session_ref(session_id)
    mon = supervisors.monitor(ref, watcher=None)
    supervisors.kill(ref)
    return mon


def test_a_store_restart_is_invisible_to_sessions(rt: Runtime) -> None:
    sessions = [rt.start_session(backend="local") for _ in range(3)]
    for s in sessions:
        s.query("before")
    store = rt.store_actor
    mon = supervisors.monitor(store, watcher=None)
    supervisors.kill(store)
    mon.wait(5)
    for s in sessions:
        assert s.query("after")[-1].content == "after"
        assert s.health() == "ready"
    assert rt.store_actor is not store
    for s in sessions:
        kinds = [(m.type, m.content) for m in rt.get_session_messages(s.session_id)]
        for text in ("before", "after"):  # prompt and answer, once each
            assert kinds.count((MessageType.USER, text)) == 1
            assert kinds.count((MessageType.ASSISTANT, text)) == 1


def test_a_restarting_session_is_waited_for_not_reported_missing() -> None:
    with Runtime(store=":memory:", session_restarts=None) as rt:
        session = rt.start_session(backend="local")
        for _ in range(20):
            mon = _kill_session(rt, session.session_id)
            mon.wait(5)
            # Immediately after the kill, before the supervisor restarted it.
            assert session.health() in ("connecting", "initializing", "ready")
            assert session.session_info()["session_id"] == session.session_id
            assert session.query("again")[-1].content == "again"
        assert session.session_info()["incarnation"] == 21


def test_calls_during_the_error_linger_wait_for_the_restarted_session() -> None:
    counting = Counting()
    with Runtime(store=":memory:", session_defaults={"error_linger": 0.3}) as rt:
        session = rt.start_session(backend="local", reply=counting.reply)
        with pytest.raises(SessionError) as cut:
            session.query("die now")
        assert cut.value.delivered is True
        # The session lingers in `error` for 0.3 s, then restarts: this call waits.
        assert session.query("next")[-1].content == "echo next"
        assert counting.seen["die now"] == 1
        assert counting.seen["next"] == 1


def test_a_session_under_a_users_supervisor_is_waited_for_too(rt: Runtime) -> None:
    spec = attrs.evolve(rt.child_spec(backend="local"), max_restarts=None)
    sup = supervisors.Supervisor.start(children=[spec], max_restarts=100)
    try:
        session = rt.session(spec.id)
        for _ in range(10):
            _kill_session(rt, spec.id).wait(5)
            assert session.query("hi")[-1].content == "hi"
        assert session.health() == "ready"
    finally:
        sup.stop()


def test_a_query_cut_off_mid_answer_is_not_sent_again(rt: Runtime) -> None:
    counting = Counting()
    session = rt.start_session(backend="local", reply=counting.reply)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            session.query("hang here", timeout=10)
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=run)
    caller.start()
    assert counting.entered.wait(5)
    _kill_session(rt, session.session_id).wait(5)
    caller.join(10)
    counting.release.set()
    assert len(outcome) == 1
    error = outcome[0]
    assert isinstance(error, SessionError)
    assert error.delivered is True
    assert "had reached" in str(error)
    assert counting.seen["hang here"] == 1  # never run twice
    assert session.query("after")[-1].content == "echo after"
    prompts = [
        m.content for m in rt.get_session_messages(session.session_id) if m.type is MessageType.USER
    ]
    assert prompts.count("hang here") <= 1
    assert prompts.count("after") == 1


def test_a_crash_looping_session_is_given_up_alone() -> None:
    counting = Counting()
    with Runtime(
        store=":memory:",
        session_defaults={"error_linger": 0},
        session_restarts=(2, 60.0),
    ) as rt:
        healthy = rt.start_session(backend="local")
        looper = rt.start_session(backend="local", reply=counting.reply)
        for _ in range(3):
            with pytest.raises(SessionError):
                looper.query("die again")
        with pytest.raises(SessionError) as given_up:
            looper.query("anyone?")
        assert given_up.value.reason == "given_up"
        assert "given up" in str(given_up.value)
        assert healthy.query("fine")[-1].content == "fine"
        assert looper.session_id not in rt.live_sessions()
        assert looper.session_id not in rt._registry_call("live_sessions")
        assert looper.health() == "unknown"
        # The id can be used again (a fresh session that continues the stored history).
        again = rt.start_session(backend="local", resume=looper.session_id)
        assert again.query("back")[-1].content == "back"


def test_a_burst_of_independent_crashes_takes_no_healthy_session_down() -> None:
    with Runtime(store=":memory:", session_defaults={"error_linger": 0}) as rt:
        sessions = [rt.start_session(backend="local") for _ in range(150)]
        monitors = [_kill_session(rt, s.session_id) for s in sessions]
        for mon in monitors:
            mon.wait(10)
        for s in sessions:
            assert s.query("still here")[-1].content == "still here"
        assert len(rt.live_sessions()) == 150


def test_budgets_are_validated() -> None:
    from beamagent.errors import InvalidOption

    with pytest.raises(InvalidOption, match="session_restarts"):
        Runtime(store=":memory:", session_restarts=(-1, 5.0))
    with pytest.raises(InvalidOption, match="sessions_supervisor_restarts"):
        Runtime(store=":memory:", sessions_supervisor_restarts=(3, 0))


def test_a_control_request_waits_until_the_restarted_session_is_ready() -> None:
    gate = Gate()
    with Runtime(store=":memory:", backends={"gated": GatedLocal}) as rt:
        session = rt.start_session(backend="gated", gate=gate)
        gate.hold = True
        _kill_session(rt, session.session_id).wait(5)
        assert gate.reached.wait(5)  # the restarted session is held at its handshake

        async def scenario() -> tuple[str, Any]:
            control = asyncio.ensure_future(session.asend_control("echo", {"n": 1}, timeout=10))
            await asyncio.sleep(0)  # the request is in the session's mailbox now
            during = await session.ahealth()  # answered after the request was handled
            gate.release.set()
            return during, await control

        during, answer = asyncio.run(scenario())

        # Sent before the handshake, the strict agent would have refused it.
        assert during == "initializing"
        assert answer == {"echo": {"n": 1}}


def test_a_query_held_by_the_restarted_session_times_out_on_time_and_is_never_sent() -> None:
    gate = Gate()
    with Runtime(store=":memory:", backends={"gated": GatedLocal}) as rt:
        session = rt.start_session(backend="gated", gate=gate)
        gate.hold = True
        _kill_session(rt, session.session_id).wait(5)
        assert gate.reached.wait(5)  # the restarted session is held at its handshake
        started = time.monotonic()
        with pytest.raises(QueryTimeout, match="its prompt was not sent"):
            session.query("held", timeout=0.5)
        # A bound on correctness, not speed: without its own timer it took 0.5 s + 5 s.
        assert time.monotonic() - started < 3.0
        assert session.health() == "initializing"
        gate.release.set()
        assert session.query("after", timeout=10)[-1].content == "after"
        prompts = [
            m.content
            for m in rt.get_session_messages(session.session_id)
            if m.type is MessageType.USER
        ]
        assert prompts == ["after"]


def test_a_stopped_session_is_not_found_and_leaves_no_index_entry(rt: Runtime) -> None:
    session = rt.start_session(backend="local")
    session.stop()
    with pytest.raises(SessionNotFound):
        session.query("gone")
    assert session.session_id not in rt.live_sessions()
    assert session.session_id not in rt._registry_call("live_sessions")


def test_a_failed_store_write_fails_the_caller_not_the_session(tmp_path: Path) -> None:
    with Runtime(store=tmp_path / "full.db") as rt:
        session = rt.start_session(backend="local")
        idle = rt.start_session(backend="local")
        session.query("before")
        with disk_full(rt):
            with pytest.raises(StoreError, match="could not be recorded"):
                session.query("while full")
            assert session.health() == "ready"
            assert idle.health() == "ready"  # idle sessions are not touched at all
        # The disk is back: the kept prompt and answer are written first, in order, once.
        session.query("after")
        kinds = [(m.type, m.content) for m in rt.get_session_messages(session.session_id)]
        for text in ("before", "while full", "after"):
            assert kinds.count((MessageType.USER, text)) == 1
            assert kinds.count((MessageType.ASSISTANT, text)) == 1
        users = [c for t, c in kinds if t is MessageType.USER]
        assert users == ["before", "while full", "after"]
        assert session.session_info()["incarnation"] == 1  # never crashed
        assert idle.query("fine")[-1].content == "fine"


def test_a_session_killed_while_it_starts_is_waited_for_by_start_session() -> None:
    """``start_session`` waits on the session's ``ready`` answer; a kill before it must
    hand over to the restarted incarnation, not fail the start or hang."""
    gate = Gate()
    gate.hold = True
    started: list[Any] = []
    with Runtime(store=":memory:", backends={"gated": GatedLocal}) as rt:
        starter = threading.Thread(
            target=lambda: started.append(
                rt.start_session(backend="gated", gate=gate, session_id="starting")
            )
        )
        starter.start()
        try:
            assert gate.reached.wait(5)  # held at its handshake: start_session is waiting
            gate.reached.clear()
            assert _state_after_start(rt, "starting") == "initializing"
            _kill_session(rt, "starting").wait(5)
            assert gate.reached.wait(5)  # the restarted incarnation reached its handshake
        finally:
            gate.release.set()
            starter.join(10)
        assert not starter.is_alive()
        (session,) = started
        assert session.health() == "ready"
        assert session.session_info()["incarnation"] == 2
        # Ready in a restarted incarnation, which indexes nothing itself: start_session did.
        assert "starting" in rt.live_sessions()
        assert session.query("after the kill")[-1].content == "after the kill"


def test_a_session_killed_while_it_starts_and_given_up_fails_the_start_at_once() -> None:
    gate = Gate()
    gate.hold = True
    outcome: list[BaseException] = []

    def start() -> None:
        try:
            rt.start_session(backend="gated", gate=gate, session_id="doomed", init_timeout=60)
        except BaseException as exc:
            outcome.append(exc)

    with Runtime(store=":memory:", backends={"gated": GatedLocal}, session_restarts=(0, 5.0)) as rt:
        starter = threading.Thread(target=start)
        starter.start()
        try:
            assert gate.reached.wait(5)
            assert _state_after_start(rt, "doomed") == "initializing"
            _kill_session(rt, "doomed").wait(5)
            starter.join(10)  # not the 60 s handshake timeout: the session is gone
            assert not starter.is_alive()
        finally:
            gate.release.set()
            starter.join(10)
        (error,) = outcome
        assert isinstance(error, SessionError)
        assert error.reason == "given_up"
