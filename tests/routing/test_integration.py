"""Routing in a real Runtime: several ``local`` instances under different names.

Every other registered backend (real CLIs found on PATH, say) is marked down,
so the candidates are exactly ``local_a, local_b, local_c`` in that order.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any, ClassVar

import attrs
import pytest

from beamagent import Runtime
from beamagent import routing as routing_module
from beamagent.backends.local import LocalExit, LocalHandler
from beamagent.capabilities import Capability
from beamagent.errors import (
    BackendNotEligible,
    BeamAgentError,
    InvalidOption,
    InvalidRouteRequest,
    NoBackendAvailable,
    SessionError,
    SessionNotFound,
    UnknownBackend,
    UnknownCapability,
)
from beamagent.routing.policies import RouteRequest
from supervisors import DynamicSupervisor, StartChildError, Supervisor, monitor

LOCALS = ("local_a", "local_b", "local_c")


class HookedLocal(LocalHandler):
    """A local backend that also declares ``hooks``."""

    capabilities = LocalHandler.capabilities | {Capability.HOOKS}


class SwitchableLocal(LocalHandler):
    """A local backend whose prerequisites the test turns on and off."""

    present: ClassVar[bool] = True

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return (True, "available") if cls.present else (False, "switched off")


@pytest.fixture
def rt() -> Iterator[Runtime]:
    backends = {"local_a": LocalHandler, "local_b": LocalHandler, "local_c": HookedLocal}
    with Runtime(store=":memory:", backends=backends) as runtime:
        for name in runtime.backends():
            if name not in LOCALS:
                runtime.set_health(name, "down")
        yield runtime


def decision_of(session: Any) -> dict[str, Any]:
    decision: dict[str, Any] = session.session_info()["route_decision"]
    return decision


# --- start_session with each policy -----------------------------------------------------------


def test_start_session_without_backend_routes_to_the_first_candidate(rt: Runtime) -> None:
    for backend in (None, "auto", "AUTO"):
        session = rt.start_session(backend)
        decision = decision_of(session)
        assert session.backend() == decision["backend"] == "local_a"
        assert decision["policy"] == "preferred_then_fallback"
        assert decision["candidates"] == list(LOCALS)
        assert decision["affinity_key"] == session.session_id
        session.stop()


def test_backend_names_are_looked_up_in_any_spelling_and_bad_ones_are_typed_errors(
    rt: Runtime,
) -> None:
    assert rt.backend_spec("local_a").name == "local_a"
    assert rt.backend_spec(" local_a ").name == "local_a"  # a custom name, stripped
    assert rt.backend_spec("Claude-Code").name == "claude"  # a known one's alias, folded
    for bad in (["local_a"], {"local_a": 1}, 1, None, "", "  "):
        with pytest.raises(InvalidRouteRequest):
            rt.backend_spec(bad)  # type: ignore[arg-type]
        if bad is not None:  # start_session(backend=None) routes
            with pytest.raises(InvalidRouteRequest):
                rt.start_session(backend=bad)  # type: ignore[arg-type]
    with pytest.raises(UnknownBackend):
        rt.backend_spec("local_z")


def test_named_backend_without_routing_is_not_routed(rt: Runtime) -> None:
    before = rt.routing_decisions()
    session = rt.start_session("local_b")
    assert session.backend() == "local_b"
    assert decision_of(session) is None
    assert rt.routing_decisions() == before


def test_explicit(rt: Runtime) -> None:
    session = rt.start_session(routing={"backend": "local_b"})
    assert session.backend() == "local_b"
    assert decision_of(session)["policy"] == "explicit"
    assert decision_of(session)["reasons"] == ["selected explicit backend override"]
    # A named backend with a routing request is explicit, checked against its constraints.
    other = rt.start_session("local_c", routing={"capabilities": ["hooks"]})
    assert decision_of(other)["backend"] == "local_c"
    with pytest.raises(BackendNotEligible) as info:
        rt.start_session("local_a", routing={"capabilities": ["hooks"]})
    assert info.value.backend == "local_a"
    assert info.value.reasons == ("lacks capability hooks",)
    with pytest.raises(InvalidRouteRequest, match="policy 'explicit'"):
        rt.start_session("local_a", routing={"policy": "round_robin"})
    with pytest.raises(InvalidRouteRequest, match="contradicts"):
        rt.start_session("local_a", routing={"backend": "local_b"})
    assert sorted(rt.live_sessions()) == sorted([session.session_id, other.session_id])


def test_preferred_then_fallback(rt: Runtime) -> None:
    session = rt.start_session(
        routing={"preferred_backends": ["local_c"], "fallback_backends": ["local_a"]}
    )
    decision = decision_of(session)
    assert decision["backend"] == "local_c"
    assert decision["fallback_chain"] == ["local_a", "local_b"]
    assert decision["reasons"] == ["selected preferred backend"]
    strict = rt.start_session(
        routing={
            "preferred_backends": "nowhere",
            "fallback_backends": ["local_b"],
            "fallback_policy": "none",
        }
    )
    assert decision_of(strict)["candidates"] == ["local_b"]


def test_capability_first(rt: Runtime) -> None:
    session = rt.start_session(routing={"policy": "capability_first", "capabilities": ["hooks"]})
    assert session.backend() == "local_c"
    with pytest.raises(UnknownCapability):
        rt.start_session(routing={"policy": "capability_first", "capabilities": ["telepathy"]})
    with pytest.raises(NoBackendAvailable) as info:
        rt.start_session(routing={"capabilities": ["hooks", "mcp_management"]})
    assert info.value.capabilities == ("hooks", "mcp_management")
    assert rt.live_sessions() == [session.session_id]


def test_round_robin(rt: Runtime) -> None:
    sessions = [rt.start_session(routing={"policy": "round_robin"}) for _ in range(4)]
    assert [s.backend() for s in sessions] == ["local_a", "local_b", "local_c", "local_a"]
    assert decision_of(sessions[1])["candidates"] == ["local_b", "local_c", "local_a"]


def test_sticky(rt: Runtime) -> None:
    request = {"policy": "sticky", "affinity_key": "user-42"}
    first = rt.start_session(routing=request)
    second = rt.start_session(routing={**request, "preferred_backends": ["local_c"]})
    other = rt.start_session(routing={"policy": "sticky", "affinity_key": "user-7"})
    assert first.backend() == second.backend() == "local_a"
    assert decision_of(second)["reasons"] == ["reused sticky affinity backend"]
    assert other.backend() == "local_b"
    # Without an affinity key, the session id is the key.
    own = rt.start_session(routing={"policy": "sticky"}, session_id="chat-1")
    assert decision_of(own)["affinity_key"] == "chat-1"
    assert rt.select_backend("chat-1", {"policy": "sticky"}).backend == own.backend()
    # Unhealthy: rebound elsewhere.
    rt.set_health("local_a", "unhealthy")
    moved = rt.select_backend(request)
    assert moved.backend != "local_a"
    assert "previous backend local_a is no longer a candidate" in moved.reasons


def test_stopping_a_session_drops_the_binding_keyed_by_its_id(rt: Runtime) -> None:
    session = rt.start_session(routing={"policy": "sticky"})
    shared = rt.start_session(routing={"policy": "sticky", "affinity_key": "team"})
    bindings = rt._registry_call("bindings")
    assert bindings == {session.session_id: "local_a", "team": "local_b"}
    session.stop()
    shared.stop()
    assert rt._registry_call("bindings") == {"team": "local_b"}


def test_failover(rt: Runtime) -> None:
    session = rt.start_session(routing={"policy": "failover", "last_backend": "local_a"})
    decision = decision_of(session)
    assert decision["backend"] == "local_b"
    assert decision["fallback_chain"] == ["local_c", "local_a"]
    assert decision["reasons"] == ["skipped last backend"]
    # The session's own backend is the default last_backend when routing for it.
    assert rt.select_backend(session, {"policy": "failover"}).backend == "local_a"
    assert rt.select_backend(session.session_id, {"policy": "failover"}).backend == "local_a"


def test_failed_routing_starts_nothing_and_is_journaled(rt: Runtime) -> None:
    with pytest.raises(NoBackendAvailable):
        rt.start_session(routing={"excluded_backends": list(LOCALS)}, session_id="doomed")
    assert rt.live_sessions() == []
    entry = rt.routing_decisions(1)[0]
    assert entry["ok"] is False
    assert entry["error"] == "NoBackendAvailable"
    assert entry["session_id"] == "doomed"


def test_routing_key_never_reaches_the_backend(rt: Runtime) -> None:
    session = rt.start_session(routing=None, session_id="plain")
    assert session.backend() == "local_a"  # routing=None is no request
    with pytest.raises(InvalidOption, match="'bogus'"):
        rt.start_session(routing={"policy": "round_robin"}, bogus=1)


# --- select_backend forms --------------------------------------------------------------------


def test_select_backend_one_argument_forms(rt: Runtime) -> None:
    assert rt.select_backend().backend == "local_a"
    assert rt.select_backend(None).backend == "local_a"
    request = RouteRequest(preferred_backends=["local_b"])
    assert rt.select_backend(request).backend == "local_b"
    decision = rt.select_backend({"policy": "round_robin", "policy_profile_id": "p1"})
    assert decision.to_dict()["policy_profile_id"] == "p1"
    with pytest.raises(InvalidRouteRequest) as info:
        rt.select_backend({"polcy": "round_robin"})
    assert info.value.key == "polcy"


def test_select_backend_derives_defaults_from_a_session(rt: Runtime) -> None:
    session = rt.start_session("local_b")
    decision = rt.select_backend(session, {"policy": "failover"})
    assert decision.backend == "local_a"
    assert decision.fallback_chain == ("local_c", "local_b")
    assert decision.affinity_key == session.session_id
    # The request wins over the derived defaults.
    given = rt.select_backend(session, {"policy": "failover", "last_backend": "local_a"})
    assert given.backend == "local_b"
    keyed = rt.select_backend(session, RouteRequest(policy="sticky", affinity_key="k"))
    assert keyed.affinity_key == "k"
    # A lone session is the two-argument form without a request.
    assert rt.select_backend(session).affinity_key == session.session_id
    # An id the index does not know only gives the affinity key.
    assert rt.select_backend("ghost", {"policy": "failover"}).backend == "local_a"
    entry = rt.routing_decisions(1)[0]
    assert entry["session_id"] == "ghost"


def test_select_backend_derives_defaults_from_session_options(rt: Runtime) -> None:
    opts = {"backend": "local_c", "routing": {"excluded_backends": ["local_a"]}, "model": "x"}
    decision = rt.select_backend(opts, {})
    assert decision.backend == "local_c"
    assert decision.policy == "explicit"
    # A request naming another policy drops the backend the options named.
    rr = rt.select_backend(opts, {"policy": "round_robin"})
    assert rr.candidates == ("local_b", "local_c")
    with pytest.raises(BackendNotEligible):
        rt.select_backend({"backend": "local_a", "routing": {"excluded_backends": "local_a"}}, {})
    with pytest.raises(InvalidRouteRequest, match="contradicts"):
        rt.select_backend({"backend": "local_a", "routing": {"backend": "local_b"}}, {})
    assert rt.select_backend({"backend": "auto", "session_id": "s9"}, None).affinity_key == "s9"
    with pytest.raises(InvalidRouteRequest) as info:
        rt.select_backend({"routing": ["local_a"]}, {})
    assert info.value.key == "routing"
    with pytest.raises(InvalidRouteRequest) as info:
        rt.select_backend(42, {})  # type: ignore[arg-type]
    assert info.value.key == "session_or_opts"


# --- health, availability, journal -----------------------------------------------------------


def test_health_overrides(rt: Runtime) -> None:
    rt.set_health("local_a", "down")
    rt.set_health("local_b", "degraded")
    assert rt.start_session().backend() == "local_c"
    assert rt.backend_health()["local_a"] == "down"
    assert rt.backend_health()["local_c"] == "healthy"
    rt.clear_routing()
    assert rt.backend_health()["local_a"] == "down"  # overrides survive clear
    rt.set_health("local_a", None)
    assert rt.select_backend().backend == "local_a"
    rt.set_health("codex", "down")  # a known backend, even unregistered
    with pytest.raises(UnknownBackend):
        rt.set_health("local_z", "down")
    with pytest.raises(InvalidRouteRequest):
        rt.set_health("local_a", "sick")
    assert rt.select_backend().backend == "local_a"  # the registry lived on


def test_unavailable_backends_are_never_routed_to() -> None:
    SwitchableLocal.present = True
    try:
        with Runtime(store=":memory:", backends={"local_s": SwitchableLocal}) as rt:
            rt.set_health("local", "down")
            for name in rt.backends():
                if name not in ("local", "local_s"):
                    rt.set_health(name, "down")
            assert rt.select_backend().backend == "local_s"
            SwitchableLocal.present = False
            assert rt.backend_availability()["local_s"] == (False, "switched off")
            assert [b.name for b in rt.available_backends()].count("local_s") == 0
            rt.clear_routing()  # also re-checks availability at once
            with pytest.raises(NoBackendAvailable):
                rt.select_backend()
    finally:
        SwitchableLocal.present = True


def test_decisions_journal(rt: Runtime) -> None:
    session = rt.start_session(routing={"policy": "round_robin"})
    rt.select_backend({"policy": "round_robin"})
    newest, older = rt.routing_decisions(2)
    assert newest["backend"] == "local_b"
    assert "session_id" not in newest
    assert older["session_id"] == session.session_id
    assert older["backend"] == "local_a"
    assert len(rt.routing_decisions()) == 2
    for bad in (-1, 1.0, "2", True):
        with pytest.raises(InvalidOption):
            rt.routing_decisions(bad)


def test_ensure_tables_is_idempotent(rt: Runtime) -> None:
    urn = rt.registry.actor_urn
    rt.ensure_tables()
    rt.ensure_tables()
    assert rt.registry.actor_urn == urn


def test_ensure_tables_on_a_stopped_runtime_raises() -> None:
    runtime = Runtime(store=":memory:")
    runtime.stop()
    with pytest.raises(BeamAgentError, match="stopped"):
        runtime.ensure_tables()


# --- concurrency ------------------------------------------------------------------------------


def _hammer(worker: Any, threads: int = 8) -> None:
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=10)
            worker(index)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in pool)
    assert errors == []


def test_concurrent_sticky_keys_bind_once_and_balance(rt: Runtime) -> None:
    keys = [f"user-{i}" for i in range(60)]
    seen: dict[str, set[str]] = defaultdict(set)
    lock = threading.Lock()

    def worker(index: int) -> None:
        local: dict[str, set[str]] = defaultdict(set)
        for i in range(1000):
            key = keys[(index * 13 + i) % len(keys)]
            local[key].add(rt.select_backend({"policy": "sticky", "affinity_key": key}).backend)
        with lock:
            for key, backends in local.items():
                seen[key] |= backends

    _hammer(worker)
    assert set(seen) == set(keys)
    assert all(len(backends) == 1 for backends in seen.values())
    bindings = rt._registry_call("bindings")
    assert bindings == {key: next(iter(backends)) for key, backends in seen.items()}
    counts = Counter(bindings.values())
    assert set(counts) == set(LOCALS)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_concurrent_round_robin_is_balanced(rt: Runtime) -> None:
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def worker(_index: int) -> None:
        local = Counter(rt.select_backend({"policy": "round_robin"}).backend for _ in range(1000))
        with lock:
            counts.update(local)

    _hammer(worker)
    assert sum(counts.values()) == 8000
    assert set(counts) == set(LOCALS)
    assert max(counts.values()) - min(counts.values()) <= 1


# --- child specs in a supervisor of the user's own -------------------------------------------


def test_child_spec_routes_at_start_under_a_user_supervisor(rt: Runtime) -> None:
    rt.select_backend({"policy": "round_robin"})  # moves the cursor: start time decides
    spec = rt.child_spec(routing={"policy": "round_robin"}, model="local-large")
    assert spec.restart == "transient"
    assert spec.shutdown_timeout == 10.0
    sup = Supervisor.start(children=[spec])
    try:
        session = rt.session(str(spec.id))
        assert session.query("hi")[-1].content == "hi"
        info = session.session_info()
        assert info["backend"] == "local_b"
        assert info["model"] == "local-large"
        assert info["route_decision"]["policy"] == "round_robin"
        assert spec.id in rt.live_sessions()
        assert rt._registry_call("session_backend", spec.id) == "local_b"
        assert sup.which_children()[0].ref is not None
    finally:
        sup.stop()
    with pytest.raises(SessionNotFound):
        rt.session(str(spec.id))
    assert rt._registry_call("session_backend", spec.id) is None


def test_child_spec_restart_keeps_backend_and_binding(rt: Runtime) -> None:
    spec = rt.child_spec(
        {"routing": {"policy": "sticky"}, "session_id": "kept"},
        replies=[LocalExit(1)],
        error_linger=0,
    )
    sup = Supervisor.start(children=[spec], max_restarts=5)
    try:
        session = rt.session("kept")
        backend = session.backend()
        old = rt._session_ref("kept")
        down = monitor(old, watcher=None)
        rt.select_backend({"policy": "sticky", "affinity_key": "other"})  # move the cursor
        with pytest.raises(SessionError):  # the agent exits mid-query: the session crashes
            session.query("boom")
        down.wait(10)
        sup.which_children(timeout=10)  # answered once the restart is done
        info = session.session_info()
        assert info["incarnation"] == 2
        assert info["backend"] == backend
        assert rt._registry_call("bindings")["kept"] == backend
        assert rt._registry_call("session_backend", "kept") == backend
    finally:
        sup.stop()


def test_child_spec_stop_ends_normally_and_is_not_restarted(rt: Runtime) -> None:
    spec = rt.child_spec(backend="local_c")
    sup = Supervisor.start(children=[spec])
    try:
        routing_module.stop(rt.session(str(spec.id)))
        assert sup.which_children()[0].ref is None
        assert spec.id not in rt.live_sessions()
        assert rt._registry_call("session_backend", spec.id) is None
        with pytest.raises(SessionNotFound):
            rt._stop_external_session(str(spec.id))
    finally:
        sup.stop()


def test_child_spec_under_a_dynamic_supervisor(rt: Runtime) -> None:
    sup = DynamicSupervisor.start()
    try:
        specs = [rt.child_spec(routing={"policy": "round_robin"}) for _ in range(3)]
        for spec in specs:
            sup.start_child(spec)
        assert [rt.session(str(s.id)).backend() for s in specs] == list(LOCALS)
    finally:
        sup.stop()


def test_child_spec_errors_are_found_early_or_at_start(rt: Runtime) -> None:
    with pytest.raises(UnknownBackend):
        rt.child_spec(backend="nope")
    with pytest.raises(InvalidOption, match="'bogus'"):
        rt.child_spec(backend="local_a", bogus=1)
    with pytest.raises(InvalidRouteRequest):
        rt.child_spec(routing={"bad": 1})
    with pytest.raises(InvalidRouteRequest):
        rt.child_spec(backend="local_a", routing={"policy": "round_robin"})
    with pytest.raises(InvalidOption, match="session_id"):
        rt.child_spec(session_id="no spaces allowed")
    spec = rt.child_spec(routing={"excluded_backends": list(LOCALS)})
    with pytest.raises(StartChildError) as info:
        Supervisor.start(children=[spec])
    assert isinstance(info.value.reason, NoBackendAvailable)
    late = rt.child_spec(routing={"policy": "round_robin"}, bogus=1)  # backend unknown until start
    with pytest.raises(StartChildError) as info:
        Supervisor.start(children=[late])
    assert isinstance(info.value.reason, InvalidOption)
    assert rt.live_sessions() == []


def test_child_spec_resumes_a_stored_session(rt: Runtime) -> None:
    first = rt.start_session("local_b", session_id="again")
    first.query("remember me")
    first.stop()
    spec = rt.child_spec(resume="again", routing={"excluded_backends": "local_a"})
    assert spec.id == "again"
    sup = Supervisor.start(children=[spec])
    try:
        session = rt.session("again")
        assert session.backend() == "local_b"  # the stored backend, checked by the request
        assert session.session_info()["route_decision"]["policy"] == "explicit"
        assert rt.get_session_messages(session)[0].content == "remember me"
    finally:
        sup.stop()


def test_child_spec_can_be_evolved(rt: Runtime) -> None:
    spec = attrs.evolve(rt.child_spec(backend="local_a"), restart="permanent")
    sup = Supervisor.start(children=[spec])
    try:
        assert rt.session(str(spec.id)).health() == "ready"
    finally:
        sup.stop()
