"""Bad options and timeouts are typed errors found before anything starts or is stored."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import pytest

from beamagent import Runtime
from beamagent.backends.local import LocalHandler
from beamagent.errors import InvalidOption, QueryTimeout, SessionNotFound
from beamagent.session import SessionConfig
from beamagent.timeouts import check_timeout


@pytest.fixture
def rt() -> Iterator[Runtime]:
    with Runtime(store=":memory:") as runtime:
        yield runtime


@pytest.mark.parametrize(
    ("option", "value", "range_text"),
    [
        ("buffer_max", -1, "from 1"),
        ("buffer_max", "big", "from 1"),
        ("connect_timeout", -1, "> 0"),
        ("connect_timeout", math.nan, "> 0"),
        ("init_timeout", 0, "> 0"),
        ("error_linger", -0.5, ">= 0"),
        ("drain_timeout", True, "> 0"),
        ("query_defaults", ["x"], "mapping"),
    ],
)
def test_bad_session_options_fail_before_anything_is_started_or_stored(
    rt: Runtime, option: str, value: Any, range_text: str
) -> None:
    with pytest.raises(InvalidOption, match=option) as info:
        rt.start_session(backend="local", session_id="never", **{option: value})
    assert range_text in str(info.value)
    assert rt.live_sessions() == []
    with pytest.raises(SessionNotFound):
        rt.get_session("never")


@pytest.mark.parametrize(("option", "value"), [("connect_timeout", -1), ("query_defaults", ["x"])])
def test_a_session_config_checks_its_options_when_built_and_evolved(
    option: str, value: Any
) -> None:
    """Checked in ``__init__``, so in ``attrs.evolve`` too (a set is a plain attribute)."""
    config = SessionConfig(session_id="s", backend="local", handler_cls=LocalHandler, options={})
    with pytest.raises(InvalidOption, match=option):
        SessionConfig(
            session_id="s", backend="local", handler_cls=LocalHandler, options={}, **{option: value}
        )
    with pytest.raises(InvalidOption, match=option):
        attrs.evolve(config, **{option: value})


def test_bad_backend_options_fail_before_anything_is_stored(rt: Runtime) -> None:
    with pytest.raises(InvalidOption, match="reply"):
        rt.start_session(backend="local", session_id="never", reply="not callable")
    with pytest.raises(SessionNotFound):
        rt.get_session("never")


def test_a_prompt_that_is_not_unicode_text_is_refused_and_not_stored(rt: Runtime) -> None:
    session = rt.start_session(backend="local")
    with pytest.raises(InvalidOption, match="index 3"):
        session.query("caf\udce9")
    assert rt.get_session_messages(session.session_id) == []
    assert session.query("café")[-1].content == "café"


@pytest.mark.parametrize("bad", ["5", -1, 0, math.nan, True, [1]])
def test_bad_timeouts_are_invalid_options_everywhere(rt: Runtime, bad: Any) -> None:
    session = rt.start_session(backend="local")
    calls = [
        lambda: session.query("x", timeout=bad),
        lambda: session.send_query("x", timeout=bad),
        lambda: list(session.stream("x", timeout=bad)),
        lambda: session.send_control("setModel", {"model": "local-large"}, timeout=bad),
    ]
    for call in calls:
        with pytest.raises(InvalidOption, match="timeout"):
            call()
    assert session.health() == "ready"
    assert rt.get_session_messages(session.session_id) == []  # no prompt went out


def test_none_means_no_limit(rt: Runtime) -> None:
    def reply(prompt: str, params: Mapping[str, Any]) -> Any:
        return f"re: {prompt}"

    session = rt.start_session(backend="local", reply=reply)
    assert session.query("x", timeout=None)[-1].content == "re: x"
    ref = session.send_query("y", timeout=None)
    messages = []
    while not messages or messages[-1].type.value != "result":
        messages.append(session.receive_message(ref, timeout=None))
    assert messages[-1].content == "re: y"
    assert [m.content for m in session.stream("z", timeout=None)][-1] == "re: z"
    assert check_timeout(math.inf) is None


def test_a_short_timeout_still_times_out(rt: Runtime) -> None:
    import threading

    release = threading.Event()

    def reply(prompt: str, params: Mapping[str, Any]) -> Any:
        def slow() -> Iterator[str]:
            release.wait(10)
            yield "late"

        return slow()

    session = rt.start_session(backend="local", reply=reply)
    try:
        with pytest.raises(QueryTimeout):
            session.query("slow", timeout=0.05)
    finally:
        release.set()
    assert session.health() in ("ready", "active_query")


def test_run_timeouts_take_none_and_refuse_bad_values(rt: Runtime) -> None:
    from beamagent.graph import FunctionServing, Job, Node

    job = Job("one", [Node("n", serving=FunctionServing(lambda m: "ok"))], start="n")
    run = rt.run_job(job, "x", durable=False)
    assert run.result(None).output.body == "ok"
    assert [e.kind.value for e in run.events(None)][-1] == "run_complete"
    for bad in ("5", -1, 0, math.nan, True):
        with pytest.raises(InvalidOption, match="timeout"):
            run.result(bad)
        with pytest.raises(InvalidOption, match="timeout"):
            run.events(bad)
        with pytest.raises(InvalidOption, match="timeout"):
            run.stop(bad)
