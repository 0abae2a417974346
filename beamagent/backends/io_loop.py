"""One shared I/O loop: every CLI pipe, process exit and HTTP stream of this process.

Transports do their I/O on a single asyncio event loop that runs on one
daemon thread (``beamagent-io``), so the number of threads does not grow with
the number of sessions. A transport takes a lease on the loop when it starts
(:func:`acquire_io_loop`) and gives it back when it is done; the thread exists
only while leases are held, plus ``idle_linger`` seconds (1 s) so that a
session started right after another one ended does not pay a new thread.

Everything that runs on the loop must be quick and must not block: pipes are
non-blocking, group terminations poll with ``asyncio.sleep``, and a sink only
queues a message. Process exits are watched with a pidfd
(``os.pidfd_open``, Linux >= 5.3) registered in the loop; where pidfds are
not available, :func:`wait_process_exit` polls ``os.waitid`` from the loop
instead (an exit is then seen up to 50 ms late), still without a thread.

Host names are the one thing the loop cannot resolve without blocking
(``getaddrinfo`` has no non-blocking form), so asyncio runs those look-ups on
the loop's default executor: here a pool of at most ``RESOLVER_THREADS`` (4)
threads named ``beamagent-io-resolve``, started on first need (an IP address
needs none) and joined when the loop stops.

Example::

    lease = acquire_io_loop()
    try:
        future = lease.submit(some_coroutine())
        future.result(timeout=5)
    finally:
        lease.release()
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, TypeVar

from beamagent.log import get_logger

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "IoLease",
    "IoLoop",
    "acquire_io_loop",
    "open_pidfd",
    "release_idle_io_loop",
    "wait_process_exit",
]

log = get_logger(__name__)

T = TypeVar("T")

_EXIT_POLL_FIRST: Final = 0.001
_EXIT_POLL_MAX: Final = 0.05

RESOLVER_THREADS: Final = 4
"""At most this many host-name look-ups run at once (asyncio's default would be up to 32)."""


class IoLoop:
    """One incarnation of the shared loop: an asyncio event loop and the thread running it.

    A new incarnation starts when a lease is taken while none runs; the old
    one, if it is still finishing, ends on its own. Code running on the loop
    reaches its incarnation through :attr:`IoLease.io_loop`.
    """

    def __init__(self, service: _IoLoopService) -> None:
        import asyncio

        self._service = service
        self.loop: asyncio.AbstractEventLoop = asyncio.new_event_loop()
        """The asyncio loop; use it only from its own thread or through ``call_soon_threadsafe``."""
        self.users = 0
        self.stopping = False
        self._idle_epoch = 0
        self._resources: dict[str, tuple[Any, Callable[[Any], Awaitable[None]]]] = {}
        self.loop.set_exception_handler(_log_loop_exception)
        self._resolver = concurrent.futures.ThreadPoolExecutor(
            RESOLVER_THREADS, thread_name_prefix="beamagent-io-resolve"
        )
        self.loop.set_default_executor(self._resolver)
        self.thread = threading.Thread(target=self._run, name="beamagent-io", daemon=True)
        """The thread running the loop (a daemon: it never holds up the interpreter's exit)."""

    def in_loop_thread(self) -> bool:
        """Whether the caller runs on this loop's thread."""
        return threading.current_thread() is self.thread

    def resource(
        self, key: str, create: Callable[[], T], close: Callable[[T], Awaitable[None]]
    ) -> T:
        """A value shared by every user of this loop (e.g. one HTTP client), made on first use.

        Call it on the loop's thread only. ``close(value)`` is awaited when the
        loop stops, so the value lives exactly as long as the loop.
        """
        entry = self._resources.get(key)
        if entry is None:
            entry = (create(), close)
            self._resources[key] = entry
        value: T = entry[0]
        return value

    def _run(self) -> None:
        import asyncio

        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            try:
                self.loop.run_until_complete(self._wind_down())
            finally:
                self.loop.close()
                # close() does not wait for the resolver's threads; they must not outlive us.
                self._resolver.shutdown(wait=True, cancel_futures=True)
                log.debug("io_loop_stopped")

    async def _wind_down(self) -> None:
        # Nothing should be left (the last lease is gone), but never leave a task dangling.
        import asyncio

        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for key, (value, close) in self._resources.items():
            try:
                await close(value)
            except Exception:
                log.exception("io_loop_resource_close_failed", resource=key)
        self._resources.clear()
        await self.loop.shutdown_asyncgens()


class IoLease:
    """One user's claim on the shared loop; the loop runs while any lease is held.

    Every method may be called from any thread. After :meth:`release`,
    :meth:`call_soon` and :meth:`submit` refuse work (they return False /
    raise), so a late caller can never reach a loop that has stopped.
    """

    def __init__(self, io_loop: IoLoop, service: _IoLoopService) -> None:
        self.io_loop = io_loop
        """The loop incarnation this lease keeps running."""
        self._service = service
        self._lock = threading.Lock()
        self._released = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The asyncio loop of this lease."""
        return self.io_loop.loop

    @property
    def released(self) -> bool:
        """Whether :meth:`release` was called."""
        return self._released

    def in_loop_thread(self) -> bool:
        """Whether the caller runs on the loop's thread (where waiting on the loop deadlocks)."""
        return self.io_loop.in_loop_thread()

    def call_soon(self, fn: Callable[..., object], *args: Any) -> bool:
        """Run ``fn(*args)`` on the loop's thread, in call order; False if already released."""
        with self._lock:
            if self._released:
                return False
            self.loop.call_soon_threadsafe(fn, *args)
            return True

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the loop; its future can be waited on from other threads."""
        import asyncio

        with self._lock:
            if self._released:
                coro.close()
                raise RuntimeError("this I/O loop lease was released")
            return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def release(self) -> None:
        """Give the lease back (idempotent); the last one lets the loop stop after its linger."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._service.release(self.io_loop)


class _IoLoopService:
    """Starts the loop on the first lease, stops it ``idle_linger`` seconds after the last."""

    idle_linger = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: IoLoop | None = None

    def acquire(self) -> IoLease:
        with self._lock:
            io_loop = self._current
            if io_loop is None:
                io_loop = IoLoop(self)
                self._current = io_loop
                io_loop.thread.start()
                log.debug("io_loop_started")
            io_loop.users += 1
            io_loop._idle_epoch += 1  # cancels a pending idle stop
            return IoLease(io_loop, self)

    def release(self, io_loop: IoLoop) -> None:
        with self._lock:
            io_loop.users -= 1
            if io_loop.users or io_loop.stopping:
                return
            io_loop._idle_epoch += 1
            epoch = io_loop._idle_epoch
            # Under the lock: no one can stop this loop before the call is queued.
            io_loop.loop.call_soon_threadsafe(
                io_loop.loop.call_later, self.idle_linger, self._stop_if_idle, io_loop, epoch
            )

    def _stop_if_idle(self, io_loop: IoLoop, epoch: int) -> None:
        with self._lock:
            if io_loop.users or io_loop._idle_epoch != epoch or io_loop.stopping:
                return
            self._stop(io_loop)

    def _stop(self, io_loop: IoLoop) -> None:
        """Mark ``io_loop`` stopping and tell it to stop (the caller holds ``_lock``)."""
        io_loop.stopping = True
        if self._current is io_loop:
            self._current = None  # the next lease starts a new incarnation
        io_loop.loop.call_soon_threadsafe(io_loop.loop.stop)

    def release_idle(self) -> threading.Thread | None:
        """Stop an idle loop now; return its thread (to join), or None if none is idle."""
        with self._lock:
            io_loop = self._current
            if io_loop is None or io_loop.users:
                return None
            self._stop(io_loop)
            return io_loop.thread

    def running(self) -> bool:
        with self._lock:
            return self._current is not None

    def after_fork_in_child(self) -> None:
        # The loop's thread does not exist in a forked child: start afresh there.
        self._lock = threading.Lock()
        self._current = None


_service = _IoLoopService()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_service.after_fork_in_child)


def acquire_io_loop() -> IoLease:
    """Take a lease on the shared I/O loop, starting its thread if none runs.

    Release the lease when done: the thread stops a moment after the last
    lease is given back.
    """
    return _service.acquire()


def release_idle_io_loop(timeout: float = 5.0) -> bool:
    """If no lease is held, stop the loop's thread now instead of after its idle linger.

    For tests that check that no thread outlives them. Returns True if a
    thread was ended (or none was running); False while leases are held.
    """
    thread = _service.release_idle()
    if thread is None:
        return not _service.running()
    thread.join(timeout)
    return not thread.is_alive()


def _log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    log.error(
        "io_loop_callback_failed",
        message=context.get("message"),
        error=repr(exc) if exc is not None else None,
    )


# --- process exits -------------------------------------------------------------------------


def open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` (readable once the process has exited), or None where unsupported.

    Open it while ``pid`` is an unreaped child of ours, so that it names that
    process and no other. The caller closes it.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError:  # ENOSYS (kernel < 5.3), EPERM (a sandbox), ESRCH (gone)
        return None
    return fd


def _exited_nowait(pid: int) -> bool:
    """Whether child ``pid`` has exited; it is not reaped (``WNOWAIT``)."""
    try:
        result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
    except ChildProcessError:
        return True  # already reaped by someone else: it has exited
    return result is not None


async def wait_process_exit(pid: int, pidfd: int | None) -> None:
    """Return once child ``pid`` has exited, without reaping it; run on the loop.

    With a pidfd the loop is told by the kernel; without one it polls
    ``os.waitid(..., WNOWAIT | WNOHANG)``, every 1 ms at first, backing off
    to 50 ms.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    if pidfd is not None:
        exited: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, readable)
        try:
            await exited
        finally:
            loop.remove_reader(pidfd)
        return
    delay = _EXIT_POLL_FIRST
    while not _exited_nowait(pid):
        await asyncio.sleep(delay)
        delay = min(delay * 2, _EXIT_POLL_MAX)
