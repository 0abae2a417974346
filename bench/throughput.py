"""Throughput of many ``local`` sessions (in-memory store), against baselines in the same run.

Prints:
  * blocking ``query("hi")`` per second from 16 threads over 1,000 sessions, each thread
    querying its own slice of the sessions in turn, vs raw Pykka echo asks per second
    from 16 threads over 1,000 ``pykka.ThreadingActor`` (goal: ours >= 10,000 q/s);
  * ``aquery("hi")`` per second from one asyncio event loop, 1,000 coroutines each
    querying its own session, vs an asyncio design doing the same per-query work: per
    session a task fed by an ``asyncio.Queue`` that has the local backend's agent build
    its reply lines for "hi", decodes and normalises them with ``LocalHandler`` (the same
    code a session runs), adds the user prompt and records the four messages in a
    ``MemoryStore`` called directly (goal: ours >= baseline, ratio >= 1.0).

Every figure is the best of alternating rounds (``paired``'s rule), so both sides see
the same background load. ``python bench/throughput.py [K]`` runs K times as many
queries per worker (default 1).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pykka

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import report

from beamagent import Runtime, configure_logging
from beamagent.backends.local import LocalAgent, LocalHandler
from beamagent.messages import Message, MessageType
from beamagent.store import MemoryStore

configure_logging("critical")

SESSIONS = 1_000
THREADS = 16
ROUNDS = 3


class RawEcho(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


def threaded_rate(targets: Sequence[Callable[[], object]], per_thread: int) -> float:
    """Calls per second: THREADS threads, each calling its own slice of ``targets`` in turn."""
    slices = [targets[i::THREADS] for i in range(THREADS)]
    barrier = threading.Barrier(THREADS + 1)

    def work(mine: Sequence[Callable[[], object]]) -> None:
        barrier.wait()
        for i in range(per_thread):
            mine[i % len(mine)]()

    threads = [threading.Thread(target=work, args=(s,)) for s in slices]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return THREADS * per_thread / (time.perf_counter() - start)


def bench_threads(per_thread: int) -> None:
    raws = [RawEcho.start() for _ in range(SESSIONS)]
    try:
        with Runtime(store=":memory:") as rt:
            sessions = [rt.start_session(backend="local") for _ in range(SESSIONS)]
            queries = [lambda s=s: s.query("hi") for s in sessions]
            asks = [lambda r=r: r.ask(1) for r in raws]
            threaded_rate(queries, 20)  # warm up
            threaded_rate(asks, 20)
            base, ours = [], []
            for _ in range(ROUNDS):
                base.append(threaded_rate(asks, per_thread))
                ours.append(threaded_rate(queries, per_thread))
            report(
                f"throughput_query_{THREADS}_threads_{SESSIONS}_sessions",
                max(ours),
                max(base),
                "q/s",
                f"baseline: raw Pykka echo asks/s, {THREADS} threads over {SESSIONS} "
                "ThreadingActors; goal: ours >= 10000 q/s",
            )
    finally:
        for r in raws:
            r.stop(block=False)
        for r in raws:
            r.actor_stopped.wait(10)


class AsyncioSession:
    """The baseline: one session as an asyncio task fed by a queue, doing a query's work."""

    def __init__(self, index: int, store: MemoryStore) -> None:
        self.session_id = f"session_{index:032x}"
        store.create_session(self.session_id, "local")
        self.store = store
        self.lines: list[bytes] = []
        self.agent = LocalAgent(
            native_session_id=f"local-{index:032x}",
            model="local-echo",
            cwd=None,
            permission_mode=None,
        )
        self.agent.attach(self.lines.append, lambda _status: None)
        self.handler = LocalHandler({"session_id": self.session_id})
        self.inbox: asyncio.Queue[tuple[str, asyncio.Future[list[Message]]]] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self.serve())
        self.count = 0

    async def serve(self) -> None:
        while True:
            prompt, reply = await self.inbox.get()
            reply.set_result(self.answer(prompt))

    def answer(self, prompt: str) -> list[Message]:
        self.count += 1
        user = Message(
            MessageType.USER, content=prompt, session_id=self.session_id, uuid=f"u{self.count}"
        )
        self.agent.receive(b"".join(self.handler.encode_query(prompt, {}).writes))
        data = b"".join(self.lines)
        self.lines.clear()
        messages = self.handler.handle_data(data)[0].messages
        self.store.record_messages(
            self.session_id, [m.to_dict(copy=False) for m in (user, *messages)]
        )
        return messages

    async def query(self, prompt: str) -> list[Message]:
        reply: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()
        await self.inbox.put((prompt, reply))
        return await reply


async def async_rate(queriers: Sequence[Callable[[], Any]], per_coroutine: int) -> float:
    """Queries per second: one coroutine per querier, ``per_coroutine`` queries each."""

    async def work(query: Callable[[], Any]) -> None:
        for _ in range(per_coroutine):
            await query()

    start = time.perf_counter()
    await asyncio.gather(*(work(q) for q in queriers))
    return len(queriers) * per_coroutine / (time.perf_counter() - start)


async def bench_async(per_coroutine: int) -> None:
    store = MemoryStore()
    baseline = [AsyncioSession(i, store) for i in range(SESSIONS)]
    try:
        with Runtime(store=":memory:") as rt:
            sessions = [await rt.astart_session(backend="local") for _ in range(SESSIONS)]
            ours_q = [lambda s=s: s.aquery("hi") for s in sessions]
            base_q = [lambda s=s: s.query("hi") for s in baseline]
            await async_rate(ours_q, 2)  # warm up
            await async_rate(base_q, 2)
            base, ours = [], []
            for _ in range(ROUNDS):
                base.append(await async_rate(base_q, per_coroutine))
                ours.append(await async_rate(ours_q, per_coroutine))
            report(
                f"throughput_aquery_{SESSIONS}_coroutines_{SESSIONS}_sessions",
                max(ours),
                max(base),
                "q/s",
                "baseline: per-session asyncio task + Queue doing the same query work "
                "(local agent, LocalHandler, MemoryStore); goal ratio >= 1.0",
            )
    finally:
        for s in baseline:
            s.task.cancel()


if __name__ == "__main__":
    scale = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    bench_threads(per_thread=250 * scale)
    asyncio.run(bench_async(per_coroutine=5 * scale))
