"""Backend routing and the session router, over the default runtime.

This module mirrors the seed's ``BeamAgent.Routing`` one function per seed
function. Each runs on :func:`beamagent.runtime.default_runtime` (created on
first use); the same operations are methods of :class:`beamagent.Runtime`, the
explicit form. Python names, Python errors: functions return values and raise
the typed errors of :mod:`beamagent.errors` instead of ``{:ok, _} | {:error, _}``.
Wherever the seed takes a session pid, pass a :class:`~beamagent.session.Session`
handle or a session id string.

Example::

    from beamagent import routing

    session = routing.start_session(routing={"policy": "round_robin"})
    routing.session_info(session)["route_decision"]["backend"]
    routing.query(session, "hello")
    routing.stop(session)

The pure core is :mod:`beamagent.routing.policies` (``select``, ``RouteRequest``,
``RouteDecision``...), re-exported here; the registry actor that holds the
routing state is :class:`~beamagent.routing.registry.RoutingRegistry`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from beamagent.backends.names import KNOWN_BACKENDS
from beamagent.errors import InvalidOption
from beamagent.routing.api import RoutingApi, SessionStart
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
from beamagent.routing.registry import RoutingRegistry
from beamagent.session.handle import CALL_TIMEOUT, DEFAULT_QUERY_TIMEOUT, Session

if TYPE_CHECKING:
    from beamagent.messages import Message
    from beamagent.runtime import Runtime
    from beamagent.session.actor import QueryRef
    from beamagent.store.base import (
        SessionRecord,
        ShareRecord,
        SummaryRecord,
        ThreadDetail,
        ThreadRecord,
    )
    from supervisors import ChildSpec

__all__ = [
    "BackendInfo",
    "FallbackPolicy",
    "Health",
    "Policy",
    "RouteDecision",
    "RouteRequest",
    "RoutingApi",
    "RoutingRegistry",
    "RoutingState",
    "SessionStart",
    "abort",
    "account_info",
    "adapter_module",
    "available_backends",
    "backend",
    "backend_health",
    "child_spec",
    "clear",
    "decisions",
    "delete_session",
    "ensure_tables",
    "fork_session",
    "get_session",
    "get_session_messages",
    "health",
    "interrupt",
    "list_sessions",
    "query",
    "receive_message",
    "revert_session",
    "select",
    "select_backend",
    "send_control",
    "send_query",
    "server_health",
    "session_info",
    "set_health",
    "set_model",
    "set_permission_mode",
    "share_session",
    "start_session",
    "stop",
    "summarize_session",
    "supported_agents",
    "supported_commands",
    "supported_models",
    "thread_archive",
    "thread_fork",
    "thread_list",
    "thread_read",
    "thread_resume",
    "thread_rollback",
    "thread_start",
    "thread_unarchive",
    "unrevert_session",
    "unshare_session",
]

_UNSET: Any = object()


def _options(
    function: str, opts: Mapping[str, Any] | None, given: Mapping[str, Any], accepted: Any
) -> dict[str, Any]:
    """The seed's positional options map merged with keywords (keywords win).

    Raises:
        InvalidOption: ``opts`` is not a mapping, or has a key ``function`` does not take.
    """
    if opts is None:
        return {k: v for k, v in given.items() if v is not _UNSET}
    if not isinstance(opts, Mapping):
        raise InvalidOption(f"{function}: options must be a mapping; got {opts!r}")
    unknown = sorted(str(k) for k in opts if k not in accepted)
    if unknown:
        raise InvalidOption(
            f"{function}: unknown option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(sorted(accepted))}"
        )
    merged = dict(opts)
    merged.update({k: v for k, v in given.items() if v is not _UNSET})
    return merged


def _default() -> Runtime:
    # Imported here: beamagent.runtime imports this package (through routing.api).
    from beamagent.runtime import default_runtime

    return default_runtime()


def _runtime_of(session: Session | str) -> Runtime:
    """The runtime a session lives in: its handle's, else the default one."""
    return session.runtime if isinstance(session, Session) else _default()


def _handle(session: Session | str) -> Session:
    """A handle for ``session``; a session id must name a live session of the default runtime."""
    if isinstance(session, Session):
        return session
    if isinstance(session, str) and session:
        return _default().session(session)
    raise InvalidOption(
        f"a session is a Session handle or a non-empty session id str, got {session!r}"
    )


# --- routing --------------------------------------------------------------------------------


def select_backend(
    session_or_request: Session | str | RouteRequest | Mapping[str, Any] | None = None,
    request: RouteRequest | Mapping[str, Any] | None = _UNSET,
) -> RouteDecision:
    """Choose a backend by policy: ``select_backend(request)`` or ``(session_or_opts, request)``.

    The two-argument form derives defaults from a session (its id becomes the
    ``affinity_key``, its backend the ``last_backend``) or from session options
    (their ``routing``, ``backend`` and ``session_id``); ``request`` overrides
    them. See :meth:`beamagent.Runtime.select_backend`.

    Example::

        select_backend({"preferred_backends": ["codex"], "fallback_backends": "claude"})
        select_backend(session, {"policy": "failover"}).backend

    Raises:
        InvalidRouteRequest, UnknownCapability, BackendNotEligible, NoBackendAvailable.
    """
    runtime = session_or_request.runtime if isinstance(session_or_request, Session) else _default()
    if request is _UNSET:
        return runtime.select_backend(session_or_request)
    return runtime.select_backend(session_or_request, request)


def start_session(opts: Mapping[str, Any] | None = None, /, **kwargs: Any) -> Session:
    """Start a session, routing first unless a backend is named without ``routing``.

    Options come as a mapping, as keywords, or both (keywords win): ``backend``
    (absent or ``"auto"``: route), ``routing`` (a route request), and every
    option of :meth:`beamagent.Runtime.start_session`. The decision is in
    ``session_info(session)["route_decision"]`` (``None`` when not routed).

    Example::

        start_session(routing={"policy": "sticky", "affinity_key": "user-42"})
        start_session({"backend": "local", "model": "local-large"})

    Raises:
        InvalidRouteRequest, BackendNotEligible, NoBackendAvailable: routing failed.
        UnknownBackend, InvalidOption: a bad backend or option.
        ConnectTimeout, TransportError, SessionError: the backend did not start.
    """
    options = {**(opts or {}), **kwargs}
    backend_name = options.pop("backend", None)
    return _default().start_session(backend_name, **options)


def child_spec(opts: Mapping[str, Any] | None = None, /, **kwargs: Any) -> ChildSpec:
    """A ``supervisors.ChildSpec`` for a session that routes when its supervisor starts it.

    ``spec.id`` is the session id. See :meth:`beamagent.Runtime.child_spec`.

    Example::

        spec = child_spec(routing={"policy": "round_robin"})
        sup = supervisors.Supervisor.start(children=[spec])
        query(spec.id, "hi")

    Raises:
        InvalidOption, UnknownBackend, InvalidRouteRequest, UnknownCapability.
    """
    return _default().child_spec(opts, **kwargs)


def stop(session: Session | str) -> None:
    """Stop a live session (its history stays in the store).

    A session started from :func:`child_spec` ends normally, so its
    supervisor does not restart it.

    Raises:
        SessionNotFound: no live session has this id.
    """
    handle = _handle(session)
    runtime = handle.runtime
    if not runtime._stop_external_session(handle.session_id):
        runtime.stop_session(handle.session_id)


def clear() -> None:
    """Forget sticky bindings and round-robin cursors (health overrides stay)."""
    _default().clear_routing()


def ensure_tables() -> None:
    """Make sure the default runtime and its routing registry run. Idempotent."""
    _default().ensure_tables()


def set_health(backend: str, status: Health | str | None) -> None:
    """Tell routing a backend is ``healthy``, ``degraded``, ``unhealthy`` or ``down``.

    ``None`` removes the override. Unhealthy and down backends are never chosen.

    Raises:
        UnknownBackend: not a registered or known backend.
        InvalidRouteRequest: not a health status.
    """
    _default().set_health(backend, status)


def backend_health() -> dict[str, str]:
    """Routing's view of each registered backend's health."""
    return _default().backend_health()


def decisions(limit: int | None = None) -> list[dict[str, Any]]:
    """The routing decision journal, newest first, at most ``limit`` entries.

    Raises:
        InvalidOption: ``limit`` is not an int >= 0.
    """
    return _default().routing_decisions(limit)


def available_backends() -> dict[str, tuple[bool, str]]:
    """Every known or registered backend: whether routing may choose it, and why not.

    In default preference order (``claude, codex, gemini, opencode, copilot,
    openai, local``, then custom names). A backend is available when it is
    registered with the runtime and its prerequisites are present (e.g. its
    CLI is on ``PATH``).

    Example::

        available_backends()["codex"]  # (False, 'not registered with the runtime')
    """
    registered = _default().backend_availability()
    order = {name: i for i, name in enumerate(KNOWN_BACKENDS)}
    names = sorted({*KNOWN_BACKENDS, *registered}, key=lambda n: (order.get(n, len(order)), n))
    return {
        name: registered.get(name, (False, "not registered with the runtime")) for name in names
    }


# --- sessions -------------------------------------------------------------------------------


def query(
    session: Session | str,
    prompt: str,
    params: Mapping[str, Any] | None = None,
    /,
    *,
    timeout: Any = _UNSET,
) -> list[Message]:
    """Run a blocking query: ``query(session, prompt)`` or ``query(session, prompt, params)``.

    Returns every message of the query, the terminal one included. The
    timeout is the ``timeout`` keyword, else ``params["timeout"]``, else 120 s;
    ``None`` (given either way) means no limit.

    Raises:
        SessionNotFound, QueryInProgress, QueryTimeout, Interrupted, SessionError.
        InvalidOption: a timeout that is neither None nor seconds > 0.
    """
    options = dict(params or {})
    limit = options.pop("timeout", DEFAULT_QUERY_TIMEOUT)
    if timeout is not _UNSET:
        limit = timeout
    return _handle(session).query(prompt, timeout=limit, **options)


def send_query(
    session: Session | str,
    prompt: str,
    params: Mapping[str, Any] | None = None,
    timeout: float = CALL_TIMEOUT,
) -> QueryRef:
    """Start a query and return its ref; read its messages with :func:`receive_message`.

    Raises:
        SessionNotFound, QueryInProgress, SessionError.
    """
    return _handle(session).send_query(prompt, params, timeout=timeout)


def receive_message(
    session: Session | str, ref: QueryRef, timeout: float = DEFAULT_QUERY_TIMEOUT
) -> Message:
    """The next message of the query ``ref``.

    Raises:
        QueryComplete: its terminal message was already received.
        BadQueryRef, QueryTimeout, Interrupted, SessionNotFound.
    """
    return _handle(session).receive_message(ref, timeout)


def abort(session: Session | str) -> None:
    """Abort the running work (the backend's abort, else an interrupt).

    Raises:
        NoActiveQuery, SessionNotFound.
    """
    _handle(session).abort()


def interrupt(session: Session | str) -> None:
    """Interrupt the running query.

    Raises:
        NoActiveQuery, SessionNotFound.
    """
    _handle(session).interrupt()


def health(session: Session | str) -> str:
    """The session's state (``ready``, ``hibernating``...), ``"unknown"`` if not running."""
    if isinstance(session, str):
        return Session(_default(), session).health()
    return _handle(session).health()


def session_info(session: Session | str) -> dict[str, Any]:
    """Session id, backend, state, model, permission mode, route decision, backend info.

    Raises:
        SessionNotFound.
    """
    return _handle(session).session_info()


def backend(session: Session | str) -> str:
    """The backend a live session runs on.

    Raises:
        SessionNotFound.
    """
    return _handle(session).backend()


def adapter_module(session: Session | str) -> str:
    """The Python module of the session's backend handler.

    Raises:
        SessionNotFound.
    """
    return _handle(session).adapter_module()


def server_health(session: Session | str) -> dict[str, Any]:
    """Backend health details (its server's health endpoint where it has one).

    Raises:
        SessionNotFound.
    """
    return _handle(session).server_health()


def set_model(session: Session | str, model: str) -> str:
    """Switch the session's model; returns the model now in use.

    Raises:
        SessionNotFound, SessionError.
    """
    return _handle(session).set_model(model)


def set_permission_mode(session: Session | str, mode: str) -> str:
    """Change the session's permission mode; returns the mode now in use.

    Raises:
        SessionNotFound, SessionError.
    """
    return _handle(session).set_permission_mode(mode)


def send_control(
    session: Session | str, method: str, params: Mapping[str, Any] | None = None
) -> Any:
    """A control request, native when the backend has ``method``, else the universal fallback.

    Raises:
        UnknownControlMethod, SessionNotFound, SessionError.
    """
    return _handle(session).send_control(method, params)


def account_info(session: Session | str) -> dict[str, Any]:
    """Account details from the backend's init data (empty if none).

    Raises:
        SessionNotFound.
    """
    return _handle(session).account_info()


def supported_agents(session: Session | str) -> list[Any]:
    """Agents from the backend's init data.

    Raises:
        SessionNotFound.
    """
    return _handle(session).supported_agents()


def supported_commands(session: Session | str) -> list[Any]:
    """Slash commands from the backend's init data.

    Raises:
        SessionNotFound.
    """
    return _handle(session).supported_commands()


def supported_models(session: Session | str) -> list[Any]:
    """Models from the backend's init data.

    Raises:
        SessionNotFound.
    """
    return _handle(session).supported_models()


# --- the store: sessions --------------------------------------------------------------------


def list_sessions(
    opts: Mapping[str, Any] | None = None,
    /,
    *,
    backend: Any = _UNSET,
    cwd: Any = _UNSET,
    model: Any = _UNSET,
    since: Any = _UNSET,
    limit: Any = _UNSET,
) -> list[SessionRecord]:
    """Stored sessions matching every given filter, most recently updated first.

    Filters as keywords or as the seed's map: ``list_sessions({"limit": 10})``.

    Raises:
        InvalidOption: a bad filter.
    """
    given = {"backend": backend, "cwd": cwd, "model": model, "since": since, "limit": limit}
    options = _options("list_sessions", opts, given, {*given, "adapter"})
    if "adapter" in options:
        options["backend"] = options.pop("adapter")
    return _default().list_sessions(**options)


def get_session(session_id: Session | str) -> SessionRecord:
    """A session's stored metadata (live or not).

    Raises:
        SessionNotFound.
    """
    return _runtime_of(session_id).get_session(session_id)


def get_session_messages(
    session_id: Session | str,
    opts: Mapping[str, Any] | None = None,
    /,
    *,
    types: Iterable[str] | str | None = _UNSET,
    offset: int = _UNSET,
    limit: int | None = _UNSET,
    include_hidden: bool = _UNSET,
) -> list[Message]:
    """A session's visible recorded messages (``include_hidden`` ignores a revert).

    Options as keywords or as the seed's map: ``get_session_messages(id, {"limit": 5})``.

    Raises:
        SessionNotFound, InvalidOption.
    """
    given = {"types": types, "offset": offset, "limit": limit, "include_hidden": include_hidden}
    options = _options("get_session_messages", opts, given, given)
    return _runtime_of(session_id).get_session_messages(session_id, **options)


def delete_session(session_id: Session | str) -> None:
    """Delete a session's history (stopping it first if it is live).

    Raises:
        SessionNotFound.
    """
    _runtime_of(session_id).delete_session(session_id)


def fork_session(
    session: Session | str,
    opts: Mapping[str, Any] | None = None,
    /,
    *,
    session_id: str | None = _UNSET,
    extra: Mapping[str, Any] | None = _UNSET,
    include_hidden: bool = _UNSET,
) -> SessionRecord:
    """Copy a session's history into a new stored session (resumable under its id).

    Raises:
        SessionNotFound, InvalidOption.
    """
    given = {"session_id": session_id, "extra": extra, "include_hidden": include_hidden}
    options = _options("fork_session", opts, given, given)
    return _runtime_of(session).fork_session(session, **options)


def revert_session(session: Session | str, selector: Any) -> SessionRecord:
    """Hide the messages after ``selector`` (a revert view; nothing is deleted).

    Raises:
        SessionNotFound, InvalidSelector.
    """
    return _runtime_of(session).revert_session(session, selector)


def unrevert_session(session: Session | str) -> SessionRecord:
    """Clear a session's revert view.

    Raises:
        SessionNotFound.
    """
    return _runtime_of(session).unrevert_session(session)


def share_session(
    session: Session | str,
    opts: Mapping[str, Any] | None = None,
    /,
    *,
    share_id: str | None = _UNSET,
) -> ShareRecord:
    """Share a session; returns the share.

    Raises:
        SessionNotFound, InvalidOption.
    """
    given = {"share_id": share_id}
    return _runtime_of(session).share_session(
        session, **_options("share_session", opts, given, given)
    )


def unshare_session(session: Session | str) -> ShareRecord:
    """Revoke a session's share.

    Raises:
        SessionNotFound, NotShared.
    """
    return _runtime_of(session).unshare_session(session)


def summarize_session(
    session: Session | str,
    opts: Mapping[str, Any] | None = None,
    /,
    *,
    content: str | None = _UNSET,
) -> SummaryRecord:
    """Summarize a session (or store ``content`` as its summary).

    Raises:
        SessionNotFound, InvalidOption.
    """
    given = {"content": content}
    return _runtime_of(session).summarize_session(
        session, **_options("summarize_session", opts, given, given)
    )


# --- the store: threads ---------------------------------------------------------------------


def thread_start(
    session: Session | str,
    opts: Mapping[str, Any] | None = None,
    /,
    *,
    name: str | None = _UNSET,
    metadata: Mapping[str, Any] | None = _UNSET,
    thread_id: str | None = _UNSET,
    parent_thread_id: str | None = _UNSET,
) -> ThreadRecord:
    """Start a thread in a session (it becomes the active thread).

    Raises:
        SessionNotFound, InvalidOption.
    """
    given = {
        "name": name,
        "metadata": metadata,
        "thread_id": thread_id,
        "parent_thread_id": parent_thread_id,
    }
    return _runtime_of(session).thread_start(
        session, **_options("thread_start", opts, given, given)
    )


def thread_resume(session: Session | str, thread_id: str) -> ThreadRecord:
    """Make a thread the session's active thread again.

    Raises:
        SessionNotFound, ThreadNotFound.
    """
    return _runtime_of(session).thread_resume(session, thread_id)


def thread_list(session: Session | str) -> list[ThreadRecord]:
    """A session's threads.

    Raises:
        SessionNotFound.
    """
    return _runtime_of(session).thread_list(session)


def thread_fork(
    session: Session | str,
    thread_id: str,
    opts: Mapping[str, Any] | None = None,
    /,
    *,
    name: str | None = _UNSET,
) -> ThreadRecord:
    """Fork a thread into a new one.

    Raises:
        SessionNotFound, ThreadNotFound, InvalidOption.
    """
    given = {"name": name}
    return _runtime_of(session).thread_fork(
        session, thread_id, **_options("thread_fork", opts, given, given)
    )


def thread_read(
    session: Session | str,
    thread_id: str,
    opts: Mapping[str, Any] | None = None,
    /,
    *,
    include_messages: bool = _UNSET,
) -> ThreadDetail:
    """A thread, with its messages when ``include_messages``.

    Raises:
        SessionNotFound, ThreadNotFound, InvalidOption.
    """
    given = {"include_messages": include_messages}
    return _runtime_of(session).thread_read(
        session, thread_id, **_options("thread_read", opts, given, given)
    )


def thread_archive(session: Session | str, thread_id: str) -> ThreadRecord:
    """Archive a thread.

    Raises:
        SessionNotFound, ThreadNotFound.
    """
    return _runtime_of(session).thread_archive(session, thread_id)


def thread_unarchive(session: Session | str, thread_id: str) -> ThreadRecord:
    """Unarchive a thread.

    Raises:
        SessionNotFound, ThreadNotFound.
    """
    return _runtime_of(session).thread_unarchive(session, thread_id)


def thread_rollback(session: Session | str, thread_id: str, selector: Any) -> ThreadRecord:
    """Roll a thread back to ``selector`` (its later messages are hidden).

    Raises:
        SessionNotFound, ThreadNotFound, InvalidSelector.
    """
    return _runtime_of(session).thread_rollback(session, thread_id, selector)
