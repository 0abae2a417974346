"""A kill landing anywhere in a write never wedges the SQLite store.

``supervisors.kill`` raises an exception in the store actor's thread at its next
bytecode, so a write can stop between any two steps: after ``BEGIN``, inside the body,
around ``COMMIT``, inside the rollback of a failed write, or before the lock is released.
Each test stops a write at one of those points and proves that the next write works and
that the history is whole (every committed message, no half transaction).
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pykka
import pytest
from pykka.messages import ProxyCall

import supervisors
from beamagent.store import MemoryStore, SessionStore, SqliteStore
from beamagent.store import memory as memory_module
from beamagent.store.actor import StoreActor
from beamagent.store.recorder import StoreRecorder
from tests.store._stores import open_test_store


class Killed(BaseException):
    """Stands for the kill ``supervisors.kill`` injects: no ``except Exception`` stops it."""


class FaultyConnection:
    """The store's writer connection, raising :class:`Killed` at chosen statements, once.

    A fault is ``(when, keyword)``: ``("after", "BEGIN")`` raises once ``BEGIN IMMEDIATE``
    has run, ``("before", "ROLLBACK")`` before a ``ROLLBACK`` runs.
    """

    def __init__(self, conn: sqlite3.Connection, faults: set[tuple[str, str]]) -> None:
        self._conn = conn
        self.armed = set(faults)

    def _maybe_kill(self, when: str, sql: str) -> None:
        fault = (when, sql.split(None, 1)[0].upper())
        if fault in self.armed:
            self.armed.discard(fault)
            raise Killed(f"{when} {sql}")

    def execute(self, sql: str, *params: Any) -> sqlite3.Cursor:
        self._maybe_kill("before", sql)
        cursor = self._conn.execute(sql, *params)
        self._maybe_kill("after", sql)
        return cursor

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        self._maybe_kill("before", sql)
        cursor = self._conn.executemany(sql, rows)
        self._maybe_kill("after", sql)
        return cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "store.db")
    opened.create_session("s1", "local")
    opened.record_message("s1", {"type": "user", "content": "before", "uuid": "u0"})
    yield opened
    opened.close()


def assert_whole(store: SqliteStore, contents: list[str]) -> None:
    """The history is exactly ``contents``, with contiguous seqs and a matching count."""
    messages = store.get_session_messages("s1", include_hidden=True)
    assert [m["content"] for m in messages] == contents
    assert store.get_session("s1").message_count == len(contents)


FAULTS = {
    "after BEGIN": {("after", "BEGIN")},
    "before the insert": {("before", "INSERT")},
    "after the last statement": {("after", "UPDATE")},
    "before COMMIT": {("before", "COMMIT")},
    "after BEGIN, then in the rollback": {("after", "BEGIN"), ("before", "ROLLBACK")},
    "in the body, then in the rollback": {("before", "INSERT"), ("before", "ROLLBACK")},
    "before COMMIT, then in the rollback": {("before", "COMMIT"), ("before", "ROLLBACK")},
}


@pytest.mark.parametrize("faults", FAULTS.values(), ids=FAULTS.keys())
def test_a_write_killed_before_commit_leaves_nothing(
    store: SqliteStore, faults: set[tuple[str, str]]
) -> None:
    faulty = FaultyConnection(store._writer, faults)
    store._writer = faulty  # type: ignore[assignment]
    with pytest.raises(Killed):
        store.record_message("s1", {"type": "user", "content": "killed"})
    assert faulty.armed == set()  # every fault fired
    assert store.record_message("s1", {"type": "user", "content": "next"}) == 2
    store.create_session("s2", "local")  # any other write works too
    assert_whole(store, ["before", "next"])


def test_a_write_killed_after_commit_is_kept(store: SqliteStore) -> None:
    store._writer = FaultyConnection(store._writer, {("after", "COMMIT")})  # type: ignore[assignment]
    with pytest.raises(Killed):
        store.record_message("s1", {"type": "user", "content": "committed"})
    assert store.record_message("s1", {"type": "user", "content": "next"}) == 3
    assert_whole(store, ["before", "committed", "next"])


class LeakyLock:
    """Wraps the store's write lock; ``release`` is killed (the lock stays held) once."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self.leak = True

    def acquire(self) -> Any:
        return self._lock.acquire()

    def release(self) -> None:
        if self.leak:
            self.leak = False
            raise Killed("before the lock was released")
        self._lock.release()


def test_a_lock_leaked_by_a_dead_thread_is_taken_over(store: SqliteStore) -> None:
    store._write_lock = LeakyLock(store._write_lock)  # type: ignore[assignment]
    outcome: Future[BaseException | None] = Future()

    def killed_writer() -> None:
        try:
            store.record_message("s1", {"type": "user", "content": "committed"})
        except BaseException as exc:  # the thread ends here, holding the lock
            outcome.set_result(exc)
        else:
            outcome.set_result(None)

    writer = threading.Thread(target=killed_writer)
    writer.start()
    writer.join(timeout=10)
    assert isinstance(outcome.result(timeout=10), Killed)
    assert not writer.is_alive()
    assert store.record_message("s1", {"type": "user", "content": "next"}) == 3
    assert_whole(store, ["before", "committed", "next"])


def test_a_lock_leaked_by_the_same_thread_is_taken_over(store: SqliteStore) -> None:
    store._write_lock = LeakyLock(store._write_lock)  # type: ignore[assignment]
    with pytest.raises(Killed):
        store.record_message("s1", {"type": "user", "content": "committed"})
    assert store.record_message("s1", {"type": "user", "content": "next"}) == 3
    assert_whole(store, ["before", "committed", "next"])


def test_a_dead_holder_between_acquire_and_begin(store: SqliteStore) -> None:
    # The kill landed right after the lock was taken, before any statement.
    holder = threading.Thread(target=store._write_lock.acquire)
    holder.start()
    holder.join(timeout=10)
    assert store.record_message("s1", {"type": "user", "content": "next"}) == 2
    store.close()  # close takes the lock too


def test_a_live_holder_is_waited_for_not_taken_over(store: SqliteStore) -> None:
    with store._write() as conn:
        conn.execute("UPDATE sessions SET model = 'held' WHERE session_id = 's1'")
        waiting: Future[int] = Future()

        def write() -> None:
            try:
                waiting.set_result(store.record_message("s1", {"type": "user", "content": "x"}))
            except BaseException as exc:
                waiting.set_exception(exc)

        writer = threading.Thread(target=write)
        writer.start()
        with pytest.raises(TimeoutError):
            waiting.result(timeout=0.3)  # still waiting: the holder is alive
    assert waiting.result(timeout=10) == 2
    writer.join(timeout=10)
    assert store.get_session("s1").model == "held"


def test_recover_writer_rolls_back_a_transaction_left_open(store: SqliteStore) -> None:
    conn = store._writer
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE sessions SET message_count = 99 WHERE session_id = 's1'")
    store.recover_writer()
    assert not conn.in_transaction
    assert store._writer is conn  # a rollback was enough
    assert store.get_session("s1").message_count == 1
    assert store.record_message("s1", {"type": "user", "content": "next"}) == 2


def test_recover_writer_replaces_a_connection_that_cannot_roll_back(
    store: SqliteStore,
) -> None:
    class Broken(FaultyConnection):
        def execute(self, sql: str, *params: Any) -> sqlite3.Cursor:
            if sql == "ROLLBACK":
                raise sqlite3.OperationalError("disk I/O error")
            return super().execute(sql, *params)

    real = store._writer
    real.execute("BEGIN IMMEDIATE")
    real.execute("UPDATE sessions SET message_count = 99 WHERE session_id = 's1'")
    store._writer = Broken(real, set())  # type: ignore[assignment]
    store.recover_writer()
    fresh = store._writer
    assert isinstance(fresh, sqlite3.Connection)
    assert fresh is not real
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        real.execute("SELECT 1")  # closing it dropped the open transaction
    assert fresh.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL, as configured
    assert fresh.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.record_message("s1", {"type": "user", "content": "next"}) == 2
    assert_whole(store, ["before", "next"])


def test_a_restarted_store_actor_starts_clean(store: SqliteStore) -> None:
    store._writer.execute("BEGIN IMMEDIATE")  # what a killed writer left
    store._writer.execute("UPDATE sessions SET message_count = 99 WHERE session_id = 's1'")
    ref = StoreActor.start(store)
    try:
        seqs = record(ref, [{"type": "user", "content": "x"}]).get(timeout=30)
        assert seqs == [2]
    finally:
        ref.stop()
    assert_whole(store, ["before", "x"])


def record(ref: pykka.ActorRef[Any], batch: list[dict[str, Any]], **kwargs: Any) -> Any:
    """``record_messages`` through the store actor, without waiting for the answer."""
    call = ProxyCall(("write",), ("record_messages", ("s1", batch), kwargs), {})
    return ref.ask(call, block=False)


@pytest.fixture(params=["sqlite", "memory", "postgres"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionStore]:
    opened = open_test_store(request, tmp_path)
    opened.create_session("s1", "local")
    opened.record_message("s1", {"type": "user", "content": "before", "uuid": "u0"})
    yield opened
    opened.close()


@pytest.mark.slow
def test_killing_the_store_actor_mid_write_never_wedges_the_store(any_store: SessionStore) -> None:
    """Kill the store actor while it writes, 25 times; retry what got no answer.

    A caller whose call died with the actor cannot know whether its batch committed, so it
    retries with ``skip_recorded=True`` on the restarted actor: in the end every batch is
    stored exactly once, and everything that was acknowledged is where it was said to be.
    """
    acknowledged: dict[int, str] = {}
    unanswered: list[list[dict[str, Any]]] = []
    expected: list[str] = ["before"]
    for round_ in range(25):
        ref = StoreActor.start(any_store)
        retries = [(batch, record(ref, batch, skip_recorded=True)) for batch in unanswered]
        futures = list(retries)
        for i in range(60):
            content = f"{round_}:{i}"
            batch = [{"type": "user", "content": content, "uuid": f"{content}{n}"} for n in "ab"]
            futures.append((batch, record(ref, batch)))
        futures[len(retries) + round_ % 7][1].get(timeout=30)  # it is writing now
        supervisors.kill(ref)
        unanswered = []
        for batch, future in futures:
            try:
                seqs = future.get(timeout=30)
            except pykka.ActorDeadError:
                unanswered.append(batch)
                continue
            acknowledged.update(dict.fromkeys(seqs, batch[0]["content"]))
        expected.extend(batch[0]["content"] for batch, _ in futures[len(retries) :])
    ref = StoreActor.start(any_store)
    try:
        for batch in unanswered:
            record(ref, batch, skip_recorded=True).get(timeout=30)
        final = record(ref, [{"type": "user", "content": "end"}]).get(timeout=30)
    finally:
        ref.stop()
    messages = any_store.get_session_messages("s1", include_hidden=True)
    assert any_store.get_session("s1").message_count == len(messages) == final[0]
    for seq, content in acknowledged.items():
        assert messages[seq - 1]["content"] == content  # acknowledged means stored there
    # Every batch is stored exactly once, whole: its two messages in a row.
    body = messages[1:-1]
    pairs = [(body[i], body[i + 1]) for i in range(0, len(body), 2)]
    assert all(
        a["content"] == b["content"] and a["uuid"][-1] + b["uuid"][-1] == "ab" for a, b in pairs
    )
    assert sorted(a["content"] for a, _ in pairs) == sorted(expected[1:])


def test_a_memory_store_append_killed_midway_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = MemoryStore()
    store.create_session("s1", "local")
    store.record_message("s1", {"type": "user", "content": "before"})
    real = memory_module._Message
    made: list[object] = []

    def killed_on_the_second(*args: Any) -> Any:
        if len(made) == 1:
            raise Killed("in the middle of the batch")
        made.append(real(*args))
        return made[-1]

    monkeypatch.setattr(memory_module, "_Message", killed_on_the_second)
    with pytest.raises(Killed):
        store.record_messages("s1", [{"type": "user", "content": str(i)} for i in range(3)])
    monkeypatch.undo()
    assert made  # the kill landed after part of the batch was built
    assert [m["content"] for m in store.get_session_messages("s1")] == ["before"]
    assert store.get_session("s1").message_count == 1
    assert store.record_message("s1", {"type": "user", "content": "next"}) == 2


class DirectWriter(supervisors.Process):
    """Records as a session does: straight into the store, on its own thread."""

    def __init__(self, store: SessionStore) -> None:
        super().__init__()
        self.recorder = StoreRecorder(store)

    def record_all(self, batches: list[list[dict[str, Any]]]) -> None:
        for batch in batches:
            self.recorder.record("s1", batch)

    def record_until_killed(
        self,
        name: str,
        done: list[str],
        busy: threading.Event,
        stop: threading.Event,
        unwound: threading.Event,
    ) -> None:
        # ``stop`` only matters if the kill is lost: it can land in a gc callback (hypothesis
        # installs one), which swallows it, and this handler would then write for ever.
        try:
            for i in itertools.count():
                if stop.is_set():
                    return
                content = f"{name}:{i}"
                self.recorder.record("s1", _batch(content))
                done.append(content)  # the store answered: this one is committed
                if i == 2:
                    busy.set()
        finally:
            unwound.set()  # the kill has gone through every frame: ``done`` is final


def _batch(content: str) -> list[dict[str, Any]]:
    return [{"type": "user", "content": content, "uuid": f"{content}{n}"} for n in "ab"]


# A kill landing in a GC or weakref callback is reported and ignored by CPython (the
# scheduler's monitor interrupts the handler again): expected under this many kills.
@pytest.mark.filterwarnings(
    "ignore:(?s)Exception ignored in.*_ProcessKilled:pytest.PytestUnraisableExceptionWarning"
)
@pytest.mark.slow
@pytest.mark.parametrize("dedicated", [False, True], ids=["scheduled", "dedicated"])
def test_killing_direct_writers_mid_write_never_wedges_the_store(
    any_store: SessionStore, dedicated: bool
) -> None:
    """Four writers record at once, straight into the store; one is killed, 30 times.

    What a session killed while it records leaves: a write that stopped anywhere, maybe
    holding the write lock, maybe with a transaction open. The other writers and the next
    ones go on; every acknowledged batch is stored once, whole; the one the victim was
    writing is stored whole or not at all (its session died with it and delivered nothing).
    Writers on the shared scheduler (as sessions are: the worker thread outlives the
    killed writer) and on threads of their own.
    """

    class Writer(DirectWriter):
        dedicated_thread = dedicated

    writers = [Writer.start(any_store) for _ in range(4)]
    in_lock = 0  # kills that found the victim holding the SQLite store's write lock
    acknowledged: list[str] = []
    cut_off: list[str] = []
    try:
        for round_ in range(30):
            victim = round_ % 4
            done: list[str] = []
            busy, stop, unwound = threading.Event(), threading.Event(), threading.Event()
            args = (f"{round_}:victim", done, busy, stop, unwound)
            call = ProxyCall(("record_until_killed",), args, {})
            endless = writers[victim].ask(call, block=False)
            others = []
            for w in range(4):
                if w != victim:
                    contents = [f"{round_}:{w}:{i}" for i in range(10)]
                    batches = [_batch(c) for c in contents]
                    call = ProxyCall(("record_all",), (batches,), {})
                    others.append((contents, writers[w].ask(call, block=False)))
            assert busy.wait(30)
            process = supervisors.lookup(writers[victim])
            if isinstance(any_store, SqliteStore):
                in_lock += any_store._write_lock._holder.get("owner") is process
            supervisors.kill(writers[victim])
            with pytest.raises(pykka.ActorDeadError):
                endless.get(timeout=30)
            stop.set()
            assert unwound.wait(30)  # dead (or, its kill lost, stopped): ``done`` is final
            acknowledged.extend(done)
            cut_off.append(f"{round_}:victim:{len(done)}")  # in flight when it died
            for contents, future in others:
                future.get(timeout=30)
                acknowledged.extend(contents)
            writers[victim] = Writer.start(any_store)
        # What a new writer does first: on PostgreSQL, wait until the statements the
        # victims left on the wire have run (one may still be waiting for the row lock,
        # and would land after "end", or between the two reads below).
        any_store.recover_writer()
        writers[0].ask(ProxyCall(("record_all",), ([[{"type": "user", "content": "end"}]],), {}))
    finally:
        for ref in writers:
            ref.stop()
    messages = any_store.get_session_messages("s1", include_hidden=True)
    assert any_store.get_session("s1").message_count == len(messages)
    assert messages[-1]["content"] == "end"
    body = messages[1:-1]
    pairs = [(body[i], body[i + 1]) for i in range(0, len(body), 2)]
    assert all(  # whole batches only
        a["content"] == b["content"] and a["uuid"][-1] + b["uuid"][-1] == "ab" for a, b in pairs
    )
    stored = [a["content"] for a, _ in pairs]
    assert len(stored) == len(set(stored))  # none twice
    assert set(acknowledged) <= set(stored) <= set(acknowledged) | set(cut_off)
    committed = len(set(stored) & set(cut_off))
    print(f"\n{committed} of 30 cut-off batches committed; {in_lock} kills inside the lock")
