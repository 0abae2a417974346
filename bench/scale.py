"""P5: many live idle ``local`` sessions in one process, with the in-memory store.

Prints, for N sessions (default 100,000; ``python bench/scale.py N`` overrides):
  * the start rate, one ``start_session`` after another (goal >= 10,000/s; starting
    from several threads is no faster: the work is under the GIL), in batches of 1,000
    that alternate between a thread other than the main one (as a service's request
    thread calls: the sessions supervisor and the session's ``on_start`` run on it,
    caller-runs, docs/supervisors.md) and the main thread (which hands each start to a
    worker), so both see the same number of live sessions; the first is the P5 figure;
  * RSS per idle session (goal <= 10 KiB);
  * the process's thread count at 1, N/10 and N sessions, both Python's
    ``threading.active_count()`` and the kernel's (``/proc/self/status`` Threads);
    goal: independent of N. The scheduler grows its pool lazily (up to ``core``
    workers, more only while some block), so a count taken early may be lower than
    a later one for reasons unrelated to N: the kernel count at N is compared with
    an N-independent budget, the count at 1 session plus the pool's ``core``
    (ratio <= 1.0);
  * a blocking ``session.query("hi")`` at N sessions vs the same query on the same
    session measured before the other N - 1 started (goal ratio <= 1.5), and the same
    over 1,000 sessions picked at random (each query to another session); each the
    best of 7 rounds of 500 queries;
  * the time to stop the runtime with N sessions;
  * how much of the start time CPython's cyclic GC took (its collections, timed by a
    ``gc.callbacks`` hook while the sessions started, full collections apart): every
    live session is objects the full collections walk again each time the heap has
    grown by a quarter, so this share grows with N.

Stopping is linear in N (about 40 us per session: 10,000 in 0.4 s, 100,000 in 3.8 s),
well inside the 60 s bound ``Runtime.stop`` puts on the root's stop, so ``run_all.py``
runs the issue's N = 100,000.
"""

from __future__ import annotations

import gc
import itertools
import queue
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import pykka

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import figure, per_op, report, rss_bytes

from beamagent import Runtime, configure_logging
from supervisors._scheduler import scheduler

configure_logging("critical")

QUERIES = 500
SAMPLE = 1_000
BATCH = 1_000
T = TypeVar("T")


def kernel_threads() -> int:
    """Threads of this process, as the kernel counts them (Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise RuntimeError("Threads not found")


def best(fn: Callable[[], object], n: int, rounds: int = 7) -> float:
    """Seconds per call: the best of ``rounds`` runs of ``n`` calls (``paired``'s rule)."""
    return min(per_op(fn, n, repeats=1) for _ in range(rounds))


class BatchThread:
    """A thread other than the main one that runs what it is given, one call at a time."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[Callable[[], Any] | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="bench-caller")
        self._thread.start()

    def _serve(self) -> None:
        while (fn := self._calls.get()) is not None:
            try:
                self._results.put((True, fn()))
            except BaseException as exc:  # re-raised on the calling thread
                self._results.put((False, exc))

    def call(self, fn: Callable[[], T]) -> T:
        self._calls.put(fn)
        ok, value = self._results.get()
        if not ok:
            raise value
        return cast(T, value)

    def close(self) -> None:
        self._calls.put(None)
        self._thread.join()


class GcClock:
    """Time spent in the cyclic GC (all threads) while active, full collections apart."""

    def __init__(self) -> None:
        self.seconds = {0: 0.0, 1: 0.0, 2: 0.0}
        self.count = {0: 0, 1: 0, 2: 0}
        self._began = 0.0

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self._tick)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._tick)

    def _tick(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.perf_counter() - self._began
            self.count[generation] += 1


def thread_figures(label: str) -> tuple[int, int]:
    python, kernel = threading.active_count(), kernel_threads()
    figure(f"threads_python_at_{label}", python, "threads")
    figure(f"threads_kernel_at_{label}", kernel, "threads")
    return python, kernel


def main(n: int) -> None:
    rt = Runtime(store=":memory:")
    first = rt.start_session(backend="local")
    for _ in range(200):  # warm up: caches, the store's first pages
        first.query("hi")
    query_at_1 = best(lambda: first.query("hi"), QUERIES)
    _py_1, kernel_1 = thread_figures("1")

    gc.collect()
    rss_before = rss_bytes()
    sessions = [first]
    tenth = max(n // 10, 1)
    caller = BatchThread()
    elapsed = {"thread": 0.0, "main": 0.0}
    started = {"thread": 0, "main": 0}

    def start_batch(count: int) -> tuple[float, int]:
        begin = time.perf_counter()
        for _ in range(count):
            sessions.append(rt.start_session(backend="local"))
        return time.perf_counter() - begin, count

    turn = itertools.cycle(("thread", "main"))
    py_tenth = kernel_tenth = 0
    try:
        with GcClock() as gc_clock:
            while len(sessions) < n:
                side = next(turn)
                count = min(BATCH, n - len(sessions))
                run = caller.call if side == "thread" else lambda f: f()
                seconds, done = run(lambda count=count: start_batch(count))
                elapsed[side] += seconds
                started[side] += done
                if not py_tenth and len(sessions) >= tenth:
                    py_tenth, kernel_tenth = thread_figures(f"{tenth}")
    finally:
        caller.close()
    gc.collect()
    rss_after = rss_bytes()
    figure(
        f"scale_start_rate_{n}",
        started["thread"] / elapsed["thread"] if elapsed["thread"] else 0.0,
        "sessions/s",
        "one start_session after another from a thread other than the main one; "
        "goal >= 10000 sessions/s",
    )
    figure(
        f"scale_start_rate_{n}_main_thread",
        started["main"] / elapsed["main"] if elapsed["main"] else 0.0,
        "sessions/s",
        "the same from the main thread, in the batches between (hand-off to a worker)",
    )
    started_total = n - 1
    gc_seconds = sum(gc_clock.seconds.values())
    gc_per_start = gc_seconds / max(started_total, 1) * 1e6
    figure(
        f"scale_start_gc_share_{n}",
        100 * gc_seconds / max(elapsed["thread"] + elapsed["main"], 1e-9),
        "%",
        f"of the start time, in CPython's cyclic GC: {gc_per_start:.1f} "
        f"us per start; {gc_clock.count[2]} full collections took "
        f"{gc_clock.seconds[2]:.2f} s",
    )
    figure(
        f"scale_rss_per_idle_session_{n}",
        (rss_after - rss_before) / max(started_total, 1) / 1024,
        "KiB",
        "goal <= 10 KiB",
    )
    py_n, kernel_n = thread_figures(f"{n}")
    budget = kernel_1 + scheduler.core  # independent of N: the pool may yet grow to core
    report(
        f"scale_threads_at_{n}_vs_budget",
        kernel_n,
        budget,
        "threads",
        f"kernel count at {n} vs at 1 session ({kernel_1}) + scheduler core ({scheduler.core}), "
        f"a bound independent of N; at {tenth}: kernel {kernel_tenth}, python {py_tenth}; "
        f"python at {n}: {py_n}; goal ratio <= 1.0",
    )

    query_at_n = best(lambda: first.query("hi"), QUERIES)
    report(
        f"scale_query_at_{n}_vs_at_1",
        query_at_n * 1e6,
        query_at_1 * 1e6,
        "us",
        "the same session, before and after the rest started; goal ratio <= 1.5",
    )
    picked = random.Random(0).sample(sessions, min(SAMPLE, n))
    cycle = itertools.cycle(picked)
    spread = best(lambda: next(cycle).query("hi"), min(QUERIES, len(picked)))
    report(
        f"scale_query_at_{n}_random_sessions_vs_at_1",
        spread * 1e6,
        query_at_1 * 1e6,
        "us",
        "each query to another session; goal ratio <= 1.5",
    )

    start = time.perf_counter()
    try:
        rt.stop()
    except pykka.Timeout as exc:  # Runtime.stop bounds the root's stop at 60 s
        figure(f"scale_runtime_stop_{n}", time.perf_counter() - start, "s", f"timed out: {exc}")
    else:
        figure(f"scale_runtime_stop_{n}", time.perf_counter() - start, "s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
