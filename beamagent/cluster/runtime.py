"""``ClusterRuntime``: the ``Runtime`` API over a Ray cluster of node runtimes.

Any process connected to the Ray cluster can make one. Sessions are placed by
the controller (routing picks a node and a backend), then addressed as
``(node, session id)``: a :class:`ClusterSession` forwards each call straight
to its node runtime, and asks the controller where the session is only when
that node says it is not there or is gone. Store reads go to the shared store
directly. The async twins await Ray object refs: they never block the loop.

At most once: a query in flight when its node dies raises
:class:`~beamagent.errors.NodeLost` and is not sent again; the session is
restarted elsewhere and resumed from the store, and later calls on the same
handle reach it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, cast

import attrs

from beamagent.cluster._ray import (
    CONTROLLER_NAME,
    NAMESPACE,
    actor_lost,
    connect,
    node_actor_name,
    require_ray,
    unwrap,
)
from beamagent.cluster.deploy import _store_spec, deploy
from beamagent.errors import (
    ClusterUnavailable,
    InvalidOption,
    NodeLost,
    QueryComplete,
    QueryTimeout,
    RunNotFound,
    SessionError,
    SessionNotFound,
)
from beamagent.graph.job import Job
from beamagent.graph.run import RunResult
from beamagent.log import get_logger
from beamagent.messages import Message, MessageType
from beamagent.session.handle import CALL_TIMEOUT, DEFAULT_QUERY_TIMEOUT
from beamagent.store import SessionStore, open_store
from beamagent.store.api import StoreApi

__all__ = ["ClusterRun", "ClusterRuntime", "ClusterSession"]

log = get_logger(__name__)

FAILOVER_TIMEOUT = 60.0
"""How long a call waits for its session to come back on another node."""
_GRACE = 5.0

REPEATABLE = frozenset(
    {"health", "session_info", "interrupt", "abort", "set_model", "set_permission_mode"}
)
"""Session calls safe to send again after their node died under them."""

_TERMINAL = frozenset({MessageType.RESULT, MessageType.ERROR})


class ClusterRuntime(StoreApi):
    """The session, routing, store and graph API of ``Runtime``, over a Ray cluster.

    Args:
        address: the Ray cluster (``"127.0.0.1:6379"``); None when this process
            is already connected (``ray.init(namespace="beamagent")``).
        store: the shared store every node uses (a PostgreSQL URL, or a SQLite
            path on a filesystem all nodes share).
        nodes: where to deploy node runtimes if missing (see
            :func:`~beamagent.cluster.deploy`); default every alive node.
        node_options: options every deployed node runtime gets (``backends``...).
        deploy_missing: deploy the controller and node runtimes that are not
            running yet (default True).
        failover_timeout: how long a call waits for its session to be back on
            a surviving node after its node died.
        ray_options: more ``ray.init`` keyword arguments, when this call
            connects the process (``log_to_driver`` is False unless given).
            With ``address=None`` and no connection yet, ``ray.init`` starts a
            one-node Ray on this machine.

    Example::

        with ClusterRuntime("127.0.0.1:6379", store="postgresql://...") as rt:
            session = rt.start_session(routing={"policy": "round_robin"})
            session.query("hello")
            session.session_info()["node"]

    Raises:
        MissingDependency: Ray is not installed (``pip install 'beamagent[ray]'``).
        InvalidOption: the store is not one every node can share.
    """

    def __init__(
        self,
        address: str | None = None,
        store: Any = None,
        *,
        nodes: Any = None,
        node_options: Mapping[str, Any] | None = None,
        deploy_missing: bool = True,
        failover_timeout: float = FAILOVER_TIMEOUT,
        ray_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._ray = require_ray()
        spec = _store_spec(store)
        self._connected_here = connect(address, **dict(ray_options or {}))
        self._store_spec = spec
        self._store: SessionStore = open_store(spec)
        self._failover_timeout = failover_timeout
        self._actors: dict[str, Any] = {}
        self._stopped = False
        if deploy_missing:
            deploy(store=spec, nodes=nodes, node_options=node_options)
        self._log = log.bind()

    # --- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> ClusterRuntime:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Close this handle on the cluster (the cluster and its sessions run on)."""
        if self._stopped:
            return
        self._stopped = True
        self._store.close()
        if self._connected_here:
            self._ray.shutdown()

    # --- plumbing -----------------------------------------------------------------------

    @property
    def controller(self) -> Any:
        """The controller actor (looked up by name at each use)."""
        try:
            return self._ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
        except ValueError:
            raise ClusterUnavailable(
                "no beamagent controller runs on this Ray cluster; deploy() it"
            ) from None

    def node_actor(self, node: str) -> Any:
        """The node runtime actor on ``node``.

        Raises:
            NodeLost: no node runtime runs there.
        """
        actor = self._actors.get(node)
        if actor is None:
            try:
                actor = self._ray.get_actor(node_actor_name(node), namespace=NAMESPACE)
            except ValueError:
                raise NodeLost(f"no node runtime runs on node {node}", node) from None
            self._actors[node] = actor
        return actor

    def _get(self, ref: Any, timeout: float | None) -> Any:
        """``ray.get`` with beamagent's errors raised as themselves."""
        ray = self._ray
        try:
            return ray.get(ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise QueryTimeout(f"the cluster did not answer within {timeout} s") from None
        except ray.exceptions.RayTaskError as exc:
            error = unwrap(exc)
            if error is not None:
                raise error from None
            raise

    async def _aget(self, ref: Any, timeout: float | None) -> Any:
        ray = self._ray
        try:
            return await asyncio.wait_for(asyncio.shield(ref), timeout)
        except TimeoutError:
            raise QueryTimeout(f"the cluster did not answer within {timeout} s") from None
        except ray.exceptions.RayTaskError as exc:
            error = unwrap(exc)
            if error is not None:
                raise error from None
            raise

    def _controller_call(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT) -> Any:
        """Ask the controller; wait (bounded) while it restarts. Only for repeatable asks."""
        ray = self._ray
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(deadline - time.monotonic(), 0.1)
            try:
                return self._get(getattr(self.controller, method).remote(*args), remaining)
            except actor_lost(ray, ClusterUnavailable) as exc:
                if time.monotonic() >= deadline:
                    raise ClusterUnavailable(
                        f"the cluster controller did not answer {method} within {timeout} s"
                    ) from exc
                threading.Event().wait(0.1)  # the controller restarts: look its name up again

    async def _acontroller_call(
        self, method: str, *args: Any, timeout: float = CALL_TIMEOUT
    ) -> Any:
        ray = self._ray
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(deadline - time.monotonic(), 0.1)
            try:
                return await self._aget(getattr(self.controller, method).remote(*args), remaining)
            except actor_lost(ray, ClusterUnavailable) as exc:
                if time.monotonic() >= deadline:
                    raise ClusterUnavailable(
                        f"the cluster controller did not answer {method} within {timeout} s"
                    ) from exc
                await asyncio.sleep(0.1)  # the controller restarts: poll its name again

    # --- sessions -----------------------------------------------------------------------

    def start_session(self, backend: str | None = None, **opts: Any) -> ClusterSession:
        """Place a session on a node by policy and start it there; its handle once ready.

        Options as ``Runtime.start_session`` (``routing``, ``session_id``,
        ``resume``, backend options...); ``routing`` places among (node,
        backend) pairs.

        Raises:
            UnknownBackend, InvalidOption, InvalidRouteRequest: bad options.
            NoBackendAvailable, BackendNotEligible: no node can host it.
            ConnectTimeout, SessionError: the backend did not start.
            ClusterUnavailable: the controller did not answer.
        """
        backend, opts, routing, token = self._start_args(backend, opts)
        ray = self._ray
        deadline = time.monotonic() + CALL_TIMEOUT * 2
        while True:
            try:
                info = self._get(
                    self.controller.start_session.remote(backend, opts, routing, token),
                    max(deadline - time.monotonic(), 1.0),
                )
                break
            except actor_lost(ray) as exc:
                # The controller died mid-start: the same token finds a start that happened.
                if time.monotonic() >= deadline:
                    raise ClusterUnavailable("the cluster controller kept dying") from exc
                self._controller_call("ping")
        return ClusterSession(self, opts["session_id"], info["node"])

    async def astart_session(self, backend: str | None = None, **opts: Any) -> ClusterSession:
        """Async twin of :meth:`start_session` (awaits the controller's answer)."""
        backend, opts, routing, token = self._start_args(backend, opts)
        ray = self._ray
        deadline = time.monotonic() + CALL_TIMEOUT * 2
        while True:
            try:
                info = await self._aget(
                    self.controller.start_session.remote(backend, opts, routing, token),
                    max(deadline - time.monotonic(), 1.0),
                )
                break
            except actor_lost(ray) as exc:
                if time.monotonic() >= deadline:
                    raise ClusterUnavailable("the cluster controller kept dying") from exc
                await self._acontroller_call("ping")
        return ClusterSession(self, opts["session_id"], info["node"])

    def _start_args(
        self, backend: str | None, opts: dict[str, Any]
    ) -> tuple[str | None, dict[str, Any], dict[str, Any] | None, str]:
        opts = dict(opts)
        routing = opts.pop("routing", None)
        if routing is not None and not isinstance(routing, Mapping):
            # A RouteRequest: its set fields, as plain picklable values.
            routing = {
                k: dict(v) if isinstance(v, Mapping) else v
                for k, v in attrs.asdict(routing, recurse=False).items()
                if v not in (None, (), frozenset(), {})
            }
        resume = opts.get("resume")
        if resume is not None:
            resumed = resume.session_id if isinstance(resume, ClusterSession) else str(resume)
            opts["resume"] = resumed
            opts.setdefault("session_id", resumed)
            if backend is None and routing is None:
                backend = self._store.get_session(resumed).backend
        opts.setdefault("session_id", f"session_{uuid.uuid4().hex}")
        if backend is None and routing is None:
            routing = {}
        return backend, opts, None if routing is None else dict(routing), uuid.uuid4().hex

    def session(self, session_id: str) -> ClusterSession:
        """The handle of a live session, wherever it runs.

        Raises:
            SessionNotFound: no live session has this id.
        """
        node = self._locate(session_id, None, CALL_TIMEOUT)
        return ClusterSession(self, session_id, node)

    def _locate(self, session_id: str, avoid: str | None, timeout: float) -> str:
        return cast(
            str,
            self._controller_call("locate", session_id, avoid, timeout, timeout=timeout + _GRACE),
        )

    async def _alocate(self, session_id: str, avoid: str | None, timeout: float) -> str:
        return cast(
            str,
            await self._acontroller_call(
                "locate", session_id, avoid, timeout, timeout=timeout + _GRACE
            ),
        )

    def live_sessions(self) -> list[str]:
        """Ids of the sessions placed on the cluster now."""
        return sorted(self._controller_call("sessions"))

    def session_nodes(self) -> dict[str, str]:
        """Placed sessions: session id → node id."""
        return cast(dict[str, str], self._controller_call("sessions"))

    def stop_session(self, session_id: str) -> None:
        """Stop a live session wherever it runs (its history stays in the store).

        Raises:
            SessionNotFound: no live session has this id.
            StopTimeout: its node did not confirm the stop within 30 s; it goes on.
        """
        self._controller_call("stop_session", session_id, timeout=90.0)

    # --- routing and nodes --------------------------------------------------------------

    def select_placement(self, request: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A placement decision (node and backend) for ``request``, journaled; nothing starts.

        Raises:
            NoBackendAvailable, BackendNotEligible, InvalidRouteRequest.
        """
        return cast(dict[str, Any], self._controller_call("select", dict(request or {})))

    def nodes(self) -> list[dict[str, Any]]:
        """Every node runtime: ``node``, ``alive``, ``sessions``, ``backends``, ``health``..."""
        return cast(list[dict[str, Any]], self._controller_call("nodes"))

    def set_health(self, backend: str, status: str | None) -> None:
        """Override a backend's health on every node (``down``/``unhealthy``: never placed;
        ``None`` removes the override)."""
        self._controller_call("set_backend_health", backend, status)

    def backend_health(self) -> dict[str, str]:
        """Cluster-wide backend health overrides."""
        return cast(dict[str, str], self._controller_call("backend_health"))

    def clear_routing(self) -> None:
        """Forget sticky bindings and round-robin cursors (health overrides stay)."""
        self._controller_call("clear_routing")

    def set_node_health(self, node: str, status: str | None) -> None:
        """Override a node's health: ``down``/``unhealthy`` nodes get no new sessions."""
        self._controller_call("set_node_health", node, status)

    def node_health(self) -> dict[str, str]:
        """Node health overrides."""
        return cast(dict[str, str], self._controller_call("node_health"))

    def routing_decisions(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The placement journal, newest first: each entry has ``node`` and ``backend``."""
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise InvalidOption(f"limit must be None or an int >= 0; got {limit!r}")
        return cast(list[dict[str, Any]], self._controller_call("decisions", limit))

    # --- graph runs ---------------------------------------------------------------------

    def run_job(
        self,
        job: Job,
        input: Any,
        run_id: str | None = None,
        *,
        node: str | None = None,
        **options: Any,
    ) -> ClusterRun:
        """Start a durable run of ``job`` on a node; its handle.

        ``node`` asks for a node (used when it is alive and not marked down; else
        the node with the fewest runs). Other options are ``Runtime.run_job``'s
        (``subs``, ``tools``, ``max_tool_rounds``); a cluster run is always
        durable. If its node is lost, the run resumes from its checkpoint on
        another node.

        Raises:
            InvalidOption: ``durable=False``, or the run id is taken.
            RunAlreadyExists, InputRequired, InvalidJob: as ``Runtime.run_job``.
        """
        run_id = run_id or f"run_{uuid.uuid4().hex[:12]}"
        if not options.pop("durable", True):
            raise InvalidOption("a cluster run is durable (it resumes on another node)")
        placed = self._controller_call(
            "run_job",
            job,
            input,
            run_id,
            options,
            node,
            False,
            uuid.uuid4().hex,  # a repeat after a controller restart finds this run
            timeout=CALL_TIMEOUT * 2,
        )
        return ClusterRun(self, run_id, placed)

    def resume_run(
        self, run_id: str, job: Job, *, node: str | None = None, **options: Any
    ) -> ClusterRun:
        """Continue a checkpointed run (interrupted, or its runtime died) on a node.

        Raises:
            RunNotFound, RunError, InvalidJob: as ``Runtime.resume_run``.
        """
        placed = self._controller_call(
            "run_job",
            job,
            None,
            run_id,
            options,
            node,
            True,
            uuid.uuid4().hex,
            timeout=CALL_TIMEOUT * 2,
        )
        return ClusterRun(self, run_id, placed)

    def get_run(self, run_id: str) -> ClusterRun:
        """The handle of a run placed on the cluster.

        Raises:
            RunNotFound: no run with this id is placed (see :meth:`list_runs`).
        """
        node = self.runs().get(run_id)
        if node is None:
            raise RunNotFound(f"no run {run_id!r} is placed on the cluster")
        return ClusterRun(self, run_id, node)

    def runs(self) -> dict[str, str]:
        """Runs placed on the cluster: run id → node id."""
        return cast(dict[str, str], self._controller_call("runs"))

    def list_runs(
        self, *, status: str | None = None, job_id: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Durable runs kept in the shared store, most recently updated first."""
        return self._store.list_runs(status=status, job_id=job_id, limit=limit)

    def load_run(self, run_id: str) -> dict[str, Any]:
        """A stored run with its checkpointed state and results."""
        return self._store.load_run(run_id)

    # --- StoreApi hooks -------------------------------------------------------------------

    def store_write(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run a mutating store method on this process's connection to the shared store."""
        return getattr(self._store, method)(*args, **kwargs)

    def _is_live(self, session_id: str) -> bool:
        return session_id in self.session_nodes()

    def live_runs(self) -> list[str]:
        """Ids of the runs placed on the cluster."""
        return sorted(self.runs())


class ClusterSession:
    """A session on a cluster node, by id: the ``Session`` API, forwarded through Ray.

    Calls go to the node the session is on; when that node is lost, repeatable
    calls wait (bounded) for the session to be back on another node, and a
    query raises :class:`~beamagent.errors.NodeLost` (never sent twice).
    """

    __slots__ = ("_cluster", "_moved_from", "_node", "session_id")

    def __init__(self, cluster: ClusterRuntime, session_id: str, node: str) -> None:
        self._cluster = cluster
        self.session_id = session_id
        self._node = node
        self._moved_from: str | None = None

    def __repr__(self) -> str:
        return f"<ClusterSession {self.session_id} on {self._node}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClusterSession) and other.session_id == self.session_id

    def __hash__(self) -> int:
        return hash(self.session_id)

    @property
    def node(self) -> str:
        """The node this handle last reached the session on."""
        return self._node

    # --- plumbing -----------------------------------------------------------------------

    def _lost(self, method: str, node: str, exc: BaseException) -> NodeLost:
        with_node = f"node {node} was lost during {method} of session {self.session_id}"
        if method in ("query", "send_query", "send_control", "stream"):
            with_node += "; the prompt was not sent again (at most once)"
        error = NodeLost(with_node, node)
        error.__cause__ = exc
        return error

    def _drop(self, node: str) -> None:
        """Forget ``node``'s actor handle and tell the controller the node failed."""
        self._cluster._actors.pop(node, None)
        self._report(node)

    def _report(self, node: str) -> None:
        with contextlib.suppress(ClusterUnavailable):
            self._cluster.controller.node_failed.remote(node)

    def _call(self, method: str, *args: Any, bound: float | None = CALL_TIMEOUT, **kw: Any) -> Any:
        cluster = self._cluster
        ray = cluster._ray
        wait = cluster._failover_timeout
        deadline = None if bound is None else time.monotonic() + bound + wait
        if self._moved_from is not None:  # an earlier call lost its node: find the session
            self._node = cluster._locate(self.session_id, self._moved_from, wait)
            self._moved_from = None
        node = self._node
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.1)
            try:
                actor = cluster.node_actor(node)
            except NodeLost:  # nothing was sent: wait for the session to be elsewhere
                self._report(node)
                node = self._node = cluster._locate(self.session_id, node, wait)
                continue
            try:
                return cluster._get(actor.call.remote(self.session_id, method, args, kw), remaining)
            except SessionNotFound:
                # Never reached a backend there: safe to send where the session is now.
                cluster._controller_call("missing", self.session_id, node)
                node = self._node = cluster._locate(self.session_id, None, wait)
            except actor_lost(ray) as exc:
                self._drop(node)
                if method not in REPEATABLE:
                    self._moved_from = node
                    raise self._lost(method, node, exc) from exc
                node = self._node = cluster._locate(self.session_id, node, wait)
            if deadline is not None and time.monotonic() >= deadline:
                raise QueryTimeout(
                    f"session {self.session_id} did not answer {method} within {bound} s"
                )

    async def _acall(
        self, method: str, *args: Any, bound: float | None = CALL_TIMEOUT, **kw: Any
    ) -> Any:
        cluster = self._cluster
        ray = cluster._ray
        wait = cluster._failover_timeout
        deadline = None if bound is None else time.monotonic() + bound + wait
        if self._moved_from is not None:
            self._node = await cluster._alocate(self.session_id, self._moved_from, wait)
            self._moved_from = None
        node = self._node
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.1)
            try:
                actor = cluster.node_actor(node)
            except NodeLost:
                self._report(node)
                node = self._node = await cluster._alocate(self.session_id, node, wait)
                continue
            try:
                return await cluster._aget(
                    actor.call.remote(self.session_id, method, args, kw), remaining
                )
            except SessionNotFound:
                await cluster._acontroller_call("missing", self.session_id, node)
                node = self._node = await cluster._alocate(self.session_id, None, wait)
            except actor_lost(ray) as exc:
                self._drop(node)
                if method not in REPEATABLE:
                    self._moved_from = node
                    raise self._lost(method, node, exc) from exc
                node = self._node = await cluster._alocate(self.session_id, node, wait)
            if deadline is not None and time.monotonic() >= deadline:
                raise QueryTimeout(
                    f"session {self.session_id} did not answer {method} within {bound} s"
                )

    # --- the Session API ------------------------------------------------------------------

    def query(
        self, prompt: str, *, timeout: float | None = DEFAULT_QUERY_TIMEOUT, **params: Any
    ) -> list[Message]:
        """Run a query on the session's node; all its messages (see ``Session.query``).

        Raises:
            NodeLost: the node died during the query (it is not sent again).
            QueryInProgress, QueryTimeout, Interrupted, SessionError: as ``Session.query``.
        """
        bound = None if timeout is None else timeout + _GRACE
        return cast(
            list[Message], self._call("query", prompt, bound=bound, timeout=timeout, **params)
        )

    async def aquery(
        self, prompt: str, *, timeout: float | None = DEFAULT_QUERY_TIMEOUT, **params: Any
    ) -> list[Message]:
        """Async twin of :meth:`query`."""
        bound = None if timeout is None else timeout + _GRACE
        return cast(
            list[Message],
            await self._acall("query", prompt, bound=bound, timeout=timeout, **params),
        )

    def stream(
        self, prompt: str, *, timeout: float | None = DEFAULT_QUERY_TIMEOUT, **params: Any
    ) -> Iterator[Message]:
        """Yield a query's messages as they arrive (a Ray streaming generator).

        Leaving the loop early interrupts the query.

        Raises:
            NodeLost: the node died during the stream (the prompt is not sent again).
        """
        cluster = self._cluster
        ray = cluster._ray
        if self._moved_from is not None:
            self._node = cluster._locate(
                self.session_id, self._moved_from, cluster._failover_timeout
            )
            self._moved_from = None
        node = self._node
        actor = cluster.node_actor(node)
        refs = actor.stream.options(num_returns="streaming").remote(
            self.session_id, prompt, timeout, params
        )
        finished = False
        bound = None if timeout is None else timeout + _GRACE
        try:
            while True:
                try:
                    message = cluster._get(next(refs), bound)
                except (StopIteration, QueryComplete):
                    finished = True
                    return
                except actor_lost(ray) as exc:
                    finished = True
                    self._drop(node)
                    self._moved_from = node
                    raise self._lost("stream", node, exc) from exc
                yield message
                if message.type in _TERMINAL:
                    finished = True
        finally:
            if not finished:
                with contextlib.suppress(Exception):
                    self._call("interrupt")

    async def astream(
        self, prompt: str, *, timeout: float | None = DEFAULT_QUERY_TIMEOUT, **params: Any
    ) -> AsyncIterator[Message]:
        """Async twin of :meth:`stream` (an async iterator over the streaming generator)."""
        cluster = self._cluster
        ray = cluster._ray
        if self._moved_from is not None:
            self._node = await cluster._alocate(
                self.session_id, self._moved_from, cluster._failover_timeout
            )
            self._moved_from = None
        node = self._node
        actor = cluster.node_actor(node)
        refs = actor.stream.options(num_returns="streaming").remote(
            self.session_id, prompt, timeout, params
        )
        finished = False
        bound = None if timeout is None else timeout + _GRACE
        try:
            while True:
                try:
                    ref = await refs.__anext__()
                    message = await cluster._aget(ref, bound)
                except StopAsyncIteration:
                    finished = True
                    return
                except actor_lost(ray) as exc:
                    finished = True
                    self._drop(node)
                    self._moved_from = node
                    raise self._lost("stream", node, exc) from exc
                yield message
                if message.type in _TERMINAL:
                    finished = True
        finally:
            if not finished:
                with contextlib.suppress(Exception):
                    await self._acall("interrupt")

    def send_query(self, prompt: str, params: Mapping[str, Any] | None = None) -> Any:
        """Start a query; read its messages with :meth:`receive_message`."""
        return self._call("send_query", prompt, dict(params or {}))

    def receive_message(self, ref: Any, timeout: float | None = DEFAULT_QUERY_TIMEOUT) -> Message:
        """The next message of query ``ref`` (see ``Session.receive_message``)."""
        bound = None if timeout is None else timeout + _GRACE
        return cast(Message, self._call("receive_message", ref, timeout, bound=bound))

    def interrupt(self) -> None:
        """Interrupt the running query (``NoActiveQuery`` if none)."""
        self._call("interrupt")

    async def ainterrupt(self) -> None:
        """Async twin of :meth:`interrupt`."""
        await self._acall("interrupt")

    def abort(self) -> None:
        """Abort the running work."""
        self._call("abort")

    def health(self) -> str:
        """The session's state name, or ``"unknown"``."""
        try:
            return cast(str, self._call("health"))
        except (SessionNotFound, SessionError, QueryTimeout, ClusterUnavailable):
            return "unknown"

    async def ahealth(self) -> str:
        """Async twin of :meth:`health`."""
        try:
            return cast(str, await self._acall("health"))
        except (SessionNotFound, SessionError, QueryTimeout, ClusterUnavailable):
            return "unknown"

    def session_info(self) -> dict[str, Any]:
        """As ``Session.session_info``, plus ``node``: the node the session runs on."""
        return cast(dict[str, Any], self._call("session_info"))

    async def asession_info(self) -> dict[str, Any]:
        """Async twin of :meth:`session_info`."""
        return cast(dict[str, Any], await self._acall("session_info"))

    def set_model(self, model: str) -> str:
        """Switch model at runtime; returns the model now in use."""
        return cast(str, self._call("set_model", model))

    def set_permission_mode(self, mode: str) -> str:
        """Change the permission mode at runtime."""
        return cast(str, self._call("set_permission_mode", mode))

    def send_control(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """A control request (see ``Session.send_control``)."""
        return self._call("send_control", method, dict(params or {}))

    def stop(self) -> None:
        """Stop the session (its history stays in the store)."""
        self._cluster.stop_session(self.session_id)

    async def astop(self) -> None:
        """Async twin of :meth:`stop`."""
        await self._cluster._acontroller_call("stop_session", self.session_id, timeout=90.0)


class ClusterRun:
    """A durable graph run on the cluster; it follows its run to another node on failover."""

    __slots__ = ("_cluster", "_node", "run_id")

    def __init__(self, cluster: ClusterRuntime, run_id: str, node: str) -> None:
        self._cluster = cluster
        self.run_id = run_id
        self._node = node

    def __repr__(self) -> str:
        return f"<ClusterRun {self.run_id} on {self._node}>"

    @property
    def node(self) -> str:
        """The node this handle last found the run on."""
        return self._node

    def result(self, timeout: float | None = None) -> RunResult:
        """Wait for the run to end (across failovers); how it ended.

        Raises:
            TimeoutError: it did not end within ``timeout`` seconds.
        """
        cluster = self._cluster
        ray = cluster._ray
        deadline = None if timeout is None else time.monotonic() + timeout
        node: str | None = self._node
        avoid: str | None = None
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if deadline is not None and remaining is not None and remaining <= 0:
                raise TimeoutError(f"run {self.run_id} did not end within {timeout} s")
            if node is None or avoid is not None:
                located = cluster._controller_call(
                    "locate_run",
                    self.run_id,
                    avoid,
                    cluster._failover_timeout,
                    timeout=cluster._failover_timeout + _GRACE,
                )
                if located is None:
                    raise SessionNotFound(self.run_id)
                node = self._node = located
                avoid = None
            step = 1.0 if remaining is None else min(remaining, 1.0)
            try:
                result = cluster._get(
                    cluster.node_actor(node).run_result.remote(self.run_id, step), step + 30.0
                )
            except actor_lost(ray, NodeLost):
                cluster._actors.pop(node, None)
                avoid = node
                continue
            except RunNotFound:  # not (yet) there: ask where it is
                avoid = node
                continue
            if result is not None:
                cluster._controller_call("run_done", self.run_id)
                return cast(RunResult, result)
