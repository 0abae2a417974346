"""Routing policies: pick a backend for a route request, purely.

:func:`select` takes a :class:`RouteRequest`, the current :class:`RoutingState`
and the backends the runtime has (as :class:`BackendInfo`, in default
preference order) and returns a :class:`RouteDecision` plus the next state. It
does no I/O and starts no actor; the registry actor holds the state and calls
it on every session start.

>>> available = [BackendInfo("claude"), BackendInfo("codex"), BackendInfo("gemini")]
>>> request = {"preferred_backends": ["gemini", "codex"], "excluded_backends": "gemini"}
>>> decision, state = select(request, RoutingState(), available)
>>> decision.backend, decision.fallback_chain
('codex', ('claude',))

Semantics follow BeamAgent's routing core, with two decisions of ours: a
``degraded`` backend sorts after the healthy ones of the same rank, and
``fallback_policy="none"`` is honoured even when every preferred and fallback
backend was filtered out.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar, cast

import attrs

from beamagent.backends.names import canonical_backend_name
from beamagent.capabilities import Capability, parse_capabilities
from beamagent.errors import (
    BackendNotEligible,
    BeamAgentError,
    InvalidOption,
    InvalidRouteRequest,
    NoBackendAvailable,
)

__all__ = [
    "BackendInfo",
    "BackendsInput",
    "FallbackPolicy",
    "Health",
    "Policy",
    "RoundRobinKey",
    "RouteDecision",
    "RouteRequest",
    "RoutingState",
    "backend_infos",
    "parse_health",
    "select",
]


class Policy(enum.StrEnum):
    """How :func:`select` picks among the candidate backends."""

    EXPLICIT = "explicit"
    """The named ``backend``, which must be eligible; without one, the first candidate."""
    STICKY = "sticky"
    """The backend bound to ``affinity_key``; bind one by round robin when there is none."""
    ROUND_ROBIN = "round_robin"
    """Each candidate in turn, one cursor per candidate set."""
    FAILOVER = "failover"
    """The first candidate other than ``last_backend``."""
    CAPABILITY_FIRST = "capability_first"
    """The first backend, in availability order, that has the requested capabilities."""
    PREFERRED_THEN_FALLBACK = "preferred_then_fallback"
    """The first of preferred, then fallback, then (if allowed) any other candidate."""


class FallbackPolicy(enum.StrEnum):
    """What may follow the preferred and fallback backends in the candidate list."""

    NONE = "none"
    """Nothing: only preferred and fallback backends are candidates."""
    AVAILABLE = "available"
    """Every other eligible backend, in availability order."""


class Health(enum.StrEnum):
    """A backend's health as routing sees it."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    """Usable, but ranked after the healthy backends of the same rank."""
    UNHEALTHY = "unhealthy"
    """Never chosen."""
    DOWN = "down"
    """Never chosen."""


_Choice = TypeVar("_Choice", Policy, FallbackPolicy, Health)

_AUTO = "auto"

BackendsInput = str | Iterable[str] | None
"""What a backend list key accepts: one name, an iterable of names, or ``None``."""


def _parse_choice(choices: type[_Choice], value: object, key: str) -> _Choice:
    """Read an enum member from itself or from its value, case-insensitively."""
    if isinstance(value, choices):
        return value
    if isinstance(value, str):
        try:
            return choices(value.strip().lower().replace("-", "_"))
        except ValueError:
            pass
    allowed = ", ".join(member.value for member in choices)
    raise InvalidRouteRequest(key, f"{value!r} is not one of: {allowed}")


def parse_health(value: object) -> Health:
    """A :class:`Health` from itself or its value, case-insensitively.

    Raises:
        InvalidRouteRequest: ``value`` names no health status.
    """
    return _parse_choice(Health, value, "health")


def _is_auto(value: object) -> bool:
    return isinstance(value, str) and value.strip().lower() == _AUTO


def _optional_backend(value: str | None, key: str) -> str | None:
    if value is None or _is_auto(value):
        return None
    return canonical_backend_name(value, key=key)


def _backend_list(value: object, key: str, *, ordered: bool) -> tuple[str, ...]:
    """Normalise a backend list: canonical names, ``auto`` dropped, first occurrence kept."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = (value,)
    elif isinstance(value, Mapping | bytes | bytearray) or not isinstance(value, Iterable):
        raise InvalidRouteRequest(key, f"expected a backend name or a list of them, got {value!r}")
    elif ordered and isinstance(value, set | frozenset):
        # Preference order would depend on string hashing and change between runs.
        raise InvalidRouteRequest(key, "a set has no order; pass a list or a tuple")
    names: dict[str, None] = {}
    for item in value:
        if not _is_auto(item):
            names.setdefault(canonical_backend_name(item, key=key), None)
    return tuple(names)


def _non_empty_str(value: str | None, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidRouteRequest(key, f"expected a non-empty string, got {value!r}")
    return value


_EMPTY_HEALTH: Mapping[str, Health] = MappingProxyType({})


def _health_map(value: Mapping[str, Health | str] | None, key: str) -> Mapping[str, Health]:
    if value is None:
        return _EMPTY_HEALTH
    if not isinstance(value, Mapping):
        raise InvalidRouteRequest(key, f"expected a mapping of backend to health, got {value!r}")
    if not value:
        return _EMPTY_HEALTH
    statuses: dict[str, Health] = {}
    for name, status in value.items():
        if _is_auto(name):
            raise InvalidRouteRequest(key, "'auto' is not a backend name")
        statuses[canonical_backend_name(name, key=key)] = _parse_choice(Health, status, key)
    return MappingProxyType(statuses)


# attrs' mypy plugin understands only named functions as converters, hence one per key.


def _convert_backend(value: str | None) -> str | None:
    return _optional_backend(value, "backend")


def _convert_last_backend(value: str | None) -> str | None:
    return _optional_backend(value, "last_backend")


def _convert_preferred(value: BackendsInput) -> tuple[str, ...]:
    return _backend_list(value, "preferred_backends", ordered=True)


def _convert_excluded(value: BackendsInput) -> tuple[str, ...]:
    return _backend_list(value, "excluded_backends", ordered=False)


def _convert_fallback(value: BackendsInput) -> tuple[str, ...]:
    return _backend_list(value, "fallback_backends", ordered=True)


def _convert_capabilities(
    value: Iterable[Capability | str] | Capability | str | None,
) -> frozenset[Capability]:
    if isinstance(value, Mapping) or not (value is None or isinstance(value, str | Iterable)):
        raise InvalidRouteRequest(
            "capabilities", f"expected a capability id or a list of them, got {value!r}"
        )
    return parse_capabilities(value)


def _convert_policy(value: Policy | str) -> Policy:
    return _parse_choice(Policy, value, "policy")


def _convert_fallback_policy(value: FallbackPolicy | str) -> FallbackPolicy:
    return _parse_choice(FallbackPolicy, value, "fallback_policy")


def _convert_affinity_key(value: str | None) -> str | None:
    return _non_empty_str(value, "affinity_key")


def _convert_policy_profile_id(value: str | None) -> str | None:
    return _non_empty_str(value, "policy_profile_id")


def _convert_request_health(value: Mapping[str, Health | str] | None) -> Mapping[str, Health]:
    return _health_map(value, "health")


def _default_policy(request: RouteRequest) -> Policy:
    return Policy.PREFERRED_THEN_FALLBACK if request.backend is None else Policy.EXPLICIT


def _check_backend_policy(
    request: RouteRequest, _: attrs.Attribute[Policy], policy: Policy
) -> None:
    # Every other policy ignores `backend` in BeamAgent; refusing the mix beats silently
    # routing somewhere the caller did not name.
    if request.backend is not None and policy is not Policy.EXPLICIT:
        raise InvalidRouteRequest(
            "backend",
            f"naming a backend means policy 'explicit', not {policy.value!r}; "
            "to favour it under another policy, put it in preferred_backends",
        )


@attrs.frozen(cache_hash=True)
class RouteRequest:
    """What the caller asks of routing; every field is optional.

    Converters accept friendly input: a backend list may be one name or a list
    (aliases become canonical names, duplicates go, ``"auto"`` means none),
    enums may be given as case-insensitive strings, ``health`` maps backend
    names to :class:`Health`. The default ``policy`` is ``explicit`` when a
    ``backend`` is named, else ``preferred_then_fallback``.

    Raises:
        InvalidRouteRequest: a value is malformed (the error names its key), or
            ``backend`` is named with a policy other than ``explicit``.
        UnknownCapability: ``capabilities`` holds an unknown capability id.
    """

    backend: str | None = attrs.field(default=None, converter=_convert_backend)
    """The one backend to use (policy ``explicit``); ``None`` or ``"auto"`` for none."""
    preferred_backends: tuple[str, ...] = attrs.field(default=(), converter=_convert_preferred)
    """Backends to try first, in this order."""
    excluded_backends: tuple[str, ...] = attrs.field(default=(), converter=_convert_excluded)
    """Backends never to choose."""
    fallback_backends: tuple[str, ...] = attrs.field(default=(), converter=_convert_fallback)
    """Backends to try after the preferred ones, in this order."""
    capabilities: frozenset[Capability] = attrs.field(
        default=frozenset(), converter=_convert_capabilities
    )
    """Capabilities the chosen backend must have."""
    policy: Policy = attrs.field(
        default=attrs.Factory(_default_policy, takes_self=True),
        converter=_convert_policy,
        validator=_check_backend_policy,
    )
    """How to choose; see :class:`Policy`."""
    affinity_key: str | None = attrs.field(default=None, converter=_convert_affinity_key)
    """Key of the sticky binding (usually the session id); required by ``sticky``."""
    policy_profile_id: str | None = attrs.field(default=None, converter=_convert_policy_profile_id)
    """Opaque policy profile id, carried into the decision."""
    last_backend: str | None = attrs.field(default=None, converter=_convert_last_backend)
    """The backend used last time, which ``failover`` moves to the end."""
    fallback_policy: FallbackPolicy = attrs.field(
        default=FallbackPolicy.AVAILABLE, converter=_convert_fallback_policy
    )
    """Whether other eligible backends may follow the preferred and fallback ones."""
    health: Mapping[str, Health] = attrs.field(
        default=_EMPTY_HEALTH, converter=_convert_request_health, hash=False
    )
    """Health per backend for this request; it wins over :attr:`RoutingState.health`."""

    @classmethod
    def from_value(cls, value: RouteRequest | Mapping[str, Any] | None) -> RouteRequest:
        """Build a request from a request, a mapping of its keys, or ``None`` (all defaults).

        A key mapped to ``None`` counts as absent.

        Raises:
            InvalidRouteRequest: an unknown key or a malformed value (the error
                names the key), or ``value`` is of another type.
            UnknownCapability: an unknown capability id.
        """
        if isinstance(value, RouteRequest):
            return value
        if cls is not RouteRequest:
            return cls._parse(value)
        if value is None:
            return _DEFAULT_REQUEST
        # A service tends to send the same few requests: remember the parse of a plain
        # dict under an exact, frozen copy of it (never under the dict, which may change).
        key = _plain_request_key(value) if type(value) is dict else None
        if key is None:
            return cls._parse(value)
        request = _parsed_requests.get(key)
        if request is None:
            request = cls._parse(value)  # a malformed one raises here, every time
            if len(_parsed_requests) >= _PARSED_MAX:
                _parsed_requests.clear()
            _parsed_requests[key] = request
        return request

    @classmethod
    def _parse(cls, value: Mapping[str, Any] | None) -> RouteRequest:
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise InvalidRouteRequest(
                "request",
                f"expected a RouteRequest, a mapping or None, got {type(value).__name__}",
            )
        given: dict[str, Any] = {}
        for key, item in value.items():
            if key not in _ROUTE_KEYS:
                raise InvalidRouteRequest(
                    str(key), f"unknown key; supported keys: {', '.join(_ROUTE_KEYS)}"
                )
            if item is not None:
                given[key] = item
        return cls(**given)


_ROUTE_KEYS: tuple[str, ...] = tuple(field.name for field in attrs.fields(RouteRequest))

_DEFAULT_REQUEST = RouteRequest()

_PARSED_MAX = 256
"""How many parsed request dicts :meth:`RouteRequest.from_value` remembers."""
_parsed_requests: dict[tuple[Any, ...], RouteRequest] = {}

# Exact types only, and each value keyed with its type: equal values of different types
# (True and 1, a Policy and its string, a str subclass) may parse differently.
_PLAIN_SCALARS = frozenset({str, bool, type(None), Policy, FallbackPolicy, Health, Capability})
_PLAIN_COLLECTIONS = frozenset({list, tuple, set, frozenset})


def _plain_items(items: Iterable[Any]) -> tuple[Any, ...] | None:
    frozen: list[Any] = []
    for item in items:
        kind = type(item)
        if kind not in _PLAIN_SCALARS:
            return None
        frozen.append((kind, item))
    return tuple(frozen)


def _plain_request_key(value: dict[Any, Any]) -> tuple[Any, ...] | None:
    """A hashable copy of a request dict of plain values (types included), else ``None``.

    Collections keep their iteration order (the order the parse sees); a mapping
    (``health``) keeps its items in order. Anything else is not remembered.
    """
    parts: list[Any] = []
    for key, item in value.items():
        kind = type(item)
        if type(key) is not str:
            return None
        if kind in _PLAIN_SCALARS:
            parts.append((key, kind, item))
            continue
        if kind in _PLAIN_COLLECTIONS:
            frozen = _plain_items(item)
        elif kind is dict:
            frozen = _plain_items(x for pair in item.items() for x in pair)
        else:
            return None
        if frozen is None:
            return None
        parts.append((key, kind, frozen))
    return tuple(parts)


def _convert_info_name(value: str) -> str:
    name = canonical_backend_name(value, key="name")
    if name.lower() == _AUTO:
        raise ValueError("'auto' is reserved (it means 'no backend'); choose another name")
    return name


@attrs.frozen(cache_hash=True)
class BackendInfo:
    """A backend the runtime can start, and the capabilities its handler declares.

    Raises:
        ValueError: ``name`` is empty, not a string, or ``"auto"``.
        UnknownCapability: an unknown capability id.
    """

    name: str = attrs.field(converter=_convert_info_name)
    """Canonical backend name (aliases are resolved)."""
    capabilities: frozenset[Capability] = attrs.field(
        default=frozenset(), converter=parse_capabilities
    )
    """What the backend supports."""


def backend_infos(available: Any) -> tuple[BackendInfo, ...]:
    """``available`` as ``BackendInfo``s: plain names are accepted (declaring no capabilities).

    >>> [b.name for b in backend_infos(["claude", BackendInfo("local")])]
    ['claude', 'local']

    Raises:
        InvalidOption: ``available`` is not a sequence of names and ``BackendInfo``s.
    """
    if isinstance(available, str | bytes) or not isinstance(available, Iterable):
        raise InvalidOption(
            f"available must be a sequence of backend names or BackendInfo; got {available!r}"
        )
    infos = []
    for entry in available:
        if isinstance(entry, BackendInfo):
            infos.append(entry)
        elif isinstance(entry, str):
            try:
                infos.append(BackendInfo(entry))
            except (ValueError, BeamAgentError) as exc:
                raise InvalidOption(f"available: {exc}") from None
        else:
            raise InvalidOption(
                f"available entries must be backend names or BackendInfo; got {entry!r}"
            )
    return tuple(infos)


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class RouteDecision:
    """The chosen backend, the candidates in the order tried, and why.

    Raises:
        ValueError: ``candidates`` does not start with ``backend``.
    """

    backend: str
    """The chosen backend."""
    candidates: tuple[str, ...] = attrs.field(converter=_str_tuple)
    """Every candidate, the chosen one first."""
    policy: Policy = attrs.field(converter=_convert_policy)
    """The policy that chose."""
    reasons: tuple[str, ...] = attrs.field(converter=_str_tuple)
    """Why, in words (``"selected preferred backend"``)."""
    affinity_key: str | None = None
    """The request's affinity key, if any."""
    policy_profile_id: str | None = None
    """The request's policy profile id, if any."""

    @candidates.validator
    def _chosen_first(self, _: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
        if not value or value[0] != self.backend:
            raise ValueError(f"candidates must start with the chosen backend {self.backend!r}")

    @property
    def fallback_chain(self) -> tuple[str, ...]:
        """The candidates after the chosen one, in the order to try them."""
        return self.candidates[1:]

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (lists and strings); optional keys only when set."""
        data: dict[str, Any] = {
            "backend": self.backend,
            "candidates": list(self.candidates),
            "policy": self.policy.value,
            "reasons": list(self.reasons),
            "fallback_chain": list(self.fallback_chain),
        }
        if self.affinity_key is not None:
            data["affinity_key"] = self.affinity_key
        if self.policy_profile_id is not None:
            data["policy_profile_id"] = self.policy_profile_id
        return data


def _non_empty_candidates(
    _: object, __: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    if not value:
        raise ValueError("a round-robin key needs at least one candidate")


@attrs.frozen(cache_hash=True)
class RoundRobinKey:
    """Identifies one round-robin cursor: the candidate set it cycles over.

    Two requests share a cursor only when they would cycle over the same
    candidates for the same reasons (policy, capabilities, preferences).
    """

    policy: Policy
    candidates: tuple[str, ...] = attrs.field(validator=_non_empty_candidates)
    capabilities: frozenset[Capability]
    preferred: tuple[str, ...]
    fallback: tuple[str, ...]
    excluded: frozenset[str]


_K = TypeVar("_K")
_V = TypeVar("_V")


def _frozen(value: Mapping[_K, _V]) -> Mapping[_K, _V]:
    # Outside input is always copied, a proxy too (its dict may still change); the helper
    # methods share or build their mappings without coming through here.
    return MappingProxyType(dict(value))


def _convert_affinity(value: Mapping[str, str]) -> Mapping[str, str]:
    return _frozen(value)


def _convert_cursors(value: Mapping[RoundRobinKey, int]) -> Mapping[RoundRobinKey, int]:
    return _frozen(value)


def _convert_state_health(value: Mapping[str, Health | str]) -> Mapping[str, Health]:
    return _health_map(value, "health")


_PLANS_MAX = 256
"""How many (request, available) plans a health view remembers before starting afresh."""


@attrs.frozen
class RoutingState:
    """Routing memory, immutable: sticky bindings, round-robin cursors, health overrides.

    Each helper returns a new state and shares the mappings it does not change,
    so a selection copies at most the one mapping it updates.
    """

    affinity: Mapping[str, str] = attrs.field(
        factory=lambda: MappingProxyType({}), converter=_convert_affinity
    )
    """Sticky bindings: affinity key → backend."""
    cursors: Mapping[RoundRobinKey, int] = attrs.field(
        factory=lambda: MappingProxyType({}), converter=_convert_cursors
    )
    """Round-robin cursors: candidate set → index of the next pick."""
    health: Mapping[str, Health] = attrs.field(
        factory=lambda: _EMPTY_HEALTH, converter=_convert_state_health
    )
    """Health overrides set through the registry (``set_health``): backend → health."""
    # What `select` worked out per (request, available) under this `health`: a cache, not
    # state (no part of equality). States derived without a health change share it.
    _plans: _Plans = attrs.field(init=False, factory=lambda: _Plans(), eq=False, repr=False)

    def _derive(
        self, affinity: Mapping[str, str], cursors: Mapping[RoundRobinKey, int]
    ) -> RoutingState:
        # Same health, so the same plans.
        return _new_state(affinity, cursors, self.health, self._plans)

    def cursor(self, key: RoundRobinKey) -> int:
        """Index of the next round-robin pick for ``key`` (0 if never used)."""
        return self.cursors.get(key, 0)

    def advance_cursor(self, key: RoundRobinKey) -> RoutingState:
        """Return a state whose cursor for ``key`` moves to the next candidate."""
        # Stored modulo the set size: the key fixes the size, and the number stays small.
        return self._advanced(key, self.cursors.get(key, 0))

    def _advanced(self, key: RoundRobinKey, cursor: int) -> RoutingState:
        # A proxy's copy() copies the dict under it, keeping the keys' hashes.
        cursors = cast("MappingProxyType[RoundRobinKey, int]", self.cursors).copy()
        cursors[key] = (cursor + 1) % len(key.candidates)
        return self._derive(self.affinity, MappingProxyType(cursors))

    def bind(self, affinity_key: str, backend: str) -> RoutingState:
        """Return a state where ``affinity_key`` is bound to ``backend``."""
        if self.affinity.get(affinity_key) == backend:
            return self
        affinity = dict(self.affinity)
        affinity[affinity_key] = backend
        return self._derive(MappingProxyType(affinity), self.cursors)

    def unbind(self, affinity_key: str) -> RoutingState:
        """Return a state without a binding for ``affinity_key`` (e.g. its session ended)."""
        if affinity_key not in self.affinity:
            return self
        affinity = {k: v for k, v in self.affinity.items() if k != affinity_key}
        return self._derive(MappingProxyType(affinity), self.cursors)

    def with_health(self, backend: str, health: Health | str | None) -> RoutingState:
        """Return a state with ``backend``'s health override set, or removed if ``None``.

        Raises:
            InvalidRouteRequest: ``backend`` or ``health`` is malformed.
        """
        name = canonical_backend_name(backend, key="health")
        statuses = dict(self.health)
        if health is None:
            statuses.pop(name, None)
        else:
            statuses[name] = parse_health(health)
        # New health, new plans: the old ones assumed the old health.
        return _new_state(self.affinity, self.cursors, MappingProxyType(statuses), _Plans())

    def cleared(self) -> RoutingState:
        """Return a state with no sticky bindings and no cursors.

        Health overrides stay: they are facts about backends reported by
        whoever watches them, not routing memory, and forgetting them would
        make a backend that is down look healthy again.
        """
        return self._derive(MappingProxyType({}), MappingProxyType({}))


def _new_state(
    affinity: Mapping[str, str],
    cursors: Mapping[RoundRobinKey, int],
    health: Mapping[str, Health],
    plans: _Plans,
) -> RoutingState:
    """The helpers' constructor, around attrs' ``__init__`` and its converters.

    Those copy and check outside input; the helpers pass read-only proxies of
    their own (or shared ones), and a selection should not pay for copying them.
    It sets every field: keep it in step with :class:`RoutingState`.
    """
    state: RoutingState = object.__new__(RoutingState)
    object.__setattr__(state, "affinity", affinity)
    object.__setattr__(state, "cursors", cursors)
    object.__setattr__(state, "health", health)
    object.__setattr__(state, "_plans", plans)
    return state


class _Candidates(NamedTuple):
    eligible: tuple[str, ...]
    preferred: tuple[str, ...]
    fallback: tuple[str, ...]
    ordered: tuple[str, ...]
    degraded: frozenset[str]


def _health_of(request: RouteRequest, state: RoutingState, backend: str) -> Health:
    return request.health.get(backend) or state.health.get(backend) or Health.HEALTHY


def _degraded_last(names: Sequence[str], degraded: frozenset[str]) -> tuple[str, ...]:
    if not degraded:
        return tuple(names)
    return tuple(n for n in names if n not in degraded) + tuple(n for n in names if n in degraded)


def _candidate_sets(
    request: RouteRequest, state: RoutingState, available: Sequence[BackendInfo]
) -> _Candidates:
    wanted = request.capabilities
    excluded = request.excluded_backends
    healthy: list[str] = []
    degraded: list[str] = []
    seen: set[str] = set()
    for info in available:
        name = info.name
        if name in seen:
            continue
        seen.add(name)
        if name in excluded:
            continue
        status = _health_of(request, state, name)
        if status is Health.UNHEALTHY or status is Health.DOWN:
            continue
        if wanted and not wanted <= info.capabilities:
            continue
        (degraded if status is Health.DEGRADED else healthy).append(name)
    eligible = (*healthy, *degraded)
    degraded_set = frozenset(degraded)
    if not request.preferred_backends and not request.fallback_backends:
        return _Candidates(eligible, (), (), eligible, degraded_set)
    pool = set(eligible)
    preferred = _degraded_last([b for b in request.preferred_backends if b in pool], degraded_set)
    taken = set(preferred)
    fallback = _degraded_last(
        [b for b in request.fallback_backends if b in pool and b not in taken], degraded_set
    )
    ordered = preferred + fallback
    if request.fallback_policy is FallbackPolicy.AVAILABLE:
        taken.update(fallback)
        # `eligible` is already degraded-last, so the remaining rank keeps that order.
        ordered += tuple(b for b in eligible if b not in taken)
    return _Candidates(eligible, preferred, fallback, ordered, degraded_set)


def _no_backend(request: RouteRequest, sets: _Candidates) -> NoBackendAvailable:
    return NoBackendAvailable(
        request.policy.value,
        sorted(c.value for c in request.capabilities),
        request.preferred_backends,
        request.excluded_backends,
        sets.eligible,
    )


def _ineligibility(
    request: RouteRequest, state: RoutingState, available: Sequence[BackendInfo], backend: str
) -> list[str]:
    info = next((i for i in available if i.name == backend), None)
    if info is None:
        return ["not available"]
    reasons: list[str] = []
    if backend in request.excluded_backends:
        reasons.append("excluded")
    status = _health_of(request, state, backend)
    if status is Health.UNHEALTHY or status is Health.DOWN:
        reasons.append(status.value)
    reasons.extend(
        f"lacks capability {c.value}" for c in sorted(request.capabilities - info.capabilities)
    )
    return reasons


def _rank_reason(backend: str, sets: _Candidates) -> str:
    if backend in sets.preferred:
        return "selected preferred backend"
    if backend in sets.fallback:
        return "selected fallback backend"
    return "selected first eligible backend"


def _move_to_front(backend: str, names: tuple[str, ...]) -> tuple[str, ...]:
    if names and names[0] == backend:
        return names
    return (backend, *(n for n in names if n != backend))


def _decision(
    request: RouteRequest, sets: _Candidates, candidates: tuple[str, ...], *reasons: str
) -> RouteDecision:
    backend = candidates[0]
    if backend in sets.degraded:
        reasons = (*reasons, f"backend {backend} is degraded")
    return RouteDecision(
        backend=backend,
        candidates=candidates,
        policy=request.policy,
        reasons=reasons,
        affinity_key=request.affinity_key,
        policy_profile_id=request.policy_profile_id,
    )


class _Plan:
    """What ``select`` works out once per request, available backends and health.

    The candidate sets, the round-robin key, and the decisions that depend on
    nothing else: every policy's but a new sticky binding's. A plan never
    holds an error (a failing request is worked out again each time).
    """

    __slots__ = ("_key", "decision", "reused", "rotations", "sets")

    def __init__(self, sets: _Candidates) -> None:
        self.sets = sets
        self._key: RoundRobinKey | None = None
        self.decision: RouteDecision | None = None
        # round robin: the decision at each cursor position; sticky: per bound backend
        self.rotations: list[RouteDecision | None] = [None] * len(sets.ordered)
        self.reused: dict[str, RouteDecision] = {}

    def round_robin_key(self, request: RouteRequest) -> RoundRobinKey:
        """The cursor of this candidate set (built once: its hash is then cached)."""
        key = self._key
        if key is None:
            key = self._key = RoundRobinKey(
                policy=request.policy,
                candidates=self.sets.ordered,
                capabilities=request.capabilities,
                preferred=request.preferred_backends,
                fallback=request.fallback_backends,
                excluded=frozenset(request.excluded_backends),
            )
        return key


class _Plans:
    """The plans of one health view, by (request, available), and the last one used.

    The last one is found by identity: a caller reusing its request object and
    its tuple of backends (the registry's usual caller) skips hashing both.
    """

    __slots__ = ("by_key", "last")

    def __init__(self) -> None:
        self.by_key: dict[tuple[RouteRequest, tuple[BackendInfo, ...]], _Plan] = {}
        self.last: tuple[RouteRequest, tuple[BackendInfo, ...], _Plan] | None = None


def _plan(request: RouteRequest, state: RoutingState, available: Sequence[BackendInfo]) -> _Plan:
    """The plan for ``request`` over ``available`` under ``state.health``, remembered."""
    plans = state._plans
    last = plans.last
    # Identity is safe for a tuple only: a list may have changed since.
    if last is not None and last[0] is request and last[1] is available:
        return last[2]
    backends = available if type(available) is tuple else tuple(available)
    key = (request, backends)
    try:
        plan = plans.by_key.get(key)
    except TypeError:  # an unhashable stand-in for a BackendInfo: work it out every time
        return _Plan(_candidate_sets(request, state, available))
    if plan is None:
        plan = _Plan(_candidate_sets(request, state, available))
        if len(plans.by_key) >= _PLANS_MAX:
            plans.by_key.clear()  # e.g. a sticky request per session id: keep memory bounded
        plans.by_key[key] = plan
    plans.last = (request, backends, plan)
    return plan


def _round_robin(
    request: RouteRequest, state: RoutingState, plan: _Plan
) -> tuple[int, RoundRobinKey]:
    """This turn's position in the candidates, and the cursor to advance."""
    sets = plan.sets
    if not sets.ordered:
        raise _no_backend(request, sets)
    key = plan.round_robin_key(request)
    return state.cursors.get(key, 0) % len(sets.ordered), key


def _rotated(ordered: tuple[str, ...], index: int) -> tuple[str, ...]:
    return ordered[index:] + ordered[:index]


def _fixed_decision(
    request: RouteRequest,
    state: RoutingState,
    available: Sequence[BackendInfo],
    sets: _Candidates,
) -> RouteDecision:
    """The decision of a policy that keeps no memory (every one but round robin and sticky)."""
    policy = request.policy

    if policy is Policy.EXPLICIT:
        named = request.backend
        if named is None:
            if not sets.ordered:
                raise _no_backend(request, sets)
            return _decision(request, sets, sets.ordered, "selected first explicit candidate")
        if named not in sets.eligible:
            raise BackendNotEligible(named, _ineligibility(request, state, available, named))
        return _decision(request, sets, (named,), "selected explicit backend override")

    if policy is Policy.PREFERRED_THEN_FALLBACK:
        if not sets.ordered:
            raise _no_backend(request, sets)
        head = sets.ordered[0]
        return _decision(request, sets, sets.ordered, _rank_reason(head, sets))

    if policy is Policy.CAPABILITY_FIRST:
        if not sets.ordered:
            raise _no_backend(request, sets)
        # First in availability order, but only among the candidates, so that
        # fallback_policy "none" still bounds the choice.
        if len(sets.ordered) == len(sets.eligible):
            chosen = sets.eligible[0]
        else:
            allowed = set(sets.ordered)
            chosen = next(b for b in sets.eligible if b in allowed)
        if request.capabilities:
            wanted = ", ".join(sorted(c.value for c in request.capabilities))
            reason = f"selected backend satisfying capabilities [{wanted}]"
        else:
            reason = _rank_reason(chosen, sets)
        return _decision(request, sets, _move_to_front(chosen, sets.ordered), reason)

    # Policy.FAILOVER
    if not sets.ordered:
        raise _no_backend(request, sets)
    last = request.last_backend
    candidates = sets.ordered
    if last is not None and len(candidates) > 1 and last in candidates:
        candidates = (*(b for b in candidates if b != last), last)
    head = candidates[0]
    if last is None:
        reason = "selected first failover candidate"
    elif head == last:
        reason = "reused last backend because no failover candidate remained"
    else:
        reason = "skipped last backend"
    return _decision(request, sets, candidates, reason)


def select(
    request: RouteRequest | Mapping[str, Any] | None,
    state: RoutingState,
    available: Sequence[BackendInfo],
) -> tuple[RouteDecision, RoutingState]:
    """Choose a backend for ``request``; return the decision and the next state.

    ``available`` lists the runtime's backends in default preference order
    (``BackendInfo``s, or plain names, which declare no capabilities). The
    candidates are those not excluded, not ``unhealthy`` or ``down`` (the
    request's ``health`` wins over ``state.health``), and having every requested
    capability; the policy picks among them. The state changes only for
    ``round_robin`` (its cursor) and a new ``sticky`` binding; otherwise
    ``state`` itself is returned.

    What depends only on the request, ``available`` and ``state.health`` is
    worked out once and remembered with the state, so routing the same
    request again costs a lookup (the decisions returned are immutable and
    may be shared).

    Raises:
        InvalidRouteRequest: the request is malformed, or ``sticky`` lacks an
            ``affinity_key``.
        UnknownCapability: the request names an unknown capability.
        BackendNotEligible: the ``explicit`` backend is not a candidate; its
            ``reasons`` say why.
        NoBackendAvailable: no backend is a candidate.
        InvalidOption: ``available`` holds something that is neither a name
            nor a ``BackendInfo``.
    """
    request = RouteRequest.from_value(request)
    if not all(type(info) is BackendInfo for info in available):
        available = backend_infos(available)
    plan = _plan(request, state, available)
    policy = request.policy

    if policy is Policy.ROUND_ROBIN:
        index, key = _round_robin(request, state, plan)
        decision = plan.rotations[index]
        if decision is None:
            sets = plan.sets
            decision = _decision(
                request, sets, _rotated(sets.ordered, index), "selected by round robin policy"
            )
            plan.rotations[index] = decision
        return decision, state._advanced(key, index)

    if policy is Policy.STICKY:
        affinity_key = request.affinity_key
        if affinity_key is None:
            raise InvalidRouteRequest(
                "affinity_key", "policy 'sticky' needs an affinity_key (e.g. the session id)"
            )
        sets = plan.sets
        bound = state.affinity.get(affinity_key)
        # Reuse wherever the bound backend now ranks: stickiness beats preference order.
        if bound is not None and bound in sets.ordered:
            decision = plan.reused.get(bound)
            if decision is None:
                candidates = _move_to_front(bound, sets.ordered)
                decision = _decision(request, sets, candidates, "reused sticky affinity backend")
                plan.reused[bound] = decision
            return decision, state
        index, key = _round_robin(request, state, plan)
        reasons = ["selected backend and bound sticky affinity"]
        if bound is not None:
            reasons.append(f"previous backend {bound} is no longer a candidate")
        decision = _decision(request, sets, _rotated(sets.ordered, index), *reasons)
        return decision, state._advanced(key, index).bind(affinity_key, decision.backend)

    decision = plan.decision
    if decision is None:
        decision = plan.decision = _fixed_decision(request, state, available, plan.sets)
    return decision, state
