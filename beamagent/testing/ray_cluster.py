"""A real local multi-node Ray cluster on loopback, for tests and benchmarks.

Every node, the GCS and the driver are bound to 127.0.0.1 (Ray otherwise picks
the machine's interface address, where a loopback-bound cluster never
answers); resources are small (one CPU and 80 MB of object store per node, no
dashboard, no usage stats). Its processes are children of this process that
outlive tests on purpose, so they are registered with the leak check as
long-lived; the threads ``ray.init`` starts are started here, before any
test's snapshot.

>>> cluster = LocalRayCluster.start(nodes=3)      # doctest: +SKIP
>>> cluster.node_ids                              # doctest: +SKIP
>>> cluster.remove_node(cluster.node_ids[2])      # doctest: +SKIP
>>> cluster.shutdown()                            # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any

from beamagent.testing.leaks import (
    child_pids,
    forget_long_lived_child,
    long_lived_child,
    pid_alive,
)

__all__ = ["LocalRayCluster"]

OBJECT_STORE_BYTES = 80 * 1024 * 1024
HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}
NODE_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # Keep Ray from resolving 127.0.0.1 to the interface address (see beamagent.cluster).
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


class LocalRayCluster:
    """Ray nodes as processes of this one (``ray.cluster_utils.Cluster``), on 127.0.0.1."""

    def __init__(self, cluster: Any, head: Any) -> None:
        self._cluster = cluster
        self._head = head
        self._nodes: dict[str, Any] = {head.node_id: head}
        self._pids: set[int] = set()

    @classmethod
    def start(cls, nodes: int = 3, *, connect: bool = True) -> LocalRayCluster:
        """Start a head and ``nodes - 1`` workers; connect this process as driver."""
        for key, value in NODE_ENV.items():
            os.environ.setdefault(key, value)
        from beamagent.cluster._ray import keep_on_loopback

        keep_on_loopback()
        import ray
        from ray.cluster_utils import Cluster

        before = child_pids()
        cluster = Cluster(initialize_head=False)
        head = cluster.add_node(**cls._node_args(0))
        self = cls(cluster, head)
        for index in range(1, nodes):
            self.add_node(index)
        if connect:
            ray.init(
                address=head.gcs_address,
                namespace="beamagent",
                log_to_driver=False,
                _node_ip_address="127.0.0.1",
            )
            ray.get(ray.put(None))  # the driver's threads start now, not in a test
        self._keep(child_pids() - before)
        return self

    @staticmethod
    def _node_args(index: int) -> dict[str, Any]:
        args: dict[str, Any] = {
            "num_cpus": 1,
            "node_ip_address": "127.0.0.1",
            "object_store_memory": OBJECT_STORE_BYTES,
            "resources": {f"beamagent_test_node_{index}": 1},
        }
        if index == 0:
            args["include_dashboard"] = False
            # A node killed outright is declared dead within ~2 s, not ~15 s.
            args["_system_config"] = HEALTH_CHECKS
        return args

    def _keep(self, pids: set[int]) -> None:
        for pid in pids:
            long_lived_child(pid)
        self._pids |= pids

    @property
    def address(self) -> str:
        """The GCS address (``127.0.0.1:<port>``) to connect to."""
        return str(self._head.gcs_address)

    @property
    def head_id(self) -> str:
        """The head node's id."""
        return str(self._head.node_id)

    @property
    def node_ids(self) -> list[str]:
        """Ids of the nodes started and not removed, head first."""
        return list(self._nodes)

    def add_node(self, index: int | None = None) -> str:
        """Start one more worker node; its id."""
        before = child_pids()
        node = self._cluster.add_node(
            **self._node_args(len(self._nodes) if index is None else index)
        )
        self._nodes[node.node_id] = node
        self._keep(child_pids() - before)
        return str(node.node_id)

    def remove_node(self, node_id: str, timeout: float = 30.0) -> None:
        """Kill every process of a node at once (as a machine failing): its raylet and
        the workers under it, whose actors would otherwise linger until they notice.
        Returns once they are all gone (bounded by ``timeout``).
        """
        node = self._nodes.pop(node_id)
        roots = [process.pid for _kind, process in node.live_processes()]
        doomed = _descendants(roots)
        for pid in doomed:  # workers first: they must not outlive their raylet at all
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._cluster.remove_node(node, allow_graceful=False)
        deadline = time.monotonic() + timeout
        while any(pid_alive(pid) for pid in doomed) and time.monotonic() < deadline:
            threading.Event().wait(0.01)  # reaped by their parents: nothing to block on

    def shutdown(self) -> None:
        """Disconnect and stop every node."""
        import ray

        ray.shutdown()
        for node_id in list(self._nodes)[::-1]:  # the head last
            self.remove_node(node_id)
        for pid in self._pids:
            forget_long_lived_child(pid)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def _descendants(roots: list[int]) -> list[int]:
    """Every process under ``roots`` (not the roots), deepest last."""
    tree = _children()
    found: list[int] = []
    todo = list(roots)
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
