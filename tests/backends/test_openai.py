"""The ``openai`` backend against FakeModelServer's Chat Completions endpoint, over real HTTP."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from beamagent import Runtime, Session
from beamagent.backends.openai import OpenAIHandler
from beamagent.errors import Interrupted, InvalidOption, SessionError
from beamagent.messages import ContentBlockType, MessageType
from beamagent.testing import ErrorStatus, FakeModelServer, Malformed, Stall, Text, ToolCall
from supervisors import send_exit
from tests.backends.conftest import of_type, receive_until, watch_incarnation

WAIT = 10.0


@pytest.fixture
def http_server() -> Iterator[FakeModelServer]:
    """The fake model in this process's network (the backend is this process)."""
    with FakeModelServer(reply="default reply") as server:
        yield server


@pytest.fixture
def start(runtime: Runtime, http_server: FakeModelServer) -> Any:
    def start_session(**options: Any) -> Session:
        options.setdefault("base_url", http_server.url + "/v1")
        options.setdefault("model", "fake-model")
        options.setdefault("api_key", "test-key-not-secret")
        return runtime.start_session(backend="openai", **options)

    return start_session


def test_plain_query_with_usage(start: Any, http_server: FakeModelServer) -> None:
    session = start()

    messages = session.query("ECHO:hello over http", timeout=WAIT)

    assert [m.type for m in messages] == [
        MessageType.SYSTEM,
        MessageType.ASSISTANT,
        MessageType.RESULT,
    ]
    init, reply, result = messages
    assert init.subtype == "init"
    assert reply.content == "hello over http"
    assert reply.stop_reason == "end_turn"
    assert result.content == "hello over http"
    assert result.subtype == "success"
    assert result.is_error is False
    assert result.usage is not None
    assert result.usage["prompt_tokens"] > 0
    assert result.usage["completion_tokens"] > 0
    assert result.usage["total_tokens"] == (
        result.usage["prompt_tokens"] + result.usage["completion_tokens"]
    )
    [request] = http_server.model_requests()
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer test-key-not-secret"
    assert request.json["model"] == "fake-model"
    assert request.json["stream"] is True
    assert request.json["stream_options"] == {"include_usage": True}
    assert request.json["messages"] == [{"role": "user", "content": "ECHO:hello over http"}]


def test_streaming_order(start: Any) -> None:
    session = start(include_partial_messages=True)
    text = "a fairly long reply that the fake server streams in several pieces"

    messages = list(session.stream(f"ECHO:{text}", timeout=WAIT))

    kinds = [m.type for m in messages]
    assert kinds[0] is MessageType.SYSTEM
    assert kinds[-2:] == [MessageType.ASSISTANT, MessageType.RESULT]
    deltas = of_type(messages, "stream_event")
    assert len(deltas) > 1
    assert kinds[1 : 1 + len(deltas)] == [MessageType.STREAM_EVENT] * len(deltas)
    assert "".join(d.content or "" for d in deltas) == text
    assert messages[-1].content == text
    stamps = [m.timestamp or 0 for m in messages]
    assert stamps == sorted(stamps)


def test_messages_arrive_before_the_reply_is_complete(
    start: Any, http_server: FakeModelServer
) -> None:
    http_server.script([Stall(WAIT)])
    session = start()
    ref = session.send_query("stalls")

    # The init message is delivered while the server still holds the reply back.
    first = session.receive_message(ref, timeout=WAIT)
    assert first.type is MessageType.SYSTEM
    assert session.health() == "active_query"
    session.interrupt()


def test_two_turns_keep_the_conversation(start: Any, http_server: FakeModelServer) -> None:
    session = start(system_prompt="You are a test.")

    session.query("ECHO:first", timeout=WAIT)
    second = session.query("ECHO:second", timeout=WAIT)

    assert second[-1].content == "second"
    assert http_server.model_requests()[-1].json["messages"] == [
        {"role": "system", "content": "You are a test."},
        {"role": "user", "content": "ECHO:first"},
        {"role": "assistant", "content": "first"},
        {"role": "user", "content": "ECHO:second"},
    ]
    assert session.session_info()["history_messages"] == 4


def test_query_params_go_into_the_body(start: Any, http_server: FakeModelServer) -> None:
    session = start(extra_body={"seed": 7})

    session.query("ECHO:tuned", timeout=WAIT, temperature=0.25, max_tokens=50)

    body = http_server.model_requests()[-1].json
    assert (body["temperature"], body["max_tokens"], body["seed"]) == (0.25, 50, 7)


def test_interrupt_mid_turn(start: Any, http_server: FakeModelServer) -> None:
    http_server.script([Stall(WAIT * 3)])
    session = start()
    ref = session.send_query("this one stalls")
    http_server.wait_for_requests(1, WAIT, predicate=lambda r: r.turn is not None)

    session.interrupt()

    receive_until(session, ref, Interrupted)
    after = session.query("ECHO:after", timeout=WAIT)
    assert after[-1].content == "after"
    # The interrupted exchange is not part of the conversation.
    assert http_server.model_requests()[-1].json["messages"] == [
        {"role": "user", "content": "ECHO:after"}
    ]


def test_error_status_gives_an_error_message_and_a_usable_session(
    start: Any, http_server: FakeModelServer
) -> None:
    http_server.script([ErrorStatus(503, message="overloaded, try later")])
    session = start()

    messages = session.query("fails", timeout=WAIT)

    [error] = of_type(messages, "error")
    assert "503" in (error.content or "")
    assert "overloaded, try later" in (error.content or "")
    assert error.error_info is not None
    assert error.error_info["status"] == 503
    assert messages[-1].type is MessageType.RESULT
    assert messages[-1].is_error is True
    assert session.health() == "ready"
    assert session.query("ECHO:recovered", timeout=WAIT)[-1].content == "recovered"
    # The failed exchange is not replayed to the model.
    assert http_server.model_requests()[-1].json["messages"] == [
        {"role": "user", "content": "ECHO:recovered"}
    ]


def test_malformed_stream_is_an_error(start: Any, http_server: FakeModelServer) -> None:
    http_server.script([Malformed()])
    session = start()

    messages = session.query("garbled", timeout=WAIT)

    [error] = of_type(messages, "error")
    assert "malformed stream" in (error.content or "")
    assert session.query("ECHO:fine", timeout=WAIT)[-1].content == "fine"


def test_connection_refused_is_an_error(start: Any) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    session = start(base_url=f"http://127.0.0.1:{port}/v1")

    messages = session.query("nobody there", timeout=WAIT)

    [error] = of_type(messages, "error")
    assert "ConnectError" in (error.content or "")
    assert session.health() == "ready"


def test_tool_calls_are_reported_in_the_assistant_message(
    start: Any, http_server: FakeModelServer
) -> None:
    http_server.script([ToolCall(command="ls", tool="run")])
    session = start()

    messages = session.query("use a tool", timeout=WAIT, tools=[_tool("run")])

    [use] = [
        b
        for b in of_type(messages, "assistant")[0].content_blocks
        if b.type is ContentBlockType.TOOL_USE
    ]
    assert use.name == "run"
    assert use.input == {"command": "ls"}
    assert messages[-1].stop_reason == "tool_use"


def test_crash_restarts_and_the_conversation_goes_on(
    start: Any, runtime: Runtime, http_server: FakeModelServer
) -> None:
    session = start()
    session.query("ECHO:remember pineapple", timeout=WAIT)
    http_server.script([Stall(WAIT * 3)])
    ref = session.send_query("dies mid-turn")
    http_server.wait_for_requests(2, WAIT, predicate=lambda r: r.turn is not None)
    incarnation = watch_incarnation(runtime, session)

    send_exit(runtime._session_ref(session.session_id), "simulated crash")

    incarnation.wait(WAIT)
    # The query died with its incarnation: the restarted session says so.
    with pytest.raises(SessionError, match="restarted"):
        session.receive_message(ref, timeout=WAIT)
    messages = session.query("ECHO:back", timeout=WAIT)
    assert messages[-1].content == "back"
    assert session.session_info()["incarnation"] == 2
    assert http_server.model_requests()[-1].json["messages"] == [
        {"role": "user", "content": "ECHO:remember pineapple"},
        {"role": "assistant", "content": "remember pineapple"},
        {"role": "user", "content": "ECHO:back"},
    ]


def test_set_model_applies_to_the_next_request(start: Any, http_server: FakeModelServer) -> None:
    session = start()

    session.set_model("other-model")
    session.query("ECHO:switched", timeout=WAIT)

    assert http_server.model_requests()[-1].json["model"] == "other-model"
    assert session.session_info()["model"] == "other-model"


def test_options_are_checked(runtime: Runtime, http_server: FakeModelServer) -> None:
    with pytest.raises(InvalidOption, match="model"):
        runtime.start_session(backend="openai", base_url=http_server.url + "/v1")
    with pytest.raises(InvalidOption, match="base_url"):
        runtime.start_session(backend="openai", model="m", base_url="ftp://nowhere")


def test_availability_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert OpenAIHandler.availability()[0] is False
    assert "base_url" in OpenAIHandler.availability()[1]
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    assert OpenAIHandler.availability()[0] is True


def _tool(name: str) -> dict[str, Any]:
    return json.loads(
        json.dumps(
            {
                "type": "function",
                "function": {
                    "name": name,
                    "parameters": {
                        "type": "object",
                        "properties": {"command": {"type": "string"}},
                        "required": ["command"],
                    },
                },
            }
        )
    )


def test_text_turn_scripted(start: Any, http_server: FakeModelServer) -> None:
    http_server.script([Text("scripted answer")])
    session = start()

    assert session.query("anything", timeout=WAIT)[-1].content == "scripted answer"
