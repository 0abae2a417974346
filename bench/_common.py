"""Shared helpers for the benchmarks: timing, RSS, and the one-line report format."""

from __future__ import annotations

import gc
import statistics
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def per_op(fn: Callable[[], object], n: int, repeats: int = 5) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` runs of ``n`` calls."""
    samples = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - start) / n)
    return statistics.median(samples)


def paired(
    baseline: Callable[[], object], ours: Callable[[], object], n: int, rounds: int = 7
) -> tuple[float, float]:
    """Seconds per call of both, measured in alternating rounds; the best round of each.

    Alternating rounds expose both sides to the same background load, and the
    best round is the least disturbed estimate of each side's own cost.
    """
    base_samples, our_samples = [], []
    for _ in range(rounds):
        base_samples.append(per_op(baseline, n, repeats=1))
        our_samples.append(per_op(ours, n, repeats=1))
    return min(base_samples), min(our_samples)


def on_thread(fn: Callable[[], T]) -> T:
    """``fn()`` run on a new thread (not the main one, as a service's request thread)."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # re-raised on the calling thread
            error.append(exc)

    thread = threading.Thread(target=run, name="bench-caller")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def rss_bytes() -> int:
    """Resident set size of this process (Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found")


def report(name: str, ours: float, baseline: float, unit: str, goal: str) -> None:
    """One line: the figure, its baseline from the same run, and their ratio."""
    ratio = ours / baseline if baseline else float("inf")
    print(
        f"{name}: ours={ours:.2f} {unit}  baseline={baseline:.2f} {unit}  "
        f"ratio={ratio:.2f}  ({goal})"
    )


def figure(name: str, value: float, unit: str, goal: str = "") -> None:
    """One line for a figure that has no same-run baseline."""
    suffix = f"  ({goal})" if goal else ""
    print(f"{name}: {value:.2f} {unit}{suffix}")
