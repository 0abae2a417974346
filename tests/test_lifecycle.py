"""Process lifecycle: unstopped runtimes at interpreter exit, SIGTERM, the host's own handler."""

from __future__ import annotations

import gc
import json
import queue
import re
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from beamagent import Runtime, lifecycle
from beamagent.store import open_store
from tests._child import ROOT, start_script

EXIT_WITHIN = 5.0  # seconds from the child's last word to its exit
START_WITHIN = 30.0  # seconds for a child to import, start its runtimes and say something


class Child:
    """A child interpreter whose output is read by threads, so every wait has a timeout."""

    def __init__(self, code: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = start_script(code, *args, env=env)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._errors: list[str] = []
        self._errors_changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read_stdout, name="child-stdout", daemon=True),
            threading.Thread(target=self._read_stderr, name="child-stderr", daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._errors_changed:
                self._errors.append(line)
                self._errors_changed.notify_all()

    def read_until(self, marker: str, timeout: float = START_WITHIN) -> list[str]:
        """Stdout lines up to and including the first one equal to ``marker``."""
        deadline = time.monotonic() + timeout
        got: list[str] = []
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {marker!r} within {timeout} s; got {got}") from None
            if line is None:
                raise AssertionError(f"child ended before {marker!r}: {got} {self.stderr()}")
            got.append(line)
            self.seen.append(line)
            if line == marker:
                return got

    def wait_for_stderr(self, text: str, timeout: float = START_WITHIN) -> None:
        """Block until ``text`` appears on the child's stderr."""
        with self._errors_changed:
            if not self._errors_changed.wait_for(lambda: text in "".join(self._errors), timeout):
                raise AssertionError(f"no {text!r} on stderr within {timeout} s")

    def wait(self, timeout: float = EXIT_WITHIN) -> int:
        """The exit status, which must come within ``timeout`` seconds."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"child still running {timeout} s later") from None

    def stderr(self) -> str:
        """Everything the child wrote on stderr (all of it once it has exited)."""
        if self.process.poll() is not None:
            self._readers[1].join(timeout=10)
        with self._errors_changed:
            return "".join(self._errors)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        for reader in self._readers:
            reader.join(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.close()


def spawn(children: list[Child], code: str, *args: str, **kwargs: Any) -> Child:
    child = Child(code, *args, **kwargs)
    children.append(child)
    return child


def acknowledged(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines if line.startswith("{")]


def assert_on_disk(acks: list[dict[str, Any]]) -> None:
    """Every message a child was told had been recorded is in its store file."""
    assert acks
    by_store: dict[str, dict[str, set[str]]] = {}
    for ack in acks:
        by_store.setdefault(ack["store"], {}).setdefault(ack["session"], set()).update(ack["uuids"])
    for path, sessions in by_store.items():
        store = open_store(path)
        try:
            for session_id, uuids in sessions.items():
                stored = {m["uuid"] for m in store.get_session_messages(session_id)}
                assert uuids <= stored, (path, session_id, uuids - stored)
        finally:
            store.close()


_ACK = """
import json, sys

def ack(store, session, messages):
    print(json.dumps({"store": store, "session": session.session_id,
                      "uuids": [m.uuid for m in messages]}), flush=True)
"""

# --- exit ------------------------------------------------------------------------------------


def test_unstopped_runtimes_exit_promptly_with_their_history_on_disk(
    tmp_path: Path, children: list[Child]
) -> None:
    code = (
        _ACK
        + """
from beamagent import Runtime

paths = sys.argv[1:3]
runtimes = [Runtime(store=path) for path in paths]          # never stopped
for path, rt in zip(paths, runtimes):
    for n in range(2):
        session = rt.start_session(backend="local")
        for i in range(3):
            ack(path, session, session.query(f"q{i}"))
print("done", flush=True)
"""
    )
    child = spawn(children, code, str(tmp_path / "a.db"), str(tmp_path / "b.db"))
    lines = child.read_until("done")
    assert child.wait() == 0
    assert child.stderr() == ""
    acks = acknowledged(lines)
    assert len(acks) == 12
    assert_on_disk(acks)


def _routing_example() -> str:
    text = (ROOT / "docs" / "routing.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block is not None
    # The real CLIs would need a model: route to the embedded backend instead.
    return block.group(1).replace('["codex", "claude"]', '["local"]')


def test_the_module_level_example_exits_and_its_default_runtime_is_flushed(
    tmp_path: Path, children: list[Child]
) -> None:
    store = tmp_path / "default.db"
    code = (
        _routing_example() + '\nprint(session.session_id, flush=True)\nprint("done", flush=True)\n'
    )
    child = spawn(children, code, env={"BEAMAGENT_STORE": str(store)})
    *_, session_id, _done = child.read_until("done")
    assert child.wait() == 0
    assert child.stderr() == ""
    opened = open_store(store)
    try:
        contents = [m.get("content") for m in opened.get_session_messages(session_id)]
    finally:
        opened.close()
    assert "hello" in contents


def test_a_runtime_collected_without_stop_is_still_stopped_at_exit(
    tmp_path: Path, children: list[Child]
) -> None:
    code = (
        _ACK
        + """
import gc, weakref
from beamagent import Runtime, lifecycle

def forget():
    rt = Runtime(store=sys.argv[1])
    session = rt.start_session(backend="local")
    ack(sys.argv[1], session, session.query("hello"))
    return weakref.ref(rt)

ref = forget()
gc.collect()
print("collected" if ref() is None else "alive", lifecycle.live_runtimes(), flush=True)
print("done", flush=True)
"""
    )
    child = spawn(children, code, str(tmp_path / "a.db"))
    lines = child.read_until("done")
    assert child.wait() == 0
    assert "collected []" in lines
    assert child.stderr() == ""
    assert_on_disk(acknowledged(lines))


def test_a_runtime_started_after_exit_began_is_refused(children: list[Child]) -> None:
    code = """
import atexit
from beamagent import Runtime
from beamagent.errors import BeamAgentError

Runtime(store=":memory:")  # registers the exit hook, which runs before atexit

def late():
    try:
        Runtime(store=":memory:")
    except BeamAgentError as exc:
        print("refused:", exc, flush=True)

atexit.register(late)
print("done", flush=True)
"""
    child = spawn(children, code)
    child.read_until("done")
    child.read_until("refused: cannot start a Runtime: the interpreter is exiting")
    assert child.wait() == 0


def test_stopped_and_collected_runtimes_are_not_kept_alive() -> None:
    rt = Runtime(store=":memory:")
    assert rt in lifecycle.live_runtimes()
    ref = weakref.ref(rt)
    rt.stop()
    assert rt not in lifecycle.live_runtimes()
    del rt
    gc.collect()
    assert ref() is None


# --- SIGTERM ---------------------------------------------------------------------------------

_SLOW_QUERY = (
    _ACK
    + """
import time
from beamagent import Runtime

def reply(prompt, params):
    if prompt != "slow":
        yield f"ok {prompt}"
        return
    print("in_slow", flush=True)
    for i in range(6000):  # a long streamed answer
        yield f"part {i}"
        time.sleep(0.01)

rt = Runtime(store=sys.argv[1])
session = rt.start_session(backend="local", reply=reply)
for i in range(3):
    ack(sys.argv[1], session, session.query(f"q{i}"))
session.query("slow", timeout=600)
print("not reached", flush=True)
"""
)


def test_sigterm_during_a_long_query_stops_gracefully_with_status_143(
    tmp_path: Path, children: list[Child]
) -> None:
    child = spawn(children, _SLOW_QUERY, str(tmp_path / "a.db"))
    lines = child.read_until("in_slow")
    child.process.send_signal(signal.SIGTERM)
    assert child.wait() == lifecycle.EXIT_STATUS == 143
    assert "not reached" not in child.seen
    assert "Traceback" not in child.stderr()
    acks = acknowledged(lines)
    assert len(acks) == 3
    assert_on_disk(acks)


def test_a_second_sigterm_kills_at_once(tmp_path: Path, children: list[Child]) -> None:
    # The agent blocks in user code, so the graceful stop waits for it (5 s): a second
    # SIGTERM during that stop is the default action.
    code = """
import sys, threading
from beamagent import Runtime, configure_logging

configure_logging("info")  # stderr: the parent watches for the stop to begin

def reply(prompt, params):
    print("in_reply", flush=True)
    yield "first"
    threading.Event().wait()

rt = Runtime(store=sys.argv[1])
rt.start_session(backend="local", reply=reply).query("hang", timeout=600)
"""
    child = spawn(children, code, str(tmp_path / "a.db"))
    child.read_until("in_reply")
    child.process.send_signal(signal.SIGTERM)
    child.wait_for_stderr("runtimes_stopping_at_exit")
    started = time.monotonic()
    child.process.send_signal(signal.SIGTERM)
    assert child.wait() == -signal.SIGTERM
    assert time.monotonic() - started < 3.0


def test_sigterm_with_no_live_runtime_is_the_default_action(children: list[Child]) -> None:
    code = """
import threading
from beamagent import Runtime

Runtime(store=":memory:").stop()
print("ready", flush=True)
threading.Event().wait()
"""
    child = spawn(children, code)
    child.read_until("ready")
    child.process.send_signal(signal.SIGTERM)
    assert child.wait() == -signal.SIGTERM


_SIGTERM_IN_A_FINALIZER = """
import signal, sys, threading, weakref
from beamagent import Runtime

def terminated_here():
    signal.raise_signal(signal.SIGTERM)  # the handler runs at the next bytecode: in here
    for _ in range(1000):
        pass

class Finalized:
    def __del__(self):
        terminated_here()

class Burst:
    first = True

    def __del__(self):
        if Burst.first:  # SIGTERM in the first of 1000 finalizers, ~0.3 ms each
            Burst.first = False
            signal.raise_signal(signal.SIGTERM)
        for _ in range(20000):
            pass

class Plain:
    pass

rt = Runtime(store=":memory:")
rt.start_session(backend="local").query("hi")
print("ready", flush=True)
if sys.argv[1] == "__del__":
    Finalized()  # dropped at once: its __del__ runs
elif sys.argv[1] == "burst":
    garbage = [Burst() for _ in range(1000)]
    del garbage  # a burst of finalizers, longer than the first retries' delays
else:
    weakref.ref(Plain(), lambda _ref: terminated_here())  # the callback runs
print("after the finalizer", flush=True)
threading.Event().wait()  # the main thread waits, outside any finalizer
"""


@pytest.mark.parametrize("finalizer", ["__del__", "weakref_callback", "burst"])
def test_sigterm_handled_in_a_finalizer_still_stops_gracefully(
    children: list[Child], finalizer: str
) -> None:
    # The handler's SystemExit, raised while the main thread ran a __del__ or a weakref
    # callback, was reported as "Exception ignored" and dropped: the SIGTERM was lost
    # (and the handler had given SIGTERM its default action back).
    child = spawn(children, _SIGTERM_IN_A_FINALIZER, finalizer)
    child.read_until("after the finalizer")
    assert child.wait() == lifecycle.EXIT_STATUS
    assert "Exception ignored" not in child.stderr()


_NEARLY_ALWAYS_IN_FINALIZERS = """
import sys, weakref
from beamagent import Runtime

def busy():
    total = 0
    for i in range(20000):  # the main thread spends nearly all its time in here
        total += i

class Finalized:
    def __del__(self):
        busy()

class Plain:
    pass

rt = Runtime(store=":memory:")
rt.start_session(backend="local").query("hi")
print("ready", flush=True)
while True:
    if sys.argv[1] == "__del__":
        Finalized()
    else:
        weakref.ref(Plain(), lambda _ref: busy())
"""


@pytest.mark.parametrize("finalizer", ["__del__", "weakref_callback"])
def test_sigterm_is_never_lost_in_a_host_that_lives_in_finalizers(
    children: list[Child], finalizer: str
) -> None:
    # Every exit the handler raises lands in a finalizer and is dropped: after a few
    # tries SIGTERM takes its default action, as without this library.
    child = spawn(children, _NEARLY_ALWAYS_IN_FINALIZERS, finalizer)
    child.read_until("ready")
    child.process.send_signal(signal.SIGTERM)
    assert child.wait() in (lifecycle.EXIT_STATUS, -signal.SIGTERM)
    assert "Exception ignored" not in child.stderr()


_EXIT_BLOCKED_BY_THE_HOST = """
import sys, threading
from beamagent import Runtime, configure_logging

configure_logging("info")  # stderr: the exit hook says when it stops a runtime
# Registered before the first Runtime, so it runs after beamagent's exit hook.
threading._register_atexit(lambda: print("exit_hooks_done", flush=True))
rt = Runtime(store=":memory:")
rt.start_session(backend="local").query("hi")
if sys.argv[1] == "stopped":
    rt.stop()
# The host's own non-daemon thread, which the interpreter's exit waits for.
threading.Thread(target=threading.Event().wait, name="host-worker").start()
print("main_done", flush=True)
"""


@pytest.mark.parametrize("runtime", ["stopped", "left_running"])
def test_sigterm_ends_an_exit_that_waits_for_a_hosts_thread(
    children: list[Child], runtime: str
) -> None:
    # Without beamagent the first SIGTERM kills such a process; the handler once
    # swallowed it for the rest of the exit, because the interpreter was "exiting".
    child = spawn(children, _EXIT_BLOCKED_BY_THE_HOST, runtime)
    child.read_until("main_done")
    child.read_until("exit_hooks_done")
    assert ("runtimes_stopping_at_exit" in child.stderr()) == (runtime == "left_running")
    child.process.send_signal(signal.SIGTERM)
    assert child.wait() == -signal.SIGTERM


def test_sigterm_while_a_hosts_exit_hook_blocks_before_ours_is_the_default_action(
    children: list[Child],
) -> None:
    # Registered after the first Runtime, the host's hook runs before beamagent's and
    # never returns (as an executor's join of a stuck worker): SIGTERM must still kill.
    code = """
import threading
from beamagent import Runtime

rt = Runtime(store=":memory:")
rt.start_session(backend="local").query("hi")

def host_hook():
    print("in_host_hook", flush=True)
    threading.Event().wait()

threading._register_atexit(host_hook)
"""
    child = spawn(children, code)
    child.read_until("in_host_hook")
    child.process.send_signal(signal.SIGTERM)
    assert child.wait() == -signal.SIGTERM


def test_sigterm_during_the_exit_hooks_stop_is_kept_for_after_it(
    tmp_path: Path, children: list[Child]
) -> None:
    # The script ends while its session's reply blocks in user code, so the exit hook's
    # stop waits for it (5 s). A SIGTERM then must neither cut the stop short (the
    # history is recorded) nor be lost: the process dies of it once the stop is done.
    code = (
        _ACK
        + """
import threading
from beamagent import Runtime, configure_logging

configure_logging("info")

def reply(prompt, params):
    if prompt == "hang":
        print("in_reply", flush=True)
        yield "first"
        threading.Event().wait()
    yield f"ok {prompt}"

rt = Runtime(store=sys.argv[1])
session = rt.start_session(backend="local", reply=reply)
ack(sys.argv[1], session, session.query("q0"))
session.send_query("hang")
"""
    )
    child = spawn(children, code, str(tmp_path / "a.db"))
    lines = child.read_until("in_reply")
    child.wait_for_stderr("runtimes_stopping_at_exit")
    child.process.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == -signal.SIGTERM
    stderr = child.stderr()
    assert "runtime_stopped" in stderr.split("runtimes_stopping_at_exit", 1)[1]  # stopped first
    assert "Traceback" not in stderr
    assert_on_disk(acknowledged(lines))


def test_a_hosts_own_sigterm_handler_is_kept(tmp_path: Path, children: list[Child]) -> None:
    code = """
import signal, sys, threading
from beamagent import Runtime

stop = threading.Event()

def host_handler(signum, frame):
    print("host_handler", flush=True)
    stop.set()

signal.signal(signal.SIGTERM, host_handler)
rt = Runtime(store=sys.argv[1])
rt.start_session(backend="local").query("hi")
assert signal.getsignal(signal.SIGTERM) is host_handler
print("ready", flush=True)
stop.wait()
print("host_done", flush=True)  # and exits without stop(): the exit hook stops rt
"""
    child = spawn(children, code, str(tmp_path / "a.db"))
    child.read_until("ready")
    child.process.send_signal(signal.SIGTERM)
    child.read_until("host_done")
    assert child.wait() == 0
    assert child.stderr() == ""


@pytest.mark.parametrize(
    ("runtime_args", "env", "expected"),
    [
        ("", {}, "beamagent"),
        ("handle_signals=False", {}, "default"),
        ("", {"BEAMAGENT_HANDLE_SIGNALS": "0"}, "default"),
        ("", {"BEAMAGENT_HANDLE_SIGNALS": "off"}, "default"),
    ],
)
def test_the_handler_is_installed_unless_opted_out(
    children: list[Child], runtime_args: str, env: dict[str, str], expected: str
) -> None:
    code = f"""
import signal
from beamagent import Runtime

rt = Runtime(store=":memory:", {runtime_args})
handler = signal.getsignal(signal.SIGTERM)
print("default" if handler is signal.SIG_DFL else handler.__module__.split(".")[0], flush=True)
print("done", flush=True)
"""
    child = spawn(children, code, env=env)
    assert child.read_until("done") == [expected, "done"]
    assert child.wait() == 0


def _stop_when_sigterm_arrives(rt: Runtime) -> None:
    with lifecycle.signals_deferred():  # as Runtime.stop itself does, in the main thread
        lifecycle._on_sigterm(signal.SIGTERM, None)  # as if delivered now: held back
        rt.stop()
        assert rt.stopped


def test_sigterm_while_the_main_thread_stops_a_runtime_waits_for_the_stop() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    rt = Runtime(store=":memory:", handle_signals=False)
    try:
        with pytest.raises(SystemExit) as raised:
            _stop_when_sigterm_arrives(rt)
        assert raised.value.code == 143
    finally:
        rt.stop()
        signal.signal(signal.SIGTERM, previous)


def test_install_from_another_thread_is_refused() -> None:
    errors: list[BaseException] = []

    def install() -> None:
        try:
            lifecycle.install_sigterm_handler()
        except ValueError as exc:
            errors.append(exc)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join(timeout=10)
    assert len(errors) == 1
    assert "main thread" in str(errors[0])


_FORK_AFTER_A_RUNTIME = """
import faulthandler, multiprocessing, os, sys, threading
import pykka
from beamagent import Runtime, lifecycle, runtime
from beamagent.runtime import default_runtime

def own_runtime():
    faulthandler.dump_traceback_later(20, exit=True)  # a hang shows where, then exits 1
    with Runtime(store=":memory:") as child_rt:
        answer = child_rt.start_session(backend="local").query("child")[-1].content
    print("own runtime", answer, flush=True)

rt = Runtime(store=":memory:")
session = rt.start_session(backend="local")
session.query("parent")
parents_default = default_runtime()
if sys.argv[1] == "stopped":
    rt.stop()
if sys.argv[1] == "locks_held":
    # Locks every process start or runtime start takes, held by a parent thread at the
    # fork: the child must not inherit them locked.
    held, release = threading.Event(), threading.Event()
    def hold():
        with pykka.ActorRegistry._actor_refs_lock, lifecycle._lock, runtime._default_lock:
            held.set()
            release.wait()
    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
pid = os.fork()
if pid == 0:
    for what, call in [("session", lambda: session.query("x", timeout=5)),
                       ("runtime", lambda: rt.start_session(backend="local"))]:
        try:
            call()
            print(what, "answered", flush=True)
        except Exception as exc:  # the parent's processes are dead here: a typed error
            print(what, type(exc).__name__, flush=True)
    own_runtime()
    child_default = default_runtime()
    print("default", child_default is not parents_default,
          child_default.start_session(backend="local").query("d")[-1].content, flush=True)
    child_default.stop()
    os._exit(0)
if sys.argv[1] == "locks_held":
    release.set()
    holder.join()
_, status = os.waitpid(pid, 0)
print("os.fork child exited", os.waitstatus_to_exitcode(status), flush=True)
child = multiprocessing.get_context("fork").Process(target=own_runtime)
child.start()
child.join(30)
print("multiprocessing child exited", child.exitcode, flush=True)
"""


@pytest.mark.parametrize("parent", ["live", "stopped", "locks_held"])
def test_a_forked_child_starts_its_own_runtime_and_the_parents_fail_fast(
    children: list[Child], parent: str
) -> None:
    # The child once hung for ever in Runtime(): the scheduler still listed the parent's
    # idle workers, whose threads a fork does not copy, so nobody ran its processes.
    child = spawn(children, _FORK_AFTER_A_RUNTIME, parent)
    lines = child.read_until("multiprocessing child exited 0")
    if parent != "stopped":
        assert lines[:2] == ["session SessionNotFound", "runtime BeamAgentError"]
    assert lines[-5:] == [
        "own runtime child",
        "default True d",  # the module-level API's runtime: the child's own
        "os.fork child exited 0",
        "own runtime child",
        "multiprocessing child exited 0",
    ]
    assert child.wait() == 0


_INTERRUPTED = """
import sys, threading
import supervisors
from beamagent import Runtime, lifecycle

def interrupt_at(name, nth=1, then=None):
    # Ctrl-C's KeyboardInterrupt, injected where the main thread calls ``name`` (the
    # nth time); ``then`` runs first.
    calls = []
    def tracer(frame, event, arg):
        if event == "call" and frame.f_code.co_name == name:
            calls.append(frame.f_code.co_filename)
            if len(calls) == nth:
                sys.settrace(None)
                if then is not None:
                    then()
                raise KeyboardInterrupt
    sys.settrace(tracer)

def store_threads():
    return [t for t in threading.enumerate() if t.name.startswith("StoreActor")]

where = sys.argv[1]
if where == "stop":
    rt = Runtime(store=sys.argv[2])
    session = rt.start_session(backend="local", reply=lambda prompt, params: iter([prompt]))
    session.query("before")
    interrupt_at("stop", nth=2)  # rt.stop(), then the root's stop inside it
    try:
        rt.stop()
    except KeyboardInterrupt:
        print("interrupted", rt.stopped, list(lifecycle.started_runtimes().values()) == [rt.id])
        print("sessions", len(rt.live_sessions()))
    rt.stop()  # finishes what the interrupted stop began
    print("stopped", rt.stopped, lifecycle.started_runtimes())
else:
    then = None
    if where == "_acquire":
        # The root's first child starts only once the main thread waits for the root
        # (in _acquire): the interrupt then always lands while the tree is starting.
        # Without the gate the root could be up before the main thread looked, and the
        # main thread would not wait at all.
        from beamagent.routing.registry import RoutingRegistry
        gate = threading.Event()
        registry_on_start = RoutingRegistry.on_start
        def gated_on_start(self):
            gate.wait(10)
            registry_on_start(self)
        RoutingRegistry.on_start = gated_on_start
        then = gate.set
    interrupt_at(where, then=then)
    try:
        Runtime(store=sys.argv[2])
    except KeyboardInterrupt:
        print("interrupted")
    sys.settrace(None)
    ours = [n for n in supervisors.registered() if n[0] == "beamagent"]
    print("left", ours, lifecycle.started_runtimes())
for thread in store_threads():
    thread.join(10)
print("store threads", store_threads(), flush=True)
"""


@pytest.mark.parametrize("where", ["_acquire", "runtime_started", "_auto_install", "stop"])
def test_ctrl_c_during_a_runtimes_start_or_stop_leaves_nothing_running(
    tmp_path: Path, children: list[Child], where: str
) -> None:
    # Ctrl-C during Runtime() once left the tree it had begun running, unregistered and
    # out of reach; during stop(), a runtime marked stopped whose sessions and store
    # still ran, which neither another stop() nor the exit hook would stop.
    child = spawn(children, _INTERRUPTED, where, str(tmp_path / "a.db"))
    lines = child.read_until("store threads []")
    if where == "stop":
        assert lines == [
            "interrupted False True",
            "sessions 1",
            "stopped True {}",
            "store threads []",
        ]
    else:
        assert lines == ["interrupted", "left [] {}", "store threads []"]
    assert child.wait() == 0
    assert not list(tmp_path.glob("a.db-*"))  # the store was closed (no -wal, -shm left)


def test_a_forked_child_has_no_runtime_to_stop_and_the_default_sigterm(
    children: list[Child],
) -> None:
    code = """
import os, signal
from beamagent import Runtime, lifecycle

rt = Runtime(store=":memory:")
assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
pid = os.fork()
if pid == 0:
    default = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    print("child", default, lifecycle.live_runtimes(), flush=True)
    raise SystemExit(0)  # a normal interpreter exit: the exit hook has nothing to stop
_, status = os.waitpid(pid, 0)
print("forked child exited", os.waitstatus_to_exitcode(status), flush=True)
"""
    child = spawn(children, code)
    child.read_until("child True []")
    child.read_until("forked child exited 0")
    assert child.wait() == 0
