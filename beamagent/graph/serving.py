"""Servings: what runs at a node. A serving turns a :class:`NodeMessage` into a :class:`Result`.

The executor builds one :class:`NodeMessage` per node visit and hands it to the
node's :class:`Serving`. A serving is anything with ``handle(message) ->
Result``; :class:`FunctionServing` adapts a plain function. Model-backed
servings ask for the schema of :func:`~beamagent.graph.outputs.outputs_schema`
and read the answer with :func:`parse_structured_answer`, which turns a
malformed answer into :class:`~beamagent.errors.RetryRequested` so the model is
asked again with the reason.

>>> serving = FunctionServing(lambda message: {"body": "hi", "outputs": {"ok": True}})
>>> serving.handle(NodeMessage(run_id="r", job_id="j", node_id="n")).outputs
{'ok': True}
"""

from __future__ import annotations

import inspect
import json
import re
import threading
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar, overload, runtime_checkable

import attrs

from beamagent.errors import InvalidNext, InvalidOption, RetryRequested
from beamagent.log import get_logger

__all__ = [
    "FunctionServing",
    "NodeMessage",
    "Result",
    "Serving",
    "ToolCall",
    "ToolRegistry",
    "ToolResult",
    "parse_structured_answer",
]

log = get_logger(__name__)

_ANSWER_HINT = "reply with one JSON object with the keys body, outputs, next and tool_calls"
_FENCED = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\r?\n?(.*?)```", re.DOTALL)


def _to_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    # Copy so that a caller mutating its dict later cannot change a frozen value.
    return dict(value)


def _to_next(value: Iterable[Any] | None) -> tuple[Any, ...]:
    # A str or a dict is iterable too: taking it apart would drop every "entry" silently.
    if not isinstance(value, list | tuple):
        if value is None:
            return ()
        raise InvalidNext(value)
    return tuple(dict(e) if isinstance(e, Mapping) else e for e in value)


def _non_empty_str(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty string, got {value!r}")


def _tool_calls(value: Iterable[ToolCall]) -> tuple[ToolCall, ...]:
    return tuple(value)


def _tool_results(value: Iterable[ToolResult]) -> tuple[ToolResult, ...]:
    return tuple(value)


def _results(value: Iterable[Result]) -> tuple[Result, ...]:
    return tuple(value)


def _str_keys(_instance: object, attribute: attrs.Attribute[Any], value: Mapping[Any, Any]) -> None:
    if not all(isinstance(k, str) for k in value):
        raise ValueError(f"{attribute.name} keys must be strings")


@attrs.frozen
class ToolCall:
    """A request, in a node's result, to call the tool ``name`` with ``arguments``."""

    id: str = attrs.field(validator=attrs.validators.instance_of(str))
    name: str = attrs.field(validator=_non_empty_str)
    arguments: Mapping[str, Any] = attrs.field(
        factory=dict, converter=_to_dict, validator=_str_keys
    )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"id": self.id, "name": self.name, "arguments": dict(self.arguments)}


@attrs.frozen
class ToolResult:
    """What a tool call gave: ``content`` as text, ``is_error`` when the call failed."""

    id: str
    name: str
    content: str
    is_error: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "id": self.id,
            "name": self.name,
            "content": self.content,
            "is_error": self.is_error,
        }


@attrs.frozen
class Result:
    """A node's result: text ``body``, structured ``outputs``, ``tool_calls`` and ``next``.

    ``next`` holds the raw entries of the answer's ``next`` list (objects as
    :func:`~beamagent.graph.instructions.parse_next` reads them, or
    :class:`~beamagent.graph.instructions.Instruction` values); a non-empty
    ``next`` that names at least one instruction overrides the node's router.
    It must be a list or a tuple (None is empty). Mappings are copied on
    construction.

    Raises:
        InvalidNext: ``next`` is not a list, a tuple or None (a node whose
            serving does this ends its run with this error).
    """

    body: str = attrs.field(validator=attrs.validators.instance_of(str))
    outputs: Mapping[str, Any] = attrs.field(factory=dict, converter=_to_dict, validator=_str_keys)
    tool_calls: tuple[ToolCall, ...] = attrs.field(
        default=(),
        converter=_tool_calls,
        validator=attrs.validators.deep_iterable(attrs.validators.instance_of(ToolCall)),
    )
    next: tuple[Any, ...] = attrs.field(default=(), converter=_to_next)

    @classmethod
    def from_dict(cls, data: Any) -> Result:
        """Read a result from its JSON form, as written by a model or a Python serving.

        Keys: ``body`` (string; missing or null is ``""``), ``outputs`` (object),
        ``next`` (list), ``tool_calls`` (list of ``{"id"?, "name", "arguments"}``,
        where ``arguments`` may be an object or a JSON string of one; a missing
        id becomes ``call_<index>``). Missing or null lists and objects are empty;
        other keys are ignored.

        Raises:
            RetryRequested: ``data`` is not an object or a key has the wrong shape;
                the reason says what to fix, so it can be shown to a model.
            InvalidNext: ``next`` is present but not a list (this ends the run,
                as in Agens, rather than asking the model again).
        """
        if not isinstance(data, Mapping):
            raise RetryRequested(
                f"the answer must be a JSON object, got {_json_kind(data)}; {_ANSWER_HINT}"
            )
        body = data.get("body")
        if body is None:
            body = ""
        elif not isinstance(body, str):
            raise RetryRequested(f"body must be a string, got {_json_kind(body)}")
        outputs = data.get("outputs")
        if outputs is None:
            outputs = {}
        elif not isinstance(outputs, Mapping) or not all(isinstance(k, str) for k in outputs):
            raise RetryRequested(f"outputs must be an object, got {_json_kind(outputs)}")
        next_entries = data.get("next")
        if next_entries is None:
            next_entries = []
        elif not isinstance(next_entries, list | tuple):
            raise InvalidNext(next_entries)  # Agens: invalid_next ends the run
        raw_calls = data.get("tool_calls")
        if raw_calls is None:
            raw_calls = []
        elif not isinstance(raw_calls, list | tuple):
            raise RetryRequested(f"tool_calls must be a list, got {_json_kind(raw_calls)}")
        calls = [_tool_call_from_json(index, raw) for index, raw in enumerate(raw_calls)]
        return cls(body, outputs, calls, next_entries)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (instruction values in ``next`` are written as their JSON form)."""
        return {
            "body": self.body,
            "outputs": dict(self.outputs),
            "tool_calls": [call.to_dict() for call in self.tool_calls],
            "next": [_entry_to_json(entry) for entry in self.next],
        }


def _entry_to_json(entry: Any) -> Any:
    to_dict = getattr(entry, "to_dict", None)
    return to_dict() if callable(to_dict) else entry


def _tool_call_from_json(index: int, raw: Any) -> ToolCall:
    where = f"tool_calls[{index}]"
    if not isinstance(raw, Mapping):
        raise RetryRequested(f"{where} must be an object, got {_json_kind(raw)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise RetryRequested(f"{where}.name must be a non-empty string")
    call_id = raw.get("id")
    if call_id is None or call_id == "":
        call_id = f"call_{index}"
    elif not isinstance(call_id, str):
        raise RetryRequested(f"{where}.id must be a string")
    arguments = raw.get("arguments")
    if arguments is None:
        arguments = {}
    elif isinstance(arguments, str):
        # OpenAI-style APIs send arguments as a JSON string.
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError):
            raise RetryRequested(f"{where}.arguments is not valid JSON") from None
    if not isinstance(arguments, Mapping) or not all(isinstance(k, str) for k in arguments):
        raise RetryRequested(f"{where}.arguments must be an object, got {_json_kind(arguments)}")
    return ToolCall(call_id, name, arguments)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def parse_structured_answer(answer: Any) -> Result:
    """Read a model's structured answer into a :class:`Result`.

    ``answer`` is a JSON string (bare, or wrapped in a ```` ```json ```` fenced
    block, also one surrounded by prose), bytes of one, a dict, or a
    :class:`Result` (returned as is). See :meth:`Result.from_dict` for the keys.

    Raises:
        RetryRequested: the answer is not valid JSON, not an object, or has a key
            of the wrong shape; the reason says what was wrong.
        InvalidNext: its ``next`` is not a list.
    """
    if isinstance(answer, Result):
        return answer
    if isinstance(answer, bytes | bytearray):
        try:
            answer = answer.decode("utf-8")
        except UnicodeDecodeError:
            raise RetryRequested(f"the answer is not UTF-8 text; {_ANSWER_HINT}") from None
    if isinstance(answer, str):
        answer = _loads_answer(answer)
    return Result.from_dict(answer)


def _loads_answer(text: str) -> Any:
    stripped = text.strip()
    if not stripped:
        raise RetryRequested(f"the answer was empty; {_ANSWER_HINT}")
    try:
        return json.loads(stripped)
    except (ValueError, RecursionError) as exc:
        first_error = exc
    match = _FENCED.search(stripped)
    if match is not None:
        try:
            return json.loads(match.group(1))
        except (ValueError, RecursionError) as exc:
            first_error = exc
    raise RetryRequested(f"the answer was not valid JSON ({first_error}); {_ANSWER_HINT}")


@runtime_checkable
class Serving(Protocol):
    """What runs at a node: ``handle(message) -> Result``.

    ``handle`` may raise :class:`~beamagent.errors.RetryRequested` to have the
    node run again with the reason (counted against the job's ``max_retries``).
    Transient backend errors (``SessionError``, ``QueryTimeout``, ``QueryFailed``)
    and the types in the node's ``retry_on`` are retried too; any other
    exception ends the run with :class:`~beamagent.errors.ServingFailed`.
    It is called from the node's actor, possibly for several visits at once
    (up to the node's ``concurrency``), so it must be thread-safe.
    """

    def handle(self, message: NodeMessage) -> Result:
        """Serve one node visit."""
        ...


ServingFunction = Callable[["NodeMessage"], "Result | str | Mapping[str, Any]"]


@attrs.frozen
class FunctionServing:
    """A :class:`Serving` made from a plain function of the message.

    The function returns a :class:`Result`, a ``str`` (the body) or a dict
    (read with :meth:`Result.from_dict`).

    >>> FunctionServing(lambda message: "done").handle(
    ...     NodeMessage(run_id="r", job_id="j", node_id="n")).body
    'done'
    """

    fn: ServingFunction = attrs.field(validator=attrs.validators.is_callable())

    def handle(self, message: NodeMessage) -> Result:
        """Call the function and convert what it returns into a :class:`Result`.

        Raises:
            RetryRequested: raised by the function, or a dict of the wrong shape.
            InvalidNext: a dict whose ``next`` is not a list.
            TypeError: the function returned something else (a bug in it: the
                run ends).
        """
        value = self.fn(message)
        if isinstance(value, Result):
            return value
        if isinstance(value, str):
            return Result(value)
        if isinstance(value, Mapping):
            return Result.from_dict(value)
        raise TypeError(
            f"serving function {getattr(self.fn, '__qualname__', self.fn)!r} returned "
            f"{type(value).__name__}; return a Result, a str (the body) or a dict"
        )


@attrs.frozen(kw_only=True)
class NodeMessage:
    """Everything a serving gets for one node visit.

    ``previous_result`` is the result of the node that routed here (kept on a
    retry); ``joined`` holds the results of every thread joined at a yield, in
    arrival order, when this visit is a join target; ``retries`` counts the
    retries of this visit and ``retry_reason`` says why the last one happened;
    ``tool_results`` are the results of the tool calls of the previous attempt
    of this visit; ``step`` is the run's step number.
    """

    run_id: str
    job_id: str
    node_id: str
    thread_id: str = "0"
    parent_run_id: str | None = None
    node_objective: str | None = None
    input: Any = None
    previous_result: Result | None = None
    joined: tuple[Result, ...] = attrs.field(default=(), converter=_results)
    retries: int = 0
    retry_reason: str | None = None
    tool_results: tuple[ToolResult, ...] = attrs.field(default=(), converter=_tool_results)
    step: int = 0

    def retried(self, reason: str | None) -> NodeMessage:
        """The message for the next attempt of this visit: one more retry, with ``reason``.

        ``previous_result`` and ``joined`` are kept (Agens loses them on a retry);
        ``tool_results`` are cleared.
        """
        return attrs.evolve(self, retries=self.retries + 1, retry_reason=reason, tool_results=())

    def with_tool_results(self, results: Iterable[ToolResult]) -> NodeMessage:
        """The message for running this visit again with the results of its tool calls."""
        return attrs.evolve(self, tool_results=tuple(results))


F = TypeVar("F", bound=Callable[..., Any])


@attrs.frozen
class _Tool:
    name: str
    fn: Callable[..., Any]
    description: str
    parameters: Mapping[str, Any]


class ToolRegistry:
    """Python callables a node's tool calls can reach, by name.

    >>> tools = ToolRegistry()
    >>> @tools.register
    ... def add(a: int, b: int) -> int:
    ...     "Add two numbers."
    ...     return a + b
    >>> tools.call(ToolCall("c1", "add", {"a": 1, "b": 2})).content
    '3'

    A call never raises: an unknown tool, bad arguments or an exception in the
    tool give a result with ``is_error=True`` and the error as its content.
    Registering is thread-safe; calls may run concurrently.
    """

    def __init__(self) -> None:
        """An empty registry."""
        self._lock = threading.Lock()
        self._tools: dict[str, _Tool] = {}

    @overload
    def register(self, name: F, /) -> F: ...

    @overload
    def register(
        self,
        name: str,
        fn: F,
        /,
        *,
        description: str = "",
        parameters: Mapping[str, Any] | None = None,
    ) -> F: ...

    @overload
    def register(
        self,
        name: str,
        fn: None = None,
        /,
        *,
        description: str = "",
        parameters: Mapping[str, Any] | None = None,
    ) -> Callable[[F], F]: ...

    def register(
        self,
        name: str | Callable[..., Any],
        fn: Callable[..., Any] | None = None,
        /,
        *,
        description: str = "",
        parameters: Mapping[str, Any] | None = None,
    ) -> Any:
        """Register a tool; usable as ``@tools.register``, ``@tools.register("name")``
        or ``tools.register("name", fn)``.

        The name defaults to the function's name, the description to the first
        line of its docstring, and ``parameters`` (a JSON schema of the keyword
        arguments) to one read from its signature.

        Raises:
            InvalidOption: the name is empty or already registered.
        """
        if callable(name):
            self._add(name.__name__, name, description, parameters)
            return name
        if fn is not None:
            self._add(name, fn, description, parameters)
            return fn
        tool_name = name

        def decorator(func: F) -> F:
            self._add(tool_name, func, description, parameters)
            return func

        return decorator

    def _add(
        self,
        name: str,
        fn: Callable[..., Any],
        description: str,
        parameters: Mapping[str, Any] | None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidOption(f"a tool name must be a non-empty string, got {name!r}")
        if not callable(fn):
            raise InvalidOption(f"tool {name!r} must be callable, got {fn!r}")
        doc = inspect.getdoc(fn) or ""
        tool = _Tool(
            name=name,
            fn=fn,
            description=description or (doc.splitlines()[0] if doc else ""),
            parameters=dict(parameters) if parameters is not None else _parameters_of(fn),
        )
        with self._lock:
            if name in self._tools:
                raise InvalidOption(
                    f"tool {name!r} is already registered; unregister it first or pick another name"
                )
            self._tools[name] = tool

    def unregister(self, name: str) -> None:
        """Remove the tool ``name``; unknown names are ignored."""
        with self._lock:
            self._tools.pop(name, None)

    def __contains__(self, name: object) -> bool:
        """Whether a tool of this name is registered."""
        with self._lock:
            return name in self._tools

    def names(self) -> list[str]:
        """The registered tool names, sorted."""
        with self._lock:
            return sorted(self._tools)

    def definitions(self) -> list[dict[str, Any]]:
        """``{"name", "description", "parameters"}`` of every tool, sorted by name.

        This is what a model-backed serving tells the model about the tools.
        """
        with self._lock:
            tools = sorted(self._tools.values(), key=lambda t: t.name)
        return [
            {"name": t.name, "description": t.description, "parameters": dict(t.parameters)}
            for t in tools
        ]

    def call(self, call: ToolCall) -> ToolResult:
        """Run one tool call with its arguments as keyword arguments; never raises.

        A return value that is not a string is written as JSON (``None`` is
        ``""``). ``KeyboardInterrupt`` and ``SystemExit`` still propagate.
        """
        with self._lock:
            tool = self._tools.get(call.name)
        if tool is None:
            known = ", ".join(self.names()) or "none"
            return ToolResult(
                call.id, call.name, f"unknown tool {call.name!r}; known tools: {known}", True
            )
        try:
            value = tool.fn(**call.arguments)
        except Exception as exc:  # a failing tool is reported to the node, not a crash
            log.warning("tool_call_failed", tool=call.name, call_id=call.id, error=repr(exc))
            return ToolResult(
                call.id, call.name, f"tool {call.name!r} failed: {type(exc).__name__}: {exc}", True
            )
        return ToolResult(call.id, call.name, _tool_content(value))


def _tool_content(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


_JSON_TYPES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
}


def _parameters_of(fn: Callable[..., Any]) -> dict[str, Any]:
    """A JSON schema of ``fn``'s parameters, from its signature (best effort)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return {"type": "object", "properties": {}}
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations only cost the parameter types
        hints = {}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            continue
        hint = hints.get(param.name)
        json_type = _JSON_TYPES.get(typing.get_origin(hint) or hint)
        properties[param.name] = {"type": json_type} if json_type else {}
        if param.default is param.empty:
            required.append(param.name)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema
