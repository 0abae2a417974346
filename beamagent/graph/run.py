"""A graph run as its caller sees it: the :class:`Run` handle, its events and its result.

``runtime.run_job(job, input)`` returns a :class:`Run` at once; the run goes on
in its executor actor. The handle reads the run's :class:`EventLog`, which the
executor appends to, so every method works while the run goes on and after it
ended (even once its actors are gone), from any thread or event loop:

* :meth:`Run.result` waits for the :class:`RunResult` (and raises the run's
  error when it failed); :meth:`Run.aresult` is its async twin;
* :meth:`Run.events` / :meth:`Run.aevents` replay every :class:`RunEvent` from
  the start, then follow the run live, and stop after the one terminal event
  (``run_complete``, ``run_ended`` or ``run_error``);
* :meth:`Run.status` and :meth:`Run.stop`.

>>> event = RunEvent(EventKind.NODE_RESULT, "r1", "triage", "0", 2, {"body": "urgent"})
>>> str(event)
'step 2    thread 0   node_result   triage body=urgent'
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import enum
import functools
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from beamagent.graph.serving import Result
from beamagent.timeouts import check_timeout
from supervisors._scheduler import scheduler

_allocate_lock = _thread.allocate_lock

if TYPE_CHECKING:
    from beamagent.graph.api import GraphApi
    from beamagent.graph.tracing import RunTracer

__all__ = [
    "TERMINAL_EVENTS",
    "EventKind",
    "EventLog",
    "Run",
    "RunEvent",
    "RunResult",
    "RunStatus",
    "StepResult",
]


class RunStatus(enum.StrEnum):
    """Where a run is: running, or how it ended."""

    RUNNING = "running"
    """The run goes on."""
    COMPLETED = "completed"
    """Every thread finished (``run_complete``)."""
    ENDED = "ended"
    """A node said :class:`~beamagent.graph.instructions.End` (``run_ended``)."""
    STOPPED = "stopped"
    """:meth:`Run.stop` stopped it (``run_ended``)."""
    INTERRUPTED = "interrupted"
    """Its runtime stopped under it (``run_ended``); ``resume_run`` can continue it."""
    ERROR = "error"
    """It failed (``run_error``); :attr:`RunResult.error` says why."""

    @property
    def terminal(self) -> bool:
        """Whether the run is over."""
        return self is not RunStatus.RUNNING


class EventKind(enum.StrEnum):
    """The kind of a :class:`RunEvent` (also its structlog event name)."""

    RUN_STARTED = "run_started"
    NODE_STARTED = "node_started"
    NODE_RESULT = "node_result"
    NODE_RETRY = "node_retry"
    NEXT_DROPPED = "next_dropped"
    TOOL_CALL = "tool_call"
    YIELD_WAIT = "yield_wait"
    YIELD_DONE = "yield_done"
    SUB_STARTED = "sub_started"
    SUB_DONE = "sub_done"
    RUN_COMPLETE = "run_complete"
    RUN_ENDED = "run_ended"
    RUN_ERROR = "run_error"


TERMINAL_EVENTS = frozenset({EventKind.RUN_COMPLETE, EventKind.RUN_ENDED, EventKind.RUN_ERROR})
"""The kinds that end a run; every run has exactly one of them, as its last event."""


def _frozen_data(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return value if value is not None else {}


@attrs.frozen
class RunEvent:
    """Something that happened in a run: ``kind``, where (node, thread, step), and details.

    ``data`` holds the kind's details: ``node_result`` has ``body``;
    ``node_retry`` has ``reason`` and ``retries``; ``next_dropped`` has
    ``dropped``, a list of ``{"index", "entry", "reason", "source"}``, one for
    each entry of the node's ``next`` (or of its router's instructions) that
    could not be read; ``tool_call`` has ``tool``, ``call_id`` and
    ``is_error``; ``yield_wait`` has ``total`` and ``ready``;
    ``yield_done`` has ``total`` and ``threads``; ``sub_started`` / ``sub_done``
    have ``job_id`` (and ``status``); the terminal events have ``status`` (and
    ``error`` for ``run_error``).
    """

    kind: EventKind
    run_id: str
    node_id: str | None = None
    thread_id: str | None = None
    step: int = 0
    data: Mapping[str, Any] = attrs.field(default=None, converter=_frozen_data)

    @property
    def terminal(self) -> bool:
        """Whether this is the run's terminal event."""
        return self.kind in TERMINAL_EVENTS

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (``kind`` as its string)."""
        return {
            "kind": self.kind.value,
            "run_id": self.run_id,
            "node_id": self.node_id,
            "thread_id": self.thread_id,
            "step": self.step,
            "data": dict(self.data),
        }

    def __str__(self) -> str:
        thread = "-" if self.thread_id is None else self.thread_id
        parts = [f"step {self.step:<4}", f"thread {thread:<3}", f"{self.kind.value:<13}"]
        if self.node_id is not None:
            parts.append(self.node_id)
        if self.data:
            parts.append(" ".join(f"{k}={_short(v)}" for k, v in self.data.items()))
        return " ".join(parts)


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@attrs.frozen
class StepResult:
    """One node result of a run: which node, on which thread, at which step."""

    node_id: str
    thread_id: str
    step: int
    result: Result


@attrs.frozen
class RunResult:
    """How a run ended.

    ``output`` is the result that ended it (the ``End`` node's) or, for a
    completed run, the last result produced; ``results_by_thread`` holds every
    node result of each thread in order; ``steps`` counts node visits started
    (retries included); ``error`` is set when ``status`` is ``error``.
    """

    run_id: str
    status: RunStatus
    output: Result | None
    results_by_thread: Mapping[str, tuple[StepResult, ...]]
    steps: int
    error: BaseException | None = attrs.field(default=None, eq=False)

    @property
    def results(self) -> tuple[StepResult, ...]:
        """Every node result of the run, in step order."""
        merged = [r for results in self.results_by_thread.values() for r in results]
        return tuple(sorted(merged, key=lambda r: r.step))


class EventLog:
    """The events of one run, appended by its executor and read by any number of readers.

    Thread-safe; readers block on a lock of their own (threads) or on an asyncio
    future resolved with ``call_soon_threadsafe`` (event loops), never on a
    thread pool. After the terminal event, further appends are refused, which
    is what makes "exactly one terminal event" hold even when an executor is
    killed. Events are kept as plain tuples and made into :class:`RunEvent`
    values when read: most runs are never read event by event, and every step
    adds two.
    """

    __slots__ = (
        "_events",
        "_followers",
        "_lock",
        "_result",
        "_result_waiters",
        "_run_id",
        "_tracer",
        "_waiters",
    )

    def __init__(self, run_id: str = "", tracer: RunTracer | None = None) -> None:
        """An empty log of run ``run_id``; ``tracer`` makes the run's spans from its events."""
        self._run_id = run_id
        self._tracer = tracer
        self._lock = threading.Lock()
        # A blocked reader waits on a lock of its own, released by the append that
        # wakes it (what a Condition does, without building two per run): a
        # thread waiting for the result is not woken for every event, only
        # followers are (and only when there are some).
        self._followers: list[_thread.LockType] = []
        self._result_waiters: list[_thread.LockType] = []
        self._events: list[RunEvent | _Raw] = []
        self._result: RunResult | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def record(
        self,
        kind: EventKind,
        node_id: str | None,
        thread_id: str | None,
        step: int,
        data: Mapping[str, Any],
    ) -> None:
        """Add a non-terminal event of this log's run (the executor's fast path)."""
        with self._lock:
            if self._result is not None:
                return
            self._events.append((kind, node_id, thread_id, step, data))
            # In the lock: the tracer sees the events in the log's order, none after the end.
            if self._tracer is not None:
                self._tracer.record(kind, node_id, thread_id, step, data)
            followers = self._followers
            if followers:
                self._followers = []
            waiters = self._waiters
            if waiters:
                self._waiters = []
        if followers:
            for follower in followers:
                follower.release()
        if waiters:
            _wake_all(waiters)

    def append(self, event: RunEvent, result: RunResult | None = None) -> bool:
        """Add an event; a terminal event must come with the run's ``result``.

        Returns False (and drops the event) once the log holds a terminal event.
        """
        done: list[_thread.LockType] = []
        with self._lock:
            if self._result is not None:
                return False
            self._events.append(event)
            if self._tracer is not None:
                self._tracer.append(event, result)
            if result is not None:
                self._result = result
                done = self._result_waiters
                self._result_waiters = []
            followers = self._followers
            if followers:
                self._followers = []
            waiters = self._waiters
            if waiters:
                self._waiters = []
        if done:
            # The result is in: its waiters wake once this worker has nothing to run
            # next, so they do not wake only to wait for the GIL the worker holds.
            scheduler.wake_when_idle(functools.partial(_release_all, done))
        for sleeper in followers:
            sleeper.release()
        if waiters:
            _wake_all(waiters)
        return True

    @property
    def tracer(self) -> RunTracer | None:
        """The run's tracer, when tracing is on."""
        return self._tracer

    def _event(self, item: RunEvent | _Raw) -> RunEvent:
        if isinstance(item, RunEvent):
            return item
        kind, node_id, thread_id, step, data = item
        return RunEvent(kind, self._run_id, node_id, thread_id, step, data)

    @property
    def result(self) -> RunResult | None:
        """The run's result once its terminal event is in, else None."""
        return self._result

    def progress(self) -> tuple[int, list[tuple[str, str]]]:
        """``(events so far, the (node, thread) visits started and not yet done)``.

        For introspection (``beamagent top``): the lock is held only to copy the list.
        """
        with self._lock:
            items = list(self._events)
        running: dict[tuple[str, str], None] = {}
        for item in items:
            event = self._event(item)
            if event.node_id is None:
                continue
            key = (event.node_id, event.thread_id or "0")
            if event.kind is EventKind.NODE_STARTED:
                running[key] = None
            elif event.kind in (EventKind.NODE_RESULT, EventKind.NODE_RETRY):
                running.pop(key, None)
        return len(items), list(running)

    def snapshot(self) -> list[RunEvent]:
        """The events so far."""
        with self._lock:
            items = list(self._events)
        return [self._event(item) for item in items]

    def wait(self, timeout: float | None = None) -> RunResult:
        """Block until the terminal event is in; return the result.

        Raises:
            TimeoutError: not finished within ``timeout`` seconds.
        """
        result = self._result
        if result is not None:
            return result
        sleeper = _allocate_lock()
        sleeper.acquire()
        with self._lock:
            if self._result is None:
                self._result_waiters.append(sleeper)
            else:
                sleeper.release()
        if not _sleep(sleeper, timeout):
            with self._lock, contextlib.suppress(ValueError):
                self._result_waiters.remove(sleeper)
        result = self._result
        if result is None:
            raise TimeoutError(f"the run did not finish within {timeout} s")
        return result

    def follow(self, timeout: float | None = None) -> Iterator[RunEvent]:
        """Every event from the first, then new ones as they come, up to the terminal one.

        ``timeout`` bounds each wait for a new event (``TimeoutError``).
        """
        index = 0
        while True:
            with self._lock:
                batch = self._events[index:]
                index += len(batch)
                done = self._result is not None and index >= len(self._events)
                sleeper = None
                if not batch and not done:
                    sleeper = _allocate_lock()
                    sleeper.acquire()
                    self._followers.append(sleeper)
            for item in batch:
                yield self._event(item)
            if done:
                return
            if sleeper is not None and not _sleep(sleeper, timeout):
                with self._lock:
                    if sleeper in self._followers:
                        self._followers.remove(sleeper)
                        if index >= len(self._events) and self._result is None:
                            raise TimeoutError(f"no run event within {timeout} s")

    async def afollow(self) -> AsyncIterator[RunEvent]:
        """Async twin of :meth:`follow`: waits on the event loop, never on a thread."""
        loop = asyncio.get_running_loop()
        index = 0
        while True:
            future: asyncio.Future[None] | None = None
            with self._lock:
                batch = self._events[index:]
                index += len(batch)
                done = self._result is not None and index >= len(self._events)
                if not batch and not done:
                    future = loop.create_future()
                    self._waiters.append((loop, future))
            for item in batch:
                yield self._event(item)
            if done:
                return
            if future is not None:
                await future


def _sleep(sleeper: _thread.LockType, timeout: float | None) -> bool:
    """Wait until ``sleeper`` is released (by an append); False when ``timeout`` ran out."""
    if timeout is None:
        return sleeper.acquire()
    return sleeper.acquire(timeout=max(timeout, 0.0))


_Raw = tuple[EventKind, str | None, str | None, int, Mapping[str, Any]]


def _release_all(sleepers: list[_thread.LockType]) -> None:
    for sleeper in sleepers:
        sleeper.release()


def _wake_all(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
    for loop, future in waiters:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_wake, future)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Run:
    """The handle of a graph run; returned by ``runtime.run_job`` and ``runtime.resume_run``.

    Example::

        run = rt.run_job(job, "a customer cannot log in")
        for event in run.events():
            print(event)
        run.result().output.body
    """

    __slots__ = ("_log", "_runtime", "job_id", "run_id")

    def __init__(self, runtime: GraphApi, run_id: str, job_id: str, log: EventLog) -> None:
        """A handle on the run ``run_id`` whose events go to ``log``."""
        self._runtime = runtime
        self._log = log
        self.run_id = run_id
        """The run's id."""
        self.job_id = job_id
        """The id of the job it runs."""

    def __repr__(self) -> str:
        return f"<Run {self.run_id} ({self.job_id}) {self.status().value}>"

    def status(self) -> RunStatus:
        """``running``, or how the run ended."""
        result = self._log.result
        return RunStatus.RUNNING if result is None else result.status

    def done(self) -> bool:
        """Whether the run is over (its terminal event is in)."""
        return self._log.result is not None

    def result(self, timeout: float | None = None, *, raise_error: bool = True) -> RunResult:
        """Wait for the run to end and return how it ended.

        ``timeout`` is seconds, or None (the default) to wait as long as it takes.

        Raises:
            TimeoutError: it did not end within ``timeout`` seconds.
            InvalidOption: ``timeout`` is neither None nor seconds > 0.
            BeamAgentError: the run's error when it failed (``ServingFailed``,
                ``InvalidNext``, ``MaxRetriesExceeded``, ``MaxStepsExceeded``,
                ``InvalidNode``, ``JobNotLoaded``, ``RunError``...), unless
                ``raise_error=False``.
        """
        return self._outcome(self._log.wait(check_timeout(timeout)), raise_error)

    @staticmethod
    def _outcome(result: RunResult, raise_error: bool) -> RunResult:
        if raise_error and result.error is not None:
            raise result.error
        return result

    async def aresult(self, timeout: float | None = None, *, raise_error: bool = True) -> RunResult:
        """Async twin of :meth:`result` (waits on the event loop, not a thread)."""
        timeout = check_timeout(timeout)

        async def terminal() -> None:
            async for _event in self._log.afollow():
                pass

        if self._log.result is None:
            try:
                await asyncio.wait_for(terminal(), timeout)
            except TimeoutError:
                raise TimeoutError(f"run {self.run_id} did not end within {timeout} s") from None
        return self._outcome(self._log.wait(0), raise_error)

    def events(self, timeout: float | None = None) -> Iterator[RunEvent]:
        """Every event of the run from the first, live, ending with the terminal one.

        ``timeout`` bounds each wait for the next event (``TimeoutError``); None
        (the default) waits as long as it takes.

        Raises:
            InvalidOption: ``timeout`` is neither None nor seconds > 0.
        """
        return self._log.follow(check_timeout(timeout))

    def aevents(self) -> AsyncIterator[RunEvent]:
        """Async twin of :meth:`events` (an async iterator)."""
        return self._log.afollow()

    def stop(self, timeout: float | None = 30.0) -> RunResult:
        """Stop the run (status ``stopped``, in-flight nodes cancelled); returns its result.

        A run that already ended is left as it is. Never raises the run's error.

        Raises:
            InvalidOption: ``timeout`` is neither None nor seconds > 0.
        """
        timeout = check_timeout(timeout)
        if self._log.result is None:
            self._runtime._stop_run(self.run_id, timeout)
        return self._log.wait(timeout)
