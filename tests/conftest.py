"""Suite-wide fixtures: every test is checked for leaked actors, threads and processes."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator

import pykka
import pytest

import supervisors
from beamagent.backends.io_loop import release_idle_io_loop

pytest_plugins = ["pytester"]  # tests/plugin runs pytest on sample projects

LEAK_GRACE_SECONDS = 5.0


def _child_pids() -> set[int]:
    """Direct child processes of this process, read from /proc (Linux)."""
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


@pytest.fixture(autouse=True)
def isolated_default_store(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never let a test write to the user's real default store."""
    path = tmp_path_factory.mktemp("default-store") / "sessions.db"
    monkeypatch.setenv("BEAMAGENT_STORE", str(path))


@pytest.fixture(autouse=True)
def restore_library_loggers() -> Iterator[None]:
    """Undo ``configure_logging`` (the README and examples call it): handlers, level, propagate."""
    loggers = [logging.getLogger(name) for name in ("beamagent", "supervisors")]
    saved = [(lg, lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    yield
    for logger, level, propagate, handlers in saved:
        for handler in [h for h in logger.handlers if h not in handlers]:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.fixture(autouse=True)
def leak_check() -> Iterator[None]:
    """Fail the test if it leaves actors, threads or child processes alive."""
    threads_before = set(threading.enumerate())
    actors_before = {ref.actor_urn for ref in pykka.ActorRegistry.get_all()}
    children_before = _child_pids()
    yield
    supervisors.release_idle_timer_thread()  # the shared timer thread lingers when idle
    supervisors.release_idle_workers()  # the scheduler keeps its idle workers for more work
    release_idle_io_loop()  # so does the shared I/O loop (unless a transport is still open)
    deadline = time.monotonic() + LEAK_GRACE_SECONDS
    # Give threads that were already told to stop a moment to finish: join, don't sleep.
    for thread in set(threading.enumerate()) - threads_before:
        if thread is threading.current_thread():
            continue
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    leaked_actors = [
        ref for ref in pykka.ActorRegistry.get_all() if ref.actor_urn not in actors_before
    ]
    leaked_threads = [t for t in set(threading.enumerate()) - threads_before if t.is_alive()]
    leaked_children = _child_pids() - children_before
    while leaked_children and time.monotonic() < deadline:
        # A child that was just killed may still be a zombie for a moment.
        threading.Event().wait(0.01)
        leaked_children = _child_pids() - children_before
    for ref in leaked_actors:
        ref.stop(block=False)
    problems = []
    if leaked_actors:
        problems.append(f"actors still alive: {leaked_actors}")
    if leaked_threads:
        problems.append(f"threads still alive: {[t.name for t in leaked_threads]}")
    if leaked_children:
        problems.append(f"child processes still alive: {sorted(leaked_children)}")
    if problems:
        pytest.fail("test leaked resources: " + "; ".join(problems), pytrace=False)
