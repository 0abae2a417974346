"""``copilot``: GitHub Copilot CLI driven over ACP (``copilot --acp --no-auto-update``).

A thin configuration of :class:`~beamagent.backends.acp.AcpHandler`. What is
particular to Copilot CLI 1.0.102:

* **No ``authenticate``.** It lists a ``copilot-login`` method, but a logged-in
  user or bring-your-own-key mode (``COPILOT_PROVIDER_BASE_URL``,
  ``COPILOT_PROVIDER_API_KEY``) needs none.
* **The model comes from ``COPILOT_MODEL``** at start: the ``model`` option
  sets it (over any ``COPILOT_MODEL`` in ``env``), so a restarted session
  starts with the model last set. ``session/new`` offers no models, but
  ``session/set_model`` works on a live session (verified: the next request
  to the provider names the new model), so ``set_model`` is sent live.
* **Native resume.** ``session/load`` works in a new process and replays the
  conversation; a restarted session, or ``native_session_id=``, continues it.
  The agent's replayed updates are not delivered again (they are stored). A
  loaded session keeps the model it had, whatever ``COPILOT_MODEL`` says, so
  the handler sends ``session/set_model`` after ``session/load``.
* **Modes** are URLs (``https://agentclientprotocol.com/protocol/session-modes#agent``,
  ``#plan``, ``#autopilot``); ``permission_mode`` also takes the short names
  ``agent``, ``plan``, ``autopilot``. **``autopilot`` is refused** unless
  ``allow_autopilot=True``: it turns every permission request into an allow
  and waits for a ``task_complete`` tool call that a plain model never makes,
  so a turn does not end.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Final

from beamagent.backends.acp import AcpHandler
from beamagent.capabilities import Capability
from beamagent.errors import InvalidOption
from beamagent.tools._access import ToolServerAccess

__all__ = ["CopilotHandler"]

MODEL_ENV: Final = "COPILOT_MODEL"
"""The environment variable Copilot CLI reads its model from."""


class CopilotHandler(AcpHandler):
    """Handler of the ``copilot`` backend (see the module docstring).

    Options: those of :class:`~beamagent.backends.acp.AcpHandler` but
    ``command``: ``cli_path``, ``cwd``, ``model`` (``COPILOT_MODEL``),
    ``permission_mode`` (``agent``, ``plan``; ``autopilot`` only with
    ``allow_autopilot=True``), ``allow_autopilot``, ``auth_method`` (default:
    none), ``mcp_servers``, ``env``, ``inherit_env``, ``extra_args``,
    ``command_prefix``, ``permission_handler``, ``permission_default``,
    ``include_partial_messages``, ``native_session_id`` (a Copilot session
    to load), ``tool_server`` (set by the runtime for Python tools: over ACP,
    with ``--allow-tool <server>``).
    """

    name: ClassVar[str] = "copilot"
    hibernates: ClassVar[bool] = True  # woken with session/load
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
    cli_name: ClassVar[str | None] = "copilot"
    npm_package: ClassVar[str | None] = "@github/copilot"
    cli_args: ClassVar[tuple[str, ...]] = ("--acp", "--no-auto-update")
    default_auth_method: ClassVar[str | None] = None
    native_load: ClassVar[bool] = True
    model_switch: ClassVar[bool | None] = True  # unadvertised, verified against 1.0.102

    def __init__(self, options: Any) -> None:
        super().__init__(options)
        if self.model is None:
            self.model = self.env.get(MODEL_ENV) or None

    @classmethod
    def option_names(cls) -> frozenset[str]:
        return super().option_names() | {"allow_autopilot"}

    def tool_server_args(self, access: ToolServerAccess) -> list[str]:
        # Every tool of the session's MCP server, without asking (the server is only ours).
        return ["--allow-tool", access.server_name]

    def launch_environment(self) -> dict[str, str]:
        env = super().launch_environment()
        if self.model:
            env[MODEL_ENV] = str(self.model)
        return env

    def check_mode(self, mode: str) -> None:
        allowed = self.options.get("allow_autopilot", False)
        if not isinstance(allowed, bool):
            raise InvalidOption(f"option 'allow_autopilot' must be a bool; got {allowed!r}")
        if not allowed and re.split(r"[#/]", mode)[-1].strip().lower() == "autopilot":
            raise InvalidOption(
                "copilot's 'autopilot' mode is refused: it allows every tool without asking "
                "and ends a turn only when the model calls its task_complete tool, which a "
                "model that does not know it never does (the turn then never ends); pass "
                "allow_autopilot=True to use it anyway"
            )
