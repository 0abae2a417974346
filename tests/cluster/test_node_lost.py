"""A query in flight when its node dies: NodeLost, not resent; the handle then works elsewhere."""

from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import ray
from ray import cloudpickle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from beamagent.cluster import ClusterRuntime
from beamagent.errors import NodeLost, SessionError
from beamagent.testing.ray_cluster import LocalRayCluster

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@ray.remote(num_cpus=0)
class Signal:
    """A one-shot event two processes can wait on."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    async def send(self) -> None:
        self._event.set()

    async def wait(self) -> bool:
        await self._event.wait()
        return True


@pytest.fixture(scope="module")
def cluster_node_options(ray_cluster: LocalRayCluster) -> dict[str, dict[str, Any]]:
    return {node: {"backends": ["local"]} for node in ray_cluster.node_ids}


def test_a_query_in_flight_on_a_lost_node_raises_node_lost_and_is_not_resent(
    crt: ClusterRuntime, ray_cluster: LocalRayCluster
) -> None:
    head = ray_cluster.head_id
    on_head = Signal.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False))
    started, gate = on_head.remote(), on_head.remote()
    try:
        run(crt, ray_cluster, started, gate)
    finally:
        ray.kill(started)
        ray.kill(gate)


def run(crt: ClusterRuntime, ray_cluster: LocalRayCluster, started: Any, gate: Any) -> None:
    head, victim, other = ray_cluster.node_ids

    def reply(prompt: str, params: Any) -> str:
        if prompt == "in flight":
            started.send.remote()
            ray.get(gate.wait.remote())
        return prompt

    crt.set_node_health(head, "down")
    crt.set_node_health(other, "down")
    try:
        session = crt.start_session(backend="local", reply=reply)
    finally:
        crt.set_node_health(head, None)
        crt.set_node_health(other, None)
    assert session.node == victim
    session.query("before")
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(session.query, "in flight")
        assert ray.get(started.wait.remote(), timeout=30)
        ray_cluster.remove_node(victim)
        with pytest.raises(NodeLost) as lost:
            in_flight.result(timeout=60)
    assert isinstance(lost.value, SessionError)
    assert lost.value.node == victim
    assert lost.value.delivered is None
    assert "not sent again" in str(lost.value)
    ray.get(gate.send.remote())

    # The same handle: the session is back on a surviving node, with its history.
    assert session.query("after")[-1].content == "after"
    assert session.node in (head, other)
    assert session.session_info()["resumed"] == "replay"
    results = [m.content for m in crt.get_session_messages(session.session_id, types="result")]
    assert results == ["before", "after"]  # the cut-off query never ran twice
    prompts = [m.content for m in crt.get_session_messages(session.session_id, types="user")]
    assert prompts.count("in flight") <= 1
    session.stop()
