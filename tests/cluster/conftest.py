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


def _alive_actors() -> dict[str, str]:
    """Alive Ray actors: id → name (or class), from the GCS."""
    import ray._private.state as state

    return {
        actor_id: str(info.get("Name") or info.get("ActorClassName") or "")
        for actor_id, info in state.actors().items()
        if info.get("State") == "ALIVE"
    }


@pytest.fixture(autouse=True)
def nothing_left_on_the_cluster(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves sessions, runs or Ray actors on the cluster (stops the sessions).

    beamagent's own actors (controller, node runtimes) are not counted: a test may
    kill them and they come back as new actors.
    """
    if "crt" not in request.fixturenames:
        yield
        return
    runtime: ClusterRuntime = request.getfixturevalue("crt")
    before = set(_alive_actors())
    yield
    left = runtime.live_sessions()
    runs = runtime.runs()
    on_nodes: dict[str, list[str]] = {}
    for node in runtime.nodes():
        if node["alive"]:
            live = ray.get(runtime.node_actor(node["node"]).live_sessions.remote(), timeout=WAIT)
            if live:
                on_nodes[node["node"]] = live
    actors = {
        actor_id: name
        for actor_id, name in _alive_actors().items()
        if actor_id not in before and not name.startswith("beamagent:")
    }
    for session_id in left:
        runtime.stop_session(session_id)
    if left or runs or on_nodes or actors:
        pytest.fail(
            f"test left on the cluster: sessions {left[:5]} ({len(left)}), runs {runs}, "
            f"live sessions per node {on_nodes}, Ray actors {sorted(actors.values())}",
            pytrace=False,
        )
