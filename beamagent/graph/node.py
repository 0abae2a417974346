"""Node actors: the processes that run servings, off the executors' threads.

A :class:`NodeActor` serves one node visit at a time for whichever run sends
it one: it calls the node's serving, runs the result's tool calls and calls
the serving again with their results, resolves the result to instructions
with :func:`route_result`, and reports back to the run's executor with a
:class:`Served` message. A serving that raises an ``Exception`` fails the
visit as retryable; anything else crashes the actor, and its supervisor
restarts it.

Node actors are pooled per runtime (:class:`NodeWorkers`, like Agens'
permanent servings): an executor borrows one per visit in flight, up to each
node's ``concurrency``, and gives them back when its run ends. Graph processes
run on a :class:`ThreadCache`: starting a thread costs more than a whole graph
step on some hosts, so a process's loop runs on a parked thread when one is free.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Hashable, Sequence
from typing import Any

import pykka
import structlog
from pykka.messages import ProxyCall

from beamagent.errors import InvalidNode, RetryRequested, RunError
from beamagent.graph.instructions import Instruction, parse_next
from beamagent.graph.job import Node
from beamagent.graph.planning import DEFAULT_RETRY_REASON
from beamagent.graph.serving import NodeMessage, Result, ToolCall, ToolRegistry, ToolResult
from supervisors import (
    ChildSpec,
    DynamicSupervisor,
    DynamicSupervisorRef,
    Killed,
    Process,
    StartChildError,
    kill,
    whereis,
)
from supervisors._process import _ProcessKilled

__all__ = [
    "DEFAULT_MAX_TOOL_ROUNDS",
    "NodeActor",
    "NodeActors",
    "NodeWorkers",
    "PooledProcess",
    "RunContext",
    "Serve",
    "Served",
    "ServedOutcome",
    "ServingContext",
    "ThreadCache",
    "ToolRound",
    "current_context",
    "route_result",
]

log = structlog.get_logger(__name__)

DEFAULT_MAX_TOOL_ROUNDS = 8
"""How many times one visit may run tool calls and call its serving again."""


# --- threads ------------------------------------------------------------------------------


class _Slot:
    """One cached thread: runs a process loop, parks, runs the next one."""

    __slots__ = ("cache", "process", "thread", "wake")

    def __init__(self, cache: ThreadCache, name: str) -> None:
        self.cache = cache
        self.process: Process | None = None
        self.wake = threading.Lock()
        self.wake.acquire()  # held while parked; whoever hands over work releases it
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            while True:
                process = self.process
                if process is None:
                    return
                self.process = None
                process._actor_loop()
                # A kill may land after the loop returned: never reuse a killed process's thread.
                if isinstance(process.exit_reason, Killed):
                    return
                if not self.cache._park(self):
                    return
                self.wake.acquire()
        except _ProcessKilled:
            return


class ThreadCache:
    """Threads that run process loops one after another instead of one thread per process.

    :meth:`start` hands a process's loop to a parked thread, or to a new one
    when none is parked. A thread parks again when its loop ends, unless
    ``max_idle`` threads are already parked or the cache is closed; a thread
    whose process was killed is never reused (a late kill could land in the
    next process). :meth:`close` releases every parked thread.
    """

    def __init__(self, name: str = "graph", max_idle: int = 64) -> None:
        """An empty cache; threads are named ``<name>-<n>``."""
        self._name = name
        self._max_idle = max_idle
        self._lock = threading.Lock()
        self._idle: list[_Slot] = []
        self._closed = False
        self._serial = itertools.count(1)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def idle(self) -> int:
        """How many threads are parked."""
        with self._lock:
            return len(self._idle)

    def start(self, process: Process) -> None:
        """Run ``process._actor_loop()`` on a parked thread, or on a new one."""
        with self._lock:
            slot = self._idle.pop() if self._idle and not self._closed else None
        if slot is None:
            slot = _Slot(self, f"{self._name}-{next(self._serial)}")
            slot.process = process
            process._thread = slot.thread
            slot.thread.start()
        else:
            slot.process = process
            process._thread = slot.thread
            slot.wake.release()

    def _park(self, slot: _Slot) -> bool:
        with self._lock:
            if self._closed or len(self._idle) >= self._max_idle:
                return False
            self._idle.append(slot)
            return True

    def close(self) -> None:
        """Let every parked thread exit; busy ones exit when their loop ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for slot in idle:
            slot.process = None
            slot.wake.release()


class PooledProcess(Process):
    """A :class:`~supervisors.Process` whose loop runs on a :class:`ThreadCache` when given one.

    Set :attr:`thread_cache` in ``__init__``; without one (or with a closed
    one) the process gets its own thread as usual.
    """

    thread_cache: ThreadCache | None = None
    """Where the process's loop runs; None for a thread of its own."""

    def _start_actor_loop(self) -> None:
        cache = self.thread_cache
        if cache is None or cache.closed:
            super()._start_actor_loop()
        else:
            cache.start(self)


# --- messages -----------------------------------------------------------------------------


class RunContext:
    """What every visit of one run shares: where to report, the run's tools and limits."""

    __slots__ = ("executor", "max_tool_rounds", "run_id", "runtime", "tools")

    def __init__(
        self,
        executor: pykka.ActorRef[Any],
        run_id: str,
        runtime: Any = None,
        tools: ToolRegistry | None = None,
        max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
    ) -> None:
        self.executor = executor
        self.run_id = run_id
        self.runtime = runtime
        self.tools = tools
        self.max_tool_rounds = max_tool_rounds


class Serve:
    """Executor → node actor: serve visit ``visit_id`` of ``node`` (parallel copy ``copy``)."""

    __slots__ = ("copy", "message", "node", "run", "visit_id")

    def __init__(
        self, visit_id: int, message: NodeMessage, node: Node, copy: int, run: RunContext
    ) -> None:
        self.visit_id = visit_id
        self.message = message
        self.node = node
        self.copy = copy
        self.run = run


class ServedOutcome:
    """The closed set of :attr:`Served.outcome` values."""

    OK = 0
    """``result`` and ``instructions`` are set."""
    RETRY = 1
    """The visit failed in a retryable way; ``reason`` says why."""
    FATAL = 2
    """The run must fail with ``error`` (e.g. a router named an unknown node)."""


class Served:
    """Node actor → executor: how visit ``visit_id`` went (see :class:`ServedOutcome`)."""

    __slots__ = ("error", "instructions", "outcome", "reason", "result", "visit_id", "worker_urn")

    def __init__(
        self,
        visit_id: int,
        worker_urn: str,
        outcome: int,
        result: Result | None = None,
        instructions: list[Instruction] | None = None,
        reason: str | None = None,
        error: BaseException | None = None,
    ) -> None:
        self.visit_id = visit_id
        self.worker_urn = worker_urn
        self.outcome = outcome
        self.result = result
        self.instructions = instructions
        self.reason = reason
        self.error = error


class ToolRound:
    """Node actor → executor: visit ``visit_id`` ran these tool calls (for ``tool_call`` events)."""

    __slots__ = ("calls", "results", "visit_id")

    def __init__(
        self, visit_id: int, calls: Sequence[ToolCall], results: Sequence[ToolResult]
    ) -> None:
        self.visit_id = visit_id
        self.calls = tuple(calls)
        self.results = tuple(results)


# --- serving context ----------------------------------------------------------------------


class ServingContext:
    """What a serving may want to know beyond its message: set while a node actor serves.

    ``runtime`` is the run's runtime, ``node`` the node being served, ``copy``
    which parallel copy of it (1, 2, ...) runs the visit, ``tools`` the run's
    tools (``run_job(tools=...)``).
    """

    __slots__ = ("copy", "node", "run_id", "runtime", "tools")

    def __init__(
        self,
        runtime: Any,
        run_id: str,
        node: Node,
        copy: int,
        tools: ToolRegistry | None = None,
    ) -> None:
        self.runtime = runtime
        self.run_id = run_id
        self.node = node
        self.copy = copy
        self.tools = tools


_context = threading.local()


def current_context() -> ServingContext | None:
    """The :class:`ServingContext` of the visit this thread is serving, or None."""
    context: ServingContext | None = getattr(_context, "value", None)
    return context


# --- routing ------------------------------------------------------------------------------


def route_result(node: Node, message: NodeMessage, result: Result) -> list[Instruction]:
    """The instructions a node's ``result`` resolves to.

    A ``next`` list in the result with at least one usable entry wins; else
    the node's router decides (``route_with_next``); no router and no usable
    ``next`` finishes the thread (``[]``).
    """
    router = node.router
    if router is not None:
        return router.route_with_next(message, result.outputs, result.next)
    return parse_next(result.next) if result.next else []


# --- the actor and its pool ----------------------------------------------------------------


class NodeActor(PooledProcess):
    """Serves node visits, one at a time, for whichever run's executor sends them.

    Node actors are pooled per runtime (see :class:`NodeWorkers`): an executor
    borrows one for each visit in flight and gives them back when its run
    ends, so a run does not pay for starting a process per node.
    """

    def __init__(self, *, thread_cache: ThreadCache | None = None) -> None:
        """An idle node actor."""
        super().__init__()
        self.thread_cache = thread_cache
        self._urn = self.actor_urn

    def on_start(self) -> None:
        """Ready to serve."""
        self.process_state = "idle"

    def on_receive(self, message: Any) -> Any:
        """Serve a :class:`Serve`; anything else goes to ``Process``."""
        if type(message) is Serve:
            self._serve(message)
            return None
        return super().on_receive(message)

    def _serve(self, serve: Serve) -> None:
        run = serve.run
        node = serve.node
        self.process_state = f"serving {node.id} of {run.run_id}"
        _context.value = ServingContext(run.runtime, run.run_id, node, serve.copy, run.tools)
        try:
            served = self._attempt(serve)
        finally:
            _context.value = None
            self.process_state = "idle"
        with contextlib.suppress(pykka.ActorDeadError):  # the run is over: nobody waits
            run.executor.tell(served)

    def _attempt(self, serve: Serve) -> Served:
        node = serve.node
        visit_id = serve.visit_id
        message = serve.message
        serving = node.serving
        assert serving is not None  # sub nodes never reach a node actor
        try:
            result = serving.handle(message)
            rounds = 0
            while result.tool_calls:
                if rounds >= serve.run.max_tool_rounds:
                    raise RetryRequested(
                        f"more than {serve.run.max_tool_rounds} rounds of tool calls; "
                        "answer without calling tools"
                    )
                rounds += 1
                results = self._call_tools(serve, result.tool_calls)
                message = message.with_tool_results(results)
                result = serving.handle(message)
            if not isinstance(result, Result):
                raise TypeError(
                    f"serving of node {node.id!r} returned {type(result).__name__}, not a Result"
                )
        except RetryRequested as exc:
            return Served(
                visit_id, self._urn, ServedOutcome.RETRY, reason=exc.reason or DEFAULT_RETRY_REASON
            )
        except Exception as exc:  # a failing serving fails the visit, not the actor
            log.warning(
                "serving_failed",
                run_id=serve.run.run_id,
                node_id=node.id,
                thread_id=message.thread_id,
                error=repr(exc),
            )
            return Served(
                visit_id,
                self._urn,
                ServedOutcome.RETRY,
                reason=f"the serving failed: {type(exc).__name__}: {exc}",
                error=exc,
            )
        try:
            instructions = route_result(node, message, result)
        except Exception as exc:  # InvalidNode, or a router bug: retrying gives the same answer
            if not isinstance(exc, InvalidNode):
                log.error(
                    "router_failed", run_id=serve.run.run_id, node_id=node.id, error=repr(exc)
                )
            return Served(visit_id, self._urn, ServedOutcome.FATAL, result=result, error=exc)
        return Served(
            visit_id, self._urn, ServedOutcome.OK, result=result, instructions=instructions
        )

    def _call_tools(self, serve: Serve, calls: Sequence[ToolCall]) -> list[ToolResult]:
        serving_tools = getattr(serve.node.serving, "tools", None)
        if isinstance(serving_tools, ToolRegistry):
            tools = serving_tools
        else:
            tools = serve.run.tools if serve.run.tools is not None else _NO_TOOLS
        results = [tools.call(call) for call in calls]
        with contextlib.suppress(pykka.ActorDeadError):
            serve.run.executor.tell(ToolRound(serve.visit_id, calls, results))
        return results


_NO_TOOLS = ToolRegistry()


class NodeActors(DynamicSupervisor):
    """The supervisor of a runtime's node actors (a ``DynamicSupervisor`` with a telling name)."""


class NodeWorkers:
    """A runtime's pool of :class:`NodeActor` processes, under the supervisor named ``name``.

    :meth:`checkout` hands out an idle actor (starting one under the
    supervisor when none is idle); :meth:`checkin` takes it back. Actors are
    ``transient`` children: one that crashes is restarted and comes back to the
    idle list; one killed to cancel its visit (:meth:`cancel`) is dropped. At
    most ``max_idle`` stay idle, the others stop.
    """

    def __init__(
        self, name: Hashable, thread_cache: ThreadCache | None = None, max_idle: int = 64
    ) -> None:
        """An empty pool whose actors start under the supervisor registered as ``name``.

        The supervisor is looked up by name each time, so a restarted one is found.
        """
        self._name = name
        self._lock = threading.Lock()
        self._idle: list[pykka.ActorRef[Any]] = []
        self._cache = thread_cache
        self._max_idle = max_idle

    def spec(self) -> ChildSpec:
        """The child spec of one node actor (its start function enlists it as idle)."""
        return ChildSpec("node", self._start_actor, restart="transient", shutdown=1.0)

    def _start_actor(self) -> pykka.ActorRef[Any]:
        # Runs in the supervisor, at the first start and at every restart.
        ref = NodeActor.start(thread_cache=self._cache)
        with self._lock:
            self._idle.append(ref)
        return ref

    def idle(self) -> int:
        """How many node actors are idle."""
        with self._lock:
            return len(self._idle)

    def checkout(self, timeout: float = 30.0) -> pykka.ActorRef[Any]:
        """An idle node actor, started first if none is idle.

        Raises:
            RunError: the pool's supervisor is gone (the runtime is stopping).
        """
        while True:
            with self._lock:
                while self._idle:
                    ref = self._idle.pop()
                    if ref.is_alive():
                        return ref
            supervisor = whereis(self._name)
            if not isinstance(supervisor, DynamicSupervisorRef):
                raise RunError("the node actors' supervisor is not running (runtime stopped?)")
            try:
                supervisor.start_child(self.spec(), timeout=timeout)
            except pykka.ActorDeadError:
                raise RunError("the node actors' supervisor stopped") from None
            except StartChildError as exc:
                raise RunError(f"a node actor did not start: {exc.reason!r}") from exc

    def cancel(self, ref: pykka.ActorRef[Any]) -> None:
        """Kill a busy node actor to cancel its visit; it is removed, not restarted.

        The supervisor is asked to drop it first (without waiting), so the kill is
        not counted as a crash against its restart intensity.
        """
        supervisor = whereis(self._name)
        if supervisor is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                supervisor.ask(
                    ProxyCall(("_api_terminate_child",), (ref.actor_urn,), {}), block=False
                )
        kill(ref)

    def checkin(self, ref: pykka.ActorRef[Any]) -> None:
        """Give back an idle node actor."""
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(ref)
                return
        with contextlib.suppress(pykka.ActorDeadError):
            ref.stop(block=False)
