"""``Session``: the handle users hold. It names a session; it is not an actor ref.

Every call looks the session up by its registered name, so a handle keeps
working after the session's supervisor restarted it; a call made while the
session restarts waits for it (within the call's timeout). Delivery is **at
most once**: a call the session never began is sent to its next incarnation;
one it was carrying out when it died is repeated only if it is safe to repeat
(reads, health, info, settings). A query cut off that way raises
``SessionError`` whose ``delivered`` says whether the prompt reached the
backend. The async twins (``aquery``, ``astream``...) bridge the actor's
reply straight into the event loop (no thread pool; replies that arrive together
wake the loop once): they never block it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

import pykka
from pykka._envelope import Envelope
from pykka.messages import ProxyCall

from beamagent import telemetry
from beamagent.errors import (
    BeamAgentError,
    Interrupted,
    NoActiveQuery,
    QueryComplete,
    QueryTimeout,
    SessionError,
    SessionNotFound,
    SessionRestarting,
)
from beamagent.messages import Message, MessageType
from beamagent.session.actor import CallFuture, QueryRef
from beamagent.timeouts import check_timeout
from supervisors import NoReply, WaitTimeout, deliver, lookup, monitor

if TYPE_CHECKING:
    import asyncio

    from beamagent.runtime import Runtime

__all__ = ["Session"]

DEFAULT_QUERY_TIMEOUT = 120.0
CALL_TIMEOUT = 30.0
_GRACE = 5.0  # the actor enforces query timeouts itself; this only guards a wedged actor


_new_tuple: Any = tuple.__new__


def _trace_kwargs(method: str) -> dict[str, Any]:
    # A query's span starts and ends in the session actor: the caller's context goes
    # with the message to be its parent. Nothing is added when tracing is off.
    if telemetry.ENABLED and method in ("query", "send_query"):
        context = telemetry.current_context()
        if context is not None:
            return {"trace_context": context}
    return {}


def _timeouts(timeout: Any) -> tuple[float | None, float | None]:
    """The checked ``timeout`` and the handle's own, slightly longer, bound for the call."""
    seconds = check_timeout(timeout)
    return seconds, None if seconds is None else seconds + _GRACE


REPEATABLE = frozenset(
    {
        "await_ready",
        "health",
        "session_info",
        "receive_message",
        "interrupt",
        "abort",
        "set_model",
        "set_permission_mode",
    }
)
"""Calls a handle repeats on the restarted session when the old one died carrying them out.

``query``, ``send_query`` and ``send_control`` are not among them: they may
have reached the backend (at most once).
"""


class _LoopBridge:
    """Hands replies to one event loop in batches: one wake-up of the loop per batch.

    ``call_soon_threadsafe`` writes to the loop's self-pipe on every call; with many
    coroutines awaiting sessions, replies that arrive while the loop has not yet run
    the last batch join it instead of waking it again.
    """

    __slots__ = ("_loop", "_ready", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ready: deque[tuple[asyncio.Future[Any], CallFuture]] = deque()
        self._scheduled = False

    def push(self, target: asyncio.Future[Any], source: CallFuture) -> None:
        """Resolve ``target`` from ``source`` (set) on the loop's thread; any thread."""
        # Appended before the flag is read: a drain that has not yet reset the flag
        # has not started popping either, so it finds this reply.
        self._ready.append((target, source))
        if self._scheduled:
            return
        self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # a closed loop: nobody awaits any more
            self._scheduled = False
            self._ready.clear()

    def _drain(self) -> None:
        self._scheduled = False
        ready = self._ready
        while ready:
            target, source = ready.popleft()
            _resolve(target, source)


_bridges = threading.local()


def _bridge(loop: asyncio.AbstractEventLoop) -> _LoopBridge:
    """The bridge of ``loop``, the running loop of this thread."""
    bridge: _LoopBridge | None = getattr(_bridges, "bridge", None)
    if bridge is None or bridge._loop is not loop:
        bridge = _bridges.bridge = _LoopBridge(loop)
    return bridge


class _LoopFuture(CallFuture):
    """A Pykka future that also resolves an asyncio future, thread-safely."""

    __slots__ = ("_bridge", "_target")

    def __init__(self, bridge: _LoopBridge, target: asyncio.Future[Any]) -> None:
        super().__init__()
        self._bridge = bridge
        self._target = target

    def set(self, value: Any = None) -> None:
        super().set(value)
        self._bridge.push(self._target, self)

    def set_exception(self, exc_info: Any = None) -> None:
        super().set_exception(exc_info)
        self._bridge.push(self._target, self)


def _resolve(target: asyncio.Future[Any], source: CallFuture) -> None:
    if target.done():
        return
    try:
        target.set_result(source.get(timeout=0))
    except BaseException as exc:
        target.set_exception(exc)


class _HandleTimeout(Exception):
    """The handle's own bound on an async call passed (a wedged session)."""


def _expire(target: asyncio.Future[Any]) -> None:
    if not target.done():
        target.set_exception(_HandleTimeout())


class Session:
    """A live session, by id. Created by ``Runtime.start_session`` or ``Runtime.session``.

    Example::

        with Runtime(store=":memory:") as rt:
            session = rt.start_session(backend="local")
            messages = session.query("hello")
            messages[-1].content  # 'hello'
    """

    __slots__ = ("_complete", "_runtime", "session_id")

    def __init__(
        self,
        runtime: Runtime,
        session_id: str,
        complete_types: frozenset[MessageType] | None = None,
    ) -> None:
        self._runtime = runtime
        self.session_id = session_id
        self._complete = complete_types

    def __repr__(self) -> str:
        return f"<Session {self.session_id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Session) and other.session_id == self.session_id

    def __hash__(self) -> int:
        return hash(self.session_id)

    @property
    def runtime(self) -> Runtime:
        """The runtime this session lives in."""
        return self._runtime

    # --- plumbing -----------------------------------------------------------------------

    def _cut_off(self, method: str, future: CallFuture) -> SessionError:
        if method in ("query", "send_query"):
            delivered = future.delivered
            where = "had reached" if delivered else "had not reached"
            return SessionError(
                f"session {self.session_id} ended during {method}; the prompt {where} its "
                "backend (the handle does not send it again)",
                reason="ended",
                delivered=delivered,
            )
        return SessionError(
            f"session {self.session_id} ended during {method}; it may have been carried out",
            reason="ended",
        )

    def _call(self, method: str, *args: Any, timeout: float | None = CALL_TIMEOUT) -> Any:
        kwargs = _trace_kwargs(method)
        # ProxyCall((method,), args, kwargs), without the named tuple's Python __new__.
        message = _new_tuple(ProxyCall, ((method,), args, kwargs))
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        remaining = timeout  # all of it, the first time
        tries = 0
        while True:
            if tries:  # a second try: the query's own timeout runs on
                remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            ref = self._runtime._session_ref(self.session_id, remaining)
            tries += 1
            if tries > 1:
                message = ProxyCall((method,), self._args_left(method, args, started), kwargs)
            future = CallFuture()
            deliver(ref, Envelope(message, reply_to=future))  # caller-runs when idle
            try:
                return future.get(timeout=remaining)
            except SessionRestarting:
                # Not carried out; the session ends and comes back: wait for that.
                self._wait_for_end(ref, deadline)
            except NoReply:
                if method not in REPEATABLE:
                    raise self._cut_off(method, future) from None
            except pykka.ActorDeadError:
                pass  # it ended before handling the call: the next incarnation gets it
            except pykka.Timeout:
                future.abandoned = True  # if not started yet, it never will be
                raise QueryTimeout(
                    f"session {self.session_id} did not answer {method} within {timeout} s"
                ) from None
            if deadline is not None and time.monotonic() >= deadline:
                raise QueryTimeout(
                    f"session {self.session_id} did not come back to answer {method} "
                    f"within {timeout} s"
                )

    def _args_left(self, method: str, args: tuple[Any, ...], started: float) -> tuple[Any, ...]:
        """``args`` for another try of ``method`` begun at ``started``: a query's timeout is
        what is left of it (it counts from the first try, not from the restart).

        Raises:
            QueryTimeout: nothing is left: the prompt is not sent.
        """
        if method != "query" or args[2] is None:
            return args
        left = args[2] - (time.monotonic() - started)
        if left <= 0:
            raise QueryTimeout(
                f"query on session {self.session_id} timed out while the session restarted "
                f"({args[2]} s); its prompt was not sent"
            )
        return (*args[:2], left, *args[3:])

    def _wait_for_end(self, ref: pykka.ActorRef[Any], deadline: float | None) -> None:
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        with contextlib.suppress(WaitTimeout):
            monitor(ref, watcher=None).wait(remaining)

    async def _acall(self, method: str, *args: Any, timeout: float | None = CALL_TIMEOUT) -> Any:
        import asyncio

        loop = asyncio.get_running_loop()
        bridge = _bridge(loop)
        kwargs = _trace_kwargs(method)
        # ProxyCall((method,), args, kwargs), without the named tuple's Python __new__.
        message = _new_tuple(ProxyCall, ((method,), args, kwargs))
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        runtime = self._runtime
        tries = 0
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                ref = runtime._session_ref(self.session_id, 0.0)
            except SessionError as exc:
                if exc.reason != "restarting":
                    raise
                # Restarting: wait for it off the loop.
                ref = await loop.run_in_executor(
                    None, runtime._session_ref, self.session_id, remaining
                )
            tries += 1
            if tries > 1:  # a second try: the query's own timeout runs on
                message = ProxyCall((method,), self._args_left(method, args, started), kwargs)
            target: asyncio.Future[Any] = loop.create_future()
            future = _LoopFuture(bridge, target)
            ref.actor_inbox.put(Envelope(message, reply_to=future))
            # Awaited directly, with a timer of our own: asyncio.wait_for adds a second
            # future and a done-callback to every call.
            expiry = None if remaining is None else loop.call_later(remaining, _expire, target)
            try:
                return await target
            except _HandleTimeout:
                future.abandoned = True  # if not started yet, it never will be
                raise QueryTimeout(
                    f"session {self.session_id} did not answer {method} within {timeout} s"
                ) from None
            except asyncio.CancelledError:
                future.abandoned = True
                raise
            except SessionRestarting:
                await loop.run_in_executor(None, self._wait_for_end, ref, deadline)
            except NoReply:
                if method not in REPEATABLE:
                    raise self._cut_off(method, future) from None
            except pykka.ActorDeadError:
                pass
            finally:
                if expiry is not None:
                    expiry.cancel()
            if deadline is not None and time.monotonic() >= deadline:
                raise QueryTimeout(
                    f"session {self.session_id} did not come back to answer {method} "
                    f"within {timeout} s"
                )

    # --- queries ----------------------------------------------------------------------------

    def query(
        self, prompt: str, *, timeout: float | None = DEFAULT_QUERY_TIMEOUT, **params: Any
    ) -> list[Message]:
        """Run a query and return all its messages, the terminal one included.

        Raises:
            QueryInProgress: another query is running.
            QueryTimeout: no terminal message within ``timeout`` seconds (the
                backend was interrupted; the session is ready again).
            Interrupted: someone interrupted the query.
            SessionError: the backend died.
        """
        seconds, bound = _timeouts(timeout)
        return cast(list[Message], self._call("query", prompt, params, seconds, timeout=bound))

    async def aquery(
        self, prompt: str, *, timeout: float | None = DEFAULT_QUERY_TIMEOUT, **params: Any
    ) -> list[Message]:
        """Async twin of :meth:`query`."""
        seconds, bound = _timeouts(timeout)
        return cast(
            list[Message], await self._acall("query", prompt, params, seconds, timeout=bound)
        )

    def send_query(
        self,
        prompt: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = CALL_TIMEOUT,
    ) -> QueryRef:
        """Start a query; read its messages with :meth:`receive_message`."""
        return cast(
            QueryRef,
            self._call("send_query", prompt, dict(params or {}), timeout=check_timeout(timeout)),
        )

    async def asend_query(
        self,
        prompt: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = CALL_TIMEOUT,
    ) -> QueryRef:
        """Async twin of :meth:`send_query`."""
        return cast(
            QueryRef,
            await self._acall(
                "send_query", prompt, dict(params or {}), timeout=check_timeout(timeout)
            ),
        )

    def receive_message(
        self, ref: QueryRef, timeout: float | None = DEFAULT_QUERY_TIMEOUT
    ) -> Message:
        """The next message of query ``ref``.

        Raises:
            QueryComplete: the terminal message was already received.
            BadQueryRef: ``ref`` is not the session's current query.
            QueryTimeout: nothing arrived within ``timeout`` (the query goes on).
            Interrupted: the query was interrupted (reported once).
        """
        seconds, bound = _timeouts(timeout)
        return cast(Message, self._call("receive_message", ref, seconds, timeout=bound))

    async def areceive_message(
        self, ref: QueryRef, timeout: float | None = DEFAULT_QUERY_TIMEOUT
    ) -> Message:
        """Async twin of :meth:`receive_message`."""
        seconds, bound = _timeouts(timeout)
        return cast(Message, await self._acall("receive_message", ref, seconds, timeout=bound))

    def stream(
        self, prompt: str, *, timeout: float | None = DEFAULT_QUERY_TIMEOUT, **params: Any
    ) -> Iterator[Message]:
        """Yield the messages of a query as they arrive, the terminal one last.

        ``timeout`` bounds the wait for each message. Leaving the loop early
        interrupts the query, so the session is ready for the next one.
        """
        timeout = check_timeout(timeout)  # before the prompt is sent
        ref = self.send_query(prompt, params)
        finished = False
        try:
            while True:
                try:
                    message = self.receive_message(ref, timeout)
                except QueryComplete:
                    finished = True
                    return
                yield message
                if self._is_terminal(message):
                    finished = True
                    return
        except (QueryTimeout, Interrupted):
            raise
        finally:
            if not finished:
                self._quietly_interrupt()

    async def astream(
        self, prompt: str, *, timeout: float | None = DEFAULT_QUERY_TIMEOUT, **params: Any
    ) -> AsyncIterator[Message]:
        """Async twin of :meth:`stream` (an async iterator)."""
        timeout = check_timeout(timeout)  # before the prompt is sent
        ref = await self.asend_query(prompt, params)
        finished = False
        try:
            while True:
                try:
                    message = await self.areceive_message(ref, timeout)
                except QueryComplete:
                    finished = True
                    return
                yield message
                if self._is_terminal(message):
                    finished = True
                    return
        finally:
            if not finished:
                with contextlib.suppress(BeamAgentError):
                    await self._acall("interrupt")

    def _is_terminal(self, message: Message) -> bool:
        complete = self._complete
        if complete is None:
            process = lookup(self._runtime._session_ref(self.session_id))
            config = getattr(process, "config", None)
            if config is None:
                return message.type is MessageType.RESULT
            complete = self._complete = config.handler_cls.complete_types
        return message.type in complete

    def _quietly_interrupt(self) -> None:
        with contextlib.suppress(NoActiveQuery, SessionNotFound, SessionError):
            self._call("interrupt")

    # --- control ------------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Interrupt the running query (``NoActiveQuery`` if none)."""
        self._call("interrupt")

    async def ainterrupt(self) -> None:
        """Async twin of :meth:`interrupt`."""
        await self._acall("interrupt")

    def abort(self) -> None:
        """Abort the running work (the backend's abort, else interrupt)."""
        self._call("abort")

    async def aabort(self) -> None:
        """Async twin of :meth:`abort`."""
        await self._acall("abort")

    def health(self) -> str:
        """The session's state name, or ``"unknown"`` if it is not running.

        Never wakes a hibernating session (it answers ``"hibernating"``).
        """
        try:
            return cast(str, self._call("health", timeout=CALL_TIMEOUT))
        except (SessionNotFound, SessionError, QueryTimeout):
            return "unknown"

    async def ahealth(self) -> str:
        """Async twin of :meth:`health`."""
        try:
            return cast(str, await self._acall("health"))
        except (SessionNotFound, SessionError, QueryTimeout):
            return "unknown"

    def session_info(self) -> dict[str, Any]:
        """Session id, backend, state, model, permission mode, plus backend info.

        ``resumed`` says how this incarnation continues the stored conversation:
        ``"native"`` (the backend's own resume or fork), ``"replay"`` (the stored
        history was replayed to it) or None (nothing to continue).
        """
        return cast(dict[str, Any], self._call("session_info"))

    async def asession_info(self) -> dict[str, Any]:
        """Async twin of :meth:`session_info`."""
        return cast(dict[str, Any], await self._acall("session_info"))

    def backend(self) -> str:
        """The backend name."""
        return cast(str, self.session_info()["backend"])

    def adapter_module(self) -> str:
        """The Python module of the backend handler."""
        return cast(str, self.session_info()["adapter_module"])

    def set_model(self, model: str) -> str:
        """Switch model at runtime; returns the model now in use."""
        return cast(str, self._call("set_model", model))

    async def aset_model(self, model: str) -> str:
        """Async twin of :meth:`set_model`."""
        return cast(str, await self._acall("set_model", model))

    def set_permission_mode(self, mode: str) -> str:
        """Change the permission mode at runtime.

        Raises:
            UnsupportedCapability: the backend has no permission modes (``openai``).
            InvalidOption: not one of the backend's modes (where it lists them).
        """
        return cast(str, self._call("set_permission_mode", mode))

    async def aset_permission_mode(self, mode: str) -> str:
        """Async twin of :meth:`set_permission_mode`."""
        return cast(str, await self._acall("set_permission_mode", mode))

    def send_control(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = CALL_TIMEOUT,
    ) -> Any:
        """A control request: native when the backend has ``method``, else the fallback.

        The universal fallback knows ``setModel``, ``setPermissionMode``,
        ``setMaxThinkingTokens`` and ``stopTask``.

        Raises:
            UnknownControlMethod: neither knows ``method``.
        """
        seconds, bound = _timeouts(timeout)  # the session times the request out itself
        return self._call("send_control", method, dict(params or {}), seconds, timeout=bound)

    async def asend_control(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = CALL_TIMEOUT,
    ) -> Any:
        """Async twin of :meth:`send_control`."""
        seconds, bound = _timeouts(timeout)  # the session times the request out itself
        return await self._acall("send_control", method, dict(params or {}), seconds, timeout=bound)

    @staticmethod
    def _server_health(info: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "backend": info["backend"],
            "healthy": info["state"] in ("ready", "active_query", "hibernating"),
            "state": info["state"],
            **(info.get("server_health") or {}),
        }

    def server_health(self) -> dict[str, Any]:
        """Backend health details (where the backend has a server, its health endpoint)."""
        return self._server_health(self.session_info())

    async def aserver_health(self) -> dict[str, Any]:
        """Async twin of :meth:`server_health`."""
        return self._server_health(await self.asession_info())

    def account_info(self) -> dict[str, Any]:
        """Account details from the backend's init data (empty if none)."""
        return dict(self.session_info().get("account_info") or {})

    async def aaccount_info(self) -> dict[str, Any]:
        """Async twin of :meth:`account_info`."""
        return dict((await self.asession_info()).get("account_info") or {})

    def supported_models(self) -> list[Any]:
        """Models from the backend's init data."""
        return list(self.session_info().get("supported_models") or [])

    async def asupported_models(self) -> list[Any]:
        """Async twin of :meth:`supported_models`."""
        return list((await self.asession_info()).get("supported_models") or [])

    def supported_commands(self) -> list[Any]:
        """Slash commands from the backend's init data."""
        return list(self.session_info().get("supported_commands") or [])

    async def asupported_commands(self) -> list[Any]:
        """Async twin of :meth:`supported_commands`."""
        return list((await self.asession_info()).get("supported_commands") or [])

    def supported_agents(self) -> list[Any]:
        """Agents from the backend's init data."""
        return list(self.session_info().get("supported_agents") or [])

    async def asupported_agents(self) -> list[Any]:
        """Async twin of :meth:`supported_agents`."""
        return list((await self.asession_info()).get("supported_agents") or [])

    async def abackend(self) -> str:
        """Async twin of :meth:`backend`."""
        return cast(str, (await self.asession_info())["backend"])

    async def aadapter_module(self) -> str:
        """Async twin of :meth:`adapter_module`."""
        return cast(str, (await self.asession_info())["adapter_module"])

    def stop(self) -> None:
        """Stop the session (its history stays in the store).

        Raises:
            SessionNotFound: it is not running.
            StopTimeout: the stop was not confirmed within 30 s; it goes on.
        """
        self._runtime.stop_session(self.session_id)

    async def astop(self) -> None:
        """Async twin of :meth:`stop` (runs the shutdown off the event loop).

        Raises:
            SessionNotFound: it is not running.
            StopTimeout: the stop was not confirmed within 30 s; it goes on.
        """
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, self.stop)
