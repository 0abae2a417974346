"""A graph serving gives Python tools to its node's session; calls carry the run and node ids."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from beamagent import Runtime
from beamagent.graph import Job, LinearRouter, Node, SessionServing
from beamagent.testing import FakeModelServer, Text, ToolCall
from beamagent.tools import ToolContext, tool

contexts: list[ToolContext] = []


@tool
def lookup(key: str, ctx: ToolContext) -> str:
    """Look a key up."""
    contexts.append(ctx)
    return f"value of {key}"


@pytest.fixture
def server() -> Iterator[FakeModelServer]:
    with FakeModelServer(reply="default") as srv:
        yield srv


def test_a_servings_tools_reach_its_node_session(server: FakeModelServer) -> None:
    contexts.clear()
    server.script(
        [ToolCall("", tool="lookup", arguments={"key": "k"}), Text('{"body": "found it"}')]
    )
    serving = SessionServing(
        "Find {input}",
        backend="openai",
        session_options={"base_url": server.url + "/v1", "model": "fake"},
        session_tools=[lookup],
    )
    job = Job("find", [Node("ask", serving=serving, router=LinearRouter(["ask"]))], start="ask")
    with Runtime(store=":memory:") as rt:
        run = rt.run_job(job, "k")
        outcome = run.result(30)
    [ctx] = contexts
    assert (ctx.run_id, ctx.node_id, ctx.backend) == (run.run_id, "ask", "openai")
    assert outcome.output.body == "found it"
    second = server.model_requests()[1].json["messages"][-1]
    assert second["content"] == "value of k"


def test_a_local_node_session_calls_its_servings_tools_offline() -> None:
    import json

    from beamagent.backends.local import LocalToolCall

    contexts.clear()

    def reply(prompt: str, _params: object) -> object:
        assert prompt.startswith("Find k")
        outcome = yield LocalToolCall("lookup", {"key": "k"})
        yield json.dumps({"body": outcome.content})

    serving = SessionServing(
        "Find {input}", backend="local", session_options={"reply": reply}, session_tools=[lookup]
    )
    job = Job("find", [Node("ask", serving=serving, router=LinearRouter(["ask"]))], start="ask")
    with Runtime(store=":memory:") as rt:
        run = rt.run_job(job, "k")
        outcome = run.result(30)
    [ctx] = contexts
    assert (ctx.run_id, ctx.node_id, ctx.backend) == (run.run_id, "ask", "local")
    assert outcome.output.body == "value of k"
