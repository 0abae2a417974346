"""The registry actor on its own: state, journal, health, the session index."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pykka
import pytest
from pykka.messages import ProxyCall

from beamagent.errors import (
    BackendNotEligible,
    InvalidOption,
    InvalidRouteRequest,
    NoBackendAvailable,
)
from beamagent.routing.policies import BackendInfo, RouteDecision, RouteRequest
from beamagent.routing.registry import JOURNAL_SIZE, SELECT, RoutingRegistry
from tests._events import LogEvents

AVAILABLE = (BackendInfo("claude"), BackendInfo("codex"), BackendInfo("gemini"))


class Registry:
    """Calls into a started registry, as the runtime makes them."""

    def __init__(self, ref: pykka.ActorRef[Any]) -> None:
        self.ref = ref

    def __getattr__(self, method: str) -> Any:
        def call(*args: Any) -> Any:
            return self.ref.ask(ProxyCall((method,), args, {}), timeout=10)

        return call

    def select(self, request: Any, *, session_id: str | None = None, **kw: Any) -> RouteDecision:
        from_index = kw.get("from_index", False)
        decision: RouteDecision = self.select_backend(request, AVAILABLE, session_id, from_index)
        return decision


@pytest.fixture
def registry() -> Iterator[Registry]:
    ref = RoutingRegistry.start()
    try:
        yield Registry(ref)
    finally:
        ref.stop()


def test_round_robin_cursor_lives_in_the_actor(registry: Registry) -> None:
    picks = [registry.select({"policy": "round_robin"}).backend for _ in range(6)]
    assert picks == ["claude", "codex", "gemini"] * 2


def test_sticky_binding_is_written_only_after_success(registry: Registry) -> None:
    failing = {
        "policy": "sticky",
        "affinity_key": "k",
        "excluded_backends": ["claude", "codex", "gemini"],
    }
    with pytest.raises(NoBackendAvailable):
        registry.select(failing)
    assert registry.bindings() == {}
    decision = registry.select({"policy": "sticky", "affinity_key": "k"})
    assert registry.bindings() == {"k": decision.backend}
    # Reused even though the preference order now puts another backend first.
    again = registry.select(
        {"policy": "sticky", "affinity_key": "k", "preferred_backends": ["gemini"]}
    )
    assert again.backend == decision.backend
    assert again.reasons == ("reused sticky affinity backend",)


def test_journal_keeps_successes_and_failures_newest_first(registry: Registry) -> None:
    registry.select({"policy": "round_robin"}, session_id="s1")
    with pytest.raises(BackendNotEligible):
        registry.select({"backend": "codex", "excluded_backends": "codex"})
    newest, oldest = registry.decisions()
    assert newest["ok"] is False
    assert newest["error"] == "BackendNotEligible"
    assert newest["policy"] == "explicit"
    assert "codex" in newest["message"]
    assert oldest["ok"] is True
    assert oldest["backend"] == "claude"
    assert oldest["policy"] == "round_robin"
    assert oldest["reasons"] == ["selected by round robin policy"]
    assert oldest["fallback_chain"] == ["codex", "gemini"]
    assert oldest["session_id"] == "s1"
    assert newest["at"] >= oldest["at"] > 0
    assert registry.decisions(1) == [newest]
    assert registry.decisions(0) == []


def test_journal_is_bounded() -> None:
    ref = RoutingRegistry.start(journal_size=3)
    try:
        registry = Registry(ref)
        for _ in range(5):
            registry.select({"policy": "round_robin"})
        entries = registry.decisions()
        assert [e["backend"] for e in entries] == ["codex", "claude", "gemini"]
    finally:
        ref.stop()
    assert JOURNAL_SIZE == 1000


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
def test_journal_size_must_be_a_positive_int(size: Any) -> None:
    with pytest.raises(InvalidOption, match="journal_size"):
        RoutingRegistry(journal_size=size)


def test_malformed_request_is_journaled_and_the_actor_lives_on(registry: Registry) -> None:
    with pytest.raises(InvalidRouteRequest) as info:
        registry.select({"policy": "sticky"})
    assert info.value.key == "affinity_key"
    with pytest.raises(InvalidRouteRequest):
        registry.select({"nonsense": 1})
    assert [e["error"] for e in registry.decisions()] == ["InvalidRouteRequest"] * 2
    assert registry.select(None).backend == "claude"


def test_health_overrides_steer_selection_and_survive_clear(registry: Registry) -> None:
    registry.set_health("claude_code", "down")
    registry.set_health("codex", "degraded")
    assert registry.health_overrides() == {"claude": "down", "codex": "degraded"}
    decision = registry.select(None)
    assert decision.backend == "gemini"  # claude is down, codex sorts after healthy ones
    assert decision.candidates == ("gemini", "codex")
    # The request's own health wins over the override.
    assert registry.select({"health": {"claude": "healthy"}}).backend == "claude"
    registry.select({"policy": "sticky", "affinity_key": "k"})
    registry.clear()
    assert registry.bindings() == {}
    assert registry.health_overrides() == {"claude": "down", "codex": "degraded"}
    registry.set_health("claude", None)
    assert registry.health_overrides() == {"codex": "degraded"}
    assert registry.select(None).backend == "claude"


def test_bad_health_is_refused_and_the_actor_lives_on(registry: Registry) -> None:
    with pytest.raises(InvalidRouteRequest) as info:
        registry.set_health("claude", "sick")
    assert info.value.key == "health"
    assert registry.health_overrides() == {}
    assert registry.ref.is_alive()


def test_clear_resets_round_robin(registry: Registry) -> None:
    registry.select({"policy": "round_robin"})
    registry.clear()
    assert registry.select({"policy": "round_robin"}).backend == "claude"


def test_session_index_and_last_backend(registry: Registry) -> None:
    registry.register_session("s1", "claude", "urn:1")
    assert registry.session_backend("s1") == "claude"
    assert registry.live_sessions() == {"s1": "claude"}
    request = {"policy": "failover"}
    assert registry.select(request, session_id="s1", from_index=True).backend == "codex"
    # Without the flag, or with a last_backend of its own, the index is not read.
    assert registry.select(request, session_id="s1").backend == "claude"
    given = {"policy": "failover", "last_backend": "codex"}
    assert registry.select(given, session_id="s1", from_index=True).backend == "claude"
    assert registry.select(request, session_id="other", from_index=True).backend == "claude"


def test_unregister_drops_the_sessions_own_binding_only(registry: Registry) -> None:
    registry.register_session("s1", "codex", "urn:1", "s1")
    assert registry.bindings() == {"s1": "codex"}
    registry.select({"policy": "sticky", "affinity_key": "user-1"})
    registry.unregister_session("s1", "urn:0")  # an older incarnation: ignored
    assert registry.session_backend("s1") == "codex"
    registry.unregister_session("s1", "urn:1")
    assert registry.session_backend("s1") is None
    assert registry.bindings() == {"user-1": "claude"}
    registry.unregister_session("s1")  # unknown now: a no-op
    registry.register_session("s2", "gemini")
    registry.unregister_session("s2")
    assert registry.live_sessions() == {}


def test_a_route_request_object_is_used_as_is(registry: Registry) -> None:
    request = RouteRequest(preferred_backends=["gemini"], fallback_backends="claude")
    decision = registry.select(request)
    assert decision.backend == "gemini"
    assert decision.fallback_chain == ("claude", "codex")


def test_selections_are_logged_at_info_and_skipped_below_it(registry: Registry) -> None:
    with LogEvents("beamagent.routing.registry", level=logging.WARNING) as events:
        registry.select({"policy": "round_robin"}, session_id="quiet")
    assert events.matching("route_selected") == []
    with LogEvents("beamagent.routing.registry", level=logging.INFO) as events:
        registry.select({"policy": "round_robin"}, session_id="s1")
        with pytest.raises(InvalidRouteRequest):
            registry.select({"policy": "sticky"})
    (selected,) = events.matching("route_selected")
    assert selected["backend"] == "codex"
    assert selected["policy"] == "round_robin"
    assert selected["session_id"] == "s1"
    assert selected["reasons"] == ("selected by round robin policy",)
    (failed,) = events.matching("route_failed")
    assert failed["policy"] == "sticky"
    assert failed["error"] == "InvalidRouteRequest"


def test_a_select_tuple_selects_as_the_proxy_call_does(registry: Registry) -> None:
    first = registry.ref.ask(
        (SELECT, {"policy": "round_robin"}, AVAILABLE, "s1", False), timeout=10
    )
    second = registry.select({"policy": "round_robin"}, session_id="s2")
    assert [first.backend, second.backend] == ["claude", "codex"]
    assert [e["session_id"] for e in registry.decisions()] == ["s2", "s1"]
