"""``Runtime``: the application — the root supervision tree, backends, and the store.

::

    beamagent (one_for_one)
    ├── registry   routing state + session index (permanent)
    ├── store      the store's single writer (permanent)
    ├── sessions   DynamicSupervisor of session actors (transient children)
    ├── runs       DynamicSupervisor of graph runs
    └── tools      the MCP tool server (added when a session first needs it)

``stop()`` shuts the tree down in reverse order: runs, sessions, then the
store (after every session has recorded its last message), then the registry.
Several runtimes can live in one process; each names its processes under its
own id. ``default_runtime()`` is the one the module-level API uses.

Every process is addressed by its registered name, never by a ref kept from
its start: a call that finds its target restarting waits for the new one
(bounded). Each session has its own restart budget (``session_restarts``):
a crash-looping session is given up alone, and its handle then says so.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import queue
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any, cast

import pykka
from pykka.messages import ProxyCall

from beamagent import lifecycle, telemetry
from beamagent.backends.base import BackendHandler
from beamagent.backends.cassette import Cassette
from beamagent.backends.local import LocalHandler
from beamagent.backends.names import canonical_backend_name
from beamagent.errors import (
    BeamAgentError,
    InvalidOption,
    QueryTimeout,
    SessionError,
    SessionNotFound,
    StopTimeout,
    StoreError,
    UnknownBackend,
)
from beamagent.graph.api import GraphApi
from beamagent.log import get_logger
from beamagent.routing.api import SESSION_OPTIONS as SESSION_OPTIONS  # its old home
from beamagent.routing.api import RoutingApi
from beamagent.routing.policies import BackendInfo
from beamagent.routing.registry import ReadyQueue, RoutingRegistry
from beamagent.session.handle import CALL_TIMEOUT, Session
from beamagent.store import SessionStore, open_store
from beamagent.store.actor import DIRECT_WRITES, StoreActor, run_write
from beamagent.store.api import StoreApi
from beamagent.store.recorder import StoreRecorder
from beamagent.tools._api import ToolsApi
from supervisors import (
    AlreadyRegistered,
    ChildNotFound,
    ChildSpec,
    DynamicSupervisor,
    DynamicSupervisorRef,
    ExitReason,
    NoReply,
    ProcessFuture,
    RestartType,
    StartChildError,
    Supervisor,
    SupervisorRef,
    WaitTimeout,
    await_name,
    demonitor,
    monitor,
    registered,
    reserved,
    shutdown,
    spawn_options,
    whereis,
)

if TYPE_CHECKING:
    from beamagent.control.server import ControlServer

__all__ = ["BackendSpec", "Runtime", "default_runtime", "shutdown_default_runtime"]


def _told_error(ready: ProcessFuture) -> BeamAgentError | None:
    """The error a session answered ``ready`` with before its start failed, if any.

    An in-process backend's handshake runs inside the session's ``on_start``: a crash
    there fails the start, after the session told ``ready`` the error its callers get
    (as when the same crash came after the start).
    """
    if not ready.done():
        return None
    try:
        ready.get(timeout=0)
    except BeamAgentError as exc:
        return exc
    except Exception:
        return None
    return None


class _SessionEnded(Exception):
    """A starting session ended without answering its ``ready`` future."""


def _settle_ended(ready: ProcessFuture) -> None:
    with contextlib.suppress(queue.Full):  # it answered first
        ready.set_exception((_SessionEnded, _SessionEnded(), None))


log = get_logger(__name__)

_runtime_ids = itertools.count(1)
ROOT_RESTARTS = (1000, 10.0)
"""The root supervisor's intensity: restarts of the registry and the store actor.

Each takes well under a millisecond and loses nothing (both come back from the
store), so only a crash loop — one that fails at every start — should stop the
runtime; that spends this budget within seconds.
"""
GIVEN_UP_MEMORY = 1024
"""How many given-up sessions a runtime remembers, to tell their handles why they are gone."""


def _budget(value: Any, option: str) -> tuple[int, float] | None:
    """``(max_restarts, max_seconds)`` checked, or None (no limit)."""
    if value is None:
        return None
    ok = (
        isinstance(value, tuple | list)
        and len(value) == 2
        and isinstance(value[0], int)
        and not isinstance(value[0], bool)
        and value[0] >= 0
        and isinstance(value[1], int | float)
        and not isinstance(value[1], bool)
        and 0 < value[1] < 1e9
    )
    if not ok:
        raise InvalidOption(
            f"{option} must be (max_restarts >= 0, max_seconds > 0) or None; got {value!r}"
        )
    return int(value[0]), float(value[1])


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


def _builtin_backends() -> dict[str, BackendSpec]:
    from beamagent.backends.claude import ClaudeHandler
    from beamagent.backends.codex import CodexHandler
    from beamagent.backends.copilot import CopilotHandler
    from beamagent.backends.gemini import GeminiHandler
    from beamagent.backends.openai import OpenAIHandler
    from beamagent.backends.opencode import DEFAULT_INIT_TIMEOUT, OpenCodeHandler

    return {
        "claude": BackendSpec("claude", ClaudeHandler),
        "codex": BackendSpec("codex", CodexHandler),
        "gemini": BackendSpec("gemini", GeminiHandler),
        "copilot": BackendSpec("copilot", CopilotHandler),
        # Its server takes seconds to become healthy: a longer handshake by default.
        "opencode": BackendSpec(
            "opencode", OpenCodeHandler, {"init_timeout": DEFAULT_INIT_TIMEOUT}
        ),
        "openai": BackendSpec("openai", OpenAIHandler),
        "local": BackendSpec("local", LocalHandler),
    }


def _backend_specs(backends: Any) -> tuple[dict[str, BackendSpec], tuple[str, ...]]:
    """Every startable backend, and the routable ones in preference order.

    The built-ins can always be started by name; routing picks only among the
    backends ``backends`` names (default: ``local`` alone).

    Raises:
        InvalidOption: ``backends`` is malformed.
        UnknownBackend: a name given without a handler is not a built-in.
    """
    specs = _builtin_backends()
    if backends is None:
        return specs, ("local",)
    if isinstance(backends, Mapping):
        entries = list(backends.items())
    elif isinstance(backends, str | bytes) or not hasattr(backends, "__iter__"):
        raise InvalidOption(
            "backends must name the routable backends: a list of names, or a mapping of "
            "name to a handler class, (handler, options), a BackendSpec, True or a dict of "
            f"options for a built-in; got {backends!r}"
        )
    else:
        entries = [(e.name, e) if isinstance(e, BackendSpec) else (e, True) for e in backends]
    routable: list[str] = []
    for raw_name, value in entries:
        if not isinstance(raw_name, str):
            raise InvalidOption(f"backend names must be strings; got {raw_name!r}")
        name = canonical_backend_name(raw_name)
        if value is True:
            if name not in specs:
                raise UnknownBackend(raw_name, sorted(specs))
        elif value is False or value is None:
            continue  # named, but not routable (a built-in stays startable by name)
        elif isinstance(value, BackendSpec):
            specs[name] = value
        elif isinstance(value, Mapping):
            # Default options for a built-in: {"claude": {"env": {...}, "cwd": ...}}.
            builtin = specs.get(name)
            if builtin is None:
                raise UnknownBackend(raw_name, sorted(specs))
            # On top of the built-in's own defaults (opencode's longer init_timeout).
            specs[name] = BackendSpec(name, builtin.handler, {**builtin.options, **value})
        elif isinstance(value, tuple):
            specs[name] = BackendSpec(name, value[0], value[1] if len(value) > 1 else None)
        else:
            specs[name] = BackendSpec(name, value)
        if name not in routable:
            routable.append(name)
    return specs, tuple(routable)


def _weak_hook(owner: object, method: str) -> Any:
    """``owner.method(...)`` while ``owner`` lives, without keeping it alive."""
    ref = weakref.ref(owner)

    def call(*args: Any) -> None:
        target = ref()
        if target is not None:
            getattr(target, method)(*args)

    return call


class Runtime(RoutingApi, StoreApi, GraphApi, ToolsApi):
    """A beamagent application: supervisors, backends, routing and the store.

    Args:
        store: ``None`` (the default file: ``$BEAMAGENT_STORE`` or the user
            data dir), ``":memory:"``, a path, a ``postgresql://`` URL (the
            ``postgres`` extra; shared by many runtimes), or a ``SessionStore`` object.
        backends: the backends routing may choose, in preference order
            (default: ``local`` alone, so nothing paid starts unless enabled).
            A list of names (``["local", "claude"]``) enables built-ins; a
            mapping adds or replaces backends by name: a handler class,
            ``(handler_class, default_options)``, a ``BackendSpec``,
            ``True`` for the built-in of that name, or a dict of default
            options for the built-in of that name (``{"claude": {"cwd": ...}}``).
            The built-ins (``local``, ``claude``, ``codex``, ``openai``...) can
            always be started by naming them in ``start_session(backend=...)``;
            only the backends named here are ever picked by routing
            (``start_session()`` with no backend, policies, ``select_backend``).
        session_defaults: default session options (e.g. ``connect_timeout``).
        session_restarts: each session's own restart budget, ``(max_restarts,
            max_seconds)`` (default ``(3, 5.0)``): a session whose backend
            dies more often is given up, alone; its handle then raises
            ``SessionError(reason="given_up")`` saying why.
        sessions_supervisor_restarts: a budget for all sessions together
            (default None: no limit, so a burst of unrelated crashes never
            stops healthy sessions); when spent, every session is stopped.
        handle_signals: stop gracefully on SIGTERM (default True; see
            :mod:`beamagent.lifecycle`). False leaves SIGTERM to the host.
        tools: Python tools (``@beamagent.tools.tool`` functions) every session
            gets, on the backends that take tools (``start_session(tools=...)``
            replaces them for one session; see ``docs/tools.md``).
        tool_server: where the tool server listens, a
            :class:`~beamagent.tools.ToolServerConfig` (or a dict of its fields).
        cassette: a :class:`~beamagent.backends.cassette.Cassette` every session
            records its wire traffic into, or replays it from (also a session
            option, ``start_session(cassette=...)``; see ``docs/testing.md``).
        control_socket: a path for a local control socket (default None: none),
            a Unix socket of mode 0600 through which ``beamagent top`` shows this
            runtime's tree, sessions and runs (read-only; see ``docs/cli.md``).

    Use it as a context manager, or call :meth:`stop`. A runtime that is
    still running when the interpreter exits is stopped then (see
    :mod:`beamagent.lifecycle`).

    Raises:
        InvalidOption: a malformed option.
        StoreError: the store cannot be opened.
        ControlSocketError: the control socket cannot be created at its path.
        BeamAgentError: the interpreter is exiting.
    """

    def __init__(
        self,
        store: Any = None,
        backends: Mapping[str, Any] | None = None,
        *,
        session_defaults: Mapping[str, Any] | None = None,
        session_restarts: tuple[int, float] | None = (3, 5.0),
        sessions_supervisor_restarts: tuple[int, float] | None = None,
        handle_signals: bool = True,
        tools: Any = None,
        tool_server: Any = None,
        cassette: Cassette | None = None,
        control_socket: str | os.PathLike[str] | None = None,
    ) -> None:
        self.id = f"rt{next(_runtime_ids)}"
        self._session_budget = _budget(session_restarts, "session_restarts")
        supervisor_budget = _budget(sessions_supervisor_restarts, "sessions_supervisor_restarts")
        self._backends, self._routable = _backend_specs(backends)
        self._session_defaults = dict(session_defaults or {})
        if cassette is not None:  # every session records into it, or replays from it
            self._session_defaults["cassette"] = cassette
        # Why a session was given up, and its child spec (to tell an earlier session's).
        self._given_up: OrderedDict[str, tuple[ChildSpec, str]] = OrderedDict()
        self._owns_store = not isinstance(store, SessionStore)
        self._store: SessionStore = open_store(store)
        # Stateless: every session records through this one (not an object each to keep).
        self._recorder = StoreRecorder(self._store)
        self._lock = threading.Lock()
        self._stopped = False
        ns = ("beamagent", self.id)
        self._names = {
            "registry": (*ns, "registry"),
            "store": (*ns, "store"),
            "sessions": (*ns, "sessions"),
            "runs": (*ns, "runs"),
            "root": (*ns, "root"),
        }
        # One hook for every session of this runtime (not a closure per session): the
        # session queues itself, and the registry indexes the queue a batch at a time.
        self._ready = ReadyQueue(self._names["registry"])
        self._on_ready = self._ready.add
        self._init_tools(tools, tool_server)  # checked before anything starts
        sessions_budget = {
            "max_restarts": None if supervisor_budget is None else supervisor_budget[0],
            "max_seconds": 10.0 if supervisor_budget is None else supervisor_budget[1],
            # Weakly: the tree must not keep an unstopped runtime from being collected.
            "on_give_up": _weak_hook(self, "_session_given_up"),
        }
        registry_options = {
            "store": self._store,
            "session_namespace": (*ns, "session"),
            "ready": self._ready,
        }
        children = [
            ChildSpec(
                "registry",
                (RoutingRegistry, (), registry_options),
                name=self._names["registry"],
            ),
            ChildSpec("store", (StoreActor, (self._store,), {}), name=self._names["store"]),
            ChildSpec(
                "sessions",
                (DynamicSupervisor, (), sessions_budget),
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
                # Named, so that a start cut short (Ctrl-C while the root starts its
                # children, before its ref came back) can still find and stop it.
                with spawn_options(name=self._names["root"]):
                    self.root: SupervisorRef = Supervisor.start(
                        children=children,
                        max_restarts=ROOT_RESTARTS[0],
                        max_seconds=ROOT_RESTARTS[1],
                    )
                lifecycle.runtime_started(self, handle_signals=handle_signals)
            except BaseException:
                self._abandon_start()
                raise
        self._control: ControlServer | None = None
        if control_socket is not None:
            from beamagent.control.server import ControlServer  # only with a control socket
            from beamagent.control.snapshot import take_snapshot

            try:
                self._control = ControlServer(
                    control_socket, functools.partial(take_snapshot, self)
                )
            except BaseException:
                self.stop()
                raise
        log.info("runtime_started", runtime=self.id, routable=list(self._routable))

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _abandon_start(self) -> None:
        """Undo a start that failed or was interrupted: whatever of the tree started ends."""
        with self._lock:
            if self._stopped:  # runtime_started stopped it already (the interpreter exits)
                return
            self._stopped = True
        root = whereis(self._names["root"])
        if root is not None:
            with contextlib.suppress(Exception):
                shutdown(root, timeout=60)
        if self._owns_store:
            self._store.close()
        lifecycle.runtime_stopped(self)  # if it was registered before the interrupt

    def stop(self) -> None:
        """Stop every run and session, then the store and the registry. Idempotent.

        Interrupted (Ctrl-C while sessions finish), the runtime is not stopped yet:
        it stays registered, and another ``stop()``, or the interpreter's exit,
        finishes the stop.
        """
        # A SIGTERM from here on waits until the store is closed.
        with lifecycle.signals_deferred():
            mine = False  # this call set stopped (one statement: no signal between the two)
            try:
                with self._lock:
                    if self._stopped:
                        return
                    self._stopped = mine = True
                control = getattr(self, "_control", None)
                if control is not None:  # first: no snapshot of a tree going down
                    control.stop()
                if self._tool_state is not None:
                    # The tool server, started on demand, is the root's last child and
                    # would stop first: sessions and runs calling its tools go before it.
                    for child in ("runs", "sessions"):
                        with contextlib.suppress(
                            pykka.ActorDeadError, pykka.Timeout, ChildNotFound
                        ):
                            self.root.terminate_child(child, timeout=60)
                with contextlib.suppress(pykka.ActorDeadError):
                    self.root.stop(timeout=60)
                self._close_tools()
                if self._owns_store:
                    self._store.close()
            except BaseException as exc:
                if not mine:
                    raise
                if not isinstance(exc, Exception):  # interrupted: not stopped yet
                    with self._lock:
                        self._stopped = False
                    raise
                lifecycle.runtime_stopped(self)
                raise
            lifecycle.runtime_stopped(self)
        log.info("runtime_stopped", runtime=self.id)

    async def astop(self) -> None:
        """Async twin of :meth:`stop`: the shutdown runs off the event loop."""
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, self.stop)

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called (False again if that stop was interrupted)."""
        return self._stopped

    def _child(self, key: str, timeout: float = CALL_TIMEOUT) -> pykka.ActorRef[Any]:
        """The runtime's ``key`` process, waiting (bounded) while the root restarts it."""
        ref = whereis(self._names[key])
        if ref is not None:
            return ref
        try:
            ref = await_name(self._names[key], timeout)
        except WaitTimeout:
            raise BeamAgentError(
                f"runtime {self.id}: the {key} process did not come back within {timeout} s"
            ) from None
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

    def _call_child(
        self, key: str, message: Any, timeout: float, *, repeatable: bool
    ) -> tuple[bool, Any]:
        """Ask the runtime's ``key`` process, across its restarts: ``(done, reply)``.

        A message its process never began to handle goes to the next
        incarnation; one it died handling is repeated only when ``repeatable``
        (else ``(False, None)``: the outcome is unknown).
        """
        deadline = time.monotonic() + timeout
        while True:
            ref = self._child(key, max(deadline - time.monotonic(), 0.0))
            try:
                return True, ref.ask(message, timeout=max(deadline - time.monotonic(), 0.0))
            except NoReply:
                if not repeatable:
                    return False, None
            except pykka.ActorDeadError:
                pass  # not handled: the restarted process gets it
            if time.monotonic() >= deadline:
                raise BeamAgentError(f"runtime {self.id}: the {key} process kept dying")

    def _registry_call(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT) -> Any:
        # Registry calls are cheap and safe to repeat (a repeated selection only moves
        # a round-robin cursor once more), so a registry restart costs one delay.
        return self._registry_ask(ProxyCall((method,), args, {}), timeout)

    def _registry_ask(self, message: Any, timeout: float = CALL_TIMEOUT) -> Any:
        # The registry is up nearly always: ask it straight away (every selection comes
        # here), and leave waiting out a restart to _call_child, with the time left.
        ref = whereis(self._names["registry"])
        if ref is not None:
            start = time.monotonic()
            try:
                return ref.ask(message, timeout=timeout)
            except (NoReply, pykka.ActorDeadError):
                timeout = max(timeout - (time.monotonic() - start), 0.0)
        return self._call_child("registry", message, timeout, repeatable=True)[1]

    def store_write(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run a mutating store method through the store actor (the single writer).

        Appends (``record_message``, ``record_messages``) run on the caller's thread
        instead, as a session's own recording does: the store's write lock serialises
        them with every other write, and they cost no actor round trip.

        Raises:
            StoreError: the write failed, or the store process died while
                making it (it may or may not have been applied).
        """
        if isinstance(method, str) and method in DIRECT_WRITES:
            if self._stopped:
                raise BeamAgentError(f"runtime {self.id} has no store process (stopped?)")
            return run_write(self._store, method, args, kwargs)
        done, reply = self._call_child(
            "store",
            ProxyCall(("write",), (method, args, kwargs), {}),
            CALL_TIMEOUT,
            repeatable=False,
        )
        if not done:
            raise StoreError(
                f"the store process died during {method}; it may or may not have been applied"
            )
        return reply

    # --- backends ---------------------------------------------------------------------------

    def backend_spec(self, name: str) -> BackendSpec:
        """The registered backend ``name`` (aliases accepted).

        Raises:
            UnknownBackend: no backend of that name is registered.
        """
        # Registered under canonical names: a hit is one (a str only: a list is unhashable,
        # and canonical_backend_name says what is wrong with it).
        spec = self._backends.get(name) if type(name) is str else None
        if spec is not None:
            return spec
        canonical = canonical_backend_name(name)
        spec = self._backends.get(canonical)
        if spec is None:
            raise UnknownBackend(name, sorted(self._backends))
        return spec

    def backends(self) -> list[str]:
        """Names of the registered backends (startable by name)."""
        return list(self._backends)

    def routable_backends(self) -> list[str]:
        """The backends routing may choose, in preference order (``Runtime(backends=...)``)."""
        return list(self._routable)

    def available_backends(self) -> list[BackendInfo]:
        """Routable backends whose prerequisites are present, in preference order."""
        specs = [self._backends[name] for name in self._routable]
        return [s.info() for s in specs if s.handler.availability()[0]]

    def backend_availability(self) -> dict[str, tuple[bool, str]]:
        """For every registered backend: whether routing may choose it, and why not."""
        result = {}
        for name, spec in self._backends.items():
            if name in self._routable:
                result[name] = spec.handler.availability()
            else:
                result[name] = (
                    False,
                    f"not enabled for routing: name it in Runtime(backends=[..., {name!r}]) "
                    f"or start it explicitly with start_session(backend={name!r})",
                )
        return result

    # --- sessions ----------------------------------------------------------------------------

    def _session_name(self, session_id: str) -> tuple[str, ...]:
        return ("beamagent", self.id, "session", session_id)

    def _session_ref(
        self, session_id: str, timeout: float | None = CALL_TIMEOUT
    ) -> pykka.ActorRef[Any]:
        """The live session process, waiting (up to ``timeout``) while it restarts.

        Raises:
            SessionNotFound: no such session is running (or coming back).
            SessionError: it was given up (``reason="given_up"``), or is still
                restarting after ``timeout`` (``reason="restarting"``).
        """
        name = self._session_name(session_id)
        ref = whereis(name)
        if ref is not None:
            return ref
        try:
            ref = await_name(name, timeout)
        except WaitTimeout:
            raise SessionError(
                f"session {session_id} is still restarting after {timeout} s",
                reason="restarting",
            ) from None
        if ref is None:
            given_up = self._given_up.get(session_id)
            if given_up is not None:
                raise SessionError(given_up[1], reason="given_up")
            raise SessionNotFound(session_id)
        return ref

    def _session_given_up(self, _child_id: Hashable, spec: ChildSpec, reason: ExitReason) -> None:
        """The sessions supervisor gave a crash-looping session up (runs in its thread)."""
        session_id = str(spec.id)
        budget = f"{spec.max_restarts} restarts within {spec.max_seconds} s"
        with self._lock:
            self._given_up[session_id] = (
                spec,
                f"session {session_id} was given up after more than {budget}; "
                f"its last exit: {reason}",
            )
            while len(self._given_up) > GIVEN_UP_MEMORY:
                self._given_up.popitem(last=False)
        self._revoke_tools(session_id)
        registry = whereis(self._names["registry"])
        if registry is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                registry.tell(ProxyCall(("unregister_session",), (session_id,), {}))

    def start_session(self, backend: str | None = None, **opts: Any) -> Session:
        """Start a session on ``backend`` and return its handle once it is ready.

        Options: ``session_id`` (default ``session_<32 hex>``), ``connect_timeout``
        and ``init_timeout`` (15 s), ``buffer_max`` (10 MB), ``error_linger``
        (1 s), ``drain_timeout`` (5 s), ``idle_timeout`` (None: never hibernate;
        seconds: stop the idle backend and resume it on the next call),
        ``query_defaults``, ``tools`` (Python tools for this session, replacing
        the runtime's; ``[]``: none) and ``tool_context`` (``run_id`` /
        ``node_id`` for its tools' ``ToolContext``), plus the backend's own
        options (``model``, ``permission_mode``, ``cwd``...).

        Raises:
            UnknownBackend, InvalidOption: bad backend or option.
            UnsupportedCapability: ``tools`` on a backend that cannot run them.
            MissingDependency: tools on a CLI backend without ``beamagent[tools]``.
            ConnectTimeout, TransportError, SessionError: the backend did not start.
        """
        opts = dict(opts)
        if not telemetry.ENABLED or not telemetry.tracing():
            # No span would be made: skip the context manager.
            return self._start_session(backend, opts, None)
        with telemetry.span("beamagent.session.start") as span:
            return self._start_session(backend, opts, span)

    def _start_session(
        self, backend: str | None, opts: dict[str, Any], span: telemetry.Span
    ) -> Session:
        resuming = opts.get("resume") is not None
        # An id made here (128 random bits) is neither running nor stored: its start need
        # not ask the names or the store (on SQLite a query of its own).
        fresh = not resuming and opts.get("session_id") is None
        backend = self._resume_start_options(backend, opts)
        backend_name, decision = self._route_start_options(backend, opts)
        config = self._session_config(backend_name, opts, decision)
        fresh = (
            fresh
            and self._session_defaults.get("session_id") is None
            and self.backend_spec(backend_name).options.get("session_id") is None
        )
        config.lineage.stored_history = resuming  # replayed where not resumed natively
        session_id = config.session_id
        if span is not None:
            telemetry.set_attributes(
                span,
                {
                    "beamagent.session_id": session_id,
                    "beamagent.backend": backend_name,
                    "beamagent.routed": decision is not None,
                    "beamagent.resumed": resuming,
                    "gen_ai.request.model": config.options.get("model"),
                },
            )
            config.lineage.trace_link = telemetry.span_context(span)
        if not fresh:
            try:
                if whereis(self._session_name(session_id)) is not None:
                    raise InvalidOption(f"session {session_id!r} is already running")
                if not resuming and self._stored(session_id):
                    raise InvalidOption(
                        f"session {session_id!r} already has a stored history; "
                        f"continue it with start_session(resume={session_id!r})"
                    )
            except BaseException:
                if whereis(self._session_name(session_id)) is None:  # never a live one's token
                    self._revoke_tools(session_id)
                raise
        budget = self._session_budget
        ready = ProcessFuture()
        config.first_ready = ready  # taken by the first incarnation: the spec keeps none
        config.on_ready = self._on_ready
        child = ChildSpec(
            session_id,
            config,  # starts a SessionActor on itself (SessionConfig.__call__)
            restart=RestartType.TRANSIENT,
            shutdown=10.0,
            name=self._session_name(session_id),
            max_restarts=None if budget is None else budget[0],
            max_seconds=5.0 if budget is None else budget[1],
        )
        try:
            ref = self.sessions_supervisor.start_child(child, timeout=CALL_TIMEOUT)
        except StartChildError as exc:
            if not isinstance(exc.reason, AlreadyRegistered):
                self._revoke_tools(session_id)
            reason = exc.reason
            if isinstance(reason, AlreadyRegistered):
                raise InvalidOption(f"session {session_id!r} is already running") from None
            if isinstance(reason, BeamAgentError):
                raise reason from None
            told = _told_error(ready)
            if told is not None:  # a crash: the error the session told its waiters
                raise told from None
            raise SessionError(
                f"session {session_id} failed to start: {reason!r}", reason=reason
            ) from reason
        with self._lock:
            # Forget an earlier session of this id that was given up, not this one: it
            # may have been given up already (killed as soon as it started).
            given_up = self._given_up.get(session_id)
            if given_up is not None and given_up[0] is not child:
                del self._given_up[session_id]
        session = Session(self, session_id, config.handler_cls.complete_types)
        wait = config.connect_timeout + config.init_timeout + 5.0
        deadline = time.monotonic() + wait
        # The session answers `ready` once ready, or with its start error before it ends.
        # If it ends without a word (killed, crashed and restarting), ask the handle,
        # which waits for a restarting session and tells a gone one.
        # An in-process backend is ready by the time start_child returns: no monitor then.
        watch = None if ready.done() else monitor(ref, watcher=lambda _down: _settle_ended(ready))
        indexed = False
        try:
            try:
                indexed = ready.get(timeout=wait) is True
            except _SessionEnded:
                session._call("await_ready", timeout=max(deadline - time.monotonic(), 0.0))
            except pykka.Timeout:
                raise QueryTimeout(
                    f"session {session_id} did not become ready within {wait} s"
                ) from None
        except BaseException:
            self._quietly_stop(ref)
            raise
        finally:
            if watch is not None:
                demonitor(watch)
        if not indexed:  # ready in a restarted incarnation: it told nobody (on_ready)
            self._index_session(session_id, config.backend, ref.actor_urn)
        self._route_decided(session_id, config.lineage.route_decision)
        return session

    def _index_session(self, session_id: str, backend: str, urn: str) -> None:
        """Add a started session to the registry's index, without waiting for it.

        A tell is enough: this caller's later registry calls queue behind it, and a
        registry that loses it (dead, or dying before handling it) rebuilds its index
        from the session names when it restarts, and the name is registered by now.
        Usually the session itself does this, as it becomes ready (``ReadyQueue.add``).
        """
        self._on_ready(session_id, backend, urn)

    async def astart_session(self, backend: str | None = None, **opts: Any) -> Session:
        """Async twin of :meth:`start_session`.

        Starting a CLI backend takes a process start and a handshake (0.5-1 s);
        that waiting happens off the event loop.
        """
        import asyncio

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, functools.partial(self.start_session, backend, **opts)
        )

    def _stored(self, session_id: str) -> bool:
        try:
            self._store.get_session(session_id)
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
        """Ids of the sessions running now (those under a user's supervisor included)."""
        prefix = self._session_name("")[:-1]
        return [
            name[-1]
            for name in registered()
            if isinstance(name, tuple) and len(name) == 4 and name[:3] == prefix
        ]

    def stop_session(self, session_id: str) -> None:
        """Stop a live session gracefully (its history stays in the store).

        Raises:
            SessionNotFound: no live session has this id.
            StopTimeout: the stop was not confirmed within 30 s (stops queue in the
                sessions' supervisor, each up to a session's 5 s shutdown); it goes on.
        """
        if self._stop_external_session(session_id):  # one a user's supervisor started
            return
        for _attempt in range(5):
            ref = self._session_ref(session_id)
            try:
                self.sessions_supervisor.terminate_child(ref, timeout=CALL_TIMEOUT)
            except pykka.Timeout:
                raise StopTimeout(session_id, CALL_TIMEOUT) from None
            except ChildNotFound:
                # It ended on its own meanwhile: gone, or restarted (then stop that one).
                if whereis(self._session_name(session_id)) is None and not reserved(
                    self._session_name(session_id)
                ):
                    break
                continue
            break
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


def _forget_default_after_fork() -> None:
    # The parent's default runtime is dead in a forked child: the child makes its own.
    global _default, _default_lock
    _default = None
    _default_lock = threading.Lock()  # a parent thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_default_after_fork)


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
