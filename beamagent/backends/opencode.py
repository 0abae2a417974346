"""``opencode``: OpenCode driven through its headless HTTP server (``opencode serve``) and SSE.

The transport (:mod:`beamagent.backends.opencode_server`) starts the server
(or attaches to one at ``base_url``), waits for ``GET /global/health`` and
subscribes to ``GET /event``; this handler then opens the OpenCode session::

    POST /session {title}                      a new session
    GET  /session/{id}                         continue one (native_session_id)
    POST /session/{parent}/fork {}             fork one (fork_native_session_id)

and the session is ``ready``. A query is ``POST /session/{id}/prompt_async``
(``{"parts": [{"type": "text", "text"}], "model": {"providerID", "modelID"}}``,
answered 204 at once); its output comes over the event stream, filtered by
session id:

* ``message.updated`` says which messages are the turn's (the user message,
  then the assistant messages whose ``parentID`` it is) and carries their
  token counts, finish reason and errors;
* ``message.part.updated`` / ``message.part.delta``: text parts become
  ``assistant`` messages (deltas ``stream_event`` with
  ``include_partial_messages``), reasoning parts ``thinking``, tool parts a
  ``tool_use`` / ``tool_result`` pair;
* ``session.error`` an ``error`` message; ``session.idle`` after the turn's
  last assistant message is complete ends the turn with the terminal
  ``result``. (OpenCode sends ``session.idle`` twice after an abort or an
  error, once before the failed message is written: only the one that follows
  the turn's end counts, so a late one never ends the next turn.)
* ``permission.asked`` goes to the session's permission handler (off the
  session's thread) and is answered ``POST /permission/{id}/reply`` with
  ``once`` / ``always`` / ``reject`` (and the denial's message).

**Python tools** (``tools=[...]``, see ``docs/tools.md``) are served to the
session's own ``opencode serve`` through ``OPENCODE_CONFIG_CONTENT`` (merged into
the caller's): ``mcp.<server>`` (remote, its bearer header as
``{env:BEAMAGENT_TOOLS_TOKEN}``) and a last ``"<server>_*": "allow"`` permission
rule. Their tool parts are reported as ``mcp__<server>__<tool>`` and announced
to the tool server with OpenCode's call id; a permission request for them is
answered ``once`` without the permission handler (the tool server asks it). An
attached server (``base_url``) cannot take them: an MCP server added to it would
serve every session on it.

``interrupt()`` is ``POST /session/{id}/abort``; OpenCode leaves a pending
permission request of the aborted turn behind, so the handler rejects those
itself once the abort is answered, and drops the permission handler's late
answers.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Final
from urllib.parse import quote

from beamagent.backends.base import (
    FORK_NATIVE_OPTION,
    NOTHING,
    BackendHandler,
    Connected,
    HandlerOutput,
    OffThreadCall,
    SessionState,
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
from beamagent.backends.opencode_server import OpenCodeServerTransport
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

__all__ = ["OpenCodeHandler", "parse_model"]

log = get_logger(__name__)

CLI_NAME: Final = "opencode"
CONFIG_CONTENT_ENV: Final = "OPENCODE_CONFIG_CONTENT"
"""OpenCode merges the JSON config in this variable over its config files."""
NPM_PACKAGE: Final = "opencode-ai"
DEFAULT_INIT_TIMEOUT: Final = 60.0
"""The ``opencode`` backend's default ``init_timeout``: the server takes seconds to be healthy."""
_FINISH: Final[Mapping[str, str]] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool-calls": "tool_use",
    "content-filter": "refusal",
}
_ABORTED: Final = "MessageAbortedError"


def parse_model(model: Any) -> tuple[str, str]:
    """``"provider/model"`` as OpenCode's ``(providerID, modelID)``; the model id may hold ``/``.

        >>> parse_model("openrouter/anthropic/claude-sonnet-4")
        ('openrouter', 'anthropic/claude-sonnet-4')

    Raises:
        InvalidOption: not a str of that form.
    """
    if isinstance(model, str):
        provider, _, model_id = model.partition("/")
        if provider and model_id:
            return provider, model_id
    raise InvalidOption(
        f"an opencode model is 'provider/model' as OpenCode names it (e.g. "
        f"'anthropic/claude-sonnet-4-5'); got {model!r}"
    )


class OpenCodeHandler(BackendHandler):
    """Handler of the ``opencode`` backend (see the module docstring).

    Options: ``cli_path``, ``cwd`` (the project directory), ``model``
    (``provider/model``; default: the one OpenCode's config names), ``base_url``
    (attach to a running ``opencode serve`` instead of starting one),
    ``headers`` (sent to the server, e.g. its ``Authorization``), ``agent``
    (OpenCode's agent for each prompt, e.g. ``build`` or ``plan``),
    ``system_prompt``, ``title``, ``request_timeout`` (60 s per request),
    ``env``, ``inherit_env``, ``extra_args``, ``command_prefix``,
    ``permission_handler``, ``permission_default``,
    ``include_partial_messages``, ``native_session_id`` (an OpenCode session to
    continue), ``fork_native_session_id`` (an OpenCode session to fork),
    ``tool_server`` (set by the runtime for Python tools: see the module
    docstring; not with ``base_url``).
    """

    name: ClassVar[str] = "opencode"
    hibernates: ClassVar[bool] = True  # woken by continuing the OpenCode session by id
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.SESSION_LIFECYCLE,
            Capability.SESSION_INFO,
            Capability.RUNTIME_MODEL_SWITCH,
            Capability.INTERRUPT,
            Capability.SESSION_HISTORY,
            Capability.APPROVAL_CALLBACKS,
            Capability.COMMAND_EXECUTION,
            Capability.EVENT_STREAMING,
            Capability.IN_PROCESS_MCP,  # Python tools, on a server of the session's own
        }
    )

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        opts = self.options
        self.permissions = PermissionPolicy.from_options(opts)
        if self.permission_mode is not None:
            raise UnsupportedCapability(self.name, "permission_mode")
        if self.model is not None:
            parse_model(self.model)
        base_url = opts.get("base_url")
        if base_url is not None and (
            not isinstance(base_url, str) or not base_url.startswith(("http://", "https://"))
        ):
            raise InvalidOption(f"option 'base_url' must be an http(s) URL; got {base_url!r}")
        self.base_url: str | None = base_url.rstrip("/") if base_url else None
        cli = None if base_url else require_cli(CLI_NAME, NPM_PACKAGE, opts.get("cli_path"))
        headers = opts.get("headers") or {}
        if not isinstance(headers, Mapping):
            raise InvalidOption(f"option 'headers' must be a mapping; got {headers!r}")
        self.headers = {str(k): str(v) for k, v in headers.items()}
        for key in ("agent", "system_prompt", "title", "native_session_id"):
            if opts.get(key) is not None and not isinstance(opts[key], str):
                raise InvalidOption(f"option {key!r} must be a str; got {opts[key]!r}")
        fork = opts.get(FORK_NATIVE_OPTION)
        if fork is not None and not isinstance(fork, str):
            raise InvalidOption(f"option {FORK_NATIVE_OPTION!r} must be a str; got {fork!r}")
        timeout = opts.get("request_timeout", 60.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise InvalidOption(f"option 'request_timeout' must be a number > 0; got {timeout!r}")
        self.request_timeout = float(timeout)
        cwd = opts.get("cwd")
        self.directory = str(cwd) if cwd is not None else None
        self.partial = bool(opts.get("include_partial_messages"))
        # Port 0: the server picks a free port and prints it (no race for a port we chose).
        self.argv: list[str] | None = (
            [
                *command_prefix(opts),
                str(cli),
                "serve",
                "--port",
                "0",
                "--hostname",
                "127.0.0.1",
                *extra_args(opts),
            ]
            if cli is not None
            else None
        )
        # OpenCode finds its project from $PWD, not from the process's working directory.
        self.env = launch_env(opts, set_default={"OPENCODE_DISABLE_AUTOUPDATE": "1"})
        if self.directory is not None:
            self.env["PWD"] = self.directory
        self.tool_server = _tool_server(opts.get("tool_server"))
        if self.tool_server is not None:
            if self.base_url is not None:
                # An MCP server is added to a whole opencode instance: every session on a
                # shared server would be offered this session's tools, and call them.
                raise UnsupportedCapability(
                    self.name,
                    f"{Capability.IN_PROCESS_MCP.value} on an attached server (base_url): "
                    "Python tools need an opencode server of the session's own (leave out "
                    "base_url), or start the session with tools=[]",
                )
            self.tool_server.calls.enable()  # OpenCode announces each call: see _Turn._tool
            self.env.update(self.tool_server.env())  # the config reads the token from here
            self.env[CONFIG_CONTENT_ENV] = json.dumps(
                _with_tool_server(self.env.get(CONFIG_CONTENT_ENV), self.tool_server)
            )
        self.native_session_id: str | None = opts.get("native_session_id")
        # Fork the parent, unless this session has an OpenCode session of its own by now.
        self.fork_parent: str | None = None if self.native_session_id else fork
        self.resumed = False  # continued (or forked) an OpenCode session that existed
        self.resume_missing = False  # asked to, but the server had no such session
        self.fork_missing = False  # asked to fork, but the server had no such parent
        self._requests: dict[int, tuple[str, Any]] = {}
        self._request_ids = 0
        self._turn: _Turn | None = None
        self._user_messages: set[str] = set()  # every user message seen: a new one is the turn's
        self._pending_permissions: dict[str, Mapping[str, Any]] = {}
        # Requests of an interrupted turn: rejected once the abort is answered (OpenCode
        # would keep them pending, and run the tool on a late "once"); never asked.
        self._withdrawn: set[str] = set()
        self._server: dict[str, Any] = {}
        self._log = log.bind(session_id=self.session_id, backend=self.name)

    @classmethod
    def option_names(cls) -> frozenset[str]:
        return (
            (super().option_names() - {"permission_mode"})  # OpenCode has no permission modes
            | LAUNCH_OPTIONS
            | PERMISSION_OPTIONS
            | {
                "base_url",
                "headers",
                "agent",
                "system_prompt",
                "title",
                "request_timeout",
                "include_partial_messages",
                "native_session_id",
                FORK_NATIVE_OPTION,
                "tool_server",
            }
        )

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return cli_availability(CLI_NAME, NPM_PACKAGE)

    def open_transport(self) -> Transport:
        common: dict[str, Any] = {
            "directory": self.directory,
            "headers": self.headers,
            "request_timeout": self.request_timeout,
        }
        if self.argv is None:
            return OpenCodeServerTransport(base_url=self.base_url, **common)
        return OpenCodeServerTransport(
            argv=self.argv, env=self.env, cwd=self.options.get("cwd"), **common
        )

    def resume_natively(self) -> bool:
        """True once the handshake continued (or forked) an OpenCode session that existed."""
        return self.resumed

    # --- outbound ------------------------------------------------------------------------

    def _request(
        self,
        kind: str,
        method: str,
        path: str,
        body: Any = None,
        token: Any = None,
    ) -> bytes:
        self._request_ids += 1
        self._requests[self._request_ids] = (kind, token)
        command: dict[str, Any] = {
            "op": "request",
            "id": self._request_ids,
            "method": method,
            "path": path,
        }
        if body is not None:
            command["json"] = body
        return encode_line(command)

    def _session_path(self, suffix: str = "") -> str:
        assert self.native_session_id is not None
        return f"/session/{quote(self.native_session_id, safe='')}{suffix}"

    def on_connected(self, event: Connected) -> HandlerOutput:
        return HandlerOutput(state=SessionState.INITIALIZING)

    def _open_session(self) -> bytes:
        if self.fork_parent is not None and not self.fork_missing:
            path = f"/session/{quote(self.fork_parent, safe='')}/fork"
            return self._request("fork", "POST", path, {})
        if self.native_session_id is not None and not self.resume_missing:
            return self._request("get_session", "GET", self._session_path())
        title = self.options.get("title") or f"beamagent {self.session_id or ''}".strip()
        return self._request("create_session", "POST", "/session", {"title": title})

    def encode_query(self, prompt: str, params: Mapping[str, Any]) -> HandlerOutput:
        if self.native_session_id is None:
            raise InvalidOption("opencode session has no OpenCode session yet")  # not once ready
        prompt = self.take_replay_prompt(prompt)  # the stored history, when it is replayed
        body: dict[str, Any] = {"parts": [{"type": "text", "text": prompt}]}
        model = params.get("model", self.model)
        if model is not None:
            provider, model_id = parse_model(model)
            body["model"] = {"providerID": provider, "modelID": model_id}
        for option, key in (("agent", "agent"), ("system_prompt", "system")):
            value = params.get(option, self.options.get(option))
            if value is not None:
                body[key] = value
        if isinstance(params.get("tools"), Mapping):
            body["tools"] = dict(params["tools"])
        self._turn = _Turn(str(model) if model is not None else None, self.tool_server)
        init = _message(
            MessageType.SYSTEM,
            {},
            subtype="init",
            model=self.model,
            session_id=self.session_id,
            system_info={
                "model": self.model,
                "cwd": self.directory,
                "agent": body.get("agent"),
                "base_url": self._server.get("base_url"),
                "native_session_id": self.native_session_id,
            },
        )
        try:
            line = self._request(
                "prompt", "POST", self._session_path("/prompt_async"), body, self._turn
            )
        except (TypeError, ValueError) as exc:
            raise InvalidOption(f"query params must be JSON-serialisable: {exc}") from exc
        return HandlerOutput(writes=[line, *self._close_plan()], messages=[init])

    def encode_interrupt(self) -> HandlerOutput | None:
        turn = self._turn
        if turn is None:
            return None
        if turn.aborting:
            return NOTHING
        turn.aborting = True
        self._withdraw_permissions()  # the handler's late answers are dropped from now on
        if not turn.accepted:  # prompt_async not answered yet: abort once it is
            return NOTHING
        return HandlerOutput(writes=[self._abort_request()])

    def _withdraw_permissions(self) -> None:
        self._withdrawn.update(self._pending_permissions)
        self._pending_permissions.clear()

    def _abort_request(self) -> bytes:
        return self._request("abort", "POST", self._session_path("/abort"), None, self._turn)

    def _aborting_now(self, turn: _Turn) -> bool:
        """Whether an abort of ``turn`` was sent and not answered yet."""
        return any(kind == "abort" and token is turn for kind, token in self._requests.values())

    def set_model(self, model: str) -> HandlerOutput | None:
        parse_model(model)
        self.model = model
        return None  # sent with the next prompt (OpenCode takes the model per prompt)

    def set_permission_mode(self, mode: str) -> HandlerOutput | None:
        raise UnsupportedCapability(self.name, "permission_mode")

    def _close_plan(self) -> list[bytes]:
        """What to send if the session closes now, for a server we attached to (see transport)."""
        if self.base_url is None or self.native_session_id is None:
            return []
        requests: list[dict[str, Any]] = []
        if self._turn is not None:
            requests.append({"method": "POST", "path": self._session_path("/abort")})
        requests += [
            {
                "method": "POST",
                "path": f"/permission/{quote(pid, safe='')}/reply",
                "json": {"reply": "reject", "message": "the session was closed"},
            }
            for pid in [*self._pending_permissions, *self._withdrawn]
        ]
        return [encode_line({"op": "on_close", "requests": requests})]

    # --- inbound -------------------------------------------------------------------------

    def handle_data(self, buffer: bytes) -> tuple[HandlerOutput, bytes]:
        decoded = decode_lines(buffer)
        out = _Output()
        for line in decoded.objects:
            op = line.get("op")
            if op in ("response", "request_failed"):
                self._on_response(line, out)
            elif op == "event":
                self._on_event(str(line.get("data", "")), out)
            elif op == "ready":
                self._on_ready(line, out)
        return out.build(), decoded.leftover

    def _on_ready(self, line: Mapping[str, Any], out: _Output) -> None:
        base_url = line.get("base_url")
        health = _mapping(line.get("health"))
        self._server = {"base_url": base_url, **health}
        out.info.update(
            {
                "base_url": base_url,
                "server_version": health.get("version"),
                "server_health": self._server_health(health),
            }
        )
        out.writes.append(self._open_session())

    def _server_health(self, health: Mapping[str, Any]) -> dict[str, Any]:
        """What ``server_health()`` shows: the last ``GET /global/health`` (start, each turn)."""
        report = {
            "healthy": health.get("healthy") is True,
            "version": health.get("version"),
            "base_url": self._server.get("base_url"),
            "checked_at": health.get("checked_at") or time.time(),
            "owned_server": self.base_url is None,
        }
        if health.get("error"):
            report["error"] = health["error"]
        return report

    def _on_response(self, line: Mapping[str, Any], out: _Output) -> None:
        request_id = line.get("id")
        entry = self._requests.pop(request_id, None) if isinstance(request_id, int) else None
        if entry is None:
            return
        kind, token = entry
        status = line.get("status") if line.get("op") == "response" else None
        body = line.get("body")
        ok = isinstance(status, int) and 200 <= status < 300
        error = _describe_failure(line)
        if kind in ("create_session", "get_session", "fork"):
            self._on_session_opened(kind, ok, status, body, error, out)
        elif kind == "prompt":
            if token is self._turn:  # else: a turn given up on (its answer came too late)
                self._on_prompt_answer(ok, error, out)
        elif kind == "abort":
            self._on_abort_answer(token, ok, error, out)
        elif kind == "permission_reply":
            if not ok:
                self._log.info("opencode_permission_reply_refused", request=token, error=error)
        elif kind == "health":
            health = dict(body) if ok and isinstance(body, Mapping) else {"healthy": False}
            if not ok:
                health["error"] = error
            out.info["server_health"] = self._server_health(health)

    def _on_session_opened(
        self, kind: str, ok: bool, status: Any, body: Any, error: str, out: _Output
    ) -> None:
        session = body if ok and isinstance(body, Mapping) else {}
        session_id = session.get("id")
        if not isinstance(session_id, str) or not session_id:
            if kind in ("get_session", "fork") and isinstance(status, int) and status < 500:
                # Nothing to continue under that id (another server, a deleted session):
                # start afresh, and let the session replay its stored history.
                missing = self.native_session_id if kind == "get_session" else self.fork_parent
                self._log.warning("opencode_resume_unavailable", session=missing, error=error)
                if kind == "fork":
                    self.fork_missing = True
                else:
                    self.resume_missing = True
                out.writes.append(self._open_session())
                return
            out.error = f"opencode could not open its session ({kind}): {error}"
            return
        self.native_session_id = session_id
        self.resumed = kind in ("get_session", "fork")
        self._log.info("opencode_session_opened", how=kind, native=session_id)
        out.writes.append(encode_line({"op": "follow", "session_id": session_id}))
        out.info.update(
            {
                "native_session_id": session_id,
                "directory": session.get("directory"),
                "resume_missing": self.resume_missing,
                "fork_missing": self.fork_missing,
                "forked_from": self.fork_parent if kind == "fork" else None,
            }
        )
        out.state = SessionState.READY

    def _on_prompt_answer(self, ok: bool, error: str, out: _Output) -> None:
        turn = self._turn
        if turn is None:
            return
        if not ok:
            out.messages += turn.failed(f"opencode refused the prompt: {error}")
            self._end_turn(out)
            return
        turn.accepted = True
        if turn.failed_early:
            self._finish(turn, out)
        elif turn.aborting:
            out.writes.append(self._abort_request())

    def _on_abort_answer(self, aborted: Any, ok: bool, error: str, out: _Output) -> None:
        if not ok:
            self._log.warning("opencode_abort_failed", error=error)
        current = aborted is self._turn
        if current:
            self._withdraw_permissions()
        # OpenCode keeps the aborted turn's permission requests pending: reject them.
        for pid in sorted(self._withdrawn):
            out.writes.append(self._permission_reply(pid, "reject", "the turn was interrupted"))
        self._withdrawn.clear()
        turn = self._turn
        if current and turn is not None and turn.idle_after_abort:
            self._finish(turn, out)

    def _permission_reply(self, pid: str, reply: str, message: str | None = None) -> bytes:
        body: dict[str, Any] = {"reply": reply}
        if message:
            body["message"] = message
        path = f"/permission/{quote(pid, safe='')}/reply"
        return self._request("permission_reply", "POST", path, body, pid)

    # --- events --------------------------------------------------------------------------

    def _on_event(self, data: str, out: _Output) -> None:
        # A line break can only stand between JSON tokens: as a blank, it keeps one line.
        objects = decode_lines(data.replace("\n", " ").encode("utf-8") + b"\n").objects
        if not objects:
            self._log.warning("opencode_event_malformed", data=data[:200])
            return
        event = objects[0]
        kind = event.get("type")
        props = event.get("properties")
        if not isinstance(props, Mapping) or props.get("sessionID") != self.native_session_id:
            return  # another session's (the transport's filter is a substring test)
        if kind == "message.updated":
            self._on_message_updated(props, out)
        elif kind == "message.part.updated":
            self._on_part(props, event, out)
        elif kind == "message.part.delta":
            self._on_delta(props, event, out)
        elif kind == "session.idle":
            self._on_idle(out)
        elif kind == "session.error":
            self._on_session_error(props, event, out)
        elif kind == "session.status":
            self._on_status(props, event, out)
        elif kind == "permission.asked":
            self._on_permission_asked(props, out)
        elif kind == "permission.replied":
            self._on_permission_replied(props, out)
        elif kind in _IGNORED:
            pass
        else:
            self._log.debug("opencode_event_ignored", type=kind)

    def _on_message_updated(self, props: Mapping[str, Any], out: _Output) -> None:
        info = props.get("info")
        if not isinstance(info, Mapping) or not isinstance(info.get("id"), str):
            return
        message_id = info["id"]
        turn = self._turn
        if info.get("role") == "user":
            if message_id not in self._user_messages:
                self._user_messages.add(message_id)
                if turn is not None and turn.user_message is None:
                    turn.user_message = message_id
            return
        if turn is None or turn.user_message is None or info.get("parentID") != turn.user_message:
            return
        turn.assistant_updated(info)
        if isinstance(info.get("modelID"), str) and isinstance(info.get("providerID"), str):
            running = f"{info['providerID']}/{info['modelID']}"
            turn.model = running
            if self.model is None:
                self.model = running  # what OpenCode's config chose
        if turn.idle_seen and not turn.aborting and turn.complete():
            self._finish(turn, out)

    def _turn_part(self, message_id: Any) -> _Turn | None:
        turn = self._turn
        if turn is None or turn.user_message is None or message_id in self._user_messages:
            return None
        return turn

    def _on_part(self, props: Mapping[str, Any], event: Mapping[str, Any], out: _Output) -> None:
        part = props.get("part")
        if not isinstance(part, Mapping):
            return
        turn = self._turn_part(part.get("messageID"))
        if turn is not None:
            out.messages += turn.on_part(part, event)

    def _on_delta(self, props: Mapping[str, Any], event: Mapping[str, Any], out: _Output) -> None:
        turn = self._turn_part(props.get("messageID"))
        if turn is None or props.get("field") != "text":
            return
        delta = props.get("delta")
        if (
            isinstance(delta, str)
            and turn.on_delta(str(props.get("partID")), delta)
            and self.partial
        ):
            out.messages.append(_message(MessageType.STREAM_EVENT, event, content=delta))

    def _on_status(self, props: Mapping[str, Any], event: Mapping[str, Any], out: _Output) -> None:
        status = props.get("status")
        if self._turn is None or not isinstance(status, Mapping) or status.get("type") != "retry":
            return
        # The provider failed and OpenCode retries: say so, the turn goes on.
        out.messages.append(
            _message(
                MessageType.SYSTEM,
                event,
                subtype="retry",
                content=str(status.get("message") or "retrying"),
                system_info=dict(status),
            )
        )

    def _on_session_error(
        self, props: Mapping[str, Any], event: Mapping[str, Any], out: _Output
    ) -> None:
        turn = self._turn
        error = _mapping(props.get("error"))
        if turn is None:
            self._log.debug("opencode_error_outside_turn", error=str(error)[:300])
            return
        if error.get("name") == _ABORTED:
            turn.abort_seen = True
            return
        out.messages += turn.on_error(error, event)
        if turn.user_message is None and not turn.aborting:
            # The prompt failed before OpenCode wrote it (an unknown agent): no idle follows.
            if turn.accepted:
                self._finish(turn, out)
            else:
                turn.failed_early = True  # finished once prompt_async is answered

    def _on_idle(self, out: _Output) -> None:
        turn = self._turn
        if turn is None:
            return
        if turn.aborting:
            if not turn.accepted:
                return  # the abort is not sent yet
            turn.idle_after_abort = True
            if not self._aborting_now(turn):
                self._finish(turn, out)
            return
        if turn.complete():
            self._finish(turn, out)
        elif turn.user_message is not None:
            turn.idle_seen = True  # before the last message.updated: finished by that one

    def _finish(self, turn: _Turn, out: _Output) -> None:
        out.messages += turn.finished()
        self._end_turn(out)

    def _end_turn(self, out: _Output) -> None:
        self._turn = None
        out.writes += self._close_plan()
        out.writes.append(self._request("health", "GET", "/global/health"))

    # --- permissions ---------------------------------------------------------------------

    def _on_permission_asked(self, props: Mapping[str, Any], out: _Output) -> None:
        pid = props.get("id")
        if not isinstance(pid, str) or pid in self._pending_permissions or pid in self._withdrawn:
            return
        turn = self._turn
        if turn is None or turn.aborting:
            # Asked for a turn that is over or being aborted: nobody is asked.
            self._log.info("permission_rejected_after_interrupt", request_id=pid)
            if turn is not None and self._aborting_now(turn):
                self._withdrawn.add(pid)  # rejected with the others once the abort is answered
            else:
                out.writes.append(self._permission_reply(pid, "reject", "the turn is over"))
            out.writes += self._close_plan()
            return
        tool_name = str(props.get("permission") or "unknown")
        own = _own_tool(self.tool_server, tool_name)
        if own is not None:
            # The session's Python tool (asked despite our "allow" rule): the tool server asks
            # the permission handler when the call reaches it, exactly once.
            self._log.info("permission_allowed_own_tool", tool=own, request_id=pid)
            out.writes.append(self._permission_reply(pid, "once"))
            return
        self._pending_permissions[pid] = props
        out.writes += self._close_plan()
        metadata = props.get("metadata")
        tool_input: dict[str, Any] = dict(metadata) if isinstance(metadata, Mapping) else {}
        patterns = props.get("patterns")
        if isinstance(patterns, list):
            tool_input.setdefault("patterns", list(patterns))
        tool = _mapping(props.get("tool"))
        always = props.get("always")
        context = PermissionContext(
            backend=self.name,
            session_id=self.session_id,
            tool_use_id=_str_or_none(tool.get("callID")),
            description=", ".join(str(p) for p in patterns) if isinstance(patterns, list) else None,
            suggestions=tuple(always) if isinstance(always, list) else (),
            raw=dict(props),
        )
        self._log.info("permission_requested", tool=tool_name, request_id=pid)
        if not self.permissions.needs_callback:
            decision = self.permissions.default_decision(tool_name, self.name)
            self._answer_permission(pid, decision, out)
            return
        policy = self.permissions
        out.calls.append(
            OffThreadCall(
                ("permission", pid), lambda: policy.decide(tool_name, tool_input, context)
            )
        )

    def on_call_result(self, key: Any, result: Any, error: BaseException | None) -> HandlerOutput:
        if not (isinstance(key, tuple) and key[0] == "permission"):
            return NOTHING
        pid = key[1]
        if pid not in self._pending_permissions:
            # Answered meanwhile (the turn was interrupted): a late answer must not be sent.
            self._log.info("permission_request_withdrawn", request_id=pid)
            return NOTHING
        decision: PermissionDecision = (
            result
            if isinstance(result, Allow | Deny)
            else Deny(f"permission handler failed: {error!r}")
        )
        out = _Output()
        self._answer_permission(pid, decision, out)
        return out.build()

    def _answer_permission(self, pid: str, decision: PermissionDecision, out: _Output) -> None:
        self._pending_permissions.pop(pid, None)
        allowed = isinstance(decision, Allow)
        self._log.info("permission_decided", request_id=pid, allowed=allowed)
        if isinstance(decision, Allow):
            if decision.updated_input:
                self._log.warning("opencode_updated_input_ignored", request_id=pid)
            reply = "always" if decision.updated_permissions else "once"
            out.writes.append(self._permission_reply(pid, reply))
        else:
            out.writes.append(self._permission_reply(pid, "reject", decision.message))
            turn = self._turn
            if decision.interrupt and turn is not None and not turn.aborting:
                turn.aborting = True
                self._withdraw_permissions()
                if turn.accepted:
                    out.writes.append(self._abort_request())
        out.writes += self._close_plan()

    def _on_permission_replied(self, props: Mapping[str, Any], out: _Output) -> None:
        pid = props.get("requestID")
        if not isinstance(pid, str):
            return
        pending = self._pending_permissions.pop(pid, None) is not None
        if pending or pid in self._withdrawn:
            self._withdrawn.discard(pid)
            out.writes += self._close_plan()  # answered (by us, or by another client)

    def info(self) -> dict[str, Any]:
        return {
            "native_session_id": self.native_session_id,
            # Waiting for an answer on the server: ours to give, or to reject.
            "pending_permissions": len(self._pending_permissions) + len(self._withdrawn),
        }


# Events of a session that carry nothing for the canonical stream.
_IGNORED: Final = frozenset(
    {
        "session.created",
        "session.updated",
        "session.diff",
        "session.compacted",
        "message.removed",
        "message.part.removed",
        "todo.updated",
        "file.edited",
    }
)


class _Output:
    """A mutable :class:`HandlerOutput` under construction."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.writes: list[bytes] = []
        self.info: dict[str, Any] = {}
        self.calls: list[OffThreadCall] = []
        self.error: str | None = None
        self.state: SessionState | None = None

    def build(self) -> HandlerOutput:
        return HandlerOutput(
            messages=self.messages,
            writes=self.writes,
            info=self.info or None,
            calls=self.calls,
            error=self.error,
            state=self.state,
        )


class _Turn:
    """One prompt: which messages are its own, and what it produced so far."""

    def __init__(self, model: str | None, access: ToolServerAccess | None = None) -> None:
        self.model = model
        self.access = access
        self.started = time.monotonic()
        self.accepted = False  # prompt_async answered 2xx
        self.aborting = False
        self.abort_seen = False
        self.idle_after_abort = False
        self.idle_seen = False  # a session.idle came while the turn was not complete yet
        self.failed_early = False  # an error before the user message, before the 204
        self.user_message: str | None = None
        self.assistant: dict[str, Mapping[str, Any]] = {}  # id -> latest info, in order
        self.parts: dict[str, dict[str, Any]] = {}  # part id -> {"type", "text", "done"}
        self.tools_used: set[str] = set()
        self.tools_done: set[str] = set()
        self.last_text = ""
        self.error: Mapping[str, Any] | None = None
        self.cost = 0.0

    def assistant_updated(self, info: Mapping[str, Any]) -> None:
        self.assistant[str(info["id"])] = info

    def complete(self) -> bool:
        """Whether the turn is over: its last assistant message is complete, or it failed."""
        if self.error is not None:
            return True
        if not self.assistant:
            return False
        last = list(self.assistant.values())[-1]
        time_info = _mapping(last.get("time"))
        if not time_info.get("completed"):
            return False
        return bool(last.get("error")) or last.get("finish") != "tool-calls"

    def on_delta(self, part_id: str, delta: str) -> bool:
        part = self.parts.setdefault(part_id, {"type": None, "text": "", "done": False})
        if part["done"]:
            return False
        part["text"] += delta
        return part["type"] in (None, "text")

    def on_part(self, part: Mapping[str, Any], event: Mapping[str, Any]) -> list[Message]:
        kind = part.get("type")
        part_id = str(part.get("id"))
        if kind in ("text", "reasoning"):
            entry = self.parts.setdefault(part_id, {"type": kind, "text": "", "done": False})
            entry["type"] = kind
            if isinstance(part.get("text"), str) and part["text"]:
                entry["text"] = part["text"]
            time_info = _mapping(part.get("time"))
            if time_info.get("end") and not part.get("synthetic"):
                return self._close_part(part_id, event, part)
            return []
        if kind == "tool":
            return self._tool(part, event)
        if kind == "step-finish":
            # A step ended: whatever text it wrote is final even without its end time.
            return self.flush(event)
        return []

    def _close_part(
        self, part_id: str, raw: Mapping[str, Any], part: Mapping[str, Any] | None = None
    ) -> list[Message]:
        entry = self.parts[part_id]
        if entry["done"] or not entry["text"]:
            return []
        entry["done"] = True
        text = entry["text"]
        message_id = _str_or_none((part or {}).get("messageID"))
        if entry["type"] == "reasoning":
            return [
                _message(
                    MessageType.THINKING,
                    raw,
                    content=text,
                    content_blocks=[ContentBlock("thinking", thinking=text)],
                    message_id=message_id,
                )
            ]
        self.last_text = text
        return [
            _message(
                MessageType.ASSISTANT,
                raw,
                content=text,
                content_blocks=[ContentBlock("text", text=text)],
                message_id=message_id,
                model=self.model,
            )
        ]

    def flush(self, raw: Mapping[str, Any]) -> list[Message]:
        out: list[Message] = []
        for part_id, entry in self.parts.items():
            if entry["type"] in ("text", "reasoning", None):  # None: only deltas came
                out += self._close_part(part_id, raw)
        return out

    def _tool(self, part: Mapping[str, Any], raw: Mapping[str, Any]) -> list[Message]:
        state = _mapping(part.get("state"))
        status = state.get("status")
        call_id = _str_or_none(part.get("callID")) or str(part.get("id"))
        tool_input = _mapping(state.get("input"))
        name = str(part.get("tool") or "unknown")
        own = _own_tool(self.access, name)
        if own is not None and self.access is not None:
            name = f"mcp__{self.access.server_name}__{own}"  # as Claude Code and Codex name it
            if status == "running":
                # The tool server is told the call's id (OpenCode does not send it along).
                self.access.calls.announce(own, dict(tool_input), call_id)
            elif status in ("completed", "error"):
                self.access.calls.retract(call_id)  # if the call never reached the server
        out: list[Message] = []
        if call_id not in self.tools_used and (
            status in ("completed", "error") or (status == "running" and tool_input)
        ):
            self.tools_used.add(call_id)
            out.append(
                _message(
                    MessageType.TOOL_USE,
                    raw,
                    tool_name=name,
                    tool_input=dict(tool_input),
                    tool_use_id=call_id,
                    content_blocks=[
                        ContentBlock("tool_use", id=call_id, name=name, input=dict(tool_input))
                    ],
                )
            )
        if status in ("completed", "error") and call_id not in self.tools_done:
            self.tools_done.add(call_id)
            if status == "completed":
                content = str(state.get("output") or "")
                metadata = _mapping(state.get("metadata"))
                exit_code = metadata.get("exit")
                is_error = (
                    isinstance(exit_code, int)
                    and not isinstance(exit_code, bool)
                    and (exit_code != 0)
                )
            else:
                content, is_error = str(state.get("error") or "the tool failed"), True
            out.append(
                _message(
                    MessageType.TOOL_RESULT,
                    raw,
                    tool_use_id=call_id,
                    content=content,
                    is_error=is_error,
                    content_blocks=[
                        ContentBlock(
                            "tool_result", tool_use_id=call_id, content=content, is_error=is_error
                        )
                    ],
                )
            )
        return out

    def on_error(self, error: Mapping[str, Any], raw: Mapping[str, Any]) -> list[Message]:
        if self.error is not None:
            return []
        self.error = error
        return [
            _message(
                MessageType.ERROR,
                raw,
                content=_error_text(error),
                error_info=dict(error),
            )
        ]

    def usage(self) -> dict[str, Any]:
        totals: dict[str, float] = {}
        cost = 0.0
        for info in self.assistant.values():
            tokens = _mapping(info.get("tokens"))
            cache = _mapping(tokens.get("cache"))
            for key, value in (
                ("input_tokens", tokens.get("input")),
                ("output_tokens", tokens.get("output")),
                ("reasoning_tokens", tokens.get("reasoning")),
                ("cache_read_input_tokens", cache.get("read")),
                ("cache_creation_input_tokens", cache.get("write")),
            ):
                if isinstance(value, int | float) and not isinstance(value, bool):
                    totals[key] = totals.get(key, 0) + value
            if isinstance(info.get("cost"), int | float):
                cost += float(info["cost"])
        usage: dict[str, Any] = {
            k: int(v) if float(v).is_integer() else v for k, v in totals.items()
        }
        if usage:
            usage["total_tokens"] = sum(
                usage.get(k, 0) for k in ("input_tokens", "output_tokens", "reasoning_tokens")
            )
        self.cost = cost
        return usage

    def finished(self) -> list[Message]:
        out = self.flush({})
        if self.aborting:  # tools the abort cut short report no result of their own
            for call_id in sorted(self.tools_used - self.tools_done):
                text = "the turn was interrupted"
                out.append(
                    _message(
                        MessageType.TOOL_RESULT,
                        {},
                        tool_use_id=call_id,
                        content=text,
                        is_error=True,
                        content_blocks=[
                            ContentBlock(
                                "tool_result", tool_use_id=call_id, content=text, is_error=True
                            )
                        ],
                    )
                )
        usage = self.usage()
        last = list(self.assistant.values())[-1] if self.assistant else {}
        finish = last.get("finish") if isinstance(last.get("finish"), str) else None
        if self.aborting:
            subtype, is_error, stop = "interrupted", True, "interrupted"
        elif self.error is not None or last.get("error"):
            if self.error is None and isinstance(last.get("error"), Mapping):
                out += self.on_error(last["error"], {})
            subtype, is_error, stop = "error", True, "error"
        else:
            subtype, is_error = "success", False
            stop = _FINISH.get(finish or "", finish or "end_turn")
        content = self.last_text if not is_error else (_error_text(self.error) or self.last_text)
        out.append(
            _message(
                MessageType.RESULT,
                {},
                subtype=subtype,
                is_error=is_error,
                content=content,
                usage=usage,
                model=self.model,
                num_turns=1,
                stop_reason=stop,
                total_cost_usd=self.cost,
                duration_ms=int((time.monotonic() - self.started) * 1000),
            )
        )
        return out

    def failed(self, text: str) -> list[Message]:
        return [
            _message(MessageType.ERROR, {}, content=text),
            _message(MessageType.RESULT, {}, subtype="error", is_error=True, content=text),
        ]


def _error_text(error: Mapping[str, Any] | None) -> str:
    if not error:
        return ""
    data = _mapping(error.get("data"))
    message = data.get("message") or error.get("message")
    name = error.get("name") or "error"
    return f"{name}: {message}" if message else str(name)


def _describe_failure(line: Mapping[str, Any]) -> str:
    if line.get("op") == "request_failed":
        return str(line.get("error") or "request failed")
    body = line.get("body")
    detail = body
    if isinstance(body, Mapping):
        data = _mapping(body.get("data"))
        detail = data.get("message") or body.get("message") or body
    return f"HTTP {line.get('status')}: {str(detail)[:300]}"


def _message(kind: MessageType, raw: Mapping[str, Any], **fields: Any) -> Message:
    return Message(kind, raw=dict(raw), timestamp=time.time_ns() // 1_000_000, **fields)


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


def _with_tool_server(content: str | None, access: ToolServerAccess) -> dict[str, Any]:
    """``OPENCODE_CONFIG_CONTENT`` with the tool server added (to the caller's own, if any).

    The token stays in the environment: OpenCode substitutes ``{env:VAR}``. Our
    tools are allowed without asking (``<server>_*``, the names OpenCode gives
    them): the tool server asks the permission handler itself.
    """
    config: dict[str, Any] = {}
    if content:
        try:
            loaded = json.loads(content)
        except ValueError as exc:
            raise InvalidOption(f"env {CONFIG_CONTENT_ENV} must be a JSON object: {exc}") from exc
        if not isinstance(loaded, dict):
            raise InvalidOption(f"env {CONFIG_CONTENT_ENV} must be a JSON object; got {loaded!r}")
        config = loaded
    servers = config.get("mcp")
    config["mcp"] = {
        **(servers if isinstance(servers, dict) else {}),
        access.server_name: {
            "type": "remote",
            "url": access.url,
            "headers": {"Authorization": f"Bearer {{env:{access.token_env}}}"},
            "enabled": True,
            "oauth": False,
        },
    }
    permission = config.get("permission")
    if isinstance(permission, str):  # one answer for everything: kept for everything else
        permission = {"*": permission}
    rules = dict(permission) if isinstance(permission, dict) else {}
    key = f"{_tool_prefix(access)}*"
    rules.pop(key, None)  # last: OpenCode's last matching rule wins
    config["permission"] = {**rules, key: "allow"}
    return config


def _own_tool(access: ToolServerAccess | None, name: str) -> str | None:
    """The session's Python tool that OpenCode's tool ``name`` is, or None."""
    if access is None:
        return None
    prefix = _tool_prefix(access)
    if not name.startswith(prefix):
        return None
    own = name[len(prefix) :]
    return own if own in access.tool_names else None


def _tool_prefix(access: ToolServerAccess) -> str:
    """How OpenCode prefixes the tools of our MCP server (``beamagent_``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", access.server_name) + "_"
