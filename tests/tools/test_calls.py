"""CallIds: call ids a CLI announces, matched to the calls the tool server gets."""

from __future__ import annotations

import asyncio
import threading

from hypothesis import given
from hypothesis import strategies as st

from beamagent.tools._calls import CallIds


def claim(calls: CallIds, tool: str, arguments: object, wait: float = 0.0) -> str | None:
    return asyncio.run(calls.claim(tool, arguments, wait))


def test_an_announced_call_is_claimed_once() -> None:
    calls = CallIds()
    calls.enable()
    calls.announce("add", {"a": 1}, "call_1")
    calls.announce("add", {"a": 1}, "call_1")  # a second update of the same call

    assert claim(calls, "add", {"a": 1}) == "call_1"
    assert claim(calls, "add", {"a": 1}) is None


def test_same_arguments_win_over_order_then_the_oldest_of_the_tool() -> None:
    calls = CallIds()
    calls.enable()
    calls.announce("add", {"a": 1}, "first")
    calls.announce("add", {"a": 2}, "second")
    calls.announce("shout", {"text": "x"}, "other")

    assert claim(calls, "add", {"a": 2}) == "second"
    assert claim(calls, "add", {"a": 9}) == "first"  # changed arguments: the oldest
    assert claim(calls, "add", {"a": 1}) is None


def test_a_retracted_call_is_not_claimed() -> None:
    calls = CallIds()
    calls.enable()
    calls.announce("add", {}, "never_reached_the_server")
    calls.retract("never_reached_the_server")

    assert claim(calls, "add", {}) is None


def test_a_claim_waits_for_an_announcement_from_another_thread() -> None:
    calls = CallIds()
    calls.enable()

    async def main() -> str | None:
        waiting = asyncio.ensure_future(calls.claim("add", {"a": 1}, 30.0))
        await asyncio.sleep(0)  # the claim is registered
        threading.Thread(target=calls.announce, args=("add", {"a": 1}, "late")).start()
        return await waiting

    assert asyncio.run(main()) == "late"


def test_a_claim_gives_up_after_its_wait_and_without_an_announcing_handler() -> None:
    calls = CallIds()
    assert claim(calls, "add", {}, wait=30.0) is None  # not enabled: nobody will announce
    calls.enable()
    assert claim(calls, "add", {}, wait=0.01) is None
    calls.announce("add", {}, "after")  # too late for that call: kept for the next
    assert claim(calls, "add", {}) == "after"


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 3)), min_size=1, max_size=12))
def test_every_announced_call_is_claimed_exactly_once(calls_made: list[tuple[str, int]]) -> None:
    calls = CallIds()
    calls.enable()
    for index, (tool, value) in enumerate(calls_made):
        calls.announce(tool, {"v": value}, f"id{index}")

    claimed = [claim(calls, tool, {"v": value}) for tool, value in calls_made]

    assert sorted(claimed, key=str) == sorted((f"id{i}" for i in range(len(calls_made))), key=str)
