"""``local``: the embedded default backend — deterministic, no I/O, scriptable.

A :class:`LocalAgent` lives in-process at the far end of an
:class:`~beamagent.backends.base.InProcessTransport` and speaks a small JSONL
protocol shaped like Claude Code's stream-json, so the local backend runs the
same codec, handler and session machinery as the real CLIs:

* ``{"type":"initialize"}`` → a ``control_response`` with models, commands,
  agents and account (the session is ``ready`` after it);
* ``{"type":"query","prompt":...}`` → ``system/init``, one ``assistant`` message
  per reply part, and a terminal ``result``;
* ``{"type":"interrupt"}`` stops a streamed reply with an ``interrupted`` result.

Replies: the prompt echoed by default; ``replies=[...]`` consumes one entry per
query (then echoes); ``reply=callable(prompt, params)`` returns a ``str``, a list
of message dicts (emitted as they are; a ``result`` is appended if missing) or
a generator. A ``reply`` callable always runs on a short-lived thread of its
own, never on the session's, so it may block (e.g. to script a slow reply)
while the session answers ``health()``, interrupts and its own timeouts.
Items of a list or generator: ``str`` (an assistant text), ``dict`` (a raw
message), ``bytes`` (raw bytes, for fault injection) or :class:`LocalExit`
(the agent "process" exits with a status).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Final

import attrs

from beamagent.backends.base import (
    BackendHandler,
    Connected,
    HandlerOutput,
    InProcessPeer,
    InProcessTransport,
    SessionState,
    Transport,
)
from beamagent.backends.jsonl import decode_lines, encode_line
from beamagent.capabilities import Capability
from beamagent.errors import InvalidOption
from beamagent.messages import Message, _normalize_owned

__all__ = ["LocalAgent", "LocalExit", "LocalHandler", "ReplyFn"]

ReplyFn = Callable[[str, Mapping[str, Any]], Any]
"""``reply(prompt, params)`` → str | list of items | generator of items."""

DEFAULT_MODEL = "local-echo"
LOCAL_MODELS = ("local-echo", "local-large")


@attrs.frozen
class LocalExit:
    """A reply item that makes the local agent exit with ``status`` (transport death)."""

    status: int = 1


class LocalAgent(InProcessPeer):
    """The in-process agent behind the ``local`` backend."""

    def __init__(
        self,
        *,
        native_session_id: str,
        model: str,
        cwd: str | None,
        permission_mode: str | None,
        replies: Sequence[Any] = (),
        reply: ReplyFn | None = None,
        models: Sequence[str] = LOCAL_MODELS,
        commands: Sequence[str] = ("/help", "/clear"),
        agents: Sequence[str] = ("general",),
    ) -> None:
        self.native_session_id = native_session_id
        self.model = model
        self.cwd = cwd
        self.permission_mode = permission_mode
        self._replies = list(replies)
        self._reply = reply
        self._models = list(models)
        self._commands = list(commands)
        self._agents = list(agents)
        self._emit: Callable[[bytes], None] = lambda _data: None
        self._exit: Callable[[int], None] = lambda _status: None
        self._turn = 0
        self._seq = itertools.count(1)
        self._cancel = threading.Event()  # this query's interrupt
        self._superseded = threading.Event()  # set when the next query starts
        self._streamer: threading.Thread | None = None
        self._closed = False

    def attach(self, emit: Callable[[bytes], None], exit: Callable[[int], None]) -> None:
        self._emit, self._exit = emit, exit

    # --- protocol ------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        for obj in decode_lines(data).objects:
            kind = obj.get("type")
            if kind == "initialize":
                self._emit(encode_line(self._initialized(obj.get("request_id", "init"))))
            elif kind == "query":
                self._query(str(obj.get("prompt", "")), obj.get("params") or {})
            elif kind == "interrupt":
                self._cancel.set()
            elif kind == "set_model":
                self.model = str(obj.get("model") or self.model)
            elif kind == "set_permission_mode":
                self.permission_mode = obj.get("mode")
            elif kind == "control":
                self._emit(encode_line(self._control(obj)))

    def _initialized(self, request_id: Any) -> dict[str, Any]:
        return {
            "type": "control_response",
            "response": {
                "subtype": "success",
                "request_id": request_id,
                "response": {
                    "models": [{"value": m, "displayName": m} for m in self._models],
                    "commands": [{"name": c} for c in self._commands],
                    "agents": list(self._agents),
                    "account": {"provider": "local", "email": None},
                    "native_session_id": self.native_session_id,
                },
            },
        }

    def _control(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        request_id = obj.get("request_id")
        method, params = obj.get("method"), obj.get("params") or {}
        if method == "echo":
            return _control_response(request_id, {"echo": params})
        if method == "getState":
            return _control_response(
                request_id, {"model": self.model, "turns": self._turn, "mode": self.permission_mode}
            )
        return {
            "type": "control_response",
            "response": {
                "subtype": "error",
                "request_id": request_id,
                "error": f"unknown control method {method!r}",
            },
        }

    # --- replies -------------------------------------------------------------------

    def _script(self, prompt: str, params: Mapping[str, Any]) -> Any:
        if self._reply is not None:
            # A user callable may take its time: it runs on the streaming thread, never
            # on the session's, so the session stays responsive (health, interrupts,
            # its own timeouts) while it works.
            return self._called(self._reply, prompt, params)
        if self._replies:
            return self._replies.pop(0)
        return prompt

    @staticmethod
    def _called(reply: ReplyFn, prompt: str, params: Mapping[str, Any]) -> Iterator[Any]:
        script = reply(prompt, params)
        if inspect.isgenerator(script):
            yield from script
        elif isinstance(script, str | bytes | LocalExit | Mapping):
            yield script
        else:
            yield from list(script)

    def _query(self, prompt: str, params: Mapping[str, Any]) -> None:
        self._turn += 1
        # A reply still streaming for an earlier query is superseded: it stops and says
        # nothing more (a real CLI moves on to the new turn the same way).
        self._superseded.set()
        self._superseded = threading.Event()
        self._cancel = threading.Event()
        started = time.monotonic()
        script = self._script(prompt, params)
        if inspect.isgenerator(script):
            self._emit(encode_line(self._init_line()))
            thread = threading.Thread(
                target=self._stream,
                args=(script, prompt, started, self._cancel, self._superseded),
                name=f"local-agent-{self.native_session_id[-8:]}",
                daemon=True,
            )
            self._streamer = thread
            thread.start()
            return
        items: list[Any] = [script] if isinstance(script, str | bytes | LocalExit) else list(script)
        out = bytearray(encode_line(self._init_line()))
        texts: list[str] = []
        for item in items:
            if isinstance(item, LocalExit):
                self._emit(bytes(out))
                self._exit(item.status)
                return
            out += self._item_bytes(item, texts)
        if not any(isinstance(i, dict) and i.get("type") == "result" for i in items):
            out += encode_line(self._result_line(prompt, texts, started))
        self._emit(bytes(out))

    def _stream(
        self,
        script: Iterator[Any],
        prompt: str,
        started: float,
        cancel: threading.Event,
        superseded: threading.Event,
    ) -> None:
        texts: list[str] = []
        saw_result = False
        try:
            for item in script:
                if self._closed or superseded.is_set():
                    return
                if cancel.is_set():
                    self._emit(
                        encode_line(self._result_line(prompt, texts, started, "interrupted"))
                    )
                    return
                if isinstance(item, LocalExit):
                    self._exit(item.status)
                    return
                saw_result = saw_result or (isinstance(item, dict) and item.get("type") == "result")
                self._emit(self._item_bytes(item, texts))
            if superseded.is_set():
                return
            if cancel.is_set():
                self._emit(encode_line(self._result_line(prompt, texts, started, "interrupted")))
            elif not saw_result:
                self._emit(encode_line(self._result_line(prompt, texts, started)))
        except Exception as exc:  # a failing script is an agent crash
            self._emit(encode_line({"type": "error", "error": f"local reply failed: {exc!r}"}))
            self._exit(1)
        finally:
            with contextlib.suppress(Exception):
                script.close()  # type: ignore[attr-defined]

    def _item_bytes(self, item: Any, texts: list[str]) -> bytes:
        if isinstance(item, bytes):
            return item
        if isinstance(item, str):
            texts.append(item)
            return encode_line(self._assistant_line(item))
        if isinstance(item, Mapping):
            line = dict(item)
            line.setdefault("session_id", self.native_session_id)
            line.setdefault("uuid", self._uuid())
            if line.get("type") == "assistant" and isinstance(line.get("message"), Mapping):
                texts.extend(
                    b.get("text", "")
                    for b in line["message"].get("content", [])
                    if isinstance(b, Mapping) and b.get("type") == "text"
                )
            return encode_line(line)
        raise TypeError(f"local reply items are str, dict, bytes or LocalExit; got {item!r}")

    def _uuid(self) -> str:
        # Random, not derived from the native id: a resumed or restarted agent must not
        # repeat the uuids of earlier messages (revert/rollback select by uuid).
        return _uuid4()

    def _init_line(self) -> dict[str, Any]:
        return {
            "type": "system",
            "subtype": "init",
            "session_id": self.native_session_id,
            "uuid": self._uuid(),
            "model": self.model,
            "cwd": self.cwd,
            "tools": [],
            "permissionMode": self.permission_mode or "default",
            "slash_commands": list(self._commands),
            "agents": list(self._agents),
            "version": "local-1",
        }

    def _assistant_line(self, text: str) -> dict[str, Any]:
        return {
            "type": "assistant",
            "session_id": self.native_session_id,
            "uuid": self._uuid(),
            "message": {
                "id": f"msg_{self.native_session_id[-8:]}_{next(self._seq)}",
                "role": "assistant",
                "model": self.model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 0, "output_tokens": len(text.split())},
            },
        }

    def _result_line(
        self, prompt: str, texts: list[str], started: float, subtype: str = "success"
    ) -> dict[str, Any]:
        text = "".join(texts)
        return {
            "type": "result",
            "subtype": subtype,
            "is_error": subtype != "success",
            "result": text,
            "session_id": self.native_session_id,
            "uuid": self._uuid(),
            "num_turns": self._turn,
            "duration_ms": int((time.monotonic() - started) * 1000),
            "stop_reason": "end_turn",
            "total_cost_usd": 0.0,
            "usage": {"input_tokens": len(prompt.split()), "output_tokens": len(text.split())},
            "model": self.model,
        }

    def close(self) -> None:
        self._closed = True
        self._cancel.set()
        streamer = self._streamer
        if streamer is not None and streamer is not threading.current_thread():
            streamer.join(timeout=5)


_UUID4_CLEAR: Final = 0xF000 << 64 | 0xC000 << 48  # the version and variant bits
_UUID4_SET: Final = 0x4000 << 64 | 0x8000 << 48  # version 4, RFC 4122 variant


def _uuid4() -> str:
    """``str(uuid.uuid4())`` (the same random source and layout) at half the cost.

    The agent stamps every line it writes with one, so it is on every query's path.
    """
    n = int.from_bytes(os.urandom(16)) & ~_UUID4_CLEAR | _UUID4_SET
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _control_response(request_id: Any, response: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "control_response",
        "response": {"subtype": "success", "request_id": request_id, "response": dict(response)},
    }


class LocalHandler(BackendHandler):
    """Handler of the ``local`` backend (see the module docstring)."""

    name: ClassVar[str] = "local"
    hibernates: ClassVar[bool] = True  # a new agent under the same native id
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.SESSION_LIFECYCLE,
            Capability.SESSION_INFO,
            Capability.RUNTIME_MODEL_SWITCH,
            Capability.INTERRUPT,
            Capability.PERMISSION_MODE,
            Capability.SESSION_HISTORY,
            Capability.SESSION_MUTATION,
            Capability.THREAD_MANAGEMENT,
            Capability.METADATA_ACCESSORS,
            Capability.EVENT_STREAMING,
            Capability.TASK_STOP,
        }
    )

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        reply = self.options.get("reply")
        if reply is not None and not callable(reply):
            raise InvalidOption(f"local option 'reply' must be callable; got {reply!r}")
        replies = self.options.get("replies", ())
        if isinstance(replies, str | bytes) or not isinstance(replies, Sequence):
            raise InvalidOption(f"local option 'replies' must be a list; got {replies!r}")
        self.model = self.model or DEFAULT_MODEL
        self.native_session_id = str(
            self.options.get("native_session_id") or f"local-{uuid.uuid4().hex}"
        )
        self._init_request = "init"
        self._control_seq = itertools.count(1)

    @classmethod
    def option_names(cls) -> frozenset[str]:
        return super().option_names() | {
            "replies",
            "reply",
            "models",
            "commands",
            "agents",
            "native_session_id",
        }

    def open_transport(self) -> Transport:
        agent = LocalAgent(
            native_session_id=self.native_session_id,
            model=self.model or DEFAULT_MODEL,
            cwd=self.options.get("cwd"),
            permission_mode=self.permission_mode,
            replies=self.options.get("replies", ()),
            reply=self.options.get("reply"),
            models=self.options.get("models", LOCAL_MODELS),
            commands=self.options.get("commands", ("/help", "/clear")),
            agents=self.options.get("agents", ("general",)),
        )
        return InProcessTransport(agent)

    def on_connected(self, event: Connected) -> HandlerOutput:
        return HandlerOutput(
            writes=[encode_line({"type": "initialize", "request_id": self._init_request})],
            state=SessionState.INITIALIZING,
        )

    def encode_query(self, prompt: str, params: Mapping[str, Any]) -> HandlerOutput:
        try:
            line = encode_line({"type": "query", "prompt": prompt, "params": dict(params)})
        except (TypeError, ValueError) as exc:
            raise InvalidOption(f"query params must be JSON-serialisable: {exc}") from exc
        return HandlerOutput(writes=[line])

    def handle_data(self, buffer: bytes) -> tuple[HandlerOutput, bytes]:
        decoded = decode_lines(buffer)
        messages: list[Message] = []
        replies: list[tuple[Any, Any, str | None]] = []
        state: SessionState | None = None
        info: dict[str, Any] | None = None
        for obj in decoded.objects:
            if obj.get("type") == "control_response":
                response = obj.get("response")
                if not isinstance(response, Mapping):
                    continue
                request_id = response.get("request_id")
                if request_id == self._init_request:
                    info = _init_info(response.get("response"))
                    state = SessionState.READY
                elif response.get("subtype") == "error":
                    replies.append((request_id, None, str(response.get("error"))))
                else:
                    replies.append((request_id, response.get("response"), None))
                continue
            # The decoder's dicts are fresh from json.loads and handed over: no copies.
            # Stamped with the canonical session id here, so the session need not copy.
            messages.append(_normalize_owned(obj, session_id=self.session_id))
        return (
            HandlerOutput(messages=messages, state=state, info=info, replies=replies),
            decoded.leftover,
        )

    def encode_interrupt(self) -> HandlerOutput:
        return HandlerOutput(writes=[encode_line({"type": "interrupt"})])

    def set_model(self, model: str) -> HandlerOutput:
        self.model = model
        return HandlerOutput(writes=[encode_line({"type": "set_model", "model": model})])

    def set_permission_mode(self, mode: str) -> HandlerOutput:
        self.permission_mode = mode
        return HandlerOutput(writes=[encode_line({"type": "set_permission_mode", "mode": mode})])

    def handle_control(
        self, method: str, params: Mapping[str, Any], request_id: str
    ) -> HandlerOutput | None:
        if method not in ("echo", "getState"):
            return None
        line = {"type": "control", "request_id": request_id, "method": method, "params": params}
        return HandlerOutput(writes=[encode_line(line)])

    def info(self) -> dict[str, Any]:
        return {"native_session_id": self.native_session_id}


def _init_info(response: Any) -> dict[str, Any]:
    if not isinstance(response, Mapping):
        return {}
    return {
        "supported_models": list(response.get("models") or []),
        "supported_commands": list(response.get("commands") or []),
        "supported_agents": list(response.get("agents") or []),
        "account_info": dict(response.get("account") or {}),
        "native_session_id": response.get("native_session_id"),
    }
