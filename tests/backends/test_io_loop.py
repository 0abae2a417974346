"""The shared I/O loop: one thread, alive only while leased; process exits seen without reaping."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from beamagent.backends import io_loop
from beamagent.backends.io_loop import (
    acquire_io_loop,
    open_pidfd,
    release_idle_io_loop,
    wait_process_exit,
)

WAIT = 10.0


def io_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "beamagent-io" and t.is_alive()]


async def answer() -> int:
    await asyncio.sleep(0)
    return 42


def test_the_loop_thread_exists_only_while_leased() -> None:
    assert release_idle_io_loop()
    assert io_threads() == []

    first = acquire_io_loop()
    second = acquire_io_loop()
    assert first.io_loop is second.io_loop  # one loop for every user
    assert io_threads() == [first.io_loop.thread]
    assert first.submit(answer()).result(WAIT) == 42

    first.release()
    assert not release_idle_io_loop()  # the second lease keeps it running
    assert second.submit(answer()).result(WAIT) == 42
    second.release()
    assert release_idle_io_loop()
    assert io_threads() == []


def test_an_idle_loop_stops_by_itself_after_its_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(io_loop._service, "idle_linger", 0.05)
    lease = acquire_io_loop()
    thread = lease.io_loop.thread
    lease.release()

    thread.join(WAIT)

    assert not thread.is_alive()
    assert io_threads() == []


def test_a_lease_taken_during_the_linger_keeps_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(io_loop._service, "idle_linger", 0.05)
    lease = acquire_io_loop()
    first = lease.io_loop
    lease.release()

    again = acquire_io_loop()
    try:
        assert again.io_loop is first
        # Longer than the linger: a stop scheduled by the first release must not fire.
        assert again.submit(asyncio.sleep(0.2, result=7)).result(WAIT) == 7
        assert first.thread.is_alive()
    finally:
        again.release()


def test_a_released_lease_refuses_work() -> None:
    lease = acquire_io_loop()
    lease.release()
    lease.release()  # idempotent

    assert lease.released
    assert lease.call_soon(print) is False
    coro = answer()
    with pytest.raises(RuntimeError, match="released"):
        lease.submit(coro)


def test_a_callback_that_raises_does_not_stop_the_loop() -> None:
    lease = acquire_io_loop()
    try:
        lease.call_soon(lambda: 1 / 0)
        assert lease.submit(answer()).result(WAIT) == 42
    finally:
        lease.release()


async def resolve_many(n: int) -> set[str]:
    """Resolve an address ``n`` times at once; the names of the threads that did it."""

    def resolve() -> str:
        socket.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)  # a literal: no network
        return threading.current_thread().name

    loop = asyncio.get_running_loop()
    # As asyncio's loop.getaddrinfo does (httpx connecting to a host name).
    return set(await asyncio.gather(*(loop.run_in_executor(None, resolve) for _ in range(n))))


def test_name_lookups_take_a_few_threads_and_end_with_the_loop() -> None:
    lease = acquire_io_loop()
    try:
        names = lease.submit(resolve_many(50)).result(WAIT)
    finally:
        lease.release()

    assert 1 <= len(names) <= io_loop.RESOLVER_THREADS
    assert all(name.startswith("beamagent-io-resolve") for name in names)
    assert release_idle_io_loop()
    assert [t for t in threading.enumerate() if t.name.startswith("beamagent-io")] == []


@pytest.fixture(params=["pidfd", "polling"])
def pidfd_of(request: pytest.FixtureRequest) -> Iterator[object]:
    """How a process exit is watched: a pidfd, or (where there is none) polling ``waitid``."""
    opened: list[int] = []

    def pidfd(pid: int) -> int | None:
        if request.param == "polling":
            return None
        fd = open_pidfd(pid)
        assert fd is not None, "this kernel has no pidfd_open"
        opened.append(fd)
        return fd

    yield pidfd
    for fd in opened:
        os.close(fd)


def test_a_process_exit_is_seen_without_reaping_it(pidfd_of: object) -> None:
    read_end, write_end = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-c", "import os, sys; os.read(0, 1); sys.exit(7)"],
        stdin=read_end,
    )
    os.close(read_end)
    assert callable(pidfd_of)
    pidfd = pidfd_of(child.pid)
    lease = acquire_io_loop()
    try:
        exited = lease.submit(wait_process_exit(child.pid, pidfd))
        assert not exited.done()  # it waits on its stdin
        os.close(write_end)  # now it exits

        exited.result(WAIT)

        # Not reaped: its pid (a process group id for CLIs) is still held.
        status = os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        assert status is not None
        assert status.si_status == 7
        assert child.wait(WAIT) == 7
    finally:
        lease.release()
        if child.returncode is None:
            child.kill()
            child.wait()
