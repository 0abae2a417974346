"""Why the session start rate falls as sessions accumulate: batches, with the GC's share.

``python bench/start_batches.py [N] [--gc-off]`` starts N idle ``local`` sessions (default
100,000; memory store) in batches of 1,000 and prints, for every tenth of N, the last
batch's start rate, its process CPU per start, and the time CPython's cyclic GC took
per start in that batch, by generation (measured with ``gc.callbacks``). ``--gc-off``
disables the GC for the loop (a diagnosis only: the library never changes the host's
GC settings), so CPU per start shows whether any step of a start grows with N.
Last, the objects the GC tracks per session, and one full collection's time per session.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import figure

from beamagent import Runtime, configure_logging

configure_logging("critical")

BATCH = 1_000


def main(n: int, gc_off: bool) -> None:
    spent = [0.0, 0.0, 0.0]
    began = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            spent[info["generation"]] += time.perf_counter() - began[0]

    rt = Runtime(store=":memory:")
    sessions = [rt.start_session(backend="local") for _ in range(100)]  # warm up
    gc.collect()
    tracked_before = len(gc.get_objects())
    gc.callbacks.append(timed)
    if gc_off:
        gc.disable()
    batches = max(n // BATCH, 1)
    report_every = max(batches // 10, 1)
    try:
        for b in range(1, batches + 1):
            gc_before = list(spent)
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(BATCH):
                sessions.append(rt.start_session(backend="local"))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if b % report_every == 0:
                live = len(sessions) - 100
                per_gen = [(spent[g] - gc_before[g]) / BATCH * 1e6 for g in range(3)]
                figure(
                    f"start_batch_at_{live}",
                    BATCH / wall,
                    "sessions/s",
                    f"CPU {cpu / BATCH * 1e6:.1f} us/start; GC gen0/1/2 "
                    + "/".join(f"{t:.1f}" for t in per_gen)
                    + " us/start",
                )
    finally:
        gc.callbacks.remove(timed)
        if gc_off:
            gc.enable()
    started = len(sessions) - 100
    gc.collect()
    figure(
        "gc_tracked_objects_per_session",
        (len(gc.get_objects()) - tracked_before) / started,
        "objects",
    )
    start = time.process_time()
    gc.collect()
    figure(
        "gc_full_collection_per_session",
        (time.process_time() - start) / started * 1e6,
        "us",
        "CPython runs one each time the long-lived objects grew by a quarter",
    )
    rt.stop()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(int(args[0]) if args else 100_000, "--gc-off" in sys.argv)
