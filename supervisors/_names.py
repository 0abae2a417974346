"""Named processes: ``register``/``whereis``, released automatically when a process ends."""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any

import pykka

from supervisors.errors import AlreadyRegistered, NoSuchProcess

__all__ = ["register", "registered", "release_process", "unregister", "whereis"]

_lock = threading.Lock()
_by_name: dict[Hashable, pykka.ActorRef[Any]] = {}
_by_urn: dict[str, set[Hashable]] = {}


def register(name: Hashable, ref: pykka.ActorRef[Any]) -> None:
    """Give the live process ``ref`` the unique name ``name``.

    The name is released when the process ends; a supervisor re-registers a
    restarted child under its spec's ``name``.

    Raises:
        AlreadyRegistered: another live process holds the name.
        NoSuchProcess: ``ref`` is not alive.
    """
    with _lock:
        current = _by_name.get(name)
        if current is not None and current.is_alive():
            raise AlreadyRegistered(name, current.actor_urn)
        if not ref.is_alive():
            raise NoSuchProcess(ref)
        if current is not None:
            _forget(name, current.actor_urn)
        _by_name[name] = ref
        _by_urn.setdefault(ref.actor_urn, set()).add(name)


def unregister(name: Hashable) -> bool:
    """Remove a name; returns whether it was registered."""
    with _lock:
        ref = _by_name.get(name)
        if ref is None:
            return False
        _forget(name, ref.actor_urn)
        return True


def whereis(name: Hashable) -> pykka.ActorRef[Any] | None:
    """The live process registered under ``name``, or None."""
    ref = _by_name.get(name)
    if ref is None or not ref.is_alive():
        return None
    return ref


def registered() -> dict[Hashable, pykka.ActorRef[Any]]:
    """A snapshot of every registered name and its process."""
    with _lock:
        return {name: ref for name, ref in _by_name.items() if ref.is_alive()}


def release_process(urn: str) -> None:
    """Drop every name of the process ``urn`` (called when it ends)."""
    with _lock:
        for name in _by_urn.pop(urn, ()):
            ref = _by_name.get(name)
            if ref is not None and ref.actor_urn == urn:
                del _by_name[name]


def _forget(name: Hashable, urn: str) -> None:
    del _by_name[name]
    names = _by_urn.get(urn)
    if names is not None:
        names.discard(name)
        if not names:
            del _by_urn[urn]
