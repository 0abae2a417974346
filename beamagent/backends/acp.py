"""An Agent Client Protocol (ACP) client: any ACP agent as a beamagent backend.

ACP is JSON-RPC 2.0 over the agent's stdio, one message per line. The agent is
silent until the client speaks; the handshake is::

    → initialize {protocolVersion: 1, clientCapabilities}   ← {agentInfo, agentCapabilities,
                                                               authMethods, protocolVersion}
    → authenticate {methodId}                 (when configured and offered; Gemini needs it)
    → session/new {cwd, mcpServers}           ← {sessionId, modes, models, configOptions}
      (session/load {sessionId, cwd, mcpServers} to continue a stored conversation, when the
      agent advertises ``loadSession`` and the handler allows it)
    → session/set_mode, session/set_model     (the requested permission mode and model, if any)

and the session is ``ready``. A query is ``session/prompt {sessionId, prompt}``;
the agent streams ``session/update`` notifications and finally answers the
request with ``{stopReason}``. Updates become canonical messages:

=========================== ===========================================================
``agent_message_chunk``     ``stream_event`` per chunk (``include_partial_messages``), one
                            ``assistant`` message per run of chunks
``agent_thought_chunk``     one ``thinking`` message per run of chunks
``tool_call``               ``tool_use`` (``tool_name`` the ACP tool kind, ``tool_input``
                            the agent's ``rawInput`` or its title, kind and locations)
``tool_call_update``        ``tool_result`` once the call completed or failed (an
                            ``in_progress`` update is a ``tool_progress`` message)
``plan``                    ``system`` (subtype ``plan``)
``available_commands_update`` ``system`` (subtype ``commands``) and ``supported_commands()``
the prompt's answer         ``result``: ``end_turn`` is ``success``; ``cancelled``,
                            ``max_tokens``, ``max_turn_requests``, ``refusal`` and an error
                            answer are error results (an error answer adds an ``error``)
=========================== ===========================================================

Every tool call of a turn gets exactly one ``tool_result``: one the agent
never closed (e.g. denied, or cut off by the end of the turn) is closed when
the turn ends.

The agent's ``session/request_permission`` goes to the session's permission
handler, off the session's thread; :func:`permission_outcome` maps the answer
onto the options the agent offered. ``interrupt()`` sends ``session/cancel``
and answers a pending permission request ``cancelled``. Requests we do not
serve (``fs/*``, ``terminal/*``: the client says it has neither) are answered
"method not found"; unknown notifications are logged and ignored.

ACP requires the agent's stdout to carry nothing but JSON-RPC: a line that is
not JSON, or not JSON-RPC, fails the session (``SessionError``, reason
``protocol``), after what came before it was delivered and recorded; its
supervisor restarts it, and the conversation continues as after a crash.

**Python tools** (``tools=[...]``, see ``docs/tools.md``): the runtime's tool
server goes in ``session/new`` / ``session/load``'s ``mcpServers`` as an HTTP
server with the session's bearer header -- over the agent's stdin, never its
argv -- when the agent advertises ``mcpCapabilities.http``. A call of one of
them (recognised by its title, :meth:`AcpHandler.own_tool`) is reported as
``tool_use`` ``mcp__<server>__<tool>`` with the model's arguments, announced to
the tool server with its call id, and allowed without the permission handler
should the agent ask (the tool server asks it, once per call).

Both peers number their requests; the two id spaces are kept apart
(:mod:`beamagent.backends.jsonrpc`): only a message without a ``method`` is a
response to us.

:class:`AcpHandler` serves any ACP agent (``command=[...]``); ``gemini`` and
``copilot`` are thin configurations of it.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Final

from beamagent.backends.base import (
    NOTHING,
    BackendHandler,
    Connected,
    HandlerOutput,
    OffThreadCall,
    SessionState,
    SubprocessTransport,
    Transport,
)
from beamagent.backends.jsonl import decode_lines, encode_line
from beamagent.backends.jsonrpc import (
    METHOD_NOT_FOUND,
    InboundRequests,
    PendingRequests,
    RpcKind,
    RpcMessage,
    classify,
    encode_error,
    encode_notification,
    encode_request,
    encode_result,
)
from beamagent.backends.launch import (
    LAUNCH_OPTIONS,
    cli_availability,
    command_prefix,
    extra_args,
    launch_env,
    require_cli,
)
from beamagent.backends.permissions import (
    PERMISSION_OPTIONS,
    Allow,
    Deny,
    PermissionContext,
    PermissionDecision,
    PermissionPolicy,
)
from beamagent.capabilities import Capability
from beamagent.errors import InvalidOption, UnsupportedCapability
from beamagent.log import get_logger
from beamagent.messages import ContentBlock, Message, MessageType
from beamagent.tools._access import ToolServerAccess

__all__ = [
    "ACP_PROTOCOL_VERSION",
    "AcpHandler",
    "acp_usage",
    "permission_outcome",
    "resolve_mode",
    "result_subtype",
]

log = get_logger(__name__)

ACP_PROTOCOL_VERSION: Final = 1
"""The ACP protocol version this client speaks (method names as of schema v1.19)."""
CLIENT_VERSION: Final = "0.1.0"
_UNIVERSAL: Final = frozenset({"setModel", "setPermissionMode", "setMaxThinkingTokens", "stopTask"})
# stopReason -> (result subtype, is_error).
_STOP_REASONS: Final[Mapping[str, tuple[str, bool]]] = {
    "end_turn": ("success", False),
    "cancelled": ("interrupted", True),
    "max_tokens": ("error_max_tokens", True),
    "max_turn_requests": ("error_max_turns", True),
    "refusal": ("refusal", True),
}
_TERMINAL_TOOL_STATUS: Final = frozenset({"completed", "failed"})
# Permission option kinds, and option ids some agents use, by what they mean.
_ALLOW_ONCE: Final = ("allow_once",)
_ALLOW_ALWAYS: Final = ("allow_always",)
_REJECT: Final = ("reject_once", "reject_always")
_KNOWN_KINDS: Final = frozenset({*_ALLOW_ONCE, *_ALLOW_ALWAYS, *_REJECT})
_ALLOW_IDS: Final = ("allow_once", "proceed_once", "allow", "proceed", "approve")
_REJECT_IDS: Final = ("reject_once", "reject", "deny", "cancel")
_CAMEL: Final = re.compile(r"(?<!^)(?=[A-Z])")
_PREVIEW: Final = 200


# --- pure decisions ------------------------------------------------------------------------


def resolve_mode(requested: str, modes: Sequence[Mapping[str, Any]]) -> str | None:
    """The id of the offered mode ``requested`` names, or None.

    An exact id wins; otherwise the last segment of an id (Copilot's ids are
    URLs ending in ``#plan``) or a mode's name, case-insensitively.

        >>> modes = [{"id": "https://x/session-modes#plan", "name": "Plan"}]
        >>> resolve_mode("plan", modes)
        'https://x/session-modes#plan'
        >>> resolve_mode("yolo", modes) is None
        True
    """
    ids = [m.get("id") for m in modes if isinstance(m.get("id"), str)]
    if requested in ids:
        return requested
    folded = requested.strip().lower()
    for mode in modes:
        mode_id = mode.get("id")
        if not isinstance(mode_id, str):
            continue
        short = re.split(r"[#/]", mode_id)[-1].lower()
        name = mode.get("name")
        if folded == short or (isinstance(name, str) and folded == name.strip().lower()):
            return mode_id
    return None


def permission_outcome(
    options: Sequence[Mapping[str, Any]], decision: PermissionDecision
) -> dict[str, Any]:
    """The ``outcome`` answering a ``session/request_permission`` with ``decision``.

    :class:`Allow` selects an ``allow_once`` option (``allow_always`` when it
    carries ``updated_permissions``: the user asked to remember the answer);
    :class:`Deny` selects a ``reject_once`` option, else ``reject_always``.
    Options without a known ``kind`` are matched by id (``proceed_once``,
    ``cancel``...); an id never overrides a known kind. When nothing offered
    fits, the answer is ``cancelled``.

        >>> offered = [{"optionId": "proceed_once", "kind": "allow_once"},
        ...            {"optionId": "cancel", "kind": "reject_once"}]
        >>> permission_outcome(offered, Allow())
        {'outcome': 'selected', 'optionId': 'proceed_once'}
        >>> permission_outcome(offered, Deny("no"))
        {'outcome': 'selected', 'optionId': 'cancel'}
    """
    usable = [o for o in options if isinstance(o, Mapping) and isinstance(o.get("optionId"), str)]

    def by_kind(kinds: Sequence[str]) -> str | None:
        for kind in kinds:
            for option in usable:
                if option.get("kind") == kind:
                    return str(option["optionId"])
        return None

    def by_id(ids: Sequence[str]) -> str | None:
        # Only for options of no known kind: an id never overrides what a kind says.
        kindless = [o for o in usable if o.get("kind") not in _KNOWN_KINDS]
        for wanted in ids:
            for option in kindless:
                if str(option["optionId"]).lower() == wanted:
                    return str(option["optionId"])
        return None

    if isinstance(decision, Allow):
        kinds = (
            (*_ALLOW_ALWAYS, *_ALLOW_ONCE)
            if decision.updated_permissions
            else (*_ALLOW_ONCE, *_ALLOW_ALWAYS)
        )
        chosen = by_kind(kinds)
        if chosen is None:
            chosen = by_id(_ALLOW_IDS)
    else:
        chosen = by_kind(_REJECT)
        if chosen is None:
            chosen = by_id(_REJECT_IDS)
    if chosen is None:
        return {"outcome": "cancelled"}
    return {"outcome": "selected", "optionId": chosen}


def result_subtype(stop_reason: str) -> tuple[str, bool]:
    """``(subtype, is_error)`` of the ``result`` for an ACP ``stopReason``.

    >>> result_subtype("end_turn"), result_subtype("cancelled")
    (('success', False), ('interrupted', True))
    """
    return _STOP_REASONS.get(stop_reason, (f"error_{stop_reason}", True))


def _snake(key: str) -> str:
    return _CAMEL.sub("_", key).lower()


def acp_usage(result: Mapping[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(usage, model_usage)`` from a prompt answer, in snake_case token counts.

    Reads ``usage`` (Copilot: ``inputTokens``, ``outputTokens``...) or Gemini's
    ``_meta.quota`` (``token_count`` and per-model ``model_usage``).

        >>> acp_usage({"usage": {"inputTokens": 3, "outputTokens": 1}})
        ({'input_tokens': 3, 'output_tokens': 1}, None)
    """
    usage: dict[str, Any] | None = None
    model_usage: dict[str, Any] | None = None
    raw = result.get("usage")
    if isinstance(raw, Mapping):
        usage = {_snake(str(k)): v for k, v in raw.items() if _is_number(v)}
    meta = result.get("_meta")
    quota = meta.get("quota") if isinstance(meta, Mapping) else None
    if isinstance(quota, Mapping):
        counts = quota.get("token_count")
        if usage is None and isinstance(counts, Mapping):
            usage = {_snake(str(k)): v for k, v in counts.items() if _is_number(v)}
        per_model = quota.get("model_usage")
        if isinstance(per_model, list):
            model_usage = {}
            for entry in per_model:
                if isinstance(entry, Mapping) and isinstance(entry.get("model"), str):
                    tokens = entry.get("token_count")
                    model_usage[entry["model"]] = (
                        {_snake(str(k)): v for k, v in tokens.items() if _is_number(v)}
                        if isinstance(tokens, Mapping)
                        else {}
                    )
    return usage, model_usage


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- the handler ----------------------------------------------------------------------------


class AcpHandler(BackendHandler):
    """An ACP client for any agent that speaks ACP over stdio (see the module docstring).

    Used as it is, it runs the agent named by the ``command`` option::

        Runtime(backends={"myagent": (AcpHandler, {"command": ["my-agent", "--acp"]})})

    Subclasses configure a known CLI by setting :attr:`cli_name`,
    :attr:`npm_package` and :attr:`cli_args` (then ``cli_path`` replaces
    ``command``), :attr:`default_auth_method`, :attr:`native_load` and
    :attr:`model_switch`, and may override :meth:`launch_environment` and
    :meth:`check_mode`.

    Options: ``command`` (argv of the agent; only without :attr:`cli_name`),
    ``cli_path``, ``cwd``, ``model``, ``permission_mode`` (an ACP session mode:
    an id the agent offers, or its short name), ``auth_method`` (the
    ``authenticate`` method id; ``None``: do not authenticate),
    ``mcp_servers`` (ACP ``McpServer`` objects for ``session/new``), ``env``,
    ``inherit_env``, ``extra_args``, ``command_prefix``,
    ``permission_handler``, ``permission_default``,
    ``include_partial_messages``, ``native_session_id`` (an ACP session to
    ``session/load``), ``tool_server`` (set by the runtime for a session with
    Python tools: see :class:`~beamagent.tools.ToolServerAccess`).
    """

    name: ClassVar[str] = "acp"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.SESSION_LIFECYCLE,
            Capability.SESSION_INFO,
            Capability.INTERRUPT,
            Capability.PERMISSION_MODE,  # session/set_mode, among the modes the agent offers
            Capability.SESSION_HISTORY,
            Capability.APPROVAL_CALLBACKS,
            Capability.EVENT_STREAMING,
            Capability.IN_PROCESS_MCP,  # Python tools, for agents that take MCP over HTTP
        }
    )
    cli_name: ClassVar[str | None] = None
    """The agent's executable, looked up like the other CLIs; None: the ``command`` option."""
    npm_package: ClassVar[str | None] = None
    """The npm package that installs :attr:`cli_name` (named in "not found" errors)."""
    cli_args: ClassVar[tuple[str, ...]] = ()
    """Arguments that make :attr:`cli_name` speak ACP on its stdio (``--acp``)."""
    default_auth_method: ClassVar[str | None] = None
    """The ``authenticate`` method used unless the ``auth_method`` option says otherwise."""
    native_load: ClassVar[bool] = True
    """Continue a stored conversation with ``session/load`` when the agent advertises it."""
    model_switch: ClassVar[bool | None] = None
    """``session/set_model`` works: None means "when ``session/new`` offered models"."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        opts = self.options
        self.permissions = PermissionPolicy.from_options(opts)
        self.partial = bool(opts.get("include_partial_messages"))
        self.auth_method = _optional_str(
            opts.get("auth_method", self.default_auth_method), "auth_method"
        )
        servers = opts.get("mcp_servers")
        if servers is None:
            servers = []
        if isinstance(servers, str | bytes | Mapping) or not isinstance(servers, Sequence):
            raise InvalidOption(f"option 'mcp_servers' must be a list; got {servers!r}")
        if not all(isinstance(server, Mapping) for server in servers):
            raise InvalidOption(f"option 'mcp_servers' must be a list of mappings; got {servers!r}")
        self.mcp_servers = [dict(server) for server in servers]
        self.tool_server = _tool_server(opts.get("tool_server"))
        if self.tool_server is not None:
            self.tool_server.calls.enable()  # the agent announces each call: see _Turn
        try:
            json.dumps(self.mcp_servers, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidOption(f"option 'mcp_servers' must be JSON: {exc}") from exc
        if self.permission_mode is not None:
            self.check_mode(str(self.permission_mode))
        self.env = self.launch_environment()
        self.argv = self._argv()
        self.native_session_id: str | None = _optional_str(
            opts.get("native_session_id"), "native_session_id"
        )
        self._load_id = self.native_session_id if self.native_load else None
        self.acp_session_id: str | None = None
        self.agent_info: dict[str, Any] = {}
        self.agent_capabilities: dict[str, Any] = {}
        self.auth_methods: list[dict[str, Any]] = []
        self.modes: list[dict[str, Any]] = []
        self.mode_id: str | None = None
        self.models: list[dict[str, Any]] = []
        self.commands: list[Any] = []
        self.resumed: str | bool = False
        self.resume_missing = False
        self._handshake_done = False
        self._setup_pending = 0
        self._pending: PendingRequests[tuple[str, Any]] = PendingRequests()
        self._inbound = InboundRequests()
        # What the permission handler's answer is mapped with: request id -> (options, input).
        self._asks: dict[Any, tuple[list[Mapping[str, Any]], dict[str, Any]]] = {}
        self._turn: _Turn | None = None
        self._turn_serial = 0
        self._loading = False
        self._load_updates = 0
        self._log = log.bind(session_id=self.session_id, backend=self.name)

    # --- configuration -----------------------------------------------------------------

    @classmethod
    def option_names(cls) -> frozenset[str]:
        names = (
            super().option_names()
            | LAUNCH_OPTIONS
            | PERMISSION_OPTIONS
            | {"auth_method", "mcp_servers", "include_partial_messages", "tool_server"}
        )
        if cls.native_load:
            names |= {"native_session_id"}
        if cls.cli_name is None:
            names = (names - {"cli_path"}) | {"command"}
        return names

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        if cls.cli_name is None:
            return True, "available (the command option names the agent)"
        return cli_availability(cls.cli_name, cls.npm_package or cls.cli_name)

    def launch_environment(self) -> dict[str, str]:
        """The agent's environment (default: :func:`~beamagent.backends.launch.launch_env`)."""
        return launch_env(self.options)

    def check_mode(self, mode: str) -> None:
        """Refuse a permission mode this configuration cannot run (raise ``InvalidOption``).

        Called with the mode as given, before it is matched against the offered
        ones; the default accepts every mode.
        """

    def _argv(self) -> list[str]:
        opts = self.options
        if self.cli_name is None:
            command = opts.get("command")
            if (
                isinstance(command, str | bytes)
                or not isinstance(command, Sequence)
                or not command
                or not all(isinstance(a, str) for a in command)
            ):
                raise InvalidOption(
                    f"backend {self.name!r} needs option 'command': the ACP agent's argv as a "
                    f"non-empty list of strings; got {command!r}"
                )
            return [*command_prefix(opts), *command, *extra_args(opts)]
        cli = require_cli(self.cli_name, self.npm_package or self.cli_name, opts.get("cli_path"))
        own = self.tool_server_args(self.tool_server) if self.tool_server is not None else []
        return [*command_prefix(opts), str(cli), *self.cli_args, *own, *extra_args(opts)]

    def tool_server_args(self, access: ToolServerAccess) -> list[str]:
        """Arguments that make the agent call the session's Python tools without asking.

        The tool server asks the permission handler itself, once per call. The
        default adds none: the handler then answers Allow when the agent asks
        (:meth:`own_tool`). Never put the token here (``argv`` is public).
        """
        return []

    def tool_server_headers(self, access: ToolServerAccess) -> dict[str, str]:
        """HTTP headers for the tool server besides ``Authorization`` (default: none)."""
        return {}

    def own_tool(self, call: Mapping[str, Any]) -> str | None:
        """The session's Python tool an ACP ``toolCall`` calls (its own name), or None.

        Agents name an MCP server's tools in their titles: ``add (beamagent MCP
        Server)`` (Gemini CLI), ``beamagent-add`` (Copilot CLI), or
        ``mcp__beamagent__add`` / ``mcp_beamagent_add`` / ``beamagent_add``.
        """
        access = self.tool_server
        title = call.get("title")
        if access is None or not isinstance(title, str):
            return None
        title, server = title.strip(), access.server_name
        for name in access.tool_names:
            if title in (
                f"{name} ({server} MCP Server)",
                f"{server}-{name}",
                f"mcp__{server}__{name}",
                f"mcp_{server}_{name}",
                f"{server}_{name}",
            ):
                return name
        return None

    def open_transport(self) -> Transport:
        return SubprocessTransport(self.argv, env=self.env, cwd=self.options.get("cwd"))

    def resume_natively(self) -> bool:
        """True when this handler continues the stored conversation with ``session/load``.

        Before the handshake: whether it will try (a native id to load, and
        this agent's loads are trusted); after it: whether the load succeeded.
        """
        if self._handshake_done:
            return self.resumed == "native"
        return self._load_id is not None

    # --- outbound ------------------------------------------------------------------------

    def _request(self, method: str, params: Any, token: tuple[str, Any]) -> bytes:
        request_id = self._pending.register(method, token)
        return encode_line(encode_request(request_id, method, params))

    def _cwd(self) -> str:
        cwd = self.options.get("cwd")
        return os.path.abspath(os.fspath(cwd)) if cwd is not None else os.getcwd()

    def on_connected(self, event: Connected) -> HandlerOutput:
        params = {
            "protocolVersion": ACP_PROTOCOL_VERSION,
            "clientCapabilities": {
                "fs": {"readTextFile": False, "writeTextFile": False},
                "terminal": False,
            },
            "clientInfo": {"name": "beamagent", "title": "beamagent", "version": CLIENT_VERSION},
        }
        self._log.debug("acp_initializing", pid=event.info.get("pid"))
        return HandlerOutput(
            writes=[self._request("initialize", params, ("initialize", None))],
            state=SessionState.INITIALIZING,
        )

    def _open_session(self) -> bytes:
        base = {"cwd": self._cwd(), "mcpServers": [*self.mcp_servers, *self._tool_servers()]}
        if self._load_id is not None and not self.resume_missing:
            if self.agent_capabilities.get("loadSession") is True:
                self._loading = True
                self._load_updates = 0
                return self._request(
                    "session/load", {**base, "sessionId": self._load_id}, ("session/load", None)
                )
            # The agent cannot load sessions: a new one, and the session replays instead.
            self._log.warning("acp_load_unsupported", native_session_id=self._load_id)
            self.resume_missing = True
        return self._request("session/new", base, ("session/new", None))

    def _tool_servers(self) -> list[dict[str, Any]]:
        """The tool server as an ACP ``McpServer`` (the token goes over the agent's stdin)."""
        access = self.tool_server
        if access is None:
            return []
        headers = {**self.tool_server_headers(access), **access.headers()}
        return [
            {
                "type": "http",
                "name": access.server_name,
                "url": access.url,
                "headers": [{"name": k, "value": v} for k, v in headers.items()],
            }
        ]

    def _label(self) -> str:
        """The agent's own name once it gave one (any ACP agent runs as ``acp``)."""
        name = self.agent_info.get("name")
        return name if isinstance(name, str) and name else self.name

    def _prompt_text(self, prompt: str) -> str:
        # The replay preamble (a resumed session whose agent cannot load it) goes first.
        take = getattr(self, "take_replay_prompt", None)
        return str(take(prompt)) if callable(take) else prompt

    def encode_query(self, prompt: str, params: Mapping[str, Any]) -> HandlerOutput:
        if self.acp_session_id is None:
            raise InvalidOption(f"{self.name} session has no ACP session yet")  # not once ready
        blocks: list[Any]
        content = params.get("content")
        if content is not None:  # ACP content blocks (images, resources) instead of the text
            if isinstance(content, str | bytes | Mapping) or not isinstance(content, Sequence):
                raise InvalidOption(
                    f"query param 'content' must be a list of ACP content blocks; got {content!r}"
                )
            blocks = [dict(b) if isinstance(b, Mapping) else b for b in content]
        else:
            blocks = [{"type": "text", "text": self._prompt_text(prompt)}]
        self._turn_serial += 1
        self._turn = _Turn(
            self._turn_serial,
            self.partial,
            self.own_tool if self.tool_server is not None else None,
            self.tool_server,
        )
        try:
            line = self._request(
                "session/prompt",
                {"sessionId": self.acp_session_id, "prompt": blocks},
                ("prompt", self._turn_serial),
            )
        except (TypeError, ValueError) as exc:
            self._turn = None
            raise InvalidOption(f"query content must be JSON-serialisable: {exc}") from exc
        return HandlerOutput(writes=[line], messages=[self._init_message()])

    def _init_message(self) -> Message:
        return _message(
            MessageType.SYSTEM,
            {},
            subtype="init",
            model=self.model,
            system_info={
                "native_session_id": self.acp_session_id,
                "agent": self.agent_info.get("name"),
                "agent_version": self.agent_info.get("version"),
                "model": self.model,
                "cwd": self._cwd(),
                "permission_mode": self.permission_mode,
                "mode_id": self.mode_id,
                "modes": [m.get("id") for m in self.modes],
            },
        )

    def encode_interrupt(self) -> HandlerOutput | None:
        turn = self._turn
        if turn is None or self.acp_session_id is None:
            return None
        turn.cancelled = True
        writes = [self._cancel_line()]
        # ACP: after session/cancel the client answers every pending permission request
        # with "cancelled"; a late answer of the permission handler is then dropped.
        writes += self._cancel_open_requests()
        return HandlerOutput(writes=writes)

    def _cancel_open_requests(self) -> list[bytes]:
        """Answer every permission request still open ``cancelled``; forget them."""
        writes = []
        for request in self._inbound.drain():
            assert request.id is not None
            self._asks.pop(request.id, None)
            writes.append(
                encode_line(encode_result(request.id, {"outcome": {"outcome": "cancelled"}}))
            )
        return writes

    def _cancel_line(self) -> bytes:
        return encode_line(
            encode_notification("session/cancel", {"sessionId": self.acp_session_id})
        )

    def set_model(self, model: str) -> HandlerOutput | None:
        if not self._handshake_done:
            self.model = model
            return None  # applied once the session exists
        if not self._switches_models():
            raise UnsupportedCapability(self.name, Capability.RUNTIME_MODEL_SWITCH.value)
        previous, self.model = self.model, model
        params = {"sessionId": self.acp_session_id, "modelId": model}
        return HandlerOutput(
            writes=[self._request("session/set_model", params, ("set_model", previous))]
        )

    def _switches_models(self) -> bool:
        if self.model_switch is not None:
            return self.model_switch
        return bool(self.models)

    def set_permission_mode(self, mode: str) -> HandlerOutput | None:
        self.check_mode(mode)
        if not self._handshake_done:
            self.permission_mode = mode
            return None  # checked against the offered modes once the session exists
        mode_id = self._offered_mode(mode)
        previous, self.permission_mode = self.permission_mode, mode
        params = {"sessionId": self.acp_session_id, "modeId": mode_id}
        return HandlerOutput(
            writes=[self._request("session/set_mode", params, ("set_mode", previous))]
        )

    def _offered_mode(self, mode: str) -> str:
        if not self.modes:
            raise UnsupportedCapability(self.name, Capability.PERMISSION_MODE.value)
        mode_id = resolve_mode(mode, self.modes)
        if mode_id is None:
            offered = ", ".join(_mode_label(m) for m in self.modes)
            raise InvalidOption(
                f"permission mode {mode!r} is not offered by {self._label()}; it offers: {offered}"
            )
        return mode_id

    def handle_control(
        self, method: str, params: Mapping[str, Any], request_id: str
    ) -> HandlerOutput | None:
        if method in _UNIVERSAL:
            return None
        body = dict(params)
        if method.startswith("session/") and self.acp_session_id and "sessionId" not in body:
            body["sessionId"] = self.acp_session_id
        try:
            line = self._request(method, body, ("control", request_id))
        except (TypeError, ValueError, InvalidOption) as exc:
            raise InvalidOption(f"control request {method!r}: {exc}") from exc
        return HandlerOutput(writes=[line])

    # --- inbound -------------------------------------------------------------------------

    def handle_data(self, buffer: bytes) -> tuple[HandlerOutput, bytes]:
        decoded = decode_lines(buffer)
        out = _Output()
        if not decoded.skipped:
            self._handle_objects(decoded.objects, out)
            return out.build(), decoded.leftover
        # A line that is not a JSON object: handle what came before it, then fail.
        end = buffer.rfind(b"\n") + 1
        for line in buffer[:end].split(b"\n"):
            one = decode_lines(line + b"\n")
            if one.skipped:
                self._protocol_error(out, "a line that is not a JSON object", one.skipped[0])
                break
            self._handle_objects(one.objects, out)
            if out.error is not None:
                break
        return out.build(), decoded.leftover

    def _handle_objects(self, objects: Sequence[Mapping[str, Any]], out: _Output) -> None:
        for obj in objects:
            message = classify(obj)
            if message.kind in (RpcKind.RESPONSE, RpcKind.ERROR_RESPONSE):
                self._on_response(message, out)
            elif message.kind is RpcKind.NOTIFICATION:
                self._on_notification(message, obj, out)
            elif message.kind is RpcKind.REQUEST:
                self._on_agent_request(message, out)
            else:
                preview = json.dumps(obj, ensure_ascii=False)[:_PREVIEW].encode()
                self._protocol_error(out, "a message that is not JSON-RPC 2.0", preview)
            if out.error is not None:
                return

    def _protocol_error(self, out: _Output, what: str, line: bytes) -> None:
        preview = line[:_PREVIEW].decode("utf-8", "replace")
        self._log.error("acp_protocol_violated", what=what, line=preview)
        if self._turn is not None:
            out.messages += self._turn.flush()  # what the agent said before is history
        out.error = (
            f"{self._label()} broke the ACP protocol: it sent {what} on stdout ({preview!r}); "
            "ACP agents must write only JSON-RPC messages there"
        )

    def _on_response(self, message: RpcMessage, out: _Output) -> None:
        pending = self._pending.resolve(message)
        if pending is None:
            self._log.warning(
                "acp_response_unmatched",
                id=message.id,
                error=message.error.message if message.error else None,
            )
            return
        kind, data = pending.token
        error = message.error
        result = message.result if isinstance(message.result, Mapping) else {}
        if kind == "control":
            if error is None:
                out.replies.append((data, message.result, None))
            elif error.code == METHOD_NOT_FOUND:
                out.replies.append((data, None, f"unknown to {self.name}: {error.message}"))
            else:
                out.replies.append((data, None, error.message))
        elif kind == "initialize":
            self._on_initialized(result, error, out)
        elif kind == "authenticate":
            if error is not None:
                out.error = (
                    f"{self._label()} refused authentication with {self.auth_method!r}: "
                    f"{error.message}"
                )
                return
            out.writes.append(self._open_session())
        elif kind in ("session/new", "session/load"):
            self._on_session(kind, result, error, out)
        elif kind == "setup":
            self._setup_pending -= 1
            if error is not None:
                out.error = f"{self._label()} refused {pending.method}: {error.message}"
                return
            self._after_setup(pending.method, out)
            if self._setup_pending == 0:
                self._ready(out)
        elif kind == "prompt":
            turn = self._turn
            if turn is None or turn.serial != data:
                self._log.debug("acp_stale_prompt_answer", serial=data)
                return
            self._turn = None
            out.writes += self._cancel_open_requests()  # the turn that asked is over
            if error is not None:
                out.messages += turn.failed(
                    f"{self._label()} failed the prompt: {error.message}",
                    {"code": error.code, "message": error.message, "data": error.data},
                    self.model,
                )
            else:
                out.messages += turn.finished(message.result, self.model)
        elif kind in ("set_mode", "set_model"):
            self._after_setting(kind, data, error, out)
        elif error is not None:
            self._log.warning("acp_request_failed", method=pending.method, error=error.message)

    def _on_initialized(self, result: Mapping[str, Any], error: Any, out: _Output) -> None:
        if error is not None:
            out.error = f"{self._label()} initialize failed: {error.message}"
            return
        version = result.get("protocolVersion")
        if version != ACP_PROTOCOL_VERSION:
            out.error = (
                f"{self.name} speaks ACP protocol version {version!r}; beamagent speaks "
                f"version {ACP_PROTOCOL_VERSION}"
            )
            return
        self.agent_info = dict(_mapping(result.get("agentInfo")))
        self.agent_capabilities = dict(_mapping(result.get("agentCapabilities")))
        mcp = _mapping(self.agent_capabilities.get("mcpCapabilities"))
        if self.tool_server is not None and mcp.get("http") is not True:
            out.error = (
                f"{self._label()} cannot reach the session's Python tools: it does not take MCP "
                "servers over HTTP (agentCapabilities.mcpCapabilities.http); start the session "
                "with tools=[] to use it without them"
            )
            return
        methods = result.get("authMethods")
        self.auth_methods = [dict(m) for m in methods if isinstance(m, Mapping)] if methods else []
        out.info.update(
            {
                "agent_info": self.agent_info,
                "agent_capabilities": self.agent_capabilities,
                "auth_methods": [m.get("id") for m in self.auth_methods],
                "protocol_version": version,
            }
        )
        if self.auth_method is not None:
            offered = [m.get("id") for m in self.auth_methods]
            if self.auth_method not in offered:
                out.error = (
                    f"{self._label()} does not offer auth method {self.auth_method!r}; it offers: "
                    f"{', '.join(map(str, offered)) or 'none'} (option auth_method=...)"
                )
                return
            out.writes.append(
                self._request(
                    "authenticate", {"methodId": self.auth_method}, ("authenticate", None)
                )
            )
            return
        out.writes.append(self._open_session())

    def _on_session(self, kind: str, result: Mapping[str, Any], error: Any, out: _Output) -> None:
        self._loading = False
        if error is not None and kind == "session/load":
            # Nothing to load (e.g. the agent died before it saved the session): start a new
            # one; the session then replays its stored history instead.
            self._log.warning(
                "acp_load_failed", native_session_id=self._load_id, error=error.message
            )
            self.resume_missing = True
            out.info["resume_missing"] = True
            out.writes.append(self._open_session())
            return
        if error is not None:
            hint = ""
            if self.auth_method is None and self.auth_methods:
                ids = ", ".join(str(m.get("id")) for m in self.auth_methods)
                hint = f" (it offers auth methods {ids}: pass auth_method=...)"
            out.error = f"{self._label()} {kind} failed: {error.message}{hint}"
            return
        if kind == "session/load":
            self.acp_session_id = self._load_id
            self.resumed = "native"
            self._log.info(
                "acp_session_loaded", native_session_id=self._load_id, updates=self._load_updates
            )
        else:
            session_id = result.get("sessionId")
            if not isinstance(session_id, str) or not session_id:
                out.error = f"{self._label()} session/new answered without a sessionId: {result!r}"
                return
            self.acp_session_id = session_id
        self.native_session_id = self.acp_session_id
        self._read_session_state(result, out)
        out.info.update(
            {
                "native_session_id": self.acp_session_id,
                "resume_missing": self.resume_missing,
            }
        )
        self._handshake_done = True
        # The requested mode and model, before the first prompt can go out.
        writes: list[bytes] = []
        if self.permission_mode is not None:
            try:
                mode_id = self._offered_mode(str(self.permission_mode))
            except (InvalidOption, UnsupportedCapability) as exc:
                out.error = f"cannot apply permission_mode={self.permission_mode!r}: {exc}"
                return
            if mode_id != self.mode_id:
                params = {"sessionId": self.acp_session_id, "modeId": mode_id}
                writes.append(self._request("session/set_mode", params, ("setup", mode_id)))
        current_model = _mapping(result.get("models")).get("currentModelId")
        # A new session takes the model the agent offers; a loaded one keeps the model it
        # had (Copilot ignores COPILOT_MODEL then), so set ours whenever the agent can.
        wants_model = bool(self.models) if kind == "session/new" else self._switches_models()
        if self.model is not None and wants_model and self.model != current_model:
            params = {"sessionId": self.acp_session_id, "modelId": self.model}
            writes.append(self._request("session/set_model", params, ("setup", self.model)))
        self._setup_pending = len(writes)
        out.writes += writes
        if not writes:
            self._ready(out)

    def _read_session_state(self, result: Mapping[str, Any], out: _Output) -> None:
        modes = _mapping(result.get("modes"))
        available = modes.get("availableModes")
        if isinstance(available, list):
            self.modes = [dict(m) for m in available if isinstance(m, Mapping)]
        if isinstance(modes.get("currentModeId"), str):
            self.mode_id = modes["currentModeId"]
        models = _mapping(result.get("models"))
        available_models = models.get("availableModels")
        if isinstance(available_models, list):
            self.models = [dict(m) for m in available_models if isinstance(m, Mapping)]
        if self.model is None and isinstance(models.get("currentModelId"), str):
            self.model = models["currentModelId"]
        if self.permission_mode is None and self.mode_id is not None:
            self.permission_mode = self.mode_id
        out.info.update(
            {
                "supported_modes": self.modes,
                "supported_models": self.models,
                "mode_id": self.mode_id,
            }
        )
        if isinstance(result.get("configOptions"), list):
            out.info["config_options"] = result["configOptions"]

    def _after_setup(self, method: str, out: _Output) -> None:
        if method == "session/set_mode":
            self.mode_id = resolve_mode(str(self.permission_mode), self.modes) or self.mode_id
            out.info["mode_id"] = self.mode_id

    def _ready(self, out: _Output) -> None:
        out.state = SessionState.READY
        self._log.info(
            "acp_session_ready",
            native_session_id=self.acp_session_id,
            agent=self.agent_info.get("name"),
            resumed=self.resumed,
        )

    def _after_setting(self, kind: str, previous: Any, error: Any, out: _Output) -> None:
        if error is None:
            if kind == "set_mode":
                self.mode_id = resolve_mode(str(self.permission_mode), self.modes) or self.mode_id
                out.info["mode_id"] = self.mode_id
            return
        # The agent refused a change we had already reported: go back, and say why.
        self._log.warning(f"acp_{kind}_refused", error=error.message)
        if kind == "set_mode":
            self.permission_mode = previous
            out.info["permission_mode_error"] = error.message
        else:
            self.model = previous
            out.info["model_error"] = error.message

    def _on_notification(self, message: RpcMessage, obj: Mapping[str, Any], out: _Output) -> None:
        params = _mapping(message.params)
        if message.method != "session/update":
            self._log.warning("acp_notification_ignored", method=message.method)
            return
        if params.get("sessionId") not in (None, self.acp_session_id, self._load_id):
            self._log.debug("acp_update_other_session", other=params.get("sessionId"))
            return
        update = _mapping(params.get("update"))
        kind = update.get("sessionUpdate")
        if self._loading:
            self._load_updates += 1  # the agent replays the loaded conversation: stored already
            return
        turn = self._turn
        if kind == "available_commands_update":
            commands = update.get("availableCommands")
            self.commands = list(commands) if isinstance(commands, list) else []
            out.info["supported_commands"] = self.commands
            if turn is not None:
                out.messages += turn.system("commands", {"commands": self.commands}, obj)
        elif kind == "current_mode_update":
            if isinstance(update.get("currentModeId"), str):
                self.mode_id = update["currentModeId"]
                out.info["mode_id"] = self.mode_id
        elif kind == "config_option_update":
            out.info["config_options"] = update.get("configOptions")
        elif kind == "session_info_update":
            out.info["title"] = update.get("title")
        elif kind == "usage_update":
            out.info["context_usage"] = {k: v for k, v in update.items() if k != "sessionUpdate"}
        elif turn is None:
            self._log.debug("acp_update_outside_turn", kind=kind)
        elif kind == "agent_message_chunk":
            out.messages += turn.message_chunk(update.get("content"), obj)
        elif kind == "agent_thought_chunk":
            out.messages += turn.thought_chunk(update.get("content"))
        elif kind == "tool_call":
            out.messages += turn.tool_call(update, obj)
        elif kind == "tool_call_update":
            out.messages += turn.tool_call_update(update, obj)
        elif kind == "plan":
            entries = update.get("entries")
            out.messages += turn.system(
                "plan", {"entries": entries if isinstance(entries, list) else []}, obj
            )
        elif kind == "user_message_chunk":
            pass  # our own prompt, echoed
        else:
            self._log.debug("acp_update_ignored", kind=kind)

    def _on_agent_request(self, message: RpcMessage, out: _Output) -> None:
        assert message.id is not None
        if message.method != "session/request_permission":
            self._log.warning("acp_request_refused", method=message.method, id=message.id)
            out.writes.append(
                encode_line(
                    encode_error(
                        message.id,
                        METHOD_NOT_FOUND,
                        f"beamagent does not serve {message.method!r}",
                    )
                )
            )
            return
        params = _mapping(message.params)
        tool_call = _mapping(params.get("toolCall"))
        options = [o for o in params.get("options") or [] if isinstance(o, Mapping)]
        turn = self._turn
        if turn is None or turn.cancelled:
            # Asked outside a running turn (or after session/cancel): nothing can answer it.
            out.writes.append(
                encode_line(encode_result(message.id, {"outcome": {"outcome": "cancelled"}}))
            )
            return
        tool_use_id = _str_or_none(tool_call.get("toolCallId"))
        out.messages += turn.ensure_tool_use(tool_call, {"params": dict(params)})
        # The request's own description first; what the tool_call announced fills gaps.
        known = turn.tools.get(tool_use_id) if tool_use_id is not None else None
        if known is not None and known.own is not None:
            # The session's Python tool: the tool server asks the permission handler when
            # the call reaches it (exactly once), so the agent is simply allowed.
            self._log.info("permission_allowed_own_tool", tool=known.own, request_id=message.id)
            outcome = permission_outcome(options, Allow())
            out.writes.append(encode_line(encode_result(message.id, {"outcome": outcome})))
            return
        tool_name = str(tool_call.get("kind") or (known.name if known else "other"))
        tool_input = _tool_input(tool_call) or (dict(known.input) if known else {})
        context = PermissionContext(
            backend=self.name,
            session_id=self.session_id,
            tool_use_id=tool_use_id,
            description=_str_or_none(tool_call.get("title")),
            raw=dict(params),
        )
        self._log.info("permission_requested", tool=tool_name, request_id=message.id)
        if not self.permissions.needs_callback:
            decision = self.permissions.default_decision(tool_name, self.name)
            out.writes += self._permission_answer(message, options, decision, tool_input)
            return
        self._inbound.add(message)
        self._asks[message.id] = (options, tool_input)
        policy = self.permissions
        out.calls.append(
            OffThreadCall(
                ("permission", message.id), lambda: policy.decide(tool_name, tool_input, context)
            )
        )

    def on_call_result(self, key: Any, result: Any, error: BaseException | None) -> HandlerOutput:
        _kind, request_id = key
        message = self._inbound.pop(request_id)
        asked = self._asks.pop(request_id, None)
        if message is None or asked is None:  # answered already (cancelled with its turn)
            return NOTHING
        options, tool_input = asked
        decision = (
            result
            if isinstance(result, Allow | Deny)
            else Deny(f"permission handler failed: {error!r}")
        )
        self._log.info(
            "permission_decided", request_id=request_id, allowed=isinstance(decision, Allow)
        )
        return HandlerOutput(writes=self._permission_answer(message, options, decision, tool_input))

    def _permission_answer(
        self,
        message: RpcMessage,
        options: Sequence[Mapping[str, Any]],
        decision: PermissionDecision,
        tool_input: Mapping[str, Any],
    ) -> list[bytes]:
        assert message.id is not None
        if (
            isinstance(decision, Allow)
            and decision.updated_input is not None
            and decision.updated_input != dict(tool_input)
        ):
            # ACP has no way to change a tool's input: running the original instead of what
            # the handler asked for would be worse than not running it.
            self._log.warning("permission_updated_input_unsupported", request_id=message.id)
            decision = Deny(
                f"{self.name} cannot run a tool with a changed input (ACP carries no "
                "updated input); the call was rejected"
            )
        tool_use_id = _str_or_none(
            _mapping(_mapping(message.params).get("toolCall")).get("toolCallId")
        )
        turn = self._turn
        if isinstance(decision, Deny):
            self._log.info("permission_denied", request_id=message.id, message=decision.message)
            if turn is not None and tool_use_id is not None:
                turn.denied[tool_use_id] = decision.message
        outcome = permission_outcome(options, decision)
        writes = [encode_line(encode_result(message.id, {"outcome": outcome}))]
        if isinstance(decision, Deny) and decision.interrupt and turn is not None:
            turn.cancelled = True
            writes.append(self._cancel_line())
        return writes

    def info(self) -> dict[str, Any]:
        return {
            "native_session_id": self.acp_session_id or self.native_session_id,
            "resume_missing": self.resume_missing,
            "agent_info": self.agent_info,
            "mode_id": self.mode_id,
            "auth_method": self.auth_method,
        }


class _Output:
    """A mutable builder for one HandlerOutput."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.writes: list[bytes] = []
        self.replies: list[tuple[Any, Any, str | None]] = []
        self.calls: list[OffThreadCall] = []
        self.info: dict[str, Any] = {}
        self.state: SessionState | None = None
        self.error: str | None = None

    def build(self) -> HandlerOutput:
        return HandlerOutput(
            messages=self.messages,
            writes=self.writes,
            replies=self.replies,
            calls=self.calls,
            info=self.info or None,
            state=self.state,
            error=self.error,
        )


class _Tool:
    """One tool call of a turn (``own``: the session's Python tool it calls, if it does)."""

    __slots__ = ("closed", "input", "name", "own")

    def __init__(self, name: str, tool_input: dict[str, Any], own: str | None = None) -> None:
        self.name = name
        self.input = tool_input
        self.own = own
        self.closed = False


class _Turn:
    """What one prompt turn has produced so far: runs of chunks, tool calls."""

    def __init__(
        self,
        serial: int,
        partial: bool,
        own_tool: Callable[[Mapping[str, Any]], str | None] | None = None,
        access: ToolServerAccess | None = None,
    ) -> None:
        self.serial = serial
        self.partial = partial
        self.own_tool = own_tool
        self.access = access
        self.started = time.monotonic()
        self.text: list[str] = []
        self.blocks: list[ContentBlock] = []
        self.thought: list[str] = []
        self.last_text: str | None = None
        self.tools: dict[str, _Tool] = {}
        self.denied: dict[str, str] = {}
        self.cancelled = False

    # Runs of chunks end when something else happens: flush them as whole messages.
    def flush(self) -> list[Message]:
        out: list[Message] = []
        if self.thought:
            out.append(_message(MessageType.THINKING, None, content="".join(self.thought)))
            self.thought = []
        if self.text or self.blocks:
            text = "".join(self.text)
            blocks = [ContentBlock("text", text=text)] if self.text else []
            out.append(
                _message(
                    MessageType.ASSISTANT,
                    None,
                    content=text,
                    content_blocks=[*blocks, *self.blocks],
                )
            )
            if self.text:
                self.last_text = text
            self.text, self.blocks = [], []
        return out

    def message_chunk(self, content: Any, raw: Mapping[str, Any]) -> list[Message]:
        out: list[Message] = []
        if self.thought:
            out += self.flush()
        block = _mapping(content)
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            text = block["text"]
            self.text.append(text)
            if self.partial and text:
                out.append(_message(MessageType.STREAM_EVENT, raw, content=text))
        elif block:
            self.blocks.append(ContentBlock.from_dict(dict(block)))
        return out

    def thought_chunk(self, content: Any) -> list[Message]:
        out: list[Message] = []
        if self.text or self.blocks:
            out += self.flush()
        block = _mapping(content)
        if isinstance(block.get("text"), str):
            self.thought.append(block["text"])
        return out

    def system(self, subtype: str, info: dict[str, Any], raw: Mapping[str, Any]) -> list[Message]:
        return [*self.flush(), _message(MessageType.SYSTEM, raw, subtype=subtype, system_info=info)]

    def ensure_tool_use(self, call: Mapping[str, Any], raw: Mapping[str, Any]) -> list[Message]:
        """A ``tool_use`` for a call first seen now (Gemini asks before it announces one)."""
        tool_id = _str_or_none(call.get("toolCallId"))
        if tool_id is None or tool_id in self.tools:
            return []
        return self._tool_use(tool_id, call, raw)

    def _tool_use(
        self, tool_id: str, call: Mapping[str, Any], raw: Mapping[str, Any]
    ) -> list[Message]:
        own = self.own_tool(call) if self.own_tool is not None else None
        if own is not None and self.access is not None:
            # Named as Claude Code and Codex name MCP tools, with the model's arguments; the
            # tool server is told the call's id (the agent does not send it along).
            name = f"mcp__{self.access.server_name}__{own}"
            tool_input = _own_tool_input(call)
            self.access.calls.announce(own, tool_input, tool_id)
        else:
            name = str(call.get("kind") or "other")
            tool_input = _tool_input(call)
        self.tools[tool_id] = _Tool(name, tool_input, own)
        return [
            *self.flush(),
            _message(
                MessageType.TOOL_USE,
                raw,
                tool_name=name,
                tool_input=tool_input,
                tool_use_id=tool_id,
                content=_str_or_none(call.get("title")),
                content_blocks=[ContentBlock("tool_use", id=tool_id, name=name, input=tool_input)],
            ),
        ]

    def tool_call(self, update: Mapping[str, Any], raw: Mapping[str, Any]) -> list[Message]:
        tool_id = _str_or_none(update.get("toolCallId"))
        if tool_id is None:
            return []
        out = self.ensure_tool_use(update, raw) if tool_id not in self.tools else []
        if update.get("status") in _TERMINAL_TOOL_STATUS:
            out += self._tool_result(tool_id, update, raw)
        return out

    def tool_call_update(self, update: Mapping[str, Any], raw: Mapping[str, Any]) -> list[Message]:
        tool_id = _str_or_none(update.get("toolCallId"))
        if tool_id is None:
            return []
        out = self.ensure_tool_use(update, raw)
        status = update.get("status")
        if status in _TERMINAL_TOOL_STATUS:
            out += self._tool_result(tool_id, update, raw)
        elif status == "in_progress" and not self.tools[tool_id].closed:
            out.append(
                _message(
                    MessageType.TOOL_PROGRESS,
                    raw,
                    tool_use_id=tool_id,
                    tool_name=self.tools[tool_id].name,
                    content=_str_or_none(update.get("title")),
                )
            )
        return out

    def _tool_result(
        self, tool_id: str, update: Mapping[str, Any], raw: Mapping[str, Any]
    ) -> list[Message]:
        tool = self.tools[tool_id]
        if tool.closed:
            return []
        tool.closed = True
        if tool.own is not None and self.access is not None:
            self.access.calls.retract(tool_id)  # if the call never reached the server
        is_error = update.get("status") == "failed"
        content = _tool_output(update)
        if not content and tool_id in self.denied:
            content = f"denied: {self.denied[tool_id]}"
        return [*self.flush(), _result_message(tool_id, content, is_error, raw)]

    def _close_tools(self, stop_reason: str) -> list[Message]:
        out: list[Message] = []
        for tool_id, tool in self.tools.items():
            if tool.closed:
                continue
            tool.closed = True
            if tool_id in self.denied:
                content = f"denied: {self.denied[tool_id]}"
            else:
                content = f"the tool call did not complete (the turn ended: {stop_reason})"
            out.append(_result_message(tool_id, content, True, {}))
        return out

    def finished(self, answer: Any, model: str | None) -> list[Message]:
        result = _mapping(answer)
        stop_reason = result.get("stopReason")
        stop = stop_reason if isinstance(stop_reason, str) else "end_turn"
        subtype, is_error = result_subtype(stop)
        usage, model_usage = acp_usage(result)
        out = [*self.flush(), *self._close_tools(stop)]
        out.append(
            _message(
                MessageType.RESULT,
                dict(result),
                subtype=subtype,
                is_error=is_error,
                content=self.last_text,
                stop_reason=stop,
                usage=usage,
                model_usage=model_usage,
                model=model,
                num_turns=1,
                duration_ms=int((time.monotonic() - self.started) * 1000),
            )
        )
        return out

    def failed(self, text: str, error_info: dict[str, Any], model: str | None) -> list[Message]:
        return [
            *self.flush(),
            *self._close_tools("error"),
            _message(MessageType.ERROR, None, content=text, error_info=error_info),
            _message(
                MessageType.RESULT,
                None,
                subtype="error",
                is_error=True,
                content=text,
                model=model,
                num_turns=1,
                duration_ms=int((time.monotonic() - self.started) * 1000),
            ),
        ]


def _result_message(tool_id: str, content: str, is_error: bool, raw: Mapping[str, Any]) -> Message:
    return _message(
        MessageType.TOOL_RESULT,
        raw,
        tool_use_id=tool_id,
        content=content,
        is_error=is_error,
        content_blocks=[
            ContentBlock("tool_result", tool_use_id=tool_id, content=content, is_error=is_error)
        ],
    )


def _own_tool_input(call: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of a call of the session's Python tool: ``rawInput``, else its JSON content."""
    raw_input = call.get("rawInput")
    if isinstance(raw_input, Mapping):
        return dict(raw_input)
    try:
        arguments = json.loads(_content_text(call.get("content")))  # Gemini: the arguments
    except ValueError:
        return _tool_input(call)
    return dict(arguments) if isinstance(arguments, Mapping) else _tool_input(call)


def _tool_input(call: Mapping[str, Any]) -> dict[str, Any]:
    """The agent's ``rawInput``; without one, what the call says of itself."""
    raw_input = call.get("rawInput")
    if isinstance(raw_input, Mapping):
        return dict(raw_input)
    out: dict[str, Any] = {}
    for key in ("title", "kind"):
        if isinstance(call.get(key), str):
            out[key] = call[key]
    locations = call.get("locations")
    if isinstance(locations, list) and locations:
        out["locations"] = [
            loc.get("path") for loc in locations if isinstance(loc, Mapping) and loc.get("path")
        ]
    text = _content_text(call.get("content"))
    if text:
        out["content"] = text
    return out


def _content_text(content: Any) -> str:
    """The text of a tool call's ``content`` list (text blocks, diffs, terminals)."""
    if not isinstance(content, list):
        return ""
    parts: list[str] = []
    for item in content:
        item = _mapping(item)
        kind = item.get("type")
        if kind == "content":
            inner = _mapping(item.get("content"))
            if isinstance(inner.get("text"), str):
                parts.append(inner["text"])
        elif kind == "diff":
            parts.append(f"diff of {item.get('path')}")
        elif kind == "terminal":
            parts.append(f"terminal {item.get('terminalId')}")
    return "\n".join(p for p in parts if p)


def _tool_output(update: Mapping[str, Any]) -> str:
    text = _content_text(update.get("content"))
    if text:
        return text
    raw_output = update.get("rawOutput")
    if isinstance(raw_output, str):
        return raw_output
    if isinstance(raw_output, Mapping):
        for key in ("content", "message", "output", "error"):
            if isinstance(raw_output.get(key), str):
                return str(raw_output[key])
        return json.dumps(raw_output, ensure_ascii=False)[:4000]
    return ""


def _mode_label(mode: Mapping[str, Any]) -> str:
    mode_id = str(mode.get("id"))
    short = re.split(r"[#/]", mode_id)[-1]
    return mode_id if short == mode_id else f"{short} ({mode_id})"


def _message(kind: MessageType, raw: Mapping[str, Any] | None, **fields: Any) -> Message:
    return Message(
        kind,
        raw=dict(raw) if raw else None,
        timestamp=time.time_ns() // 1_000_000,
        **fields,
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _tool_server(value: Any) -> ToolServerAccess | None:
    if value is None or isinstance(value, ToolServerAccess):
        return value
    raise InvalidOption(
        f"option 'tool_server' is set by the runtime (give tools with tools=[...]); got {value!r}"
    )


def _optional_str(value: Any, option: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidOption(f"option {option!r} must be a str or None; got {value!r}")
    return value
