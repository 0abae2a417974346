"""Placement (pure): routing policies over (node, backend) pairs."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beamagent.cluster.placement import NodeView, failover_request, pair_name, place, split_pair
from beamagent.errors import BackendNotEligible, NoBackendAvailable
from beamagent.routing.policies import BackendInfo, RoutingState

LOCAL = (BackendInfo("local"),)


def nodes(count: int, **overrides: tuple[BackendInfo, ...]) -> list[NodeView]:
    return [NodeView(f"n{i}", overrides.get(f"n{i}", LOCAL)) for i in range(count)]


@given(st.integers(1, 6), st.integers(1, 60), st.sets(st.integers(0, 5)))
def test_round_robin_spreads_evenly_over_nodes_that_are_not_down(
    count: int, starts: int, down: set[int]
) -> None:
    views = nodes(count)
    health = {f"n{i}": "down" for i in down if i < count}
    state = RoutingState()
    placed: Counter[str] = Counter()
    if len(health) == count:
        with pytest.raises(NoBackendAvailable):
            place({"policy": "round_robin"}, state, views, health)
        return
    for _ in range(starts):
        placement, state = place({"policy": "round_robin"}, state, views, health)
        placed[placement.node] += 1
    assert not set(placed) & set(health)
    assert max(placed.values()) - min(placed.values(), default=0) <= 1
    if starts >= count - len(health):
        assert len(placed) == count - len(health)


@given(st.lists(st.integers(0, 20), min_size=1, max_size=6))
def test_a_named_backend_goes_to_its_least_loaded_node(loads: list[int]) -> None:
    views = [NodeView(f"n{i}", LOCAL, load=load) for i, load in enumerate(loads)]
    placement, _ = place({"backend": "local"}, RoutingState(), views)
    assert placement.backend == "local"
    assert loads[int(placement.node[1:])] == min(loads)
    assert placement.to_dict()["policy"] == "explicit"


def test_a_backend_on_one_node_only_lands_there_and_nowhere_else_when_it_is_down() -> None:
    gpu = (BackendInfo("local"), BackendInfo("local_gpu"))
    views = nodes(3, n2=gpu)
    placement, _ = place({"backend": "local_gpu"}, RoutingState(), views)
    assert placement.node == "n2"
    with pytest.raises(BackendNotEligible):
        place({"backend": "local_gpu"}, RoutingState(), views, {"n2": "down"})
    dead = [views[0], views[1], NodeView("n2", gpu, alive=False)]
    with pytest.raises(BackendNotEligible):
        place({"backend": "local_gpu"}, RoutingState(), dead)


def test_sticky_keeps_a_key_on_one_node_until_that_node_is_gone() -> None:
    views = nodes(3)
    state = RoutingState()
    first, state = place({"policy": "sticky", "affinity_key": "k"}, state, views)
    for _ in range(5):
        again, state = place({"policy": "sticky", "affinity_key": "k"}, state, views)
        assert again.node == first.node
    rest = [v for v in views if v.node != first.node]
    moved, state = place({"policy": "sticky", "affinity_key": "k"}, state, rest)
    assert moved.node != first.node
    assert state.affinity["k"] == pair_name(moved.node, "local")


def test_failover_keeps_the_backend_and_skips_the_lost_pair() -> None:
    views = nodes(3, n1=(BackendInfo("local"), BackendInfo("openai")))
    request = failover_request({"policy": "round_robin"}, "openai")
    placement, _ = place(request, RoutingState(), views)
    assert (placement.node, placement.backend) == ("n1", "openai")
    placement, _ = place(
        {"policy": "failover", "last_backend": "local"}, RoutingState(), views, last_node="n0"
    )
    assert placement.node != "n0"
    assert split_pair(pair_name("n1", "odd@name")) == ("n1", "odd@name")


def test_importing_beamagent_does_not_import_ray_and_the_cluster_says_what_to_install() -> None:
    code = (
        "import sys\n"
        "import beamagent, beamagent.runtime\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
        "sys.modules['ray'] = None\n"
        "from beamagent.errors import MissingDependency\n"
        "try:\n"
        "    import beamagent.cluster\n"
        "except MissingDependency as exc:\n"
        "    assert \"pip install 'beamagent[ray]'\" in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
