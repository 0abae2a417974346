"""Call ids a CLI announces in its own stream, matched to the calls the tool server gets.

Claude Code and Codex pass their call id with each MCP ``tools/call``
(``_meta``); Gemini CLI, Copilot CLI and OpenCode do not. They do announce each
call in their own stream first (an ACP ``tool_call`` update, an OpenCode tool
part), with the call id, the tool and its arguments. The session's handler
tells :class:`CallIds` (:meth:`CallIds.announce`); the tool server, given a call
without an id, takes the announced one (:meth:`CallIds.claim`) -- waiting a
little when the announcement has not been read yet (the CLI's stream and its
MCP request race), so that the tool's :class:`~beamagent.tools.ToolContext`
carries the id.

One per session (its grant), shared by the handler's thread and the tool
server's loop; survives the session's restarts with its token.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from typing import TYPE_CHECKING, Any, Final

import attrs

if TYPE_CHECKING:
    import asyncio

__all__ = ["CALL_ID_WAIT", "CallIds"]

CALL_ID_WAIT: Final = 2.0
"""How long the tool server waits for a call's announcement before running it without an id."""
_KEEP: Final = 64
_TTL: Final = 300.0


def _key(arguments: Any) -> str:
    try:
        return json.dumps(arguments, sort_keys=True, default=str)
    except (TypeError, ValueError):  # not JSON (a recursive structure): never equal
        return repr(id(arguments))


@attrs.define
class _Announced:
    tool_name: str
    arguments: str
    call_id: str
    at: float


@attrs.define(eq=False)
class _Waiter:
    tool_name: str
    arguments: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[str]


class CallIds:
    """The calls a session's CLI announced and the tool server has not matched yet.

    Thread-safe; bounded (the oldest announcements are dropped). A call matches
    an announcement of the same tool with the same arguments, else the oldest
    of the same tool.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._announced: collections.deque[_Announced] = collections.deque(maxlen=_KEEP)
        self._waiters: list[_Waiter] = []
        self._enabled = False
        self.query_span: Any = None
        """The session's running query's span (set by the session when traced): the
        server makes the calls it serves that span's children while it records."""

    @property
    def enabled(self) -> bool:
        """Whether the session's handler announces calls (the server then waits for them)."""
        return self._enabled

    def enable(self) -> None:
        """Say that this session's handler announces its CLI's calls (from its constructor)."""
        self._enabled = True

    def announce(self, tool_name: str, arguments: Any, call_id: str) -> None:
        """The CLI announced a call of ``tool_name`` (the tool's own name) as ``call_id``."""
        entry = _Announced(tool_name, _key(arguments), call_id, time.monotonic())
        with self._lock:
            if any(a.call_id == call_id for a in self._announced):
                return  # announced again (a second update of the same call)
            waiter = self._waiter_for(entry)
            if waiter is None:
                self._announced.append(entry)
                return
            self._waiters.remove(waiter)
        waiter.loop.call_soon_threadsafe(_settle, waiter.future, call_id)

    def retract(self, call_id: str) -> None:
        """The CLI reported the call over (it may never have reached the server): forget it."""
        with self._lock:
            for entry in self._announced:
                if entry.call_id == call_id:
                    self._announced.remove(entry)
                    return

    async def claim(self, tool_name: str, arguments: Any, wait: float) -> str | None:
        """The id the CLI announced for this call; waits up to ``wait`` s for it, else None."""
        import asyncio

        key = _key(arguments)
        with self._lock:
            found = self._take(tool_name, key)
            if found is not None or wait <= 0 or not self._enabled:
                return found
            loop = asyncio.get_running_loop()
            waiter = _Waiter(tool_name, key, loop, loop.create_future())
            self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter.future), wait)
        except TimeoutError:
            with self._lock:
                taken = waiter not in self._waiters
                if not taken:
                    self._waiters.remove(waiter)
            # An announcement took the waiter just now: its answer is on its way to this loop.
            return await waiter.future if taken else None
        finally:
            if not waiter.future.done():
                waiter.future.cancel()

    def _take(self, tool_name: str, key: str) -> str | None:
        now = time.monotonic()
        while self._announced and now - self._announced[0].at > _TTL:
            self._announced.popleft()
        same_tool = [a for a in self._announced if a.tool_name == tool_name]
        if not same_tool:
            return None
        entry = next((a for a in same_tool if a.arguments == key), same_tool[0])
        self._announced.remove(entry)
        return entry.call_id

    def _waiter_for(self, entry: _Announced) -> _Waiter | None:
        same_tool = [w for w in self._waiters if w.tool_name == entry.tool_name]
        if not same_tool:
            return None
        return next((w for w in same_tool if w.arguments == entry.arguments), same_tool[0])


def _settle(future: asyncio.Future[str], call_id: str) -> None:
    if not future.done():
        future.set_result(call_id)
