"""Node actors: the processes that run servings, off the executors' threads.

A :class:`NodeActor` serves one node visit at a time for whichever run sends
it one: it calls the node's serving, runs the result's tool calls and calls
the serving again with their results, resolves the result to instructions
with :func:`route_result`, and reports back to the run's executor with a
:class:`Served` message. A serving that raises a retryable ``Exception``
(:func:`~beamagent.graph.planning.is_retryable`) fails the visit as retryable;
any other ``Exception`` fails the run (``ServingFailed``); a ``BaseException``
crashes the actor, its supervisor restarts it, and the visit is retried.

A visit sent with a :class:`Chain` (its run's only visit, no checkpoints) lets
the actor serve the next visit itself when the result routes to exactly one
node, instead of a round trip through the executor for each step.

Node actors are pooled per runtime (:class:`NodeWorkers`, like Agens'
permanent servings): an executor borrows one per visit in flight, up to each
node's ``concurrency``, and gives them back when its run ends. Graph processes
run on the shared scheduler like any process: a node actor's report to its
executor runs next on the same worker (the scheduler's next slot), with no
thread hand-off.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import attrs
import pykka
from pykka.messages import ProxyCall

from beamagent import telemetry
from beamagent.errors import InvalidNext, InvalidNode, RetryRequested, RunError, ServingFailed
from beamagent.graph.instructions import (
    DroppedEntry,
    End,
    Instruction,
    Retry,
    Route,
    Sub,
    Yield,
    decode_next,
)
from beamagent.graph.job import Node
from beamagent.graph.planning import DEFAULT_RETRY_REASON, is_retryable
from beamagent.graph.run import EventKind, EventLog
from beamagent.graph.serving import NodeMessage, Result, ToolCall, ToolRegistry, ToolResult
from beamagent.graph.tracing import RunTracer
from beamagent.log import get_logger
from supervisors import (
    ChildSpec,
    Down,
    DynamicSupervisor,
    DynamicSupervisorRef,
    Process,
    StartChildError,
    WaitTimeout,
    await_name,
    kill,
    monitor,
    whereis,
)

__all__ = [
    "DEFAULT_MAX_TOOL_ROUNDS",
    "Chain",
    "NodeActor",
    "NodeActors",
    "NodeWorkers",
    "RunContext",
    "Serve",
    "Served",
    "ServedOutcome",
    "ServingContext",
    "ToolRound",
    "chain_target",
    "current_context",
    "route_result",
]

log = get_logger(__name__)

DEFAULT_MAX_TOOL_ROUNDS = 8
"""How many times one visit may run tool calls and call its serving again."""


# --- messages -----------------------------------------------------------------------------


class RunContext:
    """What every visit of one run shares: where to report, the run's tools and limits.

    ``retry_on`` is the job's: the exception types its nodes retry unless a node
    sets its own.
    """

    __slots__ = ("executor", "max_tool_rounds", "retry_on", "run_id", "runtime", "tools", "tracer")

    def __init__(
        self,
        executor: pykka.ActorRef[Any],
        run_id: str,
        runtime: Any = None,
        tools: ToolRegistry | None = None,
        max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
        retry_on: tuple[type[Exception], ...] = (),
        tracer: RunTracer | None = None,
    ) -> None:
        self.executor = executor
        self.tracer = tracer  # the node span is current while a visit is served
        self.run_id = run_id
        self.runtime = runtime
        self.tools = tools
        self.max_tool_rounds = max_tool_rounds
        self.retry_on = retry_on


class Serve:
    """Executor → node actor: serve visit ``visit_id`` of ``node`` (parallel copy ``copy``).

    With a ``chain``, the node actor may go on serving the run's next visits itself
    (see :class:`Chain`).
    """

    __slots__ = ("chain", "copy", "message", "node", "run", "visit_id")

    def __init__(
        self,
        visit_id: int,
        message: NodeMessage,
        node: Node,
        copy: int,
        run: RunContext,
        chain: Chain | None = None,
    ) -> None:
        self.visit_id = visit_id
        self.message = message
        self.node = node
        self.copy = copy
        self.run = run
        self.chain = chain


class ServedOutcome:
    """The closed set of :attr:`Served.outcome` values."""

    OK = 0
    """``result`` and ``instructions`` are set."""
    RETRY = 1
    """The visit failed in a retryable way; ``reason`` says why."""
    FATAL = 2
    """The run must fail with ``error`` (e.g. a router named an unknown node)."""


class Served:
    """Node actor → executor: how visit ``visit_id`` went (see :class:`ServedOutcome`).

    ``dropped`` lists the entries of the result's ``next`` (or of its router's
    instructions) that could not be read, for a ``next_dropped`` event.
    """

    __slots__ = (
        "dropped",
        "error",
        "instructions",
        "outcome",
        "reason",
        "result",
        "visit_id",
        "worker_urn",
    )

    def __init__(
        self,
        visit_id: int,
        worker_urn: str,
        outcome: int,
        result: Result | None = None,
        instructions: list[Instruction] | None = None,
        reason: str | None = None,
        error: BaseException | None = None,
        dropped: Sequence[DroppedEntry] = (),
    ) -> None:
        self.visit_id = visit_id
        self.worker_urn = worker_urn
        self.outcome = outcome
        self.result = result
        self.instructions = instructions
        self.reason = reason
        self.error = error
        self.dropped = dropped


class ToolRound:
    """Node actor → executor: visit ``visit_id`` ran these tool calls (for ``tool_call`` events)."""

    __slots__ = ("calls", "results", "visit_id")

    def __init__(
        self, visit_id: int, calls: Sequence[ToolCall], results: Sequence[ToolResult]
    ) -> None:
        self.visit_id = visit_id
        self.calls = tuple(calls)
        self.results = tuple(results)


# --- chains -------------------------------------------------------------------------------


def chain_target(nodes: Mapping[str, Node], instructions: Sequence[Instruction]) -> Node | None:
    """The node a :class:`Chain` may go on to after a visit resolved to ``instructions``.

    Only a single ``Route`` (one copy) to a node with a serving; None for anything
    else (fan-outs, yields, subs, ``End``, retries, unknown or sub nodes), which
    is for the executor to decide.

    >>> from beamagent.graph.job import Node
    >>> nodes = {"b": Node("b", serving=lambda m: "b")}
    >>> chain_target(nodes, [Route("b")]).id
    'b'
    >>> chain_target(nodes, [Route("b", 2)]) is None
    True
    """
    if len(instructions) != 1:
        return None
    only = instructions[0]
    if type(only) is not Route or only.count != 1:
        return None
    node = nodes.get(only.node_id)
    if node is None or node.serving is None:
        return None
    return node


class Chain:
    """Lets a node actor serve a run's next visits itself while the run has no other visit.

    When the only visit of a run goes to a node actor, the executor has nothing
    to do until it ends, and a single onward ``Route`` would bounce through the
    executor only to come back to the same node actor (the idle one it borrows
    first), at the cost of two thread hand-offs. With a chain, the node actor
    takes the step itself (up to ``max_steps``), records the events the
    executor would (``node_result``, ``node_started``, ``tool_call``), and
    serves the next visit; it reports to the executor with a :class:`Served`
    as soon as anything else happens. Only for runs without checkpoints: a
    durable run writes one before each visit starts.

    The executor reads the progress (:attr:`done`, :attr:`current`, :attr:`step`,
    :attr:`next_visit`) after the report, or after :meth:`close` when it must
    cancel the visit or its node actor died; the lock makes each step's
    progress and events one change.
    """

    __slots__ = (
        "_closed",
        "_debug",
        "_events",
        "_lock",
        "_log",
        "_max_steps",
        "_nodes",
        "current",
        "done",
        "next_visit",
        "step",
    )

    def __init__(
        self,
        nodes: Mapping[str, Node],
        events: EventLog | None,
        logger: Any,
        debug: bool,
        step: int,
        next_visit: int,
        max_steps: int,
    ) -> None:
        """A chain from the run's ``step`` and ``next_visit`` counters."""
        self._lock = threading.Lock()
        self._closed = False
        self._nodes = nodes
        self._events = events
        self._log = logger
        self._debug = debug
        self._max_steps = max_steps
        self.step = step
        """The run's step count, including the visits started on the chain."""
        self.next_visit = next_visit
        """The run's next visit id."""
        self.done: list[tuple[str, int, Result]] = []
        """``(node_id, step, result)`` of each visit that finished on the chain, in order."""
        self.current: tuple[int, str, int] | None = None
        """``(visit_id, node_id, step)`` of the last visit the chain started."""

    def advance(
        self,
        serve: Serve,
        result: Result,
        instructions: Sequence[Instruction],
        dropped: Sequence[DroppedEntry] = (),
    ) -> Serve | None:
        """The next visit to serve after ``serve`` gave ``result``, or None to report back.

        ``dropped`` are the entries the result's routing dropped (``next_dropped``).
        """
        node = chain_target(self._nodes, instructions)
        if node is None:
            return None
        message = serve.message
        thread_id = message.thread_id
        with self._lock:
            if self._closed or self.step >= self._max_steps:
                return None
            step = self.step = self.step + 1
            visit_id = self.next_visit
            self.next_visit = visit_id + 1
            self.done.append((message.node_id, message.step, result))
            self.current = (visit_id, node.id, step)
            self._emit(
                EventKind.NODE_RESULT,
                message.node_id,
                thread_id,
                message.step,
                {"body": result.body},
            )
            if dropped:
                emit_dropped(
                    self._events, self._log, message.node_id, thread_id, message.step, dropped
                )
            self._emit(EventKind.NODE_STARTED, node.id, thread_id, step, {})
        following = NodeMessage(
            run_id=message.run_id,
            job_id=message.job_id,
            node_id=node.id,
            thread_id=thread_id,
            parent_run_id=message.parent_run_id,
            node_objective=node.objective,
            input=message.input,
            previous_result=result,
            step=step,
        )
        return Serve(visit_id, following, node, 1, serve.run, self)

    def tool_round(
        self, serve: Serve, calls: Sequence[ToolCall], results: Sequence[ToolResult]
    ) -> None:
        """Record the ``tool_call`` events of a visit on the chain."""
        message = serve.message
        with self._lock:
            if self._closed:
                return
            for call, result in zip(calls, results, strict=False):
                self._emit(
                    EventKind.TOOL_CALL,
                    message.node_id,
                    message.thread_id,
                    message.step,
                    {"tool": call.name, "call_id": call.id, "is_error": result.is_error},
                )

    def close(self) -> None:
        """Start no further visit and record no further event on this chain."""
        with self._lock:
            self._closed = True

    def _emit(
        self,
        kind: EventKind,
        node_id: str | None,
        thread_id: str | None,
        step: int,
        data: dict[str, Any],
    ) -> None:
        # The executor's _emit, from the node actor's thread.
        if self._events is not None:
            self._events.record(kind, node_id, thread_id, step, data)
        if self._debug:
            self._log.debug(kind.value, node_id=node_id, thread_id=thread_id, step=step, **data)


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


def route_result(
    node: Node, message: NodeMessage, result: Result
) -> tuple[list[Instruction], Sequence[DroppedEntry]]:
    """The instructions a node's ``result`` resolves to, and the entries dropped on the way.

    A ``next`` list in the result with at least one usable entry wins; else
    the node's router decides (``route_with_next``, given the decoded
    entries); no router and no usable ``next`` finishes the thread (``[]``).
    Entries that cannot be read, in ``next`` or in what the router returned,
    are dropped and returned as :class:`~beamagent.graph.instructions.DroppedEntry`
    values (``source`` says which).

    >>> node = Node("a", serving=lambda m: "x")
    >>> message = NodeMessage(run_id="r", job_id="j", node_id="a")
    >>> instructions, dropped = route_result(node, message, Result("x", next=["b", Route("b")]))
    >>> instructions, [d.reason for d in dropped]
    ([Route(node_id='b', count=1)], ['entry is not an object: str'])

    Raises:
        InvalidNext: the router returned something that is not a list.
        InvalidNode: the node's router does not know the node (``LinearRouter``).
    """
    entries = result.next
    dropped: Sequence[DroppedEntry] = ()
    instructions: list[Instruction] = []
    if entries:
        instructions, dropped = decode_next(entries)
    router = node.router
    if router is None:
        return instructions, dropped
    routed = router.route_with_next(message, result.outputs, instructions)
    if type(routed) is list:
        for item in routed:
            if type(item) not in _INSTRUCTIONS:
                break
        else:
            return routed, dropped  # what routers return: no need to decode it again
    if not isinstance(routed, list | tuple):
        raise InvalidNext(routed, node.id, source="router")
    routed, bad = decode_next(routed)
    return routed, [*dropped, *(attrs.evolve(d, source="router") for d in bad)]


_INSTRUCTIONS = frozenset({Route, Yield, Sub, End, Retry})


def emit_dropped(
    events: EventLog | None,
    logger: Any,
    node_id: str | None,
    thread_id: str | None,
    step: int,
    dropped: Sequence[DroppedEntry],
) -> None:
    """Record a ``next_dropped`` event for ``dropped`` and log it as a warning."""
    entries = [d.to_dict() for d in dropped]
    if events is not None:
        events.record(EventKind.NEXT_DROPPED, node_id, thread_id, step, {"dropped": entries})
    logger.warning(
        EventKind.NEXT_DROPPED.value,
        node_id=node_id,
        thread_id=thread_id,
        step=step,
        dropped=entries,
    )


# --- the actor and its pool ----------------------------------------------------------------


class NodeActor(Process):
    """Serves node visits, one at a time, for whichever run's executor sends them.

    Node actors are pooled per runtime (see :class:`NodeWorkers`): an executor
    borrows one for each visit in flight and gives them back when its run
    ends, so a run does not pay for starting a process per node.
    """

    def __init__(self) -> None:
        """An idle node actor."""
        super().__init__()
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
        chain = serve.chain
        served = self._attempt_in_context(serve)
        while chain is not None and served.outcome == ServedOutcome.OK:
            assert served.result is not None
            assert served.instructions is not None
            if not run.executor.is_alive():
                break  # the run is over (its executor was killed): serve nothing more for it
            following = chain.advance(serve, served.result, served.instructions, served.dropped)
            if following is None:
                break
            serve = following
            served = self._attempt_in_context(serve)
        with contextlib.suppress(pykka.ActorDeadError):  # the run is over: nobody waits
            run.executor.tell(served)

    def _attempt_in_context(self, serve: Serve) -> Served:
        run = serve.run
        node = serve.node
        self.process_state = f"serving {node.id} of {run.run_id}"
        _context.value = ServingContext(run.runtime, run.run_id, node, serve.copy, run.tools)
        # A session queried, or a tool called, by the serving is then the visit's child.
        token = (
            None
            if run.tracer is None
            else telemetry.attach(run.tracer.context_for(serve.message.thread_id))
        )
        try:
            return self._attempt(serve)
        finally:
            telemetry.detach(token)
            _context.value = None
            self.process_state = "idle"

    def _attempt(self, serve: Serve) -> Served:
        node = serve.node
        visit_id = serve.visit_id
        message = serve.message
        serving = node.serving
        assert serving is not None  # sub nodes never reach a node actor
        try:
            result = _checked(node, serving.handle(message))
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
                result = _checked(node, serving.handle(message))
        except RetryRequested as exc:
            return Served(
                visit_id, self._urn, ServedOutcome.RETRY, reason=exc.reason or DEFAULT_RETRY_REASON
            )
        except Exception as exc:  # a failing serving fails the visit or the run, not the actor
            return self._serving_failed(serve, message, exc)
        try:
            instructions, dropped = route_result(node, message, result)
        except Exception as exc:  # InvalidNode, or a router bug: retrying gives the same answer
            if isinstance(exc, InvalidNext):
                exc = exc.at_node(node.id)
            elif not isinstance(exc, InvalidNode):
                log.error(
                    "router_failed", run_id=serve.run.run_id, node_id=node.id, error=repr(exc)
                )
            return Served(visit_id, self._urn, ServedOutcome.FATAL, result=result, error=exc)
        return Served(
            visit_id,
            self._urn,
            ServedOutcome.OK,
            result=result,
            instructions=instructions,
            dropped=dropped,
        )

    def _serving_failed(self, serve: Serve, message: NodeMessage, exc: Exception) -> Served:
        """A retryable error retries the visit; any other ends the run (Agens, LangGraph)."""
        node = serve.node
        run = serve.run
        retry_on = node.retry_on if node.retry_on is not None else run.retry_on
        retried = is_retryable(exc, retry_on)
        log.warning(
            "serving_failed",
            run_id=run.run_id,
            node_id=node.id,
            thread_id=message.thread_id,
            error=repr(exc),
            retried=retried,
        )
        if retried:
            return Served(
                serve.visit_id,
                self._urn,
                ServedOutcome.RETRY,
                reason=f"the serving failed: {type(exc).__name__}: {exc}",
                error=exc,
            )
        error: RunError
        if isinstance(exc, InvalidNext):
            error = exc.at_node(node.id)  # the serving built a Result with a bad next
        else:
            error = ServingFailed(exc, node.id, run_id=run.run_id, thread_id=message.thread_id)
        return Served(serve.visit_id, self._urn, ServedOutcome.FATAL, error=error)

    def _call_tools(self, serve: Serve, calls: Sequence[ToolCall]) -> list[ToolResult]:
        serving_tools = getattr(serve.node.serving, "tools", None)
        if isinstance(serving_tools, ToolRegistry):
            tools = serving_tools
        else:
            tools = serve.run.tools if serve.run.tools is not None else _NO_TOOLS
        results = [tools.call(call) for call in calls]
        if serve.chain is not None:
            # On a chain the events are recorded here, in order with the chain's others.
            serve.chain.tool_round(serve, calls, results)
            return results
        with contextlib.suppress(pykka.ActorDeadError):
            serve.run.executor.tell(ToolRound(serve.visit_id, calls, results))
        return results


_NO_TOOLS = ToolRegistry()


def _checked(node: Node, result: Any) -> Result:
    if type(result) is not Result and not isinstance(result, Result):
        raise TypeError(
            f"serving of node {node.id!r} returned {type(result).__name__}, not a Result"
        )
    return result


class NodeActors(DynamicSupervisor):
    """The supervisor of a runtime's node actors (a ``DynamicSupervisor`` with a telling name)."""


class NodeWorkers:
    """A runtime's pool of :class:`NodeActor` processes, under the supervisor named ``name``.

    :meth:`checkout` hands out an idle actor (starting one under the
    supervisor when none is idle); :meth:`checkin` takes it back. Actors are
    ``transient`` children: one that crashes is restarted and comes back to the
    idle list; one killed to cancel its visit (:meth:`cancel`) is dropped. At
    most ``max_idle`` stay idle, the others stop.

    The pool monitors each actor for its whole life and passes its ``Down`` to
    the process that has it checked out: a borrower learns of the death as if
    it monitored the actor itself, without a monitor per borrowing.
    """

    def __init__(self, name: Hashable, max_idle: int = 64) -> None:
        """An empty pool whose actors start under the supervisor registered as ``name``.

        The supervisor is looked up by name each time, so a restarted one is found.
        """
        self._name = name
        self._lock = threading.Lock()
        self._idle: list[pykka.ActorRef[Any]] = []
        self._borrowers: dict[str, pykka.ActorRef[Any]] = {}
        self._max_idle = max_idle

    def spec(self) -> ChildSpec:
        """The child spec of one node actor (its start function enlists it as idle)."""
        return ChildSpec("node", self._start_actor, restart="transient", shutdown=1.0)

    def _start_actor(self) -> pykka.ActorRef[Any]:
        # Runs in the supervisor, at the first start and at every restart.
        ref = NodeActor.start()
        monitor(ref, watcher=self._on_down)
        with self._lock:
            self._idle.append(ref)
        return ref

    def _on_down(self, down: Down) -> None:
        # Called where the actor ended. Under the lock with checkout: an actor
        # checked out while alive has its borrower registered before this runs.
        with self._lock:
            borrower = self._borrowers.pop(down.urn, None)
        if borrower is not None:
            with contextlib.suppress(pykka.ActorDeadError):  # the borrower is gone too
                borrower.tell(down)

    def idle(self) -> int:
        """How many node actors are idle."""
        with self._lock:
            return len(self._idle)

    def checkout(self, borrower: pykka.ActorRef[Any], timeout: float = 30.0) -> pykka.ActorRef[Any]:
        """An idle node actor, started first if none is idle, lent to ``borrower``.

        Until :meth:`checkin` or :meth:`cancel`, the borrower gets the actor's
        ``Down`` as a message if it dies.

        Raises:
            RunError: the pool's supervisor is gone (the runtime is stopping).
        """
        while True:
            with self._lock:
                while self._idle:
                    ref = self._idle.pop()
                    if ref.is_alive():
                        self._borrowers[ref.actor_urn] = borrower
                        return ref
            try:  # a restarting supervisor is waited for
                supervisor = await_name(self._name, timeout)
            except WaitTimeout:
                raise RunError(
                    f"the node actors' supervisor did not come back within {timeout} s"
                ) from None
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
        with self._lock:
            self._borrowers.pop(ref.actor_urn, None)
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
            self._borrowers.pop(ref.actor_urn, None)
            if len(self._idle) < self._max_idle:
                self._idle.append(ref)
                return
        with contextlib.suppress(pykka.ActorDeadError):
            ref.stop(block=False)
