"""Unit tests of the pure routing core: names, requests, state and every policy."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from beamagent.backends.names import BACKEND_ALIASES, KNOWN_BACKENDS, canonical_backend_name
from beamagent.capabilities import Capability
from beamagent.errors import (
    BackendNotEligible,
    InvalidOption,
    InvalidRouteRequest,
    NoBackendAvailable,
    UnknownCapability,
)
from beamagent.routing.policies import (
    BackendInfo,
    FallbackPolicy,
    Health,
    Policy,
    RoundRobinKey,
    RouteDecision,
    RouteRequest,
    RoutingState,
    select,
)

EMPTY = RoutingState()


def infos(*names: str, caps: Any = ()) -> tuple[BackendInfo, ...]:
    """Backends with the same capabilities, in the given (preference) order."""
    return tuple(BackendInfo(name, caps) for name in names)


def pick(request: Any, *names: str, state: RoutingState = EMPTY) -> RouteDecision:
    return select(request, state, infos(*names))[0]


# --- backend names -----------------------------------------------------------------


def test_known_backends_in_default_preference_order() -> None:
    assert KNOWN_BACKENDS == ("claude", "codex", "gemini", "opencode", "copilot", "openai", "local")
    assert set(BACKEND_ALIASES.values()) <= set(KNOWN_BACKENDS)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("claude", "claude"),
        ("Claude", "claude"),
        (" OPENAI ", "openai"),
        ("claude_code", "claude"),
        ("Claude-Code", "claude"),
        ("codex_cli", "codex"),
        ("GEMINI-CLI", "gemini"),
        ("copilot_cli", "copilot"),
        ("opencode-cli", "opencode"),
        ("local_a", "local_a"),
        ("Local-B", "Local-B"),
        ("my backend", "my backend"),
    ],
)
def test_canonical_backend_name(name: str, expected: str) -> None:
    assert canonical_backend_name(name) == expected


@pytest.mark.parametrize("name", [None, 3, b"claude", "", "   "])
def test_canonical_backend_name_rejects_non_strings_and_empty(name: Any) -> None:
    with pytest.raises(InvalidRouteRequest) as info:
        canonical_backend_name(name, key="preferred_backends")
    assert info.value.key == "preferred_backends"
    assert isinstance(info.value, ValueError)


# --- RouteRequest ----------------------------------------------------------------


def test_request_defaults() -> None:
    request = RouteRequest()
    assert request.policy is Policy.PREFERRED_THEN_FALLBACK
    assert request.fallback_policy is FallbackPolicy.AVAILABLE
    assert request.backend is None
    assert request.preferred_backends == request.excluded_backends == ()
    assert request.capabilities == frozenset()
    assert dict(request.health) == {}


def test_default_policy_is_explicit_when_a_backend_is_named() -> None:
    assert RouteRequest(backend="codex").policy is Policy.EXPLICIT
    assert RouteRequest(backend="auto").policy is Policy.PREFERRED_THEN_FALLBACK
    assert RouteRequest(backend="AUTO").backend is None


def test_backend_lists_are_normalised() -> None:
    request = RouteRequest(
        preferred_backends=["codex_cli", "auto", "Gemini", "codex", "claude-code", "gemini"],
        excluded_backends="opencode_cli",
        fallback_backends=("auto",),
        last_backend="Claude_Code",
    )
    assert request.preferred_backends == ("codex", "gemini", "claude")
    assert request.excluded_backends == ("opencode",)
    assert request.fallback_backends == ()
    assert request.last_backend == "claude"


def test_enum_values_accept_strings_case_insensitively() -> None:
    request = RouteRequest(
        policy="Round_Robin",
        fallback_policy="NONE",
        health={"claude_code": "Degraded", "codex": Health.DOWN},
    )
    assert request.policy is Policy.ROUND_ROBIN
    assert request.fallback_policy is FallbackPolicy.NONE
    assert dict(request.health) == {"claude": Health.DEGRADED, "codex": Health.DOWN}


def test_capabilities_are_parsed() -> None:
    request = RouteRequest(capabilities=["hooks", "Session-History"])
    assert request.capabilities == {Capability.HOOKS, Capability.SESSION_HISTORY}
    assert RouteRequest(capabilities="hooks").capabilities == {Capability.HOOKS}


def test_unknown_capability_is_an_error() -> None:
    with pytest.raises(UnknownCapability) as info:
        RouteRequest.from_value({"capabilities": ["hooks", "mind_reading"]})
    assert info.value.capability == "mind_reading"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("policy", "fastest"),
        ("policy", 3),
        ("fallback_policy", "sometimes"),
        ("health", {"claude": "sick"}),
        ("health", ["claude"]),
        ("health", {"auto": "down"}),
        ("health", {"": "down"}),
        ("preferred_backends", 7),
        ("preferred_backends", {"claude": 1}),
        ("preferred_backends", {"claude", "codex"}),
        ("fallback_backends", frozenset({"claude"})),
        ("fallback_backends", [None]),
        ("excluded_backends", b"claude"),
        ("backend", 5),
        ("backend", ""),
        ("last_backend", ["codex"]),
        ("affinity_key", ""),
        ("affinity_key", 42),
        ("policy_profile_id", "  "),
        ("capabilities", 5),
        ("capabilities", {"hooks": True}),
    ],
)
def test_bad_values_name_their_key(key: str, value: Any) -> None:
    with pytest.raises(InvalidRouteRequest) as info:
        RouteRequest.from_value({key: value})
    assert info.value.key == key
    assert key in str(info.value)


def test_excluded_backends_may_be_a_set() -> None:
    # Exclusion has no order, so a set is fine there.
    assert RouteRequest(excluded_backends={"codex"}).excluded_backends == ("codex",)


def test_unknown_key_is_named() -> None:
    with pytest.raises(InvalidRouteRequest) as info:
        RouteRequest.from_value({"policy": "sticky", "stickiness": 3})
    assert info.value.key == "stickiness"


def test_from_value_forms() -> None:
    request = RouteRequest(policy="failover")
    assert RouteRequest.from_value(request) is request
    assert RouteRequest.from_value(None) == RouteRequest()
    assert RouteRequest.from_value({"backend": None, "policy": None}) == RouteRequest()
    with pytest.raises(InvalidRouteRequest) as info:
        RouteRequest.from_value(["claude"])  # type: ignore[arg-type]
    assert info.value.key == "request"


def test_named_backend_with_another_policy_is_refused() -> None:
    with pytest.raises(InvalidRouteRequest) as info:
        RouteRequest(backend="claude", policy="round_robin")
    assert info.value.key == "backend"
    assert "preferred_backends" in str(info.value)


def test_request_is_hashable_and_compares_by_value() -> None:
    one = RouteRequest(preferred_backends="codex", health={"claude": "down"})
    two = RouteRequest(preferred_backends=["codex"], health={"claude_code": Health.DOWN})
    assert one == two
    assert hash(one) == hash(two)
    assert one != RouteRequest(preferred_backends="codex")


def test_request_health_is_read_only() -> None:
    request = RouteRequest(health={"claude": "down"})
    with pytest.raises(TypeError):
        request.health["codex"] = Health.DOWN  # type: ignore[index]


# --- BackendInfo and RouteDecision -----------------------------------------------


def test_backend_info_normalises() -> None:
    info = BackendInfo("Claude_Code", ["hooks"])
    assert info.name == "claude"
    assert info.capabilities == {Capability.HOOKS}


def test_backend_info_refuses_auto() -> None:
    with pytest.raises(ValueError, match="reserved"):
        BackendInfo("Auto")


def test_decision_to_dict() -> None:
    decision = RouteDecision("codex", ["codex", "claude"], "failover", ["skipped last backend"])
    assert decision.fallback_chain == ("claude",)
    assert decision.to_dict() == {
        "backend": "codex",
        "candidates": ["codex", "claude"],
        "policy": "failover",
        "reasons": ["skipped last backend"],
        "fallback_chain": ["claude"],
    }
    full = attrs.evolve(decision, affinity_key="s1", policy_profile_id="p1").to_dict()
    assert full["affinity_key"] == "s1"
    assert full["policy_profile_id"] == "p1"


@pytest.mark.parametrize("candidates", [[], ["claude", "codex"]])
def test_decision_candidates_start_with_the_chosen_backend(candidates: list[str]) -> None:
    with pytest.raises(ValueError, match="start with the chosen backend"):
        RouteDecision("codex", candidates, Policy.EXPLICIT, [])


# --- RoutingState ------------------------------------------------------------------


def rr_key(*candidates: str) -> RoundRobinKey:
    return RoundRobinKey(
        policy=Policy.ROUND_ROBIN,
        candidates=candidates,
        capabilities=frozenset(),
        preferred=(),
        fallback=(),
        excluded=frozenset(),
    )


def test_state_helpers_return_new_states_and_leave_the_old_one_alone() -> None:
    key = rr_key("claude", "codex")
    bound = EMPTY.bind("s1", "claude")
    advanced = bound.advance_cursor(key)
    sick = advanced.with_health("codex_cli", "down")
    assert dict(EMPTY.affinity) == {}
    assert dict(EMPTY.cursors) == {}
    assert dict(EMPTY.health) == {}
    assert dict(bound.affinity) == {"s1": "claude"}
    assert bound.cursor(key) == 0
    assert advanced.cursor(key) == 1
    assert advanced.advance_cursor(key).cursor(key) == 0  # wraps around the candidate set
    assert dict(sick.health) == {"codex": Health.DOWN}
    assert dict(advanced.health) == {}
    # Untouched mappings are shared, not copied.
    assert sick.affinity is advanced.affinity is bound.affinity


def test_bind_the_same_backend_returns_the_same_state() -> None:
    state = EMPTY.bind("s1", "claude")
    assert state.bind("s1", "claude") is state
    assert dict(state.bind("s1", "codex").affinity) == {"s1": "codex"}


def test_unbind() -> None:
    state = EMPTY.bind("s1", "claude").bind("s2", "codex")
    assert dict(state.unbind("s1").affinity) == {"s2": "codex"}
    assert state.unbind("nobody") is state


def test_with_health_none_removes_the_override() -> None:
    state = EMPTY.with_health("claude", Health.UNHEALTHY)
    assert dict(state.with_health("claude", None).health) == {}
    with pytest.raises(InvalidRouteRequest):
        state.with_health("claude", "poorly")


def test_cleared_keeps_health_overrides() -> None:
    state = EMPTY.bind("s1", "claude").advance_cursor(rr_key("a", "b")).with_health("codex", "down")
    cleared = state.cleared()
    assert dict(cleared.affinity) == {}
    assert dict(cleared.cursors) == {}
    assert dict(cleared.health) == {"codex": Health.DOWN}


def test_state_from_plain_dicts_is_copied_and_read_only() -> None:
    affinity = {"s1": "claude"}
    state = RoutingState(affinity=affinity, health={"gemini_cli": "down"})
    affinity["s2"] = "codex"
    assert dict(state.affinity) == {"s1": "claude"}
    assert dict(state.health) == {"gemini": Health.DOWN}
    with pytest.raises(TypeError):
        state.affinity["s3"] = "codex"  # type: ignore[index]


def test_round_robin_key_needs_candidates() -> None:
    with pytest.raises(ValueError, match="at least one candidate"):
        rr_key()


# --- candidate sets and preferred_then_fallback ------------------------------------


def test_beamagent_case_preferred_fallback_excluded() -> None:
    decision = pick(
        {
            "preferred_backends": ["gemini", "codex"],
            "fallback_backends": ["claude"],
            "excluded_backends": ["gemini"],
        },
        "claude",
        "codex",
        "gemini",
        "opencode",
    )
    assert decision.backend == "codex"
    assert decision.fallback_chain[0] == "claude"
    assert decision.candidates == ("codex", "claude", "opencode")
    assert decision.policy is Policy.PREFERRED_THEN_FALLBACK
    assert decision.reasons == ("selected preferred backend",)


def test_preferred_then_fallback_reasons() -> None:
    names = ("claude", "codex", "gemini")
    fallback = pick({"preferred_backends": "opencode", "fallback_backends": "gemini"}, *names)
    assert (fallback.backend, fallback.reasons) == ("gemini", ("selected fallback backend",))
    assert fallback.candidates == ("gemini", "claude", "codex")
    first = pick({}, *names)
    assert (first.backend, first.reasons) == ("claude", ("selected first eligible backend",))
    assert first.candidates == names


def test_fallback_follows_preferred_and_skips_what_preferred_took() -> None:
    decision = pick(
        {"preferred_backends": ["gemini", "claude"], "fallback_backends": ["gemini", "local"]},
        "claude",
        "codex",
        "gemini",
        "local",
    )
    assert decision.candidates == ("gemini", "claude", "local", "codex")


def test_fallback_policy_none_limits_candidates_to_preferred_and_fallback() -> None:
    decision = pick(
        {"preferred_backends": "gemini", "fallback_backends": "codex", "fallback_policy": "none"},
        "claude",
        "codex",
        "gemini",
    )
    assert decision.candidates == ("gemini", "codex")


def test_fallback_policy_none_is_honoured_when_everything_named_was_filtered_out() -> None:
    request = {
        "preferred_backends": ["gemini"],
        "fallback_backends": ["codex"],
        "excluded_backends": "codex",
        "health": {"gemini": "down"},
        "fallback_policy": "none",
    }
    with pytest.raises(NoBackendAvailable) as info:
        pick(request, "claude", "codex", "gemini")
    assert info.value.policy == "preferred_then_fallback"
    assert info.value.preferred == ("gemini",)
    assert info.value.excluded == ("codex",)
    assert info.value.eligible == ("claude",)
    # The same request with fallback "available" falls through to the rest.
    assert pick(
        {**request, "fallback_policy": "available"}, "claude", "codex", "gemini"
    ).backend == ("claude")


def test_capability_filter() -> None:
    available = (
        BackendInfo("claude", ["hooks", "session_history"]),
        BackendInfo("codex", ["session_history"]),
        BackendInfo("gemini", ["hooks", "session_history", "attachments"]),
    )
    decision, _ = select({"capabilities": ["hooks", "session_history"]}, EMPTY, available)
    assert decision.candidates == ("claude", "gemini")
    with pytest.raises(NoBackendAvailable) as info:
        select({"capabilities": ["hooks", "event_streaming"]}, EMPTY, available)
    assert info.value.capabilities == ("event_streaming", "hooks")
    assert info.value.eligible == ()


def test_no_available_backend() -> None:
    with pytest.raises(NoBackendAvailable):
        select({}, EMPTY, ())


@pytest.mark.parametrize("status", ["unhealthy", "down"])
def test_unhealthy_and_down_backends_are_skipped(status: str) -> None:
    decision = pick({"health": {"claude": status}}, "claude", "codex")
    assert decision.backend == "codex"
    assert decision.candidates == ("codex",)


def test_state_health_overrides_apply_and_the_request_wins() -> None:
    state = EMPTY.with_health("claude", "down")
    assert pick({}, "claude", "codex", state=state).backend == "codex"
    assert pick({"health": {"claude": "healthy"}}, "claude", "codex", state=state).backend == (
        "claude"
    )
    assert pick(
        {"health": {"codex": "down"}}, "claude", "codex", "gemini", state=state
    ).backend == ("gemini")


def test_degraded_sorts_after_healthy_when_no_preference_is_given() -> None:
    decision = pick({"health": {"claude": "degraded"}}, "claude", "codex", "gemini")
    assert decision.candidates == ("codex", "gemini", "claude")
    assert decision.reasons == ("selected first eligible backend",)


def test_degraded_sorts_after_healthy_of_the_same_rank_only() -> None:
    decision = pick(
        {
            "preferred_backends": ["claude", "codex"],
            "fallback_backends": ["gemini", "opencode"],
            "health": {"claude": "degraded", "gemini": "degraded", "copilot": "degraded"},
        },
        "claude",
        "codex",
        "gemini",
        "opencode",
        "copilot",
        "local",
    )
    # preferred: codex, claude | fallback: opencode, gemini | remaining: local, copilot
    assert decision.candidates == ("codex", "claude", "opencode", "gemini", "local", "copilot")


def test_a_degraded_preferred_backend_still_beats_a_healthy_fallback() -> None:
    decision = pick(
        {
            "preferred_backends": "claude",
            "fallback_backends": "codex",
            "health": {"claude": "degraded"},
        },
        "claude",
        "codex",
    )
    assert decision.backend == "claude"
    assert decision.reasons == ("selected preferred backend", "backend claude is degraded")


def test_custom_backend_instances_route_like_any_other() -> None:
    decision = pick({"preferred_backends": "local_b"}, "local_a", "local_b")
    assert decision.candidates == ("local_b", "local_a")


def test_duplicate_available_entries_keep_the_first() -> None:
    available = (BackendInfo("claude"), BackendInfo("claude", ["hooks"]), BackendInfo("codex"))
    decision, _ = select({}, EMPTY, available)
    assert decision.candidates == ("claude", "codex")
    with pytest.raises(NoBackendAvailable):
        select({"capabilities": "hooks"}, EMPTY, available)


def test_decision_carries_affinity_key_and_policy_profile_id() -> None:
    decision = pick({"affinity_key": "s1", "policy_profile_id": "strict"}, "claude")
    assert (decision.affinity_key, decision.policy_profile_id) == ("s1", "strict")


def test_select_accepts_a_route_request() -> None:
    request = RouteRequest(preferred_backends="codex")
    assert pick(request, "claude", "codex") == pick(
        {"preferred_backends": "codex"}, "claude", "codex"
    )


@pytest.mark.parametrize(
    "request_",
    [
        {},
        {"policy": "explicit", "backend": "codex"},
        {"policy": "capability_first"},
        {"policy": "failover", "last_backend": "claude"},
    ],
)
def test_policies_without_memory_return_the_same_state(request_: dict[str, Any]) -> None:
    state = EMPTY.with_health("gemini", "degraded")
    assert select(request_, state, infos("claude", "codex"))[1] is state


# --- explicit ------------------------------------------------------------------------


def test_explicit_backend() -> None:
    decision = pick({"backend": "codex_cli"}, "claude", "codex")
    assert decision.backend == "codex"
    assert decision.candidates == ("codex",)
    assert decision.policy is Policy.EXPLICIT
    assert decision.reasons == ("selected explicit backend override",)


def test_explicit_degraded_backend_is_allowed_and_says_so() -> None:
    decision = pick({"backend": "codex", "health": {"codex": "degraded"}}, "claude", "codex")
    assert decision.reasons == ("selected explicit backend override", "backend codex is degraded")


@pytest.mark.parametrize(
    ("request_", "reasons"),
    [
        ({"excluded_backends": "codex"}, ("excluded",)),
        ({"health": {"codex": "unhealthy"}}, ("unhealthy",)),
        ({"health": {"codex": "down"}}, ("down",)),
        ({"capabilities": ["hooks", "attachments"]}, ("lacks capability attachments",)),
        (
            {
                "excluded_backends": "codex",
                "health": {"codex": "down"},
                "capabilities": "attachments",
            },
            ("excluded", "down", "lacks capability attachments"),
        ),
    ],
)
def test_explicit_backend_not_eligible(request_: dict[str, Any], reasons: tuple[str, ...]) -> None:
    available = (BackendInfo("claude", ["hooks", "attachments"]), BackendInfo("codex", ["hooks"]))
    with pytest.raises(BackendNotEligible) as info:
        select({**request_, "backend": "codex"}, EMPTY, available)
    assert info.value.backend == "codex"
    assert info.value.reasons == reasons


def test_explicit_backend_that_is_not_available() -> None:
    with pytest.raises(BackendNotEligible) as info:
        pick({"backend": "gemini"}, "claude", "codex")
    assert info.value.reasons == ("not available",)


def test_explicit_without_backend_takes_the_first_candidate() -> None:
    decision = pick({"policy": "explicit", "preferred_backends": "codex"}, "claude", "codex")
    assert decision.candidates == ("codex", "claude")
    assert decision.reasons == ("selected first explicit candidate",)
    with pytest.raises(NoBackendAvailable):
        pick({"policy": "explicit", "excluded_backends": "claude"}, "claude")


# --- capability_first ----------------------------------------------------------------


def test_capability_first_takes_the_first_capable_backend_in_availability_order() -> None:
    available = (
        BackendInfo("claude"),
        BackendInfo("codex", ["hooks"]),
        BackendInfo("gemini", ["hooks"]),
    )
    request = {
        "policy": "capability_first",
        "capabilities": "hooks",
        "preferred_backends": "gemini",
    }
    decision, state = select(request, EMPTY, available)
    assert decision.backend == "codex"
    assert decision.candidates == ("codex", "gemini")  # the rest keep the preference order
    assert decision.reasons == ("selected backend satisfying capabilities [hooks]",)
    assert state is EMPTY


def test_capability_first_without_capabilities_gives_the_rank_reason() -> None:
    decision = pick({"policy": "capability_first"}, "claude", "codex")
    assert decision.reasons == ("selected first eligible backend",)


def test_capability_first_with_no_capable_backend() -> None:
    with pytest.raises(NoBackendAvailable) as info:
        pick({"policy": "capability_first", "capabilities": ["checkpointing"]}, "claude")
    assert info.value.policy == "capability_first"
    assert info.value.capabilities == ("checkpointing",)


def test_capability_first_respects_fallback_policy_none() -> None:
    request = {
        "policy": "capability_first",
        "preferred_backends": "gemini",
        "fallback_policy": "none",
    }
    decision = pick(request, "claude", "codex", "gemini")
    assert decision.candidates == ("gemini",)


# --- round_robin ---------------------------------------------------------------------


def test_round_robin_alternates() -> None:
    state = EMPTY
    chosen = []
    for _ in range(4):
        decision, state = select({"policy": "round_robin"}, state, infos("claude", "codex"))
        chosen.append((decision.backend, decision.candidates))
    assert chosen == [
        ("claude", ("claude", "codex")),
        ("codex", ("codex", "claude")),
        ("claude", ("claude", "codex")),
        ("codex", ("codex", "claude")),
    ]
    assert decision.reasons == ("selected by round robin policy",)


def test_round_robin_keeps_one_cursor_per_candidate_set() -> None:
    state = EMPTY
    two = infos("claude", "codex")
    three = infos("claude", "codex", "gemini")
    first, state = select({"policy": "round_robin"}, state, two)
    other, state = select({"policy": "round_robin"}, state, three)
    second, state = select({"policy": "round_robin"}, state, two)
    assert (first.backend, other.backend, second.backend) == ("claude", "claude", "codex")
    assert len(state.cursors) == 2


def test_round_robin_with_no_candidate_leaves_no_cursor() -> None:
    with pytest.raises(NoBackendAvailable) as info:
        select({"policy": "round_robin", "excluded_backends": "claude"}, EMPTY, infos("claude"))
    assert info.value.policy == "round_robin"


# --- sticky --------------------------------------------------------------------------


def test_sticky_requires_an_affinity_key() -> None:
    with pytest.raises(InvalidRouteRequest) as info:
        pick({"policy": "sticky"}, "claude")
    assert info.value.key == "affinity_key"


def test_sticky_binds_then_reuses_even_when_the_preference_order_changes() -> None:
    names = ("claude", "codex", "gemini")
    first, state = select({"policy": "sticky", "affinity_key": "s1"}, EMPTY, infos(*names))
    assert first.backend == "claude"
    assert first.reasons == ("selected backend and bound sticky affinity",)
    assert dict(state.affinity) == {"s1": "claude"}
    reordered = {
        "policy": "sticky",
        "affinity_key": "s1",
        "preferred_backends": ["gemini", "codex"],
    }
    again, after = select(reordered, state, infos(*names))
    assert again.backend == "claude"
    assert again.candidates == ("claude", "gemini", "codex")
    assert again.reasons == ("reused sticky affinity backend",)
    assert again.affinity_key == "s1"
    assert after is state


def test_sticky_rebinds_when_the_bound_backend_becomes_unhealthy() -> None:
    _, state = select({"policy": "sticky", "affinity_key": "s1"}, EMPTY, infos("claude", "codex"))
    sick = state.with_health("claude", "unhealthy")
    decision, rebound = select(
        {"policy": "sticky", "affinity_key": "s1"}, sick, infos("claude", "codex")
    )
    assert decision.backend == "codex"
    assert decision.reasons == (
        "selected backend and bound sticky affinity",
        "previous backend claude is no longer a candidate",
    )
    assert dict(rebound.affinity) == {"s1": "codex"}
    # Recovery does not move the session back: the new binding sticks.
    again, _ = select(
        {"policy": "sticky", "affinity_key": "s1"},
        rebound.with_health("claude", None),
        infos("claude", "codex"),
    )
    assert again.backend == "codex"


def test_sticky_spreads_new_keys_by_round_robin() -> None:
    state = EMPTY
    chosen = []
    for key in ("s1", "s2", "s3"):
        decision, state = select(
            {"policy": "sticky", "affinity_key": key}, state, infos("claude", "codex")
        )
        chosen.append(decision.backend)
    assert chosen == ["claude", "codex", "claude"]
    assert dict(state.affinity) == {"s1": "claude", "s2": "codex", "s3": "claude"}


def test_sticky_binds_nothing_when_no_backend_is_available() -> None:
    request = {"policy": "sticky", "affinity_key": "s1", "excluded_backends": "claude"}
    with pytest.raises(NoBackendAvailable):
        select(request, EMPTY, infos("claude"))


def test_sticky_respects_fallback_policy_none() -> None:
    _, state = select({"policy": "sticky", "affinity_key": "s1"}, EMPTY, infos("claude", "codex"))
    request = {
        "policy": "sticky",
        "affinity_key": "s1",
        "preferred_backends": "codex",
        "fallback_policy": "none",
    }
    decision, state = select(request, state, infos("claude", "codex"))
    assert decision.backend == "codex"
    assert dict(state.affinity) == {"s1": "codex"}


# --- failover ------------------------------------------------------------------------


def test_failover_skips_the_last_backend() -> None:
    decision = pick({"policy": "failover", "last_backend": "codex"}, "codex", "gemini", "claude")
    assert decision.backend == "gemini"
    assert decision.fallback_chain == ("claude", "codex")
    assert decision.reasons == ("skipped last backend",)


def test_failover_without_last_backend() -> None:
    decision = pick({"policy": "failover"}, "codex", "gemini")
    assert decision.backend == "codex"
    assert decision.reasons == ("selected first failover candidate",)


def test_failover_reuses_the_last_backend_when_it_is_the_only_one() -> None:
    decision = pick({"policy": "failover", "last_backend": "codex"}, "codex")
    assert decision.backend == "codex"
    assert decision.reasons == ("reused last backend because no failover candidate remained",)


def test_failover_when_the_last_backend_is_gone() -> None:
    request = {"policy": "failover", "last_backend": "codex", "health": {"codex": "down"}}
    decision = pick(request, "codex", "gemini", "claude")
    assert decision.candidates == ("gemini", "claude")
    assert decision.reasons == ("skipped last backend",)


def test_failover_with_no_candidate() -> None:
    with pytest.raises(NoBackendAvailable) as info:
        pick({"policy": "failover", "excluded_backends": "codex"}, "codex")
    assert info.value.policy == "failover"


def test_select_accepts_plain_backend_names() -> None:
    decision, _ = select(RouteRequest(policy="round_robin"), RoutingState(), ["claude", "codex"])
    assert decision.backend == "claude"
    decision, _ = select({"backend": "codex"}, RoutingState(), ("claude", BackendInfo("codex")))
    assert decision.backend == "codex"
    with pytest.raises(InvalidOption, match="available"):
        select(None, RoutingState(), [42])
    with pytest.raises(InvalidOption, match="available"):
        select(None, RoutingState(), "claude")
