"""FakeModelServer over plain HTTP (urllib / http.client): every protocol, every turn kind."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beamagent.testing import (
    ErrorStatus,
    FakeModelServer,
    LoopbackNamespace,
    Malformed,
    Protocol,
    Stall,
    Text,
    ToolCall,
    example_from_schema,
    is_side_request,
    loopback_namespace_available,
    shell_tool_arguments,
)

# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FakeModelServer]:
    with FakeModelServer(reply="Hello there, tester.") as srv:
        yield srv


def call(
    server: FakeModelServer,
    path: str,
    body: Any = None,
    *,
    method: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request; returns status, lower-cased headers and the raw body (errors too)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        server.url + path,
        data=data,
        method=method or ("POST" if data is not None else "GET"),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return (
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                (response.read()),
            )
    except urllib.error.HTTPError as error:
        with error:
            return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def sse(raw: bytes) -> list[tuple[str | None, str]]:
    """(event, data) pairs of an SSE body."""
    events: list[tuple[str | None, str]] = []
    for block in raw.decode().replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].strip())
        if data:
            events.append((name, "\n".join(data)))
    return events


def sse_json(raw: bytes) -> list[tuple[str | None, Any]]:
    return [(name, json.loads(data)) for name, data in sse(raw) if data != "[DONE]"]


def anthropic_body(content: Any, *, stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-test",
        "max_tokens": 100,
        "stream": stream,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


BASH_TOOL: dict[str, Any] = {
    "name": "Bash",
    "description": "Run a command",
    "input_schema": {
        "type": "object",
        "properties": {
            "command": {"type": "string"},
            "timeout": {"type": "number"},
            "description": {"type": "string"},
        },
        "required": ["command"],
    },
}
READ_TOOL: dict[str, Any] = {
    "name": "Read",
    "input_schema": {
        "type": "object",
        "properties": {"file_path": {"type": "string"}},
        "required": ["file_path"],
    },
}


# --- Anthropic Messages --------------------------------------------------------------------------


def test_anthropic_stream_has_the_real_event_sequence_and_usage(server: FakeModelServer) -> None:
    status, headers, raw = call(server, "/v1/messages?beta=true", anthropic_body("hi"))

    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    events = sse_json(raw)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert len(names[3:-3]) > 1
    assert all(data["type"] == name for name, data in events)
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "Hello there, tester."
    start = events[0][1]["message"]
    assert start["role"] == "assistant"
    assert start["content"] == []
    assert start["model"] == "claude-test"
    assert start["usage"]["input_tokens"] > 0
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"]["output_tokens"] >= 1
    assert server.requests[-1].query == {"beta": "true"}


def test_anthropic_non_stream_returns_a_message(server: FakeModelServer) -> None:
    status, _, raw = call(server, "/v1/messages", anthropic_body("hi", stream=False))

    assert status == 200
    message = json.loads(raw)
    assert message["type"] == "message"
    assert message["content"] == [{"type": "text", "text": "Hello there, tester."}]
    assert message["stop_reason"] == "end_turn"
    assert message["usage"]["input_tokens"] > 0
    assert message["usage"]["output_tokens"] > 0


def test_anthropic_echo_finds_the_prompt_among_reminders_and_trailing_system_notes(
    server: FakeModelServer,
) -> None:
    # Claude Code's shape: reminder blocks before the prompt, a system note after it.
    body = anthropic_body(
        [
            {"type": "text", "text": "<system-reminder>x</system-reminder>"},
            {"type": "text", "text": "ECHO:hello world", "cache_control": {"type": "ephemeral"}},
        ],
        stream=False,
    )
    body["messages"].append({"role": "system", "content": "agents: ..."})

    _, _, raw = call(server, "/v1/messages", body)

    assert json.loads(raw)["content"][0]["text"] == "hello world"


def test_anthropic_tool_call_then_tool_result_then_scripted_text(server: FakeModelServer) -> None:
    server.script([ToolCall(command="touch /tmp/x"), Text("ran it")])
    first = anthropic_body("ECHO:ignored", tools=[READ_TOOL, BASH_TOOL])

    _, _, raw = call(server, "/v1/messages", first)

    events = sse_json(raw)
    block = next(d["content_block"] for n, d in events if n == "content_block_start")
    assert block["type"] == "tool_use"
    assert block["name"] == "Bash"
    assert block["id"].startswith("toolu_")
    partial = "".join(
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    )
    assert json.loads(partial) == {"command": "touch /tmp/x"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"

    history = first["messages"] + [
        {"role": "assistant", "content": [{**block, "input": json.loads(partial)}]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": block["id"], "content": ""}],
        },
    ]
    _, _, raw = call(server, "/v1/messages", {**first, "messages": history})
    text = "".join(d["delta"]["text"] for n, d in sse_json(raw) if n == "content_block_delta")
    assert text == "ran it"
    # After the script runs out a tool result gets the default reply, never the old ECHO.
    _, _, raw = call(server, "/v1/messages", {**first, "messages": history, "stream": False})
    assert json.loads(raw)["content"][0]["text"] == "Hello there, tester."
    assert block["id"] in server.requests[1].text


def test_anthropic_non_stream_tool_call(server: FakeModelServer) -> None:
    server.script([ToolCall(command="ls")])

    _, _, raw = call(server, "/v1/messages", anthropic_body("go", stream=False, tools=[BASH_TOOL]))

    message = json.loads(raw)
    assert message["stop_reason"] == "tool_use"
    assert message["content"][0]["input"] == {"command": "ls"}


def test_count_tokens_head_get_models_and_unknown_paths(server: FakeModelServer) -> None:
    status, _, raw = call(server, "/v1/messages/count_tokens", anthropic_body("hello"))
    assert status == 200
    assert json.loads(raw)["input_tokens"] > 0
    assert call(server, "/", method="HEAD")[0] == 200
    assert call(server, "/")[0] == 200
    status, _, raw = call(server, "/v1/models")
    assert status == 200
    assert json.loads(raw)["data"][0]["id"] == "fake-model"
    status, _, raw = call(server, "/v1/nothing-here", {"x": 1})
    assert status == 404
    assert "error" in json.loads(raw)
    # None of these is a model call: they consume no scripted turn.
    assert [r.turn for r in server.requests] == [None] * 5


# --- OpenAI Responses ----------------------------------------------------------------------------


CODEX_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "exec_command",
        "parameters": {
            "type": "object",
            "properties": {"cmd": {"type": "string"}, "workdir": {"type": "string"}},
            "required": ["cmd"],
        },
    },
    {"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}},
    {"type": "web_search"},
]


def responses_body(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-test",
        "stream": True,
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "x"}],
            },
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
        ],
        **extra,
    }


def test_responses_stream_event_sequence(server: FakeModelServer) -> None:
    _, headers, raw = call(server, "/v1/responses", responses_body("ECHO:hi codex"))

    assert headers["content-type"].startswith("text/event-stream")
    events = sse_json(raw)
    names = [name for name, _ in events]
    assert names[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert names[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    deltas = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    assert deltas == "hi codex"
    done = events[-2][1]["item"]
    assert done["type"] == "message"
    assert done["content"][0]["text"] == "hi codex"
    completed = events[-1][1]["response"]
    assert completed["status"] == "completed"
    usage = completed["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_tokens"] > 0
    assert events[0][1]["response"]["id"] == completed["id"]


def test_responses_function_call_fills_codex_exec_command(server: FakeModelServer) -> None:
    server.script([ToolCall(command="echo marker")])

    _, _, raw = call(server, "/v1/responses", responses_body("go", tools=CODEX_TOOLS))

    events = sse_json(raw)
    added = next(d["item"] for n, d in events if n == "response.output_item.added")
    assert added["type"] == "function_call"
    assert added["name"] == "exec_command"
    arguments = "".join(
        d["delta"] for n, d in events if n == "response.function_call_arguments.delta"
    )
    assert json.loads(arguments) == {"cmd": "echo marker"}
    done = next(d["item"] for n, d in events if n == "response.output_item.done")
    assert json.loads(done["arguments"]) == {"cmd": "echo marker"}
    assert done["call_id"] == added["call_id"]
    # The tool result comes back as a function_call_output: default text, not ECHO.
    follow = responses_body("ECHO:no")
    follow["input"].append(
        {"type": "function_call_output", "call_id": done["call_id"], "output": "x"}
    )
    _, _, raw = call(server, "/v1/responses", follow)
    deltas = "".join(d["delta"] for n, d in sse_json(raw) if n == "response.output_text.delta")
    assert deltas == "Hello there, tester."


def test_responses_local_shell_gets_an_argv(server: FakeModelServer) -> None:
    server.script([ToolCall(command="ls -la")])

    _, _, raw = call(server, "/v1/responses", responses_body("go", tools=[{"type": "local_shell"}]))

    done = next(d["item"] for n, d in sse_json(raw) if n == "response.output_item.done")
    assert done["type"] == "local_shell_call"
    assert done["action"]["command"] == ["bash", "-lc", "ls -la"]


def test_responses_non_stream(server: FakeModelServer) -> None:
    _, _, raw = call(server, "/v1/responses", {**responses_body("ECHO:plain"), "stream": False})

    body = json.loads(raw)
    assert body["object"] == "response"
    assert body["status"] == "completed"
    assert body["output"][0]["content"][0]["text"] == "plain"


# --- OpenAI Chat Completions ---------------------------------------------------------------------


def chat_body(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "fake-model",
        "stream": True,
        "messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": text}],
        **extra,
    }


def test_chat_stream_with_usage_chunk_and_done(server: FakeModelServer) -> None:
    body = chat_body("ECHO:chat reply", stream_options={"include_usage": True})

    _, _, raw = call(server, "/v1/chat/completions", body)

    lines = sse(raw)
    assert all(name is None for name, _ in lines)
    assert lines[-1][1] == "[DONE]"
    chunks = [json.loads(data) for _, data in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "chat reply"
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == "stop"
    assert set(finish[:-1]) == {None}
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_stream_without_include_usage_has_no_usage_chunk(server: FakeModelServer) -> None:
    _, _, raw = call(server, "/v1/chat/completions", chat_body("hi"))

    chunks = [json.loads(d) for _, d in sse(raw) if d != "[DONE]"]
    assert all(c["choices"] for c in chunks)
    assert all("usage" not in c for c in chunks)


def test_chat_tool_call_deltas_and_non_stream(server: FakeModelServer) -> None:
    tools = [
        {"type": "function", "function": {"name": "read", "parameters": {"type": "object"}}},
        {
            "type": "function",
            "function": {
                "name": "bash",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "command": {"type": "string"},
                        "description": {"type": "string"},
                    },
                    "required": ["command", "description"],
                },
            },
        },
    ]
    server.script([ToolCall(command="touch x"), ToolCall(command="touch y")])

    _, _, raw = call(server, "/v1/chat/completions", chat_body("go", tools=tools))

    chunks = [json.loads(d) for _, d in sse(raw) if d != "[DONE]"]
    calls = [
        tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", []) if c["choices"]
    ]
    assert calls[0]["function"]["name"] == "bash"
    assert calls[0]["id"].startswith("call_")
    arguments = json.loads("".join(tc["function"]["arguments"] for tc in calls))
    assert arguments == {"command": "touch x", "description": "fake"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    _, _, raw = call(server, "/v1/chat/completions", chat_body("go", tools=tools, stream=False))
    choice = json.loads(raw)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"])["command"] == (
        "touch y"
    )


def test_chat_tool_result_gets_default_reply(server: FakeModelServer) -> None:
    body = chat_body("ECHO:no", stream=False)
    body["messages"].append({"role": "tool", "tool_call_id": "call_1", "content": "done"})

    _, _, raw = call(server, "/v1/chat/completions", body)

    assert json.loads(raw)["choices"][0]["message"]["content"] == "Hello there, tester."


# --- Gemini --------------------------------------------------------------------------------------


def gemini_body(text: str, **extra: Any) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}], **extra}


def test_gemini_stream_and_non_stream(server: FakeModelServer) -> None:
    path = "/v1beta/models/gemini-x:streamGenerateContent?alt=sse"

    _, headers, raw = call(server, path, gemini_body("ECHO:gem reply"))

    assert headers["content-type"].startswith("text/event-stream")
    chunks = [data for _, data in sse_json(raw)]
    assert len(chunks) > 1
    text = "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks)
    assert text == "gem reply"
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    usage = chunks[-1]["usageMetadata"]
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
    assert chunks[0]["modelVersion"] == "gemini-x"
    assert server.requests[-1].query == {"alt": "sse"}

    _, _, raw = call(server, "/v1beta/models/gemini-x:generateContent", gemini_body("ECHO:whole"))
    body = json.loads(raw)
    assert body["candidates"][0]["content"] == {"role": "model", "parts": [{"text": "whole"}]}


def test_gemini_count_tokens(server: FakeModelServer) -> None:
    status, _, raw = call(server, "/v1beta/models/gemini-x:countTokens", gemini_body("count me"))

    assert status == 200
    assert json.loads(raw)["totalTokens"] > 0


def test_gemini_function_call_uses_run_shell_command(server: FakeModelServer) -> None:
    tools = [
        {
            "functionDeclarations": [
                {"name": "read_file", "parametersJsonSchema": {"type": "object"}},
                {
                    "name": "run_shell_command",
                    "parametersJsonSchema": {
                        "type": "object",
                        "properties": {
                            "command": {"type": "string"},
                            "is_background": {"type": "boolean"},
                        },
                        "required": ["command", "is_background"],
                    },
                },
            ]
        }
    ]
    server.script([ToolCall(command="ls")])

    _, _, raw = call(
        server, "/v1beta/models/g:streamGenerateContent?alt=sse", gemini_body("go", tools=tools)
    )

    parts = [p for _, c in sse_json(raw) for p in c["candidates"][0]["content"]["parts"]]
    assert parts == [
        {
            "functionCall": {
                "name": "run_shell_command",
                "args": {"command": "ls", "is_background": True},
            }
        }
    ]
    follow = gemini_body("ECHO:no")
    follow["contents"].append(
        {"role": "user", "parts": [{"functionResponse": {"name": "run_shell_command"}}]}
    )
    _, _, raw = call(server, "/v1beta/models/g:generateContent", follow)
    assert json.loads(raw)["candidates"][0]["content"]["parts"][0]["text"] == (
        "Hello there, tester."
    )


ROUTER_SCHEMA = {
    "type": "OBJECT",
    "properties": {
        "complexity_reasoning": {"type": "STRING", "description": "Brief explanation."},
        "complexity_score": {"type": "INTEGER", "description": "Complexity score from 1-100."},
    },
    "required": ["complexity_reasoning", "complexity_score"],
}


@pytest.mark.parametrize("key", ["responseJsonSchema", "responseSchema"])
def test_gemini_router_gets_schema_json_and_consumes_no_turn(
    server: FakeModelServer, key: str
) -> None:
    server.script([Text("for the real turn")])
    config = {"responseMimeType": "application/json", key: ROUTER_SCHEMA}

    _, _, raw = call(
        server, "/v1beta/models/flash:generateContent", gemini_body("hi", generationConfig=config)
    )

    answer = json.loads(json.loads(raw)["candidates"][0]["content"]["parts"][0]["text"])
    assert isinstance(answer["complexity_reasoning"], str)
    assert isinstance(answer["complexity_score"], int)
    assert answer["complexity_score"] >= 1
    assert server.pending_turns == 1


def test_chat_json_schema_response_format(server: FakeModelServer) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 7}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}

    _, _, raw = call(
        server, "/v1/chat/completions", chat_body("hi", stream=False, response_format=fmt)
    )

    assert json.loads(json.loads(raw)["choices"][0]["message"]["content"]) == {"n": 7}


# --- scripting -----------------------------------------------------------------------------------


def test_script_is_consumed_in_order_then_default(server: FakeModelServer) -> None:
    server.script([Text("one"), Text("two")])
    assert server.pending_turns == 2

    replies = [
        json.loads(call(server, "/v1/messages", anthropic_body("x", stream=False))[2])["content"][
            0
        ]["text"]
        for _ in range(3)
    ]

    assert replies == ["one", "two", "Hello there, tester."]
    assert server.pending_turns == 0
    assert [r.turn for r in server.model_requests()] == [
        Text("one"),
        Text("two"),
        Text("Hello there, tester."),
    ]


def test_script_rejects_non_turns(server: FakeModelServer) -> None:
    with pytest.raises(TypeError):
        server.script(["just a string"])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("path", "body", "check"),
    [
        (
            "/v1/messages",
            anthropic_body("x"),
            lambda b: b["type"] == "error" and b["error"]["type"] == "overloaded_error",
        ),
        ("/v1/responses", responses_body("x"), lambda b: b["error"]["type"] == "server_error"),
        ("/v1/chat/completions", chat_body("x"), lambda b: b["error"]["message"]),
        (
            "/v1beta/models/g:generateContent",
            gemini_body("x"),
            lambda b: b["error"]["code"] == 529 and b["error"]["status"] == "INTERNAL",
        ),
    ],
)
def test_error_status_uses_the_protocol_error_shape(
    server: FakeModelServer, path: str, body: Any, check: Any
) -> None:
    server.script([ErrorStatus(status=529, headers={"x-should-retry": "false"})])

    status, headers, raw = call(server, path, body)

    assert status == 529
    assert headers["x-should-retry"] == "false"
    assert check(json.loads(raw))
    # The next request is fine again.
    assert call(server, path, body)[0] == 200


def test_error_status_with_a_verbatim_body(server: FakeModelServer) -> None:
    server.script([ErrorStatus(status=400, body="not json at all")])

    status, _, raw = call(server, "/v1/messages", anthropic_body("x"))

    assert (status, raw) == (400, b"not json at all")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages", anthropic_body("x")),
        ("/v1/responses", responses_body("x")),
        ("/v1/chat/completions", chat_body("x")),
        ("/v1beta/models/g:streamGenerateContent?alt=sse", gemini_body("x")),
    ],
)
def test_malformed_stream_has_a_bad_json_line(
    server: FakeModelServer, path: str, body: Any
) -> None:
    server.script([Malformed()])

    status, headers, raw = call(server, path, body)

    assert status == 200
    assert headers.get("connection") == "close"
    datas = [data for _, data in sse(raw)]
    json.loads(datas[0])  # the first event is still valid
    with pytest.raises(json.JSONDecodeError):
        json.loads(datas[-1])


def test_malformed_non_stream_body_is_not_json(server: FakeModelServer) -> None:
    server.script([Malformed()])

    status, _, raw = call(server, "/v1/messages", anthropic_body("x", stream=False))

    assert status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)


def test_stall_then_answer(server: FakeModelServer) -> None:
    server.script([Stall(0.05, then=Text("late")), Stall(0.05)])

    _, _, raw = call(server, "/v1/messages", anthropic_body("x", stream=False))
    assert json.loads(raw)["content"][0]["text"] == "late"
    _, _, raw = call(server, "/v1/messages", anthropic_body("x"))
    text = "".join(d["delta"]["text"] for n, d in sse_json(raw) if n == "content_block_delta")
    assert text == "Hello there, tester."


def test_stall_sends_headers_and_times_the_client_out() -> None:
    with FakeModelServer() as server:
        server.script([Stall(60)])
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=0.3)
        try:
            conn.request("POST", "/v1/messages", json.dumps(anthropic_body("x")))
            response = conn.getresponse()  # the headers arrive at once
            assert response.status == 200
            with pytest.raises(TimeoutError):
                response.read1(1)
        finally:
            conn.close()


@pytest.mark.parametrize("stream", [True, False])
def test_stop_interrupts_a_stalled_request(stream: bool) -> None:
    server = FakeModelServer().start()
    server.script([Stall(60)])
    outcome: list[object] = []

    def client() -> None:
        try:
            outcome.append(
                call(server, "/v1/messages", anthropic_body("x", stream=stream), timeout=30)
            )
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    server.wait_for_requests(1, timeout=5)
    started = time.monotonic()
    server.stop()
    stop_seconds = time.monotonic() - started
    thread.join(10)

    assert stop_seconds < 2.0
    assert not thread.is_alive()
    # The client saw the connection die, not a normal answer.
    assert isinstance(outcome[0], Exception) or outcome[0][2] == b""  # type: ignore[index]


def test_stop_closes_idle_keep_alive_connections() -> None:
    server = FakeModelServer().start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"ok"
        # The connection stays open (HTTP/1.1 keep-alive): its server thread waits on it.
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2.0
    finally:
        conn.close()


def test_requests_log_records_headers_body_and_json(server: FakeModelServer) -> None:
    call(
        server, "/v1/messages?beta=true", anthropic_body("logged text"), headers={"X-Api-Key": "k"}
    )

    [request] = server.wait_for_requests(1, timeout=5)
    assert request.method == "POST"
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == "k"
    assert request.json["messages"][0]["content"] == "logged text"
    assert b"logged text" in request.body_bytes
    assert "logged text" in request.text
    assert request.protocol is Protocol.ANTHROPIC


def test_chunked_request_bodies_are_read() -> None:
    with FakeModelServer() as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        try:
            body = json.dumps(anthropic_body("ECHO:chunked", stream=False)).encode()
            conn.request(
                "POST",
                "/v1/messages",
                body=iter([body[:10], body[10:]]),
                encode_chunked=True,
                headers={"Transfer-Encoding": "chunked"},
            )
            assert json.loads(conn.getresponse().read())["content"][0]["text"] == "chunked"
        finally:
            conn.close()


def test_wait_for_requests_times_out_with_a_clear_error(server: FakeModelServer) -> None:
    call(server, "/")

    with pytest.raises(TimeoutError, match="wanted 2"):
        server.wait_for_requests(2, timeout=0.05)
    assert len(server.wait_for_requests(1, timeout=0.05, predicate=lambda r: r.path == "/")) == 1


def test_wait_for_requests_wakes_on_arrival(server: FakeModelServer) -> None:
    thread = threading.Thread(target=call, args=(server, "/"))
    thread.start()
    try:
        assert len(server.wait_for_requests(1, timeout=5)) == 1
    finally:
        thread.join()


def test_history_of_earlier_turns_is_visible(server: FakeModelServer) -> None:
    server.script([Text("first answer")])
    call(server, "/v1/chat/completions", chat_body("q1", stream=False))
    body = chat_body("q2", stream=False)
    body["messages"][1:1] = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "first answer"},
    ]

    call(server, "/v1/chat/completions", body)

    assert "first answer" in server.requests[-1].text


def test_binds_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FakeModelServer(host="0.0.0.0")
    with FakeModelServer() as server:
        assert server.url == f"http://127.0.0.1:{server.port}"


def test_start_twice_is_an_error_and_stop_twice_is_fine() -> None:
    server = FakeModelServer().start()
    try:
        with pytest.raises(RuntimeError):
            server.start()
    finally:
        server.stop()
    server.stop()


@pytest.mark.skipif(not loopback_namespace_available(), reason="needs root + unshare/nsenter")
def test_server_in_a_loopback_namespace_is_reachable_only_from_inside() -> None:
    with LoopbackNamespace() as ns, FakeModelServer(reply="inside", netns=ns.path) as server:
        # From this process's own namespace the port is not there.
        with pytest.raises(urllib.error.URLError) as refused:
            call(server, "/", timeout=2)
        assert isinstance(refused.value.reason, ConnectionRefusedError)
        probe = (
            "import json, urllib.request; r = urllib.request.urlopen(urllib.request.Request("
            f"'{server.url}/v1/chat/completions', data=json.dumps({{'messages': []}}).encode()),"
            " timeout=5); print(json.load(r)['choices'][0]['message']['content'])"
        )
        done = subprocess.run(
            [*ns.prefix(), sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.stdout.strip() == "inside", done.stderr


# --- side requests -------------------------------------------------------------------------------


def test_title_generation_is_a_side_request(server: FakeModelServer) -> None:
    title = chat_body("ECHO:hello")
    title["messages"][0]["content"] = "You are a title generator. You output ONLY a thread title."
    server.script([Text("real")])

    call(server, "/v1/chat/completions", title)

    assert is_side_request(Protocol.OPENAI_CHAT, title)
    assert not is_side_request(Protocol.OPENAI_CHAT, chat_body("generate a title for my essay"))
    assert server.pending_turns == 1


# --- pure functions: schema examples and tool arguments ------------------------------------------


def conforms(value: Any, schema: Any) -> bool:
    """A small JSON-schema checker for the keywords example_from_schema supports."""
    if not isinstance(schema, dict):
        return True
    if "enum" in schema:
        return value in schema["enum"]
    kind = str(schema.get("type", "")).lower()
    if kind == "object":
        props = schema.get("properties", {})
        return (
            isinstance(value, dict)
            and all(r in value for r in schema.get("required", []))
            and all(conforms(value[k], props.get(k)) for k in value)
        )
    if kind == "array":
        return (
            isinstance(value, list)
            and len(value) >= schema.get("minItems", 0)
            and len(value) <= schema.get("maxItems", len(value))
            and all(conforms(v, schema.get("items")) for v in value)
        )
    if kind in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if kind == "integer" and not isinstance(value, int):
            return False
        low, high = schema.get("minimum"), schema.get("maximum")
        xlow, xhigh = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        return (
            (low is None or value >= low)
            and (high is None or value <= high)
            and (xlow is None or value > xlow)
            and (xhigh is None or value < xhigh)
        )
    if kind == "string":
        return (
            isinstance(value, str)
            and len(value) >= schema.get("minLength", 0)
            and len(value) <= schema.get("maxLength", len(value))
        )
    if kind == "boolean":
        return isinstance(value, bool)
    return True


def number_schemas() -> st.SearchStrategy[dict[str, Any]]:
    def build(kind: str, low: int | None, span: int | None, open_low: bool, open_high: bool) -> Any:
        schema: dict[str, Any] = {"type": kind}
        if low is not None:
            schema["exclusiveMinimum" if open_low else "minimum"] = low
        if span is not None:
            base = low if low is not None else 0
            # Leave room for an integer strictly between open bounds.
            gap = span + (2 if open_low and open_high else 1 if open_low or open_high else 0)
            schema["exclusiveMaximum" if open_high else "maximum"] = base + gap
        return schema

    bound = st.one_of(st.none(), st.integers(-1000, 1000))
    return st.builds(
        build,
        st.sampled_from(["integer", "number"]),
        bound,
        st.one_of(st.none(), st.integers(0, 50)),
        st.booleans(),
        st.booleans(),
    )


def string_schemas() -> st.SearchStrategy[dict[str, Any]]:
    def build(low: int, extra: int | None) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "minLength": low}
        if extra is not None:
            schema["maxLength"] = low + extra
        return schema

    return st.builds(build, st.integers(0, 20), st.one_of(st.none(), st.integers(0, 10)))


leaf_schemas = st.one_of(
    number_schemas(),
    string_schemas(),
    st.just({"type": "boolean"}),
    st.lists(st.text(max_size=5), min_size=1, max_size=3).map(lambda e: {"enum": e}),
)
schemas = st.recursive(
    leaf_schemas,
    lambda inner: st.one_of(
        st.builds(
            lambda items, low, extra: {
                "type": "array",
                "items": items,
                "minItems": low,
                "maxItems": low + extra,
            },
            inner,
            st.integers(0, 3),
            st.integers(0, 2),
        ),
        # Each property drawn with a "required" flag (not a flatmap over the keys: a
        # flatmap inside st.recursive can make generation crawl for minutes).
        st.dictionaries(
            st.text(min_size=1, max_size=8), st.tuples(inner, st.booleans()), max_size=4
        ).map(
            lambda props: {
                "type": "object",
                "properties": {key: schema for key, (schema, _) in props.items()},
                "required": sorted(key for key, (_, required) in props.items() if required),
            }
        ),
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(schemas)
def test_example_from_schema_conforms(schema: dict[str, Any]) -> None:
    value = example_from_schema(schema)

    assert conforms(value, schema), (schema, value)
    json.dumps(value)  # always JSON


def test_example_from_schema_keywords() -> None:
    defs = {
        "$defs": {"Level": {"type": "string", "enum": ["low", "high"]}},
        "type": "object",
        "properties": {"level": {"$ref": "#/$defs/Level"}},
        "required": ["level"],
    }
    assert example_from_schema(defs) == {"level": "low"}
    assert example_from_schema({"const": 3}) == 3
    assert example_from_schema({"type": ["null", "integer"], "minimum": 4}) == 4
    assert example_from_schema({"anyOf": [{"type": "null"}, {"type": "boolean"}]}) is True
    merged = example_from_schema(
        {"allOf": [{"properties": {"a": {"type": "integer"}}}, {"required": ["b"]}]}
    )
    assert merged == {"b": "fake", "a": 1}
    assert example_from_schema({"type": "ARRAY", "items": {"type": "STRING"}, "minItems": "2"}) == [
        "fake",
        "fake",
    ]
    assert example_from_schema({"type": "string", "format": "date-time"}).startswith("20")
    assert example_from_schema({"type": "integer", "multipleOf": 5, "minimum": 6}) == 10
    # A recursive schema terminates.
    tree = {
        "$defs": {
            "n": {
                "type": "object",
                "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/n"}}},
                "required": ["kids"],
            }
        },
        "$ref": "#/$defs/n",
    }
    node = example_from_schema(tree)
    for _ in range(20):
        if not node["kids"]:
            break
        node = node["kids"][0]
    assert node == {"kids": []}


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        # Claude Code's Bash
        (BASH_TOOL["input_schema"], {"command": "touch /tmp/x"}),
        # Codex exec_command
        (CODEX_TOOLS[0]["parameters"], {"cmd": "touch /tmp/x"}),
        # Codex's older `shell` tool wants an argv
        (
            {
                "type": "object",
                "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                "required": ["command"],
            },
            {"command": ["bash", "-lc", "touch /tmp/x"]},
        ),
        # Gemini's OpenAPI-style schema, with another required property
        (
            {
                "type": "OBJECT",
                "properties": {
                    "command": {"type": "STRING"},
                    "dir_path": {"type": "STRING"},
                    "mode": {"type": "STRING", "enum": ["fg", "bg"]},
                    "timeout": {"type": "INTEGER", "minimum": 10},
                },
                "required": ["command", "mode", "timeout"],
            },
            {"command": "touch /tmp/x", "mode": "fg", "timeout": 10},
        ),
        # No command-like property: the first required string takes it
        (
            {"type": "object", "properties": {"line": {"type": "string"}}, "required": ["line"]},
            {"line": "touch /tmp/x"},
        ),
        ({}, {"command": "touch /tmp/x"}),
    ],
)
def test_shell_tool_arguments(schema: Any, expected: dict[str, Any]) -> None:
    assert shell_tool_arguments(schema, "touch /tmp/x") == expected


def test_tool_call_falls_back_to_first_tool_and_honours_overrides(server: FakeModelServer) -> None:
    server.script(
        [
            ToolCall(command="ls"),
            ToolCall(command="ls", tool="Read", arguments={"file_path": "/etc/hosts"}),
        ]
    )
    body = anthropic_body("x", stream=False, tools=[READ_TOOL])

    first = json.loads(call(server, "/v1/messages", body)[2])["content"][0]
    second = json.loads(call(server, "/v1/messages", body)[2])["content"][0]

    assert (first["name"], first["input"]) == ("Read", {"file_path": "ls"})
    assert (second["name"], second["input"]) == ("Read", {"file_path": "/etc/hosts"})
