"""Tool methods of ``Runtime``: the runtime's tools, its tool server, each session's grant.

The tool server is started on first need -- the first session with tools on a
backend that takes ``tool_server`` -- as a child of the runtime's root
supervisor, so ``mcp`` is imported only then. A runtime whose tools only ever
reach ``openai`` sessions (which run them in-process) never starts it.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any

import pykka

from beamagent.backends.permissions import PermissionPolicy
from beamagent.capabilities import Capability
from beamagent.errors import (
    BeamAgentError,
    InvalidOption,
    MissingDependency,
    UnsupportedCapability,
)
from beamagent.log import get_logger
from beamagent.tools._state import Grant, ToolServerConfig, ToolServerState
from beamagent.tools._tool import Tool, ToolSet
from supervisors import ChildSpec, StartChildError, whereis

if TYPE_CHECKING:
    from beamagent.runtime import BackendSpec
    from supervisors import SupervisorRef

__all__ = ["SessionTools", "ToolsApi"]

log = get_logger(__name__)

TOOL_SESSION_OPTIONS = frozenset({"tools", "tool_context"})
"""Session options about tools: taken by the runtime, never passed to a handler as such."""


class SessionTools:
    """What a session's tools add to its configuration (see ``ToolsApi._session_tools``)."""

    __slots__ = ("handler_options", "info", "on_stopped")

    def __init__(
        self,
        handler_options: dict[str, Any],
        info: dict[str, Any],
        on_stopped: Any = None,
    ) -> None:
        self.handler_options = handler_options
        self.info = info
        self.on_stopped = on_stopped


_NO_TOOLS_INFO: dict[str, Any] = {"tools": []}
"""The ``info`` of every session without tools: shared, never changed (``session_info``
copies its lists), so an idle session keeps no dict and list of its own for it."""


def _tool_context(value: Any) -> dict[str, str | None]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not set(value) <= {"run_id", "node_id"}:
        raise InvalidOption(
            f"option 'tool_context' must be a mapping with run_id and/or node_id; got {value!r}"
        )
    for key, item in value.items():
        if item is not None and not isinstance(item, str):
            raise InvalidOption(f"tool_context[{key!r}] must be a str or None; got {item!r}")
    return dict(value)


class ToolsApi:
    """Mixed into ``Runtime``: see the module docstring and ``docs/tools.md``."""

    if TYPE_CHECKING:
        id: str
        root: SupervisorRef
        _names: dict[str, tuple[str, ...]]
        _stopped: bool

        def _session_name(self, session_id: str) -> tuple[str, ...]: ...

    _tools: ToolSet
    _tool_config: ToolServerConfig
    _tool_state: ToolServerState | None = None

    def _init_tools(self, tools: Any, tool_server: Any) -> None:
        self._tools = ToolSet.of(tools, "tools")
        self._tool_config = ToolServerConfig.of(tool_server)
        self._tool_state = None
        self._tool_lock = threading.Lock()
        self._names["tools"] = ("beamagent", self.id, "tools")

    @property
    def tools(self) -> tuple[Tool, ...]:
        """The tools every session of this runtime gets (``Runtime(tools=[...])``)."""
        return self._tools.tools

    @property
    def tool_server_url(self) -> str | None:
        """The tool server's MCP endpoint (``http://127.0.0.1:PORT/mcp``); None until it started."""
        state = self._tool_state
        return state.url if state is not None else None

    def start_tool_server(self) -> str:
        """Start the tool server now (sessions start it when they first need it); its URL.

        Raises:
            MissingDependency: the ``tools`` extra is not installed.
            BeamAgentError: the runtime is stopped, or the server cannot start.
        """
        state = self._ensure_tool_server()
        assert state.url is not None
        return state.url

    def _ensure_tool_server(self) -> ToolServerState:
        with self._tool_lock:
            if self._stopped:
                raise BeamAgentError(f"runtime {self.id} is stopped")
            _require_tools_extra()
            from beamagent.tools._server import ToolServer  # imports mcp: only now

            state = self._tool_state
            if state is None:
                state = ToolServerState(self._tool_config)
                self._tool_state = state
            state.bind()
            name = self._names["tools"]
            if whereis(name) is None:
                spec = ChildSpec(
                    "tools",
                    (ToolServer, (state,), {}),
                    restart="permanent",
                    shutdown=10.0,
                    name=name,
                )
                try:
                    self.root.start_child(spec, timeout=30.0)
                except StartChildError as exc:
                    if "already" not in repr(exc.reason).lower():
                        raise BeamAgentError(
                            f"the tool server did not start: {exc.reason!r}"
                        ) from exc
            return state

    def _close_tools(self) -> None:
        """After the tree stopped: close the listening sockets, forget every grant."""
        state = self._tool_state
        if state is not None:
            state.close()

    def _revoke_tools(self, session_id: str) -> None:
        state = self._tool_state
        if state is not None:
            state.revoke(session_id)

    def _session_tools(
        self, spec: BackendSpec, merged: dict[str, Any], session_id: str
    ) -> SessionTools:
        """Take ``tools`` / ``tool_context`` out of ``merged``; what the session gets instead.

        Raises:
            InvalidOption: a bad tool list or context, or ``tool_server`` given by hand.
            UnsupportedCapability: tools asked for on a backend that cannot take them.
            MissingDependency: tools on a CLI backend without the ``tools`` extra.
        """
        if "tool_server" in merged:
            raise InvalidOption(
                "option 'tool_server' is set by the runtime; give tools with tools=[...]"
            )
        explicit = "tools" in merged
        tools = ToolSet.of(merged.pop("tools"), "tools") if explicit else self._tools
        context = _tool_context(merged.pop("tool_context", None))
        if not tools:
            return SessionTools({}, _NO_TOOLS_INFO)
        names = spec.handler.option_names()
        if "tool_server" in names:
            if whereis(self._session_name(session_id)) is not None:
                # Checked before granting: a new grant would replace the live session's token.
                raise InvalidOption(f"session {session_id!r} is already running")
            state = self._ensure_tool_server()
            policy = PermissionPolicy.from_options(merged)
            access = state.grant(
                Grant(
                    session_id=session_id,
                    backend=spec.name,
                    tools=tools,
                    decide=policy.decide if policy.handler is not None else None,
                    run_id=context.get("run_id"),
                    node_id=context.get("node_id"),
                    report_to=self._session_name(session_id),
                )
            )
            return SessionTools(
                {"tool_server": access},
                {"tools": list(tools.names()), "tool_server_url": access.url},
                self._revoke_tools,
            )
        if "tools" in names:
            options: dict[str, Any] = {"tools": tools}
            if "tool_context" in names and context:
                options["tool_context"] = context
            return SessionTools(options, {"tools": list(tools.names())})
        if explicit:
            raise UnsupportedCapability(spec.name, Capability.IN_PROCESS_MCP.value)
        log.debug("tools_not_given", backend=spec.name, session_id=session_id)
        return SessionTools({}, {"tools": []})

    def _tool_server_ref(self) -> pykka.ActorRef[Any] | None:
        """The tool server's live process, if it runs."""
        name: Hashable = self._names["tools"]
        return whereis(name)


def _require_tools_extra() -> None:
    missing = [m for m in ("mcp", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependency(
            f"Python tools on a CLI backend need the tool server's dependencies "
            f"({', '.join(missing)} missing): pip install 'beamagent[tools]'"
        )
