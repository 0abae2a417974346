"""``codex``: OpenAI Codex driven through ``codex app-server`` (JSON-RPC over stdio).

The app-server speaks newline-delimited JSON-RPC *without* the ``"jsonrpc"``
field and is silent until ``initialize``. The handshake is::

    → initialize {clientInfo}        ← {userAgent, codexHome, ...}
    → initialized (notification)
    → thread/start {cwd, approvalPolicy, sandbox, model?}   ← {thread: {id, model}}
      (thread/resume {threadId} when the session has a native id: after a restart)

and the session is ``ready``. A query is ``turn/start {threadId, input}``;
the server streams notifications -- ``turn/started``, ``item/started``,
``item/agentMessage/delta``, ``item/completed``, ``thread/tokenUsage/updated``
-- and ends with ``turn/completed``. Items become canonical messages: agent
messages are ``assistant`` messages, command executions and file changes are
``tool_use`` / ``tool_result`` pairs, and ``turn/completed`` is the terminal
``result`` with the turn's token usage.

Both sides send requests and both number them from 0, so the two id spaces
are kept apart (:mod:`beamagent.backends.jsonrpc`): only messages without a
``method`` are responses to our requests. The server's approval requests
(``item/commandExecution/requestApproval``, ``item/fileChange/requestApproval``)
go to the session's permission handler, off the session's thread. Codex
can only accept or decline: a denial's message never reaches the model, and a
handler's updated input cannot be run (see :meth:`CodexHandler.on_call_result`).

A store fork starts with ``thread/fork`` of the parent's thread (option
``fork_native_session_id``); a thread that cannot be resumed or forked gives
a new thread, and the session replays its stored history before the first
prompt (an input item of its own).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from beamagent.backends.base import (
    FORK_NATIVE_OPTION,
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
from beamagent.errors import InvalidOption
from beamagent.log import get_logger
from beamagent.messages import ContentBlock, Message, MessageType
from beamagent.tools._access import ToolServerAccess

__all__ = ["CodexHandler"]

log = get_logger(__name__)

CLI_NAME: Final = "codex"
NPM_PACKAGE: Final = "@openai/codex"
CLIENT_VERSION: Final = "0.1.0"
DEFAULT_APPROVAL_POLICY: Final = "untrusted"
TOOL_TIMEOUT_SEC: Final = 3600  # Codex's own limit on an MCP call (its default is 60 s)
_UNIVERSAL: Final = frozenset({"setModel", "setPermissionMode", "setMaxThinkingTokens", "stopTask"})
# Approval requests: method -> (tool name for the permission handler, wire dialect).
_APPROVALS: Final[Mapping[str, tuple[str, str]]] = {
    "item/commandExecution/requestApproval": ("command_execution", "v2"),
    "item/fileChange/requestApproval": ("file_change", "v2"),
    "execCommandApproval": ("command_execution", "v1"),
    "applyPatchApproval": ("file_change", "v1"),
}
_TURN_STATUS: Final[Mapping[str, str]] = {
    "completed": "success",
    "interrupted": "interrupted",
    "failed": "error",
}
_USAGE_KEYS: Final[Mapping[str, str]] = {
    "inputTokens": "input_tokens",
    "cachedInputTokens": "cached_input_tokens",
    "outputTokens": "output_tokens",
    "reasoningOutputTokens": "reasoning_output_tokens",
    "totalTokens": "total_tokens",
    "cacheWriteInputTokens": "cache_write_input_tokens",
}


class CodexHandler(BackendHandler):
    """Handler of the ``codex`` backend (see the module docstring).

    Options: ``cli_path``, ``cwd``, ``model``, ``permission_mode`` (Codex's
    approval policy: ``untrusted`` (default: ask before anything that is not
    known to be safe), ``on-request``, ``never``), ``sandbox`` (``read-only``,
    ``workspace-write``, ``danger-full-access``), ``developer_instructions``,
    ``config`` (Codex config overrides for the thread), ``env``, ``inherit_env``,
    ``extra_args``, ``command_prefix``, ``permission_handler``,
    ``permission_default``, ``include_partial_messages``, ``native_session_id``
    (a thread id to resume), ``fork_native_session_id`` (a thread id to fork;
    set by the runtime for a store fork), ``tool_server`` (set by the runtime
    for a session with Python tools: see :class:`~beamagent.tools.ToolServerAccess`).

    Permission answers are Codex's accept / decline / cancel: ``Deny(message)``
    declines (the message is in our ``tool_result``, not sent to the model), and
    an ``Allow(updated_input=...)`` that changes the input declines too (Codex
    would run the original); ``session_info()["permission_answers"]`` says so.
    """

    name: ClassVar[str] = "codex"
    hibernates: ClassVar[bool] = True  # woken with thread/resume
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
            Capability.THREAD_MANAGEMENT,
            Capability.IN_PROCESS_MCP,
        }
    )

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        opts = self.options
        self.permissions = PermissionPolicy.from_options(opts)
        self.cli = require_cli(CLI_NAME, NPM_PACKAGE, opts.get("cli_path"))
        self.permission_mode = self.permission_mode or DEFAULT_APPROVAL_POLICY
        config = opts.get("config")
        if config is not None and not isinstance(config, Mapping):
            raise InvalidOption(f"option 'config' must be a mapping; got {config!r}")
        for key in ("sandbox", "developer_instructions"):
            if opts.get(key) is not None and not isinstance(opts[key], str):
                raise InvalidOption(f"option {key!r} must be a str; got {opts[key]!r}")
        self.partial = bool(opts.get("include_partial_messages"))
        self.argv = [*command_prefix(opts), str(self.cli), "app-server", *extra_args(opts)]
        self.env = launch_env(opts)
        self.tool_server = _tool_server(opts.get("tool_server"))
        if self.tool_server is not None:
            self.env.update(self.tool_server.env())  # bearer_token_env_var reads it there
        for key in ("native_session_id", FORK_NATIVE_OPTION):
            value = opts.get(key)
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidOption(f"option {key!r} must be a non-empty str; got {value!r}")
        self.native_session_id: str | None = opts.get("native_session_id")
        self.resumed = False
        self.resume_missing = False
        # Fork the parent's thread, unless this session has a thread of its own to resume.
        self.fork_parent: str | None = (
            None if self.native_session_id else opts.get(FORK_NATIVE_OPTION)
        )
        self.forked = False
        self.fork_missing = False
        # Deny messages of declined approvals, by item id, for their tool_result.
        self._declined: dict[str, str] = {}
        self._pending: PendingRequests[Any] = PendingRequests()
        self._inbound = InboundRequests()
        self._turn_id: str | None = None
        self._turn: _Turn | None = None
        self._interrupt_pending = False
        self._usage_total: dict[str, int] = {}
        self._log = log.bind(session_id=self.session_id, backend=self.name)

    @classmethod
    def option_names(cls) -> frozenset[str]:
        return (
            super().option_names()
            | LAUNCH_OPTIONS
            | PERMISSION_OPTIONS
            | {
                "sandbox",
                "developer_instructions",
                "config",
                "include_partial_messages",
                "native_session_id",
                "tool_server",
                FORK_NATIVE_OPTION,
            }
        )

    def resume_natively(self) -> bool:
        """``thread/resume`` or ``thread/fork`` worked (known once the handshake is done)."""
        return self.resumed or self.forked

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return cli_availability(CLI_NAME, NPM_PACKAGE)

    def open_transport(self) -> Transport:
        return SubprocessTransport(self.argv, env=self.env, cwd=self.options.get("cwd"))

    # --- outbound ------------------------------------------------------------------------

    def _request(self, method: str, params: Any, token: Any = None) -> bytes:
        request_id = self._pending.register(method, token)
        return encode_line(encode_request(request_id, method, params, jsonrpc=False))

    def on_connected(self, event: Connected) -> HandlerOutput:
        params = {
            "clientInfo": {"name": "beamagent", "title": "beamagent", "version": CLIENT_VERSION}
        }
        return HandlerOutput(
            writes=[self._request("initialize", params)], state=SessionState.INITIALIZING
        )

    def _thread_params(self) -> dict[str, Any]:
        opts = self.options
        params: dict[str, Any] = {"approvalPolicy": self.permission_mode}
        if opts.get("cwd") is not None:
            params["cwd"] = str(opts["cwd"])
        if self.model:
            params["model"] = self.model
        if opts.get("sandbox"):
            params["sandbox"] = opts["sandbox"]
        if opts.get("developer_instructions"):
            params["developerInstructions"] = opts["developer_instructions"]
        config = dict(opts.get("config") or {})
        access = self.tool_server
        if access is not None:
            servers = config.get("mcp_servers")
            config["mcp_servers"] = {
                **(dict(servers) if isinstance(servers, Mapping) else {}),
                access.server_name: {
                    "url": access.url,
                    "bearer_token_env_var": access.token_env,
                    # Never asked about: the tool server asks the permission handler.
                    "default_tools_approval_mode": "approve",
                    "tool_timeout_sec": TOOL_TIMEOUT_SEC,
                },
            }
        if config:
            params["config"] = config
        return params

    def _open_thread(self) -> bytes:
        if self.native_session_id and not self.resume_missing:
            params = {**self._thread_params(), "threadId": self.native_session_id}
            return self._request("thread/resume", params)
        if self.fork_parent and not self.fork_missing:
            params = {**self._thread_params(), "threadId": self.fork_parent, "excludeTurns": True}
            return self._request("thread/fork", params)
        return self._request("thread/start", self._thread_params())

    def encode_query(self, prompt: str, params: Mapping[str, Any]) -> HandlerOutput:
        if self.native_session_id is None:
            raise InvalidOption("codex session has no thread yet")  # not reachable once ready
        items = [{"type": "text", "text": prompt}]
        preamble = self.take_replay_preamble()
        if preamble is not None:  # the replayed conversation first, an input item of its own
            items.insert(0, {"type": "text", "text": preamble})
        turn_params: dict[str, Any] = {
            "threadId": self.native_session_id,
            "input": items,
            "approvalPolicy": self.permission_mode,
        }
        if self.model:
            turn_params["model"] = self.model
        for key in ("effort", "outputSchema", "cwd"):
            if key in params:
                turn_params[key] = params[key]
        self._turn = _Turn(self._usage_total)
        self._turn_id = None
        self._interrupt_pending = False
        try:
            return HandlerOutput(writes=[self._request("turn/start", turn_params)])
        except (TypeError, ValueError) as exc:
            raise InvalidOption(f"query params must be JSON-serialisable: {exc}") from exc

    def encode_interrupt(self) -> HandlerOutput | None:
        if self._turn is None:
            return None
        if self._turn_id is None:  # turn/start not answered yet: interrupt when it is
            self._interrupt_pending = True
            return NOTHING
        return HandlerOutput(writes=[self._interrupt_request()])

    def _interrupt_request(self) -> bytes:
        params = {"threadId": self.native_session_id, "turnId": self._turn_id}
        return self._request("turn/interrupt", params)

    def set_model(self, model: str) -> HandlerOutput | None:
        self.model = model
        return None  # sent with the next turn/start ("this turn and subsequent turns")

    def set_permission_mode(self, mode: str) -> HandlerOutput | None:
        self.permission_mode = mode
        return None  # sent with the next turn/start as its approvalPolicy

    def handle_control(
        self, method: str, params: Mapping[str, Any], request_id: str
    ) -> HandlerOutput | None:
        if method in _UNIVERSAL:
            return None
        try:
            line = self._request(method, dict(params), ("control", request_id))
        except (TypeError, ValueError, InvalidOption) as exc:
            raise InvalidOption(f"control request {method!r}: {exc}") from exc
        return HandlerOutput(writes=[line])

    # --- inbound -------------------------------------------------------------------------

    def handle_data(self, buffer: bytes) -> tuple[HandlerOutput, bytes]:
        decoded = decode_lines(buffer)
        out = _Output()
        for obj in decoded.objects:
            message = classify(obj)
            if message.kind in (RpcKind.RESPONSE, RpcKind.ERROR_RESPONSE):
                self._on_response(message, out)
            elif message.kind is RpcKind.NOTIFICATION:
                self._on_notification(message, obj, out)
            elif message.kind is RpcKind.REQUEST:
                self._on_server_request(message, out)
            else:
                self._log.debug("codex_line_ignored", line=str(obj)[:200])
        return out.build(), decoded.leftover

    def _on_response(self, message: RpcMessage, out: _Output) -> None:
        pending = self._pending.resolve(message)
        if pending is None:
            self._log.debug("codex_response_unmatched", id=message.id)
            return
        error = message.error
        result = message.result if isinstance(message.result, Mapping) else {}
        method = pending.method
        if isinstance(pending.token, tuple) and pending.token[0] == "control":
            if error is None:
                out.replies.append((pending.token[1], message.result, None))
            elif error.code == METHOD_NOT_FOUND or "unknown variant" in error.message:
                detail = error.message.split(", expected one of")[0]
                out.replies.append((pending.token[1], None, f"unknown to codex: {detail}"))
            else:
                out.replies.append((pending.token[1], None, error.message))
        elif method == "initialize":
            if error is not None:
                out.error = f"codex initialize failed: {error.message}"
                return
            out.info.update(
                {
                    "user_agent": result.get("userAgent"),
                    "codex_home": result.get("codexHome"),
                    "platform": result.get("platformOs"),
                }
            )
            out.writes.append(encode_line(encode_notification("initialized", jsonrpc=False)))
            out.writes.append(self._open_thread())
        elif method in ("thread/start", "thread/resume", "thread/fork"):
            if error is not None and method == "thread/resume":
                # Nothing to resume (the CLI died before it saved the thread): start afresh;
                # the session replays the stored history instead.
                self._log.warning(
                    "codex_resume_unavailable", thread=self.native_session_id, error=error.message
                )
                self.resume_missing = True
                out.writes.append(self._open_thread())
                return
            if error is not None and method == "thread/fork":
                self._log.warning(
                    "codex_fork_unavailable", parent=self.fork_parent, error=error.message
                )
                self.fork_missing = True
                out.writes.append(self._open_thread())
                return
            if error is not None:
                out.error = f"codex {method} failed: {error.message}"
                return
            thread = _mapping(result.get("thread"))
            self.native_session_id = str(thread.get("id") or self.native_session_id)
            self.resumed = method == "thread/resume"
            self.forked = method == "thread/fork"
            if isinstance(thread.get("model"), str) and not self.model:
                self.model = thread["model"]
            out.info.update(
                {
                    "native_session_id": self.native_session_id,
                    "thread_path": thread.get("path"),
                    "model_provider": thread.get("modelProvider"),
                    "resume_missing": self.resume_missing,
                }
            )
            out.state = SessionState.READY
        elif method == "turn/start":
            turn = self._turn
            if error is not None:
                if turn is not None:
                    out.messages += turn.failed(f"codex turn/start failed: {error.message}")
                    self._turn = None
                return
            turn_info = _mapping(result.get("turn"))
            self._turn_id = turn_info.get("id") or self._turn_id
            if self._interrupt_pending and self._turn_id:
                self._interrupt_pending = False
                out.writes.append(self._interrupt_request())
        elif error is not None:
            self._log.warning("codex_request_failed", method=method, error=error.message)

    def _on_notification(self, message: RpcMessage, obj: Mapping[str, Any], out: _Output) -> None:
        method = message.method
        params = message.params if isinstance(message.params, Mapping) else {}
        turn = self._turn
        if method == "thread/tokenUsage/updated":
            usage = params.get("tokenUsage")
            total = usage.get("total") if isinstance(usage, Mapping) else None
            if isinstance(total, Mapping):
                self._usage_total = {
                    k: v for k, v in total.items() if isinstance(v, int) and not isinstance(v, bool)
                }
            return
        if method == "serverRequest/resolved":
            # Codex settled one of its requests itself (e.g. the turn was interrupted):
            # a late answer from the permission handler must not be sent.
            request_id = params.get("requestId")
            if isinstance(request_id, int | str) and self._inbound.pop(request_id) is not None:
                self._log.info("permission_request_withdrawn", request_id=request_id)
            return
        if turn is None:
            return  # between turns: nothing to deliver
        if method == "turn/started":
            info = _mapping(params.get("turn"))
            self._turn_id = info.get("id") or self._turn_id
            out.messages.append(
                _message(
                    MessageType.SYSTEM,
                    obj,
                    subtype="init",
                    model=self.model,
                    thread_id=self.native_session_id,
                    system_info={
                        "thread_id": self.native_session_id,
                        "turn_id": self._turn_id,
                        "model": self.model,
                        "cwd": self.options.get("cwd"),
                        "permission_mode": self.permission_mode,
                    },
                )
            )
        elif method == "item/agentMessage/delta":
            delta = params.get("delta")
            if self.partial and isinstance(delta, str) and delta:
                out.messages.append(_message(MessageType.STREAM_EVENT, obj, content=delta))
        elif method == "item/started":
            item = params.get("item")
            if isinstance(item, Mapping):
                out.messages += turn.item_started(item, obj)
        elif method == "item/completed":
            item = params.get("item")
            if isinstance(item, Mapping):
                out.messages += turn.item_completed(item, obj, self._declined)
        elif method == "error":
            error = _mapping(params.get("error"))
            if not params.get("willRetry"):
                turn.error = str(error.get("message") or "codex reported an error")
                out.messages.append(
                    _message(MessageType.ERROR, obj, content=turn.error, error_info=dict(error))
                )
                turn.error_sent = True
        elif method == "turn/completed":
            info = _mapping(params.get("turn"))
            out.messages += turn.completed(info, obj, self._usage_total, self.model)
            self._declined.clear()
            self._turn = None
            self._turn_id = None

    def _on_server_request(self, message: RpcMessage, out: _Output) -> None:
        assert message.id is not None
        method = str(message.method)
        params = message.params if isinstance(message.params, Mapping) else {}
        if method == "mcpServer/elicitation/request" and self._own_tool_approval(params):
            # Ours (should Codex ask despite the approve mode): the tool server decides.
            answer = encode_result(message.id, {"action": "accept", "content": {}}, jsonrpc=False)
            out.writes.append(encode_line(answer))
            return
        approval = _APPROVALS.get(method)
        if approval is None:
            out.writes.append(
                encode_line(
                    encode_error(
                        message.id,
                        METHOD_NOT_FOUND,
                        f"beamagent does not handle {method!r}",
                        jsonrpc=False,
                    )
                )
            )
            return
        tool_name, _dialect = approval
        tool_input = _approval_input(params)
        context = PermissionContext(
            backend=self.name,
            session_id=self.session_id,
            tool_use_id=_str_or_none(params.get("itemId") or params.get("callId")),
            description=_str_or_none(params.get("reason")),
            blocked_path=_str_or_none(params.get("grantRoot")),
            raw=dict(params),
        )
        self._log.info("permission_requested", tool=tool_name, request_id=message.id)
        if not self.permissions.needs_callback:
            decision = self.permissions.default_decision(tool_name, self.name)
            out.writes.append(self._approval_answer(message, decision))
            return
        self._inbound.add(message)
        policy = self.permissions
        out.calls.append(
            OffThreadCall(
                ("approval", message.id), lambda: policy.decide(tool_name, tool_input, context)
            )
        )

    def _own_tool_approval(self, params: Mapping[str, Any]) -> bool:
        access = self.tool_server
        meta = _mapping(params.get("_meta"))
        return (
            access is not None
            and params.get("serverName") == access.server_name
            and meta.get("codex_approval_kind") == "mcp_tool_call"
            and meta.get("tool_name") in access.tool_names
        )

    def on_call_result(self, key: Any, result: Any, error: BaseException | None) -> HandlerOutput:
        _kind, request_id = key
        message = self._inbound.pop(request_id)
        if message is None:
            return NOTHING
        decision = (
            result
            if isinstance(result, Allow | Deny)
            else Deny(f"permission handler failed: {error!r}")
        )
        decision = self._codex_decision(message, decision)
        self._log.info(
            "permission_decided", request_id=request_id, allowed=isinstance(decision, Allow)
        )
        return HandlerOutput(writes=[self._approval_answer(message, decision)])

    def _codex_decision(
        self, message: RpcMessage, decision: PermissionDecision
    ) -> PermissionDecision:
        """What Codex can do with ``decision``: accept the request as it is, or decline it.

        An ``Allow`` whose ``updated_input`` changes the input cannot be honoured
        (Codex would run the original): it declines, never runs something else than
        what was approved. A ``Deny`` message stays ours: it is kept for the item's
        ``tool_result`` (the model is only told that the command was declined).
        """
        params = message.params if isinstance(message.params, Mapping) else {}
        item_id = _str_or_none(params.get("itemId") or params.get("callId"))
        if isinstance(decision, Allow) and decision.updated_input is not None:
            asked = _approval_input(params)
            if dict(decision.updated_input) != asked:
                self._log.warning("codex_updated_input_unsupported", request_id=message.id)
                decision = Deny(
                    "codex cannot run a changed command or file change "
                    "(Allow(updated_input=...)): declined instead",
                    interrupt=False,
                )
        if isinstance(decision, Deny) and item_id is not None:
            self._declined[item_id] = decision.message
        return decision

    def _approval_answer(self, message: RpcMessage, decision: PermissionDecision) -> bytes:
        assert message.id is not None
        _tool, dialect = _APPROVALS[str(message.method)]
        if dialect == "v2":
            if isinstance(decision, Allow):
                answer = "accept"
            else:
                answer = "cancel" if decision.interrupt else "decline"
        elif isinstance(decision, Allow):
            answer = "approved"
        else:
            answer = "abort" if decision.interrupt else "denied"
        if isinstance(decision, Deny):
            self._log.info("permission_denied", request_id=message.id, message=decision.message)
        return encode_line(encode_result(message.id, {"decision": answer}, jsonrpc=False))

    def info(self) -> dict[str, Any]:
        return {
            "native_session_id": self.native_session_id,
            "thread_id": self.native_session_id,
            "forked_from": self.fork_parent if self.forked else None,
            "fork_missing": self.fork_missing,
            "thread_token_usage": dict(self._usage_total),
            # Codex answers approvals with accept/decline/cancel only (see the class).
            "permission_answers": {"deny_message": False, "updated_input": False},
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


class _Turn:
    """What one turn has produced so far."""

    def __init__(self, usage_before: Mapping[str, int]) -> None:
        self.usage_before = dict(usage_before)
        self.started = time.monotonic()
        self.started_tools: set[str] = set()
        self.last_text: str | None = None
        self.error: str | None = None
        self.error_sent = False

    def item_started(self, item: Mapping[str, Any], raw: Mapping[str, Any]) -> list[Message]:
        use = _tool_use(item, raw)
        if use is None:
            return []
        self.started_tools.add(str(item.get("id")))
        return [use]

    def item_completed(
        self,
        item: Mapping[str, Any],
        raw: Mapping[str, Any],
        declined: dict[str, str] | None = None,
    ) -> list[Message]:
        kind = item.get("type")
        if kind == "agentMessage":
            text = str(item.get("text") or "")
            self.last_text = text
            return [
                _message(
                    MessageType.ASSISTANT,
                    raw,
                    content=text,
                    content_blocks=[ContentBlock("text", text=text)],
                    message_id=_str_or_none(item.get("id")),
                )
            ]
        if kind == "reasoning":
            summary = item.get("summary")
            text = "\n".join(str(s) for s in summary) if isinstance(summary, list) else ""
            return [_message(MessageType.THINKING, raw, content=text)] if text else []
        out: list[Message] = []
        if str(item.get("id")) not in self.started_tools:
            use = _tool_use(item, raw)
            if use is not None:
                out.append(use)
        result = _tool_result(item, raw)
        if result is not None:
            reason = (declined or {}).pop(str(item.get("id")), None)
            if reason and result.is_error:
                text = f"{result.content or 'declined'}: {reason} (not sent to the model)"
                result = result.with_fields(
                    content=text,
                    content_blocks=[
                        ContentBlock(
                            "tool_result",
                            tool_use_id=result.tool_use_id,
                            content=text,
                            is_error=True,
                        )
                    ],
                )
            out.append(result)
        return out

    def usage(self, total: Mapping[str, int]) -> dict[str, int]:
        return {
            _USAGE_KEYS.get(key, key): value - self.usage_before.get(key, 0)
            for key, value in total.items()
        }

    def completed(
        self,
        info: Mapping[str, Any],
        raw: Mapping[str, Any],
        usage_total: Mapping[str, int],
        model: str | None,
    ) -> list[Message]:
        status = str(info.get("status") or "completed")
        subtype = _TURN_STATUS.get(status, status)
        is_error = status != "completed"
        out: list[Message] = []
        error = info.get("error") if isinstance(info.get("error"), Mapping) else None
        if status == "failed" and not self.error_sent:
            text = str((error or {}).get("message") or self.error or "the codex turn failed")
            out.append(_message(MessageType.ERROR, raw, content=text, error_info=error or {}))
        duration = info.get("durationMs")
        out.append(
            _message(
                MessageType.RESULT,
                raw,
                subtype=subtype,
                is_error=is_error,
                content=self.last_text if not is_error else (self.error or self.last_text),
                usage=self.usage(usage_total),
                model=model,
                num_turns=1,
                duration_ms=duration
                if isinstance(duration, int)
                else int((time.monotonic() - self.started) * 1000),
                stop_reason="end_turn" if status == "completed" else status,
            )
        )
        return out

    def failed(self, text: str) -> list[Message]:
        return [
            _message(MessageType.ERROR, {}, content=text),
            _message(MessageType.RESULT, {}, subtype="error", is_error=True, content=text),
        ]


def _approval_input(params: Mapping[str, Any]) -> dict[str, Any]:
    """What the permission handler is shown of an approval request (its ``tool_input``)."""
    return {
        key: params[key]
        for key in ("command", "cwd", "reason", "changes", "grantRoot", "fileChanges")
        if key in params
    }


def _tool_use(item: Mapping[str, Any], raw: Mapping[str, Any]) -> Message | None:
    kind = item.get("type")
    item_id = _str_or_none(item.get("id"))
    if kind == "commandExecution":
        name, tool_input = (
            "command_execution",
            {"command": item.get("command"), "cwd": item.get("cwd")},
        )
    elif kind == "fileChange":
        name, tool_input = "file_change", {"changes": item.get("changes")}
    elif kind == "mcpToolCall":
        name = f"mcp__{item.get('server')}__{item.get('tool')}"
        arguments = item.get("arguments")
        tool_input = dict(arguments) if isinstance(arguments, Mapping) else {"arguments": arguments}
    else:
        return None
    return _message(
        MessageType.TOOL_USE,
        raw,
        tool_name=name,
        tool_input=tool_input,
        tool_use_id=item_id,
        content_blocks=[ContentBlock("tool_use", id=item_id, name=name, input=tool_input)],
    )


def _tool_result(item: Mapping[str, Any], raw: Mapping[str, Any]) -> Message | None:
    kind = item.get("type")
    status = item.get("status")
    if kind == "commandExecution":
        output = item.get("aggregatedOutput")
        exit_code = item.get("exitCode")
        content = output if isinstance(output, str) else ""
        is_error = status != "completed" or (isinstance(exit_code, int) and exit_code != 0)
        if status == "declined" and not content:
            content = "the command was declined"
    elif kind == "fileChange":
        content = f"file change {status}"
        is_error = status != "completed"
    elif kind == "mcpToolCall":
        content, is_error = _mcp_result(item)
    else:
        return None
    item_id = _str_or_none(item.get("id"))
    duration = item.get("durationMs")
    return _message(
        MessageType.TOOL_RESULT,
        raw,
        tool_use_id=item_id,
        content=content,
        is_error=is_error,
        duration_ms=duration
        if isinstance(duration, int | float) and not isinstance(duration, bool)
        else None,
        content_blocks=[
            ContentBlock("tool_result", tool_use_id=item_id, content=content, is_error=is_error)
        ],
    )


def _mcp_result(item: Mapping[str, Any]) -> tuple[str, bool]:
    """An MCP call's text (its text blocks, else its JSON) and whether it failed."""
    result = item.get("result")
    error = item.get("error")
    is_error = item.get("status") != "completed"
    if isinstance(result, Mapping):
        is_error = is_error or result.get("isError") is True
        blocks = result.get("content")
        texts = [
            str(b.get("text"))
            for b in (blocks if isinstance(blocks, list) else [])
            if isinstance(b, Mapping) and b.get("type") == "text"
        ]
        if texts:
            return "\n".join(texts), is_error
        return json.dumps(dict(result), ensure_ascii=False, default=str), is_error
    if isinstance(error, Mapping):
        return str(error.get("message") or json.dumps(dict(error), default=str)), True
    return str(result or error or ""), is_error


def _tool_server(value: Any) -> ToolServerAccess | None:
    if value is None or isinstance(value, ToolServerAccess):
        return value
    raise InvalidOption(
        f"option 'tool_server' is set by the runtime (give tools with tools=[...]); got {value!r}"
    )


def _message(kind: MessageType, raw: Mapping[str, Any], **fields: Any) -> Message:
    return Message(kind, raw=dict(raw), timestamp=time.time_ns() // 1_000_000, **fields)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
