"""The span tree of a query, a routed start, a graph run with a retry, a restart, a tool call."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import supervisors
from beamagent import Message, Runtime, telemetry
from beamagent.backends.base import HandlerOutput
from beamagent.backends.local import LocalHandler, LocalToolCall
from beamagent.errors import RetryRequested, SessionError
from beamagent.graph import Job, LinearRouter, Node, NodeMessage, Result, Route, RunStatus
from beamagent.tools import ToolContext, ToolSet, tool
from beamagent.tools._state import Grant
from beamagent.tools._tool import invoke_blocking

WAIT = 10.0
SECRET = "sk-ant-api03-" + "x" * 40


@pytest.fixture
def rt() -> Iterator[Runtime]:
    with Runtime(store=":memory:") as runtime:
        yield runtime


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    (found,) = named(spans, name)
    return found


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    context = span.context
    assert context is not None
    return context.span_id


def test_a_query_span_is_a_child_of_the_callers_span(
    rt: Runtime, spans: InMemorySpanExporter
) -> None:
    session = rt.start_session(backend="local", model="echo-1")
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("caller") as caller:
        messages = session.query("hello there")
    assert messages[-1].content == "hello there"
    finished = spans.get_finished_spans()
    query = one(finished, "beamagent.query")
    assert parent_of(query) == caller.get_span_context().span_id
    assert query.context is not None
    assert query.context.trace_id == caller.get_span_context().trace_id
    attributes = query.attributes or {}
    assert attributes["beamagent.session_id"] == session.session_id
    assert attributes["beamagent.backend"] == "local"
    assert attributes["gen_ai.request.model"] == "echo-1"
    assert attributes["gen_ai.usage.input_tokens"] == 2
    assert attributes["gen_ai.usage.output_tokens"] == 2
    assert attributes["beamagent.cost_usd"] == 0.0
    assert attributes["beamagent.query.outcome"] == "success"
    assert query.status.status_code is StatusCode.OK
    # Started and ended in the session actor, not in the caller's thread.
    assert query.start_time is not None
    assert query.end_time is not None
    assert query.start_time <= query.end_time
    start = one(finished, "beamagent.session.start")
    assert (start.attributes or {})["beamagent.session_id"] == session.session_id
    assert (start.attributes or {})["beamagent.routed"] is False


def test_a_streamed_query_is_traced_from_send_to_the_terminal_message(
    rt: Runtime, spans: InMemorySpanExporter
) -> None:
    session = rt.start_session(backend="local")
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("caller") as caller:
        texts = [m.content for m in session.stream("one two")]
    assert texts[-1] == "one two"
    query = one(spans.get_finished_spans(), "beamagent.query")
    assert parent_of(query) == caller.get_span_context().span_id


def test_a_routed_start_has_a_route_span_under_the_session_start(
    spans: InMemorySpanExporter,
) -> None:
    backends = {"local_a": LocalHandler, "local_b": LocalHandler}
    with Runtime(store=":memory:", backends=backends) as rt:
        session = rt.start_session(
            routing={"preferred_backends": ["local_b"], "fallback_backends": ["local_a"]}
        )
        assert session.backend() == "local_b"
    finished = spans.get_finished_spans()
    start = one(finished, "beamagent.session.start")
    route = one(finished, "beamagent.route")
    assert parent_of(route) == span_id(start)
    attributes = route.attributes or {}
    assert attributes["beamagent.routing.backend"] == "local_b"
    assert attributes["beamagent.routing.policy"] == "preferred_then_fallback"
    assert tuple(attributes["beamagent.routing.candidates"]) == ("local_b", "local_a")
    assert attributes["beamagent.routing.reasons"]
    assert (start.attributes or {})["beamagent.backend"] == "local_b"
    assert (start.attributes or {})["beamagent.routed"] is True


def test_a_graph_run_has_node_spans_and_a_retry_event(
    rt: Runtime, spans: InMemorySpanExporter
) -> None:
    def flaky(message: NodeMessage) -> Result:
        if message.node_id == "a" and message.retries < 1:
            raise RetryRequested("not good enough yet")
        routes = [Route("b")] if message.node_id == "a" else []
        return Result(f"{message.node_id} ok", next=routes)

    job = Job("j", [Node("a", serving=flaky), Node("b", serving=flaky)], start="a", max_retries=2)
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("caller") as caller:
        run = rt.run_job(job, "x")
    assert run.result(WAIT).status is RunStatus.COMPLETED
    finished = spans.get_finished_spans()
    graph = one(finished, "beamagent.graph.run")
    assert parent_of(graph) == caller.get_span_context().span_id
    assert (graph.attributes or {})["beamagent.run_id"] == run.run_id
    assert (graph.attributes or {})["beamagent.run.status"] == "completed"
    nodes = named(finished, "beamagent.graph.node")
    assert [(n.attributes or {})["beamagent.node_id"] for n in nodes] == ["a", "b"]
    assert all(parent_of(n) == span_id(graph) for n in nodes)
    a, b = nodes
    assert [e.name for e in a.events] == ["retry"]
    assert (a.events[0].attributes or {})["reason"] == "not good enough yet"
    assert (a.attributes or {})["beamagent.graph.retries"] == 1
    assert not b.events
    assert all(n.status.status_code is StatusCode.OK for n in nodes)


def test_a_sub_run_is_traced_under_the_visit_that_started_it(
    rt: Runtime, spans: InMemorySpanExporter
) -> None:
    sub = Job("summarize", [Node("work", serving=lambda m: f"did {m.input}")], start="work")
    job = Job(
        "main",
        [
            Node("summary", sub="summarize", router=LinearRouter(["summary", "publish"])),
            Node("publish", serving=lambda m: f"published: {m.previous_result.body}"),
        ],
        start="summary",
    )
    run = rt.run_job(job, "the report", subs={"summarize": sub})
    assert run.result(WAIT).status is RunStatus.COMPLETED
    finished = spans.get_finished_spans()
    runs = named(finished, "beamagent.graph.run")
    [main] = [r for r in runs if (r.attributes or {})["beamagent.job_id"] == "main"]
    [inner] = [r for r in runs if (r.attributes or {})["beamagent.job_id"] == "summarize"]
    nodes = {
        (n.attributes or {})["beamagent.node_id"]: n
        for n in named(finished, "beamagent.graph.node")
    }
    assert set(nodes) == {"summary", "work", "publish"}
    assert parent_of(nodes["summary"]) == span_id(main)
    assert parent_of(inner) == span_id(nodes["summary"])  # under the visit that started it
    assert (inner.attributes or {})["beamagent.parent_run_id"] == run.run_id
    assert (inner.attributes or {})["beamagent.run.status"] == "completed"
    assert parent_of(nodes["work"]) == span_id(inner)
    assert [e.name for e in nodes["summary"].events] == ["sub_started"]


def test_a_failed_run_ends_its_spans_as_errors(rt: Runtime, spans: InMemorySpanExporter) -> None:
    def broken(message: NodeMessage) -> Result:
        raise ValueError(f"bad input, api_key={SECRET}")

    run = rt.run_job(Job("j", [Node("a", serving=broken)], start="a"), "x")
    assert run.result(WAIT, raise_error=False).status is RunStatus.ERROR
    finished = spans.get_finished_spans()
    graph = one(finished, "beamagent.graph.run")
    assert graph.status.status_code is StatusCode.ERROR
    assert SECRET not in (graph.status.description or "")
    node = one(finished, "beamagent.graph.node")
    assert node.status.status_code is StatusCode.ERROR


class CrashingHandler(LocalHandler):
    """Raises while handling a reply that says CRASH: a bug, the session's crash."""

    def handle_messages(self, messages: Sequence[Message]) -> HandlerOutput:
        if any("CRASH" in (m.content or "") for m in messages):
            raise RuntimeError("handler bug")
        return super().handle_messages(messages)


def test_a_crash_fails_the_query_span_and_the_restart_is_a_linked_span(
    spans: InMemorySpanExporter,
) -> None:
    with Runtime(store=":memory:", backends={"crashy": CrashingHandler}) as rt:
        session = rt.start_session(backend="crashy")
        ref = rt._session_ref(session.session_id)
        mon = supervisors.monitor(ref, watcher=None)
        with pytest.raises(SessionError, match="crashed"):
            session.query("CRASH now")
        assert isinstance(mon.wait(5).reason, supervisors.Crashed)
        assert session.query("fine")[-1].content == "fine"
    finished = spans.get_finished_spans()
    start = one(finished, "beamagent.session.start")
    crashed, fine = named(finished, "beamagent.query")
    assert crashed.status.status_code is StatusCode.ERROR
    assert [e.name for e in crashed.events] == ["session_failed"]
    assert (crashed.attributes or {})["beamagent.query.outcome"] == "failed"
    assert fine.status.status_code is StatusCode.OK
    assert (fine.attributes or {})["beamagent.incarnation"] == 2
    restart = one(finished, "beamagent.session.restart")
    assert (restart.attributes or {})["beamagent.incarnation"] == 2
    assert [e.name for e in restart.events] == ["session_restarted"]
    assert [link.context.span_id for link in restart.links] == [span_id(start)]


def test_a_tool_call_span_has_the_tool_session_outcome_and_duration(
    spans: InMemorySpanExporter,
) -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    context = ToolContext(session_id="s1", backend="local", tool_name="add")
    outcome = invoke_blocking(add, {"a": 1, "b": 2}, context)
    assert outcome.content == "3"
    bad = invoke_blocking(add, {"a": "one", "token": SECRET}, context)
    assert bad.is_error
    ok, invalid = named(spans.get_finished_spans(), "beamagent.tool")
    attributes = ok.attributes or {}
    assert attributes["beamagent.tool.name"] == "add"
    assert attributes["beamagent.session_id"] == "s1"
    assert attributes["beamagent.tool.outcome"] == "ok"
    assert isinstance(attributes["beamagent.tool.duration_ms"], float)
    assert invalid.status.status_code is StatusCode.ERROR
    assert (invalid.attributes or {})["beamagent.tool.outcome"] == "invalid"


def test_no_secret_reaches_a_span(spans: InMemorySpanExporter) -> None:
    def reply(prompt: str, params: Mapping[str, Any]) -> Any:
        return f"the key is {SECRET}"

    with Runtime(store=":memory:") as rt:
        session = rt.start_session(backend="local", reply=reply, model=f"model?api_key={SECRET}")
        session.query(f"use Bearer {SECRET} please")
    finished = spans.get_finished_spans()
    assert finished
    for span in finished:
        texts = [str(v) for v in (span.attributes or {}).values()]
        texts += [str(v) for e in span.events for v in (e.attributes or {}).values()]
        texts.append(span.status.description or "")
        assert not any(SECRET in text for text in texts), span.name


def test_attributes_redact_and_drop_nones() -> None:
    assert telemetry.attributes({"a": None, "password": "p", "b": ["x", 1], "c": 2.5}) == {
        "password": "[REDACTED]",
        "b": ["x", "1"],
        "c": 2.5,
    }


class Raising(SpanProcessor):
    """A broken span processor: raises at every span's end."""

    def on_end(self, span: ReadableSpan) -> None:
        raise RuntimeError("exporter bug")


def test_a_broken_span_processor_does_not_crash_the_session(
    rt: Runtime, spans: InMemorySpanExporter
) -> None:
    session = rt.start_session(backend="local")
    provider = trace.get_tracer_provider()
    provider.add_span_processor(Raising())  # type: ignore[attr-defined]
    assert session.query("hi")[-1].content == "hi"
    assert session.query("again")[-1].content == "again"
    assert session.session_info()["incarnation"] == 1


def test_without_a_provider_no_span_is_made(rt: Runtime) -> None:
    # The API alone (no SDK provider set): nothing is made, nothing travels with a query.
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert telemetry.start_span("beamagent.query") is None
    assert telemetry.current_context() is None
    assert telemetry.tracing() is False
    session = rt.start_session(backend="local")
    assert session.query("hi")[-1].content == "hi"


def test_tracing_says_whether_spans_are_made(spans: InMemorySpanExporter) -> None:
    assert telemetry.tracing() is True
    with telemetry.span("beamagent.route") as span:
        assert span is not None
    assert [s.name for s in spans.get_finished_spans()] == ["beamagent.route"]


def test_a_query_made_by_a_node_is_a_child_of_its_visit(
    rt: Runtime, spans: InMemorySpanExporter
) -> None:
    session = rt.start_session(backend="local")

    def ask(message: NodeMessage) -> Result:
        return Result(session.query(f"from {message.node_id}")[-1].content or "")

    run = rt.run_job(Job("j", [Node("a", serving=ask)], start="a"), "x")
    assert run.result(WAIT).output.body == "from a"
    finished = spans.get_finished_spans()
    node = one(finished, "beamagent.graph.node")
    query = one(finished, "beamagent.query")
    assert parent_of(query) == span_id(node)
    assert parent_of(node) == span_id(one(finished, "beamagent.graph.run"))


def test_an_async_query_is_a_child_of_the_awaiting_task_span(
    rt: Runtime, spans: InMemorySpanExporter
) -> None:
    session = rt.start_session(backend="local")

    async def main() -> int:
        with trace.get_tracer("test").start_as_current_span("task") as task:
            await session.aquery("hi")
        return task.get_span_context().span_id

    task_id = asyncio.run(main())
    assert parent_of(one(spans.get_finished_spans(), "beamagent.query")) == task_id


@tool
def add_up(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_an_in_process_tool_call_is_a_child_of_its_query(spans: InMemorySpanExporter) -> None:
    def model(prompt: str, params: Any) -> Any:
        outcome = yield LocalToolCall("add_up", {"a": 2, "b": 40})
        yield f"got {outcome.content}"

    with Runtime(store=":memory:", tools=[add_up]) as rt:
        session = rt.start_session(backend="local", reply=model)
        assert session.query("add", timeout=WAIT)[-1].content == "got 42"
    finished = spans.get_finished_spans()
    call = one(finished, "beamagent.tool")
    assert parent_of(call) == span_id(one(finished, "beamagent.query"))
    assert (call.attributes or {})["beamagent.tool.outcome"] == "ok"


def test_a_tool_server_call_is_a_child_of_the_sessions_running_query(
    spans: InMemorySpanExporter,
) -> None:
    with Runtime(store=":memory:", tools=[add_up]) as rt:
        url = rt.start_tool_server()
        state = rt._tool_state
        assert state is not None
        grant = Grant("s1", "claude", ToolSet.of([add_up]))
        token = state.grant(grant).token
        query = trace.get_tracer("test").start_span("query")  # as the session sets it
        grant.calls.query_span = query
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
        body["params"] = {"name": "add_up", "arguments": {"a": 1, "b": 2}}
        headers = {
            "Accept": "application/json, text/event-stream",
            "Authorization": f"Bearer {token}",
        }
        reply = httpx.post(url, json=body, headers=headers, timeout=WAIT)
        assert reply.status_code == 200
        query.end()
    call = one(spans.get_finished_spans(), "beamagent.tool")
    assert parent_of(call) == query.get_span_context().span_id
    assert (call.attributes or {})["beamagent.session_id"] == "s1"
    assert token not in str(call.attributes)
