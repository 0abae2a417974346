"""``beamagent.testing.disk_full``: a real SQLITE_FULL on every write, undone on exit."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from beamagent import Runtime
from beamagent.errors import InvalidOption, StoreError
from beamagent.store import MemoryStore, SqliteStore
from beamagent.testing import disk_full


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "store.db")
    opened.create_session("s1", "local")
    opened.thread_start("s1", thread_id="t1")
    opened.record_messages("s1", [{"type": "user", "content": str(i)} for i in range(20)])
    opened.create_session("gone", "local")
    opened.record_message("gone", {"type": "user", "content": "x" * 5000})
    opened.delete_session("gone")  # leaves free pages a write could reuse
    yield opened
    opened.close()


def snapshot(store: SqliteStore) -> Any:
    return (
        [r.to_dict() for r in store.list_sessions()],
        store.get_session_messages("s1", include_hidden=True),
        [t.to_dict() for t in store.thread_list("s1")],
        store.list_runs(),
        store.routing_entries("health"),
    )


def main_schema(store: SqliteStore) -> list[Any]:
    return store._writer.execute("SELECT type, name, sql FROM main.sqlite_master").fetchall()


WRITES: dict[str, Callable[[SqliteStore], object]] = {
    "record_message": lambda s: s.record_message("s1", {"type": "user", "content": "x"}),
    "record_messages": lambda s: s.record_messages("s1", [{"type": "user"}] * 3),
    "create_session": lambda s: s.create_session("s2", "local"),
    "update_session": lambda s: s.update_session("s1", model="m"),
    "thread_start": lambda s: s.thread_start("s1"),
    "summarize_session": lambda s: s.summarize_session("s1"),
    "save_run": lambda s: s.save_run("r", job_id="j", status="x", state="{}"),
    "save_routing_entry": lambda s: s.save_routing_entry("health", "codex", "unhealthy"),
    "delete_session": lambda s: s.delete_session("s1"),
}


def test_every_write_fails_with_a_real_sqlite_full_and_nothing_is_written(
    store: SqliteStore,
) -> None:
    assert store._writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._writer.execute("PRAGMA freelist_count").fetchone()[0] > 0
    before = snapshot(store)
    with disk_full(store):
        for _ in range(30):  # small writes that fit in free space fail too
            with pytest.raises(StoreError, match="disk is full") as caught:
                store.record_message("s1", {"type": "user", "content": "x"})
            cause = caught.value.__cause__
            assert isinstance(cause, sqlite3.OperationalError)
            assert cause.sqlite_errorname == "SQLITE_FULL"
        for name, write in WRITES.items():
            with pytest.raises(StoreError, match="disk is full"):
                write(store)
            assert not store._writer.in_transaction, name
        assert snapshot(store) == before  # reads work, and nothing was written
    assert store.record_message("s1", {"type": "user", "content": "after"}) == 21
    for write in WRITES.values():
        write(store)


def test_exit_restores_the_connection_and_leaves_the_file_as_it_was(store: SqliteStore) -> None:
    writer = store._writer
    writer.execute("PRAGMA main.max_page_count = 123456")
    temp_cap = writer.execute("PRAGMA temp.max_page_count").fetchone()[0]
    schema = main_schema(store)
    with disk_full(store):
        pages = writer.execute("PRAGMA main.page_count").fetchone()[0]
        assert writer.execute("PRAGMA main.max_page_count").fetchone()[0] == pages
        assert main_schema(store) == schema  # the triggers are in temp, not in the file
    assert writer.execute("PRAGMA main.max_page_count").fetchone()[0] == 123456
    assert writer.execute("PRAGMA temp.max_page_count").fetchone()[0] == temp_cap
    assert writer.execute("SELECT count(*) FROM temp.sqlite_master").fetchone()[0] == 0
    assert main_schema(store) == schema


def test_the_fault_is_undone_when_the_block_raises(store: SqliteStore) -> None:
    with pytest.raises(RuntimeError, match="inside"), disk_full(store):
        raise RuntimeError("inside")
    assert store.record_message("s1", {"type": "user"}) == 21


def test_a_store_closed_inside_the_block_stays_closed(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    with disk_full(store):
        store.close()
    with pytest.raises(StoreError, match="closed"):
        store.list_sessions()


def test_only_a_sqlite_store_can_be_filled() -> None:
    with MemoryStore() as store, pytest.raises(InvalidOption, match="SqliteStore"):
        disk_full(store).__enter__()  # type: ignore[arg-type]


def test_a_full_disk_through_the_runtime(tmp_path: Path) -> None:
    with Runtime(store=tmp_path / "s.db") as rt:
        assert isinstance(rt._store, SqliteStore)
        session = rt.start_session(backend="local")
        session.query("one")
        writer = rt.store_actor.actor_urn
        with disk_full(rt):
            with pytest.raises(StoreError, match="disk is full"):
                rt.share_session(session)
            with pytest.raises(StoreError, match="disk is full"):
                rt.thread_start(session)
            assert len(rt.get_session_messages(session)) == 4
        assert rt.store_actor.actor_urn == writer  # the store actor lived through it
        assert rt.share_session(session).status == "active"
        assert rt._store.get_session(session.session_id).message_count == 4
