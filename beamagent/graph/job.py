"""Jobs: a graph of nodes, each with a serving (or a sub-job) and a router.

A :class:`Job` is checked when it is built: its start node exists, every node
has a serving or a sub-job, and the routers' statically known targets are nodes
of the job. :meth:`Job.from_dict` / :meth:`Job.from_json` load the JSON form,
which names servings and routers that the caller supplies by name.

>>> job = Job("hello", [Node("greet", serving=lambda message: "hi")], start="greet")
>>> job.node("greet").concurrency
10
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from beamagent.errors import InvalidJob, InvalidNode
from beamagent.graph.router import EdgeRouter, LinearRouter, Router
from beamagent.graph.serving import FunctionServing, NodeMessage, Serving

__all__ = ["Job", "Node"]

DEFAULT_CONCURRENCY = 10
DEFAULT_MAX_RETRIES = 3
DEFAULT_MAX_STEPS = 10_000

ServingLike = Serving | Callable[[NodeMessage], Any]

# Agens 0.2 job configs also carry "outputs"; their nodes "agent_id", "tools" and
# "resources". Those are kept, unused by the runtime, in ``metadata``.
_AGENS_JOB_KEYS = frozenset({"outputs"})
_AGENS_NODE_KEYS = frozenset({"agent_id", "tools", "resources"})
_JOB_KEYS = frozenset(
    {
        "id",
        "description",
        "start",
        "starting_node_id",
        "max_retries",
        "max_steps",
        "nodes",
        "metadata",
        *_AGENS_JOB_KEYS,
    }
)
_NODE_KEYS = frozenset(
    {"serving", "router", "objective", "sub", "concurrency", "metadata", *_AGENS_NODE_KEYS}
)


def _to_serving(value: ServingLike | None) -> Serving | None:
    if value is None or isinstance(value, Serving):
        return value
    if callable(value):
        return FunctionServing(value)
    raise InvalidJob(
        f"a node's serving must be a Serving (with handle(message)) or a function, got {value!r}"
    )


def _is_int(value: Any) -> bool:
    return type(value) is int


def _to_retry_on(value: Any) -> Any:
    # A single exception class is a one-item tuple; anything else is checked in validation.
    if isinstance(value, type):
        return (value,)
    if isinstance(value, list | tuple | set | frozenset):
        return tuple(value)
    return value


def _retry_on_problem(value: Any) -> str | None:
    if not isinstance(value, tuple) or not all(
        isinstance(t, type) and issubclass(t, Exception) for t in value
    ):
        return f"retry_on must be a tuple of Exception subclasses, got {value!r}"
    return None


def _string_keyed(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) for k in value)


def _to_metadata(value: Any) -> Any:
    # Copied, so that changing the caller's dict later cannot change a frozen node.
    return dict(value) if isinstance(value, Mapping) else value


@attrs.frozen
class Node:
    """One node of a job: a ``serving`` that runs, or a ``sub`` job id to run instead.

    ``router`` decides where a result goes when the result's own ``next`` does
    not; with no router and no ``next`` the thread finishes. ``objective`` is
    shown to the serving; ``concurrency`` limits the node's visits in flight.
    A plain function as ``serving`` is wrapped in a
    :class:`~beamagent.graph.serving.FunctionServing`.

    An exception from the serving ends the run (``ServingFailed``) unless it is
    retryable: :class:`~beamagent.errors.RetryRequested`, a transient backend
    error (:data:`~beamagent.graph.planning.TRANSIENT_ERRORS`), or an instance
    of a type in ``retry_on`` (a tuple of exception types; None takes the job's).
    ``metadata`` is free-form data about the node that the runtime does not
    read (Agens' ``agent_id``, ``tools`` and ``resources`` land there); a
    serving sees it as ``current_context().node.metadata``.

    >>> Node("fetch", serving=lambda m: "ok", retry_on=ConnectionError).retry_on
    (<class 'ConnectionError'>,)

    Raises:
        InvalidJob: both or neither of serving and sub, a bad router, objective,
            concurrency, retry_on or metadata (the message names the node).
    """

    id: str
    serving: Serving | None = attrs.field(default=None, converter=_to_serving)
    router: Router | None = None
    objective: str | None = None
    sub: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    retry_on: tuple[type[Exception], ...] | None = attrs.field(default=None, converter=_to_retry_on)
    metadata: Mapping[str, Any] = attrs.field(factory=dict, converter=_to_metadata, hash=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise InvalidJob(f"a node id must be a non-empty string, got {_short(self.id)}")
        where = f"node {self.id!r}"
        if (self.serving is None) == (self.sub is None):
            raise InvalidJob(f"{where} needs exactly one of serving or sub")
        if self.sub is not None and (not isinstance(self.sub, str) or not self.sub):
            raise InvalidJob(f"{where}: sub must be a job id (a non-empty string)")
        if self.router is not None and not isinstance(self.router, Router):
            raise InvalidJob(f"{where}: router must be a Router, got {self.router!r}")
        if self.objective is not None and not isinstance(self.objective, str):
            raise InvalidJob(f"{where}: objective must be a string")
        if not _is_int(self.concurrency) or self.concurrency < 1:
            raise InvalidJob(
                f"{where}: concurrency must be an int >= 1, got {_short(self.concurrency)}"
            )
        if self.retry_on is not None:
            problem = _retry_on_problem(self.retry_on)
            if problem is not None:
                raise InvalidJob(f"{where}: {problem}")
        if not _string_keyed(self.metadata):
            raise InvalidJob(f"{where}: metadata must be a mapping with string keys")


def _to_node_map(nodes: Iterable[Node] | Mapping[str, Node]) -> dict[str, Node]:
    if isinstance(nodes, Mapping):
        for key, node in nodes.items():
            if not isinstance(node, Node):
                raise InvalidJob(f"nodes[{key!r}] must be a Node, got {node!r}")
            if key != node.id:
                raise InvalidJob(f"nodes[{key!r}] holds the node {node.id!r}; the keys must be ids")
        return dict(nodes)
    if isinstance(nodes, str) or not isinstance(nodes, Iterable):
        raise InvalidJob(f"nodes must be a list or a mapping of Node, got {nodes!r}")
    by_id: dict[str, Node] = {}
    for node in nodes:
        if not isinstance(node, Node):
            raise InvalidJob(f"nodes must hold Node values, got {node!r}")
        if node.id in by_id:
            raise InvalidJob(f"two nodes have the id {node.id!r}")
        by_id[node.id] = node
    return by_id


@attrs.frozen
class Job:
    """A graph of nodes run from ``start``; checked on construction (see :meth:`validate`).

    ``nodes`` may be a list of :class:`Node` or a mapping of id to node.
    ``max_retries`` bounds the retries of one node visit; ``max_steps`` bounds
    the node visits of a whole run (cycles are allowed, unbounded ones are not).
    ``retry_on`` is the default of its nodes' ``retry_on`` (exception types a
    serving may raise and still be retried); ``metadata`` is free-form data the
    runtime does not read (an Agens config's ``outputs`` lands there).
    """

    id: str
    nodes: Mapping[str, Node] = attrs.field(converter=_to_node_map)
    start: str
    max_retries: int = DEFAULT_MAX_RETRIES
    max_steps: int = DEFAULT_MAX_STEPS
    description: str = ""
    retry_on: tuple[type[Exception], ...] = attrs.field(default=(), converter=_to_retry_on)
    metadata: Mapping[str, Any] = attrs.field(factory=dict, converter=_to_metadata)

    def __attrs_post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check the job; called on construction.

        Raises:
            InvalidJob: naming every problem found: a bad id, limit, retry_on or
                metadata, no nodes, an unknown start node, or a router naming
                unknown nodes.
        """
        if not isinstance(self.id, str) or not self.id:
            raise InvalidJob(f"a job id must be a non-empty string, got {_short(self.id)}")
        problems: list[str] = []
        if not self.nodes:
            problems.append("it has no nodes")
        if not isinstance(self.start, str):
            problems.append(f"start must be a node id (a string), got {_short(self.start)}")
        elif self.start not in self.nodes:
            problems.append(f"start node {self.start!r} is not one of its nodes")
        if not _is_int(self.max_retries) or self.max_retries < 0:
            problems.append(f"max_retries must be an int >= 0, got {_short(self.max_retries)}")
        if not _is_int(self.max_steps) or self.max_steps < 1:
            problems.append(f"max_steps must be an int >= 1, got {_short(self.max_steps)}")
        if not isinstance(self.description, str):
            problems.append("description must be a string")
        retry_problem = _retry_on_problem(self.retry_on)
        if retry_problem is not None:
            problems.append(retry_problem)
        if not _string_keyed(self.metadata):
            problems.append("metadata must be a mapping with string keys")
        for node in self.nodes.values():
            if node.router is not None:
                problems.extend(
                    f"node {node.id!r}: {problem}"
                    for problem in node.router.check_targets(node.id, self.nodes)
                )
        if problems:
            raise InvalidJob(f"job {self.id!r}: " + "; ".join(problems))

    def node(self, node_id: str) -> Node:
        """The node ``node_id``.

        Raises:
            InvalidNode: the job has no such node.
        """
        try:
            return self.nodes[node_id]
        except (KeyError, TypeError):
            raise InvalidNode(
                f"job {self.id!r} has no node {node_id!r}; its nodes: {', '.join(self.nodes)}"
            ) from None

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        servings: Mapping[str, ServingLike],
        routers: Mapping[str, Router] | None = None,
    ) -> Job:
        """Build a job from its JSON form, resolving servings and routers by name.

        The form::

            {"id": "review", "description": "...", "start": "draft",
             "max_retries": 3, "max_steps": 10000, "metadata": {...},
             "nodes": {"draft": {"serving": "writer", "router": "to_review",
                                 "objective": "...", "concurrency": 2,
                                 "metadata": {...}},
                       "check": {"serving": "grader",
                                 "router": {"edges": [...], "outputs": [...]}},
                       "summary": {"sub": "summarize", "router": {"order": [...]}}}}

        ``start`` may also be spelled ``starting_node_id`` (Agens). A router is
        a name in ``routers`` or inline: ``{"edges": [...], "outputs": [...]}``
        for an :class:`~beamagent.graph.router.EdgeRouter` or ``{"order": [...]}``
        for a :class:`~beamagent.graph.router.LinearRouter`. A null value is the
        same as a missing key.

        Agens 0.2 job configs load unchanged: the job's ``outputs`` goes to
        ``job.metadata["outputs"]``; a node's ``agent_id``, ``tools`` and
        ``resources`` go to ``node.metadata``; a node with both ``serving`` and
        ``sub`` (Agens requires a serving on sub nodes too) is a sub node, and
        its serving's name is kept as ``node.metadata["serving"]``.

        Raises:
            InvalidJob: any problem, naming the key or node: unknown keys, a
                missing id/start/nodes, an unknown serving or router name, a bad
                inline router, and everything :meth:`validate` checks.
        """
        if not isinstance(data, Mapping):
            raise InvalidJob(f"a job definition must be an object, got {type(data).__name__}")
        job_id: Any = data.get("id")
        where = f"job {_short(job_id)}"
        unknown = set(data) - _JOB_KEYS
        if unknown:
            raise InvalidJob(f"{where}: unknown keys {_names(unknown)}")
        given = {key: value for key, value in data.items() if value is not None}
        if "start" in given and "starting_node_id" in given:
            raise InvalidJob(f"{where}: give 'start' or 'starting_node_id', not both")
        for key in ("id", "nodes"):
            if key not in given:
                raise InvalidJob(f"{where}: missing key {key!r}")
        if "start" not in given and "starting_node_id" not in given:
            raise InvalidJob(f"{where}: missing key 'start'")
        raw_nodes = given["nodes"]
        if not isinstance(raw_nodes, Mapping):
            raise InvalidJob(f"{where}: 'nodes' must be an object of node id to node")
        metadata = _metadata(where, given, _AGENS_JOB_KEYS)
        nodes = [
            _node_from_dict(where, node_id, raw, servings, routers or {})
            for node_id, raw in raw_nodes.items()
        ]
        return cls(
            id=job_id,
            nodes=nodes,
            start=given["start"] if "start" in given else given["starting_node_id"],
            max_retries=given.get("max_retries", DEFAULT_MAX_RETRIES),
            max_steps=given.get("max_steps", DEFAULT_MAX_STEPS),
            description=given.get("description", ""),
            metadata=metadata,
        )

    @classmethod
    def from_json(
        cls,
        text: str | bytes,
        servings: Mapping[str, ServingLike],
        routers: Mapping[str, Router] | None = None,
    ) -> Job:
        """:meth:`from_dict` of a JSON text.

        Raises:
            InvalidJob: the text is not valid JSON, or anything :meth:`from_dict` raises.
        """
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise InvalidJob(f"the job definition is not valid JSON: {exc}") from None
        return cls.from_dict(data, servings, routers)


def _names(keys: Iterable[Any]) -> str:
    return ", ".join(sorted(repr(k) for k in keys))


def _short(value: Any, limit: int = 80) -> str:
    # Ids come from JSON: a list or an object as an id must not flood the message.
    try:
        text = repr(value)
    except Exception:  # nested too deep for repr
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def _metadata(where: str, given: Mapping[str, Any], agens_keys: Iterable[str]) -> dict[str, Any]:
    """``given["metadata"]`` plus the Agens keys of ``given`` (nulls already dropped)."""
    raw = given.get("metadata", {})
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) for k in raw):
        raise InvalidJob(f"{where}: metadata must be an object")
    metadata = dict(raw)
    for key in sorted(agens_keys):
        if key in given:
            if key in metadata:
                raise InvalidJob(f"{where}: {key!r} is given both as a key and in metadata")
            metadata[key] = given[key]
    return metadata


def _node_from_dict(
    job_where: str,
    node_id: Any,
    raw: Any,
    servings: Mapping[str, ServingLike],
    routers: Mapping[str, Router],
) -> Node:
    where = f"{job_where}: node {_short(node_id)}"
    if not isinstance(raw, Mapping):
        raise InvalidJob(f"{where} must be an object")
    unknown = set(raw) - _NODE_KEYS
    if unknown:
        raise InvalidJob(f"{where}: unknown keys {_names(unknown)}")
    given = {key: value for key, value in raw.items() if value is not None}
    for key in ("tools", "resources"):
        if key in given and not isinstance(given[key], list | tuple):
            raise InvalidJob(f"{where}: {key} must be a list")
    metadata = _metadata(where, given, _AGENS_NODE_KEYS)
    serving: ServingLike | None = None
    name = given.get("serving")
    if "sub" in given and "serving" in given:
        # Agens' sub node: its serving maps the sub-job's result (handle_sub); here the
        # node's router does, so the serving is only recorded.
        if not isinstance(name, str):
            raise InvalidJob(f"{where}: serving must be a serving name, got {_short(name)}")
        if "serving" in metadata:
            raise InvalidJob(f"{where}: 'serving' is given both as a key and in metadata")
        metadata["serving"] = name
    elif "serving" in given:
        if not isinstance(name, str) or name not in servings:
            known = ", ".join(sorted(servings)) or "none"
            raise InvalidJob(f"{where}: unknown serving {_short(name)}; known servings: {known}")
        serving = servings[name]
        if not isinstance(serving, Serving) and not callable(serving):
            raise InvalidJob(f"{where}: serving {name!r} is neither a Serving nor a function")
    router = _router_from_json(where, given.get("router"), routers)
    try:
        return Node(
            id=node_id,
            serving=serving,
            router=router,
            objective=given.get("objective"),
            sub=given.get("sub"),
            concurrency=given.get("concurrency", DEFAULT_CONCURRENCY),
            metadata=metadata,
        )
    except InvalidJob as exc:
        raise InvalidJob(f"{job_where}: {exc}") from None


def _router_from_json(where: str, raw: Any, routers: Mapping[str, Router]) -> Router | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        if raw not in routers:
            known = ", ".join(sorted(routers)) or "none"
            raise InvalidJob(f"{where}: unknown router {raw!r}; known routers: {known}")
        return routers[raw]
    if not isinstance(raw, Mapping):
        raise InvalidJob(f"{where}: router must be a router name or an inline router object")
    try:
        if "edges" in raw:
            return EdgeRouter.from_dict(raw)
        if "order" in raw:
            unknown = set(raw) - {"order"}
            if unknown:
                raise ValueError(f"unknown router keys: {_names(unknown)}")
            return LinearRouter(raw["order"])
    except (ValueError, TypeError) as exc:
        raise InvalidJob(f"{where}: router: {exc}") from None
    raise InvalidJob(f"{where}: an inline router needs 'edges' (edge router) or 'order' (linear)")
