"""Kill every new actor dependency under load: the controller, a node runtime."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import ray

from beamagent.cluster import ClusterRuntime, ClusterSession
from beamagent.cluster._ray import CONTROLLER_NAME, NAMESPACE, node_actor_name
from beamagent.errors import NodeLost
from beamagent.testing.ray_cluster import LocalRayCluster

THREADS = 8
SESSIONS = 48
BOUND = 60.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def cluster_node_options(ray_cluster: LocalRayCluster) -> dict[str, dict[str, Any]]:
    return {node: {"backends": ["local"]} for node in ray_cluster.node_ids}


class Load:
    """Queries from ``THREADS`` threads over ``sessions`` until stopped; what was acknowledged."""

    def __init__(self, sessions: list[ClusterSession]) -> None:
        self.sessions = sessions
        self.acknowledged: dict[str, list[str]] = {s.session_id: [] for s in sessions}
        self.cut_off: list[str] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._round = threading.Barrier(THREADS + 1)
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(THREADS)]

    def _run(self, index: int) -> None:
        rounds = 0
        while not self._stop.is_set():
            for session in self.sessions[index::THREADS]:
                prompt = f"{session.session_id} #{rounds}"
                try:
                    session.query(prompt, timeout=30)
                except NodeLost:
                    self.cut_off.append(prompt)
                    continue
                except BaseException as exc:
                    self.errors.append(exc)
                    self._stop.set()
                    raise
                self.acknowledged[session.session_id].append(prompt)
            rounds += 1
            if rounds == 1:
                self._round.wait(timeout=120)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        self._round.wait(timeout=120)  # every session answered once
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
        assert not self.errors, self.errors


@pytest.fixture
def sessions(crt: ClusterRuntime) -> Iterator[list[ClusterSession]]:
    with ThreadPoolExecutor(THREADS) as pool:
        started = list(
            pool.map(
                lambda _: crt.start_session(routing={"policy": "round_robin"}), range(SESSIONS)
            )
        )
    yield started
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda s: s.stop(), started))


def nothing_lost(crt: ClusterRuntime, load: Load) -> None:
    for session in load.sessions:
        counts = Counter(
            m.content for m in crt.get_session_messages(session.session_id, types="result")
        )
        assert all(n == 1 for n in counts.values()), session.session_id
        assert all(counts[p] == 1 for p in load.acknowledged[session.session_id])


def test_killing_the_controller_under_load_loses_nothing(
    crt: ClusterRuntime, sessions: list[ClusterSession]
) -> None:
    with Load(sessions) as load:
        placed = crt.session_nodes()
        controller = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
        ray.kill(controller, no_restart=False)
        # A start while it restarts waits for it; the placement state is back from the store.
        extra = crt.start_session(routing={"policy": "round_robin"})
        assert extra.query("after the restart")[-1].content == "after the restart"
        after = crt.session_nodes()
        assert {k: after[k] for k in placed} == placed
        extra.stop()
    assert not load.cut_off  # queries go to the nodes, not through the controller
    nothing_lost(crt, load)


def _info_after_the_kill(session: ClusterSession) -> dict[str, Any]:
    """The session's info from after the kill: ``ray.kill`` returns before the actor dies,
    and a call that reached the old runtime first is answered there (``resumed`` None,
    as for any session started fresh). Asked again until an answer comes from the new
    incarnation, within the bound."""
    deadline = time.monotonic() + BOUND
    info = session.session_info()
    while info["resumed"] is None and time.monotonic() < deadline:
        info = session.session_info()
    return info


@pytest.mark.parametrize("restart", [False, True], ids=["killed_for_good", "restarted"])
def test_killing_a_node_runtime_under_load_brings_its_sessions_back(
    crt: ClusterRuntime,
    ray_cluster: LocalRayCluster,
    sessions: list[ClusterSession],
    restart: bool,
) -> None:
    victim = ray_cluster.node_ids[1]
    on_victim = [s for s in sessions if s.node == victim]
    assert on_victim
    with Load(sessions) as load:
        actor = ray.get_actor(node_actor_name(victim), namespace=NAMESPACE)
        ray.kill(actor, no_restart=not restart)
        with ThreadPoolExecutor(THREADS) as pool:
            infos = list(pool.map(_info_after_the_kill, on_victim, timeout=BOUND))
        assert all(info["resumed"] in ("native", "replay") for info in infos), infos
    nothing_lost(crt, load)
    # The node runtime is back (deployed again, or restarted by Ray) and hosts sessions.
    nodes = {n["node"]: n for n in crt.nodes()}
    assert nodes[victim]["alive"]
    assert ray.get(ray.get_actor(node_actor_name(victim), namespace=NAMESPACE).ping.remote())
