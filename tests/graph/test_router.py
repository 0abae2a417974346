"""Routers: output validation, next overrides, edge and linear routers."""

from __future__ import annotations

from typing import Any

import pytest

from beamagent.errors import InvalidNext, InvalidNode
from beamagent.graph import (
    Condition,
    Edge,
    EdgeKind,
    EdgeRouter,
    End,
    Instruction,
    LinearRouter,
    NodeMessage,
    Output,
    Retry,
    Route,
    Router,
    Sub,
    Yield,
)


def message(node_id: str = "n") -> NodeMessage:
    return NodeMessage(run_id="r", job_id="j", node_id=node_id)


class RecordingRouter(Router):
    """Declares the given outputs and records what resolve was called with."""

    def __init__(self, declared: list[Output], answer: list[Instruction] | None = None) -> None:
        self.declared = declared
        self.answer = answer if answer is not None else [Route("next")]
        self.calls: list[list[Output]] = []

    def outputs(self, message: NodeMessage) -> list[Output]:
        return list(self.declared)

    def resolve(self, message: NodeMessage, outputs: list[Output]) -> list[Instruction]:
        self.calls.append(outputs)
        return list(self.answer)


# --- Router.route ---------------------------------------------------------------------------


def test_route_copies_values_in_declared_order() -> None:
    router = RecordingRouter([Output("b", "int"), Output("a")])
    assert router.route(message(), {"a": "x", "b": "2", "extra": 1}) == [Route("next")]
    assert router.calls == [[Output("b", "int", value=2), Output("a", value="x")]]


def test_route_allows_none_values() -> None:
    router = RecordingRouter([Output("a", "int")])
    router.route(message(), {"a": None})
    assert router.calls == [[Output("a", "int", value=None)]]


def test_route_retries_naming_the_missing_keys() -> None:
    router = RecordingRouter([Output("a"), Output("b"), Output("c")])
    [retry] = router.route(message(), {"b": 1})
    assert isinstance(retry, Retry)
    assert retry.reason == "the outputs are missing the required keys 'a', 'c'"
    assert router.calls == []


@pytest.mark.parametrize("outputs", [None, [], ["a"], "a", 5])
def test_route_retries_when_outputs_are_not_a_mapping(outputs: Any) -> None:
    router = RecordingRouter([Output("a"), Output("b")])
    assert router.route(message(), outputs) == [
        Retry("the outputs must be an object with the keys 'a', 'b'")
    ]
    assert router.calls == []


def test_route_retries_naming_bad_values() -> None:
    router = RecordingRouter(
        [Output("n", "int", max=3), Output("ok", "bool"), Output("e", "enum", choices=["x"])]
    )
    [retry] = router.route(message(), {"n": 4, "ok": "perhaps", "e": "x"})
    assert isinstance(retry, Retry)
    assert retry.reason is not None
    assert retry.reason.startswith("the outputs have bad values: ")
    assert "outputs.n: 4 is above the maximum 3" in retry.reason
    assert "outputs.ok: expected a boolean" in retry.reason
    assert "outputs.e" not in retry.reason
    assert router.calls == []


@pytest.mark.parametrize("outputs", [None, {}, {"any": 1}, "junk"])
def test_route_without_declared_outputs_resolves_with_nothing(outputs: Any) -> None:
    router = RecordingRouter([], [End()])
    assert router.route(message(), outputs) == [End()]
    assert router.calls == [[]]


# --- Router.route_with_next -----------------------------------------------------------------


def test_next_overrides_static_routing() -> None:
    router = RecordingRouter([Output("a")])
    nxt = [{"type": "route", "value": "x", "count": 2}, {"type": "junk"}, {"type": "end"}]
    # The override applies even when the outputs would not validate.
    assert router.route_with_next(message(), {}, nxt) == [Route("x", 2), End()]
    assert router.calls == []


def test_next_instruction_objects_override_too() -> None:
    router = RecordingRouter([])
    assert router.route_with_next(message(), {}, (Yield("j"),)) == [Yield("j")]


@pytest.mark.parametrize("nxt", [None, [], (), [{"type": "nope"}, 3, {"type": "route"}]])
def test_unusable_next_falls_back_to_route(nxt: Any) -> None:
    router = RecordingRouter([Output("a")])
    assert router.route_with_next(message(), {"a": 1}, nxt) == [Route("next")]
    assert router.route_with_next(message(), {}, nxt) == [
        Retry("the outputs are missing the required keys 'a'")
    ]


@pytest.mark.parametrize("nxt", ["end", {"type": "end"}, 7])
def test_a_next_that_is_not_a_list_is_invalid_next(nxt: Any) -> None:
    router = RecordingRouter([])
    with pytest.raises(InvalidNext, match="not a list"):
        router.route_with_next(message(), {}, nxt)
    assert router.calls == []


def test_check_targets_default_knows_nothing() -> None:
    assert RecordingRouter([]).check_targets("n", []) == []


# --- Edge -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edge", "instruction"),
    [
        (Edge("route", "a"), Route("a")),
        (Edge("route", "a", count=3), Route("a", 3)),
        (Edge("fallback", "f", count=2), Route("f", 2)),
        (Edge("yield", "j"), Yield("j")),
        (Edge("sub", "job2"), Sub("job2")),
        (Edge("end"), End()),
        (Edge("retry"), Retry()),
        (Edge("retry", reason="again"), Retry("again")),
    ],
)
def test_edge_instruction(edge: Edge, instruction: Instruction) -> None:
    assert edge.instruction() == instruction


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"kind": "teleport", "to": "a"}, "unknown edge kind 'teleport'"),
        ({"kind": "route"}, "route edges need 'to'"),
        ({"kind": "yield", "to": ""}, "yield edges need 'to'"),
        ({"kind": "fallback", "to": 3}, "fallback edges need 'to'"),
        ({"kind": "end", "to": "a"}, "end edges take no 'to'"),
        ({"kind": "route", "to": "a", "count": 0}, "count must be an int >= 1"),
        ({"kind": "route", "to": "a", "count": True}, "count must be an int >= 1"),
        ({"kind": "yield", "to": "a", "count": 2}, "yield edges take no count"),
        ({"kind": "route", "to": "a", "reason": "r"}, "only retry edges take a reason"),
        ({"kind": "retry", "reason": 5}, "only retry edges take a reason"),
        ({"kind": "route", "to": "a", "conditions": {"key": "k"}}, "conditions must be a list"),
        ({"kind": "route", "to": "a", "conditions": [{"op": "eq"}]}, "needs a 'key'"),
    ],
)
def test_edge_validation(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Edge(**kwargs)


def test_edge_from_dict() -> None:
    assert Edge.from_dict(
        {"type": "route", "to_id": "a", "count": 2, "conditions": [{"key": "k", "value": 1}]}
    ) == Edge(EdgeKind.ROUTE, "a", 2, (Condition("k", "eq", 1),))
    assert Edge.from_dict({"kind": "retry", "reason": "r"}) == Edge("retry", reason="r")
    with pytest.raises(ValueError, match="unknown edge keys: when"):
        Edge.from_dict({"kind": "end", "when": 1})
    with pytest.raises(ValueError, match="'kind' or 'type', not both"):
        Edge.from_dict({"kind": "end", "type": "end"})
    with pytest.raises(ValueError, match="'to' or 'to_id', not both"):
        Edge.from_dict({"kind": "route", "to": "a", "to_id": "a"})
    with pytest.raises(ValueError, match="needs a 'kind'"):
        Edge.from_dict({"to": "a"})
    with pytest.raises(ValueError, match="must be an object"):
        Edge.from_dict(["route"])  # type: ignore[arg-type]


# --- EdgeRouter -----------------------------------------------------------------------------


GRADER = EdgeRouter(
    [
        Edge("route", "publish", conditions=[Condition("score", "gte", "8")]),
        Edge(
            "route",
            "celebrate",
            conditions=[Condition("score", "eq", 10), Condition("happy", "eq", "true")],
        ),
        Edge("end", conditions=[Condition("verdict", "eq", "abandon")]),
        Edge("fallback", "rewrite"),
        Edge("fallback", "notify", conditions=[Condition("happy", "eq", False)]),
    ],
    outputs=[
        Output("score", "int", min=0, max=10),
        Output("happy", "bool"),
        Output("verdict", "enum", choices=["keep", "abandon"]),
    ],
)


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        ({"score": 8, "happy": False, "verdict": "keep"}, [Route("publish")]),
        # Every matching non-fallback edge is taken, in order: a fan-out.
        (
            {"score": "10", "happy": "true", "verdict": "keep"},
            [Route("publish"), Route("celebrate")],
        ),
        # One failing condition is enough to skip an edge.
        ({"score": 10, "happy": False, "verdict": "keep"}, [Route("publish")]),
        ({"score": 3, "happy": True, "verdict": "abandon"}, [End()]),
        # Nothing matches: the fallback edges whose conditions pass.
        ({"score": 3, "happy": True, "verdict": "keep"}, [Route("rewrite")]),
        ({"score": 3, "happy": False, "verdict": "keep"}, [Route("rewrite"), Route("notify")]),
        # None values fail every condition.
        ({"score": None, "happy": None, "verdict": None}, [Route("rewrite")]),
        # Validation happens before any edge is looked at.
        ({"score": 11, "happy": True, "verdict": "keep"}, None),
        ({"score": 5, "verdict": "keep"}, None),
    ],
)
def test_edge_router(outputs: dict[str, Any], expected: list[Instruction] | None) -> None:
    result = GRADER.route(message("grade"), outputs)
    if expected is None:
        assert len(result) == 1
        assert isinstance(result[0], Retry)
    else:
        assert result == expected


def test_edge_router_with_no_edge_taken_finishes_the_thread() -> None:
    router = EdgeRouter(
        [Edge("fallback", "f", conditions=[Condition("k", "eq", "x")])], outputs=[Output("k")]
    )
    assert router.route(message(), {"k": "y"}) == []
    assert router.route(message(), {"k": "x"}) == [Route("f")]


def test_edge_router_outputs_and_json_form() -> None:
    router = EdgeRouter.from_dict(
        {
            "edges": [
                {
                    "kind": "yield",
                    "to": "join",
                    "conditions": [{"key": "n", "op": "gt", "value": 1}],
                },
                {"kind": "fallback", "to": "solo"},
            ],
            "outputs": [{"key": "n", "type": "int"}],
        }
    )
    assert router.outputs(message()) == [Output("n", "int")]
    assert router.route(message(), {"n": 2}) == [Yield("join")]
    assert router.route(message(), {"n": 1}) == [Route("solo")]
    assert EdgeRouter.from_dict({"edges": []}).outputs(message()) == []
    with pytest.raises(ValueError, match="needs 'edges'"):
        EdgeRouter.from_dict({"outputs": []})
    with pytest.raises(ValueError, match="unknown router keys"):
        EdgeRouter.from_dict({"edges": [], "order": []})
    with pytest.raises(ValueError, match="edge 1: route edges need 'to'"):
        EdgeRouter([Edge("end"), {"kind": "route"}])
    with pytest.raises(ValueError, match="edges must be a list"):
        EdgeRouter({"kind": "end"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="outputs must be a list"):
        EdgeRouter([], outputs="n")  # type: ignore[arg-type]


def test_edge_router_check_targets() -> None:
    router = EdgeRouter(
        [
            Edge("route", "a"),
            Edge("yield", "ghost"),
            Edge("sub", "other_job"),  # job ids are not node ids: not checked
            Edge("fallback", "phantom"),
            Edge("end"),
        ]
    )
    assert router.check_targets("a", {"a", "b"}) == [
        "router edge 1 (yield) names unknown node 'ghost'",
        "router edge 3 (fallback) names unknown node 'phantom'",
    ]


# --- LinearRouter ---------------------------------------------------------------------------


def test_linear_router() -> None:
    router = LinearRouter(["a", "b", "c"])
    assert router.outputs(message("a")) == []
    assert router.route(message("a"), {}) == [Route("b")]
    assert router.route(message("b"), None) == [Route("c")]
    assert router.route(message("c"), {}) == [End()]
    with pytest.raises(InvalidNode, match="node 'z' is not in the linear router's order"):
        router.route(message("z"), {})


def test_single_node_linear_router_ends() -> None:
    assert LinearRouter(["only"]).route(message("only"), {}) == [End()]


@pytest.mark.parametrize(
    ("order", "problem"),
    [
        ([], "at least one node id"),
        ("abc", "order must be a list"),
        (["a", ""], "non-empty strings"),
        (["a", 3], "non-empty strings"),
        (["a", "b", "a"], "repeats a node id"),
        (5, "order must be a list"),
    ],
)
def test_linear_router_validation(order: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        LinearRouter(order)


def test_linear_router_check_targets() -> None:
    router = LinearRouter(["a", "ghost"])
    assert router.check_targets("a", {"a", "b"}) == ["linear router names unknown node 'ghost'"]
    assert router.check_targets("b", {"a", "b", "ghost"}) == [
        "uses a linear router whose order ['a', 'ghost'] does not include it"
    ]
