"""What is PostgreSQL's own in PostgresStore: URLs, errors, schema, reconnects, many writers.

The store contract itself runs on PostgreSQL with the other stores (``STORE_KINDS``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest

import supervisors
from beamagent import Runtime
from beamagent.errors import InvalidOption, StoreError
from beamagent.store import PostgresStore, open_store
from beamagent.store.postgres import SCHEMA_VERSION
from beamagent.testing.postgres import PostgresServer

psycopg = pytest.importorskip("psycopg")

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresStore]:
    opened = PostgresStore(postgres_url)
    yield opened
    opened.close()


def with_password(url: str, password: str) -> str:
    return url.replace("postgres@", f"postgres:{password}@", 1)


# --- opening ---------------------------------------------------------------------------------


def test_open_store_and_runtime_take_both_url_schemes(postgres_url: str) -> None:
    for url in (postgres_url, postgres_url.replace("postgresql://", "postgres://", 1)):
        opened = open_store(url)
        try:
            assert isinstance(opened, PostgresStore)
            opened.create_session("s1", "local")
        finally:
            opened.close()
    with Runtime(store=postgres_url, handle_signals=False) as rt:
        assert rt.get_session("s1").backend == "local"


def test_the_store_environment_variable_may_hold_a_url(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BEAMAGENT_STORE", postgres_url)
    opened = open_store()
    try:
        assert isinstance(opened, PostgresStore)
    finally:
        opened.close()


def test_without_psycopg_a_url_asks_for_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg raises ImportError
    with pytest.raises(InvalidOption, match=r"pip install 'beamagent\[postgres\]'"):
        open_store("postgresql://localhost/x")


def test_importing_beamagent_does_not_import_psycopg() -> None:
    code = "import sys, beamagent, beamagent.store; print('psycopg' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.stdout.strip() == "False"


# --- errors ----------------------------------------------------------------------------------


def test_an_unreachable_server_is_a_quick_store_error_without_the_password(
    tmp_path: Path,
) -> None:
    url = f"postgresql://alice:s3cret-pw@/beamagent?host={tmp_path}&port=6543"
    started = time.monotonic()
    with pytest.raises(StoreError) as caught:
        PostgresStore(url, connect_timeout=2)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert f"host={tmp_path}" in message
    assert "port=6543" in message
    assert "dbname=beamagent" in message
    assert "s3cret-pw" not in message
    assert "s3cret-pw" not in repr(caught.value.__cause__)


def test_a_tcp_port_nobody_listens_on_is_a_store_error() -> None:
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"host=127\.0\.0\.1 port=1 dbname=db"):
        PostgresStore("postgresql://u:hunter2@127.0.0.1:1/db", connect_timeout=2)
    assert time.monotonic() - started < 10


def test_server_errors_name_the_database_never_the_password(
    postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = with_password(postgres_server.url("no_such_db"), "pa55word")
    with pytest.raises(StoreError) as caught:
        PostgresStore(url)
    assert "dbname=no_such_db" in str(caught.value)
    assert "does not exist" in str(caught.value)
    assert "pa55word" not in str(caught.value)
    assert "pa55word" not in caplog.text


def test_a_failed_write_is_a_store_error_naming_the_server(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    opened = PostgresStore(with_password(postgres_url, "pa55word"))
    try:
        opened.create_session("s1", "local")
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("ALTER TABLE messages ADD CONSTRAINT no_x CHECK (type <> 'x')")
        with pytest.raises(StoreError, match="no_x") as caught:
            opened.record_message("s1", {"type": "x"})
        assert f"host={postgres_server.socket_dir}" in str(caught.value)
        assert "pa55word" not in str(caught.value)
        assert "pa55word" not in repr(opened)
        assert opened.get_session("s1").message_count == 0  # rolled back, store goes on
        assert opened.record_message("s1", {"type": "user"}) == 1
    finally:
        opened.close()
    with pytest.raises(StoreError, match="closed"):
        opened.get_session("s1")


# --- schema ----------------------------------------------------------------------------------


def version(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT version FROM beamagent_schema").fetchone()
    assert row is not None
    return int(row[0])


def test_schema_is_versioned_and_reopening_keeps_the_data(postgres_url: str) -> None:
    with PostgresStore(postgres_url) as first:
        first.create_session("s1", "local")
        first.record_message("s1", {"type": "user", "content": "hi"})
    assert version(postgres_url) == SCHEMA_VERSION
    with PostgresStore(postgres_url) as again:
        assert again.get_session_messages("s1") == [{"type": "user", "content": "hi"}]


def test_a_newer_schema_asks_for_an_upgrade(postgres_url: str) -> None:
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE beamagent_schema SET version = 99")
    with pytest.raises(StoreError, match=r"schema version 99.*upgrade beamagent"):
        PostgresStore(postgres_url)


def test_someone_elses_tables_are_never_touched(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE sessions (theirs int)")
    with pytest.raises(StoreError, match="not a beamagent session store"):
        PostgresStore(postgres_url)
    with psycopg.connect(postgres_url) as conn:
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'sessions'"
        ).fetchall()
    assert columns == [("theirs",)]


def test_concurrent_openers_migrate_once(postgres_url: str) -> None:
    errors: list[BaseException] = []
    stores: list[PostgresStore] = []

    def open_one() -> None:
        try:
            stores.append(PostgresStore(postgres_url, max_size=1))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for opened in stores:
        opened.close()
    assert not errors
    assert len(stores) == 4
    assert version(postgres_url) == SCHEMA_VERSION


# --- reconnecting ----------------------------------------------------------------------------


def test_recover_writer_reconnects_after_the_server_dropped_the_connections(
    store: PostgresStore, postgres_url: str
) -> None:
    store.create_session("s1", "local")
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    store.recover_writer()  # what a restarted store actor does first
    assert store.record_message("s1", {"type": "user"}) == 1
    assert store.get_session("s1").message_count == 1


# --- writers killed mid-statement -----------------------------------------------------------


class Killed(BaseException):
    """Stands for the kill ``supervisors.kill`` injects: no ``except Exception`` stops it."""


def _resumed(gen: Generator[Any, Any, Any], first: Any) -> Generator[Any, Any, Any]:
    """``gen``, already advanced to its first yield ``first``, for psycopg's wait to drive."""
    ready = yield first
    while True:
        try:
            state = gen.send(ready)
        except StopIteration as stop:
            return stop.value
        ready = yield state


def statement_sent(monkeypatch: pytest.MonkeyPatch, thread: str, *, kill: bool) -> threading.Event:
    """Set once the next statement of the thread named ``thread`` is on the wire, whole.

    With ``kill``, the thread then raises :class:`Killed` instead of reading the result:
    where ``supervisors.kill`` can land, since psycopg runs Python code between sending a
    statement and reading its result. Without, it goes on to read the result.
    """
    real = psycopg.Connection.wait
    sent = threading.Event()

    def wait(self: Any, gen: Any, *args: Any, **kwargs: Any) -> Any:
        if sent.is_set() or threading.current_thread().name != thread:
            return real(self, gen, *args, **kwargs)
        first = next(gen)  # psycopg sends the statement, then waits to read
        assert first == psycopg.waiting.Wait.R  # flushed whole: only the result is left
        sent.set()
        if kill:
            raise Killed("after the statement was sent")
        return real(self, _resumed(gen, first), *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "wait", wait)
    return sent


def in_thread(name: str, call: Callable[[], T]) -> tuple[Future[T], threading.Thread]:
    """``call()`` on a thread of its own, started; its outcome in the future."""
    outcome: Future[T] = Future()

    def run() -> None:
        try:
            outcome.set_result(call())
        except BaseException as exc:
            outcome.set_exception(exc)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return outcome, thread


def retry_in_thread(
    store: PostgresStore, batch: list[dict[str, Any]]
) -> tuple[Future[list[int]], threading.Thread]:
    """``record_messages(s1, batch, skip_recorded=True)`` on a thread of its own."""
    return in_thread("retry", lambda: store.record_messages("s1", batch, skip_recorded=True))


@pytest.fixture
def held_appends(store: PostgresStore, postgres_url: str) -> Iterator[Any]:
    """Session ``s1`` with one message, and a connection whose lock holds appends back.

    It holds ``threads`` in ``SHARE`` mode: an append's one statement (it may touch
    threads) waits for it before it takes the session row; a retry of messages without a
    thread does not need it. ``rollback()`` lets the appends go.
    """
    store.create_session("s1", "local")
    store.record_message("s1", {"type": "user", "content": "before", "uuid": "u0"})
    with psycopg.connect(postgres_url) as blocker:
        blocker.execute("LOCK TABLE threads IN SHARE MODE")
        yield blocker


def test_a_retry_waits_for_a_write_killed_after_its_statement_was_sent(
    store: PostgresStore, held_appends: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool closes the killed writer's connection, the server still runs its append.

    Held back here until the retry has begun: the retry must not read the session before
    the abandoned append is decided, or the batch is stored twice.
    """
    batch = [{"type": "user", "content": "x", "uuid": f"x{n}"} for n in "ab"]
    sent = statement_sent(monkeypatch, threading.current_thread().name, kill=True)
    with pytest.raises(Killed):
        store.record_messages("s1", batch)
    assert sent.is_set()
    assert len(store._abandoned) == 1  # the pid of the backend the pool cut off
    monkeypatch.undo()
    retried, retry = retry_in_thread(store, batch)
    with pytest.raises(TimeoutError):
        retried.result(timeout=0.5)  # waiting for the abandoned append's backend to end
    held_appends.rollback()
    assert retried.result(timeout=30) == [2, 3]  # the abandoned append committed them
    retry.join(10)
    assert [m["uuid"] for m in store.get_session_messages("s1")] == ["u0", "xa", "xb"]
    assert store.get_session("s1").message_count == 3
    assert store._writing == {}
    assert store._abandoned == set()  # the abandoned backend is forgotten once it ended


def test_a_retry_waits_for_a_statement_still_running_on_a_dead_writers_thread(
    store: PostgresStore, held_appends: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill landing while psycopg waits in C is only raised once the result is in.

    The writer's caller was answered ``ActorDeadError`` at once; the statement runs on and
    commits. A retry begun meanwhile waits for it rather than storing the batch again.
    """
    batch = [{"type": "user", "content": "x", "uuid": f"x{n}"} for n in "ab"]
    sent = statement_sent(monkeypatch, "writer", kill=False)
    written, writer = in_thread("writer", lambda: store.record_messages("s1", batch))
    assert sent.wait(30)
    retried, retry = retry_in_thread(store, batch)
    with pytest.raises(TimeoutError):
        retried.result(timeout=0.5)  # waiting for the writer's statement to end
    held_appends.rollback()
    assert written.result(timeout=30) == [2, 3]
    assert retried.result(timeout=30) == [2, 3]
    writer.join(10)
    retry.join(10)
    monkeypatch.undo()
    assert [m["uuid"] for m in store.get_session_messages("s1")] == ["u0", "xa", "xb"]


def test_recover_writer_waits_for_a_write_killed_after_its_statement_was_sent(
    store: PostgresStore, held_appends: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a restarted store actor does first: its retries then find the batch stored."""
    batch = [{"type": "user", "content": "x", "uuid": f"x{n}"} for n in "ab"]
    statement_sent(monkeypatch, threading.current_thread().name, kill=True)
    with pytest.raises(Killed):
        store.record_messages("s1", batch)
    monkeypatch.undo()
    recovered, recovery = in_thread("recover", store.recover_writer)
    with pytest.raises(TimeoutError):
        recovered.result(timeout=0.5)  # waiting for the abandoned append's backend to end
    held_appends.rollback()
    recovered.result(timeout=30)
    recovery.join(10)
    assert store._abandoned == set()
    assert store.record_messages("s1", batch, skip_recorded=True) == [2, 3]
    assert store.get_session("s1").message_count == 3


def test_an_abandoned_write_still_running_after_pool_timeout_fails_the_retry(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether it commits is not known yet: the retry is a StoreError, to try again later."""
    store = PostgresStore(postgres_url, pool_timeout=0.5)
    try:
        store.create_session("s1", "local")
        batch = [{"type": "user", "content": "x", "uuid": f"x{n}"} for n in "ab"]
        with psycopg.connect(postgres_url) as blocker:
            blocker.execute("LOCK TABLE threads IN SHARE MODE")
            statement_sent(monkeypatch, threading.current_thread().name, kill=True)
            with pytest.raises(Killed):
                store.record_messages("s1", batch)
            monkeypatch.undo()
            with pytest.raises(StoreError, match=r"abandoned mid-statement.*retry later"):
                store.record_messages("s1", batch, skip_recorded=True)
            blocker.rollback()
        assert store.record_messages("s1", batch, skip_recorded=True) == [1, 2]
        assert store.get_session("s1").message_count == 2
    finally:
        store.close()


# --- many writers ----------------------------------------------------------------------------


def test_writers_on_separate_pools_keep_one_session_in_order(postgres_url: str) -> None:
    """Four stores (as four processes would) append to the same sessions at once."""
    stores = [PostgresStore(postgres_url, max_size=2) for _ in range(4)]
    try:
        stores[0].create_session("shared", "local")
        stores[0].create_session("other", "local")
        errors: list[BaseException] = []

        def write(w: int) -> None:
            try:
                for i in range(40):
                    batch = [
                        {"type": "user", "content": f"{w}:{i}:{k}", "uuid": f"{w}-{i}-{k}"}
                        for k in range(2)
                    ]
                    seqs = stores[w].record_messages("shared", batch)
                    assert seqs[1] == seqs[0] + 1
                    if i % 8 == 0:  # a retry of an acknowledged batch adds nothing
                        assert (
                            stores[w].record_messages("shared", batch, skip_recorded=True) == seqs
                        )
                    stores[w].record_message("other", {"type": "user", "content": f"{w}:{i}"})
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors
        shared = stores[1].get_session_messages("shared")
        assert stores[2].get_session("shared").message_count == len(shared) == 4 * 40 * 2
        assert len({m["uuid"] for m in shared}) == len(shared)
        for k in range(0, len(shared), 2):  # each batch whole, in a row
            assert shared[k]["uuid"][:-1] == shared[k + 1]["uuid"][:-1]
        for w in range(4):  # each writer's batches in its own order
            mine = [m["content"] for m in shared if m["content"].startswith(f"{w}:")]
            assert mine == [f"{w}:{i}:{k}" for i in range(40) for k in range(2)]
        assert len(stores[3].get_session_messages("other")) == 160
    finally:
        for opened in stores:
            opened.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_four_runtime_processes_write_one_store_concurrently(postgres_url: str) -> None:
    """4 processes x 50 local sessions x 50 queries, each process its own Runtime.

    Every message is stored exactly once, and each session's history is its queries in
    order with contiguous seqs.
    """
    processes, sessions, queries = 4, 50, 50
    PostgresStore(postgres_url).close()  # migrate once before the writers start
    children = [
        subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("_postgres_writer_child.py")),
                postgres_url,
                str(p),
                str(sessions),
                str(queries),
                "5",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for p in range(processes)
    ]
    outputs = [child.communicate(timeout=240) for child in children]
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err.decode(errors="replace")[-2000:]
        assert json.loads(out) == {"queries": sessions * queries}
    with PostgresStore(postgres_url) as store, psycopg.connect(postgres_url) as conn:
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT uuid) FROM messages"
        ).fetchone()  # type: ignore[misc]
        assert total == distinct  # every message once
        gaps = conn.execute(
            "SELECT s.session_id FROM sessions s JOIN (SELECT session_id, count(*) AS n, "
            "min(seq) AS lo, max(seq) AS hi FROM messages GROUP BY session_id) m "
            "USING (session_id) WHERE NOT (m.lo = 1 AND m.hi = m.n AND m.n = s.message_count)"
        ).fetchall()
        assert gaps == []
        assert len(store.list_sessions()) == processes * sessions
        for p in range(processes):
            for n in range(sessions):
                history = store.get_session_messages(f"p{p}-s{n}", types="user")
                assert [m["content"] for m in history] == [f"{p}-{n}-{q}" for q in range(queries)]


# --- in a runtime ----------------------------------------------------------------------------


def test_runtime_history_is_in_postgres_and_a_store_actor_restart_is_invisible(
    postgres_url: str,
) -> None:
    with Runtime(store=postgres_url, handle_signals=False) as rt:
        session = rt.start_session(backend="local", session_id="pg1")
        session.query("one")
        supervisors.kill(rt.store_actor)
        thread = rt.thread_start(session)  # a store-actor write: waits for the restart
        session.query("two")
        rt.share_session(session)
        supervisors.kill(rt.store_actor)
        assert rt.summarize_session(session).message_count == len(rt.get_session_messages("pg1"))
        assert rt.thread_read(session, thread.thread_id).thread.message_count > 0
    with psycopg.connect(postgres_url) as conn:
        rows: list[Any] = conn.execute(
            "SELECT body FROM messages WHERE session_id = 'pg1' AND type = 'user' ORDER BY seq"
        ).fetchall()
    assert [json.loads(row[0])["content"] for row in rows] == ["one", "two"]
    with PostgresStore(postgres_url) as again:
        assert again.get_session("pg1").extra["share"]["status"] == "active"


class _StoreCaller(supervisors.Process):
    """Calls the store in its handler: ``(function, done)`` runs ``function()``."""

    def on_receive(self, message: Any) -> Any:
        function, done = message
        try:
            function()
        finally:
            done.set()


def test_a_writer_killed_while_it_waits_for_a_pooled_connection_loses_none(
    postgres_url: str,
) -> None:
    # psycopg_pool cleans up after a waiter failing with an Exception only: a process
    # killed while it waited in getconn was handed the next connection, lost for good.
    with PostgresStore(postgres_url, min_size=1, max_size=1, pool_timeout=10.0) as store:
        store.create_session("s1", "local")
        held = store._pool.getconn()  # the pool's only connection: the writer must wait
        entered = threading.Event()
        real_getconn = store._pool.getconn

        def getconn(*args: Any, **kwargs: Any) -> Any:
            entered.set()
            return real_getconn(*args, **kwargs)

        store._pool.getconn = getconn  # type: ignore[method-assign]
        writer = _StoreCaller.start()
        done = threading.Event()
        mon = supervisors.monitor(writer, watcher=None)
        writer.tell((lambda: store.record_message("s1", {"type": "user", "content": "x"}), done))
        assert entered.wait(10.0)
        assert supervisors.kill(writer)
        assert mon.wait(10.0).reason == supervisors.Killed()
        store._pool.putconn(held)  # handed to the killed writer, which must give it back
        assert done.wait(10.0)
        store._pool.getconn = real_getconn  # type: ignore[method-assign]
        # The connection is in the pool again: a read gets it well within pool_timeout.
        assert store.get_session("s1").session_id == "s1"
        assert store._pool.get_stats()["pool_size"] == 1
