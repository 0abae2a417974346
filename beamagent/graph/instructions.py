"""Route instructions: what a node's result says should happen next.

A node's result resolves to a list of instructions; :func:`beamagent.graph.planning.plan`
turns that list into one decision for the executor. Instructions are frozen
values and have a JSON form (``{"type": ..., "value": ...}``) that a model can
write in the ``next`` list of its structured answer; :func:`parse_next` decodes
that list and never raises on anything a model (or JSON) can produce.

>>> parse_next([{"type": "route", "value": "review", "count": 2}, {"type": "retry", "value": "x"}])
[Route(node_id='review', count=2), Retry(reason='x')]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import attrs

from beamagent.log import get_logger

__all__ = [
    "MAX_ROUTE_COUNT",
    "End",
    "Instruction",
    "Retry",
    "Route",
    "Sub",
    "Yield",
    "parse_next",
]

log = get_logger(__name__)

#: Largest ``count`` that :func:`parse_next` accepts on a model-written route
#: entry. One entry must not be able to ask for millions of parallel copies.
MAX_ROUTE_COUNT = 100


def _non_empty_str(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty string, got {value!r}")


def _positive_int(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    # bool is an int subclass; ``count=True`` is a mistake, not one copy.
    if type(value) is not int or value < 1:
        raise ValueError(f"{attribute.name} must be an int >= 1, got {value!r}")


def _optional_str(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a string or None, got {value!r}")


def _empty_to_none(value: str | None) -> str | None:
    return value if value else None


@attrs.frozen
class Route:
    """Run node ``node_id`` next, as ``count`` parallel copies (each its own thread).

    >>> Route("review", count=2).to_dict()
    {'type': 'route', 'value': 'review', 'count': 2}
    """

    node_id: str = attrs.field(validator=_non_empty_str)
    count: int = attrs.field(default=1, validator=_positive_int)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; ``count`` is only written when it is not 1."""
        out: dict[str, Any] = {"type": "route", "value": self.node_id}
        if self.count != 1:
            out["count"] = self.count
        return out


@attrs.frozen
class Yield:
    """Wait until every live thread of the run has yielded or finished, then run ``node_id``."""

    node_id: str = attrs.field(validator=_non_empty_str)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"type": "yield", "value": self.node_id}


@attrs.frozen
class Sub:
    """Run the job ``job_id`` as a sub-job; its final instructions drive this thread."""

    job_id: str = attrs.field(validator=_non_empty_str)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"type": "sub", "value": self.job_id}


@attrs.frozen
class End:
    """Stop the whole run now, every thread (the run ends with status ``ended``)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (no value)."""
        return {"type": "end"}


@attrs.frozen
class Retry:
    """Run the same node again; ``reason`` is shown to it (an empty reason is ``None``)."""

    reason: str | None = attrs.field(
        default=None, converter=_empty_to_none, validator=_optional_str
    )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; ``value`` is only written when there is a reason."""
        out: dict[str, Any] = {"type": "retry"}
        if self.reason is not None:
            out["value"] = self.reason
        return out


Instruction: TypeAlias = Route | Yield | Sub | End | Retry
"""Any one route instruction."""

_INSTRUCTION_CLASSES = (Route, Yield, Sub, End, Retry)


def parse_next(entries: Any, *, max_count: int = MAX_ROUTE_COUNT) -> list[Instruction]:
    """Decode a model-written ``next`` list into instructions; never raises.

    Each entry is an object ``{"type": t, "value": v}``:

    - ``route`` / ``yield`` / ``sub`` need a non-empty string ``value`` (a node
      or job id). A ``route`` entry may also carry ``"count": n`` (an int,
      ``1 <= n <= max_count``) for n parallel copies; a bad count drops the entry.
    - ``end`` ignores ``value``.
    - ``retry`` keeps a non-empty string ``value`` as the retry reason (Agens
      drops it); any other value gives a bare :class:`Retry`.

    Instruction objects in the list are kept as they are, so a Python serving
    may put ``Route("b")`` in its result's ``next``. Anything else (unknown
    type, missing/empty/non-string value, an entry that is not an object) is
    dropped and logged at debug as ``next_entry_dropped``. Targets are not
    checked against the job's nodes here; the executor does that. A value that
    is not a list (or tuple) gives ``[]``.
    """
    if not isinstance(entries, list | tuple):
        if entries is not None:
            log.debug("next_entry_dropped", reason="next is not a list", got=type(entries).__name__)
        return []
    instructions: list[Instruction] = []
    for index, entry in enumerate(entries):
        decoded = _parse_entry(entry, max_count)
        if isinstance(decoded, str):
            log.debug("next_entry_dropped", index=index, reason=decoded, entry=_short(entry))
        else:
            instructions.append(decoded)
    return instructions


def _parse_entry(entry: Any, max_count: int) -> Instruction | str:
    """The instruction an entry means, or the reason it is dropped."""
    if isinstance(entry, _INSTRUCTION_CLASSES):
        return entry
    if not isinstance(entry, Mapping):
        return f"entry is a {type(entry).__name__}, not an object"
    kind = entry.get("type")
    value = entry.get("value")
    if kind == "end":
        return End()
    if kind == "retry":
        return Retry(value) if isinstance(value, str) else Retry()
    if kind not in ("route", "yield", "sub"):
        return f"unknown type {kind!r}"
    if not isinstance(value, str) or not value:
        return f"{kind} needs a non-empty string value"
    if kind == "yield":
        return Yield(value)
    if kind == "sub":
        return Sub(value)
    count = entry.get("count", 1)
    if type(count) is not int or not 1 <= count <= max_count:
        return f"route count must be an int from 1 to {max_count}"
    return Route(value, count)


def _short(value: Any, limit: int = 200) -> str:
    # Logged entries come from a model; keep one bad entry from flooding the log.
    try:
        text = repr(value)
    except Exception:  # a pathological value (e.g. nested too deep) must not break parsing
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."
