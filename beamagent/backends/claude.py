"""``claude``: Claude Code driven over stdio stream-json, with its control protocol.

The CLI runs as one long-lived process per session::

    claude --output-format stream-json --verbose --input-format stream-json
           --permission-prompt-tool stdio [--model M] [--permission-mode P]
           [--system-prompt S] [--allowedTools A,B] [--disallowedTools C]
           [--max-turns N] [--resume ID] [extra args]

It is silent until it is spoken to. The handler sends the ``initialize``
control request (with the hook matchers), and the answer (commands, models,
agents, account) makes the session ``ready``. A query is one ``user`` line;
the CLI answers with ``system/init``, ``assistant`` and ``user`` (tool
results) lines and ends with ``result``. Meanwhile the CLI may ask us things
with ``control_request`` lines (``can_use_tool``, ``hook_callback``), which
go to the session's permission handler and hooks -- never on the session's
thread -- and are answered with ``control_response`` lines. Our own control
requests (interrupt, set_model, set_permission_mode, ``send_control``) are
matched to their answers by request id, read inside ``response`` or at top
level.

After a supervisor restart the session passes the native session id it kept
and the CLI is started with ``--resume <id>``: the conversation goes on. A
store fork is started with ``--resume <parent> --fork-session`` (option
``fork_native_session_id``), which copies the parent's conversation under a
new id. When there is no transcript to resume or fork, the session replays
its stored history instead: a preamble before the first prompt.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final, TypeAlias

import attrs

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
from beamagent.messages import Message, MessageType, normalize
from beamagent.tools._access import ToolServerAccess

__all__ = ["ClaudeHandler", "HookCallback", "HookMatcher"]

log = get_logger(__name__)

CLI_NAME: Final = "claude"
NPM_PACKAGE: Final = "@anthropic-ai/claude-code"
# Controls the session actor implements itself, through set_model and set_permission_mode.
_UNIVERSAL: Final = frozenset({"setModel", "setPermissionMode"})
_CAMEL: Final = re.compile(r"(?<!^)(?=[A-Z])")
PERMISSION_MODES: Final = frozenset(
    {"default", "acceptEdits", "bypassPermissions", "plan", "dontAsk", "auto"}
)
"""Claude Code's permission modes (2.1.197: ``--permission-mode`` choices)."""

HookCallback: TypeAlias = Callable[
    [dict[str, Any], str | None, dict[str, Any]], Mapping[str, Any] | None
]
"""``hook(input, tool_use_id, context) -> output``: a Claude Code hook, run off the session thread.

``output`` is Claude Code's hook output (``{"decision": "block", "reason": ...}``,
``{"hookSpecificOutput": {...}}``, ``{"continue_": False}``...); ``None`` means
``{}``. Trailing underscores (``continue_``, ``async_``) are dropped on the wire.
"""


def _hooks_tuple(value: Any) -> tuple[HookCallback, ...]:
    if callable(value):
        return (value,)
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidOption(f"HookMatcher.hooks must be a list of callables; got {value!r}")
    if not all(callable(h) for h in value):
        raise InvalidOption(f"HookMatcher.hooks must be a list of callables; got {value!r}")
    return tuple(value)


@attrs.frozen
class HookMatcher:
    """Hooks for one event (``PreToolUse``...) and tool-name ``matcher`` (None: all tools).

    Example: ``hooks={"PreToolUse": [HookMatcher("Bash", [audit])]}``.
    """

    matcher: str | None = None
    hooks: tuple[HookCallback, ...] = attrs.field(default=(), converter=_hooks_tuple)
    timeout: float | None = None


def _hook_matchers(value: Any) -> dict[str, list[HookMatcher]]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidOption(f"option 'hooks' must map event names to matchers; got {value!r}")
    out: dict[str, list[HookMatcher]] = {}
    for event, matchers in value.items():
        if isinstance(matchers, HookMatcher | Mapping):
            matchers = [matchers]
        items: list[HookMatcher] = []
        for matcher in matchers:
            if isinstance(matcher, Mapping):
                matcher = HookMatcher(
                    matcher.get("matcher"), matcher.get("hooks", ()), matcher.get("timeout")
                )
            if not isinstance(matcher, HookMatcher):
                raise InvalidOption(f"hooks[{event!r}] items must be HookMatcher; got {matcher!r}")
            items.append(matcher)
        out[str(event)] = items
    return out


def _csv(value: Any, option: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    raise InvalidOption(f"option {option!r} must be a list of tool names; got {value!r}")


def _hook_output_to_wire(output: Any) -> dict[str, Any]:
    if output is None:
        return {}
    if not isinstance(output, Mapping):
        raise TypeError(f"a hook must return a mapping or None; got {output!r}")
    return {(k[:-1] if k in ("continue_", "async_") else k): v for k, v in output.items()}


class ClaudeHandler(BackendHandler):
    """Handler of the ``claude`` backend (see the module docstring).

    Options: ``cli_path``, ``cwd``, ``model``, ``permission_mode`` (one of
    :data:`PERMISSION_MODES`), ``system_prompt``, ``allowed_tools``,
    ``disallowed_tools``, ``max_turns``, ``env``, ``inherit_env`` (default
    True), ``extra_args``, ``command_prefix``, ``permission_handler``,
    ``permission_default``, ``hooks``, ``include_partial_messages``,
    ``native_session_id`` (resume that Claude session),
    ``fork_native_session_id`` (fork that Claude session; set by the runtime
    for a store fork), ``tool_server`` (set by the runtime for a session with
    Python tools: see :class:`~beamagent.tools.ToolServerAccess`).
    """

    name: ClassVar[str] = "claude"
    hibernates: ClassVar[bool] = True  # woken with --resume=<native id>
    permission_modes: ClassVar[frozenset[str] | None] = PERMISSION_MODES
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.SESSION_LIFECYCLE,
            Capability.SESSION_INFO,
            Capability.RUNTIME_MODEL_SWITCH,
            Capability.INTERRUPT,
            Capability.PERMISSION_MODE,
            Capability.SESSION_HISTORY,
            Capability.METADATA_ACCESSORS,
            Capability.HOOKS,
            Capability.APPROVAL_CALLBACKS,
            Capability.COMMAND_EXECUTION,
            Capability.EVENT_STREAMING,
            Capability.MCP_MANAGEMENT,
            Capability.TASK_STOP,
            Capability.IN_PROCESS_MCP,
            Capability.THINKING_BUDGET,
        }
    )

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        opts = self.options
        self.permissions = PermissionPolicy.from_options(opts)
        self.hooks = _hook_matchers(opts.get("hooks"))
        self.cli = require_cli(CLI_NAME, NPM_PACKAGE, opts.get("cli_path"))
        max_turns = opts.get("max_turns")
        if max_turns is not None and (
            not isinstance(max_turns, int) or isinstance(max_turns, bool) or max_turns < 1
        ):
            raise InvalidOption(f"option 'max_turns' must be an int >= 1; got {max_turns!r}")
        system_prompt = opts.get("system_prompt")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise InvalidOption(f"option 'system_prompt' must be a str; got {system_prompt!r}")
        if self.permission_mode is not None and self.permission_mode not in PERMISSION_MODES:
            raise InvalidOption(
                f"option 'permission_mode' must be one of {', '.join(sorted(PERMISSION_MODES))}; "
                f"got {self.permission_mode!r}"
            )
        for key in ("native_session_id", FORK_NATIVE_OPTION):
            value = opts.get(key)
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidOption(f"option {key!r} must be a non-empty str; got {value!r}")
        # Flush the transcript at each turn, so that a CLI killed mid-turn can be resumed.
        self.env = launch_env(
            opts, drop=("CLAUDECODE",), set_default={"CLAUDE_CODE_EAGER_FLUSH": "1"}
        )
        self.tool_server = _tool_server(opts.get("tool_server"))
        # Our tools' names as Claude Code shows them: allowed up front, never asked about
        # (the tool server asks the permission handler itself, once per call).
        self._own_tools: frozenset[str] = frozenset()
        if self.tool_server is not None:
            self.env.update(self.tool_server.env())  # the token: environment only
            self._own_tools = frozenset(self.tool_server.qualified_names())
        self.native_session_id: str | None = opts.get("native_session_id")
        self.requested_model: str | None = self.model
        self.max_thinking_tokens: int | None = None
        self.resumed = False
        self.resume_missing = False
        self.fork_parent: str | None = None
        self.fork_missing = False
        if self.native_session_id is not None:
            self.resumed = _transcript_exists(self.env, self.native_session_id, opts.get("cwd"))
            self.resume_missing = not self.resumed
        elif opts.get(FORK_NATIVE_OPTION) is not None:
            parent = str(opts[FORK_NATIVE_OPTION])
            if _transcript_exists(self.env, parent, opts.get("cwd")):
                self.fork_parent = parent
            else:
                self.fork_missing = True  # nothing to fork: the session replays instead
        self.argv = self._argv()
        self._ids = itertools.count(1)
        self._init_id = "beamagent_init"
        # Our own control requests whose answers nobody waits for (interrupt, set_model...).
        self._internal: dict[str, str] = {}
        # send_control requests whose answer we give in our own shape: request id -> answer.
        self._answers: dict[str, dict[str, Any]] = {}
        # The CLI's open requests to us: request id -> (subtype, original input).
        self._open: dict[str, dict[str, Any]] = {}
        self._hook_callbacks: dict[str, HookCallback] = {}
        self._log = log.bind(session_id=self.session_id, backend=self.name)

    @classmethod
    def option_names(cls) -> frozenset[str]:
        return (
            super().option_names()
            | LAUNCH_OPTIONS
            | PERMISSION_OPTIONS
            | {
                "system_prompt",
                "allowed_tools",
                "disallowed_tools",
                "max_turns",
                "hooks",
                "include_partial_messages",
                "native_session_id",
                "tool_server",
                FORK_NATIVE_OPTION,
            }
        )

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return cli_availability(CLI_NAME, NPM_PACKAGE)

    def resume_natively(self) -> bool:
        """``--resume`` of a transcript on disk, or ``--fork-session`` of the parent's."""
        return self.resumed or self.fork_parent is not None

    # --- process -------------------------------------------------------------------------

    def _argv(self) -> list[str]:
        opts = self.options
        argv = [
            *command_prefix(opts),
            str(self.cli),
            "--output-format",
            "stream-json",
            "--verbose",
            "--input-format",
            "stream-json",
            "--permission-prompt-tool",
            "stdio",
        ]
        if self.model:
            argv += ["--model", str(self.model)]
        if self.permission_mode:
            argv += ["--permission-mode", str(self.permission_mode)]
        if opts.get("system_prompt") is not None:
            argv += ["--system-prompt", opts["system_prompt"]]
        allowed = _csv(opts.get("allowed_tools"), "allowed_tools")
        access = self.tool_server
        if access is not None:
            argv += ["--mcp-config", json.dumps(_mcp_config(access))]
            allowed = ",".join([*([allowed] if allowed else []), *access.qualified_names()])
        if allowed:
            argv += ["--allowedTools", allowed]
        disallowed = _csv(opts.get("disallowed_tools"), "disallowed_tools")
        if disallowed:
            argv += ["--disallowedTools", disallowed]
        if opts.get("max_turns") is not None:
            argv += ["--max-turns", str(opts["max_turns"])]
        if self.native_session_id and self.resumed:
            argv.append(f"--resume={self.native_session_id}")
        elif self.native_session_id:
            # Nothing on disk to resume (the CLI died before it wrote the transcript):
            # start afresh under the same id rather than fail on every restart.
            argv.append(f"--session-id={self.native_session_id}")
        elif self.fork_parent is not None:
            # A new session id holding a copy of the parent's conversation.
            argv += [f"--resume={self.fork_parent}", "--fork-session"]
        if opts.get("include_partial_messages"):
            argv.append("--include-partial-messages")
        argv += extra_args(opts)
        return argv

    def open_transport(self) -> Transport:
        return SubprocessTransport(self.argv, env=self.env, cwd=self.options.get("cwd"))

    def on_connected(self, event: Connected) -> HandlerOutput:
        request: dict[str, Any] = {"subtype": "initialize", "hooks": self._hooks_config() or None}
        line = {"type": "control_request", "request_id": self._init_id, "request": request}
        if self.resume_missing:
            self._log.warning("claude_resume_unavailable", native_session_id=self.native_session_id)
        if self.fork_missing:
            self._log.warning(
                "claude_fork_unavailable", parent=self.options.get(FORK_NATIVE_OPTION)
            )
        self._log.debug("claude_initializing", pid=event.info.get("pid"), resumed=self.resumed)
        return HandlerOutput(writes=[encode_line(line)], state=SessionState.INITIALIZING)

    def _hooks_config(self) -> dict[str, list[dict[str, Any]]]:
        config: dict[str, list[dict[str, Any]]] = {}
        for event, matchers in self.hooks.items():
            entries = []
            for matcher in matchers:
                ids = []
                for callback in matcher.hooks:
                    callback_id = f"hook_{len(self._hook_callbacks)}"
                    self._hook_callbacks[callback_id] = callback
                    ids.append(callback_id)
                entry: dict[str, Any] = {"matcher": matcher.matcher, "hookCallbackIds": ids}
                if matcher.timeout is not None:
                    entry["timeout"] = matcher.timeout
                entries.append(entry)
            if entries:
                config[event] = entries
        return config

    # --- outbound ------------------------------------------------------------------------

    def _control(self, request: Mapping[str, Any], request_id: str | None = None) -> bytes:
        if request_id is None:
            request_id = f"beamagent_{next(self._ids)}"
            self._internal[request_id] = str(request.get("subtype"))
        return encode_line(
            {"type": "control_request", "request_id": request_id, "request": dict(request)}
        )

    def encode_query(self, prompt: str, params: Mapping[str, Any]) -> HandlerOutput:
        content: Any = prompt
        blocks = params.get("content")
        if blocks is not None:  # content blocks (e.g. images) instead of the plain prompt
            if isinstance(blocks, str) or not isinstance(blocks, Sequence):
                raise InvalidOption(
                    f"query param 'content' must be a list of blocks; got {blocks!r}"
                )
            content = list(blocks)
        preamble = self.take_replay_preamble()
        if preamble is not None:  # the replayed conversation first, in a block of its own
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            content.insert(0, {"type": "text", "text": preamble})
        line = {
            "type": "user",
            "message": {"role": "user", "content": content},
            "parent_tool_use_id": None,
            "session_id": self.native_session_id or "",
        }
        try:
            return HandlerOutput(writes=[encode_line(line)])
        except (TypeError, ValueError) as exc:
            raise InvalidOption(f"query content must be JSON-serialisable: {exc}") from exc

    def encode_interrupt(self) -> HandlerOutput:
        return HandlerOutput(writes=[self._control({"subtype": "interrupt"})])

    def set_model(self, model: str) -> HandlerOutput:
        self.model = self.requested_model = model  # until the CLI's next init says otherwise
        return HandlerOutput(writes=[self._control({"subtype": "set_model", "model": model})])

    def set_permission_mode(self, mode: str) -> HandlerOutput:
        self.permission_mode = mode
        return HandlerOutput(
            writes=[self._control({"subtype": "set_permission_mode", "mode": mode})]
        )

    def handle_control(
        self, method: str, params: Mapping[str, Any], request_id: str
    ) -> HandlerOutput | None:
        if method in _UNIVERSAL:
            return None
        subtype = _CAMEL.sub("_", method).lower()  # mcpStatus -> mcp_status
        request = {**params, "subtype": subtype}
        if subtype == "set_max_thinking_tokens":
            request, self._answers[request_id] = _thinking_tokens_request(params)
        elif subtype == "stop_task":
            request, self._answers[request_id] = _stop_task_request(params)
        try:
            return HandlerOutput(writes=[self._control(request, request_id)])
        except (TypeError, ValueError) as exc:
            raise InvalidOption(f"control params must be JSON-serialisable: {exc}") from exc

    # --- inbound -------------------------------------------------------------------------

    def handle_data(self, buffer: bytes) -> tuple[HandlerOutput, bytes]:
        decoded = decode_lines(buffer)
        messages: list[Message] = []
        writes: list[bytes] = []
        replies: list[tuple[Any, Any, str | None]] = []
        calls: list[OffThreadCall] = []
        info: dict[str, Any] = {}
        state: SessionState | None = None
        for obj in decoded.objects:
            kind = obj.get("type")
            if kind == "control_response":
                state = self._on_control_response(obj, replies, info) or state
            elif kind == "control_request":
                self._on_control_request(obj, writes, calls)
            elif kind == "control_cancel_request":
                cancelled = self._open.pop(str(obj.get("request_id")), None)
                self._log.debug(
                    "claude_request_cancelled",
                    request_id=obj.get("request_id"),
                    known=cancelled is not None,
                )
            elif kind == "keep_alive":
                continue
            elif kind == "user" and obj.get("isReplay"):
                continue  # an echo of a local command (e.g. set_model), not a conversation turn
            else:
                if kind == "system" and obj.get("subtype") == "init":
                    info.update(self._init_info(obj))
                message = normalize(obj)
                if kind == "result" and message.is_error:
                    if message.subtype in (None, "success"):
                        # e.g. 'Not logged in' comes as is_error with subtype 'success'.
                        message = message.with_fields(subtype="error_during_execution")
                    if _not_logged_in(message):
                        info["backend_health"] = ("unhealthy", "the claude CLI is not logged in")
                    messages.append(_error_from_result(message))
                messages.append(message)
        output = HandlerOutput(
            messages=messages,
            writes=writes,
            replies=replies,
            calls=calls,
            info=info or None,
            state=state,
        )
        return output, decoded.leftover

    def _init_info(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        info: dict[str, Any] = {}
        native = obj.get("session_id")
        if isinstance(native, str) and native:
            self.native_session_id = native
            info["native_session_id"] = native
        if isinstance(obj.get("model"), str) and obj["model"]:
            # What the CLI says it runs (an alias resolved, a fallback), not what was asked.
            self.model = obj["model"]
        for key, target in (
            ("tools", "tools"),
            ("claude_code_version", "cli_version"),
            ("cwd", "cli_cwd"),
            ("mcp_servers", "mcp_servers"),
        ):
            if key in obj:
                info[target] = obj[key]
        return info

    def _on_control_response(
        self,
        obj: Mapping[str, Any],
        replies: list[tuple[Any, Any, str | None]],
        info: dict[str, Any],
    ) -> SessionState | None:
        response = obj.get("response")
        response = response if isinstance(response, Mapping) else {}
        request_id = response.get("request_id", obj.get("request_id"))
        ok = response.get("subtype") != "error"
        error = None if ok else str(response.get("error") or "control request failed")
        if request_id == self._init_id:
            if not ok:
                self._log.warning("claude_initialize_failed", error=error)
                return None
            info.update(_initialize_info(response.get("response")))
            return SessionState.READY
        internal = self._internal.pop(str(request_id), None)
        if internal is not None:
            if error is not None:
                self._log.warning("claude_control_failed", subtype=internal, error=error)
            return None
        if error is not None and error.startswith("Unsupported control request subtype"):
            error = f"unknown control method ({error})"
        answer = self._answers.pop(str(request_id), None)
        result = response.get("response", {}) if ok else None
        if ok and answer is not None:
            result = answer  # the same shape the universal fallback gives
            if "max_thinking_tokens" in answer:
                self.max_thinking_tokens = answer["max_thinking_tokens"]
                info["max_thinking_tokens"] = self.max_thinking_tokens
        replies.append((request_id, result, error))
        return None

    def _on_control_request(
        self, obj: Mapping[str, Any], writes: list[bytes], calls: list[OffThreadCall]
    ) -> None:
        request_id = obj.get("request_id")
        request = obj.get("request")
        if not isinstance(request_id, str | int) or not isinstance(request, Mapping):
            self._log.warning("claude_bad_control_request", line=str(obj)[:200])
            return
        rid = str(request_id)
        subtype = request.get("subtype")
        if subtype == "can_use_tool":
            tool_name = str(request.get("tool_name") or "")
            tool_input = request.get("input")
            tool_input = dict(tool_input) if isinstance(tool_input, Mapping) else {}
            suggestions = request.get("permission_suggestions")
            context = PermissionContext(
                backend=self.name,
                session_id=self.session_id,
                tool_use_id=_str_or_none(request.get("tool_use_id")),
                description=_str_or_none(request.get("description")),
                blocked_path=_str_or_none(request.get("blocked_path")),
                suggestions=tuple(suggestions) if isinstance(suggestions, list) else (),
                raw=dict(request),
            )
            if tool_name in self._own_tools:
                # Ours: the tool server asks the permission handler when the call reaches it.
                writes.append(self._permission_answer(request_id, Allow(), tool_input))
                return
            self._log.info("permission_requested", tool=tool_name, request_id=rid)
            if not self.permissions.needs_callback:
                decision = self.permissions.default_decision(tool_name, self.name)
                writes.append(self._permission_answer(request_id, decision, tool_input))
                return
            self._open[rid] = {"request_id": request_id, "input": tool_input}
            policy = self.permissions
            calls.append(
                OffThreadCall(
                    ("permission", rid), lambda: policy.decide(tool_name, tool_input, context)
                )
            )
        elif subtype == "hook_callback":
            callback = self._hook_callbacks.get(str(request.get("callback_id")))
            if callback is None:
                writes.append(_control_error(request_id, f"no hook {request.get('callback_id')!r}"))
                return
            hook_input = request.get("input")
            hook_input = dict(hook_input) if isinstance(hook_input, Mapping) else {}
            tool_use_id = _str_or_none(request.get("tool_use_id"))
            self._open[rid] = {"request_id": request_id}
            calls.append(
                OffThreadCall(
                    ("hook", rid), lambda: callback(hook_input, tool_use_id, {"signal": None})
                )
            )
        else:
            writes.append(
                _control_error(request_id, f"beamagent does not support {subtype!r} requests")
            )

    def on_call_result(self, key: Any, result: Any, error: BaseException | None) -> HandlerOutput:
        kind, rid = key
        entry = self._open.pop(rid, None)
        if entry is None:  # cancelled by the CLI meanwhile (e.g. an interrupt)
            return NOTHING
        request_id = entry["request_id"]
        if kind == "permission":
            decision = (
                result
                if isinstance(result, Allow | Deny)
                else Deny(f"permission handler failed: {error!r}")
            )
            self._log.info(
                "permission_decided",
                request_id=rid,
                allowed=isinstance(decision, Allow),
            )
            return HandlerOutput(
                writes=[self._permission_answer(request_id, decision, entry["input"])]
            )
        if error is not None:
            return HandlerOutput(writes=[_control_error(request_id, f"hook failed: {error!r}")])
        try:
            response = _hook_output_to_wire(result)
            line = _control_success(request_id, response)
        except (TypeError, ValueError) as exc:
            return HandlerOutput(writes=[_control_error(request_id, f"bad hook output: {exc}")])
        return HandlerOutput(writes=[line])

    def _permission_answer(
        self, request_id: Any, decision: PermissionDecision, original: Mapping[str, Any]
    ) -> bytes:
        response: dict[str, Any]
        if isinstance(decision, Allow):
            updated = decision.updated_input
            response = {
                "behavior": "allow",
                "updatedInput": dict(updated) if updated is not None else dict(original),
            }
            if decision.updated_permissions is not None:
                response["updatedPermissions"] = list(decision.updated_permissions)
        else:
            response = {"behavior": "deny", "message": decision.message}
            if decision.interrupt:
                response["interrupt"] = True
        try:
            return _control_success(request_id, response)
        except (TypeError, ValueError) as exc:
            return _control_success(
                request_id, {"behavior": "deny", "message": f"unserialisable input: {exc}"}
            )

    def info(self) -> dict[str, Any]:
        return {
            "native_session_id": self.native_session_id,
            "requested_model": self.requested_model,
            "resume_missing": self.resume_missing,
            "forked_from": self.fork_parent,
            "fork_missing": self.fork_missing,
            "max_thinking_tokens": self.max_thinking_tokens,
            "permission_answers": {"deny_message": True, "updated_input": True},
        }


def _tool_server(value: Any) -> ToolServerAccess | None:
    if value is None or isinstance(value, ToolServerAccess):
        return value
    raise InvalidOption(
        f"option 'tool_server' is set by the runtime (give tools with tools=[...]); got {value!r}"
    )


def _mcp_config(access: ToolServerAccess) -> dict[str, Any]:
    """Claude Code's ``--mcp-config``: the token is read from the environment, not argv."""
    return {
        "mcpServers": {
            access.server_name: {
                "type": "http",
                "url": access.url,
                # Claude Code expands ${VAR} from its environment in MCP server configs.
                "headers": {"Authorization": f"Bearer ${{{access.token_env}}}"},
            }
        }
    }


def _thinking_tokens_request(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``setMaxThinkingTokens`` as the CLI's ``set_max_thinking_tokens`` request, and our answer."""
    value = params.get("max_thinking_tokens", params.get("maxThinkingTokens"))
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise InvalidOption(f"max_thinking_tokens must be an int >= 0 or None; got {value!r}")
    request = {"subtype": "set_max_thinking_tokens", "max_thinking_tokens": value}
    return request, {"max_thinking_tokens": value}


def _stop_task_request(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``stopTask`` as the CLI's ``stop_task`` request (one task), and our answer."""
    task_id = params.get("task_id", params.get("taskId"))
    if not isinstance(task_id, str) or not task_id:
        raise InvalidOption(
            "stopTask on claude stops one background task: pass {'task_id': ...} (the id in "
            "its task_started system message); to stop the whole turn, use interrupt()"
        )
    return {"subtype": "stop_task", "task_id": task_id}, {"task_id": task_id}


def _transcript_exists(env: Mapping[str, str], native_session_id: str, cwd: Any = None) -> bool:
    """Whether Claude Code has a transcript for ``native_session_id`` that ``--resume`` finds.

    Claude Code keeps a directory's conversations under ``projects/<that directory's
    name>`` and resumes (or forks) only those of the directory it runs in: a
    transcript of another directory is "No conversation found".
    """
    config_dir = env.get("CLAUDE_CONFIG_DIR")
    if config_dir:
        root = Path(config_dir)
    elif env.get("HOME"):
        root = Path(env["HOME"]) / ".claude"
    else:
        return True  # cannot tell: let the CLI decide
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", native_session_id):
        return True  # not a plain id: let the CLI say what is wrong with it
    projects = root / "projects"
    directory = os.path.abspath(str(cwd) if cwd is not None else os.getcwd())
    names = {_project_dir_name(directory), _project_dir_name(os.path.realpath(directory))}
    return any((projects / name / f"{native_session_id}.jsonl").is_file() for name in names)


def _project_dir_name(path: str) -> str:
    """The name Claude Code 2.1 gives a directory's project folder (every non-alphanumeric
    UTF-16 code unit becomes ``-``; a name over 200 units is cut and gets a hash)."""
    data = path.encode("utf-16-le", "surrogatepass")
    units = [int.from_bytes(data[i : i + 2], "little") for i in range(0, len(data), 2)]
    name = "".join(chr(u) if chr(u).isascii() and chr(u).isalnum() else "-" for u in units)
    if len(name) <= _PROJECT_NAME_MAX:
        return name
    digest = 0
    for unit in units:  # JavaScript's (h << 5) - h + c, kept to a signed 32-bit int
        digest = (digest * 31 + unit) & 0xFFFFFFFF
    if digest >= 2**31:
        digest -= 2**32
    return f"{name[:_PROJECT_NAME_MAX]}-{_base36(abs(digest))}"


_PROJECT_NAME_MAX: Final = 200


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _control_success(request_id: Any, response: Mapping[str, Any]) -> bytes:
    return encode_line(
        {
            "type": "control_response",
            "response": {"subtype": "success", "request_id": request_id, "response": response},
        }
    )


def _control_error(request_id: Any, error: str) -> bytes:
    return encode_line(
        {
            "type": "control_response",
            "response": {"subtype": "error", "request_id": request_id, "error": error},
        }
    )


def _initialize_info(response: Any) -> dict[str, Any]:
    if not isinstance(response, Mapping):
        return {}
    return {
        "supported_commands": list(response.get("commands") or []),
        "supported_models": list(response.get("models") or []),
        "supported_agents": list(response.get("agents") or []),
        "account_info": dict(response.get("account") or {}),
        "output_style": response.get("output_style"),
        "cli_pid": response.get("pid"),
    }


def _not_logged_in(result: Message) -> bool:
    """Whether a failed result says the CLI has no credentials ("Not logged in · ...")."""
    text = result.content if isinstance(result.content, str) else ""
    return "not logged in" in text.lower() or "/login" in text


def _error_from_result(result: Message) -> Message:
    """The ``error`` message that precedes a failed ``result`` (API error, max turns...)."""
    raw = result.raw or {}
    text = result.content
    if not text and result.errors:
        text = "; ".join(str(e) for e in result.errors)
    info = {
        key: raw[key]
        for key in ("subtype", "api_error_status", "stop_reason", "terminal_reason")
        if raw.get(key) is not None
    }
    return Message(
        MessageType.ERROR,
        content=text or f"claude ended the turn with {result.subtype or 'an error'}",
        error_info=info,
        session_id=result.session_id,
        timestamp=result.timestamp,
    )
