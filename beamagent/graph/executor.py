"""``GraphExecutor``: the actor that runs one graph run.

An executor borrows :class:`~beamagent.graph.node.NodeActor` processes from its
runtime's pool (:class:`~beamagent.graph.node.NodeWorkers`) to serve its node
visits, one actor per visit in flight and at most a node's ``concurrency``
visits of a node at a time, and watches them: a node actor that dies while
serving (its supervisor restarts it) fails that visit as retryable. A
serving's exception fails its visit as retryable when
:func:`~beamagent.graph.planning.is_retryable` says so, else the whole run
(``ServingFailed``). It is also a :class:`~supervisors.DynamicSupervisor`: its
sub-runs' executors are its children.

The executor never runs a serving. It keeps the run's state (threads, the
:class:`~beamagent.graph.planning.JoinBarrier`, visits pending or in flight,
the results so far, the step count), turns each node result into a
:class:`~beamagent.graph.planning.Plan` with :func:`~beamagent.graph.planning.plan`
and acts on it:

* ``End`` ends the run at once (``ended``), cancelling in-flight nodes;
* ``Retry`` (or a retryable serving error) runs the same visit again
  (``previous_result`` kept, the reason shown) until the job's ``max_retries``
  is spent (``MaxRetriesExceeded``);
* a fan-out keeps its first instruction on the current thread and starts a
  new thread for each other one: a ``Route`` visits a node, a ``Yield`` waits
  at the barrier (the join node then runs once with every joined result),
  a ``Sub`` runs a sub-job as a child run whose end decides the thread;
* nothing left finishes the thread; the run completes when no thread is left.

Each change is checkpointed to the store (durable runs), coalesced while
messages are queued, so ``resume_run`` can continue a run after a crash of the
whole process: visits that had not finished run again, finished ones do not.

A run without checkpoints whose only visit goes to a node actor lets that
actor go on with single onward routes itself (a :class:`~beamagent.graph.node.Chain`):
it records the same events and reports when anything else happens, and the
executor takes in the visits it ran. A spare executor's run is started by the
thread that hands it over (:meth:`GraphExecutor.take_run`), so the executor
first runs for the first node result.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import pykka
from pykka.messages import ProxyCall

from beamagent.errors import (
    InvalidNext,
    InvalidNode,
    JobNotLoaded,
    MaxRetriesExceeded,
    MaxStepsExceeded,
    RunError,
)
from beamagent.graph.instructions import Route, Sub, Yield
from beamagent.graph.job import Job, Node
from beamagent.graph.node import (
    DEFAULT_MAX_TOOL_ROUNDS,
    Chain,
    NodeWorkers,
    RunContext,
    Serve,
    Served,
    ServedOutcome,
    ToolRound,
    emit_dropped,
    route_result,
)
from beamagent.graph.planning import Arrival, JoinBarrier, PlanKind, plan
from beamagent.graph.run import EventKind, EventLog, RunEvent, RunResult, RunStatus, StepResult
from beamagent.graph.serving import NodeMessage, Result, ToolRegistry
from beamagent.log import get_logger
from beamagent.store.base import SessionStore
from supervisors import (
    ChildSpec,
    Down,
    DynamicSupervisor,
    DynamicSupervisorRef,
    Exit,
    Normal,
    kill,
    unregister,
)
from supervisors._supervisor import _Child

__all__ = [
    "CHECKPOINT_VERSION",
    "Assign",
    "GraphExecutor",
    "RunConfig",
    "SpareExecutors",
    "SubDone",
]

log = get_logger(__name__)

CHECKPOINT_VERSION = 1
"""Version of the checkpoint ``state`` written by this executor."""

#: Checkpoint writes a busy executor may put off while messages are queued.
_MAX_DEFERRED_CHECKPOINTS = 32


def _json_fallback(value: Any) -> Any:
    # Durable runs keep JSON; a value a Python serving put in its outputs that JSON
    # cannot hold is kept as its text rather than failing the run.
    return str(value)


_dumps = json.JSONEncoder(default=_json_fallback, separators=(",", ":"), ensure_ascii=False).encode


@attrs.frozen(kw_only=True)
class RunConfig:
    """Everything an executor needs to run, or resume, one run.

    ``store`` set makes the run durable (checkpointed there); ``restored`` is
    the checkpoint ``state`` (and ``restored_results`` its results) to resume
    from. ``workers`` lends the node actors; ``name`` is the executor's
    registered name, released when the run ends. ``parent`` is ``(executor ref,
    visit id)`` for a sub-run, which reports its end to its parent with
    :class:`SubDone`. ``spares`` is refilled when the run ends.
    """

    run_id: str
    job: Job
    input: Any
    subs: Mapping[str, Job] = attrs.field(factory=dict)
    log: EventLog | None = None
    runtime: Any = None
    store: SessionStore | None = None
    tools: ToolRegistry | None = None
    workers: NodeWorkers | None = None
    parent: tuple[pykka.ActorRef[Any], int] | None = None
    parent_run_id: str | None = None
    restored: Mapping[str, Any] | None = None
    restored_results: Sequence[Mapping[str, Any]] = ()
    max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS
    name: tuple[str, ...] | None = None
    spares: SpareExecutors | None = None
    checkpointed: pykka.Future[Any] | None = None
    """Set once the run's first checkpoint was written (or could not be): ``run_job``
    waits for it, so a durable run it returned is in the store."""


class SubDone:
    """Sub-run executor → parent executor: the sub-run of visit ``visit_id`` ended."""

    __slots__ = ("result", "visit_id")

    def __init__(self, visit_id: int, result: RunResult) -> None:
        self.visit_id = visit_id
        self.result = result


class Assign:
    """Sent to a spare executor: run ``config``."""

    __slots__ = ("config",)

    def __init__(self, config: RunConfig) -> None:
        self.config = config


class _Begin:
    """Sent to itself by an executor once started: start (or resume) the run."""

    __slots__ = ()


class _Poke:
    """Sent to itself when its run ended outside a message (see :meth:`GraphExecutor.take_run`).

    Handling it does nothing: the process loop then sees the exit the run asked for.
    """

    __slots__ = ()


class _Settle:
    """Sent to itself when a checkpoint is put off: settle once the mail queued before it is in.

    The put-off checkpoint (and the sends behind it) must not wait on the queued
    messages themselves: some never settle the run (an introspection call, a
    proxy call), and then nothing would.
    """

    __slots__ = ()


class _Visit:
    """One node visit (or sub-run) of a thread, pending or in flight."""

    __slots__ = (
        "copy_urn",
        "id",
        "joined",
        "message",
        "node_id",
        "previous",
        "reason",
        "retries",
        "step",
        "sub_job",
        "thread_id",
    )

    def __init__(
        self,
        visit_id: int,
        thread_id: str,
        node_id: str | None,
        sub_job: str | None,
        previous: Result | None,
        joined: tuple[Result, ...] = (),
        retries: int = 0,
        reason: str | None = None,
        step: int = 0,
    ) -> None:
        self.id = visit_id
        self.thread_id = thread_id
        self.node_id = node_id  # None: a Sub instruction (not a node) runs sub_job
        self.sub_job = sub_job
        self.previous = previous
        self.joined = joined
        self.retries = retries
        self.reason = reason
        self.step = step
        self.copy_urn: str | None = None
        self.message: NodeMessage | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "thread": self.thread_id,
            "node": self.node_id,
            "sub": self.sub_job,
            "previous": None if self.previous is None else self.previous.to_dict(),
            "joined": [r.to_dict() for r in self.joined],
            "retries": self.retries,
            "reason": self.reason,
            "step": self.step,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _Visit:
        previous = data.get("previous")
        return cls(
            int(data["id"]),
            str(data["thread"]),
            data.get("node"),
            data.get("sub"),
            None if previous is None else Result.from_dict(previous),
            tuple(Result.from_dict(r) for r in data.get("joined") or ()),
            int(data.get("retries", 0)),
            data.get("reason"),
            int(data.get("step", 0)),
        )


class _NodeState:
    """One node in one run: visits in flight (each on its own copy), and the queue beyond them."""

    __slots__ = ("free", "in_flight", "next_copy", "node", "queue")

    def __init__(self, node: Node) -> None:
        self.node = node
        self.in_flight = 0
        self.queue: deque[_Visit] = deque()
        self.free: list[int] = []
        self.next_copy = 1

    def take_copy(self) -> int:
        """The lowest free copy number (1, 2, ...): which parallel copy serves a visit."""
        if self.free:
            return self.free.pop()
        copy = self.next_copy
        self.next_copy += 1
        return copy

    def give_back(self, copy: int) -> None:
        self.in_flight -= 1
        self.free.append(copy)
        if len(self.free) > 1:
            self.free.sort(reverse=True)


class _Busy:
    """A borrowed node actor serving a visit (and, on a ``chain``, the visits after it)."""

    __slots__ = ("chain", "copy", "state", "visit", "worker")

    def __init__(
        self, visit: _Visit, state: _NodeState, copy: int, worker: pykka.ActorRef[Any]
    ) -> None:
        self.visit = visit
        self.state = state
        self.copy = copy
        self.worker = worker
        self.chain: Chain | None = None


# Barriers are immutable values: these two are shared by every run.
_NO_THREADS = JoinBarrier()
_FIRST_THREAD = _NO_THREADS.spawn("0")

_TERMINAL_KIND = {
    RunStatus.COMPLETED: EventKind.RUN_COMPLETE,
    RunStatus.ENDED: EventKind.RUN_ENDED,
    RunStatus.STOPPED: EventKind.RUN_ENDED,
    RunStatus.INTERRUPTED: EventKind.RUN_ENDED,
    RunStatus.ERROR: EventKind.RUN_ERROR,
}


class GraphExecutor(DynamicSupervisor):
    """Runs one graph run; supervises its sub-runs (see the module docstring).

    Started by ``runtime.run_job`` / ``resume_run`` under the runtime's ``runs``
    supervisor (ahead of time, as a spare that gets its run from :meth:`take_run`
    or an :class:`Assign` message), and by a parent executor for a sub-run. Ask
    it ``stop_run()`` to stop the run (status ``stopped``).
    """

    def __init__(self, config: RunConfig | None = None) -> None:
        """An executor for ``config``, or a spare waiting for one (``config=None``)."""
        super().__init__()
        # Held while the run's state changes: by this process's handlers, and by the
        # thread that hands a spare its run (take_run) while it does the run's start.
        self._run_lock = threading.Lock()
        self._assigned = False
        self._begun = False
        self._over = False
        if config is not None:
            self._setup(config)

    def _setup(self, config: RunConfig) -> None:
        self._assigned = True
        self.config = config
        self.run_id = config.run_id
        self._job = config.job
        self._nodes = config.job.nodes
        self._input = config.input
        self._events = config.log
        self._store = config.store
        self._step = 0
        self._next_thread = 1
        self._next_visit = 1
        self._barrier = _NO_THREADS
        self._visits: dict[int, _Visit] = {}
        self._states: dict[str, _NodeState] = {}
        self._idle_workers: list[pykka.ActorRef[Any]] = []
        self._busy: dict[str, _Busy] = {}
        self._outbox: list[_Busy | _Visit] = []
        self._watch: set[str] = set()  # borrowed node actors (their pool passes on a Down)
        self._sub_of: dict[str, int] = {}
        self._results: list[StepResult] = []
        self._unsaved: list[StepResult] = []
        self._last: Result | None = None
        self._dirty = False
        self._put_off = 0
        self._settle_queued = False  # a _Settle of ours is in the mailbox
        self._first_checkpoint_told = False
        self._rlog = log.bind(run_id=config.run_id, job_id=config.job.id)
        enabled = getattr(self._rlog, "is_enabled_for", None)
        self._debug_on = enabled(logging.DEBUG) if callable(enabled) else True
        self._context = RunContext(
            self.actor_ref,
            config.run_id,
            config.runtime,
            config.tools,
            config.max_tool_rounds,
            config.job.retry_on,
            None if config.log is None else config.log.tracer,
        )
        self.process_state = f"{self._job.id} {self.run_id} running"

    # --- process hooks ------------------------------------------------------------------------

    def on_start(self) -> None:
        """Start the run (a spare waits for its :class:`Assign`)."""
        if self._assigned:
            self.process_state = f"{self._job.id} {self.run_id} running"
            self.actor_ref.tell(_Begin())
        else:
            self.process_state = "spare"

    def on_stop(self) -> None:
        """Stopped before the run ended (its runtime is stopping): the run is ``interrupted``."""
        with self._run_lock:
            if self._assigned and not self._over:
                self._finish_run(RunStatus.INTERRUPTED)
        super().on_stop()

    def on_failure(self, *exc_info: Any) -> None:
        """A bug in the executor: the run ends with ``RunError``."""
        with self._run_lock:
            if self._assigned and not self._over:
                error = exc_info[1] if len(exc_info) > 1 else None
                self._crashed(error)
        super().on_failure(*exc_info)

    def _crashed(self, error: BaseException | None) -> None:
        try:
            self._finish_run(
                RunStatus.ERROR,
                error=RunError(f"run {self.run_id}: the executor crashed: {error!r}"),
            )
        except Exception:  # already crashing: report what we can, the Down does the rest
            self._rlog.exception("run_finish_failed")

    def take_run(self, config: RunConfig) -> bool:
        """Hand this spare its run and start it, in the calling thread; False if it cannot.

        Called by ``run_job`` on a spare's process object instead of sending it an
        :class:`Assign`: the run's start (its first events, borrowing a node
        actor, sending the first visit) is done by the caller, which is running
        anyway, so the executor first runs for the first node result, not
        once before it for its assignment. ``_run_lock`` keeps
        this process's handlers out meanwhile. Only for runs without a store or
        restored state: checkpoints are written by the executor itself.
        """
        if config.store is not None or config.restored is not None:
            return False
        with self._run_lock:
            if self._assigned or self._terminated:
                return False
            try:
                self._setup(config)
            except BaseException:
                kill(self.actor_ref)  # the run never started: the caller gets the error
                raise
            try:
                self._begin()
                self._settle()
            except Exception as exc:  # a bug: as if the executor had crashed on it
                if not self._over:
                    self._crashed(exc)
            over = self._over
        if over:
            # It ended at once (no node actor, a bug): let its loop see the exit it asked for.
            with contextlib.suppress(pykka.ActorDeadError):
                self.actor_ref.tell(_Poke())
        return True

    def on_receive(self, message: Any) -> Any:
        """Node results, tool rounds, sub-run ends, node actor deaths; then settle the run."""
        with self._run_lock:
            return self._handle(message)

    def _handle(self, message: Any) -> Any:
        kind = type(message)
        if kind is Served:
            self._on_served(message)
        elif kind is ToolRound:
            self._on_tool_round(message)
        elif kind is SubDone:
            self._on_sub_done(message)
        elif kind is Down:
            self._on_down(message)
        elif kind is Assign:
            if self._assigned:
                raise RunError(f"executor of run {self.run_id} was given a second run")
            self._setup(message.config)
            self._begin()
        elif kind is _Begin:
            self._begin()
        elif kind is _Settle:
            self._settle_queued = False
        elif kind is _Poke:
            return None
        else:
            return super().on_receive(message)
        if self._assigned:
            self._settle()
        return None

    def _on_exit(self, message: Exit) -> None:
        urn = message.from_urn
        sub_visit = self._sub_of.pop(urn, None)
        super()._on_exit(message)
        if self._assigned and sub_visit in self._visits and not self._over:
            self._fail(
                RunError(
                    f"run {self.run_id}: the sub-run of visit {sub_visit} ended: {message.reason}"
                )
            )
        if self._assigned:
            self._settle()

    # --- API (asked through ProxyCall) ---------------------------------------------------------

    def stop_run(self) -> None:
        """Stop the run now: in-flight nodes are cancelled, the status is ``stopped``."""
        with self._run_lock:
            if self._assigned:
                self._finish_run(RunStatus.STOPPED)

    # --- starting ------------------------------------------------------------------------------

    def _begin(self) -> None:
        self._begun = True
        restored = self.config.restored
        if restored is not None:
            self._restore(restored)
            return
        self._barrier = _FIRST_THREAD
        self._emit(EventKind.RUN_STARTED, self._job.start, "0", input=_short_input(self._input))
        self._dirty = True
        self._start_visit("0", self._job.start, None)

    def _restore(self, state: Mapping[str, Any]) -> None:
        self._step = int(state.get("step", 0))
        self._next_thread = int(state.get("next_thread", 1))
        self._next_visit = int(state.get("next_visit", 1))
        for row in self.config.restored_results:
            result = StepResult(
                str(row["node"]),
                str(row["thread"]),
                int(row["step"]),
                Result.from_dict(row["result"]),
            )
            self._results.append(result)
            self._last = result.result
        visits = [_Visit.from_json(v) for v in state.get("visits") or ()]
        self._barrier = JoinBarrier(
            live={str(t) for t in state.get("live") or ()},
            arrivals=[
                Arrival(str(a["thread"]), str(a["target"]), Result.from_dict(a["result"]))
                for a in state.get("arrivals") or ()
            ],
        )
        self._emit(
            EventKind.RUN_STARTED,
            None,
            None,
            resumed=True,
            pending=len(visits),
        )
        for visit in visits:
            self._visits[visit.id] = visit
            if visit.node_id is not None:
                self._emit(EventKind.NODE_STARTED, visit.node_id, visit.thread_id, visit.step)
            self._launch_visit(visit)
            if self._over:
                return

    # --- node results --------------------------------------------------------------------------

    def _on_served(self, served: Served) -> None:
        busy = self._busy.pop(served.worker_urn, None)
        state = None
        if busy is not None:
            if busy.chain is not None:
                self._take_chain(busy)
            state = busy.state
            state.give_back(busy.copy)
            self._idle_workers.append(busy.worker)
        visit = self._visits.pop(served.visit_id, None)
        if visit is None or self._over:
            return
        outcome = served.outcome
        if outcome == ServedOutcome.OK:
            result = served.result
            assert result is not None
            assert served.instructions is not None
            self._record(visit, visit.node_id, result)
            if served.dropped:
                emit_dropped(
                    self._events,
                    self._rlog,
                    visit.node_id,
                    visit.thread_id,
                    visit.step,
                    served.dropped,
                )
            self._route(visit, result, served.instructions)
        elif outcome == ServedOutcome.RETRY:
            assert served.reason is not None
            self._retry(visit, served.reason, served.error)
        else:
            assert served.error is not None
            if served.result is not None:
                self._record(visit, visit.node_id, served.result)
            self._fail(served.error)
        if state is not None and not self._over:
            self._pump(state)

    def _on_tool_round(self, message: ToolRound) -> None:
        visit = self._visits.get(message.visit_id)
        if visit is None or self._over:
            return
        for call, result in zip(message.calls, message.results, strict=False):
            self._emit(
                EventKind.TOOL_CALL,
                visit.node_id,
                visit.thread_id,
                visit.step,
                tool=call.name,
                call_id=call.id,
                is_error=result.is_error,
            )

    def _record(self, visit: _Visit, node_id: str | None, result: Result) -> None:
        name = node_id if node_id is not None else f"sub:{visit.sub_job}"
        step_result = StepResult(name, visit.thread_id, visit.step, result)
        self._results.append(step_result)
        if self._store is not None:
            self._unsaved.append(step_result)
        self._last = result
        self._dirty = True
        self._emit(EventKind.NODE_RESULT, name, visit.thread_id, visit.step, body=result.body)

    def _take_chain(self, busy: _Busy) -> None:
        """Close the busy node actor's chain and take in its visits as if they had come here.

        Their events are already recorded; what is left is the run's state: the
        results, the step and visit counters, and the visit the chain is on,
        which replaces the one sent (``busy.visit``).
        """
        chain = busy.chain
        assert chain is not None
        busy.chain = None
        chain.close()
        done = chain.done
        first = busy.visit
        if not done or self._visits.get(first.id) is not first:
            return
        del self._visits[first.id]
        thread_id = first.thread_id
        results = self._results
        for node_id, step, result in done:
            results.append(StepResult(node_id, thread_id, step, result))
            self._state(node_id)  # so that its serving's close_run is called at the end
        previous = done[-1][2]
        self._last = previous
        self._step = chain.step
        self._next_visit = chain.next_visit
        assert chain.current is not None
        visit_id, node_id, step = chain.current
        self._state(node_id)
        visit = _Visit(visit_id, thread_id, node_id, None, previous, step=step)
        self._visits[visit_id] = visit
        busy.visit = visit

    def _route(self, visit: _Visit, result: Result, instructions: Sequence[Any]) -> None:
        if len(instructions) == 1:
            only = instructions[0]
            if type(only) is Route and only.count == 1 and only.node_id in self._nodes:
                # The common case (one edge onward), without building a Plan.
                self._start_visit(visit.thread_id, only.node_id, result)
                return
        decision = plan(instructions)
        kind = decision.kind
        thread = visit.thread_id
        if kind is PlanKind.FANOUT:
            items = decision.fanout
            for item in items:
                if isinstance(item, Sub):
                    if item.job_id not in self.config.subs:
                        self._fail(_job_not_loaded(item.job_id, self._job.id, self.config.subs))
                        return
                elif item.node_id not in self._nodes:
                    self._fail(_invalid_node(item.node_id, self._job))
                    return
            threads = [thread]
            for _ in items[1:]:
                threads.append(self._new_thread())
            for item, thread_id in zip(items, threads, strict=True):
                if type(item) is Route:
                    self._start_visit(thread_id, item.node_id, result)
                elif type(item) is Yield:
                    self._arrive(thread_id, item.node_id, result)
                else:
                    assert isinstance(item, Sub)
                    self._start_sub(thread_id, item.job_id, result)
                if self._over:
                    return
        elif kind is PlanKind.FINISH:
            self._finish_thread(thread)
        elif kind is PlanKind.END:
            self._finish_run(RunStatus.ENDED, output=result)
        else:
            assert decision.retry_reason is not None
            self._retry(visit, decision.retry_reason)

    # --- threads, yields ----------------------------------------------------------------------

    def _new_thread(self) -> str:
        thread_id = str(self._next_thread)
        self._next_thread += 1
        self._barrier = self._barrier.spawn(thread_id)
        return thread_id

    def _finish_thread(self, thread_id: str) -> None:
        self._dirty = True
        self._barrier, joins = self._barrier.finish(thread_id)
        if joins:
            self._release(joins)

    def _arrive(self, thread_id: str, target: str, result: Result) -> None:
        self._dirty = True
        self._barrier, joins = self._barrier.arrive(thread_id, target, result)
        if joins:
            self._release(joins)
        else:
            barrier = self._barrier
            self._emit(
                EventKind.YIELD_WAIT, target, thread_id, total=barrier.total, ready=barrier.ready
            )

    def _release(self, joins: Sequence[Any]) -> None:
        starts = []
        for join in joins:
            thread_id = join.thread_ids[0]
            self._barrier = self._barrier.spawn(thread_id)
            self._emit(
                EventKind.YIELD_DONE,
                join.target,
                thread_id,
                total=len(join.thread_ids),
                threads=list(join.thread_ids),
            )
            starts.append((thread_id, join))
        for thread_id, join in starts:
            self._start_visit(thread_id, join.target, join.results[-1], join.results)
            if self._over:
                return

    # --- visits --------------------------------------------------------------------------------

    def _take_step(self) -> bool:
        if self._step >= self._job.max_steps:
            self._fail(
                MaxStepsExceeded(
                    f"run {self.run_id} of job {self._job.id!r} reached max_steps="
                    f"{self._job.max_steps}; raise the job's max_steps or break the cycle"
                )
            )
            return False
        self._step += 1
        return True

    def _start_visit(
        self,
        thread_id: str,
        node_id: str,
        previous: Result | None,
        joined: tuple[Result, ...] = (),
    ) -> None:
        if not self._take_step():
            return
        node = self._nodes[node_id]
        visit = _Visit(
            self._next_visit, thread_id, node_id, node.sub, previous, joined, step=self._step
        )
        self._next_visit += 1
        self._visits[visit.id] = visit
        self._dirty = True
        self._emit(EventKind.NODE_STARTED, node_id, thread_id)
        self._launch_visit(visit)

    def _start_sub(self, thread_id: str, job_id: str, previous: Result) -> None:
        if not self._take_step():
            return
        visit = _Visit(self._next_visit, thread_id, None, job_id, previous, step=self._step)
        self._next_visit += 1
        self._visits[visit.id] = visit
        self._dirty = True
        self._launch_visit(visit)

    def _retry(self, visit: _Visit, reason: str, error: BaseException | None = None) -> None:
        max_retries = self._job.max_retries
        where = visit.node_id if visit.node_id is not None else f"sub:{visit.sub_job}"
        if visit.retries >= max_retries:
            exceeded = MaxRetriesExceeded(
                f"run {self.run_id}: node {where!r} (thread {visit.thread_id}) failed after "
                f"{max_retries} retries (the job's max_retries); last reason: {reason}"
            )
            exceeded.__cause__ = error  # the last retried exception, if one was raised
            self._fail(exceeded)
            return
        if not self._take_step():
            return
        visit.retries += 1
        visit.reason = reason
        visit.step = self._step
        visit.copy_urn = None
        self._visits[visit.id] = visit
        self._dirty = True
        self._emit(
            EventKind.NODE_RETRY, where, visit.thread_id, reason=reason, retries=visit.retries
        )
        if visit.node_id is not None:
            self._emit(EventKind.NODE_STARTED, where, visit.thread_id, retries=visit.retries)
        self._launch_visit(visit)

    def _launch_visit(self, visit: _Visit) -> None:
        if visit.sub_job is not None:
            self._outbox.append(visit)  # started once the checkpoint is written
        else:
            assert visit.node_id is not None
            self._dispatch(self._state(visit.node_id), visit)

    def _message(self, visit: _Visit) -> NodeMessage:
        node_id = visit.node_id
        assert node_id is not None
        return NodeMessage(
            run_id=self.run_id,
            job_id=self._job.id,
            node_id=node_id,
            thread_id=visit.thread_id,
            parent_run_id=self.config.parent_run_id,
            node_objective=self._nodes[node_id].objective,
            input=self._input,
            previous_result=visit.previous,
            joined=visit.joined,
            retries=visit.retries,
            retry_reason=visit.reason,
            step=visit.step,
        )

    # --- node actors ------------------------------------------------------------------------

    def _state(self, node_id: str) -> _NodeState:
        state = self._states.get(node_id)
        if state is None:
            state = self._states[node_id] = _NodeState(self._nodes[node_id])
        return state

    def _dispatch(self, state: _NodeState, visit: _Visit) -> None:
        while True:
            if state.in_flight >= state.node.concurrency:
                state.queue.append(visit)
                return
            worker = self._borrow()
            if worker is None:
                return
            copy = state.take_copy()
            state.in_flight += 1
            busy = _Busy(visit, state, copy, worker)
            self._busy[worker.actor_urn] = busy
            # Sent once the checkpoint that led here is written (see _settle).
            self._outbox.append(busy)
            return

    def _flush(self) -> None:
        """Send the visits decided since the last checkpoint: serves, and sub-runs to start."""
        while self._outbox and not self._over:
            batch, self._outbox = self._outbox, []
            for item in batch:
                if self._over:
                    return
                if type(item) is _Visit:
                    self._start_sub_run(item)
                    continue
                assert isinstance(item, _Busy)
                visit, state, worker = item.visit, item.state, item.worker
                chain = None
                if self._store is None and len(self._visits) == 1 and not self._outbox:
                    # The run's only visit: its node actor may go on to the next ones.
                    chain = item.chain = Chain(
                        self._nodes,
                        self._events,
                        self._rlog,
                        self._debug_on,
                        self._step,
                        self._next_visit,
                        self._job.max_steps,
                    )
                serve = Serve(
                    visit.id, self._message(visit), state.node, item.copy, self._context, chain
                )
                try:
                    worker.tell(serve)
                except pykka.ActorDeadError:
                    # It died a moment ago (its Down is on its way): try another one.
                    urn = worker.actor_urn
                    if self._busy.get(urn) is item:
                        del self._busy[urn]
                        state.give_back(item.copy)
                    self._forget_worker(urn)
                    self._dispatch(state, visit)

    def _borrow(self) -> pykka.ActorRef[Any] | None:
        if self._idle_workers:
            return self._idle_workers.pop()
        workers = self.config.workers
        if workers is None:
            self._fail(RunError(f"run {self.run_id} has no node actors to run its nodes on"))
            return None
        try:
            worker = workers.checkout(self.actor_ref)
        except RunError as exc:
            self._fail(exc)
            return None
        self._watch.add(worker.actor_urn)
        return worker

    def _forget_worker(self, urn: str) -> None:
        self._watch.discard(urn)

    def _pump(self, state: _NodeState) -> None:
        queue = state.queue
        while queue and state.in_flight < state.node.concurrency and not self._over:
            self._dispatch(state, queue.popleft())

    def _on_down(self, down: Down) -> None:
        urn = down.urn
        if urn not in self._watch:
            return  # not one of ours (any more)
        self._watch.discard(urn)
        busy = self._busy.pop(urn, None)
        if busy is None:
            self._idle_workers = [w for w in self._idle_workers if w.actor_urn != urn]
            return
        if busy.chain is not None:
            self._take_chain(busy)  # the visit to retry is the one the chain was on
        busy.state.give_back(busy.copy)
        visit = busy.visit
        if self._over or self._visits.get(visit.id) is not visit:
            return
        del self._visits[visit.id]
        self._retry(visit, f"the node actor crashed ({down.reason})")
        if not self._over:
            self._pump(busy.state)

    def _release_workers(self) -> None:
        """Give the borrowed node actors back; kill the busy ones, which cancels their visits."""
        workers = self.config.workers
        unsent = {id(item) for item in self._outbox}
        self._outbox.clear()
        for urn, busy in self._busy.items():
            self._forget_worker(urn)
            if busy.chain is not None:
                self._take_chain(busy)  # before the kill: the chain stops where it is
            if id(busy) in unsent:
                self._idle_workers.append(busy.worker)  # never got its visit: still idle
            elif workers is not None:
                workers.cancel(busy.worker)
            else:
                kill(busy.worker)
        self._busy.clear()
        for worker in self._idle_workers:
            self._forget_worker(worker.actor_urn)
            if workers is not None:
                workers.checkin(worker)
        self._idle_workers = []
        for state in self._states.values():
            state.queue.clear()

    # --- sub-runs ------------------------------------------------------------------------------

    def _start_sub_run(self, visit: _Visit) -> None:
        job_id = visit.sub_job
        assert job_id is not None
        sub_job = self.config.subs.get(job_id)
        if sub_job is None:
            self._fail(_job_not_loaded(job_id, self._job.id, self.config.subs))
            return
        child_id = f"sub:{visit.id}.{visit.retries}"
        run_id = f"{self.run_id}.{visit.id}"
        tracer = self._context.tracer
        config = attrs.evolve(
            self.config,
            run_id=run_id,
            job=sub_job,
            # A sub-run keeps no event log of its own, but a traced run's sub-run is traced.
            log=None
            if tracer is None
            else EventLog(run_id, tracer.sub(run_id, job_id, visit.thread_id)),
            store=None,
            parent=(self.actor_ref, visit.id),
            parent_run_id=self.run_id,
            restored=None,
            restored_results=(),
        )
        spec = ChildSpec(
            child_id,
            (GraphExecutor, (config,), {}),
            restart="temporary",
            type="supervisor",
            shutdown=30.0,
        )
        child = _Child(spec, child_id)
        self._emit(
            EventKind.SUB_STARTED,
            visit.node_id,
            visit.thread_id,
            visit.step,
            job_id=job_id,
            sub_run_id=config.run_id,
        )
        try:
            ref = self._launch(child)
        except Exception as exc:
            self._fail(RunError(f"run {self.run_id}: sub-job {job_id!r} did not start: {exc}"))
            return
        self._children[child_id] = child
        self._sub_of[ref.actor_urn] = visit.id

    def _on_sub_done(self, done: SubDone) -> None:
        visit = self._visits.pop(done.visit_id, None)
        if visit is None or self._over:
            return
        sub = done.result
        self._emit(
            EventKind.SUB_DONE,
            visit.node_id,
            visit.thread_id,
            visit.step,
            job_id=visit.sub_job,
            status=sub.status.value,
        )
        if sub.error is not None:
            self._fail(sub.error)
            return
        output = sub.output if sub.output is not None else Result("")
        if visit.node_id is None:
            # A Sub instruction: the sub-run's end decides this thread.
            self._record(visit, None, output)
            if sub.status is RunStatus.COMPLETED:
                self._finish_thread(visit.thread_id)
            elif sub.status is RunStatus.ENDED:
                self._finish_run(RunStatus.ENDED, output=output)
            else:
                self._fail(
                    RunError(f"run {self.run_id}: sub-job {visit.sub_job!r} was {sub.status.value}")
                )
            return
        # A sub node: the sub-run's output is the node's result, routed as usual.
        self._record(visit, visit.node_id, output)
        node = self._nodes[visit.node_id]
        try:
            instructions, dropped = route_result(node, self._message(visit), output)
        except Exception as exc:  # InvalidNode, or a router bug
            self._fail(exc.at_node(node.id) if isinstance(exc, InvalidNext) else exc)
            return
        if dropped:
            emit_dropped(
                self._events, self._rlog, visit.node_id, visit.thread_id, visit.step, dropped
            )
        self._route(visit, output, instructions)

    # --- ending --------------------------------------------------------------------------------

    def _fail(self, error: BaseException) -> None:
        self._finish_run(RunStatus.ERROR, error=error)

    def _settle(self) -> None:
        """After each message: complete the run, or checkpoint and then send what was decided.

        Nothing starts before the checkpoint that led to it is written, so a crash
        never loses a finished visit. While messages are queued the checkpoint
        (and so the sends) wait, up to a bound, to write once for several; a
        :class:`_Settle` sent to itself behind them writes it then.
        """
        if self._over:
            return
        if self._begun and not self._visits and not self._barrier.live:
            self._finish_run(RunStatus.COMPLETED)
            return
        if self._dirty and self._store is not None:
            if self._put_off < _MAX_DEFERRED_CHECKPOINTS and not self.mailbox.empty():
                self._put_off += 1
                if not self._settle_queued:
                    self._settle_queued = True
                    # Behind the queued mail: settles after it, whatever that mail is.
                    with contextlib.suppress(pykka.ActorDeadError):  # ending: on_stop settles
                        self.actor_ref.tell(_Settle())
                return
            self._checkpoint(RunStatus.RUNNING)
        if self._outbox:
            self._flush()
            if self._over:
                return
            if not self._visits and not self._barrier.live:
                self._finish_run(RunStatus.COMPLETED)

    def _finish_run(
        self,
        status: RunStatus,
        *,
        output: Result | None = None,
        error: BaseException | None = None,
    ) -> None:
        if self._over:
            return
        self._over = True
        if self._store is not None:
            self._checkpoint(status, output=output, error=error)
        self._cancel_in_flight()
        self._close_servings()
        if status is not RunStatus.INTERRUPTED:
            self._visits.clear()
        by_thread: dict[str, list[StepResult]] = {}
        for step_result in self._results:
            by_thread.setdefault(step_result.thread_id, []).append(step_result)
        result = RunResult(
            run_id=self.run_id,
            status=status,
            output=output if output is not None else self._last,
            results_by_thread={t: tuple(rs) for t, rs in by_thread.items()},
            steps=self._step,
            error=error,
        )
        self.process_state = f"{self._job.id} {self.run_id} {status.value}"
        if self.config.name is not None:
            unregister(self.config.name)  # the id is free again once the run is over
        data: dict[str, Any] = {"status": status.value, "steps": self._step}
        if error is not None:
            data["error"] = f"{type(error).__name__}: {error}"
        event = RunEvent(_TERMINAL_KIND[status], self.run_id, None, None, self._step, data)
        if self._events is not None:
            self._events.append(event, result)
        if status is RunStatus.ERROR:
            self._rlog.warning(event.kind.value, **data)
        else:
            self._rlog.info(event.kind.value, **data)
        parent = self.config.parent
        if parent is not None:
            with contextlib.suppress(pykka.ActorDeadError):  # the parent is gone: nobody waits
                parent[0].tell(SubDone(parent[1], result))
        elif self.config.spares is not None and status is not RunStatus.INTERRUPTED:
            # Asked now, ``runs`` starts the spares when it wakes for this executor's exit.
            self.config.spares.refill()
        self.stop_with(Normal())

    def _cancel_in_flight(self) -> None:
        """Cancel the node visits in flight and stop the sub-runs (End cancels them)."""
        self._release_workers()
        for urn in list(self._sub_of):
            sub_child = self._by_urn.get(urn)
            if sub_child is not None:
                self._stop_child(sub_child)
                self._children.pop(sub_child.id, None)
        self._sub_of.clear()

    def _close_servings(self) -> None:
        for node_id in self._states:
            close = getattr(self._nodes[node_id].serving, "close_run", None)
            if callable(close):
                try:
                    close(self.run_id)
                except Exception:  # cleanup of one serving must not stop the others'
                    self._rlog.exception("serving_close_failed", node_id=node_id)

    # --- checkpoints and events ----------------------------------------------------------------

    def _checkpoint(
        self,
        status: RunStatus,
        *,
        output: Result | None = None,
        error: BaseException | None = None,
    ) -> None:
        store = self._store
        assert store is not None
        barrier = self._barrier
        last = output if output is not None else self._last
        state = {
            "version": CHECKPOINT_VERSION,
            "input": self._input,
            "step": self._step,
            "next_thread": self._next_thread,
            "next_visit": self._next_visit,
            "visits": [visit.to_json() for visit in self._visits.values()],
            "live": sorted(barrier.live),
            "arrivals": [
                {"thread": a.thread_id, "target": a.target, "result": a.result.to_dict()}
                for a in barrier.arrivals
            ],
            "output": None if last is None else last.to_dict(),
            "error": None if error is None else f"{type(error).__name__}: {error}",
        }
        results = [
            _dumps(
                {
                    "thread": r.thread_id,
                    "node": r.node_id,
                    "step": r.step,
                    "result": r.result.to_dict(),
                }
            )
            for r in self._unsaved
        ]
        try:
            store.save_run(
                self.run_id,
                job_id=self._job.id,
                status=status.value,
                state=_dumps(state),
                results=results,
                parent_run_id=self.config.parent_run_id,
            )
        except Exception as exc:  # the store is closed or failing: the run goes on, not durably
            self._rlog.error("run_checkpoint_failed", error=repr(exc))
        else:
            self._unsaved.clear()
        self._dirty = False
        self._put_off = 0
        waiting = self.config.checkpointed
        if waiting is not None and not self._first_checkpoint_told:
            self._first_checkpoint_told = True
            with contextlib.suppress(queue.Full):  # the caller stopped waiting (its monitor)
                waiting.set(None)

    def _emit(
        self,
        kind: EventKind,
        node_id: str | None,
        thread_id: str | None,
        step: int | None = None,
        **data: Any,
    ) -> None:
        if step is None:
            step = self._step
        if self._events is not None:
            self._events.record(kind, node_id, thread_id, step, data)
        if self._debug_on:
            self._rlog.debug(kind.value, node_id=node_id, thread_id=thread_id, step=step, **data)


def _short_input(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _invalid_node(node_id: str, job: Job) -> InvalidNode:
    return InvalidNode(
        f"a route instruction names node {node_id!r}, which job {job.id!r} does not have; "
        f"its nodes: {', '.join(job.nodes)}"
    )


def _job_not_loaded(job_id: str, parent: str, subs: Mapping[str, Job]) -> JobNotLoaded:
    known = ", ".join(sorted(subs)) or "none"
    return JobNotLoaded(
        f"job {parent!r} asks for sub-job {job_id!r}, which was not given to the run "
        f"(pass subs={{{job_id!r}: Job(...)}}); loaded sub-jobs: {known}"
    )


class SpareExecutors:
    """Executors started ahead of time under ``runs``, each waiting for one run.

    Starting a process is most of what a short run costs; a spare moves that
    off the caller's path. :meth:`take` hands out a spare (or None) and asks
    for a new one; each spare serves one run and then ends, like any executor.
    """

    def __init__(self, runs: DynamicSupervisorRef, keep: int = 4) -> None:
        """Keep ``keep`` spares under ``runs``."""
        self._runs = runs
        self._keep = keep
        self._lock = threading.Lock()
        self._spares: list[pykka.ActorRef[Any]] = []
        self._pending = 0
        self._spec = ChildSpec(
            "spare", self._start, restart="temporary", type="supervisor", shutdown=30.0
        )

    def _start(self) -> pykka.ActorRef[Any]:
        # The ChildSpec's start function: runs in the ``runs`` supervisor.
        try:
            ref = GraphExecutor.start()
        finally:
            with self._lock:
                self._pending -= 1
        with self._lock:
            self._spares.append(ref)
        return ref

    def refill(self) -> None:
        """Ask ``runs`` for spares, without waiting, once fewer than half of ``keep`` are left.

        Asking for several at once lets ``runs`` start them in one go.
        """
        with self._lock:
            have = len(self._spares) + self._pending
            missing = self._keep - have if have * 2 <= self._keep else 0
            self._pending += missing
        for _ in range(missing):
            try:
                # An ask (not a tell): a failed start is answered, not a crash of ``runs``.
                self._runs.ask(ProxyCall(("_api_start_child",), (self._spec,), {}), block=False)
            except pykka.ActorDeadError:
                with self._lock:
                    self._pending -= 1

    def take(self) -> pykka.ActorRef[Any] | None:
        """A live spare, or None; asks for more when at most one is left.

        Otherwise executors refill at the end of their runs (see :meth:`refill`):
        ``runs`` wakes up for their exit anyway, and does both at once.
        """
        ref = None
        with self._lock:
            while self._spares:
                candidate = self._spares.pop()
                if candidate.is_alive():
                    ref = candidate
                    break
            low = len(self._spares) + self._pending <= 1
        if low:
            self.refill()
        return ref
