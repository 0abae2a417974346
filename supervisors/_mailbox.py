"""A Pykka inbox with a priority lane for exit signals and a close that rejects late mail."""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import pykka
from pykka import messages as pykka_messages
from pykka._envelope import Envelope

from supervisors.errors import NoReply, NotHandled

__all__ = ["Mailbox", "reject_envelope"]


def reject_envelope(envelope: Envelope[Any], owner: str, *, handling: bool = False) -> None:
    """Answer an envelope that will never be (fully) handled, so no caller waits forever.

    ``handling``: the process ended while handling it (``NoReply``); otherwise
    it never began (``NotHandled``: safe to send again).
    """
    reply_to = envelope.reply_to
    if reply_to is None:
        return
    try:
        if isinstance(envelope.message, pykka_messages._ActorStop):
            reply_to.set(None)
        elif handling:
            error: pykka.ActorDeadError = NoReply(
                f"{owner} ended while handling the message", handler_returned=False
            )
            reply_to.set_exception(exc_info=(type(error), error, None))
        else:
            error = NotHandled(f"{owner} stopped before handling the message")
            reply_to.set_exception(exc_info=(type(error), error, None))
    except queue.Full:
        pass  # already answered (e.g. the handler finished after a kill)


class Mailbox:
    """Unbounded FIFO inbox, plus a lane for exit signals that overtakes queued mail.

    ``close()`` and ``put()`` share one lock, so a message is either queued
    before the close (and then rejected by it) or rejected at once: an ``ask``
    to a process that is ending can never hang, unlike Pykka's plain queue.

    Two ways to be drained: a thread of its own blocks in :meth:`get`; or,
    once :meth:`attach` gave it a ``schedule`` callback, the shared scheduler
    runs its process when mail arrives (``schedule`` is called once per
    transition from idle to runnable) and the process takes mail with
    :meth:`take`, which marks it idle again when nothing is left.
    """

    __slots__ = (
        "_closed",
        "_lock",
        "_messages",
        "_not_empty",
        "_owner",
        "_schedule",
        "_scheduled",
        "_signals",
        "_target",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._not_empty: threading.Condition | None = None  # made on first blocking get()
        # Both queues are made on first use and the ordinary one is dropped again when the
        # process goes idle: an empty deque is ~0.75 KiB, and most processes are idle.
        self._messages: deque[Envelope[Any]] | None = None
        self._signals: deque[Envelope[Any]] | None = None
        self._closed = False
        self._owner: object = "process"
        self._schedule: Callable[[Any], None] | None = None
        self._target: Any = None
        self._scheduled = False

    def attach(self, schedule: Callable[[Any], None], target: Any) -> None:
        """Drain through the scheduler: ``schedule(target)`` when mail makes it runnable.

        A shared function and its argument, not a bound method per mailbox: one
        object less per live process for the cyclic GC to walk. The process counts
        as runnable now (it has its start to run).
        """
        with self._lock:
            self._schedule = schedule
            self._target = target
            self._scheduled = True

    def set_owner(self, owner: object) -> None:
        """Name the owning process (``str(owner)``) in the errors given to rejected callers.

        The process itself, not its name: made only when a caller is refused, so a
        live process does not keep a string of its own for it.
        """
        self._owner = owner

    def put(self, envelope: Envelope[Any], /) -> None:
        """Queue an ordinary message (what ``ActorRef.tell``/``ask`` call)."""
        with self._lock:
            if not self._closed:
                messages = self._messages
                if messages is None:
                    messages = self._messages = deque()
                messages.append(envelope)
                schedule = self._wake()
                if schedule is None:
                    return
            else:
                schedule = None
        if schedule is not None:
            schedule(self._target)
            return
        reject_envelope(envelope, str(self._owner))

    def put_claim(self, envelope: Envelope[Any], /) -> bool:
        """Queue an ordinary message; True if the caller must now run the process itself.

        Like :meth:`put`, except that when the message makes an idle scheduled
        process runnable, the process is not handed to the scheduler: it counts as
        scheduled (no other put schedules it) and the caller runs its slice.
        """
        with self._lock:
            if not self._closed:
                messages = self._messages
                if messages is None:
                    messages = self._messages = deque()
                messages.append(envelope)
                if self._schedule is None:
                    if self._not_empty is not None:
                        self._not_empty.notify()
                    return False
                if self._scheduled:
                    return False
                self._scheduled = True
                return True
        reject_envelope(envelope, str(self._owner))
        return False

    def put_signal(self, envelope: Envelope[Any]) -> bool:
        """Queue an exit signal ahead of ordinary mail; False if the mailbox is closed."""
        with self._lock:
            if self._closed:
                return False
            signals = self._signals
            if signals is None:
                signals = self._signals = deque()
            signals.append(envelope)
            schedule = self._wake()
        if schedule is not None:
            schedule(self._target)
        return True

    def _wake(self) -> Callable[[Any], None] | None:
        # Under the lock. Scheduled: the callback to run (once) after it; else None.
        schedule = self._schedule
        if schedule is not None:
            if self._scheduled:
                return None
            self._scheduled = True
            return schedule
        if self._not_empty is not None:
            self._not_empty.notify()
        return None

    def get(self) -> Envelope[Any] | None:
        """Block for the next envelope (signals first); None once the mailbox is closed."""
        with self._lock:
            if self._not_empty is None:
                self._not_empty = threading.Condition(self._lock)
            while True:
                if self._signals:
                    return self._signals.popleft()
                if self._messages:
                    return self._messages.popleft()
                if self._closed:
                    return None
                self._not_empty.wait()

    def take(self) -> Envelope[Any] | None:
        """The next envelope without waiting (signals first).

        None when nothing is queued (or the mailbox is closed); the process is
        then idle until the next :meth:`put` schedules it again.
        """
        with self._lock:
            if self._signals:
                return self._signals.popleft()
            if self._messages:
                return self._messages.popleft()
            self._scheduled = False
            self._messages = None  # idle: see __init__
            return None

    def runnable(self) -> bool:
        """True when mail is queued; else the process is idle until a put schedules it."""
        with self._lock:
            if self._messages or self._signals:
                return True
            self._scheduled = False
            self._messages = None  # idle: see __init__
            return False

    def empty(self) -> bool:
        """True when nothing is queued."""
        with self._lock:
            return not self._messages and not self._signals

    def qsize(self) -> int:
        """How many envelopes are queued (for introspection)."""
        with self._lock:
            return len(self._messages or ()) + len(self._signals or ())

    def close(self) -> list[Envelope[Any]]:
        """Refuse further mail and return what was still queued."""
        with self._lock:
            self._closed = True
            pending = [*(self._signals or ()), *(self._messages or ())]
            self._signals = self._messages = None
            if self._not_empty is not None:
                self._not_empty.notify_all()
        return pending
