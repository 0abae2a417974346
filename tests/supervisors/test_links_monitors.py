"""Links (with and without trap_exit) and monitors (stackable, NoProc, demonitor)."""

from __future__ import annotations

import pykka

import supervisors as s
from tests.supervisors._kit import EventLog, Worker
from tests.supervisors.test_process import TrapExits


def test_abnormal_exit_propagates_through_a_link() -> None:
    log = EventLog()
    a, b = Worker.start(log, "a"), Worker.start(log, "b")
    s.link(a, b)
    mon_b = s.monitor(b, watcher=None)
    a.tell("crash")
    reason = mon_b.wait(5).reason
    assert isinstance(reason, s.Crashed)
    assert "a crashed" in str(reason.exception)
    assert ("stop", "b") in log.snapshot()  # a linked death is a clean stop for b


def test_exit_propagates_both_ways() -> None:
    log = EventLog()
    a, b = Worker.start(log, "a"), Worker.start(log, "b")
    s.link(a, b)
    mon_a = s.monitor(a, watcher=None)
    b.tell("crash")
    assert isinstance(mon_a.wait(5).reason, s.Crashed)


def test_normal_exit_does_not_kill_linked_process() -> None:
    log = EventLog()
    a, b = Worker.start(log, "a"), Worker.start(log, "b")
    s.link(a, b)
    a.stop()
    assert b.ask("ping", timeout=5) == "pong"
    b.stop()


def test_trap_exit_turns_signals_into_messages() -> None:
    log = EventLog()
    trapper = TrapExits.start(log)
    a, b = Worker.start(log, "a"), Worker.start(log, "b")
    s.link(trapper, a)
    s.link(trapper, b)
    a.tell("crash")
    b.stop()
    log.wait_for(lambda ev: sum(1 for e in ev if e[0] == "exit") == 2)
    reasons = [e[1] for e in log.snapshot() if e[0] == "exit"]
    assert sum(isinstance(r, s.Crashed) for r in reasons) == 1
    assert s.Normal() in reasons
    assert trapper.is_alive()
    trapper.stop()


def test_links_beyond_the_few_kept_in_a_tuple_still_deliver_every_exit_once() -> None:
    # A process keeps its first links in a tuple and moves them to a set from the
    # ninth on (a supervisor's children): linking twice, unlinking and ending work
    # the same on both sides of that change.
    log = EventLog()
    trapper = TrapExits.start(log)
    workers = [Worker.start(log, f"w{i}") for i in range(12)]
    for worker in workers:
        s.link(trapper, worker)
        s.link(worker, trapper)  # again: still one link
    s.unlink(trapper, workers[0])
    s.unlink(trapper, workers[11])
    for worker in workers:
        worker.tell("crash")
    log.wait_for(lambda ev: sum(1 for e in ev if e[0] == "exit") == 10)
    for worker in workers:
        s.monitor(worker, watcher=None).wait(5)
    assert trapper.ask("ping", timeout=5) is None  # handled after every Exit
    exits = [e for e in log.snapshot() if e[0] == "exit"]
    assert len(exits) == 10
    assert all(isinstance(e[1], s.Crashed) for e in exits)
    trapper.stop()


def test_a_process_with_one_link_keeps_it_in_a_tuple() -> None:
    log = EventLog()
    a, b = Worker.start(log, "a"), Worker.start(log, "b")
    s.link(a, b)
    process = s.lookup(a)
    assert process is not None
    assert process._links == (b.actor_urn,)
    s.unlink(a, b)
    assert process._links == ()
    a.stop()
    b.stop()


def test_kill_propagates_as_killed_and_can_be_trapped() -> None:
    log = EventLog()
    trapper = TrapExits.start(log)
    victim = Worker.start(log, "v")
    s.link(trapper, victim)
    s.kill(victim)
    log.wait_for(lambda ev: ("exit", s.Killed()) in ev)
    trapper.stop()


def test_unlink_stops_propagation() -> None:
    log = EventLog()
    a, b = Worker.start(log, "a"), Worker.start(log, "b")
    s.link(a, b)
    s.unlink(b, a)
    mon = s.monitor(a, watcher=None)
    a.tell("crash")
    mon.wait(5)
    assert b.ask("ping", timeout=5) == "pong"
    b.stop()


def test_linking_to_a_dead_process_delivers_noproc() -> None:
    log = EventLog()
    dead = Worker.start(log, "dead")
    dead.stop()
    trapper = TrapExits.start(log)
    s.link(trapper, dead)
    log.wait_for(lambda ev: ("exit", s.NoProc()) in ev)
    victim = Worker.start(log, "victim")
    mon = s.monitor(victim, watcher=None)
    s.link(dead, victim)
    assert mon.wait(5).reason == s.NoProc()
    trapper.stop()


def test_monitors_stack_and_deliver_down_messages() -> None:
    log = EventLog()
    watcher = Worker.start(log, "watcher")
    target = Worker.start(log, "target")
    first = s.monitor(target, watcher=watcher)
    second = s.monitor(target, watcher=watcher)
    assert first != second
    assert first.id != second.id
    target.tell("crash")
    log.wait_for(lambda ev: sum(1 for e in ev if e[0] == "got") == 2)
    downs = [e[2] for e in log.snapshot() if e[0] == "got"]
    assert {d.ref.id for d in downs} == {first.id, second.id}
    assert all(d.urn == target.actor_urn and isinstance(d.reason, s.Crashed) for d in downs)
    watcher.stop()


def test_monitor_defaults_to_the_calling_process() -> None:
    log = EventLog()
    target = Worker.start(log, "target")

    class Watcher(s.Process):
        def on_receive(self, message: object) -> object:
            if message == "watch":
                s.monitor(target)
                return None
            log.record(("watcher_got", message))
            return None

    watcher = Watcher.start()
    watcher.ask("watch", timeout=5)
    target.stop()
    log.wait_for(lambda ev: any(e[0] == "watcher_got" for e in ev))
    down = next(e[1] for e in log.snapshot() if e[0] == "watcher_got")
    assert isinstance(down, s.Down)
    assert down.reason == s.Normal()
    watcher.stop()


def test_monitor_of_dead_process_is_immediate_noproc() -> None:
    log = EventLog()
    ref = Worker.start(log, "gone")
    ref.stop()
    seen: list[s.Down] = []
    mon = s.monitor(ref, watcher=seen.append)
    assert mon.down is not None
    assert mon.down.reason == s.NoProc()
    assert seen == [mon.down]
    assert s.monitor("no-such-name", watcher=None).wait(0).reason == s.NoProc()


def test_demonitor() -> None:
    log = EventLog()
    target = Worker.start(log, "t")
    seen: list[s.Down] = []
    mon = s.monitor(target, watcher=seen.append)
    assert s.demonitor(mon) is True
    assert s.demonitor(mon) is False
    target.stop()
    kept = s.monitor(target, watcher=None)  # now dead: NoProc
    assert kept.down is not None
    assert seen == []


def test_down_to_a_dead_watcher_is_dropped() -> None:
    log = EventLog()
    watcher, target = Worker.start(log, "w"), Worker.start(log, "t")
    mon = s.monitor(target, watcher=watcher)
    watcher.stop()
    target.stop()
    assert mon.wait(5).reason == s.Normal()
    assert not pykka.ActorRegistry.get_all()
