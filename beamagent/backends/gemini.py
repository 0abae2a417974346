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

Python tools are allowed with ``--allowed-tools``, which in Gemini CLI replaces the
``tools.allowed`` setting instead of adding to it; so the flag also carries the
``tools.allowed`` the agent would read from its system, user and system-defaults
settings (:func:`configured_allowed_tools`). A workspace's ``.gemini/settings.json``
is not read: Gemini applies it only in a trusted folder, and the command line would
bypass that decision.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from beamagent.backends.acp import AcpHandler
from beamagent.capabilities import Capability
from beamagent.tools._access import STRUCTURED_HEADER, ToolServerAccess

__all__ = ["GeminiHandler", "configured_allowed_tools"]


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
        if not names:
            return []
        # The flag replaces the settings' tools.allowed: carry the user's along.
        kept = [n for n in configured_allowed_tools(self.env) if n not in names]
        return ["--allowed-tools", ",".join([*kept, *names])]

    def tool_server_headers(self, access: ToolServerAccess) -> dict[str, str]:
        # Gemini parses a result's first text block as JSON when there is no
        # structuredContent, and fails on anything but an object (a tool returning 42).
        return {STRUCTURED_HEADER: "always"}


# A string, a // comment or a /* */ comment (Gemini reads its settings as JSON with comments).
_JSONC_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/', re.DOTALL)


def _settings_file(path: Path) -> Mapping[str, Any]:
    """One settings file as Gemini parses it; empty when missing or unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    text = _JSONC_TOKEN.sub(lambda m: m.group(0) if m.group(0)[0] == '"' else " ", text)
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def configured_allowed_tools(env: Mapping[str, str]) -> list[str]:
    """The ``tools.allowed`` setting Gemini CLI would apply, without the workspace's.

    Gemini merges its settings scopes by replacing arrays, in the order system
    defaults < user < workspace < system; this reads the system settings
    (``GEMINI_CLI_SYSTEM_SETTINGS_PATH``, else ``/etc/gemini-cli/settings.json``), the
    user's (``$GEMINI_CLI_HOME`` or ``$HOME``, ``.gemini/settings.json``) and the system
    defaults (``GEMINI_CLI_SYSTEM_DEFAULTS_PATH``, else ``system-defaults.json`` beside
    the system settings), with ``env`` the agent's environment. Malformed files and
    entries that are not strings are ignored (the CLI reports those itself).
    """
    system = Path(env.get("GEMINI_CLI_SYSTEM_SETTINGS_PATH") or "/etc/gemini-cli/settings.json")
    defaults = Path(
        env.get("GEMINI_CLI_SYSTEM_DEFAULTS_PATH") or system.parent / "system-defaults.json"
    )
    home = env.get("GEMINI_CLI_HOME") or env.get("HOME") or os.path.expanduser("~")
    user = Path(home) / ".gemini" / "settings.json"
    for path in (system, user, defaults):  # the first scope that sets it wins
        tools = _settings_file(path).get("tools")
        allowed = tools.get("allowed") if isinstance(tools, dict) else None
        if isinstance(allowed, list):
            return [name for name in allowed if isinstance(name, str) and name]
    return []
