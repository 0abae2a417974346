"""``openai``: any OpenAI-compatible Chat Completions server (OpenAI, Ollama, vLLM, llama.cpp).

There is no agent process: the session keeps the conversation and sends it
whole with each query to ``POST {base_url}/chat/completions`` (streaming, with
``stream_options.include_usage``). A query yields ``system/init``, the
``assistant`` reply and a terminal ``result`` with the usage; an HTTP error
yields an ``error`` message and an error ``result``, and the session stays
usable. The conversation (completed exchanges only) is kept by the handler;
a new handler (after a supervisor restart, a wake from hibernation, a
``start_session(resume=...)`` or a fork) rebuilds it from the session's stored
history (:meth:`OpenAIHandler.replay_history`), so the model always gets the
earlier turns.

With Python tools (``tools=[...]``, see ``docs/tools.md``) the handler runs the
tool loop itself: the tools go in the request's ``tools``; when the model asks
for them, each call runs off the session's thread (:func:`beamagent.tools.invoke`:
arguments checked, the permission handler asked, the timeout kept), its
``tool_result`` is delivered, and the conversation with the results goes back
to the model -- until it answers without calling a tool, or ``max_tool_rounds``
is exceeded (an error result).

The HTTP call must never block the session actor, so it runs as a task on the
shared I/O loop (:class:`HttpStreamTransport`, no thread per request), which
speaks a small JSON Lines protocol with the handler: the handler *writes*
request and cancel commands, the transport *delivers* one line per server-sent
event, then ``done`` (or ``http_error``, ``transport_error``, ``cancelled``).
The handler stays a pure translator and the actor's byte-stream machinery
(buffering, queueing, timeouts) is reused.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final

from beamagent.backends.base import (
    BackendHandler,
    Connected,
    Data,
    HandlerOutput,
    OffThreadCall,
    SessionState,
    Transport,
    TransportSink,
)
from beamagent.backends.io_loop import IoLease, acquire_io_loop
from beamagent.backends.jsonl import decode_lines, encode_line
from beamagent.backends.permissions import PermissionPolicy
from beamagent.backends.replay import (
    REPLAY_MAX_CHARS,
    REPLAY_MAX_TURNS,
    bounded_turns,
    replay_turns,
)
from beamagent.capabilities import Capability
from beamagent.errors import InvalidOption, TransportError
from beamagent.log import get_logger
from beamagent.messages import ContentBlock, Message, MessageType
from beamagent.tools._tool import ToolContext, ToolOutcome, ToolSet, invoke_blocking

if TYPE_CHECKING:
    import httpx

__all__ = ["HttpStreamTransport", "OpenAIHandler"]

log = get_logger(__name__)

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"
DEFAULT_MAX_TOOL_ROUNDS: Final = 20
_RESERVED: Final = frozenset({"model", "messages", "stream", "stream_options"})


class HttpStreamTransport(Transport):
    """Runs streaming HTTP requests on the shared I/O loop; events come back as JSON lines.

    Commands (bytes written with :meth:`send`, one JSON object per line):

    * ``{"op": "request", "id": N, "method": "POST", "url": ..., "json": {...}}``
      starts a request (one at a time);
    * ``{"op": "cancel", "id": N}`` aborts it: its task on the loop is
      cancelled, which ends it wherever it waits (connecting, for the
      response headers, on a stalled stream).

    Delivered lines: ``{"op": "event", "id", "event", "data"}`` per SSE event,
    then exactly one of ``{"op": "done"}``, ``{"op": "http_error", "status",
    "body"}``, ``{"op": "transport_error", "error"}``, ``{"op": "cancelled"}``.

    No thread per session or per request: requests are tasks on the shared
    I/O loop (:mod:`beamagent.backends.io_loop`), sent through one
    ``httpx.AsyncClient`` that every session on the loop shares (connections
    are pooled; headers and timeouts go with each request; it keeps no
    cookies, so sessions share no state).
    """

    def __init__(
        self,
        *,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float | None = 600.0,
    ) -> None:
        self.headers = dict(headers or {})
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._sink: TransportSink | None = None
        self._lease: IoLease | None = None
        self._lock = threading.Lock()
        self._current: int | None = None
        self._cancelled: set[int] = set()
        self._running = 0  # request tasks not finished yet (a new one may start as one ends)
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False
        # Touched on the loop's thread only.
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._entered: set[int] = set()  # tasks that began running (cancel() reaches them)
        self.on_response: Callable[[int, int, Mapping[str, str]], None] | None = None
        """Called on the loop with (request id, status, headers) as each response begins
        (a cassette records them)."""

    def request_headers(self) -> dict[str, str]:
        """The headers every request goes with."""
        return {**self.headers, "Accept": "text/event-stream", "Cache-Control": "no-store"}

    def start(self, sink: TransportSink) -> None:
        import httpx  # noqa: F401 - here, not at import: it costs ~70 ms and only we need it

        self._sink = sink
        self._lease = acquire_io_loop()
        sink(Connected({"transport": "http"}))

    def send(self, data: bytes) -> None:
        if self._closed or self._lease is None:
            raise TransportError("the HTTP transport is closed", reason="closed")
        for command in decode_lines(data).objects:
            op = command.get("op")
            if op == "request":
                self._start_request(command)
            elif op == "cancel":
                self._cancel(command.get("id"))

    def _start_request(self, command: Mapping[str, Any]) -> None:
        request_id = int(command["id"])
        with self._lock:
            # Busy until the last line of the previous request was handed over; its
            # task may still be finishing, which is fine (close() waits for them all).
            if self._current is not None:
                raise TransportError(
                    "the HTTP transport is already running a request", reason="busy"
                )
            self._current = request_id
            self._running += 1
            self._idle.clear()
        assert self._lease is not None
        if not self._lease.call_soon(self._spawn, request_id, dict(command)):
            self._request_ended(request_id)
            raise TransportError("the HTTP transport is closed", reason="closed")

    def _emit(self, line: Mapping[str, Any]) -> None:
        sink = self._sink
        if sink is not None and not self._closed:
            sink(Data(encode_line(line)))

    # --- on the loop ---------------------------------------------------------------------

    def _spawn(self, request_id: int, command: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._run(request_id, command))
        self._tasks[request_id] = task
        task.add_done_callback(lambda _task: self._tasks.pop(request_id, None))

    async def _run(self, request_id: int, command: Mapping[str, Any]) -> None:
        import httpx
        from httpx_sse import EventSource, SSEError

        self._entered.add(request_id)
        final: dict[str, Any] = {"op": "done", "id": request_id}
        try:
            if self._is_cancelled(request_id):
                raise _Cancelled  # cancelled before it started
            assert self._lease is not None
            client = self._lease.io_loop.resource(_CLIENT_KEY, _new_client, _close_client)
            async with client.stream(
                str(command.get("method", "POST")),
                str(command["url"]),
                json=command.get("json"),
                headers=self.request_headers(),
                timeout=httpx.Timeout(self.read_timeout, connect=self.connect_timeout),
            ) as response:
                if self.on_response is not None:
                    self.on_response(request_id, response.status_code, dict(response.headers))
                if response.status_code >= 400:
                    body = (await response.aread()).decode("utf-8", "replace")
                    final = {
                        "op": "http_error",
                        "id": request_id,
                        "status": response.status_code,
                        "body": body[:20_000],
                    }
                else:
                    async for event in EventSource(response).aiter_sse():
                        self._emit(
                            {
                                "op": "event",
                                "id": request_id,
                                "event": event.event,
                                "data": event.data,
                            }
                        )
        except (_Cancelled, asyncio.CancelledError):
            final = {"op": "cancelled", "id": request_id}
        except Exception as exc:  # a bug too: the session must get its final line
            if self._is_cancelled(request_id):
                final = {"op": "cancelled", "id": request_id}
            else:
                if not isinstance(exc, httpx.HTTPError | SSEError | OSError | ValueError):
                    log.error("http_request_crashed", request=request_id, error=repr(exc))
                final = {
                    "op": "transport_error",
                    "id": request_id,
                    "error": f"{type(exc).__name__}: {exc}",
                }
        finally:
            self._entered.discard(request_id)
        # Free the transport before the final line: the session may send the next
        # request as soon as it has read it.
        with self._lock:
            if self._current == request_id:
                self._current = None
            self._cancelled.discard(request_id)
        try:
            self._emit(final)
        finally:
            self._request_ended(request_id)  # else close() would wait for it in vain

    def _cancel_task(self, request_id: int) -> None:
        # A task that has not begun would be cancelled before its first line, losing its
        # final line: it sees the cancellation itself when it begins.
        task = self._tasks.get(request_id)
        if task is not None and request_id in self._entered:
            task.cancel()

    # --- from any thread -------------------------------------------------------------------

    def _is_cancelled(self, request_id: int) -> bool:
        with self._lock:
            return request_id in self._cancelled

    def _request_ended(self, request_id: int) -> None:
        with self._lock:
            if self._current == request_id:
                self._current = None
            self._running -= 1
            if not self._running:
                self._idle.set()

    def _cancel(self, request_id: Any) -> None:
        with self._lock:
            if request_id is None or request_id != self._current:
                return
            self._cancelled.add(request_id)
        assert self._lease is not None
        self._lease.call_soon(self._cancel_task, request_id)

    def close(self) -> None:
        """Cancel the running request, wait for it to end, and let go of the loop."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            current = self._current
            if current is not None:
                self._cancelled.add(current)
        lease = self._lease
        if lease is None:
            return
        if current is not None:
            lease.call_soon(self._cancel_task, current)
        if not lease.in_loop_thread() and not self._idle.wait(self.connect_timeout + 5.0):
            log.error("http_close_timed_out", request=current)
        lease.release()

    def info(self) -> dict[str, Any]:
        return {"transport": "http"}


class _Cancelled(Exception):
    pass


_CLIENT_KEY: Final = "beamagent.backends.openai.client"


def _new_client() -> httpx.AsyncClient:
    """The HTTP client every ``openai`` session on the I/O loop shares."""
    import httpx

    # Sessions share connections, not state: a cookie set for one session must not
    # reach another, so the jar refuses every cookie (these APIs authenticate by header).
    no_cookies = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(
        cookies=no_cookies,
        # A streamed reply holds its connection for the whole turn: never make a
        # session wait for another's; keep some idle ones for the next turns.
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
    )


async def _close_client(client: httpx.AsyncClient) -> None:
    await client.aclose()


class OpenAIHandler(BackendHandler):
    """Handler of the ``openai`` backend (see the module docstring).

    Options: ``base_url`` (default ``$OPENAI_BASE_URL`` or the OpenAI API),
    ``api_key`` (default ``$OPENAI_API_KEY``; none for a local server),
    ``model`` (required), ``system_prompt``, ``headers``, ``extra_body``
    (merged into every request), ``connect_timeout`` (10 s), ``read_timeout``
    (600 s), ``include_partial_messages`` (stream deltas as ``stream_event``),
    ``max_tool_rounds`` (20: model requests that call tools, per query),
    ``permission_handler`` (asked before each Python tool call). Query params
    other than the prompt go into the request body (``temperature``,
    ``max_tokens``...; raw ``tools`` definitions are sent along, and a call of
    one of those ends the query, reported, as before). ``tools`` and
    ``tool_context`` are set by the runtime from the session's Python tools.

    There are no permission modes (the only tools run here are the session's
    Python tools, asked of ``permission_handler``): ``permission_mode`` is not
    an option, and ``set_permission_mode`` raises ``UnsupportedCapability``.
    """

    name: ClassVar[str] = "openai"
    hibernates: ClassVar[bool] = True  # the conversation lives in backend_state
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.SESSION_LIFECYCLE,
            Capability.SESSION_INFO,
            Capability.RUNTIME_MODEL_SWITCH,
            Capability.INTERRUPT,
            Capability.SESSION_HISTORY,
            Capability.EVENT_STREAMING,
            Capability.IN_PROCESS_MCP,
        }
    )

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        opts = self.options
        self.tools = ToolSet.of(opts.get("tools"), "tools")
        context = opts.get("tool_context") or {}
        self.tool_context: dict[str, Any] = dict(context) if isinstance(context, Mapping) else {}
        rounds = opts.get("max_tool_rounds", DEFAULT_MAX_TOOL_ROUNDS)
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
            raise InvalidOption(f"option 'max_tool_rounds' must be an int >= 1; got {rounds!r}")
        self.max_tool_rounds = rounds
        policy = PermissionPolicy.from_options(
            {"permission_handler": opts.get("permission_handler")}
        )
        self._decide = policy.decide if policy.handler is not None else None
        if not self.model:
            raise InvalidOption(
                "the openai backend needs model=... (the model name the server knows)"
            )
        base_url = opts.get("base_url") or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise InvalidOption(f"option 'base_url' must be an http(s) URL; got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        api_key = opts.get("api_key", os.environ.get("OPENAI_API_KEY"))
        if api_key is not None and not isinstance(api_key, str):
            raise InvalidOption("option 'api_key' must be a str")
        self._api_key = api_key
        headers = opts.get("headers") or {}
        if not isinstance(headers, Mapping):
            raise InvalidOption(f"option 'headers' must be a mapping; got {headers!r}")
        self.headers = {str(k): str(v) for k, v in headers.items()}
        if api_key:
            self.headers.setdefault("Authorization", f"Bearer {api_key}")
        extra_body = opts.get("extra_body") or {}
        if not isinstance(extra_body, Mapping):
            raise InvalidOption(f"option 'extra_body' must be a mapping; got {extra_body!r}")
        self.extra_body = dict(extra_body)
        system_prompt = opts.get("system_prompt")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise InvalidOption(f"option 'system_prompt' must be a str; got {system_prompt!r}")
        self.system_prompt = system_prompt
        self.partial = bool(opts.get("include_partial_messages"))
        self.connect_timeout = _positive(opts.get("connect_timeout", 10.0), "connect_timeout")
        read_timeout = opts.get("read_timeout", 600.0)
        self.read_timeout = (
            None if read_timeout is None else _positive(read_timeout, "read_timeout")
        )
        # The conversation: completed user/assistant exchanges. A new handler starts with
        # none; the session replays the stored ones (replay_history) before the first query.
        self.history: list[dict[str, Any]] = []
        self.backend_state.pop("messages", None)  # kept there by earlier versions
        self._request_ids = int(self.backend_state.get("requests", 0))
        self._replayed = 0
        self._turn: _Turn | None = None
        self._query: _Query | None = None
        self._queries = 0
        self._log = log.bind(session_id=self.session_id, backend=self.name)

    @classmethod
    def option_names(cls) -> frozenset[str]:
        return (super().option_names() - {"permission_mode"}) | {
            "tools",
            "tool_context",
            "max_tool_rounds",
            "permission_handler",
            "base_url",
            "api_key",
            "system_prompt",
            "headers",
            "extra_body",
            "connect_timeout",
            "read_timeout",
            "include_partial_messages",
        }

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        if os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_KEY"):
            return True, "configured by OPENAI_BASE_URL / OPENAI_API_KEY"
        return (
            False,
            "no server configured: pass base_url=... (and api_key=... if it needs one) "
            "when starting the session, or set OPENAI_BASE_URL / OPENAI_API_KEY",
        )

    def open_transport(self) -> Transport:
        return HttpStreamTransport(
            headers=self.headers,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
        )

    def on_connected(self, event: Connected) -> HandlerOutput:
        return HandlerOutput(state=SessionState.READY)

    def replay_history(self, history: Sequence[Message]) -> None:
        """Rebuild the conversation from the stored turns (the model sees them as they were).

        Completed exchanges only, as in a live session: a turn with no assistant
        text (failed, interrupted, cut off by a crash) is left out. The most recent
        turns within the replay caps are kept (``beamagent.backends.replay``).
        """
        turns = [t for t in replay_turns(history) if t.prompt and t.assistant_text]
        kept, omitted = bounded_turns(
            turns,
            max_turns=REPLAY_MAX_TURNS,
            max_chars=REPLAY_MAX_CHARS,
            size=lambda t: len(t.prompt or "") + len(t.assistant_text),
        )
        self.history = [
            message
            for turn in kept
            for message in (
                {"role": "user", "content": turn.prompt},
                {"role": "assistant", "content": turn.assistant_text},
            )
        ]
        self._replayed = len(kept)
        if omitted:
            self._log.info("openai_history_capped", kept=len(kept), omitted=omitted)

    # --- queries -------------------------------------------------------------------------

    def encode_query(self, prompt: str, params: Mapping[str, Any]) -> HandlerOutput:
        user = {"role": "user", "content": prompt}
        extra = {k: v for k, v in params.items() if k not in _RESERVED}
        raw_tools = extra.pop("tools", None)
        if raw_tools is not None and not isinstance(raw_tools, list):
            raise InvalidOption(f"query param 'tools' must be a list; got {raw_tools!r}")
        self._queries += 1
        query = _Query(self._queries, user, extra, list(raw_tools or []))
        line = self._request(query)  # raises InvalidOption before any state changes
        self._query = query
        init = Message(
            MessageType.SYSTEM,
            subtype="init",
            model=str(self.model),
            timestamp=_now_ms(),
            system_info={
                "model": self.model,
                "base_url": self.base_url,
                "history_messages": len(self.history),
                "tools": list(self.tools.names()),
            },
        )
        return HandlerOutput(writes=[line], messages=[init])

    def _request(self, query: _Query) -> bytes:
        """The command that sends the query's conversation so far (one model request)."""
        messages: list[dict[str, Any]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages += [*self.history, query.user, *query.transcript]
        tools = [t.openai_tool() for t in self.tools] + query.raw_tools
        body: dict[str, Any] = {
            **self.extra_body,
            **query.params,
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            body["tools"] = tools
        self._request_ids += 1
        self.backend_state["requests"] = self._request_ids
        command = {
            "op": "request",
            "id": self._request_ids,
            "method": "POST",
            "url": f"{self.base_url}/chat/completions",
            "json": body,
        }
        try:
            line = encode_line(command)
        except (TypeError, ValueError) as exc:
            raise InvalidOption(f"query params must be JSON-serialisable: {exc}") from exc
        self._turn = _Turn(self._request_ids, query.user, str(self.model))
        return line

    def encode_interrupt(self) -> HandlerOutput | None:
        turn, query = self._turn, self._query
        if turn is not None:
            return HandlerOutput(writes=[encode_line({"op": "cancel", "id": turn.request_id})])
        if query is not None:  # waiting for tool calls: nothing to cancel on the wire
            self._query = None
            return HandlerOutput(messages=[query.result("interrupted", self.model, is_error=True)])
        return None

    # --- responses -----------------------------------------------------------------------

    def handle_data(self, buffer: bytes) -> tuple[HandlerOutput, bytes]:
        decoded = decode_lines(buffer)
        messages: list[Message] = []
        writes: list[bytes] = []
        calls: list[OffThreadCall] = []
        for line in decoded.objects:
            turn = self._turn
            if turn is None or line.get("id") != turn.request_id:
                continue  # a late line of an abandoned request
            op = line.get("op")
            if op == "event":
                messages += turn.on_event(str(line.get("data", "")), self.partial)
            elif op in ("done", "http_error", "transport_error", "cancelled"):
                self._turn = None
                output = self._finish(turn, line)
                messages += output.messages
                writes += output.writes
                calls += output.calls
        return HandlerOutput(messages=messages, writes=writes, calls=calls), decoded.leftover

    def _finish(self, turn: _Turn, line: Mapping[str, Any]) -> HandlerOutput:
        query = self._query
        op = line.get("op")
        if query is not None:
            query.add_usage(turn.usage)
        if op == "done" and turn.error is None:
            assistant = turn.assistant_message()
            if query is not None and self._runs_tools(turn, query):
                return self._tool_round(turn, query, assistant)
            self._query = None
            transcript = query.transcript if query is not None else []
            self.history += [turn.user, *transcript, {"role": "assistant", "content": turn.text}]
            result = (
                query.result("success", turn.model, turn=turn)
                if query is not None
                else turn.result("success")
            )
            return HandlerOutput(messages=[assistant, result])
        self._query = None
        if op == "cancelled":
            if query is not None:
                return HandlerOutput(
                    messages=[query.result("interrupted", turn.model, turn=turn, is_error=True)]
                )
            return HandlerOutput(messages=[turn.result("interrupted", is_error=True)])
        if op == "http_error":
            status = line.get("status")
            body = str(line.get("body", ""))
            detail = _error_detail(body)
            error = Message(
                MessageType.ERROR,
                content=f"{self.base_url} answered HTTP {status}: {detail}",
                error_info={"status": status, "body": body[:2000]},
                timestamp=_now_ms(),
            )
        else:
            reason = turn.error or str(line.get("error", "request failed"))
            error = Message(
                MessageType.ERROR,
                content=f"request to {self.base_url} failed: {reason}",
                error_info={"error": reason},
                timestamp=_now_ms(),
            )
        self._log.warning("openai_request_failed", error=error.content)
        if query is not None:
            result = query.result("error", turn.model, turn=turn, is_error=True, text=error.content)
        else:
            result = turn.result("error", is_error=True, text=error.content)
        return HandlerOutput(messages=[error, result])

    # --- the tool loop ------------------------------------------------------------------

    def _runs_tools(self, turn: _Turn, query: _Query) -> bool:
        """Whether the model's tool calls are ours to run (none names a raw ``tools`` entry)."""
        if not turn.tool_calls or not self.tools:
            return False
        raw = {_str(_as_mapping(t.get("function")).get("name")) for t in query.raw_tools}
        return not any(call["name"] in raw for call in turn.tool_calls.values())

    def _tool_round(self, turn: _Turn, query: _Query, assistant: Message) -> HandlerOutput:
        query.rounds += 1
        if query.rounds > self.max_tool_rounds:
            self._query = None
            text = (
                f"the model asked for tools in more than max_tool_rounds={self.max_tool_rounds} "
                "consecutive requests; the query was stopped (raise max_tool_rounds to allow more)"
            )
            self._log.warning("openai_max_tool_rounds", rounds=self.max_tool_rounds)
            error = Message(
                MessageType.ERROR,
                content=text,
                error_info={"max_tool_rounds": self.max_tool_rounds},
                timestamp=_now_ms(),
            )
            result = query.result(
                "error_max_tool_rounds", turn.model, turn=turn, is_error=True, text=text
            )
            return HandlerOutput(messages=[assistant, error, result])
        entries = []
        calls: list[OffThreadCall] = []
        for index, call in enumerate(turn.tool_calls.values()):
            call_id = call["id"] or f"call_{query.number}_{query.rounds}_{index}"
            call["id"] = call_id
            entries.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            )
            query.pending[call_id] = call["name"]
            calls.append(self._tool_call(query, call_id, call["name"], call["arguments"]))
        query.transcript.append(
            {"role": "assistant", "content": turn.text or None, "tool_calls": entries}
        )
        return HandlerOutput(messages=[assistant], calls=calls)

    def _tool_call(self, query: _Query, call_id: str, name: str, arguments: str) -> OffThreadCall:
        try:
            parsed: Any = json.loads(arguments or "{}")
        except ValueError:
            parsed = arguments  # not JSON: the check says so to the model
        context = ToolContext(
            session_id=self.session_id,
            backend=self.name,
            tool_name=name,
            tool_use_id=call_id,
            run_id=self.tool_context.get("run_id"),
            node_id=self.tool_context.get("node_id"),
        )
        tool, decide = self.tools.get(name), self._decide
        return OffThreadCall(
            ("tool", query.number, call_id),
            lambda: invoke_blocking(tool, parsed, context, decide=decide, tool_name=name),
        )

    def on_call_result(self, key: Any, result: Any, error: BaseException | None) -> HandlerOutput:
        query = self._query
        if not (isinstance(key, tuple) and len(key) == 3 and key[0] == "tool"):
            return HandlerOutput()
        _kind, number, call_id = key
        if query is None or query.number != number or call_id not in query.pending:
            return HandlerOutput()  # interrupted meanwhile: the late result is dropped
        name = query.pending.pop(call_id)
        outcome = ToolOutcome.of_call(name, result, error)
        query.transcript.append(
            {"role": "tool", "tool_call_id": call_id, "content": outcome.content}
        )
        message = outcome.result_message(call_id)
        if query.pending:
            return HandlerOutput(messages=[message])
        return HandlerOutput(messages=[message], writes=[self._request(query)])

    def info(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "history_messages": len(self.history),
            "replayed_turns": self._replayed,
        }


class _Query:
    """One query: its model requests (rounds of tool calls) and what they added."""

    def __init__(
        self, number: int, user: dict[str, Any], params: dict[str, Any], raw_tools: list[Any]
    ) -> None:
        self.number = number
        self.user = user
        self.params = params
        self.raw_tools = [t for t in raw_tools if isinstance(t, Mapping)]
        self.started = time.monotonic()
        self.rounds = 0
        self.requests = 0
        self.transcript: list[dict[str, Any]] = []  # assistant tool calls and tool results
        self.pending: dict[str, str] = {}  # call id -> tool name, of the current round
        self.usage: dict[str, Any] | None = None

    def add_usage(self, usage: Mapping[str, Any] | None) -> None:
        self.requests += 1
        if usage is None:
            return
        total = dict(self.usage or {})
        for key, value in usage.items():
            if isinstance(value, int) and not isinstance(value, bool):
                previous = total.get(key, 0)
                total[key] = (previous if isinstance(previous, int) else 0) + value
            else:
                total.setdefault(key, value)
        self.usage = total

    def result(
        self,
        subtype: str,
        model: str | None,
        *,
        turn: _Turn | None = None,
        is_error: bool = False,
        text: str | None = None,
    ) -> Message:
        content = text if text is not None else (turn.text if turn is not None else "")
        return Message(
            MessageType.RESULT,
            subtype=subtype,
            is_error=is_error,
            content=content,
            model=model,
            usage=self.usage,
            stop_reason=turn.stop_reason() if turn is not None else None,
            duration_ms=int((time.monotonic() - self.started) * 1000),
            num_turns=max(self.requests, 1),
            timestamp=_now_ms(),
        )


class _Turn:
    """What one streamed completion has produced so far."""

    def __init__(self, request_id: int, user: dict[str, Any], model: str) -> None:
        self.request_id = request_id
        self.user = user
        self.model = model
        self.started = time.monotonic()
        self.parts: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.message_id: str | None = None
        self.error: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def on_event(self, data: str, partial: bool) -> list[Message]:
        if data.strip() == "[DONE]":
            return []
        try:
            chunk = json.loads(data)
        except ValueError:
            self.error = f"malformed stream: an event is not JSON: {data[:120]!r}"
            return []
        if not isinstance(chunk, Mapping):
            return []
        if isinstance(chunk.get("error"), Mapping):  # some servers report errors in-stream
            self.error = str(chunk["error"].get("message") or chunk["error"])
            return []
        # Whatever the server sends, only values of the right type are taken.
        self.message_id = _str(chunk.get("id")) or self.message_id
        self.model = _str(chunk.get("model")) or self.model
        if isinstance(chunk.get("usage"), Mapping):
            self.usage = dict(chunk["usage"])
        out: list[Message] = []
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, Mapping):
                continue
            delta = choice.get("delta")
            if not isinstance(delta, Mapping):
                delta = {}
            content = delta.get("content")
            if isinstance(content, str) and content:
                self.parts.append(content)
                if partial:
                    out.append(
                        Message(
                            MessageType.STREAM_EVENT,
                            content=content,
                            raw=dict(chunk),
                            timestamp=_now_ms(),
                        )
                    )
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else []:
                self._tool_call_delta(call)
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        return out

    def _tool_call_delta(self, call: Any) -> None:
        if not isinstance(call, Mapping):
            return
        index = call.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            index = len(self.tool_calls)
        entry = self.tool_calls.setdefault(index, {"id": None, "name": "", "arguments": ""})
        entry["id"] = _str(call.get("id")) or entry["id"]
        function = call.get("function")
        if isinstance(function, Mapping):
            entry["name"] += _str(function.get("name"))
            entry["arguments"] += _str(function.get("arguments"))

    def stop_reason(self) -> str | None:
        """The completion's stop reason in canonical words (``end_turn``, ``tool_use``...)."""
        return self._stop_reason()

    def _stop_reason(self) -> str | None:
        return {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}.get(
            self.finish_reason or "", self.finish_reason
        )

    def assistant_message(self) -> Message:
        blocks = [ContentBlock("text", text=self.text)] if self.parts else []
        for call in self.tool_calls.values():
            try:
                arguments = json.loads(call["arguments"] or "{}")
            except ValueError:
                arguments = {"_raw": call["arguments"]}
            blocks.append(
                ContentBlock(
                    "tool_use",
                    id=call["id"],
                    name=call["name"],
                    input=arguments if isinstance(arguments, Mapping) else {"value": arguments},
                )
            )
        return Message(
            MessageType.ASSISTANT,
            content=self.text,
            content_blocks=blocks,
            model=self.model,
            message_id=self.message_id,
            usage=self.usage,
            stop_reason=self._stop_reason(),
            timestamp=_now_ms(),
        )

    def result(self, subtype: str, *, is_error: bool = False, text: str | None = None) -> Message:
        return Message(
            MessageType.RESULT,
            subtype=subtype,
            is_error=is_error,
            content=self.text if text is None else text,
            model=self.model,
            usage=self.usage,
            stop_reason=self._stop_reason(),
            duration_ms=int((time.monotonic() - self.started) * 1000),
            num_turns=1,
            timestamp=_now_ms(),
        )


def _error_detail(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:300] or "(empty body)"
    if isinstance(data, Mapping):
        error = data.get("error")
        if isinstance(error, Mapping) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return body[:300]


def _as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str(value: Any) -> str:
    """``value`` if it is a str, else ``""`` (a server's field of the wrong type is ignored)."""
    return value if isinstance(value, str) else ""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _positive(value: Any, option: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidOption(f"option {option!r} must be a number > 0; got {value!r}")
    return float(value)
