"""Process lifecycle: live runtimes stop in order at interpreter exit.

Every actor runs on a non-daemon thread, and Python joins those
threads *before* it runs ``atexit`` handlers: a runtime that is never stopped
(the module-level API's default runtime, or a ``Runtime()`` someone forgot)
would hang the interpreter's exit for ever. So each runtime registers here
when it starts, and a ``threading._register_atexit`` hook (what
``concurrent.futures`` uses; it runs before that join) stops every live one,
newest first, each tree in its own order (runs, sessions, store, registry),
closing the stores it opened. The registry holds runtimes weakly: one that
was stopped is forgotten; one that was garbage-collected without being
stopped leaves only what it takes to stop its tree (its root supervisor and
store). Every other thread of ours (timers, transport readers, graph
threads, local agents) is a daemon thread.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import threading
import weakref
from typing import TYPE_CHECKING

import pykka

from beamagent.errors import BeamAgentError
from beamagent.log import get_logger

if TYPE_CHECKING:
    from beamagent.runtime import Runtime

__all__ = ["live_runtimes"]

log = get_logger(__name__)

_ROOT_STOP_TIMEOUT = 60.0  # as Runtime.stop


class _Tree:
    """A registered runtime: a weak reference to it, and what it takes to stop its tree."""

    __slots__ = ("owns_store", "root", "runtime", "runtime_id", "store")

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = weakref.ref(runtime)
        self.runtime_id = runtime.id
        self.root = runtime.root
        self.store = runtime.store
        self.owns_store = runtime._owns_store

    def stop(self) -> None:
        runtime = self.runtime()
        if runtime is not None:
            runtime.stop()
            return
        # Collected without stop(): its processes still run; stop them as Runtime.stop would.
        with contextlib.suppress(pykka.ActorDeadError):
            self.root.stop(timeout=_ROOT_STOP_TIMEOUT)
        if self.owns_store:
            self.store.close()
        log.info("runtime_stopped", runtime=self.runtime_id)


_trees: dict[int, _Tree] = {}  # by start order
_order = itertools.count()
_lock = threading.Lock()
_hook_registered = False
_exiting = False


def live_runtimes() -> list[Runtime]:
    """The runtimes started and not yet stopped (that are still referenced), oldest first."""
    with _lock:
        trees = [_trees[key] for key in sorted(_trees)]
    return [rt for rt in (tree.runtime() for tree in trees) if rt is not None]


def runtime_started(runtime: Runtime) -> None:
    """Register a runtime whose tree has started (called by ``Runtime``).

    Raises:
        BeamAgentError: the interpreter is exiting (its runtimes were stopped
            already); the runtime is stopped again at once.
    """
    global _hook_registered
    with _lock:
        refused = _exiting or _shutting_down()
        if not refused:
            _trees[next(_order)] = _Tree(runtime)
            if not _hook_registered:
                _register_exit_hook()
                _hook_registered = True
    if refused:
        runtime.stop()
        raise BeamAgentError("cannot start a Runtime: the interpreter is exiting")


def runtime_stopped(runtime: Runtime) -> None:
    """Forget a runtime that has stopped (called by ``Runtime.stop``)."""
    with _lock:
        for key, tree in list(_trees.items()):
            if tree.runtime() is runtime:
                del _trees[key]


def _register_exit_hook() -> None:
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError("no threading._register_atexit")
        register(_stop_all_at_exit)
    except RuntimeError:
        # Too late (or another Python): atexit runs after the thread join, but better than nothing.
        atexit.register(_stop_all_at_exit)


def _shutting_down() -> bool:
    return bool(getattr(threading, "_SHUTTING_DOWN", False))


def _stop_all_at_exit() -> None:
    """Stop every live runtime, newest first, before Python joins the actor threads."""
    global _exiting
    _exiting = True
    with _lock:
        trees = [_trees.pop(key) for key in sorted(_trees, reverse=True)]
    if trees:
        log.info("runtimes_stopping_at_exit", runtimes=[t.runtime_id for t in trees])
    for tree in trees:
        try:
            tree.stop()
        except Exception:  # one runtime's failure must not leave the others running
            log.exception("runtime_stop_failed", runtime=tree.runtime_id)
