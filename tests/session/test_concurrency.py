"""Many sessions from many threads, and the asyncio API inside a running loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from beamagent import MessageType, Runtime


def test_100_sessions_20_queries_from_100_threads(tmp_path: Path) -> None:
    with Runtime(store=tmp_path / "sessions.db") as rt:
        sessions = [rt.start_session(backend="local") for _ in range(100)]
        failures: list[str] = []
        barrier = threading.Barrier(100)

        def work(index: int) -> None:
            session = sessions[index]
            barrier.wait(10)
            for q in range(20):
                prompt = f"s{index}-q{q}"
                messages = session.query(prompt, timeout=60)
                if messages[-1].content != prompt or messages[1].content != prompt:
                    failures.append(f"{prompt}: got {[m.content for m in messages]}")
                if any(m.session_id != session.session_id for m in messages):
                    failures.append(f"{prompt}: cross-delivered")

        threads = [threading.Thread(target=work, args=(i,)) for i in range(100)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert failures == []
        for index in (0, 57, 99):
            stored = rt._store.get_session_messages(sessions[index].session_id)
            users = [m["content"] for m in stored if m["type"] == "user"]
            assert users == [f"s{index}-q{q}" for q in range(20)]
            assert len(stored) == 80  # user + system + assistant + result, 20 times


def test_asyncio_api_never_blocks_the_loop() -> None:
    release = threading.Event()

    def reply(prompt: str, params: Mapping[str, Any]) -> Any:
        def slow() -> Iterator[str]:
            yield "thinking"
            release.wait(10)
            yield "answer"

        return slow() if prompt == "slow" else prompt

    async def main(rt: Runtime) -> None:
        session = await asyncio.get_running_loop().run_in_executor(
            None, lambda: rt.start_session(backend="local", reply=reply)
        )
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        ticking = asyncio.create_task(ticker())
        query = asyncio.create_task(session.aquery("slow", timeout=20))
        start = ticks
        while ticks < start + 25:  # the loop keeps running while the query is pending
            await asyncio.sleep(0.001)
        assert not query.done()
        release.set()
        messages = await query
        assert messages[-1].content == "thinkinganswer"
        streamed = [m async for m in session.astream("hello")]
        assert [m.type for m in streamed] == [
            MessageType.SYSTEM,
            MessageType.ASSISTANT,
            MessageType.RESULT,
        ]
        assert await session.ahealth() == "ready"
        assert await session.aset_model("local-large") == "local-large"
        assert (await session.asession_info())["model"] == "local-large"
        assert await session.asend_control("echo", {"n": 1}) == {"echo": {"n": 1}}
        ticking.cancel()
        await session.astop()

    try:
        with Runtime(store=":memory:") as rt:
            asyncio.run(main(rt))
    finally:
        release.set()


def test_many_aqueries_from_one_loop_each_get_their_own_answer() -> None:
    # Replies reach the loop in batches (one wake-up for all that arrive before it runs):
    # none may be lost, duplicated or given to another coroutine, loop after loop.
    async def main(rt: Runtime, sessions: list[Any], round_: int) -> list[str]:
        async def one(index: int) -> str:
            answers = []
            for q in range(5):
                prompt = f"r{round_}-s{index}-q{q}"
                messages = await sessions[index].aquery(prompt, timeout=60)
                assert messages[-1].content == prompt
                answers.append(messages[-1].content)
            return ",".join(answers)

        return await asyncio.gather(*(one(i) for i in range(len(sessions))))

    with Runtime(store=":memory:") as rt:
        sessions = [rt.start_session(backend="local") for _ in range(50)]
        for round_ in range(2):  # a second asyncio.run on this thread: a new loop
            got = asyncio.run(main(rt, sessions, round_))
            assert got == [",".join(f"r{round_}-s{i}-q{q}" for q in range(5)) for i in range(50)]


def _on_a_thread(fn: Any) -> Any:
    """``fn()`` on a new thread (a service's request thread, not the main one)."""
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # handed back to the test
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name="request-thread")
    thread.start()
    thread.join(60)
    assert outcome, "the call did not return"
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def test_a_query_from_a_request_thread_runs_the_idle_session_there() -> None:
    # Caller-runs (docs/supervisors.md): the session's handler, the local agent's reply
    # and the recording run on the asking thread, as the session; the main thread
    # hands the query to a worker.
    from beamagent.store import MemoryStore

    class TracingStore(MemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.threads: list[str] = []

        def record_messages(self, *args: Any, **kwargs: Any) -> list[int]:
            self.threads.append(threading.current_thread().name)
            return super().record_messages(*args, **kwargs)

    store = TracingStore()
    with Runtime(store=store) as rt:
        session = rt.start_session(backend="local")
        del store.threads[:]
        answer = _on_a_thread(lambda: session.query("one", timeout=30))
        assert answer[-1].content == "one"
        assert store.threads == ["request-thread"]
        session.query("two", timeout=30)
        assert store.threads[1].startswith("supervisors-worker-")
        stored = rt.get_session_messages(session)
        assert [m.content for m in stored if m.type is MessageType.USER] == ["one", "two"]


def test_a_session_killed_mid_query_from_a_request_thread_restarts_and_answers_again() -> None:
    import supervisors
    from beamagent.errors import SessionError

    entered, release = threading.Event(), threading.Event()

    def reply(prompt: str, params: Mapping[str, Any]) -> str:
        if prompt == "hold":
            entered.set()
            for _ in range(3000):  # short waits: a kill lands between two of them
                if release.wait(0.01):
                    break
        return f"answer to {prompt}"

    with Runtime(store=":memory:") as rt:
        session = rt.start_session(backend="local", reply=reply)
        first = rt._session_ref(session.session_id)
        outcome: list[BaseException] = []

        def held() -> None:
            try:
                session.query("hold", timeout=30)
            except SessionError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=held, name="request-thread")
        thread.start()
        assert entered.wait(10)
        assert supervisors.kill(first)
        thread.join(30)
        release.set()
        assert not thread.is_alive()
        assert len(outcome) == 1
        error = outcome[0]
        assert isinstance(error, SessionError)
        assert error.delivered is True  # the prompt had reached the backend: not re-sent
        # The supervisor restarted it; the next query (from a thread again) is answered.
        answer = _on_a_thread(lambda: session.query("after", timeout=30))
        assert answer[-1].content == "answer to after"
        assert rt._session_ref(session.session_id).actor_urn != first.actor_urn
