"""The ``local`` backend's two codecs: in-process messages (default) and JSON lines."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from beamagent import LocalExit, Runtime
from beamagent.backends.base import InProcessTransport
from beamagent.backends.local import CODECS, LocalHandler, LocalTransport
from beamagent.errors import BufferOverflow, InvalidOption, TransportError
from beamagent.messages import Message, MessageType

LONE = "caf\udce9"  # a lone surrogate (what os.fsdecode makes of b"caf\xe9")

SCRIPTS: dict[str, Any] = {
    "echo": None,
    "texts": [["one", "two words", "", "h\u00e9llo \U0001f600", LONE]],
    "dicts": [
        [
            "before",
            {"type": "assistant", "message": {"content": [{"type": "text", "text": "in a dict"}]}},
            {"type": "error", "error": {"message": "overloaded"}},
            {"type": "custom_event", "n": (1, 2)},
            {"type": "result", "subtype": "success", "result": "mine", "num_turns": 7},
        ]
    ],
}


def _comparable(message: Message) -> dict[str, Any]:
    """What must agree between the codecs: all but ids, clocks and the wire dict."""
    data = attrs.evolve(message, raw=None).to_dict()
    for volatile in ("uuid", "session_id", "timestamp", "duration_ms"):
        data.pop(volatile, None)
    info = data.get("system_info")
    if info is not None:
        info.pop("uuid")
    return data


def _run(rt: Runtime, codec: str, script: Any, prompts: list[str]) -> list[list[Message]]:
    options: dict[str, Any] = {"native_session_id": "local-fixed-native", "codec": codec}
    if script is not None:
        options["replies"] = script
    session = rt.start_session(backend="local", cwd="/w\u00f6rk", **options)
    return [session.query(prompt) for prompt in prompts]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_both_codecs_give_the_same_messages(name: str) -> None:
    prompts = ["hi there", "second \u00e9 \U0001f600"]
    with Runtime(store=":memory:") as rt:
        ours = _run(rt, "messages", SCRIPTS[name], prompts)
        wire = _run(rt, "jsonl", SCRIPTS[name], prompts)
    comparable = [[_comparable(m) for m in q] for q in ours]
    assert comparable == [[_comparable(m) for m in q] for q in wire]
    # Built in-process: no wire dict, except where the script itself gave one (a dict).
    built = [m for q in ours for m in q if m.raw is None]
    assert len(built) >= 3 * len(prompts) - (3 if name == "dicts" else 0)
    assert all(m.raw is not None for q in wire for m in q)
    for run in (ours, wire):  # stamped with the canonical id, whoever stamped them
        assert len({m.session_id for q in run for m in q}) == 1
        assert run[0][0].session_id.startswith("session_")


def test_stored_history_reads_back_equal_to_what_was_delivered(tmp_path: Any) -> None:
    for store in (":memory:", tmp_path / "s.db"):
        with Runtime(store=store) as rt:
            for codec in ("messages", "jsonl"):
                session = rt.start_session(backend="local", codec=codec, replies=SCRIPTS["dicts"])
                delivered = session.query("q") + session.query("echo me")
                stored = rt.get_session_messages(session)
                assert [m for m in stored if m.type is not MessageType.USER] == delivered
                assert [m.content for m in stored if m.type is MessageType.USER] == ["q", "echo me"]


def test_both_codecs_report_the_same_handshake() -> None:
    # The messages codec takes the agent's answer to initialize without JSON lines.
    facts = ("supported_models", "supported_commands", "supported_agents", "account_info")
    options = {"native_session_id": "local-fixed-native", "models": ["m1", "m2"]}
    with Runtime(store=":memory:") as rt:
        infos = [
            rt.start_session(backend="local", codec=codec, **options).session_info()
            for codec in ("messages", "jsonl")
        ]
    assert [info["state"] for info in infos] == ["ready", "ready"]
    assert {k: infos[0][k] for k in facts} == {k: infos[1][k] for k in facts}
    assert infos[0]["supported_models"][1] == {"value": "m2", "displayName": "m2"}
    assert infos[0]["native_session_id"] == infos[1]["native_session_id"] == "local-fixed-native"


def test_sessions_on_the_default_names_share_the_handshake_facts_not_their_own() -> None:
    # The second and later sessions with the agent's default names reuse the first's
    # handshake facts (not rebuilt per start): the same facts as the JSONL codec's, each
    # session its own native id and its own copy of what it may change.
    facts = ("supported_models", "supported_commands", "supported_agents", "account_info")
    with Runtime(store=":memory:") as rt:
        sessions = [rt.start_session(backend="local") for _ in range(3)]
        sessions.append(rt.start_session(backend="local", codec="jsonl"))
        infos = [session.session_info() for session in sessions]
        infos[0]["account_info"]["email"] = "changed@example.com"  # a copy: nothing shared
        again = sessions[1].session_info()
    for info in infos[1:]:
        assert {k: info[k] for k in facts} == {k: infos[-1][k] for k in facts}
    assert again["account_info"] == {"provider": "local", "email": None}
    assert len({info["native_session_id"] for info in infos}) == 4
    assert infos[1]["supported_models"][0] == {"value": "local-echo", "displayName": "local-echo"}


def test_the_codec_chooses_the_transport() -> None:
    assert isinstance(LocalHandler({}).open_transport(), LocalTransport)
    assert isinstance(LocalHandler({"codec": "messages"}).open_transport(), LocalTransport)
    assert isinstance(LocalHandler({"codec": "jsonl"}).open_transport(), InProcessTransport)
    for bad in ("json", None, 1):
        with pytest.raises(InvalidOption, match="codec"):
            LocalHandler({"codec": bad})


def test_raw_bytes_switch_the_agent_to_json_lines_for_good() -> None:
    line = b'{"type":"assistant","message":{"content":[{"type":"text","text":"from bytes"}]}}\n'
    script = [["first", line, "after"], "next query"]
    with Runtime(store=":memory:") as rt:
        session = rt.start_session(backend="local", replies=script)
        first = session.query("a")
        second = session.query("b")
    assert [m.content for m in first] == [None, "first", "from bytes", "after", "firstafter"]
    init, built, from_bytes, *rest = first
    assert (init.raw, built.raw) == (None, None)  # sent before the bytes: messages
    assert from_bytes.raw is not None
    assert all(m.raw is not None for m in [*rest, *second])  # after them: JSON lines
    assert second[-1].content == "next query"


def test_a_partial_line_is_completed_by_what_follows_as_under_jsonl() -> None:
    # The bytes leave a line open; the next item's line closes it into one garbage line,
    # which the decoder skips: the same outcome as the JSONL codec's.
    script = [[b'{"type":"assistant", "oops', "swallowed", "kept"]]
    results = {}
    with Runtime(store=":memory:") as rt:
        for codec in ("messages", "jsonl"):
            session = rt.start_session(backend="local", replies=script, codec=codec)
            results[codec] = [m.content for m in session.query("x")]
    assert results["messages"] == results["jsonl"] == [None, "kept", "swallowedkept"]


def test_an_unterminated_line_is_a_buffer_overflow_without_naming_the_codec() -> None:
    def reply(prompt: str, params: Mapping[str, Any]) -> Iterator[Any]:
        yield "some text"
        yield b"x" * 5000

    with Runtime(store=":memory:", session_defaults={"error_linger": 0}) as rt:
        session = rt.start_session(backend="local", reply=reply, buffer_max=1000)
        with pytest.raises(BufferOverflow):
            session.query("overflow")


def test_an_exit_after_messages_delivers_them_first() -> None:
    with Runtime(store=":memory:", session_defaults={"error_linger": 0}) as rt:
        session = rt.start_session(backend="local", replies=[["said", LocalExit(4)]])
        with pytest.raises(TransportError, match="status 4"):
            session.query("x")
        stored = rt.get_session_messages(session)
    assert [m.content for m in stored] == ["x", None, "said"]


def test_streamed_replies_and_interrupts_in_message_mode() -> None:
    release = threading.Event()

    def reply(prompt: str, params: Mapping[str, Any]) -> Iterator[str]:
        yield "partial"
        release.wait(10)
        yield "late"

    with Runtime(store=":memory:") as rt:
        session = rt.start_session(backend="local", reply=reply)
        ref = session.send_query("slow")
        assert session.receive_message(ref, 5).type is MessageType.SYSTEM
        partial = session.receive_message(ref, 5)
        assert (partial.content, partial.raw) == ("partial", None)
        session.interrupt()
        release.set()
        again = [m.content for m in session.query("again")]
        assert again == [None, "partial", "late", "partiallate"]
        assert session.health() == "ready"


@pytest.mark.parametrize("codec", CODECS)
def test_a_reply_with_a_history_parameter_sees_the_conversation(codec: str) -> None:
    seen: list[list[tuple[str, str | None]]] = []

    def reply(prompt: str, params: Mapping[str, Any], history: Any) -> Any:
        seen.append([(m.type.value, m.content) for m in history])
        return ["part one", "part two"] if prompt == "two parts" else f"re:{prompt}"

    with Runtime(store=":memory:") as rt:
        session = rt.start_session(backend="local", codec=codec, reply=reply)
        session.query("two parts")
        session.query("next")
        session.stop()
        resumed = rt.start_session(resume=session.session_id, codec=codec, reply=reply)
        resumed.query("after resume")

    parts = [("user", "two parts"), ("assistant", "part one"), ("assistant", "part two")]
    assert seen == [
        [],
        parts,
        [*parts, ("user", "next"), ("assistant", "re:next")],  # replayed from the store
    ]


def test_a_reply_without_a_history_parameter_is_called_as_before() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def reply(prompt: str, params: Mapping[str, Any]) -> str:
        calls.append((prompt, dict(params)))
        return "ok"

    with Runtime(store=":memory:") as rt:
        session = rt.start_session(backend="local", reply=reply)
        session.query("one", temperature=0)
        session.stop()
        rt.start_session(resume=session.session_id, reply=reply).query("two")
    assert calls == [("one", {"temperature": 0}), ("two", {})]


@given(st.text(st.characters(exclude_categories=())) | st.sampled_from([LONE, 'a"\\\n']))
def test_a_query_command_carries_exactly_what_its_line_decodes_to(prompt: str) -> None:
    # The messages codec's agent takes the carried command instead of parsing the line:
    # it must be what parsing would give, and the line the one the jsonl codec writes.
    from beamagent.backends.jsonl import decode_lines

    line = LocalHandler({"session_id": "s"}).encode_query(prompt, {}).writes[0]
    jsonl = LocalHandler({"session_id": "s", "codec": "jsonl"}).encode_query(prompt, {})
    assert line == jsonl.writes[0]
    assert not hasattr(jsonl.writes[0], "command")  # the jsonl codec parses its commands
    (decoded,) = decode_lines(line).objects
    assert line.command == decoded  # type: ignore[attr-defined]
    assert type(line.command["prompt"]) is str  # type: ignore[attr-defined]


def _agent(**options: Any) -> tuple[Any, list[Message], list[bytes]]:
    from beamagent.backends.local import LocalAgent

    agent = LocalAgent(
        native_session_id="local-fixed-native",
        model="local-echo",
        cwd=None,
        permission_mode=None,
        session_id="session_s",
        **options,
    )
    messages: list[Message] = []
    lines: list[bytes] = []
    agent.attach(lines.append, lambda _status: None)
    return agent, messages, lines


@given(st.text(st.characters(exclude_categories=())) | st.sampled_from([LONE, "", "a b  c"]))
def test_the_echo_fast_path_builds_what_the_general_path_and_the_wire_give(prompt: str) -> None:
    # The default reply (no script) skips the general per-item dispatch: its messages
    # must be the general path's (a script of the same one text), and what the JSONL codec
    # decodes from the lines the agent writes without a message channel.
    import json

    command = LocalHandler({"session_id": "session_s"}).encode_query(prompt, {}).writes[0]
    fast, fast_out, _ = _agent()
    fast.attach_messages(fast_out.extend)
    general, general_out, _ = _agent(replies=[prompt])
    general.attach_messages(general_out.extend)
    wire, _, lines = _agent()
    for agent in (fast, general, wire):
        agent.receive(command)
    jsonl = LocalHandler({"session_id": "session_s", "codec": "jsonl"})
    decoded = list(jsonl.handle_data(b"".join(lines))[0].messages)
    assert [m.type for m in fast_out] == [
        MessageType.SYSTEM,
        MessageType.ASSISTANT,
        MessageType.RESULT,
    ]
    expected = [_comparable(m) for m in general_out]
    assert [_comparable(m) for m in fast_out] == expected
    assert [_comparable(m) for m in decoded] == expected
    for message in fast_out:
        assert message.is_json_native
        data = message.to_dict()
        assert json.loads(json.dumps(data)) == data  # canonical JSON, as promised
        assert Message.from_dict(data) == message  # what the validating constructor builds
        assert message.session_id == "session_s"


def test_init_messages_share_only_read_only_static_lists() -> None:
    agent, out, _ = _agent(commands=["/help"], agents=["general"])
    agent.attach_messages(out.extend)
    command = LocalHandler({"session_id": "session_s"}).encode_query("hi", {}).writes[0]
    agent.receive(command)
    agent.receive(command)
    first, second = out[0], out[3]
    assert first.system_info is not None
    assert second.system_info is not None
    assert first.system_info is not second.system_info  # each has its own uuid
    assert first.system_info["uuid"] == first.uuid != second.uuid
    assert first.system_info["slash_commands"] == ["/help"]
    # A change of model gives the next init message the new model, not a stale cache.
    agent.receive(LocalHandler({"session_id": "session_s"}).set_model("other").writes[0])
    agent.receive(command)
    assert out[6].model == "other"
    assert out[6].system_info["model"] == "other"
    assert out[7].model == "other"


def test_outputs_and_events_built_past_init_equal_the_constructed_ones() -> None:
    from beamagent.backends.base import HandlerOutput, Messages, _messages_event, _output

    message = Message(MessageType.USER, content="hi")
    assert _output() == HandlerOutput()
    assert _output(messages=[message]) == HandlerOutput(messages=[message])
    assert _output(writes=[b"x\n"]) == HandlerOutput(writes=[b"x\n"])
    assert attrs.asdict(_output(messages=[message]), recurse=False) == attrs.asdict(
        HandlerOutput(messages=[message]), recurse=False
    )
    assert _messages_event([message]) == Messages([message])
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        _output().state = None  # type: ignore[misc]
