"""Graph runs against LangGraph, measured in one run.

Prints, per step (goal: ours <= 0.5 x LangGraph):
  * a 100-step self-loop (one node routing to itself, then ending);
  * a 3-node linear graph invoked 1,000 times (per step = per run / 3, so each
    run's start and end are part of the figure);
each twice: with the process free to use every CPU, and pinned to one CPU (the
GIL runs one thread at a time anyway; on a VM a wake-up on an idle CPU costs
tens of microseconds, and our run is several threads where LangGraph's is one).
Ours runs with ``durable=False`` (LangGraph keeps no checkpoints by default);
the cost of durable runs (checkpoints in memory, then in SQLite) is printed after.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import figure, paired, report

from beamagent.graph import End, Job, LinearRouter, Node, NodeMessage, Result, Route
from beamagent.log import configure_logging
from beamagent.runtime import Runtime

# Measure the runtime, not log rendering.
configure_logging("critical")

LOOP_STEPS = 100
LINEAR_RUNS = 1_000
GOAL = "goal: ratio <= 0.5"


# --- LangGraph -----------------------------------------------------------------------------


class State(TypedDict):
    n: int


def langgraph_loop() -> Callable[[], Any]:
    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(State)
    graph.add_node("a", lambda s: {"n": s["n"] + 1})
    graph.add_edge(START, "a")
    graph.add_conditional_edges("a", lambda s: END if s["n"] >= LOOP_STEPS else "a")
    app = graph.compile()
    config = {"recursion_limit": LOOP_STEPS + 10}
    return lambda: app.invoke({"n": 0}, config)


def langgraph_linear() -> Callable[[], Any]:
    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(State)
    for name in "abc":
        graph.add_node(name, lambda s: {"n": s["n"] + 1})
    graph.add_edge(START, "a")
    graph.add_edge("a", "b")
    graph.add_edge("b", "c")
    graph.add_edge("c", END)
    app = graph.compile()
    return lambda: app.invoke({"n": 0})


# --- ours ----------------------------------------------------------------------------------


def loop_job() -> Job:
    def step(message: NodeMessage) -> Result:
        n = int(message.previous_result.body) + 1 if message.previous_result else 1
        return Result(str(n), next=[End()] if n >= LOOP_STEPS else [Route("a")])

    return Job("loop", [Node("a", serving=step)], start="a", max_steps=LOOP_STEPS + 10)


def linear_job() -> Job:
    order = LinearRouter(["a", "b", "c"])
    return Job("linear", [Node(n, serving=lambda m: "x", router=order) for n in "abc"], "a")


def ours(rt: Runtime, job: Job, durable: bool = False) -> Callable[[], Any]:
    return lambda: rt.run_job(job, "go", durable=durable).result(60)


def warm(fn: Callable[[], Any], n: int) -> None:
    for _ in range(n):
        fn()


def measure(label: str, rt: Runtime) -> None:
    loop_lg, loop_ours = langgraph_loop(), ours(rt, loop_job())
    warm(loop_lg, 3)
    warm(loop_ours, 3)
    base, mine = paired(loop_lg, loop_ours, n=5, rounds=5)
    scale = 1e6 / LOOP_STEPS
    report(
        f"self-loop, {LOOP_STEPS} steps, per step{label}", mine * scale, base * scale, "us", GOAL
    )

    lin_lg, lin_ours = langgraph_linear(), ours(rt, linear_job())
    warm(lin_lg, 50)
    warm(lin_ours, 50)
    base, mine = paired(lin_lg, lin_ours, n=LINEAR_RUNS // 5, rounds=5)
    report(
        f"3-node linear x {LINEAR_RUNS}, per step{label}",
        mine * 1e6 / 3,
        base * 1e6 / 3,
        "us",
        GOAL,
    )


def durable_figures(label: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for store, name in ((":memory:", "memory"), (str(Path(tmp) / "bench.db"), "sqlite")):
            with Runtime(store=store) as rt:
                loop = ours(rt, loop_job(), durable=True)
                warm(loop, 2)
                _, per_run = paired(lambda: None, loop, n=3, rounds=3)
                figure(
                    f"durable self-loop ({name} checkpoints), per step{label}",
                    per_run * 1e6 / LOOP_STEPS,
                    "us",
                )
                linear = ours(rt, linear_job(), durable=True)
                warm(linear, 20)
                _, per_run = paired(lambda: None, linear, n=100, rounds=3)
                figure(
                    f"durable 3-node linear ({name} checkpoints), per step{label}",
                    per_run * 1e6 / 3,
                    "us",
                )


def pin_process(cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of this process (``sched_setaffinity(0)`` sets
    only the calling thread's: the scheduler's workers, started by the first runtime,
    would stay free to run on the other CPUs)."""
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
            os.sched_setaffinity(int(task), cpus)


def main() -> None:
    cpus = os.sched_getaffinity(0)
    with Runtime(store=":memory:") as rt:
        measure("", rt)
    pin_process({min(cpus)})  # threads started from now on inherit it
    try:
        with Runtime(store=":memory:") as rt:
            measure(" (pinned to 1 CPU)", rt)
        durable_figures(" (pinned)")
    finally:
        pin_process(cpus)


if __name__ == "__main__":
    main()
