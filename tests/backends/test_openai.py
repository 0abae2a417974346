"""The ``openai`` backend against FakeModelServer's Chat Completions endpoint, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from beamagent import Runtime, Session
from beamagent.backends import openai
from beamagent.backends.base import Data, TransportEvent
from beamagent.backends.io_loop import release_idle_io_loop
from beamagent.backends.jsonl import decode_lines, encode_line
from beamagent.backends.openai import HttpStreamTransport, OpenAIHandler
from beamagent.errors import (
    Interrupted,
    InvalidOption,
    SessionError,
    TransportError,
    UnsupportedCapability,
)
from beamagent.messages import ContentBlockType, Message, MessageType
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
    assert session.session_info()["resumed"] == "replay"  # rebuilt from the store
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


def our_threads() -> int:
    """Threads of this process, leaving out the fake server's own (one per connection)."""
    return sum(1 for t in threading.enumerate() if not t.name.startswith("fake-model"))


class Lines:
    """A transport sink that decodes the JSON lines an ``HttpStreamTransport`` delivers."""

    def __init__(self) -> None:
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue()

    def __call__(self, event: TransportEvent) -> None:
        if isinstance(event, Data):
            for line in decode_lines(event.data).objects:
                self.queue.put(dict(line))

    def final(self) -> dict[str, Any]:
        """Lines until the request's last one (events are skipped)."""
        while True:
            line = self.queue.get(timeout=WAIT)
            if line["op"] != "event":
                return line


def request(request_id: int, url: str) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    return encode_line({"op": "request", "id": request_id, "url": url, "json": body})


def test_requests_in_flight_take_no_thread_each(http_server: FakeModelServer) -> None:
    http_server.script([Stall(WAIT * 3)] * 10)
    threads_before = our_threads()
    transports = [HttpStreamTransport() for _ in range(10)]
    sinks = [Lines() for _ in transports]
    try:
        for transport, sink in zip(transports, sinks, strict=True):
            transport.start(sink)
            transport.send(request(1, http_server.url + "/v1/chat/completions"))
        http_server.wait_for_requests(10, WAIT, predicate=lambda r: r.turn is not None)

        # Ten replies stalled mid-stream; the requests were one thread each before.
        assert our_threads() - threads_before <= 1

        for transport in transports:
            transport.send(encode_line({"op": "cancel", "id": 1}))
        assert [sink.final()["op"] for sink in sinks] == ["cancelled"] * 10
    finally:
        for transport in transports:
            transport.close()


def test_closing_mid_request_ends_it_and_lets_go_of_the_loop(
    http_server: FakeModelServer,
) -> None:
    http_server.script([Stall(WAIT * 3)])
    transport = HttpStreamTransport()
    sink = Lines()
    transport.start(sink)
    transport.send(request(1, http_server.url + "/v1/chat/completions"))
    http_server.wait_for_requests(1, WAIT, predicate=lambda r: r.turn is not None)

    transport.close()  # returns once the request's task has ended

    assert sink.queue.empty()  # nothing is delivered after close, not even "cancelled"
    assert release_idle_io_loop()  # no lease left: the loop's thread is gone
    assert not any(t.name == "beamagent-io" for t in threading.enumerate())
    with pytest.raises(TransportError, match="closed"):
        transport.send(request(2, http_server.url + "/v1/chat/completions"))


def test_interrupt_before_the_response_headers(start: Any) -> None:
    # A server that accepts the connection and never answers: no headers ever come.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        session = start(base_url=f"http://127.0.0.1:{silent.getsockname()[1]}/v1")
        ref = session.send_query("no answer")
        assert session.receive_message(ref, timeout=WAIT).type is MessageType.SYSTEM

        session.interrupt()

        receive_until(session, ref, Interrupted)  # not after read_timeout (600 s)
        assert session.health() == "ready"


def test_the_read_timeout_applies(start: Any, http_server: FakeModelServer) -> None:
    http_server.script([Stall(WAIT * 3)])
    session = start(read_timeout=0.3)

    messages = session.query("stalls past the read timeout", timeout=WAIT)

    [error] = of_type(messages, "error")
    assert "ReadTimeout" in (error.content or "")
    assert messages[-1].is_error is True
    assert session.health() == "ready"


def test_the_shared_client_keeps_no_cookies() -> None:
    client = openai._new_client()
    response = httpx.Response(
        200,
        headers={"set-cookie": "session=abc; Path=/"},
        request=httpx.Request("GET", "http://127.0.0.1/v1/models"),
    )

    client.cookies.extract_cookies(response)

    assert list(client.cookies.jar) == []  # one session's cookie never reaches another
    asyncio.run(client.aclose())


def test_sessions_with_queries_in_flight_take_no_thread_each(
    start: Any, http_server: FakeModelServer
) -> None:
    n = 20
    http_server.script([Stall(WAIT * 3)] * n)
    before = set(threading.enumerate())
    sessions = [start() for _ in range(n)]
    idle = our_threads()

    refs = [session.send_query(f"query {i}") for i, session in enumerate(sessions)]
    http_server.wait_for_requests(n, WAIT, predicate=lambda r: r.turn is not None)
    for session, ref in zip(sessions, refs, strict=True):
        assert session.receive_message(ref, timeout=WAIT).type is MessageType.SYSTEM
        assert session.health() == "active_query"

    # Twenty replies held back by the server, and no thread per session or request
    # (there was one per request before): the sessions run on the scheduler's workers,
    # their replies stream on the shared I/O loop.
    added = {t.name for t in set(threading.enumerate()) - before}
    ours = {name for name in added if not name.startswith("fake-model")}
    assert {name for name in ours if not name.startswith("supervisors-worker-")} <= {
        "beamagent-io",
        "supervisors-timers",
        "supervisors-scheduler-monitor",
    }
    assert our_threads() - idle <= 2  # a worker the scheduler may add meanwhile, at most
    assert len(ours) < n // 2

    for session in sessions:
        session.interrupt()
    for session, ref in zip(sessions, refs, strict=True):
        receive_until(session, ref, Interrupted)
        assert session.health() == "ready"


# --- context across resume, forks, reverts ------------------------------------------------


def sent_messages(http_server: FakeModelServer) -> list[dict[str, Any]]:
    """The conversation the last request sent to the model."""
    messages: list[dict[str, Any]] = http_server.model_requests()[-1].json["messages"]
    return messages


def exchange(prompt: str) -> list[dict[str, str]]:
    """A completed ECHO exchange as the model sees it."""
    return [
        {"role": "user", "content": f"ECHO:{prompt}"},
        {"role": "assistant", "content": prompt},
    ]


def test_stop_then_resume_sends_the_earlier_turns(
    start: Any, runtime: Runtime, http_server: FakeModelServer
) -> None:
    session = start(system_prompt="Be brief.")
    session.query("ECHO:remember pineapple", timeout=WAIT)
    session.query("ECHO:and mango", timeout=WAIT)
    session.stop()

    resumed = runtime.start_session(
        resume=session.session_id,
        base_url=http_server.url + "/v1",
        api_key="test-key-not-secret",
        system_prompt="Be brief.",
    )
    resumed.query("ECHO:what did I say?", timeout=WAIT)

    assert sent_messages(http_server) == [
        {"role": "system", "content": "Be brief."},
        *exchange("remember pineapple"),
        *exchange("and mango"),
        {"role": "user", "content": "ECHO:what did I say?"},
    ]
    info = resumed.session_info()
    assert (info["resumed"], info["replayed_turns"], info["model"]) == ("replay", 2, "fake-model")


def test_a_fork_sends_the_turns_up_to_its_fork_point(
    start: Any, runtime: Runtime, http_server: FakeModelServer
) -> None:
    session = start()
    session.query("ECHO:before the fork", timeout=WAIT)
    fork = runtime.fork_session(session)
    session.query("ECHO:only the parent", timeout=WAIT)

    forked = runtime.start_session(
        resume=fork.session_id, base_url=http_server.url + "/v1", api_key="k"
    )
    forked.query("ECHO:in the fork", timeout=WAIT)

    assert forked.session_info()["resumed"] == "replay"
    assert sent_messages(http_server) == [
        *exchange("before the fork"),
        {"role": "user", "content": "ECHO:in the fork"},
    ]


def test_a_reverted_session_sends_only_its_visible_view(
    start: Any, runtime: Runtime, http_server: FakeModelServer
) -> None:
    session = start()
    session.query("ECHO:kept", timeout=WAIT)
    kept = runtime.get_session(session).message_count
    session.query("ECHO:reverted away", timeout=WAIT)
    session.stop()
    runtime.revert_session(session, {"visible_message_count": kept})

    resumed = runtime.start_session(
        resume=session.session_id, base_url=http_server.url + "/v1", api_key="k"
    )
    resumed.query("ECHO:after the revert", timeout=WAIT)

    assert sent_messages(http_server) == [
        *exchange("kept"),
        {"role": "user", "content": "ECHO:after the revert"},
    ]


def test_a_failed_turn_is_not_replayed(
    start: Any, runtime: Runtime, http_server: FakeModelServer
) -> None:
    session = start()
    session.query("ECHO:fine", timeout=WAIT)
    http_server.script([ErrorStatus(500)])
    session.query("this one fails", timeout=WAIT)
    session.stop()

    resumed = runtime.start_session(
        resume=session.session_id, base_url=http_server.url + "/v1", api_key="k"
    )
    resumed.query("ECHO:next", timeout=WAIT)

    assert sent_messages(http_server) == [
        *exchange("fine"),
        {"role": "user", "content": "ECHO:next"},
    ]


def test_a_huge_history_is_replayed_within_the_caps(start: Any, runtime: Runtime) -> None:
    session = start()
    long_answer = "x" * 5_000
    turns = []
    for i in range(150):
        turns += [
            Message(MessageType.USER, content=f"question {i}"),
            Message(MessageType.ASSISTANT, content=f"{i}:{long_answer}"),
            Message(MessageType.RESULT, content=f"{i}:{long_answer}"),
        ]
    handler = OpenAIHandler({"model": "m", "base_url": "http://127.0.0.1:1/v1"})

    handler.replay_history(turns)

    assert 2 <= len(handler.history) <= 2 * 100
    assert sum(len(m["content"]) for m in handler.history) <= 100_000
    assert handler.history[-1]["content"].startswith("149:")  # the most recent are kept
    assert handler.history[-2] == {"role": "user", "content": "question 149"}
    session.stop()


def test_permission_modes_are_refused_honestly(
    start: Any, runtime: Runtime, http_server: FakeModelServer
) -> None:
    session = start()

    with pytest.raises(UnsupportedCapability, match="permission_mode"):
        session.set_permission_mode("plan")
    with pytest.raises(UnsupportedCapability):
        session.send_control("setPermissionMode", {"mode": "plan"})
    assert session.session_info()["permission_mode"] is None
    assert "permission_mode" not in session.session_info()["capabilities"]
    with pytest.raises(InvalidOption, match="permission_mode"):
        start(permission_mode="plan")
