"""The routing registry restarts without forgetting what users set, and without failing callers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import supervisors
from beamagent import Runtime
from beamagent.backends.local import LocalHandler
from beamagent.errors import BackendNotEligible


@pytest.fixture
def rt() -> Iterator[Runtime]:
    backends = {"local_a": LocalHandler, "local_b": LocalHandler}
    with Runtime(store=":memory:", backends=backends) as runtime:
        yield runtime


def _kill_registry(rt: Runtime) -> None:
    ref = rt.registry
    mon = supervisors.monitor(ref, watcher=None)
    supervisors.kill(ref)
    mon.wait(5)


def test_health_overrides_survive_a_registry_restart(rt: Runtime) -> None:
    rt.set_health("local_a", "down")
    rt.set_health("local_b", "degraded")
    _kill_registry(rt)
    health = rt.backend_health()
    assert health["local_a"] == "down"
    assert health["local_b"] == "degraded"
    request = {"policy": "explicit", "backend": "local_a"}
    with pytest.raises(BackendNotEligible):
        rt.select_backend(request)
    rt.set_health("local_a", None)
    _kill_registry(rt)
    assert rt.backend_health()["local_a"] == "healthy"


def test_sticky_bindings_survive_a_registry_restart(rt: Runtime) -> None:
    request = {
        "policy": "sticky",
        "affinity_key": "user-42",
        "preferred_backends": ["local_b", "local_a"],
    }
    first = rt.select_backend(request).backend
    _kill_registry(rt)
    # Even with the preference reversed, the binding wins: it was remembered.
    reversed_request = {**request, "preferred_backends": ["local_a", "local_b"]}
    assert rt.select_backend(reversed_request).backend == first
    rt.clear_routing()
    _kill_registry(rt)
    assert rt.select_backend(reversed_request).backend == "local_a"


def test_the_live_session_index_is_rebuilt(rt: Runtime) -> None:
    sessions = [rt.start_session(backend=name) for name in ("local_a", "local_b", "local")]
    _kill_registry(rt)
    index = rt._registry_call("live_sessions")
    assert index == {s.session_id: s.backend() for s in sessions}
    # A session's own last backend is known again: failover moves away from it.
    decision = rt.select_backend(sessions[0], {"policy": "failover"})
    assert decision.backend != "local_a"


def test_routing_state_is_durable_across_runtimes(tmp_path: Path) -> None:
    path = tmp_path / "routing.db"
    backends = {"local_a": LocalHandler, "local_b": LocalHandler}
    request = {"policy": "sticky", "affinity_key": "k", "preferred_backends": ["local_b"]}
    with Runtime(store=path, backends=backends) as rt:
        rt.set_health("local_a", "unhealthy")
        assert rt.select_backend(request).backend == "local_b"
    with Runtime(store=path, backends=backends) as rt:
        assert rt.backend_health()["local_a"] == "unhealthy"
        assert rt.select_backend({**request, "preferred_backends": ["local"]}).backend == "local_b"


def test_selections_keep_working_while_the_registry_is_killed_under_load(rt: Runtime) -> None:
    errors: list[BaseException] = []
    done = threading.Event()
    counts = [0] * 4

    def select(i: int) -> None:
        while not done.is_set():
            try:
                rt.select_backend({"policy": "round_robin"})
            except BaseException as exc:
                errors.append(exc)
                return
            counts[i] += 1

    threads = [threading.Thread(target=select, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(10):
        _kill_registry(rt)
        rt.ensure_tables()  # it is back
    done.set()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert all(count > 0 for count in counts)
