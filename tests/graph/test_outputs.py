"""Output declarations, their JSON schemas, value checks and conditions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beamagent.graph import Condition, ConditionOp, Output, OutputType, outputs_schema

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=10,
)


def test_output_type_converts_from_a_string() -> None:
    assert Output("k", "int").type is OutputType.INT
    assert Output("k", " BOOL ").type is OutputType.BOOL
    assert Output("k").type is OutputType.STRING
    with pytest.raises(ValueError, match="unknown output type 'float'"):
        Output("k", "float")


@pytest.mark.parametrize(
    ("output", "schema"),
    [
        (
            Output("score", "int", "how good", min=0, max=10),
            {
                "type": "integer",
                "title": "outputs.score",
                "description": "how good",
                "minimum": 0,
                "maximum": 10,
            },
        ),
        (
            Output("n", "int", min=1),
            {"type": "integer", "title": "outputs.n", "description": "", "minimum": 1},
        ),
        (Output("n", "int"), {"type": "integer", "title": "outputs.n", "description": ""}),
        (
            Output("verdict", "enum", "the call", choices=["ok", "bad"]),
            {
                "type": "string",
                "enum": ["ok", "bad"],
                "title": "outputs.verdict",
                "description": "the call",
            },
        ),
        (
            Output("done", "bool", "finished?"),
            {"type": "boolean", "title": "outputs.done", "description": "finished?"},
        ),
        (
            Output("note", "string", "free text"),
            {"type": "string", "title": "outputs.note", "description": "free text"},
        ),
    ],
)
def test_output_json_schema(output: Output, schema: dict[str, Any]) -> None:
    assert output.to_json_schema() == schema


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key": ""}, "non-empty string"),
        ({"key": 3}, "non-empty string"),
        ({"key": "k", "type": "int", "min": 5, "max": 1}, "greater than max"),
        ({"key": "k", "type": "int", "min": 1.5}, "min must be an int"),
        ({"key": "k", "type": "int", "max": True}, "max must be an int"),
        ({"key": "k", "type": "string", "min": 1}, "only apply to int"),
        ({"key": "k", "type": "enum"}, "non-empty list of choices"),
        ({"key": "k", "type": "enum", "choices": []}, "non-empty list of choices"),
        ({"key": "k", "type": "enum", "choices": "ab"}, "list of strings"),
        ({"key": "k", "type": "enum", "choices": ["a", "a"]}, "must not repeat"),
        ({"key": "k", "type": "enum", "choices": ["a", 1]}, "must be strings"),
        ({"key": "k", "type": "bool", "choices": ["a"]}, "only apply to enum"),
        ({"key": "k", "description": None}, "description"),
    ],
)
def test_output_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Output(**kwargs)


def test_with_value_copies() -> None:
    declared = Output("k", "int")
    filled = declared.with_value(3)
    assert filled.value == 3
    assert declared.value is None
    assert filled == Output("k", "int", value=3)


def test_output_from_dict() -> None:
    assert Output.from_dict({"key": "v", "type": "enum", "choices": ["a", "b"]}) == Output(
        "v", OutputType.ENUM, choices=("a", "b")
    )
    with pytest.raises(ValueError, match="unknown output keys: colour"):
        Output.from_dict({"key": "v", "colour": "red"})
    with pytest.raises(ValueError, match="needs a 'key'"):
        Output.from_dict({"type": "int"})
    with pytest.raises(ValueError, match="must be an object"):
        Output.from_dict(["key"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("output_type", "value", "expected"),
    [
        ("int", 3, 3),
        ("int", "3", 3),
        ("int", " -4 ", -4),
        ("int", 3.0, 3),
        ("bool", True, True),
        ("bool", "true", True),
        ("bool", "False", False),
        ("bool", "1", True),
        ("bool", "0", False),
        ("bool", 1, True),
        ("bool", 0, False),
        ("string", "x", "x"),
        ("string", 3, "3"),
        ("string", True, "true"),
        ("enum", "a", "a"),
    ],
)
def test_coerce(output_type: str, value: Any, expected: Any) -> None:
    coerced = OutputType(output_type).coerce(value)
    assert coerced == expected
    assert type(coerced) is type(expected)


@pytest.mark.parametrize(
    ("output_type", "value"),
    [
        ("int", "3.5"),
        ("int", 3.5),
        ("int", True),
        ("int", "three"),
        ("int", None),
        ("int", [3]),
        ("bool", "yes"),
        ("bool", 2),
        ("bool", None),
        ("string", None),
        ("string", ["a"]),
        ("string", {"a": 1}),
    ],
)
def test_coerce_refuses(output_type: str, value: Any) -> None:
    with pytest.raises(ValueError, match="expected"):
        OutputType(output_type).coerce(value)


def test_check_value() -> None:
    score = Output("score", "int", min=0, max=10)
    assert score.check_value("7") == 7
    assert score.check_value(None) is None
    with pytest.raises(ValueError, match=r"outputs\.score: 11 is above the maximum 10"):
        score.check_value(11)
    with pytest.raises(ValueError, match=r"outputs\.score: -1 is below the minimum 0"):
        score.check_value("-1")
    with pytest.raises(ValueError, match=r"outputs\.score: expected an integer"):
        score.check_value("lots")
    verdict = Output("verdict", "enum", choices=["ok", "bad"])
    assert verdict.check_value("ok") == "ok"
    with pytest.raises(ValueError, match="'meh' is not one of ok, bad"):
        verdict.check_value("meh")


def test_outputs_schema() -> None:
    schema = outputs_schema([Output("score", "int", min=0), Output("ok", "bool")])
    assert schema["type"] == "object"
    assert schema["required"] == ["body", "outputs", "next", "tool_calls"]
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert props["body"]["type"] == "string"
    assert props["outputs"]["required"] == ["score", "ok"]
    assert props["outputs"]["properties"]["score"] == Output("score", "int", min=0).to_json_schema()
    assert props["outputs"]["properties"]["ok"]["type"] == "boolean"
    assert props["outputs"]["additionalProperties"] is False
    entry = props["next"]["items"]
    assert entry["properties"]["type"]["enum"] == ["route", "yield", "sub", "end", "retry"]
    assert entry["required"] == ["type"]
    call = props["tool_calls"]["items"]
    assert call["required"] == ["name", "arguments"]


def test_outputs_schema_without_outputs() -> None:
    outputs = outputs_schema([])["properties"]["outputs"]
    assert outputs["properties"] == {}
    assert outputs["required"] == []


# --- conditions -----------------------------------------------------------------------------


def test_condition_op_converts_and_validates() -> None:
    assert Condition("k", "GTE", 1).op is ConditionOp.GTE
    assert Condition("k").op is ConditionOp.EQ
    with pytest.raises(ValueError, match="unknown condition op '=='"):
        Condition("k", "==", 1)
    with pytest.raises(ValueError, match="non-empty string"):
        Condition("", "eq", 1)


@pytest.mark.parametrize(
    ("output", "op", "value", "expected"),
    [
        # int: the condition value is coerced, comparisons are numeric.
        (Output("n", "int", value=3), "eq", "3", True),
        (Output("n", "int", value=3), "eq", 3, True),
        (Output("n", "int", value=3), "neq", "4", True),
        (Output("n", "int", value=10), "gt", "9", True),  # "10" > "9" is False as strings
        (Output("n", "int", value=3), "gt", "3", False),
        (Output("n", "int", value=3), "gte", "3", True),
        (Output("n", "int", value=3), "lt", 4, True),
        (Output("n", "int", value=3), "lte", "2", False),
        (Output("n", "int", value="3"), "eq", 3, True),  # the produced value is coerced too
        (Output("n", "int", value=3), "eq", "three", False),  # coercion fails
        (Output("n", "int", value=3), "eq", None, False),
        (Output("n", "int", value=3), "neq", "three", False),  # a failed coercion never passes
        # bool
        (Output("b", "bool", value=True), "eq", "true", True),
        (Output("b", "bool", value=True), "eq", "1", True),
        (Output("b", "bool", value=False), "eq", "0", True),
        (Output("b", "bool", value=False), "eq", "FALSE", True),
        (Output("b", "bool", value=True), "eq", False, False),
        (Output("b", "bool", value=True), "neq", "false", True),
        (Output("b", "bool", value=True), "eq", "maybe", False),
        # string and enum
        (Output("s", "string", value="a"), "eq", "a", True),
        (Output("s", "string", value="7"), "eq", 7, True),
        (Output("s", "string", value="b"), "gt", "a", True),
        (Output("e", "enum", choices=["x", "y"], value="x"), "eq", "x", True),
        (Output("e", "enum", choices=["x", "y"], value="x"), "neq", "y", True),
        # None values never match, whatever the op.
        (Output("n", "int"), "eq", None, False),
        (Output("n", "int"), "neq", 1, False),
    ],
)
def test_condition_on_outputs(output: Output, op: str, value: Any, expected: bool) -> None:
    assert Condition(output.key, op, value).check([output]) is expected


def test_condition_missing_key_is_false_for_every_op() -> None:
    for op in ConditionOp:
        assert Condition("missing", op, 1).check([Output("n", "int", value=1)]) is False
        assert Condition("missing", op, 1).check({"n": 1}) is False


@pytest.mark.parametrize(
    ("outputs", "types", "condition", "expected"),
    [
        ({"n": 3}, None, Condition("n", "eq", "3"), True),  # type inferred from the value
        ({"n": 10}, None, Condition("n", "gt", "9"), True),
        ({"b": True}, None, Condition("b", "eq", "true"), True),
        ({"s": "x"}, None, Condition("s", "eq", "x"), True),
        ({"n": "10"}, {"n": "int"}, Condition("n", "gt", 9), True),  # declared type wins
        ({"n": "10"}, None, Condition("n", "gt", "9"), False),  # as strings
        ({"n": "10"}, {"n": OutputType.INT}, Condition("n", "eq", "010"), True),
        ({"n": None}, None, Condition("n", "eq", None), False),
        ({"l": [1]}, None, Condition("l", "eq", [1]), False),  # unsupported value type
        ({"n": 1}, {"n": "float"}, Condition("n", "eq", 1), False),  # unknown declared type
    ],
)
def test_condition_on_a_mapping(
    outputs: dict[str, Any], types: Any, condition: Condition, expected: bool
) -> None:
    assert condition.check(outputs, types) is expected


@pytest.mark.parametrize("outputs", ["n", b"n", 5, None, [1, "n", None]])
def test_condition_on_junk_is_false(outputs: Any) -> None:
    assert Condition("n", "eq", "n").check(outputs) is False


def test_condition_from_dict() -> None:
    assert Condition.from_dict({"key": "n", "op": "gt", "value": 2}) == Condition("n", "gt", 2)
    assert Condition.from_dict({"key": "n"}) == Condition("n", "eq", None)
    with pytest.raises(ValueError, match="unknown condition keys: when"):
        Condition.from_dict({"key": "n", "when": 1})
    with pytest.raises(ValueError, match="needs a 'key'"):
        Condition.from_dict({"op": "eq"})
    with pytest.raises(ValueError, match="must be an object"):
        Condition.from_dict("n")  # type: ignore[arg-type]


@given(
    key=st.sampled_from(["a", "b"]),
    op=st.sampled_from(list(ConditionOp)),
    value=json_values,
    outputs=st.dictionaries(st.sampled_from(["a", "b", "c"]), json_values),
    types=st.none()
    | st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from(["int", "bool", "x", "enum"])),
)
def test_condition_check_never_raises(
    key: str, op: ConditionOp, value: Any, outputs: dict[str, Any], types: Any
) -> None:
    assert isinstance(Condition(key, op, value).check(outputs, types), bool)
