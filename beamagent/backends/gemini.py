"""``gemini``: Google's Gemini CLI driven over ACP (``gemini --acp``).

A thin configuration of :class:`~beamagent.backends.acp.AcpHandler`: the
pinned ``gemini`` executable, ``authenticate`` with ``gemini-api-key`` (the
agent lists several methods and needs one chosen), and no native resume.

Gemini CLI 0.61.0 advertises ``loadSession`` but its ``session/load`` from a
new process always fails offline ("No previous sessions found" / "Invalid
session identifier": it overwrites its message list before it reads the
session file). So this backend never claims native resume: a restarted or
resumed session starts a new ACP session and the session replays its stored
history (see :meth:`~beamagent.backends.base.BackendHandler.replay_history`).
The Gemini session id is still reported as ``native_session_id``
(``gemini -p --resume <id>`` can continue it outside beamagent).
"""

from __future__ import annotations

from typing import ClassVar

from beamagent.backends.acp import AcpHandler
from beamagent.capabilities import Capability
from beamagent.tools._access import STRUCTURED_HEADER, ToolServerAccess

__all__ = ["GeminiHandler"]


class GeminiHandler(AcpHandler):
    """Handler of the ``gemini`` backend (see the module docstring).

    Options: those of :class:`~beamagent.backends.acp.AcpHandler` but
    ``command`` and ``native_session_id``: ``cli_path``, ``cwd``, ``model``
    (``session/set_model``; Gemini accepts any model id, ``auto`` by default),
    ``permission_mode`` (``default``, ``autoEdit``, ``yolo``, ``plan``),
    ``auth_method`` (default ``gemini-api-key``, which reads
    ``GEMINI_API_KEY``), ``mcp_servers``, ``env``, ``inherit_env``,
    ``extra_args``, ``command_prefix``, ``permission_handler``,
    ``permission_default``, ``include_partial_messages``, ``tool_server``
    (set by the runtime for Python tools: over ACP, with ``--allowed-tools``
    for them and ``structuredContent`` asked of the server).
    """

    name: ClassVar[str] = "gemini"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.SESSION_LIFECYCLE,
            Capability.SESSION_INFO,
            Capability.RUNTIME_MODEL_SWITCH,
            Capability.INTERRUPT,
            Capability.PERMISSION_MODE,
            Capability.SESSION_HISTORY,
            Capability.APPROVAL_CALLBACKS,
            Capability.COMMAND_EXECUTION,
            Capability.EVENT_STREAMING,
            Capability.IN_PROCESS_MCP,
        }
    )
    cli_name: ClassVar[str | None] = "gemini"
    npm_package: ClassVar[str | None] = "@google/gemini-cli"
    cli_args: ClassVar[tuple[str, ...]] = ("--acp",)
    default_auth_method: ClassVar[str | None] = "gemini-api-key"
    native_load: ClassVar[bool] = False  # 0.61.0: session/load in a new process always fails
    model_switch: ClassVar[bool | None] = True  # session/set_model, verified against 0.61.0

    def tool_server_args(self, access: ToolServerAccess) -> list[str]:
        # Gemini names an MCP server's tools mcp_<server>_<tool>. ACP gives a server no
        # "trust" flag; --allowed-tools makes policy rules that allow these without asking.
        names = [f"mcp_{access.server_name}_{name}" for name in access.tool_names]
        return ["--allowed-tools", ",".join(names)] if names else []

    def tool_server_headers(self, access: ToolServerAccess) -> dict[str, str]:
        # Gemini parses a result's first text block as JSON when there is no
        # structuredContent, and fails on anything but an object (a tool returning 42).
        return {STRUCTURED_HEADER: "always"}
