"""Chaos: many sessions and graph runs under load while every kind of fault is injected.

200 ``local`` sessions and 10 concurrent graph runs work under continuous query load
from 8 threads, while a chaos thread injects faults in random order: session actors
killed, backends dying mid-answer, node actors killed, the registry killed, the store
actor killed, a session killed while it writes into the store (inside its transaction,
after its rows went in and before the commit: sessions record straight into the store),
and store writes failing (a full disk, for real: SQLite's page limit). Afterwards:

* every session that was not given up answers ``ready``;
* every acknowledged message is in the store exactly once, in order, in its own session;
* every graph run ended with exactly one terminal event;
* each prompt reached a backend at most once;
* nothing leaked (the suite's leak check: threads, actors, child processes; plus fds).

The figures go to stdout (``pytest -s``) for the closing note.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pykka
import pytest

import supervisors
from beamagent import LocalExit, MessageType, Runtime
from beamagent.errors import (
    BeamAgentError,
    QueryInProgress,
    QueryTimeout,
    SessionError,
    StoreError,
)
from beamagent.graph import FunctionServing, Job, LinearRouter, Node
from beamagent.graph.node import NodeActor
from beamagent.graph.run import TERMINAL_EVENTS
from beamagent.session.actor import SessionActor
from beamagent.store import SqliteStore
from beamagent.testing.faults import disk_full
from tests.reliability.conftest import scale

SESSIONS = 200
QUERY_THREADS = 8
CONCURRENT_RUNS = 10
FAULTS = scale(1000, 20000)
FAULT_KINDS = (
    "session_kill",
    "backend_death",
    "node_kill",
    "registry_kill",
    "store_kill",
    "writer_kill",
    "disk_full",
)


class ChaosStore(SqliteStore):
    """The SQLite store, able to kill the session that writes into it, mid-transaction."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.lock = threading.Lock()
        self.kill_orders = 0  # pending "kill the next writer" orders from the chaos thread
        self.killed_mid_write = 0

    def order_writer_kill(self) -> None:
        with self.lock:
            self.kill_orders += 1

    def _insert_messages(self, *args: Any) -> Any:  # runs inside the write transaction
        result = super()._insert_messages(*args)
        process = supervisors.current_process()
        if isinstance(process, SessionActor):
            with self.lock:
                kill = self.kill_orders > 0
                if kill:
                    self.kill_orders -= 1
                    self.killed_mid_write += 1
            if kill:  # the rows are in, the commit has not run: raises here, in this thread
                supervisors.kill(process.actor_ref)
        return result


class Backend:
    """The scripted agent: counts each prompt's deliveries; dies mid-answer on demand."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deliveries: Counter[str] = Counter()
        self.deaths = 0  # pending "die mid-answer" orders from the chaos thread

    def order_death(self) -> None:
        with self.lock:
            self.deaths += 1

    def reply(self, prompt: str, params: Mapping[str, Any]) -> Any:
        with self.lock:
            self.deliveries[prompt] += 1
            die = self.deaths > 0
            if die:
                self.deaths -= 1
        if die:
            return [f"answer to {prompt} (partial)", LocalExit(1)]
        return [f"answer to {prompt}"]


class Load:
    """What the query threads had acknowledged, per session, in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.unexpected: list[BaseException] = []
        self.queries = 0

    def ack(self, session_id: str, prompt: str, uuids: list[str]) -> None:
        with self.lock:
            self.acked[session_id].append((prompt, uuids))
            self.queries += 1

    def error(self, exc: BaseException) -> None:
        with self.lock:
            if isinstance(exc, BeamAgentError):
                self.errors[type(exc).__name__] += 1
            else:
                self.unexpected.append(exc)


def _kill(ref: pykka.ActorRef[Any] | None) -> bool:
    if ref is None:
        return False
    mon = supervisors.monitor(ref, watcher=None)
    killed = supervisors.kill(ref)
    mon.wait(10)
    return killed


def _query_loop(rt: Runtime, ids: list[str], load: Load, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    n = 0
    while not stop.is_set():
        n += 1
        session_id = rng.choice(ids)
        prompt = f"q{seed}-{n}@{session_id}"
        try:
            messages = rt.session(session_id).query(prompt, timeout=10)
        except (SessionError, StoreError, QueryTimeout, QueryInProgress) as exc:
            load.error(exc)
            continue
        except BaseException as exc:
            load.error(exc)
            continue
        answers = [m for m in messages if m.type is MessageType.ASSISTANT]
        if not answers or answers[0].content != f"answer to {prompt}":
            load.unexpected.append(AssertionError(f"cross-delivery: {prompt} -> {messages}"))
        load.ack(session_id, prompt, [m.uuid for m in messages if m.uuid])


def _graph_job() -> Job:
    steps = LinearRouter(["a", "b", "c"])

    def work(message: Any) -> str:
        threading.Event().wait(0.002)  # a little work, so kills land mid-visit
        return f"{message.node_id}:{message.input}"

    return Job(
        "chaos",
        [Node(n, serving=FunctionServing(work), router=steps) for n in ("a", "b", "c")],
        start="a",
    )


def _runs_loop(rt: Runtime, stop: threading.Event, outcomes: list[tuple[str, int]]) -> None:
    job = _graph_job()
    active: list[Any] = []
    serial = 0
    while not stop.is_set() or active:
        while not stop.is_set() and len(active) < CONCURRENT_RUNS:
            serial += 1
            try:
                active.append(rt.run_job(job, f"input {serial}", durable=serial % 2 == 0))
            except BeamAgentError:
                continue
        run = active.pop(0)
        with contextlib.suppress(BeamAgentError):
            run.result(60, raise_error=False)
        terminal = [e for e in run.events(timeout=10) if e.kind in TERMINAL_EVENTS]
        outcomes.append((run.run_id, len(terminal)))


def _inject(
    rt: Runtime,
    backend: Backend,
    store: ChaosStore,
    rng: random.Random,
    kind: str,
    ids: list[str],
) -> str:
    if kind == "session_kill":
        return (
            "session_kill" if _kill(supervisors.whereis(rt._session_name(rng.choice(ids)))) else ""
        )
    if kind == "backend_death":
        backend.order_death()
        return kind
    if kind == "node_kill":
        nodes = pykka.ActorRegistry.get_by_class(NodeActor)
        return kind if nodes and _kill(rng.choice(nodes)) else ""
    if kind == "registry_kill":
        return kind if _kill(supervisors.whereis(rt._names["registry"])) else ""
    if kind == "store_kill":
        ref = supervisors.whereis(rt._names["store"])
        process = supervisors.lookup(ref) if ref is not None else None
        busy = process is not None and process._in_user_code
        if not _kill(ref):
            return ""
        return "store_kill_mid_write" if busy else kind
    if kind == "writer_kill":
        store.order_writer_kill()  # the next session to write dies inside its transaction
        return kind
    if kind == "disk_full":
        with disk_full(rt):
            threading.Event().wait(rng.uniform(0.005, 0.03))
        return kind
    raise AssertionError(kind)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def chaos_runtime(tmp_path: Path) -> Iterator[tuple[Runtime, Backend, ChaosStore]]:
    backend = Backend()
    store = ChaosStore(tmp_path / "chaos.db")
    try:
        with Runtime(
            store=store,
            session_defaults={"error_linger": 0, "drain_timeout": 1.0},
        ) as rt:
            yield rt, backend, store
    finally:
        store.close()


@pytest.mark.timeout(600)
def test_chaos(chaos_runtime: tuple[Runtime, Backend, ChaosStore]) -> None:
    rt, backend, store = chaos_runtime
    fds_before = _open_fds()
    ids = [
        rt.start_session(backend="local", reply=backend.reply).session_id for _ in range(SESSIONS)
    ]
    load = Load()
    stop = threading.Event()
    outcomes: list[tuple[str, int]] = []
    workers = [
        threading.Thread(target=_query_loop, args=(rt, ids, load, stop, i), name=f"load-{i}")
        for i in range(QUERY_THREADS)
    ]
    runner = threading.Thread(target=_runs_loop, args=(rt, stop, outcomes), name="runs")
    for thread in [*workers, runner]:
        thread.start()
    rng = random.Random(20261202)
    injected: Counter[str] = Counter()
    started = time.monotonic()
    try:
        while sum(injected.values()) < FAULTS:
            kind = rng.choice(FAULT_KINDS)
            done = _inject(rt, backend, store, rng, kind, ids)
            if done:
                injected[done] += 1
            threading.Event().wait(rng.uniform(0.005, 0.03))  # ~50 faults/s: load gets done
    finally:
        stop.set()
        for thread in [*workers, runner]:
            thread.join(120)
        with store.lock:
            store.kill_orders = 0  # the checks below record nothing that should die
    elapsed = time.monotonic() - started
    assert not any(t.is_alive() for t in [*workers, runner]), "load threads did not finish"
    assert load.unexpected == [], load.unexpected[:5]
    assert load.queries >= 1000, f"only {load.queries} queries got through: the check is vacuous"
    assert store.killed_mid_write > 0, "no session was killed inside a store write"

    # Every session not given up is (or becomes) ready.
    given_up = []
    for session_id in ids:
        session = rt.session(session_id) if session_id in rt.live_sessions() else None
        if session is None:
            given_up.append(session_id)
            continue
        deadline = time.monotonic() + 20
        while session.health() != "ready" and time.monotonic() < deadline:
            session.session_info()  # waits for a restarting session
        assert session.health() == "ready", session_id

    # Every acknowledged message is stored exactly once, in order, in its own session.
    checked = 0
    for session_id, acked in load.acked.items():
        stored = rt.get_session_messages(session_id)
        position = {m.uuid: i for i, m in enumerate(stored) if m.uuid}
        counts = Counter(m.uuid for m in stored if m.uuid)
        prompts = Counter(m.content for m in stored if m.type is MessageType.USER)
        # Order holds per load thread (its queries happen one after the other). Across
        # threads the acknowledgements are no order: a thread can be descheduled between
        # getting its answer and recording it, while another one's whole query runs.
        last: dict[str, int] = defaultdict(lambda: -1)
        for prompt, uuids in acked:
            assert prompts[prompt] == 1, (session_id, prompt, prompts[prompt])
            thread = prompt.split("-", 1)[0]  # q<seed>
            for uuid in uuids:
                assert counts[uuid] == 1, (session_id, uuid)
                assert position[uuid] > last[thread], (session_id, "out of order")
                last[thread] = position[uuid]
                checked += 1
        assert max(prompts.values(), default=0) <= 1, (session_id, "a prompt stored twice")
        for message in stored:
            if message.type is MessageType.USER:
                assert isinstance(message.content, str)
                assert message.content.endswith(f"@{session_id}"), "cross-session message"

    # Each prompt reached a backend at most once.
    doubled = {p: n for p, n in backend.deliveries.items() if n > 1}
    assert doubled == {}

    # Every run ended with exactly one terminal event.
    assert outcomes
    assert all(count == 1 for _run, count in outcomes), [o for o in outcomes if o[1] != 1][:5]

    restarts = sum(c.restarts for c in rt.sessions_supervisor.which_children())
    print(
        f"\nchaos: {sum(injected.values())} faults in {elapsed:.1f} s: {dict(injected)}; "
        f"queries acknowledged={load.queries}, errors={dict(load.errors)}; "
        f"messages checked={checked}, lost=0, duplicated=0, cross-delivered=0; "
        f"double deliveries={len(doubled)}; session restarts={restarts}; "
        f"sessions killed inside a store transaction={store.killed_mid_write}; "
        f"given up={len(given_up)}; runs={len(outcomes)}, all with one terminal event"
    )
    rt.stop()
    store.close()
    assert _open_fds() <= fds_before + 2  # sqlite's reader connections are closed with the store
