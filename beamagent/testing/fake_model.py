"""A fake LLM HTTP server on 127.0.0.1 that the real agent CLIs can talk to.

It speaks the four wire protocols the CLIs use -- Anthropic Messages, OpenAI
Responses, OpenAI Chat Completions and Gemini -- with the same streaming event
sequences and usage fields as the real services, so that tests drive the real
CLIs end to end without a network::

    with FakeModelServer(reply="hi") as server:
        env = claude_env(tmp_path, server)        # from beamagent.testing.clis
        ...                                       # run `claude -p "ECHO:hello"`
        assert server.requests[-1].json["messages"]

What it answers, per model request (first match wins):

1. a JSON object that fits the request's JSON schema, when the request asks for
   structured output (Gemini CLI's router does);
2. the next scripted turn, if any (:meth:`FakeModelServer.script`) -- side
   requests (structured output, title generation: :func:`is_side_request`)
   never consume one;
3. ``<text>`` when the newest user message has a text block ``ECHO:<text>``
   (never for a tool result);
4. the default reply.

Everything is plain stdlib (``http.server``), see ``docs/fake-model-server.md``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import itertools
import json
import math
import os
import re
import socket
import socketserver
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import TracebackType
from typing import Any, Final, TypeAlias, TypeVar
from urllib.parse import parse_qsl, urlsplit

import attrs

from beamagent.log import get_logger

__all__ = [
    "ErrorStatus",
    "FakeModelServer",
    "Malformed",
    "Protocol",
    "RecordedRequest",
    "Stall",
    "Text",
    "ToolCall",
    "Turn",
    "example_from_schema",
    "is_side_request",
    "shell_tool_arguments",
]

log = get_logger(__name__)

DEFAULT_REPLY: Final = "Hello from the fake model."
# How long stop() waits for one connection thread before it reports a leak.
_JOIN_TIMEOUT_SECONDS: Final = 5.0
# An idle keep-alive connection is closed after this long, so a client that
# never hangs up cannot pin a thread forever even without stop().
_IDLE_CONNECTION_SECONDS: Final = 60.0
_CLONE_NEWNET: Final = 0x40000000

# Shell tools of the CLIs we drive, most specific first (matched case-insensitively).
_SHELL_TOOL_NAMES: Final = (
    "bash",
    "shell",
    "exec_command",
    "run_shell_command",
    "local_shell",
    "shell_command",
    "run_command",
    "execute_command",
    "terminal",
    "exec",
)
# Properties of a shell tool's schema that take the command line.
_COMMAND_PROPERTIES: Final = ("command", "cmd", "commands", "script", "shell_command", "code")

JSON: TypeAlias = Any
_T = TypeVar("_T")


# --- scripted turns ------------------------------------------------------------------


@attrs.frozen
class Text:
    """A turn that answers with assistant text.

    Example: ``server.script([Text("first"), Text("second")])``.
    """

    text: str


@attrs.frozen
class ToolCall:
    """A turn that asks the CLI to run ``command`` with its own shell tool.

    The tool is picked from the request's tool list (``Bash``, ``bash``, ``shell``,
    ``exec_command``, ``run_shell_command``, ``local_shell``, ... else the first
    tool) and its arguments are filled from that tool's JSON schema. ``tool``
    forces a tool name; ``arguments`` replaces the generated arguments.

    A forced name matches a tool of that exact name, else one whose name ends
    with ``__<tool>`` (CLIs prefix MCP tools: ``mcp__<server>__<tool>``). When the
    tool is not offered but the request has a client-side ``tool_search`` tool
    (Codex defers MCP tools behind it), the server first answers with a
    ``tool_search_call`` for the name -- without using up this turn -- and
    calls the tool once the CLI has sent the search's output.
    """

    command: str
    tool: str | None = None
    arguments: Mapping[str, JSON] | None = None


@attrs.frozen
class ErrorStatus:
    """A turn that fails with an HTTP error status and the protocol's error JSON.

    ``body`` replaces the generated error body verbatim; ``headers`` are added to
    the response (e.g. ``{"x-should-retry": "false"}`` stops Anthropic SDK retries).
    """

    status: int = 500
    body: str | None = None
    message: str = "fake model server: scripted error"
    headers: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Stall:
    """A turn that sends the response headers, then waits ``seconds``.

    For timeout tests. :meth:`FakeModelServer.stop` interrupts the wait and drops
    the connection. If the wait runs out, the request is answered with ``then``
    (default: the server's default reply).
    """

    seconds: float
    then: Text | ToolCall | None = None


@attrs.frozen
class Malformed:
    """A turn whose response is broken: a data line with invalid JSON, then the end.

    Streaming requests get the first valid event, then the bad line; others get a
    200 with a body that is not JSON.
    """


Turn: TypeAlias = Text | ToolCall | ErrorStatus | Stall | Malformed


class Protocol(Enum):
    """The wire protocol a request was recognised as."""

    ANTHROPIC = "anthropic"
    OPENAI_RESPONSES = "openai-responses"
    OPENAI_CHAT = "openai-chat"
    GEMINI = "gemini"
    OTHER = "other"


@attrs.frozen
class RecordedRequest:
    """One HTTP request the server received, as the client sent it.

    ``headers`` has lower-case names; ``json`` is the decoded body or ``None`` when
    the body is empty or not JSON. ``turn`` is what the server answered a model
    request with (``None`` for other endpoints).
    """

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body_bytes: bytes
    json: JSON
    protocol: Protocol = Protocol.OTHER
    turn: Turn | None = None
    received_at: float = 0.0
    """``time.monotonic()`` when the request's body had arrived (for latency measurements)."""

    @property
    def text(self) -> str:
        """The body decoded as UTF-8, for substring assertions on what was sent."""
        return self.body_bytes.decode("utf-8", errors="replace")


# --- JSON schema examples -------------------------------------------------------------


def example_from_schema(schema: JSON, *, root: JSON = None) -> JSON:
    """Return a value that conforms to a JSON schema (or a Gemini ``Schema``).

    Handles ``type`` (also Gemini's upper-case names and type lists), ``enum``,
    ``const``, ``$ref`` to local definitions, ``allOf``/``anyOf``/``oneOf``,
    numeric bounds, string and array lengths; objects get every listed property.

    >>> example_from_schema({"type": "integer", "minimum": 1, "maximum": 100})
    1
    """
    return _example(schema, root if root is not None else schema, depth=0)


def _example(schema: JSON, root: JSON, depth: int) -> JSON:
    if not isinstance(schema, dict):
        # `true` / a missing schema accepts anything.
        return "fake"
    if depth > 12:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _example(_resolve_ref(ref, root), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and all_of:
        return _example(_merge_all_of(schema, all_of, root), root, depth + 1)
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            non_null = [o for o in options if not (isinstance(o, dict) and _types(o) == ["null"])]
            return _example((non_null or options)[0], root, depth + 1)
    kind = _primary_type(schema)
    if kind == "object":
        return _example_object(schema, root, depth)
    if kind == "array":
        return _example_array(schema, root, depth)
    if kind in ("integer", "number"):
        return _example_number(schema, integer=kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _example_string(schema)


def _resolve_ref(ref: str, root: JSON) -> JSON:
    if not ref.startswith("#"):
        return {}
    node = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
    return node


def _merge_all_of(schema: dict[str, JSON], parts: list[JSON], root: JSON) -> dict[str, JSON]:
    merged: dict[str, JSON] = {k: v for k, v in schema.items() if k != "allOf"}
    for part in parts:
        if isinstance(part, dict) and isinstance(part.get("$ref"), str):
            part = _resolve_ref(part["$ref"], root)
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key == "properties" and isinstance(value, dict):
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required" and isinstance(value, list):
                merged["required"] = [*merged.get("required", []), *value]
            else:
                merged.setdefault(key, value)
    return merged


def _types(schema: dict[str, JSON]) -> list[str]:
    raw = schema.get("type")
    if isinstance(raw, str):
        return [raw.lower()]
    if isinstance(raw, list):
        return [str(t).lower() for t in raw]
    return []


def _primary_type(schema: dict[str, JSON]) -> str:
    types = [t for t in _types(schema) if t != "null"]
    if types:
        return types[0]
    if _types(schema) == ["null"]:
        return "null"
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def _number(value: JSON) -> float | None:
    # Gemini's Schema sends int64 fields such as minItems as JSON strings.
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _bound(schema: dict[str, JSON], inclusive: str, exclusive: str) -> tuple[float | None, bool]:
    """A numeric bound and whether it is exclusive (draft 4 booleans and draft 6+ numbers)."""
    value, is_open = _number(schema.get(inclusive)), schema.get(exclusive) is True
    if _number(schema.get(exclusive)) is not None:
        value, is_open = _number(schema.get(exclusive)), True
    return value, is_open


def _example_number(schema: dict[str, JSON], *, integer: bool) -> int | float:
    low, low_open = _bound(schema, "minimum", "exclusiveMinimum")
    high, high_open = _bound(schema, "maximum", "exclusiveMaximum")
    # Start at 1, not 0: scores and counts are often positive without the schema saying so
    # (Gemini CLI's router rejects complexity_score 0).
    value = 1.0
    if low is not None and (value < low or (low_open and value <= low)):
        if integer:
            value = math.floor(low) + 1.0 if low_open else math.ceil(low)
        elif low_open:
            value = low + 1.0 if high is None else (low + high) / 2
        else:
            value = low
    if high is not None and (value > high or (high_open and value >= high)):
        if integer:
            value = math.ceil(high) - 1.0 if high_open else math.floor(high)
        elif low is not None:
            value = (low + high) / 2 if low_open or high_open else low
        else:
            value = high - 1.0 if high_open else high
    multiple = _number(schema.get("multipleOf"))
    if multiple:
        value = math.ceil(value / multiple) * multiple
        if high is not None and value > high:
            value = math.floor(high / multiple) * multiple
    return int(value) if integer else value


def _example_string(schema: dict[str, JSON]) -> str:
    formats = {
        "date-time": "2026-01-01T00:00:00Z",
        "date": "2026-01-01",
        "time": "00:00:00Z",
        "email": "fake@example.com",
        "uri": "http://127.0.0.1/fake",
        "uuid": "00000000-0000-4000-8000-000000000000",
    }
    text = formats.get(str(schema.get("format", "")).lower(), "fake")
    min_len = int(_number(schema.get("minLength")) or 0)
    max_len = _number(schema.get("maxLength"))
    if len(text) < min_len:
        text = text + "x" * (min_len - len(text))
    if max_len is not None:
        text = text[: int(max_len)]
    return text


def _example_array(schema: dict[str, JSON], root: JSON, depth: int) -> list[JSON]:
    min_items = int(_number(schema.get("minItems")) or 0)
    max_items = _number(schema.get("maxItems"))
    # One item shows the shape; deep in a recursive schema, only what is required.
    count = min_items if depth > 6 else max(min_items, 1)
    if max_items is not None:
        count = min(count, int(max_items))
    prefix = schema.get("prefixItems")
    items: list[JSON] = []
    for index in range(count):
        if isinstance(prefix, list) and index < len(prefix):
            items.append(_example(prefix[index], root, depth + 1))
        else:
            items.append(_example(schema.get("items", {}), root, depth + 1))
    return items


def _example_object(schema: dict[str, JSON], root: JSON, depth: int) -> dict[str, JSON]:
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = [r for r in schema.get("required", []) if isinstance(r, str)]
    # Deep in a recursive schema, stop at what is required.
    names = required if depth > 6 else [*required, *(p for p in properties if p not in required)]
    return {name: _example(properties.get(name, {}), root, depth + 1) for name in names}


# --- tool selection ------------------------------------------------------------------


@attrs.frozen
class _Tool:
    """A tool offered in a request, normalised across protocols."""

    name: str
    schema: JSON
    # "function" (JSON arguments), "local_shell" (Responses' built-in), "custom", or
    # "tool_search" (Responses' client-side tool discovery).
    kind: str = "function"
    # The Responses namespace a discovered tool belongs to (e.g. "mcp__beamagent").
    namespace: str | None = None


@attrs.frozen
class _ToolUse:
    """A tool call the server answers with."""

    name: str
    arguments: dict[str, JSON]
    call_id: str
    kind: str = "function"
    namespace: str | None = None


def shell_tool_arguments(schema: JSON, command: str) -> dict[str, JSON]:
    """Fill a shell tool's arguments from its JSON schema so that it runs ``command``.

    The command goes into the property that looks like one (``command``, ``cmd``,
    ...) -- as ``["bash", "-lc", command]`` when the schema wants an array --
    and every other required property gets a schema-valid example.

    >>> shell_tool_arguments({"properties": {"cmd": {"type": "string"}}}, "ls")
    {'cmd': 'ls'}
    """
    schema = schema if isinstance(schema, dict) else {}
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = [r for r in schema.get("required", []) if isinstance(r, str)]
    lowered = {name.lower(): name for name in properties}
    key = next((lowered[c] for c in _COMMAND_PROPERTIES if c in lowered), None)
    if key is None:
        key = next(
            (r for r in required if _primary_type(_as_dict(properties.get(r))) == "string"),
            "command",
        )
    prop = _as_dict(properties.get(key))
    wants_array = _primary_type(prop) == "array" if prop else False
    arguments: dict[str, JSON] = {key: ["bash", "-lc", command] if wants_array else command}
    for name in required:
        if name not in arguments:
            arguments[name] = example_from_schema(properties.get(name, {}), root=schema)
    return arguments


def _as_dict(value: JSON) -> dict[str, JSON]:
    return value if isinstance(value, dict) else {}


def _find_tool(tools: Sequence[_Tool], wanted: str) -> _Tool | None:
    """The offered tool named ``wanted``: exactly, with its namespace, or by suffix.

    CLIs prefix the tools of an MCP server with its name: ``mcp__<server>__<tool>``
    (Claude Code, Codex), ``mcp_<server>_<tool>`` (Gemini CLI), ``<server>_<tool>``
    (OpenCode), ``<server>-<tool>`` (Copilot CLI). A ``__`` suffix is tried first.
    """
    callable_tools = [t for t in tools if t.kind != "tool_search"]
    for tool in callable_tools:
        if tool.name == wanted:
            return tool
    for tool in callable_tools:
        if tool.namespace is not None and _qualified(tool) == wanted:
            return tool
    for tool in callable_tools:
        if _qualified(tool).endswith(f"__{wanted}"):
            return tool
    for tool in callable_tools:
        if any(_qualified(tool).endswith(f"{sep}{wanted}") for sep in "_-."):
            return tool
    return None


def _qualified(tool: _Tool) -> str:
    """``namespace__name`` for a namespaced tool (as Codex names MCP tools), else the name."""
    if tool.namespace is None:
        return tool.name
    return tool.name if tool.name.startswith(tool.namespace) else f"{tool.namespace}__{tool.name}"


def _pick_tool(tools: Sequence[_Tool], forced: str | None) -> _Tool | None:
    if forced is not None:
        return _find_tool(tools, forced) or _Tool(forced, {})
    by_name = {t.name.lower(): t for t in reversed(tools)}
    for wanted in _SHELL_TOOL_NAMES:
        if wanted in by_name:
            return by_name[wanted]
    return tools[0] if tools else None


# --- request parsing, per protocol ------------------------------------------------------


def _protocol_of(method: str, path: str) -> Protocol:
    if method != "POST":
        return Protocol.OTHER
    if path.rstrip("/").endswith("/messages"):
        return Protocol.ANTHROPIC
    if path.rstrip("/").endswith("/responses"):
        return Protocol.OPENAI_RESPONSES
    if path.rstrip("/").endswith("/chat/completions"):
        return Protocol.OPENAI_CHAT
    if re.search(r"/models/[^/]+:(streamGenerateContent|generateContent)$", path):
        return Protocol.GEMINI
    return Protocol.OTHER


@attrs.frozen
class _LastMessage:
    """The newest message of a conversation: its text blocks, or a tool result."""

    texts: tuple[str, ...] = ()
    is_tool_result: bool = False


# Roles that CLIs slip in after the user's message and that are not a turn.
_SIDE_ROLES: Final = ("system", "developer")


def _newest(entries: JSON) -> dict[str, JSON] | None:
    """The newest conversation entry, skipping system/developer notes appended after it."""
    if isinstance(entries, list):
        for entry in reversed(entries):
            if isinstance(entry, dict) and entry.get("role") not in _SIDE_ROLES:
                return entry
    return None


def _last_message(protocol: Protocol, body: JSON) -> _LastMessage:
    if not isinstance(body, dict):
        return _LastMessage()
    if protocol is Protocol.OPENAI_RESPONSES and isinstance(body.get("input"), str):
        return _LastMessage(texts=(body["input"],))
    key = {
        Protocol.ANTHROPIC: "messages",
        Protocol.OPENAI_CHAT: "messages",
        Protocol.OPENAI_RESPONSES: "input",
        Protocol.GEMINI: "contents",
    }.get(protocol)
    last = _newest(body.get(key)) if key else None
    if last is None:
        return _LastMessage()
    if last.get("role") == "tool" or str(last.get("type", "")).endswith("_output"):
        # Chat's role "tool"; Responses' function_call_output and friends.
        return _LastMessage(is_tool_result=True)
    if protocol is Protocol.GEMINI:
        if last.get("role", "user") != "user":
            return _LastMessage()
        parts = [p for p in last.get("parts", []) if isinstance(p, dict)]
        if any("functionResponse" in p for p in parts):
            return _LastMessage(is_tool_result=True)
        return _LastMessage(texts=tuple(p["text"] for p in parts if isinstance(p.get("text"), str)))
    if last.get("role") != "user":
        return _LastMessage()
    return _content_texts(last.get("content"))


def _content_texts(content: JSON) -> _LastMessage:
    if isinstance(content, str):
        return _LastMessage(texts=(content,))
    if not isinstance(content, list):
        return _LastMessage()
    texts: list[str] = []
    for block in content:
        block = _as_dict(block)
        if block.get("type") in ("tool_result", "function_call_output"):
            return _LastMessage(is_tool_result=True)
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
    return _LastMessage(texts=tuple(texts))


def _echo_text(last: _LastMessage) -> str | None:
    for text in reversed(last.texts):
        stripped = text.strip()
        if stripped.startswith("ECHO:"):
            return stripped[len("ECHO:") :].strip()
    return None


def _tools_of(protocol: Protocol, body: JSON) -> list[_Tool]:
    raw = body.get("tools") if isinstance(body, dict) else None
    if not isinstance(raw, list):
        return []
    tools: list[_Tool] = []
    for entry in (_as_dict(t) for t in raw):
        if protocol is Protocol.ANTHROPIC and isinstance(entry.get("name"), str):
            # Server tools (web search, ...) carry a `type` and no input schema.
            if "input_schema" in entry or "type" not in entry or entry["type"] == "custom":
                tools.append(_Tool(entry["name"], entry.get("input_schema", {})))
        elif protocol is Protocol.OPENAI_RESPONSES:
            tools.extend(_responses_tools(entry))
        elif protocol is Protocol.OPENAI_CHAT:
            function = _as_dict(entry.get("function"))
            if isinstance(function.get("name"), str):
                tools.append(_Tool(function["name"], function.get("parameters", {})))
        elif protocol is Protocol.GEMINI:
            for decl in (_as_dict(d) for d in entry.get("functionDeclarations", [])):
                if isinstance(decl.get("name"), str):
                    schema = decl.get("parametersJsonSchema", decl.get("parameters", {}))
                    tools.append(_Tool(decl["name"], schema))
    return tools


def _responses_tools(entry: dict[str, JSON], namespace: str | None = None) -> list[_Tool]:
    """The tools of one Responses tool entry (a namespace holds several)."""
    kind = entry.get("type")
    name = entry.get("name")
    if kind == "local_shell":
        return [_Tool("local_shell", {}, kind="local_shell")]
    if kind == "function" and isinstance(name, str):
        return [_Tool(name, entry.get("parameters", {}), namespace=namespace)]
    if kind == "custom" and isinstance(name, str):
        return [_Tool(name, {}, kind="custom", namespace=namespace)]
    if kind == "tool_search" and entry.get("execution", "client") == "client":
        return [_Tool("tool_search", entry.get("parameters", {}), kind="tool_search")]
    if kind == "namespace" and isinstance(name, str):
        nested = entry.get("tools")
        return [
            tool
            for item in (nested if isinstance(nested, list) else [])
            for tool in _responses_tools(_as_dict(item), name)
        ]
    return []


def _discovered_tools(body: JSON) -> list[_Tool]:
    """Tools a Responses client found with ``tool_search`` (its ``tool_search_output`` items)."""
    items = body.get("input") if isinstance(body, dict) else None
    tools: list[_Tool] = []
    for item in items if isinstance(items, list) else []:
        item = _as_dict(item)
        if item.get("type") == "tool_search_output" and isinstance(item.get("tools"), list):
            for entry in item["tools"]:
                tools.extend(_responses_tools(_as_dict(entry)))
    return tools


def _response_schema(protocol: Protocol, body: JSON) -> JSON:
    """The JSON schema a request wants its answer to fit, or None."""
    if not isinstance(body, dict):
        return None
    if protocol is Protocol.GEMINI:
        config = _as_dict(body.get("generationConfig"))
        if str(config.get("responseMimeType", "")).startswith("application/json"):
            schema = config.get("responseJsonSchema", config.get("responseSchema"))
            return schema if schema is not None else {"type": "object"}
    elif protocol is Protocol.OPENAI_CHAT:
        fmt = _as_dict(body.get("response_format"))
        if fmt.get("type") == "json_schema":
            return _as_dict(fmt.get("json_schema")).get("schema", {"type": "object"})
        if fmt.get("type") == "json_object":
            return {"type": "object"}
    elif protocol is Protocol.OPENAI_RESPONSES:
        fmt = _as_dict(_as_dict(body.get("text")).get("format"))
        if fmt.get("type") == "json_schema":
            return fmt.get("schema", {"type": "object"})
    elif protocol is Protocol.ANTHROPIC:
        fmt = _as_dict(_as_dict(body.get("output_config")).get("format"))
        if fmt.get("type") == "json_schema":
            return fmt.get("schema", {"type": "object"})
    return None


_TITLE_PROMPT = re.compile(r"\btitle generator\b|generate a (?:short |brief |concise )?title", re.I)


def is_side_request(protocol: Protocol, body: JSON) -> bool:
    """Whether a model request is a CLI's side job that should not eat a scripted turn.

    True for structured-output requests (Gemini CLI's router) and for title
    generation (OpenCode's first request of a session). Pass your own predicate
    as ``FakeModelServer(side_request=...)`` to change this.
    """
    if _response_schema(protocol, body) is not None:
        return True
    if not isinstance(body, dict) or _tools_of(protocol, body):
        return False
    # Only the instructions, not the conversation: a user may well ask for a title.
    head = [body.get("system"), body.get("instructions"), body.get("systemInstruction")]
    messages = body.get("messages")
    if isinstance(messages, list):
        head.extend(m.get("content") for m in messages if _as_dict(m).get("role") in _SIDE_ROLES)
    return bool(_TITLE_PROMPT.search(json.dumps(head)))


# --- answers and their renderings ---------------------------------------------------------


@attrs.frozen
class _Answer:
    """What the model says in one response: text, or one tool call."""

    text: str = ""
    tool: _ToolUse | None = None
    input_tokens: int = 1
    output_tokens: int = 1
    model: str = "fake-model"


def _estimate_tokens(text: str) -> int:
    # Roughly four characters a token, like the real tokenizers on English text.
    return max(1, math.ceil(len(text) / 4))


def _pieces(text: str) -> list[str]:
    """Split text into a few deltas, word by word, so clients see several chunks."""
    parts = re.findall(r"\S+\s*|\s+", text)
    return parts or [""]


_ids = itertools.count(1)


def _new_id(prefix: str) -> str:
    return f"{prefix}{os.getpid():x}{next(_ids):06d}"


Event: TypeAlias = tuple[str | None, JSON]


def _anthropic_message(answer: _Answer) -> dict[str, JSON]:
    content: list[JSON] = []
    if answer.tool is not None:
        content.append(
            {
                "type": "tool_use",
                "id": answer.tool.call_id,
                "name": answer.tool.name,
                "input": answer.tool.arguments,
            }
        )
    else:
        content.append({"type": "text", "text": answer.text})
    return {
        "id": _new_id("msg_fake"),
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": content,
        "stop_reason": "tool_use" if answer.tool else "end_turn",
        "stop_sequence": None,
        "usage": _anthropic_usage(answer.input_tokens, answer.output_tokens),
    }


def _anthropic_usage(input_tokens: int, output_tokens: int) -> dict[str, JSON]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _anthropic_events(answer: _Answer) -> list[Event]:
    start = _anthropic_message(answer)
    start.update(content=[], stop_reason=None, usage=_anthropic_usage(answer.input_tokens, 1))
    events: list[Event] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("ping", {"type": "ping"}),
    ]
    if answer.tool is not None:
        block: dict[str, JSON] = {
            "type": "tool_use",
            "id": answer.tool.call_id,
            "name": answer.tool.name,
            "input": {},
        }
        arguments = json.dumps(answer.tool.arguments)
        deltas = [
            {"type": "input_json_delta", "partial_json": part} for part in _split(arguments, 3)
        ]
        stop_reason = "tool_use"
    else:
        block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": part} for part in _pieces(answer.text)]
        stop_reason = "end_turn"
    events.append(
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
    )
    for delta in deltas:
        events.append(
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {
                    "input_tokens": answer.input_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": answer.output_tokens,
                },
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _split(text: str, parts: int) -> list[str]:
    size = max(1, math.ceil(len(text) / parts))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _responses_item(answer: _Answer, item_id: str, *, done: bool) -> dict[str, JSON]:
    status = "completed" if done else "in_progress"
    tool = answer.tool
    if tool is not None and tool.kind == "local_shell":
        command = tool.arguments.get("command", ["bash", "-lc", ""])
        return {
            "type": "local_shell_call",
            "id": item_id,
            "call_id": tool.call_id,
            "status": status,
            "action": {"type": "exec", "command": command, "env": {}},
        }
    if tool is not None and tool.kind == "tool_search":
        return {
            "type": "tool_search_call",
            "id": item_id,
            "call_id": tool.call_id,
            "execution": "client",
            "arguments": tool.arguments,
            "status": status,
        }
    if tool is not None and tool.kind == "custom":
        return {
            "type": "custom_tool_call",
            "id": item_id,
            "call_id": tool.call_id,
            "name": tool.name,
            "input": str(tool.arguments.get("input", "")) if done else "",
            "status": status,
        }
    if tool is not None:
        item: dict[str, JSON] = {
            "type": "function_call",
            "id": item_id,
            "call_id": tool.call_id,
            "name": tool.name,
            "arguments": json.dumps(tool.arguments) if done else "",
            "status": status,
        }
        if tool.namespace is not None:
            item["namespace"] = tool.namespace
        return item
    content = [{"type": "output_text", "text": answer.text, "annotations": []}] if done else []
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _responses_object(
    answer: _Answer, response_id: str, created: int, output: list[JSON], *, done: bool
) -> dict[str, JSON]:
    usage = None
    if done:
        usage = {
            "input_tokens": answer.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": answer.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": answer.input_tokens + answer.output_tokens,
        }
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": "completed" if done else "in_progress",
        "error": None,
        "incomplete_details": None,
        "model": answer.model,
        "output": output,
        "parallel_tool_calls": False,
        "usage": usage,
    }


def _responses_events(answer: _Answer) -> list[Event]:
    response_id, item_id = _new_id("resp_fake"), _new_id("item_fake")
    created = int(time.time())
    events: list[JSON] = []
    events.append(
        {
            "type": "response.created",
            "response": _responses_object(answer, response_id, created, [], done=False),
        }
    )
    events.append(
        {
            "type": "response.in_progress",
            "response": _responses_object(answer, response_id, created, [], done=False),
        }
    )
    events.append(
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": _responses_item(answer, item_id, done=False),
        }
    )
    tool = answer.tool
    if tool is None:
        where = {"item_id": item_id, "output_index": 0, "content_index": 0}
        events.append(
            {
                "type": "response.content_part.added",
                **where,
                "part": {"type": "output_text", "text": "", "annotations": []},
            }
        )
        for part in _pieces(answer.text):
            events.append({"type": "response.output_text.delta", **where, "delta": part})
        events.append({"type": "response.output_text.done", **where, "text": answer.text})
        events.append(
            {
                "type": "response.content_part.done",
                **where,
                "part": {"type": "output_text", "text": answer.text, "annotations": []},
            }
        )
    elif tool.kind == "function":
        arguments = json.dumps(tool.arguments)
        where = {"item_id": item_id, "output_index": 0}
        for part in _split(arguments, 3):
            events.append(
                {"type": "response.function_call_arguments.delta", **where, "delta": part}
            )
        events.append(
            {"type": "response.function_call_arguments.done", **where, "arguments": arguments}
        )
    final_item = _responses_item(answer, item_id, done=True)
    events.append({"type": "response.output_item.done", "output_index": 0, "item": final_item})
    events.append(
        {
            "type": "response.completed",
            "response": _responses_object(answer, response_id, created, [final_item], done=True),
        }
    )
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return [(event["type"], event) for event in events]


def _responses_body(answer: _Answer) -> dict[str, JSON]:
    item = _responses_item(answer, _new_id("item_fake"), done=True)
    return _responses_object(answer, _new_id("resp_fake"), int(time.time()), [item], done=True)


def _chat_tool_call(tool: _ToolUse, arguments: str) -> dict[str, JSON]:
    return {
        "id": tool.call_id,
        "type": "function",
        "function": {"name": tool.name, "arguments": arguments},
    }


def _chat_usage(answer: _Answer) -> dict[str, JSON]:
    return {
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": answer.input_tokens + answer.output_tokens,
    }


def _chat_body(answer: _Answer) -> dict[str, JSON]:
    message: dict[str, JSON] = {"role": "assistant", "content": answer.text or None}
    if answer.tool is not None:
        message["content"] = None
        message["tool_calls"] = [_chat_tool_call(answer.tool, json.dumps(answer.tool.arguments))]
    return {
        "id": _new_id("chatcmpl-fake"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answer.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if answer.tool else "stop",
            }
        ],
        "usage": _chat_usage(answer),
    }


def _chat_events(answer: _Answer, *, include_usage: bool) -> list[Event]:
    base = {
        "id": _new_id("chatcmpl-fake"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": answer.model,
    }

    def chunk(delta: dict[str, JSON], finish: str | None = None) -> Event:
        body: dict[str, JSON] = {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            body["usage"] = None
        return (None, body)

    events = [chunk({"role": "assistant", "content": ""})]
    if answer.tool is not None:
        arguments = json.dumps(answer.tool.arguments)
        events.append(chunk({"tool_calls": [{"index": 0, **_chat_tool_call(answer.tool, "")}]}))
        for part in _split(arguments, 3):
            events.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}))
        events.append(chunk({}, "tool_calls"))
    else:
        events.extend(chunk({"content": part}) for part in _pieces(answer.text))
        events.append(chunk({}, "stop"))
    if include_usage:
        events.append((None, {**base, "choices": [], "usage": _chat_usage(answer)}))
    events.append((None, "[DONE]"))
    return events


def _gemini_usage(answer: _Answer) -> dict[str, JSON]:
    return {
        "promptTokenCount": answer.input_tokens,
        "candidatesTokenCount": answer.output_tokens,
        "totalTokenCount": answer.input_tokens + answer.output_tokens,
    }


def _gemini_chunk(parts: list[JSON], answer: _Answer, *, last: bool) -> dict[str, JSON]:
    candidate: dict[str, JSON] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if last:
        candidate["finishReason"] = "STOP"
    return {
        "candidates": [candidate],
        "usageMetadata": _gemini_usage(answer)
        if last
        else {"promptTokenCount": answer.input_tokens},
        "modelVersion": answer.model,
        "responseId": _new_id("fake"),
    }


def _gemini_parts(answer: _Answer) -> list[list[JSON]]:
    if answer.tool is not None:
        call = {"functionCall": {"name": answer.tool.name, "args": answer.tool.arguments}}
        return [[call]]
    return [[{"text": part}] for part in _pieces(answer.text)]


def _gemini_events(answer: _Answer) -> list[Event]:
    chunks = _gemini_parts(answer)
    return [
        (None, _gemini_chunk(parts, answer, last=index == len(chunks) - 1))
        for index, parts in enumerate(chunks)
    ]


def _gemini_body(answer: _Answer) -> dict[str, JSON]:
    parts = [part for chunk in _gemini_parts(answer) for part in chunk]
    if answer.tool is None:
        parts = [{"text": answer.text}]
    return _gemini_chunk(parts, answer, last=True)


_ANTHROPIC_ERRORS: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_GEMINI_STATUSES: Final = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _error_body(protocol: Protocol, status: int, message: str) -> dict[str, JSON]:
    if protocol is Protocol.ANTHROPIC:
        kind = _ANTHROPIC_ERRORS.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    if protocol is Protocol.GEMINI:
        return {
            "error": {
                "code": status,
                "message": message,
                "status": _GEMINI_STATUSES.get(status, "INTERNAL"),
            }
        }
    openai_kinds = {400: "invalid_request_error", 401: "invalid_request_error", 429: "requests"}
    return {
        "error": {
            "message": message,
            "type": openai_kinds.get(status, "server_error"),
            "param": None,
            "code": None,
        }
    }


# --- the server ------------------------------------------------------------------------


class _Stopped(Exception):
    """The server is stopping: abandon this response."""


class _HTTPServer(HTTPServer):
    """An HTTPServer that runs each connection on a thread it can join on stop()."""

    daemon_threads = True
    # socketserver's default backlog (5) overflows when many clients connect at once (one
    # asyncio loop connects every session's request together), and some see resets.
    request_queue_size = 128

    def __init__(self, owner: FakeModelServer, address: tuple[str, int]) -> None:
        self.owner = owner
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._connections: set[socket.socket] = set()
        self._numbers = itertools.count(1)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN; with no DNS that can hang.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name=f"fake-model-conn-{next(self._numbers)}",
            # Daemon so a stuck connection can never block interpreter exit;
            # stop() still joins every one of them.
            daemon=True,
        )
        with self._lock:
            self._threads.add(thread)
            self._connections.add(request)
        thread.start()

    def _serve_connection(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            if not self.owner._stopping.is_set():
                log.exception("fake_model_connection_failed")
        finally:
            self.shutdown_request(request)
            with self._lock:
                self._connections.discard(request)

    def drop_connections(self) -> None:
        """Unblock every connection thread: readers waiting on idle keep-alives too."""
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def join_threads(self, timeout: float) -> list[threading.Thread]:
        """Join every connection thread; return those still alive after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t for t in threads if t.is_alive()]
        with self._lock:
            self._threads = set(alive)
        return alive


class _Handler(BaseHTTPRequestHandler):
    """One HTTP/1.1 connection to the fake model server."""

    protocol_version = "HTTP/1.1"
    server_version = "FakeModelServer/1"
    server: _HTTPServer
    timeout = _IDLE_CONNECTION_SECONDS
    # TCP_NODELAY: headers and body go out as separate small writes, and with Nagle's
    # algorithm the body waits for the client's delayed ACK (40 ms per response here).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        # Requests are logged by FakeModelServer; keep stderr clean.
        pass

    def do_GET(self) -> None:
        self.server.owner._handle(self)

    do_POST = do_GET
    do_HEAD = do_GET
    do_PUT = do_GET
    do_DELETE = do_GET
    do_OPTIONS = do_GET
    do_PATCH = do_GET

    def read_body(self) -> bytes:
        """The request body, de-chunked and decompressed."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = self._read_chunked()
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
        encoding = self.headers.get("Content-Encoding", "").lower()
        try:
            if encoding == "gzip":
                return gzip.decompress(body)
            if encoding == "deflate":
                return zlib.decompress(body)
        except (OSError, zlib.error):
            log.warning("fake_model_body_undecodable", encoding=encoding)
        return body

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size_line = self.rfile.readline(65537)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                # Trailers end with an empty line.
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(65537)

    def send_json(self, status: int, body: JSON, headers: Mapping[str, str] | None = None) -> None:
        """Send a complete JSON response."""
        self.send_bytes(status, json.dumps(body).encode(), "application/json", headers)

    def send_bytes(
        self,
        status: int,
        payload: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
        *,
        stall: Stall | None = None,
    ) -> None:
        """Send a complete response, optionally stalling between head and body."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if stall is not None:
            self.wfile.flush()
            self.server.owner._stall(stall)
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()

    def start_stream(self, *, close: bool = False) -> None:
        """Send the head of a chunked SSE response (``close``: the last on this connection)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()

    def write_chunk(self, data: bytes) -> None:
        """Send one HTTP chunk."""
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    def end_stream(self) -> None:
        """Send the last (empty) chunk."""
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _sse(event: Event) -> bytes:
    name, data = event
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {payload}\n\n".encode()


@attrs.frozen
class _Plan:
    """How to answer one model request."""

    turn: Turn
    answer: _Answer | None = None


class FakeModelServer:
    """A fake LLM API on 127.0.0.1 that speaks Anthropic, OpenAI and Gemini wire protocols.

    Every test gets its own server; use it as a context manager::

        with FakeModelServer(reply="done") as server:
            server.script([ToolCall(command="touch /tmp/x"), Text("ran it")])
            ...  # point a CLI at server.url
            server.wait_for_requests(2, timeout=10)

    ``netns`` (Linux, root) binds the listening socket inside that network
    namespace (a path such as ``/proc/PID/ns/net``) so that a CLI confined to the
    namespace can reach it; see :class:`beamagent.testing.LoopbackNamespace`.
    """

    def __init__(
        self,
        reply: str = DEFAULT_REPLY,
        host: str = "127.0.0.1",
        *,
        port: int = 0,
        model: str | None = None,
        netns: str | os.PathLike[str] | None = None,
        side_request: Callable[[Protocol, JSON], bool] | None = None,
    ) -> None:
        if not host.startswith("127.") and host not in ("localhost", "::1"):
            raise ValueError(f"FakeModelServer binds loopback only, not {host!r}")
        self.reply = reply
        self.host = host
        self.model = model
        self.side_request = side_request or is_side_request
        self._requested_port = port
        self._netns = netns
        self._lock = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._script: deque[Turn] = deque()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> FakeModelServer:
        """Bind a free port on loopback and serve on a background thread."""
        if self._httpd is not None:
            raise RuntimeError("FakeModelServer already started")
        self._stopping.clear()
        address = (self.host, self._requested_port)
        if self._netns is None:
            httpd = _HTTPServer(self, address)
        else:
            httpd = _in_network_namespace(self._netns, lambda: _HTTPServer(self, address))
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-model-serve-{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.debug("fake_model_started", url=self.url)
        return self

    def stop(self) -> None:
        """Stop serving, interrupt stalled responses and join every thread.

        Raises RuntimeError if a connection thread does not finish in time.
        """
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        httpd.shutdown()
        thread.join()
        httpd.drop_connections()
        stuck = httpd.join_threads(_JOIN_TIMEOUT_SECONDS)
        httpd.server_close()
        self._httpd = self._thread = None
        log.debug("fake_model_stopped", requests=len(self._requests))
        if stuck:
            raise RuntimeError(f"FakeModelServer.stop: threads did not finish: {stuck}")

    def __enter__(self) -> FakeModelServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The TCP port the server listens on (after start())."""
        if self._httpd is None:
            raise RuntimeError("FakeModelServer is not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT`` (no trailing slash, no ``/v1``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- scripting and inspection

    def script(self, turns: Sequence[Turn]) -> None:
        """Queue turns; each model request consumes the next one.

        Side requests (:func:`is_side_request`) and non-model endpoints consume
        none. When the queue is empty, requests get ECHO or the default reply.
        """
        for turn in turns:
            if not isinstance(turn, Text | ToolCall | ErrorStatus | Stall | Malformed):
                raise TypeError(f"not a scripted turn: {turn!r}")
        with self._lock:
            self._script.extend(turns)

    @property
    def pending_turns(self) -> int:
        """How many scripted turns have not been used yet."""
        with self._lock:
            return len(self._script)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def model_requests(self) -> list[RecordedRequest]:
        """The requests that were model calls (messages, responses, chat, Gemini)."""
        return [r for r in self.requests if r.turn is not None]

    def wait_for_requests(
        self,
        n: int,
        timeout: float,
        predicate: Callable[[RecordedRequest], bool] | None = None,
    ) -> list[RecordedRequest]:
        """Block until ``n`` requests (matching ``predicate``, if given) have arrived.

        Returns the matching requests; raises TimeoutError after ``timeout`` seconds.
        """

        def matching() -> list[RecordedRequest]:
            return [r for r in self._requests if predicate is None or predicate(r)]

        with self._lock:
            if not self._lock.wait_for(lambda: len(matching()) >= n, timeout):
                raise TimeoutError(
                    f"FakeModelServer got {len(matching())} matching requests, wanted {n} "
                    f"within {timeout} s; all: {[(r.method, r.path) for r in self._requests]}"
                )
            return matching()

    # -- request handling (connection threads)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()
        log.debug(
            "fake_model_request_received",
            method=request.method,
            path=request.path,
            protocol=request.protocol.value,
            turn=type(request.turn).__name__ if request.turn else None,
        )

    def _stall(self, stall: Stall) -> None:
        if self._stopping.wait(stall.seconds):
            raise _Stopped

    def _handle(self, handler: _Handler) -> None:
        split = urlsplit(handler.path)
        path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        body = handler.read_body() if handler.command not in ("GET", "HEAD") else b""
        received_at = time.monotonic()
        try:
            payload: JSON = json.loads(body) if body else None
        except ValueError:
            payload = None
        headers = {k.lower(): v for k, v in handler.headers.items()}
        protocol = _protocol_of(handler.command, path)
        plan = (
            self._plan(protocol, path, payload, len(body))
            if protocol is not Protocol.OTHER
            else None
        )
        self._record(
            RecordedRequest(
                method=handler.command,
                path=path,
                query=query,
                headers=headers,
                body_bytes=body,
                json=payload,
                protocol=protocol,
                turn=plan.turn if plan else None,
                received_at=received_at,
            )
        )
        try:
            if plan is None:
                self._answer_other(handler, path, payload)
            else:
                self._answer_model(handler, protocol, path, payload, plan)
        except _Stopped:
            handler.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True
            log.debug("fake_model_client_went_away", path=path)

    def _plan(self, protocol: Protocol, path: str, body: JSON, size: int) -> _Plan:
        model = self.model or _model_of(protocol, path, body)
        input_tokens = max(1, size // 4)
        schema = _response_schema(protocol, body)
        if schema is not None:
            text = json.dumps(example_from_schema(schema))
            return _Plan(
                Text(text), _Answer(text, None, input_tokens, _estimate_tokens(text), model)
            )
        turn: Turn | None = None
        if not self.side_request(protocol, body):
            with self._lock:
                turn = self._script[0] if self._script else None
                search = self._tool_search(protocol, body, turn)
                if search is None and turn is not None:
                    self._script.popleft()
            if search is not None:
                size_out = _estimate_tokens(json.dumps(search.arguments))
                searched = ToolCall("", tool="tool_search", arguments=search.arguments)
                return _Plan(searched, _Answer("", search, input_tokens, size_out, model))
        if turn is None:
            echoed = _echo_text(_last_message(protocol, body))
            turn = Text(echoed if echoed is not None else self.reply)
        content = turn.then if isinstance(turn, Stall) else turn
        if isinstance(content, ErrorStatus | Malformed):
            return _Plan(turn)
        if content is None:
            content = Text(self.reply)
        if isinstance(content, Text):
            answer = _Answer(
                content.text, None, input_tokens, _estimate_tokens(content.text), model
            )
        else:
            tool_use = self._tool_use(protocol, body, content)
            size_out = _estimate_tokens(json.dumps(tool_use.arguments))
            answer = _Answer("", tool_use, input_tokens, size_out, model)
        return _Plan(turn, answer)

    def _tool_search(self, protocol: Protocol, body: JSON, turn: Turn | None) -> _ToolUse | None:
        """A ``tool_search_call`` to answer first, when ``turn`` forces a tool not yet offered.

        Only for a Responses client that offers a client-side ``tool_search`` tool
        (Codex defers MCP tools behind it), and once per tool: a search that found
        nothing is not repeated.
        """
        call = turn.then if isinstance(turn, Stall) else turn
        if (
            protocol is not Protocol.OPENAI_RESPONSES
            or not isinstance(call, ToolCall)
            or call.tool is None
        ):
            return None
        offered = _tools_of(protocol, body)
        if not any(t.kind == "tool_search" for t in offered):
            return None
        if _find_tool([*offered, *_discovered_tools(body)], call.tool) is not None:
            return None
        query = call.tool.rsplit("__", 1)[-1]
        items = _as_dict(body).get("input")
        for item in items if isinstance(items, list) else []:
            item = _as_dict(item)
            if item.get("type") == "tool_search_call" and _as_dict(item.get("arguments")).get(
                "query"
            ) in (query, call.tool):
                return None  # searched already, in vain: call it anyway, as named
        return _ToolUse(
            "tool_search", {"query": query, "limit": 8}, _new_id("call_fake"), "tool_search"
        )

    def _tool_use(self, protocol: Protocol, body: JSON, call: ToolCall) -> _ToolUse:
        offered = _tools_of(protocol, body)
        if protocol is Protocol.OPENAI_RESPONSES:
            offered += _discovered_tools(body)
        tool = _pick_tool(offered, call.tool) or _Tool("bash", {})
        if call.arguments is not None:
            arguments = dict(call.arguments)
        elif tool.kind == "local_shell":
            arguments = {"command": ["bash", "-lc", call.command]}
        elif tool.kind == "custom":
            arguments = {"input": call.command}
        else:
            arguments = shell_tool_arguments(tool.schema, call.command)
        prefix = "toolu_fake" if protocol is Protocol.ANTHROPIC else "call_fake"
        return _ToolUse(tool.name, arguments, _new_id(prefix), tool.kind, tool.namespace)

    def _answer_other(self, handler: _Handler, path: str, body: JSON) -> None:
        if handler.command in ("GET", "HEAD") and path in ("/", ""):
            handler.send_bytes(200, b"ok", "text/plain")
        elif handler.command == "GET" and path.rstrip("/").endswith("/models"):
            model = self.model or "fake-model"
            handler.send_json(
                200,
                {
                    "object": "list",
                    "data": [{"id": model, "object": "model", "created": 0, "owned_by": "fake"}],
                    # Anthropic's list shape, for clients that read it.
                    "has_more": False,
                    "first_id": model,
                    "last_id": model,
                },
            )
        elif handler.command == "POST" and path.rstrip("/").endswith("/messages/count_tokens"):
            handler.send_json(200, {"input_tokens": _estimate_tokens(json.dumps(body))})
        elif handler.command == "POST" and path.endswith(":countTokens"):
            handler.send_json(200, {"totalTokens": _estimate_tokens(json.dumps(body))})
        else:
            handler.send_json(
                404,
                _error_body(_guess_protocol(path), 404, f"fake model server: no route {path}"),
            )

    def _answer_model(
        self,
        handler: _Handler,
        protocol: Protocol,
        path: str,
        body: JSON,
        plan: _Plan,
    ) -> None:
        turn = plan.turn
        if isinstance(turn, ErrorStatus):
            if turn.body is not None:
                payload = turn.body.encode()
            else:
                payload = json.dumps(_error_body(protocol, turn.status, turn.message)).encode()
            handler.send_bytes(turn.status, payload, "application/json", turn.headers)
            return
        stream = _wants_stream(protocol, path, body)
        stall = turn if isinstance(turn, Stall) else None
        if isinstance(turn, Malformed):
            self._answer_malformed(handler, protocol, stream)
            return
        answer = plan.answer
        if answer is None:  # pragma: no cover - every non-error plan carries one
            raise AssertionError("plan without an answer")
        if not stream:
            document = _complete_body(protocol, answer)
            handler.send_bytes(200, json.dumps(document).encode(), "application/json", stall=stall)
            return
        handler.start_stream()
        if stall is not None:
            self._stall(stall)
        include_usage = bool(_as_dict(_as_dict(body).get("stream_options")).get("include_usage"))
        for event in _stream_events(protocol, answer, include_usage=include_usage):
            handler.write_chunk(_sse(event))
        handler.end_stream()

    def _answer_malformed(self, handler: _Handler, protocol: Protocol, stream: bool) -> None:
        if not stream:
            handler.send_bytes(
                200,
                b'{"id": "broken", "content": [',
                "application/json",
                {"Connection": "close"},
            )
            return
        handler.start_stream(close=True)
        first = _stream_events(protocol, _Answer("broken"), include_usage=False)[0]
        handler.write_chunk(_sse(first))
        name = "content_block_delta" if protocol is Protocol.ANTHROPIC else None
        handler.write_chunk(_sse((name, '{"type": "content_block_delta", "delta": {"te')))
        handler.end_stream()


def _wants_stream(protocol: Protocol, path: str, body: JSON) -> bool:
    if protocol is Protocol.GEMINI:
        return path.endswith(":streamGenerateContent")
    return bool(_as_dict(body).get("stream"))


def _stream_events(protocol: Protocol, answer: _Answer, *, include_usage: bool) -> list[Event]:
    if protocol is Protocol.ANTHROPIC:
        return _anthropic_events(answer)
    if protocol is Protocol.OPENAI_RESPONSES:
        return _responses_events(answer)
    if protocol is Protocol.OPENAI_CHAT:
        return _chat_events(answer, include_usage=include_usage)
    return _gemini_events(answer)


def _complete_body(protocol: Protocol, answer: _Answer) -> dict[str, JSON]:
    if protocol is Protocol.ANTHROPIC:
        return _anthropic_message(answer)
    if protocol is Protocol.OPENAI_RESPONSES:
        return _responses_body(answer)
    if protocol is Protocol.OPENAI_CHAT:
        return _chat_body(answer)
    return _gemini_body(answer)


def _model_of(protocol: Protocol, path: str, body: JSON) -> str:
    if protocol is Protocol.GEMINI:
        match = re.search(r"/models/([^/:]+):", path)
        return match.group(1) if match else "fake-model"
    model = _as_dict(body).get("model")
    return model if isinstance(model, str) and model else "fake-model"


def _guess_protocol(path: str) -> Protocol:
    if path.startswith("/v1beta"):
        return Protocol.GEMINI
    if "messages" in path:
        return Protocol.ANTHROPIC
    return Protocol.OPENAI_CHAT


def _in_network_namespace(netns: str | os.PathLike[str], make: Callable[[], _T]) -> _T:
    """Run ``make`` on a throwaway thread that first joins network namespace ``netns``.

    A network namespace belongs to a thread, and a socket stays in the namespace
    it was created in: the listening socket ends up inside, the process does not.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    result: list[_T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(netns, os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({os.fspath(netns)}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(make())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="fake-model-netns-bind")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]
