"""Placement: a route decision that picks a node as well as a backend, purely.

The candidates of a cluster route are ``(node, backend)`` pairs, named
``"<backend>@<node>"`` so that the unchanged policies of
:func:`beamagent.routing.policies.select` rank them: round robin turns over
pairs, a sticky binding keeps an affinity key on one pair (so on one node),
failover skips the last pair. :func:`place` translates a backend-level
:class:`~beamagent.routing.policies.RouteRequest` into a pair-level one:

* a pair exists only where the node has the backend available (its node
  runtime reports it: CLI installed, not marked unhealthy there);
* a node marked ``down`` or ``unhealthy`` (``set_node_health``), or not alive,
  gives no pair; a ``degraded`` node's pairs rank after the healthy ones;
* within one backend, pairs go least-loaded node first (live sessions), except
  under round robin and sticky, whose cursor needs a stable order;
* backend lists (preferred, fallback, excluded), the request's ``health`` and
  ``last_backend`` are expanded to the pairs of those backends.

>>> nodes = [NodeView("n1", (BackendInfo("local"),), load=3),
...          NodeView("n2", (BackendInfo("local"),), load=1)]
>>> placement, _ = place({"backend": "local"}, RoutingState(), nodes)
>>> placement.node, placement.backend
('n2', 'local')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from beamagent.errors import BackendNotEligible, InvalidRouteRequest, NoBackendAvailable
from beamagent.routing.policies import (
    BackendInfo,
    Health,
    Policy,
    RouteDecision,
    RouteRequest,
    RoutingState,
    parse_health,
    select,
)

__all__ = [
    "NodeView",
    "Placement",
    "failover_request",
    "pair_name",
    "place",
    "split_pair",
]

SEPARATOR = "@"


def pair_name(node: str, backend: str) -> str:
    """The candidate name of ``backend`` on ``node``: ``"<backend>@<node>"``."""
    return f"{backend}{SEPARATOR}{node}"


def split_pair(name: str) -> tuple[str, str]:
    """``(node, backend)`` of a candidate name made by :func:`pair_name`."""
    backend, _, node = name.rpartition(SEPARATOR)
    return node, backend


def _health_map(value: Mapping[str, Health | str]) -> Mapping[str, Health]:
    return {k: parse_health(v) for k, v in value.items()}


@attrs.frozen
class NodeView:
    """What placement knows of one node runtime.

    Attributes:
        node: the node's id (its Ray node id).
        backends: the backends available on it, in its preference order.
        load: its live sessions.
        alive: False once Ray reports the node (or its runtime) dead.
        backend_health: per-backend health as the node's own registry sees it.
    """

    node: str
    backends: tuple[BackendInfo, ...] = attrs.field(converter=tuple)
    load: int = 0
    alive: bool = True
    backend_health: Mapping[str, Health] = attrs.field(factory=dict, converter=_health_map)


@attrs.frozen
class Placement:
    """Where a session goes: a node, a backend, and the pair-level decision behind them."""

    node: str
    backend: str
    decision: RouteDecision

    def to_dict(self) -> dict[str, Any]:
        """The decision as the journal shows it: ``node`` and ``backend`` split out."""
        data = self.decision.to_dict()
        data["backend"] = self.backend
        data["node"] = self.node
        return data


def _pairs(
    nodes: Sequence[NodeView], node_health: Mapping[str, Health], *, by_load: bool
) -> tuple[list[BackendInfo], dict[str, Health]]:
    """Every available pair in rank order, and the degraded ones' health."""
    order: dict[str, None] = {}
    per_backend: dict[str, list[tuple[NodeView, BackendInfo]]] = {}
    degraded: dict[str, Health] = {}
    for view in nodes:
        status = node_health.get(view.node, Health.HEALTHY)
        if not view.alive or status in (Health.DOWN, Health.UNHEALTHY):
            continue
        for info in view.backends:
            backend_status = view.backend_health.get(info.name, Health.HEALTHY)
            if backend_status in (Health.DOWN, Health.UNHEALTHY):
                continue
            order.setdefault(info.name, None)
            per_backend.setdefault(info.name, []).append((view, info))
            if Health.DEGRADED in (status, backend_status):
                degraded[pair_name(view.node, info.name)] = Health.DEGRADED
    pairs: list[BackendInfo] = []
    for backend in order:
        entries = per_backend[backend]
        if by_load:
            entries = sorted(entries, key=lambda e: e[0].load)  # stable: node order breaks ties
        pairs.extend(
            BackendInfo(pair_name(view.node, backend), info.capabilities) for view, info in entries
        )
    return pairs, degraded


def _expand(backends: Sequence[str], pairs: Sequence[BackendInfo]) -> tuple[str, ...]:
    """The pairs of ``backends``, in the order of ``backends``, then of the pairs."""
    by_backend: dict[str, list[str]] = {}
    for info in pairs:
        by_backend.setdefault(split_pair(info.name)[1], []).append(info.name)
    return tuple(name for backend in backends for name in by_backend.get(backend, ()))


def place(
    request: RouteRequest | Mapping[str, Any] | None,
    state: RoutingState,
    nodes: Sequence[NodeView],
    node_health: Mapping[str, Health | str] | None = None,
    *,
    last_node: str | None = None,
    backend_health: Mapping[str, Health | str] | None = None,
) -> tuple[Placement, RoutingState]:
    """Choose a node and a backend for ``request``; return the placement and the next state.

    ``state`` is a :class:`RoutingState` over pair names (sticky bindings and
    cursors of pairs). ``node_health`` overrides nodes' health (``down`` and
    ``unhealthy`` nodes get nothing). ``backend_health`` overrides a backend's
    health on every node (the request's ``health`` wins). ``last_node`` (with
    the request's ``last_backend``) is the pair ``failover`` moves away from.

    Raises:
        BackendNotEligible: the named backend is available on no live node.
        NoBackendAvailable: no pair satisfies the request.
        InvalidRouteRequest: a malformed request.
    """
    request = RouteRequest.from_value(request)
    health = _health_map(node_health or {})
    stable = request.policy in (Policy.ROUND_ROBIN, Policy.STICKY)
    pairs, degraded = _pairs(nodes, health, by_load=not stable)
    names = [p.name for p in pairs]
    changes: dict[str, Any] = {
        "backend": None,
        # A list none of whose backends is on a live node stays non-empty (its names match
        # no pair), so that fallback_policy "none" still means "nothing else".
        "preferred_backends": _expand(request.preferred_backends, pairs)
        or request.preferred_backends,
        "fallback_backends": _expand(request.fallback_backends, pairs) or request.fallback_backends,
        "excluded_backends": _expand(request.excluded_backends, pairs),
        "health": {
            **degraded,
            **{
                n: status
                for backend, status in _health_map(backend_health or {}).items()
                for n in _expand((backend,), pairs)
            },
            **{
                n: status
                for backend, status in request.health.items()
                for n in _expand((backend,), pairs)
            },
        },
        "last_backend": None,
    }
    if request.last_backend is not None:
        if last_node is not None and pair_name(last_node, request.last_backend) in names:
            changes["last_backend"] = pair_name(last_node, request.last_backend)
        else:
            last = _expand((request.last_backend,), pairs)
            changes["last_backend"] = last[0] if last else None
    if request.backend is not None:
        named = _expand((request.backend,), pairs)
        if not named:
            raise BackendNotEligible(request.backend, ["not available on any live node"])
        # The named backend on its least-loaded node: explicit among its pairs.
        changes["preferred_backends"] = named
        changes["fallback_policy"] = "none"
    pair_request = attrs.evolve(request, **_converted(changes))
    try:
        decision, new_state = select(pair_request, state, pairs)
    except NoBackendAvailable as exc:
        if request.backend is not None:
            status = request.health.get(request.backend) or _health_map(backend_health or {}).get(
                request.backend
            )
            reason = status.value if status is not None else "not eligible on any live node"
            raise BackendNotEligible(request.backend, [reason]) from exc
        raise NoBackendAvailable(
            request.policy.value,
            sorted(c.value for c in request.capabilities),
            request.preferred_backends,
            request.excluded_backends,
            tuple(dict.fromkeys(split_pair(n)[1] for n in names)),
        ) from exc
    node, backend = split_pair(decision.backend)
    if request.backend is not None:
        decision = attrs.evolve(decision, policy=Policy.EXPLICIT)
    return Placement(node, backend, decision), new_state


def _converted(changes: dict[str, Any]) -> dict[str, Any]:
    """``attrs.evolve`` runs converters: give it values they accept."""
    if changes.get("fallback_policy") is None:
        changes.pop("fallback_policy", None)
    return changes


def failover_request(
    original: RouteRequest | Mapping[str, Any] | None, backend: str
) -> RouteRequest:
    """The request that re-places a session of ``backend`` whose node was lost.

    The session must resume on the backend it ran on, so the original policy
    ranks only that backend's pairs (an ``explicit`` request becomes
    ``explicit`` among them: the least-loaded node).

    Raises:
        InvalidRouteRequest: ``original`` is malformed.
    """
    request = RouteRequest.from_value(original)
    if not backend:
        raise InvalidRouteRequest("backend", "a failover needs the session's backend")
    return attrs.evolve(
        request,
        backend=None,
        preferred_backends=(backend,),
        fallback_backends=(),
        fallback_policy="none",
        last_backend=None,
    )
