"""Timers: ``send_after`` delivers a message later; one scheduler thread serves them all."""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from typing import Any

import pykka

from supervisors._log import get_logger

__all__ = ["TimerRef", "send_after"]

log = get_logger(__name__)


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
    """A heap of timers and a thread that exists only while timers are pending.

    When the heap empties, the thread waits ``idle_linger`` seconds for new
    timers before it exits: code that schedules and cancels a timeout per
    request would otherwise pay a thread start every time.
    """

    idle_linger = 1.0

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[TimerRef] = []  # pending timers, and cancelled ones not yet dropped
        self._live = 0  # pending timers in the heap
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._by_target: dict[str, set[TimerRef]] = {}
        self._release = False

    def schedule(self, target: pykka.ActorRef[Any], message: Any, seconds: float) -> TimerRef:
        timer = TimerRef(self, time.monotonic() + seconds, next(self._seq), target, message)
        with self._cond:
            # A process that has ended already had its timers cancelled (cancel_for runs
            # after actor_stopped is set): one armed now, e.g. by its own thread before a
            # kill lands, would never be, and would keep the scheduler thread alive.
            if target.actor_stopped.is_set():
                timer.state = "cancelled"
                return timer
            heapq.heappush(self._heap, timer)
            self._live += 1
            self._by_target.setdefault(target.actor_urn, set()).add(timer)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="supervisors-timers", daemon=True
                )
                self._thread.start()
            elif self._heap[0] is timer:
                self._cond.notify()  # the new earliest deadline
        return timer

    def cancel(self, timer: TimerRef) -> bool:
        # Lazily: the entry stays in the heap, marked, and is dropped when it reaches the
        # top (or at a compaction). No wake-up: the thread only ever sleeps too short.
        with self._cond:
            if timer.state != "pending":
                return False
            timer.state = "cancelled"
            self._live -= 1
            self._forget(timer)
            self._compact()
            return True

    def cancel_for(self, urn: str) -> int:
        """Cancel every pending timer aimed at the process ``urn``; how many there were."""
        with self._cond:
            timers = self._by_target.pop(urn, set())
            pending = [t for t in timers if t.state == "pending"]
            for timer in pending:
                timer.state = "cancelled"
            self._live -= len(pending)
            self._compact()
            return len(pending)

    def _compact(self) -> None:
        # Cancelled entries may make up at most half the heap (and a few), so a timeout
        # armed and cancelled per request costs amortised O(log n), not O(n).
        heap = self._heap
        if len(heap) > 2 * self._live + 64:
            self._heap = [t for t in heap if t.state == "pending"]
            heapq.heapify(self._heap)

    def release_idle(self) -> threading.Thread | None:
        """Make an idle scheduler thread exit now; returns it (to join) if it was running."""
        with self._cond:
            thread = self._thread
            if thread is None or self._live:
                return None
            self._release = True
            self._cond.notify()
            return thread

    def _forget(self, timer: TimerRef) -> None:
        timers = self._by_target.get(timer.target.actor_urn)
        if timers is not None:
            timers.discard(timer)
            if not timers:
                del self._by_target[timer.target.actor_urn]

    def _run(self) -> None:
        while True:
            with self._cond:
                linger_until: float | None = None
                while True:
                    heap = self._heap
                    while heap and heap[0].state != "pending":
                        heapq.heappop(heap)  # cancelled: dropped lazily
                    now = time.monotonic()
                    if not heap:
                        # Exit only after idle_linger without a timer, not on any wake-up.
                        if linger_until is None:
                            linger_until = now + self.idle_linger
                        if self._release or now >= linger_until:
                            self._thread = None  # idle: the next timer starts a new thread
                            self._release = False
                            return
                        self._cond.wait(linger_until - now)
                        continue
                    linger_until = None
                    delay = heap[0].due - now
                    if delay <= 0:
                        timer = heapq.heappop(heap)
                        timer.state = "fired"
                        self._live -= 1
                        self._forget(timer)
                        break
                    self._cond.wait(delay)
            try:
                timer.target.tell(timer.message)
            except pykka.ActorDeadError:
                log.debug("timer_target_dead", target=str(timer.target))


_service = _TimerService()


def _new_service_after_fork() -> None:
    # The timer thread is not copied by a fork, nor are the parent's processes: the child
    # starts with no timers and a fresh condition (a parent thread may have held its
    # lock). A new service, not the old one cleared: a TimerRef made before the fork
    # keeps pointing at the old one, so cancelling it cannot unbalance the child's count.
    global _service
    _service = _TimerService()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_service_after_fork)


def send_after(target: pykka.ActorRef[Any], message: Any, seconds: float) -> TimerRef:
    """Tell ``message`` to ``target`` after ``seconds``; dropped silently if it is dead by then.

    A process's pending timers are cancelled when it ends, and a timer aimed at
    one that has ended is cancelled from the start, so they never keep the
    scheduler thread alive for a process that is gone.

    Example::

        timer = send_after(ref, "tick", 0.5)
        timer.cancel()  # True: it had not fired yet
    """
    if seconds < 0:
        seconds = 0.0
    return _service.schedule(target, message, seconds)


def cancel_timers_for(urn: str) -> int:
    """Cancel every pending timer aimed at the process ``urn`` (done when it ends)."""
    return _service.cancel_for(urn)


def release_idle_timer_thread(timeout: float = 5.0) -> bool:
    """If no timer is pending, end the scheduler thread now instead of after its idle linger.

    For tests that check no thread outlives them. Returns True if a thread was
    ended (or none was running).
    """
    thread = _service.release_idle()
    if thread is None:
        return _service._thread is None
    thread.join(timeout)
    return not thread.is_alive()
