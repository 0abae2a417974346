"""Process: exit reasons, the errors rule, on_start failures, BaseException isolation."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from typing import Any
from unittest import mock

import pykka
import pytest

import supervisors as s
from supervisors._mailbox import Mailbox
from tests.supervisors._kit import EventLog, Worker, start_spinning


class Expected(s.ReplyError):
    pass


class Rules(s.Process):
    def on_receive(self, message: Any) -> Any:
        if message == "expected":
            raise Expected("bad input")
        if message == "unexpected":
            raise KeyError("bug")
        if message == "system_exit":
            raise SystemExit(1)
        return message


def test_start_is_synchronous_and_ask_round_trips() -> None:
    ref = Rules.start()
    assert ref.ask("hello", timeout=5) == "hello"
    assert s.lookup(ref) is not None
    assert s.lookup(ref).process_state == "running"  # type: ignore[union-attr]
    ref.stop()


def test_stop_gives_normal_reason() -> None:
    ref = Rules.start()
    process = s.lookup(ref)
    mon = s.monitor(ref, watcher=None)
    assert ref.stop() is True
    assert mon.wait(5).reason == s.Normal()
    assert process is not None
    assert process.exit_reason == s.Normal()


def test_expected_error_goes_to_caller_and_process_lives() -> None:
    ref = Rules.start()
    with pytest.raises(Expected, match="bad input"):
        ref.ask("expected", timeout=5)
    assert ref.ask("still here", timeout=5) == "still here"
    ref.stop()


def test_unexpected_error_goes_to_caller_then_crashes_process() -> None:
    ref = Rules.start()
    process = s.lookup(ref)
    mon = s.monitor(ref, watcher=None)
    with pytest.raises(KeyError):
        ref.ask("unexpected", timeout=5)
    down = mon.wait(5)
    assert isinstance(down.reason, s.Crashed)
    assert isinstance(down.reason.exception, KeyError)
    assert process is not None
    assert process.exit_reason == down.reason
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("anyone?", timeout=5)


def test_exception_in_tell_crashes_process_and_runs_on_failure() -> None:
    log = EventLog()
    ref = Worker.start(log, "w")
    mon = s.monitor(ref, watcher=None)
    ref.tell("crash")
    reason = mon.wait(5).reason
    assert isinstance(reason, s.Crashed)
    assert isinstance(reason.exception, RuntimeError)
    assert log.snapshot() == [("start", "w"), ("failure", "w")]


class FailingStart(s.Process):
    def __init__(self, entered: threading.Event, release: threading.Event, log: EventLog) -> None:
        super().__init__()
        self.entered, self.release, self.log = entered, release, log

    def on_start(self) -> None:
        self.entered.set()
        self.release.wait(5)
        raise ValueError("cannot start")

    def on_failure(self, *exc_info: Any) -> None:
        self.log.record(("on_failure", exc_info[0]))


def test_on_start_failure_raises_to_starter_and_notifies_monitors() -> None:
    entered, release, log = threading.Event(), threading.Event(), EventLog()
    errors: list[BaseException] = []

    def starter() -> None:
        try:
            FailingStart.start(entered, release, log)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=starter)
    thread.start()
    assert entered.wait(5)
    (ref,) = pykka.ActorRegistry.get_by_class(FailingStart)
    mon = s.monitor(ref, watcher=None)  # monitored while on_start still runs
    release.set()
    thread.join(5)
    assert len(errors) == 1
    assert isinstance(errors[0], ValueError)
    down = mon.wait(5)
    assert isinstance(down.reason, s.Crashed)
    assert down.reason.exception is errors[0]
    assert log.snapshot() == [("on_failure", ValueError)]  # Pykka alone would not call it


def test_on_start_failure_reaches_the_link_set_up_by_start_link() -> None:
    log = EventLog()
    trapper = TrapExits.start(log)
    with pytest.raises(RuntimeError, match="refuses"):
        s.start_link(trapper, Worker, log, "w", fail_start=True)
    log.wait_for(lambda ev: any(e[0] == "exit" for e in ev))
    (_, reason) = next(e for e in log.snapshot() if e[0] == "exit")
    assert isinstance(reason, s.Crashed)
    trapper.stop()


class TrapExits(s.Process):
    trap_exit = True

    def __init__(self, log: EventLog) -> None:
        super().__init__()
        self.log = log

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, s.Exit):
            self.log.record(("exit", message.reason))
        return None


class PlainPykka(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


def test_base_exception_stops_only_that_process() -> None:
    bystander = Rules.start()
    plain = PlainPykka.start()
    victim = Rules.start()
    mon = s.monitor(victim, watcher=None)
    with pytest.raises(SystemExit):
        victim.ask("system_exit", timeout=5)
    reason = mon.wait(5).reason
    assert isinstance(reason, s.Crashed)
    assert isinstance(reason.exception, SystemExit)
    assert bystander.ask("alive", timeout=5) == "alive"
    assert plain.ask("alive too", timeout=5) == "alive too"
    bystander.stop()
    plain.stop()


def test_ask_never_hangs_on_a_process_that_is_ending() -> None:
    # Pykka alone can lose an ask queued just as the actor stops; our mailbox rejects it.
    for _ in range(200):
        ref = Rules.start()
        futures = [ref.ask(i, block=False) for i in range(5)]
        ref.stop(block=False)
        late = ref.ask("late", block=False)
        for future in [*futures, late]:
            with contextlib.suppress(pykka.ActorDeadError):
                future.get(timeout=5)


def test_kill_interrupts_a_spinning_handler_and_answers_its_caller() -> None:
    log = EventLog()
    ref = Worker.start(log, "spinner")
    process = s.lookup(ref)
    assert process is not None
    entered = threading.Event()
    future = ref.ask(("spin", entered), block=False)
    assert entered.wait(5)
    queued = ref.ask("ping", block=False)
    mon = s.monitor(ref, watcher=None)
    assert s.kill(ref) is True
    assert mon.wait(5).reason == s.Killed()
    with pytest.raises(pykka.ActorDeadError):
        future.get(timeout=5)
    with pytest.raises(pykka.ActorDeadError):
        queued.get(timeout=5)
    # The thread that ran the spinning handler is free again: on its own thread it has
    # ended; on the shared scheduler its worker goes on to run other processes.
    other = Worker.start(log, "after")
    assert other.ask("ping", timeout=5) == "pong"
    other.stop()
    assert ("stop", "spinner") not in log.snapshot()  # kill runs no hook
    assert s.kill(ref) is False


def test_kill_answers_a_message_taken_from_the_mailbox_but_not_yet_handled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A process on a thread of its own takes a message, then is killed before it starts
    # handling it: the kill answers only what is queued, so the loop must answer that one.
    class Dedicated(Rules):
        dedicated_thread = True

    real_get = Mailbox.get
    taken, killed = threading.Event(), threading.Event()

    def get(mailbox: Mailbox) -> Any:
        envelope = real_get(mailbox)
        if envelope is not None and envelope.message == "taken":
            taken.set()
            assert killed.wait(5)
        return envelope

    monkeypatch.setattr(Mailbox, "get", get)  # before the process blocks in the real one
    ref = Dedicated.start()
    future = ref.ask("taken", block=False)
    assert taken.wait(5)
    assert s.kill(ref) is True
    killed.set()
    with pytest.raises(pykka.ActorDeadError):
        future.get(timeout=5)


def test_kill_answers_an_interrupted_handler_that_unwinds_before_the_killer_looks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The interrupted handler's thread can unwind (and forget the message it was handling)
    # before the killer, after closing the mailbox, looks at that message to answer it.
    class Dedicated(Worker):
        dedicated_thread = True

    ref = Dedicated.start(EventLog(), "spinner")
    process = s.lookup(ref)
    assert process is not None
    thread = process._thread
    assert thread is not None
    real_close = Mailbox.close

    def close(mailbox: Mailbox) -> Any:
        if mailbox is process.mailbox:
            thread.join(5)  # the handler has unwound, and its thread has ended
            assert not thread.is_alive()
        return real_close(mailbox)

    monkeypatch.setattr(Mailbox, "close", close)
    entered = threading.Event()
    future = ref.ask(("spin", entered), block=False)
    assert entered.wait(5)
    assert s.kill(ref) is True
    with pytest.raises(pykka.ActorDeadError):
        future.get(timeout=5)


def test_a_message_taken_just_before_a_kill_is_never_handled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The kill finds the thread between messages (out of user code: nothing to interrupt)
    # after it took one; that handler must not run after its caller was told it died.
    ran: list[Any] = []

    class Recording(s.Process):
        dedicated_thread = True

        def on_receive(self, message: Any) -> Any:
            ran.append(message)
            return message

    real_handle = s.Process._handle_envelope
    taken, killed = threading.Event(), threading.Event()

    def handle(process: s.Process, envelope: Any) -> Any:
        if envelope.message == "taken":
            taken.set()
            assert killed.wait(5)
        return real_handle(process, envelope)

    monkeypatch.setattr(s.Process, "_handle_envelope", handle)
    ref = Recording.start()
    process = s.lookup(ref)
    assert process is not None
    thread = process._thread
    assert thread is not None
    future = ref.ask("taken", block=False)
    assert taken.wait(5)
    assert s.kill(ref) is True
    killed.set()
    with pytest.raises(pykka.ActorDeadError):
        future.get(timeout=5)
    thread.join(5)  # whatever it was going to do is done
    assert not thread.is_alive()
    assert ran == []


def test_shutdown_waits_for_graceful_stop_then_kills() -> None:
    log = EventLog()
    ref = Worker.start(log, "slow")
    start_spinning(ref)
    reason = s.shutdown(ref, timeout=0.2)
    assert reason == s.Killed()
    quick = Worker.start(log, "quick")
    assert s.shutdown(quick, timeout=5) == s.Shutdown()
    assert ("stop", "quick") in log.snapshot()
    assert s.shutdown(quick) == s.NoProc()


def test_stop_with_sets_the_exit_reason() -> None:
    class Quitter(s.Process):
        def on_receive(self, message: Any) -> Any:
            self.stop_with(s.Shutdown("done"))
            return "bye"

    ref = Quitter.start()
    mon = s.monitor(ref, watcher=None)
    assert ref.ask("go", timeout=5) == "bye"
    assert mon.wait(5).reason == s.Shutdown("done")


def test_stop_with_in_on_start_ends_the_process_right_after_its_start() -> None:
    # Started by a supervisor, on_start runs in the supervisor's handler on its worker:
    # the process must still be ended, by a slice of its own, with the reason it asked for.
    stopped = threading.Event()

    class Brief(s.Process):
        def on_start(self) -> None:
            self.stop_with(s.Shutdown("only starting"))

        def on_stop(self) -> None:
            stopped.set()

    sup = s.DynamicSupervisor.start()
    try:
        ref = sup.start_child(s.ChildSpec("brief", (Brief, (), {}), restart="temporary"))
        assert stopped.wait(5)
        assert ref.actor_stopped.wait(5)
        stopped.clear()
        direct = Brief.start()
        assert stopped.wait(5)
        assert direct.actor_stopped.wait(5)
    finally:
        sup.stop()


def test_send_exit() -> None:
    log = EventLog()
    plain = Worker.start(log, "plain")
    mon = s.monitor(plain, watcher=None)
    assert s.send_exit(plain, s.Normal()) is True  # ignored when not trapping
    assert plain.ask("ping", timeout=5) == "pong"
    s.send_exit(plain, s.Shutdown("go away"))
    assert mon.wait(5).reason == s.Shutdown("go away")
    trapper = TrapExits.start(log)
    s.send_exit(trapper, s.Normal())
    log.wait_for(lambda ev: ("exit", s.Normal()) in ev)
    assert s.send_exit(trapper, s.Killed()) is True
    assert s.send_exit(trapper, s.Killed()) is False


def test_current_process() -> None:
    class WhoAmI(s.Process):
        def on_receive(self, message: Any) -> Any:
            me = s.current_process()
            return me is self

    ref = WhoAmI.start()
    assert ref.ask("?", timeout=5) is True
    assert s.current_process() is None
    ref.stop()


class Parking(s.Process):
    """Parks 'wait' callers until 'release'; answers them in order."""

    def __init__(self) -> None:
        super().__init__()
        self.parked: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        if message == "wait":
            self.parked.append(self.defer_reply())
            return None
        if message == "release":
            for n, future in enumerate(self.parked):
                if n == 0:
                    self.reply_error(future, Expected("first one fails"))
                else:
                    self.reply(future, n)
            self.parked.clear()
            return "released"
        return None


def test_deferred_replies_are_answered_later() -> None:
    ref = Parking.start()
    first, second = ref.ask("wait", block=False), ref.ask("wait", block=False)
    assert ref.ask("release", timeout=5) == "released"
    with pytest.raises(Expected):
        first.get(timeout=5)
    assert second.get(timeout=5) == 1
    with pytest.raises(s.NotInProcess):
        s.lookup(ref).defer_reply()  # type: ignore[union-attr]
    ref.stop()


@pytest.mark.parametrize("end", ["stop", "kill"])
def test_deferred_callers_are_answered_when_the_process_dies(end: str) -> None:
    ref = Parking.start()
    parked = ref.ask("wait", block=False)
    ref.ask("sync", timeout=5)
    if end == "stop":
        ref.stop()
    else:
        s.kill(ref)
    with pytest.raises(pykka.ActorDeadError):
        parked.get(timeout=5)


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize("wait", ["future", "monitor"])
def test_a_signal_caught_by_another_thread_still_interrupts_a_wait_in_the_main_thread(
    wait: str,
) -> None:
    # A Python signal handler runs in the main thread between bytecodes. When the C-level
    # signal lands in another thread (or just before the main thread's futex sleep), a
    # lock wait in the main thread is not interrupted: without waiting in slices, SIGTERM
    # or Ctrl-C during session.query() waited for the whole query timeout.
    assert threading.current_thread() is threading.main_thread()
    main = threading.get_ident()
    future = s.ProcessFuture()
    idle = Worker.start(EventLog(), "idle")

    def handler(signum: int, frame: Any) -> None:
        raise _Interrupted()

    def send_once_main_waits() -> None:
        for _ in range(5000):  # until the main thread sits in the lock wait (bounded)
            frame = sys._current_frames().get(main)
            if frame is not None and frame.f_code.co_name == "_acquire":
                break
            threading.Event().wait(0.001)
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)  # handled in *this* thread

    def block() -> None:
        if wait == "future":
            future.get(timeout=30)
        else:
            s.monitor(idle).wait(timeout=30)

    previous = signal.signal(signal.SIGUSR1, handler)
    sender = threading.Thread(target=send_once_main_waits)
    started = time.monotonic()
    try:
        sender.start()
        with pytest.raises(_Interrupted):
            block()
        assert time.monotonic() - started < 5
    finally:
        signal.signal(signal.SIGUSR1, previous)
        sender.join(10)
        idle.stop()


class Greeter(s.Process):
    """A process with a method to call through a Pykka proxy."""

    def greet(self, name: str) -> str:
        return f"hello {name}"


def test_a_process_ref_keeps_no_weakref_and_still_makes_proxies() -> None:
    ref = Greeter.start()
    assert "_actor_weakref" not in vars(ref)  # found in the live-process table instead
    assert ref.proxy().greet("proxy").get(timeout=5) == "hello proxy"
    ref.stop()
    with pytest.raises(pykka.ActorDeadError):
        ref.proxy()


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n


class Proxied(s.Process):
    def __init__(self) -> None:
        super().__init__()
        self.counter = pykka.traversable(_Counter())

    def greet(self, name: str, *, punct: str = "!") -> str:
        return f"hi {name}{punct}"

    def fail(self) -> None:
        raise Expected("refused")

    def on_receive(self, message: Any) -> Any:
        return None


class SeesMessages(Proxied):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def _handle_receive(self, message: Any) -> Any:
        self.seen.append(type(message).__name__)
        return super()._handle_receive(message)

    def seen_so_far(self) -> list[str]:
        return list(self.seen)


class InheritsTheOverride(SeesMessages):
    pass


def test_proxy_calls_reach_methods_and_traversable_attributes() -> None:
    ref = Proxied.start()
    try:
        proxy = ref.proxy()
        assert proxy.greet("ada", punct="?").get(timeout=5) == "hi ada?"
        assert proxy.counter.add(2).get(timeout=5) == 2  # a two-step attribute path
        assert proxy.counter.add(3).get(timeout=5) == 5
        with pytest.raises(Expected, match="refused"):
            proxy.fail().get(timeout=5)
        assert ref.is_alive()  # a ReplyError answers the caller: the process goes on
    finally:
        ref.stop()


@pytest.mark.parametrize("cls", [SeesMessages, InheritsTheOverride])
def test_a_class_overriding_handle_receive_still_sees_every_proxy_call(cls: type) -> None:
    """Proxy calls skip Pykka's ``_handle_receive`` only for classes that keep it."""
    ref = cls.start()
    try:
        proxy = ref.proxy()
        assert proxy.greet("bo").get(timeout=5) == "hi bo!"
        assert proxy.counter.add(1).get(timeout=5) == 1
        assert ref.ask("plain", timeout=5) is None  # on_receive
        assert proxy.seen_so_far().get(timeout=5) == ["ProxyCall"] * 2 + ["str", "ProxyCall"]
    finally:
        ref.stop()


def test_a_handle_receive_patched_in_after_the_class_was_made_sees_proxy_calls() -> None:
    seen: list[str] = []
    original = Proxied._handle_receive

    def patched(self: Proxied, message: Any) -> Any:
        seen.append(type(message).__name__)
        return original(self, message)

    ref = Proxied.start()
    try:
        proxy = ref.proxy()
        assert proxy.greet("before").get(timeout=5) == "hi before!"
        with mock.patch.object(Proxied, "_handle_receive", patched):
            assert proxy.greet("during").get(timeout=5) == "hi during!"
        assert proxy.greet("after").get(timeout=5) == "hi after!"
    finally:
        ref.stop()
    assert seen == ["ProxyCall"]
