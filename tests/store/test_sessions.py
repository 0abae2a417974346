"""Sessions, messages, revert views, forks, shares and summaries — on both stores."""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beamagent.errors import (
    InvalidOption,
    InvalidSelector,
    NotShared,
    SessionNotFound,
    StoreError,
)
from beamagent.store import MemoryStore, SessionStore
from tests.store._stores import STORE_KINDS, open_test_store


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionStore]:
    """Each test runs against both stores."""
    opened = open_test_store(request, tmp_path)
    yield opened
    opened.close()


def user(text: str, **fields: Any) -> dict[str, Any]:
    return {"type": "user", "content": text, **fields}


def agent(text: str, **fields: Any) -> dict[str, Any]:
    return {"type": "assistant", "content": text, **fields}


def contents(messages: list[dict[str, Any]]) -> list[Any]:
    return [m.get("content") for m in messages]


def seeded(store: SessionStore, session_id: str = "s1", n: int = 5) -> None:
    store.create_session(session_id, "claude")
    for i in range(1, n + 1):
        store.record_message(session_id, user(f"m{i}", uuid=f"u{i}", message_id=f"id{i}"))


# --- create / update / get / delete -------------------------------------------------------


def test_create_session_returns_its_metadata(store: SessionStore) -> None:
    record = store.create_session(
        "s1", "claude", model="sonnet", cwd="/w", extra={"k": [1, 2]}, native_session_id="n1"
    )
    assert record.session_id == "s1"
    assert record.backend == "claude"
    assert (record.model, record.cwd, record.native_session_id) == ("sonnet", "/w", "n1")
    assert dict(record.extra) == {"k": [1, 2]}
    assert record.message_count == 0
    assert record.created_at == record.updated_at
    assert record.active_thread_id is None
    assert store.get_session("s1") == record
    assert record.to_dict()["extra"] == {"k": [1, 2]}


def test_create_session_is_an_upsert_that_keeps_history(store: SessionStore) -> None:
    first = store.create_session("s1", "claude", model="a", cwd="/w", extra={"x": 1, "y": 2})
    store.record_message("s1", user("hello"))
    again = store.create_session("s1", "codex", model="b", extra={"y": None, "z": 3})
    assert again.created_at == first.created_at
    assert again.updated_at > first.updated_at
    assert again.backend == "codex"
    assert again.model == "b"
    assert again.cwd == "/w"  # None means "keep"
    assert dict(again.extra) == {"x": 1, "z": 3}  # merged; None removes a key
    assert again.message_count == 1
    assert contents(store.get_session_messages("s1")) == ["hello"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"session_id": "", "backend": "claude"},
        {"session_id": 3, "backend": "claude"},
        {"session_id": "s", "backend": ""},
        {"session_id": "s", "backend": "claude", "model": 3},
        {"session_id": "s", "backend": "claude", "cwd": b"/"},
        {"session_id": "s", "backend": "claude", "native_session_id": 1},
        {"session_id": "s", "backend": "claude", "extra": [1]},
        {"session_id": "s", "backend": "claude", "extra": {"x": {1, 2}}},
        {"session_id": "s", "backend": "claude", "extra": {"x": math.nan}},
        {"session_id": "s", "backend": "claude", "extra": {"view": {}}},
    ],
)
def test_create_session_rejects_bad_input(store: SessionStore, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidOption):
        store.create_session(**kwargs)
    assert store.list_sessions() == []


def test_update_session(store: SessionStore) -> None:
    before = store.create_session("s1", "claude", extra={"a": 1, "b": 2})
    after = store.update_session(
        "s1", model="m", cwd="/c", native_session_id="n", backend="gemini", extra={"b": None}
    )
    assert (after.model, after.cwd, after.native_session_id, after.backend) == (
        "m",
        "/c",
        "n",
        "gemini",
    )
    assert dict(after.extra) == {"a": 1}
    assert after.updated_at > before.updated_at
    assert store.get_session("s1") == after
    assert store.update_session("s1", model=None).model is None


@pytest.mark.parametrize(
    "fields",
    [
        {"session_id": "x"},
        {"message_count": 3},
        {"created_at": 1.0},
        {"active_thread_id": "t"},
        {"colour": "blue"},
        {"backend": ""},
        {"model": 1},
        {"extra": "x"},
        {"extra": {"share": None}},
        {"extra": {"summary": "mine"}},
    ],
)
def test_update_session_rejects_bad_fields(store: SessionStore, fields: dict[str, Any]) -> None:
    store.create_session("s1", "claude")
    with pytest.raises(InvalidOption):
        store.update_session("s1", **fields)


def test_unknown_session_raises_session_not_found(store: SessionStore) -> None:
    calls: list[Callable[[], object]] = [
        lambda: store.get_session("nope"),
        lambda: store.get_session(None),  # type: ignore[arg-type]
        lambda: store.update_session("nope", model="m"),
        lambda: store.delete_session("nope"),
        lambda: store.record_message("nope", user("x")),
        lambda: store.record_messages("nope", []),
        lambda: store.get_session_messages("nope"),
        lambda: store.fork_session("nope"),
        lambda: store.revert_session("nope", {"visible_message_count": 1}),
        lambda: store.unrevert_session("nope"),
        lambda: store.share_session("nope"),
        lambda: store.unshare_session("nope"),
        lambda: store.summarize_session("nope"),
    ]
    for call in calls:
        with pytest.raises(SessionNotFound):
            call()


def test_delete_session_removes_messages(store: SessionStore) -> None:
    seeded(store, "s1", 3)
    seeded(store, "s2", 2)
    store.delete_session("s1")
    with pytest.raises(SessionNotFound):
        store.get_session_messages("s1")
    assert [r.session_id for r in store.list_sessions()] == ["s2"]
    # A new session under the same id starts from scratch.
    store.create_session("s1", "claude")
    assert store.record_message("s1", user("again")) == 1
    assert contents(store.get_session_messages("s1")) == ["again"]


def test_records_are_snapshots(store: SessionStore) -> None:
    store.create_session("s1", "claude", extra={"nested": {"a": 1}})
    record = store.get_session("s1")
    with pytest.raises(TypeError):
        record.extra["x"] = 1  # type: ignore[index]
    record.extra["nested"]["a"] = 99
    assert store.get_session("s1").extra["nested"] == {"a": 1}


def test_closed_memory_store_creates_nothing() -> None:
    store = MemoryStore()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.create_session("s1", "local")


def test_records_stay_snapshots_after_later_writes(store: SessionStore) -> None:
    created = store.create_session("s1", "claude", extra={"k": "v", "items": [1]})
    read = store.get_session("s1")
    created.extra["items"].append(2)
    store.update_session("s1", model="m2", extra={"k": "w", "n": 1})
    store.create_session("s1", "codex")
    assert (created.backend, created.model, dict(created.extra)) == (
        "claude",
        None,
        {"k": "v", "items": [1, 2]},
    )
    assert (read.model, dict(read.extra)) == (None, {"k": "v", "items": [1]})
    assert dict(store.get_session("s1").extra) == {"k": "w", "items": [1], "n": 1}
    with pytest.raises(TypeError):
        read.extra["k"] = "x"  # type: ignore[index]


# --- list ---------------------------------------------------------------------------------


def test_list_sessions_filters_and_order(store: SessionStore) -> None:
    store.create_session("a", "claude", model="m1", cwd="/x")
    store.create_session("b", "codex", model="m2", cwd="/x")
    store.create_session("c", "claude", model="m2", cwd="/y")
    store.record_message("a", user("touch"))  # a becomes the most recently updated

    def ids(**filters: Any) -> list[str]:
        return [r.session_id for r in store.list_sessions(**filters)]

    assert ids() == ["a", "c", "b"]
    assert ids(backend="claude") == ["a", "c"]
    assert ids(cwd="/x") == ["a", "b"]
    assert ids(model="m2") == ["c", "b"]
    assert ids(backend="claude", model="m2") == ["c"]
    assert ids(backend="opencode") == []
    assert ids(limit=2) == ["a", "c"]
    assert ids(limit=1, backend="codex") == ["b"]
    c_updated = store.get_session("c").updated_at
    assert ids(since=c_updated) == ["a", "c"]
    assert ids(since=int(c_updated) - 10) == ["a", "c", "b"]
    assert ids(since=store.get_session("a").updated_at + 1) == []


def test_record_message_picks_the_model(store: SessionStore) -> None:
    store.create_session("s1", "claude", model="old")
    store.record_message("s1", agent("x", model="new"))
    store.record_message("s1", agent("y"))
    assert store.get_session("s1").model == "new"
    assert [r.session_id for r in store.list_sessions(model="new")] == ["s1"]


@pytest.mark.parametrize("limit", [0, -1, True, 1.5, "3", 2**63, 2**64])
def test_list_sessions_rejects_bad_limits(store: SessionStore, limit: Any) -> None:
    with pytest.raises(InvalidOption, match="limit"):
        store.list_sessions(limit=limit)
    with pytest.raises(InvalidOption, match="limit"):
        store.list_runs(limit=limit)


@pytest.mark.parametrize("since", ["yesterday", math.nan, math.inf, False, 2**1100, -(2**1100)])
def test_list_sessions_rejects_bad_since(store: SessionStore, since: Any) -> None:
    with pytest.raises(InvalidOption, match="since"):
        store.list_sessions(since=since)


def test_integers_up_to_sqlites_largest_are_accepted(store: SessionStore) -> None:
    seeded(store, "s1", 3)
    largest = 2**63 - 1
    assert len(store.list_sessions(limit=largest)) == 1
    assert store.list_runs(limit=largest) == []
    assert store.list_sessions(since=2**64) == []  # a (far) future float
    assert contents(store.get_session_messages("s1", offset=1, limit=largest)) == ["m2", "m3"]
    assert store.get_session_messages("s1", offset=largest, limit=largest) == []
    users = store.get_session_messages("s1", types="user", offset=largest, limit=largest)
    assert users == []
    assert contents(store.get_session_messages("s1", types="user", limit=largest))[-1] == "m3"
    assert store.revert_session("s1", {"visible_message_count": 2**70}).visible_message_count == 3
    assert store.thread_start("s1", thread_id="t").visible_message_count == 0
    assert store.thread_rollback("s1", "t", {"count": 2**70}).visible_message_count == 0


# --- messages -----------------------------------------------------------------------------


def test_record_message_appends_with_contiguous_seqs(store: SessionStore) -> None:
    created = store.create_session("s1", "claude")
    assert store.record_message("s1", user("a")) == 1
    assert store.record_messages("s1", [agent("b"), agent("c")]) == [2, 3]
    assert store.record_messages("s1", []) == []
    assert store.record_message("s1", user("d")) == 4
    record = store.get_session("s1")
    assert record.message_count == 4
    assert record.updated_at > created.updated_at
    assert contents(store.get_session_messages("s1")) == ["a", "b", "c", "d"]


def test_messages_round_trip_as_json(store: SessionStore) -> None:
    store.create_session("s1", "claude")
    message = {
        "type": "assistant",
        "content": "héllo ☃",
        "content_blocks": [{"type": "text", "text": "x"}],
        "usage": {"input_tokens": 3},
        "tuple": (1, 2),
    }
    store.record_message("s1", message)
    message["content"] = "mutated after recording"
    (stored,) = store.get_session_messages("s1")
    assert stored == {
        "type": "assistant",
        "content": "héllo ☃",
        "content_blocks": [{"type": "text", "text": "x"}],
        "usage": {"input_tokens": 3},
        "tuple": [1, 2],
    }
    stored["content"] = "mutated after reading"
    assert store.get_session_messages("s1")[0]["content"] == "héllo ☃"


@pytest.mark.parametrize(
    "message",
    [
        {"content": "no type"},
        {"type": ""},
        {"type": 3},
        ["type", "user"],
        "user",
        {"type": "user", "blob": b"bytes"},
        {"type": "user", "x": {1, 2}},
    ],
)
def test_bad_messages_are_refused_and_batches_are_atomic(store: SessionStore, message: Any) -> None:
    store.create_session("s1", "claude")
    with pytest.raises(InvalidOption):
        store.record_message("s1", message)
    with pytest.raises(InvalidOption):
        store.record_messages("s1", [user("ok"), message, user("ok too")])
    assert store.get_session("s1").message_count == 0
    assert store.get_session_messages("s1", include_hidden=True) == []


def test_get_session_messages_types_offset_limit(store: SessionStore) -> None:
    store.create_session("s1", "claude")
    store.record_messages(
        "s1",
        [user("u1"), agent("a1"), {"type": "result", "content": "r1"}, user("u2"), agent("a2")],
    )
    get = store.get_session_messages
    assert contents(get("s1", types="user")) == ["u1", "u2"]
    assert contents(get("s1", types=["assistant", "result"])) == ["a1", "r1", "a2"]
    assert contents(get("s1", types=[])) == []
    assert contents(get("s1", offset=3)) == ["u2", "a2"]
    assert contents(get("s1", offset=9)) == []
    assert contents(get("s1", limit=2)) == ["u1", "a1"]
    assert contents(get("s1", offset=1, limit=2)) == ["a1", "r1"]
    assert contents(get("s1", types={"assistant", "user"}, offset=1, limit=2)) == ["a1", "u2"]


def test_revert_view_applies_before_types_offset_limit(store: SessionStore) -> None:
    store.create_session("s1", "claude")
    store.record_messages("s1", [user("u1"), agent("a1"), user("u2"), agent("a2"), user("u3")])
    store.revert_session("s1", {"visible_message_count": 4})
    get = store.get_session_messages
    assert contents(get("s1", types="user")) == ["u1", "u2"]
    assert contents(get("s1", types="user", offset=1)) == ["u2"]
    assert contents(get("s1", types="user", offset=1, include_hidden=True)) == ["u2", "u3"]
    assert contents(get("s1", offset=2, limit=5)) == ["u2", "a2"]


@pytest.mark.parametrize(
    "options",
    [
        {"offset": -1},
        {"offset": True},
        {"offset": "1"},
        {"limit": 0},
        {"limit": -2},
        {"limit": False},
        {"offset": 2**63},
        {"limit": 2**64},
        {"offset": 2**63, "types": ["user"]},
        {"types": [1]},
        {"types": 5},
    ],
)
def test_get_session_messages_rejects_bad_options(
    store: SessionStore, options: dict[str, Any]
) -> None:
    store.create_session("s1", "claude")
    with pytest.raises(InvalidOption):
        store.get_session_messages("s1", **options)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    types=st.lists(st.sampled_from(["user", "assistant", "result"]), max_size=40),
    view=st.one_of(st.none(), st.integers(min_value=-2, max_value=45)),
    chosen=st.one_of(st.none(), st.sets(st.sampled_from(["user", "assistant", "result", "x"]))),
    offset=st.integers(min_value=0, max_value=45),
    limit=st.one_of(st.none(), st.integers(min_value=1, max_value=45)),
    include_hidden=st.booleans(),
)
def test_get_session_messages_matches_list_slicing(
    store: SessionStore,
    types: list[str],
    view: int | None,
    chosen: set[str] | None,
    offset: int,
    limit: int | None,
    include_hidden: bool,
) -> None:
    session_id = f"s{len(store.list_sessions())}"
    store.create_session(session_id, "claude")
    messages = [{"type": t, "content": str(i)} for i, t in enumerate(types)]
    store.record_messages(session_id, messages)
    expected = messages
    if view is not None:
        store.revert_session(session_id, {"visible_message_count": view})
        if not include_hidden:
            expected = messages[: max(0, view)]
    if chosen is not None:
        expected = [m for m in expected if m["type"] in chosen]
    expected = expected[offset : None if limit is None else offset + limit]
    got = store.get_session_messages(
        session_id, types=chosen, offset=offset, limit=limit, include_hidden=include_hidden
    )
    assert got == expected


# --- revert -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "visible"),
    [
        ({"visible_message_count": 2}, 2),
        ({"visible_message_count": 0}, 0),
        ({"visible_message_count": -3}, 0),
        ({"visible_message_count": 99}, 5),
        ({"message_id": "id3"}, 3),
        ({"uuid": "u4"}, 4),
        ({"uuid": "u1"}, 1),
    ],
)
def test_revert_session(store: SessionStore, selector: dict[str, Any], visible: int) -> None:
    seeded(store)
    record = store.revert_session("s1", selector)
    assert record.visible_message_count == visible
    assert record.message_count == 5
    view = record.extra["view"]
    assert view["visible_message_count"] == visible
    assert view["selector"] == selector
    assert view["reverted_at"] == record.updated_at
    assert store.get_session("s1") == record
    expected = [f"m{i}" for i in range(1, visible + 1)]
    assert contents(store.get_session_messages("s1")) == expected
    assert len(store.get_session_messages("s1", include_hidden=True)) == 5


@pytest.mark.parametrize(
    "selector",
    [{"uuid": "missing"}, {"message_id": "u1"}, {"count": 1}, {"seq": 1}, {}, "u1", None],
)
def test_revert_session_rejects_bad_selectors(store: SessionStore, selector: Any) -> None:
    seeded(store)
    with pytest.raises(InvalidSelector):
        store.revert_session("s1", selector)
    assert store.get_session("s1").view is None


def test_invalid_selector_message_lists_accepted_forms(store: SessionStore) -> None:
    seeded(store)
    with pytest.raises(InvalidSelector, match=re.escape('{"visible_message_count": n}')):
        store.revert_session("s1", {"bogus": 1})


def test_revert_then_record_then_unrevert(store: SessionStore) -> None:
    seeded(store, n=4)
    store.revert_session("s1", {"uuid": "u2"})
    assert store.record_message("s1", agent("after revert")) == 5
    # Messages recorded after a revert stay hidden until unrevert (BeamAgent's rule).
    assert contents(store.get_session_messages("s1")) == ["m1", "m2"]
    record = store.get_session("s1")
    assert (record.message_count, record.visible_message_count) == (5, 2)
    unreverted = store.unrevert_session("s1")
    assert unreverted.view is None
    assert "view" not in unreverted.extra
    assert contents(store.get_session_messages("s1")) == ["m1", "m2", "m3", "m4", "after revert"]
    # unrevert without a view is a no-op.
    assert store.unrevert_session("s1").visible_message_count == 5


def test_a_second_revert_replaces_the_first(store: SessionStore) -> None:
    seeded(store)
    store.revert_session("s1", {"visible_message_count": 1})
    record = store.revert_session("s1", {"uuid": "u4"})  # may show more than before
    assert record.visible_message_count == 4


# --- fork ---------------------------------------------------------------------------------


def test_fork_session_copies_metadata_and_messages(store: SessionStore) -> None:
    store.create_session(
        "s1", "claude", model="m", cwd="/w", extra={"k": "v"}, native_session_id="native-1"
    )
    store.record_messages("s1", [user("a"), agent("b")])
    store.share_session("s1")
    fork = store.fork_session("s1", extra={"label": "try 2"})
    assert re.fullmatch(r"session_[0-9a-f]{32}", fork.session_id)
    parent = store.get_session("s1")
    assert (fork.backend, fork.model, fork.cwd) == ("claude", "m", "/w")
    assert fork.native_session_id is None  # the backend conversation belongs to the parent
    assert fork.message_count == 2
    assert fork.created_at == fork.updated_at >= parent.updated_at
    assert fork.extra["k"] == "v"
    assert fork.extra["label"] == "try 2"
    assert "share" not in fork.extra  # a share names one session
    assert fork.extra["fork"] == {"parent_session_id": "s1", "forked_at": fork.created_at}
    assert store.get_session(fork.session_id) == fork
    assert contents(store.get_session_messages(fork.session_id)) == ["a", "b"]
    # The two histories are independent from now on.
    store.record_message(fork.session_id, user("only in fork"))
    assert store.get_session("s1").message_count == 2


def test_fork_session_explicit_id_and_errors(store: SessionStore) -> None:
    seeded(store)
    store.create_session("taken", "claude")
    assert store.fork_session("s1", session_id="f1").session_id == "f1"
    with pytest.raises(InvalidOption, match="already exists"):
        store.fork_session("s1", session_id="taken")
    with pytest.raises(InvalidOption):
        store.fork_session("s1", session_id="")
    with pytest.raises(InvalidOption):
        store.fork_session("s1", extra=[1])  # type: ignore[arg-type]
    with pytest.raises(InvalidOption, match="belong to the store"):
        store.fork_session("s1", extra={"fork": {}})
    with pytest.raises(SessionNotFound):
        store.fork_session("missing", session_id="f2")


def test_fork_of_a_reverted_session_with_hidden_messages(store: SessionStore) -> None:
    seeded(store, n=4)
    store.revert_session("s1", {"visible_message_count": 2})
    fork = store.fork_session("s1", session_id="f", include_hidden=True)
    assert fork.message_count == 4
    assert fork.visible_message_count == 2
    assert fork.extra["view"]["visible_message_count"] == 2
    assert contents(store.get_session_messages("f")) == ["m1", "m2"]
    store.unrevert_session("f")
    assert contents(store.get_session_messages("f")) == ["m1", "m2", "m3", "m4"]


def test_fork_of_a_reverted_session_without_hidden_messages(store: SessionStore) -> None:
    seeded(store, n=4)
    store.revert_session("s1", {"visible_message_count": 2})
    fork = store.fork_session("s1", session_id="f", include_hidden=False)
    assert fork.message_count == 2
    assert fork.view is None
    assert contents(store.get_session_messages("f", include_hidden=True)) == ["m1", "m2"]
    store.record_message("f", user("new"))
    assert contents(store.get_session_messages("f")) == ["m1", "m2", "new"]
    # The parent is untouched.
    assert store.get_session("s1").visible_message_count == 2


# --- share --------------------------------------------------------------------------------


def test_share_and_unshare(store: SessionStore) -> None:
    store.create_session("s1", "claude")
    share = store.share_session("s1")
    assert set(share) == {"share_id", "session_id", "created_at", "status"}
    assert re.fullmatch(r"share_[0-9a-f]{32}", share["share_id"])
    assert share["session_id"] == "s1"
    assert share["status"] == "active"
    assert store.get_session("s1").extra["share"] == share
    revoked = store.unshare_session("s1")
    assert revoked == {**share, "status": "revoked", "revoked_at": revoked["revoked_at"]}
    assert revoked["revoked_at"] >= share["created_at"]
    assert store.get_session("s1").extra["share"] == revoked
    # Unsharing a revoked share changes nothing.
    assert store.unshare_session("s1") == revoked


def test_generated_share_ids_are_unique(store: SessionStore) -> None:
    store.create_session("s1", "claude")
    seen = {store.share_session("s1")["share_id"] for _ in range(200)}
    assert len(seen) == 200
    assert all(re.fullmatch(r"share_[0-9a-f]{32}", s) for s in seen)


def test_share_replaces_and_explicit_ids(store: SessionStore) -> None:
    store.create_session("s1", "claude")
    store.create_session("s2", "claude")
    first = store.share_session("s1", share_id="mine")
    second = store.share_session("s1")
    assert first["share_id"] == "mine"
    assert store.get_session("s1").extra["share"] == second
    assert store.share_session("s1", share_id="mine")["share_id"] == "mine"
    with pytest.raises(InvalidOption, match="already used"):
        store.share_session("s2", share_id="mine")
    with pytest.raises(InvalidOption):
        store.share_session("s2", share_id="")


def test_unshare_without_a_share(store: SessionStore) -> None:
    store.create_session("s1", "claude")
    with pytest.raises(NotShared):
        store.unshare_session("s1")


# --- summary ------------------------------------------------------------------------------


def test_summarize_session_deterministic(store: SessionStore) -> None:
    store.create_session("s1", "claude")
    long_answer = "word " * 100
    store.record_messages(
        "s1",
        [
            {"type": "system", "content": "init"},
            user("First\nquestion"),
            agent(long_answer),
            {"type": "tool_use", "content": "ignored"},
            user("second"),
        ],
    )
    summary = store.summarize_session("s1")
    expected_preview = " ".join(long_answer.split())[:237] + "..."
    assert summary["content"] == (
        "Conversation summary\n"
        "Messages: 5\n"
        "First user message: First question\n"
        f"Latest agent output: {expected_preview}"
    )
    assert summary["message_count"] == 5
    assert summary["generated_by"] == "deterministic"
    assert summary["session_id"] == "s1"
    assert store.get_session("s1").extra["summary"] == summary


def test_summarize_session_counts_visible_messages(store: SessionStore) -> None:
    store.create_session("s1", "claude")
    store.record_messages("s1", [user("q"), agent("a1"), {"type": "result", "content": "r"}])
    store.revert_session("s1", {"visible_message_count": 2})
    summary = store.summarize_session("s1")
    assert summary["message_count"] == 2
    assert summary["content"].splitlines()[1:] == [
        "Messages: 2",
        "First user message: q",
        "Latest agent output: a1",
    ]
    store.revert_session("s1", {"visible_message_count": 0})
    assert store.summarize_session("s1")["content"] == (
        "Conversation summary\nMessages: 0\nFirst user message: (none)\nLatest agent output: (none)"
    )


def test_summarize_session_with_given_content(store: SessionStore) -> None:
    seeded(store, n=2)
    summary = store.summarize_session("s1", content="my words")
    assert summary["content"] == "my words"
    assert summary["generated_by"] == "caller"
    assert summary["message_count"] == 2
    with pytest.raises(InvalidOption):
        store.summarize_session("s1", content=3)  # type: ignore[arg-type]


# --- lifecycle ----------------------------------------------------------------------------


def test_a_closed_store_refuses_calls(store: SessionStore) -> None:
    store.create_session("s1", "claude")
    store.close()
    with pytest.raises(StoreError):
        store.get_session("s1")
    with pytest.raises(StoreError):
        store.record_message("s1", user("x"))
    store.close()  # closing twice is fine


def test_concurrent_record_messages_get_contiguous_seqs(store: SessionStore) -> None:
    store.create_session("s1", "claude")

    def write(worker: int) -> list[int]:
        return [store.record_message("s1", user(f"{worker}:{i}")) for i in range(100)]

    threads_seqs: list[list[int]] = [[] for _ in range(4)]

    def run(worker: int) -> None:
        threads_seqs[worker] = write(worker)

    workers = [threading.Thread(target=run, args=(w,)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert sorted(seq for seqs in threads_seqs for seq in seqs) == list(range(1, 401))
    assert all(seqs == sorted(seqs) for seqs in threads_seqs)
    assert store.get_session("s1").message_count == 400


# --- retrying a record whose outcome is unknown ---------------------------------------------


def recorded_uuids(store: SessionStore, session_id: str = "s1") -> list[Any]:
    return [m.get("uuid") for m in store.get_session_messages(session_id, include_hidden=True)]


def test_a_retried_batch_that_was_committed_is_not_recorded_twice(store: SessionStore) -> None:
    seeded(store, "s1", 2)
    batch = [agent("a", uuid="a"), agent("b", uuid="b"), agent("c", uuid="c")]
    assert store.record_messages("s1", batch) == [3, 4, 5]
    before = store.get_session("s1")
    assert store.record_messages("s1", batch, skip_recorded=True) == [3, 4, 5]
    assert store.get_session("s1") == before  # nothing written, not even updated_at
    assert recorded_uuids(store) == ["u1", "u2", "a", "b", "c"]


def test_a_retried_batch_that_was_not_committed_is_recorded(store: SessionStore) -> None:
    seeded(store, "s1", 2)
    batch = [agent("a", uuid="a"), agent("b", uuid="b")]
    assert store.record_messages("s1", batch, skip_recorded=True) == [3, 4]
    assert recorded_uuids(store) == ["u1", "u2", "a", "b"]


def test_a_retry_that_extends_the_batch_records_only_the_new_messages(
    store: SessionStore,
) -> None:
    seeded(store, "s1", 1)
    store.record_messages("s1", [agent("a", uuid="a"), agent("b", uuid="b")])
    store.record_message("s1", user("meanwhile", uuid="x"))  # someone else wrote since
    retry = [agent("a", uuid="a"), agent("b", uuid="b"), agent("c", uuid="c", model="new")]
    assert store.record_messages("s1", retry, skip_recorded=True) == [2, 3, 5]
    assert recorded_uuids(store) == ["u1", "a", "b", "x", "c"]
    assert store.get_session("s1").model == "new"


@pytest.mark.parametrize(
    ("stored", "retry", "seqs", "after"),
    [
        # Only a leading run is skipped: a stored uuid later in the batch is a new message.
        (["a", "b"], ["n", "a"], [3, 4], ["a", "b", "n", "a"]),
        # The stored copies must follow each other: b did not come right after a.
        (["a", "x", "b"], ["a", "b"], [1, 4], ["a", "x", "b", "b"]),
        # The latest copy of the first uuid is the one compared.
        (["a", "q", "a", "b"], ["a", "b", "c"], [3, 4, 5], ["a", "q", "a", "b", "c"]),
        # A message without a uuid is never taken as stored, and ends the skipped run.
        (["a", None], ["a", None], [1, 3], ["a", None, None]),
        ([None], [None], [2], [None, None]),
    ],
)
def test_skip_recorded_skips_only_a_leading_consecutive_run(
    store: SessionStore,
    stored: list[str | None],
    retry: list[str | None],
    seqs: list[int],
    after: list[str | None],
) -> None:
    store.create_session("s1", "claude")

    def batch(uuids: list[str | None]) -> list[dict[str, Any]]:
        return [agent(str(u)) if u is None else agent(u, uuid=u) for u in uuids]

    store.record_messages("s1", batch(stored))
    assert store.record_messages("s1", batch(retry), skip_recorded=True) == seqs
    assert recorded_uuids(store) == after


def test_skip_recorded_looks_back_a_bounded_window(store: SessionStore) -> None:
    from beamagent.store.base import SKIP_RECORDED_WINDOW

    store.create_session("s1", "claude")
    store.record_message("s1", agent("old", uuid="a"))
    store.record_messages("s1", [user(str(i)) for i in range(SKIP_RECORDED_WINDOW - 1)])
    assert store.record_messages("s1", [agent("a", uuid="a")], skip_recorded=True) == [1]
    store.record_message("s1", user("one more"))  # now "a" is just out of the window
    last = SKIP_RECORDED_WINDOW + 1
    assert store.record_messages("s1", [agent("a", uuid="a")], skip_recorded=True) == [last + 1]


def test_skip_recorded_must_be_a_bool(store: SessionStore) -> None:
    seeded(store, "s1", 1)
    with pytest.raises(InvalidOption, match="skip_recorded"):
        store.record_messages("s1", [user("x", uuid="u1")], skip_recorded="yes")  # type: ignore[arg-type]
    assert store.record_messages("s1", [], skip_recorded=True) == []
    assert store.get_session("s1").message_count == 1
