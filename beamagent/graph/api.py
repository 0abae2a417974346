"""Graph methods of ``Runtime``: ``run_job``, ``resume_run``, ``get_run``, ``list_runs``.

Each run is a :class:`~beamagent.graph.executor.GraphExecutor` under the
runtime's ``runs`` supervisor (``temporary``: a finished run is not restarted),
registered as ``("beamagent", <runtime id>, "run", <run id>)``. Node actors
are shared by the runtime's runs (started on first use, restarted when they
crash); a run's sub-runs are its executor's children::

    runs (DynamicSupervisor)
    ├── NodeActors (DynamicSupervisor)    the runtime's pool of NodeActor processes
    │   ├── NodeActor  serving triage of run_...
    │   └── NodeActor  idle
    └── GraphExecutor                      one per run; borrows node actors
        └── GraphExecutor                  a sub-run

Example::

    with Runtime(store=":memory:") as rt:
        run = rt.run_job(job, "the printer is on fire")
        print(run.result().output.body)
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import queue
import re
import threading
import uuid
from collections.abc import Mapping, Sized
from typing import TYPE_CHECKING, Any

import pykka
from pykka.messages import ProxyCall

from beamagent import telemetry
from beamagent.errors import (
    BeamAgentError,
    InputRequired,
    InvalidJob,
    InvalidOption,
    RunAlreadyExists,
    RunError,
    RunNotFound,
)
from beamagent.log import get_logger
from supervisors import (
    AlreadyRegistered,
    ChildSpec,
    Down,
    NoSuchProcess,
    ProcessFuture,
    StartChildError,
    lookup,
    monitor,
    register,
    whereis,
)

# The graph modules are imported by the methods that use them: a runtime that runs no
# graph does not import them (docs/decisions.md, "Lazy imports").
if TYPE_CHECKING:
    from beamagent.graph.executor import RunConfig, SpareExecutors
    from beamagent.graph.job import Job
    from beamagent.graph.node import NodeWorkers
    from beamagent.graph.run import Run
    from beamagent.graph.serving import ToolRegistry
    from beamagent.store.base import SessionStore
    from supervisors import DynamicSupervisorRef

__all__ = ["RESUMABLE", "GraphApi"]

log = get_logger(__name__)

RUN_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
RESUMABLE = frozenset({"running", "interrupted"})  # RunStatus.RUNNING, .INTERRUPTED
"""Checkpoint statuses ``resume_run`` accepts (``running``: the process died under it)."""

#: beamagent.graph.node.DEFAULT_MAX_TOOL_ROUNDS, without importing it (a test checks).
DEFAULT_MAX_TOOL_ROUNDS = 8
_EXECUTOR_SHUTDOWN = 30.0
_CALL_TIMEOUT = 30.0
_init_lock = threading.Lock()


class _GraphState:
    """Per-runtime graph state: live runs, the node actors, the spare executors."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[str, Run] = {}
        self.dropped = threading.Event()  # set when the ``runs`` they live under ended
        self.workers: NodeWorkers | None = None
        self.spares: SpareExecutors | None = None
        self.serial = itertools.count(1)
        self.prefix = uuid.uuid4().hex[:12]


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, Sized) and len(value) == 0


class GraphApi:
    """Mixed into ``Runtime``: graph runs under the ``runs`` supervisor (see the module doc)."""

    if TYPE_CHECKING:
        id: str
        _store: SessionStore

        @property
        def runs_supervisor(self) -> DynamicSupervisorRef: ...

    # --- plumbing ---------------------------------------------------------------------------

    def _graph(self) -> _GraphState:
        state: _GraphState | None = self.__dict__.get("_graph_state")
        if state is None:
            with _init_lock:
                state = self.__dict__.setdefault("_graph_state", _GraphState())
        return state

    def _run_name(self, run_id: str) -> tuple[str, ...]:
        return ("beamagent", self.id, "run", run_id)

    def _graph_resources(self, runs: DynamicSupervisorRef) -> tuple[NodeWorkers, SpareExecutors]:
        """The runtime's node actors and spare executors, made on first use.

        The node actors' supervisor is a child of ``runs``; both are dropped
        (and made again on the next run) when the ``runs`` supervisor ends.
        """
        from beamagent.graph.executor import SpareExecutors
        from beamagent.graph.node import NodeActors, NodeWorkers

        graph = self._graph()
        with graph.lock:
            workers, spares, dropped = graph.workers, graph.spares, graph.dropped
            if workers is not None and spares is not None and not dropped.is_set():
                return workers, spares
            name = ("beamagent", self.id, "node-actors")
            workers = NodeWorkers(name)
            spec = ChildSpec(
                "node-actors",
                # Node actors are independent: no number of crashes among them stops the pool.
                (NodeActors, (), {"max_restarts": None}),
                type="supervisor",
                name=name,
            )
            try:
                runs.start_child(spec, timeout=_CALL_TIMEOUT)
            except StartChildError as exc:
                if not isinstance(exc.reason, AlreadyRegistered):
                    raise RunError(f"the node actors' supervisor did not start: {exc}") from exc
            spares = SpareExecutors(runs)
            dropped = threading.Event()
            graph.workers, graph.spares, graph.dropped = workers, spares, dropped

            def drop(_down: Down) -> None:
                dropped.set()

            monitor(runs, watcher=drop)
            return workers, spares

    # --- runs ---------------------------------------------------------------------------------

    def run_job(
        self,
        job: Job,
        input: Any,
        run_id: str | None = None,
        *,
        subs: Mapping[str, Job] | None = None,
        tools: ToolRegistry | None = None,
        durable: bool = True,
        max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
    ) -> Run:
        """Start running ``job`` on ``input``; returns its :class:`Run` at once.

        Args:
            job: the graph to run.
            input: the run's input, given to every node (``message.input``);
                must not be empty. A durable run's input must be JSON.
            run_id: the run's id (default ``run_<12 hex>_<n>``, unique per runtime).
            subs: the jobs ``Sub`` instructions and sub nodes may run, by id.
            tools: Python tools the nodes' tool calls reach (a serving's own
                ``tools`` attribute wins).
            durable: checkpoint every step to the runtime's store, so
                :meth:`resume_run` can continue the run after a crash.
            max_tool_rounds: how often one visit may call tools and run again.

        Raises:
            InputRequired: ``input`` is empty.
            RunAlreadyExists: a run with this id is running, or is in the store.
            InvalidOption: a bad run id, or a durable run's input is not JSON.
            InvalidJob: ``job`` or a sub-job is not a ``Job``.
        """
        from beamagent.graph.job import Job

        if not isinstance(job, Job):
            raise InvalidJob(f"run_job needs a Job, got {type(job).__name__}")
        if _is_empty(input):
            raise InputRequired(f"job {job.id!r} needs a non-empty input, got {input!r}")
        given_id = run_id is not None
        if run_id is None:
            graph = self._graph()
            run_id = f"run_{graph.prefix}_{next(graph.serial)}"
        elif not isinstance(run_id, str) or not RUN_ID.match(run_id):
            raise InvalidOption(
                f"run_id must be 1-200 characters of letters, digits and '_.:-'; got {run_id!r}"
            )
        sub_jobs = _check_subs(subs)
        if durable:
            try:
                json.dumps(input)
            except (TypeError, ValueError) as exc:
                raise InvalidOption(
                    f"a durable run's input must be JSON-serialisable ({exc}); "
                    "pass durable=False to run it without checkpoints"
                ) from None
        if given_id:
            with contextlib.suppress(RunNotFound):
                status = self._store.load_run(run_id)["status"]
                raise RunAlreadyExists(
                    f"run {run_id!r} is already in the store (status {status}); pick another "
                    "id, resume_run() it, or delete it first with delete_run()"
                )
        return self._start_run(
            job,
            run_id,
            input,
            sub_jobs,
            tools,
            durable,
            max_tool_rounds,
            restored=None,
            restored_results=(),
        )

    async def arun_job(
        self,
        job: Job,
        input: Any,
        run_id: str | None = None,
        *,
        subs: Mapping[str, Job] | None = None,
        tools: ToolRegistry | None = None,
        durable: bool = True,
        max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
    ) -> Run:
        """Async twin of :meth:`run_job` (starting the run happens off the event loop).

        Await the outcome with ``await run.aresult()`` or ``async for e in run.aevents()``.
        """
        import asyncio

        start = functools.partial(
            self.run_job,
            job,
            input,
            run_id,
            subs=subs,
            tools=tools,
            durable=durable,
            max_tool_rounds=max_tool_rounds,
        )
        return await asyncio.get_running_loop().run_in_executor(None, start)

    def resume_run(
        self,
        run_id: str,
        job: Job,
        *,
        subs: Mapping[str, Job] | None = None,
        tools: ToolRegistry | None = None,
        max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
    ) -> Run:
        """Continue a checkpointed run that was interrupted (its runtime stopped or crashed).

        Servings and routers are not stored, so the job (and its sub-jobs) are
        given again. Visits that had finished keep their results; visits pending
        or in flight at the last checkpoint run again; sub-runs start over.

        Raises:
            RunNotFound: the store has no checkpoint of ``run_id``.
            RunAlreadyExists: the run is running in this runtime.
            RunError: the run already ended (only ``running`` and ``interrupted``
                runs can be resumed).
            InvalidJob: ``job`` is not the job the run was started with.
        """
        from beamagent.graph.job import Job

        if not isinstance(job, Job):
            raise InvalidJob(f"resume_run needs a Job, got {type(job).__name__}")
        record = self._store.load_run(run_id)
        with contextlib.suppress(RunNotFound):
            if not self.get_run(run_id).done():
                raise RunAlreadyExists(f"run {run_id!r} is already running")
        if record["status"] not in RESUMABLE:
            raise RunError(
                f"run {run_id!r} is {record['status']}; only running or interrupted runs "
                "can be resumed"
            )
        if record["job_id"] != job.id:
            raise InvalidJob(
                f"run {run_id!r} runs job {record['job_id']!r}, not {job.id!r}; "
                "give resume_run the job the run was started with"
            )
        state = record["state"]
        return self._start_run(
            job,
            run_id,
            state.get("input"),
            _check_subs(subs),
            tools,
            True,
            max_tool_rounds,
            restored=state,
            restored_results=record["results"],
        )

    def _start_run(
        self,
        job: Job,
        run_id: str,
        input: Any,
        subs: dict[str, Job],
        tools: ToolRegistry | None,
        durable: bool,
        max_tool_rounds: int,
        *,
        restored: Mapping[str, Any] | None,
        restored_results: Any,
    ) -> Run:
        from beamagent.graph.executor import RunConfig
        from beamagent.graph.run import EventKind, EventLog, Run, RunEvent, RunResult, RunStatus
        from beamagent.graph.tracing import RunTracer

        runs = self.runs_supervisor
        workers, spares = self._graph_resources(runs)
        name = self._run_name(run_id)
        tracer = (
            RunTracer(run_id, job.id, resumed=restored is not None) if telemetry.ENABLED else None
        )
        events = EventLog(run_id, tracer)
        # A new durable run is acknowledged (returned) once its first checkpoint is
        # written: a process killed right after run_job returned can resume it.
        checkpointed = ProcessFuture() if durable and restored is None else None
        config = RunConfig(
            run_id=run_id,
            job=job,
            input=input,
            subs=subs,
            log=events,
            runtime=self,
            store=self._store if durable else None,
            tools=tools,
            workers=workers,
            restored=restored,
            restored_results=tuple(restored_results),
            max_tool_rounds=max_tool_rounds,
            name=name,
            spares=spares,
            checkpointed=checkpointed,
        )
        run = Run(self, run_id, job.id, events)
        graph = self._graph()
        with graph.lock:
            current = graph.runs.get(run_id)
            if current is not None and not current.done():
                error = RunAlreadyExists(f"run {run_id!r} is already running")
                if tracer is not None:
                    tracer.abandon(error)
                raise error
            graph.runs[run_id] = run  # reserved: a second run_job with this id fails now
        try:
            ref = self._assign_spare(spares, name, config)
            if ref is None:
                ref = self._start_executor(runs, name, config)
        except BaseException as exc:
            with graph.lock:
                graph.runs.pop(run_id, None)
            if tracer is not None:
                tracer.abandon(exc)
            raise

        def ended(down: Down) -> None:
            # A killed executor writes no terminal event: the handle still gets exactly one.
            if events.result is None:
                events.append(
                    RunEvent(
                        EventKind.RUN_ERROR,
                        run_id,
                        data={"status": "error", "error": f"the executor ended: {down.reason}"},
                    ),
                    RunResult(
                        run_id,
                        RunStatus.ERROR,
                        None,
                        {},
                        0,
                        RunError(f"run {run_id!r}: its executor ended ({down.reason})"),
                    ),
                )
            with graph.lock:
                if graph.runs.get(run_id) is run:
                    del graph.runs[run_id]
            if checkpointed is not None:
                with contextlib.suppress(queue.Full):  # it checkpointed before it ended
                    checkpointed.set(None)

        monitor(ref, watcher=ended)
        if checkpointed is not None:
            try:
                checkpointed.get(timeout=_CALL_TIMEOUT)
            except pykka.Timeout:
                log.warning("run_first_checkpoint_late", run_id=run_id, after=_CALL_TIMEOUT)
        return run

    @staticmethod
    def _assign_spare(
        spares: SpareExecutors, name: tuple[str, ...], config: RunConfig
    ) -> pykka.ActorRef[Any] | None:
        from beamagent.graph.executor import Assign, GraphExecutor

        spare = spares.take()
        if spare is None:
            return None
        try:
            register(name, spare)
        except AlreadyRegistered:
            raise RunAlreadyExists(f"run {config.run_id!r} is already running") from None
        except NoSuchProcess:
            return None
        process = lookup(spare)
        if isinstance(process, GraphExecutor) and process.take_run(config):
            return spare  # it started the run in this thread (see GraphExecutor.take_run)
        try:
            spare.tell(Assign(config))
        except pykka.ActorDeadError:
            return None  # it died as a spare; its name went with it
        return spare

    @staticmethod
    def _start_executor(
        runs: DynamicSupervisorRef, name: tuple[str, ...], config: RunConfig
    ) -> pykka.ActorRef[Any]:
        from beamagent.graph.executor import GraphExecutor

        spec = ChildSpec(
            config.run_id,
            (GraphExecutor, (config,), {}),
            restart="temporary",
            type="supervisor",
            shutdown=_EXECUTOR_SHUTDOWN,
            name=name,
        )
        try:
            return runs.start_child(spec, timeout=_CALL_TIMEOUT)
        except StartChildError as exc:
            if isinstance(exc.reason, AlreadyRegistered):
                raise RunAlreadyExists(f"run {config.run_id!r} is already running") from None
            if isinstance(exc.reason, BeamAgentError):
                raise exc.reason from None
            raise RunError(f"run {config.run_id!r} did not start: {exc.reason!r}") from exc

    def get_run(self, run_id: str) -> Run:
        """The handle of a live run of this runtime.

        Raises:
            RunNotFound: no run with this id is running here (see :meth:`list_runs`
                for runs in the store).
        """
        graph = self._graph()
        with graph.lock:
            run = graph.runs.get(run_id)
        if run is None or run.done():
            raise RunNotFound(
                f"no live run {run_id!r}; list_runs() shows the runs kept in the store"
            )
        return run

    def live_runs(self) -> list[str]:
        """Ids of the runs running in this runtime now."""
        graph = self._graph()
        with graph.lock:
            return [run_id for run_id, run in graph.runs.items() if not run.done()]

    def list_runs(
        self,
        *,
        status: str | None = None,
        job_id: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Durable runs kept in the store, most recently updated first.

        Each is ``{run_id, job_id, parent_run_id, status, created_at, updated_at}``;
        ``status="interrupted"`` (or ``"running"`` after a crash) lists what
        :meth:`resume_run` can continue.
        """
        return self._store.list_runs(status=status, job_id=job_id, limit=limit)

    def load_run(self, run_id: str) -> dict[str, Any]:
        """A stored run: :meth:`list_runs`' keys plus its checkpointed ``state`` and ``results``.

        Raises:
            RunNotFound: the store has no run ``run_id``.
        """
        return self._store.load_run(run_id)

    def delete_run(self, run_id: str) -> None:
        """Delete a stored run's checkpoint and results (a live run is not deleted).

        To keep the store from growing for ever, delete runs you no longer need
        to resume or inspect, or prune old ones with :meth:`Runtime.prune`.

        Raises:
            RunNotFound: the store has no run ``run_id``.
            RunAlreadyExists: the run is running in this runtime; stop it first.
        """
        if run_id in self.live_runs():
            raise RunAlreadyExists(f"run {run_id!r} is running; stop it before deleting it")
        self._store.delete_run(run_id)

    def _stop_run(self, run_id: str, timeout: float | None) -> None:
        ref = whereis(self._run_name(run_id))
        if ref is None:
            return
        with contextlib.suppress(Exception):  # it ended meanwhile
            ref.ask(ProxyCall(("stop_run",), (), {}), timeout=timeout)


def _check_subs(subs: Mapping[str, Job] | None) -> dict[str, Job]:
    from beamagent.graph.job import Job

    if subs is None:
        return {}
    if not isinstance(subs, Mapping):
        raise InvalidJob(f"subs must be a mapping of job id to Job, got {type(subs).__name__}")
    checked: dict[str, Job] = {}
    for key, value in subs.items():
        if not isinstance(value, Job):
            raise InvalidJob(f"subs[{key!r}] must be a Job, got {type(value).__name__}")
        if key != value.id:
            raise InvalidJob(f"subs[{key!r}] holds job {value.id!r}; the keys must be job ids")
        checked[key] = value
    return checked
