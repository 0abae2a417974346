"""``migrate`` and ``beamagent store migrate``: SQLite to PostgreSQL (and back), row for row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from beamagent.cli import app
from beamagent.cli.app import EXIT_FAILED
from beamagent.errors import InvalidOption, StoreError
from beamagent.store import MemoryStore, PostgresStore, SqliteStore, migrate
from beamagent.store.sql import SqlStore

pytest.importorskip("psycopg")


def populate(store: SqlStore) -> None:
    """A store with every kind of thing a store keeps."""
    store.create_session(
        "a", "claude", model="sonnet", cwd="/w", extra={"k": [1, "x"]}, native_session_id="native-a"
    )
    for i in range(6):
        store.record_message("a", {"type": "user", "content": f"q{i}", "uuid": f"ua{i}"})
        store.record_message(
            "a",
            {
                "type": "assistant",
                "content": f"r{i} caf\udce9",
                "uuid": f"va{i}",
                "message_id": f"m{i}",
            },
        )
    thread = store.thread_start("a", name="side", metadata={"topic": "t"})
    for i in range(4):
        store.record_message("a", {"type": "user", "content": f"t{i}", "uuid": f"ut{i}"})
    store.thread_rollback("a", thread.thread_id, {"count": 1})
    store.thread_fork("a", thread.thread_id, name="copy")
    store.thread_archive("a", thread.thread_id)
    store.summarize_session("a")
    store.share_session("a")
    store.fork_session("a", session_id="b", extra={"more": True})
    store.revert_session("a", {"uuid": "ua3"})
    store.share_session("b")
    store.unshare_session("b")
    store.create_session("c", "local")
    store.save_routing_entry("health", "codex", "degraded")
    store.save_routing_entry("sticky", "user-1", "claude")
    store.save_run(
        "r1", job_id="j", status="running", state='{"step": 1}', results=['{"x": 1}', '{"x": 2}']
    )
    store.save_run("r1", job_id="j", status="done", state='{"step": 2}', results=['{"x": 3}'])
    store.save_run("r2", job_id="k", status="running", state="{}", parent_run_id="r1")


def everything(store: SqlStore) -> dict[str, Any]:
    """What every read API gives, for every session, thread, run and routing kind."""
    out: dict[str, Any] = {"sessions": [r.to_dict() for r in store.list_sessions()]}
    for record in store.list_sessions():
        sid = record.session_id
        out[sid] = {
            "record": store.get_session(sid).to_dict(),
            "visible": store.get_session_messages(sid),
            "all": store.get_session_messages(sid, include_hidden=True),
            "users": store.get_session_messages(sid, types="user", offset=1, limit=3),
            "threads": [t.to_dict() for t in store.thread_list(sid)],
            "reads": [
                (detail.thread.to_dict(), detail.messages)
                for detail in (
                    store.thread_read(sid, t.thread_id, include_messages=True)
                    for t in store.thread_list(sid)
                )
            ],
        }
    out["routing"] = {k: store.routing_entries(k) for k in ("health", "sticky", "none")}
    out["runs"] = store.list_runs()
    out["loaded"] = [store.load_run(r["run_id"]) for r in store.list_runs()]
    return out


@pytest.fixture
def sqlite_store(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(tmp_path / "source.db")
    populate(store)
    return store


def test_sqlite_to_postgres_gives_every_read_the_same_answer(
    sqlite_store: SqliteStore, postgres_url: str
) -> None:
    with sqlite_store, PostgresStore(postgres_url) as target:
        report = migrate(sqlite_store, target)
        assert report.sessions == 3
        assert (
            report.messages
            == sqlite_store.get_session("a").message_count
            + sqlite_store.get_session("b").message_count
        )
        assert report.runs == 2
        assert report.run_results == 3
        assert report.routing_entries == 2
        assert everything(target) == everything(sqlite_store)
        # The copy is a working store: the next message gets the next seq.
        count = target.get_session("a").message_count
        assert target.record_message("a", {"type": "user"}) == count + 1


def test_a_second_migration_refuses_and_leaves_the_target_alone(
    sqlite_store: SqliteStore, postgres_url: str
) -> None:
    with sqlite_store:
        migrate(sqlite_store, postgres_url)
        with PostgresStore(postgres_url) as target:
            before = everything(target)
            with pytest.raises(StoreError, match="not empty"):
                migrate(sqlite_store, target)
            assert everything(target) == before


def test_postgres_back_to_sqlite(postgres_url: str, tmp_path: Path) -> None:
    with PostgresStore(postgres_url) as source:
        populate(source)
        migrate(source, tmp_path / "back.db")
        with SqliteStore(tmp_path / "back.db") as back:
            assert everything(back) == everything(source)


def test_only_sql_stores_and_two_different_ones(tmp_path: Path) -> None:
    with pytest.raises(InvalidOption, match="between SQLite and PostgreSQL"):
        migrate(MemoryStore(), tmp_path / "x.db")
    with SqliteStore(tmp_path / "same.db") as same, pytest.raises(InvalidOption, match="twice"):
        migrate(same, same)


def test_the_cli_command_migrates_and_refuses_a_second_time(
    sqlite_store: SqliteStore, postgres_url: str
) -> None:
    sqlite_store.close()
    runner = CliRunner()
    result = runner.invoke(
        app, ["store", "migrate", str(sqlite_store.path), postgres_url, "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["sessions"] == 3
    listed = runner.invoke(app, ["sessions", "list", "--store", postgres_url, "--json"])
    assert listed.exit_code == 0, listed.output
    assert sorted(s["session_id"] for s in json.loads(listed.output)) == ["a", "b", "c"]
    again = runner.invoke(app, ["store", "migrate", str(sqlite_store.path), postgres_url])
    assert again.exit_code == EXIT_FAILED
    assert "not empty" in again.output
    missing = runner.invoke(app, ["store", "migrate", "/nonexistent/x.db", postgres_url])
    assert missing.exit_code == EXIT_FAILED
