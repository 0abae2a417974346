"""Timers: ``send_after`` delivers a message later; one scheduler thread serves them all."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Any

import pykka
import structlog

__all__ = ["TimerRef", "send_after"]

log = structlog.get_logger(__name__)


class TimerRef:
    """A pending ``send_after``; ``cancel()`` it to drop the message."""

    __slots__ = ("_service", "due", "message", "seq", "state", "target")

    def __init__(
        self,
        service: _TimerService,
        due: float,
        seq: int,
        target: pykka.ActorRef[Any],
        message: Any,
    ) -> None:
        self._service = service
        self.due = due
        self.seq = seq
        self.target = target
        self.message = message
        self.state = "pending"

    def __lt__(self, other: TimerRef) -> bool:
        return (self.due, self.seq) < (other.due, other.seq)

    def __repr__(self) -> str:
        return f"<TimerRef #{self.seq} {self.state} -> {self.target}>"

    def cancel(self) -> bool:
        """Drop the message; returns True if it was still pending (not yet sent)."""
        return self._service.cancel(self)

    @property
    def pending(self) -> bool:
        """True until the message is sent or the timer cancelled."""
        return self.state == "pending"


class _TimerService:
    """A heap of timers and a thread that exists only while timers are pending."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[TimerRef] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(self, target: pykka.ActorRef[Any], message: Any, seconds: float) -> TimerRef:
        timer = TimerRef(self, time.monotonic() + seconds, next(self._seq), target, message)
        with self._cond:
            heapq.heappush(self._heap, timer)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="supervisors-timers", daemon=True
                )
                self._thread.start()
            elif self._heap[0] is timer:
                self._cond.notify()
        return timer

    def cancel(self, timer: TimerRef) -> bool:
        with self._cond:
            if timer.state != "pending":
                return False
            timer.state = "cancelled"
            self._heap.remove(timer)
            heapq.heapify(self._heap)
            self._cond.notify()
            return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._heap:
                        self._thread = None  # exit while idle; the next timer starts a new one
                        return
                    delay = self._heap[0].due - time.monotonic()
                    if delay <= 0:
                        timer = heapq.heappop(self._heap)
                        timer.state = "fired"
                        break
                    self._cond.wait(delay)
            try:
                timer.target.tell(timer.message)
            except pykka.ActorDeadError:
                log.debug("timer_target_dead", target=str(timer.target))


_service = _TimerService()


def send_after(target: pykka.ActorRef[Any], message: Any, seconds: float) -> TimerRef:
    """Tell ``message`` to ``target`` after ``seconds``; dropped silently if it is dead by then.

    Example::

        timer = send_after(ref, "tick", 0.5)
        timer.cancel()  # True: it had not fired yet
    """
    if seconds < 0:
        seconds = 0.0
    return _service.schedule(target, message, seconds)
