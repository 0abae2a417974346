"""Routing methods of ``Runtime`` (the explicit form of ``beamagent.routing``).

``select_backend`` builds a :class:`~beamagent.routing.policies.RouteRequest` in
the caller's thread, then asks the runtime's registry actor, which runs the
pure :func:`~beamagent.routing.policies.select` over the runtime's available
backends and keeps the state (sticky bindings, round-robin cursors, health
overrides), the decision journal and the session index.

``start_session`` routes through the hooks below; :meth:`RoutingApi.child_spec`
routes when a supervisor of the user's own starts the session.
"""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import pykka
from pykka.messages import ProxyCall

from beamagent import telemetry
from beamagent.backends.base import BackendHandler
from beamagent.backends.cassette import Cassette
from beamagent.backends.launch import cli_not_required
from beamagent.backends.names import KNOWN_BACKENDS, canonical_backend_name
from beamagent.capabilities import Capability
from beamagent.errors import (
    BeamAgentError,
    ConnectTimeout,
    InvalidOption,
    InvalidRouteRequest,
    SessionError,
    UnknownBackend,
)
from beamagent.log import get_logger
from beamagent.routing.policies import BackendInfo, Health, Policy, RouteDecision, RouteRequest
from beamagent.routing.registry import SELECT
from beamagent.session.actor import SessionActor, SessionConfig, first_handler_options
from beamagent.session.handle import Session
from beamagent.store.recorder import StoreRecorder
from beamagent.tools._api import TOOL_SESSION_OPTIONS
from supervisors import ChildSpec, Down, Normal, lookup, monitor, shutdown, whereis
from supervisors._ids import new_hex128

if TYPE_CHECKING:
    from beamagent.runtime import BackendSpec
    from beamagent.store.base import SessionStore
    from beamagent.tools._api import SessionTools
    from supervisors import DynamicSupervisorRef

__all__ = ["AVAILABILITY_TTL", "RoutingApi", "SessionStart"]

log = get_logger(__name__)

_UNSET: Any = object()
_SESSION_SHUTDOWN = 10.0  # seconds a supervisor waits for a session to stop, as Runtime's own
AVAILABILITY_TTL = 1.0
"""Seconds routing reuses the list of available backends before checking prerequisites again."""


def _is_auto(value: object) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() == "auto")


def _given_fields(request: RouteRequest | Mapping[str, Any] | None, key: str) -> dict[str, Any]:
    """The keys a request sets: a mapping's non-None items, a RouteRequest's non-defaults."""
    if request is None:
        return {}
    if isinstance(request, Mapping):
        return {k: v for k, v in request.items() if v is not None}
    if isinstance(request, RouteRequest):
        defaults = RouteRequest(backend=request.backend)
        given: dict[str, Any] = {}
        for field in attrs.fields(RouteRequest):
            value = getattr(request, field.name)
            changed = field.name == "backend" or value != getattr(defaults, field.name)
            if changed and value is not None:
                given[field.name] = value
        return given
    raise InvalidRouteRequest(
        key, f"expected a RouteRequest, a mapping or None, got {type(request).__name__}"
    )


def _merge(base: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """Derived defaults under the caller's request: the request's keys win.

    A request that names a policy other than ``explicit`` without naming a
    backend drops the derived backend (it would contradict that policy).
    """
    merged = {**base, **given}
    policy = given.get("policy")
    if (
        "backend" in base
        and "backend" not in given
        and policy is not None
        and str(policy).strip().lower() != Policy.EXPLICIT.value
    ):
        del merged["backend"]
    return merged


SESSION_OPTIONS = frozenset(
    {
        "session_id",
        "cassette",
        "connect_timeout",
        "init_timeout",
        "buffer_max",
        "error_linger",
        "drain_timeout",
        "idle_timeout",
        "query_defaults",
    }
    | TOOL_SESSION_OPTIONS
)
"""The options ``start_session`` takes for the session itself (not its backend handler)."""


@functools.cache
def _allowed_options(handler: type[BackendHandler]) -> frozenset[str]:
    """The options a session on ``handler``'s backend takes (its own and the session's)."""
    return handler.option_names() | SESSION_OPTIONS


@functools.lru_cache(maxsize=256)  # one per runtime, shared by its sessions (not one each)
def _backend_health_hook(registry_name: Hashable) -> Callable[[str, str, str], None]:
    """Tell the registry (by name, without waiting) what a backend said of its health.

    One hook per registry, shared by its runtime's sessions (not a closure each).
    """

    def report(backend: str, status: str, reason: str) -> None:
        registry = whereis(registry_name)
        if registry is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                registry.ask(ProxyCall(("set_health",), (backend, status), {}), block=False)
        log.warning("backend_marked", backend=backend, status=status, reason=reason)

    return report


class SessionStart:
    """The ``start`` of a routed session's ``ChildSpec`` (see ``RoutingApi.child_spec``).

    The first start resolves ``resume``, routes, builds the session's
    configuration and starts the session actor; later starts (restarts by the
    supervisor) reuse that configuration, so a restarted session stays on its
    backend and resumes its conversation, as under the runtime's own
    ``sessions`` supervisor. Each start returns once the session is ready, or
    raises its start error (the supervisor reports ``StartChildError``).
    """

    __slots__ = ("_backend", "_config", "_opts", "_runtime", "session_id")

    def __init__(
        self, runtime: RoutingApi, session_id: str, backend: str | None, opts: dict[str, Any]
    ) -> None:
        self._runtime = runtime
        self.session_id = session_id
        self._backend = backend
        self._opts = opts
        self._config: SessionConfig | None = None

    def __repr__(self) -> str:
        return f"<SessionStart {self.session_id}>"

    @property
    def config(self) -> SessionConfig | None:
        """The session's configuration once it first started (its backend, lineage...)."""
        return self._config

    def __call__(self, *_extra_arguments: Any) -> pykka.ActorRef[Any]:
        """Start the session actor; ``extra_arguments`` of a dynamic supervisor are ignored."""
        runtime = self._runtime
        first = self._config is None
        if self._config is None:
            opts = dict(self._opts)
            backend = runtime._resume_start_options(self._backend, opts)
            backend_name, decision = runtime._route_start_options(backend, opts)
            config = runtime._session_config(backend_name, opts, decision)
            config.lineage.stored_history = self._opts.get("resume") is not None
        else:
            config = self._config
        ref = SessionActor.start(config)
        try:
            wait = config.connect_timeout + config.init_timeout + 5.0
            try:
                ref.ask(ProxyCall(("await_ready",), (), {}), timeout=wait)
            except pykka.Timeout:
                raise ConnectTimeout(
                    f"session {config.session_id} was not ready within {wait} s",
                    reason="timeout",
                ) from None
            except pykka.ActorDeadError:
                raise SessionError(
                    f"session {config.session_id} ended before it was ready", reason="ended"
                ) from None
        except BaseException:
            shutdown(ref, _SESSION_SHUTDOWN)
            raise
        self._config = config
        runtime._index_external_session(config, ref)
        if first:
            runtime._route_decided(config.session_id, config.lineage.route_decision)
        return ref


class RoutingApi:
    """Mixed into ``Runtime``: backend selection by policy, health, and routed child specs."""

    _routable_cache: tuple[float, tuple[BackendInfo, ...]] | None = None

    if TYPE_CHECKING:
        id: str
        _backends: dict[str, BackendSpec]
        _session_defaults: dict[str, Any]
        _session_budget: tuple[int, float] | None
        _names: dict[str, tuple[str, ...]]
        _store: SessionStore
        _recorder: StoreRecorder

        @property
        def registry(self) -> pykka.ActorRef[Any]: ...

        @property
        def store_actor(self) -> pykka.ActorRef[Any]: ...

        @property
        def sessions_supervisor(self) -> DynamicSupervisorRef: ...

        def _registry_call(self, method: str, *args: Any, timeout: float = ...) -> Any: ...

        def _registry_ask(self, message: Any, timeout: float = ...) -> Any: ...

        def backend_spec(self, name: str) -> BackendSpec: ...

        def available_backends(self) -> list[BackendInfo]: ...

        def _session_name(self, session_id: str) -> tuple[str, ...]: ...

        def _session_ref(
            self, session_id: str, timeout: float | None = ...
        ) -> pykka.ActorRef[Any]: ...

        def _resume_start_options(
            self, backend: str | None, opts: dict[str, Any]
        ) -> str | None: ...

        def _session_tools(
            self, spec: BackendSpec, merged: dict[str, Any], session_id: str
        ) -> SessionTools: ...

    # --- selection ------------------------------------------------------------------------

    def select_backend(
        self,
        session_or_request: Session | str | RouteRequest | Mapping[str, Any] | None = None,
        request: RouteRequest | Mapping[str, Any] | None = _UNSET,
    ) -> RouteDecision:
        """Choose a backend by policy; the decision is journaled and state is updated.

        Two forms, as the seed's ``select_backend/1`` and ``/2``:

        * ``select_backend(request)``: a :class:`RouteRequest`, a mapping of its
          keys, or ``None`` (all defaults: the first available backend in
          preference order).
        * ``select_backend(session_or_opts, request)``: defaults derived from a
          session, overridden by ``request``. A ``Session`` or a session id
          becomes the ``affinity_key``, and the backend that session runs on
          (from the session index) the ``last_backend``. Session options
          (a mapping, as given to ``start_session``) contribute their
          ``routing`` request, their ``backend`` (when not ``"auto"``) and
          their ``session_id`` (as the affinity key).

        A lone ``Session`` or session id is the second form with no request.

        Example::

            rt.select_backend({"policy": "round_robin"}).backend
            rt.select_backend(session, {"policy": "failover"})  # away from its backend

        Raises:
            InvalidRouteRequest: a malformed request (the error names the key).
            UnknownCapability: an unknown capability id.
            BackendNotEligible: the named backend is excluded, unhealthy or
                lacks a capability.
            NoBackendAvailable: no backend satisfies the request.
        """
        if request is _UNSET:
            # The common call, select_backend(request): no merging, no session.
            if type(session_or_request) is RouteRequest:
                return self._select(session_or_request, None, from_index=False)
            if not isinstance(session_or_request, Session | str):
                route = RouteRequest.from_value(session_or_request)
                return self._select(route, None, from_index=False)
        base, session_id = self._base_request(session_or_request)
        given = _given_fields(None if request is _UNSET else request, "request")
        route = RouteRequest.from_value(_merge(base, given))
        return self._select(route, session_id, from_index=session_id is not None)

    def _base_request(self, session_or_opts: object) -> tuple[dict[str, Any], str | None]:
        """The request a session or session options imply, and the session id if any."""
        if isinstance(session_or_opts, Session):
            return {"affinity_key": session_or_opts.session_id}, session_or_opts.session_id
        if isinstance(session_or_opts, str):
            if not session_or_opts.strip():
                raise InvalidRouteRequest("session_or_opts", "a session id must not be empty")
            return {"affinity_key": session_or_opts}, session_or_opts
        if isinstance(session_or_opts, Mapping):
            return self._opts_request(session_or_opts)
        raise InvalidRouteRequest(
            "session_or_opts",
            "expected a Session, a session id or a mapping of session options, "
            f"got {type(session_or_opts).__name__}",
        )

    def _opts_request(self, opts: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
        base = _given_fields(opts.get("routing"), "routing")
        backend = opts.get("backend")
        if backend is not None and not _is_auto(backend):
            routed = base.get("backend")
            if (
                routed is not None
                and not _is_auto(routed)
                and canonical_backend_name(routed) != canonical_backend_name(backend)
            ):
                raise InvalidRouteRequest(
                    "backend",
                    f"the session option backend={backend!r} contradicts the routing "
                    f"request's backend={routed!r}; name it once",
                )
            base["backend"] = backend
        session_id = opts.get("session_id")
        if isinstance(session_id, str) and session_id.strip():
            base.setdefault("affinity_key", session_id)
            return base, session_id
        return base, None

    def _select(
        self, route: RouteRequest, session_id: str | None, *, from_index: bool
    ) -> RouteDecision:
        message = (SELECT, route, self._routable_backends(), session_id, from_index)
        if not telemetry.ENABLED or not telemetry.tracing():
            # No span would be made: skip the context manager and the attributes dict.
            decision: RouteDecision = self._registry_ask(message)
            return decision
        # In the caller's thread, so a routed start_session's span is its parent.
        with telemetry.span(
            "beamagent.route",
            {"beamagent.routing.policy": route.policy.value, "beamagent.session_id": session_id},
        ) as span:
            decision = self._registry_ask(message)
            telemetry.set_attributes(span, _route_attributes(decision))
        return decision

    def _routable_backends(self) -> tuple[BackendInfo, ...]:
        """``available_backends()``, re-checked at most every ``AVAILABILITY_TTL`` seconds.

        Checking prerequisites can mean scanning ``PATH`` for a CLI, which
        would cost more than the selection itself.
        """
        cached = self._routable_cache
        now = time.monotonic()
        if cached is not None and now - cached[0] < AVAILABILITY_TTL:
            return cached[1]
        infos = tuple(self.available_backends())
        self._routable_cache = (now, infos)
        return infos

    # --- health, memory, journal --------------------------------------------------------------

    def set_health(self, backend: str, status: Health | str | None) -> None:
        """Override what routing believes about a backend's health.

        ``healthy`` and ``degraded`` backends can be chosen (a degraded one
        after the healthy ones of the same rank); ``unhealthy`` and ``down``
        never are. ``None`` removes the override. A request's own ``health``
        key wins over these overrides. Overrides survive :meth:`clear_routing`.

        Raises:
            UnknownBackend: ``backend`` is neither registered nor a known backend.
            InvalidRouteRequest: ``status`` is not a health status.
        """
        name = canonical_backend_name(backend, key="health")
        if name not in self._backends and name not in KNOWN_BACKENDS:
            raise UnknownBackend(backend, sorted({*self._backends, *KNOWN_BACKENDS}))
        self._registry_call("set_health", name, status)

    def backend_health(self) -> dict[str, str]:
        """Routing's view of each registered backend: its override, else ``healthy``."""
        overrides: dict[str, str] = self._registry_call("health_overrides")
        return {name: overrides.get(name, Health.HEALTHY.value) for name in self._backends}

    def clear_routing(self) -> None:
        """Forget sticky bindings and round-robin cursors (health overrides stay).

        Also re-checks which backends are available at the next selection.
        """
        self._routable_cache = None
        self._registry_call("clear")

    def routing_decisions(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The decision journal, newest first (at most ``limit`` entries).

        Each entry is the decision's ``to_dict()`` plus ``at`` (epoch seconds),
        ``ok`` and, when the decision was for a session, ``session_id``; a
        failed selection has ``ok=False``, ``policy``, ``error`` and ``message``.
        The journal keeps the last 1,000 selections.

        Raises:
            InvalidOption: ``limit`` is not an int >= 0.
        """
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 0
        ):
            raise InvalidOption(f"limit must be None or an int >= 0; got {limit!r}")
        decisions: list[dict[str, Any]] = self._registry_call("decisions", limit)
        return decisions

    def ensure_tables(self) -> None:
        """Make sure the routing registry is running (it always is in a live runtime).

        Idempotent. Waits for the registry if its supervisor is restarting it.

        Raises:
            BeamAgentError: the runtime is stopped.
        """
        _ = self.registry

    # --- start_session hooks -------------------------------------------------------------------

    def _route_start_options(
        self, backend: str | None, opts: dict[str, Any]
    ) -> tuple[str, dict[str, Any] | None]:
        """Decide the backend for ``start_session`` and strip routing keys from ``opts``.

        Called by ``Runtime.start_session`` before anything is started; returns
        the backend name and the route decision (as a dict) when routing chose it.
        Routing happens when ``backend`` is absent or ``"auto"``, or when a
        ``routing`` request is given (a named backend then means policy
        ``explicit``, checked against the request's constraints). A named
        backend without ``routing`` is used as is.
        """
        routing = opts.pop("routing", None)
        if routing is None and not _is_auto(backend):
            assert backend is not None
            return backend, None
        session_id = opts.get("session_id")
        if session_id is None:
            # Known before routing, so it can be the affinity key and the journal's session.
            session_id = opts["session_id"] = f"session_{uuid.uuid4().hex}"
        implied = {
            "routing": routing,
            "backend": None if _is_auto(backend) else backend,
            "session_id": session_id,
        }
        base, sid = self._opts_request(implied)
        if opts.get("tools"):  # only backends that can run the session's tools
            wanted = list(base.get("capabilities") or [])
            if Capability.IN_PROCESS_MCP.value not in wanted:
                base["capabilities"] = [*wanted, Capability.IN_PROCESS_MCP.value]
        decision = self._select(RouteRequest.from_value(base), sid, from_index=sid is not None)
        data: dict[str, Any] = decision.to_dict()
        return decision.backend, data

    def _route_decided(self, session_id: str, decision: Mapping[str, Any] | None) -> None:
        """Called once a routed session is ready (records the decision in the log)."""
        if decision is not None:
            log.info(
                "session_routed",
                session_id=session_id,
                backend=decision.get("backend"),
                policy=decision.get("policy"),
            )

    # --- child specs -------------------------------------------------------------------------

    def child_spec(self, opts: Mapping[str, Any] | None = None, /, **kwargs: Any) -> ChildSpec:
        """A ``supervisors.ChildSpec`` for a session that routes when it starts.

        Put it under a supervisor of your own; the session lives in this
        runtime (same store, registry and name space): ``spec.id`` is its
        session id, ``runtime.session(spec.id)`` its handle. Options are those
        of ``start_session`` (``backend``, ``routing``, ``session_id``,
        ``resume``...), as a mapping or keywords. The spec is ``transient`` with a 10 s shutdown;
        change that with ``attrs.evolve(spec, restart=...)``.

        The first start routes and waits until the session is ready (a start
        failure is the supervisor's ``StartChildError``); a restart keeps the
        chosen backend and resumes the conversation. Stop your supervisor
        before stopping the runtime.

        Example::

            spec = rt.child_spec(routing={"policy": "round_robin"})
            sup = Supervisor.start(children=[spec])
            rt.session(spec.id).query("hi")

        Raises:
            InvalidOption, UnknownBackend, InvalidRouteRequest,
            UnknownCapability: malformed options, found before anything starts.
        """
        options = {**(opts or {}), **kwargs}
        backend = options.pop("backend", None)
        resume = options.get("resume")
        if options.get("session_id") is None and resume is not None:
            # A resumed session keeps its id, which names the child.
            options["session_id"] = resume.session_id if isinstance(resume, Session) else resume
        session_id = options.get("session_id") or f"session_{uuid.uuid4().hex}"
        options["session_id"] = session_id
        self._check_session_id(session_id)
        if options.get("routing") is not None:
            # Fail now, not in the supervisor, on a malformed request.
            implied = {**options, "backend": backend}
            RouteRequest.from_value(self._opts_request(implied)[0])
        if not _is_auto(backend):
            spec = self.backend_spec(backend)
            if options.get("routing") is None:
                self._check_options(spec, {k: v for k, v in options.items() if k != "resume"})
        start = SessionStart(self, session_id, backend, options)
        name: Hashable = self._session_name(session_id)
        budget = self._session_budget
        return ChildSpec(
            session_id,
            start,
            restart="transient",
            shutdown=_SESSION_SHUTDOWN,
            name=name,
            max_restarts=None if budget is None else budget[0],
            max_seconds=5.0 if budget is None else budget[1],
        )

    def _check_session_id(self, session_id: object) -> None:
        from beamagent.session.actor import SESSION_ID

        if not isinstance(session_id, str) or not SESSION_ID.match(session_id):
            raise InvalidOption(
                "session_id must be 1-200 characters of letters, digits and '_.:-'; "
                f"got {session_id!r}"
            )

    def _check_options(self, spec: BackendSpec, opts: Mapping[str, Any]) -> dict[str, Any]:
        merged = {**self._session_defaults, **spec.options, **opts}
        allowed = _allowed_options(spec.handler)
        if not allowed.issuperset(merged):
            unknown = sorted(set(merged) - allowed)
            raise InvalidOption(
                f"unknown option(s) {', '.join(map(repr, unknown))} for backend {spec.name!r}; "
                f"accepted: {', '.join(sorted(allowed))}"
            )
        return merged

    def _session_config(
        self, backend: str, opts: Mapping[str, Any], decision: dict[str, Any] | None
    ) -> SessionConfig:
        """The configuration of a new session on ``backend`` (what ``start_session`` builds)."""
        spec = self.backend_spec(backend)
        merged = self._check_options(spec, opts)
        # 128 random bits, as uuid4().hex gave (less its fixed version bits), faster.
        session_id = merged.pop("session_id", None)
        if session_id:
            self._check_session_id(session_id)
        else:  # valid by construction: no pattern to match
            session_id = f"session_{new_hex128()}"
        cassette = merged.pop("cassette", None)
        if cassette is not None and not isinstance(cassette, Cassette):
            raise InvalidOption(f"option 'cassette' must be a Cassette; got {cassette!r}")
        tools = self._session_tools(spec, merged, session_id)  # takes tools, tool_context
        try:
            session_cassette = None if cassette is None else cassette.session(spec.name)
            options: dict[str, Any] = {}
            session_options: dict[str, Any] = {}
            for key, value in merged.items():
                (session_options if key in SESSION_OPTIONS else options)[key] = value
            options.update(tools.handler_options)
            config = SessionConfig(
                session_id=session_id,
                backend=spec.name,
                handler_cls=spec.handler,
                options=options,
                recorder=self._recorder,
                info=tools.info,
                on_stopped=tools.on_stopped,
                cassette=session_cassette,
                **session_options,
            )
            # The backend's own options are checked by its handler: build one now, in the
            # caller's thread, so a bad option fails before anything is started or stored.
            # The session's first start uses it (one handler per start, not two).
            if cassette is not None and cassette.replaying:
                with cli_not_required():
                    config.first_handler = spec.handler(first_handler_options(config))
            else:
                config.first_handler = spec.handler(first_handler_options(config))
        except BaseException:
            if tools.on_stopped is not None:
                tools.on_stopped(session_id)
            raise
        config.on_backend_health = _backend_health_hook(self._names["registry"])
        config.lineage.route_decision = decision
        return config

    def _index_external_session(self, config: SessionConfig, ref: pykka.ActorRef[Any]) -> None:
        """Index a session started by a user's supervisor; unindex it when it ends."""
        session_id, backend, urn = config.session_id, config.backend, ref.actor_urn
        decision = config.lineage.route_decision or {}
        sticky = decision.get("policy") == Policy.STICKY.value
        affinity = session_id if sticky and decision.get("affinity_key") == session_id else None
        self._registry_call("register_session", session_id, backend, urn, affinity)
        registry_name = self._names["registry"]

        def ended(_down: Down) -> None:
            # Runs in the ending session's thread: never block, never raise.
            registry = whereis(registry_name)
            if registry is not None:
                with contextlib.suppress(pykka.ActorDeadError):
                    registry.tell(ProxyCall(("unregister_session",), (session_id, urn), {}))

        monitor(ref, watcher=ended)

    def _stop_external_session(self, session_id: str) -> bool:
        """Stop a live session that a user's supervisor started (``child_spec``).

        It ends with reason ``normal``, so a transient spec is not restarted.
        Returns False when the session is not such a session (it is then the
        runtime's own, for ``stop_session``).

        Raises:
            SessionNotFound: no live session has this id.
        """
        ref = self._session_ref(session_id)
        process = lookup(ref)
        own = whereis(self._names["sessions"])
        if process is None or own is None or process.parent_urn == own.actor_urn:
            return False
        shutdown(ref, _SESSION_SHUTDOWN, Normal())
        with contextlib.suppress(BeamAgentError, pykka.ActorDeadError):
            self._registry_call("unregister_session", session_id, ref.actor_urn)
        return True


def _route_attributes(decision: RouteDecision) -> dict[str, Any]:
    """A route decision as ``beamagent.route`` span attributes."""
    return {
        "beamagent.routing.policy": decision.policy.value,
        "beamagent.routing.backend": decision.backend,
        "beamagent.routing.candidates": decision.candidates,
        "beamagent.routing.reasons": decision.reasons,
        "beamagent.routing.policy_profile_id": decision.policy_profile_id,
    }
