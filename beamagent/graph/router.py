"""Routers: from a node's structured outputs to route instructions.

A :class:`Router` declares the outputs a node must produce (:meth:`Router.outputs`)
and maps their values onto instructions (:meth:`Router.resolve`).
:meth:`Router.route` validates a result's outputs first and asks for a retry,
naming what is wrong, when they do not fit; :meth:`Router.route_with_next` lets
a model-written ``next`` list override the static decision.

Two ready-made routers: :class:`EdgeRouter` (conditional edges with fallbacks)
and :class:`LinearRouter` (a fixed sequence of nodes).

>>> router = LinearRouter(["draft", "review"])
>>> router.route(NodeMessage(run_id="r", job_id="j", node_id="draft"), {})
[Route(node_id='review', count=1)]
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import attrs

from beamagent.errors import InvalidNode
from beamagent.graph.instructions import End, Instruction, Retry, Route, Sub, Yield, parse_next
from beamagent.graph.outputs import Condition, Output
from beamagent.graph.serving import NodeMessage

__all__ = ["Edge", "EdgeKind", "EdgeRouter", "LinearRouter", "Router"]


class Router(abc.ABC):
    """Maps a node's structured outputs onto route instructions.

    Subclasses implement :meth:`outputs` and :meth:`resolve`; :meth:`route` and
    :meth:`route_with_next` are what the executor calls. A router is shared by
    every visit of its nodes and may be called from several threads at once,
    so it should hold no mutable state.
    """

    @abc.abstractmethod
    def outputs(self, message: NodeMessage) -> list[Output]:
        """The outputs a node must produce for this message (without values).

        Every declared key must be present in the result; the list is also the
        schema a model is asked to answer in and the input of :meth:`resolve`.
        """

    @abc.abstractmethod
    def resolve(self, message: NodeMessage, outputs: list[Output]) -> list[Instruction]:
        """The instructions for these outputs (declared order, values filled in).

        An empty list finishes the thread.
        """

    def route(
        self, message: NodeMessage, result_outputs: Mapping[str, Any] | Any
    ) -> list[Instruction]:
        """Validate a result's outputs against the declared ones, then :meth:`resolve`.

        No declared outputs: ``resolve(message, [])``. Otherwise the result's
        outputs must be a mapping holding every declared key; each value is
        coerced to its output's type and checked against min/max/choices
        (``None`` is allowed). Any problem gives ``[Retry(reason)]`` whose
        reason names the missing keys or bad values, so a model can fix them.
        """
        declared = self.outputs(message)
        if not declared:
            return self.resolve(message, [])
        keys = ", ".join(repr(o.key) for o in declared)
        if not isinstance(result_outputs, Mapping):
            return [Retry(f"the outputs must be an object with the keys {keys}")]
        missing = [o.key for o in declared if o.key not in result_outputs]
        if missing:
            return [
                Retry(
                    "the outputs are missing the required keys "
                    + ", ".join(repr(k) for k in missing)
                )
            ]
        filled: list[Output] = []
        problems: list[str] = []
        for output in declared:
            try:
                filled.append(output.with_value(output.check_value(result_outputs[output.key])))
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            return [Retry("the outputs have bad values: " + "; ".join(problems))]
        return self.resolve(message, filled)

    def route_with_next(
        self,
        message: NodeMessage,
        result_outputs: Mapping[str, Any] | Any,
        next_entries: Any,
    ) -> list[Instruction]:
        """A non-empty ``next`` with at least one usable entry overrides :meth:`route`.

        ``next_entries`` is read with :func:`~beamagent.graph.instructions.parse_next`;
        when it is empty, missing, or holds nothing usable, static routing decides.
        (In a run, the node actor gives it the entries already decoded, and reports
        the dropped ones in a ``next_dropped`` event.)

        Raises:
            InvalidNext: ``next_entries`` is not a list, a tuple or None.
        """
        dynamic = parse_next(next_entries)
        if dynamic:
            return dynamic
        return self.route(message, result_outputs)

    def check_targets(self, node_id: str, node_ids: Collection[str]) -> list[str]:
        """Problems with the targets this router can name, when known statically.

        ``node_id`` is the node using the router, ``node_ids`` every node of the
        job. :class:`~beamagent.graph.job.Job` calls this to reject a job whose
        routers name nodes it does not have. The default knows nothing: ``[]``.
        """
        return []


class EdgeKind(enum.StrEnum):
    """What an :class:`Edge` does when taken."""

    ROUTE = "route"
    FALLBACK = "fallback"
    YIELD = "yield"
    SUB = "sub"
    END = "end"
    RETRY = "retry"


_KINDS_WITH_TARGET = frozenset({EdgeKind.ROUTE, EdgeKind.FALLBACK, EdgeKind.YIELD, EdgeKind.SUB})
_KINDS_TO_NODES = frozenset({EdgeKind.ROUTE, EdgeKind.FALLBACK, EdgeKind.YIELD})


def _to_edge_kind(value: EdgeKind | str) -> EdgeKind:
    if isinstance(value, EdgeKind):
        return value
    if isinstance(value, str):
        try:
            return EdgeKind(value.strip().lower())
        except ValueError:
            pass
    known = ", ".join(k.value for k in EdgeKind)
    raise ValueError(f"unknown edge kind {value!r}; known kinds: {known}")


def _to_conditions(value: Iterable[Condition | Mapping[str, Any]]) -> tuple[Condition, ...]:
    if isinstance(value, str | Mapping) or not isinstance(value, Iterable):
        raise ValueError(f"conditions must be a list, got {value!r}")
    return tuple(c if isinstance(c, Condition) else Condition.from_dict(c) for c in value)


@attrs.frozen
class Edge:
    """One edge of an :class:`EdgeRouter`: taken when all its ``conditions`` pass.

    ``route``/``fallback`` run node ``to`` (``count`` copies), ``yield`` joins at
    node ``to``, ``sub`` runs job ``to``, ``end`` ends the run and ``retry`` asks
    for the node again (with ``reason``). Fallback edges are only considered
    when no other edge is taken.

    Raises:
        ValueError: a missing or superfluous ``to``, a bad ``count``, or a
            ``reason`` on an edge that is not a retry.
    """

    kind: EdgeKind = attrs.field(converter=_to_edge_kind)
    to: str | None = None
    count: int = 1
    conditions: tuple[Condition, ...] = attrs.field(default=(), converter=_to_conditions)
    reason: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.kind in _KINDS_WITH_TARGET:
            if not isinstance(self.to, str) or not self.to:
                raise ValueError(f"{self.kind} edges need 'to' (a non-empty string)")
        elif self.to is not None:
            raise ValueError(f"{self.kind} edges take no 'to'")
        if type(self.count) is not int or self.count < 1:
            raise ValueError(f"edge count must be an int >= 1, got {self.count!r}")
        if self.count != 1 and self.kind not in (EdgeKind.ROUTE, EdgeKind.FALLBACK):
            raise ValueError(f"{self.kind} edges take no count")
        if self.reason is not None and (
            self.kind is not EdgeKind.RETRY or not isinstance(self.reason, str)
        ):
            raise ValueError("only retry edges take a reason (a string)")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Edge:
        """Build an edge from its JSON form.

        Keys: ``kind`` (or ``type``, as in Agens), ``to`` (or ``to_id``),
        ``count``, ``conditions`` (list of ``{"key", "op", "value"}``), ``reason``.

        Raises:
            ValueError: not an object, an unknown key, or a bad value.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"an edge must be an object, got {data!r}")
        allowed = {"kind", "type", "to", "to_id", "count", "conditions", "reason"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown edge keys: {', '.join(sorted(map(str, unknown)))}")
        for first, second in (("kind", "type"), ("to", "to_id")):
            if first in data and second in data:
                raise ValueError(f"an edge takes {first!r} or {second!r}, not both")
        if "kind" not in data and "type" not in data:
            raise ValueError("an edge needs a 'kind'")
        return cls(
            kind=data.get("kind", data.get("type")),
            to=data.get("to", data.get("to_id")),
            count=data.get("count", 1),
            conditions=data.get("conditions", ()),
            reason=data.get("reason"),
        )

    def matches(self, outputs: list[Output]) -> bool:
        """Whether every condition passes on these outputs (no conditions: always)."""
        return all(condition.check(outputs) for condition in self.conditions)

    def instruction(self) -> Instruction:
        """The instruction this edge gives when taken."""
        if self.kind in (EdgeKind.ROUTE, EdgeKind.FALLBACK):
            assert self.to is not None  # checked on construction
            return Route(self.to, self.count)
        if self.kind is EdgeKind.YIELD:
            assert self.to is not None
            return Yield(self.to)
        if self.kind is EdgeKind.SUB:
            assert self.to is not None
            return Sub(self.to)
        if self.kind is EdgeKind.END:
            return End()
        return Retry(self.reason)


def _to_edges(value: Iterable[Edge | Mapping[str, Any]]) -> tuple[Edge, ...]:
    if isinstance(value, str | Mapping) or not isinstance(value, Iterable):
        raise ValueError(f"edges must be a list, got {value!r}")
    edges: list[Edge] = []
    for index, edge in enumerate(value):
        if isinstance(edge, Edge):
            edges.append(edge)
            continue
        try:
            edges.append(Edge.from_dict(edge))
        except ValueError as exc:
            raise ValueError(f"edge {index}: {exc}") from None
    return tuple(edges)


def _to_outputs(value: Iterable[Output | Mapping[str, Any]]) -> tuple[Output, ...]:
    if isinstance(value, str | Mapping) or not isinstance(value, Iterable):
        raise ValueError(f"outputs must be a list, got {value!r}")
    return tuple(o if isinstance(o, Output) else Output.from_dict(o) for o in value)


@attrs.frozen
class EdgeRouter(Router):
    """A router of conditional edges.

    Every non-fallback edge whose conditions all pass is taken, in order (more
    than one fans out). When none is taken, every fallback edge whose
    conditions pass is taken instead. No edge taken finishes the thread.
    ``outputs`` declares the outputs the node must produce; edges and outputs
    may be given as objects or in their JSON form.

    >>> router = EdgeRouter(
    ...     [Edge("route", "publish", conditions=[Condition("score", "gte", 7)]),
    ...      Edge("fallback", "rewrite")],
    ...     outputs=[Output("score", "int")],
    ... )
    >>> router.route(NodeMessage(run_id="r", job_id="j", node_id="grade"), {"score": "5"})
    [Route(node_id='rewrite', count=1)]
    """

    edges: tuple[Edge, ...] = attrs.field(converter=_to_edges)
    declared: tuple[Output, ...] = attrs.field(default=(), converter=_to_outputs, alias="outputs")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EdgeRouter:
        """Build from ``{"edges": [...], "outputs": [...]}`` (``outputs`` optional).

        Raises:
            ValueError: not an object, an unknown key, or a bad edge or output.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"an edge router must be an object, got {data!r}")
        unknown = set(data) - {"edges", "outputs"}
        if unknown:
            raise ValueError(f"unknown router keys: {', '.join(sorted(map(str, unknown)))}")
        if "edges" not in data:
            raise ValueError("an edge router needs 'edges'")
        return cls(data["edges"], data.get("outputs", ()))

    def outputs(self, message: NodeMessage) -> list[Output]:
        """The declared outputs."""
        return list(self.declared)

    def resolve(self, message: NodeMessage, outputs: list[Output]) -> list[Instruction]:
        """The instructions of the edges taken (see the class docstring)."""
        taken = [
            e.instruction()
            for e in self.edges
            if e.kind is not EdgeKind.FALLBACK and e.matches(outputs)
        ]
        if taken:
            return taken
        return [
            e.instruction()
            for e in self.edges
            if e.kind is EdgeKind.FALLBACK and e.matches(outputs)
        ]

    def check_targets(self, node_id: str, node_ids: Collection[str]) -> list[str]:
        """Route, fallback and yield edges must name nodes of the job (sub edges name jobs)."""
        return [
            f"router edge {index} ({edge.kind}) names unknown node {edge.to!r}"
            for index, edge in enumerate(self.edges)
            if edge.kind in _KINDS_TO_NODES and edge.to not in node_ids
        ]


def _to_order(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"order must be a list of node ids, got {value!r}")
    return tuple(value)


@attrs.frozen
class LinearRouter(Router):
    """Route to the node after the current one in ``order``; ``End`` after the last.

    Raises:
        ValueError: an empty order, a non-string or empty id, or a repeated id
            (the next node would be ambiguous).
    """

    order: tuple[str, ...] = attrs.field(converter=_to_order)

    def __attrs_post_init__(self) -> None:
        if not self.order:
            raise ValueError("a linear router needs at least one node id")
        if not all(isinstance(n, str) and n for n in self.order):
            raise ValueError(f"linear router node ids must be non-empty strings: {self.order!r}")
        if len(set(self.order)) != len(self.order):
            raise ValueError(f"linear router order repeats a node id: {self.order!r}")

    def outputs(self, message: NodeMessage) -> list[Output]:
        """No outputs are needed."""
        return []

    def resolve(self, message: NodeMessage, outputs: list[Output]) -> list[Instruction]:
        """``Route`` to the next node in order, ``End`` after the last.

        Raises:
            InvalidNode: the message's node is not in the order.
        """
        try:
            position = self.order.index(message.node_id)
        except ValueError:
            raise InvalidNode(
                f"node {message.node_id!r} is not in the linear router's order {list(self.order)}"
            ) from None
        if position + 1 == len(self.order):
            return [End()]
        return [Route(self.order[position + 1])]

    def check_targets(self, node_id: str, node_ids: Collection[str]) -> list[str]:
        """Every node of the order must exist, and so must the using node be in it."""
        problems = [
            f"linear router names unknown node {n!r}" for n in self.order if n not in node_ids
        ]
        if node_id not in self.order:
            problems.append(
                f"uses a linear router whose order {list(self.order)} does not include it"
            )
        return problems
