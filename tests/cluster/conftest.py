"""A real 3-node Ray cluster on loopback per test module, over a shared PostgreSQL store.

PostgreSQL when its server binaries are installed (``make pytest`` installs them),
else a shared SQLite file (every node is on this machine). The cluster's own
processes and threads are started before any test's leak snapshot; a test that
leaves sessions or runs placed on the cluster fails the cluster check below.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from beamagent.cluster import ClusterRuntime, shutdown_cluster  # noqa: E402
from beamagent.testing.ray_cluster import LocalRayCluster  # noqa: E402

WAIT = 60.0


def _store(request: pytest.FixtureRequest, tmp: Path) -> str:
    from beamagent.testing.postgres import PostgresUnavailable, find_postgres_bindir

    if find_postgres_bindir() is None:
        return str(tmp / "cluster.db")
    try:
        server = request.getfixturevalue("postgres_server")
    except (PostgresUnavailable, pytest.skip.Exception):
        return str(tmp / "cluster.db")
    return str(server.create_database())


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalRayCluster]:
    """A head and two worker nodes, this process connected as driver."""
    cluster = LocalRayCluster.start(nodes=3)
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="module")
def cluster_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The store spec every node shares (PostgreSQL URL, else a SQLite path)."""
    return _store(request, tmp_path_factory.mktemp("cluster-store"))


def node_options(cluster: LocalRayCluster) -> dict[str, dict[str, Any]]:
    """Every node offers ``local``; the last worker also offers ``local_gpu``."""
    from beamagent.backends.local import LocalHandler

    options: dict[str, dict[str, Any]] = {n: {"backends": ["local"]} for n in cluster.node_ids}
    options[cluster.node_ids[-1]] = {"backends": {"local": True, "local_gpu": (LocalHandler, {})}}
    return options


@pytest.fixture(scope="module")
def cluster_node_options(ray_cluster: LocalRayCluster) -> dict[str, dict[str, Any]]:
    """Each node runtime's options (a module overrides this fixture to change them)."""
    return node_options(ray_cluster)


@pytest.fixture(scope="module")
def crt(
    ray_cluster: LocalRayCluster,
    cluster_store: str,
    cluster_node_options: dict[str, dict[str, Any]],
) -> Iterator[ClusterRuntime]:
    """A ClusterRuntime with the controller and a node runtime on each node."""
    runtime = ClusterRuntime(store=cluster_store, nodes=cluster_node_options)
    yield runtime
    runtime.stop()
    shutdown_cluster()


@pytest.fixture(autouse=True)
def nothing_left_on_the_cluster(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves sessions or runs placed on the cluster (then clean them)."""
    yield
    if "crt" not in request.fixturenames:
        return
    runtime: ClusterRuntime = request.getfixturevalue("crt")
    left = runtime.live_sessions()
    runs = runtime.runs()
    on_nodes: dict[str, list[str]] = {}
    for node in runtime.nodes():
        if node["alive"]:
            live = ray.get(runtime.node_actor(node["node"]).live_sessions.remote(), timeout=WAIT)
            if live:
                on_nodes[node["node"]] = live
    for session_id in left:
        runtime.stop_session(session_id)
    if left or runs or on_nodes:
        pytest.fail(
            f"test left on the cluster: sessions {left[:5]} ({len(left)}), runs {runs}, "
            f"live sessions per node {on_nodes}",
            pytrace=False,
        )
