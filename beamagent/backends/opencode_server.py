"""The transport of the ``opencode`` backend: an OpenCode server, spoken to over HTTP and SSE.

``opencode serve`` is a headless HTTP server. This transport either starts one
(``opencode serve --port 0 --hostname 127.0.0.1`` in a process group of its
own, watched like every CLI: see :class:`~beamagent.backends.base.SubprocessTransport`)
and learns its address from the line it prints (``opencode server listening on
http://127.0.0.1:PORT``), or attaches to one at a given ``base_url`` (then it
owns no process). Either way it then

1. polls ``GET /global/health`` until the server answers ``{"healthy": true}``;
2. subscribes to ``GET /event`` (server-sent events; one stream per project
   directory, shared by every session in it) and waits for ``server.connected``;
3. says ``ready`` to the handler, and from then on hands it the events of the
   one OpenCode session it follows, and the answers to the requests it sends.

It speaks JSON Lines with the handler, as the ``openai`` transport does: the
handler *writes* commands, the transport *delivers* one line per event or
answer. Commands:

* ``{"op": "request", "id": N, "method", "path", "query"?, "json"?}``: an
  HTTP request to the server (any number at once); answered by
  ``{"op": "response", "id": N, "status", "body"}`` (``body`` parsed JSON,
  else the text) or ``{"op": "request_failed", "id": N, "error"}``;
* ``{"op": "follow", "session_id": S}``: deliver only the events of OpenCode
  session ``S`` (a cheap filter on the loop: other sessions' events never
  reach the session actor);
* ``{"op": "on_close", "requests": [...]}``: requests to send, best effort,
  when the transport closes while attached to a server it does not own (abort
  a running turn, reject its pending permission requests); a server it owns
  is stopped instead.

Delivered lines besides the answers: ``{"op": "ready", "base_url", "health"}``
once, then ``{"op": "event", "data"}`` per event of the followed session (the
raw JSON text; the handler parses it); nothing else reaches the session, so
an idle session stays idle (and may hibernate). The end of the
event stream ends the transport (``Disconnected``, or the server's ``Exited``
when it was ours and died): the session fails with a ``TransportError`` and
its supervisor restarts it, and the restarted session continues the OpenCode
session natively.

All of it runs on the shared I/O loop (:mod:`beamagent.backends.io_loop`): no
thread per session, nothing ever blocks the session actor. Every ``opencode``
session on the loop sends through one ``httpx.AsyncClient`` (pooled
connections; no cookies; proxies from the environment are ignored: the server
is local, or named by its URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import json
import re
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from beamagent.backends.base import (
    Connected,
    Data,
    Disconnected,
    Exited,
    SubprocessTransport,
    Transport,
    TransportEvent,
    TransportSink,
)
from beamagent.backends.io_loop import IoLease, acquire_io_loop
from beamagent.backends.jsonl import decode_lines, encode_line
from beamagent.backends.sse import SseDecoder
from beamagent.errors import TransportError
from beamagent.log import get_logger

if TYPE_CHECKING:
    import httpx

__all__ = ["ANNOUNCEMENT", "OpenCodeServerTransport"]

log = get_logger(__name__)

ANNOUNCEMENT: Final = re.compile(rb"listening on (https?://[^\s/]+)")
"""What ``opencode serve`` prints once it listens (its address is the only group)."""

_CLIENT_KEY: Final = "beamagent.backends.opencode.client"
_HEALTH_PATH: Final = "/global/health"
_EVENT_PATH: Final = "/event"
_STDOUT_TAIL: Final = 4096
_HEALTH_POLL_FIRST: Final = 0.05
_HEALTH_POLL_MAX: Final = 0.25
_HEALTH_ATTEMPT_TIMEOUT: Final = 2.0
_CLOSE_REQUESTS_TIMEOUT: Final = 2.0
_EXIT_AFTER_STREAM_END: Final = 1.0


class OpenCodeServerTransport(Transport):
    """An OpenCode server (started here, or attached to) and its event stream.

    Args:
        argv: the command that starts the server (``opencode serve --port 0
            --hostname 127.0.0.1``, perhaps under a ``command_prefix``); it must
            print the announcement (:data:`ANNOUNCEMENT`). None: attach to
            ``base_url`` instead.
        base_url: the server to attach to (when ``argv`` is None).
        env, cwd: the server process's environment and working directory.
        directory: the project directory every request and the event stream
            are scoped to (OpenCode's ``?directory=``); None: the server's own.
        headers: added to every request (e.g. ``Authorization`` for a server
            started with ``OPENCODE_SERVER_PASSWORD``).
        connect_timeout: seconds to open a connection to the server.
        request_timeout: seconds for one request's answer (not the event stream).
        kill_timeout: the process group's grace between SIGTERM and SIGKILL.
    """

    def __init__(
        self,
        *,
        argv: Sequence[str] | None = None,
        base_url: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        directory: str | None = None,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 60.0,
        kill_timeout: float = 3.0,
    ) -> None:
        if (argv is None) == (base_url is None):
            raise TransportError("give the server's argv or a base_url (one of them)", "argv")
        self.argv = list(argv) if argv is not None else None
        self.base_url = base_url.rstrip("/") if base_url else None
        self.directory = directory
        self.headers = dict(headers or {})
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self._process = (
            SubprocessTransport(argv, env=env, cwd=cwd, kill_timeout=kill_timeout)
            if argv is not None
            else None
        )
        self._sink: TransportSink | None = None
        self._lease: IoLease | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._pid: int | None = None
        # What the start waits for now: shown in session_info() and in a handshake timeout.
        self._waiting_for: str | None = None
        self._health: dict[str, Any] | None = None
        # Touched on the loop's thread only.
        self._ended = False  # the terminal event (Exited/Disconnected) was delivered
        self._tasks: set[asyncio.Task[Any]] = set()
        self._announced: asyncio.Future[str] | None = None
        self._exited: asyncio.Future[None] | None = None
        self._stdout = bytearray()
        self._follow: str | None = None
        self._on_close: list[dict[str, Any]] = []
        self._pending_exit: Exited | None = None

    # --- start ---------------------------------------------------------------------------

    def start(self, sink: TransportSink) -> None:
        import httpx  # noqa: F401 - here, not at import: it costs ~70 ms and only we need it

        self._sink = sink
        self._lease = acquire_io_loop()
        if self._process is None:
            self._waiting_for = f"the opencode server at {self.base_url} to answer"
            sink(Connected({"transport": "opencode", "base_url": self.base_url}))
            self._lease.call_soon(self._begin)
            return
        self._waiting_for = "opencode serve to announce its address"
        try:
            self._process.start(self._on_process_event)
        except BaseException:
            self._lease.release()
            raise

    def _on_process_event(self, event: TransportEvent) -> None:
        """The server process's events: from start() (Connected), then on the loop."""
        if isinstance(event, Connected):
            self._pid = event.info.get("pid")
            assert self._sink is not None
            assert self._lease is not None
            self._sink(Connected({"transport": "opencode", "pid": self._pid}))
            self._lease.call_soon(self._begin)
        elif isinstance(event, Data):
            self._on_stdout(event.data)
        elif isinstance(event, Exited):
            self._on_exit(event)

    # --- on the loop ---------------------------------------------------------------------

    def _begin(self) -> None:
        loop = asyncio.get_running_loop()
        self._exited = loop.create_future()
        if self._process is not None:
            self._announced = loop.create_future()
            if self._pending_exit is not None:  # it died before we got here
                self._on_exit(self._pending_exit)
                return
            self._scan_stdout()
        self._spawn(self._startup())

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _deliver(self, event: TransportEvent) -> None:
        sink = self._sink
        if sink is None or self._ended or self._closed:
            return
        if isinstance(event, Exited | Disconnected):
            self._ended = True
        try:
            sink(event)
        except Exception:  # a broken sink must not take the loop down with it
            log.exception("transport_sink_failed", kind=type(event).__name__)

    def _emit(self, line: Mapping[str, Any]) -> None:
        if not self._closed:
            self._deliver(Data(encode_line(line)))

    def _on_stdout(self, chunk: bytes) -> None:
        self._stdout += chunk
        if self._announced is not None:
            self._scan_stdout()
        if len(self._stdout) > _STDOUT_TAIL:
            del self._stdout[:-_STDOUT_TAIL]

    def _scan_stdout(self) -> None:
        announced = self._announced
        if announced is None or announced.done():
            return
        match = ANNOUNCEMENT.search(bytes(self._stdout))
        if match is not None:
            announced.set_result(match.group(1).decode("ascii", "replace"))

    def _on_exit(self, event: Exited) -> None:
        if self._exited is None:  # before _begin ran: it handles it
            self._pending_exit = event
            return
        if not self._exited.done():
            self._exited.set_result(None)
        for task in list(self._tasks):
            task.cancel()
        tail = event.stderr_tail
        stdout = bytes(self._stdout).decode("utf-8", "replace").strip()
        if stdout and not tail.strip():
            tail = stdout  # some failures are printed on stdout
        self._deliver(Exited(event.status, tail))

    async def _startup(self) -> None:
        import httpx

        try:
            if self._announced is not None:
                self.base_url = await self._announced
            assert self.base_url is not None
            self._health = await self._wait_healthy()
            self._waiting_for = f"the event stream of the opencode server at {self.base_url}"
            await self._stream_events()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, httpx.HTTPError | OSError | ValueError):
                log.error("opencode_transport_crashed", error=repr(exc))
            await self._stream_ended(f"{type(exc).__name__}: {exc}")

    def _client(self) -> httpx.AsyncClient:
        assert self._lease is not None
        return self._lease.io_loop.resource(_CLIENT_KEY, _new_client, _close_client)

    def _timeout(self, read: float | None) -> httpx.Timeout:
        import httpx

        return httpx.Timeout(read, connect=self.connect_timeout)

    def _params(self, query: Mapping[str, Any] | None = None) -> dict[str, str]:
        params = {str(k): str(v) for k, v in (query or {}).items()}
        if self.directory is not None:
            params.setdefault("directory", self.directory)
        return params

    async def _wait_healthy(self) -> dict[str, Any]:
        """Poll ``GET /global/health`` until ``{"healthy": true}``; the session bounds the wait."""
        import httpx

        url = f"{self.base_url}{_HEALTH_PATH}"
        delay = _HEALTH_POLL_FIRST
        while True:
            try:
                response = await self._client().get(
                    url, headers=self.headers, timeout=self._timeout(_HEALTH_ATTEMPT_TIMEOUT)
                )
                body = _json_or_text(response.content)
                if response.status_code == 200 and isinstance(body, dict) and body.get("healthy"):
                    return {**body, "checked_at": time.time()}
                shown = body if isinstance(body, str) else json.dumps(body)
                last = f"HTTP {response.status_code}: {shown[:200]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._waiting_for = (
                f"the opencode server at {self.base_url} to become healthy "
                f"(GET {_HEALTH_PATH}: {last})"
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _HEALTH_POLL_MAX)

    async def _stream_events(self) -> None:
        """Read ``GET /event`` until it ends; the first ``server.connected`` makes us ready."""
        decoder = SseDecoder()
        ready = False
        async with self._client().stream(
            "GET",
            f"{self.base_url}{_EVENT_PATH}",
            params=self._params(),
            headers={**self.headers, "Accept": "text/event-stream", "Cache-Control": "no-store"},
            timeout=self._timeout(None),
        ) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode("utf-8", "replace")
                await self._stream_ended(
                    f"GET {_EVENT_PATH} answered HTTP {response.status_code}: {body[:300]}"
                )
                return
            async for chunk in response.aiter_bytes():  # decoded, if it was compressed
                for event in decoder.feed(chunk):
                    data = event.data
                    if not ready and '"server.connected"' in data:
                        ready = True
                        self._waiting_for = None
                        ready_line = {"op": "ready", "base_url": self.base_url}
                        self._emit({**ready_line, "health": self._health})
                        continue
                    if ready and self._wanted(data):
                        self._emit({"op": "event", "data": data})
        # An event whose blank line never came is dropped (as the spec says), and named.
        incomplete = bool(decoder.flush(dispatch_incomplete=True))
        await self._stream_ended(
            "the server closed its event stream"
            + (" in the middle of an event" if incomplete else "")
        )

    def _wanted(self, data: str) -> bool:
        # A substring test, not a parse: the handler parses (and checks) what it gets.
        follow = self._follow
        return follow is not None and follow in data

    async def _stream_ended(self, why: str) -> None:
        if self._closed or self._ended:
            return
        exited = self._exited
        if self._process is not None and exited is not None:
            # The server died, most likely: report its exit (status, stderr), not the stream.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(exited), _EXIT_AFTER_STREAM_END)
            if exited.done():
                return
        log.warning("opencode_stream_ended", base_url=self.base_url, reason=why)
        self._deliver(Disconnected(f"opencode event stream at {self.base_url}: {why}"))

    async def _request(self, command: Mapping[str, Any]) -> None:
        import httpx

        request_id = command.get("id")
        try:
            response = await self._client().request(
                str(command.get("method", "GET")),
                f"{self.base_url}{command['path']}",
                params=self._params(command.get("query")),
                json=command.get("json"),
                headers=self.headers,
                timeout=self._timeout(self.request_timeout),
            )
            line: dict[str, Any] = {
                "op": "response",
                "id": request_id,
                "status": response.status_code,
                "body": _json_or_text(response.content),
            }
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, httpx.HTTPError | OSError | ValueError):
                log.error("opencode_request_crashed", path=command.get("path"), error=repr(exc))
            error = f"{type(exc).__name__}: {exc}"
            line = {"op": "request_failed", "id": request_id, "error": error}
        self._emit(line)

    def _command(self, command: dict[str, Any]) -> None:
        op = command.get("op")
        if self._ended:
            if op == "request":
                self._emit({"op": "request_failed", "id": command.get("id"), "error": "closed"})
            return
        if op == "request":
            if self.base_url is None:
                self._emit(
                    {"op": "request_failed", "id": command.get("id"), "error": "not ready yet"}
                )
                return
            self._spawn(self._request(command))
        elif op == "follow":
            session = command.get("session_id")
            self._follow = str(session) if session else None
        elif op == "on_close":
            requests = command.get("requests")
            self._on_close = [dict(r) for r in requests] if isinstance(requests, list) else []

    async def _shutdown(self) -> None:
        """Close on the loop: last requests (attached only), then cancel everything."""
        if self._process is None and self._on_close and self.base_url and not self._ended:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._send_on_close(), _CLOSE_REQUESTS_TIMEOUT)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _send_on_close(self) -> None:
        # In order: an abort first, then the permission replies it makes stale.
        for command in self._on_close:
            with contextlib.suppress(Exception):
                await self._client().request(
                    str(command.get("method", "POST")),
                    f"{self.base_url}{command['path']}",
                    params=self._params(command.get("query")),
                    json=command.get("json"),
                    headers=self.headers,
                    timeout=self._timeout(_CLOSE_REQUESTS_TIMEOUT),
                )

    # --- from any thread -------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue the handler's commands (JSON lines) for the loop; never blocks."""
        if self._closed or self._lease is None:
            raise TransportError("the opencode transport is closed", reason="closed")
        for command in decode_lines(data).objects:
            if not self._lease.call_soon(self._command, command):
                raise TransportError("the opencode transport is closed", reason="closed")

    def close(self) -> None:
        """Stop following the server; stop the server too if it is ours. Idempotent.

        A server we attached to gets the ``on_close`` requests (at most 2 s);
        one we started gets SIGTERM (it exits in tens of milliseconds), then
        its whole process group is ended and reaped as any CLI's is.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        lease = self._lease
        if lease is None:
            return
        if lease.in_loop_thread():  # cannot wait for the loop on the loop
            lease.call_soon(self._cancel_all)
        else:
            try:
                lease.submit(self._shutdown()).result(_CLOSE_REQUESTS_TIMEOUT + 5.0)
            except Exception as exc:  # too slow: cancel what is left without waiting
                log.warning("opencode_close_slow", error=repr(exc))
                lease.call_soon(self._cancel_all)
        process = self._process
        if process is not None:
            process.signal(signal.SIGTERM)
            process.close()  # returns once the group is gone and reaped
        lease.release()

    def info(self) -> dict[str, Any]:
        """``pid`` (when the server is ours), ``base_url``, and what a start still waits for."""
        info: dict[str, Any] = {"transport": "opencode", "base_url": self.base_url}
        if self._pid is not None:
            info["pid"] = self._pid
        if self._waiting_for is not None:
            info["waiting_for"] = self._waiting_for
        return info


def _json_or_text(content: bytes) -> Any:
    text = content.decode("utf-8", "replace")
    if not text:
        return None
    objects = decode_lines(content.rstrip(b"\n") + b"\n").objects
    if objects:
        return objects[0]
    try:
        return json.loads(text)  # a JSON value that is not an object (true, a list)
    except ValueError:
        return text


def _new_client() -> httpx.AsyncClient:
    """The HTTP client every ``opencode`` session on the I/O loop shares."""
    import httpx

    no_cookies = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(
        cookies=no_cookies,
        trust_env=False,  # a local server: no proxy from the environment
        # Each session holds its event stream's connection: never make one wait for another's.
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
    )


async def _close_client(client: httpx.AsyncClient) -> None:
    await client.aclose()
