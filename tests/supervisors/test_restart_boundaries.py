"""Restart boundaries: names reserved while a child restarts, safe-to-repeat errors, budgets."""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest
from pykka._envelope import Envelope
from pykka._threading import ThreadingFuture

import supervisors as s
from tests.supervisors._kit import EventLog, Worker, crash_and_wait, worker_spec


class GatedWorker(Worker):
    """A worker whose restarts wait for ``gate`` in ``on_start`` (its first start does not)."""

    starts = 0

    def __init__(self, log: EventLog, wid: Any, gate: threading.Event) -> None:
        super().__init__(log, wid)
        self.gate = gate

    def on_start(self) -> None:
        type(self).starts += 1
        if type(self).starts > 1:
            self.log.record(("restarting", self.wid))
            assert self.gate.wait(10)
        super().on_start()


class Deferring(s.Process):
    """Defers the reply to 'defer'; blocks on ('block', entered, release)."""

    def on_receive(self, message: Any) -> Any:
        if message == "defer":
            self.defer_reply()
            return None
        if isinstance(message, tuple) and message[0] == "block":
            message[1].set()
            message[2].wait()
            return "unblocked"
        return message


def _await_in_thread(name: Any, timeout: float) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(s.await_name(name, timeout))
        except BaseException as exc:  # the test inspects it
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


class SlowStart(Worker):
    """A worker whose every start waits for ``gate`` (so its supervisor is busy meanwhile)."""

    def __init__(self, log: EventLog, wid: Any, gate: threading.Event) -> None:
        super().__init__(log, wid)
        self.gate = gate

    def on_start(self) -> None:
        self.log.record(("starting", self.wid))
        assert self.gate.wait(10)
        super().on_start()


def _busy_supervisor(
    log: EventLog, name: Any
) -> tuple[s.DynamicSupervisorRef, pykka.ActorRef[Any], threading.Event, pykka.Future[Any]]:
    """A dynamic supervisor with a named child, then kept busy starting a slow child.

    While it is busy, an exit of the named child waits in its mailbox: the
    old incarnation is gone and the supervisor has not decided yet.
    """
    sup = s.DynamicSupervisor.start()
    ref = sup.start_child(worker_spec(log, "named", name=name), timeout=5)
    gate = threading.Event()
    slow = s.ChildSpec("slow", (SlowStart, (log, "slow", gate), {}))
    pending = sup.ask(_start_call(slow), block=False)
    log.wait_for(lambda events: ("starting", "slow") in events)
    return sup, ref, gate, pending


def _start_call(spec: s.ChildSpec) -> Any:
    from pykka.messages import ProxyCall

    return ProxyCall(("_api_start_child",), (spec,), {})


def _crash(ref: pykka.ActorRef[Any]) -> None:
    mon = s.monitor(ref, watcher=None)
    ref.tell("crash")
    mon.wait(5)


def test_await_name_waits_while_the_supervisor_restarts_the_child() -> None:
    log = EventLog()
    sup, first, gate, pending = _busy_supervisor(log, "gated")
    _crash(first)
    # The old incarnation is gone and the supervisor has not handled its exit yet: the
    # name is reserved, not free (a restart is not a disappearance).
    assert s.whereis("gated") is None
    assert s.reserved("gated")
    thread, out = _await_in_thread("gated", 10)
    assert not out
    gate.set()
    pending.get(timeout=10)
    thread.join(10)
    assert out
    assert isinstance(out[0], pykka.ActorRef)
    assert out[0] is not first
    assert out[0].ask("ping", timeout=5) == "pong"
    assert not s.reserved("gated")
    sup.stop()
    assert s.await_name("gated", 1) is None


def test_await_name_times_out_while_still_restarting() -> None:
    log = EventLog()
    sup, first, gate, pending = _busy_supervisor(log, "gated-slow")
    _crash(first)
    with pytest.raises(s.WaitTimeout, match="gated-slow"):
        s.await_name("gated-slow", 0.05)
    gate.set()
    pending.get(timeout=10)
    assert s.await_name("gated-slow", 10) is not None
    sup.stop()


@pytest.mark.parametrize("restart", ["temporary", "transient"])
def test_a_child_that_will_not_restart_frees_its_name(restart: str) -> None:
    log = EventLog()
    sup = s.Supervisor.start(children=[worker_spec(log, "w", name="once", restart=restart)])
    ref = s.whereis("once")
    assert ref is not None
    crash_and_wait(sup, ref, how="crash" if restart == "temporary" else "stop")
    assert not s.reserved("once")
    assert s.await_name("once", 5) is None
    sup.stop()


def test_terminate_child_frees_the_name_at_once() -> None:
    log = EventLog()
    sup = s.Supervisor.start(children=[worker_spec(log, "w", name="term")])
    sup.terminate_child("w", timeout=5)
    assert not s.reserved("term")
    assert s.await_name("term", 5) is None
    assert s.whereis("term") is None
    sup.restart_child("w", timeout=5)
    assert s.await_name("term", 5) is not None
    sup.stop()


def test_a_dead_keeper_releases_what_it_held_reserved() -> None:
    log = EventLog()
    sup, first, gate, _pending = _busy_supervisor(log, "orphaned")
    _crash(first)
    assert s.reserved("orphaned")
    thread, out = _await_in_thread("orphaned", 10)
    s.kill(sup)  # the keeper dies before it decided: the name is free, waiters answered
    thread.join(10)
    assert out == [None]
    assert not s.reserved("orphaned")
    gate.set()
    for ref in pykka.ActorRegistry.get_all():
        if ref.actor_class is SlowStart:
            s.monitor(ref, watcher=None).wait(10)


def test_register_refuses_a_name_reserved_by_a_restarting_supervisor() -> None:
    log = EventLog()
    sup, first, gate, pending = _busy_supervisor(log, "held")
    _crash(first)
    squatter = Worker.start(log, "squatter")
    with pytest.raises(s.AlreadyRegistered, match="restarting"):
        s.register("held", squatter)
    gate.set()
    pending.get(timeout=10)
    assert s.await_name("held", 10) is not None
    squatter.stop()
    sup.stop()


def test_one_for_all_keeps_the_siblings_names_reserved_during_the_group_restart() -> None:
    log = EventLog()
    gate = threading.Event()
    GatedWorker.starts = 0
    sup = s.Supervisor.start(
        children=[
            worker_spec(log, "a", name="sib-a"),
            s.ChildSpec("g", (GatedWorker, (log, "g", gate), {}), name="sib-g"),
            worker_spec(log, "b", name="sib-b"),
        ],
        strategy="one_for_all",
    )
    a = s.whereis("sib-a")
    assert a is not None
    a.tell("crash")
    # b was stopped for the group restart and comes back after g, which is blocked.
    log.wait_for(lambda events: ("restarting", "g") in events)
    assert s.whereis("sib-b") is None
    assert s.reserved("sib-b")
    thread, out = _await_in_thread("sib-b", 10)
    gate.set()
    thread.join(10)
    assert out
    assert isinstance(out[0], pykka.ActorRef)
    assert out[0].ask("ping", timeout=5) == "pong"
    sup.stop()


def test_queued_messages_of_a_dead_process_are_not_handled_and_safe_to_resend() -> None:
    entered, release = threading.Event(), threading.Event()
    ref = Deferring.start()
    busy = ref.ask(("block", entered, release), block=False)
    assert entered.wait(5)
    queued = ref.ask("queued", block=False)
    s.kill(ref)
    release.set()
    with pytest.raises(s.NoReply) as running:
        busy.get(timeout=5)
    assert running.value.handler_returned is False
    with pytest.raises(s.NotHandled):
        queued.get(timeout=5)
    late = ThreadingFuture[Any]()
    ref.actor_inbox.put(Envelope("late", reply_to=late))  # a put after the end
    with pytest.raises(s.NotHandled):
        late.get(timeout=5)


def test_a_deferred_reply_lost_with_its_process_says_the_handler_ran() -> None:
    ref = Deferring.start()
    pending = ref.ask("defer", block=False)
    assert ref.ask("sync", timeout=5) == "sync"  # 'defer' was handled before this
    s.kill(ref)
    with pytest.raises(s.NoReply) as info:
        pending.get(timeout=5)
    assert info.value.handler_returned is True
    assert isinstance(info.value, pykka.ActorDeadError)  # old except clauses still catch it


def test_a_child_that_spends_its_own_budget_is_given_up_alone() -> None:
    log = EventLog()
    given_up: list[tuple[Any, s.ExitReason]] = []
    done = threading.Event()

    def on_give_up(child_id: Any, spec: s.ChildSpec, reason: s.ExitReason) -> None:
        given_up.append((child_id, reason))
        done.set()

    sup = s.DynamicSupervisor.start(max_restarts=None, on_give_up=on_give_up)
    healthy = sup.start_child(worker_spec(log, "healthy", name="healthy"))
    sup.start_child(worker_spec(log, "looper", name="looper", max_restarts=2, max_seconds=60.0))
    for _ in range(3):
        ref = s.await_name("looper", 5)
        assert ref is not None
        crash_and_wait(sup, ref)
    assert done.wait(5)
    assert len(given_up) == 1
    assert isinstance(given_up[0][1], s.Crashed)
    assert s.await_name("looper", 5) is None  # given up: its name is free, not reserved
    assert healthy.ask("ping", timeout=5) == "pong"
    assert sup.count_children(timeout=5)["active"] == 1
    assert log.count(("start", "looper")) == 3
    sup.stop()


def test_a_static_supervisor_keeps_a_given_up_childs_spec_for_restart_child() -> None:
    log = EventLog()
    sup = s.Supervisor.start(
        children=[
            worker_spec(log, "other"),
            worker_spec(log, "looper", name="static-looper", max_restarts=0),
        ]
    )
    ref = s.whereis("static-looper")
    assert ref is not None
    crash_and_wait(sup, ref)
    rows = {row.id: row for row in sup.which_children(timeout=5)}
    assert rows["looper"].ref is None
    assert rows["other"].ref is not None
    assert s.await_name("static-looper", 1) is None
    sup.restart_child("looper", timeout=5)
    assert s.await_name("static-looper", 5) is not None
    sup.stop()


def test_no_supervisor_wide_limit_survives_a_burst_of_independent_crashes() -> None:
    log = EventLog()
    sup = s.DynamicSupervisor.start(max_restarts=None)
    refs = [sup.start_child(worker_spec(log, i, name=("burst", i))) for i in range(20)]
    for i, ref in enumerate(refs):
        crash_and_wait(sup, ref)
        new = s.await_name(("burst", i), 5)
        assert new is not None
    assert sup.is_alive()
    assert sup.count_children(timeout=5)["active"] == 20
    sup.stop()


def test_budget_settings_are_validated() -> None:
    log = EventLog()
    with pytest.raises(s.InvalidChildSpec, match="max_restarts"):
        worker_spec(log, "w", max_restarts=-1)
    with pytest.raises(s.InvalidChildSpec, match="max_seconds"):
        worker_spec(log, "w", max_restarts=1, max_seconds=0)
    with pytest.raises(s.InvalidChildSpec, match="on_give_up"):
        s.DynamicSupervisor.start(on_give_up="nope")


def test_await_name_waits_through_the_end_of_a_crashed_named_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Between "dead" (is_alive() False) and the release of its names, a crashed child's
    # name is still registered to its dead ref and not reserved yet: that is not "nothing
    # will come back" (a session handle then said SessionNotFound mid-restart).
    from supervisors import _names

    log = EventLog()
    sup = s.Supervisor.start(children=[worker_spec(log, "w", name="ending")])
    first = s.whereis("ending")
    assert first is not None
    dead, release = threading.Event(), threading.Event()
    original = _names.release_process

    def held_open(urn: str) -> None:
        if urn == first.actor_urn:
            dead.set()
            release.wait(10)
        original(urn)

    monkeypatch.setattr(_names, "release_process", held_open)
    try:
        first.tell("crash")
        assert dead.wait(5)  # dead, its name not released yet
        assert not first.is_alive()
        timer = threading.Timer(0.2, release.set)  # lets the teardown go on, later
        timer.start()
        ref = s.await_name("ending", 10)
        timer.join()
        assert ref is not None
        assert ref is not first
        assert ref.ask("ping", timeout=5) == "pong"
    finally:
        release.set()
        sup.stop()
