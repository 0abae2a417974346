"""The runtime's tool server: MCP over streamable HTTP, run by a supervised process.

Imports the ``mcp`` SDK and ``uvicorn`` (the ``tools`` extra); the runtime
imports this module only when a session first needs the server.

* **One per runtime**, a child of the runtime's root supervisor registered as
  ``("beamagent", runtime_id, "tools")``. The process owns an asyncio loop on
  a thread of its own (``beamagent-tools``), where uvicorn serves the SDK's
  ``StreamableHTTPSessionManager`` (stateless, JSON responses). See
  ``docs/decisions.md`` for why not the shared I/O loop.
* **Authentication**: every request needs ``Authorization: Bearer <token>``
  of a live grant, else 401 before the SDK sees it; the grant found decides
  everything the request can see (``tools/list`` lists that session's tools
  only, ``tools/call`` reaches only them). The SDK's DNS-rebinding check
  refuses a foreign ``Host`` or any ``Origin``.
* **Calls** run through :func:`beamagent.tools.invoke` (arguments checked, the
  session's permission handler asked once, the timeout kept), and their timing
  is told to the session before the answer goes back to the CLI.
* **Crashes**: the sockets and grants live in :class:`ToolServerState`, outside
  this process. Killed (no hook runs), the process's own monitor stops its
  HTTP server; the supervisor starts a new one on duplicates of the same
  sockets, so the URL and the tokens stay valid and only the calls in flight
  fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import mcp_types as types
import pykka
import uvicorn
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings

from beamagent import telemetry
from beamagent.log import get_logger
from beamagent.tools._access import STRUCTURED_HEADER
from beamagent.tools._calls import CALL_ID_WAIT
from beamagent.tools._state import MCP_PATH, Grant, ToolServerState
from beamagent.tools._timing import ToolCallReport
from beamagent.tools._tool import ToolContext, ToolOutcome, invoke
from supervisors import Down, MonitorRef, Process, blocking, monitor, whereis

__all__ = ["ToolServer"]

log = get_logger(__name__)

GRANT_KEY: Final = "beamagent.grant"
START_TIMEOUT: Final = 10.0
STOP_TIMEOUT: Final = 5.0
THREAD_NAME: Final = "beamagent-tools"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


# --- third-party log records from our thread ---------------------------------------------


class _FromToolServer(logging.Filter):
    """Keeps uvicorn's and the SDK's records made on the tool server's threads off stderr.

    They describe our own server (a cancelled request when it is killed, a
    refused Host): logged as our debug events instead. Records made on other
    threads (an application's own uvicorn or MCP server) pass untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.threadName != THREAD_NAME:
            return True
        log.debug("tool_server_library_log", logger=record.name, message=record.getMessage())
        return False


_FILTER = _FromToolServer()
_filter_lock = threading.Lock()


def _quiet_libraries() -> None:
    with _filter_lock:
        names = ["uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"]
        names += [n for n in logging.root.manager.loggerDict if n == "mcp" or n.startswith("mcp.")]
        for name in names:
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)


# --- the ASGI application -----------------------------------------------------------------


def _grant_of(ctx: ServerRequestContext[Any, Any]) -> Grant:
    request = ctx.request
    grant = getattr(request, "scope", {}).get(GRANT_KEY) if request is not None else None
    if not isinstance(grant, Grant):  # the app below lets no request through without one
        raise PermissionError("no grant for this request")
    return grant


def _tool_use_id(ctx: ServerRequestContext[Any, Any]) -> str | None:
    meta = ctx.meta if isinstance(ctx.meta, dict) else {}
    for key in ("claudecode/toolUseId", "callId", "toolUseId", "tool_use_id"):
        value = meta.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _wants_structured(ctx: ServerRequestContext[Any, Any]) -> bool:
    """Whether the client asked for ``structuredContent`` on every result (its header says so).

    Gemini CLI parses a result's first text block as JSON when there is no
    ``structuredContent`` and then rejects anything but an object (a tool that
    returns ``42`` would fail there); its handler sends this header.
    """
    request = ctx.request
    headers = getattr(request, "headers", None)
    value = headers.get(STRUCTURED_HEADER) if headers is not None else None
    return isinstance(value, str) and value.strip().lower() == "always"


def _structured(outcome: ToolOutcome) -> dict[str, Any]:
    """``structuredContent`` for a result that is not a mapping: ``{"result": ...}``."""
    if outcome.is_error:
        return {"error": outcome.content}
    try:
        value: Any = json.loads(outcome.content)
    except ValueError:
        value = outcome.content  # text as it is
    return {"result": value}


def _report(grant: Grant, report: ToolCallReport) -> None:
    if grant.report_to is None:
        return
    target = whereis(grant.report_to)
    if target is not None:
        with contextlib.suppress(pykka.ActorDeadError):
            target.tell(report)


def build_app(state: ToolServerState) -> tuple[Any, StreamableHTTPSessionManager]:
    """The ASGI app of the tool server, and the SDK session manager it runs."""

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], _params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        grant = _grant_of(ctx)
        return types.ListToolsResult(
            tools=[
                types.Tool(name=t.name, description=t.description, input_schema=t.input_schema)
                for t in grant.tools
            ]
        )

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        grant = _grant_of(ctx)
        tool = grant.tools.get(params.name)
        tool_use_id = _tool_use_id(ctx)
        if tool_use_id is None:
            # A CLI that does not send its call id announced it in its stream: wait for it
            # only when someone will see it (the tool's context, the permission handler).
            needed = tool is not None and (
                tool.context_parameter is not None or grant.decide is not None
            )
            tool_use_id = await grant.calls.claim(
                params.name, params.arguments, CALL_ID_WAIT if needed else 0.0
            )
        context = ToolContext(
            session_id=grant.session_id,
            backend=grant.backend,
            tool_name=params.name,
            tool_use_id=tool_use_id,
            run_id=grant.run_id,
            node_id=grant.node_id,
        )
        token = telemetry.attach(telemetry.context_of(telemetry.live(grant.calls.query_span)))
        try:
            outcome = await invoke(
                tool,
                params.arguments,
                context,
                decide=grant.decide,
                tool_name=params.name,
            )
        finally:
            telemetry.detach(token)
        log.info(
            "tool_called",
            session_id=grant.session_id,
            backend=grant.backend,
            tool=params.name,
            status=outcome.status,
            ms=round(outcome.duration_ms, 2),
        )
        _report(
            grant,
            ToolCallReport(
                grant.session_id,
                params.name,
                context.tool_use_id,
                outcome.duration_ms,
                outcome.status,
            ),
        )
        structured = outcome.structured
        if structured is None and _wants_structured(ctx):
            structured = _structured(outcome)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=outcome.content)],
            structured_content=structured,
            is_error=outcome.is_error,
        )

    server: Server[Any] = Server(
        state.config.server_name, version="1", on_list_tools=list_tools, on_call_tool=call_tool
    )
    server.middleware = []  # the SDK's OpenTelemetry middleware: a cost per message, unused
    port = state.port
    manager = StreamableHTTPSessionManager(
        server,
        json_response=True,
        stateless=True,  # nothing per connection: a restarted server answers any request
        security_settings=TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[f"127.0.0.1:{port}", f"localhost:{port}"],
            allowed_origins=[],
        ),
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(manager, receive, send)
            return
        if kind != "http":
            return
        if scope.get("path") != MCP_PATH:
            await _plain(send, 404, b"not found")
            return
        token = _bearer(scope)
        grant = state.lookup(token) if token else None
        if grant is None:
            await _plain(
                send, 401, b"a valid bearer token is required", {b"www-authenticate": b"Bearer"}
            )
            return
        if scope.get("method") == "GET":
            # Stateless: the server never sends a message of its own, so it offers no stream
            # (MCP: answer 405). A held-open stream kept Gemini CLI from exiting for 3 s.
            await _plain(send, 405, b"no server-sent event stream", {b"allow": b"POST"})
            return
        await manager.handle_request({**scope, GRANT_KEY: grant}, receive, send)

    return app, manager


async def _lifespan(manager: StreamableHTTPSessionManager, receive: Receive, send: Send) -> None:
    await receive()  # lifespan.startup
    async with manager.run():
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
    await send({"type": "lifespan.shutdown.complete"})


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization" and isinstance(value, bytes):
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return str(token.strip())
            return None
    return None


async def _plain(
    send: Send, status: int, body: bytes, headers: dict[bytes, bytes] | None = None
) -> None:
    header_list = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    header_list += list((headers or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": header_list})
    await send({"type": "http.response.body", "body": body})


# --- the HTTP server's thread ---------------------------------------------------------------


class _Uvicorn(uvicorn.Server):
    """uvicorn, telling us once it listens (off the main thread it installs no signal handler)."""

    def __init__(self, config: uvicorn.Config, started: Callable[[], None]) -> None:
        super().__init__(config)
        self._started_callback = started

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            self._started_callback()


class _Ended:
    """Told to the owning process when its HTTP server stopped without being asked to."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class HttpServer:
    """uvicorn on an asyncio loop of its own, on one daemon thread (``beamagent-tools``)."""

    def __init__(self, state: ToolServerState, owner: pykka.ActorRef[Any] | None) -> None:
        self._state = state
        self._owner = owner
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._stopping = False

    def start(self) -> None:
        """Start serving; returns once the server listens.

        Raises:
            RuntimeError: it did not start (the reason is chained).
        """
        _quiet_libraries()
        self._thread.start()
        with blocking():  # a scheduler worker waiting here is replaced meanwhile
            ready = self._started.wait(START_TIMEOUT)
        error = self._error
        if not ready or error is not None:
            self.stop()
            raise RuntimeError(f"the tool server did not start: {error!r}") from error

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        with self._lock:
            self._loop = loop
        try:
            sockets = self._state.listening_sockets()
            app, _manager = build_app(self._state)
            config = uvicorn.Config(
                app,
                lifespan="on",
                log_config=None,
                http="h11",
                ws="none",
                server_header=False,
                date_header=False,
                proxy_headers=False,
            )
            server = _Uvicorn(config, lambda: self._started.set())
            self._server = server
            self._task = loop.create_task(server.serve(sockets=sockets))
            loop.run_until_complete(self._task)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self._error = exc
        finally:
            self._wind_down(loop)
            self._started.set()
            if not self._stopping and self._owner is not None:
                reason = repr(self._error) if self._error is not None else "it returned"
                with contextlib.suppress(pykka.ActorDeadError):
                    self._owner.tell(_Ended(reason))

    def _wind_down(self, loop: asyncio.AbstractEventLoop) -> None:
        server = self._server
        if server is not None:
            for listener in getattr(server, "servers", []):
                listener.close()
            for connection in list(server.server_state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.abort()
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    def stop(self, wait: bool = True) -> None:
        """Stop serving at once: requests in flight are cut off. Idempotent.

        ``wait``: return once the thread has ended (up to 5 s).
        """
        with self._lock:
            self._stopping = True
            loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(task.cancel)
        elif loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        if wait and self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(STOP_TIMEOUT)
            if self._thread.is_alive():
                log.error("tool_server_stop_timed_out")

    @property
    def alive(self) -> bool:
        """Whether the server's thread runs."""
        return self._thread.is_alive()


# --- the supervised process -----------------------------------------------------------------


class ToolServer(Process):
    """The tool server's supervised process; its HTTP server lives and dies with it."""

    def __init__(self, state: ToolServerState) -> None:
        super().__init__()
        self.state = state
        self.http: HttpServer | None = None
        self._watch: MonitorRef | None = None
        self._started_at = time.time()

    def on_start(self) -> None:
        http = HttpServer(self.state, self.actor_ref)
        self.state.served_by(http)
        http.start()
        self.http = http
        # kill() runs no hook: the process's own monitor still stops the server it leaves.
        self._watch = monitor(self.actor_ref, watcher=lambda _down: http.stop(wait=False))
        log.info("tool_server_started", url=self.state.url, sessions=self.state.sessions())

    def on_stop(self) -> None:
        self._stop_http()

    def on_failure(self, *_exc_info: Any) -> None:
        log.warning("tool_server_crashed", url=self.state.url)
        self._stop_http()

    def _stop_http(self) -> None:
        if self.http is not None:
            self.http.stop(wait=True)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Ended):
            raise RuntimeError(f"the tool server's HTTP server ended on its own: {message.reason}")
        if isinstance(message, Down):
            return None
        if message == "info":
            return {
                "url": self.state.url,
                "port": self.state.port,
                "sessions": self.state.sessions(),
                "started_at": self._started_at,
            }
        return super().on_receive(message)
