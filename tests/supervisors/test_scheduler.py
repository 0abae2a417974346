"""The shared scheduler: processes on a pool of workers (M:N), managed blocking, kills."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pykka
import pytest

import supervisors as s
from supervisors._scheduler import SLICE, scheduler
from supervisors._scheduler import blocking as s_blocking
from tests._child import run_script
from tests.supervisors._kit import EventLog


class Echo(s.Process):
    def on_receive(self, message: Any) -> Any:
        return message


class Recorder(s.Process):
    """Keeps every message it gets, in order; answers 'dump' with them."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        if message == "dump":
            return list(self.seen)
        self.seen.append(message)
        return None


class Relay(s.Process):
    """Answers by asking the next process in a chain, and waiting for its answer."""

    def __init__(self, next_ref: pykka.ActorRef[Any] | None) -> None:
        super().__init__()
        self.next_ref = next_ref

    def on_receive(self, message: Any) -> Any:
        if self.next_ref is None:
            return message + 1
        return self.next_ref.ask(message, timeout=10) + 1


class Gate(s.Process):
    """Blocks its handler on a plain threading.Event: a wait nobody announced."""

    def __init__(self, event: threading.Event) -> None:
        super().__init__()
        self.event = event

    def on_receive(self, message: Any) -> Any:
        if message == "wait":
            return self.event.wait(10)
        return message


class Spinner(s.Process):
    def __init__(self, started: threading.Event) -> None:
        super().__init__()
        self.started = started

    def on_receive(self, message: Any) -> Any:
        self.started.set()
        while True:  # a handler stuck in Python code
            pass


def _stop_all(refs: list[pykka.ActorRef[Any]]) -> None:
    for ref in refs:
        ref.stop(block=False)
    for ref in refs:
        s.monitor(ref).wait(10)


def test_idle_processes_cost_no_thread() -> None:
    before = threading.active_count()
    refs = [Echo.start() for _ in range(2000)]
    try:
        assert refs[-1].ask("hi", timeout=5) == "hi"
        # The workers (core, maybe one added while starts waited) and the monitor: a
        # handful, whatever the number of processes.
        assert threading.active_count() - before <= scheduler.core + 4
    finally:
        _stop_all(refs)


def test_messages_are_handled_in_order_across_slices() -> None:
    ref = Recorder.start()
    try:
        for i in range(SLICE * 5 + 3):
            ref.tell(i)
        assert ref.ask("dump", timeout=5) == list(range(SLICE * 5 + 3))
    finally:
        _stop_all([ref])


def test_a_process_never_runs_on_two_workers_at_once() -> None:
    class Counter(s.Process):
        def __init__(self) -> None:
            super().__init__()
            self.inside = 0
            self.overlaps = 0
            self.count = 0

        def on_receive(self, message: Any) -> Any:
            if message == "result":
                return self.count, self.overlaps
            self.inside += 1
            if self.inside != 1:
                self.overlaps += 1
            self.count += 1
            self.inside -= 1
            return None

    ref = Counter.start()
    try:
        senders = [
            threading.Thread(target=lambda: [ref.tell(i) for i in range(500)]) for _ in range(8)
        ]
        for t in senders:
            t.start()
        for t in senders:
            t.join(10)
        assert ref.ask("result", timeout=10) == (4000, 0)
    finally:
        _stop_all([ref])


def test_a_chain_of_blocking_asks_longer_than_the_pool_never_deadlocks() -> None:
    # Every handler of the chain waits for the next one: with a fixed pool (of one
    # worker, or of scheduler.core) the first `core` handlers would hold every worker
    # and wait for processes that can never run. Managed blocking adds workers instead.
    length = scheduler.core * 4 + 1
    refs: list[pykka.ActorRef[Any]] = []
    nxt: pykka.ActorRef[Any] | None = None
    for _ in range(length):
        nxt = Relay.start(nxt)
        refs.append(nxt)
    try:
        assert refs[-1].ask(0, timeout=20) == length
        # Many chains at once, from many threads.
        results: list[int] = []
        lock = threading.Lock()

        def call() -> None:
            value = refs[-1].ask(0, timeout=20)
            with lock:
                results.append(value)

        callers = [threading.Thread(target=call) for _ in range(6)]
        for t in callers:
            t.start()
        for t in callers:
            t.join(30)
        assert results == [length] * 6
    finally:
        _stop_all(refs)


def test_waits_nobody_announced_do_not_starve_other_processes() -> None:
    event = threading.Event()
    gates = [Gate.start(event) for _ in range(scheduler.core + 2)]
    echo = Echo.start()
    try:
        waits = [g.ask("wait", block=False) for g in gates]
        # Every core worker may now be stuck in Event.wait; the monitor adds workers.
        assert echo.ask("still served", timeout=10) == "still served"
        event.set()
        assert [w.get(timeout=10) for w in waits] == [True] * len(gates)
    finally:
        event.set()
        _stop_all([*gates, echo])


def test_kill_interrupts_only_the_running_handler_and_the_worker_goes_on() -> None:
    started = threading.Event()
    spinner = Spinner.start(started)
    others = [Echo.start() for _ in range(scheduler.core * 3)]
    try:
        spinner.tell("spin")
        assert started.wait(5)
        mon = s.monitor(spinner)
        assert s.kill(spinner)
        assert mon.wait(5).reason == s.Killed()
        # Every worker still serves (none carries the kill into another process).
        for _ in range(3):
            assert [o.ask(i, timeout=5) for i, o in enumerate(others)] == list(range(len(others)))
    finally:
        _stop_all(others)


class Swallower(s.Process):
    """Catches the first kill, as a ``__del__`` or GC callback it lands in would, then computes."""

    def on_receive(self, message: Any) -> Any:
        started, swallowed, finished, left = message
        try:
            try:
                started.set()
                while True:
                    time.sleep(0.001)
            except BaseException:
                swallowed.set()  # CPython reports such an exception and ignores it
            deadline = time.monotonic() + 20.0
            while time.monotonic() < deadline:
                pass  # a handler going on with its work after the lost interrupt
            finished.set()
        finally:
            left.set()


def test_a_kill_whose_interrupt_was_swallowed_still_ends_the_handler() -> None:
    started, swallowed, finished, left = (threading.Event() for _ in range(4))
    victim = Swallower.start()
    victim.tell((started, swallowed, finished, left))
    assert started.wait(5)
    assert s.kill(victim)
    assert swallowed.wait(5)
    assert left.wait(5)  # interrupted again by the monitor, not after its 20 s of work
    assert not finished.is_set()


class ThreadStarter(s.Process):
    """Starts and joins short threads until it is killed; says when its handler left."""

    def on_receive(self, message: Any) -> Any:
        started, left = message
        try:
            started.set()
            while True:
                thread = threading.Thread(target=lambda: None)
                thread.start()
                thread.join()
        finally:
            left.set()


@pytest.mark.parametrize("dedicated", [False, True])
def test_a_kill_never_lands_in_a_thread_the_handler_is_starting(dedicated: bool) -> None:
    # On CPython 3.11 a thread being started carries its starter's thread id until it
    # runs, so an interrupt aimed at the starter by id also killed the newborn: it never
    # said it started, and the handler waited in Thread.start() forever. Without the
    # fix this hung within ~30 kills here.
    cls = type("Starter", (ThreadStarter,), {"dedicated_thread": dedicated})
    for round_ in range(150):
        ref = cls.start()
        started, left = threading.Event(), threading.Event()
        ref.tell((started, left))
        assert started.wait(5)
        if round_ % 3:
            time.sleep(0.0005 * (round_ % 5))  # kill at varied points of the loop
        mon = s.monitor(ref)
        assert s.kill(ref)
        assert mon.wait(5).reason == s.Killed()
        assert left.wait(5), f"round {round_}: the killed handler is stuck (in Thread.start?)"


def test_a_dedicated_process_has_a_thread_of_its_own() -> None:
    class Own(s.Process):
        dedicated_thread = True

        def on_receive(self, message: Any) -> Any:
            return threading.current_thread().name

    class Shared(s.Process):
        def on_receive(self, message: Any) -> Any:
            return threading.current_thread().name

    own, shared = Own.start(), Shared.start()
    try:
        assert own.ask("name", timeout=5).startswith("Own-")
        assert shared.ask("name", timeout=5).startswith("supervisors-worker-")
    finally:
        _stop_all([own, shared])


@pytest.mark.parametrize("dedicated", [False, True])
def test_a_killed_process_owner_stays_alive_until_its_handler_unwound(dedicated: bool) -> None:
    entered = threading.Event()
    unwind = threading.Event()
    owners: list[Any] = []

    class Holder(s.Process):
        dedicated_thread = dedicated

        def on_receive(self, message: Any) -> Any:
            owners.append(s.current_owner())
            entered.set()
            try:
                while True:  # stuck in Python code until killed
                    pass
            finally:
                unwind.wait(10)  # still unwinding: the owner must count as alive

    ref = Holder.start()
    try:
        ref.tell("hold")
        assert entered.wait(5)
        owner = owners[0]
        assert owner is s.lookup(ref)
        assert s.owner_alive(owner)
        thread = owner._thread
        s.kill(ref)
        s.monitor(ref).wait(5)
        assert s.owner_alive(owner)  # dead to the world, but its finally block still runs
        unwind.set()
        if dedicated:  # its thread ends with it
            thread.join(5)
            assert not s.owner_alive(owner)
        assert s.current_owner() is threading.current_thread()
    finally:
        unwind.set()


@pytest.mark.parametrize("dedicated", [False, True])
def test_users_pykka_style_actor_supervised_on_either_kind_of_thread(dedicated: bool) -> None:
    class Child(s.Process):
        dedicated_thread = dedicated

        def on_receive(self, message: Any) -> Any:
            if message == "crash":
                raise RuntimeError("boom")
            return "pong"

    name = f"sched-child-{dedicated}"
    sup = s.Supervisor.start([s.ChildSpec("child", (Child, (), {}), name=name)])
    try:
        first = s.whereis(name)
        assert first is not None
        assert first.ask("ping", timeout=5) == "pong"
        first.tell("crash")
        s.monitor(first).wait(5)
        second = s.await_name(name, timeout=5)
        assert second is not None
        assert second.ask("ping", timeout=5) == "pong"
    finally:
        sup.stop()


def test_pykka_registry_keeps_working_and_unregisters_in_constant_time() -> None:
    class Plain(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> Any:
            return message

    plain = Plain.start()
    ours = [Echo.start() for _ in range(3)]
    try:
        everyone = pykka.ActorRegistry.get_all()
        assert plain in everyone
        assert all(ref in everyone for ref in ours)
        assert pykka.ActorRegistry.get_by_class(Plain) == [plain]
        assert pykka.ActorRegistry.get_by_urn(ours[1].actor_urn) == ours[1]
        # Unregistering compares URNs, never calls ActorRef.__eq__ on every live actor.
        calls = 0
        original = pykka.ActorRef.__eq__

        def counting_eq(self: Any, other: Any) -> bool:
            nonlocal calls
            calls += 1
            return bool(original(self, other))

        pykka.ActorRef.__eq__ = counting_eq  # type: ignore[method-assign,assignment]
        try:
            ours[0].stop()
        finally:
            pykka.ActorRef.__eq__ = original  # type: ignore[method-assign]
        assert calls == 0
        assert ours[0] not in pykka.ActorRegistry.get_all()
    finally:
        plain.stop()
        _stop_all(ours[1:])


EXIT_SCRIPT = """
import sys, threading
import supervisors as s

class Shared(s.Process):
    def on_receive(self, message):
        if message == "spin":
            while True:  # still running when the interpreter exits
                pass
        return message

class Own(Shared):
    dedicated_thread = True

sup = s.Supervisor.start(
    [s.ChildSpec("a", (Shared, (), {}), name="a"), s.ChildSpec("b", (Own, (), {}), name="b")]
)
assert s.whereis("a").ask("hi") == "hi" and s.whereis("b").ask("hi") == "hi"
s.whereis("a").tell("spin")
s.whereis("b").tell("spin")
print("started", flush=True)
"""


def test_a_script_that_never_stops_its_processes_exits_at_once_and_silently() -> None:
    # As a user meets it: a tree nobody stopped, two handlers spinning (one on the pool,
    # one on a dedicated thread). Neither kind of thread may hold the interpreter's exit.
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "started\n"
    assert done.stderr == ""


def test_a_start_flag_set_twice_while_waiters_pass_through_never_fails() -> None:
    from supervisors._process import _Flag

    for _ in range(200):
        flag = _Flag()
        errors: list[BaseException] = []
        passed: list[bool] = []

        def wait(
            flag: _Flag = flag, passed: list[bool] = passed, errors: list[BaseException] = errors
        ) -> None:
            try:
                passed.append(flag.wait(5))
            except BaseException as exc:
                errors.append(exc)

        waiters = [threading.Thread(target=wait) for _ in range(3)]
        setters = [threading.Thread(target=flag.set) for _ in range(2)]
        for t in [*waiters, *setters]:
            t.start()
        for t in [*waiters, *setters]:
            t.join(5)
        assert errors == []
        assert passed == [True, True, True]
        assert flag.is_set()
        assert flag.wait(0)


def test_a_flag_makes_its_lock_only_for_a_waiter() -> None:
    from supervisors._process import _Flag

    never_waited = _Flag()
    never_waited.set()
    assert never_waited._lock is None
    assert never_waited.wait(0)

    flag = _Flag()
    assert not flag.wait(0.01)  # nothing sets it: the wait times out
    assert flag._lock is not None
    passed: list[bool] = []
    waiter = threading.Thread(target=lambda: passed.append(flag.wait(5)))
    waiter.start()
    flag.set()
    waiter.join(5)
    assert passed == [True]
    assert flag.wait(0)


class BlockedInside(s.Process):
    """Waits inside ``blocking()`` (an announced wait) until killed or released."""

    def __init__(self, started: threading.Event, release: threading.Event) -> None:
        super().__init__()
        self.started = started
        self.release = release

    def on_receive(self, message: Any) -> Any:
        with s_blocking():
            self.started.set()
            self.release.wait(10)
        return message


def _quiescent_counts_agree(timeout: float = 5.0) -> bool:
    """Once no work is left, every worker counts as idle and none as blocked."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers, idle, blocked = scheduler._counts()
        if blocked == 0 and idle == workers == scheduler.workers():
            return True
        pause.wait(0.01)
    return False


def test_worker_counts_stay_right_after_blocking_waits_and_kills() -> None:
    release = threading.Event()
    started = [threading.Event() for _ in range(scheduler.core + 1)]
    waiters = [BlockedInside.start(e, release) for e in started]
    try:
        replies = [w.ask(i, block=False) for i, w in enumerate(waiters)]
        assert all(e.wait(5) for e in started)
        assert scheduler._counts()[2] >= len(waiters)  # each is a blocked worker
        # A kill lands inside blocking(): the worker is no longer counted as blocked.
        mon = s.monitor(waiters[0])
        assert s.kill(waiters[0])
        assert mon.wait(5).reason == s.Killed()
        release.set()
        assert [r.get(timeout=5) for r in replies[1:]] == list(range(1, len(waiters)))
        assert _quiescent_counts_agree()
    finally:
        release.set()
        _stop_all(waiters[1:])


def test_a_worker_misfiled_by_an_interrupted_update_is_refiled_by_its_next_slice() -> None:
    # What a kill between ``worker.blocked += 1`` and the set update could leave: a
    # worker counted as blocked that is not. The next slice it runs files it right again.
    echo = Echo.start()
    misfiled: set[Any] = set()
    try:
        assert echo.ask("warm", timeout=5) == "warm"
        assert _quiescent_counts_agree()
        misfiled = set(scheduler._workers.values())
        scheduler._blocked.update(misfiled)
        # Every worker counts as blocked: the ask still gets served (a spare worker at worst).
        assert echo.ask("x", timeout=5) == "x"
        assert len(misfiled & scheduler._blocked) < len(misfiled)
    finally:
        scheduler._blocked.difference_update(misfiled)
        _stop_all([echo])


_starting: list[s.Process] = []


class Child(s.Process):
    """Says where its on_start ran; tells itself a message there; answers 'seen'.

    With ``hold``: its on_start spins (in bytecode, where a kill lands) until killed.
    """

    def __init__(self, hold: bool = False) -> None:
        super().__init__()
        self.hold = hold
        self.seen: list[Any] = []
        self.started_as: s.Process | None = None
        self.started_on: threading.Thread | None = None

    def on_start(self) -> None:
        self.started_as = s.current_process()
        self.started_on = threading.current_thread()
        self.actor_ref.tell("from on_start")
        if self.hold:
            _starting.append(self)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                time.sleep(0.001)

    def on_receive(self, message: Any) -> Any:
        if message == "seen":
            return list(self.seen)
        self.seen.append(message)
        return None


class Starter(s.Process):
    """Starts a Child in its handler; answers with the child, its thread, its start error."""

    def on_receive(self, message: Any) -> Any:
        me = threading.current_thread()
        try:
            child = Child.start(message)
        except pykka.ActorDeadError as exc:
            return None, me, exc, s.current_process() is self
        return child, me, None, s.current_process() is self


def _ask_via(via: str, ref: pykka.ActorRef[Any], message: Any) -> Any:
    """``ref.ask(message)``, or a caller-runs ``supervisors.ask`` from a request thread."""
    if via == "worker":
        return ref.ask(message, timeout=5)
    answers: list[Any] = []
    thread = threading.Thread(target=lambda: answers.append(s.ask(ref, message, timeout=5)))
    thread.start()
    thread.join(10)
    return answers[0]


@pytest.mark.parametrize("via", ["worker", "request thread"])
def test_a_process_started_in_a_handler_runs_on_start_as_itself_on_that_thread(via: str) -> None:
    # On a worker, or on a request thread that runs the starter itself (caller-runs).
    starter = Starter.start()
    try:
        child, handler_thread, error, still_parent = _ask_via(via, starter, False)
        assert handler_thread.name.startswith("supervisors-worker-") == (via == "worker")
        assert error is None
        assert still_parent
        process = s.lookup(child)
        assert isinstance(process, Child)
        # Run in place (no hand-off to another worker), as the child itself.
        assert process.started_on is handler_thread
        assert process.started_as is process
        # Its mail, even mail told during on_start, is drained as usual.
        assert child.ask("after", timeout=5) is None
        assert child.ask("seen", timeout=5) == ["from on_start", "after"]
        child.stop(timeout=5)
    finally:
        starter.stop(timeout=5)


@pytest.mark.parametrize("via", ["worker", "request thread"])
def test_a_kill_of_a_process_starting_in_place_ends_it_alone(via: str) -> None:
    starter = Starter.start()
    _starting.clear()
    try:
        if via == "worker":
            reply = starter.ask(True, block=False)
        else:
            reply = pykka.ThreadingFuture()
            threading.Thread(target=lambda: reply.set(s.ask(starter, True, timeout=5))).start()
        deadline = time.monotonic() + 5
        while not _starting and time.monotonic() < deadline:
            time.sleep(0.001)
        assert _starting
        child = _starting[0].actor_ref
        mon = s.monitor(child)
        assert s.kill(child)
        assert mon.wait(5).reason == s.Killed()
        _child, _thread, error, still_parent = reply.get(timeout=5)
        assert isinstance(error, pykka.ActorDeadError)
        assert still_parent
        # The starter and its worker live on.
        other, *_ = starter.ask(False, timeout=5)
        other.stop(timeout=5)
    finally:
        _starting.clear()
        starter.stop(timeout=5)


def test_a_worker_busy_during_a_release_ends_once_its_handler_returns() -> None:
    # A handler blocked (unannounced) across release_idle_workers(): its stop marker
    # waits in the run queue, and the monitor must not take it for stalled work (a
    # worker spawned for it took the marker, and the busy worker then lived on).
    entered, release = threading.Event(), threading.Event()
    threads: list[threading.Thread] = []

    class Holder(s.Process):
        def on_receive(self, message: Any) -> Any:
            threads.append(threading.current_thread())
            entered.set()
            return release.wait(10)

    holder = Holder.start()
    try:
        reply = holder.ask("hold", block=False)
        assert entered.wait(5)
        assert not scheduler.release_idle(timeout=0.2)  # the holder's worker is busy
        release.set()
        assert reply.get(timeout=5) is True
        threads[0].join(5)
        assert not threads[0].is_alive()
    finally:
        release.set()
        _stop_all([holder])


# --- the next slot ----------------------------------------------------------------------------


class Hop(s.Process):
    """Notes the thread it runs on, then tells the next process the message (an Event).

    The last one sets the Event. ``after_tell`` runs in the handler after the tell.
    """

    def __init__(
        self,
        name: str,
        log: list[tuple[str, int]],
        next_ref: pykka.ActorRef[Any] | None = None,
        after_tell: Any = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.log = log
        self.next_ref = next_ref
        self.after_tell = after_tell
        self.entered = threading.Event()

    def on_receive(self, message: Any) -> Any:
        self.entered.set()
        self.log.append((self.name, threading.get_ident()))
        if self.next_ref is None:
            message.set()
            return None
        self.next_ref.tell(message)
        if self.after_tell is not None:
            return self.after_tell()
        return None


@pytest.fixture
def slot_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """The monitor never moves a slot: a process leaves it by its worker or by a flush."""
    monkeypatch.setattr(scheduler, "slot_ticks", 10**9)


def test_a_chain_of_tells_runs_on_the_sending_worker_and_wakes_no_other(slot_kept: None) -> None:
    log: list[tuple[str, int]] = []
    overlapped: list[bool] = []
    c = Hop.start("c", log)
    b = Hop.start("b", log, c)
    b_entered = s.lookup(b).entered  # type: ignore[union-attr]
    # a lingers after its tell: an idle worker (there is one: core >= 2) would take b
    # meanwhile if the tell had gone to the run queue.
    a = Hop.start("a", log, b, after_tell=lambda: overlapped.append(b_entered.wait(0.2)))
    try:
        done = threading.Event()
        a.tell(done)
        assert done.wait(5)
        assert overlapped == [False]  # b waited in a's worker's slot
        assert [name for name, _ in log] == ["a", "b", "c"]
        assert len({ident for _, ident in log}) == 1, log  # all on a's worker
    finally:
        _stop_all([a, b, c])


def test_a_handler_that_waits_announced_for_the_process_in_its_slot_lets_it_run(
    slot_kept: None,
) -> None:
    # The ask puts the echo in the asker's slot; the reply's wait (managed) moves it to
    # the run queue. Kept in the slot, the asker would wait for ever on its own worker.
    echo = Echo.start()
    asker = Relay.start(echo)
    try:
        assert asker.ask(1, timeout=10) == 2
    finally:
        _stop_all([asker, echo])


def test_a_handler_that_blocks_unannounced_does_not_hold_its_slot() -> None:
    # The monitor moves the slot of a worker stuck in one slice for a tick.
    log: list[tuple[str, int]] = []
    ran = threading.Event()
    target = Hop.start("target", log)
    sender = Hop.start("sender", log, target, after_tell=lambda: ran.wait(10))
    try:
        assert sender.ask(ran, timeout=10) is True
        assert log[0][1] != log[1][1]  # the target ran on another worker meanwhile
    finally:
        _stop_all([sender, target])


def test_a_process_displaced_from_the_slot_goes_to_the_run_queue(slot_kept: None) -> None:
    log: list[tuple[str, int]] = []
    first_ran = threading.Event()
    first = Hop.start("first", log)
    second = Hop.start("second", log)

    class Fan(s.Process):
        def on_receive(self, message: Any) -> Any:
            first.tell(first_ran)  # into the slot...
            second.tell(threading.Event())  # ...then displaced by this one
            return first_ran.wait(10)  # unannounced, and the monitor never moves the slot

    fan = Fan.start()
    try:
        assert fan.ask("go", timeout=10) is True
    finally:
        _stop_all([fan, first, second])


def test_a_killed_handler_does_not_lose_the_process_in_its_slot(slot_kept: None) -> None:
    log: list[tuple[str, int]] = []
    entered = threading.Event()

    def spin() -> None:
        entered.set()
        while True:  # pure bytecode: only a kill gets it out
            pass

    target = Hop.start("target", log)
    spinner = Hop.start("spinner", log, target, after_tell=spin)
    try:
        ran = threading.Event()
        spinner.tell(ran)
        assert entered.wait(5)
        assert not s.lookup(target).entered.is_set()  # type: ignore[union-attr]
        mon = s.monitor(spinner)
        assert s.kill(spinner)
        assert mon.wait(5).reason == s.Killed()
        assert ran.wait(5)  # the worker ran its slot after the killed slice
        assert log[0][1] == log[1][1]
    finally:
        _stop_all([target])


class _Item:
    """A work item for a private Scheduler: ``run()`` is its slice."""

    _kill_injected = False  # what the scheduler's monitor reads of a running process

    def __init__(self, run: Any) -> None:
        self.run = run

    def _run_slice(self) -> None:
        self.run()


def test_a_ping_pong_through_the_slot_does_not_starve_the_run_queue() -> None:
    from supervisors._scheduler import Scheduler

    sched = Scheduler(core=2, idle_timeout=0.05)
    hold, held, done = threading.Event(), threading.Event(), threading.Event()
    rounds = [0]

    def occupy() -> None:  # keeps the other worker busy (unannounced)
        held.set()
        hold.wait(10)

    def bounce(other: list[_Item]) -> None:
        rounds[0] += 1
        if not done.is_set() and rounds[0] < 1_000_000:
            sched.submit(other[0])  # type: ignore[arg-type]

    ping_box: list[_Item] = []
    pong_box: list[_Item] = []
    ping = _Item(lambda: bounce(pong_box))
    pong = _Item(lambda: bounce(ping_box))
    ping_box.append(ping)
    pong_box.append(pong)
    try:
        sched.submit(_Item(occupy))  # type: ignore[arg-type]
        assert held.wait(5)
        sched.submit(ping)  # type: ignore[arg-type]  # the second (and last) core worker
        # Queued behind the pair: only the slot-run bound lets it run.
        sched.submit(_Item(done.set))  # type: ignore[arg-type]
        assert done.wait(5)
        assert rounds[0] < 1_000_000
    finally:
        done.set()
        hold.set()
        assert sched.release_idle(5)


class Waker(s.Process):
    """Hands the scheduler a wake (recording 'woken'), then does what the message says."""

    def __init__(self, log: EventLog, next_ref: pykka.ActorRef[Any] | None = None) -> None:
        super().__init__()
        self.log = log
        self.next_ref = next_ref

    def on_receive(self, message: Any) -> Any:
        if message == "next":
            self.log.record("next ran")
            return None
        woken = threading.Event()

        def wake() -> None:
            self.log.record("woken")
            woken.set()

        scheduler.wake_when_idle(wake)
        if message == "tell":
            assert self.next_ref is not None
            self.next_ref.tell("next")
            return None
        if message == "announced":
            with s_blocking():
                return woken.wait(10)
        return woken.wait(10)  # unannounced


def test_a_wake_handed_to_the_scheduler_runs_after_the_workers_next_slot(
    slot_kept: None,
) -> None:
    log = EventLog()
    nxt = Waker.start(log)
    waker = Waker.start(log, nxt)
    try:
        waker.tell("tell")
        log.wait_for(lambda events: len(events) == 2)
        assert log.snapshot() == ["next ran", "woken"]
    finally:
        _stop_all([waker, nxt])


@pytest.mark.parametrize("how", ["announced", "unannounced"])
def test_a_handler_that_waits_for_its_own_handed_wake_gets_it(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Announced: the managed wait runs it (the monitor is kept out); unannounced: the
    # monitor does, after a tick.
    if how == "announced":
        monkeypatch.setattr(scheduler, "slot_ticks", 10**9)
    waker = Waker.start(EventLog())
    try:
        assert waker.ask(how, timeout=10) is True
    finally:
        _stop_all([waker])


def test_a_wake_handed_over_outside_a_worker_runs_at_once() -> None:
    woken = threading.Event()
    scheduler.wake_when_idle(woken.set)
    assert woken.is_set()


def test_work_queued_while_the_last_workers_leave_is_handed_over() -> None:
    # Both workers busy when release_idle() queues their stop markers; work queued then
    # spawns nobody (the pool is at capacity). Each worker then takes a marker and ends:
    # the last to leave must start a worker for that work, or it waits for ever.
    from supervisors._scheduler import Scheduler

    pool = Scheduler(core=2, tick=0.5, slot_ticks=10**9)  # the monitor out of the way
    gate = threading.Event()
    entered = {name: threading.Event() for name in "ABC"}

    class Item:
        def __init__(self, name: str, hold: bool) -> None:
            self.name, self.hold = name, hold

        def _run_slice(self) -> None:
            entered[self.name].set()
            if self.hold:
                gate.wait(10)

    try:
        pool._enqueue(Item("A", hold=True))  # type: ignore[arg-type]
        assert entered["A"].wait(5)
        pool._enqueue(Item("B", hold=True))  # type: ignore[arg-type]
        assert entered["B"].wait(5)
        assert not pool.release_idle(timeout=0.01)  # both busy: their markers wait
        pool._enqueue(Item("C", hold=False))  # type: ignore[arg-type]
        gate.set()
        assert entered["C"].wait(5), "the work queued behind the stop markers never ran"
    finally:
        gate.set()
        assert pool.release_idle(timeout=5)


class Careful(s.Process):
    """Waits for ``go`` inside an uninterruptible section; records how far it got."""

    def on_receive(self, message: Any) -> Any:
        inside, go, section_done, after, left = message
        try:
            with s.uninterruptible():
                inside.set()
                go.wait(10)
                section_done.set()
            after.set()  # never reached once killed: the kill lands at the section's end
        finally:
            left.set()


@pytest.mark.parametrize("dedicated", [False, True])
def test_a_kill_waits_for_the_end_of_an_uninterruptible_section(dedicated: bool) -> None:
    inside, go, section_done, after, left = (threading.Event() for _ in range(5))
    victim = type("CarefulHere", (Careful,), {"dedicated_thread": dedicated}).start()
    mon = s.monitor(victim, watcher=None)
    victim.tell((inside, go, section_done, after, left))
    assert inside.wait(5)
    assert s.kill(victim)
    assert mon.wait(5).reason == s.Killed()  # the process ended at once
    assert not left.is_set()  # its handler still runs the section
    go.set()
    assert left.wait(5)
    assert section_done.is_set()
    assert not after.is_set()


def test_uninterruptible_outside_a_process_does_nothing() -> None:
    with s.uninterruptible():
        ran = True
    assert ran


class CarefulStop(s.Process):
    """Uses an uninterruptible section in its on_stop (a stopping process is terminated)."""

    def __init__(self, done: threading.Event) -> None:
        super().__init__()
        self.done = done

    def on_stop(self) -> None:
        with s.uninterruptible():
            pass
        self.done.set()


def test_an_uninterruptible_section_in_a_stop_hook_runs_through() -> None:
    done = threading.Event()
    process = CarefulStop.start(done)
    assert s.shutdown(process, timeout=5) == s.Shutdown()
    assert done.is_set()


_FORK = """
import os, threading
import pykka
import supervisors as s

ticked = threading.Event()

class Echo(s.Process):
    def on_receive(self, message):
        if message == "tick":
            ticked.set()
            return None
        return message

parent = Echo.start()
assert parent.ask("hi") == "hi"
s.register(("echo",), parent)
s.send_after(parent, "tick", 60)  # the timer thread runs at the fork
pid = os.fork()
if pid == 0:
    try:
        parent.ask("hi", timeout=5)
        print("parent answered", flush=True)
    except pykka.ActorDeadError:
        print("parent dead", parent.is_alive(), s.whereis(("echo",)), flush=True)
    child = Echo.start()
    print("child asked", child.ask("ho", timeout=5), flush=True)
    s.send_after(child, "tick", 0.01)
    print("child timer fired", ticked.wait(15), flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("exit", os.waitstatus_to_exitcode(status), flush=True)
parent.stop()
"""


def test_a_forked_child_has_none_of_the_parents_processes_and_a_working_pool() -> None:
    # The child's first process once never started: the scheduler still listed the
    # parent's idle workers (a fork copies no thread), and its timer thread was the
    # parent's too.
    result = run_script(_FORK, timeout=60)
    assert result.stdout.splitlines() == [
        "parent dead False None",
        "child asked ho",
        "child timer fired True",
        "exit 0",
    ], result.stderr
