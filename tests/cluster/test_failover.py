"""Acceptance: 300 sessions on 3 nodes, one node removed under load, everything comes back."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import ray
from ray import cloudpickle

from beamagent.cluster import ClusterRuntime, ClusterSession
from beamagent.errors import NodeLost
from beamagent.graph import Job, LinearRouter, Node, NodeMessage, RunStatus
from beamagent.testing.postgres import find_postgres_bindir
from beamagent.testing.ray_cluster import LocalRayCluster

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/

SESSIONS = 300
THREADS = 8
FAILOVER_BOUND = 60.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def cluster_node_options(ray_cluster: LocalRayCluster) -> dict[str, dict[str, Any]]:
    return {node: {"backends": ["local"]} for node in ray_cluster.node_ids}


def gated_chain(gate: str) -> Job:
    """a → b → c, where b waits for the file ``gate`` (so the run is in flight at the loss)."""
    order = LinearRouter(["a", "b", "c"])

    def b(message: NodeMessage) -> str:
        while not Path(gate).exists():
            threading.Event().wait(0.05)
        return "b done"

    return Job(
        "gated",
        [
            Node("a", serving=lambda m: "a done", router=order),
            Node("b", serving=b, router=order),
            Node("c", serving=lambda m: m.previous_result.body + ", c done", router=order),
        ],
        start="a",
    )


def test_a_lost_node_s_sessions_and_run_come_back_with_their_history(
    crt: ClusterRuntime, ray_cluster: LocalRayCluster, cluster_store: str, tmp_path: Path
) -> None:
    if find_postgres_bindir() is not None:
        assert cluster_store.startswith("postgresql://")  # the acceptance store
    request = {"policy": "round_robin"}
    with ThreadPoolExecutor(THREADS) as pool:
        sessions: list[ClusterSession] = list(
            pool.map(lambda _: crt.start_session(routing=request), range(SESSIONS))
        )
    per_node = Counter(s.node for s in sessions)
    assert sorted(per_node) == sorted(ray_cluster.node_ids)
    assert all(abs(count - SESSIONS / 3) <= 1 for count in per_node.values()), per_node

    victim = ray_cluster.node_ids[1]  # a worker (the driver is attached to the head)
    gate = tmp_path / "gate"
    run = crt.run_job(gated_chain(str(gate)), "go", run_id="failover-run", node=victim)
    assert run.node == victim

    acknowledged: dict[str, list[str]] = {s.session_id: [] for s in sessions}
    lost: list[tuple[str, str]] = []
    stop = threading.Event()
    first_round = threading.Barrier(THREADS + 1)

    def worker(index: int) -> None:
        mine = sessions[index::THREADS]
        rounds = 0
        while not stop.is_set():
            for session in mine:
                prompt = f"{session.session_id} #{rounds}"
                try:
                    session.query(prompt, timeout=30)
                except NodeLost:
                    lost.append((session.session_id, prompt))
                    continue
                acknowledged[session.session_id].append(prompt)
            rounds += 1
            if rounds == 1:
                first_round.wait(timeout=120)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    try:
        first_round.wait(timeout=120)  # every session answered once, load keeps going
        moved = [s for s in sessions if s.node == victim]
        removed_at = time.monotonic()
        ray_cluster.remove_node(victim)
        gate.touch()

        # Within a bounded time the lost node's sessions answer again, elsewhere.
        with ThreadPoolExecutor(THREADS) as pool:
            infos = list(pool.map(lambda s: s.session_info(), moved, timeout=FAILOVER_BOUND))
        failover_seconds = time.monotonic() - removed_at
        assert failover_seconds < FAILOVER_BOUND
        assert all(info["node"] != victim for info in infos)
        assert all(info["resumed"] == "replay" for info in infos)  # the stored history
        assert {info["node"] for info in infos} <= set(ray_cluster.node_ids)

        result = run.result(timeout=FAILOVER_BOUND)
        assert result.status is RunStatus.ENDED
        assert result.output is not None
        assert result.output.body == "b done, c done"
        assert run.node != victim
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)

    # After the load: one more query each on the moved sessions, with the full history.
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda s: s.query(f"{s.session_id} after"), moved))
    for session in moved:
        acknowledged[session.session_id].append(f"{session.session_id} after")

    # 0 acknowledged messages lost, none duplicated: read the shared store.
    def check(session: ClusterSession) -> None:
        stored = crt.get_session_messages(session.session_id, types="result")
        counts = Counter(m.content for m in stored)
        duplicated = [c for c, n in counts.items() if n > 1]
        assert not duplicated, (session.session_id, duplicated)
        missing = [p for p in acknowledged[session.session_id] if counts[p] != 1]
        assert not missing, (session.session_id, missing)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(check, sessions))
    assert sum(len(v) for v in acknowledged.values()) >= SESSIONS
    print(
        f"failover of {len(moved)} sessions: {failover_seconds:.2f} s; "
        f"queries acknowledged {sum(len(v) for v in acknowledged.values())}, "
        f"cut off by the loss {len(lost)}"
    )

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda s: s.stop(), sessions))
    ray_cluster.add_node()  # the module's later tests have three nodes again
    assert ray.is_initialized()
