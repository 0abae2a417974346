"""Names, timers and tree introspection."""

from __future__ import annotations

import json
from typing import Any

import pytest

import supervisors as s
from tests.supervisors._kit import EventLog, Worker, crash_and_wait, worker_spec


def test_register_whereis_unregister() -> None:
    log = EventLog()
    ref = Worker.start(log, "w")
    s.register("svc", ref)
    assert s.whereis("svc") is ref
    other = Worker.start(log, "o")
    with pytest.raises(s.AlreadyRegistered, match="svc"):
        s.register("svc", other)
    assert s.unregister("svc") is True
    assert s.unregister("svc") is False
    assert s.whereis("svc") is None
    s.register("svc", other)
    other.stop()
    assert s.whereis("svc") is None  # released when the process ends
    assert "svc" not in s.registered()
    s.register("svc", ref)
    ref.stop()
    with pytest.raises(s.NoSuchProcess):
        s.register("late", ref)


def test_name_survives_restarts() -> None:
    log = EventLog()
    sup = s.Supervisor.start(children=[worker_spec(log, "w", name="named-worker")])
    first = s.whereis("named-worker")
    assert first is not None
    crash_and_wait(sup, first)
    second = s.whereis("named-worker")
    assert second is not None
    assert second is not first
    assert second.ask("ping", timeout=5) == "pong"
    sup.stop()
    assert s.whereis("named-worker") is None


def test_a_taken_name_fails_the_child_start() -> None:
    log = EventLog()
    squatter = Worker.start(log, "squatter")
    s.register("taken", squatter)
    with pytest.raises(s.StartChildError) as info:
        s.Supervisor.start(children=[worker_spec(log, "w", name="taken")])
    assert isinstance(info.value.reason, s.AlreadyRegistered)
    squatter.stop()


def test_timer_fires() -> None:
    log = EventLog()
    ref = Worker.start(log, "t")

    class Sink(s.Process):
        def on_receive(self, message: Any) -> Any:
            log.record(("tick", message))

    sink = Sink.start()
    timer = s.send_after(sink, "hello", 0.01)
    log.wait_for(lambda ev: ("tick", "hello") in ev)
    assert not timer.pending
    assert timer.cancel() is False
    sink.stop()
    ref.stop()


def test_cancelled_timer_never_fires() -> None:
    log = EventLog()

    class Sink(s.Process):
        def on_receive(self, message: Any) -> Any:
            log.record(message)

    sink = Sink.start()
    cancelled = s.send_after(sink, "cancelled", 0.02)
    s.send_after(sink, "later", 0.05)
    assert cancelled.cancel() is True
    log.wait_for(lambda ev: "later" in ev)
    assert log.snapshot() == ["later"]  # the earlier timer would have arrived first
    sink.stop()


def test_timer_to_dead_target_is_dropped_and_service_keeps_working() -> None:
    log = EventLog()

    class Sink(s.Process):
        def on_receive(self, message: Any) -> Any:
            log.record(message)

    dead = Sink.start()
    s.send_after(dead, "lost", 0.0)
    dead.stop()
    alive = Sink.start()
    s.send_after(alive, "kept", 0.01)
    log.wait_for(lambda ev: "kept" in ev)
    assert "lost" not in log.snapshot() or log.snapshot().index("lost") == 0
    alive.stop()


def test_a_timer_aimed_at_an_ended_process_is_cancelled_at_once() -> None:
    # E.g. armed by the process's own thread just before a kill from outside lands:
    # nothing would cancel it later, and it would keep the scheduler thread alive.
    class Sink(s.Process):
        pass

    ended = Sink.start()
    ended.stop()
    timer = s.send_after(ended, "lost", 60)
    assert not timer.pending
    assert timer.cancel() is False
    assert s.release_idle_timer_thread()


def test_timers_share_one_thread() -> None:
    import threading

    log = EventLog()

    class Sink(s.Process):
        def on_receive(self, message: Any) -> Any:
            log.record(message)

    sink = Sink.start()
    timers = [s.send_after(sink, i, 0.05) for i in range(20)]
    names = [t.name for t in threading.enumerate() if t.name == "supervisors-timers"]
    assert names == ["supervisors-timers"]
    log.wait_for(lambda ev: len(ev) == 20)
    assert sorted(log.snapshot()) == list(range(20))
    assert not any(t.pending for t in timers)
    sink.stop()


def test_tree_describes_the_live_hierarchy() -> None:
    log = EventLog()
    inner = s.supervisor_spec("inner", [worker_spec(log, "deep")])
    sup = s.Supervisor.start(children=[worker_spec(log, "a"), inner])
    a = {i.id: i.ref for i in sup.which_children()}["a"]
    crash_and_wait(sup, a)
    description = s.tree(sup)
    json.dumps(description)  # serialisable
    assert description["class"] == "Supervisor"
    assert description["alive"] is True
    kids = {c["id"]: c for c in description["children"]}
    assert kids["a"]["restarts"] == 1
    assert kids["a"]["class"] == "Worker"
    assert kids["inner"]["type"] == "supervisor"
    assert [c["id"] for c in kids["inner"]["children"]] == ["deep"]
    text = s.format_tree(description)
    assert "restarts=1" in text
    assert "└── " in text
    assert "deep Worker" in text
    sup.stop()
    assert s.tree(sup)["alive"] is False
