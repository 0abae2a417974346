"""Named processes: ``register``/``whereis``, released automatically when a process ends.

A name can have a *keeper*: the supervisor that registers a child under its
spec's name. When a kept process ends while its keeper lives, the name is not
simply freed but *reserved* for the keeper until it decides: a restart
registers the new incarnation under it, a decision not to restart (or the
keeper's own end) releases it. :func:`await_name` waits through a
reservation, so a caller that addresses a process by name never mistakes a
restarting process for a missing one.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import pykka

from supervisors._scheduler import blocking
from supervisors.errors import AlreadyRegistered, NoSuchProcess, WaitTimeout

__all__ = [
    "await_name",
    "disown",
    "register",
    "registered",
    "release_keeper",
    "release_process",
    "reserved",
    "unregister",
    "unreserve",
    "whereis",
]

_lock = threading.Lock()
_changed = threading.Condition(_lock)
_by_name: dict[Hashable, pykka.ActorRef[Any]] = {}
# A process has a name or a few: a tuple (48 B) rather than a set (216 B) per process.
_by_urn: dict[str, tuple[Hashable, ...]] = {}
_keepers: dict[Hashable, str] = {}  # name -> URN of the process that keeps it across restarts
_reserved: dict[Hashable, str] = {}  # name -> URN of the keeper deciding about it
_kept_by: dict[str, set[Hashable]] = {}  # keeper URN -> names it keeps or holds reserved
_waiters = 0  # threads in await_name: notify only when someone waits


def _after_fork_in_child() -> None:
    # The parent's processes did not survive the fork: no name is held in the child.
    global _lock, _changed, _waiters
    _lock = threading.Lock()  # a parent thread may have held it at the fork
    _changed = threading.Condition(_lock)
    _waiters = 0
    for table in (_by_name, _by_urn, _keepers, _reserved, _kept_by):
        table.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _no_keeper(_urn: str) -> bool:
    return False


keeper_alive: Callable[[str], bool] = _no_keeper
"""Whether the process with this URN is alive; set by ``supervisors._process``."""


def register(name: Hashable, ref: pykka.ActorRef[Any], keeper: str | None = None) -> None:
    """Give the live process ``ref`` the unique name ``name``.

    The name is released when the process ends. ``keeper`` (a supervisor's
    URN) keeps the name reserved from the moment the process ends until the
    keeper restarts it (registering the new incarnation) or lets it go.

    Raises:
        AlreadyRegistered: another live process holds the name, or another
            keeper holds it reserved while it restarts its process.
        NoSuchProcess: ``ref`` is not alive.
    """
    with _lock:
        current = _by_name.get(name)
        if current is not None and current.is_alive():
            raise AlreadyRegistered(name, current.actor_urn)
        holder = _reserved.get(name)
        if holder is not None and holder != keeper:
            raise AlreadyRegistered(name, f"{holder} (restarting it)")
        if not ref.is_alive():
            raise NoSuchProcess(ref)
        if current is not None:
            _forget(name, current.actor_urn)
        if holder is not None:
            del _reserved[name]
        _by_name[name] = ref
        names = _by_urn.get(ref.actor_urn, ())
        if name not in names:
            _by_urn[ref.actor_urn] = (*names, name)
        _set_keeper(name, keeper)
        if _waiters:
            _changed.notify_all()


def unregister(name: Hashable) -> bool:
    """Remove a name (and any reservation of it); returns whether it was registered."""
    with _lock:
        ref = _by_name.get(name)
        had_reservation = _reserved.pop(name, None) is not None
        _set_keeper(name, None)
        if _waiters:
            _changed.notify_all()
        if ref is None:
            return had_reservation
        _forget(name, ref.actor_urn)
        return True


def whereis(name: Hashable) -> pykka.ActorRef[Any] | None:
    """The live process registered under ``name``, or None (also while it restarts)."""
    ref = _by_name.get(name)
    if ref is None or not ref.is_alive():
        return None
    return ref


def reserved(name: Hashable) -> bool:
    """True while ``name``'s process has ended and its keeper has not yet decided."""
    return name in _reserved


def await_name(name: Hashable, timeout: float | None = None) -> pykka.ActorRef[Any] | None:
    """The live process named ``name``, waiting while its supervisor restarts it.

    Returns None at once when the name is neither registered nor reserved
    (nothing will come back under it).

    Raises:
        WaitTimeout: the name was still reserved (its process restarting) after
            ``timeout`` seconds.
    """
    ref = _by_name.get(name)
    if ref is not None and ref.is_alive():
        return ref
    global _waiters
    deadline = None if timeout is None else time.monotonic() + timeout
    with _changed:
        _waiters += 1
        try:
            while True:
                ref = _by_name.get(name)
                if ref is not None:
                    if ref.is_alive():
                        return ref
                    # Ending: its names are released (freed, or reserved for a restart)
                    # a moment later in the same teardown. Not "nothing will come back".
                elif name not in _reserved:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise WaitTimeout(
                        f"the process named {name!r} was still restarting after {timeout} s"
                    )
                with blocking():
                    _changed.wait(remaining)
        finally:
            _waiters -= 1


def registered() -> dict[Hashable, pykka.ActorRef[Any]]:
    """A snapshot of every registered name and its process."""
    with _lock:
        return {name: ref for name, ref in _by_name.items() if ref.is_alive()}


def release_process(urn: str) -> None:
    """Drop every name of the process ``urn`` (called when it ends).

    A name whose keeper is alive is reserved for it instead of being freed.
    """
    with _lock:
        names = _by_urn.pop(urn, ())
        for name in names:
            ref = _by_name.get(name)
            if ref is None or ref.actor_urn != urn:
                continue
            del _by_name[name]
            keeper = _keepers.get(name)
            if keeper is not None and keeper_alive(keeper):
                _reserved[name] = keeper
            else:
                _set_keeper(name, None)
        if names and _waiters:
            _changed.notify_all()


def unreserve(name: Hashable, keeper: str) -> bool:
    """The keeper will not restart ``name``'s process: free the name.

    Returns whether the keeper held it reserved.
    """
    with _lock:
        if _reserved.get(name) != keeper:
            return False
        del _reserved[name]
        _set_keeper(name, None)
        if _waiters:
            _changed.notify_all()
        return True


def disown(ref: pykka.ActorRef[Any]) -> None:
    """Names of ``ref`` are freed, not reserved, when it ends (its keeper is stopping it)."""
    with _lock:
        for name in _by_urn.get(ref.actor_urn, ()):
            _set_keeper(name, None)


def release_keeper(urn: str) -> None:
    """The keeper ``urn`` ended: free every name it held reserved, forget what it kept."""
    with _lock:
        names = _kept_by.pop(urn, None)
        if not names:
            return
        for name in names:
            if _keepers.get(name) == urn:
                del _keepers[name]
            if _reserved.get(name) == urn:
                del _reserved[name]
        if _waiters:
            _changed.notify_all()


def _set_keeper(name: Hashable, keeper: str | None) -> None:
    old = _keepers.pop(name, None)
    if old is not None:
        kept = _kept_by.get(old)
        if kept is not None:
            kept.discard(name)
            if not kept:
                del _kept_by[old]
    if keeper is not None:
        _keepers[name] = keeper
        _kept_by.setdefault(keeper, set()).add(name)


def _forget(name: Hashable, urn: str) -> None:
    del _by_name[name]
    names = _by_urn.get(urn)
    if names is not None:
        rest = tuple(other for other in names if other != name)
        if rest:
            _by_urn[urn] = rest
        else:
            del _by_urn[urn]
