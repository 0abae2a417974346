"""Properties of whole runs: random graphs and instruction lists never hang, never exceed
max_steps, and always end with exactly one terminal event."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beamagent.errors import ServingFailed
from beamagent.graph import (
    TERMINAL_EVENTS,
    End,
    EventKind,
    Instruction,
    Job,
    Node,
    NodeMessage,
    Result,
    Retry,
    Route,
    RunStatus,
    Sub,
    Yield,
)
from beamagent.runtime import Runtime

WAIT = 20.0
NODES = ["n0", "n1", "n2"]

targets = st.sampled_from([*NODES, "ghost"])  # "ghost" is no node: InvalidNode
instruction: st.SearchStrategy[Instruction] = st.one_of(
    st.builds(Route, targets, st.integers(1, 2)),
    st.builds(Yield, targets),
    st.builds(Sub, st.sampled_from(["sub", "sub", "missing"])),
    st.just(End()),
    st.builds(Retry, st.none() | st.just("again")),
)
# What one visit answers: instructions, or "raise" (the serving fails).
answer = st.one_of(st.lists(instruction, max_size=3), st.just("raise"))
script = st.lists(answer, min_size=1, max_size=3)

TERMINAL_STATUS = {
    EventKind.RUN_COMPLETE: {RunStatus.COMPLETED},
    EventKind.RUN_ENDED: {RunStatus.ENDED},
    EventKind.RUN_ERROR: {RunStatus.ERROR},
}


def serving_for(answers: list[Any]) -> Any:
    def serve(message: NodeMessage) -> Result:
        chosen = answers[(message.step + message.retries) % len(answers)]
        if chosen == "raise":
            raise ValueError("scripted failure")
        return Result(f"{message.node_id}@{message.step}", next=list(chosen))

    return serve


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    scripts=st.lists(script, min_size=len(NODES), max_size=len(NODES)),
    sub_ends=st.booleans(),
    max_steps=st.integers(1, 12),
    max_retries=st.integers(0, 2),
    durable=st.booleans(),
    retry_on=st.sampled_from([(), (ValueError,)]),
)
def test_random_graphs_end_once_within_max_steps(
    scripts: list[list[Any]],
    sub_ends: bool,
    max_steps: int,
    max_retries: int,
    durable: bool,
    retry_on: tuple[type[Exception], ...],
) -> None:
    job = Job(
        "random",
        [Node(node_id, serving=serving_for(s)) for node_id, s in zip(NODES, scripts, strict=True)],
        start="n0",
        max_steps=max_steps,
        max_retries=max_retries,
        retry_on=retry_on,  # the scripted ValueError ends the run, or is retried
    )
    sub = Job(
        "sub",
        [Node("leaf", serving=lambda m: Result("leaf", next=[End()] if sub_ends else []))],
        start="leaf",
    )
    with Runtime(store=":memory:") as rt:
        run = rt.run_job(job, "go", subs={"sub": sub}, durable=durable)
        result = run.result(WAIT, raise_error=False)  # never hangs
        events = list(run.events(WAIT))
    assert result.steps <= max_steps
    assert all(e.step <= max_steps for e in events)
    terminal = [e for e in events if e.kind in TERMINAL_EVENTS]
    assert len(terminal) == 1
    assert events[-1] is terminal[0]
    assert result.status in TERMINAL_STATUS[terminal[0].kind]
    assert (result.error is not None) == (result.status is RunStatus.ERROR)
    if isinstance(result.error, ServingFailed):
        assert not retry_on  # a listed error is retried, never the run's end by itself
    if not retry_on and any(e.kind is EventKind.NODE_RETRY for e in events):
        # Only Retry instructions retry when nothing is listed: never a raised ValueError.
        assert all(
            "scripted failure" not in e.data["reason"]
            for e in events
            if e.kind is EventKind.NODE_RETRY
        )
    started = [e for e in events if e.kind is EventKind.NODE_STARTED]
    assert len(started) <= max_steps
    assert events[0].kind is EventKind.RUN_STARTED


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers=st.lists(st.lists(instruction, max_size=4), min_size=1, max_size=4))
def test_any_instruction_list_from_a_self_looping_node_ends(answers: list[list[Any]]) -> None:
    job = Job("loop", [Node(n, serving=serving_for(answers)) for n in NODES], "n0", max_steps=8)
    with Runtime(store=":memory:") as rt:
        run = rt.run_job(job, "go", subs={}, durable=False)
        result = run.result(WAIT, raise_error=False)
        events = list(run.events(WAIT))
    assert result.steps <= 8
    assert sum(1 for e in events if e.terminal) == 1
    assert events[-1].terminal
