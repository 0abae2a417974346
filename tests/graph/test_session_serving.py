"""SessionServing end to end: LM-style nodes driven by the local backend's scripted replies."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from beamagent.errors import InvalidNext, InvalidOption, MaxRetriesExceeded
from beamagent.graph import (
    Edge,
    EdgeRouter,
    End,
    EventKind,
    Job,
    Node,
    NodeMessage,
    Output,
    Result,
    RunStatus,
    SessionServing,
    ToolRegistry,
)
from beamagent.runtime import Runtime

WAIT = 15.0


@pytest.fixture
def rt() -> Iterator[Runtime]:
    with Runtime(store=":memory:") as runtime:
        yield runtime


def answer(body: str, *, outputs: Mapping[str, Any] | None = None, **rest: Any) -> str:
    return json.dumps(
        {"body": body, "outputs": dict(outputs or {}), "next": [], "tool_calls": [], **rest}
    )


class Model:
    """A scripted model: ``script(prompt)`` answers; every prompt is kept."""

    def __init__(self, script: Any) -> None:
        self.script = script
        self.prompts: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, prompt: str, params: Mapping[str, Any]) -> Any:
        with self._lock:
            self.prompts.append(prompt)
        reply = self.script(prompt)
        return reply if isinstance(reply, list) else str(reply)


def triage_job(model: Model, **serving: Any) -> Job:
    router = EdgeRouter(
        [
            Edge("route", "fix", conditions=[{"key": "category", "value": "bug"}]),
            Edge("fallback", "reply"),
        ],
        outputs=[Output("category", "enum", choices=["bug", "question"])],
    )
    classify = SessionServing(
        "Classify this ticket: {input}",
        backend="local",
        session_options={"reply": model},
        **serving,
    )
    return Job(
        "triage",
        [
            Node("classify", serving=classify, router=router, objective="sort tickets"),
            Node("fix", serving=lambda m: f"fixing: {m.previous_result.body}"),
            Node("reply", serving=lambda m: f"replying: {m.previous_result.body}"),
        ],
        start="classify",
    )


def test_the_model_answer_routes_the_run(rt: Runtime) -> None:
    model = Model(
        lambda prompt: answer(
            "login page crashes",
            outputs={"category": "bug" if "crash" in prompt else "question"},
        )
    )
    job = triage_job(model)
    run = rt.run_job(job, "the login page crashes")
    result = run.result(WAIT)
    assert result.status is RunStatus.COMPLETED
    assert result.output is not None
    assert result.output.body == "fixing: login page crashes"
    (prompt,) = model.prompts
    assert prompt.startswith(
        "Objective: sort tickets\n\nClassify this ticket: the login page crashes"
    )
    schema = json.loads(prompt.rsplit("\n", 1)[1])
    assert schema["properties"]["outputs"]["required"] == ["category"]
    assert schema["properties"]["outputs"]["properties"]["category"]["enum"] == ["bug", "question"]
    assert rt.run_job(job, "how do I export?").result(WAIT).output.body.startswith("replying")  # type: ignore[union-attr]


def test_sessions_are_stopped_when_the_run_ends(rt: Runtime) -> None:
    model = Model(lambda prompt: answer("q", outputs={"category": "question"}))
    job = triage_job(model)
    serving = job.node("classify").serving
    assert isinstance(serving, SessionServing)
    run = rt.run_job(job, "a question")
    run.result(WAIT)
    assert serving.sessions(run.run_id) == []
    assert rt.live_sessions() == []


def test_a_next_list_from_the_model_overrides_the_router(rt: Runtime) -> None:
    model = Model(
        lambda prompt: answer(
            "a bug, but answer it",
            outputs={"category": "bug"},
            next=[{"type": "route", "value": "reply"}],
        )
    )
    result = rt.run_job(triage_job(model), "x").result(WAIT)
    assert result.output is not None
    assert result.output.body == "replying: a bug, but answer it"


def test_a_malformed_answer_is_retried_with_the_reason_in_the_prompt(rt: Runtime) -> None:
    replies = iter(["not json at all", answer("ok", outputs={"category": "question"})])
    model = Model(lambda prompt: next(replies))
    run = rt.run_job(triage_job(model), "x")
    assert run.result(WAIT).status is RunStatus.COMPLETED
    assert len(model.prompts) == 2
    assert (
        "Your previous answer was not accepted: the answer was not valid JSON" in model.prompts[1]
    )
    (retry,) = [e for e in run.events(WAIT) if e.kind is EventKind.NODE_RETRY]
    assert retry.node_id == "classify"


def test_a_model_next_that_is_not_a_list_ends_the_run_without_asking_again(rt: Runtime) -> None:
    model = Model(lambda prompt: answer("?", outputs={"category": "bug"}, next="fix"))
    run = rt.run_job(triage_job(model), "x")
    with pytest.raises(InvalidNext, match="node 'classify' gave a next that is not a list: 'fix'"):
        run.result(WAIT)
    assert len(model.prompts) == 1  # Agens: invalid_next; it used to be asked three more times
    assert [e for e in run.events(WAIT) if e.kind is EventKind.NODE_RETRY] == []


def test_an_error_result_from_the_backend_is_retried(rt: Runtime) -> None:
    replies = iter(
        [
            [
                {
                    "type": "result",
                    "subtype": "error_during_execution",
                    "is_error": True,
                    "result": "API overloaded (529)",
                }
            ],
            answer("ok", outputs={"category": "question"}),
        ]
    )
    model = Model(lambda prompt: next(replies))
    run = rt.run_job(triage_job(model), "x")
    assert run.result(WAIT).status is RunStatus.COMPLETED
    (retry,) = [e for e in run.events(WAIT) if e.kind is EventKind.NODE_RETRY]
    assert "QueryFailed: the model's query failed (error_during_execution)" in retry.data["reason"]
    assert "API overloaded" in retry.data["reason"]


def test_outputs_outside_the_schema_are_retried_then_fail(rt: Runtime) -> None:
    model = Model(lambda prompt: answer("?", outputs={"category": "spam"}))
    job = triage_job(model)
    with pytest.raises(MaxRetriesExceeded, match="not one of bug, question"):
        rt.run_job(job, "x").result(WAIT)
    assert len(model.prompts) == job.max_retries + 1


def test_tool_calls_are_run_and_their_results_prompted(rt: Runtime) -> None:
    tools = ToolRegistry()

    @tools.register
    def account(email: str) -> str:
        """The customer's account status."""
        return f"{email} is suspended"

    def script(prompt: str) -> str:
        if "Results of your tool calls" not in prompt:
            return answer(
                "let me check",
                tool_calls=[{"id": "t1", "name": "account", "arguments": {"email": "ada@x"}}],
            )
        assert "ada@x is suspended" in prompt
        return answer("account suspended", outputs={"category": "question"})

    model = Model(script)
    run = rt.run_job(triage_job(model, tools=tools), "why can't ada log in?")
    result = run.result(WAIT)
    assert result.output is not None
    assert result.output.body == "replying: account suspended"
    assert '"name": "account"' in model.prompts[0]  # the tool definitions are offered
    (call,) = [e for e in run.events(WAIT) if e.kind is EventKind.TOOL_CALL]
    assert call.data["tool"] == "account"
    assert call.data["is_error"] is False


def test_a_node_copy_keeps_its_session_across_visits(rt: Runtime) -> None:
    sessions: set[str] = set()
    lock = threading.Lock()

    def script(prompt: str) -> str:
        return answer("again")

    model = Model(script)
    serving = SessionServing("Step {step}", backend="local", session_options={"reply": model})

    def note(message: NodeMessage) -> Any:
        result = serving.handle(message)
        with lock:
            sessions.update(s.session_id for s in serving.sessions(message.run_id))
        return result if message.step < 3 else Result("done", next=[End()])

    job = Job(
        "loop",
        [Node("n", serving=note, router=EdgeRouter([Edge("route", "n")]))],
        start="n",
        max_steps=5,
    )
    result = rt.run_job(job, "x").result(WAIT)
    assert result.status is RunStatus.ENDED
    assert [p.split("\n", 1)[0] for p in model.prompts] == ["Step 1", "Step 2", "Step 3"]
    assert len(sessions) == 1


def test_routing_chooses_the_session_backend(rt: Runtime) -> None:
    model = Model(lambda prompt: answer("q", outputs={"category": "question"}))
    router = EdgeRouter([Edge("end")], outputs=[Output("category", "enum", choices=["question"])])
    serving = SessionServing(
        "Classify {input}",
        routing={"policy": "preferred_then_fallback", "preferred_backends": ["local"]},
        session_options={"reply": model},
    )
    seen: list[str] = []

    def observe(message: NodeMessage) -> Any:
        result = serving.handle(message)
        seen.extend(s.backend() for s in serving.sessions(message.run_id))
        return result

    job = Job("routed", [Node("n", serving=observe, router=router)], start="n")
    assert rt.run_job(job, "x").result(WAIT).status is RunStatus.ENDED
    assert seen == ["local"]


@pytest.mark.parametrize("template", ["{nope}", "{0}", "{input"])
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(InvalidOption):
        SessionServing(template, backend="local")


def test_a_function_template_gets_the_message() -> None:
    serving = SessionServing(lambda m: f"node {m.node_id} input {m.input}", backend="local")
    message = NodeMessage(run_id="r", job_id="j", node_id="n", input=5, retry_reason="too short")
    prompt = serving.prompt(message)
    assert prompt.startswith("node n input 5\n\nYour previous answer was not accepted: too short")
    assert prompt.rstrip().endswith("}")


def test_template_fields_fill_in() -> None:
    serving = SessionServing(
        "{input}|{objective}|{previous}|{joined}|{node_id}|{step}|{retries}", backend="local"
    )
    message = NodeMessage(
        run_id="r",
        job_id="j",
        node_id="n",
        node_objective="obj",
        input={"a": 1},
        previous_result=Result("prev"),
        joined=[Result("x"), Result("y")],
        step=4,
        retries=1,
    )
    assert serving.render(message) == '{"a": 1}|obj|prev|x\n\ny|n|4|1'


def test_run_tools_are_offered_when_the_serving_has_none(rt: Runtime) -> None:
    tools = ToolRegistry()

    @tools.register
    def weather(city: str) -> str:
        """Today's weather."""
        return f"sun in {city}"

    def script(prompt: str) -> str:
        if "Results of your tool calls" in prompt:
            return answer("it is sunny", outputs={"category": "question"})
        return answer("checking", tool_calls=[{"name": "weather", "arguments": {"city": "Oslo"}}])

    model = Model(script)
    result = rt.run_job(triage_job(model), "weather?", tools=tools).result(WAIT)
    assert result.output is not None
    assert result.output.body == "replying: it is sunny"
    assert '"name": "weather"' in model.prompts[0]
    assert "sun in Oslo" in model.prompts[1]
