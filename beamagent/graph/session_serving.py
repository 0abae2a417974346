"""``SessionServing``: a node served by a model, through a session chosen by routing.

The serving renders the node's prompt, appends the JSON schema of the answer
it wants (:func:`~beamagent.graph.outputs.outputs_schema` of the node router's
outputs: ``body``, ``outputs``, ``next``, ``tool_calls``), runs it as a query on
a session, and reads the answer with
:func:`~beamagent.graph.serving.parse_structured_answer`. A malformed answer is
a :class:`~beamagent.errors.RetryRequested`: the node runs again and the next
prompt says what was wrong.

The session is started with ``runtime.start_session(routing=..., **options)``
(or on an explicit ``backend``), once per run, node and parallel copy, and
reused for that copy's later visits, so a node keeps its conversation across
retries and tool rounds; the run's end stops them.

>>> serving = SessionServing("Triage this ticket: {input}", backend="local")
>>> sorted(serving.fields)
['input']
"""

from __future__ import annotations

import json
import string
import threading
from collections.abc import Callable, Mapping
from typing import Any

from beamagent.errors import InvalidOption, QueryFailed, RunError
from beamagent.graph.node import current_context
from beamagent.graph.outputs import outputs_schema
from beamagent.graph.router import Router
from beamagent.graph.serving import NodeMessage, Result, ToolRegistry, parse_structured_answer
from beamagent.log import get_logger
from beamagent.messages import Message, MessageType
from beamagent.tools._tool import ToolSet

__all__ = ["PROMPT_FIELDS", "SessionServing"]

log = get_logger(__name__)

PROMPT_FIELDS = frozenset(
    {
        "input",
        "objective",
        "previous",
        "previous_outputs",
        "joined",
        "node_id",
        "job_id",
        "run_id",
        "thread_id",
        "step",
        "retries",
    }
)
"""The ``{fields}`` a prompt template may use."""

PromptTemplate = str | Callable[[NodeMessage], str]


def _fields_of(template: str) -> frozenset[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InvalidOption(f"prompt template is not a valid format string: {exc}") from None
    names = set()
    for _literal, field, _spec, _conversion in parsed:
        if field is None:
            continue
        name = field.split(".", 1)[0].split("[", 1)[0]
        if not name or name.isdigit():
            raise InvalidOption(
                "prompt template fields must be named ({input}, {previous}...), "
                f"got {{{field}}}"
            )
        names.add(name)
    unknown = names - PROMPT_FIELDS
    if unknown:
        raise InvalidOption(
            f"prompt template names unknown fields {sorted(unknown)}; "
            f"known fields: {', '.join(sorted(PROMPT_FIELDS))}"
        )
    return frozenset(names)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


class SessionServing:
    """Serve a node with a model: render the prompt, query a session, parse the answer.

    Args:
        prompt_template: a ``str.format`` template over :data:`PROMPT_FIELDS`
            (``"Summarise {input}"``), or a function of the
            :class:`~beamagent.graph.serving.NodeMessage` returning the prompt.
        router: the router whose outputs make the answer's schema; defaults
            to the router of the node being served.
        routing: a route request (``{"policy": "round_robin", ...}``) for
            ``start_session(routing=...)``.
        backend: a backend name for ``start_session`` (with ``routing``, the
            explicit backend routing must accept).
        session_options: more ``start_session`` options (``model``, ``cwd``,
            a ``local`` backend's ``reply``...).
        tools: Python tools the model may call; their definitions go in the
            prompt and the node actor runs the calls.
        session_tools: Python tools (``@beamagent.tools.tool``) given to the
            node's session itself: the agent calls them as it works (served
            over MCP to a CLI, run in-process by ``openai``; see
            ``docs/tools.md``), and each call's ``ToolContext`` carries the
            run and node ids.
        system: text put before every prompt.
        timeout: seconds one query may take.
        query_params: extra parameters passed to every query.
        runtime: the runtime to start sessions on; defaults to the run's.

    Raises:
        InvalidOption: a template that names unknown fields, or a bad option.
    """

    def __init__(
        self,
        prompt_template: PromptTemplate,
        *,
        router: Router | None = None,
        routing: Any = None,
        backend: str | None = None,
        session_options: Mapping[str, Any] | None = None,
        tools: ToolRegistry | None = None,
        session_tools: Any = None,
        system: str | None = None,
        timeout: float = 120.0,
        query_params: Mapping[str, Any] | None = None,
        runtime: Any = None,
    ) -> None:
        """See the class docstring."""
        if isinstance(prompt_template, str):
            self.fields = _fields_of(prompt_template)
        elif callable(prompt_template):
            self.fields = frozenset()
        else:
            raise InvalidOption(
                f"prompt_template must be a str or a function, got {type(prompt_template).__name__}"
            )
        if router is not None and not isinstance(router, Router):
            raise InvalidOption(f"router must be a Router, got {router!r}")
        if tools is not None and not isinstance(tools, ToolRegistry):
            raise InvalidOption(f"tools must be a ToolRegistry, got {tools!r}")
        self.session_tools = (
            None if session_tools is None else ToolSet.of(session_tools, "session_tools")
        )
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            raise InvalidOption(f"timeout must be seconds > 0, got {timeout!r}")
        self.prompt_template = prompt_template
        self.router = router
        self.routing = routing
        self.backend = backend
        self.session_options = dict(session_options or {})
        self.tools = tools
        self.system = system
        self.timeout = float(timeout)
        self.query_params = dict(query_params or {})
        self.runtime = runtime
        self._lock = threading.Lock()
        self._sessions: dict[tuple[str, str, int], Any] = {}

    def __repr__(self) -> str:
        return f"SessionServing({self.prompt_template!r}, backend={self.backend!r})"

    # --- the prompt ---------------------------------------------------------------------------

    def schema(self, message: NodeMessage, router: Router | None = None) -> dict[str, Any]:
        """The JSON schema of the answer for this message (from the router's outputs)."""
        chosen = self.router if self.router is not None else router
        return outputs_schema(chosen.outputs(message) if chosen is not None else [])

    def render(self, message: NodeMessage) -> str:
        """The node's own prompt for this message (the template, filled in)."""
        template = self.prompt_template
        if not isinstance(template, str):
            return str(template(message))
        previous = message.previous_result
        values = {
            "input": _text(message.input),
            "objective": message.node_objective or "",
            "previous": previous.body if previous is not None else "",
            "previous_outputs": _text(dict(previous.outputs)) if previous is not None else "{}",
            "joined": "\n\n".join(r.body for r in message.joined),
            "node_id": message.node_id,
            "job_id": message.job_id,
            "run_id": message.run_id,
            "thread_id": message.thread_id,
            "step": message.step,
            "retries": message.retries,
        }
        return template.format_map(values)

    def prompt(
        self,
        message: NodeMessage,
        router: Router | None = None,
        tools: ToolRegistry | None = None,
    ) -> str:
        """The whole prompt: system text, the rendered template, retry reason, tool
        results, tool definitions (this serving's tools, else ``tools``), and the
        answer's JSON schema (this serving's router, else ``router``)."""
        parts = []
        if self.system:
            parts.append(self.system)
        if message.node_objective and "objective" not in self.fields:
            parts.append(f"Objective: {message.node_objective}")
        parts.append(self.render(message))
        if message.retry_reason:
            parts.append(
                f"Your previous answer was not accepted: {message.retry_reason}. Answer again."
            )
        if message.tool_results:
            lines = [
                f"- {r.name} ({r.id}){' [error]' if r.is_error else ''}: {r.content}"
                for r in message.tool_results
            ]
            parts.append("Results of your tool calls:\n" + "\n".join(lines))
        offered = self.tools if self.tools is not None else tools
        if offered is not None and offered.names():
            parts.append(
                "Tools you may call (list them in tool_calls; you will get their results):\n"
                + json.dumps(offered.definitions(), ensure_ascii=False)
            )
        parts.append(
            "Answer with one JSON object matching this JSON schema, and nothing else:\n"
            + json.dumps(self.schema(message, router), ensure_ascii=False)
        )
        return "\n\n".join(parts)

    # --- serving ------------------------------------------------------------------------------

    def handle(self, message: NodeMessage) -> Result:
        """Run the prompt on this node copy's session and parse the structured answer.

        Raises:
            RetryRequested: the answer is not the JSON object asked for (retried).
            InvalidNext: the answer's ``next`` is not a list (the run ends).
            QueryFailed: the backend answered with an error result (retried).
            SessionError, QueryTimeout: the session failed or the model did not
                answer in time (retried).
            RunError: no runtime to start a session on (the run ends).
            BeamAgentError: anything else ``start_session`` or the query refused
                (the run ends unless the node's ``retry_on`` lists it).
        """
        context = current_context()
        router = context.node.router if context is not None else None
        tools = context.tools if context is not None else None
        session = self._session(message, context)
        prompt = self.prompt(message, router, tools)
        messages = session.query(prompt, timeout=self.timeout, **self.query_params)
        return parse_structured_answer(_answer(messages))

    def _session(self, message: NodeMessage, context: Any) -> Any:
        copy = context.copy if context is not None else 0
        key = (message.run_id, message.node_id, copy)
        with self._lock:
            session = self._sessions.get(key)
        if session is not None:
            return session
        runtime = self.runtime if self.runtime is not None else getattr(context, "runtime", None)
        if runtime is None:
            raise RunError(
                "SessionServing has no runtime: run it through runtime.run_job, "
                "or pass runtime= to SessionServing"
            )
        options = dict(self.session_options)
        if self.routing is not None:
            options["routing"] = self.routing
        if self.session_tools is not None:
            options["tools"] = self.session_tools
        if "tools" in options or bool(getattr(runtime, "tools", None)):
            # The node's calls of Python tools say which run and node they serve.
            options.setdefault(
                "tool_context", {"run_id": message.run_id, "node_id": message.node_id}
            )
        session = runtime.start_session(self.backend, **options)
        with self._lock:
            self._sessions[key] = session
        log.debug(
            "node_session_started",
            run_id=message.run_id,
            node_id=message.node_id,
            session_id=session.session_id,
        )
        return session

    def sessions(self, run_id: str | None = None) -> list[Any]:
        """The sessions this serving holds (of one run, or of all)."""
        with self._lock:
            return [s for k, s in self._sessions.items() if run_id is None or k[0] == run_id]

    def close_run(self, run_id: str) -> None:
        """Stop the sessions of run ``run_id`` (the executor calls this when the run ends)."""
        with self._lock:
            keys = [k for k in self._sessions if k[0] == run_id]
            sessions = [self._sessions.pop(k) for k in keys]
        for session in sessions:
            try:
                session.stop()
            except Exception as exc:  # already gone: nothing to release
                log.debug("node_session_stop_failed", run_id=run_id, error=repr(exc))


def _answer(messages: list[Message]) -> Any:
    """The answer in a query's messages: structured output, the result text, or the text."""
    for message in reversed(messages):
        if message.type is MessageType.RESULT:
            if message.is_error:
                raise QueryFailed(
                    f"the model's query failed ({message.subtype}): {message.content or ''}",
                    message.subtype,
                )
            if message.structured_output is not None:
                return message.structured_output
            if message.content:
                return message.content
            break
    texts = [m.content for m in messages if m.type is MessageType.ASSISTANT and m.content]
    return "".join(texts)
