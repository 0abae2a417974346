"""Threads: start, resume, list, fork, read, archive, rollback — on both stores."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from beamagent.errors import InvalidOption, InvalidSelector, SessionNotFound, ThreadNotFound
from beamagent.store import PostgresStore, SessionStore, SqliteStore, ThreadStatus
from tests.store._stores import STORE_KINDS, open_test_store


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionStore]:
    """Each test runs against both stores, with a session ``s1``."""
    opened = open_test_store(request, tmp_path)
    opened.create_session("s1", "codex")
    yield opened
    opened.close()


def msg(text: str, **fields: Any) -> dict[str, Any]:
    return {"type": "user", "content": text, "uuid": f"u-{text}", **fields}


def thread_contents(store: SessionStore, thread_id: str) -> list[str]:
    messages = store.thread_read("s1", thread_id, include_messages=True).messages
    assert messages is not None
    assert all(m["thread_id"] == thread_id for m in messages)
    return [m["content"] for m in messages]


def test_thread_start(store: SessionStore) -> None:
    thread = store.thread_start("s1")
    assert re.fullmatch(r"thread_[0-9a-f]{16}", thread.thread_id)
    assert thread.name == thread.thread_id
    assert thread.session_id == "s1"
    assert thread.status is ThreadStatus.ACTIVE
    assert not thread.archived
    assert thread.archived_at is None
    assert thread.parent_thread_id is None
    assert (thread.message_count, thread.visible_message_count) == (0, 0)
    assert dict(thread.metadata) == {}
    assert store.get_session("s1").active_thread_id == thread.thread_id
    assert thread.to_dict()["status"] == "active"


def test_thread_start_options_and_the_previous_thread_pauses(store: SessionStore) -> None:
    first = store.thread_start("s1", thread_id="t1")
    second = store.thread_start(
        "s1", name="Second", metadata={"goal": "x"}, thread_id="t2", parent_thread_id="t1"
    )
    assert (second.thread_id, second.name, second.parent_thread_id) == ("t2", "Second", "t1")
    assert dict(second.metadata) == {"goal": "x"}
    assert store.get_session("s1").active_thread_id == "t2"
    paused = store.thread_read("s1", "t1").thread
    assert paused.status is ThreadStatus.PAUSED
    assert paused.updated_at == first.updated_at  # pausing is not a use of the thread


def test_thread_start_errors(store: SessionStore) -> None:
    store.thread_start("s1", thread_id="t1")
    with pytest.raises(InvalidOption, match="already exists"):
        store.thread_start("s1", thread_id="t1")
    with pytest.raises(ThreadNotFound):
        store.thread_start("s1", parent_thread_id="nope")
    with pytest.raises(InvalidOption):
        store.thread_start("s1", thread_id="")
    with pytest.raises(InvalidOption):
        store.thread_start("s1", name="")
    with pytest.raises(InvalidOption):
        store.thread_start("s1", metadata=["x"])  # type: ignore[arg-type]
    with pytest.raises(SessionNotFound):
        store.thread_start("nope")
    assert [t.thread_id for t in store.thread_list("s1")] == ["t1"]


def test_unknown_thread_and_session(store: SessionStore) -> None:
    calls: list[Callable[[str, str], object]] = [
        lambda s, t: store.thread_resume(s, t),
        lambda s, t: store.thread_fork(s, t),
        lambda s, t: store.thread_read(s, t),
        lambda s, t: store.thread_archive(s, t),
        lambda s, t: store.thread_unarchive(s, t),
        lambda s, t: store.thread_rollback(s, t, {"count": 1}),
    ]
    store.thread_start("s1", thread_id="t1")
    for call in calls:
        with pytest.raises(ThreadNotFound):
            call("s1", "nope")
        with pytest.raises(SessionNotFound):
            call("nope", "t1")
    with pytest.raises(SessionNotFound):
        store.thread_list("nope")


def test_record_message_stamps_the_active_thread(store: SessionStore) -> None:
    store.record_message("s1", msg("before"))
    store.thread_start("s1", thread_id="t1")
    store.record_message("s1", msg("in t1"))
    store.record_message("s1", msg("explicit", thread_id="other"))
    store.record_message("s1", msg("null thread", thread_id=None))
    stored = store.get_session_messages("s1")
    assert [m.get("thread_id") for m in stored] == [None, "t1", "other", "t1"]
    assert thread_contents(store, "t1") == ["in t1", "null thread"]
    thread = store.thread_read("s1", "t1").thread
    assert (thread.message_count, thread.visible_message_count) == (2, 2)


def test_thread_resume(store: SessionStore) -> None:
    store.thread_start("s1", thread_id="t1")
    store.thread_start("s1", thread_id="t2")
    resumed = store.thread_resume("s1", "t1")
    assert resumed.status is ThreadStatus.ACTIVE
    assert store.get_session("s1").active_thread_id == "t1"
    assert store.thread_read("s1", "t2").thread.status is ThreadStatus.PAUSED
    store.record_message("s1", msg("back in t1"))
    assert thread_contents(store, "t1") == ["back in t1"]


def test_thread_list_most_recently_updated_first(store: SessionStore) -> None:
    store.thread_start("s1", thread_id="t1")
    store.thread_start("s1", thread_id="t2")
    store.thread_start("s1", thread_id="t3")
    assert [t.thread_id for t in store.thread_list("s1")] == ["t3", "t2", "t1"]
    store.record_message("s1", msg("x", thread_id="t1"))
    threads = store.thread_list("s1")
    assert [t.thread_id for t in threads] == ["t1", "t3", "t2"]
    assert [t.message_count for t in threads] == [1, 0, 0]
    assert [t.status for t in threads] == [
        ThreadStatus.PAUSED,
        ThreadStatus.ACTIVE,
        ThreadStatus.PAUSED,
    ]


def test_thread_read_without_messages(store: SessionStore) -> None:
    store.thread_start("s1", thread_id="t1")
    store.record_message("s1", msg("a"))
    detail = store.thread_read("s1", "t1")
    assert detail.messages is None
    assert detail.thread.visible_message_count == 1


def test_thread_fork_copies_the_visible_messages(store: SessionStore) -> None:
    store.thread_start("s1", thread_id="t1", metadata={"m": 1})
    store.record_messages("s1", [msg("a"), msg("b"), msg("c")])
    store.thread_rollback("s1", "t1", {"count": 1})
    fork = store.thread_fork("s1", "t1", name="alt")
    assert fork.parent_thread_id == "t1"
    assert fork.name == "alt"
    assert fork.status is ThreadStatus.ACTIVE
    assert dict(fork.metadata) == {"m": 1}
    assert (fork.message_count, fork.visible_message_count) == (2, 2)
    assert store.get_session("s1").active_thread_id == fork.thread_id
    assert store.thread_read("s1", "t1").thread.status is ThreadStatus.PAUSED
    assert thread_contents(store, fork.thread_id) == ["a", "b"]
    assert thread_contents(store, "t1") == ["a", "b"]
    # The copies are new session messages with the thread id rewritten.
    assert store.get_session("s1").message_count == 5
    store.record_message("s1", msg("d"))
    assert thread_contents(store, fork.thread_id) == ["a", "b", "d"]
    assert thread_contents(store, "t1") == ["a", "b"]
    assert store.thread_fork("s1", "t1").name.startswith("thread_")


def test_thread_archive_and_unarchive(store: SessionStore) -> None:
    store.thread_start("s1", thread_id="t1")
    archived = store.thread_archive("s1", "t1")
    assert archived.status is ThreadStatus.ARCHIVED
    assert archived.archived
    assert archived.archived_at == archived.updated_at
    # An archived thread stops being the active one: new messages are not stamped.
    assert store.get_session("s1").active_thread_id is None
    store.record_message("s1", msg("loose"))
    assert "thread_id" not in store.get_session_messages("s1")[0]
    again = store.thread_archive("s1", "t1")
    assert again.archived_at == archived.archived_at
    unarchived = store.thread_unarchive("s1", "t1")
    assert unarchived.status is ThreadStatus.PAUSED
    assert not unarchived.archived
    assert unarchived.archived_at is None
    assert store.thread_unarchive("s1", "t1").status is ThreadStatus.PAUSED


def test_archiving_another_thread_keeps_the_active_one(store: SessionStore) -> None:
    store.thread_start("s1", thread_id="t1")
    store.thread_start("s1", thread_id="t2")
    store.thread_archive("s1", "t1")
    assert store.get_session("s1").active_thread_id == "t2"


def test_resume_unarchives(store: SessionStore) -> None:
    store.thread_start("s1", thread_id="t1")
    store.thread_archive("s1", "t1")
    resumed = store.thread_resume("s1", "t1")
    assert (resumed.status, resumed.archived, resumed.archived_at) == (
        ThreadStatus.ACTIVE,
        False,
        None,
    )


@pytest.mark.parametrize(
    ("selector", "visible"),
    [
        ({"count": 2}, ["a", "b", "c"]),
        ({"count": 0}, ["a", "b", "c", "d", "e"]),
        ({"count": 9}, []),
        ({"visible_message_count": 1}, ["a"]),
        ({"visible_message_count": 99}, ["a", "b", "c", "d", "e"]),
        ({"visible_message_count": -1}, []),
        ({"uuid": "u-c"}, ["a", "b", "c"]),
        ({"message_id": "id-d"}, ["a", "b", "c", "d"]),
    ],
)
def test_thread_rollback(store: SessionStore, selector: dict[str, Any], visible: list[str]) -> None:
    store.thread_start("s1", thread_id="t1")
    store.record_messages("s1", [msg(x, message_id=f"id-{x}") for x in "abcde"])
    thread = store.thread_rollback("s1", "t1", selector)
    assert thread.visible_message_count == len(visible)
    assert thread.message_count == 5
    assert thread_contents(store, "t1") == visible
    # The session history itself is not affected by a thread rollback.
    assert len(store.get_session_messages("s1")) == 5


@pytest.mark.parametrize(
    "selector", [{"uuid": "u-zzz"}, {"count": -1}, {"bogus": 1}, {"count": 1, "uuid": "u-a"}]
)
def test_thread_rollback_rejects_bad_selectors(store: SessionStore, selector: Any) -> None:
    store.thread_start("s1", thread_id="t1")
    store.record_messages("s1", [msg("a"), msg("b")])
    with pytest.raises(InvalidSelector):
        store.thread_rollback("s1", "t1", selector)
    assert thread_contents(store, "t1") == ["a", "b"]


def test_rollback_cannot_match_a_hidden_message(store: SessionStore) -> None:
    store.thread_start("s1", thread_id="t1")
    store.record_messages("s1", [msg("a"), msg("b"), msg("c")])
    store.thread_rollback("s1", "t1", {"count": 2})
    with pytest.raises(InvalidSelector):
        store.thread_rollback("s1", "t1", {"uuid": "u-c"})


def test_rolled_back_messages_stay_hidden_after_new_messages(store: SessionStore) -> None:
    """Decision: a rollback truncates the thread's view; later messages extend it."""
    store.thread_start("s1", thread_id="t1")
    store.record_messages("s1", [msg("a"), msg("b"), msg("c")])
    store.thread_rollback("s1", "t1", {"count": 2})
    store.record_message("s1", msg("d"))
    assert thread_contents(store, "t1") == ["a", "d"]
    thread = store.thread_read("s1", "t1").thread
    assert (thread.message_count, thread.visible_message_count) == (4, 2)
    # A second rollback works on what is visible now.
    store.thread_rollback("s1", "t1", {"count": 1})
    store.record_message("s1", msg("e"))
    assert thread_contents(store, "t1") == ["a", "e"]


def test_rollback_hides_only_its_own_thread(store: SessionStore) -> None:
    store.thread_start("s1", thread_id="t1")
    store.record_messages("s1", [msg("a"), msg("b")])
    store.thread_start("s1", thread_id="t2")
    store.record_messages("s1", [msg("x"), msg("y", thread_id="t1"), msg("z")])
    store.thread_rollback("s1", "t1", {"visible_message_count": 1})
    assert thread_contents(store, "t1") == ["a"]
    assert thread_contents(store, "t2") == ["x", "z"]


def test_thread_view_follows_the_session_revert_view(store: SessionStore) -> None:
    store.thread_start("s1", thread_id="t1")
    store.record_messages("s1", [msg("a"), msg("b"), msg("c")])
    store.revert_session("s1", {"visible_message_count": 2})
    assert thread_contents(store, "t1") == ["a", "b"]
    store.record_message("s1", msg("d"))  # hidden by the revert view until unrevert
    assert thread_contents(store, "t1") == ["a", "b"]
    thread = store.thread_read("s1", "t1").thread
    assert (thread.message_count, thread.visible_message_count) == (4, 2)
    # A rollback cuts at a visible message and hides everything after it in the thread.
    store.thread_rollback("s1", "t1", {"count": 1})
    store.unrevert_session("s1")
    assert thread_contents(store, "t1") == ["a"]
    store.record_message("s1", msg("e"))
    assert thread_contents(store, "t1") == ["a", "e"]


def test_fork_session_copies_threads(store: SessionStore) -> None:
    store.thread_start("s1", thread_id="t1")
    store.record_messages("s1", [msg("a"), msg("b"), msg("c")])
    store.thread_rollback("s1", "t1", {"count": 1})
    fork = store.fork_session("s1", session_id="f")
    assert fork.active_thread_id == "t1"
    (thread,) = store.thread_list("f")
    assert (thread.thread_id, thread.session_id, thread.visible_message_count) == ("t1", "f", 2)
    store.record_message("f", msg("d"))
    detail = store.thread_read("f", "t1", include_messages=True)
    assert detail.messages is not None
    assert [m["content"] for m in detail.messages] == ["a", "b", "d"]
    assert thread_contents(store, "t1") == ["a", "b"]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
@pytest.mark.parametrize("skip_recorded", [False, True])
def test_an_append_stamps_the_active_thread_another_writer_set(
    kind: str, skip_recorded: bool, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # A SQL store encodes an append before its write begins, under the active thread it
    # saw last; a thread started (or archived) by another store object on the same
    # database meanwhile must still be what the append stamps.
    if kind == "sqlite":
        a: SessionStore = SqliteStore(tmp_path / "shared.db")
        b: SessionStore = SqliteStore(tmp_path / "shared.db")
    else:
        url = request.getfixturevalue("postgres_url")
        a, b = PostgresStore(url), PostgresStore(url)
    try:
        a.create_session("s1", "codex")
        a.record_messages("s1", [msg("before")], skip_recorded=skip_recorded)
        thread = b.thread_start("s1", thread_id="t1")
        a.record_messages(
            "s1", [msg("inside"), msg("own", thread_id="t0")], skip_recorded=skip_recorded
        )
        assert thread_contents(a, thread.thread_id) == ["inside"]
        b.thread_archive("s1", "t1")  # the session has no active thread after
        a.record_messages("s1", [msg("after")], skip_recorded=skip_recorded)
        stored = a.get_session_messages("s1")
        assert [(m["content"], m.get("thread_id")) for m in stored] == [
            ("before", None),
            ("inside", "t1"),
            ("own", "t0"),
            ("after", None),
        ]
        assert a.get_session("s1").message_count == 4
    finally:
        a.close()
        b.close()
