"""``NodeRuntime``: the Ray actor that hosts sessions and runs on one node.

One per Ray node that should host sessions: a named, detached actor pinned to
its node (``NodeAffinitySchedulingStrategy(node_id, soft=False)``), threaded
(``max_concurrency``) so that one blocking query does not hold up the others.
It holds a normal local :class:`~beamagent.Runtime` over the shared store, and
forwards to it: start/resume, session calls, streams, stop, graph runs, plus
what placement needs (load, backends available here, their health).

Every beamagent error it raises is boxed in a :class:`RemoteFailure` so the
caller gets the same typed error as from a local runtime.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ParamSpec, TypeVar

from beamagent.cluster._ray import RemoteFailure
from beamagent.errors import BeamAgentError, InvalidOption, RunNotFound
from beamagent.graph.job import Job
from beamagent.graph.run import Run, RunResult
from beamagent.log import get_logger
from beamagent.messages import Message

__all__ = ["SESSION_METHODS", "NodeRuntime"]

log = get_logger(__name__)

SESSION_METHODS = frozenset(
    {
        "query",
        "send_query",
        "receive_message",
        "interrupt",
        "abort",
        "health",
        "session_info",
        "set_model",
        "set_permission_mode",
        "send_control",
    }
)
"""``Session`` methods a node runtime forwards by name."""

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _boxed(method: Callable[_P, _R]) -> Callable[_P, _R]:
    @functools.wraps(method)
    def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except BeamAgentError as exc:
            raise RemoteFailure.of(exc) from None

    return call


class NodeRuntime:
    """A local runtime on one cluster node, driven through Ray.

    Args:
        node_id: the Ray node id it is pinned to.
        store: the shared store spec (a PostgreSQL URL, or a SQLite path that
            every node can reach).
        options: ``Runtime`` keyword arguments for this node (``backends``,
            ``session_defaults``, ``session_restarts``...), and ``env``: variables
            set in this process first (credentials, ``PATH`` for CLIs).
    """

    def __init__(self, node_id: str, store: str, options: Mapping[str, Any] | None = None) -> None:
        from beamagent.runtime import Runtime

        opts = dict(options or {})
        for key, value in dict(opts.pop("env", None) or {}).items():
            os.environ[str(key)] = str(value)
        self.node_id = node_id
        self.incarnation = uuid.uuid4().hex
        self._log = log.bind(node_id=node_id)
        self.runtime = Runtime(store=store, handle_signals=False, **opts)
        self._runs: dict[str, Run] = {}  # every run started here, finished ones too
        self._log.info("node_runtime_started", incarnation=self.incarnation, pid=os.getpid())

    # --- what placement needs -----------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Node id, incarnation, load (live sessions), backends available here and their health."""
        runtime = self.runtime
        health = {k: v for k, v in runtime.backend_health().items() if v != "healthy"}
        return {
            "node": self.node_id,
            "incarnation": self.incarnation,
            "pid": os.getpid(),
            "load": len(runtime.live_sessions()),
            "sessions": runtime.live_sessions(),
            "runs": runtime.live_runs(),
            "backends": runtime.available_backends(),
            "backend_health": health,
        }

    def ping(self) -> str:
        """This incarnation's id (a new one after the actor restarted)."""
        return self.incarnation

    # --- sessions ----------------------------------------------------------------------

    @_boxed
    def start_session(self, backend: str, opts: Mapping[str, Any]) -> dict[str, Any]:
        """Start (or, with ``resume``, resume) a session here; its ``session_info``."""
        session = self.runtime.start_session(backend, **dict(opts))
        self._log.info("session_placed", session_id=session.session_id, backend=backend)
        info = self._info(session.session_info())
        info["node_incarnation"] = self.incarnation  # the incarnation that holds it
        return info

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        info["node"] = self.node_id
        return info

    @_boxed
    def call(
        self, session_id: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """``Session.<method>(*args, **kwargs)`` on a session here."""
        if method not in SESSION_METHODS:
            raise InvalidOption(f"{method!r} is not a session method a node forwards")
        result = getattr(self.runtime.session(session_id), method)(*args, **kwargs)
        if method == "session_info":
            return self._info(result)
        return result

    def stream(
        self, session_id: str, prompt: str, timeout: float | None, params: dict[str, Any]
    ) -> Iterator[Message]:
        """The messages of a query as they arrive (a Ray streaming generator)."""
        try:
            session = self.runtime.session(session_id)
            yield from session.stream(prompt, timeout=timeout, **params)
        except BeamAgentError as exc:
            raise RemoteFailure.of(exc) from None

    @_boxed
    def has_session(self, session_id: str) -> bool:
        """Whether the session is live here."""
        return session_id in self.runtime.live_sessions()

    @_boxed
    def stop_session(self, session_id: str) -> None:
        """Stop a session here (its history stays in the store)."""
        self.runtime.stop_session(session_id)

    def live_sessions(self) -> list[str]:
        """Ids of the sessions live here."""
        return self.runtime.live_sessions()

    # --- graph runs --------------------------------------------------------------------

    @_boxed
    def run_job(self, job: Job, input: Any, run_id: str, options: Mapping[str, Any]) -> str:
        """Start a (durable) run of ``job`` here."""
        run = self.runtime.run_job(job, input, run_id, **dict(options))
        self._runs[run.run_id] = run
        self._log.info("run_placed", run_id=run.run_id)
        return run.run_id

    @_boxed
    def resume_run(self, run_id: str, job: Job, options: Mapping[str, Any]) -> str:
        """Resume a checkpointed run here (its node was lost)."""
        run = self.runtime.resume_run(run_id, job, **dict(options))
        self._runs[run_id] = run
        self._log.info("run_resumed", run_id=run_id)
        return run.run_id

    @_boxed
    def run_result(self, run_id: str, timeout: float | None) -> RunResult | None:
        """The run's result once it ended, waiting up to ``timeout``; None if still running."""
        run = self._runs.get(run_id)
        if run is None:
            raise RunNotFound(f"run {run_id!r} is not on node {self.node_id}")
        try:
            return run.result(timeout, raise_error=False)
        except TimeoutError:
            return None

    # --- lifecycle ---------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop the local runtime (sessions and runs end; their history stays)."""
        self.runtime.stop()
        self._log.info("node_runtime_stopped")

    def snapshot(self) -> dict[str, Any]:
        """The local runtime's tree, sessions and runs (what ``beamagent top`` shows)."""
        from beamagent.control.snapshot import take_snapshot

        data = take_snapshot(self.runtime)
        data["node"] = self.node_id
        return data
