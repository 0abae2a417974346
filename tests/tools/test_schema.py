"""Schema derivation and argument checking: examples, then hypothesis fuzzing.

The property that matters: whatever JSON a model sends, a call gives a
result (an error result for bad arguments) and never an exception in the
runtime; and our validator agrees with the reference ``jsonschema``
implementation on the schemas we derive.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import math
from typing import Annotated, Any, Literal, Optional, TypedDict

import attrs
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beamagent.errors import InvalidOption
from beamagent.tools import ArgumentError, ToolContext, ToolSet, invoke, tool, validate_json
from beamagent.tools._schema import shape_of

CTX = ToolContext("s", "test", "t")


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Point:
    x: int
    y: float = 0.0


@attrs.frozen
class Box:
    _width: float
    label: str | None = None


@dataclasses.dataclass
class Tree:
    children: list[Tree]


class Options(TypedDict, total=False):
    verbose: bool
    tags: list[str]


def test_schema_of_a_rich_signature() -> None:
    @tool
    def place(
        point: Point,
        box: Box,
        colour: Colour,
        mode: Literal["fast", "slow"] = "fast",
        options: Options | None = None,
        scale: Annotated[float, "how much to scale"] = 1.0,
        ctx: ToolContext | None = None,
    ) -> str:
        """Place a box.

        Args:
            point: where to place it
        """
        return ""

    schema = place.input_schema
    assert schema["required"] == ["point", "box", "colour"]
    assert set(schema["properties"]) == {"point", "box", "colour", "mode", "options", "scale"}
    assert schema["properties"]["point"]["description"] == "where to place it"
    assert schema["properties"]["scale"]["description"] == "how much to scale"
    assert schema["properties"]["colour"]["enum"] == ["red", "blue"]
    assert schema["properties"]["box"]["properties"]["width"] == {"type": "number"}
    assert schema["additionalProperties"] is False
    assert place.context_parameter == "ctx"
    assert place.description == "Place a box."
    jsonschema.Draft202012Validator.check_schema(schema)


def test_arguments_are_converted_to_the_annotated_types() -> None:
    @tool
    def f(p: Point, b: Box, c: Colour, t: tuple[int, str], s: set[int], o: Options) -> None:
        return None

    kwargs = f.parse_arguments(
        {
            "p": {"x": 1},
            "b": {"width": 2, "label": "L"},
            "c": "blue",
            "t": [3, "x"],
            "s": [1, 2],
            "o": {"tags": ["a"]},
        }
    )
    assert kwargs == {
        "p": Point(1, 0.0),
        "b": Box(2.0, "L"),
        "c": Colour.BLUE,
        "t": (3, "x"),
        "s": {1, 2},
        "o": {"tags": ["a"]},
    }
    assert isinstance(kwargs["b"]._width, float)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"a": "1"}, "a: expected integer, got string '1'"),
        ({}, "missing required 'a'"),
        ({"a": 1, "z": 2}, "unknown 'z'"),
        ([1], "expected object"),
        ({"a": True}, "expected integer, got boolean"),
        ({"a": 1.5}, "expected integer"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(arguments: Any, message: str) -> None:
    @tool
    def f(a: int) -> int:
        return a

    with pytest.raises(ArgumentError, match=message.replace("[", r"\[").replace("(", r"\(")):
        f.parse_arguments(arguments)


def test_unsupported_hints_fail_at_decoration_with_the_way_out() -> None:
    with pytest.raises(InvalidOption, match="schema="):

        @tool
        def f(x: complex) -> None: ...

    with pytest.raises(InvalidOption, match="mapping keys must be str"):

        @tool
        def g(x: dict[int, str]) -> None: ...

    with pytest.raises(InvalidOption, match=r"\*args"):

        @tool
        def h(*args: int) -> None: ...

    with pytest.raises(InvalidOption, match="tool name"):
        tool(name="has space")(lambda: None)


def test_recursive_types_are_refused() -> None:
    with pytest.raises(InvalidOption, match=r"recursive|resolved"):
        shape_of(Tree, "here")


def test_explicit_schema_passes_the_json_through() -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string", "minLength": 2}}}

    @tool(schema=schema)
    def search(**kwargs: Any) -> Any:
        return kwargs

    assert search.parse_arguments({"q": "ab"}) == {"q": "ab"}
    with pytest.raises(ArgumentError, match="at least 2"):
        search.parse_arguments({"q": "a"})


def test_tool_lists_are_checked() -> None:
    @tool
    def a() -> None: ...

    def b(x: int) -> int:
        return x

    assert ToolSet.of([a, b]).names() == ("a", "b")  # a plain function is made a tool
    with pytest.raises(InvalidOption, match="tool name"):
        ToolSet.of([lambda: None])
    with pytest.raises(InvalidOption, match="two tools"):
        ToolSet.of([a, a])
    with pytest.raises(InvalidOption, match="not a tool"):
        ToolSet.of([1])
    with pytest.raises(InvalidOption, match="list of tools"):
        ToolSet.of("a")


def test_invoke_never_raises_and_reports_what_happened() -> None:
    @tool
    def boom(x: int) -> None:
        raise ValueError("no")

    @tool(timeout=0.05)
    async def slow() -> None:
        await asyncio.sleep(5)

    def run(t: Any, args: Any) -> Any:
        return asyncio.run(invoke(t, args, CTX))

    assert run(boom, {"x": "y"}).status == "invalid"
    assert run(boom, {"x": 1}).content == "ValueError: no"
    assert run(slow, {}).status == "timeout"
    assert "cancelled" in run(slow, {}).content
    assert run(None, {}).status == "unknown"


# --- fuzzing -----------------------------------------------------------------------------

_LEAVES = st.sampled_from([int, str, float, bool, type(None), Any, Colour])


def _hints() -> st.SearchStrategy[Any]:
    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            children.map(lambda h: list[h]),  # type: ignore[valid-type]
            children.map(lambda h: dict[str, h]),  # type: ignore[valid-type]
            children.map(lambda h: Optional[h]),  # type: ignore[valid-type]  # noqa: UP045
            st.tuples(children, children).map(lambda hs: tuple[hs[0], hs[1]]),  # type: ignore[valid-type]
            st.lists(st.sampled_from(["a", "b", 1, True, None]), min_size=1, max_size=3).map(
                lambda vs: Literal[tuple(vs)]  # type: ignore[valid-type]
            ),
            st.tuples(children, children).map(
                lambda hs: dataclasses.make_dataclass("D", [("f", hs[0]), ("g", hs[1], None)])
            ),
        )

    return st.recursive(_LEAVES, extend, max_leaves=6)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "f", "g", "x"]), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hint=_hints(), value=_JSON)
def test_fuzz_derived_schemas_agree_with_jsonschema_and_never_raise(hint: Any, value: Any) -> None:
    shape = shape_of(hint, "fuzz")
    schema = shape.schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    ours = validate_json(schema, value)
    reference = jsonschema.Draft202012Validator(schema).is_valid(value)
    assert (not ours) == reference, (schema, value, ours)
    if not ours:
        shape.convert(value, "v")  # a value that fits converts


@settings(max_examples=300, deadline=None)
@given(arguments=_JSON)
def test_fuzz_bad_arguments_from_a_model_are_an_error_result(arguments: Any) -> None:
    @tool
    def f(a: int, p: Point, c: Colour = Colour.RED, tags: list[str] | None = None) -> str:
        return json.dumps([a, p.x, c.value, tags])

    outcome = asyncio.run(invoke(f, arguments, CTX))
    assert outcome.status in ("ok", "invalid")
    assert outcome.is_error is (outcome.status != "ok")


@settings(max_examples=200, deadline=None)
@given(
    value=_JSON,
    schema=st.sampled_from(
        [
            {"type": "integer", "minimum": 0, "exclusiveMaximum": 10, "multipleOf": 2},
            {"type": "string", "pattern": "^a", "maxLength": 3},
            {"type": "array", "items": {"type": "number"}, "uniqueItems": True, "maxItems": 2},
            {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            {"not": {"type": "null"}},
            {"$defs": {"p": {"type": "boolean"}}, "$ref": "#/$defs/p"},
            {"type": "object", "additionalProperties": {"type": "string"}, "required": ["a"]},
            {"enum": [1, "1", True, None, [1]]},
        ]
    ),
)
def test_fuzz_explicit_schema_keywords_agree_with_jsonschema(value: Any, schema: Any) -> None:
    ours = validate_json(schema, value)
    assert (not ours) == jsonschema.Draft202012Validator(schema).is_valid(value), (ours, value)


def test_non_finite_numbers_are_not_numbers() -> None:
    assert validate_json({"type": "number"}, math.inf)
