"""Context across restarts and forks: a session continues its conversation, or replays it.

On the ``local`` backend, whose agent keeps no memory of its own: a ``reply``
callable with a ``history`` parameter sees what the session replayed from the
store. The real CLIs and ``openai`` are tested in ``tests/backends``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

import supervisors
from beamagent import LocalExit, Message, Runtime
from beamagent.backends.base import FORK_NATIVE_OPTION
from beamagent.backends.local import LocalHandler
from beamagent.errors import ConnectTimeout, InvalidOption, SessionError, StoreError
from beamagent.store import MemoryStore
from tests._events import LogEvents, until_hibernating

WAIT = 10.0


class Conversation:
    """A ``reply`` that answers ``re:<prompt>`` (or dies on ``crash``) and keeps what it saw."""

    def __init__(self) -> None:
        self.seen: list[list[tuple[str, str | None]]] = []

    def __call__(self, prompt: str, params: Any, history: Sequence[Message] = ()) -> Any:
        self.seen.append([(m.type.value, m.content) for m in history])
        if prompt == "crash":
            return [LocalExit(1)]
        return f"re:{prompt}"

    @property
    def last(self) -> list[tuple[str, str | None]]:
        return self.seen[-1]


def turns(*prompts: str) -> list[tuple[str, str | None]]:
    """The user/assistant messages the agent sees for these earlier prompts."""
    return [pair for p in prompts for pair in (("user", p), ("assistant", f"re:{p}"))]


@pytest.fixture
def rt() -> Iterator[Runtime]:
    with Runtime(store=":memory:") as runtime:
        yield runtime


def test_a_new_session_has_nothing_to_replay(rt: Runtime) -> None:
    talk = Conversation()
    session = rt.start_session(backend="local", reply=talk)
    session.query("one")
    session.query("two")
    assert talk.seen == [[], turns("one")]  # its own turns, live
    assert session.session_info()["resumed"] is None


def test_stop_then_resume_replays_the_stored_conversation(rt: Runtime) -> None:
    talk = Conversation()
    session = rt.start_session(backend="local", reply=talk)
    session.query("one")
    session.query("two")
    session.stop()

    resumed = rt.start_session(resume=session.session_id, reply=talk)
    assert resumed.session_info()["resumed"] == "replay"
    resumed.query("three")
    resumed.query("four")

    assert talk.seen[-2:] == [turns("one", "two"), turns("one", "two", "three")]


def test_a_fork_replays_up_to_its_fork_point(rt: Runtime) -> None:
    talk = Conversation()
    session = rt.start_session(backend="local", reply=talk)
    session.query("one")
    fork = rt.fork_session(session, session_id="forked")
    session.query("after the fork")  # the parent goes on; the fork does not see it

    forked = rt.start_session(resume=fork.session_id, reply=talk)
    forked.query("in the fork")

    assert talk.last == turns("one")
    assert forked.session_info()["resumed"] == "replay"
    session.query("parent again")
    assert talk.last == turns("one", "after the fork")


def test_a_reverted_session_replays_only_its_visible_view(rt: Runtime) -> None:
    talk = Conversation()
    session = rt.start_session(backend="local", reply=talk)
    session.query("kept")
    visible = rt.get_session(session).message_count
    session.query("reverted away")
    session.stop()
    rt.revert_session(session, {"visible_message_count": visible})

    resumed = rt.start_session(resume=session.session_id, reply=talk)
    resumed.query("after the revert")

    assert talk.last == turns("kept")


def test_the_active_thread_is_what_is_replayed(rt: Runtime) -> None:
    talk = Conversation()
    session = rt.start_session(backend="local", reply=talk)
    session.query("before any thread")
    thread = rt.thread_start(session, name="t")
    session.query("in the thread")
    session.stop()

    resumed = rt.start_session(resume=session.session_id, reply=talk)
    resumed.query("next")

    assert talk.last == turns("in the thread")
    rt.thread_archive(resumed, thread.thread_id)  # no active thread: every visible message
    resumed.stop()
    again = rt.start_session(resume=session.session_id, reply=talk)
    again.query("last")
    assert talk.last == turns("before any thread", "in the thread", "next")


def test_a_supervisor_restart_after_a_crash_replays(rt: Runtime) -> None:
    talk = Conversation()
    session = rt.start_session(backend="local", reply=talk, error_linger=0)
    session.query("remember this")
    down = supervisors.monitor(rt._session_ref(session.session_id), watcher=None)
    with pytest.raises(SessionError):
        session.query("crash")
    down.wait(WAIT)

    session.query("after the crash")

    info = session.session_info()
    assert (info["incarnation"], info["resumed"]) == (2, "replay")
    # The crashed turn's prompt was recorded; it got no answer.
    assert talk.last == [*turns("remember this"), ("user", "crash")]


def test_a_woken_session_replays() -> None:
    talk = Conversation()
    with LogEvents() as events, Runtime(store=":memory:") as rt:
        session = rt.start_session(backend="local", reply=talk, idle_timeout=0.1)
        session.query("before sleeping")
        until_hibernating(events, session, WAIT)
        session.query("awake")
        assert session.session_info()["resumed"] == "replay"
    assert talk.last == turns("before sleeping")


def test_a_huge_history_is_read_bounded_and_replayed_recent_first(rt: Runtime) -> None:
    session = rt.start_session(backend="local")
    for i in range(1_100):  # 4,400 messages: more than the session reads back
        session.query(f"q{i}")
    session.stop()
    talk = Conversation()

    resumed = rt.start_session(resume=session.session_id, reply=talk)
    resumed.query("next")

    seen = talk.last
    assert seen[-2:] == [("user", "q1099"), ("assistant", "q1099")]
    assert ("user", "q0") not in seen
    assert len(seen) <= 2_000


class NativeLocal(LocalHandler):
    """``local`` that claims to resume natively: it is given nothing to replay."""

    replayed: list[int] = []  # shared by every instance, on purpose

    def resume_natively(self) -> bool:
        return "native_session_id" in self.options

    def replay_history(self, history: Sequence[Message]) -> None:
        self.replayed.append(len(history))


def test_a_backend_that_resumes_natively_is_not_replayed_to() -> None:
    with Runtime(store=":memory:", backends={"native": NativeLocal}) as rt:
        session = rt.start_session(backend="native")
        session.query("one")
        session.stop()
        resumed = rt.start_session(resume=session.session_id)
        resumed.query("two")
        assert resumed.session_info()["resumed"] == "native"
        assert NativeLocal.replayed == []
        resumed.stop()
        moved = rt.start_session("local", resume=session.session_id)  # another backend
        assert moved.session_info()["resumed"] == "replay"


class FlakyStore(MemoryStore):
    """A store whose history reads fail while ``failing`` is set (as a store that restarts)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = threading.Event()
        self.failed_reads = 0
        self.reads = 0

    def get_session_messages(self, session_id: str, **kwargs: Any) -> Any:
        self.reads += 1
        if self.failing.is_set():
            self.failed_reads += 1
            if self.failed_reads >= 3:
                self.failing.clear()  # back after three failed reads
            raise StoreError("the store is restarting")
        return super().get_session_messages(session_id, **kwargs)


def test_a_store_failure_while_reading_the_history_delays_the_start() -> None:
    store = FlakyStore()
    talk = Conversation()
    with LogEvents() as events, Runtime(store=store) as rt:
        session = rt.start_session(backend="local", reply=talk)
        session.query("one")
        session.stop()
        store.failing.set()

        resumed = rt.start_session(resume=session.session_id, reply=talk)
        resumed.query("two")

        assert len(events.matching("session_history_read_failed")) == 3
    assert talk.last == turns("one")
    store.close()


def test_a_store_that_stays_down_fails_the_start_after_init_timeout() -> None:
    store = FlakyStore()
    with Runtime(store=store) as rt:
        session = rt.start_session(backend="local")
        session.query("one")
        session.stop()
        store.failing.set()
        store.failed_reads = -10_000  # never back

        with pytest.raises(ConnectTimeout, match="history to replay"):
            rt.start_session(resume=session.session_id, init_timeout=0.5)
    store.close()


def test_a_new_session_never_reads_the_store_for_history() -> None:
    store = FlakyStore()
    with Runtime(store=store) as rt:
        session = rt.start_session(backend="local")
        session.query("one")
        assert store.reads == 0
    store.close()


class ForkingLocal(LocalHandler):
    """``local`` that accepts ``fork_native_session_id`` and says which it was given."""

    forked: list[str | None] = []  # shared by every instance, on purpose

    @classmethod
    def option_names(cls) -> frozenset[str]:
        return super().option_names() | {FORK_NATIVE_OPTION}

    def open_transport(self) -> Any:
        ForkingLocal.forked.append(self.options.get(FORK_NATIVE_OPTION))
        return super().open_transport()

    def resume_natively(self) -> bool:
        return self.options.get(FORK_NATIVE_OPTION) is not None


@pytest.fixture
def forking() -> Iterator[Runtime]:
    ForkingLocal.forked.clear()
    with Runtime(store=":memory:", backends={"forking": ForkingLocal}) as runtime:
        yield runtime


def test_a_fork_gets_its_parents_native_id_while_their_conversations_agree(
    forking: Runtime, tmp_path: Any
) -> None:
    rt = forking
    parent = rt.start_session(backend="forking", cwd=str(tmp_path), reply=lambda p, q: "ok")
    parent.query("one")
    parent_native = parent.session_info()["native_session_id"]
    untouched = rt.fork_session(parent)
    first = rt.start_session(resume=untouched.session_id)
    assert ForkingLocal.forked[-1] == parent_native
    assert first.session_info()["resumed"] == "native"
    assert rt.get_session(untouched.session_id).native_session_id != parent_native

    reverted = rt.fork_session(parent)
    rt.revert_session(reverted.session_id, {"visible_message_count": 1})
    rt.start_session(resume=reverted.session_id)
    assert ForkingLocal.forked[-1] is None  # a revert view hides messages: replayed

    elsewhere = rt.fork_session(parent)
    rt.start_session(resume=elsewhere.session_id, cwd=str(tmp_path / "other"))
    assert ForkingLocal.forked[-1] is None  # another directory: replayed

    went_on = rt.fork_session(parent)
    parent.query("two")  # the parent's conversation is not the fork's any more
    later = rt.start_session(resume=went_on.session_id)
    assert ForkingLocal.forked[-1] is None
    assert later.session_info()["resumed"] == "replay"


def test_a_started_fork_resumes_its_own_conversation_not_the_parents(forking: Runtime) -> None:
    rt = forking

    def reply(prompt: str, params: Any) -> Any:
        return [LocalExit(1)] if prompt == "crash" else "ok"

    parent = rt.start_session(backend="forking", reply=reply)
    parent.query("one")
    fork = rt.fork_session(parent)
    forked = rt.start_session(resume=fork.session_id, reply=reply, error_linger=0)
    forked.query("in the fork")
    own = forked.session_info()["native_session_id"]
    down = supervisors.monitor(rt._session_ref(fork.session_id), watcher=None)
    with pytest.raises(SessionError):
        forked.query("crash")
    down.wait(WAIT)
    forked.query("after the crash")

    assert ForkingLocal.forked[-2] is not None  # the fork's first start forked
    assert ForkingLocal.forked[-1] is None  # its restart did not fork again
    assert forked.session_info()["native_session_id"] == own
    forked.stop()
    rt.start_session(resume=fork.session_id, reply=reply)
    assert ForkingLocal.forked[-1] is None  # nor does a resume: it has an id of its own


def test_a_bad_fork_option_is_refused_before_anything_starts(rt: Runtime) -> None:
    from beamagent.backends.claude import ClaudeHandler
    from beamagent.backends.codex import CodexHandler

    for handler in (ClaudeHandler, CodexHandler):
        if not handler.availability()[0]:
            continue
        with pytest.raises(InvalidOption, match=FORK_NATIVE_OPTION):
            rt.start_session(backend=handler.name, fork_native_session_id=42)
    assert rt.live_sessions() == []
    assert rt.list_sessions() == []
