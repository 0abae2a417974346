"""The executor's pure decisions: what a thread does after a node, and when a yield joins.

:func:`plan` turns the instructions a node's result resolved to into one
:class:`Plan` (end the run, retry the node, fan out, or finish the thread).
:class:`JoinBarrier` tracks a run's live threads and the ones waiting at a
yield, and says when a join is released. Both are plain values: the executor
actor holds them and calls these functions, so they are tested without actors.

>>> plan([Route("a", 2), Yield("j"), End()]).kind
<PlanKind.END: 'end'>
>>> plan([Yield("j"), Route("a", 2)]).fanout
(Route(node_id='a', count=1), Route(node_id='a', count=1), Yield(node_id='j'))
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import attrs

from beamagent.errors import QueryFailed, QueryTimeout, RetryRequested, SessionError
from beamagent.graph.instructions import End, Retry, Route, Sub, Yield
from beamagent.graph.serving import Result
from beamagent.log import get_logger

__all__ = [
    "DEFAULT_RETRY_REASON",
    "TRANSIENT_ERRORS",
    "Arrival",
    "Join",
    "JoinBarrier",
    "Plan",
    "PlanKind",
    "is_retryable",
    "plan",
]

log = get_logger(__name__)

#: The reason given to a node retried without one (Agens' wording).
DEFAULT_RETRY_REASON = "the previous response did not pass validation"

TRANSIENT_ERRORS: tuple[type[Exception], ...] = (SessionError, QueryTimeout, QueryFailed)
"""Serving exceptions every node retries: transient backend failures.

``SessionError`` covers its transport family (``TransportError``,
``ConnectTimeout``, ``BufferOverflow``): the session's process or connection
failed and its supervisor restarts it. ``QueryTimeout``: no answer in time.
``QueryFailed``: the backend answered with an error result (an HTTP or API error).
"""

_ALWAYS_RETRIED: tuple[type[Exception], ...] = (RetryRequested, *TRANSIENT_ERRORS)


def is_retryable(error: BaseException, retry_on: tuple[type[BaseException], ...] = ()) -> bool:
    """Whether a serving's exception retries its node visit; if not, it ends the run.

    Retried: :class:`~beamagent.errors.RetryRequested`, :data:`TRANSIENT_ERRORS`,
    and instances of the types in ``retry_on`` (the node's, else the job's). A
    retried visit still counts against the job's ``max_retries``.

    >>> is_retryable(ValueError("bug")), is_retryable(ValueError("bug"), (ValueError,))
    (False, True)
    """
    return isinstance(error, (_ALWAYS_RETRIED, retry_on))


class PlanKind(enum.StrEnum):
    """What a thread does next."""

    END = "end"
    """Stop the whole run (every thread)."""
    RETRY = "retry"
    """Run the same node again, with :attr:`Plan.retry_reason`."""
    FANOUT = "fanout"
    """Carry on with :attr:`Plan.fanout`: the first item in this thread, each other in a new one."""
    FINISH = "finish"
    """Nothing to do: this thread is finished."""


@attrs.frozen
class Plan:
    """The decision for one thread after a node result; build it with :func:`plan`.

    ``fanout`` is only non-empty for :attr:`PlanKind.FANOUT`: routes expanded to
    one ``Route(node_id)`` per copy, then yields, then subs.
    """

    end: bool = False
    retry_reason: str | None = None
    fanout: tuple[Route | Yield | Sub, ...] = ()

    def __attrs_post_init__(self) -> None:
        chosen = sum((self.end, self.retry_reason is not None, bool(self.fanout)))
        if chosen > 1:
            raise ValueError("a plan is one of end, retry or fan-out")

    @property
    def kind(self) -> PlanKind:
        """Which of end, retry, fan-out or finish this plan is."""
        if self.end:
            return PlanKind.END
        if self.retry_reason is not None:
            return PlanKind.RETRY
        if self.fanout:
            return PlanKind.FANOUT
        return PlanKind.FINISH

    @property
    def finished(self) -> bool:
        """Whether the thread is finished (nothing to run next)."""
        return self.kind is PlanKind.FINISH


def plan(instructions: Iterable[Any]) -> Plan:
    """Decide what a thread does with the instructions a node's result resolved to.

    In Agens' order, only one kind is acted on:

    1. :class:`End` anywhere ends the run.
    2. Else the first :class:`Retry` with a reason, else a bare one (with
       :data:`DEFAULT_RETRY_REASON`), retries the node; the rest is discarded.
    3. Else fan out: each :class:`Route` as ``count`` single copies (in order),
       then every :class:`Yield`, then every :class:`Sub`.
    4. Nothing left: the thread is finished.

    Items that are not instructions are dropped (logged at debug).
    """
    routes: list[Route] = []
    yields: list[Yield] = []
    subs: list[Sub] = []
    retry: Retry | None = None
    for item in instructions:
        if isinstance(item, End):
            return Plan(end=True)
        if isinstance(item, Retry):
            if retry is None or (retry.reason is None and item.reason is not None):
                retry = item
        elif isinstance(item, Route):
            routes.extend([Route(item.node_id)] * item.count)
        elif isinstance(item, Yield):
            yields.append(item)
        elif isinstance(item, Sub):
            subs.append(item)
        else:
            log.debug("instruction_dropped", got=type(item).__name__)
    if retry is not None:
        return Plan(retry_reason=retry.reason or DEFAULT_RETRY_REASON)
    return Plan(fanout=(*routes, *yields, *subs))


@attrs.frozen
class Arrival:
    """A thread waiting at a yield: which thread, for which join node, with what result."""

    thread_id: str
    target: str
    result: Result


@attrs.frozen
class Join:
    """A released join: run ``target`` once, with the results of every thread that yielded to it.

    ``thread_ids`` and ``results`` are in arrival order.
    """

    target: str
    thread_ids: tuple[str, ...]
    results: tuple[Result, ...]


def _thread_set(value: Iterable[str]) -> frozenset[str]:
    return frozenset(value)


def _arrival_tuple(value: Iterable[Arrival]) -> tuple[Arrival, ...]:
    return tuple(value)


@attrs.frozen
class JoinBarrier:
    """The live threads of a run and the threads waiting at yields (an immutable value).

    Every operation returns a new barrier. A join is released when no thread is
    live any more, i.e. every thread has yielded or finished: a thread that
    finishes counts as arrived, so no thread is ever left waiting. Threads may
    yield to different targets; as any live thread could still yield to any
    target, all targets are released together, one :class:`Join` per target,
    in the order of each target's first arrival.

    When a node fans out, :meth:`spawn` the new threads before the current
    thread arrives or finishes, or the join may be released without them.

    >>> barrier = JoinBarrier().spawn("t1").spawn("t2")
    >>> barrier, joins = barrier.arrive("t1", "merge", Result("a"))
    >>> joins
    ()
    >>> barrier, joins = barrier.finish("t2")
    >>> [(j.target, j.thread_ids) for j in joins]
    [('merge', ('t1',))]
    """

    live: frozenset[str] = attrs.field(default=frozenset(), converter=_thread_set)
    arrivals: tuple[Arrival, ...] = attrs.field(default=(), converter=_arrival_tuple)

    @property
    def waiting(self) -> tuple[str, ...]:
        """The threads waiting at a yield, in arrival order."""
        return tuple(a.thread_id for a in self.arrivals)

    @property
    def targets(self) -> tuple[str, ...]:
        """The join nodes threads are waiting for, in order of first arrival."""
        return tuple(dict.fromkeys(a.target for a in self.arrivals))

    @property
    def total(self) -> int:
        """Threads the barrier tracks: live plus waiting (``yield_wait``'s total)."""
        return len(self.live) + len(self.arrivals)

    @property
    def ready(self) -> int:
        """Threads waiting at a yield (``yield_wait``'s ready)."""
        return len(self.arrivals)

    @property
    def idle(self) -> bool:
        """No thread is live or waiting: the run has nothing left to do."""
        return not self.live and not self.arrivals

    def spawn(self, thread_id: str) -> JoinBarrier:
        """Add a new live thread.

        Raises:
            ValueError: the thread is already live or waiting.
        """
        if thread_id in self.live or thread_id in self.waiting:
            raise ValueError(f"thread {thread_id!r} is already live or waiting")
        return attrs.evolve(self, live=self.live | {thread_id})

    def arrive(
        self, thread_id: str, yield_target: str, result: Result
    ) -> tuple[JoinBarrier, tuple[Join, ...]]:
        """The live thread ``thread_id`` yields to ``yield_target`` with its node's ``result``.

        Returns the new barrier and the joins released (empty while threads are live).

        Raises:
            ValueError: the thread is not live.
        """
        self._require_live(thread_id)
        arrivals = (*self.arrivals, Arrival(thread_id, yield_target, result))
        return JoinBarrier(self.live - {thread_id}, arrivals)._release()

    def finish(self, thread_id: str) -> tuple[JoinBarrier, tuple[Join, ...]]:
        """The live thread ``thread_id`` is done; it counts as arrived at every join.

        Returns the new barrier and the joins released.

        Raises:
            ValueError: the thread is not live.
        """
        self._require_live(thread_id)
        return JoinBarrier(self.live - {thread_id}, self.arrivals)._release()

    def _require_live(self, thread_id: str) -> None:
        if thread_id not in self.live:
            raise ValueError(f"thread {thread_id!r} is not live")

    def _release(self) -> tuple[JoinBarrier, tuple[Join, ...]]:
        if self.live or not self.arrivals:
            return self, ()
        joins = tuple(
            Join(
                target,
                tuple(a.thread_id for a in self.arrivals if a.target == target),
                tuple(a.result for a in self.arrivals if a.target == target),
            )
            for target in self.targets
        )
        return JoinBarrier(), joins
