"""Sessions that become ready are indexed by the registry a batch at a time (ReadyQueue)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest
from pykka.messages import ProxyCall

import supervisors
from beamagent import Runtime
from beamagent.routing.registry import READY_BATCH, ReadyQueue, RoutingRegistry


def _ask(ref: pykka.ActorRef[Any], method: str, *args: Any) -> Any:
    return ref.ask(ProxyCall((method,), args, {}), timeout=10)


class _Notifying(RoutingRegistry):
    """A registry that says when it indexed the queue."""

    def __init__(self, indexed: threading.Event, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.indexed = indexed

    def _index_ready(self) -> None:
        super()._index_ready()
        self.indexed.set()


@pytest.fixture
def registry() -> Iterator[tuple[pykka.ActorRef[Any], ReadyQueue, threading.Event]]:
    name = ("test-ready-queue", "registry")
    queue = ReadyQueue(name)
    indexed = threading.Event()
    with supervisors.spawn_options(name=name):
        ref = _Notifying.start(indexed, ready=queue)
    indexed.clear()  # on_start indexes what is queued (nothing yet)
    try:
        yield ref, queue, indexed
    finally:
        ref.stop()


def test_a_call_sees_every_session_queued_before_it(
    registry: tuple[pykka.ActorRef[Any], ReadyQueue, threading.Event],
) -> None:
    ref, queue, indexed = registry
    for i in range(10):
        queue.add(f"s{i}", "local", f"urn:{i}")
    assert len(queue) == 10
    assert not indexed.is_set()
    assert _ask(ref, "session_backend", "s7") == "local"
    assert len(queue) == 0
    assert _ask(ref, "live_sessions") == {f"s{i}": "local" for i in range(10)}


def test_an_unregister_never_overtakes_the_indexing_of_its_session(
    registry: tuple[pykka.ActorRef[Any], ReadyQueue, threading.Event],
) -> None:
    ref, queue, _indexed = registry
    queue.add("s1", "local", "urn:1")
    ref.tell(ProxyCall(("unregister_session",), ("s1", "urn:1"), {}))
    assert _ask(ref, "session_backend", "s1") is None
    assert _ask(ref, "live_sessions") == {}


def test_a_full_batch_tells_the_registry(
    registry: tuple[pykka.ActorRef[Any], ReadyQueue, threading.Event],
) -> None:
    ref, queue, indexed = registry
    for i in range(READY_BATCH - 1):
        queue.add(f"s{i}", "local", None)
    assert len(queue) == READY_BATCH - 1
    assert not indexed.is_set()
    queue.add("last", "local", None)  # the batch is full: the registry is told
    assert indexed.wait(10)
    assert len(queue) == 0
    assert len(_ask(ref, "live_sessions")) == READY_BATCH


def test_a_queue_whose_registry_is_gone_keeps_its_sessions_for_the_next() -> None:
    name = ("test-ready-queue", "gone")
    queue = ReadyQueue(name)
    for i in range(READY_BATCH + 5):  # a full batch, with nobody to tell
        queue.add(f"s{i}", "local", None)
    assert len(queue) == READY_BATCH + 5
    indexed = threading.Event()
    with supervisors.spawn_options(name=name):
        ref = _Notifying.start(indexed, ready=queue)
    try:
        assert indexed.wait(10)  # on start
        assert len(_ask(ref, "live_sessions")) == READY_BATCH + 5
    finally:
        ref.stop()


def test_sessions_started_while_the_registry_is_killed_are_all_indexed() -> None:
    with Runtime(store=":memory:") as rt:
        started: list[str] = []
        errors: list[BaseException] = []
        done = threading.Event()

        def start() -> None:
            while not done.is_set():
                try:
                    started.append(rt.start_session(backend="local").session_id)
                except BaseException as exc:
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=start) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(10):
                ref = rt.registry
                mon = supervisors.monitor(ref, watcher=None)
                supervisors.kill(ref)
                assert mon.wait(10) is not None
                rt.ensure_tables()  # a call that waits for the restarted registry
        finally:
            done.set()
            for thread in threads:
                thread.join(30)
        assert errors == []
        assert len(started) > READY_BATCH  # full batches were told while it restarted
        assert rt._registry_call("live_sessions") == dict.fromkeys(started, "local")
