"""Hibernation on the local backend: an idle session drops its agent and resumes on demand.

Waiting is on the session's own log events (``session_hibernated``,
``hibernation_deferred``...) or on its state through calls, never on a sleep.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs
import pytest

import supervisors
from beamagent import Message, MessageType, Runtime
from beamagent.backends.base import HandlerOutput, OffThreadCall
from beamagent.backends.local import LocalHandler
from beamagent.errors import (
    InvalidOption,
    NoActiveQuery,
    QueryComplete,
    QueryTimeout,
    TransportError,
)
from tests._events import LogEvents, until_hibernating
from tests.session._gated import Gate, GatedLocal

IDLE = 0.1
WAIT = 10.0


@pytest.fixture
def events() -> Iterator[LogEvents]:
    with LogEvents() as collected:
        yield collected


@pytest.fixture
def rt() -> Iterator[Runtime]:
    with Runtime(store=":memory:", backends={"local": True, "gated": GatedLocal}) as runtime:
        yield runtime


def user_prompts(rt: Runtime, session_id: str) -> list[Any]:
    """The prompts in the session's stored history, in order."""
    return [m.content for m in rt.get_session_messages(session_id) if m.type is MessageType.USER]


class AskingLocal(LocalHandler):
    """``local`` whose first answer leaves a user callback (option ``ask``) pending.

    Like a permission request still awaiting the user when the turn is over.
    """

    asked = False

    @classmethod
    def option_names(cls) -> frozenset[str]:
        return super().option_names() | {"ask"}

    def handle_messages(self, messages: Sequence[Message]) -> HandlerOutput:
        output = super().handle_messages(messages)
        if not self.asked and any(m.type is MessageType.RESULT for m in output.messages):
            self.asked = True
            output = attrs.evolve(output, calls=[OffThreadCall("ask", self.options["ask"])])
        return output


class Sleepless(LocalHandler):
    """A backend that does not say it can resume its conversation in a new handler."""

    hibernates = False


def test_an_idle_session_hibernates_and_a_query_resumes_it(rt: Runtime, events: LogEvents) -> None:
    # The JSONL codec keeps each message's wire dict, which names the agent's session.
    session = rt.start_session(backend="local", idle_timeout=IDLE, codec="jsonl")
    first = session.query("before")
    native = session.session_info()["native_session_id"]
    created = rt.get_session(session.session_id).created_at

    until_hibernating(events, session)

    assert session.health() == "hibernating"
    info = session.session_info()
    assert info["state"] == "hibernating"
    assert info["native_session_id"] == native
    assert (info["model"], info["adapter_module"]) == ("local-echo", "beamagent.backends.local")
    assert info["hibernations"] == 1
    assert "transport" not in info  # nothing of the dropped agent's transport
    second = session.query("after")
    assert second[-1].content == "after"
    assert session.health() == "ready"
    info = session.session_info()
    assert (info["native_session_id"], info["incarnation"]) == (native, 1)  # not a restart
    assert all(m.raw is not None and m.raw["session_id"] == native for m in second)
    # A new agent answered: it counts its turns from one again.
    assert (first[-1].num_turns, second[-1].num_turns) == (1, 1)
    events.wait("session_woke", WAIT, session_id=session.session_id)
    # The history goes on under the same canonical id, in one stored session.
    [record] = rt.list_sessions()
    assert (record.session_id, record.created_at) == (session.session_id, created)
    assert record.native_session_id == native
    history = rt.get_session_messages(session.session_id)
    assert [(m.type, m.content) for m in history if m.type is MessageType.USER] == [
        (MessageType.USER, "before"),
        (MessageType.USER, "after"),
    ]
    assert len(history) == len(first) + len(second) + 2
    # Routing still sees the session, on its backend.
    assert session.session_id in rt.live_sessions()
    assert rt._registry_call("live_sessions")[session.session_id] == "local"
    # And it hibernates again when idle again.
    until_hibernating(events, session)
    assert session.session_info()["hibernations"] == 2


def test_reads_settings_and_interrupts_do_not_wake_it(rt: Runtime, events: LogEvents) -> None:
    session = rt.start_session(backend="local", idle_timeout=IDLE)
    ref = session.send_query("kept")
    kept = [session.receive_message(ref, timeout=WAIT) for _ in range(2)]  # one left unread
    until_hibernating(events, session)
    wakes = len(events.matching("session_waking", session_id=session.session_id))

    assert session.session_info()["state"] == "hibernating"
    assert session.supported_models()[0]["value"] == "local-echo"
    assert session.account_info()["provider"] == "local"
    assert session.server_health()["healthy"] is True
    # The unread message of the earlier query was kept with the mailbox.
    rest = session.receive_message(ref, timeout=WAIT)
    assert [m.type for m in [*kept, rest]] == [
        MessageType.SYSTEM,
        MessageType.ASSISTANT,
        MessageType.RESULT,
    ]
    with pytest.raises(QueryComplete):
        session.receive_message(ref, timeout=WAIT)
    with pytest.raises(NoActiveQuery):
        session.interrupt()
    with pytest.raises(NoActiveQuery):
        session.abort()
    # Settings are kept for the woken agent; universal controls answer at once.
    assert session.set_model("local-large") == "local-large"
    assert session.set_permission_mode("plan") == "plan"
    assert session.send_control("setMaxThinkingTokens", {"max_thinking_tokens": 9}) == {
        "max_thinking_tokens": 9
    }
    assert session.send_control("stopTask") == {"stopped": False}
    info = session.session_info()
    assert (info["state"], info["model"], info["permission_mode"]) == (
        "hibernating",
        "local-large",
        "plan",
    )
    assert len(events.matching("session_waking", session_id=session.session_id)) == wakes

    init = session.query("woken")[0]

    assert init.system_info is not None
    assert (init.system_info["model"], init.system_info["permission_mode"]) == (
        "local-large",
        "plan",
    )
    assert rt.get_session(session.session_id).model == "local-large"


def test_a_native_control_wakes_it_and_is_answered(rt: Runtime, events: LogEvents) -> None:
    session = rt.start_session(backend="local", idle_timeout=IDLE)
    until_hibernating(events, session)

    assert session.send_control("echo", {"x": 1}, timeout=WAIT) == {"echo": {"x": 1}}

    assert session.health() == "ready"
    assert events.matching("session_woke", session_id=session.session_id)


def test_calls_made_during_the_wake_up_are_postponed_and_answered(
    rt: Runtime, events: LogEvents
) -> None:
    gate = Gate()
    session = rt.start_session(backend="gated", gate=gate, idle_timeout=IDLE)
    until_hibernating(events, session)
    gate.hold = True

    async def scenario() -> tuple[Any, ...]:
        first = asyncio.ensure_future(session.aquery("first", timeout=WAIT))
        second = asyncio.ensure_future(session.aquery("second", timeout=WAIT))
        control = asyncio.ensure_future(session.asend_control("echo", {"n": 3}, timeout=WAIT))
        await asyncio.sleep(0)  # each call is in the session's mailbox now
        # Answered after the three calls were handled: the first one woke the session,
        # whose handshake the gate holds, so the others were postponed.
        during = await session.ahealth()
        assert await asyncio.to_thread(gate.reached.wait, WAIT)
        gate.release.set()
        return during, await first, await second, await control

    during, first, second, control = asyncio.run(scenario())

    assert during in ("connecting", "initializing")
    assert (first[-1].content, second[-1].content) == ("first", "second")
    assert control == {"echo": {"n": 3}}
    assert session.health() == "ready"
    woke = events.wait("session_woke", WAIT, session_id=session.session_id)
    assert woke["ms"] >= 0
    assert user_prompts(rt, session.session_id) == ["first", "second"]


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_query_postponed_by_the_wake_up_times_out_on_time_and_is_never_sent(
    rt: Runtime, events: LogEvents, api: str
) -> None:
    # The wake's handshake is held: the query waits, postponed. Its own timeout applies
    # from the call (not from when it would be sent, nor on the handle's longer bound),
    # and once the session is ready the backend never sees that prompt (at most once).
    gate = Gate()
    session = rt.start_session(backend="gated", gate=gate, idle_timeout=IDLE)
    session.query("before", timeout=WAIT)
    until_hibernating(events, session)
    gate.hold = True

    def held() -> Any:
        if api == "sync":
            return session.query("held", timeout=0.5)
        return asyncio.run(session.aquery("held", timeout=0.5))

    started = time.monotonic()
    with pytest.raises(QueryTimeout, match="its prompt was not sent"):
        held()
    elapsed = time.monotonic() - started
    # A bound on correctness, not speed: without the fix it is 0.5 s + the handle's 5 s.
    assert elapsed < 3.0
    assert gate.reached.wait(WAIT)
    assert session.health() in ("connecting", "initializing")
    gate.release.set()
    assert session.query("after", timeout=WAIT)[-1].content == "after"
    assert user_prompts(rt, session.session_id) == ["before", "after"]


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_control_request_postponed_by_the_wake_up_times_out_on_time(
    rt: Runtime, events: LogEvents, api: str
) -> None:
    # As a query: its timeout counts from the call, not from when it would be sent.
    gate = Gate()
    session = rt.start_session(backend="gated", gate=gate, idle_timeout=IDLE)
    until_hibernating(events, session)
    gate.hold = True

    def held() -> Any:
        if api == "sync":
            return session.send_control("echo", {"n": 1}, timeout=0.5)
        return asyncio.run(session.asend_control("echo", {"n": 1}, timeout=0.5))

    started = time.monotonic()
    with pytest.raises(QueryTimeout, match=r"control request 'echo'.*it was not sent"):
        held()
    elapsed = time.monotonic() - started
    # A bound on correctness, not speed: without the fix it is 0.5 s + the handle's 5 s.
    assert elapsed < 3.0
    assert gate.reached.wait(WAIT)
    gate.release.set()
    assert session.send_control("echo", {"n": 2}, timeout=WAIT) == {"echo": {"n": 2}}


def test_an_active_query_is_never_hibernated(rt: Runtime, events: LogEvents) -> None:
    release = threading.Event()

    def slow(prompt: str, params: Mapping[str, Any]) -> Iterator[str]:
        yield "started"
        release.wait(WAIT)
        yield "finished"

    session = rt.start_session(backend="local", reply=slow, idle_timeout=IDLE)
    ref = session.send_query("slow")

    events.wait("hibernation_deferred", WAIT, blocker="active_query")

    assert session.health() == "active_query"
    release.set()
    messages = []
    while not messages or messages[-1].type is not MessageType.RESULT:
        messages.append(session.receive_message(ref, timeout=WAIT))
    assert messages[-1].content == "startedfinished"
    until_hibernating(events, session)


def test_a_pending_callback_keeps_the_session_awake(events: LogEvents) -> None:
    entered, release = threading.Event(), threading.Event()

    def ask() -> None:
        entered.set()
        release.wait(WAIT)

    with Runtime(store=":memory:", backends={"asking": AskingLocal}) as rt:
        session = rt.start_session(backend="asking", ask=ask, idle_timeout=IDLE)
        assert session.query("ask me")[-1].content == "ask me"
        assert entered.wait(WAIT)
        deferred = len(events.matching("hibernation_deferred", blocker="callback"))

        events.wait("hibernation_deferred", WAIT, count=deferred + 1, blocker="callback")

        assert session.health() == "ready"
        release.set()
        until_hibernating(events, session)


def test_a_failed_wake_is_a_typed_error_and_the_supervisor_restarts_it(
    rt: Runtime, events: LogEvents
) -> None:
    gate = Gate()
    session = rt.start_session(backend="gated", gate=gate, idle_timeout=IDLE)
    until_hibernating(events, session)
    incarnation = supervisors.monitor(rt._session_ref(session.session_id), watcher=None)
    gate.fail_once = True

    with pytest.raises(TransportError) as failed:
        session.query("lost", timeout=WAIT)

    assert "could not resume its backend after hibernating" in str(failed.value)
    assert "exited with status 3" in str(failed.value)
    assert failed.value.delivered is False
    assert session.session_info()["state"] == "error"
    down = incarnation.wait(WAIT)
    assert isinstance(down.reason, supervisors.Crashed)  # the supervisor's policy applies
    messages = session.query("again", timeout=WAIT)
    assert messages[-1].content == "again"
    assert session.session_info()["incarnation"] == 2
    assert user_prompts(rt, session.session_id) == ["again"]  # the failed call reached none


def test_stopping_a_hibernating_session(rt: Runtime, events: LogEvents) -> None:
    session = rt.start_session(backend="local", idle_timeout=IDLE)
    until_hibernating(events, session)

    session.stop()

    assert session.health() == "unknown"
    assert session.session_id not in rt.live_sessions()


def test_without_idle_timeout_a_session_never_hibernates(rt: Runtime, events: LogEvents) -> None:
    session = rt.start_session(backend="local")
    session.query("x")

    assert session.session_info()["hibernations"] == 0
    assert events.matching("hibernation_deferred") == []  # no idle timer at all


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, True, "5", [1]])
def test_idle_timeout_is_validated(rt: Runtime, bad: Any) -> None:
    with pytest.raises(InvalidOption, match="idle_timeout") as info:
        rt.start_session(backend="local", session_id="never", idle_timeout=bad)
    assert "> 0, or None" in str(info.value)
    assert rt.live_sessions() == []
    with (
        Runtime(store=":memory:", session_defaults={"idle_timeout": bad}) as other,
        pytest.raises(InvalidOption, match="idle_timeout"),
    ):
        other.start_session(backend="local")


def test_idle_timeout_needs_a_backend_that_can_hibernate() -> None:
    with Runtime(store=":memory:", backends={"sleepless": Sleepless}) as rt:
        with pytest.raises(InvalidOption, match=r"idle_timeout.*cannot hibernate"):
            rt.start_session(backend="sleepless", idle_timeout=1.0)
        assert rt.start_session(backend="sleepless", idle_timeout=None).health() == "ready"
    with Runtime(store=":memory:", session_defaults={"idle_timeout": 30.0}) as rt:
        session = rt.start_session(backend="local")
        assert session.health() == "ready"
