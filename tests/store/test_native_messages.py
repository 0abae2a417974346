"""Messages recorded as ``Message`` objects: the memory store keeps JSON-native ones as they are.

Whatever form a message comes in (a dict, a ``Message``, a JSON-native ``Message`` the
library built), both stores give back the same dicts and refuse the same inputs; the
memory store's fast path for JSON-native messages must not change what anyone reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given

from beamagent.backends.local import LocalAgent
from beamagent.errors import InvalidOption
from beamagent.messages import Message, MessageType, _normalize_owned
from beamagent.store import MemoryStore, SessionStore
from tests.messages.test_messages import heavy, json_objects
from tests.messages.test_trusted import parsed_line
from tests.store._stores import STORE_KINDS, open_test_store


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionStore]:
    opened = open_test_store(request, tmp_path)
    opened.create_session("s1", "local")
    yield opened
    opened.close()


def _agent(**options: Any) -> tuple[LocalAgent, list[Message]]:
    agent = LocalAgent(
        native_session_id="local-" + "0" * 32,
        model="local-echo",
        cwd="/w",
        permission_mode=None,
        session_id="s1",
        **options,
    )
    got: list[Message] = []
    agent.attach(lambda _data: None, lambda _status: None)
    agent.attach_messages(got.extend)
    return agent, got


def _reply(agent: LocalAgent, got: list[Message], prompt: str = "hi") -> list[Message]:
    agent.receive(json.dumps({"type": "query", "prompt": prompt}).encode() + b"\n")
    answer = list(got)
    got.clear()
    return answer


def _round_trip(message: Message) -> dict[str, Any]:
    decoded = json.loads(json.dumps(message.to_dict(), allow_nan=False))
    assert isinstance(decoded, dict)
    return decoded


def test_the_local_agent_builds_json_native_messages() -> None:
    agent, got = _agent()
    answer = _reply(agent, got)
    assert [m.type for m in answer] == [MessageType.SYSTEM, MessageType.ASSISTANT, "result"]
    assert all(m.is_json_native for m in answer)
    assert all(m.to_dict() == _round_trip(m) for m in answer)


def test_the_agent_stamps_a_session_id_as_valid_text() -> None:
    agent = LocalAgent(
        native_session_id="local-x", model="m", cwd=None, permission_mode=None, session_id="s\udce9"
    )
    got: list[Message] = []
    agent.attach(lambda _data: None, lambda _status: None)
    agent.attach_messages(got.extend)
    answer = _reply(agent, got)
    assert {m.session_id for m in answer} == {"s\ufffd"}
    assert all(m.is_json_native for m in answer)


@pytest.mark.parametrize("commands", [[b"bytes"], [{1: "int key"}], [{"set": {1, 2}}]])
def test_an_init_message_holding_options_json_cannot_give_back_is_not_native(
    commands: list[Any],
) -> None:
    agent, got = _agent(commands=commands)
    init, *_rest = _reply(agent, got)
    assert init.type is MessageType.SYSTEM
    assert not init.is_json_native


def test_only_the_trusted_builders_mark_a_message_native() -> None:
    agent, got = _agent()
    native = _reply(agent, got)[1]
    assert native.is_json_native
    assert not Message("text", content="hi").is_json_native
    assert not attrs.evolve(native).is_json_native  # converters ran: no promise kept
    assert not Message.from_dict(native.to_dict()).is_json_native
    assert native.with_fields(session_id="s2").is_json_native  # a str stamped: still JSON
    assert not native.with_fields(session_id="caf\udce9").is_json_native
    assert attrs.evolve(native) == native  # the mark is not part of the value


def test_a_message_object_is_stored_as_its_dict(store: SessionStore) -> None:
    agent, got = _agent()
    answer = _reply(agent, got)
    plain = Message("user", content="hi", uuid="u1", usage={"n": 1})
    store.record_messages("s1", [plain, *answer])
    stored = store.get_session_messages("s1")
    assert stored == [_round_trip(m) for m in (plain, *answer)]


def test_native_messages_take_the_active_thread_and_fork_with_it(store: SessionStore) -> None:
    agent, got = _agent()
    store.thread_start("s1", thread_id="t1")
    answer = _reply(agent, got)
    store.record_messages("s1", answer)
    stored = store.get_session_messages("s1")
    assert [m["thread_id"] for m in stored] == ["t1"] * 3
    assert stored == [{**_round_trip(m), "thread_id": "t1"} for m in answer]
    fork = store.thread_fork("s1", "t1")
    copies = store.get_session_messages("s1")[3:]
    assert copies == [{**m, "thread_id": fork.thread_id} for m in stored]
    detail = store.thread_read("s1", "t1", include_messages=True)
    assert list(detail.messages or ()) == stored


def test_what_readers_get_cannot_change_the_store(store: SessionStore) -> None:
    agent, got = _agent()
    store.record_messages("s1", _reply(agent, got))
    before = store.get_session_messages("s1")
    for message in store.get_session_messages("s1"):
        message["type"] = "changed"
        message["usage" if "usage" in message else "system_info"]["x"] = 1
        for block in message.get("content_blocks", []):
            block["text"] = "changed"
    assert store.get_session_messages("s1") == before


def test_a_message_object_that_is_not_json_is_refused_by_both(store: SessionStore) -> None:
    bad = Message("result", structured_output={"b": b"bytes"})
    with pytest.raises(InvalidOption, match="JSON"):
        store.record_messages("s1", [Message("user", content="ok"), bad])
    assert store.get_session("s1").message_count == 0  # the batch is atomic


def test_a_non_message_non_mapping_is_still_refused(store: SessionStore) -> None:
    with pytest.raises(InvalidOption, match="mapping or a Message"):
        store.record_messages("s1", [["type", "user"]])


def test_native_messages_are_found_by_their_columns(store: SessionStore) -> None:
    agent, got = _agent()
    answer = _reply(agent, got)
    store.record_messages("s1", answer)
    assert store.get_session_messages("s1", types="assistant") == [_round_trip(answer[1])]
    assert answer[2].uuid is not None
    # A retry of the same batch stores nothing twice (columns hold the uuids).
    assert store.record_messages("s1", answer, skip_recorded=True) == [1, 2, 3]
    reverted = store.revert_session("s1", {"uuid": answer[1].uuid})
    assert reverted.visible_message_count == 2
    assert store.get_session("s1").model == "local-echo"


@given(json_objects)
@heavy
def test_a_decoded_message_reads_back_as_its_json_in_both_stores(mapping: dict[str, Any]) -> None:
    message = _normalize_owned(parsed_line(mapping), now_ms=1, json_native=True)
    assert message.is_json_native
    memory = MemoryStore()
    memory.create_session("s1", "local")
    memory.record_messages("s1", [message])
    assert memory.get_session_messages("s1") == [_round_trip(message)]
