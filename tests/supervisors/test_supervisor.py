"""Supervisor: strategies, restart types, intensity and escalation, order, API."""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest

import supervisors as s
from tests.supervisors._kit import (
    EventLog,
    Worker,
    crash_and_wait,
    start_spinning,
    worker_spec,
)


def refs_by_id(sup: s.SupervisorRef) -> dict[Any, Any]:
    return {info.id: info.ref for info in sup.which_children(timeout=5)}


def test_children_start_in_order_and_stop_in_reverse() -> None:
    log = EventLog()
    sup = s.Supervisor.start(children=[worker_spec(log, w) for w in "abc"])
    assert log.snapshot() == [("start", "a"), ("start", "b"), ("start", "c")]
    sup.stop()
    assert log.snapshot()[3:] == [("stop", "c"), ("stop", "b"), ("stop", "a")]


def test_failed_start_unwinds_started_children() -> None:
    log = EventLog()
    specs = [worker_spec(log, "a"), worker_spec(log, "b", fail_start=True), worker_spec(log, "c")]
    with pytest.raises(s.StartChildError) as info:
        s.Supervisor.start(children=specs)
    assert info.value.child_id == "b"
    assert isinstance(info.value.reason, RuntimeError)
    assert log.snapshot() == [("start", "a"), ("failure", "b"), ("stop", "a")]


def test_one_for_one_restarts_only_the_failed_child() -> None:
    log = EventLog()
    sup = s.Supervisor.start(children=[worker_spec(log, w) for w in "abc"])
    before = refs_by_id(sup)
    crash_and_wait(sup, before["b"])
    after = refs_by_id(sup)
    assert after["a"] is before["a"]
    assert after["c"] is before["c"]
    assert after["b"] is not before["b"]
    assert after["b"].ask("ping", timeout=5) == "pong"
    assert {i.id: i.restarts for i in sup.which_children()} == {"a": 0, "b": 1, "c": 0}
    sup.stop()


def test_one_for_all_restarts_everyone_in_order() -> None:
    log = EventLog()
    sup = s.Supervisor.start(children=[worker_spec(log, w) for w in "abc"], strategy="one_for_all")
    before = refs_by_id(sup)
    crash_and_wait(sup, before["b"])
    after = refs_by_id(sup)
    assert all(after[w] is not before[w] for w in "abc")
    events = log.snapshot()[3:]
    assert events == [
        ("failure", "b"),
        ("stop", "c"),
        ("stop", "a"),
        ("start", "a"),
        ("start", "b"),
        ("start", "c"),
    ]
    sup.stop()


def test_rest_for_one_restarts_the_failed_child_and_those_after_it() -> None:
    log = EventLog()
    sup = s.Supervisor.start(
        children=[worker_spec(log, w) for w in "abcd"], strategy="rest_for_one"
    )
    before = refs_by_id(sup)
    crash_and_wait(sup, before["b"])
    after = refs_by_id(sup)
    assert after["a"] is before["a"]
    assert all(after[w] is not before[w] for w in "bcd")
    assert log.snapshot()[4:] == [
        ("failure", "b"),
        ("stop", "d"),
        ("stop", "c"),
        ("start", "b"),
        ("start", "c"),
        ("start", "d"),
    ]
    sup.stop()


@pytest.mark.parametrize(
    ("restart", "how", "restarted", "kept"),
    [
        ("permanent", "crash", True, True),
        ("permanent", "normal", True, True),
        ("transient", "crash", True, True),
        ("transient", "normal", False, True),
        ("temporary", "crash", False, False),
        ("temporary", "normal", False, False),
    ],
)
def test_restart_types(restart: str, how: str, restarted: bool, kept: bool) -> None:
    log = EventLog()
    sup = s.Supervisor.start(children=[worker_spec(log, "w", restart=restart)])
    old = refs_by_id(sup)["w"]
    crash_and_wait(sup, old, how)
    children = refs_by_id(sup)
    assert ("w" in children) is kept
    if restarted:
        assert children["w"] is not None
        assert children["w"] is not old
    elif kept:
        assert children["w"] is None
    sup.stop()


def test_temporary_child_is_not_restarted_when_a_sibling_takes_it_down() -> None:
    log = EventLog()
    sup = s.Supervisor.start(
        children=[worker_spec(log, "a"), worker_spec(log, "tmp", restart="temporary")],
        strategy="one_for_all",
    )
    crash_and_wait(sup, refs_by_id(sup)["a"])
    assert list(refs_by_id(sup)) == ["a"]
    assert log.count(("start", "tmp")) == 1
    sup.stop()


def test_intensity_exceeded_shuts_everything_down_with_shutdown() -> None:
    log = EventLog()
    sup = s.Supervisor.start(
        children=[worker_spec(log, "a"), worker_spec(log, "b")], max_restarts=2, max_seconds=60
    )
    mon = s.monitor(sup, watcher=None)
    for _ in range(2):
        crash_and_wait(sup, refs_by_id(sup)["a"])
    victim = refs_by_id(sup)["a"]
    victim.tell("crash")  # the third restart within the window is one too many
    assert mon.wait(5).reason == s.Shutdown()
    assert ("stop", "b") in log.snapshot()
    assert not pykka.ActorRegistry.get_all()


def test_max_restarts_zero_gives_up_on_first_failure() -> None:
    log = EventLog()
    sup = s.Supervisor.start(children=[worker_spec(log, "a")], max_restarts=0)
    mon = s.monitor(sup, watcher=None)
    refs_by_id(sup)["a"].tell("crash")
    assert mon.wait(5).reason == s.Shutdown()


def test_escalation_through_two_levels() -> None:
    log = EventLog()
    inner = s.supervisor_spec("inner", [worker_spec(log, "w")], max_restarts=0)
    middle = s.supervisor_spec("middle", [inner], max_restarts=1, max_seconds=60)
    top = s.Supervisor.start(children=[middle, worker_spec(log, "bystander")], max_restarts=0)
    top_mon = s.monitor(top, watcher=None)

    def worker_ref() -> Any:
        mid = refs_by_id(top)["middle"]
        inn = {i.id: i.ref for i in mid.which_children(timeout=5)}["inner"]
        return {i.id: i.ref for i in inn.which_children(timeout=5)}["w"]

    # First crash: inner gives up (max 0) -> middle restarts inner (1 allowed).
    first = worker_ref()
    mon = s.monitor(first, watcher=None)
    first.tell("crash")
    mon.wait(5)
    log.wait_for(lambda ev: ev.count(("start", "w")) == 2)
    # Second crash: inner gives up again -> middle exceeds -> top (max 0) gives up.
    worker_ref().tell("crash")
    assert top_mon.wait(5).reason == s.Shutdown()
    assert ("stop", "bystander") in log.snapshot()
    assert not pykka.ActorRegistry.get_all()


def test_restart_failure_retries_until_intensity_gives_up() -> None:
    log = EventLog()
    attempts = {"n": 0}

    def start() -> Any:
        attempts["n"] += 1
        return Worker.start(log, "flaky", fail_start=attempts["n"] > 1)

    sup = s.Supervisor.start(children=[s.ChildSpec("flaky", start)], max_restarts=3)
    mon = s.monitor(sup, watcher=None)
    refs_by_id(sup)["flaky"].tell("crash")
    assert mon.wait(5).reason == s.Shutdown()
    assert attempts["n"] == 4  # the first start, then three failed restarts


def test_brutal_kill_of_a_child_stuck_in_a_handler() -> None:
    log = EventLog()
    sup = s.Supervisor.start(children=[worker_spec(log, "stuck", shutdown="brutal_kill")])
    ref = refs_by_id(sup)["stuck"]
    process = s.lookup(ref)
    start_spinning(ref)
    mon = s.monitor(ref, watcher=None)
    sup.terminate_child("stuck", timeout=5)
    assert mon.wait(5).reason == s.Killed()
    assert process is not None
    # The interrupted handler let go of its thread: the worker runs other processes.
    other = Worker.start(log, "after")
    assert other.ask("ping", timeout=5) == "pong"
    other.stop()
    assert refs_by_id(sup) == {"stuck": None}
    sup.stop()


def test_shutdown_timeout_kills_a_child_that_does_not_stop() -> None:
    log = EventLog()
    sup = s.Supervisor.start(children=[worker_spec(log, "slow", shutdown=0.1)])
    ref = refs_by_id(sup)["slow"]
    start_spinning(ref)
    mon = s.monitor(ref, watcher=None)
    sup.stop()
    assert mon.wait(5).reason == s.Killed()


def test_infinity_shutdown_waits_for_the_handler_to_finish() -> None:
    log = EventLog()
    sup = s.Supervisor.start(children=[worker_spec(log, "patient", shutdown="infinity")])
    ref = refs_by_id(sup)["patient"]
    entered, release = threading.Event(), threading.Event()
    answer = ref.ask(("block", entered, release), block=False)
    assert entered.wait(5)
    stopper = threading.Thread(target=sup.stop)
    stopper.start()
    mon = s.monitor(ref, watcher=None)
    assert mon.down is None  # still running its handler
    release.set()
    assert answer.get(timeout=5) == "unblocked"
    assert mon.wait(5).reason == s.Shutdown()
    stopper.join(5)


def test_api_start_terminate_restart_delete() -> None:
    log = EventLog()
    sup = s.Supervisor.start(children=[worker_spec(log, "a")])
    ref = sup.start_child(worker_spec(log, "b"))
    assert ref.ask("ping", timeout=5) == "pong"
    with pytest.raises(s.DuplicateChild):
        sup.start_child(worker_spec(log, "b"))
    with pytest.raises(s.StartChildError):
        sup.start_child(worker_spec(log, "c", fail_start=True))
    assert [i.id for i in sup.which_children()] == ["a", "b"]
    assert sup.count_children() == {"specs": 2, "active": 2, "supervisors": 0, "workers": 2}
    with pytest.raises(s.ChildRunning):
        sup.delete_child("b")
    with pytest.raises(s.ChildRunning):
        sup.restart_child("b")
    sup.terminate_child("b")
    assert refs_by_id(sup)["b"] is None
    assert sup.count_children()["active"] == 1
    again = sup.restart_child("b")
    assert again.ask("ping", timeout=5) == "pong"
    sup.terminate_child("b")
    sup.delete_child("b")
    for call in (sup.terminate_child, sup.restart_child, sup.delete_child):
        with pytest.raises(s.ChildNotFound):
            call("nope")
    sup.stop()


def test_invalid_configuration_is_a_clear_error() -> None:
    with pytest.raises(s.InvalidChildSpec, match="strategy"):
        s.Supervisor.start(strategy="one_for_some")
    with pytest.raises(s.InvalidChildSpec, match="restart"):
        s.ChildSpec("x", lambda: None, restart="sometimes")
    with pytest.raises(s.InvalidChildSpec, match="shutdown"):
        s.ChildSpec("x", lambda: None, shutdown=-1)
    with pytest.raises(s.InvalidChildSpec, match="start"):
        s.ChildSpec("x", 42)  # type: ignore[arg-type]
    with pytest.raises(s.DuplicateChild):
        s.Supervisor.start(children=[s.ChildSpec("x", lambda: None)] * 2)
    with pytest.raises(s.StartChildError) as info:
        s.Supervisor.start(children=[s.ChildSpec("x", lambda: "not a ref")])
    assert isinstance(info.value.reason, s.InvalidChildSpec)


def test_shutdown_defaults_depend_on_child_type() -> None:
    assert s.ChildSpec("w", lambda: None).shutdown == 5.0
    assert s.ChildSpec("s", lambda: None, type="supervisor").shutdown == "infinity"


def test_child_killed_when_supervisor_is_killed() -> None:
    log = EventLog()
    inner = s.supervisor_spec("inner", [worker_spec(log, "deep")])
    sup = s.Supervisor.start(children=[worker_spec(log, "a"), inner])
    a = refs_by_id(sup)["a"]
    inner_ref = refs_by_id(sup)["inner"]
    deep = {i.id: i.ref for i in inner_ref.which_children(timeout=5)}["deep"]
    monitors = [s.monitor(r, watcher=None) for r in (a, inner_ref, deep)]
    s.kill(sup)
    reasons = [m.wait(5).reason for m in monitors]
    assert reasons[0] == s.Killed()  # linked worker dies with the supervisor's reason
    assert reasons[1] == s.Killed()  # the nested supervisor follows its parent
    assert reasons[2] == s.Shutdown()  # and shuts its own children down cleanly
