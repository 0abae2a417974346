"""``Process``: a Pykka actor that knows why it ended and tells its links and monitors.

Pykka runs each actor's loop in ``Actor._actor_loop``; ``Process`` replaces
that loop (and only that loop) so it can:

* start synchronously: ``start()`` returns once ``on_start`` has finished,
  and raises what ``on_start`` raised (OTP's ``start_link`` init handshake);
* record an exit reason and deliver it to links (``Exit`` / exit signals) and
  monitors (``Down``), including when ``on_start`` fails;
* apply the errors rule: a ``ReplyError`` goes back to the ``ask`` caller and
  the process lives on; anything else goes back to the caller and then
  crashes the process;
* contain ``BaseException``: it ends this process only (Pykka would stop
  every actor in the program).
"""

from __future__ import annotations

import _thread
import contextvars
import ctypes
import itertools
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from types import TracebackType
from typing import Any, ClassVar, Self, TypeAlias, cast

import attrs
import pykka
from pykka import Future
from pykka import messages as pykka_messages
from pykka._actor import ActorInbox
from pykka._envelope import Envelope
from pykka._future import _Unset
from pykka._introspection import get_attr_directly
from pykka._threading import ThreadingFuture, ThreadingFutureResult
from pykka.messages import ProxyCall

from supervisors import _names
from supervisors._ids import new_uuid4
from supervisors._log import get_logger
from supervisors._mailbox import Mailbox, reject_envelope
from supervisors._messages import Down, Exit
from supervisors._reasons import Crashed, ExitReason, Killed, NoProc, Normal, Shutdown
from supervisors._scheduler import SLICE, blocking, in_worker, scheduler
from supervisors._timers import cancel_timers_for
from supervisors.errors import NoReply, NoSuchProcess, NotInProcess, ReplyError, WaitTimeout

__all__ = [
    "MonitorRef",
    "Process",
    "ProcessFuture",
    "ProcessTarget",
    "current_process",
    "demonitor",
    "kill",
    "link",
    "lookup",
    "monitor",
    "send_exit",
    "shutdown",
    "spawn_options",
    "start_link",
    "unlink",
]

log = get_logger(__name__)

ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]
Watcher: TypeAlias = "pykka.ActorRef[Any] | Callable[[Down], object] | None"
ProcessTarget: TypeAlias = "pykka.ActorRef[Any] | Process | Hashable"
"""What the functions of this module accept as a process: a ref, the object, or a name."""


class _Local(threading.local):
    """This thread's process and spawn options; None until set (class defaults: reading
    one never set costs no AttributeError, as ``getattr(local, name, None)`` did)."""

    process: Process | None = None
    spawn: _SpawnOptions | None = None


_local = _Local()
_table: dict[str, Process] = {}
_table_lock = threading.Lock()
_thread_counter = itertools.count()
_monitor_ids = itertools.count(1)
_CURRENT: Any = object()


class _ProcessKilled(BaseException):
    """Injected into the thread of a process killed while it ran user code."""


@attrs.frozen
class _ExitSignal:
    from_urn: str
    reason: ExitReason


@attrs.frozen
class _ShutdownRequest:
    reason: ExitReason


@attrs.define
class _SpawnOptions:
    link_to: pykka.ActorRef[Any] | None = None
    name: Hashable | None = None
    keeper: str | None = None
    consumed: bool = False


@contextmanager
def spawn_options(
    *,
    link_to: pykka.ActorRef[Any] | None = None,
    name: Hashable | None = None,
    keeper: str | None = None,
) -> Iterator[_SpawnOptions]:
    """Make the next ``Process.start`` in this thread link to ``link_to`` and take ``name``.

    Both happen *before* ``on_start`` runs, so a failing ``on_start`` is
    reported through the link, and the name is never missing while the
    process is alive. ``keeper`` (a supervisor's URN) keeps the name reserved
    while it restarts the process (see :func:`supervisors.await_name`).
    Supervisors wrap each child's ``start`` in this.
    """
    options = _SpawnOptions(link_to=link_to, name=name, keeper=keeper)
    previous = _swap_spawn_options(options)
    try:
        yield options
    finally:
        _swap_spawn_options(previous)


def _swap_spawn_options(options: _SpawnOptions | None) -> _SpawnOptions | None:
    """Make ``options`` this thread's next spawn options; return the previous ones.

    ``spawn_options`` without its context manager, for the supervisor's child start.
    """
    previous: _SpawnOptions | None = _local.spawn
    _local.spawn = options
    return previous


def _take_spawn_options() -> _SpawnOptions | None:
    options: _SpawnOptions | None = _local.spawn
    if options is None or options.consumed:
        return None
    options.consumed = True
    return options


# A Python signal handler runs in the main thread, between bytecodes. A signal that
# lands while the main thread is on its way into a lock wait (after its last bytecode,
# before the futex sleep) does not interrupt that wait: the handler would run only when
# the wait ends -- after a whole query timeout, for a SIGTERM or a Ctrl-C. So the main
# thread waits in slices; other threads wait in one call.
_SIGNAL_SLICE = 0.2
_main_ident = threading.main_thread().ident


def _refresh_main_ident() -> None:
    global _main_ident
    _main_ident = threading.main_thread().ident


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_refresh_main_ident)


def _acquire(lock: Any, timeout: float | None) -> bool:
    """``lock.acquire(timeout=...)`` (None: no limit) that lets signal handlers run."""
    if _thread.get_ident() != _main_ident:
        return bool(lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)))
    if timeout is None:
        while not lock.acquire(timeout=_SIGNAL_SLICE):
            pass  # back in bytecode: a pending signal handler runs here
        return True
    deadline = time.monotonic() + max(timeout, 0.0)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= _SIGNAL_SLICE:
            return bool(lock.acquire(timeout=max(remaining, 0.0)))
        if lock.acquire(timeout=_SIGNAL_SLICE):
            return True


class _Flag:
    """A one-way flag on a raw lock: ``set`` once, ``wait`` until set (no ``Condition``).

    ``is_set`` reads a plain attribute, never the lock: a waiter holds the lock for a
    moment while it passes through, and ``set`` may race with another ``set`` or with
    a waiter passing through (a release of an unlocked lock is then ignored).

    The lock is made by the first waiter: most flags (a process's ``actor_stopped``, a
    start nobody waits for) are never waited on, and a lock is one more object per live
    process for the cyclic GC to walk. ``set`` marks the flag, then releases whatever
    lock is there; a waiter publishes its lock, then checks the mark: one of the two
    sees the other's write (each step is atomic under the GIL).
    """

    __slots__ = ("_is_set", "_lock")

    def __init__(self) -> None:
        self._is_set = False
        self._lock: Any = None

    def set(self) -> None:
        if not self._is_set:
            self._is_set = True
            lock = self._lock
            if lock is not None:
                with suppress(RuntimeError):  # a racing set released it already
                    lock.release()

    def is_set(self) -> bool:
        return self._is_set

    def wait(self, timeout: float | None = None) -> bool:
        if self._is_set:
            return True
        lock = self._lock
        if lock is None:
            with _flag_lock:  # two first waiters make one lock
                lock = self._lock
                if lock is None:
                    lock = _thread.allocate_lock()
                    lock.acquire()
                    self._lock = lock
        if self._is_set:  # set before its lock was there (seen by set): nobody releases it
            return True
        if _acquire(lock, timeout):
            with suppress(RuntimeError):  # a racing set released it meanwhile
                lock.release()  # let the next waiter through
            return True
        return self._is_set


def _new_urn() -> str:
    """``uuid.uuid4().urn``, from the batched ids (a fraction of the cost)."""
    return "urn:uuid:" + new_uuid4()


_LINKS_AS_TUPLE = 8
_flag_lock = _thread.allocate_lock()


def _after_fork_in_child() -> None:
    """Every process of the parent is dead in a forked child (its thread was not copied).

    Their refs say so (``is_alive()`` False, a tell or ask raises ``ActorDeadError``
    instead of waiting for ever on a mailbox nobody drains), and the table forgets them.
    The module's locks are made anew: a parent thread may have held one at the fork.
    """
    global _table_lock, _flag_lock
    _table_lock = threading.Lock()
    _flag_lock = _thread.allocate_lock()
    # Every process start and end takes Pykka's registry lock: one a parent thread held
    # at the fork would never be released in the child.
    if hasattr(pykka.ActorRegistry, "_actor_refs_lock"):
        pykka.ActorRegistry._actor_refs_lock = threading.RLock()
    _local.process = None  # the forking thread may have been running a process
    _local.spawn = None
    dead = list(_table.values())
    _table.clear()
    for process in dead:
        process.actor_stopped.set()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
_schedule = scheduler.submit  # one bound method for every mailbox (see Mailbox.attach)
_STARTED = _Flag()
_STARTED.set()


class MonitorRef:
    """A one-way watch on a process, returned by :func:`monitor`.

    When the process ends, a :class:`Down` is delivered to the watcher (a
    process ref gets it as a message, a callable is called with it) and
    :meth:`wait` returns it.
    """

    __slots__ = ("_down", "_event", "_watcher", "id", "target_urn")

    def __init__(self, target_urn: str, watcher: Watcher) -> None:
        self.id = next(_monitor_ids)
        self.target_urn = target_urn
        self._watcher = watcher
        self._event = _Flag()  # a raw lock, not an Event's Condition: ~1 KiB less
        self._down: Down | None = None

    def __repr__(self) -> str:
        return f"<MonitorRef #{self.id} on {self.target_urn}>"

    @property
    def down(self) -> Down | None:
        """The ``Down`` once the process has ended, else None."""
        return self._down

    def wait(self, timeout: float | None = None) -> Down:
        """Block until the monitored process has ended; return its ``Down``.

        Raises:
            WaitTimeout: it was still alive after ``timeout`` seconds.
        """
        if not self._event.is_set():
            with blocking():
                if not self._event.wait(timeout):
                    raise WaitTimeout(f"process {self.target_urn} still alive after {timeout} s")
        assert self._down is not None
        return self._down

    def _fire(self, down: Down) -> None:
        self._down = down
        self._event.set()
        watcher = self._watcher
        if watcher is None:
            return
        if isinstance(watcher, pykka.ActorRef):
            with suppress(pykka.ActorDeadError):  # the watcher is gone: nobody to tell
                watcher.tell(down)
        else:
            try:
                watcher(down)
            except Exception:
                log.exception("monitor_callback_failed", monitor=self.id, urn=self.target_urn)


_UNSET_HOOK_RESULT: Any = _Unset()  # pykka: no get hook has run
_new_tuple: Any = tuple.__new__
_PYKKA_HANDLE_RECEIVE: Any = pykka.Actor._handle_receive


class ProcessFuture(ThreadingFuture[Any]):
    """The reply future of an ``ask`` to a process.

    Waiting on it inside another process's handler is a *managed* blocking
    wait: the shared scheduler lets another worker run meanwhile, so a
    handler that asks a busy process never starves or deadlocks the pool.

    Its waits and hand-overs are single C calls on raw locks, never a
    Python-level ``Condition``: a ``kill`` landing in a handler that waits on
    a reply cannot leave a lock held that the replying process then needs.
    """

    # Future.__init__'s two fields, as class defaults: one call and one object fewer per
    # ask (set_get_hook sets them on the instance).
    _get_hook = None
    _get_hook_result = _UNSET_HOOK_RESULT

    def __init__(self) -> None:
        # Not ThreadingFuture's __init__ (no Condition), nor Future's (the defaults above).
        self._result: ThreadingFutureResult | None = None
        self._unset = _thread.allocate_lock()  # taken by the one set that wins
        self._done = _thread.allocate_lock()  # free once a result is in
        self._done.acquire()

    def get(self, *, timeout: float | None = None) -> Any:
        """The value, waiting up to ``timeout`` seconds (see ``pykka.Future.get``).

        Raises:
            pykka.Timeout: no value within ``timeout``.
            Exception: the exception set on the future.
        """
        if self._get_hook is not None:
            return Future.get(self, timeout=timeout)
        if self._result is None:
            # blocking(), spelled out: no generator on every ask's path.
            worker = scheduler.enter_blocking()
            try:
                got = _acquire(self._done, timeout)
            finally:
                scheduler.exit_blocking(worker)
            if not got:
                raise pykka.Timeout(f"{timeout} seconds")
            self._done.release()  # let any other waiter through
        result = self._result
        assert result is not None
        if result.exc_info is not None:
            exc_type, exc_value, exc_traceback = result.exc_info
            assert exc_type is not None
            if exc_value is None:
                exc_value = exc_type()
            if exc_value.__traceback__ is not exc_traceback:
                raise exc_value.with_traceback(exc_traceback)
            raise exc_value
        return result.value

    def done(self) -> bool:
        """True once a value or an exception is set (``get`` would not wait)."""
        return self._result is not None

    def _put(self, result: ThreadingFutureResult) -> None:
        if self._get_hook is not None or not self._unset.acquire(False):
            raise queue.Full
        self._result = result
        self._done.release()

    def set(self, value: Any = None) -> None:
        """Set the value (``queue.Full`` if the future already has one)."""
        # ThreadingFutureResult(value=value), without the named tuple's Python __new__.
        self._put(_new_tuple(ThreadingFutureResult, (value, None)))

    def set_exception(self, exc_info: Any = None) -> None:
        """Set an exception (default: the one being handled)."""
        self._put(ThreadingFutureResult(exc_info=exc_info or sys.exc_info()))

    def set_get_hook(self, func: Any) -> None:
        """Compute the value with ``func(timeout)`` when it is first asked for."""
        if not self._unset.acquire(False):
            raise queue.Full
        Future.set_get_hook(self, func)


class _ProcessRef(pykka.ActorRef[Any]):
    """The ``pykka.ActorRef`` of a :class:`Process`, without a weak reference of its own.

    Pykka's ref keeps a ``weakref`` to its actor, used only to make proxies: one more
    object per live process for the cyclic GC to walk. This one finds the process in
    the table of live processes instead (``proxy()`` on a process that just ended
    raises ``ActorDeadError``, as on one that ended a moment earlier).
    """

    def __init__(self, actor: Any) -> None:
        self.actor_class = actor.__class__
        self.actor_urn = actor.actor_urn
        self.actor_inbox = actor.actor_inbox
        self.actor_stopped = actor.actor_stopped

    def _actor_weakref(self) -> Any:  # type: ignore[override]  # what proxies call
        return _table.get(self.actor_urn)


class Process(pykka.ThreadingActor):
    """A ``pykka.ThreadingActor`` with OTP process semantics.

    Subclass it like any Pykka actor (``on_start``, ``on_receive``,
    ``on_stop``, ``on_failure``, proxy methods). Differences from plain Pykka:

    * ``start()`` blocks until ``on_start`` returns and re-raises its error;
    * ``exit_reason`` tells why the process ended: ``Normal`` (``stop()``),
      ``Shutdown`` (its supervisor), ``Killed`` (``kill()``), ``Crashed(exc)``
      or the reason of a linked process that took it down;
    * links and monitors are told when it ends (also when ``on_start`` fails);
    * ``on_failure`` runs when its own code raised (``on_start`` included),
      ``on_stop`` on every other exit except ``kill()``, which runs no hook;
    * set ``trap_exit = True`` to receive ``Exit`` messages from linked
      processes instead of dying with them.

    Example::

        class Counter(Process):
            def __init__(self) -> None:
                super().__init__()
                self.n = 0

            def on_receive(self, message):
                self.n += message
                return self.n

        ref = Counter.start()
        assert ref.ask(2) == 2
        ref.stop()
    """

    # Slots, not the instance dict: tens of thousands of idle processes live at once, and
    # a dict of this many keys costs ~1 KiB each (Pykka's base keeps ``__dict__`` for
    # subclasses' own attributes).
    __slots__ = (
        "_actor_ref",
        "_current",
        "_deferred",
        "_finished",
        "_in_user_code",
        "_kill_injected",
        "_killed",
        "_launched",
        "_links",
        "_monitors",
        "_monitors_closed",
        "_outstanding",
        "_requested_exit",
        "_start_error",
        "_started",
        "_stop_envelopes",
        "_sys_lock",
        "_terminated",
        "_thread",
        "actor_inbox",
        "actor_stopped",
        "actor_urn",
        "exit_reason",
        "parent_urn",
        "process_state",
    )

    trap_exit: bool = False
    """Receive ``Exit`` messages from linked processes instead of dying with them."""

    dedicated_thread: bool = False
    """Run on a thread of its own instead of the shared scheduler.

    For processes whose handlers block in C for long (a database, a blocking
    library call) where the scheduler cannot tell: they would hold a worker.
    Waits the scheduler knows about (replies, monitors, starts) never need it.
    """

    use_daemon_thread: ClassVar[bool] = True
    """A dedicated thread is a daemon, like the scheduler's workers (Pykka's default is
    not): a process nobody stopped never keeps the interpreter from exiting. Stop your
    tree (or let ``beamagent``'s exit hook stop its runtimes) for ``on_stop`` to run."""

    ref_class: ClassVar[type[pykka.ActorRef[Any]]] = _ProcessRef
    """The ``ActorRef`` subclass handed out for this process (supervisors add methods)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # pykka.Actor.__init__, spelled out with a lighter ``actor_stopped``: a one-way
        # flag on a raw lock (is_set/wait/set, what Pykka and refs use) instead of a
        # threading.Event, whose Condition and waiter deque are ~1 KiB per process.
        self.actor_urn = _new_urn()
        self.actor_inbox = self._create_actor_inbox()
        self.actor_stopped = cast(threading.Event, _Flag())
        self._actor_ref = self.ref_class(self)
        self.exit_reason: ExitReason | None = None
        """Why the process ended; None while it runs."""
        self.process_state: str = "starting"
        """A short state name shown by ``tree()``; subclasses may set their own."""
        self.parent_urn: str | None = None
        """URN of the process this one was started linked to (its supervisor), if any."""
        self._sys_lock = threading.RLock()
        self._links: tuple[str, ...] | set[str] = ()  # see _add_link
        self._monitors: dict[int, MonitorRef] = {}
        self._terminated = False
        self._finished = False
        self._monitors_closed = False
        self._kill_injected = False
        self._killed = False  # by kill(): what an uninterruptible section waits to act on
        self._requested_exit: ExitReason | None = None
        self._in_user_code = False
        self._current: Envelope[Any] | None = None
        self._deferred = False
        self._outstanding: set[pykka.Future[Any]] | None = None  # deferred replies, made on use
        self._stop_envelopes: list[Envelope[Any]] | None = None  # made on the first stop
        self._thread: threading.Thread | None = None
        self._launched = False
        self._started = _Flag()
        self._start_error: BaseException | None = None
        self.mailbox.set_owner(self)

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return ProcessFuture()

    @staticmethod
    def _create_actor_inbox() -> ActorInbox:
        # Mailbox.get() may return None once closed; only our own loop calls get().
        return cast("ActorInbox", Mailbox())

    @property
    def mailbox(self) -> Mailbox:
        """This process's inbox (for introspection: ``mailbox.qsize()``)."""
        return self.actor_inbox  # type: ignore[return-value]  # a Mailbox (no cast call)

    # --- starting -----------------------------------------------------------------

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> pykka.ActorRef[Self]:
        """Construct the process, run ``on_start`` in its thread, and return its ref.

        Blocks until ``on_start`` has returned. Arguments go to ``__init__``.

        Raises:
            Exception: whatever ``__init__`` or ``on_start`` raised (links and
                monitors have already been told, with reason ``Crashed``).
            AlreadyRegistered: the name from ``spawn_options`` is taken.
        """
        options = _take_spawn_options()
        process = cls(*args, **kwargs)
        return process._spawn(options)

    def _spawn(self, options: _SpawnOptions | None) -> pykka.ActorRef[Self]:
        ref = self.actor_ref
        with _table_lock:
            _table[self.actor_urn] = self
        pykka.ActorRegistry.register(ref)
        try:
            if options is not None and options.name is not None:
                _names.register(options.name, ref, keeper=options.keeper)
            if options is not None and options.link_to is not None:
                self.parent_urn = options.link_to.actor_urn
                link(options.link_to, ref)
        except BaseException:
            self._finish(Normal())
            raise
        self._start_actor_loop()
        if not self._started.is_set():
            with blocking():
                self._started.wait()
        if self._start_error is not None:
            raise self._start_error
        # Started: nobody waits on this flag any more. The shared flag, set for good, stands
        # in for it, so a long-lived process does not keep a lock (and a flag) for nothing.
        self._started = _STARTED
        return ref

    def _start_actor_loop(self) -> None:
        if self.dedicated_thread:
            thread = threading.Thread(
                target=self._actor_loop,
                name=f"{type(self).__name__}-{next(_thread_counter)}",
                daemon=self.use_daemon_thread,
            )
            self._thread = thread
            thread.start()
            return
        # On the shared scheduler: the first slice runs on_start, mail schedules the rest.
        self.mailbox.attach(_schedule, self)
        parent = _local.process
        if parent is not None and not parent.dedicated_thread:
            self._start_here(parent)  # on a worker, or a caller-runs thread (see deliver)
        else:
            scheduler.submit(self)

    def _start_here(self, parent: Process) -> None:
        """Run ``on_start`` on this thread, in the handler of ``parent`` that starts us.

        On a worker, or on the thread of a caller that runs ``parent`` (see
        :func:`deliver`). That handler would only block until ``on_start`` returned on
        a worker: running it here saves two hand-offs between threads. It runs as this
        process's own (``current_process()``, a kill interrupts it alone); its mail
        is then drained by the scheduler, never in the parent's handler.
        """
        self._launched = True
        self._thread = threading.current_thread()
        _local.process = self
        started = False
        try:
            started = self._run_on_start()
        except _ProcessKilled:
            if not self._kill_injected:  # aimed at the parent, which is ended already
                self._started.set()
                self._thread = None
                _local.process = parent
                if not self._finished:
                    scheduler.submit(self)  # its links' signals end it on a worker
                raise
        except BaseException as exc:  # a bug in this code must still end the process cleanly
            log.exception("process_loop_failed", process=str(self))
            self._terminate(Crashed(exc), cast(ExcInfo, sys.exc_info()))
        finally:
            self._started.set()
            self._thread = None
            _local.process = parent
            if self._kill_injected:
                _clear_pending_kill()
        if started and (self._requested_exit is not None or self.mailbox.runnable()):
            # Mail came meanwhile, or on_start asked to end (stop_with): a slice handles it.
            # Still marked scheduled (attach): no put schedules it a second time.
            scheduler.submit(self)

    # --- the loop (a thread of its own) -------------------------------------------

    def _actor_loop(self) -> None:
        _local.process = self
        try:
            if self._run_on_start():
                reason, exc_info = self._receive_loop()
                if reason is not None:
                    self._terminate(reason, exc_info)
        except _ProcessKilled:
            pass
        except BaseException as exc:  # a bug in this loop must still end the process cleanly
            log.exception("process_loop_failed", process=str(self))
            self._terminate(Crashed(exc), cast(ExcInfo, sys.exc_info()))
        finally:
            self._started.set()
            _local.process = None
            if self._kill_injected:
                _clear_pending_kill()

    def _run_on_start(self) -> bool:
        self._in_user_code = True
        try:
            self.on_start()
        except BaseException as exc:
            self._leave_user_code()
            if self._terminated:
                self._start_error = pykka.ActorDeadError(f"{self} was killed while starting")
            else:
                self._start_error = exc
                self._terminate(Crashed(exc), cast(ExcInfo, sys.exc_info()))
            self._started.set()
            return False
        self._leave_user_code()
        if self.process_state == "starting":
            self.process_state = "running"
        self._started.set()
        return True

    def _leave_user_code(self) -> None:
        # Under the lock a kill takes to decide whether to interrupt this thread: once
        # this returns, no kill can land in whatever the thread runs next.
        with self._sys_lock:
            self._in_user_code = False

    def _receive_loop(self) -> tuple[ExitReason | None, ExcInfo | None]:
        mailbox = self.mailbox
        dispatch = self._handle_envelope
        while True:
            if self._requested_exit is not None:
                return self._requested_exit, None
            envelope = mailbox.get()
            if envelope is None:
                return None, None
            if self._terminated:
                # Killed between taking it and here: the kill answered what was still
                # queued and the message being handled, not this one.
                reject_envelope(envelope, str(self))
                return None, None
            outcome = dispatch(envelope)
            if outcome is not None:
                return outcome

    # --- the loop (a slice on the shared scheduler) --------------------------------

    def _run_slice(self, until: ProcessFuture | None = None) -> None:
        """Run ``on_start`` (first time) and up to ``SLICE`` messages; called by a worker.

        Or by a caller waiting for ``until`` (see :func:`deliver`): then the slice ends
        as soon as ``until`` is answered, and mail left goes to the scheduler.
        """
        if self._finished:
            return  # killed while it waited in the run queue
        _local.process = self
        self._thread = threading.current_thread()
        try:
            if not self._launched:
                self._launched = True
                if not self._run_on_start():
                    return
            mailbox = self.mailbox
            dispatch = self._handle_envelope
            for _ in range(SLICE):
                if self._terminated:
                    return
                if self._requested_exit is not None:
                    self._terminate(self._requested_exit, None)
                    return
                envelope = mailbox.take()
                if envelope is None:
                    return  # idle until the next message schedules it
                outcome = dispatch(envelope)
                if outcome is not None:
                    reason, exc_info = outcome
                    if reason is not None:
                        self._terminate(reason, exc_info)
                    return
                if until is not None and until._result is not None:  # done(), inline
                    # The caller's answer is in: it stops running this process. What
                    # came meanwhile (or the handler sent itself) goes to a worker.
                    if self._requested_exit is not None:
                        self._terminate(self._requested_exit, None)
                    elif mailbox.runnable():
                        scheduler.submit(self)
                    return
            if self._requested_exit is not None:
                self._terminate(self._requested_exit, None)
                return
            scheduler.submit(self)  # mail left: to the back of the run queue
        except _ProcessKilled:
            pass  # the killer already ended the process
        except BaseException as exc:  # a bug in this loop must still end the process cleanly
            log.exception("process_loop_failed", process=str(self))
            self._terminate(Crashed(exc), cast(ExcInfo, sys.exc_info()))
        finally:
            self._started.set()
            self._thread = None
            _local.process = None
            if self._kill_injected:
                _clear_pending_kill()

    # --- one message ----------------------------------------------------------------

    def _handle_envelope(
        self, envelope: Envelope[Any]
    ) -> tuple[ExitReason | None, ExcInfo | None] | None:
        """Handle one envelope: None to go on, else how the process ends (None: it ended)."""
        message = envelope.message
        kind = type(message)
        if kind is _ExitSignal:
            if not self.trap_exit:
                return message.reason, None
            message = Exit(message.from_urn, message.reason)
        elif kind is _ShutdownRequest:
            return message.reason, None
        elif kind is pykka_messages._ActorStop:
            if self._stop_envelopes is None:
                self._stop_envelopes = []
            self._stop_envelopes.append(envelope)
            return Normal(), None
        reply_to = envelope.reply_to
        self._current = envelope
        # Under the lock a kill takes to decide whether to interrupt this thread: a kill
        # that came before finds the thread out of user code and does not interrupt it,
        # so the handler must not start at all (its caller was told the process died, and
        # may do again what it asked, as a store write's caller retries it).
        with self._sys_lock:
            killed = self._terminated
            if not killed:
                self._in_user_code = True
        if killed:
            self._current = None
            reject_envelope(envelope, str(self))
            return None, None
        try:
            if kind is ProxyCall and type(self)._handle_receive is _PYKKA_HANDLE_RECEIVE:
                # What pykka.Actor._handle_receive does for a proxy call (a session's
                # every call), without its two frames and type tests; a class that
                # overrides it (or is patched to, at any time) gets it called.
                path = message.attr_path
                callee = getattr(self, path[0]) if len(path) == 1 else get_attr_directly(self, path)
                response = callee(*message.args, **message.kwargs)
            else:
                response = self._handle_receive(message)
        except BaseException as exc:
            self._leave_user_code()
            self._current = None
            if self._terminated:
                # Killed: the killer answers the message being handled, but only if it
                # reads ``_current`` before the line above cleared it. Answer it here too
                # (whoever answers second is ignored).
                reject_envelope(envelope, str(self), handling=True)
                return None, None
            exc_info = cast(ExcInfo, sys.exc_info())
            if reply_to is not None:
                _settle(reply_to, exc_info=exc_info)
                if isinstance(exc, ReplyError):
                    return None
            return Crashed(exc), exc_info
        self._leave_user_code()
        self._current = None
        if self._deferred:
            self._deferred = False
        elif reply_to is not None:
            _settle(reply_to, value=response)
        return None

    def defer_reply(self) -> pykka.Future[Any]:
        """Answer the ``ask`` being handled later, with :meth:`reply` / :meth:`reply_error`.

        Like returning ``noreply`` from an OTP ``handle_call``: the handler
        returns, the caller keeps waiting. If the process ends before replying,
        the caller gets ``ActorDeadError``, so it never waits for ever.

        Raises:
            NotInProcess: the message being handled was a ``tell`` (no caller).
        """
        envelope = self._current
        if envelope is None or envelope.reply_to is None:
            raise NotInProcess("defer_reply() needs an ask being handled by this process")
        self._deferred = True
        if self._outstanding is None:
            self._outstanding = set()
        self._outstanding.add(envelope.reply_to)
        return envelope.reply_to

    def caller_future(self) -> pykka.Future[Any] | None:
        """The reply future of the ``ask`` being handled; None for a ``tell`` or outside one.

        For marking the caller's future (e.g. "the request reached the
        backend") without deferring the reply.
        """
        envelope = self._current
        return None if envelope is None else envelope.reply_to

    def reply(self, future: pykka.Future[Any], value: Any = None) -> None:
        """Answer a caller whose reply was deferred with ``value``."""
        if self._outstanding is not None:
            self._outstanding.discard(future)
        _settle(future, value=value)

    def reply_error(self, future: pykka.Future[Any], error: BaseException) -> None:
        """Answer a caller whose reply was deferred by raising ``error`` in it."""
        if self._outstanding is not None:
            self._outstanding.discard(future)
        _settle(future, exc_info=(type(error), error, error.__traceback__))

    def stop_with(self, reason: ExitReason) -> None:
        """End this process with ``reason`` once the current message is handled.

        Call it from the process's own code (a handler or hook).
        """
        self._requested_exit = reason

    # --- ending -------------------------------------------------------------------

    def _terminate(self, reason: ExitReason, exc_info: ExcInfo | None = None) -> None:
        """End the process from its own thread: hooks first, then tell the world."""
        with self._sys_lock:
            if self._terminated:
                return
            self._terminated = True
            self.exit_reason = reason
        self._in_user_code = True
        try:
            if exc_info is not None:
                self.on_failure(*exc_info)
            else:
                self.on_stop()
        except _ProcessKilled:
            return
        except BaseException:
            log.exception("process_exit_hook_failed", process=str(self))
        finally:
            self._in_user_code = False
        self._finish(reason, exc_info)

    def _finish(self, reason: ExitReason, exc_info: ExcInfo | None = None) -> bool:
        """Mark the process dead, answer queued callers, notify links and monitors.

        Order matters: exit signals reach linked processes before any monitor
        can see the death (a ``Down``, or an immediate ``NoProc`` for a monitor
        set too late). So whoever waited for a ``Down`` and then calls the dead
        process's supervisor finds the exit already in that supervisor's mailbox.
        """
        with self._sys_lock:
            if self._finished:
                return False
            self._finished = True
            self._terminated = True
            if self.exit_reason is None or isinstance(reason, Killed):
                self.exit_reason = reason
            reason = self.exit_reason
            links, self._links = self._links, ()
        self.actor_stopped.set()
        if not self._started.is_set():  # ended before its start ran (killed meanwhile)
            if self._start_error is None:
                self._start_error = pykka.ActorDeadError(f"{self} ended before it started")
            self._started.set()
        pending = self.mailbox.close()
        pykka.ActorRegistry.unregister(self.actor_ref)
        _names.release_process(self.actor_urn)
        _names.release_keeper(self.actor_urn)
        cancel_timers_for(self.actor_urn)
        owner = str(self)
        for envelope in pending:
            reject_envelope(envelope, owner)
        current = self._current
        if current is not None:
            reject_envelope(current, owner, handling=True)
        outstanding, self._outstanding = self._outstanding, None
        for future in outstanding or ():
            error = NoReply(f"{owner} ended before replying", handler_returned=True)
            _settle(future, exc_info=(NoReply, error, None))
        self.process_state = "dead"
        self._log_exit(reason, exc_info)
        for urn in links:
            other = lookup_urn(urn)
            if other is not None:
                other._on_linked_exit(self.actor_urn, reason)
        with self._sys_lock:
            self._monitors_closed = True
            monitors = list(self._monitors.values())
            self._monitors.clear()
        with _table_lock:
            _table.pop(self.actor_urn, None)
        for mon in monitors:
            mon._fire(Down(mon, self.actor_urn, reason))
        for envelope in self._stop_envelopes or ():
            reject_envelope(envelope, owner)
        return True

    def _log_exit(self, reason: ExitReason, exc_info: ExcInfo | None) -> None:
        if isinstance(reason, Crashed) and exc_info is not None:
            log.error("process_crashed", process=str(self), exc_info=exc_info)
        elif isinstance(reason, Normal | Shutdown):
            log.debug("process_exited", process=str(self), reason=str(reason))
        else:
            log.warning("process_exited", process=str(self), reason=str(reason))

    def _kill(self) -> bool:
        me = threading.current_thread()
        with self._sys_lock:
            if self._finished:
                return False
            self._terminated = True
            self._killed = True
            self.exit_reason = Killed()
            thread = self._thread
            # Decided under the lock the running thread takes to leave user code: the
            # interrupt can only land in this process's own handler (a scheduler worker
            # goes on to run other processes afterwards).
            if self._in_user_code and thread is not None and thread is not me and thread.is_alive():
                self._kill_injected = True
                _async_raise(thread, _ProcessKilled)
        self._finish(Killed())
        if thread is me:
            raise _ProcessKilled()
        return True

    def _kill_again(self, thread: threading.Thread) -> bool:
        """Interrupt again a killed handler still running on ``thread``; True if it was.

        The first interrupt can be lost: raised inside a ``__del__``, a weakref or GC
        callback (which CPython reports and ignores), or caught by the handler, it
        leaves the handler running although its process has ended. The scheduler's
        monitor calls this while the handler runs on (``Scheduler._repeat_kill``).
        """
        with self._sys_lock:
            if (
                self._kill_injected
                and self._in_user_code
                and self._thread is thread
                and thread.is_alive()
            ):
                return _async_raise(thread, _ProcessKilled)
        return False

    # --- signals from other processes ------------------------------------------------

    def _on_linked_exit(self, from_urn: str, reason: ExitReason) -> None:
        with self._sys_lock:
            if self._terminated:
                return
            self._drop_link(from_urn)
        self._deliver_exit(from_urn, reason)

    def _deliver_exit(self, from_urn: str, reason: ExitReason) -> None:
        if self.trap_exit:
            self.mailbox.put(Envelope(Exit(from_urn, reason)))
        elif not isinstance(reason, Normal):
            self.mailbox.put_signal(Envelope(_ExitSignal(from_urn, reason)))

    def _request_shutdown(self, reason: ExitReason) -> bool:
        return self.mailbox.put_signal(Envelope(_ShutdownRequest(reason)))

    def _add_link(self, urn: str) -> None:
        """Record a link (under ``_sys_lock``).

        A tuple while there are few: most processes have one link (their supervisor),
        and a tuple of strings is one object the cyclic GC stops tracking, where a set
        is walked at every full collection (and is ~200 bytes). A set from
        ``_LINKS_AS_TUPLE`` links on (a supervisor's children), so adding stays O(1).
        """
        links = self._links
        if isinstance(links, tuple):
            if urn in links:
                return
            if len(links) < _LINKS_AS_TUPLE:
                self._links = (*links, urn)
                return
            links = self._links = set(links)
        links.add(urn)

    def _drop_link(self, urn: str) -> None:
        """Forget a link, if any (under ``_sys_lock``)."""
        links = self._links
        if isinstance(links, tuple):
            if urn in links:
                self._links = tuple(u for u in links if u != urn)
        else:
            links.discard(urn)

    def _add_monitor(self, mon: MonitorRef) -> bool:
        with self._sys_lock:
            if self._monitors_closed:
                return False
            self._monitors[mon.id] = mon
            return True


# --- module functions -------------------------------------------------------------------


def _settle(
    future: pykka.Future[Any], *, value: Any = None, exc_info: ExcInfo | None = None
) -> None:
    try:
        if exc_info is not None:
            future.set_exception(exc_info=exc_info)
        else:
            future.set(value)
    except Exception:  # queue.Full: a kill already answered this caller
        pass


_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
# How long a kill waits for threads being started to take their own thread ids.
_NEWBORN_WAIT = 1.0


def _async_raise(thread: threading.Thread, exc_type: type[BaseException]) -> bool:
    """Raise ``exc_type`` in ``thread`` at its next bytecode; True if it was set there.

    ``PyThreadState_SetAsyncExc`` finds thread states by thread id, and on CPython
    3.11 a thread being started carries the id of the thread that starts it until
    its first instruction runs. A kill that lands while the handler it interrupts is
    starting a thread (a timer, a scheduler worker, anything in user code) would also
    kill the newborn before it signals that it started, and the handler would wait
    in ``Thread.start()`` forever. So: first let threads in the middle of a start
    run (bounded), then inject; if the exception still reached more than one thread
    state, take it back and try again.
    """
    ident = thread.ident
    if ident is None:
        return False
    deadline = time.monotonic() + _NEWBORN_WAIT
    while True:
        while threading._limbo and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.0002)  # lets the newborns run; nothing here holds what they need
        hit = int(_set_async_exc(ctypes.c_ulong(ident), ctypes.py_object(exc_type)))
        if hit <= 1:
            return hit == 1
        _set_async_exc(ctypes.c_ulong(ident), None)  # take it back from all of them
        if time.monotonic() >= deadline:
            log.warning("kill_not_injected", thread=thread.name)
            return False  # the handler runs on; the process is already ended
        time.sleep(0.0002)


def _clear_pending_kill() -> None:
    # A kill that raced with the end of a handler may still be pending: drop it so it
    # cannot surface in threading's own shutdown code.
    with suppress(_ProcessKilled):
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(threading.get_ident()), None)


def deliver(ref: pykka.ActorRef[Any], envelope: Envelope[Any]) -> None:
    """Queue ``envelope`` for ``ref``'s process; run the process on this thread if it was idle.

    For a caller that waits on ``envelope.reply_to`` (a :class:`ProcessFuture`) right
    after: when the message makes an idle process on the shared scheduler runnable,
    and this thread is neither the main thread, a scheduler worker nor running a
    process, this thread runs the process's handlers itself (caller-runs), until the
    reply is set or the mailbox is empty, and hands what mail is left to the
    scheduler. The ask then costs no hand-off between threads: a blocking ask to a
    worker, and the reply back, are two thread wake-ups (on a VM tens of microseconds
    each), and with many callers each wake-up also waits for the GIL.

    The process runs exactly as on a worker: one handler at a time, in message order
    (the mailbox counts it as scheduled, so no worker takes it meanwhile), as
    ``current_process()``, where a ``kill()`` interrupts only its handler, in a
    context of its own (the caller's context variables are not seen). Everything
    else (a busy process, a dedicated thread, a caller that is itself a process,
    ``tell``) queues the message as ``ActorRef.tell``/``ask`` would; so does the main
    thread, where a signal handler's exception (Ctrl-C's ``KeyboardInterrupt``, a
    SIGTERM handler's ``SystemExit``) would land in the process's handler, or in a
    supervisor's bookkeeping, and end that process instead of reaching the caller.
    """
    mailbox: Any = ref.actor_inbox
    until = envelope.reply_to
    if (
        type(mailbox) is not Mailbox
        or not isinstance(until, ProcessFuture)
        or _local.process is not None
        or _thread.get_ident() == _main_ident
        or in_worker()
    ):
        mailbox.put(envelope)
        return
    if mailbox.put_claim(envelope):
        process: Process = mailbox._target
        thread = threading.current_thread()
        callers = scheduler.callers
        callers[thread] = process  # watched by the scheduler's monitor, as a worker is
        try:
            contextvars.Context().run(process._run_slice, until)
        finally:
            del callers[thread]


def ask(target: ProcessTarget, message: Any, *, timeout: float | None = None) -> Any:
    """Send ``message`` to a process and wait for its reply (a caller-runs ``ask``).

    Like ``ref.ask(message, timeout=timeout)``, except that from a thread other than
    the main thread that is not itself running a process, an idle process handles the
    message on the calling thread instead of a scheduler worker (see :func:`deliver`):
    one ask costs no thread hand-off. ``timeout`` bounds the wait for the reply; a
    handler running on the calling thread runs to its end first (a handler that defers
    its reply returns at once, and the wait for the reply is bounded as usual).

    Raises:
        NoSuchProcess: no live process for ``target`` (a ref, a process or a name).
        pykka.Timeout: no reply within ``timeout`` seconds.
        NotHandled: the process ended before it handled the message.
        NoReply: the process ended while handling it, or before a deferred reply.
        Exception: what the handler raised.
    """
    return ask_ref(require(target).actor_ref, message, timeout)


def ask_ref(ref: pykka.ActorRef[Any], message: Any, timeout: float | None) -> Any:
    """:func:`ask` on a ref, as ``ref.ask`` fails: ``NotHandled`` if it ended already."""
    future = ProcessFuture()
    deliver(ref, Envelope(message, reply_to=future))
    return future.get(timeout=timeout)


def lookup_urn(urn: str) -> Process | None:
    """The live process with this URN, or None."""
    return _table.get(urn)


def _keeper_alive(urn: str) -> bool:
    process = _table.get(urn)
    return process is not None and not process._terminated


_names.keeper_alive = _keeper_alive


def lookup(target: ProcessTarget) -> Process | None:
    """The live ``Process`` for a ref, a process object or a registered name, else None."""
    if isinstance(target, pykka.ActorRef | Process):  # refs first: Process is an ABC
        return _table.get(target.actor_urn)
    ref = _names.whereis(target)
    return None if ref is None else _table.get(ref.actor_urn)


def _urn_of(target: ProcessTarget) -> str:
    if isinstance(target, pykka.ActorRef | Process):  # refs first: Process is an ABC
        return target.actor_urn
    ref = _names.whereis(target)
    return ref.actor_urn if ref is not None else f"name:{target!r}"


def current_process() -> Process | None:
    """The ``Process`` whose thread is running this code, or None outside any process."""
    process: Process | None = _local.process
    return process


@contextmanager
def uninterruptible() -> Iterator[None]:
    """A section of a handler that a ``kill()`` does not interrupt: the kill waits for its end.

    For code that must not be left half done by an interrupt at an arbitrary bytecode,
    such as waiting for a pooled connection (``psycopg_pool`` loses a connection
    handed to a waiter interrupted by a ``BaseException``). A kill during the section
    ends the process at once as usual (its callers are answered, its links and monitors
    told), but the handler's thread runs the section to its end and is interrupted
    there, by ``_ProcessKilled`` raised at the ``with`` statement's exit. Keep the
    section short and bounded: a restarted process may already run beside it.

    Outside the handlers and hooks of a process it does nothing. Sections nest.
    """
    process = current_process()
    if process is None or not process._in_user_code:
        yield  # not in a handler, or inside an outer section already
        return
    with process._sys_lock:
        killed = process._killed  # not _terminated: a stop hook runs terminated
        if not killed:
            process._in_user_code = False  # a kill now leaves this thread alone
    if killed:
        raise _ProcessKilled()
    try:
        yield
    finally:
        with process._sys_lock:
            killed = process._killed
            if not killed:
                process._in_user_code = True
    if killed:
        raise _ProcessKilled()


def current_owner() -> Process | threading.Thread:
    """What is running this code, for locks that must survive a holder killed mid-hold.

    The running ``Process`` (on the shared scheduler a worker thread outlives the
    processes it runs, so the thread says nothing about the holder), else the thread.
    Pair with :func:`owner_alive`.
    """
    process: Process | None = _local.process
    return threading.current_thread() if process is None else process


def owner_alive(owner: Process | threading.Thread) -> bool:
    """Whether ``owner`` (from :func:`current_owner`) may still run code.

    A killed process counts as alive until its handler has unwound (a kill interrupts
    the handler, which may still be running its ``finally`` blocks), so a lock it held
    is never taken over while it could still release it.
    """
    if isinstance(owner, threading.Thread):
        return owner.is_alive()
    if not owner._finished:
        return True
    thread = owner._thread
    return thread is not None and thread.is_alive()


def start_link(
    parent: pykka.ActorRef[Any], cls: type[Process], *args: Any, **kwargs: Any
) -> pykka.ActorRef[Any]:
    """Start ``cls(*args, **kwargs)`` linked to ``parent`` before its ``on_start`` runs."""
    with spawn_options(link_to=parent):
        return cls.start(*args, **kwargs)


def link(a: ProcessTarget, b: ProcessTarget) -> None:
    """Link two processes: when one ends, the other gets an exit signal with its reason.

    A non-``Normal`` reason ends the receiver with the same reason unless it
    traps exits (``trap_exit = True``), in which case it gets ``Exit(urn,
    reason)`` as a message. Linking to a dead process behaves as if it had
    just ended with ``NoProc``.
    """
    pa, pb = lookup(a), lookup(b)
    ua, ub = _urn_of(a), _urn_of(b)
    if ua == ub:
        return
    if pa is not None and pb is not None:
        # Both exist (every supervised start): take their two locks in URN order directly.
        first, second = (pa, pb) if ua < ub else (pb, pa)
        with first._sys_lock, second._sys_lock:
            if not pa._terminated and not pb._terminated:
                pa._add_link(ub)
                pb._add_link(ua)
                return
            a_alive, b_alive = not pa._terminated, not pb._terminated
    else:
        live = pa if pa is not None else pb
        with live._sys_lock if live is not None else nullcontext():
            a_alive = pa is not None and not pa._terminated
            b_alive = pb is not None and not pb._terminated
    if a_alive and pa is not None:
        pa._deliver_exit(ub, NoProc())
    elif b_alive and pb is not None:
        pb._deliver_exit(ua, NoProc())


def unlink(a: ProcessTarget, b: ProcessTarget) -> None:
    """Remove the link between two processes (no-op if there is none)."""
    ua, ub = _urn_of(a), _urn_of(b)
    for process, other in ((lookup(a), ub), (lookup(b), ua)):
        if process is not None:
            with process._sys_lock:
                process._drop_link(other)


def monitor(target: ProcessTarget, watcher: Watcher = _CURRENT) -> MonitorRef:
    """Watch ``target``; when it ends, ``Down(ref, urn, reason)`` goes to the watcher.

    Args:
        target: a process ref, object, or registered name.
        watcher: a process ref (gets ``Down`` as a message), a callable (called
            with it), or None (only ``MonitorRef.wait()``). Defaults to the
            calling process, or None outside any process.

    Monitors stack: each call returns a new ``MonitorRef``. A target that is
    already dead gets an immediate ``Down`` with reason ``NoProc``.
    """
    if watcher is _CURRENT:
        caller = current_process()
        watcher = None if caller is None else caller.actor_ref
    urn = _urn_of(target)
    mon = MonitorRef(urn, watcher)
    process = lookup(target)
    if process is None or not process._add_monitor(mon):
        mon._fire(Down(mon, urn, NoProc()))
    return mon


def demonitor(mon: MonitorRef) -> bool:
    """Stop watching; returns False if the ``Down`` was already delivered.

    A ``Down`` already queued in the watcher's mailbox is not removed.
    """
    process = _table.get(mon.target_urn)
    if process is None:
        return False
    with process._sys_lock:
        return process._monitors.pop(mon.id, None) is not None


def kill(target: ProcessTarget) -> bool:
    """End a process at once with reason ``Killed``; no hook runs. Untrappable.

    A process busy in a handler is interrupted at its next Python bytecode
    (its pending callers get ``ActorDeadError`` immediately); on the shared
    scheduler again after 0.1 s, and less often after that, while the handler
    runs on, so an interrupt swallowed by a ``__del__`` or GC callback, or
    caught, is not lost. Code blocked in a C call (a lock, a socket) is
    abandoned until that call returns.
    Returns False if the process was already dead.
    """
    process = lookup(target)
    if process is None:
        return False
    return process._kill()


def send_exit(target: ProcessTarget, reason: ExitReason) -> bool:
    """Send an exit signal, like ``erlang:exit/2``; returns False if the target is dead.

    ``Killed`` kills; for a process that traps exits any reason arrives as an
    ``Exit`` message; otherwise ``Normal`` is ignored and any other reason
    ends it with that reason.
    """
    process = lookup(target)
    if process is None:
        return False
    if isinstance(reason, Killed):
        return process._kill()
    caller = current_process()
    process._deliver_exit(caller.actor_urn if caller is not None else "external", reason)
    return True


def shutdown(
    target: ProcessTarget,
    timeout: float | str = 5.0,
    reason: ExitReason | None = None,
) -> ExitReason:
    """Stop a process the way a supervisor does and return its exit reason.

    ``timeout`` is seconds to wait for a graceful stop (``on_stop`` runs)
    before killing it, ``"infinity"`` to wait for ever, or ``"brutal_kill"``
    to kill at once. The shutdown overtakes queued messages (their callers
    get ``ActorDeadError``); a handler already running is allowed to finish.
    Returns ``NoProc()`` if the process was already dead.
    """
    process = lookup(target)
    if process is None:
        return NoProc()
    mon = monitor(process, watcher=None)
    if timeout == "brutal_kill":
        process._kill()
    else:
        process._request_shutdown(reason if reason is not None else Shutdown())
        wait = None if timeout == "infinity" else float(timeout)
        try:
            return mon.wait(wait).reason
        except WaitTimeout:
            log.warning("process_shutdown_timed_out", process=str(process), timeout=wait)
            process._kill()
    return mon.wait().reason


def require(target: ProcessTarget) -> Process:
    """The live process for ``target``.

    Raises:
        NoSuchProcess: it is not alive.
    """
    process = lookup(target)
    if process is None:
        raise NoSuchProcess(target)
    return process
