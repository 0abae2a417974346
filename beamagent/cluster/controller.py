"""``ClusterController``: the Ray actor that owns placement and failover.

One per cluster: named, detached, ``max_restarts=-1``. Every session start
and every failover goes through it, so two drivers never race to restart the
same session. Its state lives in the shared store (routing entries), so a
restarted controller carries on where the last one stopped:

* ``cluster_session``: session id → node, backend, start options, route request;
* ``cluster_run``: run id → node, job, run options (durable graph runs);
* ``cluster_node``: node id → that node runtime's options (to redeploy it);
* ``cluster_node_health``: node health overrides; ``cluster_sticky``: sticky bindings.

A monitor thread watches the nodes: Ray's node table (``ray.nodes()``) and
each node runtime's incarnation. When a node dies, or its runtime is killed
or restarted (a new, empty incarnation), the sessions and runs that were on it
are placed again by policy on the surviving nodes and resumed from the store;
a node runtime killed for good on a live node is deployed again.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import attrs

from beamagent.cluster._ray import (
    RemoteFailure,
    actor_lost,
    dumps,
    loads,
    node_actor_name,
    require_ray,
    unwrap,
)
from beamagent.cluster.placement import (
    NodeView,
    Placement,
    failover_request,
    place,
)
from beamagent.errors import (
    BeamAgentError,
    ClusterUnavailable,
    InvalidOption,
    RunAlreadyExists,
    RunError,
    RunNotFound,
    SessionNotFound,
)
from beamagent.log import get_logger
from beamagent.routing.policies import Health, RouteRequest, RoutingState, parse_health
from beamagent.store import open_store

__all__ = ["MONITOR_INTERVAL", "ClusterController"]

log = get_logger(__name__)

MONITOR_INTERVAL = 0.25
"""Seconds between two looks at the nodes."""
PING_TIMEOUT = 5.0
START_TIMEOUT = 60.0
JOURNAL_SIZE = 1000

_SESSIONS = "cluster_session"
_RUNS = "cluster_run"
_NODES = "cluster_node"
_NODE_HEALTH = "cluster_node_health"
_STICKY = "cluster_sticky"
_BACKEND_HEALTH = "cluster_backend_health"


@attrs.define
class _Placed:
    """Where one session (or run) is, and what it takes to start it again."""

    node: str
    backend: str
    opts: str  # dumps() of the start options (run: of the job and run options)
    request: dict[str, Any] | None
    incarnation: str | None = None  # the node runtime's, once started there
    token: str | None = None  # the start that placed it (a retried start is recognised)

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> _Placed:
        return cls(**json.loads(text))


@attrs.define
class _Node:
    options: dict[str, Any]
    view: NodeView
    incarnation: str | None = None
    seen_at: float = 0.0


class ClusterController:
    """Placement state, the decision journal, node health, and failover (a Ray actor).

    Args:
        store: the shared store spec; the controller's state is kept there.
        default_node_options: options for node runtimes it deploys itself.
    """

    def __init__(self, store: str, default_node_options: Mapping[str, Any] | None = None) -> None:
        self._ray = require_ray()
        self._store_spec = store
        self._store = open_store(store)
        self._default_options = dict(default_node_options or {})
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._sessions: dict[str, _Placed] = {}
        self._runs: dict[str, _Placed] = {}
        self._nodes: dict[str, _Node] = {}
        self._health: dict[str, Health] = {}
        self._backend_health: dict[str, Health] = {}
        self._state = RoutingState()
        self._journal: deque[dict[str, Any]] = deque(maxlen=JOURNAL_SIZE)
        self._failing_over: set[str] = set()
        self._looking = threading.Lock()
        self._stopped = threading.Event()
        self._load()
        self._monitor = threading.Thread(
            target=self._watch, name="beamagent-cluster-monitor", daemon=True
        )
        self._monitor.start()
        log.info("controller_started", sessions=len(self._sessions), runs=len(self._runs))

    # --- durable state -----------------------------------------------------------------

    def _load(self) -> None:
        store = self._store
        for sid, text in store.routing_entries(_SESSIONS).items():
            self._sessions[sid] = _Placed.from_json(text)
        for run_id, text in store.routing_entries(_RUNS).items():
            self._runs[run_id] = _Placed.from_json(text)
        for node, text in store.routing_entries(_NODES).items():
            self._nodes[node] = _Node(loads(text), NodeView(node, ()))
        for node, status in store.routing_entries(_NODE_HEALTH).items():
            self._health[node] = Health(status)
        for backend, status in store.routing_entries(_BACKEND_HEALTH).items():
            self._backend_health[backend] = Health(status)
        for key, pair in store.routing_entries(_STICKY).items():
            self._state = self._state.bind(key, pair)

    def _save(self, kind: str, key: str, value: str | None) -> None:
        self._store.save_routing_entry(kind, key, value)

    def _save_sticky(self, before: RoutingState) -> None:
        after = self._state.affinity
        for key, pair in after.items():
            if before.affinity.get(key) != pair:
                self._save(_STICKY, key, pair)

    # --- nodes -------------------------------------------------------------------------

    def register_node(self, node: str, options: Mapping[str, Any]) -> None:
        """A node runtime was deployed on ``node`` with ``options``.

        A node already known keeps the options it was first deployed with (its
        runtime kept them too): they are what a redeploy uses.
        """
        with self._lock:
            if node not in self._nodes:
                self._nodes[node] = _Node(dict(options), NodeView(node, ()))
                self._save(_NODES, node, dumps(dict(options)))
        self._refresh({node})

    def forget_node(self, node: str) -> None:
        """Stop watching ``node`` (its runtime was shut down on purpose)."""
        with self._lock:
            self._nodes.pop(node, None)
            self._save(_NODES, node, None)

    def nodes(self) -> list[dict[str, Any]]:
        """Every node runtime: id, alive, load, backends, health, incarnation."""
        with self._lock:
            placed: dict[str, int] = {}
            for record in self._sessions.values():
                placed[record.node] = placed.get(record.node, 0) + 1
            return [
                {
                    "node": node,
                    "alive": entry.view.alive,
                    "load": entry.view.load,
                    "sessions": placed.get(node, 0),
                    "runs": sum(1 for r in self._runs.values() if r.node == node),
                    "backends": [b.name for b in entry.view.backends],
                    "backend_health": {k: v.value for k, v in entry.view.backend_health.items()},
                    "health": self._health.get(node, Health.HEALTHY).value,
                    "incarnation": entry.incarnation,
                }
                for node, entry in self._nodes.items()
            ]

    def set_node_health(self, node: str, status: str | None) -> None:
        """Override a node's health (``down``/``unhealthy``: it gets nothing new)."""
        self._set_override(self._health, _NODE_HEALTH, node, status)

    def node_health(self) -> dict[str, str]:
        """The node health overrides."""
        with self._lock:
            return {k: v.value for k, v in self._health.items()}

    def set_backend_health(self, backend: str, status: str | None) -> None:
        """Override a backend's health on every node (``down``: never placed)."""
        self._set_override(self._backend_health, _BACKEND_HEALTH, backend, status)

    def _set_override(
        self, overrides: dict[str, Health], kind: str, key: str, status: str | None
    ) -> None:
        """Set (or, for ``None``, remove) one health override, saved in the store."""
        try:
            health = None if status is None else parse_health(status)
        except BeamAgentError as exc:
            raise RemoteFailure.of(exc) from None
        with self._lock:
            if health is None:
                overrides.pop(key, None)
            else:
                overrides[key] = health
            self._save(kind, key, None if health is None else health.value)

    def backend_health(self) -> dict[str, str]:
        """The cluster-wide backend health overrides."""
        with self._lock:
            return {k: v.value for k, v in self._backend_health.items()}

    def clear_routing(self) -> None:
        """Forget sticky bindings and round-robin cursors (health overrides stay)."""
        with self._lock:
            for key in self._state.affinity:
                self._save(_STICKY, key, None)
            self._state = self._state.cleared()

    def _actor(self, node: str) -> Any:
        return self._ray.get_actor(node_actor_name(node))

    def _refresh(self, only: set[str] | None = None) -> None:
        """Ask the node runtimes how they are; fail over what a lost one held."""
        ray = self._ray
        alive_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        with self._lock:
            nodes = [n for n in self._nodes if only is None or n in only]
        pending: dict[str, Any] = {}
        gone: set[str] = set()
        for node in nodes:
            if node not in alive_nodes:
                gone.add(node)
                continue
            try:
                pending[node] = self._actor(node).info.remote()
            except ValueError:
                gone.add(node)  # no actor by that name: killed for good
        replies: dict[str, dict[str, Any]] = {}
        if pending:
            refs = list(pending.values())
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=PING_TIMEOUT)
            ready_set = set(ready)
            for node, ref in pending.items():
                if ref not in ready_set:
                    continue  # slow, not dead: leave it be
                try:
                    replies[node] = ray.get(ref)
                except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnschedulableError):
                    gone.add(node)
                except ray.exceptions.RayError:
                    continue  # unavailable for now (restarting): look again later
        redeploy: list[str] = []
        with self._lock:
            now = time.monotonic()
            for node in gone:
                entry = self._nodes.get(node)
                if entry is None:
                    continue
                entry.view = attrs.evolve(entry.view, alive=False)
                entry.incarnation = None
                if node in alive_nodes:
                    redeploy.append(node)
            for node, info in replies.items():
                entry = self._nodes.get(node)
                if entry is None:
                    continue
                if entry.incarnation not in (None, info["incarnation"]):
                    log.warning("node_runtime_restarted", node_id=node)
                entry.incarnation = info["incarnation"]
                entry.seen_at = now
                entry.view = NodeView(
                    node,
                    tuple(info["backends"]),
                    load=int(info["load"]),
                    alive=True,
                    backend_health=info["backend_health"],
                )
            lost_sessions = [
                sid
                for sid, record in self._sessions.items()
                if record.incarnation is not None
                and sid not in self._failing_over
                and self._lost(record)
            ]
            lost_runs = [
                run_id
                for run_id, record in self._runs.items()
                if record.incarnation is not None
                and run_id not in self._failing_over
                and self._lost(record)
            ]
            self._failing_over.update(lost_sessions)
            self._failing_over.update(lost_runs)
        for node in redeploy:
            self._redeploy(node)
        if lost_sessions or lost_runs:
            self._fail_over(lost_sessions, lost_runs)

    def _lost(self, record: _Placed) -> bool:
        entry = self._nodes.get(record.node)
        if entry is None:
            return True
        if not entry.view.alive:
            return True
        return entry.incarnation is not None and entry.incarnation != record.incarnation

    def _redeploy(self, node: str) -> None:
        from beamagent.cluster.deploy import start_node_runtime

        with self._lock:
            entry = self._nodes.get(node)
            options = None if entry is None else entry.options
        if options is None:
            return
        try:
            start_node_runtime(node, self._store_spec, options)
        except Exception as exc:  # the node may be going away: the next look tells
            log.warning("node_redeploy_failed", node_id=node, error=repr(exc))
        else:
            log.info("node_redeployed", node_id=node)

    def _reconcile(self) -> None:
        """After a restart: settle what the last controller left half-done.

        A session it was starting or moving (no incarnation recorded) is adopted
        if its node has it, else resumed by the next failover.
        """
        ray = self._ray
        with self._lock:
            unsettled = [(sid, r) for sid, r in self._sessions.items() if r.incarnation is None]
        for sid, record in unsettled:
            entry = self._nodes.get(record.node)
            incarnation = None if entry is None else entry.incarnation
            has = False
            if incarnation is not None:
                try:
                    has = bool(
                        ray.get(
                            self._actor(record.node).has_session.remote(sid), timeout=PING_TIMEOUT
                        )
                    )
                except (ray.exceptions.RayError, ValueError):
                    has = False
            with self._lock:
                if self._sessions.get(sid) is record:
                    record.incarnation = incarnation if has else "lost"
                    self._save(_SESSIONS, sid, record.to_json())
                    self._changed.notify_all()
        with self._lock:
            for record in self._runs.values():
                if record.incarnation is None:
                    record.incarnation = "lost"  # resume_run refuses a run that is live there

    def _watch(self) -> None:
        try:
            self._refresh()
            self._reconcile()
        except Exception as exc:
            log.error("cluster_reconcile_failed", error=repr(exc))
        while not self._stopped.wait(MONITOR_INTERVAL):
            try:
                self._refresh()
            except Exception as exc:  # never let the monitor die
                log.error("cluster_monitor_failed", error=repr(exc))

    def node_failed(self, node: str) -> None:
        """A caller saw ``node``'s runtime fail: look at it now."""
        self._look_at(node)

    def _look_at(self, node: str) -> None:
        """Refresh ``node`` now; callers arriving meanwhile share that look.

        After a node loss every handle on it asks at once: one look serves them all.
        """
        if self._looking.acquire(blocking=False):
            try:
                self._refresh({node})
            finally:
                self._looking.release()
        else:
            with self._looking:  # wait for the look in progress, and take its outcome
                pass

    # --- placement ----------------------------------------------------------------------

    def _views(self) -> list[NodeView]:
        placed: dict[str, int] = {}
        for record in self._sessions.values():
            placed[record.node] = placed.get(record.node, 0) + 1
        return [
            attrs.evolve(entry.view, load=placed.get(node, 0))
            for node, entry in self._nodes.items()
            if entry.incarnation is not None
        ]

    def _place(
        self,
        request: RouteRequest,
        session_id: str | None,
        *,
        exclude: frozenset[str] = frozenset(),
    ) -> Placement:
        views = [v for v in self._views() if v.node not in exclude]
        before = self._state
        try:
            placement, self._state = place(
                request, self._state, views, self._health, backend_health=self._backend_health
            )
        except BeamAgentError as exc:
            entry = {
                "at": time.time(),
                "ok": False,
                "policy": request.policy.value,
                "error": type(exc).__name__,
                "message": str(exc),
            }
            if session_id is not None:
                entry["session_id"] = session_id
            self._journal.append(entry)
            raise
        self._save_sticky(before)
        entry = {"at": time.time(), "ok": True, **placement.to_dict()}
        if session_id is not None:
            entry["session_id"] = session_id
        self._journal.append(entry)
        return placement

    def select(self, request: Mapping[str, Any] | None) -> dict[str, Any]:
        """A placement decision, journaled, without starting anything."""
        try:
            with self._lock:
                return self._place(RouteRequest.from_value(request), None).to_dict()
        except BeamAgentError as exc:
            raise RemoteFailure.of(exc) from None

    def decisions(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The placement journal, newest first."""
        with self._lock:
            entries = list(self._journal)
        entries.reverse()
        return entries if limit is None else entries[:limit]

    # --- sessions -----------------------------------------------------------------------

    def start_session(
        self,
        backend: str | None,
        opts: dict[str, Any],
        routing: dict[str, Any] | None,
        token: str,
    ) -> dict[str, Any]:
        """Place a session by policy and start it on its node; its ``session_info``."""
        try:
            return self._start_session(backend, opts, routing, token)
        except BeamAgentError as exc:
            raise RemoteFailure.of(exc) from None

    def _start_session(
        self,
        backend: str | None,
        opts: dict[str, Any],
        routing: dict[str, Any] | None,
        token: str,
    ) -> dict[str, Any]:
        ray = self._ray
        session_id = str(opts["session_id"])
        request = dict(routing or {})
        if backend is not None and str(backend).strip().lower() != "auto":
            request["backend"] = backend
        if request.get("policy") == "sticky":
            request.setdefault("affinity_key", session_id)
        route = RouteRequest.from_value(request)
        exclude: frozenset[str] = frozenset()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with self._lock:
                existing = self._sessions.get(session_id)
                if existing is not None:
                    if existing.token != token:
                        raise InvalidOption(f"session {session_id!r} is already running")
                    while existing.incarnation is None and time.monotonic() < deadline:
                        self._changed.wait(0.5)
                    return {"node": existing.node, "backend": existing.backend}
                placement = self._place(route, session_id, exclude=exclude)
                record = _Placed(
                    placement.node,
                    placement.backend,
                    dumps(opts),
                    request or None,
                    None,
                    token,
                )
                self._sessions[session_id] = record
                self._save(_SESSIONS, session_id, record.to_json())
                incarnation = self._nodes[placement.node].incarnation
            try:
                actor = self._actor(placement.node)
                info: dict[str, Any] = ray.get(
                    actor.start_session.remote(placement.backend, opts),
                    timeout=max(deadline - time.monotonic(), 1.0),
                )
            except actor_lost(ray, ValueError):
                # Never started there (or its node went down with it): another node.
                self._drop(session_id, record)
                exclude = exclude | {placement.node}
                self._refresh({placement.node})
                if time.monotonic() >= deadline:
                    raise ClusterUnavailable(
                        f"no node could start session {session_id} within {START_TIMEOUT} s"
                    ) from None
                continue
            except ray.exceptions.RayTaskError as exc:
                self._drop(session_id, record)
                error = unwrap(exc)
                if error is not None:
                    raise error from None
                raise
            except BaseException:
                self._drop(session_id, record)
                raise
            with self._lock:
                record.incarnation = info.pop("node_incarnation", None) or incarnation
                self._save(_SESSIONS, session_id, record.to_json())
                self._changed.notify_all()
            log.info(
                "session_started",
                session_id=session_id,
                node_id=placement.node,
                backend=placement.backend,
            )
            info["decision"] = placement.to_dict()
            return info

    def _drop(self, session_id: str, record: _Placed) -> None:
        with self._lock:
            if self._sessions.get(session_id) is record:
                del self._sessions[session_id]
                self._save(_SESSIONS, session_id, None)
            self._changed.notify_all()

    def locate(self, session_id: str, avoid: str | None = None, timeout: float = 30.0) -> str:
        """The node ``session_id`` runs on, waiting (bounded) while it moves off ``avoid``.

        Raises (boxed): SessionNotFound (not placed), ClusterUnavailable (still moving).
        """
        try:
            return self._locate(session_id, avoid, timeout)
        except BeamAgentError as exc:
            raise RemoteFailure.of(exc) from None

    def _locate(self, session_id: str, avoid: str | None, timeout: float) -> str:
        if avoid is not None:
            self._look_at(avoid)
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                record = self._sessions.get(session_id)
                if record is None:
                    raise SessionNotFound(session_id)
                settled = record.incarnation is not None and session_id not in self._failing_over
                if settled and record.node != avoid:
                    return record.node
                if settled and record.node == avoid and not self._lost(record):
                    # The caller saw it fail, Ray has not said it is dead: it answers (the
                    # caller was unlucky) or it is dying (Ray will say so). Ask it.
                    self._lock.release()
                    try:
                        answers = self._answers(avoid, record.incarnation)
                    finally:
                        self._lock.acquire()
                    if answers:
                        return avoid
                    self._lock.release()
                    try:
                        self._look_at(avoid)
                    finally:
                        self._lock.acquire()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ClusterUnavailable(
                        f"session {session_id} was not back on a node within {timeout} s"
                    )
                self._changed.wait(min(remaining, 0.5))

    def _answers(self, node: str, incarnation: str | None) -> bool:
        """Whether ``node``'s runtime answers now, as the incarnation ``incarnation``."""
        ray = self._ray
        try:
            current = ray.get(self._actor(node).ping.remote(), timeout=PING_TIMEOUT)
        except (ray.exceptions.RayError, ValueError):
            return False
        return bool(current == incarnation)

    def missing(self, session_id: str, node: str) -> None:
        """``node`` says it does not have ``session_id``: find out why, and act.

        The node runtime is asked for its incarnation now (the monitor's view may
        be a moment old): a new incarnation lost its sessions, which fail over; the
        incarnation that started the session saying it is gone means it was stopped
        or given up there, so it is forgotten.
        """
        ray = self._ray
        try:
            current = ray.get(self._actor(node).ping.remote(), timeout=PING_TIMEOUT)
        except (ray.exceptions.RayError, ValueError):
            self._look_at(node)
            return
        with self._lock:
            record = self._sessions.get(session_id)
            if record is None or record.node != node or session_id in self._failing_over:
                return
            if record.incarnation is None:
                return  # being started or moved: not for us to judge
            if record.incarnation == current:
                del self._sessions[session_id]
                self._save(_SESSIONS, session_id, None)
                self._changed.notify_all()
                return
            entry = self._nodes.get(node)
            if entry is not None:
                entry.incarnation = current
        self._refresh({node})  # its sessions of the old incarnation fail over now

    def stop_session(self, session_id: str) -> None:
        """Stop a session wherever it runs and forget its placement."""
        ray = self._ray
        with self._lock:
            record = self._sessions.get(session_id)
        if record is None:
            raise RemoteFailure.of(SessionNotFound(session_id))
        try:
            ray.get(self._actor(record.node).stop_session.remote(session_id), timeout=60)
        except ray.exceptions.RayTaskError as exc:
            if not isinstance(unwrap(exc), SessionNotFound):
                raise
        except actor_lost(ray, ValueError):
            pass  # its node is gone: nothing runs it any more
        with self._lock:
            if self._sessions.get(session_id) is record:
                del self._sessions[session_id]
                self._save(_SESSIONS, session_id, None)
            self._changed.notify_all()

    def sessions(self) -> dict[str, str]:
        """Placed sessions: id → node."""
        with self._lock:
            return {sid: r.node for sid, r in self._sessions.items()}

    def placement(self, session_id: str) -> dict[str, Any] | None:
        """A session's node and backend, or None."""
        with self._lock:
            record = self._sessions.get(session_id)
            if record is None:
                return None
            return {
                "node": record.node,
                "backend": record.backend,
                "settled": record.incarnation is not None,
            }

    # --- failover -----------------------------------------------------------------------

    def _fail_over(self, session_ids: list[str], run_ids: list[str]) -> None:
        ray = self._ray
        started = time.monotonic()
        pending: dict[Any, tuple[str, str, _Placed]] = {}
        with self._lock:
            for sid in session_ids:
                record = self._sessions.get(sid)
                if record is None:
                    self._failing_over.discard(sid)
                    continue
                old = record.node
                try:
                    route = failover_request(record.request, record.backend)
                    placement = self._place(route, sid)
                except BeamAgentError as exc:
                    log.error("failover_unplaced", session_id=sid, error=str(exc))
                    self._failing_over.discard(sid)  # the next look tries again
                    continue
                opts = {**loads(record.opts), "resume": sid, "session_id": sid}
                moved = _Placed(
                    placement.node, record.backend, record.opts, record.request, None, record.token
                )
                self._sessions[sid] = moved
                self._save(_SESSIONS, sid, moved.to_json())
                incarnation = self._nodes[placement.node].incarnation or ""
                ref = self._actor(placement.node).start_session.remote(record.backend, opts)
                pending[ref] = ("session", sid, attrs.evolve(moved, incarnation=incarnation))
                log.info("session_failing_over", session_id=sid, node_id=placement.node, lost=old)
            for run_id in run_ids:
                record = self._runs.get(run_id)
                if record is None:
                    self._failing_over.discard(run_id)
                    continue
                try:
                    target = self._place_run()
                except BeamAgentError as exc:
                    log.error("failover_unplaced", run_id=run_id, error=str(exc))
                    self._failing_over.discard(run_id)
                    continue
                job, options = loads(record.opts)
                options = {k: v for k, v in options.items() if k != "durable"}
                moved = _Placed(target, "", record.opts, None, None, record.token)
                self._runs[run_id] = moved
                self._save(_RUNS, run_id, moved.to_json())
                incarnation = self._nodes[target].incarnation or ""
                log.info("run_failing_over", run_id=run_id, node_id=target, lost=record.node)
                ref = self._actor(target).resume_run.remote(run_id, job, options)
                pending[ref] = ("run", run_id, attrs.evolve(moved, incarnation=incarnation))
        for ref, (kind, key, settled) in pending.items():
            table = self._sessions if kind == "session" else self._runs
            kind_key = _SESSIONS if kind == "session" else _RUNS
            try:
                reply = ray.get(ref, timeout=START_TIMEOUT)
                if isinstance(reply, dict) and reply.get("node_incarnation"):
                    settled.incarnation = reply["node_incarnation"]
            except ray.exceptions.RayTaskError as exc:
                error = unwrap(exc)
                running = isinstance(error, RunAlreadyExists) or (
                    isinstance(error, InvalidOption) and "already running" in str(error)
                )
                if running:  # it was live there all along: adopt it
                    with self._lock:
                        table[key] = settled
                        self._save(kind_key, key, settled.to_json())
                        self._failing_over.discard(key)
                        self._changed.notify_all()
                    continue
                gone = isinstance(error, RunError | RunNotFound) or (
                    kind == "session" and isinstance(error, SessionNotFound)
                )
                if gone:
                    with self._lock:  # it had ended, or was never checkpointed: nothing to run
                        table.pop(key, None)
                        self._save(kind_key, key, None)
                        self._failing_over.discard(key)
                        self._changed.notify_all()
                    continue
                log.error("failover_failed", key=key, error=repr(error or exc))
                with self._lock:  # try again at the next look
                    self._failing_over.discard(key)
                    current = table.get(key)
                    if current is not None:
                        current.incarnation = "lost"
                continue
            except ray.exceptions.RayError as exc:
                log.warning("failover_target_lost", key=key, error=repr(exc))
                with self._lock:
                    self._failing_over.discard(key)
                    current = table.get(key)
                    if current is not None:
                        current.incarnation = "lost"  # its target died too: again next look
                continue
            with self._lock:
                self._failing_over.discard(key)
                stopped = key not in table  # stopped by a user while it was moving
                if not stopped:
                    table[key] = settled
                    self._save(kind_key, key, settled.to_json())
                self._changed.notify_all()
            if stopped and kind == "session":
                with contextlib.suppress(ray.exceptions.RayError, ValueError):
                    self._actor(settled.node).stop_session.remote(key)
        log.info(
            "failover_done",
            sessions=len(session_ids),
            runs=len(run_ids),
            seconds=round(time.monotonic() - started, 3),
        )

    # --- graph runs ---------------------------------------------------------------------

    def run_job(
        self,
        job: Any,
        input: Any,
        run_id: str,
        options: dict[str, Any],
        node: str | None = None,
        resume: bool = False,
        token: str | None = None,
    ) -> str:
        """Place a durable run on a node (``node`` if it can) and start it; its node.

        With ``resume``, the run continues from its checkpoint (``resume_run``).
        A call repeated with the same ``token`` (its caller saw the controller
        die) gets the run it placed.
        """
        ray = self._ray
        with self._lock:
            existing = self._runs.get(run_id)
            if existing is not None:
                if token is not None and existing.token == token:
                    return existing.node
                raise RemoteFailure.of(InvalidOption(f"run {run_id!r} is already placed"))
            views = {v.node: v for v in self._views()}
            usable = node in views and self._health.get(node or "") not in (
                Health.DOWN,
                Health.UNHEALTHY,
            )
            try:
                chosen = node if usable and node is not None else self._place_run()
            except BeamAgentError as exc:
                raise RemoteFailure.of(exc) from None
            record = _Placed(chosen, "", dumps((job, options)), None, None, token)
            self._runs[run_id] = record
            self._save(_RUNS, run_id, record.to_json())
            incarnation = self._nodes[chosen].incarnation
        actor = self._actor(chosen)
        try:
            if resume:
                ref = actor.resume_run.remote(run_id, job, options)
            else:
                ref = actor.run_job.remote(job, input, run_id, {**options, "durable": True})
            ray.get(ref, timeout=START_TIMEOUT)
        except BaseException as exc:
            with self._lock:
                self._runs.pop(run_id, None)
                self._save(_RUNS, run_id, None)
            if isinstance(exc, ray.exceptions.RayTaskError):
                error = unwrap(exc)
                if error is not None:
                    raise RemoteFailure.of(error) from None
            raise
        with self._lock:
            record.incarnation = incarnation
            self._save(_RUNS, run_id, record.to_json())
            self._changed.notify_all()
        log.info("run_placed", run_id=run_id, node_id=chosen, resumed=resume)
        return chosen

    def _place_run(self) -> str:
        """The node for a run: the one with the fewest runs, then sessions (not down)."""
        runs: dict[str, int] = {}
        for record in self._runs.values():
            runs[record.node] = runs.get(record.node, 0) + 1
        views = [
            v
            for v in self._views()
            if v.alive and self._health.get(v.node) not in (Health.DOWN, Health.UNHEALTHY)
        ]
        if not views:
            raise ClusterUnavailable("no live node runtime can take a graph run")
        return min(views, key=lambda v: (runs.get(v.node, 0), v.load)).node

    def locate_run(
        self, run_id: str, avoid: str | None = None, timeout: float = 30.0
    ) -> str | None:
        """The node a run is on, waiting while it moves off ``avoid``; None once forgotten."""
        if avoid is not None:
            self._look_at(avoid)
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                record = self._runs.get(run_id)
                if record is None:
                    return None
                settled = record.incarnation is not None and run_id not in self._failing_over
                if settled and record.node != avoid:
                    return record.node
                if settled and not self._lost(record):
                    self._lock.release()
                    try:  # as for sessions: ask the node the caller saw fail
                        answers = self._answers(record.node, record.incarnation)
                        if not answers:
                            self._look_at(record.node)
                    finally:
                        self._lock.acquire()
                    if answers:
                        return record.node
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RemoteFailure.of(
                        ClusterUnavailable(
                            f"run {run_id} was not back on a node within {timeout} s"
                        )
                    )
                self._changed.wait(min(remaining, 0.5))

    def run_done(self, run_id: str) -> None:
        """The run ended: stop watching it."""
        with self._lock:
            if self._runs.pop(run_id, None) is not None:
                self._save(_RUNS, run_id, None)

    def runs(self) -> dict[str, str]:
        """Placed runs: id → node."""
        with self._lock:
            return {run_id: r.node for run_id, r in self._runs.items()}

    # --- lifecycle ----------------------------------------------------------------------

    def ping(self) -> bool:
        """True (the controller answers)."""
        return True

    def shutdown(self, forget: bool = True) -> None:
        """Stop the monitor and close the store (before the actor is killed).

        With ``forget``, the placement state is removed from the store too (the
        cluster is being taken down on purpose, its node runtimes with it).
        """
        self._stopped.set()
        self._monitor.join(timeout=5)
        if forget:
            with self._lock:
                for kind, table in ((_SESSIONS, self._sessions), (_RUNS, self._runs)):
                    for key in list(table):
                        self._save(kind, key, None)
                    table.clear()
                for node in list(self._nodes):
                    self._save(_NODES, node, None)
                self._nodes.clear()
        with contextlib.suppress(BeamAgentError):
            self._store.close()
