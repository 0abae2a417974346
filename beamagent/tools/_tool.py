"""``@tool``: a Python function as a tool an agent can call, and running one call of it.

:func:`tool` turns a function into a :class:`Tool`: a name, a description
(the docstring) and an input schema derived from the type hints (or given).
:func:`invoke` runs one call the way every backend does -- check the
arguments, ask the permission handler, run the function within its timeout --
and always returns a :class:`ToolOutcome`, never raises: whatever goes wrong
(bad arguments from the model, a denial, an exception, a timeout) becomes an
error result for the model, and the session goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import inspect
import json
import math
import re
import threading
import time
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar, overload

import attrs

from beamagent import telemetry
from beamagent.backends.permissions import Allow, Deny, PermissionContext, PermissionDecision
from beamagent.errors import InvalidOption, ToolError
from beamagent.log import get_logger
from beamagent.messages import ContentBlock, Message, MessageType
from beamagent.tools._schema import (
    AnyShape,
    ArgumentError,
    ObjectField,
    ObjectShape,
    shape_of,
    validate_json,
)

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "TOOL_NAME",
    "Tool",
    "ToolContext",
    "ToolOutcome",
    "ToolSet",
    "invoke",
    "invoke_blocking",
    "tool",
]

log = get_logger(__name__)

TOOL_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""What a tool name may be (the rule OpenAI, Anthropic and MCP clients share)."""

F = TypeVar("F", bound=Callable[..., Any])


@attrs.frozen
class ToolContext:
    """Where a call comes from; a tool gets it by declaring a parameter of this type.

    The parameter is not part of the tool's input schema: the model never sees
    or fills it. ``run_id`` and ``node_id`` are set when the session serves a
    graph node (``SessionServing(session_tools=...)``); ``tool_use_id`` is the
    backend's id of the call where the CLI tells it (Claude Code, Codex, the
    ``openai`` backend).

    Example::

        @tool
        def whoami(ctx: ToolContext) -> str:
            return f"{ctx.backend} session {ctx.session_id}"
    """

    session_id: str | None
    backend: str
    tool_name: str
    tool_use_id: str | None = None
    run_id: str | None = None
    node_id: str | None = None


@attrs.frozen
class ToolOutcome:
    """The result of one call, as the model gets it.

    Attributes:
        tool_name: the tool called.
        content: the text the model receives (an error message when ``is_error``).
        is_error: True unless the function returned normally.
        status: ``ok``, ``error`` (it raised), ``invalid`` (bad arguments),
            ``denied`` (the permission handler said no), ``timeout`` or
            ``unknown`` (no such tool for this session).
        duration_ms: how long the function ran (0 when it did not run).
        structured: the function's return value as JSON, when it returned a
            mapping (MCP ``structuredContent``), else None.
    """

    tool_name: str
    content: str
    is_error: bool = False
    status: str = "ok"
    duration_ms: float = 0.0
    structured: dict[str, Any] | None = None

    @classmethod
    def of_call(cls, tool_name: str, result: Any, error: BaseException | None) -> ToolOutcome:
        """What an off-thread call of :func:`invoke_blocking` gave: its outcome, or an error one."""
        if isinstance(result, ToolOutcome):
            return result
        return cls(tool_name, f"the tool call failed: {error!r}", True, "error")

    def result_message(self, call_id: str, *, session_id: str | None = None) -> Message:
        """The canonical ``tool_result`` message of the model's call ``call_id``."""
        return Message(
            MessageType.TOOL_RESULT,
            tool_use_id=call_id,
            tool_name=self.tool_name,
            content=self.content,
            is_error=self.is_error,
            duration_ms=round(self.duration_ms, 3),
            subtype=self.status,
            content_blocks=[
                ContentBlock(
                    "tool_result",
                    tool_use_id=call_id,
                    content=self.content,
                    is_error=self.is_error,
                )
            ],
            session_id=session_id,
            timestamp=time.time_ns() // 1_000_000,
        )


def _docstring(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """The description (the docstring without its ``Args:`` section) and per-parameter text."""
    doc = inspect.getdoc(fn) or ""
    params: dict[str, str] = {}
    lines = doc.splitlines()
    description: list[str] = []
    section: str | None = None
    current: str | None = None
    for line in lines:
        stripped = line.strip()
        header = stripped.rstrip(":").lower()
        if stripped.endswith(":") and header in ("args", "arguments", "parameters", "params"):
            section = "args"
            continue
        if stripped.endswith(":") and header in (
            "returns",
            "raises",
            "yields",
            "example",
            "examples",
        ):
            section = "other"
            continue
        if section == "args":
            match = re.match(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", stripped)
            if match and not line.startswith(" " * 8):
                current = match.group(1)
                params[current] = match.group(2).strip()
            elif current is not None and stripped:
                params[current] = f"{params[current]} {stripped}".strip()
        elif section is None:
            description.append(line)
    return "\n".join(description).strip(), params


@attrs.frozen(eq=False)
class Tool:
    """A Python function the agent can call; made by :func:`tool`.

    Calling a ``Tool`` calls the function (``add(1, 2)`` still works).
    ``input_schema`` is the JSON schema of its arguments.
    """

    name: str
    description: str
    input_schema: dict[str, Any] = attrs.field(repr=False)
    fn: Callable[..., Any] = attrs.field(repr=False)
    timeout: float | None = None
    is_async: bool = False
    context_parameter: str | None = None
    _arguments: ObjectShape | None = attrs.field(default=None, repr=False, alias="arguments")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function itself (no checks, no timeout)."""
        return self.fn(*args, **kwargs)

    def definition(self) -> dict[str, Any]:
        """``{"name", "description", "input_schema"}``, as MCP's ``tools/list`` lists it."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": json.loads(json.dumps(self.input_schema)),
        }

    def openai_tool(self) -> dict[str, Any]:
        """The tool as a Chat Completions ``tools`` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": json.loads(json.dumps(self.input_schema)),
            },
        }

    def parse_arguments(self, arguments: Any) -> dict[str, Any]:
        """The keyword arguments for a call the model made with ``arguments`` (a JSON object).

        Raises:
            ArgumentError: the arguments do not fit the input schema (the
                message lists what is wrong), or could not be converted.
        """
        if arguments is None:
            arguments = {}
        errors = validate_json(self.input_schema, arguments)
        if errors:
            raise ArgumentError("; ".join(errors[:10]))
        if self._arguments is None:  # an explicit schema: the function takes the JSON as is
            return dict(arguments)
        converted: dict[str, Any] = self._arguments.convert(arguments, "")
        return converted


@overload
def tool(fn: F, /) -> Tool: ...


@overload
def tool(
    name: str | None = None,
    /,
    *,
    description: str | None = None,
    schema: Mapping[str, Any] | None = None,
    timeout: float | None = None,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn_or_name: Callable[..., Any] | str | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    schema: Mapping[str, Any] | None = None,
    timeout: float | None = None,
) -> Any:
    """Make a function (sync or ``async``) a tool; use as ``@tool`` or ``@tool(...)``.

    Args:
        name: the tool's name (default: the function's), 1-64 of ``A-Za-z0-9_-``.
        description: what the model reads (default: the docstring, without its
            ``Args:`` section, whose lines describe the parameters).
        schema: an explicit JSON schema (an object schema) for the arguments,
            instead of one derived from the type hints; the function is then
            called with the checked JSON values as keyword arguments.
        timeout: seconds one call may run (None: no limit). An ``async`` tool
            that overruns is cancelled; a sync one is abandoned (its thread
            runs on, its result is dropped). Either way the model is told the
            call timed out.

    A parameter annotated :class:`ToolContext` receives the call's context and
    is left out of the schema.

    Example::

        @tool
        def add(a: int, b: int = 0) -> int:
            "Add two integers."
            return a + b

        @tool(name="lookup", timeout=5)
        async def find(query: str, ctx: ToolContext) -> list[str]: ...

    Raises:
        InvalidOption: a bad name, timeout or schema, or a type hint no JSON
            schema can be derived from (the message says which).
    """
    if callable(fn_or_name):
        return _make_tool(fn_or_name, name, description, schema, timeout)
    if fn_or_name is not None and name is not None:
        raise InvalidOption("@tool: give the name once, positionally or as name=")
    chosen = fn_or_name if fn_or_name is not None else name

    def decorate(fn: Callable[..., Any]) -> Tool:
        return _make_tool(fn, chosen, description, schema, timeout)

    return decorate


def _make_tool(
    fn: Callable[..., Any],
    name: str | None,
    description: str | None,
    schema: Mapping[str, Any] | None,
    timeout: float | None,
) -> Tool:
    if isinstance(fn, Tool):
        fn = fn.fn
    if not callable(fn):
        raise InvalidOption(f"@tool needs a function, got {fn!r}")
    tool_name = name if name is not None else getattr(fn, "__name__", None)
    if not isinstance(tool_name, str) or not TOOL_NAME.match(tool_name):
        raise InvalidOption(
            f"tool name must be 1-64 letters, digits, '_' or '-'; got {tool_name!r} "
            "(pass @tool(name=...))"
        )
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise InvalidOption(
            f"tool {tool_name!r}: timeout must be seconds > 0 or None; got {timeout!r}"
        )
    doc, param_docs = _docstring(fn)
    if description is not None and not isinstance(description, str):
        raise InvalidOption(f"tool {tool_name!r}: description must be a str; got {description!r}")
    where = f"tool {tool_name!r}"
    context_parameter, arguments = _signature(fn, where, param_docs, derive=schema is None)
    if schema is not None:
        input_schema = _explicit_schema(schema, where)
        arguments = None
    else:
        assert arguments is not None
        input_schema = arguments.schema()
    unwrapped = inspect.unwrap(fn)
    is_async = inspect.iscoroutinefunction(unwrapped) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )
    return Tool(
        name=tool_name,
        description=description if description is not None else doc,
        input_schema=input_schema,
        fn=fn,
        timeout=float(timeout) if timeout is not None else None,
        is_async=is_async,
        context_parameter=context_parameter,
        arguments=arguments,
    )


def _explicit_schema(schema: Any, where: str) -> dict[str, Any]:
    if not isinstance(schema, Mapping):
        raise InvalidOption(f"{where}: schema must be a JSON schema (a mapping); got {schema!r}")
    try:
        copied: dict[str, Any] = json.loads(json.dumps(schema, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidOption(f"{where}: schema must be JSON: {exc}") from None
    if copied.get("type", "object") != "object":
        raise InvalidOption(f"{where}: schema must describe an object (type 'object')")
    copied.setdefault("type", "object")
    return copied


def _signature(
    fn: Callable[..., Any], where: str, param_docs: Mapping[str, str], *, derive: bool = True
) -> tuple[str | None, ObjectShape | None]:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise InvalidOption(f"{where}: cannot read the function's signature: {exc}") from None
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise InvalidOption(f"{where}: cannot resolve the type hints: {exc}") from None
    context_parameter: str | None = None
    fields: list[ObjectField] = []
    for param in signature.parameters.values():
        hint = hints.get(param.name, Any)
        if _is_context(hint):
            if context_parameter is not None:
                raise InvalidOption(f"{where}: only one parameter may take the ToolContext")
            context_parameter = param.name
            continue
        if not derive:  # an explicit schema: only the ToolContext parameter matters
            continue
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise InvalidOption(
                f"{where}: *{param.name} / **{param.name} cannot be described to a model; "
                "name every parameter, or pass schema=..."
            )
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise InvalidOption(
                f"{where}: parameter {param.name!r} is positional-only; tools are called "
                "with keyword arguments"
            )
        shape = (
            AnyShape()
            if param.annotation is inspect.Parameter.empty
            else shape_of(hint, f"{where}, parameter {param.name!r}")
        )
        description = _annotated_text(hint) or param_docs.get(param.name)
        fields.append(
            ObjectField(
                param.name,
                shape,
                param.default is inspect.Parameter.empty,
                description or None,
            )
        )
    return context_parameter, ObjectShape(tuple(fields))


def _is_context(hint: Any) -> bool:
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if hint is ToolContext:
        return True
    args = typing.get_args(hint)
    return bool(args) and ToolContext in args and all(a in (ToolContext, type(None)) for a in args)


def _annotated_text(hint: Any) -> str | None:
    if typing.get_origin(hint) is typing.Annotated:
        for extra in typing.get_args(hint)[1:]:
            if isinstance(extra, str):
                return extra
    return None


# --- tool sets ---------------------------------------------------------------------------


@attrs.frozen
class ToolSet:
    """The tools of a session (or runtime): unique names, in the order given.

    Build it with :meth:`of`, which accepts ``Tool`` objects and plain
    functions (made tools with :func:`tool`).
    """

    tools: tuple[Tool, ...] = ()

    @classmethod
    def of(cls, value: Any, option: str = "tools") -> ToolSet:
        """A checked tool set from ``None``, a ``ToolSet``, or a list of tools / functions.

        Raises:
            InvalidOption: not a list, an item that is neither a ``Tool`` nor a
                function, a function no schema can be derived from, or two tools
                with one name.
        """
        if value is None:
            # Frozen and empty: every session without tools shares one.
            return _NO_TOOLS if cls is ToolSet else cls()
        if isinstance(value, ToolSet):
            return value
        if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
            raise InvalidOption(
                f"option {option!r} must be a list of tools (@tool functions); got {value!r}"
            )
        tools: list[Tool] = []
        names: set[str] = set()
        for item in value:
            if isinstance(item, Tool):
                made = item
            elif callable(item) and not isinstance(item, type):
                made = _make_tool(item, None, None, None, None)
            else:
                raise InvalidOption(
                    f"option {option!r}: {item!r} is not a tool; decorate a function with "
                    "@beamagent.tools.tool"
                )
            if made.name in names:
                raise InvalidOption(f"option {option!r}: two tools are named {made.name!r}")
            names.add(made.name)
            tools.append(made)
        return cls(tuple(tools))

    def __bool__(self) -> bool:
        return bool(self.tools)

    def __len__(self) -> int:
        return len(self.tools)

    def __iter__(self) -> Any:
        return iter(self.tools)

    def names(self) -> tuple[str, ...]:
        """The tools' names."""
        return tuple(t.name for t in self.tools)

    def get(self, name: str) -> Tool | None:
        """The tool named ``name``, if any."""
        return next((t for t in self.tools if t.name == name), None)


_NO_TOOLS = ToolSet()


# --- running one call ----------------------------------------------------------------------

Decide = Callable[[str, dict[str, Any], PermissionContext], PermissionDecision]


async def invoke(
    tool: Tool | None,
    arguments: Any,
    context: ToolContext,
    *,
    decide: Decide | None = None,
    tool_name: str | None = None,
) -> ToolOutcome:
    """Run one call of ``tool``; never raises (but lets cancellation through).

    In order: the arguments are checked against the input schema (bad ones:
    ``invalid``); ``decide`` -- the session's permission handler, if it has
    one -- is asked on a thread of its own (``Deny``: ``denied``, its message
    to the model; ``Allow(updated_input=...)``: those arguments, checked
    again); the function runs (an ``async`` one on this loop, a sync one on a
    daemon thread of its own) within the tool's ``timeout``; its return value
    becomes the content (text as is, anything else as JSON). ``tool=None``
    gives an ``unknown`` outcome for ``tool_name``. Traced as a ``beamagent.tool``
    span (tool, session, outcome, duration; never the arguments).
    """
    if not telemetry.ENABLED:
        return await _invoke(tool, arguments, context, decide, tool_name)
    span = telemetry.start_span(
        "beamagent.tool",
        {
            "beamagent.tool.name": tool.name
            if tool is not None
            else (tool_name or context.tool_name),
            "beamagent.session_id": context.session_id,
            "beamagent.backend": context.backend,
            "beamagent.tool.call_id": context.tool_use_id,
            "beamagent.run_id": context.run_id,
            "beamagent.node_id": context.node_id,
        },
    )
    try:
        outcome = await _invoke(tool, arguments, context, decide, tool_name)
    except BaseException as exc:  # cancelled
        telemetry.end_span(span, {"beamagent.tool.outcome": "cancelled"}, error=exc)
        raise
    telemetry.end_span(
        span,
        {
            "beamagent.tool.outcome": outcome.status,
            "beamagent.tool.duration_ms": outcome.duration_ms,
        },
        error=outcome.status if outcome.is_error else None,
    )
    return outcome


async def _invoke(
    tool: Tool | None,
    arguments: Any,
    context: ToolContext,
    decide: Decide | None,
    tool_name: str | None,
) -> ToolOutcome:

    name = tool.name if tool is not None else (tool_name or context.tool_name)
    if tool is None:
        return ToolOutcome(name, f"unknown tool {name!r}", True, "unknown")
    try:
        kwargs = tool.parse_arguments(arguments)
    except ArgumentError as exc:
        return ToolOutcome(name, f"invalid arguments for tool {name!r}: {exc}", True, "invalid")
    if decide is not None:
        permission = PermissionContext(
            backend=context.backend,
            session_id=context.session_id,
            tool_use_id=context.tool_use_id,
            description=tool.description or None,
            raw={
                "tool": name,
                "arguments": arguments,
                "run_id": context.run_id,
                "node_id": context.node_id,
            },
        )
        raw_args = dict(arguments) if isinstance(arguments, Mapping) else {}
        decision = await _in_thread(
            lambda: decide(name, raw_args, permission), f"permission-{name}"
        )
        if isinstance(decision, Deny):
            return ToolOutcome(name, decision.message or "denied", True, "denied")
        if isinstance(decision, Allow) and decision.updated_input is not None:
            try:
                kwargs = tool.parse_arguments(decision.updated_input)
            except ArgumentError as exc:
                return ToolOutcome(
                    name,
                    f"the permission handler's updated input for tool {name!r} is invalid: {exc}",
                    True,
                    "invalid",
                )
    if tool.context_parameter is not None:
        kwargs[tool.context_parameter] = context
    started = time.monotonic()
    try:
        value = await _run(tool, kwargs)
    except TimeoutError:
        elapsed = (time.monotonic() - started) * 1000
        what = "cancelled" if tool.is_async else "abandoned (it may still be running)"
        log.warning(
            "tool_timed_out", tool=name, session_id=context.session_id, timeout=tool.timeout
        )
        return ToolOutcome(
            name,
            f"tool {name!r} timed out after {tool.timeout:g} s and was {what}",
            True,
            "timeout",
            elapsed,
        )
    except ToolError as exc:
        return ToolOutcome(name, str(exc), True, "error", (time.monotonic() - started) * 1000)
    except Exception as exc:
        log.info("tool_failed", tool=name, session_id=context.session_id, error=repr(exc))
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return ToolOutcome(name, text, True, "error", (time.monotonic() - started) * 1000)
    elapsed = (time.monotonic() - started) * 1000
    content, structured = render(value)
    return ToolOutcome(name, content, False, "ok", elapsed, structured)


def invoke_blocking(
    tool: Tool | None,
    arguments: Any,
    context: ToolContext,
    *,
    decide: Decide | None = None,
    tool_name: str | None = None,
) -> ToolOutcome:
    """:func:`invoke` from a thread that has no event loop (a backend's off-thread call)."""
    import asyncio

    return asyncio.run(invoke(tool, arguments, context, decide=decide, tool_name=tool_name))


async def _run(tool: Tool, kwargs: dict[str, Any]) -> Any:
    import asyncio

    if tool.is_async:
        call: Awaitable[Any] = tool.fn(**kwargs)
    else:
        call = _in_thread(functools.partial(tool.fn, **kwargs), tool.name)
    if tool.timeout is None:
        return await call
    return await asyncio.wait_for(call, tool.timeout)


def _in_thread(fn: Callable[[], Any], label: str) -> asyncio.Future[Any]:
    """Run ``fn`` on a daemon thread of its own; its outcome settles the returned future.

    Not a pool: a call that never returns (abandoned on timeout) must not hold
    a worker others wait for, and a daemon thread never delays the exit.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return  # cancelled meanwhile (a timeout, the server stopping)
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result, error = fn(), None
        except BaseException as exc:
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=f"beamagent-tool-{label}", daemon=True).start()
    return future


def render(value: Any) -> tuple[str, dict[str, Any] | None]:
    """The text a model gets for a tool's return value, and the value as structured JSON.

    A str is sent as it is; None as ""; anything else as JSON (dataclasses,
    attrs instances and enums included); a mapping is also the structured content.
    """
    if isinstance(value, str):
        return value, None
    if value is None:
        return "", None
    plain = _plain(value)
    try:
        text = json.dumps(plain, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = str(value)
    structured = (
        plain if isinstance(plain, dict) and all(isinstance(k, str) for k in plain) else None
    )
    return text, structured


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if attrs.has(type(value)):
        return _plain(attrs.asdict(value, recurse=True))
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
