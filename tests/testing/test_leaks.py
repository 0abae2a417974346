"""The leak check behind the plugin's fixtures: what it reports, and that it cleans up."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading

from beamagent import Runtime
from beamagent.testing import LeakReport, LeakSnapshot


def test_nothing_started_is_no_leak() -> None:
    snapshot = LeakSnapshot.take()
    with Runtime(store=":memory:", handle_signals=False) as rt:
        rt.start_session(backend="local").query("hi")
    assert not snapshot.check(grace=1.0)


def test_a_forgotten_runtime_is_named_and_stopped_even_once_collected() -> None:
    snapshot = LeakSnapshot.take()
    rt = Runtime(store=":memory:", handle_signals=False)
    rt.start_session(backend="local")
    runtime_id = rt.id
    del rt
    gc.collect()

    report = snapshot.check(grace=1.0)

    assert report == LeakReport(runtimes=(f"Runtime {runtime_id}",))
    assert not snapshot.check(grace=1.0)  # its tree was stopped


def test_a_thread_and_a_child_process_are_named() -> None:
    stop = threading.Event()
    snapshot = LeakSnapshot.take()
    thread = threading.Thread(target=stop.wait, name="stray", daemon=True)
    thread.start()
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=-1)
    try:
        report = snapshot.check(grace=0.1)
    finally:
        stop.set()
        thread.join()
        child.communicate(b"")

    assert report.threads == ("stray",)
    assert report.children == (child.pid,)
    assert report.describe() == (
        f"test leaked resources: threads still alive: ['stray']; "
        f"child processes still alive: [{child.pid}]"
    )
