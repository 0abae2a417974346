"""Results, structured answers, function servings, node messages and the tool registry."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beamagent.errors import InvalidNext, InvalidOption, RetryRequested
from beamagent.graph import (
    FunctionServing,
    NodeMessage,
    Result,
    Route,
    Serving,
    ToolCall,
    ToolRegistry,
    ToolResult,
    parse_structured_answer,
)

MESSAGE = NodeMessage(run_id="r1", job_id="j", node_id="n", input="hello")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


# --- Result -------------------------------------------------------------------------------


def test_result_copies_its_mappings() -> None:
    outputs = {"a": 1}
    entry = {"type": "route", "value": "b"}
    result = Result("body", outputs, (), [entry])
    outputs["a"] = 2
    entry["value"] = "c"
    assert result.outputs == {"a": 1}
    assert result.next == ({"type": "route", "value": "b"},)


def test_result_defaults_and_validation() -> None:
    result = Result("x")
    assert (result.outputs, result.tool_calls, result.next) == ({}, (), ())
    with pytest.raises(TypeError):
        Result(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keys must be strings"):
        Result("x", {1: "a"})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        Result("x", tool_calls=[{"name": "t"}])  # type: ignore[list-item]


def test_result_to_dict_round_trips() -> None:
    result = Result(
        "b",
        {"k": [1, 2]},
        [ToolCall("c1", "add", {"a": 1})],
        [Route("x", 2), {"type": "end"}],
    )
    data = result.to_dict()
    assert data == {
        "body": "b",
        "outputs": {"k": [1, 2]},
        "tool_calls": [{"id": "c1", "name": "add", "arguments": {"a": 1}}],
        "next": [{"type": "route", "value": "x", "count": 2}, {"type": "end"}],
    }
    assert Result.from_dict(json.loads(json.dumps(data))).to_dict() == data


def test_tool_call_validation() -> None:
    assert ToolCall("c", "t").arguments == {}
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        ToolCall("c", "")
    with pytest.raises(TypeError):
        ToolCall(None, "t")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keys must be strings"):
        ToolCall("c", "t", {1: 2})  # type: ignore[dict-item]


# --- Result.from_dict / parse_structured_answer ---------------------------------------------


def test_from_dict_full() -> None:
    result = Result.from_dict(
        {
            "body": "text",
            "outputs": {"score": 3},
            "next": [{"type": "route", "value": "b"}, "junk"],
            "tool_calls": [
                {"id": "x", "name": "add", "arguments": {"a": 1}},
                {"name": "neg", "arguments": '{"a": 2}'},
                {"name": "now", "arguments": ""},
                {"name": "now"},
            ],
            "ignored": True,
        }
    )
    assert result.body == "text"
    assert result.outputs == {"score": 3}
    assert result.next == ({"type": "route", "value": "b"}, "junk")
    assert result.tool_calls == (
        ToolCall("x", "add", {"a": 1}),
        ToolCall("call_1", "neg", {"a": 2}),
        ToolCall("call_2", "now", {}),
        ToolCall("call_3", "now", {}),
    )


def test_from_dict_missing_and_null_keys_are_empty() -> None:
    empty = Result("")
    assert Result.from_dict({}) == empty
    assert Result.from_dict({"body": None, "outputs": None, "next": None, "tool_calls": None}) == (
        empty
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ([], "the answer must be a JSON object, got an array"),
        ("x", "the answer must be a JSON object, got a string"),
        (None, "the answer must be a JSON object, got null"),
        ({"body": 5}, "body must be a string, got a number"),
        ({"body": ["a"]}, "body must be a string, got an array"),
        ({"outputs": []}, "outputs must be an object, got an array"),
        ({"outputs": "a=1"}, "outputs must be an object, got a string"),
        ({"tool_calls": {}}, "tool_calls must be a list, got an object"),
        ({"tool_calls": [5]}, r"tool_calls\[0\] must be an object, got a number"),
        ({"tool_calls": [{"arguments": {}}]}, r"tool_calls\[0\]\.name must be a non-empty"),
        ({"tool_calls": [{"name": ""}]}, r"tool_calls\[0\]\.name must be a non-empty"),
        ({"tool_calls": [{"name": "t", "id": 3}]}, r"tool_calls\[0\]\.id must be a string"),
        ({"tool_calls": [{"name": "t", "arguments": "{"}]}, r"arguments is not valid JSON"),
        ({"tool_calls": [{"name": "t", "arguments": "[1]"}]}, r"arguments must be an object"),
        ({"tool_calls": [{"name": "t", "arguments": 3}]}, r"arguments must be an object"),
    ],
)
def test_from_dict_asks_for_a_retry(data: Any, reason: str) -> None:
    with pytest.raises(RetryRequested, match=reason) as info:
        Result.from_dict(data)
    assert info.value.reason is not None


@pytest.mark.parametrize("nxt", [{"type": "end"}, "end", 5, True])
def test_from_dict_with_a_next_that_is_not_a_list_is_invalid_next(nxt: Any) -> None:
    # Agens ends the run (invalid_next) rather than asking the model again.
    with pytest.raises(InvalidNext, match="next that is not a list") as info:
        Result.from_dict({"body": "b", "next": nxt})
    assert info.value.value == nxt
    with pytest.raises(InvalidNext):
        parse_structured_answer(json.dumps({"next": nxt}))


@pytest.mark.parametrize("nxt", ["bad", {"type": "end"}, 5, {Route("a")}, iter([Route("a")])])
def test_result_with_a_next_that_is_not_a_list_is_invalid_next(nxt: Any) -> None:
    # A str used to be split into characters, each dropped silently.
    with pytest.raises(InvalidNext, match="not a list"):
        Result("body", next=nxt)


def test_result_next_may_be_none_a_list_or_a_tuple() -> None:
    assert Result("b", next=None).next == ()
    assert Result("b", next=[Route("a")]).next == (Route("a"),)
    assert Result("b", next=(Route("a"),)).next == (Route("a"),)


@pytest.mark.parametrize(
    "text",
    [
        '{"body": "hi", "outputs": {"k": 1}}',
        '  \n{"body": "hi", "outputs": {"k": 1}}\n ',
        '```json\n{"body": "hi", "outputs": {"k": 1}}\n```',
        '```JSON\n{"body": "hi", "outputs": {"k": 1}}\n```',
        '```\n{"body": "hi", "outputs": {"k": 1}}\n```',
        '```json {"body": "hi", "outputs": {"k": 1}} ```',
        '```json\r\n{"body": "hi", "outputs": {"k": 1}}\r\n```',
        'Here it is:\n```json\n{"body": "hi", "outputs": {"k": 1}}\n```\nDone.',
        b'{"body": "hi", "outputs": {"k": 1}}',
    ],
)
def test_parse_structured_answer_reads_json(text: str | bytes) -> None:
    assert parse_structured_answer(text) == Result("hi", {"k": 1})


def test_parse_structured_answer_takes_dicts_and_results() -> None:
    result = Result("x", {"a": 1})
    assert parse_structured_answer(result) is result
    assert parse_structured_answer({"body": "x", "outputs": {"a": 1}}) == result


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("", "the answer was empty"),
        ("   ", "the answer was empty"),
        ("not json", "the answer was not valid JSON"),
        ('{"body": "hi"', "the answer was not valid JSON"),
        ("```json\n{oops}\n```", "the answer was not valid JSON"),
        ("[1, 2]", "the answer must be a JSON object, got an array"),
        ('"just a string"', "the answer must be a JSON object, got a string"),
        ("null", "the answer must be a JSON object, got null"),
        ("42", "the answer must be a JSON object, got a number"),
        (b"\xff\xfe", "not UTF-8"),
        ("[" * 100_000, "the answer was not valid JSON"),
        (42, "the answer must be a JSON object, got a number"),
        (None, "the answer must be a JSON object, got null"),
    ],
)
def test_parse_structured_answer_asks_for_a_retry(answer: Any, reason: str) -> None:
    with pytest.raises(RetryRequested, match=reason) as info:
        parse_structured_answer(answer)
    # The reason tells a model what to send instead.
    assert info.value.reason is not None


@given(json_values)
def test_parse_structured_answer_only_ever_raises_retry_or_invalid_next(value: Any) -> None:
    for answer in (value, json.dumps(value)):
        outcome = _outcome(answer)
        assert isinstance(outcome, Result | RetryRequested | InvalidNext)
        if isinstance(outcome, RetryRequested):
            assert outcome.reason
        if isinstance(outcome, InvalidNext):
            assert isinstance(value, dict)
            assert value.get("next") is not None
            assert not isinstance(value["next"], list)
    text_outcome = _outcome(json.dumps(value))
    if not isinstance(value, dict):
        assert isinstance(text_outcome, RetryRequested)
        assert "must be a JSON object" in str(text_outcome.reason)


def _outcome(answer: Any) -> Result | RetryRequested | InvalidNext:
    try:
        return parse_structured_answer(answer)
    except (RetryRequested, InvalidNext) as exc:
        return exc


# --- FunctionServing ------------------------------------------------------------------------


def test_function_serving_conversions() -> None:
    assert FunctionServing(lambda m: Result("r")).handle(MESSAGE) == Result("r")
    assert FunctionServing(lambda m: f"got {m.input}").handle(MESSAGE) == Result("got hello")
    assert FunctionServing(
        lambda m: {"body": "d", "outputs": {"x": 1}, "next": [{"type": "end"}]}
    ).handle(MESSAGE) == Result("d", {"x": 1}, (), [{"type": "end"}])


def test_function_serving_is_a_serving() -> None:
    assert isinstance(FunctionServing(lambda m: ""), Serving)
    with pytest.raises(TypeError):
        FunctionServing(5)  # type: ignore[arg-type]


def test_function_serving_bad_dict_asks_for_a_retry() -> None:
    with pytest.raises(RetryRequested, match="outputs must be an object"):
        FunctionServing(lambda m: {"outputs": [1]}).handle(MESSAGE)


def test_function_serving_passes_retry_requested_through() -> None:
    def fn(message: NodeMessage) -> str:
        raise RetryRequested("try harder")

    with pytest.raises(RetryRequested, match="try harder"):
        FunctionServing(fn).handle(MESSAGE)


def test_function_serving_wrong_return_type_is_a_bug() -> None:
    def forgot_return(message: NodeMessage) -> None:
        pass

    with pytest.raises(TypeError, match="returned NoneType"):
        FunctionServing(forgot_return).handle(MESSAGE)  # type: ignore[arg-type]


# --- NodeMessage ----------------------------------------------------------------------------


def test_node_message_retried_keeps_previous_result() -> None:
    previous = Result("before")
    message = NodeMessage(
        run_id="r",
        job_id="j",
        node_id="n",
        previous_result=previous,
        joined=[Result("a"), Result("b")],
        tool_results=[ToolResult("c", "t", "out")],
    )
    again = message.retried("too short").retried("still too short")
    assert again.retries == 2
    assert again.retry_reason == "still too short"
    assert again.previous_result is previous
    assert again.joined == (Result("a"), Result("b"))
    assert again.tool_results == ()
    assert message.retries == 0


def test_node_message_with_tool_results() -> None:
    results = [ToolResult("c", "t", "out")]
    assert MESSAGE.with_tool_results(results).tool_results == tuple(results)


def test_node_message_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        NodeMessage("r", "j", "n")  # type: ignore[call-arg]


# --- ToolRegistry ---------------------------------------------------------------------------


def test_register_forms_and_call() -> None:
    tools = ToolRegistry()

    @tools.register
    def add(a: int, b: int = 0) -> int:
        """Add two numbers.

        More text.
        """
        return a + b

    @tools.register("shout", description="Upper-case it.")
    def upper(text: str) -> str:
        return text.upper()

    returned = tools.register("echo", lambda **kw: kw, parameters={"type": "object"})
    assert callable(returned)
    assert add(1, 2) == 3  # the decorator returns the function itself

    assert tools.names() == ["add", "echo", "shout"]
    assert "add" in tools
    assert "upper" not in tools
    assert tools.call(ToolCall("1", "add", {"a": 2, "b": 3})) == ToolResult("1", "add", "5")
    assert tools.call(ToolCall("2", "shout", {"text": "hi"})).content == "HI"
    assert tools.call(ToolCall("3", "echo", {"x": [1]})).content == '{"x": [1]}'


def test_definitions_read_the_signature() -> None:
    tools = ToolRegistry()

    @tools.register
    def search(query: str, limit: int = 5, exact: bool = False, *rest: Any, **kw: Any) -> list[str]:
        """Search the notes."""
        return []

    tools.register("raw", lambda x: x, description="d", parameters={"type": "object", "x": 1})
    definitions = tools.definitions()
    assert definitions[1] == {
        "name": "search",
        "description": "Search the notes.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "limit": {"type": "integer"},
                "exact": {"type": "boolean"},
            },
            "required": ["query"],
        },
    }
    assert definitions[0] == {
        "name": "raw",
        "description": "d",
        "parameters": {"type": "object", "x": 1},
    }


def test_tool_errors_become_error_results() -> None:
    tools = ToolRegistry()

    @tools.register
    def boom() -> None:
        raise RuntimeError("kaput")

    @tools.register
    def one(a: int) -> int:
        return a

    result = tools.call(ToolCall("c1", "boom"))
    assert result.is_error
    assert result.id == "c1"
    assert "RuntimeError: kaput" in result.content

    bad_args = tools.call(ToolCall("c2", "one", {"b": 1}))
    assert bad_args.is_error
    assert "TypeError" in bad_args.content

    unknown = tools.call(ToolCall("c3", "nope"))
    assert unknown == ToolResult("c3", "nope", "unknown tool 'nope'; known tools: boom, one", True)


def test_tool_base_exceptions_propagate() -> None:
    tools = ToolRegistry()

    @tools.register
    def leave() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tools.call(ToolCall("c", "leave"))


class _Stamp:
    def __str__(self) -> str:
        return "stamp"


_LOOP: list[Any] = []
_LOOP.append(_LOOP)


@pytest.mark.parametrize(
    ("value", "content"),
    [
        ("text", "text"),
        (None, ""),
        (3, "3"),
        ({"a": [1]}, '{"a": [1]}'),
        ({"at": _Stamp()}, '{"at": "stamp"}'),  # not JSON-able: written with str()
        (_LOOP, "[[...]]"),  # not even that: its repr
    ],
)
def test_tool_result_content(value: Any, content: str) -> None:
    tools = ToolRegistry()
    tools.register("t", lambda: value)
    result = tools.call(ToolCall("c", "t"))
    assert result.content == content
    assert not result.is_error


def test_register_rejects_duplicates_and_bad_names() -> None:
    tools = ToolRegistry()
    tools.register("t", lambda: 1)
    with pytest.raises(InvalidOption, match="already registered"):
        tools.register("t", lambda: 2)
    with pytest.raises(InvalidOption, match="non-empty string"):
        tools.register("", lambda: 2)
    with pytest.raises(InvalidOption, match="must be callable"):
        tools.register("x", 5)  # type: ignore[call-overload]
    tools.unregister("t")
    tools.unregister("never-there")
    tools.register("t", lambda: 2)
    assert tools.call(ToolCall("c", "t")).content == "2"
