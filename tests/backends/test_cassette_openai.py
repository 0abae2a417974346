"""Cassettes over the ``openai`` backend: its HTTP exchanges with FakeModelServer, replayed
with the server stopped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from beamagent import Runtime
from beamagent.backends.cassette import Cassette
from beamagent.errors import CassetteMismatch
from beamagent.testing import FakeModelServer, Text, ToolCall
from beamagent.tools import tool

API_KEY = "test-openai-key-0123456789abcdef"
PROMPTS = ["ECHO:hello over http", "ECHO:second turn"]


def run(cassette: Cassette, base_url: str, prompts: list[str], **options: Any) -> list[Any]:
    """An openai session on ``cassette``: each turn's messages as (type, subtype, content)."""
    with Runtime(store=":memory:", handle_signals=False, cassette=cassette) as runtime:
        session = runtime.start_session(
            backend="openai", base_url=base_url, model="fake-model", api_key=API_KEY, **options
        )
        return [
            [(m.type.value, m.subtype, m.content) for m in session.query(p, timeout=30)]
            for p in prompts
        ]


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[Path, str, list[Any]]:
    path = tmp_path / "openai.jsonl"
    with FakeModelServer(reply="default reply") as server:
        base_url = server.url + "/v1"
        with Cassette(path, "record") as cassette:
            # partial messages: the streamed deltas come back as stream_event messages too
            turns = run(cassette, base_url, PROMPTS, include_partial_messages=True)
    return path, base_url, turns  # the server is stopped from here on


def test_replay_gives_the_recorded_messages_with_no_server(
    recorded: tuple[Path, str, list[Any]],
) -> None:
    path, base_url, turns = recorded
    assert [c for t, _, c in turns[0] if t == "assistant"] == ["hello over http"]
    assert [c for t, _, c in turns[1] if t == "assistant"] == ["second turn"]
    assert any(t == "stream_event" for t, _, _ in turns[0]), "the reply was not streamed"
    cassette = Cassette(path, "replay")
    assert run(cassette, base_url, PROMPTS, include_partial_messages=True) == turns
    assert cassette.mismatches == []


def test_a_replay_may_point_at_another_host(recorded: tuple[Path, str, list[Any]]) -> None:
    path, _, turns = recorded
    cassette = Cassette(path, "replay")
    replayed = run(cassette, "http://nowhere.invalid:1/v1", PROMPTS, include_partial_messages=True)
    # The same messages; only the init message's base_url says where this one points.
    assert [m for t in replayed for m in t if m[0] != "system"] == [
        m for t in turns for m in t if m[0] != "system"
    ]


def test_a_changed_prompt_fails_with_a_diff(recorded: tuple[Path, str, list[Any]]) -> None:
    path, base_url, _ = recorded
    cassette = Cassette(path, "replay")
    with pytest.raises(CassetteMismatch) as raised:
        run(cassette, base_url, ["ECHO:goodbye"], include_partial_messages=True)
    message = str(raised.value)
    assert cassette.mismatches
    assert str(cassette.mismatches[0]) == message
    assert "a different write" in message
    assert "--- recorded write" in message
    assert "+++ this replay's write" in message
    assert '-    "content": "ECHO:hello over http"' in message
    assert '+    "content": "ECHO:goodbye"' in message


def test_the_file_has_the_exchanges_and_no_secret(recorded: tuple[Path, str, list[Any]]) -> None:
    path, base_url, _ = recorded
    text = path.read_text()
    assert API_KEY not in text
    events = [json.loads(line) for line in text.splitlines()][1:]
    kinds = [e["event"] for e in events]
    assert kinds[:3] == ["open", "connected", "info"]
    sends = [e for e in events if e["event"] == "send"]
    assert len(sends) == 2
    request = sends[0]["http"][0]
    assert request["method"] == "POST"
    assert request["url"] == base_url + "/chat/completions"
    assert request["headers"]["Authorization"] == "[REDACTED]"
    assert request["headers"]["Accept"] == "text/event-stream"
    compared = json.loads(sends[0]["text"])
    assert compared["path"] == "/v1/chat/completions"
    assert compared["json"]["messages"][-1] == {"role": "user", "content": PROMPTS[0]}
    assert compared["json"]["stream"] is True
    responses = [e for e in events if e["event"] == "response"]
    assert [r["status"] for r in responses] == [200, 200]
    assert "text/event-stream" in responses[0]["headers"]["content-type"]
    lines = [json.loads(e["text"]) for e in events if e["event"] == "data"]
    assert sum(1 for line in lines if line["op"] == "event") > 2  # SSE events, one a line
    assert [line["op"] for line in lines if line["op"] != "event"] == ["done", "done"]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_a_tool_round_replays(tmp_path: Path) -> None:
    """The tool runs again in the replay; its result goes into the next, compared, request."""
    path = tmp_path / "tools.jsonl"
    with FakeModelServer() as server:
        server.script([ToolCall("", tool="add", arguments={"a": 2, "b": 3}), Text("it is 5")])
        base_url = server.url + "/v1"
        with Cassette(path, "record") as cassette:
            live = run(cassette, base_url, ["add"], tools=[add])
    assert [t for t, _, _ in live[0]] == [
        "system",
        "assistant",
        "tool_result",
        "assistant",
        "result",
    ]
    sends = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    assert sum(1 for e in sends if e["event"] == "send") == 2  # the call, then its result
    cassette = Cassette(path, "replay")
    assert run(cassette, base_url, ["add"], tools=[add]) == live
    assert cassette.mismatches == []
