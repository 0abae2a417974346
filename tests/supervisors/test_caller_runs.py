"""Caller-runs asks: an idle process handles a plain thread's ask on that thread.

``supervisors.ask`` / ``supervisors.deliver`` (what a session handle's blocking calls
use): no thread hand-off when the process is idle, with the semantics of a worker.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka
import pytest

import supervisors as s
from supervisors._scheduler import scheduler

_request = contextvars.ContextVar("_request", default="none")


class Where(s.Process):
    """Answers with where its handler ran: thread, current process, a context variable."""

    def on_receive(self, message: Any) -> Any:
        if message == "raise":
            raise ValueError("handler failed")
        return threading.current_thread(), s.current_process(), _request.get()


class Held(s.Process):
    """Keeps every message in order; 'hold' blocks its handler until released."""

    def __init__(self, entered: threading.Event, release: threading.Event) -> None:
        super().__init__()
        self.entered = entered
        self.release = release
        self.seen: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        if message == "dump":
            return list(self.seen)
        if message == "hold":
            self.entered.set()
            for _ in range(1000):  # short waits: a kill lands between two of them
                if self.release.wait(0.01):
                    break
        self.seen.append((message, threading.current_thread()))
        return message


class Deferring(s.Process):
    """Defers the reply of 'later'; 'answer' answers it."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: pykka.Future[Any] | None = None

    def on_receive(self, message: Any) -> Any:
        if message == "later":
            self.pending = self.defer_reply()
            return None
        assert self.pending is not None
        self.reply(self.pending, "answered")
        return "ok"


def _stop(ref: pykka.ActorRef[Any]) -> None:
    ref.stop(block=False)
    s.monitor(ref).wait(10)


def _on_a_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` called on a new thread (not the main one); its result, or its exception."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # handed back to the test
            outcome.append((False, exc))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert outcome, "the call did not return"
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def test_an_idle_process_handles_a_plain_threads_ask_on_that_thread_as_itself() -> None:
    ref = Where.start()
    try:

        def call() -> Any:
            _request.set("caller's")
            thread, process, seen = s.ask(ref, "where", timeout=5)
            return thread is threading.current_thread(), process, seen, s.current_process()

        here, process, seen, afterwards = _on_a_thread(call)
        assert here
        assert process is s.lookup(ref)  # current_process() is the process in its handler
        assert seen == "none"  # in a context of its own, not the caller's
        assert afterwards is None  # and the thread is nobody's afterwards
        # A handler's error reaches the caller and crashes the process, as on a worker.
        mon = s.monitor(ref)
        with pytest.raises(ValueError, match="handler failed"):
            _on_a_thread(lambda: s.ask(ref, "raise", timeout=5))
        assert isinstance(mon.wait(5).reason, s.Crashed)
    finally:
        if ref.is_alive():
            _stop(ref)


def test_the_main_thread_keeps_the_hand_off() -> None:
    # A signal handler's exception (Ctrl-C, SIGTERM) raised in the main thread must
    # reach the caller, never land in a process's handler run there.
    assert threading.current_thread() is threading.main_thread()
    ref = Where.start()
    try:
        thread, process, _ = s.ask(ref, "where", timeout=5)
        assert thread.name.startswith("supervisors-worker-")
        assert process is s.lookup(ref)
    finally:
        _stop(ref)


def test_ask_resolves_names_and_refuses_what_is_not_there() -> None:
    ref = Where.start()
    try:
        s.register("caller-runs-where", ref)
        assert s.ask("caller-runs-where", "x", timeout=5)[1] is s.lookup(ref)
    finally:
        _stop(ref)
    with pytest.raises(s.NoSuchProcess):
        s.ask("caller-runs-where", "x", timeout=5)


def test_a_busy_process_gets_the_ask_in_order_on_a_worker() -> None:
    entered, release = threading.Event(), threading.Event()
    ref = Held.start(entered, release)
    try:
        ref.tell("hold")
        assert entered.wait(5)
        answers: list[Any] = []
        asker = threading.Thread(target=lambda: answers.append(s.ask(ref, "after", timeout=10)))
        asker.start()
        ref.tell("last")
        release.set()
        asker.join(10)
        assert answers == ["after"]
        seen = ref.ask("dump", timeout=5)
        assert [m for m, _ in seen] == ["hold", "after", "last"]
        # Busy when asked: a worker handled it, not the asking thread.
        assert all(t.name.startswith("supervisors-worker-") for _, t in seen)
    finally:
        _stop(ref)


def test_mail_that_comes_while_the_caller_runs_the_process_is_handled_by_a_worker() -> None:
    entered, release = threading.Event(), threading.Event()
    ref = Held.start(entered, release)
    try:
        answers: list[Any] = []
        asker = threading.Thread(target=lambda: answers.append(s.ask(ref, "hold", timeout=10)))
        asker.start()
        assert entered.wait(5)  # the asker's thread runs the handler now
        later = ref.ask("later", block=False)  # queued behind it
        release.set()
        asker.join(10)
        assert answers == ["hold"]
        assert later.get(timeout=5) == "later"
        seen = ref.ask("dump", timeout=5)
        assert [m for m, _ in seen] == ["hold", "later"]
        assert seen[0][1] is asker
        assert seen[1][1].name.startswith("supervisors-worker-")
    finally:
        _stop(ref)


def test_a_deferred_reply_is_waited_for_after_the_handler_returned() -> None:
    ref = Deferring.start()
    try:
        answers: list[Any] = []
        asker = threading.Thread(target=lambda: answers.append(s.ask(ref, "later", timeout=10)))
        asker.start()
        assert _on_a_thread(lambda: s.ask(ref, "answer", timeout=5)) == "ok"
        asker.join(10)
        assert answers == ["answered"]
        with pytest.raises(pykka.Timeout):  # nobody answers: the timeout bounds the wait
            _on_a_thread(lambda: s.ask(ref, "later", timeout=0.05))
    finally:
        _stop(ref)


def test_a_kill_interrupts_the_handler_on_the_callers_thread_and_only_it() -> None:
    entered, release = threading.Event(), threading.Event()
    ref = Held.start(entered, release)
    errors: list[BaseException] = []
    after: list[str] = []

    def caller() -> None:
        try:
            s.ask(ref, "hold", timeout=10)
        except pykka.ActorDeadError as exc:
            errors.append(exc)
        after.append("went on")  # the kill did not follow the caller out of the handler

    asker = threading.Thread(target=caller)
    asker.start()
    assert entered.wait(5)
    mon = s.monitor(ref)
    assert s.kill(ref)
    assert mon.wait(5).reason == s.Killed()
    asker.join(10)
    assert not asker.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], s.NoReply)
    assert after == ["went on"]
    release.set()


class Swallower(s.Process):
    """Catches the first kill (as a ``__del__`` it lands in would), then computes on."""

    def on_receive(self, message: Any) -> Any:
        started, swallowed, finished, left, threads = message
        threads.append(threading.current_thread())
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


def test_a_swallowed_kill_is_repeated_on_the_callers_thread_too() -> None:
    started, swallowed, finished, left = (threading.Event() for _ in range(4))
    threads: list[threading.Thread] = []
    victim = Swallower.start()
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            s.ask(victim, (started, swallowed, finished, left, threads), timeout=30)
        except BaseException as exc:  # the caller is told the process died
            errors.append(exc)

    asker = threading.Thread(target=caller)
    asker.start()
    try:
        assert started.wait(5)
        assert threads == [asker]  # caller-runs: the handler runs on the asking thread
        assert s.kill(victim)
        assert swallowed.wait(5)
        assert left.wait(5)  # interrupted again by the monitor, not after its 20 s of work
        assert not finished.is_set()
    finally:
        asker.join(30)
    assert len(errors) == 1
    assert isinstance(errors[0], s.NoReply)
    assert asker not in scheduler.callers


def test_a_dedicated_process_or_a_caller_inside_a_process_keeps_the_hand_off() -> None:
    class Dedicated(Where):
        dedicated_thread = True

    class Asker(s.Process):
        def on_receive(self, message: Any) -> Any:
            return s.ask(message, "where", timeout=5)

    dedicated, target, asker = Dedicated.start(), Where.start(), Asker.start()
    try:
        thread, _, _ = _on_a_thread(lambda: s.ask(dedicated, "where", timeout=5))
        assert thread.name.startswith("Dedicated-")  # its own thread
        thread, _, _ = asker.ask(target, timeout=5)  # asked from a handler on a worker
        assert thread.name.startswith("supervisors-worker-")
    finally:
        for ref in (dedicated, target, asker):
            _stop(ref)


def test_many_threads_asking_many_processes_get_every_answer_in_order() -> None:
    refs = [Held.start(threading.Event(), threading.Event()) for _ in range(20)]
    per_thread = 200
    failures: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(per_thread):
                ref = refs[(offset + i) % len(refs)]
                assert s.ask(ref, (offset, i), timeout=10) == (offset, i)
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not failures
        by_process = [[m for m, _ in ref.ask("dump", timeout=5)] for ref in refs]
        assert sum(len(seen) for seen in by_process) == 8 * per_thread
        for seen in by_process:  # each thread's messages reach a process in its order
            for n in range(8):
                mine = [i for offset, i in seen if offset == n]
                assert mine == sorted(mine)
        assert scheduler.workers() <= scheduler.max_workers
    finally:
        for ref in refs:
            _stop(ref)


class Started(s.Process):
    """Records where its on_start ran."""

    def __init__(self) -> None:
        super().__init__()
        self.started_on: threading.Thread | None = None

    def on_start(self) -> None:
        self.started_on = threading.current_thread()

    def on_receive(self, message: Any) -> Any:
        return self.started_on


def test_a_supervisor_call_from_a_request_thread_starts_the_child_there() -> None:
    dyn = s.DynamicSupervisor.start()
    try:
        child = _on_a_thread(
            lambda: (dyn.start_child((Started, (), {})), threading.current_thread())
        )
        ref, caller = child
        assert ref.ask("where", timeout=5) is caller  # supervisor and on_start ran there
        ref = dyn.start_child((Started, (), {}))  # from the main thread: on a worker
        assert ref.ask("where", timeout=5).name.startswith("supervisors-worker-")
        # A dead supervisor answers a request thread as Pykka's ask would.
    finally:
        dyn.stop()
    with pytest.raises(pykka.ActorDeadError):
        _on_a_thread(lambda: dyn.start_child((Started, (), {}), timeout=5))


def test_request_threads_starting_children_while_children_are_killed_lose_none() -> None:
    dyn = s.DynamicSupervisor.start(max_restarts=1_000_000)
    started: list[pykka.ActorRef[Any]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def start_many() -> None:
        try:
            for _ in range(100):
                started.append(dyn.start_child((Started, (), {}), timeout=10))
        except BaseException as exc:  # reported below
            failures.append(exc)

    def kill_some() -> None:
        n = 0
        while not stop.is_set():
            if started:
                s.kill(started[n % len(started)])  # restarted: permanent by default
                n += 1
            stop.wait(0.002)

    starters = [threading.Thread(target=start_many) for _ in range(6)]
    killer = threading.Thread(target=kill_some)
    killer.start()
    for t in starters:
        t.start()
    for t in starters:
        t.join(60)
    stop.set()
    killer.join(10)
    try:
        assert failures == []
        assert len(started) == 600
        counts = dyn.count_children(timeout=10)
        assert counts["specs"] == 600  # every start that answered is a child
        for info in dyn.which_children(timeout=10):  # killed ones came back
            assert info.ref is not None
            assert isinstance(info.ref.ask("where", timeout=10), threading.Thread)
    finally:
        dyn.stop()
