"""Constant-time bookkeeping for Pykka's global actor registry.

``pykka.ActorRegistry`` keeps every live actor in a list and unregisters one
with ``ref in list`` / ``list.remove(ref)``: a linear scan calling
``ActorRef.__eq__`` (Python code) for every live actor. With processes as cheap
as the scheduler makes them, that scan dominated: ending 30,000 sessions took
25 s and 100,000 more than a minute (quadratic). :class:`_RefTable` keeps the
same refs in insertion order in a dict keyed by URN and offers what the
registry uses of a list (``append``, ``in``, ``remove``, iteration, slicing,
``len``), each in constant time but slicing and iteration. It is installed
once, when ``supervisors`` is imported; the registry's public API and its
lock are untouched, so plain Pykka actors keep working alongside.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pykka

__all__ = ["install"]


class _RefTable:
    """A list-like set of ``ActorRef``s in registration order, keyed by URN."""

    __slots__ = ("_refs",)

    def __init__(self, refs: Iterable[pykka.ActorRef[Any]] = ()) -> None:
        self._refs: dict[str, pykka.ActorRef[Any]] = {ref.actor_urn: ref for ref in refs}

    def append(self, ref: pykka.ActorRef[Any]) -> None:
        self._refs[ref.actor_urn] = ref

    def remove(self, ref: pykka.ActorRef[Any]) -> None:
        try:
            del self._refs[ref.actor_urn]
        except KeyError:
            raise ValueError(f"{ref!r} is not registered") from None

    def __contains__(self, ref: object) -> bool:
        urn = getattr(ref, "actor_urn", None)
        return urn is not None and urn in self._refs

    def __iter__(self) -> Iterator[pykka.ActorRef[Any]]:
        return iter(list(self._refs.values()))

    def __len__(self) -> int:
        return len(self._refs)

    def __getitem__(self, index: Any) -> Any:
        return list(self._refs.values())[index]


def install() -> None:
    """Put a :class:`_RefTable` in place of Pykka's registry list (idempotent)."""
    registry: Any = pykka.ActorRegistry
    with registry._actor_refs_lock:
        if not isinstance(registry._actor_refs, _RefTable):
            registry._actor_refs = _RefTable(registry._actor_refs)
