"""The store through a real Runtime: live sessions record, the Runtime API, resume.

Every test runs on a real SQLite file and on ``":memory:"`` unless it is about the file
outliving the runtime.
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pykka.messages import ProxyCall

import supervisors
from beamagent import LocalExit, Message, MessageType, Runtime, Session
from beamagent.backends.local import LocalHandler
from beamagent.errors import (
    BeamAgentError,
    InvalidOption,
    InvalidSelector,
    NotShared,
    SessionError,
    SessionNotFound,
    StoreError,
    ThreadNotFound,
)
from beamagent.store import MemoryStore, SessionRecord, ThreadRecord, ThreadStatus
from beamagent.store.actor import WRITE_METHODS
from beamagent.store.api import message_from_stored
from beamagent.store.recorder import StoreRecorder
from tests.store import _stores as stores

QUERY_TYPES = [MessageType.USER, MessageType.SYSTEM, MessageType.ASSISTANT, MessageType.RESULT]


@pytest.fixture(params=["sqlite", "memory", "postgres"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A real SQLite file, the in-memory store, or a fresh PostgreSQL database."""
    return stores.store_spec(request, tmp_path)


@pytest.fixture
def rt(store_spec: str) -> Iterator[Runtime]:
    with Runtime(store=store_spec) as runtime:
        yield runtime


def types(messages: list[Message]) -> list[MessageType]:
    return [m.type for m in messages]


def contents(messages: list[Message]) -> list[str | None]:
    return [m.content for m in messages]


# --- recording by live sessions -----------------------------------------------------------


def test_query_is_recorded_in_order_with_the_user_prompt_first(rt: Runtime) -> None:
    session = rt.start_session(backend="local")
    delivered = session.query("hello")
    stored = rt.get_session_messages(session)
    assert types(stored) == QUERY_TYPES
    assert stored[0].content == "hello"
    assert stored[0].session_id == session.session_id
    # What the consumer got is exactly what was recorded after the prompt.
    assert [m.to_dict() for m in stored[1:]] == [m.to_dict() for m in delivered]
    session.query("second")
    stored = rt.get_session_messages(session.session_id)
    assert types(stored) == QUERY_TYPES * 2
    assert contents(stored)[4] == "second"
    record = rt.get_session(session)
    assert record.message_count == 8
    assert record.backend == "local"
    assert record.model == "local-echo"
    assert record.native_session_id == session.session_info()["native_session_id"]


def test_stream_records_each_message_before_the_consumer_sees_it(rt: Runtime) -> None:
    release = threading.Event()

    def reply(prompt: str, params: dict[str, Any]) -> Iterator[str]:
        yield "one"
        release.wait(10)
        yield "two"

    session = rt.start_session(backend="local", reply=reply)
    seen: list[Message] = []
    for message in session.stream("go", timeout=10):
        seen.append(message)
        stored = rt.get_session_messages(session)
        # Recorded before delivered: the store already holds this message (after the prompt).
        assert stored[len(seen)].to_dict() == message.to_dict()
        if message.content == "one":
            # The reply is blocked before "two": the store holds exactly what was sent.
            assert types(stored) == QUERY_TYPES[:3]
            release.set()
    stored = rt.get_session_messages(session)
    assert types(stored) == [
        MessageType.USER,
        MessageType.SYSTEM,
        MessageType.ASSISTANT,
        MessageType.ASSISTANT,
        MessageType.RESULT,
    ]
    assert contents(stored)[2:] == ["one", "two", "onetwo"]


def test_send_query_and_receive_message_are_recorded(rt: Runtime) -> None:
    session = rt.start_session(backend="local", replies=[["a", "b"]])
    ref = session.send_query("p")
    first = session.receive_message(ref, timeout=10)
    assert rt.get_session_messages(session, limit=2)[1].to_dict() == first.to_dict()
    while session.receive_message(ref, timeout=10).type is not MessageType.RESULT:
        pass
    assert contents(rt.get_session_messages(session, types="assistant")) == ["a", "b"]


def test_a_prompt_and_replies_with_lone_surrogates_are_recorded(rt: Runtime) -> None:
    bad = os.fsdecode(b"caf\xe9")  # an undecodable file name, say
    session = rt.start_session(backend="local", reply=lambda prompt, params: bad)
    with pytest.raises(InvalidOption, match="not valid Unicode"):
        session.query(bad)  # refused before it is sent or stored
    delivered = session.query("name the file")
    assert delivered[-1].content == "caf\ufffd"  # made valid text, as it is stored
    stored = rt.get_session_messages(session)
    assert types(stored) == QUERY_TYPES
    assert contents(stored)[-1] == "caf\ufffd"
    rt.store_write(
        "record_message", session.session_id, {"type": "assistant", "usage": {"cost": math.nan}}
    )
    assert rt._store.get_session_messages(session.session_id)[-1]["usage"] == {"cost": None}
    assert session.query("still recording")[-1].content == "caf\ufffd"  # and still recording


# --- sessions: list / get / messages / delete -------------------------------------------------


def test_list_sessions_filters_and_orders(rt: Runtime, tmp_path: Path) -> None:
    a = rt.start_session(backend="local", cwd=str(tmp_path / "a"))
    b = rt.start_session(backend="local", cwd=str(tmp_path / "b"), model="local-large")
    a.query("touch a last")
    assert [r.session_id for r in rt.list_sessions()] == [a.session_id, b.session_id]
    assert all(isinstance(r, SessionRecord) for r in rt.list_sessions())
    assert [r.session_id for r in rt.list_sessions(model="local-large")] == [b.session_id]
    assert [r.session_id for r in rt.list_sessions(cwd=str(tmp_path / "b"))] == [b.session_id]
    assert len(rt.list_sessions(backend="local")) == 2
    assert rt.list_sessions(backend="claude") == []
    assert [r.session_id for r in rt.list_sessions(limit=1)] == [a.session_id]
    since = rt.get_session(a).updated_at
    assert [r.session_id for r in rt.list_sessions(since=since)] == [a.session_id]
    with pytest.raises(InvalidOption):
        rt.list_sessions(limit=0)


def test_get_session_messages_options(rt: Runtime) -> None:
    session = rt.start_session(backend="local", replies=[["x", "y"], "z"])
    session.query("q1")
    session.query("q2")
    everything = rt.get_session_messages(session)
    assert len(everything) == 9
    assert contents(rt.get_session_messages(session, types=["user"])) == ["q1", "q2"]
    assert contents(rt.get_session_messages(session, types="assistant", offset=1)) == ["y", "z"]
    page = rt.get_session_messages(session, offset=2, limit=3)
    assert [m.to_dict() for m in page] == [m.to_dict() for m in everything[2:5]]
    assert rt.get_session_messages(session, offset=100) == []
    with pytest.raises(InvalidOption):
        rt.get_session_messages(session, limit=0)
    with pytest.raises(InvalidOption):
        rt.get_session_messages(session, offset=-1)


def test_get_session_messages_is_lenient_with_foreign_dicts(rt: Runtime) -> None:
    session = rt.start_session(backend="local")
    rt.store_write("record_message", session.session_id, {"type": "custom_event", "n": 1})
    rt.store_write("record_message", session.session_id, {"type": "assistant", "content": 5})
    odd, wrong = rt.get_session_messages(session)
    assert odd.type is MessageType.RAW
    assert odd.raw == {"type": "custom_event", "n": 1}
    assert wrong.type is MessageType.ASSISTANT
    assert wrong.content is None  # dropped by normalize, kept in raw
    assert wrong.raw == {"type": "assistant", "content": 5}
    assert message_from_stored({"type": "text", "content": "t"}) == Message("text", content="t")


def test_delete_session_of_a_stopped_and_of_a_live_session(rt: Runtime) -> None:
    stopped = rt.start_session(backend="local")
    stopped.query("bye")
    stopped.stop()
    rt.delete_session(stopped.session_id)
    with pytest.raises(SessionNotFound):
        rt.get_session(stopped)
    live = rt.start_session(backend="local")
    live.query("hi")
    rt.delete_session(live)
    assert live.session_id not in rt.live_sessions()
    with pytest.raises(SessionNotFound):
        rt.session(live.session_id)
    with pytest.raises(SessionNotFound):
        rt.get_session_messages(live)
    # Nothing the stopped session did afterwards re-created it.
    assert rt.list_sessions() == []


# --- fork / revert / share / summarize --------------------------------------------------------


def test_fork_copies_history_and_can_be_resumed(rt: Runtime) -> None:
    session = rt.start_session(backend="local")
    session.query("one")
    fork = rt.fork_session(session, session_id="forked", extra={"label": "x"})
    assert fork.session_id == "forked"
    assert fork.native_session_id is None
    assert fork.extra["fork"]["parent_session_id"] == session.session_id
    assert fork.extra["label"] == "x"
    assert [m.to_dict() for m in rt.get_session_messages("forked")] == [
        m.to_dict() for m in rt.get_session_messages(session)
    ]
    generated = rt.fork_session(session.session_id)
    assert re.fullmatch(r"session_[0-9a-f]{32}", generated.session_id)
    with pytest.raises(InvalidOption):
        rt.fork_session(session, session_id="forked")  # taken
    with pytest.raises(InvalidOption):
        rt.fork_session(session, session_id="not a valid id")
    resumed = rt.start_session(resume="forked")
    assert resumed.session_id == "forked"
    assert (
        resumed.session_info()["native_session_id"] != session.session_info()["native_session_id"]
    )
    resumed.query("two")
    assert contents(rt.get_session_messages("forked", types="user")) == ["one", "two"]
    assert contents(rt.get_session_messages(session, types="user")) == ["one"]


def test_revert_then_record_then_unrevert_through_a_live_session(rt: Runtime) -> None:
    session = rt.start_session(backend="local")
    session.query("first")
    first = rt.get_session_messages(session)
    assistant_uuid = first[2].uuid
    assert assistant_uuid is not None
    record = rt.revert_session(session, {"uuid": assistant_uuid})
    assert record.visible_message_count == 3
    assert record.view is not None
    session.query("second")  # recorded while reverted: hidden
    assert types(rt.get_session_messages(session)) == QUERY_TYPES[:3]
    hidden = rt.get_session_messages(session, include_hidden=True)
    assert contents(hidden)[4] == "second"
    assert len(hidden) == 8
    assert rt.get_session(session).message_count == 8
    record = rt.unrevert_session(session)
    assert record.view is None
    assert types(rt.get_session_messages(session)) == QUERY_TYPES * 2
    rt.revert_session(session.session_id, {"visible_message_count": 100})
    assert len(rt.get_session_messages(session)) == 8  # clamped
    with pytest.raises(InvalidSelector):
        rt.revert_session(session, {"seq": 1})
    with pytest.raises(InvalidSelector):
        rt.revert_session(session, {"uuid": "no-such-uuid"})


def test_fork_of_a_reverted_session(rt: Runtime) -> None:
    session = rt.start_session(backend="local")
    session.query("kept")
    session.query("hidden")
    rt.revert_session(session, {"visible_message_count": 4})
    with_hidden = rt.fork_session(session, session_id="with-hidden")
    assert with_hidden.message_count == 8
    assert with_hidden.visible_message_count == 4
    assert contents(rt.get_session_messages("with-hidden", types="user")) == ["kept"]
    rt.unrevert_session("with-hidden")
    assert contents(rt.get_session_messages("with-hidden", types="user")) == ["kept", "hidden"]
    visible_only = rt.fork_session(session, session_id="visible-only", include_hidden=False)
    assert visible_only.message_count == 4
    assert visible_only.view is None
    assert len(rt.get_session_messages("visible-only", include_hidden=True)) == 4


def test_share_and_unshare(rt: Runtime) -> None:
    session = rt.start_session(backend="local")
    with pytest.raises(NotShared):
        rt.unshare_session(session)
    share = rt.share_session(session)
    assert re.fullmatch(r"share_[0-9a-f]{32}", share.share_id)
    assert share.session_id == session.session_id
    assert share.status == "active"
    revoked = rt.unshare_session(session)
    assert revoked.status == "revoked"
    assert revoked.revoked_at >= share.created_at
    again = rt.share_session(session.session_id, share_id="share_mine")
    assert again.share_id == "share_mine"
    assert rt.get_session(session).extra["share"]["status"] == "active"
    other = rt.start_session(backend="local")
    with pytest.raises(InvalidOption):
        rt.share_session(other, share_id="share_mine")


def test_summarize(rt: Runtime) -> None:
    session = rt.start_session(backend="local", replies=["the answer"])
    session.query("what is it?")
    summary = rt.summarize_session(session)
    assert summary.content == (
        "Conversation summary\nMessages: 4\nFirst user message: what is it?\n"
        "Latest agent output: the answer"
    )
    assert summary.message_count == 4
    assert summary.generated_by == "deterministic"
    assert summary.session_id == session.session_id
    given = rt.summarize_session(session.session_id, content="mine")
    assert (given.content, given.generated_by) == ("mine", "caller")
    assert rt.get_session(session).extra["summary"]["content"] == "mine"


# --- threads ------------------------------------------------------------------------------------


def test_messages_recorded_while_a_thread_is_active_carry_its_id(rt: Runtime) -> None:
    session = rt.start_session(backend="local")
    session.query("before")
    thread = rt.thread_start(session, name="research", metadata={"k": 1})
    assert isinstance(thread, ThreadRecord)
    assert thread.status is ThreadStatus.ACTIVE
    assert rt.get_session(session).active_thread_id == thread.thread_id
    session.query("inside")
    stored = rt.get_session_messages(session)
    assert [m.thread_id for m in stored] == [None] * 4 + [thread.thread_id] * 4
    detail = rt.thread_read(session, thread.thread_id, include_messages=True)
    assert detail.thread.message_count == 4
    assert detail.messages is not None
    assert detail.messages[0].content == "inside"
    assert rt.thread_read(session, thread.thread_id).messages is None


def test_thread_lifecycle_through_a_live_session(rt: Runtime) -> None:
    session = rt.start_session(backend="local")
    main = rt.thread_start(session, thread_id="main")
    session.query("m1")
    side = rt.thread_fork(session, "main", name="side")
    assert side.parent_thread_id == "main"
    assert side.visible_message_count == 4  # copies of main's messages
    session.query("s1")
    assert rt.thread_read(session, side.thread_id).thread.visible_message_count == 8
    assert rt.thread_read(session, "main").thread.visible_message_count == 4
    listed = rt.thread_list(session)
    assert [t.thread_id for t in listed] == [side.thread_id, main.thread_id]
    assert [t.status for t in listed] == [ThreadStatus.ACTIVE, ThreadStatus.PAUSED]

    resumed = rt.thread_resume(session, "main")
    assert resumed.status is ThreadStatus.ACTIVE
    session.query("m2")
    assert rt.thread_read(session, "main").thread.visible_message_count == 8

    rolled = rt.thread_rollback(session, "main", {"count": 4})
    assert rolled.visible_message_count == 4
    session.query("m3")  # extends the rolled-back view; the dropped messages stay hidden
    detail = rt.thread_read(session, "main", include_messages=True)
    assert detail.messages is not None
    assert [m.content for m in detail.messages if m.type is MessageType.USER] == ["m1", "m3"]

    archived = rt.thread_archive(session, "main")
    assert (archived.archived, archived.status) == (True, ThreadStatus.ARCHIVED)
    assert rt.get_session(session).active_thread_id is None
    session.query("loose")
    assert rt.get_session_messages(session)[-1].thread_id is None
    unarchived = rt.thread_unarchive(session, "main")
    assert (unarchived.archived, unarchived.status) == (False, ThreadStatus.PAUSED)
    with pytest.raises(InvalidSelector):
        rt.thread_rollback(session, "main", {"bogus": 1})
    for call in (
        lambda: rt.thread_resume(session, "nope"),
        lambda: rt.thread_fork(session, "nope"),
        lambda: rt.thread_read(session, "nope"),
        lambda: rt.thread_archive(session, "nope"),
        lambda: rt.thread_unarchive(session, "nope"),
        lambda: rt.thread_rollback(session, "nope", {"count": 1}),
        lambda: rt.thread_start(session, parent_thread_id="nope"),
    ):
        with pytest.raises(ThreadNotFound):
            call()


# --- unknown ids and argument kinds -------------------------------------------------------------

UNKNOWN_CALLS: dict[str, Any] = {
    "get_session": lambda rt, s: rt.get_session(s),
    "get_session_messages": lambda rt, s: rt.get_session_messages(s),
    "delete_session": lambda rt, s: rt.delete_session(s),
    "fork_session": lambda rt, s: rt.fork_session(s),
    "revert_session": lambda rt, s: rt.revert_session(s, {"visible_message_count": 1}),
    "unrevert_session": lambda rt, s: rt.unrevert_session(s),
    "share_session": lambda rt, s: rt.share_session(s),
    "unshare_session": lambda rt, s: rt.unshare_session(s),
    "summarize_session": lambda rt, s: rt.summarize_session(s),
    "thread_start": lambda rt, s: rt.thread_start(s),
    "thread_resume": lambda rt, s: rt.thread_resume(s, "t"),
    "thread_list": lambda rt, s: rt.thread_list(s),
    "thread_fork": lambda rt, s: rt.thread_fork(s, "t"),
    "thread_read": lambda rt, s: rt.thread_read(s, "t"),
    "thread_archive": lambda rt, s: rt.thread_archive(s, "t"),
    "thread_unarchive": lambda rt, s: rt.thread_unarchive(s, "t"),
    "thread_rollback": lambda rt, s: rt.thread_rollback(s, "t", {"count": 1}),
    "start_session(resume=)": lambda rt, s: rt.start_session(resume=s),
}


@pytest.mark.parametrize("call", sorted(UNKNOWN_CALLS))
def test_unknown_session_ids_raise_session_not_found(rt: Runtime, call: str) -> None:
    rt.start_session(backend="local", session_id="known")
    with pytest.raises(SessionNotFound) as info:
        UNKNOWN_CALLS[call](rt, "no-such-session")
    assert info.value.session_id == "no-such-session"
    assert rt.live_sessions() == ["known"]


@pytest.mark.parametrize("bad", [None, 42, "", b"bytes"])
def test_a_session_must_be_a_handle_or_an_id(rt: Runtime, bad: Any) -> None:
    with pytest.raises(InvalidOption):
        rt.get_session(bad)
    with pytest.raises(InvalidOption):
        rt.thread_list(bad)


def test_handles_and_ids_name_the_same_session(rt: Runtime) -> None:
    session = rt.start_session(backend="local")
    assert isinstance(session, Session)
    assert rt.get_session(session) == rt.get_session(session.session_id)


# --- the store actor ---------------------------------------------------------------------------


class ThreadTracingStore(MemoryStore):
    """A MemoryStore that notes the thread of every mutating call."""

    def __init__(self) -> None:
        self.writer_threads: list[tuple[str, str]] = []
        super().__init__()

    def __getattribute__(self, name: str) -> Any:
        attr = object.__getattribute__(self, name)
        if name not in WRITE_METHODS:
            return attr
        calls = object.__getattribute__(self, "writer_threads")

        def traced(*args: Any, **kwargs: Any) -> Any:
            calls.append((name, threading.current_thread().name))
            return attr(*args, **kwargs)

        return traced


#: What a session writes itself, on its own thread (``StoreRecorder``).
SESSION_WRITES = frozenset({"create_session", "update_session", "record_messages"})


def test_runtime_writes_run_on_the_store_actor_and_recording_on_the_session() -> None:
    # Changed with the recording path: sessions used to record through the store actor
    # too; they now write into the store themselves (one actor round trip less a query).
    store = ThreadTracingStore()
    try:
        with Runtime(store=store) as rt:
            session = rt.start_session(backend="local")
            session.set_model("local-large")
            session.query("hi")
            thread = rt.thread_start(session)
            session.query("there")
            rt.revert_session(session, {"visible_message_count": 2})
            rt.unrevert_session(session)
            rt.fork_session(session, session_id="f")
            rt.share_session(session)
            rt.unshare_session(session)
            rt.summarize_session(session)
            rt.thread_fork(session, thread.thread_id)
            rt.thread_rollback(session, thread.thread_id, {"count": 1})
            rt.thread_archive(session, thread.thread_id)
            rt.thread_unarchive(session, thread.thread_id)
            rt.thread_resume(session, thread.thread_id)
            rt.delete_session("f")
            rt.store_write("save_routing_entry", "health", "local", "degraded")
            rt.get_session_messages(session)  # reads are not writes
            rt._store.routing_entries("health")
            rt.thread_list(session)
        names = {name for name, _ in store.writer_threads}
        assert names == WRITE_METHODS - {"record_message"}
        by_runtime = {t for name, t in store.writer_threads if name not in SESSION_WRITES}
        by_session = {t for name, t in store.writer_threads if name in SESSION_WRITES}
        assert len(by_runtime) == 1
        assert by_runtime.pop().startswith("StoreActor-")
        # The session writes from its own handlers, on the scheduler's workers.
        assert by_session
        assert all(name.startswith("supervisors-worker-") for name in by_session)
    finally:
        store.close()


def test_store_write_appends_on_the_callers_thread_with_the_actors_error_mapping() -> None:
    # Changed with issue 12: an actor round trip cost as much as a SQLite append, and
    # appends need only the store's write lock, which sessions record under already.
    store = ThreadTracingStore()
    try:
        with Runtime(store=store) as rt:
            rt.store_write("create_session", "s1", "local")
            assert rt.store_write("record_message", "s1", {"type": "user"}) == 1
            assert rt.store_write("record_messages", "s1", [{"type": "a"}, {"type": "b"}]) == [
                2,
                3,
            ]
            with pytest.raises(SessionNotFound):
                rt.store_write("record_message", "nope", {"type": "user"})
            with pytest.raises(InvalidOption):
                rt.store_write("record_message", "s1", {"type": "user", "x": {1, 2}})
            with pytest.raises(InvalidOption, match="cannot take these arguments"):
                rt.store_write("record_message", "s1")  # a TypeError, mapped
        me = threading.current_thread().name
        threads = dict(store.writer_threads)
        assert threads["create_session"].startswith("StoreActor-")
        assert threads["record_message"] == threads["record_messages"] == me
        with pytest.raises(BeamAgentError, match="stopped"):
            rt.store_write("record_message", "s1", {"type": "user"})
    finally:
        store.close()


def test_store_actor_rejects_reads_and_survives(rt: Runtime) -> None:
    session = rt.start_session(backend="local")
    with pytest.raises(InvalidOption, match="not a store write"):
        rt.store_write("get_session", session.session_id)
    assert rt.store_write("record_message", session.session_id, {"type": "text"}) == 1


def test_a_record_retried_by_the_recorder_is_not_duplicated(rt: Runtime) -> None:
    session = rt.start_session(backend="local")
    session.query("hello")
    sid = session.session_id
    batch = [m.to_dict() for m in rt.get_session_messages(session)[1:]]  # they have uuids
    assert all(m["uuid"] for m in batch)
    recorder = StoreRecorder(rt._store)
    recorder.record(sid, batch, skip_recorded=True)  # as if the first attempt had committed
    assert rt.get_session(session).message_count == 4
    recorder.record(sid, batch)  # without it, a retry duplicates
    assert rt.get_session(session).message_count == 7


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"type": "user"}
    for _ in range(depth):
        value = {"type": "user", "inner": value}
    return value


Call = tuple[str, tuple[Any, ...], dict[str, Any]]


def _bad_calls(sid: str, tid: str) -> list[Call]:
    """Calls a confused or hostile caller could make; ``(actor method, args, kwargs)``."""
    bad = os.fsdecode(b"caf\xe9")
    big = 2**64
    nan = math.nan
    cyclic: dict[str, Any] = {"type": "user"}
    cyclic["self"] = cyclic

    def write(method: Any, *args: Any, **kwargs: Any) -> Call:
        return ("write", (method, args, kwargs), {})

    return [
        write("create_session", bad, "local"),
        write("create_session", "n", bad),
        write("create_session", "n", "local", model=bad),
        write("create_session", "n", "local", cwd=bad),
        write("create_session", "n", "local", native_session_id=bad),
        write("create_session", "n", "local", extra={"k": bad}),
        write("create_session", "n", "local", extra={"k": nan}),
        write("create_session", "n", "local", extra={"k": [1, {"x": math.inf}]}),
        write("create_session", big, "local"),
        write("update_session", sid, model=bad),
        write("update_session", sid, native_session_id=bad),
        write("update_session", sid, extra={bad: 1}),
        write("update_session", sid, extra={"x": -math.inf}),
        write("update_session", sid, colour="blue"),
        write("record_messages", bad, [{"type": "user"}]),
        write("record_messages", big, [{"type": "user"}]),
        write("record_messages", sid, 5),
        write("record_messages", sid, [5]),
        write("record_messages", sid, [{"type": "user", "b": b"bytes"}]),
        write("record_messages", sid, [cyclic]),
        write("record_messages", sid, [_nested(100_000)]),
        write("record_messages", sid, [{"type": "user"}], skip_recorded="yes"),
        write("record_messages", sid, [{"type": "user"}], skip_recorded=big),
        write("record_messages", sid, "text"),
        write("record_messages", sid, None),
        write("record_message", sid, {"type": bad, "uuid": bad, "x": nan}),  # stored
        write("record_message", sid, {"type": "user", "n": big, "f": -math.inf}),  # stored
        write("get_session", sid),
        write(["not", "hashable"]),
        ("write", ("record_messages", 5, {}), {}),
        ("write", ("record_messages", (), 5), {}),
        write("record_messages"),
        write("revert_session", sid, {"uuid": bad}),
        write("revert_session", sid, {"visible_message_count": big}),  # clamped
        write("revert_session", sid, {"visible_message_count": nan}),
        write("unrevert_session", sid),
        write("thread_rollback", sid, tid, {"count": big}),  # clamped
        write("thread_rollback", sid, tid, {"message_id": bad}),
        write("thread_rollback", sid, bad, {"count": 1}),
        write("fork_session", sid, session_id=bad),
        write("fork_session", sid, extra={"x": nan}),
        write("share_session", sid, share_id=bad),
        write("unshare_session", bad),
        write("summarize_session", sid, content=bad),  # stored
        write("summarize_session", sid, content=big),
        write("thread_start", sid, name=bad),
        write("thread_start", sid, metadata={bad: 1}),
        write("thread_start", sid, thread_id=big),
        write("thread_fork", sid, bad),
        write("thread_archive", sid, big),
        write("delete_session", bad),
    ]


def _bad_records(sid: str) -> list[Call]:
    """What a confused session could hand its recorder; ``(recorder method, args, kwargs)``."""
    bad = os.fsdecode(b"caf\xe9")
    big = 2**64
    return [
        ("record", (bad, [{"type": "user"}]), {}),
        ("record", (sid, [{"type": "user", "x": math.nan, "y": bad}]), {}),  # stored
        ("record", (sid, "text"), {}),
        ("record", (sid, None), {}),
        ("record", (sid, [{"type": "user", "b": b"bytes"}]), {}),
        ("record", (sid, [{"type": "user"}]), {"skip_recorded": big}),
        ("record", ("nobody", [{"type": "user"}]), {}),
        ("session_started", ({"session_id": bad, "backend": "local"},), {}),
        ("session_started", (5,), {}),
        ("session_started", ({},), {}),
        ("session_started", ({"session_id": "n", "backend": "local", "model": big},), {}),
        ("session_updated", (sid, {"colour": "blue"}), {}),
        ("session_updated", (sid, {"model": bad}), {}),
        ("session_updated", ("nobody", {"model": "m"}), {}),
    ]


def test_no_input_crashes_the_store_actor(rt: Runtime) -> None:
    session = rt.start_session(backend="local")
    sid = session.session_id
    tid = rt.thread_start(session).thread_id
    actor = rt.store_actor
    urn = actor.actor_urn
    calls = _bad_calls(sid, tid)
    assert len(calls) >= 50
    refused = 0
    for method, args, kwargs in calls:
        try:
            actor.ask(ProxyCall((method,), args, kwargs), timeout=30)
        except BeamAgentError:
            refused += 1
        assert actor.is_alive(), (method, args)
        assert rt.store_actor.actor_urn == urn, (method, args)
    assert refused >= 45
    assert [r.session_id for r in rt.list_sessions()] == [sid]  # no refused call wrote
    session.query("still recording")
    assert rt.get_session_messages(session)[-1].type is MessageType.RESULT


def test_no_input_gets_past_the_recorder_untyped(rt: Runtime) -> None:
    session = rt.start_session(backend="local")
    sid = session.session_id
    recorder = StoreRecorder(rt._store)
    before = rt.get_session(session).message_count
    stored = 0
    for method, args, kwargs in _bad_records(sid):
        try:
            getattr(recorder, method)(*args, **kwargs)
        except BeamAgentError:
            continue
        stored += 1
    assert stored == 1  # only the message whose bad values are content: made storable
    assert rt.get_session(session).message_count == before + 1
    assert [r.session_id for r in rt.list_sessions()] == [sid]  # no refused call wrote
    session.query("still recording")
    assert rt.get_session_messages(session)[-1].type is MessageType.RESULT


class FlakyDiskStore(MemoryStore):
    """A MemoryStore whose share fails like a full disk, once."""

    failed = False

    def share_session(self, session_id: str, *, share_id: str | None = None) -> dict[str, Any]:
        if not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("database or disk is full")
        return super().share_session(session_id, share_id=share_id)


def test_a_database_error_is_a_store_error_and_the_writer_lives_on() -> None:
    store = FlakyDiskStore()
    try:
        with Runtime(store=store) as rt:
            session = rt.start_session(backend="local")
            writer = rt.store_actor.actor_urn
            with pytest.raises(StoreError, match="disk is full"):
                rt.share_session(session)
            assert rt.share_session(session).status == "active"
            assert rt.store_actor.actor_urn == writer  # not restarted: it never crashed
            session.query("still recording")
            assert len(rt.get_session_messages(session)) == 4
    finally:
        store.close()


# --- resume ---------------------------------------------------------------------------------


def test_resume_after_the_runtime_stopped(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    with Runtime(store=path) as rt:
        session = rt.start_session(backend="local", cwd=str(tmp_path))
        session.query("one")
        session.set_model("local-large")
        thread = rt.thread_start(session, name="t")
        session.query("two")
        sid = session.session_id
        native = session.session_info()["native_session_id"]
        before = [m.to_dict() for m in rt.get_session_messages(session)]
    with Runtime(store=path) as rt:
        assert rt.live_sessions() == []
        resumed = rt.start_session(resume=sid)
        assert resumed.session_id == sid
        info = resumed.session_info()
        assert info["backend"] == "local"
        assert info["native_session_id"] == native  # the backend conversation continues
        assert info["model"] == "local-large"
        messages = resumed.query("three")
        assert messages[0].system_info is not None
        assert messages[0].system_info["cwd"] == str(tmp_path)
        after = rt.get_session_messages(sid)
        assert [m.to_dict() for m in after[:8]] == before  # history intact
        assert contents(after[8:9]) == ["three"]
        assert {m.thread_id for m in after[8:]} == {thread.thread_id}  # active thread kept
        record = rt.get_session(sid)
        assert record.message_count == 12
        assert record.native_session_id == native
        assert record.active_thread_id == thread.thread_id


def test_resume_within_one_runtime_and_its_errors(rt: Runtime) -> None:
    session = rt.start_session(backend="local")
    session.query("one")
    with pytest.raises(InvalidOption, match="already running"):
        rt.start_session(resume=session.session_id)
    session.stop()
    with pytest.raises(InvalidOption, match="disagree"):
        rt.start_session(resume=session.session_id, session_id="other")
    again = rt.start_session(resume=session, session_id=session.session_id)
    again.query("two")
    assert contents(rt.get_session_messages(again, types="user")) == ["one", "two"]
    assert rt.get_session(again).message_count == 8


def test_resume_on_another_backend_keeps_history_not_native_id(store_spec: str) -> None:
    with Runtime(store=store_spec, backends={"local_b": LocalHandler}) as rt:
        session = rt.start_session(backend="local")
        session.query("one")
        native = session.session_info()["native_session_id"]
        session.stop()
        moved = rt.start_session("local_b", resume=session.session_id)
        assert moved.backend() == "local_b"
        assert moved.session_info()["native_session_id"] != native
        moved.query("two")
        record = rt.get_session(moved)
        assert record.backend == "local_b"
        assert record.native_session_id == moved.session_info()["native_session_id"]
        assert contents(rt.get_session_messages(moved, types="user")) == ["one", "two"]


class StatelessLocal(LocalHandler):
    """A backend without native sessions (like a plain HTTP model server)."""

    @classmethod
    def option_names(cls) -> frozenset[str]:
        return super().option_names() - {"native_session_id", "cwd"}


def test_resume_passes_only_the_options_the_backend_accepts(store_spec: str) -> None:
    with Runtime(store=store_spec, backends={"stateless": StatelessLocal}) as rt:
        session = rt.start_session("stateless", model="local-large")
        session.query("one")
        session.stop()
        assert rt.get_session(session).native_session_id is not None
        resumed = rt.start_session(resume=session.session_id)  # no InvalidOption
        assert resumed.backend() == "stateless"
        assert resumed.session_info()["model"] == "local-large"
        resumed.query("two")
        assert contents(rt.get_session_messages(resumed, types="user")) == ["one", "two"]


def test_explicit_options_win_over_the_stored_ones(rt: Runtime) -> None:
    session = rt.start_session(backend="local", model="local-large")
    session.stop()
    resumed = rt.start_session(resume=session.session_id, model="local-echo")
    assert resumed.session_info()["model"] == "local-echo"
    assert rt.get_session(resumed).model == "local-echo"


def test_a_restarted_session_keeps_recording_into_the_same_history(rt: Runtime) -> None:
    def reply(prompt: str, params: dict[str, Any]) -> Any:
        return [LocalExit(1)] if prompt == "crash" else prompt

    session = rt.start_session(backend="local", reply=reply, error_linger=0)
    native = session.session_info()["native_session_id"]
    down = supervisors.monitor(rt._session_ref(session.session_id), watcher=None)
    with pytest.raises(SessionError):  # the backend died mid-query
        session.query("crash")
    assert isinstance(down.wait(5).reason, supervisors.Crashed)
    assert session.query("after")[-1].content == "after"
    assert session.session_info()["incarnation"] == 2
    stored = rt.get_session_messages(session)
    assert contents(stored)[0] == "crash"
    assert "after" in contents(stored)
    assert rt.get_session(session).native_session_id == native


def test_prune_and_delete_run_keep_the_store_bounded(tmp_path: Path) -> None:
    from beamagent.errors import RunNotFound
    from beamagent.graph import FunctionServing, Job, Node

    job = Job("one", [Node("n", serving=FunctionServing(lambda m: "ok"))], start="n")
    with Runtime(store=tmp_path / "prune.db") as rt:
        old = rt.start_session(backend="local", session_id="old")
        old.query("hi")
        old.stop()
        live = rt.start_session(backend="local", session_id="live")
        live.query("hi")
        rt.run_job(job, "x", "run-old").result(10)
        assert rt.prune(3600) == {"sessions": 0, "runs": 0}  # nothing that old yet
        assert rt.prune(0) == {"sessions": 1, "runs": 1}  # the live session stays
        assert [r.session_id for r in rt.list_sessions()] == ["live"]
        rt.run_job(job, "x", "run-two").result(10)
        rt.delete_run("run-two")
        with pytest.raises(RunNotFound):
            rt.delete_run("run-two")
        with pytest.raises(InvalidOption):
            rt.prune(-1)
