"""Graph runs end to end: a real Runtime, real executor and node actors."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from beamagent.errors import (
    ConnectTimeout,
    InputRequired,
    InvalidNext,
    InvalidNode,
    JobNotLoaded,
    MaxRetriesExceeded,
    MaxStepsExceeded,
    QueryFailed,
    QueryTimeout,
    RetryRequested,
    RunAlreadyExists,
    RunNotFound,
    ServingFailed,
    SessionError,
    TransportError,
)
from beamagent.graph import (
    TERMINAL_EVENTS,
    Condition,
    Edge,
    EdgeRouter,
    End,
    EventKind,
    Job,
    LinearRouter,
    Node,
    NodeMessage,
    Output,
    Result,
    Retry,
    Route,
    Router,
    RunEvent,
    RunStatus,
    Sub,
    ToolCall,
    ToolRegistry,
    Yield,
)
from beamagent.runtime import Runtime

WAIT = 10.0


@pytest.fixture
def rt() -> Iterator[Runtime]:
    with Runtime(store=":memory:") as runtime:
        yield runtime


def kinds(events: list[RunEvent]) -> list[str]:
    return [e.kind.value for e in events]


def of(events: list[RunEvent], kind: EventKind, node: str | None = None) -> list[RunEvent]:
    return [e for e in events if e.kind is kind and (node is None or e.node_id == node)]


def body(text: str, *next_: Any, **outputs: Any) -> Result:
    return Result(text, outputs=outputs, next=list(next_))


def linear(*servings: tuple[str, Callable[[NodeMessage], Any]], **job: Any) -> Job:
    order = [name for name, _ in servings]
    router = LinearRouter(order)
    return Job("linear", [Node(n, serving=s, router=router) for n, s in servings], order[0], **job)


# --- basics -------------------------------------------------------------------------------------


def test_linear_run_passes_results_along_and_ends(rt: Runtime) -> None:
    job = linear(
        ("draft", lambda m: f"draft of {m.input}"),
        ("review", lambda m: m.previous_result.body + " reviewed"),
        ("publish", lambda m: m.previous_result.body + " published"),
    )
    run = rt.run_job(job, "the memo")
    result = run.result(WAIT)
    assert result.status is RunStatus.ENDED  # LinearRouter ends after the last node
    assert result.output is not None
    assert result.output.body == "draft of the memo reviewed published"
    assert [r.node_id for r in result.results_by_thread["0"]] == ["draft", "review", "publish"]
    assert result.steps == 3
    events = list(run.events(WAIT))
    assert kinds(events) == [
        "run_started",
        "node_started",
        "node_result",
        "node_started",
        "node_result",
        "node_started",
        "node_result",
        "run_ended",
    ]
    assert all(e.run_id == run.run_id for e in events)
    assert [e.step for e in of(events, EventKind.NODE_RESULT)] == [1, 2, 3]
    assert {e.thread_id for e in of(events, EventKind.NODE_STARTED)} == {"0"}
    assert run.status() is RunStatus.ENDED


def test_a_thread_with_no_next_finishes_and_the_run_completes(rt: Runtime) -> None:
    job = Job("one", [Node("only", serving=lambda m: "done")], start="only")
    run = rt.run_job(job, "x")
    result = run.result(WAIT)
    assert result.status is RunStatus.COMPLETED
    assert kinds(list(run.events(WAIT)))[-1] == "run_complete"


def test_input_and_objective_reach_the_serving(rt: Runtime) -> None:
    seen: list[NodeMessage] = []

    def serving(message: NodeMessage) -> str:
        seen.append(message)
        return "ok"

    job = Job("j", [Node("n", serving=serving, objective="be brief")], start="n")
    run = rt.run_job(job, {"ticket": 7}, run_id="r-input")
    run.result(WAIT)
    (message,) = seen
    assert message.input == {"ticket": 7}
    assert message.node_objective == "be brief"
    assert (message.run_id, message.job_id, message.node_id, message.step) == (
        "r-input",
        "j",
        "n",
        1,
    )


@pytest.mark.parametrize("empty", [None, "", "   ", [], {}])
def test_empty_input_is_refused(rt: Runtime, empty: Any) -> None:
    job = Job("j", [Node("n", serving=lambda m: "x")], start="n")
    with pytest.raises(InputRequired):
        rt.run_job(job, empty)


def test_duplicate_run_id_is_refused_while_running_and_once_stored(rt: Runtime) -> None:
    gate = threading.Event()
    job = Job("j", [Node("n", serving=lambda m: gate.wait(WAIT) and "x")], start="n")
    run = rt.run_job(job, "x", run_id="dup")
    with pytest.raises(RunAlreadyExists):
        rt.run_job(job, "x", run_id="dup")
    gate.set()
    run.result(WAIT)
    with pytest.raises(RunAlreadyExists, match="in the store"):
        rt.run_job(job, "x", run_id="dup")


def test_get_run_finds_live_runs_only(rt: Runtime) -> None:
    gate = threading.Event()
    job = Job("j", [Node("n", serving=lambda m: gate.wait(WAIT) and "x")], start="n")
    run = rt.run_job(job, "x", run_id="live")
    assert rt.get_run("live") is run
    assert rt.live_runs() == ["live"]
    gate.set()
    run.result(WAIT)
    with pytest.raises(RunNotFound):
        rt.get_run("never")


# --- routing --------------------------------------------------------------------------------------


def test_next_overrides_the_router_and_garbage_falls_back_to_it(rt: Runtime) -> None:
    router = EdgeRouter(
        [Edge("route", "static")], outputs=[Output("verdict", "enum", choices=["a", "b"])]
    )

    def start(message: NodeMessage) -> Result:
        if message.input == "override":
            return body("s", {"type": "route", "value": "dynamic"}, verdict="a")
        return body("s", {"type": "nonsense"}, 42, verdict="a")  # nothing usable: the router

    job = Job(
        "j",
        [
            Node("start", serving=start, router=router),
            Node("static", serving=lambda m: "static"),
            Node("dynamic", serving=lambda m: "dynamic"),
        ],
        start="start",
    )
    assert rt.run_job(job, "override").result(WAIT).output.body == "dynamic"  # type: ignore[union-attr]
    assert rt.run_job(job, "fallback").result(WAIT).output.body == "static"  # type: ignore[union-attr]


def test_conditional_edges_pick_the_route(rt: Runtime) -> None:
    router = EdgeRouter(
        [
            Edge("route", "urgent", conditions=[Condition("score", "gte", 7)]),
            Edge("fallback", "later"),
        ],
        outputs=[Output("score", "int", min=0, max=10)],
    )
    job = Job(
        "j",
        [
            Node("grade", serving=lambda m: body("g", score=m.input), router=router),
            Node("urgent", serving=lambda m: "urgent"),
            Node("later", serving=lambda m: "later"),
        ],
        start="grade",
    )
    assert rt.run_job(job, 9).result(WAIT).output.body == "urgent"  # type: ignore[union-attr]
    assert rt.run_job(job, 2).result(WAIT).output.body == "later"  # type: ignore[union-attr]


def test_missing_outputs_retry_with_the_reason_then_pass(rt: Runtime) -> None:
    reasons: list[str | None] = []
    router = EdgeRouter([Edge("end")], outputs=[Output("score", "int")])

    def grade(message: NodeMessage) -> Result:
        reasons.append(message.retry_reason)
        return body("g") if message.retries == 0 else body("g", score=3)

    job = Job("j", [Node("grade", serving=grade, router=router)], start="grade")
    run = rt.run_job(job, "x")
    assert run.result(WAIT).status is RunStatus.ENDED
    assert reasons[0] is None
    assert reasons[1] is not None
    assert "'score'" in reasons[1]
    (retry,) = of(list(run.events(WAIT)), EventKind.NODE_RETRY)
    assert retry.data["retries"] == 1


def test_unknown_route_target_at_run_time_is_invalid_node(rt: Runtime) -> None:
    job = Job("j", [Node("n", serving=lambda m: body("x", Route("ghost")))], start="n")
    run = rt.run_job(job, "x")
    with pytest.raises(InvalidNode, match="ghost"):
        run.result(WAIT)
    assert run.status() is RunStatus.ERROR
    assert kinds(list(run.events(WAIT)))[-1] == "run_error"


# --- fan-out and joins ---------------------------------------------------------------------------


def test_fan_out_count_three_runs_the_copies_concurrently(rt: Runtime) -> None:
    # Each copy waits for the other two at a barrier: it only passes if all three run at once.
    barrier = threading.Barrier(3, timeout=WAIT)

    def work(message: NodeMessage) -> str:
        barrier.wait()
        return f"worked on thread {message.thread_id}"

    job = Job(
        "fan",
        [
            Node("split", serving=lambda m: body("s", Route("work", 3))),
            Node("work", serving=work),
        ],
        start="split",
        max_retries=0,
    )
    run = rt.run_job(job, "x")
    result = run.result(WAIT)
    assert result.status is RunStatus.COMPLETED
    events = list(run.events(WAIT))
    started = [
        i for i, e in enumerate(events) if e.kind is EventKind.NODE_STARTED and e.node_id == "work"
    ]
    first_result = next(
        i for i, e in enumerate(events) if e.kind is EventKind.NODE_RESULT and e.node_id == "work"
    )
    assert len(started) == 3
    assert max(started) < first_result
    assert sorted(e.thread_id for e in of(events, EventKind.NODE_RESULT, "work")) == ["0", "1", "2"]


def test_concurrency_caps_the_copies_of_a_node(rt: Runtime) -> None:
    lock = threading.Lock()
    running = [0, 0]  # now, most

    def work(message: NodeMessage) -> str:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        with lock:
            running[0] -= 1
        return "w"

    job = Job(
        "cap",
        [
            Node("split", serving=lambda m: body("s", Route("work", 6))),
            Node("work", serving=work, concurrency=1),
        ],
        start="split",
    )
    result = rt.run_job(job, "x").result(WAIT)
    assert result.status is RunStatus.COMPLETED
    assert len(result.results_by_thread) == 6
    assert running[1] == 1


def test_yield_join_with_four_threads_gets_all_four_results(rt: Runtime) -> None:
    joined: list[tuple[str, ...]] = []

    def merge(message: NodeMessage) -> str:
        joined.append(tuple(sorted(r.body for r in message.joined)))
        return "merged"

    job = Job(
        "join",
        [
            Node("split", serving=lambda m: body("s", Route("part", 4))),
            Node("part", serving=lambda m: body(f"part {m.thread_id}", Yield("merge"))),
            Node("merge", serving=merge),
        ],
        start="split",
    )
    run = rt.run_job(job, "x")
    result = run.result(WAIT)
    assert result.status is RunStatus.COMPLETED
    assert joined == [("part 0", "part 1", "part 2", "part 3")]
    events = list(run.events(WAIT))
    waits = of(events, EventKind.YIELD_WAIT, "merge")
    assert [(e.data["total"], e.data["ready"]) for e in waits] == [(4, 1), (4, 2), (4, 3)]
    (done,) = of(events, EventKind.YIELD_DONE, "merge")
    assert done.data["total"] == 4
    assert len(of(events, EventKind.NODE_STARTED, "merge")) == 1


def test_a_thread_that_finishes_releases_the_threads_waiting_at_a_yield(rt: Runtime) -> None:
    # Threads 0 and 1 yield; thread 2 finishes instead (waiting until the others wait).
    waiting = threading.Barrier(3, timeout=WAIT)
    joined: list[int] = []

    def part(message: NodeMessage) -> Result:
        if message.thread_id == "2":
            waiting.wait()
            return body("I am done")  # no next: the thread finishes
        waiting.wait()
        return body(f"part {message.thread_id}", Yield("merge"))

    def merge(message: NodeMessage) -> str:
        joined.append(len(message.joined))
        return "merged"

    job = Job(
        "strand",
        [
            Node("split", serving=lambda m: body("s", Route("part", 3))),
            Node("part", serving=part),
            Node("merge", serving=merge),
        ],
        start="split",
    )
    result = rt.run_job(job, "x").result(WAIT)
    assert result.status is RunStatus.COMPLETED
    assert joined == [2]
    assert result.output is not None
    assert result.output.body == "merged"


def test_mixed_fan_out_routes_then_yields(rt: Runtime) -> None:
    # One result fans out: a route on this thread and a yield on a new one.
    job = Job(
        "mixed",
        [
            Node("start", serving=lambda m: body("s", Yield("merge"), Route("side"))),
            Node("side", serving=lambda m: body("side", Yield("merge"))),
            Node("merge", serving=lambda m: f"merged {len(m.joined)}"),
        ],
        start="start",
    )
    run = rt.run_job(job, "x")
    assert run.result(WAIT).output.body == "merged 2"  # type: ignore[union-attr]
    started = of(list(run.events(WAIT)), EventKind.NODE_STARTED, "side")
    assert [e.thread_id for e in started] == ["0"]  # the route kept the current thread


# --- end, retries, limits -----------------------------------------------------------------------


def test_end_cancels_nodes_in_flight(rt: Runtime) -> None:
    slow_started = threading.Event()
    never = threading.Event()
    cancelled = threading.Event()
    finished = threading.Event()

    def slow(message: NodeMessage) -> str:
        slow_started.set()
        try:
            while not never.is_set():
                never.wait(0.01)
        except BaseException:
            cancelled.set()
            raise
        finished.set()
        return "too late"

    def stop(message: NodeMessage) -> Result:
        assert slow_started.wait(WAIT)
        return body("stop", End())

    job = Job(
        "end",
        [
            Node("split", serving=lambda m: body("s", Route("slow"), Route("stop"))),
            Node("slow", serving=slow),
            Node("stop", serving=stop),
        ],
        start="split",
    )
    run = rt.run_job(job, "x")
    result = run.result(WAIT)
    assert result.status is RunStatus.ENDED
    assert result.output is not None
    assert result.output.body == "stop"
    assert cancelled.wait(WAIT)
    assert not finished.is_set()
    events = list(run.events(WAIT))
    assert of(events, EventKind.NODE_RESULT, "slow") == []
    # A cancelled node actor is dropped, not restarted: no crash counted against the pool.
    from supervisors import whereis

    pool = whereis(("beamagent", rt.id, "node-actors"))
    assert pool is not None
    children = pool.which_children(timeout=WAIT)  # type: ignore[attr-defined]
    assert [c.restarts for c in children] == [0]  # of two node actors, the killed one is gone
    assert [e.kind for e in events if e.terminal] == [EventKind.RUN_ENDED]


def test_end_wins_over_retry_and_routes_in_one_result(rt: Runtime) -> None:
    job = Job(
        "j",
        [
            Node("n", serving=lambda m: body("bye", Route("n", 3), Retry("why"), End())),
        ],
        start="n",
    )
    run = rt.run_job(job, "x")
    assert run.result(WAIT).status is RunStatus.ENDED
    assert of(list(run.events(WAIT)), EventKind.NODE_RETRY) == []


def test_retry_budget_is_per_node_visit(rt: Runtime) -> None:
    # Each of two visits uses the whole budget (2 retries) and still succeeds: per visit,
    # not per path (Agens would fail the second).
    def flaky(message: NodeMessage) -> Result:
        if message.retries < 2:
            raise RetryRequested(f"attempt {message.retries} not good enough")
        return body(f"{message.node_id} ok", *([Route("b")] if message.node_id == "a" else []))

    job = Job("j", [Node("a", serving=flaky), Node("b", serving=flaky)], start="a", max_retries=2)
    run = rt.run_job(job, "x")
    result = run.result(WAIT)
    assert result.status is RunStatus.COMPLETED
    retries = of(list(run.events(WAIT)), EventKind.NODE_RETRY)
    assert [(e.node_id, e.data["retries"]) for e in retries] == [
        ("a", 1),
        ("a", 2),
        ("b", 1),
        ("b", 2),
    ]
    assert result.steps == 6


def test_retries_beyond_the_budget_fail_the_run(rt: Runtime) -> None:
    def never_good(message: NodeMessage) -> Result:
        raise RetryRequested("still bad")

    job = Job("j", [Node("n", serving=never_good)], start="n", max_retries=2)
    run = rt.run_job(job, "x")
    with pytest.raises(MaxRetriesExceeded, match="still bad"):
        run.result(WAIT)
    events = list(run.events(WAIT))
    assert len(of(events, EventKind.NODE_STARTED, "n")) == 3
    assert kinds(events)[-1] == "run_error"


def test_a_retried_node_keeps_previous_result_and_sees_the_reason(rt: Runtime) -> None:
    seen: list[tuple[str | None, str | None, int]] = []

    def check(message: NodeMessage) -> Result:
        previous = message.previous_result.body if message.previous_result else None
        seen.append((previous, message.retry_reason, message.retries))
        return body("checked") if message.retries else body("bad", Retry("too vague"))

    job = Job(
        "j",
        [
            Node("draft", serving=lambda m: body("draft", Route("check"))),
            Node("check", serving=check),
        ],
        start="draft",
    )
    rt.run_job(job, "x").result(WAIT)
    assert seen == [("draft", None, 0), ("draft", "too vague", 1)]


def test_a_serving_that_raises_ends_the_run_at_once(rt: Runtime) -> None:
    # Agens ends the run at the first serving error; LangGraph raises unless a node has a
    # retry policy. A bug must not cost max_retries more model calls.
    calls = []

    def broken(message: NodeMessage) -> str:
        calls.append(message.retries)
        raise RuntimeError("bug")

    job = Job("j", [Node("n", serving=broken)], start="n", max_retries=3)
    run = rt.run_job(job, "x")
    with pytest.raises(
        ServingFailed, match="node 'n' \\(thread 0\\) raised RuntimeError: bug"
    ) as info:
        run.result(WAIT)
    assert calls == [0]
    error = info.value
    assert isinstance(error.error, RuntimeError)
    assert error.__cause__ is error.error
    assert (error.node_id, error.thread_id, error.run_id) == ("n", "0", run.run_id)
    assert "retry_on" in str(error)  # the message says how to retry it instead
    events = list(run.events(WAIT))
    assert kinds(events) == ["run_started", "node_started", "run_error"]
    assert events[-1].data["error"].startswith("ServingFailed: ")


@pytest.mark.parametrize("durable", [False, True])
def test_a_serving_error_in_retry_on_is_retried(rt: Runtime, durable: bool) -> None:
    calls = []

    def flaky(message: NodeMessage) -> str:
        calls.append(message.retry_reason)
        if len(calls) == 1:
            raise ConnectionError("the API is down")
        return "recovered"

    job = Job(
        "j",
        [
            Node("a", serving=lambda m: body("a", Route("n"))),
            Node("n", serving=flaky, retry_on=(ConnectionError,)),
        ],
        start="a",
    )
    run = rt.run_job(job, "x", durable=durable)
    assert run.result(WAIT).output.body == "recovered"  # type: ignore[union-attr]
    assert calls[0] is None
    assert calls[1] is not None
    assert "ConnectionError: the API is down" in calls[1]
    (retry,) = of(list(run.events(WAIT)), EventKind.NODE_RETRY, "n")
    assert "the API is down" in retry.data["reason"]


def test_a_job_sets_retry_on_for_its_nodes_and_a_node_may_override_it(rt: Runtime) -> None:
    calls: dict[str, int] = {"inherits": 0, "overrides": 0}

    def failing_once(message: NodeMessage) -> Result:
        calls[message.node_id] += 1
        if calls[message.node_id] == 1:
            raise KeyError("not yet")
        return body(
            message.node_id, *([Route("overrides")] if message.node_id == "inherits" else [])
        )

    job = Job(
        "j",
        [
            Node("inherits", serving=failing_once),
            Node("overrides", serving=failing_once, retry_on=()),  # retries nothing extra
        ],
        start="inherits",
        retry_on=(LookupError,),  # KeyError is a LookupError
    )
    run = rt.run_job(job, "x")
    with pytest.raises(ServingFailed, match="node 'overrides'"):
        run.result(WAIT)
    assert calls == {"inherits": 2, "overrides": 1}
    assert [e.node_id for e in of(list(run.events(WAIT)), EventKind.NODE_RETRY)] == ["inherits"]


@pytest.mark.parametrize(
    "error",
    [
        SessionError("the session died", reason="exit 137"),
        TransportError("the pipe broke"),
        ConnectTimeout("no handshake"),
        QueryTimeout("no answer in 120 s"),
        QueryFailed("HTTP 529 overloaded", "error"),
        RetryRequested("not good enough"),
    ],
)
def test_transient_backend_errors_are_retried_without_retry_on(
    rt: Runtime, error: Exception
) -> None:
    raised: list[Exception] = []

    def flaky(message: NodeMessage) -> str:
        if not raised:
            raised.append(error)
            raise error
        return "second try"

    run = rt.run_job(Job("j", [Node("n", serving=flaky)], start="n"), "x")
    assert run.result(WAIT).output.body == "second try"  # type: ignore[union-attr]
    assert len(of(list(run.events(WAIT)), EventKind.NODE_RETRY)) == 1


def test_a_retried_error_that_never_stops_spends_the_budget(rt: Runtime) -> None:
    def broken(message: NodeMessage) -> str:
        raise QueryTimeout(f"no answer (attempt {message.retries})")

    job = Job("j", [Node("n", serving=broken)], start="n", max_retries=1)
    with pytest.raises(MaxRetriesExceeded, match="QueryTimeout: no answer") as info:
        rt.run_job(job, "x").result(WAIT)
    assert isinstance(info.value.__cause__, QueryTimeout)  # the last one, kept as the cause
    assert "attempt 1" in str(info.value.__cause__)


@pytest.mark.parametrize("durable", [False, True])
@pytest.mark.parametrize("nxt", ["bad", {"type": "end"}, 7])
def test_a_next_that_is_not_a_list_ends_the_run_with_invalid_next(
    rt: Runtime, durable: bool, nxt: Any
) -> None:
    calls = []

    def serving(message: NodeMessage) -> Result:
        calls.append(message.node_id)
        return Result("b", next=nxt)  # a str used to become characters, each dropped

    job = Job(
        "j", [Node("a", serving=lambda m: body("a", Route("b"))), Node("b", serving=serving)], "a"
    )
    run = rt.run_job(job, "x", durable=durable)
    with pytest.raises(InvalidNext, match="node 'b' gave a next that is not a list") as info:
        run.result(WAIT)
    assert info.value.node_id == "b"
    assert info.value.value == nxt
    assert calls == ["b"]  # not retried
    events = list(run.events(WAIT))
    assert kinds(events)[-1] == "run_error"
    assert of(events, EventKind.NODE_RETRY) == []
    assert events[-1].data["error"].startswith("InvalidNext: ")


def test_a_model_style_dict_answer_with_a_bad_next_ends_the_run(rt: Runtime) -> None:
    calls = []

    def serving(message: NodeMessage) -> dict[str, Any]:
        calls.append(1)
        return {"body": "b", "next": "route"}

    run = rt.run_job(Job("j", [Node("n", serving=serving)], start="n"), "x")
    with pytest.raises(InvalidNext, match=r"node 'n'.*'route'"):
        run.result(WAIT)
    assert calls == [1]


def test_a_router_that_returns_no_list_ends_the_run_with_invalid_next(rt: Runtime) -> None:
    class Forgetful(Router):
        def outputs(self, message: NodeMessage) -> list[Output]:
            return []

        def resolve(self, message: NodeMessage, outputs: list[Output]) -> list[Any]:
            return None  # type: ignore[return-value]  # forgot the return

    job = Job("j", [Node("n", serving=lambda m: "x", router=Forgetful())], start="n")
    with pytest.raises(InvalidNext, match="the router of node 'n' returned instructions"):
        rt.run_job(job, "x").result(WAIT)


@pytest.mark.parametrize("durable", [False, True])
def test_dropped_next_entries_are_a_next_dropped_event_and_a_warning(
    rt: Runtime, durable: bool, caplog: pytest.LogCaptureFixture
) -> None:
    from beamagent.log import event_dict

    caplog.set_level(logging.DEBUG, logger="beamagent")
    job = Job(
        "j",
        [
            Node(
                "a",
                serving=lambda m: body(
                    "a", {"type": "rout", "value": "b"}, Route("b"), 42, {"type": "route"}
                ),
            ),
            Node("b", serving=lambda m: body("b", {"type": "ende"})),
        ],
        start="a",
    )
    run = rt.run_job(job, "x", durable=durable)
    result = run.result(WAIT)
    # The typo'd "ende" is dropped: b's thread finishes and the run completes, but not silently.
    assert result.status is RunStatus.COMPLETED
    events = list(run.events(WAIT))
    assert kinds(events) == [
        "run_started",
        "node_started",
        "node_result",
        "next_dropped",
        "node_started",
        "node_result",
        "next_dropped",
        "run_complete",
    ]
    first, second = of(events, EventKind.NEXT_DROPPED)
    assert (first.node_id, first.thread_id, first.step) == ("a", "0", 1)
    assert first.data["dropped"] == [
        {
            "index": 0,
            "entry": "{'type': 'rout', 'value': 'b'}",
            "reason": "unknown type 'rout'",
            "source": "next",
        },
        {"index": 2, "entry": "42", "reason": "entry is not an object: int", "source": "next"},
        {
            "index": 3,
            "entry": "{'type': 'route'}",
            "reason": "route needs a non-empty string value",
            "source": "next",
        },
    ]
    assert [d["reason"] for d in second.data["dropped"]] == ["unknown type 'ende'"]
    warnings = [
        (r.levelname, event_dict(r).get("node_id"))
        for r in caplog.records
        if event_dict(r)["event"] == "next_dropped" and event_dict(r).get("run_id") == run.run_id
    ]
    assert warnings == [("WARNING", "a"), ("WARNING", "b")]


def test_junk_from_a_router_is_reported_as_dropped(rt: Runtime) -> None:
    class Sloppy(Router):
        def outputs(self, message: NodeMessage) -> list[Output]:
            return []

        def resolve(self, message: NodeMessage, outputs: list[Output]) -> list[Any]:
            return ["b", End()]  # a node id where a Route belongs

    job = Job("j", [Node("n", serving=lambda m: "x", router=Sloppy())], start="n")
    run = rt.run_job(job, "x")
    assert run.result(WAIT).status is RunStatus.ENDED
    (dropped,) = of(list(run.events(WAIT)), EventKind.NEXT_DROPPED)
    assert dropped.data["dropped"] == [
        {"index": 0, "entry": "'b'", "reason": "entry is not an object: str", "source": "router"}
    ]


class _Crash(BaseException):
    """Not an Exception: it takes the node actor down instead of failing the visit."""


def test_a_crashed_node_actor_is_restarted_and_its_visit_retried(rt: Runtime) -> None:
    attempts = []

    def crashing(message: NodeMessage) -> str:
        attempts.append(message.retry_reason)
        if len(attempts) == 1:
            raise _Crash()
        return "second life"

    job = Job("j", [Node("n", serving=crashing)], start="n")
    run = rt.run_job(job, "x")
    result = run.result(WAIT)
    assert result.output is not None
    assert result.output.body == "second life"
    assert attempts[1] is not None
    assert "node actor crashed" in attempts[1]
    (retry,) = of(list(run.events(WAIT)), EventKind.NODE_RETRY, "n")
    assert retry.data["retries"] == 1
    # The node actors' supervisor restarted the crashed one.
    from supervisors import whereis

    pool = whereis(("beamagent", rt.id, "node-actors"))
    assert pool is not None
    assert sum(c.restarts for c in pool.which_children(timeout=WAIT)) >= 1  # type: ignore[attr-defined]


def test_max_steps_stops_an_endless_cycle(rt: Runtime) -> None:
    job = Job(
        "loop", [Node("n", serving=lambda m: body("again", Route("n")))], start="n", max_steps=5
    )
    run = rt.run_job(job, "x")
    with pytest.raises(MaxStepsExceeded, match="max_steps=5"):
        run.result(WAIT)
    result = run.result(WAIT, raise_error=False)
    assert result.steps == 5
    assert len(of(list(run.events(WAIT)), EventKind.NODE_STARTED)) == 5


# --- sub-jobs ------------------------------------------------------------------------------------


def sub_job(fail: bool = False) -> Job:
    def work(message: NodeMessage) -> str:
        if fail:
            raise RuntimeError("sub broke")
        return f"sub did {message.input}"

    return Job("summarize", [Node("work", serving=work)], start="work", max_retries=0)


def test_a_sub_instruction_runs_the_sub_job_and_its_end_finishes_the_thread(rt: Runtime) -> None:
    job = Job("main", [Node("start", serving=lambda m: body("s", Sub("summarize")))], start="start")
    run = rt.run_job(job, "the report", subs={"summarize": sub_job()})
    result = run.result(WAIT)
    assert result.status is RunStatus.COMPLETED
    assert result.output is not None
    assert result.output.body == "sub did the report"
    events = list(run.events(WAIT))
    (started,) = of(events, EventKind.SUB_STARTED)
    (done,) = of(events, EventKind.SUB_DONE)
    assert started.data["job_id"] == "summarize"
    assert done.data["status"] == "completed"


def test_a_sub_node_runs_a_sub_job_and_routes_its_output(rt: Runtime) -> None:
    job = Job(
        "main",
        [
            Node("summary", sub="summarize", router=LinearRouter(["summary", "publish"])),
            Node(
                "publish",
                serving=lambda m: f"published: {m.previous_result.body}",
                router=LinearRouter(["summary", "publish"]),
            ),
        ],
        start="summary",
    )
    run = rt.run_job(job, "the report", subs={"summarize": sub_job()})
    result = run.result(WAIT)
    assert result.output is not None
    assert result.output.body == "published: sub did the report"
    nodes = [r.node_id for r in result.results_by_thread["0"]]
    assert nodes == ["summary", "publish"]


def test_a_failing_sub_job_fails_the_parent(rt: Runtime) -> None:
    job = Job("main", [Node("start", serving=lambda m: body("s", Sub("summarize")))], start="start")
    run = rt.run_job(job, "x", subs={"summarize": sub_job(fail=True)})
    with pytest.raises(ServingFailed, match=r"node 'work'.*sub broke") as info:
        run.result(WAIT)
    assert info.value.run_id == f"{run.run_id}.2"  # the sub-run's error, as it was
    done = of(list(run.events(WAIT)), EventKind.SUB_DONE)
    assert [e.data["status"] for e in done] == ["error"]


def test_an_unknown_sub_job_is_job_not_loaded(rt: Runtime) -> None:
    job = Job("main", [Node("start", serving=lambda m: body("s", Sub("nope")))], start="start")
    with pytest.raises(JobNotLoaded, match="nope"):
        rt.run_job(job, "x").result(WAIT)


def test_an_ended_sub_job_ends_the_parent(rt: Runtime) -> None:
    gate = threading.Event()

    def other(message: NodeMessage) -> str:
        while not gate.is_set():
            gate.wait(0.01)
        return "never"

    ender = Job("ender", [Node("e", serving=lambda m: body("the end", End()))], start="e")
    job = Job(
        "main",
        [
            Node("start", serving=lambda m: body("s", Sub("ender"), Route("other"))),
            Node("other", serving=other),
        ],
        start="start",
    )
    result = rt.run_job(job, "x", subs={"ender": ender}).result(WAIT)
    gate.set()
    assert result.status is RunStatus.ENDED
    assert result.output is not None
    assert result.output.body == "the end"


# --- tools --------------------------------------------------------------------------------------


def test_tool_calls_run_and_the_node_runs_again_with_their_results(rt: Runtime) -> None:
    tools = ToolRegistry()

    @tools.register
    def lookup(customer: str) -> dict[str, str]:
        """Look a customer up."""
        return {"customer": customer, "plan": "gold"}

    def agent(message: NodeMessage) -> Result:
        if not message.tool_results:
            return Result("looking", tool_calls=[ToolCall("c1", "lookup", {"customer": "ada"})])
        (result,) = message.tool_results
        return Result(f"ada is on {result.content}")

    job = Job("j", [Node("agent", serving=agent)], start="agent")
    run = rt.run_job(job, "x", tools=tools)
    result = run.result(WAIT)
    assert result.output is not None
    assert '"plan": "gold"' in result.output.body
    (call,) = of(list(run.events(WAIT)), EventKind.TOOL_CALL)
    assert (call.node_id, call.data["tool"], call.data["is_error"]) == ("agent", "lookup", False)


def test_endless_tool_calls_are_retried_then_fail(rt: Runtime) -> None:
    def loop(message: NodeMessage) -> Result:
        return Result("again", tool_calls=[ToolCall("c", "missing", {})])

    job = Job("j", [Node("agent", serving=loop)], start="agent", max_retries=0)
    run = rt.run_job(job, "x", max_tool_rounds=2)
    with pytest.raises(MaxRetriesExceeded, match="rounds of tool calls"):
        run.result(WAIT)
    calls = of(list(run.events(WAIT)), EventKind.TOOL_CALL)
    assert len(calls) == 2
    assert all(c.data["is_error"] for c in calls)


# --- the handle ----------------------------------------------------------------------------------


def test_stop_cancels_the_run(rt: Runtime) -> None:
    started = threading.Event()
    gate = threading.Event()

    def slow(message: NodeMessage) -> str:
        started.set()
        while not gate.is_set():
            gate.wait(0.01)
        return "x"

    job = Job("j", [Node("n", serving=slow)], start="n")
    run = rt.run_job(job, "x")
    assert started.wait(WAIT)
    result = run.stop(WAIT)
    assert result.status is RunStatus.STOPPED
    assert run.status() is RunStatus.STOPPED
    assert kinds(list(run.events(WAIT)))[-1] == "run_ended"
    assert run.stop(WAIT).status is RunStatus.STOPPED  # stopping again changes nothing
    gate.set()


def test_events_follow_a_run_live(rt: Runtime) -> None:
    gate = threading.Event()
    job = linear(("a", lambda m: "a"), ("b", lambda m: gate.wait(WAIT) and "b"))
    run = rt.run_job(job, "x")
    seen = []
    for event in run.events(WAIT):
        seen.append(event.kind)
        if event.kind is EventKind.NODE_STARTED and event.node_id == "b":
            assert not run.done()
            gate.set()
    assert seen[-1] is EventKind.RUN_ENDED
    assert sum(1 for k in seen if k in TERMINAL_EVENTS) == 1


def test_aevents_and_aresult_work_on_an_event_loop(rt: Runtime) -> None:
    job = linear(("a", lambda m: "a"), ("b", lambda m: "b"))

    async def main() -> tuple[list[str], RunStatus]:
        run = rt.run_job(job, "x")
        seen = [event.kind.value async for event in run.aevents()]
        result = await run.aresult(WAIT)
        return seen, result.status

    seen, status = asyncio.run(main())
    assert seen[0] == "run_started"
    assert seen[-1] == "run_ended"
    assert status is RunStatus.ENDED


def test_result_times_out_while_the_run_goes_on(rt: Runtime) -> None:
    gate = threading.Event()
    job = Job("j", [Node("n", serving=lambda m: gate.wait(WAIT) and "x")], start="n")
    run = rt.run_job(job, "x")
    with pytest.raises(TimeoutError):
        run.result(0.05)
    gate.set()
    assert run.result(WAIT).status is RunStatus.COMPLETED


def test_runtime_stop_interrupts_a_run_with_one_terminal_event() -> None:
    started = threading.Event()
    gate = threading.Event()

    def slow(message: NodeMessage) -> str:
        started.set()
        while not gate.is_set():
            gate.wait(0.01)
        return "x"

    with Runtime(store=":memory:") as runtime:
        job = Job("j", [Node("n", serving=slow)], start="n")
        run = runtime.run_job(job, "x")
        assert started.wait(WAIT)
    gate.set()
    result = run.result(WAIT)
    assert result.status is RunStatus.INTERRUPTED
    events = list(run.events(WAIT))
    assert [e.kind for e in events if e.terminal] == [EventKind.RUN_ENDED]


def test_many_runs_at_once_all_finish(rt: Runtime) -> None:
    job = linear(("a", lambda m: "a"), ("b", lambda m: m.previous_result.body + "b"))
    runs = [rt.run_job(job, str(i)) for i in range(40)]
    assert all(r.result(WAIT).output.body == "ab" for r in runs)  # type: ignore[union-attr]
    assert rt.live_runs() == []


class _EventLog(logging.Handler):
    """Collects beamagent's events; ``wait_for`` blocks until one has been logged."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[dict[str, Any]] = []
        self._logged = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        from beamagent.log import event_dict

        with self._logged:
            self.events.append(event_dict(record))
            self._logged.notify_all()

    def wait_for(self, event: str, timeout: float) -> None:
        with self._logged:
            if not self._logged.wait_for(
                lambda: any(e["event"] == event for e in self.events), timeout
            ):
                raise AssertionError(f"{event} was not logged within {timeout} s")


def test_events_are_logged_with_run_node_thread_and_step(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    job = linear(("a", lambda m: "a"), ("b", lambda m: "b"))
    caplog.set_level(logging.DEBUG, logger="beamagent")
    events = _EventLog()
    logging.getLogger("beamagent").addHandler(events)
    try:
        run = rt.run_job(job, "x")
        run.result(WAIT)
        events.wait_for("run_ended", WAIT)  # logged just after the result is published
    finally:
        logging.getLogger("beamagent").removeHandler(events)
    mine = [e for e in events.events if e.get("run_id") == run.run_id]
    started = [e for e in mine if e["event"] == "node_started"]
    assert [(e["node_id"], e["thread_id"], e["step"]) for e in started] == [
        ("a", "0", 1),
        ("b", "0", 2),
    ]
    assert all(e["job_id"] == "linear" for e in mine)
    assert [e["event"] for e in mine if e["event"].startswith("run_")] == [
        "run_started",
        "run_ended",
    ]


@pytest.mark.parametrize("name", ["run", "session_serving"])
def test_docstring_examples_of_the_runtime_modules(name: str) -> None:
    import doctest
    import importlib

    module = importlib.import_module(f"beamagent.graph.{name}")
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert attempted > 0
    assert failed == 0
