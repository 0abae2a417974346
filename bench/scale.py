"""P5: many live idle ``local`` sessions in one process, with the in-memory store.

Prints, for N sessions (default 100,000; ``python bench/scale.py N`` overrides):
  * the start rate, one ``start_session`` after another on one thread (goal >= 10,000/s;
    starting from several threads is no faster: the work is under the GIL);
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
  * the time to stop the runtime with N sessions.

Stopping grows faster than N (2,000 sessions: 0.2 s, 10,000: 2.2 s); at 100,000 it
passes the 60 s bound ``Runtime.stop`` puts on the root's stop, so ``run_all.py``
runs N = 30,000.
"""

from __future__ import annotations

import gc
import itertools
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pykka

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import figure, per_op, report, rss_bytes

from beamagent import Runtime, configure_logging
from supervisors._scheduler import scheduler

configure_logging("critical")

QUERIES = 500
SAMPLE = 1_000


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
    start = time.perf_counter()
    while len(sessions) < tenth:
        sessions.append(rt.start_session(backend="local"))
    py_tenth, kernel_tenth = thread_figures(f"{tenth}")
    while len(sessions) < n:
        sessions.append(rt.start_session(backend="local"))
    elapsed = time.perf_counter() - start
    gc.collect()
    rss_after = rss_bytes()
    started = n - 1
    figure(
        f"scale_start_rate_{n}",
        started / elapsed if elapsed else 0.0,
        "sessions/s",
        "one thread, one start_session after another; goal >= 10000 sessions/s",
    )
    figure(
        f"scale_rss_per_idle_session_{n}",
        (rss_after - rss_before) / max(started, 1) / 1024,
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
