"""A cluster of runtimes on Ray against one local runtime, measured in one run.

Prints:
  * session start on a remote node (driver → controller → node runtime) vs a local
    ``Runtime.start_session`` on the same store;
  * a query round trip on a remote node vs on a local session;
  * failover: seconds from removing a node until its 100 sessions all answer again from
    the surviving nodes (resumed from the shared store).

The cluster is a real 3-node Ray cluster on loopback (``beamagent.testing.ray_cluster``),
one CPU per node; the store is the tests' throwaway PostgreSQL server when its binaries
are installed, else a SQLite file. Needs the ``ray`` extra.

Run: ``.venv/bin/python bench/cluster.py [N]``.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import figure, paired, report

from beamagent import Runtime, configure_logging
from beamagent.testing.postgres import PostgresServer, PostgresUnavailable, find_postgres_bindir

configure_logging("error")

FAILOVER_SESSIONS = 100


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        spec = str(Path(tmp) / "cluster.db")
        kind = "sqlite"
        if find_postgres_bindir() is not None:
            with contextlib.suppress(PostgresUnavailable):
                server = stack.enter_context(PostgresServer.start(tmp))
                spec, kind = server.create_database("bench"), "postgres"
        from beamagent.cluster import ClusterRuntime, shutdown_cluster
        from beamagent.testing.ray_cluster import LocalRayCluster

        ray_cluster = LocalRayCluster.start(nodes=3)
        stack.callback(ray_cluster.shutdown)
        options = {node: {"backends": ["local"]} for node in ray_cluster.node_ids}
        crt = stack.enter_context(ClusterRuntime(store=spec, nodes=options))
        stack.callback(shutdown_cluster)
        local = stack.enter_context(Runtime(store=spec, handle_signals=False))
        head, remote, victim = ray_cluster.node_ids
        print(f"# store: {kind}; nodes: 3 (1 CPU each); driver on the head node")

        # Remote: every session on a worker node (the head marked down for placement).
        crt.set_node_health(head, "down")
        crt.set_node_health(victim, "down")
        started: list = []
        local_started: list = []

        def remote_start() -> None:
            started.append(crt.start_session(backend="local"))

        def local_start() -> None:
            local_started.append(local.start_session(backend="local"))

        starts = max(n // 4, 10)
        base, ours = paired(local_start, remote_start, starts, rounds=3)
        report("session_start_remote_node", ours * 1e3, base * 1e3, "ms", "cost of placement")
        assert all(s.node == remote for s in started)

        session, local_session = started[0], local_started[0]
        base, ours = paired(
            lambda: local_session.query("ping"), lambda: session.query("ping"), n, rounds=5
        )
        report("query_round_trip_remote_node", ours * 1e3, base * 1e3, "ms", "Ray hop cost")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda s: s.stop(), started))
        for s in local_started:
            s.stop()

        # Failover: 100 sessions on the victim node, then the node is removed.
        crt.set_node_health(victim, None)
        crt.set_node_health(remote, "down")
        with ThreadPoolExecutor(8) as pool:
            moving = list(
                pool.map(lambda _: crt.start_session(backend="local"), range(FAILOVER_SESSIONS))
            )
            list(pool.map(lambda s: s.query("before"), moving))
        crt.set_node_health(head, None)
        crt.set_node_health(remote, None)
        assert all(s.node == victim for s in moving)
        began = time.perf_counter()
        ray_cluster.remove_node(victim)
        with ThreadPoolExecutor(8) as pool:
            infos = list(pool.map(lambda s: s.session_info(), moving))
        seconds = time.perf_counter() - began
        assert all(info["node"] != victim for info in infos)
        figure(f"failover_{FAILOVER_SESSIONS}_sessions", seconds, "s", "goal <= 30")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda s: s.stop(), moving))


if __name__ == "__main__":
    main()
