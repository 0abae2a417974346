"""SqliteStore specifics: file safety, WAL, migrations, query plans, threads, crashes."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from beamagent.errors import InvalidOption, StoreError
from beamagent.store import SqliteStore
from beamagent.store import sqlite as sqlite_module
from beamagent.store.sqlite import APPLICATION_ID, SCHEMA_VERSION, messages_query


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "sessions.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(db_path)
    yield opened
    opened.close()


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the file -----------------------------------------------------------------------------


def test_files_are_private_whatever_the_umask(db_path: Path) -> None:
    old = os.umask(0)
    try:
        store = SqliteStore(db_path)
        store.create_session("s1", "local")
        store.record_message("s1", {"type": "user", "content": "secret"})
        side_files = [Path(f"{db_path}-wal"), Path(f"{db_path}-shm")]
        assert all(p.exists() for p in side_files)
        assert mode(db_path) == 0o600
        assert [mode(p) for p in side_files] == [0o600, 0o600]
        store.close()
    finally:
        os.umask(old)


def test_wal_and_pragmas(store: SqliteStore, db_path: Path) -> None:
    assert store.path == db_path
    conn = raw(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()
    writer = store._writer
    assert writer.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert writer.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_delete_cascades_to_messages_and_threads(store: SqliteStore, db_path: Path) -> None:
    store.create_session("s1", "local")
    store.thread_start("s1")
    store.record_message("s1", {"type": "user"})
    store.delete_session("s1")
    conn = raw(db_path)
    try:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM threads").fetchone()[0] == 0
    finally:
        conn.close()


@pytest.mark.parametrize("spec", [":memory:", "", "file:x.db?mode=memory"])
def test_memory_and_uri_paths_are_refused(spec: str) -> None:
    with pytest.raises(InvalidOption, match="MemoryStore"):
        SqliteStore(spec)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=str(tmp_path)):
        SqliteStore(tmp_path)


def test_data_survives_reopening_and_migration_is_idempotent(db_path: Path) -> None:
    with SqliteStore(db_path) as store:
        store.create_session("s1", "local", extra={"k": 1})
        store.record_messages("s1", [{"type": "user", "content": str(i)} for i in range(3)])
    conn = raw(db_path)
    schema = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    conn.close()
    for reopened in range(2):
        with SqliteStore(db_path) as store:
            assert store.get_session("s1").message_count == 3 + reopened
            assert store.record_message("s1", {"type": "assistant"}) == 4 + reopened
    conn = raw(db_path)
    try:
        assert conn.execute(
            "SELECT type, name, sql FROM sqlite_master ORDER BY name"
        ).fetchall() == (schema)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_migrations_upgrade_in_order_and_roll_back_on_failure(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    SqliteStore(db_path).close()
    released = sqlite_module.MIGRATIONS
    broken = (*released, ("ALTER TABLE sessions ADD COLUMN tag TEXT", "BOGUS"))
    monkeypatch.setattr(sqlite_module, "MIGRATIONS", broken)
    monkeypatch.setattr(sqlite_module, "SCHEMA_VERSION", len(broken))
    with pytest.raises(StoreError):
        SqliteStore(db_path)
    conn = raw(db_path)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(sessions)")]
    assert "tag" not in columns  # the failed step left nothing behind
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    fixed = (*released, ("ALTER TABLE sessions ADD COLUMN tag TEXT",))
    monkeypatch.setattr(sqlite_module, "MIGRATIONS", fixed)
    monkeypatch.setattr(sqlite_module, "SCHEMA_VERSION", len(fixed))
    with SqliteStore(db_path) as store:
        store.create_session("s1", "local")
    conn = raw(db_path)
    try:
        assert "tag" in [row[1] for row in conn.execute("PRAGMA table_info(sessions)")]
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(fixed)
    finally:
        conn.close()


def _schema(path: Path) -> list[tuple[str, str, str]]:
    conn = raw(path)
    try:
        return conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
    finally:
        conn.close()


def test_a_version_2_file_migrates_to_version_3_keeping_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert SCHEMA_VERSION == 3
    old_path = tmp_path / "v2.db"
    released = sqlite_module.MIGRATIONS
    monkeypatch.setattr(sqlite_module, "MIGRATIONS", released[:2])
    monkeypatch.setattr(sqlite_module, "SCHEMA_VERSION", 2)
    with SqliteStore(old_path) as store:  # what beamagent wrote before routing state
        store.create_session("s1", "local", extra={"k": 1})
        store.record_messages("s1", [{"type": "user", "content": str(i)} for i in range(3)])
        store.save_run("r1", job_id="j", status="done", state="{}", results=["1"])
    conn = raw(old_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()
    monkeypatch.undo()

    with SqliteStore(old_path) as store:
        assert store.get_session("s1").extra == {"k": 1}
        assert [m["content"] for m in store.get_session_messages("s1")] == ["0", "1", "2"]
        assert store.load_run("r1")["results"] == [1]
        store.save_routing_entry("health", "codex", "unhealthy")
    with SqliteStore(old_path) as store:
        assert store.routing_entries("health") == {"codex": "unhealthy"}
    conn = raw(old_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    finally:
        conn.close()
    fresh = tmp_path / "v3.db"
    SqliteStore(fresh).close()
    assert _schema(old_path) == _schema(fresh)  # migrating gives what creating gives


#: sha256 (first 16 hex digits) of each released step: v1 (sessions, messages, threads),
#: v2 (graph runs), v3 (routing state).
RELEASED_MIGRATION_DIGESTS = ["050b222b511eaa90", "560572df891345fb", "44157687b7ac68c8"]


def test_released_migration_steps_are_never_edited() -> None:
    # A file at version i was made by MIGRATIONS[:i]; editing a released step would leave
    # such files with another schema than new ones. Append a step instead.
    digests = [
        hashlib.sha256("\n".join(step).encode()).hexdigest()[:16]
        for step in sqlite_module.MIGRATIONS[:3]
    ]
    assert digests == RELEASED_MIGRATION_DIGESTS


def test_a_newer_schema_is_refused(db_path: Path) -> None:
    SqliteStore(db_path).close()
    conn = raw(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match=f"{db_path}.*newer"):
        SqliteStore(db_path)


def _unchanged_after_refusal(path: Path, match: str) -> None:
    before = path.read_bytes()
    with pytest.raises(StoreError, match=match) as caught:
        SqliteStore(path)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == before
    assert not Path(f"{path}-wal").exists()


def test_random_bytes_are_refused_not_overwritten(db_path: Path) -> None:
    db_path.parent.mkdir()
    db_path.write_bytes(os.urandom(8192))
    _unchanged_after_refusal(db_path, "not a SQLite database")


def test_a_corrupted_database_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir()
    db_path.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    _unchanged_after_refusal(db_path, "cannot use")


def test_someone_elses_database_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir()
    conn = raw(db_path)
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance REAL)")
    conn.execute("INSERT INTO accounts VALUES (1, 10.0)")
    conn.close()
    _unchanged_after_refusal(db_path, "not a beamagent session store")


def test_a_database_with_another_application_id_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir()
    conn = raw(db_path)
    conn.execute("PRAGMA application_id = 1234")
    conn.close()
    _unchanged_after_refusal(db_path, "application_id=1234")


# --- queries ------------------------------------------------------------------------------


@pytest.mark.slow
def test_deep_pages_use_an_index(store: SqliteStore, db_path: Path) -> None:
    store.create_session("big", "local")
    store.create_session("other", "local")
    store.record_messages(
        "big",
        (
            {"type": "user" if i % 10 == 0 else "assistant", "content": str(i)}
            for i in range(100_000)
        ),
    )
    store.record_message("other", {"type": "user", "content": "x"})
    started = time.perf_counter()
    page = store.get_session_messages("big", offset=99_000, limit=50)
    elapsed = time.perf_counter() - started
    assert [m["content"] for m in page] == [str(i) for i in range(99_000, 99_050)]
    assert elapsed < 0.25, f"a deep page took {elapsed:.3f}s"
    users = store.get_session_messages("big", types=["user"], offset=9_000, limit=3)
    assert [m["content"] for m in users] == ["90000", "90010", "90020"]

    conn = raw(db_path)
    try:
        for types in (None, frozenset({"user"}), frozenset({"user", "assistant"})):
            sql, params = messages_query("big", 100_000, types, 99_000, 50)
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
            assert not [step for step in plan if step.startswith("SCAN")], plan
            assert any("USING" in step and "INDEX" in step for step in plan), plan
        sql, params = messages_query("big", 100_000, None, 99_000, 50)
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
        assert plan == [
            "SEARCH messages USING INDEX sqlite_autoindex_messages_1 "
            "(session_id=? AND seq>? AND seq<?)"
        ]
    finally:
        conn.close()


# --- threads and connections --------------------------------------------------------------


def test_concurrent_writers_get_unique_contiguous_seqs(store: SqliteStore) -> None:
    sessions = ["s1", "s2"]
    for session_id in sessions:
        store.create_session(session_id, "local")
    writers_done = threading.Event()
    reader_errors: list[BaseException] = []
    observed: list[int] = []

    def write(worker: int) -> list[tuple[str, int]]:
        out = []
        for i in range(500):
            session_id = sessions[(worker + i) % 2]
            seq = store.record_message(session_id, {"type": "user", "content": f"{worker}:{i}"})
            out.append((session_id, seq))
        return out

    def read() -> None:
        try:
            last = 0
            while not writers_done.is_set():
                count = store.get_session("s1").message_count
                assert count >= last  # committed writes never disappear
                last = count
                messages = store.get_session_messages("s1", offset=max(0, count - 5), limit=5)
                assert min(5, count) <= len(messages) <= 5
                store.list_sessions(limit=1)
            observed.append(last)
        except BaseException as exc:
            reader_errors.append(exc)

    readers = [threading.Thread(target=read, name=f"reader-{n}") for n in range(2)]
    for reader in readers:
        reader.start()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(write, range(4)))
    writers_done.set()
    for reader in readers:
        reader.join(timeout=30)
    assert reader_errors == []
    assert len(observed) == 2
    for session_id in sessions:
        seqs = sorted(seq for result in results for sid, seq in result if sid == session_id)
        assert seqs == list(range(1, 1001))
        stored = store.get_session_messages(session_id)
        assert len(stored) == store.get_session(session_id).message_count == 1000
    # Each writer's messages are stored in the order it wrote them.
    for worker in range(4):
        order = [
            int(m["content"].split(":")[1])
            for sid in sessions
            for m in store.get_session_messages(sid)
            if m["content"].startswith(f"{worker}:")
        ]
        assert sorted(order) == list(range(500))


def test_readers_do_not_wait_for_an_open_write(store: SqliteStore) -> None:
    store.create_session("s1", "local")
    store.record_message("s1", {"type": "user"})
    seen: list[int] = []
    with store._write() as conn:
        conn.execute("UPDATE sessions SET message_count = 99 WHERE session_id = 's1'")

        def read() -> None:
            seen.append(store.get_session("s1").message_count)

        reader = threading.Thread(target=read)
        reader.start()
        reader.join(timeout=5)
        assert not reader.is_alive(), "the reader waited for the writer"
        conn.execute("UPDATE sessions SET message_count = 1 WHERE session_id = 's1'")
    assert seen == [1]  # the last committed state, not the open transaction


def test_a_reader_on_another_thread_sees_acknowledged_writes(store: SqliteStore) -> None:
    store.create_session("s1", "local")
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(store.get_session, "s1").result().message_count == 0
        store.record_message("s1", {"type": "user"})
        assert pool.submit(store.get_session, "s1").result().message_count == 1


def test_close_closes_every_connection(db_path: Path) -> None:
    store = SqliteStore(db_path)
    store.create_session("s1", "local")
    store.get_session("s1")
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(lambda _: store.get_session("s1"), range(30)))
    connections = [conn for _, conn in store._readers] + [store._writer]
    assert len(connections) >= 2
    store.close()
    for conn in connections:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")
    with pytest.raises(StoreError, match="closed"):
        store.get_session("s1")


def test_connections_of_ended_threads_are_closed(store: SqliteStore) -> None:
    store.create_session("s1", "local")
    for _ in range(5):
        reader = threading.Thread(target=store.get_session, args=("s1",))
        reader.start()
        reader.join()
    store.get_session("s1")  # opening this thread's reader prunes the ended ones
    assert len(store._readers) <= 2


_CRASH_SCRIPT = """
import sys
from beamagent.store import SqliteStore
store = SqliteStore(sys.argv[1])
store.create_session("s1", "local")
i = 0
while True:
    i += 1
    seq = store.record_message("s1", {"type": "user", "content": str(i)})
    print(seq, flush=True)
"""


def test_acknowledged_messages_survive_sigkill(db_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASH_SCRIPT, str(db_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout is not None
        acknowledged = [int(child.stdout.readline()) for _ in range(200)]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()
    assert acknowledged == list(range(1, 201))
    with SqliteStore(db_path) as store:
        count = store.get_session("s1").message_count
        assert count >= 200
        contents = [m["content"] for m in store.get_session_messages("s1")]
        assert contents == [str(i) for i in range(1, count + 1)]


# --- damage found after opening -----------------------------------------------------------


def _filled(db_path: Path) -> None:
    with SqliteStore(db_path) as store:
        store.create_session("s1", "local")
        store.thread_start("s1", thread_id="t1")
        store.record_messages(
            "s1", [{"type": "user", "content": "x" * 300, "uuid": str(i)} for i in range(50)]
        )
        store.save_run("r1", job_id="j", status="done", state="{}", results=["1"])


DAMAGED_CALLS: dict[str, Callable[[SqliteStore], object]] = {
    "get_session": lambda s: s.get_session("s1"),
    "list_sessions": lambda s: s.list_sessions(),
    "get_session_messages": lambda s: s.get_session_messages("s1"),
    "get_session_messages types": lambda s: s.get_session_messages("s1", types="user"),
    "thread_list": lambda s: s.thread_list("s1"),
    "thread_read": lambda s: s.thread_read("s1", "t1", include_messages=True),
    "load_run": lambda s: s.load_run("r1"),
    "list_runs": lambda s: s.list_runs(),
    "record_message": lambda s: s.record_message("s1", {"type": "user"}),
    "create_session": lambda s: s.create_session("s2", "local"),
    "summarize_session": lambda s: s.summarize_session("s1"),
}


def test_every_call_on_damaged_pages_is_a_store_error_naming_the_file(db_path: Path) -> None:
    _filled(db_path)
    data = bytearray(db_path.read_bytes())
    assert len(data) > 3 * 4096
    data[4096:] = b"\xff" * (len(data) - 4096)  # every page after the first (the header)
    db_path.write_bytes(data)
    with SqliteStore(db_path) as store:  # the header and the schema page are intact
        for name, call in DAMAGED_CALLS.items():
            with pytest.raises(StoreError, match=f"{re.escape(str(db_path))}.*malformed"):
                call(store)
            assert store._writer.in_transaction is False, name


def test_a_damaged_row_is_a_store_error_naming_the_file(db_path: Path) -> None:
    _filled(db_path)
    conn = raw(db_path)
    conn.execute("UPDATE messages SET body = 'not json' WHERE seq = 2")
    conn.execute("UPDATE threads SET metadata = '[1]'")
    conn.execute("UPDATE graph_run_results SET body = '{'")
    conn.close()
    with SqliteStore(db_path) as store:
        calls: list[Callable[[], object]] = [
            lambda: store.get_session_messages("s1"),
            lambda: store.thread_list("s1"),
            lambda: store.thread_fork("s1", "t1"),  # a write that reads the rows
            lambda: store.load_run("r1"),
        ]
        for call in calls:
            with pytest.raises(StoreError, match=re.escape(str(db_path))):
                call()
        assert store.get_session_messages("s1", limit=1)[0]["uuid"] == "0"  # the rest is fine
        assert store.record_message("s1", {"type": "user"}) == 51
