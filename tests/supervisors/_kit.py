"""Test kit for supervisors: an event log to wait on, and scriptable workers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import supervisors as s


class EventLog:
    """A thread-safe list of events that tests wait on (never sleep)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.events: list[Any] = []

    def record(self, event: Any) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Any]], bool], timeout: float = 5.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.events), timeout):
                raise AssertionError(f"condition not met within {timeout}s; events={self.events}")

    def count(self, event: Any) -> int:
        with self._cond:
            return self.events.count(event)

    def snapshot(self) -> list[Any]:
        with self._cond:
            return list(self.events)


class Worker(s.Process):
    """Records its start/stop; answers 'ping'; crashes on 'crash'; stops on 'stop'."""

    def __init__(self, log: EventLog, wid: Any, fail_start: bool = False) -> None:
        super().__init__()
        self.log = log
        self.wid = wid
        self.fail_start = fail_start

    def on_start(self) -> None:
        if self.fail_start:
            raise RuntimeError(f"{self.wid} refuses to start")
        self.log.record(("start", self.wid))

    def on_stop(self) -> None:
        self.log.record(("stop", self.wid))

    def on_failure(self, *exc_info: Any) -> None:
        self.log.record(("failure", self.wid))

    def on_receive(self, message: Any) -> Any:
        if message == "ping":
            return "pong"
        if message == "crash":
            raise RuntimeError(f"{self.wid} crashed on purpose")
        if message == "stop":
            self.stop()
            return None
        if isinstance(message, tuple) and message[0] == "block":
            message[1].set()  # entered
            message[2].wait()  # released
            return "unblocked"
        if isinstance(message, tuple) and message[0] == "spin":
            message[1].set()  # entered
            n = 0
            while True:  # pure bytecode: only a kill gets it out
                n += 1
        if isinstance(message, s.Exit | s.Down):
            self.log.record(("got", self.wid, message))
            return None
        return message


def worker_spec(log: EventLog, wid: Any, **spec: Any) -> s.ChildSpec:
    fail = spec.pop("fail_start", False)
    return s.ChildSpec(wid, (Worker, (log, wid), {"fail_start": fail}), **spec)


def crash_and_wait(
    sup: s.SupervisorRef | s.DynamicSupervisorRef, ref: Any, how: str = "crash"
) -> None:
    """Make a child end (crash or normal stop), then sync with its supervisor.

    Exit signals reach the supervisor before monitors fire, so once the Down is
    in, a call to the supervisor is answered only after it handled the exit.
    """
    mon = s.monitor(ref, watcher=None)
    if how == "crash":
        ref.tell("crash")
    else:
        ref.stop(block=False)
    mon.wait(5)
    sup.count_children(timeout=5)


def start_spinning(ref: Any) -> None:
    """Make a worker spin in a pure-bytecode loop; return once it is inside."""
    entered = threading.Event()
    ref.tell(("spin", entered))
    assert entered.wait(5)
