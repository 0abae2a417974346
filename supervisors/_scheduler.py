"""The shared scheduler: processes run on a small pool of worker threads (M:N).

A process that has mail is put on one run queue; a worker takes it and runs a
*slice* of it — up to :data:`SLICE` messages, one at a time, in order — and
puts it back if mail is left. A process runs on one worker at a time, so its
handlers never run concurrently, exactly as with a thread of its own; an idle
process costs no thread, no stack and no futex.

Handlers may block (an ``ask`` to another process, ``Future.get``, a lock,
I/O). A worker that blocks would starve the others — or deadlock them, when
the process it waits for needs a worker to answer. Two mechanisms keep the
pool live, as Java's ``ForkJoinPool`` does with managed blocking:

* **managed blocking**: the waits ``supervisors`` and ``beamagent`` know about
  (``Future.get`` of a process's reply, ``MonitorRef.wait``, a synchronous
  ``start``, ``await_name``) run inside :func:`blocking`, which adds a
  compensating worker at once when no other worker is free;
* **a monitor**: for waits nobody announced (a user's lock, ``time.sleep``, a
  socket), a monitor thread adds a worker when the run queue has waited for a
  tick with no slice finished.

**The next slot.** When a handler running on a worker makes an idle process
runnable (a ``tell`` or an ``ask`` to it), that process goes into the worker's
*next slot* instead of the run queue, and no other worker is woken: the worker
runs it as soon as the current slice ends (Go's ``runnext``, Tokio's LIFO slot).
A chain of messages between idle processes (a graph step, a reply to a caller's
caller) then stays on one worker, where each hop through the run queue would
wake another thread — on a VM, tens of microseconds each, and the woken thread
then also waits for the GIL the sender still holds. The slot never keeps a
process from running for long:

* a handler that blocks in a managed wait (an ``ask``'s ``Future.get``,
  :func:`blocking`) moves its slot to the run queue first;
* the monitor moves the slot of a worker that has been in the same slice for
  ``slot_ticks`` ticks (a handler that computes, or blocks unannounced);
* a process displaced from the slot by a newer one goes to the run queue;
* after :data:`SLOT_RUNS` slot runs in a row a worker serves the run queue
  first, so a pair of processes feeding each other's slot cannot starve it;
* a slice that ends (returns, crashes, is killed) leaves the slot to its worker.

The monitor also makes ``kill()`` stick: a killed handler that is still running
:data:`KILL_REPEAT` seconds later (its interrupt was raised inside a ``__del__``
or a GC callback, which CPython reports and ignores, or the handler caught it)
is interrupted again, then less and less often, until it is out of user code.

Messages from other threads (a caller, a timer) and a process's own requeue
(mail left after a full slice) go to the run queue as before.

For the same reason a handler can hand the scheduler the wake-up of a thread
outside the pool (:meth:`Scheduler.wake_when_idle`: a graph run's result for
its caller), to run when the worker has nothing to run next.

The pool keeps ``core`` workers (one per CPU, at least two) and shrinks back
to them: an extra worker ends after ``idle_timeout`` seconds without work.
Workers are daemon threads, so an interpreter never waits for an idle pool at
exit. :func:`release_idle_workers` ends the idle ones now (tests that check no
thread outlives them).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from supervisors._log import get_logger

if TYPE_CHECKING:
    from supervisors._process import Process

__all__ = ["SLICE", "SLOT_RUNS", "Scheduler", "blocking", "release_idle_workers", "scheduler"]

log = get_logger(__name__)

SLICE = 64
"""Messages a process handles before it yields its worker to the next process."""

SLOT_RUNS = 16
"""Slices a worker runs from its next slot in a row before the run queue goes first."""

KILL_REPEAT = 0.1
"""Seconds a killed handler may run on before the monitor interrupts it again."""

# A killed handler the monitor watches: (process, when to interrupt again, the wait after).
_KillRepeat = tuple["Process", float, float]

_STOP: Any = object()


class _Local(threading.local):
    """This thread's worker; None on any other thread (a class default: reading it there
    costs no AttributeError, as ``getattr(local, "worker", None)`` did)."""

    worker: _Worker | None = None


_local = _Local()


class _Worker:
    __slots__ = ("blocked", "later", "running", "slices", "slot", "started", "thread")

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread
        # Set once thread.start() returned (or failed): release_idle joins only then (a
        # worker is listed before its thread starts; joining it earlier is an error).
        self.started = threading.Event()
        self.blocked = 0  # nesting depth of blocking() on this worker
        self.running: Process | None = None  # the process whose slice runs here
        self.slices = 0  # slices started here: the monitor's sign this one moved on
        # The next slot: at most one process (a deque for its atomic append/popleft, so
        # the monitor can take it from another thread without a lock).
        self.slot: deque[Process] = deque()
        self.later: deque[Callable[[], object]] = deque()  # wakes deferred to the idle point


class Scheduler:
    """A run queue of processes and the worker threads that drain it.

    Args:
        core: workers kept while there is work (default: one per CPU, at least 2).
        max_workers: the most workers at once, compensation included.
        idle_timeout: seconds an extra worker waits for work before it ends.
        tick: how often (seconds) the monitor checks for a stalled run queue.
        slot_ticks: ticks a handler's slice may last before the monitor moves the
            process in its worker's next slot to the run queue.
    """

    def __init__(
        self,
        core: int | None = None,
        max_workers: int = 512,
        idle_timeout: float = 1.0,
        tick: float = 0.01,
        slot_ticks: int = 1,
    ) -> None:
        self.core = max(2, core if core is not None else (os.cpu_count() or 2))
        self.max_workers = max(self.core, max_workers)
        self.idle_timeout = idle_timeout
        self.tick = tick
        self.slot_ticks = slot_ticks
        self._serial = itertools.count(1)
        self._empty_pool()

    def _empty_pool(self) -> None:
        """No worker, no monitor, an empty run queue and a fresh lock (new, or after a fork)."""
        self._runq: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._workers: dict[threading.Thread, _Worker] = {}
        # The workers waiting on the run queue, and those inside blocking(): sets, not
        # counters, so a count is one len() (submit runs on every message to an idle
        # process) and an update is one atomic add/discard. A kill interrupting a handler
        # between changing a worker's depth and its membership leaves at most that worker
        # misfiled, until its next slice (which resets it) or its end (which drops it): a
        # spare worker started, or one not started, never a count wrong for ever.
        self._idle: set[_Worker] = set()
        self._blocked: set[_Worker] = set()
        self._slices = 0  # slices run: the monitor's sign of progress
        self._monitor: threading.Thread | None = None
        self._releasing = False
        self._stops = 0  # release_idle's stop markers still in the run queue: not work
        # Threads outside the pool running a process's slice (caller-runs, see
        # ``supervisors.deliver``) -> that process: the monitor repeats a lost kill
        # there as it does on a worker. Set and popped by the caller thread only.
        self.callers: dict[threading.Thread, Process] = {}

    def after_fork_in_child(self) -> None:
        """Forget the parent's workers in a forked child: their threads were not copied.

        The child starts with an empty pool (a fresh lock, in case a parent thread held
        it at the fork), so its first message spawns a worker as in a new process.
        """
        self._empty_pool()
        _local.worker = None  # the forking thread may have been a worker: it is none now

    # --- submitting -----------------------------------------------------------------

    def _counts(self) -> tuple[int, int, int]:
        """(workers, idle, blocked) now."""
        return len(self._workers), len(self._idle), len(self._blocked)

    def submit(self, process: Process) -> None:
        """Queue ``process`` to run a slice (its mailbox says it has work).

        From a handler running on a worker, the process goes into that worker's
        next slot (the worker runs it once the handler's slice ends, and no other
        worker is woken); a process already there moves on to the run queue.
        From anywhere else it goes to the run queue.
        """
        worker: _Worker | None = _local.worker
        if (
            worker is not None
            and worker.blocked == 0
            and worker.running is not None
            and worker.running is not process  # its own slice left mail: back of the queue
        ):
            slot = worker.slot
            slot.append(process)
            if len(slot) == 1:
                return
            try:
                process = slot.popleft()  # the one displaced
            except IndexError:
                return  # the monitor moved it to the run queue meanwhile
        self._enqueue(process)

    def _enqueue(self, process: Process) -> None:
        self._runq.put(process)
        # A worker that is idle picks it up; otherwise make sure there is capacity.
        if not self._idle and len(self._workers) - len(self._blocked) < self.core:
            self._spawn(reason="capacity")

    def wake_when_idle(self, wake: Callable[[], object]) -> None:
        """Run ``wake`` (it wakes a thread) once this worker has nothing to run next.

        For a handler that wakes a thread which needs the GIL at once (a caller
        waiting for a result): woken now, that thread would only wait for the GIL
        this worker holds while it runs its next slot, and be woken a second time.
        The wake runs when the worker next looks at the run queue, when the handler
        enters a managed wait, or from the monitor once the slice has lasted
        ``slot_ticks`` ticks. Outside a handler on a worker it runs at once.
        """
        worker: _Worker | None = _local.worker
        if worker is None or worker.blocked or worker.running is None:
            wake()
        else:
            worker.later.append(wake)

    def _run_later(self, worker: _Worker) -> None:
        later = worker.later
        while later:
            try:
                wake = later.popleft()
            except IndexError:
                return
            try:
                wake()
            except Exception:
                log.exception("scheduler_wake_failed")

    def _flush_slot(self, worker: _Worker) -> None:
        """Move ``worker``'s next slot to the run queue (it cannot run it soon)."""
        slot = worker.slot
        while slot:
            try:
                process = slot.popleft()
            except IndexError:
                return  # taken meanwhile (by the worker, or the monitor)
            self._enqueue(process)

    def _spawn(self, reason: str) -> bool:
        with self._lock:
            if len(self._workers) >= self.max_workers:
                return False
            thread = threading.Thread(
                target=self._work,
                name=f"supervisors-worker-{next(self._serial)}",
                daemon=True,
            )
            worker = self._workers[thread] = _Worker(thread)
            self._releasing = False
            start_monitor = self._monitor is None
            if start_monitor:
                self._monitor = threading.Thread(
                    target=self._watch, name="supervisors-scheduler-monitor", daemon=True
                )
        try:
            thread.start()
        except BaseException:  # can't start new thread: no phantom worker left listed
            with self._lock:
                self._workers.pop(thread, None)
                if start_monitor:
                    self._monitor = None
            raise
        finally:
            worker.started.set()
        if start_monitor:
            assert self._monitor is not None
            self._monitor.start()
        if reason != "capacity":
            log.debug("scheduler_worker_added", reason=reason, workers=len(self._workers))
        return True

    # --- workers --------------------------------------------------------------------

    def _work(self) -> None:
        me = threading.current_thread()
        worker = self._workers[me]
        _local.worker = worker
        runq = self._runq
        idle = self._idle
        blocked = self._blocked
        slot = worker.slot
        streak = 0  # slot runs in a row: at SLOT_RUNS the run queue goes first
        try:
            while True:
                try:
                    item = None
                    if slot:
                        if streak >= SLOT_RUNS and runq.qsize():
                            # Fairness: the slot goes behind what waited in the run queue.
                            self._flush_slot(worker)
                        else:
                            try:
                                item = slot.popleft()
                                streak += 1
                            except IndexError:
                                pass  # the monitor moved it to the run queue
                    if item is None:
                        streak = 0
                        if worker.later:
                            self._run_later(worker)
                        idle.add(worker)
                        try:
                            item = runq.get(timeout=self.idle_timeout)
                        except queue.Empty:
                            item = None
                        idle.discard(worker)
                        if item is _STOP:
                            with self._lock:
                                self._stops -= 1
                            return
                        if item is None:
                            if self._releasing or len(self._workers) > self.core:
                                return
                            continue
                    worker.blocked = 0  # a new slice is in no blocking wait
                    blocked.discard(worker)
                    worker.slices += 1
                    worker.running = item
                    item._run_slice()
                    worker.running = None
                    self._slices += 1
                except BaseException:
                    # A kill aimed at a handler that had just returned (it raises at the
                    # next bytecode, wherever that is): that process already ended. The
                    # worker lives on, and runs what its slot holds.
                    worker.running = None
                    idle.discard(worker)
                    log.debug("scheduler_stray_interrupt", exc_info=True)
        finally:
            self._workers.pop(me, None)
            idle.discard(worker)
            blocked.discard(worker)
            worker.running = None
            _local.worker = None
            self._flush_slot(worker)  # never lose a process (an exit with a full slot)
            self._run_later(worker)
            # Work queued while this worker still looked idle (or busy at full capacity)
            # spawned nobody: a leaving worker that was the last able to take it must
            # hand over, or it waits for ever (the monitor ends with the last worker).
            # It left the idle set and the workers first, so an _enqueue after this
            # check sees it gone and spawns itself.
            if (
                self._runq.qsize() > self._stops
                and not self._idle
                and len(self._workers) - len(self._blocked) < self.core
            ):
                self._spawn(reason="handoff")

    def _watch(self) -> None:
        """Add a worker when the run queue stalls behind workers blocked unannounced.

        Also move a next slot to the run queue when its worker has been in the same
        slice for ``slot_ticks`` ticks: that handler computes or blocks unannounced.
        """
        seen = -1
        held: dict[_Worker, tuple[int, int]] = {}  # worker -> (slice, ticks seen in it)
        # Killed handlers still running: worker -> (process, when to interrupt it again,
        # the wait after that); rebuilt each tick, so a handler that left is forgotten.
        kills: dict[_Worker, _KillRepeat] = {}
        caller_kills: dict[threading.Thread, _KillRepeat] = {}
        wake = threading.Event()
        while True:
            wake.wait(self.tick)
            with self._lock:
                if not self._workers:
                    self._monitor = None
                    return
                workers = list(self._workers.values())
            now: dict[_Worker, tuple[int, int]] = {}
            still: dict[_Worker, _KillRepeat] = {}
            for worker in workers:
                mark = worker.slices
                before = held.get(worker)
                ticks = before[1] + 1 if before is not None and before[0] == mark else 0
                running = worker.running
                if ticks >= self.slot_ticks and running is not None:
                    if worker.slot:
                        self._flush_slot(worker)
                    if worker.later:
                        self._run_later(worker)
                if running is not None and running._kill_injected:
                    repeat = self._repeat_kill(worker.thread, running, kills.get(worker))
                    if repeat is not None:
                        still[worker] = repeat
                now[worker] = (mark, ticks)
            held = now
            kills = still
            caller_kills = self._repeat_caller_kills(caller_kills)
            slices = self._slices
            # Stop markers are no stalled work: a worker spawned for them would take one
            # meant for a busy worker, which then never ends.
            stalled = self._runq.qsize() > self._stops
            if stalled and slices == seen and self._counts()[1] == 0:
                self._spawn(reason="stalled")
            seen = slices

    def _repeat_caller_kills(
        self, kills: dict[threading.Thread, _KillRepeat]
    ) -> dict[threading.Thread, _KillRepeat]:
        """``_repeat_kill`` for the killed handlers running on callers' threads."""
        still: dict[threading.Thread, _KillRepeat] = {}
        for thread, running in self.callers.copy().items():  # one C call: no race
            if running._kill_injected:
                repeat = self._repeat_kill(thread, running, kills.get(thread))
                if repeat is not None:
                    still[thread] = repeat
        return still

    @staticmethod
    def _repeat_kill(
        thread: threading.Thread, process: Process, entry: _KillRepeat | None
    ) -> _KillRepeat | None:
        """Interrupt again a killed handler that runs on (its interrupt was lost).

        See ``Process._kill_again``. Not at once, and then less and less often
        (:data:`KILL_REPEAT` seconds, doubling up to a second): a lost interrupt
        makes CPython call ``sys.unraisablehook``, on the same thread, and an
        interrupt landing in the hook while it reports the first is lost too.
        Returns what to keep for the next tick (None: the handler is out).
        """
        now = time.monotonic()
        if entry is None or entry[0] is not process:
            return (process, now + KILL_REPEAT, KILL_REPEAT)  # first seen: give it time
        _, due, wait = entry
        if now < due:
            return entry
        if not process._kill_again(thread):
            return None
        log.debug("scheduler_kill_repeated", process=str(process))
        wait = min(wait * 2, 1.0)
        return (process, now + wait, wait)

    # --- managed blocking -----------------------------------------------------------------

    def enter_blocking(self) -> _Worker | None:
        """A worker is about to block: make sure another one can run meanwhile."""
        worker: _Worker | None = _local.worker
        if worker is None:
            return None
        worker.blocked += 1
        if worker.blocked == 1:
            self._blocked.add(worker)
            if worker.slot:  # it waits: what it made runnable must run elsewhere
                self._flush_slot(worker)
            if worker.later:
                self._run_later(worker)
            total, idle, blocked = self._counts()
            if idle == 0 and (total - blocked < self.core or self._runq.qsize()):
                self._spawn(reason="blocking")
        return worker

    def exit_blocking(self, worker: _Worker | None) -> None:
        """The blocking wait of ``worker`` is over."""
        if worker is not None and worker.blocked > 0:
            worker.blocked -= 1
            if worker.blocked == 0:
                self._blocked.discard(worker)

    # --- introspection and release ------------------------------------------------------

    def workers(self) -> int:
        """How many worker threads exist now."""
        return len(self._workers)

    def release_idle(self, timeout: float = 5.0) -> bool:
        """End every idle worker now, a busy one once its slice ends (and then the monitor).

        Waits up to ``timeout`` seconds for each; returns True if no worker is left.
        """
        with self._lock:
            self._releasing = True
            threads = list(self._workers)
            self._stops += len(threads)
        for _ in threads:
            self._runq.put(_STOP)
        for thread in threads:
            worker = self._workers.get(thread)
            if worker is not None and not worker.started.wait(timeout):
                continue  # still starting after timeout: it is left, as a busy one is
            if thread is not threading.current_thread() and thread.ident is not None:
                thread.join(timeout)
        monitor = self._monitor
        if monitor is not None and not self._workers:
            monitor.join(timeout)
        return not self._workers


scheduler = Scheduler()
"""The process-wide scheduler every non-dedicated ``Process`` runs on."""

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=scheduler.after_fork_in_child)


@contextlib.contextmanager
def blocking() -> Iterator[None]:
    """Announce a blocking wait, so the scheduler can run other processes meanwhile.

    Use it around a wait that may take a while when the code can run in a
    process handler (``with blocking(): event.wait()``). Outside a scheduler
    worker it does nothing.
    """
    worker = scheduler.enter_blocking()
    try:
        yield
    finally:
        scheduler.exit_blocking(worker)


def in_worker() -> bool:
    """Whether this thread is one of the scheduler's workers."""
    return _local.worker is not None


def release_idle_workers(timeout: float = 5.0) -> bool:
    """End the scheduler's idle workers now instead of keeping them for the next work.

    For tests that check that no thread outlives them. Returns True if no
    worker is left.
    """
    return scheduler.release_idle(timeout)
