"""``local``: the embedded default backend — deterministic, no I/O, scriptable.

A :class:`LocalAgent` lives in-process at the far end of a transport and
speaks a small protocol shaped like Claude Code's stream-json:

* ``{"type":"initialize"}`` → a ``control_response`` with models, commands,
  agents and account (the session is ``ready`` after it);
* ``{"type":"query","prompt":...}`` → ``system/init``, one ``assistant`` message
  per reply part, and a terminal ``result``;
* ``{"type":"interrupt"}`` stops a streamed reply with an ``interrupted`` result.

Two codecs (the ``codec`` option). ``"messages"`` (the default): the agent
builds the answers to a query as canonical :class:`~beamagent.messages.Message`
objects and hands them over through a :class:`LocalTransport`, with no JSON
in between; the messages are those the JSONL codec would give, without a
``raw`` wire dict (there is no wire). ``"jsonl"``: every answer is a JSON line
through an :class:`~beamagent.backends.base.InProcessTransport`, decoded and
normalised by the handler, so the backend exercises the same codec and byte
handling as the real CLIs. Commands to the agent are JSON lines in both (under
``"messages"`` a query's line also carries the command, which the agent takes
instead of parsing it, and the handshake takes the agent's answer to
``initialize`` directly, without a line either way). A
reply that sends raw ``bytes`` switches the agent to JSON lines for the rest of
its life, so byte-level faults behave exactly as under ``"jsonl"``.

Replies: the prompt echoed by default; ``replies=[...]`` consumes one entry per
query (then echoes); ``reply=callable(prompt, params)`` returns a ``str``, a list
of message dicts (emitted as they are; a ``result`` is appended if missing) or
a generator. A ``reply`` that has a ``history`` parameter is also given the
conversation so far (``reply(prompt, params, history=...)``): a tuple of
``user`` and ``assistant`` messages, those the session replayed from the store
(after a resume, a fork, a restart or a wake: the agent keeps no memory of its
own, so the local backend never resumes natively) followed by the agent's own
turns. A ``reply`` callable always runs on a short-lived thread of its
own, never on the session's, so it may block (e.g. to script a slow reply)
while the session answers ``health()``, interrupts and its own timeouts.
Items of a list or generator: ``str`` (an assistant text), ``dict`` (a raw
message), ``bytes`` (raw bytes, for fault injection), :class:`LocalExit`
(the agent "process" exits with a status) or :class:`LocalToolCall` (the agent
calls one of the session's Python tools).

**Python tools** (``tools=[...]``, see ``docs/tools.md``) run in-process, as in
the ``openai`` backend's loop: a :class:`LocalToolCall` item is the agent asking
for a call; the handler reports it (an ``assistant`` message with a
``tool_use`` block), runs it off the session's thread through
:func:`beamagent.tools.invoke` (arguments checked, the permission handler asked,
the timeout kept), delivers its ``tool_result`` and hands the outcome back to
the agent, which goes on with the reply. A generator reply gets the outcome (a
:class:`~beamagent.tools.ToolOutcome`) as the value of its ``yield``::

    def reply(prompt, params):
        outcome = yield LocalToolCall("add", {"a": 2, "b": 40})
        yield f"it is {outcome.content}"
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Any, ClassVar, cast

import attrs

from beamagent.backends.base import (
    BackendHandler,
    Connected,
    HandlerOutput,
    InProcessPeer,
    InProcessTransport,
    OffThreadCall,
    SessionState,
    Transport,
    TransportSink,
    _messages_event,
    _output,
)
from beamagent.backends.jsonl import decode_lines, encode_line
from beamagent.backends.permissions import PermissionPolicy
from beamagent.capabilities import Capability
from beamagent.errors import InvalidOption
from beamagent.messages import (
    ContentBlock,
    Message,
    MessageType,
    StopReason,
    _copy_json,
    _new_message,
    _new_uuid,
    _normalize_owned,
    _text_block,
    _valid_text,
)
from beamagent.tools._tool import ToolContext, ToolOutcome, ToolSet, invoke_blocking
from supervisors._ids import new_hex128

__all__ = [
    "CODECS",
    "LocalAgent",
    "LocalExit",
    "LocalHandler",
    "LocalToolCall",
    "LocalTransport",
    "ReplyFn",
]

ReplyFn = Callable[[str, Mapping[str, Any]], Any]
"""``reply(prompt, params)`` → str | list of items | generator of items."""

DEFAULT_MODEL = "local-echo"
LOCAL_MODELS = ("local-echo", "local-large")
CODECS = ("messages", "jsonl")
"""Values of the ``codec`` option; the first is the default (see the module docstring)."""


@attrs.frozen
class LocalExit:
    """A reply item that makes the local agent exit with ``status`` (transport death)."""

    status: int = 1


@attrs.frozen
class LocalToolCall:
    """A reply item: the agent calls the session's Python tool ``name`` with ``arguments``.

    The reply goes on once the call is over; a generator reply receives its
    :class:`~beamagent.tools.ToolOutcome` as the value of the ``yield``. ``id``
    is the call's id (``tool_use_id``; default ``toolu_local_<n>``).
    """

    name: str
    arguments: Any = attrs.field(factory=dict)
    id: str | None = None


class _ToolWait:
    """A call the agent's reply waits on: woken by its result, an interrupt or a close."""

    __slots__ = ("event", "outcome")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.outcome: ToolOutcome | None = None


class _CommandLine(bytes):
    """A command's JSON line that also carries the command as the agent would decode it.

    The ``messages`` codec's handler sends its query commands this way: the in-process
    agent takes ``command`` instead of parsing the line it was built from (the bytes
    stay the real line, for anything that reads them).
    """

    command: dict[str, Any]


_QUERY_HEAD = b'{"type":"query","prompt":'
_QUERY_TAIL = b',"params":{}}\n'


# Numbers of tool calls whose reply gave no id: shared by every agent (the ids they make
# carry the agent's native session id, and need only be unique within one session).
_TOOL_CALLS = itertools.count(1)


_TOOL_LOCK = threading.Lock()
_NO_HISTORY: list[Message] = cast("list[Message]", ())  # see LocalAgent.history


def _unattached(_value: object) -> None:
    """Output of an agent no transport has attached yet: dropped."""


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
        session_id: str | None = None,
        tools: Sequence[str] = (),
    ) -> None:
        self.native_session_id = native_session_id
        self._tools = tuple(tools)  # the session's Python tools, named in system/init
        # Stamped on the messages it builds (the JSONL codec's handler stamps its own).
        self.session_id = session_id
        self.model = model
        self.cwd = cwd
        self.permission_mode = permission_mode
        # Scripted replies, popped in order; the shared empty tuple when there are none.
        self._replies: list[Any] | tuple[()] = list(replies) if replies else ()
        self._reply = reply
        # Tuples: the defaults are shared by every agent, not copied per session.
        self._models = tuple(models)
        self._commands = tuple(commands)
        self._agents = tuple(agents)
        # Where its output goes: the LocalTransport it is attached to (attach_port), else the
        # callables given to attach / attach_messages. A port, not three bound methods: those
        # were three more objects per idle session for the cyclic GC to walk.
        self._port: LocalTransport | None = None
        self._emit_to: Callable[[bytes], None] = _unattached
        self._exit_to: Callable[[int], None] = _unattached
        self._deliver_to: Callable[[Sequence[Message]], None] | None = None
        self._raw_bytes = False  # a reply sent raw bytes: JSON lines from then on
        self._init_info: tuple[Any, dict[str, Any], bool] | None = None  # key, part, native
        self._text_cache: tuple[Any, tuple[str, str | None]] | None = None  # see _texts
        self._turn = 0
        self._seq = 0  # the last message number (an int: a counter is one more object for GC)
        # A streamed reply's interrupt, and its "the next query has started": made when a
        # reply is handed to a streaming thread, dropped at the next query. Without one
        # there is nothing to interrupt (two idle Events were ~2 KiB of every session).
        self._cancel: threading.Event | None = None
        self._superseded: threading.Event | None = None
        self._streamer: threading.Thread | None = None
        self._closed = False
        self._tool_calls = _TOOL_CALLS
        self._tool_waits: dict[str, _ToolWait] = {}
        # Shared by every agent: it guards a few quick dict operations, and a lock of its
        # own was one more object per idle session for the cyclic GC.
        self._tool_lock = _TOOL_LOCK
        # The conversation, kept only for a reply callable that asks for it (``history``).
        self._wants_history = reply is not None and _takes_history(reply)
        # Not a list when nobody wants it (a tuple: nothing appends to it then, and an
        # empty list per session is one more object for the cyclic GC).
        self.history: list[Message] = [] if self._wants_history else _NO_HISTORY

    def replay(self, history: Sequence[Message]) -> None:
        """The conversation before this agent: the session's replayed stored history."""
        if self._wants_history:
            self.history[:0] = [
                m for m in history if m.type in (MessageType.USER, MessageType.ASSISTANT)
            ]

    def attach(self, emit: Callable[[bytes], None], exit: Callable[[int], None]) -> None:
        self._emit_to, self._exit_to = emit, exit

    def attach_messages(self, deliver: Callable[[Sequence[Message]], None]) -> None:
        """Answer queries with canonical messages through ``deliver`` (no JSON lines).

        Raw ``bytes`` from a reply still go through ``emit``, and from then on
        everything does (see the module docstring).
        """
        self._deliver_to = deliver

    def attach_port(self, port: LocalTransport) -> None:
        """Send everything through ``port``: its ``_emit``, ``_exit`` and ``_deliver``."""
        self._port = port

    def _emit(self, data: bytes) -> None:
        port = self._port
        if port is not None:
            port._emit(data)
        else:
            self._emit_to(data)

    def _exit(self, status: int) -> None:
        port = self._port
        if port is not None:
            port._exit(status)
        else:
            self._exit_to(status)

    def _deliver(self, messages: Sequence[Message]) -> None:
        port = self._port
        if port is not None:
            port._deliver(messages)
        else:
            assert self._deliver_to is not None  # _lines() said messages go there
            self._deliver_to(messages)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # --- protocol ------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        objects = (data.command,) if type(data) is _CommandLine else decode_lines(data).objects
        for obj in objects:
            kind = obj.get("type")
            if kind == "initialize":
                self._emit(encode_line(self._initialized(obj.get("request_id", "init"))))
            elif kind == "query":
                self._query(str(obj.get("prompt", "")), obj.get("params") or {})
            elif kind == "interrupt":
                cancel = self._cancel
                if cancel is not None:
                    cancel.set()
                self._wake_tool_waits()
            elif kind == "tool_result":
                self._tool_result(obj)
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
            history = None
            if self._wants_history:
                history = tuple(self.history)
                self.history.append(Message(MessageType.USER, content=prompt))
            return self._called(self._reply, prompt, params, history)
        if self._replies:
            return self._replies.pop(0)
        return prompt

    @staticmethod
    def _called(
        reply: ReplyFn,
        prompt: str,
        params: Mapping[str, Any],
        history: tuple[Message, ...] | None,
    ) -> Iterator[Any]:
        if history is None:
            script = reply(prompt, params)
        else:
            script = reply(prompt, params, history=history)  # type: ignore[call-arg]
        if inspect.isgenerator(script):
            yield from script  # a tool call's outcome is sent on to it
        elif isinstance(script, str | bytes | LocalExit | LocalToolCall | Mapping):
            yield script
        else:
            for item in list(script):  # noqa: UP028 - a list iterator takes no sent outcome
                yield item

    def _query(self, prompt: str, params: Mapping[str, Any]) -> None:
        self._turn += 1
        # A reply still streaming for an earlier query is superseded: it stops and says
        # nothing more (a real CLI moves on to the new turn the same way).
        # Only a streaming thread holds the events: a reply answered at once needs none.
        superseded = self._superseded
        if superseded is not None:
            superseded.set()
            self._cancel = self._superseded = None
        started = time.monotonic()
        if self._tool_waits:
            self._wake_tool_waits()  # a reply of an earlier query waiting on a tool is superseded
        if self._reply is None and not self._replies and not self._lines():
            # The default reply (the prompt, echoed) as messages: what the general path
            # below gives for a one-item script, built without its per-item dispatch.
            assert self._deliver is not None  # _lines() said messages go there
            self._deliver(
                [
                    self._init_message(),
                    self._assistant_message(prompt),
                    self._result_message(prompt, [prompt], started, "success"),
                ]
            )
            return
        script = self._script(prompt, params)
        if isinstance(script, LocalToolCall) or (
            isinstance(script, list | tuple) and any(isinstance(i, LocalToolCall) for i in script)
        ):
            script = _one_by_one(script)  # a tool call waits for its outcome: not on this thread
        if inspect.isgenerator(script):
            self._send([self._init_part()])
            cancel, superseded = self._cancel, self._superseded = (
                threading.Event(),
                threading.Event(),
            )
            thread = threading.Thread(
                target=self._stream,
                args=(script, prompt, started, cancel, superseded),
                name=f"local-agent-{self.native_session_id[-8:]}",
                daemon=True,
            )
            self._streamer = thread
            thread.start()
            return
        items: list[Any] = [script] if isinstance(script, str | bytes | LocalExit) else list(script)
        parts = [self._init_part()]
        texts: list[str] = []
        for item in items:
            if isinstance(item, LocalExit):
                self._send(parts)
                self._exit(item.status)
                return
            parts.append(self._item_part(item, texts))
        if not any(isinstance(i, dict) and i.get("type") == "result" for i in items):
            parts.append(self._result_part(prompt, texts, started))
        self._send(parts)

    def _stream(
        self,
        script: Generator[Any, ToolOutcome | None, Any],
        prompt: str,
        started: float,
        cancel: threading.Event,
        superseded: threading.Event,
    ) -> None:
        texts: list[str] = []
        saw_result = False
        sent: ToolOutcome | None = None
        try:
            while True:
                try:
                    item = script.send(sent)  # the first: send(None), as next()
                except StopIteration:
                    break
                sent = None
                if self._closed or superseded.is_set():
                    return
                if cancel.is_set():
                    self._send([self._result_part(prompt, texts, started, "interrupted")])
                    return
                if isinstance(item, LocalExit):
                    self._exit(item.status)
                    return
                if isinstance(item, LocalToolCall):
                    sent = self._call_tool(item)
                    if sent is None:  # interrupted, superseded or closed meanwhile
                        if cancel.is_set() and not superseded.is_set() and not self._closed:
                            self._send([self._result_part(prompt, texts, started, "interrupted")])
                        return
                    continue
                saw_result = saw_result or (isinstance(item, dict) and item.get("type") == "result")
                self._send([self._item_part(item, texts)])
            if superseded.is_set():
                return
            if cancel.is_set():
                self._send([self._result_part(prompt, texts, started, "interrupted")])
            elif not saw_result:
                self._send([self._result_part(prompt, texts, started)])
        except Exception as exc:  # a failing script is an agent crash
            error = {"type": "error", "error": f"local reply failed: {exc!r}"}
            self._send([self._item_part(error, [])])
            self._exit(1)
        finally:
            with contextlib.suppress(Exception):
                script.close()

    # --- tool calls ------------------------------------------------------------------

    def _call_tool(self, call: LocalToolCall) -> ToolOutcome | None:
        """Ask the handler to run ``call``; its outcome, or None if the reply must stop."""
        call_id = call.id or f"toolu_local_{self.native_session_id[-8:]}_{next(self._tool_calls)}"
        wait = _ToolWait()
        with self._tool_lock:
            if self._closed:
                return None
            self._tool_waits[call_id] = wait
        request = {
            "type": "tool_request",
            "id": call_id,
            "name": call.name,
            "input": _copy_json(call.arguments),
        }
        self._emit(encode_line(request))
        wait.event.wait()
        with self._tool_lock:
            self._tool_waits.pop(call_id, None)
        return wait.outcome

    def _tool_result(self, obj: Mapping[str, Any]) -> None:
        with self._tool_lock:
            wait = self._tool_waits.get(str(obj.get("id")))
        if wait is None:
            return  # the reply stopped waiting (interrupted): a late result is dropped
        duration = obj.get("duration_ms")
        wait.outcome = ToolOutcome(
            str(obj.get("tool_name") or ""),
            str(obj.get("content") or ""),
            bool(obj.get("is_error")),
            str(obj.get("status") or "ok"),
            float(duration) if isinstance(duration, int | float) else 0.0,
        )
        wait.event.set()

    def _wake_tool_waits(self) -> None:
        """Stop every reply waiting on a tool call (interrupt, next query, close)."""
        with self._tool_lock:
            waits = list(self._tool_waits.values())
            self._tool_waits.clear()
        for wait in waits:
            wait.event.set()

    # --- what the agent says: messages, or JSON lines --------------------------------

    def _send(self, parts: Sequence[Message | bytes]) -> None:
        """Hand ``parts`` over in order: runs of messages delivered, runs of bytes emitted."""
        messages: list[Message] = []
        data = bytearray()
        for part in parts:
            if type(part) is bytes:
                if messages:
                    self._deliver(messages)
                    messages = []
                data += part
            else:
                if data:
                    self._emit(bytes(data))
                    data = bytearray()
                messages.append(part)  # type: ignore[arg-type]
        if messages:
            self._deliver(messages)
        if data:
            self._emit(bytes(data))

    def _lines(self) -> bool:
        """Whether the agent writes JSON lines (no message channel, or raw bytes were sent)."""
        return (self._port is None and self._deliver_to is None) or self._raw_bytes

    def _init_part(self) -> Message | bytes:
        if self._lines():
            return encode_line(self._init_line())
        return self._init_message()

    def _result_part(
        self, prompt: str, texts: list[str], started: float, subtype: str = "success"
    ) -> Message | bytes:
        if self._lines():
            return encode_line(self._result_line(prompt, texts, started, subtype))
        return self._result_message(prompt, texts, started, subtype)

    def _item_part(self, item: Any, texts: list[str]) -> Message | bytes:
        if isinstance(item, bytes):
            self._raw_bytes = True
            return item
        if self._wants_history and isinstance(item, str):
            self.history.append(Message(MessageType.ASSISTANT, content=item))
        if self._lines() or not isinstance(item, str | Mapping):
            return self._item_bytes(item, texts)
        if isinstance(item, str):
            texts.append(item)
            return self._assistant_message(item)
        # A dict is a message "as the backend wrote it": through JSON, as under the JSONL
        # codec, so both codecs give the same message (and the same errors).
        line = self._item_bytes(item, texts)
        objects = decode_lines(line).objects
        if not objects:
            return line  # JSON the decoder skips as noise (nested too deep): skipped here too
        return _normalize_owned(objects[0], session_id=self.session_id, json_native=True)

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
        return _new_uuid()

    def _init_line(self) -> dict[str, Any]:
        return {
            "type": "system",
            "subtype": "init",
            "session_id": self.native_session_id,
            "uuid": self._uuid(),
            "model": self.model,
            "cwd": self.cwd,
            "tools": list(self._tools),
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
                "id": f"msg_{self.native_session_id[-8:]}_{self._next_seq()}",
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

    # The builders below give the messages the JSONL codec would decode from the lines
    # above, field for field (tests/backends/test_local.py compares them), minus ``raw``.

    def _texts(self) -> tuple[str, str | None]:
        """The session id and the model the messages carry, made valid text (cached)."""
        key = (self.session_id, self.native_session_id, self.model)
        cached = self._text_cache
        if cached is None or cached[0] != key:
            texts = (_text(self.session_id or self.native_session_id), _text_or_none(self.model))
            cached = self._text_cache = (key, texts)
        return cached[1]

    def _init_message(self) -> Message:
        key = (self.model, self.permission_mode)
        cached = self._init_info
        if cached is None or cached[0] != key:
            static = {
                "model": self.model,
                "cwd": self.cwd,
                "tools": list(self._tools),
                "permission_mode": self.permission_mode or "default",
                "slash_commands": list(self._commands),
                "agents": list(self._agents),
                "version": "local-1",
            }
            copied = _copy_json(static)
            # Commands and agents come from options: JSON-native only if JSON gives them
            # back as they are (no bytes, no int keys, ...).
            try:
                native = json.loads(json.dumps(copied, allow_nan=False)) == copied
            except (TypeError, ValueError, RecursionError):
                native = False
            cached = self._init_info = (key, copied, native)
        session_id, model = self._texts()
        uuid = _new_uuid()
        # The static part's lists are shared by this agent's init messages: a message's
        # nested values are read-only (Message's contract), and three lists fewer per
        # query is three objects fewer for the cyclic GC to walk in a store's history.
        info: dict[str, Any] = {
            "session_id": _text(self.native_session_id),
            "uuid": uuid,
            **cached[1],
        }
        return _new_message(
            MessageType.SYSTEM,
            cached[2],
            subtype="init",
            uuid=uuid,
            session_id=session_id,
            model=model,
            system_info=info,
            timestamp=time.time_ns() // 1_000_000,
        )

    def _assistant_message(self, text: str) -> Message:
        session_id, model = self._texts()
        content = _text(text)
        return _new_message(
            MessageType.ASSISTANT,
            True,
            content=content,
            content_blocks=(_text_block(content),),
            uuid=_new_uuid(),
            session_id=session_id,
            message_id=_text(f"msg_{self.native_session_id[-8:]}_{self._next_seq()}"),
            model=model,
            usage={"input_tokens": 0, "output_tokens": len(text.split())},
            stop_reason="end_turn",
            stop_reason_parsed=StopReason.END_TURN,
            timestamp=time.time_ns() // 1_000_000,
        )

    def _result_message(
        self, prompt: str, texts: list[str], started: float, subtype: str
    ) -> Message:
        session_id, model = self._texts()
        text = "".join(texts)
        return _new_message(
            MessageType.RESULT,
            True,
            content=_text(text),
            subtype=subtype,
            is_error=subtype != "success",
            uuid=_new_uuid(),
            session_id=session_id,
            num_turns=self._turn,
            duration_ms=int((time.monotonic() - started) * 1000),
            stop_reason="end_turn",
            stop_reason_parsed=StopReason.END_TURN,
            total_cost_usd=0.0,
            usage={"input_tokens": len(prompt.split()), "output_tokens": len(text.split())},
            model=model,
            timestamp=time.time_ns() // 1_000_000,
        )

    def close(self) -> None:
        with self._tool_lock:
            self._closed = True
        cancel = self._cancel
        if cancel is not None:
            cancel.set()
        self._wake_tool_waits()
        streamer = self._streamer
        if streamer is not None and streamer is not threading.current_thread():
            streamer.join(timeout=5)


def _one_by_one(items: Any) -> Generator[Any, Any, None]:
    """A list of reply items as a generator (it runs on the streaming thread)."""
    for item in [items] if isinstance(items, LocalToolCall) else list(items):  # noqa: UP028
        yield item  # (not ``yield from``: the outcomes sent in are dropped, not refused)


def _takes_history(reply: Any) -> bool:
    """Whether a ``reply`` callable has a ``history`` parameter (it is given the conversation)."""
    try:
        parameters = inspect.signature(reply).parameters
    except (TypeError, ValueError):  # no signature to read (some builtins)
        return False
    parameter = parameters.get("history")
    return parameter is not None and parameter.kind is not inspect.Parameter.POSITIONAL_ONLY


def _text(value: str) -> str:
    return value if value.isascii() else _valid_text(value)


def _text_or_none(value: Any) -> str | None:
    return _text(value) if isinstance(value, str) else None


def _control_response(request_id: Any, response: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "control_response",
        "response": {"subtype": "success", "request_id": request_id, "response": dict(response)},
    }


class LocalTransport(InProcessTransport):
    """The transport of the ``local`` backend's ``"messages"`` codec: no bytes for answers.

    An :class:`~beamagent.backends.base.InProcessTransport` (commands go to the
    agent as JSON lines, synchronously, on the caller's thread) whose agent's
    answers arrive as :class:`~beamagent.backends.base.Messages` events holding
    the messages it built; raw bytes it emits arrive as ``Data``.
    """

    def __init__(self, agent: LocalAgent) -> None:
        super().__init__(agent)
        self._agent = agent

    def start(self, sink: TransportSink) -> None:
        # The agent sends through this transport's methods itself (attach_port), rather
        # than holding three bound methods of it (InProcessTransport.start's attach).
        self._sink = sink
        self._agent.attach_port(self)
        sink(Connected({"transport": "in_process"}))

    def _deliver(self, messages: Sequence[Message]) -> None:
        sink = self._sink
        if sink is not None and not self._closed:
            sink(_messages_event(messages))


class LocalHandler(BackendHandler):
    """Handler of the ``local`` backend (see the module docstring).

    Options: ``model``, ``permission_mode``, ``cwd``, ``replies``, ``reply``,
    ``models``, ``commands``, ``agents``, ``native_session_id``, ``codec``,
    ``permission_handler`` (asked before each Python tool call). ``tools`` and
    ``tool_context`` are set by the runtime from the session's Python tools.
    """

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
            Capability.IN_PROCESS_MCP,  # Python tools, run in-process (LocalToolCall)
        }
    )

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.tools = ToolSet.of(self.options.get("tools"), "tools")
        context = self.options.get("tool_context") or {}
        self.tool_context: dict[str, Any] = dict(context) if isinstance(context, Mapping) else {}
        handler = self.options.get("permission_handler")
        self._decide = None  # no handler: nothing to ask (no policy built per session)
        if handler is not None:
            self._decide = PermissionPolicy.from_options({"permission_handler": handler}).decide
        # Calls running off the session's thread: call id -> tool name.
        self._tool_calls: dict[str, str] = {}
        reply = self.options.get("reply")
        if reply is not None and not callable(reply):
            raise InvalidOption(f"local option 'reply' must be callable; got {reply!r}")
        replies = self.options.get("replies", ())
        if type(replies) not in (tuple, list) and (  # the usual two: no abc check
            isinstance(replies, str | bytes) or not isinstance(replies, Sequence)
        ):
            raise InvalidOption(f"local option 'replies' must be a list; got {replies!r}")
        codec = self.options.get("codec", CODECS[0])
        if codec not in CODECS:
            raise InvalidOption(
                f"local option 'codec' must be one of {', '.join(map(repr, CODECS))}; got {codec!r}"
            )
        self.codec: str = codec
        self.model = self.model or DEFAULT_MODEL
        self.native_session_id = str(
            self.options.get("native_session_id") or f"local-{new_hex128()}"
        )
        self._init_request = "init"
        self._agent: LocalAgent | None = None

    @classmethod
    def option_names(cls) -> frozenset[str]:
        return super().option_names() | {
            "replies",
            "reply",
            "models",
            "commands",
            "agents",
            "native_session_id",
            "codec",
            "tools",
            "tool_context",
            "permission_handler",
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
            session_id=self.session_id,
            tools=self.tools.names(),
        )
        self._agent = agent
        if self.codec == "jsonl":
            return InProcessTransport(agent)
        return LocalTransport(agent)

    def on_connected(self, event: Connected) -> HandlerOutput:
        agent = self._agent
        if agent is not None and self.codec == "messages":
            # The messages codec needs no bytes for the handshake either: the agent's
            # answer to ``initialize``, taken as the JSONL codec would decode it (a JSON
            # round trip each way cost about a tenth of a session's start).
            return HandlerOutput(state=SessionState.READY, info=_agent_init_info(agent, self))
        return HandlerOutput(
            writes=[encode_line({"type": "initialize", "request_id": self._init_request})],
            state=SessionState.INITIALIZING,
        )

    def replay_history(self, history: Sequence[Message]) -> None:
        """Hand the stored conversation to the agent (its ``reply`` sees it as ``history``).

        The agent is in-process and keeps no memory of its own: it is given the
        messages themselves, not a text preamble, and the prompts it answers
        stay as the user wrote them.
        """
        if self._agent is not None:
            self._agent.replay(history)

    def encode_query(self, prompt: str, params: Mapping[str, Any]) -> HandlerOutput:
        if self.codec == "messages" and not params and type(prompt) is str:
            # The line encode_line gives for the command, put together around the prompt's
            # JSON; it carries what the agent would decode from it, which the agent takes.
            carried = _CommandLine(_QUERY_HEAD + encode_line(prompt)[:-1] + _QUERY_TAIL)
            carried.command = {"type": "query", "prompt": _valid_text(prompt), "params": {}}
            return _output(writes=[carried])
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
        calls: list[OffThreadCall] = []
        for obj in decoded.objects:
            if obj.get("type") == "tool_request":
                use, call = self._tool_request(obj)
                messages.append(use)
                calls.append(call)
                continue
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
            message = _normalize_owned(obj, session_id=self.session_id, json_native=True)
            if message.type is MessageType.RESULT:
                self._tool_calls.clear()  # the reply is over: late outcomes are dropped
            messages.append(message)
        return (
            HandlerOutput(messages=messages, state=state, info=info, replies=replies, calls=calls),
            decoded.leftover,
        )

    def handle_messages(self, messages: Sequence[Message]) -> HandlerOutput:
        if self._tool_calls and any(m.type is MessageType.RESULT for m in messages):
            self._tool_calls.clear()  # the reply is over: late outcomes are dropped
        return _output(messages=messages)

    # --- Python tools ---------------------------------------------------------------

    def _tool_request(self, obj: Mapping[str, Any]) -> tuple[Message, OffThreadCall]:
        """The agent asks for a call: its ``tool_use`` report, and the call to run."""
        call_id, name = str(obj.get("id")), str(obj.get("name"))
        arguments = obj.get("input")
        self._tool_calls[call_id] = name
        use = Message(
            MessageType.ASSISTANT,
            content="",
            content_blocks=[ContentBlock("tool_use", id=call_id, name=name, input=arguments)],
            session_id=self.session_id,
            model=self.model,
            stop_reason="tool_use",
            timestamp=time.time_ns() // 1_000_000,
        )
        context = ToolContext(
            session_id=self.session_id,
            backend=self.name,
            tool_name=name,
            tool_use_id=call_id,
            run_id=self.tool_context.get("run_id"),
            node_id=self.tool_context.get("node_id"),
        )
        tool, decide = self.tools.get(name), self._decide
        return use, OffThreadCall(
            ("tool", call_id),
            lambda: invoke_blocking(tool, arguments, context, decide=decide, tool_name=name),
        )

    def on_call_result(self, key: Any, result: Any, error: BaseException | None) -> HandlerOutput:
        _kind, call_id = key
        name = self._tool_calls.pop(call_id, None)
        if name is None:
            return HandlerOutput()  # interrupted meanwhile: the late outcome is dropped
        outcome = ToolOutcome.of_call(name, result, error)
        message = outcome.result_message(call_id, session_id=self.session_id)
        answer = {
            "type": "tool_result",
            "id": call_id,
            "tool_name": name,
            "content": outcome.content,
            "is_error": outcome.is_error,
            "status": outcome.status,
            "duration_ms": outcome.duration_ms,
        }
        return HandlerOutput(messages=[message], writes=[encode_line(answer)])

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


_last_init: list[tuple[list[Any], list[Any], list[Any], dict[str, Any]]] = []
# The last in-process handshake's names (the agent's own tuples) and the info it gave: a
# session whose agent holds the very same tuples (the shared defaults) gets that info
# without its answer being built, decoded and compared again.
_last_agent_init: list[
    tuple[tuple[Any, ...], tuple[Any, ...], tuple[Any, ...], dict[str, Any]]
] = []


def _agent_init_info(agent: LocalAgent, handler: LocalHandler) -> dict[str, Any]:
    """``_init_info`` of the agent's answer to ``initialize``, as the JSONL codec decodes it."""
    models, commands, agents = agent._models, agent._commands, agent._agents
    last = _last_agent_init[0] if _last_agent_init else None
    if last is not None and last[0] is models and last[1] is commands and last[2] is agents:
        info = last[3]
        return {
            **info,
            "account_info": dict(info["account_info"]),
            "native_session_id": agent.native_session_id,
        }
    info = _init_info(agent._initialized(handler._init_request)["response"]["response"])
    if isinstance(info.get("account_info"), dict):
        # A copy is kept: the session owns what it is given.
        kept = {**info, "account_info": dict(info["account_info"])}
        _last_agent_init[:] = [(models, commands, agents, kept)]
    return info


def _init_info(response: Any) -> dict[str, Any]:
    if not isinstance(response, Mapping):
        return {}
    facts = (
        list(response.get("models") or []),
        list(response.get("commands") or []),
        list(response.get("agents") or []),
        dict(response.get("account") or {}),
    )
    # Every session of a runtime is told the same models, commands and agents: keep
    # the lists of the last answer and share them instead of a freshly decoded copy per
    # session (~1 KiB each, and objects for the cyclic GC); session_info copies them.
    last = _last_init[0] if _last_init else None
    if last == facts:
        assert last is not None
        models, commands, agents = last[0], last[1], last[2]
    else:
        _last_init[:] = [facts]
        models, commands, agents = facts[0], facts[1], facts[2]
    return {
        "supported_models": models,
        "supported_commands": commands,
        "supported_agents": agents,
        "account_info": facts[3],
        "native_session_id": response.get("native_session_id"),
    }
