"""Deploying beamagent on a Ray cluster: the controller and one node runtime per node."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from beamagent.cluster._ray import (
    CONTROLLER_NAME,
    NAMESPACE,
    connect,
    node_actor_name,
    require_ray,
)
from beamagent.errors import InvalidOption

__all__ = [
    "NODE_CONCURRENCY",
    "deploy",
    "shutdown_cluster",
    "start_controller",
    "start_node_runtime",
]

NODE_CONCURRENCY = 256
"""Threads of a node runtime actor: calls that block (queries, waits) run side by side."""
CONTROLLER_CONCURRENCY = 256
READY_TIMEOUT = 120.0


def _store_spec(store: Any) -> str:
    import os

    if not isinstance(store, str | os.PathLike) or os.fspath(store) in ("", ":memory:"):
        raise InvalidOption(
            "a cluster needs a store every node reaches: a PostgreSQL URL "
            "('postgresql://...'), or a SQLite path on a filesystem all nodes share; "
            f"got {store!r}"
        )
    return os.fspath(store)


def start_node_runtime(node_id: str, store: str, options: Mapping[str, Any] | None = None) -> Any:
    """The node runtime actor on ``node_id``: created (pinned, detached) unless it exists."""
    ray = require_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from beamagent.cluster.node import NodeRuntime

    actor_class = ray.remote(NodeRuntime)
    return actor_class.options(
        name=node_actor_name(node_id),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=0,  # at most once: a call in flight when it died is not resent
        max_concurrency=NODE_CONCURRENCY,
        num_cpus=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    ).remote(node_id, store, dict(options or {}))


def start_controller(store: str, default_node_options: Mapping[str, Any] | None = None) -> Any:
    """The cluster controller actor: created (detached, restarted forever) unless it exists.

    It prefers the caller's node (usually the head), and moves when that node dies.
    """
    ray = require_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from beamagent.cluster.controller import ClusterController

    here = ray.get_runtime_context().get_node_id()
    actor_class = ray.remote(ClusterController)
    return actor_class.options(
        name=CONTROLLER_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=0,
        max_concurrency=CONTROLLER_CONCURRENCY,
        num_cpus=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True),
    ).remote(store, dict(default_node_options or {}))


def _node_options(
    nodes: Iterable[str] | Mapping[str, Mapping[str, Any]] | None,
    default: Mapping[str, Any] | None,
) -> dict[str, dict[str, Any]]:
    ray = require_ray()
    if nodes is None:
        return {n["NodeID"]: dict(default or {}) for n in ray.nodes() if n["Alive"]}
    if isinstance(nodes, Mapping):
        return {str(k): {**(default or {}), **dict(v or {})} for k, v in nodes.items()}
    if isinstance(nodes, str):
        raise InvalidOption("nodes must be a list of Ray node ids or a mapping of them")
    return {str(n): dict(default or {}) for n in nodes}


def deploy(
    address: str | None = None,
    *,
    store: Any,
    nodes: Iterable[str] | Mapping[str, Mapping[str, Any]] | None = None,
    node_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Start the controller and a node runtime on each of ``nodes``; their node ids.

    Idempotent: what already runs is kept (its options are not changed).

    Args:
        address: the Ray cluster (``"127.0.0.1:6379"``); None when this process
            is already connected.
        store: the shared store spec (PostgreSQL URL or shared SQLite path).
        nodes: Ray node ids (default: every alive node), or a mapping of node
            id to that node's options (``Runtime`` keyword arguments such as
            ``backends``, plus ``env``).
        node_options: options every node gets (under each node's own).

    Example::

        deploy("127.0.0.1:6379", store="postgresql://beam@db/beam",
               node_options={"backends": ["local", "claude"]})

    Raises:
        InvalidOption: the store is not shared (``":memory:"``) or ``nodes`` is malformed.
        MissingDependency: Ray is not installed.
    """
    ray = require_ray()
    spec = _store_spec(store)
    connect(address)
    controller = start_controller(spec, node_options)
    ray.get(controller.ping.remote(), timeout=READY_TIMEOUT)
    options = _node_options(nodes, node_options)
    actors = {node: start_node_runtime(node, spec, opts) for node, opts in options.items()}
    ray.get([a.ping.remote() for a in actors.values()], timeout=READY_TIMEOUT)
    ray.get(
        [controller.register_node.remote(node, opts) for node, opts in options.items()],
        timeout=READY_TIMEOUT,
    )
    return list(options)


def shutdown_cluster(timeout: float = 60.0) -> None:
    """Stop every node runtime (gracefully: sessions end, history stays) and the controller."""
    ray = require_ray()
    try:
        controller = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        controller = None
    nodes: list[str] = [n["NodeID"] for n in ray.nodes()]
    if controller is not None:
        with contextlib.suppress(ray.exceptions.RayError):
            ray.get(controller.shutdown.remote(), timeout=timeout)
        ray.kill(controller, no_restart=True)
    for node in nodes:
        try:
            actor = ray.get_actor(node_actor_name(node), namespace=NAMESPACE)
        except ValueError:
            continue
        with contextlib.suppress(ray.exceptions.RayError):
            ray.get(actor.shutdown.remote(), timeout=timeout)
        ray.kill(actor, no_restart=True)
