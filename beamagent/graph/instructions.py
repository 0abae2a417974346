"""Route instructions: what a node's result says should happen next.

A node's result resolves to a list of instructions; :func:`beamagent.graph.planning.plan`
turns that list into one decision for the executor. Instructions are frozen
values and have a JSON form (``{"type": ..., "value": ...}``) that a model can
write in the ``next`` list of its structured answer; :func:`parse_next` decodes
that list: it drops (and logs) entries it cannot read, and raises
:class:`~beamagent.errors.InvalidNext` only when ``next`` itself is not a list.

>>> parse_next([{"type": "route", "value": "review", "count": 2}, {"type": "retry", "value": "x"}])
[Route(node_id='review', count=2), Retry(reason='x')]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import attrs

from beamagent.errors import InvalidNext
from beamagent.log import get_logger

__all__ = [
    "MAX_ROUTE_COUNT",
    "DroppedEntry",
    "End",
    "Instruction",
    "Retry",
    "Route",
    "Sub",
    "Yield",
    "decode_next",
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
_INSTRUCTION_TYPES = frozenset(_INSTRUCTION_CLASSES)


@attrs.frozen
class DroppedEntry:
    """An entry of a ``next`` list that :func:`decode_next` could not read, and why.

    ``index`` is its position in the list, ``entry`` the entry itself, ``source``
    ``"next"`` for a result's ``next`` or ``"router"`` for what a router returned.
    A run reports them in a ``next_dropped`` event.
    """

    index: int
    entry: Any
    reason: str
    source: str = "next"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (the entry as a short ``repr``), as in ``next_dropped`` events."""
        return {
            "index": self.index,
            "entry": _short(self.entry),
            "reason": self.reason,
            "source": self.source,
        }


def decode_next(
    entries: Any, *, max_count: int = MAX_ROUTE_COUNT
) -> tuple[list[Instruction], list[DroppedEntry]]:
    """Decode a ``next`` list into instructions, and say which entries were dropped.

    The entries are read as :func:`parse_next` describes; nothing is logged here
    (a run reports the dropped entries in a ``next_dropped`` event).

    >>> instructions, dropped = decode_next([{"type": "rout", "value": "b"}, {"type": "end"}])
    >>> instructions, [(d.index, d.reason) for d in dropped]
    ([End()], [(0, "unknown type 'rout'")])

    Raises:
        InvalidNext: ``entries`` is not a list, a tuple or None.
    """
    if type(entries) is not list and type(entries) is not tuple:
        if entries is None:
            return [], []
        if not isinstance(entries, list | tuple):
            raise InvalidNext(entries)
    instructions: list[Instruction] = []
    dropped: list[DroppedEntry] = []
    for index, entry in enumerate(entries):
        if type(entry) in _INSTRUCTION_TYPES:
            instructions.append(entry)
            continue
        decoded = _parse_entry(entry, max_count)
        if isinstance(decoded, str):
            dropped.append(DroppedEntry(index, entry, decoded))
        else:
            instructions.append(decoded)
    return instructions, dropped


def parse_next(entries: Any, *, max_count: int = MAX_ROUTE_COUNT) -> list[Instruction]:
    """Decode a model-written ``next`` list into instructions.

    Each entry is an object ``{"type": t, "value": v}``:

    - ``route`` / ``yield`` / ``sub`` need a non-empty string ``value`` (a node
      or job id). A ``route`` entry may also carry ``"count": n`` (an int,
      ``1 <= n <= max_count``) for n parallel copies; a bad count drops the entry.
    - ``end`` ignores ``value``.
    - ``retry`` keeps a non-empty string ``value`` as the retry reason (Agens
      drops it); any other value gives a bare :class:`Retry`.

    Instruction objects in the list are kept as they are, so a Python serving
    may put ``Route("b")`` in its result's ``next``. Anything else (unknown
    type such as a typo ``"rout"``, missing/empty/non-string value, an entry
    that is not an object) is dropped and logged as a warning
    (``next_entry_dropped``); :func:`decode_next` returns them instead. Targets
    are not checked against the job's nodes here; the executor does that.
    None gives ``[]``.

    Raises:
        InvalidNext: ``entries`` is not a list, a tuple or None (Agens: ``invalid_next``).
    """
    instructions, dropped = decode_next(entries, max_count=max_count)
    for item in dropped:
        log.warning(
            "next_entry_dropped", index=item.index, reason=item.reason, entry=_short(item.entry)
        )
    return instructions


def _parse_entry(entry: Any, max_count: int) -> Instruction | str:
    """The instruction an entry means, or the reason it is dropped."""
    if isinstance(entry, _INSTRUCTION_CLASSES):
        return entry
    if not isinstance(entry, Mapping):
        return f"entry is not an object: {type(entry).__name__}"
    kind = entry.get("type")
    value = entry.get("value")
    if kind == "end":
        return End()
    if kind == "retry":
        return Retry(value) if isinstance(value, str) else Retry()
    if kind not in ("route", "yield", "sub"):
        return f"unknown type {_short(kind)}"
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
