"""``Runtime``: the application — the root supervision tree, backends, and the store.

::

    beamagent (one_for_one)
    ├── registry   routing state + session index (permanent)
    ├── store      the store's single writer (permanent)
    ├── sessions   DynamicSupervisor of session actors (transient children)
    └── runs       DynamicSupervisor of graph runs

``stop()`` shuts the tree down in reverse order: runs, sessions, then the
store (after every session has recorded its last message), then the registry.
Several runtimes can live in one process; each names its processes under its
own id. ``default_runtime()`` is the one the module-level API uses.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Mapping
from typing import Any, cast

import pykka
from pykka.messages import ProxyCall

from beamagent import lifecycle
from beamagent.backends.base import BackendHandler
from beamagent.backends.local import LocalHandler
from beamagent.backends.names import canonical_backend_name
from beamagent.errors import (
    BeamAgentError,
    InvalidOption,
    SessionError,
    SessionNotFound,
    UnknownBackend,
)
from beamagent.graph.api import GraphApi
from beamagent.log import get_logger
from beamagent.messages import MessageType
from beamagent.routing.api import RoutingApi
from beamagent.routing.policies import BackendInfo
from beamagent.routing.registry import RoutingRegistry
from beamagent.session.actor import SessionActor
from beamagent.session.handle import CALL_TIMEOUT, Session
from beamagent.store import SessionStore, open_store
from beamagent.store.actor import StoreActor
from beamagent.store.api import StoreApi
from supervisors import (
    AlreadyRegistered,
    ChildSpec,
    DynamicSupervisor,
    DynamicSupervisorRef,
    StartChildError,
    Supervisor,
    SupervisorRef,
    WaitTimeout,
    monitor,
    whereis,
)

__all__ = ["BackendSpec", "Runtime", "default_runtime", "shutdown_default_runtime"]

log = get_logger(__name__)

SESSION_OPTIONS = frozenset(
    {
        "session_id",
        "connect_timeout",
        "init_timeout",
        "buffer_max",
        "error_linger",
        "drain_timeout",
        "query_defaults",
    }
)
_runtime_ids = itertools.count(1)


class BackendSpec:
    """A backend registered with a runtime: its handler class and default options."""

    __slots__ = ("handler", "name", "options")

    def __init__(
        self, name: str, handler: type[BackendHandler], options: Mapping[str, Any] | None = None
    ) -> None:
        if not (isinstance(handler, type) and issubclass(handler, BackendHandler)):
            raise InvalidOption(f"backend {name!r}: {handler!r} is not a BackendHandler class")
        self.name = name
        self.handler = handler
        self.options = dict(options or {})

    def info(self) -> BackendInfo:
        """What routing needs to know about this backend."""
        return BackendInfo(self.name, self.handler.capabilities)


def _backend_specs(backends: Mapping[str, Any] | None) -> dict[str, BackendSpec]:
    from beamagent.backends.claude import ClaudeHandler
    from beamagent.backends.codex import CodexHandler
    from beamagent.backends.openai import OpenAIHandler

    specs = {
        "claude": BackendSpec("claude", ClaudeHandler),
        "codex": BackendSpec("codex", CodexHandler),
        "openai": BackendSpec("openai", OpenAIHandler),
        "local": BackendSpec("local", LocalHandler),
    }
    for raw_name, value in (backends or {}).items():
        name = canonical_backend_name(raw_name)
        if isinstance(value, BackendSpec):
            specs[name] = value
        elif isinstance(value, tuple):
            specs[name] = BackendSpec(name, value[0], value[1] if len(value) > 1 else None)
        else:
            specs[name] = BackendSpec(name, value)
    return specs


class Runtime(RoutingApi, StoreApi, GraphApi):
    """A beamagent application: supervisors, backends, routing and the store.

    Args:
        store: ``None`` (the default file: ``$BEAMAGENT_STORE`` or the user
            data dir), ``":memory:"``, a path, or a ``SessionStore`` object.
        backends: extra backends by name: a handler class, ``(handler_class,
            default_options)`` or a ``BackendSpec``. ``local`` is always there.
        session_defaults: default session options (e.g. ``connect_timeout``).
        handle_signals: stop gracefully on SIGTERM (default True; see
            :mod:`beamagent.lifecycle`). False leaves SIGTERM to the host.

    Use it as a context manager, or call :meth:`stop`. A runtime that is
    still running when the interpreter exits is stopped then (see
    :mod:`beamagent.lifecycle`).

    Raises:
        BeamAgentError: the interpreter is exiting.
    """

    def __init__(
        self,
        store: Any = None,
        backends: Mapping[str, Any] | None = None,
        *,
        session_defaults: Mapping[str, Any] | None = None,
        handle_signals: bool = True,
    ) -> None:
        self.id = f"rt{next(_runtime_ids)}"
        self._backends = _backend_specs(backends)
        self._session_defaults = dict(session_defaults or {})
        self._owns_store = not isinstance(store, SessionStore)
        self.store: SessionStore = open_store(store)
        self._session_backends: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stopped = False
        ns = ("beamagent", self.id)
        self._names = {
            "registry": (*ns, "registry"),
            "store": (*ns, "store"),
            "sessions": (*ns, "sessions"),
            "runs": (*ns, "runs"),
        }
        children = [
            ChildSpec("registry", (RoutingRegistry, (), {}), name=self._names["registry"]),
            ChildSpec("store", (StoreActor, (self.store,), {}), name=self._names["store"]),
            ChildSpec(
                "sessions",
                (DynamicSupervisor, (), {"max_restarts": 100, "max_seconds": 10.0}),
                type="supervisor",
                name=self._names["sessions"],
            ),
            ChildSpec(
                "runs",
                (DynamicSupervisor, (), {"max_restarts": 100, "max_seconds": 10.0}),
                type="supervisor",
                name=self._names["runs"],
            ),
        ]
        with lifecycle.signals_deferred():  # a SIGTERM now must not leave a tree unregistered
            try:
                self.root: SupervisorRef = Supervisor.start(children=children, max_restarts=10)
            except BaseException:
                if self._owns_store:
                    self.store.close()
                raise
            lifecycle.runtime_started(self, handle_signals=handle_signals)
        log.info("runtime_started", runtime=self.id, backends=sorted(self._backends))

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every run and session, then the store and the registry. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        with lifecycle.signals_deferred():  # a SIGTERM now waits until the store is closed
            try:
                with contextlib.suppress(pykka.ActorDeadError):
                    self.root.stop(timeout=60)
                if self._owns_store:
                    self.store.close()
            finally:
                lifecycle.runtime_stopped(self)
        log.info("runtime_stopped", runtime=self.id)

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopped

    def _child(self, key: str) -> pykka.ActorRef[Any]:
        ref = whereis(self._names[key])
        if ref is None:
            # The root may be restarting it: its answer means pending exits are handled.
            try:
                self.root.count_children(timeout=CALL_TIMEOUT)
            except pykka.ActorDeadError:
                raise BeamAgentError(f"runtime {self.id} is stopped") from None
            ref = whereis(self._names[key])
        if ref is None:
            raise BeamAgentError(f"runtime {self.id} has no {key} process (stopped?)")
        return ref

    @property
    def registry(self) -> pykka.ActorRef[Any]:
        """The routing registry actor."""
        return self._child("registry")

    @property
    def sessions_supervisor(self) -> DynamicSupervisorRef:
        """The dynamic supervisor of session actors."""
        return cast(DynamicSupervisorRef, self._child("sessions"))

    @property
    def runs_supervisor(self) -> DynamicSupervisorRef:
        """The dynamic supervisor of graph runs."""
        return cast(DynamicSupervisorRef, self._child("runs"))

    @property
    def store_actor(self) -> pykka.ActorRef[Any]:
        """The store's writer actor."""
        return self._child("store")

    def _registry_call(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT) -> Any:
        return self.registry.ask(ProxyCall((method,), args, {}), timeout=timeout)

    def store_write(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run a mutating store method through the store actor (the single writer)."""
        return self.store_actor.ask(
            ProxyCall(("write",), (method, args, kwargs), {}), timeout=CALL_TIMEOUT
        )

    # --- backends ---------------------------------------------------------------------------

    def backend_spec(self, name: str) -> BackendSpec:
        """The registered backend ``name`` (aliases accepted).

        Raises:
            UnknownBackend: no backend of that name is registered.
        """
        canonical = canonical_backend_name(name)
        spec = self._backends.get(canonical)
        if spec is None:
            raise UnknownBackend(name, sorted(self._backends))
        return spec

    def backends(self) -> list[str]:
        """Names of the registered backends."""
        return list(self._backends)

    def available_backends(self) -> list[BackendInfo]:
        """Registered backends whose prerequisites are present, in preference order."""
        from beamagent.backends.names import KNOWN_BACKENDS

        order = {name: i for i, name in enumerate(KNOWN_BACKENDS)}
        ready = [s for s in self._backends.values() if s.handler.availability()[0]]
        ready.sort(key=lambda s: (order.get(s.name, len(order)), s.name))
        return [s.info() for s in ready]

    def backend_availability(self) -> dict[str, tuple[bool, str]]:
        """For every registered backend: whether it is available, and why not."""
        return {name: spec.handler.availability() for name, spec in self._backends.items()}

    # --- sessions ----------------------------------------------------------------------------

    def _session_name(self, session_id: str) -> tuple[str, ...]:
        return ("beamagent", self.id, "session", session_id)

    def _session_ref(self, session_id: str) -> pykka.ActorRef[Any]:
        name = self._session_name(session_id)
        ref = whereis(name)
        if ref is None:
            # Between a crash and its restart the name is free: a call to the
            # supervisor returns only after it handled the exit (and restarted).
            with contextlib.suppress(pykka.ActorDeadError, BeamAgentError):
                self.sessions_supervisor.count_children(timeout=CALL_TIMEOUT)
            ref = whereis(name)
        if ref is None:
            raise SessionNotFound(session_id)
        return ref

    def _complete_types(self, session_id: str) -> frozenset[MessageType]:
        backend = self._session_backends.get(session_id, "local")
        spec = self._backends.get(backend)
        return spec.handler.complete_types if spec else frozenset({MessageType.RESULT})

    def start_session(self, backend: str | None = None, **opts: Any) -> Session:
        """Start a session on ``backend`` and return its handle once it is ready.

        Options: ``session_id`` (default ``session_<32 hex>``), ``connect_timeout``
        and ``init_timeout`` (15 s), ``buffer_max`` (10 MB), ``error_linger``
        (1 s), ``drain_timeout`` (5 s), ``query_defaults``, plus the backend's
        own options (``model``, ``permission_mode``, ``cwd``...).

        Raises:
            UnknownBackend, InvalidOption: bad backend or option.
            ConnectTimeout, TransportError, SessionError: the backend did not start.
        """
        opts = dict(opts)
        resuming = opts.get("resume") is not None
        backend = self._resume_start_options(backend, opts)
        backend_name, decision = self._route_start_options(backend, opts)
        config = self._session_config(backend_name, opts, decision)
        session_id = config.session_id
        if whereis(self._session_name(session_id)) is not None:
            raise InvalidOption(f"session {session_id!r} is already running")
        if not resuming and self._stored(session_id):
            raise InvalidOption(
                f"session {session_id!r} already has a stored history; "
                f"continue it with start_session(resume={session_id!r})"
            )
        child = ChildSpec(
            session_id,
            (SessionActor, (config,), {}),
            restart="transient",
            shutdown=10.0,
            name=self._session_name(session_id),
        )
        try:
            ref = self.sessions_supervisor.start_child(child, timeout=CALL_TIMEOUT)
        except StartChildError as exc:
            reason = exc.reason
            if isinstance(reason, AlreadyRegistered):
                raise InvalidOption(f"session {session_id!r} is already running") from None
            if isinstance(reason, BeamAgentError):
                raise reason from None
            raise SessionError(
                f"session {session_id} failed to start: {reason!r}", reason=reason
            ) from reason
        self._session_backends[session_id] = config.backend
        session = Session(self, session_id)
        wait = config.connect_timeout + config.init_timeout + 5.0
        try:
            session._call("await_ready", timeout=wait)
        except BaseException:
            self._session_backends.pop(session_id, None)
            self._quietly_stop(ref)
            raise
        self._registry_call("register_session", session_id, config.backend, ref.actor_urn)
        self._route_decided(session_id, config.lineage.route_decision)
        return session

    def _stored(self, session_id: str) -> bool:
        try:
            self.store.get_session(session_id)
        except SessionNotFound:
            return False
        return True

    def session(self, session_id: str) -> Session:
        """The handle of a live session.

        Raises:
            SessionNotFound: no live session has this id.
        """
        self._session_ref(session_id)
        return Session(self, session_id)

    def live_sessions(self) -> list[str]:
        """Ids of the sessions running now."""
        return [sid for sid in list(self._session_backends) if whereis(self._session_name(sid))]

    def stop_session(self, session_id: str) -> None:
        """Stop a live session gracefully (its history stays in the store).

        Raises:
            SessionNotFound: no live session has this id.
        """
        if self._stop_external_session(session_id):  # one a user's supervisor started
            return
        ref = self._session_ref(session_id)
        try:
            self.sessions_supervisor.terminate_child(ref, timeout=CALL_TIMEOUT)
        except BeamAgentError:
            raise
        except Exception:
            pass  # it ended on its own meanwhile
        self._session_backends.pop(session_id, None)
        self._registry_call("unregister_session", session_id)

    def _quietly_stop(self, ref: pykka.ActorRef[Any]) -> None:
        """Make sure a session that failed to start is gone before the caller hears of it."""
        down = monitor(ref, watcher=None)
        with contextlib.suppress(Exception):  # it may be ending on its own already
            self.sessions_supervisor.terminate_child(ref, timeout=CALL_TIMEOUT)
        with contextlib.suppress(WaitTimeout):
            down.wait(CALL_TIMEOUT)
        # A Down comes after the exit reached the supervisor; its answer comes after it
        # handled that exit, so no stale child remains.
        with contextlib.suppress(Exception):
            self.sessions_supervisor.count_children(timeout=CALL_TIMEOUT)


_default: Runtime | None = None
_default_lock = threading.Lock()


def default_runtime() -> Runtime:
    """The process-wide runtime used by the module-level API (created on first use)."""
    global _default
    with _default_lock:
        if _default is None or _default.stopped:
            _default = Runtime()  # stopped at interpreter exit if still running (lifecycle)
        return _default


def shutdown_default_runtime() -> None:
    """Stop the default runtime, if one was started."""
    global _default
    with _default_lock:
        runtime, _default = _default, None
    if runtime is not None:
        runtime.stop()
