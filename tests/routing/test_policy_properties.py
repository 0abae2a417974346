"""Properties of routing.policies.select over random backends, requests and states."""

from __future__ import annotations

import contextlib
from typing import Any

import attrs
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from beamagent.capabilities import Capability
from beamagent.errors import (
    BackendNotEligible,
    InvalidRouteRequest,
    NoBackendAvailable,
    UnknownCapability,
)
from beamagent.routing.policies import (
    BackendInfo,
    FallbackPolicy,
    Health,
    Policy,
    RouteDecision,
    RouteRequest,
    RoutingState,
    select,
)

POOL = ("claude", "codex", "gemini", "opencode", "copilot", "openai", "local", "local_a")
# A few capabilities only, so that capability filtering often bites.
CAPS = (Capability.HOOKS, Capability.INTERRUPT, Capability.SESSION_HISTORY, Capability.ATTACHMENTS)
DOCUMENTED = (InvalidRouteRequest, UnknownCapability, BackendNotEligible, NoBackendAvailable)
NEVER_CHOSEN = (Health.UNHEALTHY, Health.DOWN)


@st.composite
def available_backends(draw: st.DrawFn) -> tuple[BackendInfo, ...]:
    """Backends in a random preference order, each lacking at most two of CAPS."""
    names = draw(st.lists(st.sampled_from(POOL), unique=True, max_size=len(POOL)))
    missing = st.frozensets(st.sampled_from(CAPS), max_size=2)
    return tuple(BackendInfo(name, frozenset(CAPS) - draw(missing)) for name in names)


available_st = available_backends()

# Request input spells names in several ways, and names backends that are not available.
name_st = st.sampled_from((*POOL, "claude_code", "Codex-CLI", "GEMINI", "auto", "missing"))
names_st = st.one_of(name_st, st.lists(name_st, max_size=5))
POOL_NAME_ST = st.sampled_from((*POOL, "claude_code", "missing"))
health_st = st.dictionaries(st.sampled_from(POOL), st.sampled_from(list(Health)), max_size=5)


@st.composite
def requests(
    draw: st.DrawFn, policy: Policy | None = None, named: bool | None = None
) -> dict[str, Any]:
    """A valid request as a plain dict; ``named``: whether it names a backend (None: maybe)."""
    request = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "preferred_backends": names_st,
                "excluded_backends": names_st,
                "fallback_backends": names_st,
                "capabilities": st.lists(st.sampled_from(CAPS), max_size=2),
                "policy": st.sampled_from(list(Policy)),
                "affinity_key": st.sampled_from(("s1", "s2", "s3")),
                "last_backend": name_st,
                "fallback_policy": st.sampled_from(list(FallbackPolicy)),
                "health": health_st,
                "policy_profile_id": st.just("profile"),
            },
        )
    )
    if policy is not None:
        request["policy"] = policy
    if named is None and request.get("policy", Policy.EXPLICIT) is Policy.EXPLICIT:
        if draw(st.booleans()):
            request["backend"] = draw(name_st)
    elif named:
        request["policy"] = Policy.EXPLICIT
        request["backend"] = draw(POOL_NAME_ST)
    if request.get("policy") is Policy.STICKY:
        request.setdefault("affinity_key", "s1")
    return request


@st.composite
def states(draw: st.DrawFn) -> RoutingState:
    """A state with some health overrides and bindings, and cursors moved by earlier calls."""
    state = RoutingState(
        affinity=draw(st.dictionaries(st.sampled_from(("s1", "s2")), st.sampled_from(POOL))),
        health=draw(health_st),
    )
    available = draw(available_st)
    for request in draw(st.lists(requests(), max_size=1)):
        with contextlib.suppress(*DOCUMENTED):
            _, state = select(request, state, available)
    return state


def effective_health(request: RouteRequest, state: RoutingState, backend: str) -> Health:
    return request.health.get(backend) or state.health.get(backend) or Health.HEALTHY


def is_eligible(
    request: RouteRequest, state: RoutingState, available: tuple[BackendInfo, ...], backend: str
) -> bool:
    info = next((i for i in available if i.name == backend), None)
    return (
        info is not None
        and backend not in request.excluded_backends
        and effective_health(request, state, backend) not in NEVER_CHOSEN
        and request.capabilities <= info.capabilities
    )


def try_select(
    request: Any, state: RoutingState, available: tuple[BackendInfo, ...]
) -> tuple[RouteDecision, RoutingState] | None:
    try:
        return select(request, state, available)
    except (BackendNotEligible, NoBackendAvailable):
        return None


@given(available_st, requests(), states())
def test_the_chosen_backend_is_eligible_and_first(
    available: tuple[BackendInfo, ...], raw: dict[str, Any], state: RoutingState
) -> None:
    result = try_select(raw, state, available)
    assume(result is not None)
    assert result is not None
    decision, _ = result
    request = RouteRequest.from_value(raw)
    assert decision.candidates[0] == decision.backend
    assert decision.fallback_chain == decision.candidates[1:]
    assert len(set(decision.candidates)) == len(decision.candidates)
    assert all(is_eligible(request, state, available, b) for b in decision.candidates)
    assert decision.policy is request.policy
    assert decision.affinity_key == request.affinity_key
    assert decision.policy_profile_id == request.policy_profile_id
    assert decision.reasons


@given(available_st, requests(), states())
def test_excluded_unhealthy_and_down_backends_are_never_chosen(
    available: tuple[BackendInfo, ...], raw: dict[str, Any], state: RoutingState
) -> None:
    request = RouteRequest.from_value(raw)
    result = try_select(request, state, available)
    assume(result is not None)
    assert result is not None
    chosen = result[0].backend
    assert chosen not in request.excluded_backends
    assert effective_health(request, state, chosen) not in NEVER_CHOSEN


@given(available_st, requests(named=False), states(), st.lists(POOL_NAME_ST, min_size=1))
def test_fallback_policy_none_stays_within_preferred_and_fallback(
    available: tuple[BackendInfo, ...],
    raw: dict[str, Any],
    state: RoutingState,
    preferred: list[str],
) -> None:
    request = RouteRequest.from_value({**raw, "fallback_policy": "none"})
    if not request.preferred_backends and not request.fallback_backends:
        # Without any list, "none" has nothing to stay within.
        request = attrs.evolve(request, preferred_backends=preferred)
    named = set(request.preferred_backends) | set(request.fallback_backends)
    result = try_select(request, state, available)
    if result is not None:
        assert set(result[0].candidates) <= named


@given(available_st, requests(named=True), states())
def test_explicit_backend_is_chosen_exactly_when_eligible(
    available: tuple[BackendInfo, ...], raw: dict[str, Any], state: RoutingState
) -> None:
    request = RouteRequest.from_value(raw)
    named = request.backend
    assert named is not None
    if is_eligible(request, state, available, named):
        decision, after = select(request, state, available)
        assert decision.candidates == (named,)
        assert after is state
    else:
        with pytest.raises(BackendNotEligible) as info:
            select(request, state, available)
        assert info.value.backend == named
        assert info.value.reasons


@pytest.mark.parametrize("policy", [Policy.ROUND_ROBIN, Policy.STICKY])
@given(available=available_st, raw=requests(named=False), state=states(), data=st.data())
def test_round_robin_visits_each_candidate_once_per_n_calls(
    policy: Policy,
    available: tuple[BackendInfo, ...],
    raw: dict[str, Any],
    state: RoutingState,
    data: st.DataObject,
) -> None:
    raw["policy"] = policy
    raw.setdefault("affinity_key", "s1")
    result = try_select(raw, state, available)
    assume(result is not None)
    assert result is not None
    candidates = result[0].candidates
    # Start anywhere in the cycle.
    state = result[1]
    for _ in range(data.draw(st.integers(0, len(candidates)))):
        state = select(raw, state, available)[1]
    chosen = []
    for turn in range(len(candidates)):
        if policy is Policy.STICKY:
            # A fresh affinity key each call, so each call binds by round robin.
            raw["affinity_key"] = f"fresh-{turn}"
        decision, state = select(raw, state, available)
        chosen.append(decision.backend)
        assert sorted(decision.candidates) == sorted(candidates)
    assert sorted(chosen) == sorted(candidates)


@given(available_st, requests(policy=Policy.STICKY), states())
def test_sticky_keeps_its_backend_while_it_stays_a_candidate(
    available: tuple[BackendInfo, ...], raw: dict[str, Any], state: RoutingState
) -> None:
    result = try_select(raw, state, available)
    assume(result is not None)
    assert result is not None
    first, state = result
    assert state.affinity[raw["affinity_key"]] == first.backend
    again, after = select(raw, state, available)
    assert again.backend == first.backend
    assert after is state


@given(available_st, requests(), states())
def test_select_is_pure(
    available: tuple[BackendInfo, ...], raw: dict[str, Any], state: RoutingState
) -> None:
    before = RoutingState(
        affinity=dict(state.affinity), cursors=dict(state.cursors), health=state.health
    )
    first = try_select(raw, state, available)
    second = try_select(RouteRequest.from_value(raw), state, available)
    assert first == second
    assert state == before


@given(available_st, requests(policy=Policy.PREFERRED_THEN_FALLBACK), states())
def test_degraded_never_precedes_healthy_without_preferences(
    available: tuple[BackendInfo, ...], raw: dict[str, Any], state: RoutingState
) -> None:
    raw.pop("preferred_backends", None)
    raw.pop("fallback_backends", None)
    request = RouteRequest.from_value(raw)
    result = try_select(request, state, available)
    assume(result is not None)
    assert result is not None
    degraded = [
        effective_health(request, state, b) is Health.DEGRADED for b in result[0].candidates
    ]
    assert degraded == sorted(degraded)


# --- random, often malformed input -------------------------------------------------

KEYS = [
    "backend",
    "preferred_backends",
    "excluded_backends",
    "fallback_backends",
    "capabilities",
    "policy",
    "affinity_key",
    "policy_profile_id",
    "last_backend",
    "fallback_policy",
    "health",
    "bogus",
]
scalar_st = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=6),
    st.binary(max_size=4),
    name_st,
    st.sampled_from([*Policy, *FallbackPolicy, *Health, *CAPS]),
    st.sampled_from([p.value.upper() for p in Policy]),
)
value_st = st.recursive(
    scalar_st,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.frozensets(st.text(max_size=4), max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=6), name_st), inner, max_size=3),
    ),
    max_leaves=8,
)
wild_request_st = st.one_of(
    st.dictionaries(st.sampled_from(KEYS), value_st, max_size=6),
    st.dictionaries(st.integers(), value_st, max_size=2),
    value_st,
    requests(),
)


@given(available_st, wild_request_st, states())
def test_select_raises_only_documented_errors(
    available: tuple[BackendInfo, ...], raw: Any, state: RoutingState
) -> None:
    try:
        decision, after = select(raw, state, available)
    except DOCUMENTED:
        return
    assert decision.backend == decision.candidates[0]
    assert isinstance(after, RoutingState)
