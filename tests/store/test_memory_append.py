"""``MemoryStore.record_messages``: a batch prepared outside the lock, checked and committed.

A change to the session between the snapshot and the commit (another append, a thread
started, the session deleted, the store closed) must send the batch down the fully
locked path, never commit it over the change. A message mapping whose read runs code
puts the change exactly in that window.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from uuid import NAMESPACE_OID, uuid5

import pytest

import beamagent.store.memory as memory
from beamagent.errors import SessionNotFound, StoreError
from beamagent.messages import Message, MessageType, _new_message
from beamagent.store import MemoryStore, SqliteStore


class Meddling(Mapping[str, Any]):
    """A message whose first read of ``type`` (during preparation) runs ``meddle`` once."""

    def __init__(self, body: dict[str, Any], meddle: Callable[[], object]) -> None:
        self.body = body
        self.meddle: Callable[[], object] | None = meddle

    def __getitem__(self, key: str) -> Any:
        if key == "type" and self.meddle is not None:
            meddle, self.meddle = self.meddle, None
            meddle()
        return self.body[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.body)

    def __len__(self) -> int:
        return len(self.body)


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    with MemoryStore() as store:
        store.create_session("s", "local")
        yield store


def _contents(store: MemoryStore, session_id: str = "s") -> list[Any]:
    return [m.get("content") for m in store.get_session_messages(session_id)]


def test_an_append_meanwhile_numbers_the_batch_after_it(store: MemoryStore) -> None:
    store.record_messages("s", [{"type": "user", "content": "first"}])
    inner = {"type": "user", "content": "inner"}
    outer = Meddling({"type": "user", "content": "outer"}, lambda: store.record_message("s", inner))
    assert store.record_messages("s", [outer]) == [3]
    assert _contents(store) == ["first", "inner", "outer"]
    assert store.get_session("s").message_count == 3


def test_a_thread_started_meanwhile_takes_the_batch(store: MemoryStore) -> None:
    started: list[str] = []
    message = Meddling(
        {"type": "user", "content": "late"},
        lambda: started.append(store.thread_start("s").thread_id),
    )
    store.record_messages("s", [message])
    (stored,) = store.get_session_messages("s")
    assert stored["thread_id"] == started[0]  # the locked path saw the active thread
    assert store.thread_read("s", started[0]).thread.message_count == 1


def test_a_session_deleted_meanwhile_records_nothing(store: MemoryStore) -> None:
    message = Meddling({"type": "user", "content": "late"}, lambda: store.delete_session("s"))
    with pytest.raises(SessionNotFound):
        store.record_messages("s", [message])
    store.create_session("s", "local")  # a new session of that id starts empty
    assert _contents(store) == []


def test_a_store_closed_meanwhile_refuses_the_batch(store: MemoryStore) -> None:
    message = Meddling({"type": "user", "content": "late"}, store.close)
    with pytest.raises(StoreError, match="closed"):
        store.record_messages("s", [message])


def test_a_bad_message_in_a_batch_stores_none_of_it(store: MemoryStore) -> None:
    with pytest.raises(Exception, match="type"):
        store.record_messages("s", [{"type": "user", "content": "ok"}, {"content": "no type"}])
    assert _contents(store) == []
    assert store.get_session("s").message_count == 0


def _native(kind: MessageType, content: str) -> Message:
    """A JSON-native message, as the library builds them (kept as it is when appended)."""
    uuid = str(uuid5(NAMESPACE_OID, f"{kind.value}-{content}"))  # the same in both stores
    message = _new_message(kind, True, content=content, session_id="s", uuid=uuid)
    assert message.is_json_native
    return message


def _batch(form: str, label: str) -> list[Any]:
    if form == "native":
        return [_native(MessageType.USER, label), _native(MessageType.ASSISTANT, label)]
    return [{"type": "user", "content": label}, {"type": "assistant", "content": label}]


@pytest.mark.parametrize("form", ["dicts", "native"])
def test_threads_appending_while_others_fork_and_revert_lose_and_reorder_nothing(
    form: str,
) -> None:
    with MemoryStore() as store:
        for n in range(4):
            store.create_session(f"s{n}", "local")
        per_writer = 300
        failures: list[BaseException] = []
        stop = threading.Event()

        seqs: dict[str, list[int]] = {f"s{n}": [] for n in range(4)}

        def write(writer: int) -> None:
            try:
                for i in range(per_writer):
                    session_id = f"s{(writer + i) % 4}"
                    seqs[session_id] += store.record_messages(
                        session_id, _batch(form, f"w{writer}-{i}")
                    )
            except BaseException as exc:  # reported below
                failures.append(exc)

        def meddle() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                store.fork_session(f"s{n % 4}", session_id=f"fork{n}")  # indexes the appends
                store.get_session(f"s{n % 4}")  # folds the appends into the record
                store.delete_session(f"fork{n}")

        writers = [threading.Thread(target=write, args=(w,)) for w in range(8)]
        meddler = threading.Thread(target=meddle)
        meddler.start()
        for t in writers:
            t.start()
        for t in writers:
            t.join(60)
        stop.set()
        meddler.join(60)
        assert failures == []
        total = 0
        for n in range(4):
            stored = store.get_session_messages(f"s{n}")
            total += len(stored)
            # Every batch got its own seqs: together exactly 1..n, none given twice.
            assert sorted(seqs[f"s{n}"]) == list(range(1, len(stored) + 1))
            assert store.get_session(f"s{n}").message_count == len(stored)
            by_writer: dict[str, list[int]] = {}
            for user, answer in zip(stored[::2], stored[1::2], strict=True):
                assert (user["type"], answer["type"]) == ("user", "assistant")
                assert user["content"] == answer["content"]  # a batch is never split
                writer, i = user["content"].split("-")
                by_writer.setdefault(writer, []).append(int(i))
            for seen in by_writer.values():
                assert seen == sorted(seen)
        assert total == 8 * per_writer * 2


def _history_ops(store: Any) -> list[Any]:
    """Appends in both forms (lock-light and locked) between reads; what each read gave."""
    seen: list[Any] = []
    store.create_session("s", "local")
    store.record_messages("s", _batch("native", "n1"))
    store.record_messages("s", _batch("dicts", "d1"))
    seen.append(store.get_session_messages("s"))
    store.record_messages(
        "s", [_native(MessageType.USER, "n2"), {"type": "result", "content": "m"}]
    )
    marker = _native(MessageType.ASSISTANT, "n3")
    store.record_messages("s", [marker, _native(MessageType.RESULT, "n3")])
    seen.append(store.get_session("s").message_count)
    seen.append(store.get_session_messages("s", offset=3, limit=4))
    store.revert_session("s", {"uuid": marker.uuid})  # found among unindexed appends
    seen.append(store.get_session("s").visible_message_count)
    store.unrevert_session("s")
    thread = store.thread_start("s", thread_id="t1")
    store.record_messages("s", _batch("native", "n4"))  # a thread's: the locked path
    store.record_messages("s", _batch("dicts", "d4"))
    seen.append(
        [
            m.get("content")
            for m in store.thread_read("s", thread.thread_id, include_messages=True).messages or ()
        ]
    )
    store.fork_session("s", session_id="f")
    store.record_messages("f", _batch("native", "f1"))
    seen.append(store.get_session_messages("f"))
    seen.append(store.get_session_messages("s"))
    seen.append(store.get_session("s").message_count)
    return seen


def test_appends_indexed_on_read_read_back_as_in_a_store_that_indexes_at_once(
    tmp_path: Any,
) -> None:
    """The memory store numbers and wraps lock-light appends when next read; SQLite at once."""
    with MemoryStore() as store:
        ours = _history_ops(store)
    with SqliteStore(tmp_path / "s.db") as sqlite:
        reference = _history_ops(sqlite)
    assert ours == reference
    assert ours[1] == 8
    assert ours[-1] == 12


def test_an_exception_while_indexing_loses_and_repeats_nothing(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill (an exception raised in the reading thread) halfway through the indexing."""
    store.record_messages("s", _batch("native", "a"))
    store.record_messages("s", _batch("native", "b"))
    real = memory._Message.__init__
    made = 0

    def killed_at_the_third(self: Any, *args: Any) -> None:
        nonlocal made
        made += 1
        if made == 3:
            raise KeyboardInterrupt  # what a kill raises: not an Exception
        real(self, *args)

    monkeypatch.setattr(memory._Message, "__init__", killed_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        store.get_session_messages("s")
    monkeypatch.undo()
    store.record_messages("s", _batch("native", "c"))
    assert _contents(store) == ["a", "a", "b", "b", "c", "c"]
    assert store.record_message("s", {"type": "user", "content": "d"}) == 7
    assert store.get_session("s").message_count == 7
