"""The asyncio API is complete and never blocks the event loop."""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any

from beamagent import Runtime, Session
from beamagent.backends.base import Connected, HandlerOutput
from beamagent.backends.local import LocalHandler
from beamagent.graph import FunctionServing, Job, Node

SYNC_ONLY = {"runtime"}  # a property, not a call


def test_every_public_session_method_has_an_async_twin() -> None:
    public = {
        name
        for name, member in inspect.getmembers(Session)
        if not name.startswith("_") and callable(member) and not name.startswith("a")
    }
    missing = sorted(name for name in public - SYNC_ONLY if not hasattr(Session, f"a{name}"))
    assert missing == []
    for name in ("start_session", "stop", "run_job"):
        assert inspect.iscoroutinefunction(getattr(Runtime, f"a{name}")), name


class SlowHandshake(LocalHandler):
    """A local backend whose handshake waits for ``gate`` (a CLI's start, in miniature)."""

    gate = threading.Event()
    entered = threading.Event()

    def on_connected(self, event: Connected) -> HandlerOutput:
        type(self).entered.set()
        type(self).gate.wait(10)
        return super().on_connected(event)


async def _ticks_while(awaitable: Any, release: threading.Event | None = None) -> Any:
    """Await ``awaitable`` while a ticker runs; fail unless the loop kept ticking."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    ticking = asyncio.create_task(ticker())
    task = asyncio.ensure_future(awaitable)
    while ticks < 20:
        await asyncio.sleep(0.001)
    if release is not None:
        assert not task.done()  # still waiting, and the loop still ticks
        release.set()
    result = await task
    ticking.cancel()
    return result


def test_runtime_and_session_async_calls_keep_the_loop_running() -> None:
    SlowHandshake.gate.clear()

    async def main() -> None:
        rt = Runtime(store=":memory:", backends={"slow": SlowHandshake})
        try:
            await scenario(rt)
        finally:
            rt.stop()

    async def scenario(rt: Runtime) -> None:
        session = await _ticks_while(rt.astart_session(backend="slow"), SlowHandshake.gate)
        assert await session.aserver_health() == {
            "backend": "slow",
            "healthy": True,
            "state": "ready",
        }
        assert {"value": "local-echo", "displayName": "local-echo"} in (
            await session.asupported_models()
        )
        assert await session.asupported_commands()
        assert isinstance(await session.asupported_agents(), list)
        assert isinstance(await session.aaccount_info(), dict)
        assert await session.abackend() == "slow"
        job = Job(
            "one", [Node("only", serving=FunctionServing(lambda m: f"did {m.input}"))], start="only"
        )
        run = await _ticks_while(rt.arun_job(job, "it"))
        result = await run.aresult(10)
        assert result.output.body == "did it"
        await _ticks_while(rt.astop())
        assert rt.stopped

    asyncio.run(main())
