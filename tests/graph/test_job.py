"""Jobs and nodes: construction, validation and the JSON form."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beamagent.errors import InvalidJob, InvalidNode
from beamagent.graph import (
    Condition,
    Edge,
    EdgeRouter,
    End,
    FunctionServing,
    Job,
    LinearRouter,
    Node,
    NodeMessage,
    Output,
    Result,
    Route,
    Router,
    Serving,
)


class EchoServing:
    """A serving class (not a function)."""

    def handle(self, message: NodeMessage) -> Result:
        return Result(str(message.input))


def echo(message: NodeMessage) -> str:
    return str(message.input)


ECHO = EchoServing()
MESSAGE = NodeMessage(run_id="r", job_id="j", node_id="a", input="in")


# --- Node -----------------------------------------------------------------------------------


def test_node_defaults_and_function_serving() -> None:
    node = Node("a", serving=echo)
    assert isinstance(node.serving, FunctionServing)
    assert node.serving.handle(MESSAGE) == Result("in")
    assert (node.router, node.objective, node.sub, node.concurrency) == (None, None, None, 10)
    assert Node("b", serving=ECHO).serving is ECHO
    assert Node("c", sub="other").sub == "other"


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"id": "a"}, "node 'a' needs exactly one of serving or sub"),
        ({"id": "a", "serving": echo, "sub": "j"}, "node 'a' needs exactly one of serving or sub"),
        ({"id": "", "serving": echo}, "non-empty string"),
        ({"id": 3, "serving": echo}, "non-empty string"),
        ({"id": "a", "serving": 5}, "must be a Serving"),
        ({"id": "a", "sub": ""}, "sub must be a job id"),
        ({"id": "a", "serving": echo, "router": "r"}, "router must be a Router"),
        ({"id": "a", "serving": echo, "objective": 1}, "objective must be a string"),
        ({"id": "a", "serving": echo, "concurrency": 0}, "concurrency must be an int >= 1"),
        ({"id": "a", "serving": echo, "concurrency": 2.0}, "concurrency must be an int >= 1"),
        ({"id": "a", "serving": echo, "concurrency": True}, "concurrency must be an int >= 1"),
    ],
)
def test_node_validation(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidJob, match=problem):
        Node(**kwargs)


# --- Job ------------------------------------------------------------------------------------


def test_job_from_a_list_or_a_mapping() -> None:
    a, b = Node("a", serving=echo), Node("b", serving=echo)
    from_list = Job("j", [a, b], start="a")
    from_map = Job("j", {"a": a, "b": b}, start="a")
    assert from_list.nodes == from_map.nodes == {"a": a, "b": b}
    assert from_list.max_retries == 3
    assert from_list.max_steps == 10_000
    assert from_list.description == ""
    assert from_list.node("b") is b


def test_job_node_lookup_of_unknown_node() -> None:
    job = Job("j", [Node("a", serving=echo)], start="a")
    with pytest.raises(InvalidNode, match="job 'j' has no node 'zz'"):
        job.node("zz")


@pytest.mark.parametrize(
    ("build", "problem"),
    [
        (lambda: Job("j", [], start="a"), "it has no nodes"),
        (lambda: Job("j", [Node("a", serving=echo)], start="b"), "start node 'b' is not one"),
        (lambda: Job("", [Node("a", serving=echo)], start="a"), "job id must be a non-empty"),
        (
            lambda: Job("j", [Node("a", serving=echo)], start="a", max_retries=-1),
            "max_retries must be an int >= 0",
        ),
        (
            lambda: Job("j", [Node("a", serving=echo)], start="a", max_steps=0),
            "max_steps must be an int >= 1",
        ),
        (
            lambda: Job("j", [Node("a", serving=echo)], start="a", max_steps="9"),  # type: ignore[arg-type]
            "max_steps must be an int >= 1",
        ),
        (
            lambda: Job("j", [Node("a", serving=echo), Node("a", sub="x")], start="a"),
            "two nodes have the id 'a'",
        ),
        (
            lambda: Job("j", {"b": Node("a", serving=echo)}, start="a"),
            r"nodes\['b'\] holds the node 'a'",
        ),
        (
            lambda: Job("j", {"a": "node"}, start="a"),  # type: ignore[arg-type]
            r"nodes\['a'\] must be a Node",
        ),
        (
            lambda: Job("j", ["a"], start="a"),  # type: ignore[list-item]
            "nodes must hold Node values",
        ),
        (
            lambda: Job("j", "a", start="a"),  # type: ignore[arg-type]
            "nodes must be a list or a mapping",
        ),
        (
            lambda: Job(
                "j",
                [Node("a", serving=echo, router=EdgeRouter([Edge("route", "ghost")]))],
                start="a",
            ),
            "node 'a': router edge 0 \\(route\\) names unknown node 'ghost'",
        ),
        (
            lambda: Job(
                "j",
                [
                    Node("a", serving=echo, router=LinearRouter(["a", "b"])),
                    Node("c", serving=echo, router=LinearRouter(["a", "b"])),
                ],
                start="a",
            ),
            "node 'a': linear router names unknown node 'b'",
        ),
    ],
)
def test_job_validation(build: Any, problem: str) -> None:
    with pytest.raises(InvalidJob, match=problem):
        build()


def test_job_validation_names_every_problem() -> None:
    linear = LinearRouter(["a", "b"])
    with pytest.raises(InvalidJob) as info:
        Job(
            "j",
            [Node("a", serving=echo, router=linear), Node("c", serving=echo, router=linear)],
            start="z",
            max_retries=-1,
        )
    text = str(info.value)
    assert text.startswith("job 'j': ")
    for problem in (
        "start node 'z'",
        "max_retries",
        "node 'a': linear router names unknown node 'b'",
        "node 'c': uses a linear router whose order ['a', 'b'] does not include it",
    ):
        assert problem in text


def test_job_with_custom_router_and_sub_node_is_valid() -> None:
    class Anywhere(Router):
        def outputs(self, message: NodeMessage) -> list[Output]:
            return []

        def resolve(self, message: NodeMessage, outputs: list[Output]) -> list[Any]:
            return [Route("nowhere")]  # not checked statically: the executor's job

    job = Job(
        "j",
        [Node("a", serving=echo, router=Anywhere()), Node("s", sub="other_job")],
        start="a",
        max_retries=0,
        max_steps=1,
    )
    assert job.node("s").sub == "other_job"


# --- Job.from_dict / from_json --------------------------------------------------------------


class Reviewer(Router):
    def outputs(self, message: NodeMessage) -> list[Output]:
        return []

    def resolve(self, message: NodeMessage, outputs: list[Output]) -> list[Any]:
        return [End()]


REVIEWER = Reviewer()
SERVINGS: dict[str, Serving | Any] = {"echo": echo, "class": ECHO}
ROUTERS: dict[str, Router] = {"reviewer": REVIEWER}

DEFINITION: dict[str, Any] = {
    "id": "essay",
    "description": "write and grade",
    "start": "draft",
    "max_retries": 2,
    "max_steps": 50,
    "nodes": {
        "draft": {
            "serving": "echo",
            "objective": "write a draft",
            "concurrency": 2,
            "router": {"order": ["draft", "grade"]},
        },
        "grade": {
            "serving": "class",
            "router": {
                "edges": [
                    {
                        "kind": "route",
                        "to": "publish",
                        "conditions": [{"key": "score", "op": "gte", "value": "7"}],
                    },
                    {"type": "fallback", "to_id": "draft"},
                ],
                "outputs": [{"key": "score", "type": "int", "min": 0, "max": 10}],
            },
        },
        "publish": {"serving": "echo", "router": "reviewer"},
        "archive": {"sub": "archiver"},
    },
}


def test_from_dict() -> None:
    job = Job.from_dict(DEFINITION, SERVINGS, ROUTERS)
    assert (job.id, job.description, job.start, job.max_retries, job.max_steps) == (
        "essay",
        "write and grade",
        "draft",
        2,
        50,
    )
    draft = job.node("draft")
    assert isinstance(draft.serving, FunctionServing)
    assert draft.objective == "write a draft"
    assert draft.concurrency == 2
    assert draft.router == LinearRouter(["draft", "grade"])
    grade = job.node("grade")
    assert grade.serving is ECHO
    assert grade.router == EdgeRouter(
        [
            Edge("route", "publish", conditions=[Condition("score", "gte", "7")]),
            Edge("fallback", "draft"),
        ],
        outputs=[Output("score", "int", min=0, max=10)],
    )
    assert grade.router.route(MESSAGE, {"score": 8}) == [Route("publish")]
    assert grade.router.route(MESSAGE, {"score": 6}) == [Route("draft")]
    assert job.node("publish").router is REVIEWER
    assert job.node("archive").sub == "archiver"


def test_from_json_and_defaults() -> None:
    text = json.dumps({"id": "j", "starting_node_id": "a", "nodes": {"a": {"serving": "echo"}}})
    job = Job.from_json(text, SERVINGS)
    assert (job.start, job.max_retries, job.max_steps, job.description) == ("a", 3, 10_000, "")
    assert job.node("a").router is None
    assert Job.from_json(text.encode(), SERVINGS).start == "a"


def _with(path: list[str | int], value: Any) -> dict[str, Any]:
    """A deep copy of DEFINITION with one key set (or deleted when value is ...)."""
    data: dict[str, Any] = json.loads(json.dumps(DEFINITION))
    target: Any
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (["not", "an", "object"], "a job definition must be an object"),
        (_with(["colour"], "red"), "job 'essay': unknown keys 'colour'"),
        (_with(["id"], ...), "missing key 'id'"),
        (_with(["nodes"], ...), "missing key 'nodes'"),
        (_with(["start"], ...), "missing key 'start'"),
        (_with(["starting_node_id"], "draft"), "give 'start' or 'starting_node_id', not both"),
        (_with(["nodes"], []), "'nodes' must be an object"),
        (_with(["start"], "nowhere"), "start node 'nowhere' is not one of its nodes"),
        (_with(["max_retries"], "3"), "max_retries must be an int"),
        (_with(["max_steps"], 0), "max_steps must be an int >= 1"),
        (_with(["id"], 7), "a job id must be a non-empty string"),
        (_with(["nodes", "draft"], "echo"), "node 'draft' must be an object"),
        (_with(["nodes", "draft", "colour"], []), "node 'draft': unknown keys 'colour'"),
        (_with(["nodes", "draft", "tools"], "search"), "node 'draft': tools must be a list"),
        (_with(["nodes", "draft", "resources"], {}), "node 'draft': resources must be a list"),
        (_with(["nodes", "draft", "metadata"], []), "node 'draft': metadata must be an object"),
        (_with(["metadata"], "x"), "job 'essay': metadata must be an object"),
        (_with(["start"], ["draft"]), r"start must be a node id \(a string\), got \['draft'\]"),
        (_with(["start"], {"id": "draft"}), "start must be a node id"),
        (
            _with(["nodes", "archive", "serving"], 5),
            "node 'archive': serving must be a serving name",
        ),
        (_with(["nodes", "draft", "serving"], "nope"), "node 'draft': unknown serving 'nope'"),
        (_with(["nodes", "draft", "serving"], ["echo"]), "node 'draft': unknown serving"),
        (_with(["nodes", "draft", "serving"], ...), "node 'draft' needs exactly one of serving"),
        (_with(["nodes", "draft", "concurrency"], 0), "node 'draft': concurrency must be"),
        (_with(["nodes", "draft", "objective"], 5), "node 'draft': objective must be a string"),
        (_with(["nodes", "publish", "router"], "ghost"), "node 'publish': unknown router 'ghost'"),
        (_with(["nodes", "publish", "router"], 5), "node 'publish': router must be a router name"),
        (_with(["nodes", "publish", "router"], {}), "an inline router needs 'edges'"),
        (
            _with(["nodes", "draft", "router"], {"order": ["draft"], "x": 1}),
            "node 'draft': router: unknown router keys",
        ),
        (_with(["nodes", "draft", "router"], {"order": "draft"}), "order must be a list"),
        (
            _with(["nodes", "draft", "router"], {"order": ["draft", "ghost"]}),
            "unknown node 'ghost'",
        ),
        (
            _with(["nodes", "grade", "router", "edges", 0, "kind"], "teleport"),
            "node 'grade': router: edge 0: unknown edge kind 'teleport'",
        ),
        (
            _with(["nodes", "grade", "router", "edges", 0, "to"], "ghost"),
            "node 'grade': router edge 0 \\(route\\) names unknown node 'ghost'",
        ),
        (
            _with(["nodes", "grade", "router", "edges", 0, "conditions", 0, "op"], "~"),
            "node 'grade': router: .*unknown condition op '~'",
        ),
        (
            _with(["nodes", "grade", "router", "outputs", 0, "type"], "float"),
            "node 'grade': router: unknown output type 'float'",
        ),
        (
            _with(["nodes", "grade", "router", "outputs"], [{"key": "s", "min": 1}]),
            "node 'grade': router: output 's': min/max only apply to int outputs",
        ),
    ],
)
def test_from_dict_errors(data: Any, problem: str) -> None:
    with pytest.raises(InvalidJob, match=problem):
        Job.from_dict(data, SERVINGS, ROUTERS)


def test_from_dict_serving_that_is_not_callable() -> None:
    with pytest.raises(InvalidJob, match="node 'draft': serving 'echo' is neither"):
        Job.from_dict(DEFINITION, {"echo": 5, "class": ECHO}, ROUTERS)  # type: ignore[dict-item]


def test_from_json_invalid_json() -> None:
    with pytest.raises(InvalidJob, match="not valid JSON"):
        Job.from_json("{nope", SERVINGS)
    with pytest.raises(InvalidJob, match="must be an object"):
        Job.from_json("[]", SERVINGS)


# --- retry_on -------------------------------------------------------------------------------


def test_retry_on_defaults_and_forms() -> None:
    node = Node("a", serving=echo)
    assert node.retry_on is None  # the job's applies
    assert Node("a", serving=echo, retry_on=ValueError).retry_on == (ValueError,)
    assert Node("a", serving=echo, retry_on=[ValueError, KeyError]).retry_on == (
        ValueError,
        KeyError,
    )
    assert Node("a", serving=echo, retry_on=()).retry_on == ()  # retry nothing extra
    job = Job("j", [node], "a", retry_on=(ConnectionError,))
    assert job.retry_on == (ConnectionError,)
    assert Job("j", [node], "a").retry_on == ()


@pytest.mark.parametrize("retry_on", ["ValueError", 5, (ValueError, "x"), (KeyboardInterrupt,)])
def test_retry_on_must_name_exception_types(retry_on: Any) -> None:
    with pytest.raises(InvalidJob, match="node 'a': retry_on must be a tuple of Exception"):
        Node("a", serving=echo, retry_on=retry_on)
    with pytest.raises(InvalidJob, match="job 'j': retry_on must be a tuple of Exception"):
        Job("j", [Node("a", serving=echo)], "a", retry_on=retry_on)


# --- fuzz: only beamagent errors escape -----------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value, sometimes any JSON value (a fuzz that fails at the first
    key never reaches the deeper checks)."""
    return st.integers(0, 4).flatmap(lambda pick: json_values if pick == 0 else good)


def _object(
    fields: dict[str, st.SearchStrategy[Any]], required: frozenset[str] = frozenset()
) -> st.SearchStrategy[Any]:
    """Objects with these keys (mostly plausible values; the ``required`` ones mostly
    present), sometimes with an unknown key."""
    complete = st.fixed_dictionaries(
        {k: _mostly(v) for k, v in fields.items() if k in required},
        optional={k: _mostly(v) for k, v in fields.items() if k not in required},
    )
    partial = st.fixed_dictionaries({}, optional={k: _mostly(v) for k, v in fields.items()})
    known = st.integers(0, 9).flatmap(lambda pick: partial if pick == 0 else complete)
    unknown = st.dictionaries(st.text(max_size=6), json_values, min_size=1, max_size=1)
    return st.integers(0, 9).flatmap(
        lambda pick: st.builds(lambda a, b: {**a, **b}, known, unknown) if pick == 0 else known
    )


_ids = st.sampled_from(["a", "b", "draft", "ghost", ""])
_texts = st.text(max_size=8)
_inline_router = _object({"order": st.lists(_ids, max_size=3)}) | _object(
    {
        "edges": st.lists(
            _object(
                {
                    "kind": st.sampled_from(["route", "fallback", "yield", "sub", "end", "x"]),
                    "type": st.sampled_from(["route", "end"]),
                    "to": _ids,
                    "to_id": _ids,
                    "count": st.integers(-1, 3),
                    "reason": _texts,
                    "conditions": st.lists(
                        _object(
                            {
                                "key": _texts,
                                "op": st.sampled_from(["eq", "gt", "lte", "~"]),
                                "value": json_values,
                            }
                        ),
                        max_size=2,
                    ),
                }
            ),
            max_size=3,
        ),
        "outputs": st.lists(
            _object(
                {
                    "key": _texts,
                    "type": st.sampled_from(["int", "enum", "bool", "string", "float"]),
                    "description": _texts,
                    "min": st.integers(-3, 3),
                    "max": st.integers(-3, 3),
                    "choices": st.lists(_texts, max_size=3),
                }
            ),
            max_size=2,
        ),
    }
)
_node = _object(
    {
        "serving": st.sampled_from(["echo", "class", "nope"]),
        "router": st.sampled_from(["reviewer", "ghost"]) | _inline_router,
        "objective": _texts,
        "sub": _ids,
        "concurrency": st.integers(-1, 3),
        "metadata": st.dictionaries(_texts, json_values, max_size=2),
        "agent_id": json_values,
        "tools": st.lists(json_values, max_size=2),
        "resources": st.lists(st.dictionaries(_texts, json_values, max_size=2), max_size=2),
    }
)
_job = st.sampled_from(["start", "starting_node_id"]).flatmap(
    lambda start_key: _object(
        {
            "id": st.just("j"),
            "description": _texts,
            start_key: _ids,
            "max_retries": st.integers(-1, 3),
            "max_steps": st.integers(0, 3),
            "metadata": st.dictionaries(_texts, json_values, max_size=2),
            "outputs": json_values,
            "nodes": st.dictionaries(_ids | _texts, _node, max_size=3),
        },
        required=frozenset({"id", "nodes", start_key}),
    )
)
# A valid skeleton around one fuzzed node reaches the node, router and edge parsers more often.
_one_node_jobs = st.builds(
    lambda node: {"id": "j", "start": "a", "nodes": {"a": node, "b": {"serving": "echo"}}},
    _node,
)
job_definitions = _mostly(_job | _one_node_jobs)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(job_definitions)
def test_from_dict_and_from_json_raise_only_beamagent_errors(data: Any) -> None:
    for load in (
        lambda: Job.from_dict(data, SERVINGS, ROUTERS),
        lambda: Job.from_json(json.dumps(data), SERVINGS, ROUTERS),
    ):
        try:
            job = load()
        except InvalidJob:  # the one error they document; any other fails the test
            continue
        assert isinstance(job, Job)
        assert job.start in job.nodes


# --- Agens 0.2 job configs ------------------------------------------------------------------

# What Agens 0.2 writes for a job (``Jason.encode!`` of an ``Agens.Job.Config``: every struct
# field, nil as null, servings as their module names): a classifier with an agent and MCP
# tools, a sub-job node (Agens requires a serving there too), and a plain node.
AGENS_CONFIG = """
{
  "id": "support_triage",
  "description": "Classify a support ticket, look up the customer, and draft a reply.",
  "starting_node_id": "classify",
  "max_retries": 2,
  "outputs": null,
  "nodes": {
    "classify": {
      "serving": "Elixir.Support.Servings.Classifier",
      "agent_id": "triage-agent",
      "sub": null,
      "objective": "Decide whether the ticket is a bug, a billing question or other.",
      "tools": [
        "{\\"name\\": \\"lookup_customer\\", \\"inputSchema\\": {\\"type\\": \\"object\\"}}"
      ],
      "resources": [
        {"uri": "file:///kb/billing.md", "name": "billing-kb",
         "description": "Billing policies", "content": null}
      ]
    },
    "research": {
      "serving": "Elixir.Support.Servings.SubResult",
      "agent_id": null,
      "sub": "customer_research",
      "objective": null,
      "tools": null,
      "resources": null
    },
    "reply": {
      "serving": "Elixir.Support.Servings.Writer",
      "agent_id": "writer-agent",
      "sub": null,
      "objective": "Draft a short, friendly reply.",
      "tools": [],
      "resources": []
    }
  }
}
"""

AGENS_SERVINGS: dict[str, Any] = {
    "Elixir.Support.Servings.Classifier": echo,
    "Elixir.Support.Servings.Writer": ECHO,
}


def test_an_agens_job_config_loads_unchanged() -> None:
    job = Job.from_json(AGENS_CONFIG, AGENS_SERVINGS)
    assert (job.id, job.start, job.max_retries, job.max_steps) == (
        "support_triage",
        "classify",
        2,
        10_000,
    )
    assert job.description.startswith("Classify a support ticket")
    assert job.metadata == {}  # "outputs": null is no outputs
    classify = job.node("classify")
    assert isinstance(classify.serving, FunctionServing)
    assert classify.objective == "Decide whether the ticket is a bug, a billing question or other."
    assert classify.metadata["agent_id"] == "triage-agent"
    assert json.loads(classify.metadata["tools"][0])["name"] == "lookup_customer"
    assert classify.metadata["resources"] == [
        {
            "uri": "file:///kb/billing.md",
            "name": "billing-kb",
            "description": "Billing policies",
            "content": None,
        }
    ]
    research = job.node("research")
    assert research.sub == "customer_research"
    assert research.serving is None  # a sub node: the sub-run's output is its result
    assert research.metadata == {"serving": "Elixir.Support.Servings.SubResult"}
    reply = job.node("reply")
    assert reply.serving is ECHO
    assert reply.metadata == {"agent_id": "writer-agent", "tools": [], "resources": []}


def test_an_agens_config_outputs_and_our_metadata_are_kept() -> None:
    data = json.loads(AGENS_CONFIG)
    data["outputs"] = [["category", "string"]]
    data["metadata"] = {"owner": "support"}
    data["nodes"]["reply"]["metadata"] = {"team": "tier1"}
    job = Job.from_dict(data, AGENS_SERVINGS)
    assert job.metadata == {"owner": "support", "outputs": [["category", "string"]]}
    assert job.node("reply").metadata == {
        "team": "tier1",
        "agent_id": "writer-agent",
        "tools": [],
        "resources": [],
    }


def test_an_agens_key_given_twice_is_refused() -> None:
    data = json.loads(AGENS_CONFIG)
    data["nodes"]["reply"]["metadata"] = {"agent_id": "other"}
    with pytest.raises(InvalidJob, match="node 'reply': 'agent_id' is given both"):
        Job.from_dict(data, AGENS_SERVINGS)
    data = json.loads(AGENS_CONFIG)
    data["outputs"] = []
    data["metadata"] = {"outputs": []}
    with pytest.raises(InvalidJob, match="'outputs' is given both"):
        Job.from_dict(data, AGENS_SERVINGS)


def test_an_agens_config_with_an_unknown_serving_names_it() -> None:
    with pytest.raises(InvalidJob, match=r"unknown serving 'Elixir\.Support\.Servings\.Writer'"):
        Job.from_json(AGENS_CONFIG, {"Elixir.Support.Servings.Classifier": echo})


def test_an_agens_config_runs() -> None:
    from beamagent.graph import RunStatus
    from beamagent.runtime import Runtime

    def classify(message: NodeMessage) -> Result:
        return Result("billing", next=[Route("research")])

    def writer(message: NodeMessage) -> str:
        assert message.previous_result is not None
        return f"reply using {message.previous_result.body}"

    research = Job("customer_research", [Node("look", serving=lambda m: "gold plan")], "look")
    data = json.loads(AGENS_CONFIG)
    job = Job.from_dict(
        data,
        {"Elixir.Support.Servings.Classifier": classify, "Elixir.Support.Servings.Writer": writer},
        {"to_reply": LinearRouter(["research", "reply"])},
    )
    # The routers of an Agens job live in its servings; here a serving routes by ``next``
    # and the sub node has none: its sub-run's output finishes the thread.
    with Runtime(store=":memory:") as rt:
        result = rt.run_job(job, "I was charged twice", subs={"customer_research": research})
        done = result.result(10)
    assert done.status is RunStatus.COMPLETED
    assert [r.node_id for r in done.results_by_thread["0"]] == ["classify", "research"]
    assert done.output is not None
    assert done.output.body == "gold plan"


def test_metadata_is_copied_and_checked() -> None:
    given = {"agent_id": "x"}
    node = Node("a", serving=echo, metadata=given)
    given["agent_id"] = "changed"
    assert node.metadata == {"agent_id": "x"}
    assert hash(node) == hash(Node("a", serving=node.serving, metadata={"other": 1}))
    with pytest.raises(InvalidJob, match="node 'a': metadata must be a mapping"):
        Node("a", serving=echo, metadata=[("k", 1)])  # type: ignore[arg-type]
    with pytest.raises(InvalidJob, match="metadata must be a mapping with string keys"):
        Job("j", [node], "a", metadata={1: "x"})  # type: ignore[dict-item]
