"""Every typed error a beamagent user can catch.

All of them derive from :class:`BeamAgentError`, itself a
:class:`supervisors.ReplyError`: when an actor raises one while answering a
call, the caller gets it and the actor keeps running. Any other exception is a
crash that the actor's supervisor handles.

The hierarchy is shallow on purpose: catch :class:`BeamAgentError` for
"anything beamagent refused", or a specific class for one condition.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from supervisors import ReplyError

__all__ = [
    "BackendNotEligible",
    "BadQueryRef",
    "BeamAgentError",
    "BufferOverflow",
    "CassetteMismatch",
    "ClusterUnavailable",
    "ConnectTimeout",
    "ControlSocketError",
    "ControlSocketRefused",
    "ControlSocketUnavailable",
    "InputRequired",
    "Interrupted",
    "InvalidJob",
    "InvalidNext",
    "InvalidNode",
    "InvalidOption",
    "InvalidRouteRequest",
    "InvalidSelector",
    "JobNotLoaded",
    "MaxRetriesExceeded",
    "MaxStepsExceeded",
    "MissingDependency",
    "NoActiveQuery",
    "NoBackendAvailable",
    "NodeLost",
    "NotShared",
    "ProtocolError",
    "QueryComplete",
    "QueryFailed",
    "QueryInProgress",
    "QueryTimeout",
    "RetryRequested",
    "RunAlreadyExists",
    "RunError",
    "RunNotFound",
    "ServingFailed",
    "SessionError",
    "SessionNotFound",
    "SessionRestarting",
    "StopTimeout",
    "StoreError",
    "ThreadNotFound",
    "ToolError",
    "TransportError",
    "UnknownBackend",
    "UnknownCapability",
    "UnknownControlMethod",
    "UnsupportedCapability",
]


class BeamAgentError(ReplyError):
    """Base class of every beamagent error."""


# --- options and configuration -------------------------------------------------


class InvalidOption(BeamAgentError, ValueError):
    """An option has an unknown name or a value of the wrong kind or range."""


class UnknownBackend(BeamAgentError, ValueError):
    """No backend of this name is registered with the runtime."""

    def __init__(self, backend: Any, known: Sequence[str] = ()) -> None:
        self.backend = backend
        self.known = tuple(known)
        hint = f"; known backends: {', '.join(self.known)}" if self.known else ""
        super().__init__(f"unknown backend {backend!r}{hint}")


class UnknownCapability(BeamAgentError, ValueError):
    """A capability id that no backend declares (see ``beamagent.capabilities``)."""

    def __init__(self, capability: Any) -> None:
        self.capability = capability
        super().__init__(f"unknown capability {capability!r}")


# --- sessions ------------------------------------------------------------------


class SessionNotFound(BeamAgentError, LookupError):
    """No live (or stored) session has this id."""

    def __init__(self, session_id: Any) -> None:
        self.session_id = session_id
        super().__init__(f"no session {session_id!r}")


class SessionError(BeamAgentError):
    """The session failed: its backend died, it failed to start, or it was given up.

    A call that was cut off by its session's end raises this; calls made
    while a session restarts wait for it instead. ``reason`` says what went
    wrong (``"given_up"`` when the session spent its restart budget).

    Attributes:
        reason: a short machine-readable cause.
        delivered: for a query cut off by the end of its session: ``True`` if
            the prompt had reached the backend, ``False`` if it had not (it is
            then safe to send again), ``None`` when not a query or unknown.
    """

    def __init__(self, message: str, reason: Any = None, *, delivered: bool | None = None) -> None:
        self.reason = reason
        self.delivered = delivered
        super().__init__(message)


class NodeLost(SessionError):
    """The cluster node a session ran on died (or its node runtime did) during a call.

    A query cut off this way is **not** sent again (at most once): ``delivered``
    is None, since whether the prompt reached the backend is unknown. The
    session itself is restarted on a surviving node and resumed from the shared
    store; later calls on the same handle wait for that (bounded) and work.

    Attributes:
        node: the id of the lost node.
    """

    def __init__(self, message: str, node: str, *, delivered: bool | None = None) -> None:
        self.node = node
        super().__init__(message, reason="node_lost", delivered=delivered)


class ClusterUnavailable(BeamAgentError):
    """The cluster (its controller, or every node runtime) did not answer in time.

    Check that the Ray cluster is up and that ``beamagent.cluster.deploy`` ran
    against it (``ClusterRuntime(...)`` deploys what is missing).
    """


class SessionRestarting(SessionError):
    """The session's backend died and its supervisor is about to restart it.

    The call was not carried out. ``Session`` handles catch it, wait for the
    restarted session and make the call again; users see it only when they
    talk to a session actor directly.
    """


class TransportError(SessionError):
    """The backend's transport (process, socket, HTTP stream) failed."""


class CassetteMismatch(TransportError):
    """A cassette replay diverged from its recording (a different prompt, an extra write).

    The message holds a unified diff of the recorded write and the one made; re-record
    the cassette (mode ``record``) if the change is intended.
    """


class ConnectTimeout(SessionError, TimeoutError):
    """The backend did not connect or finish its handshake in time."""


class ControlSocketError(BeamAgentError):
    """A runtime's control socket could not be created, reached or trusted."""


class ControlSocketRefused(ControlSocketError):
    """The control socket is not safe to use: another user's, a mode wider than 0600,
    a path that is not a socket, or a peer of another user."""


class ControlSocketUnavailable(ControlSocketError):
    """No runtime answers at this control socket: the file is missing or nobody listens."""


class ProtocolError(BeamAgentError):
    """A backend sent something that breaks its wire protocol."""


class QueryInProgress(BeamAgentError):
    """The session already runs a query; wait for it or interrupt it."""


class NoActiveQuery(BeamAgentError):
    """``interrupt()``/``abort()`` was called while no query is running."""


class BadQueryRef(BeamAgentError):
    """``receive_message`` was given a ref that is not the session's current query."""


class QueryComplete(BeamAgentError):
    """The query's terminal message has already been received."""


class Interrupted(BeamAgentError):
    """The query was interrupted before its terminal message."""


class QueryTimeout(BeamAgentError, TimeoutError):
    """No message arrived in time; the session was returned to ``ready``."""


class StopTimeout(BeamAgentError, TimeoutError):
    """A session's stop was not confirmed in time; it is still under way.

    The session's supervisor stops its children one at a time, each given its
    shutdown time (5 s for a session whose reply does not end), so many stops at
    once queue behind one another. The stop was asked for and is carried out;
    only the wait for it ended.
    """

    def __init__(self, session_id: Any, seconds: float) -> None:
        self.session_id = session_id
        super().__init__(
            f"session {session_id!r} was not stopped within {seconds} s; its stop is under way"
        )


class QueryFailed(BeamAgentError):
    """A query ended with an error result from the backend (an HTTP or API error, an
    interrupted turn); ``subtype`` is the result's subtype. The session itself is fine:
    asking again may succeed, so a graph node retries it (see ``docs/graphs.md``).
    """

    def __init__(self, message: str, subtype: str | None = None) -> None:
        self.subtype = subtype
        super().__init__(message)


class BufferOverflow(SessionError):
    """The backend sent more unparsed bytes than the session's ``buffer_max``."""


class UnsupportedCapability(BeamAgentError):
    """The session's backend does not support this operation."""

    def __init__(self, backend: str, capability: str) -> None:
        self.backend = backend
        self.capability = capability
        super().__init__(f"backend {backend!r} does not support {capability!r}")


class MissingDependency(BeamAgentError, ImportError):
    """An optional dependency is not installed; the message names the extra to install.

    E.g. Python tools on a CLI backend need the ``mcp`` SDK:
    ``pip install 'beamagent[tools]'``.
    """


class ToolError(BeamAgentError):
    """Raise it in a tool to give the model an error result with exactly this message.

    Any other exception a tool raises gives the model ``"<ExceptionType>: <message>"``;
    either way the session goes on. ``beamagent.tools.ToolError`` is this class.
    """


class UnknownControlMethod(BeamAgentError):
    """``send_control`` got a method that neither the backend nor the fallback knows."""

    def __init__(self, method: Any) -> None:
        self.method = method
        super().__init__(
            f"unknown control method {method!r}; the universal fallback knows "
            "setModel, setPermissionMode, setMaxThinkingTokens and stopTask"
        )


# --- routing -------------------------------------------------------------------


class InvalidRouteRequest(BeamAgentError, ValueError):
    """A route request has an unknown key or a bad value (the message names the key)."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"route request key {key!r}: {message}")


class BackendNotEligible(BeamAgentError):
    """The explicitly requested backend is excluded, unhealthy or lacks a capability."""

    def __init__(self, backend: str, reasons: Sequence[str]) -> None:
        self.backend = backend
        self.reasons = tuple(reasons)
        super().__init__(f"backend {backend!r} is not eligible: {'; '.join(self.reasons)}")


class NoBackendAvailable(BeamAgentError):
    """No backend satisfies the route request."""

    def __init__(
        self,
        policy: str,
        capabilities: Sequence[str] = (),
        preferred: Sequence[str] = (),
        excluded: Sequence[str] = (),
        eligible: Sequence[str] = (),
    ) -> None:
        self.policy = policy
        self.capabilities = tuple(capabilities)
        self.preferred = tuple(preferred)
        self.excluded = tuple(excluded)
        self.eligible = tuple(eligible)
        super().__init__(
            f"no backend available (policy={policy}, capabilities={list(self.capabilities)}, "
            f"preferred={list(self.preferred)}, excluded={list(self.excluded)}, "
            f"eligible={list(self.eligible)})"
        )


# --- store ---------------------------------------------------------------------


class StoreError(BeamAgentError):
    """The session store cannot be opened or used (the message names the path)."""


class InvalidSelector(BeamAgentError, ValueError):
    """A revert/rollback selector is not one of the documented forms."""


class NotShared(BeamAgentError):
    """``unshare_session`` on a session that has no share."""


class ThreadNotFound(BeamAgentError, LookupError):
    """No thread with this id in the session."""


# --- graphs --------------------------------------------------------------------


class InvalidJob(BeamAgentError, ValueError):
    """A job definition is inconsistent (the message names the node or key)."""


class InvalidNode(BeamAgentError):
    """A route instruction names a node the job does not have."""


class JobNotLoaded(BeamAgentError):
    """A ``Sub`` instruction or sub node names a job that was not given to the run."""


class InputRequired(BeamAgentError, ValueError):
    """A run was started with empty input."""


class RunAlreadyExists(BeamAgentError):
    """A run with this id is already running."""


class RunNotFound(BeamAgentError, LookupError):
    """No run (live or checkpointed) has this id."""


class RunError(BeamAgentError):
    """A run ended with an error (the message says which node and why)."""


class MaxRetriesExceeded(RunError):
    """A node visit asked for more retries than the job's ``max_retries``."""


class MaxStepsExceeded(RunError):
    """A run took more node steps than the job's ``max_steps``."""


class InvalidNext(RunError):
    """A node's ``next`` (or its router's instructions) is not a list (Agens: ``invalid_next``).

    The run ends with this error. ``value`` is what was given instead of a list,
    ``node_id`` the node, when known. A ``next`` may be a list or tuple of
    instructions or ``{"type", "value"}`` objects, or None (no ``next``).
    """

    def __init__(self, value: Any, node_id: str | None = None, *, source: str = "next") -> None:
        self.value = value
        self.node_id = node_id
        self.source = source
        if source == "router":
            what = f"the router of node {node_id!r} returned instructions that are"
        elif node_id is not None:
            what = f"node {node_id!r} gave a next that is"
        else:
            what = "a next that is"
        super().__init__(
            f"{what} not a list: {_short_repr(value)} (a {type(value).__name__}); give a list "
            'of instructions or {"type": ..., "value": ...} objects, or None'
        )

    def at_node(self, node_id: str) -> InvalidNext:
        """The same error naming ``node_id``, with this one's traceback."""
        named = InvalidNext(self.value, node_id, source=self.source)
        return named.with_traceback(self.__traceback__)


class ServingFailed(RunError):
    """A node's serving raised an exception that is not retried, so the run ended.

    ``error`` is the serving's exception (also the ``__cause__``), ``node_id``
    and ``thread_id`` say where. Transient backend errors and
    :class:`RetryRequested` are retried instead; to retry other exception types,
    list them in the node's (or the job's) ``retry_on``.
    """

    def __init__(
        self,
        error: BaseException,
        node_id: str,
        *,
        run_id: str | None = None,
        thread_id: str | None = None,
    ) -> None:
        self.error = error
        self.node_id = node_id
        self.run_id = run_id
        self.thread_id = thread_id
        where = f"run {run_id}: " if run_id is not None else ""
        thread = f" (thread {thread_id})" if thread_id is not None else ""
        super().__init__(
            f"{where}the serving of node {node_id!r}{thread} raised {type(error).__name__}: "
            f"{error}; to retry this kind of error, list {type(error).__name__} in the "
            "node's retry_on (or the job's)"
        )
        self.__cause__ = error


class RetryRequested(BeamAgentError):
    """Raised by a serving to ask for its node to run again, with a reason."""

    def __init__(self, reason: str | None = None) -> None:
        self.reason = reason
        super().__init__(reason or "the serving asked for a retry")


def _short_repr(value: Any, limit: int = 200) -> str:
    # The value may come from a model: keep one error message from holding megabytes.
    try:
        text = repr(value)
    except Exception:  # a pathological value (nested too deep, a broken __repr__)
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."
