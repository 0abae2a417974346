"""plan() ordering and the join barrier."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from beamagent.graph import (
    DEFAULT_RETRY_REASON,
    End,
    Instruction,
    Join,
    JoinBarrier,
    Plan,
    PlanKind,
    Result,
    Retry,
    Route,
    Sub,
    Yield,
    plan,
)

node_ids = st.sampled_from(["a", "b", "c"])
instructions = st.one_of(
    st.builds(Route, node_ids, st.integers(1, 4)),
    st.builds(Yield, node_ids),
    st.builds(Sub, st.sampled_from(["s1", "s2"])),
    st.just(End()),
    st.builds(Retry, st.none() | st.sampled_from(["r1", "r2"])),
)
junk: st.SearchStrategy[Any] = st.none() | st.integers() | st.text() | st.builds(dict)


# --- plan() ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([], Plan()),
        ([End()], Plan(end=True)),
        ([Route("a"), Yield("j"), End()], Plan(end=True)),
        ([Retry("first"), End()], Plan(end=True)),  # End anywhere wins
        ([Route("a"), Retry(), Yield("j")], Plan(retry_reason=DEFAULT_RETRY_REASON)),
        ([Retry("why"), Route("a")], Plan(retry_reason="why")),
        ([Retry("one"), Retry("two")], Plan(retry_reason="one")),
        ([Retry(), Retry("reasoned")], Plan(retry_reason="reasoned")),  # a reason beats bare
        ([Retry(), Retry()], Plan(retry_reason=DEFAULT_RETRY_REASON)),
        ([Route("a")], Plan(fanout=(Route("a"),))),
        ([Route("a", 3)], Plan(fanout=(Route("a"), Route("a"), Route("a")))),
        (
            [Sub("s"), Yield("j"), Route("b", 2), Yield("k"), Route("a"), Sub("t")],
            Plan(
                fanout=(
                    Route("b"),
                    Route("b"),
                    Route("a"),
                    Yield("j"),
                    Yield("k"),
                    Sub("s"),
                    Sub("t"),
                )
            ),
        ),
        ([None, "junk", {"type": "end"}, Route("a")], Plan(fanout=(Route("a"),))),
        (["junk"], Plan()),
    ],
)
def test_plan_ordering(items: list[Any], expected: Plan) -> None:
    assert plan(items) == expected


def test_plan_kinds() -> None:
    assert plan([]).kind is PlanKind.FINISH
    assert plan([]).finished
    assert plan([End()]).kind is PlanKind.END
    assert plan([Retry()]).kind is PlanKind.RETRY
    assert plan([Yield("j")]).kind is PlanKind.FANOUT
    assert not plan([Yield("j")]).finished


def test_plan_is_one_thing() -> None:
    with pytest.raises(ValueError, match="one of end, retry or fan-out"):
        Plan(end=True, fanout=(Route("a"),))
    with pytest.raises(ValueError, match="one of end, retry or fan-out"):
        Plan(retry_reason="x", end=True)


def test_plan_accepts_any_iterable() -> None:
    assert plan(iter([Route("a", 2)])) == Plan(fanout=(Route("a"), Route("a")))


@given(st.lists(instructions | junk))
def test_plan_is_total_and_end_always_wins(items: list[Any]) -> None:
    decided = plan(items)
    if any(isinstance(i, End) for i in items):
        assert decided == Plan(end=True)
        return
    retries = [i for i in items if isinstance(i, Retry)]
    if retries:
        reasoned = [r.reason for r in retries if r.reason is not None]
        assert decided == Plan(retry_reason=reasoned[0] if reasoned else DEFAULT_RETRY_REASON)
        return
    routes = [Route(i.node_id) for i in items if isinstance(i, Route) for _ in range(i.count)]
    yields = [i for i in items if isinstance(i, Yield)]
    subs = [i for i in items if isinstance(i, Sub)]
    assert decided.fanout == (*routes, *yields, *subs)
    assert decided.finished == (not decided.fanout)
    assert all(r.count == 1 for r in decided.fanout if isinstance(r, Route))


@given(st.lists(instructions))
def test_plan_fanout_size_is_the_sum_of_counts(items: list[Instruction]) -> None:
    decided = plan(items)
    if decided.kind is PlanKind.FANOUT:
        expected = sum(i.count if isinstance(i, Route) else 1 for i in items)
        assert len(decided.fanout) == expected


# --- JoinBarrier ----------------------------------------------------------------------------


def test_barrier_releases_when_the_last_thread_arrives() -> None:
    barrier = JoinBarrier().spawn("t1").spawn("t2").spawn("t3")
    barrier, joins = barrier.arrive("t2", "merge", Result("two"))
    assert joins == ()
    assert (barrier.total, barrier.ready, barrier.waiting) == (3, 1, ("t2",))
    barrier, joins = barrier.arrive("t1", "merge", Result("one"))
    assert joins == ()
    barrier, joins = barrier.arrive("t3", "merge", Result("three"))
    assert joins == (
        Join("merge", ("t2", "t1", "t3"), (Result("two"), Result("one"), Result("three"))),
    )
    assert barrier.idle
    assert barrier == JoinBarrier()


def test_a_finishing_thread_counts_as_arrived() -> None:
    # Agens' bug: the last live thread finishing stranded the waiting ones.
    barrier = JoinBarrier().spawn("t1").spawn("t2")
    barrier, joins = barrier.arrive("t1", "merge", Result("one"))
    assert joins == ()
    barrier, joins = barrier.finish("t2")
    assert joins == (Join("merge", ("t1",), (Result("one"),)),)
    assert barrier.idle


def test_finishing_without_waiters_releases_nothing() -> None:
    barrier, joins = JoinBarrier().spawn("t1").finish("t1")
    assert joins == ()
    assert barrier.idle


def test_different_targets_release_together_one_join_each() -> None:
    barrier = JoinBarrier().spawn("t1").spawn("t2").spawn("t3").spawn("t4")
    barrier, _ = barrier.arrive("t1", "left", Result("1"))
    barrier, _ = barrier.arrive("t2", "right", Result("2"))
    barrier, joins = barrier.arrive("t3", "left", Result("3"))
    assert joins == ()
    assert barrier.targets == ("left", "right")
    barrier, joins = barrier.finish("t4")
    assert joins == (
        Join("left", ("t1", "t3"), (Result("1"), Result("3"))),
        Join("right", ("t2",), (Result("2"),)),
    )


def test_a_single_thread_yielding_joins_alone() -> None:
    barrier, joins = JoinBarrier().spawn("t").arrive("t", "j", Result("x"))
    assert joins == (Join("j", ("t",), (Result("x"),)),)
    assert barrier.idle


def test_barrier_is_immutable() -> None:
    empty = JoinBarrier()
    one = empty.spawn("t1")
    assert empty.live == frozenset()
    assert one.live == {"t1"}
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        one.live = frozenset()  # type: ignore[misc]


def test_barrier_rejects_impossible_moves() -> None:
    barrier = JoinBarrier().spawn("t1").spawn("t2")
    with pytest.raises(ValueError, match="already live"):
        barrier.spawn("t1")
    waiting, _ = barrier.arrive("t1", "j", Result(""))
    with pytest.raises(ValueError, match="already live or waiting"):
        waiting.spawn("t1")
    with pytest.raises(ValueError, match="'t1' is not live"):
        waiting.arrive("t1", "j", Result(""))
    with pytest.raises(ValueError, match="'t1' is not live"):
        waiting.finish("t1")
    with pytest.raises(ValueError, match="'zz' is not live"):
        barrier.finish("zz")
    # A finished thread's id may be used again.
    done, _ = barrier.finish("t2")
    assert done.spawn("t2").live == {"t1", "t2"}


ops = st.lists(
    st.tuples(
        st.sampled_from(["spawn", "arrive", "finish"]),
        st.integers(0, 50),
        st.sampled_from(["j1", "j2", "j3"]),
    ),
    max_size=60,
)


def _arrivals(join: Join) -> list[tuple[str, str, Result]]:
    return [(t, join.target, r) for t, r in zip(join.thread_ids, join.results, strict=True)]


@given(ops)
def test_barrier_never_strands_a_thread(steps: list[tuple[str, int, str]]) -> None:
    barrier = JoinBarrier().spawn("t0")
    next_id = 1
    arrived: list[tuple[str, str, Result]] = []  # every arrival, in order
    released: list[tuple[str, str, Result]] = []  # every arrival handed out by a join
    for op, pick, target in steps:
        live = sorted(barrier.live)
        if op == "spawn" or not live:
            barrier = barrier.spawn(f"t{next_id}")
            next_id += 1
            continue
        thread = live[pick % len(live)]
        if op == "arrive":
            result = Result(f"{thread}@{len(arrived)}")
            arrived.append((thread, target, result))
            barrier, joins = barrier.arrive(thread, target, result)
        else:
            barrier, joins = barrier.finish(thread)
        if joins:
            # A join is only released when no thread is live, and then nobody waits.
            assert not barrier.live
            assert barrier.idle
            assert len({j.target for j in joins}) == len(joins)
        for join in joins:
            assert len(join.thread_ids) == len(join.results) > 0
            released.extend(_arrivals(join))
        # The invariant: while threads wait, some thread is still live to release them.
        assert barrier.live or not barrier.waiting
        assert barrier.total == len(barrier.live) + barrier.ready
    # Finishing every live thread releases everyone still waiting.
    for thread in sorted(barrier.live):
        barrier, joins = barrier.finish(thread)
        for join in joins:
            released.extend(_arrivals(join))
    assert barrier.idle
    # Every arrival is released exactly once, to its own target, in arrival order per target.
    assert sorted(released, key=lambda a: a[2].body) == sorted(arrived, key=lambda a: a[2].body)
    for target in ("j1", "j2", "j3"):
        assert [a for a in released if a[1] == target] == [a for a in arrived if a[1] == target]
