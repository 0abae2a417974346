"""Process lifecycle: live runtimes stop in order at interpreter exit and on SIGTERM.

**Exit.** Actors run on daemon threads (the scheduler's workers, or a
dedicated daemon thread), so nothing keeps the interpreter from exiting; but
a runtime that is never stopped (the module-level API's default runtime, or a
``Runtime()`` someone forgot) must still be stopped in order, its store
flushed, before those threads are frozen. ``atexit`` handlers run too late
(after Python joined its non-daemon threads, and with daemon threads still
running). So each runtime registers here when it starts, and a
``threading._register_atexit`` hook (what ``concurrent.futures`` uses; it
runs before that join) stops every live one,
newest first, each tree in its own order (runs, sessions, store, registry),
closing the stores it opened. The registry holds runtimes weakly: one that
was stopped is forgotten; one that was garbage-collected without being
stopped leaves only what it takes to stop its tree (its root supervisor and
store). Every other thread of ours (timers, transport readers, graph
threads, local agents) is a daemon thread. A forked child starts with no live
runtime (their threads are not copied) and SIGTERM's default disposition.

**SIGTERM.** The first ``Runtime`` started in the main thread installs a
SIGTERM handler if SIGTERM still has its default disposition (a host's own
handler, or ``SIG_IGN``, is never replaced), unless ``Runtime(handle_signals=
False)`` or ``BEAMAGENT_HANDLE_SIGNALS=0``. On SIGTERM, while a runtime is
live, the handler raises ``SystemExit(143)`` in the main thread: nothing
blocking runs inside the handler, a main thread blocked in ``Future.get`` /
``Event.wait`` / a query is woken by it, ``with Runtime()`` blocks and
``finally`` clauses unwind, and the exit hook above stops what is still
running. The process then exits with status 143 (128 + SIGTERM, what shells
report for a process killed by SIGTERM). The handler restores the default
disposition first, so a second SIGTERM kills at once; with no live runtime,
SIGTERM acts as if the handler were not there. If the handler ran inside a
finalizer (a ``__del__``, a weakref or GC callback), where CPython drops
exceptions, the handler is put back and SIGTERM sent again from a helper thread;
if finalizers still drop it two seconds on, SIGTERM takes its default action: it
is never lost. Once the interpreter is
exiting, SIGTERM is never swallowed: during the exit hook's stop it is held
until the runtimes are stopped and then takes its default action (the
process dies of SIGTERM, as it would without this library); before the hook
(the interpreter runs other exit hooks first, which may never return) and
after it (an exit waiting on a host's non-daemon thread), it takes it at once.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

import pykka

from beamagent.errors import BeamAgentError
from beamagent.log import get_logger

if TYPE_CHECKING:
    from beamagent.runtime import Runtime

__all__ = [
    "EXIT_STATUS",
    "HANDLE_SIGNALS_ENV",
    "install_sigterm_handler",
    "live_runtimes",
    "started_runtimes",
    "stop_started_runtime",
]

log = get_logger(__name__)

EXIT_STATUS = 128 + signal.SIGTERM
"""The process's exit status after a graceful stop on SIGTERM: 143."""

HANDLE_SIGNALS_ENV = "BEAMAGENT_HANDLE_SIGNALS"
"""Set to ``0`` (or ``false``, ``no``, ``off``) so that no runtime installs the SIGTERM handler."""

_ROOT_STOP_TIMEOUT = 60.0  # as Runtime.stop


class _Tree:
    """A registered runtime: a weak reference to it, and what it takes to stop its tree."""

    __slots__ = ("owns_store", "root", "runtime", "runtime_id", "store")

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = weakref.ref(runtime)
        self.runtime_id = runtime.id
        self.root = runtime.root
        self.store = runtime._store
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


_trees: dict[int, _Tree] = {}  # by start order; read without the lock by the signal handler
_order = itertools.count()
_lock = threading.Lock()
_hook_registered = False
_exiting = False  # the exit hook has begun: no runtime starts from then on
_exit_hook_done = False  # ... and has stopped every runtime it found
_term_pending = False  # a SIGTERM came while the exit hook had runtimes to stop
_auto_install_tried = False
_defer_depth = 0  # main thread only: > 0 while it starts or stops a runtime
_pending_exit = False
# How long SIGTERM is sent again while finalizers drop its exit, before its default action.
_FINALIZER_PATIENCE = 2.0
_finalizer_drops = 0
_first_drop_at = 0.0


def live_runtimes() -> list[Runtime]:
    """The runtimes started and not yet stopped (that are still referenced), oldest first."""
    with _lock:
        trees = [_trees[key] for key in sorted(_trees)]
    return [rt for rt in (tree.runtime() for tree in trees) if rt is not None]


def started_runtimes() -> dict[int, str]:
    """Every runtime started and not stopped, collected ones included: start order → id.

    A runtime garbage-collected without ``stop()`` is not in :func:`live_runtimes`, but
    its tree still runs (until :func:`stop_started_runtime` or the interpreter's exit).
    """
    with _lock:
        return {key: tree.runtime_id for key, tree in _trees.items()}


def stop_started_runtime(key: int) -> None:
    """Stop the runtime ``key`` of :func:`started_runtimes` (its tree, if it was collected)."""
    with _lock:
        tree = _trees.pop(key, None)
    if tree is not None:
        tree.stop()


def runtime_started(runtime: Runtime, *, handle_signals: bool) -> None:
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
    if handle_signals:
        _auto_install()


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
    global _exiting, _exit_hook_done
    _exiting = True
    try:
        with _lock:
            trees = [_trees.pop(key) for key in sorted(_trees, reverse=True)]
        if trees:
            log.info("runtimes_stopping_at_exit", runtimes=[t.runtime_id for t in trees])
        for tree in trees:
            try:
                tree.stop()
            except Exception:  # one runtime's failure must not leave the others running
                log.exception("runtime_stop_failed", runtime=tree.runtime_id)
    finally:
        _exit_hook_done = True
        if _term_pending:
            # A SIGTERM came during the stop (its handler restored the default): the
            # process now meets it as it would have without this library.
            signal.raise_signal(signal.SIGTERM)


# --- SIGTERM ---------------------------------------------------------------------------------


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _signals_wanted() -> bool:
    value = os.environ.get(HANDLE_SIGNALS_ENV, "1").strip().lower()
    return value not in {"0", "false", "no", "off"}


def _auto_install() -> None:
    global _auto_install_tried
    # Once per process: a host that took SIGTERM back, or a first SIGTERM that
    # restored the default, is not overridden by the next Runtime.
    if _auto_install_tried or not _in_main_thread() or not _signals_wanted():
        return
    _auto_install_tried = True
    install_sigterm_handler()


def install_sigterm_handler() -> bool:
    """Stop the live runtimes gracefully on SIGTERM, then exit with status 143.

    Runtimes started in the main thread do this themselves (see the module
    doc); call it from the main thread when yours start elsewhere. Only
    replaces the *default* disposition. Returns True if the handler is
    installed now, False if SIGTERM has another handler (or is ignored),
    which is left alone.

    Raises:
        ValueError: not called from the main thread (Python sets signal
            handlers there only).
    """
    if not _in_main_thread():
        raise ValueError("install_sigterm_handler() must be called from the main thread")
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm:
        return True
    if current is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def _on_sigterm(signum: int, _frame: FrameType | None) -> Any:
    """Runs in the main thread between two bytecodes: must not block or take a lock."""
    global _pending_exit, _term_pending
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
    if _exiting and not _exit_hook_done:
        _term_pending = True  # the exit hook is stopping the runtimes: after it, the default
        return None
    if not _trees or _shutting_down():
        # Nothing of ours to stop (none live, or the exit hook stopped them), or the
        # interpreter is exiting and runs other exit hooks before ours, which may never
        # return (an executor's join): the default action, as without this library.
        signal.raise_signal(signum)
        return None
    if _defer_depth:
        _pending_exit = True  # the main thread is starting or stopping a runtime
        return None
    _watch_for_a_finalizer()
    raise _SigtermExit(EXIT_STATUS)


class _SigtermExit(SystemExit):
    """The ``SystemExit`` the SIGTERM handler raises: told apart when a finalizer drops it."""


def _watch_for_a_finalizer() -> None:
    """Act on SIGTERM again if its exit is dropped by a finalizer that it is raised in.

    A signal handler runs in the main thread between any two bytecodes, also inside a
    ``__del__``, a weakref callback or a GC callback, where CPython reports an
    exception as "Exception ignored" (``sys.unraisablehook``) and goes on: the exit
    would be lost, and the handler has given SIGTERM its default action back. So,
    before the exit is raised, ``sys.unraisablehook`` is wrapped. When the exit (a
    ``_SigtermExit``) comes back there, the handler is put back and SIGTERM sent again
    from a helper thread, to be handled once the finalizer is over (not from inside
    the hook, where the handler would run at once and its exception be dropped
    again), sooner then later (10 ms, doubling to 0.25 s); if finalizers still drop
    it ``_FINALIZER_PATIENCE`` seconds after the first drop (a main thread that is
    nearly always in finalizers), SIGTERM takes its default action, as without this
    library. The wrap holds no exception (it tells ours by its type); it is undone
    at its first call in the main thread, where the exit was raised; an exit that
    propagates leaves it in place for the few steps to the interpreter's end (or, if
    a host catches ``SystemExit``, until the host's next unraisable exception in the
    main thread, which it passes on, as it does any other).
    """
    previous = sys.unraisablehook
    if getattr(previous, "_beamagent_sigterm", False):
        return  # wrapped already (a SIGTERM again before anything was dropped)

    def hook(unraisable: Any) -> None:
        global _finalizer_drops, _first_drop_at
        ours = type(unraisable.exc_value) is _SigtermExit
        if _in_main_thread() and sys.unraisablehook is hook:
            sys.unraisablehook = previous
        if not ours:
            previous(unraisable)
            return
        now = time.monotonic()
        if not _finalizer_drops:
            _first_drop_at = now
        _finalizer_drops += 1
        if now - _first_drop_at < _FINALIZER_PATIENCE:
            with contextlib.suppress(ValueError):  # (in the main thread, as the handler)
                if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                    signal.signal(signal.SIGTERM, _on_sigterm)
        # Else the default action: the handler left SIGTERM's, and the kernel acts.
        delay = min(0.01 * 2 ** (_finalizer_drops - 1), 0.25)
        threading.Thread(
            target=_send_sigterm_again, args=(delay,), name="beamagent-sigterm", daemon=True
        ).start()

    hook._beamagent_sigterm = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _send_sigterm_again(delay: float) -> None:
    time.sleep(delay)  # a little after the finalizer that dropped the exit
    os.kill(os.getpid(), signal.SIGTERM)


def _after_fork_in_child() -> None:
    # The runtimes' threads did not survive the fork: the child has nothing to stop, and
    # its SIGTERM (multiprocessing's terminate()) keeps its default meaning.
    global _term_pending, _lock, _auto_install_tried, _finalizer_drops, _first_drop_at
    _lock = threading.Lock()  # a parent thread may have held it at the fork
    _trees.clear()
    _term_pending = False  # a SIGTERM the parent held back was the parent's
    _finalizer_drops = 0
    _first_drop_at = 0.0
    _auto_install_tried = False  # the child's own first Runtime installs the handler
    with contextlib.suppress(ValueError):
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGTERM's ``SystemExit`` back while the main thread starts or stops a runtime.

    Interrupting those half-way would leave a tree started but unregistered,
    or a store unclosed. The exit is raised when the outermost block ends.
    """
    global _defer_depth, _pending_exit
    if not _in_main_thread():
        yield
        return
    _defer_depth += 1
    try:
        yield
    finally:
        _defer_depth -= 1
        if not _defer_depth and _pending_exit:
            _pending_exit = False
            _watch_for_a_finalizer()  # a runtime stopped from a host's __del__
            raise _SigtermExit(EXIT_STATUS)
