"""Random interleavings of history operations agree with a plain-list model, on both stores.

The model keeps each session as a Python list of message dicts, an optional revert
count, a set of indices hidden by thread rollbacks, the active thread and the thread ids.
Every step compares every session's visible history, full history and thread views.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from beamagent.errors import InvalidSelector
from beamagent.store import MemoryStore, SessionStore, SqliteStore


class ModelSession:
    """One session of the model."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.view: int | None = None
        self.rolled_back: set[int] = set()  # indices into messages
        self.active: str | None = None
        self.threads: list[str] = []

    def copy(self, include_hidden: bool) -> ModelSession:
        other = ModelSession()
        kept = len(self.messages) if include_hidden else len(self.visible())
        other.messages = [dict(m) for m in self.messages[:kept]]
        other.view = self.view if include_hidden else None
        other.rolled_back = {i for i in self.rolled_back if i < kept}
        other.active = self.active
        other.threads = list(self.threads)
        return other

    def visible(self) -> list[dict[str, Any]]:
        return self.messages if self.view is None else self.messages[: self.view]

    def thread_view(self, thread_id: str) -> list[tuple[int, dict[str, Any]]]:
        return [
            (i, m)
            for i, m in enumerate(self.visible())
            if m.get("thread_id") == thread_id and i not in self.rolled_back
        ]

    def record(self, message: dict[str, Any]) -> None:
        if message.get("thread_id") is None and self.active is not None:
            message = {**message, "thread_id": self.active}
        self.messages.append(message)

    def rollback(self, thread_id: str, keep: int) -> None:
        view = self.thread_view(thread_id)
        if keep < len(view):
            cut = view[keep - 1][0] if keep else -1
            self.rolled_back |= {
                i
                for i, m in enumerate(self.messages)
                if m.get("thread_id") == thread_id and i > cut
            }


class HistoryMachine(RuleBasedStateMachine):
    """Drives one store and the model with the same operations."""

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, ModelSession] = {}
        self.counter = 0
        self.tmpdir: str | None = None
        self.store: SessionStore = self.open_store()

    def open_store(self) -> SessionStore:
        raise NotImplementedError

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    @initialize()
    def first_session(self) -> None:
        # Start with a thread holding a few messages so rollbacks have something to hide.
        self.store.create_session("s0", "local")
        session = self.model["s0"] = ModelSession()
        self.store.thread_start("s0", thread_id="t0")
        session.threads.append("t0")
        session.active = "t0"
        batch = [{"type": "user", "content": str(i), "uuid": f"u0-{i}"} for i in range(3)]
        self.store.record_messages("s0", batch)
        for message in batch:
            session.record(message)

    def pick(self, data: st.DataObject) -> tuple[str, ModelSession]:
        session_id = data.draw(st.sampled_from(sorted(self.model)), label="session")
        return session_id, self.model[session_id]

    @rule(
        data=st.data(), kind=st.sampled_from(["user", "assistant", "result"]), n=st.integers(1, 3)
    )
    def record(self, data: st.DataObject, kind: str, n: int) -> None:
        session_id, session = self.pick(data)
        batch = []
        for _ in range(n):
            message: dict[str, Any] = {"type": kind, "content": self.fresh("c")}
            message["uuid"] = self.fresh("u")
            explicit: bool = data.draw(st.booleans(), label="explicit thread")
            if explicit and session.threads:
                message["thread_id"] = data.draw(st.sampled_from(session.threads))
            batch.append(message)
        first = len(session.messages) + 1
        assert self.store.record_messages(session_id, batch) == list(range(first, first + n))
        for message in batch:
            session.record(message)

    @rule(data=st.data(), n=st.integers(1, 2))
    def record_more(self, data: st.DataObject, n: int) -> None:
        # A second recording rule: histories grow faster than they are cut.
        self.record(data, "assistant", n)

    @rule(data=st.data())
    def revert(self, data: st.DataObject) -> None:
        session_id, session = self.pick(data)
        total = len(session.messages)
        form = data.draw(st.sampled_from(["count", "uuid", "missing"]), label="form")
        if form == "count" or not session.messages:
            n = data.draw(st.integers(-2, total + 2), label="n")
            self.store.revert_session(session_id, {"visible_message_count": n})
            session.view = max(0, min(n, total))
        elif form == "uuid":
            index = data.draw(st.integers(0, total - 1), label="index")
            uuid = session.messages[index]["uuid"]
            self.store.revert_session(session_id, {"uuid": uuid})
            session.view = next(i for i, m in enumerate(session.messages) if m["uuid"] == uuid) + 1
        else:
            with pytest.raises(InvalidSelector):
                self.store.revert_session(session_id, {"uuid": "no-such-uuid"})

    @rule(data=st.data())
    def unrevert(self, data: st.DataObject) -> None:
        session_id, session = self.pick(data)
        self.store.unrevert_session(session_id)
        session.view = None

    @precondition(lambda self: len(self.model) < 4)
    @rule(data=st.data(), include_hidden=st.booleans())
    def fork(self, data: st.DataObject, include_hidden: bool) -> None:
        session_id, session = self.pick(data)
        new_id = self.fresh("f")
        self.store.fork_session(session_id, session_id=new_id, include_hidden=include_hidden)
        self.model[new_id] = session.copy(include_hidden)

    @rule(data=st.data())
    def thread_start(self, data: st.DataObject) -> None:
        session_id, session = self.pick(data)
        thread_id = self.fresh("t")
        self.store.thread_start(session_id, thread_id=thread_id)
        session.threads.append(thread_id)
        session.active = thread_id

    @rule(data=st.data())
    def thread_fork(self, data: st.DataObject) -> None:
        session_id, session = self.pick(data)
        if not session.threads:
            return
        source = data.draw(st.sampled_from(session.threads), label="source")
        copies = [{**m, "thread_id": None} for _, m in session.thread_view(source)]
        thread = self.store.thread_fork(session_id, source)
        session.threads.append(thread.thread_id)
        session.active = thread.thread_id
        for message in copies:
            session.record(message)

    @rule(data=st.data())
    def thread_archive(self, data: st.DataObject) -> None:
        session_id, session = self.pick(data)
        if not session.threads:
            return
        thread_id = data.draw(st.sampled_from(session.threads), label="thread")
        self.store.thread_archive(session_id, thread_id)
        if session.active == thread_id:
            session.active = None

    @rule(data=st.data())
    def thread_rollback(self, data: st.DataObject) -> None:
        session_id, session = self.pick(data)
        if not session.threads:
            return
        thread_id = data.draw(st.sampled_from(session.threads), label="thread")
        view = session.thread_view(thread_id)
        form = data.draw(st.sampled_from(["count", "visible", "uuid", "hidden"]), label="form")
        if form == "count":
            n = data.draw(st.integers(0, len(view) + 2), label="n")
            selector: dict[str, Any] = {"count": n}
            keep = max(0, len(view) - n)
        elif form == "visible" or not view:
            n = data.draw(st.integers(-1, len(view) + 2), label="n")
            selector = {"visible_message_count": n}
            keep = max(0, min(n, len(view)))
        elif form == "uuid":
            position = data.draw(st.integers(0, len(view) - 1), label="position")
            selector = {"uuid": view[position][1]["uuid"]}
            keep = position + 1
        else:
            shown = {m["uuid"] for _, m in view}
            hidden = [m["uuid"] for m in session.messages if m["uuid"] not in shown]
            selector = {"uuid": data.draw(st.sampled_from(hidden))} if hidden else {"uuid": "?"}
            with pytest.raises(InvalidSelector):
                self.store.thread_rollback(session_id, thread_id, selector)
            return
        self.store.thread_rollback(session_id, thread_id, selector)
        session.rollback(thread_id, keep)

    @invariant()
    def histories_agree(self) -> None:
        for session_id, session in self.model.items():
            assert self.store.get_session_messages(session_id) == session.visible()
            assert self.store.get_session_messages(session_id, include_hidden=True) == (
                session.messages
            )
            record = self.store.get_session(session_id)
            assert record.message_count == len(session.messages)
            assert record.visible_message_count == len(session.visible())
            assert record.active_thread_id == session.active
            threads = {t.thread_id: t for t in self.store.thread_list(session_id)}
            assert sorted(threads) == sorted(session.threads)
            for thread_id in session.threads:
                expected = [m for _, m in session.thread_view(thread_id)]
                detail = self.store.thread_read(session_id, thread_id, include_messages=True)
                assert detail.messages is not None
                assert list(detail.messages) == expected
                assert threads[thread_id].visible_message_count == len(expected)
                assert threads[thread_id].message_count == sum(
                    1 for m in session.messages if m.get("thread_id") == thread_id
                )

    def teardown(self) -> None:
        self.store.close()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


class MemoryHistory(HistoryMachine):
    def open_store(self) -> SessionStore:
        return MemoryStore()


class SqliteHistory(HistoryMachine):
    def open_store(self) -> SessionStore:
        self.tmpdir = tempfile.mkdtemp(prefix="beamagent-store-")
        return SqliteStore(Path(self.tmpdir) / "store.db")


_SETTINGS = settings(max_examples=60, stateful_step_count=25, deadline=None)
TestMemoryHistory = MemoryHistory.TestCase
TestMemoryHistory.settings = _SETTINGS
TestSqliteHistory = SqliteHistory.TestCase
TestSqliteHistory.settings = _SETTINGS
