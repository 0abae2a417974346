"""Supervision overhead against raw Pykka, measured in one run.

Prints:
  * ask round trip: our Process vs a raw pykka.ThreadingActor (goal ratio <= 1.2);
  * crash -> restarted child answering, vs raw Pykka spawn + first ask (goal <= 2.0);
  * 10,000 children under one DynamicSupervisor: start rate and RSS per child
    (goal <= 40 KiB).

Run pinned: run_all.py runs it under ``taskset -c 0`` (one caller's latency across
threads; on a VM a wake-up on an idle CPU costs tens of microseconds and varies).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pykka

sys.path.insert(0, str(Path(__file__).resolve().parent))
# This checkout's beamagent, not whichever one is installed (a worktree, a clone).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import figure, paired, report, rss_bytes

import supervisors as s

# Measure the supervision mechanics, not log rendering (crash tracebacks are logged at error).
logging.getLogger("supervisors").setLevel(logging.CRITICAL)


class RawEcho(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


class Echo(s.Process):
    def on_receive(self, message: Any) -> Any:
        return message


_restarted = threading.Event()


class Crashy(s.Process):
    def on_start(self) -> None:
        _restarted.set()

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("crash")
        return message


class Idle(s.Process):
    pass


def bench_ask() -> None:
    raw, ours = RawEcho.start(), Echo.start()
    raw_t, our_t = paired(lambda: raw.ask(1), lambda: ours.ask(1), 5_000)
    report("ask_round_trip", our_t * 1e6, raw_t * 1e6, "us", "goal ratio <= 1.2")
    raw.stop()
    ours.stop()


def bench_restart() -> None:
    n = 200

    def raw_spawn_and_ask() -> None:
        ref = RawEcho.start()
        ref.ask(1)
        ref.stop(block=False)

    sup = s.Supervisor.start(
        children=[s.ChildSpec("crashy", (Crashy, (), {}), name="crashy")],
        max_restarts=1_000_000,
        max_seconds=1,
    )

    def crash_and_answer() -> None:
        old = s.whereis("crashy")
        assert old is not None
        _restarted.clear()
        old.tell("crash")
        _restarted.wait()
        new = s.whereis("crashy")
        assert new is not None
        assert new is not old
        new.ask(1)

    raw_t, our_t = paired(raw_spawn_and_ask, crash_and_answer, n)
    report(
        "crash_to_restarted_answer",
        our_t * 1e6,
        raw_t * 1e6,
        "us",
        "baseline: raw spawn + first ask; goal ratio <= 2.0",
    )
    sup.stop()


def bench_many_children() -> None:
    n = 10_000
    dyn = s.DynamicSupervisor.start()
    before = rss_bytes()
    start = time.perf_counter()
    for _ in range(n):
        dyn.start_child((Idle, (), {}))
    elapsed = time.perf_counter() - start
    after = rss_bytes()
    figure("dynamic_start_rate", n / elapsed, "children/s")
    figure("rss_per_child", (after - before) / n / 1024, "KiB", "goal <= 40 KiB")
    start = time.perf_counter()
    dyn.stop()
    figure("dynamic_stop_10000", time.perf_counter() - start, "s")


if __name__ == "__main__":
    bench_ask()
    bench_restart()
    bench_many_children()
