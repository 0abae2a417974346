"""The leak check: what a test left running — actors, threads, child processes, runtimes.

Take a :class:`LeakSnapshot` before the code under test and call :meth:`LeakSnapshot.check`
after it: it gives the resources started since and still alive, after letting what was
told to stop a moment to finish (it joins threads, it never sleeps on a guess)::

    snapshot = LeakSnapshot.take()
    run_the_code()
    leaks = snapshot.check()
    assert not leaks, leaks.describe()
"""

from __future__ import annotations

import gc
import os
import threading
import time

import attrs
import pykka

import supervisors
from beamagent.backends.io_loop import release_idle_io_loop
from beamagent.lifecycle import started_runtimes, stop_started_runtime

__all__ = [
    "LEAK_GRACE_SECONDS",
    "LeakReport",
    "LeakSnapshot",
    "child_pids",
    "forget_long_lived_child",
    "long_lived_child",
    "open_fds",
    "pid_alive",
]

LEAK_GRACE_SECONDS = 5.0
"""How long :meth:`LeakSnapshot.check` waits for threads and children already ending."""


_long_lived: set[int] = set()


def long_lived_child(pid: int) -> None:
    """Do not count child ``pid`` as a leak: it outlives tests on purpose.

    For servers shared by a whole test session (``beamagent.testing.postgres``), which may
    be started during the first test that needs them.
    """
    _long_lived.add(pid)


def forget_long_lived_child(pid: int) -> None:
    """Undo :func:`long_lived_child` (the server was stopped)."""
    _long_lived.discard(pid)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs, read from /proc (Linux); a zombie counts as ended."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


def child_pids() -> set[int]:
    """Direct, live (non-zombie) child processes of this process, read from /proc (Linux)."""
    me = os.getpid()
    pids: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # Field 4 (ppid) comes after the parenthesised command name.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == me and fields[0] != b"Z":
            pids.add(int(entry))
    return pids


def open_fds() -> dict[int, str]:
    """This process's open file descriptors and what they point to, from /proc (Linux)."""
    fds: dict[int, str] = {}
    try:
        entries = os.listdir("/proc/self/fd")
    except OSError:
        return fds
    for entry in entries:
        try:
            fds[int(entry)] = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:
            continue  # closed meanwhile (or the listing's own descriptor)
    return fds


@attrs.frozen
class LeakReport:
    """What was left alive: empty (falsy) when nothing leaked."""

    runtimes: tuple[str, ...] = ()
    actors: tuple[str, ...] = ()
    threads: tuple[str, ...] = ()
    children: tuple[int, ...] = ()
    fds: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.runtimes or self.actors or self.threads or self.children or self.fds)

    def describe(self) -> str:
        """One line naming every leaked resource, e.g. for ``pytest.fail``."""
        problems = []
        if self.runtimes:
            problems.append(f"runtimes never stopped: {list(self.runtimes)}")
        if self.actors:
            problems.append(f"actors still alive: {list(self.actors)}")
        if self.threads:
            problems.append(f"threads still alive: {list(self.threads)}")
        if self.children:
            problems.append(f"child processes still alive: {list(self.children)}")
        if self.fds:
            problems.append(f"file descriptors still open: {list(self.fds)}")
        return "test leaked resources: " + "; ".join(problems)


@attrs.frozen
class LeakSnapshot:
    """The actors, threads, child processes and runtimes alive at one moment."""

    threads: frozenset[threading.Thread]
    actors: frozenset[str]
    children: frozenset[int]
    runtimes: frozenset[int]
    """The start-order keys of :func:`~beamagent.lifecycle.started_runtimes`."""
    fds: frozenset[tuple[int, str]]

    @classmethod
    def take(cls) -> LeakSnapshot:
        """What is alive now."""
        return cls(
            threads=frozenset(threading.enumerate()),
            actors=frozenset(ref.actor_urn for ref in pykka.ActorRegistry.get_all()),
            children=frozenset(child_pids()),
            runtimes=frozenset(started_runtimes()),
            fds=frozenset(open_fds().items()),
        )

    def check(
        self, grace: float = LEAK_GRACE_SECONDS, *, clean_up: bool = True, fds: bool = False
    ) -> LeakReport:
        """What was started since the snapshot and is still alive.

        beamagent's idle shared threads (timers, scheduler workers, the I/O loop) are
        released first: they linger by design. With ``clean_up`` the leaked runtimes are
        stopped and the leaked actors told to stop, so one leak does not fail the tests
        that follow. With ``fds`` it also reports file descriptors opened since and still
        open once garbage is collected (sockets, pipes, files); they are not closed.
        """
        # A runtime the test forgot may be garbage already; its tree runs on all the same.
        runtimes = {k: v for k, v in started_runtimes().items() if k not in self.runtimes}
        if clean_up:  # its actors, threads and processes go with it: name the runtime alone
            for key in runtimes:
                stop_started_runtime(key)
        supervisors.release_idle_timer_thread()
        supervisors.release_idle_workers()
        release_idle_io_loop()
        deadline = time.monotonic() + grace
        # Give threads that were already told to stop a moment to finish: join, don't sleep.
        for thread in set(threading.enumerate()) - self.threads:
            if thread is not threading.current_thread():
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        actors = [ref for ref in pykka.ActorRegistry.get_all() if ref.actor_urn not in self.actors]
        threads = [t for t in set(threading.enumerate()) - self.threads if t.is_alive()]
        children = child_pids() - self.children - _long_lived
        while children and time.monotonic() < deadline:
            threading.Event().wait(0.01)  # a child that was just killed may be a zombie briefly
            children = child_pids() - self.children - _long_lived
        leaked_fds: list[str] = []
        if fds:
            gc.collect()  # a descriptor held by unreachable objects is not a leak
            leaked_fds = [
                f"{fd} -> {target}"
                for fd, target in sorted(open_fds().items())
                if (fd, target) not in self.fds
            ]
        report = LeakReport(
            runtimes=tuple(f"Runtime {runtime_id}" for runtime_id in runtimes.values()),
            actors=tuple(str(ref) for ref in actors),
            threads=tuple(sorted(t.name for t in threads)),
            children=tuple(sorted(children)),
            fds=tuple(leaked_fds),
        )
        if clean_up:
            for ref in actors:
                ref.stop(block=False)
        return report
