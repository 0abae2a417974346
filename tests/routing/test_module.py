"""``beamagent.routing`` as a module: the seed's functions over the default runtime."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import beamagent.runtime
from beamagent import MessageType, Runtime, routing
from beamagent.backends.local import LocalHandler
from beamagent.backends.names import KNOWN_BACKENDS
from beamagent.errors import (
    InvalidOption,
    NoActiveQuery,
    QueryComplete,
    SessionNotFound,
    UnknownBackend,
    UnknownControlMethod,
)
from beamagent.routing.policies import RouteDecision
from beamagent.session.handle import Session
from supervisors import Supervisor

# The seed's functions (BeamAgent.Routing), by their Python names.
SEED_FUNCTIONS = (
    "abort",
    "account_info",
    "adapter_module",
    "backend",
    "child_spec",
    "clear",
    "delete_session",
    "ensure_tables",
    "fork_session",
    "get_session",
    "get_session_messages",
    "health",
    "interrupt",
    "list_sessions",
    "query",
    "receive_message",
    "revert_session",
    "select_backend",
    "send_control",
    "send_query",
    "server_health",
    "session_info",
    "set_model",
    "set_permission_mode",
    "share_session",
    "start_session",
    "stop",
    "summarize_session",
    "supported_agents",
    "supported_commands",
    "supported_models",
    "thread_archive",
    "thread_fork",
    "thread_list",
    "thread_read",
    "thread_resume",
    "thread_rollback",
    "thread_start",
    "thread_unarchive",
    "unrevert_session",
    "unshare_session",
)


@pytest.fixture
def rt() -> Iterator[Runtime]:
    """The default runtime, with only ``local`` routable; stopped after the test."""
    runtime = beamagent.runtime.default_runtime()
    try:
        for name in runtime.backends():
            if name != "local":
                runtime.set_health(name, "down")
        yield runtime
    finally:
        beamagent.runtime.shutdown_default_runtime()


@pytest.fixture
def many() -> Iterator[Runtime]:
    """A default runtime with three local instances (installed as the default one)."""
    names = ("local_a", "local_b", "local_c")
    runtime = Runtime(store=":memory:", backends=dict.fromkeys(names, LocalHandler))
    beamagent.runtime.shutdown_default_runtime()
    beamagent.runtime._default = runtime
    try:
        for name in runtime.backends():
            if name not in names:
                runtime.set_health(name, "down")
        yield runtime
    finally:
        beamagent.runtime.shutdown_default_runtime()


def test_every_seed_function_exists_with_a_docstring() -> None:
    extras = ["set_health", "backend_health", "decisions", "available_backends"]
    for name in [*SEED_FUNCTIONS, *extras]:
        function = getattr(routing, name)
        assert callable(function), name
        assert inspect.getdoc(function), name
        assert name in routing.__all__


def test_no_default_runtime_is_left_running() -> None:
    assert beamagent.runtime._default is None


def test_session_lifecycle_through_the_module(rt: Runtime) -> None:
    session = routing.start_session({"model": "local-large"}, session_id="mod-1")
    assert isinstance(session, Session)
    assert session.runtime is rt
    for ref in (session, "mod-1"):
        assert routing.health(ref) == "ready"
        assert routing.backend(ref) == "local"
        assert routing.adapter_module(ref) == "beamagent.backends.local"
        info = routing.session_info(ref)
        assert info["session_id"] == "mod-1"
        assert info["model"] == "local-large"
        assert info["route_decision"]["backend"] == "local"
        assert routing.server_health(ref)["healthy"] is True
        assert routing.account_info(ref)["provider"] == "local"
        assert routing.supported_agents(ref) == ["general"]
        assert routing.supported_commands(ref)
        assert routing.supported_models(ref)[0]["value"] == "local-echo"
    assert routing.set_model("mod-1", "local-echo") == "local-echo"
    assert routing.set_permission_mode(session, "plan") == "plan"
    assert routing.send_control(session, "echo", {"x": 1}) == {"echo": {"x": 1}}
    with pytest.raises(UnknownControlMethod):
        routing.send_control("mod-1", "frobnicate")
    routing.stop("mod-1")
    assert routing.health("mod-1") == "unknown"
    with pytest.raises(SessionNotFound):
        routing.session_info("mod-1")
    with pytest.raises(SessionNotFound):
        routing.stop(session)
    with pytest.raises(InvalidOption):
        routing.session_info(42)  # type: ignore[arg-type]


def test_query_with_two_and_three_arguments(rt: Runtime) -> None:
    session = routing.start_session(backend="local", replies=["one", "two"])
    messages = routing.query(session, "a")
    assert messages[-1].type is MessageType.RESULT
    assert messages[-1].content == "one"
    assert routing.query(session.session_id, "b", {"timeout": 5})[-1].content == "two"
    seen: dict[str, Any] = {}

    def reply(prompt: str, params: Any) -> str:
        seen.update(params)
        return prompt

    other = routing.start_session(reply=reply)
    assert routing.query(other, "c", {"temperature": 0.5}, timeout=5)[-1].content == "c"
    assert seen == {"temperature": 0.5}


def test_send_query_receive_message_interrupt_abort(rt: Runtime) -> None:
    gate = threading.Event()

    def slow(prompt: str, params: Any) -> Iterator[str]:
        yield "first"
        gate.wait(10)
        yield "second"

    session = routing.start_session(reply=slow)
    ref = routing.send_query(session, "go")
    types = []
    while True:
        message = routing.receive_message(session, ref, 5)
        types.append(message.type)
        if message.type is MessageType.ASSISTANT:
            break
    routing.interrupt(session)
    gate.set()
    with pytest.raises(NoActiveQuery):
        routing.abort(session.session_id)
    with pytest.raises(NoActiveQuery):
        routing.interrupt(session)
    done = routing.send_query(session, "again")
    while routing.receive_message(session, done, 5).type is not MessageType.RESULT:
        pass
    with pytest.raises(QueryComplete):
        routing.receive_message(session, done, 5)


def test_routing_functions(many: Runtime) -> None:
    decision = routing.select_backend({"policy": "round_robin"})
    assert isinstance(decision, RouteDecision)
    assert decision.backend == "local_a"
    session = routing.start_session(routing={"policy": "round_robin"})
    assert routing.backend(session) == "local_b"
    assert routing.select_backend(session, {"policy": "failover"}).backend == "local_a"
    assert routing.select_backend(session).affinity_key == session.session_id
    routing.set_health("local_a", "down")
    assert routing.backend_health()["local_a"] == "down"
    assert routing.select_backend().backend == "local_b"
    with pytest.raises(UnknownBackend):
        routing.set_health("local_z", "down")
    routing.set_health("local_a", None)
    newest = routing.decisions(limit=1)
    assert len(newest) == 1
    assert newest[0]["backend"] == "local_b"
    assert len(routing.decisions()) == 5
    sticky = routing.select_backend({"policy": "sticky", "affinity_key": "u"}).backend
    routing.clear()
    assert many._registry_call("bindings") == {}
    assert routing.select_backend({"policy": "round_robin"}).backend == "local_a"
    routing.ensure_tables()
    routing.ensure_tables()
    assert sticky in ("local_a", "local_b", "local_c")


def test_available_backends_says_why_not(many: Runtime) -> None:
    available = routing.available_backends()
    assert list(available) == [*KNOWN_BACKENDS, "local_a", "local_b", "local_c"]
    assert available["local_a"] == (True, "available")
    registered = many.backend_availability()
    for name in KNOWN_BACKENDS:  # which of them a runtime registers by default may change
        assert available[name] == registered.get(name, (False, "not registered with the runtime"))


def test_ensure_tables_starts_the_default_runtime() -> None:
    try:
        assert beamagent.runtime._default is None
        routing.ensure_tables()
        runtime = beamagent.runtime._default
        assert runtime is not None
        assert not runtime.stopped
        routing.ensure_tables()
        assert beamagent.runtime._default is runtime
    finally:
        beamagent.runtime.shutdown_default_runtime()


def test_child_spec_through_the_module(many: Runtime) -> None:
    spec = routing.child_spec({"routing": {"policy": "round_robin"}}, model="local-large")
    sup = Supervisor.start(children=[spec])
    try:
        assert routing.query(str(spec.id), "hi")[-1].content == "hi"
        assert routing.session_info(str(spec.id))["model"] == "local-large"
        routing.stop(str(spec.id))
        assert sup.which_children()[0].ref is None
    finally:
        sup.stop()


def test_store_and_thread_functions_delegate(rt: Runtime) -> None:
    session = routing.start_session(session_id="stored-1")
    routing.query(session, "hello")
    assert [s.session_id for s in routing.list_sessions(backend="local")] == ["stored-1"]
    assert routing.get_session("stored-1").backend == "local"
    types = [m.type for m in routing.get_session_messages(session)]
    assert types[0] is MessageType.USER
    assert types[-1] is MessageType.RESULT
    assert routing.get_session_messages("stored-1", limit=1, offset=1)[0].type is types[1]
    thread = routing.thread_start(session, name="side")
    assert [t.thread_id for t in routing.thread_list("stored-1")] == [thread.thread_id]
    detail = routing.thread_read(session, thread.thread_id, include_messages=True)
    assert detail.thread.thread_id == thread.thread_id
    assert detail.messages == ()
    assert routing.thread_archive(session, thread.thread_id).archived is True
    assert routing.thread_unarchive(session, thread.thread_id).archived is False
    forked = routing.thread_fork(session, thread.thread_id, name="fork")
    assert routing.thread_resume("stored-1", thread.thread_id).thread_id == thread.thread_id
    rolled = routing.thread_rollback(session, forked.thread_id, {"count": 0})
    assert rolled.thread_id == forked.thread_id
    total = routing.get_session("stored-1").message_count
    reverted = routing.revert_session(session, {"visible_message_count": 1})
    assert reverted.visible_message_count == 1
    assert len(routing.get_session_messages(session)) == 1
    assert len(routing.get_session_messages(session, include_hidden=True)) == total
    assert routing.unrevert_session("stored-1").visible_message_count == total
    assert routing.summarize_session(session, content="short").content == "short"
    fork = routing.fork_session(session, session_id="stored-2")
    assert fork.session_id == "stored-2"
    share = routing.share_session("stored-1")
    assert share
    routing.unshare_session("stored-1")
    routing.delete_session("stored-2")
    with pytest.raises(SessionNotFound):
        routing.get_session("stored-2")


def test_the_seeds_options_maps_are_accepted_everywhere(rt: Runtime) -> None:
    session = routing.start_session({"backend": "local"}, session_id="maps-1")
    routing.query(session, "one")
    routing.query(session, "two")
    assert [m.content for m in routing.get_session_messages("maps-1", {"limit": 1})] == ["one"]
    assert len(routing.get_session_messages("maps-1", {"types": ["user"], "offset": 1})) == 1
    # A keyword wins over the same key in the map.
    assert len(routing.get_session_messages("maps-1", {"limit": 1}, limit=2)) == 2
    assert [r.session_id for r in routing.list_sessions({"backend": "local", "limit": 5})] == [
        "maps-1"
    ]
    assert [r.session_id for r in routing.list_sessions({"adapter": "local"})] == ["maps-1"]
    thread = routing.thread_start(session, {"name": "t1", "metadata": {"k": 1}})
    assert thread.name == "t1"
    detail = routing.thread_read(session, thread.thread_id, {"include_messages": True})
    assert detail.thread.thread_id == thread.thread_id
    assert routing.thread_fork(session, thread.thread_id, {"name": "t2"}).name == "t2"
    assert routing.share_session(session, {"share_id": "share_" + "a" * 32}).share_id
    assert routing.summarize_session(session, {"content": "short"}).content == "short"
    fork = routing.fork_session(session, {"session_id": "maps-fork", "include_hidden": False})
    assert fork.session_id == "maps-fork"
    with pytest.raises(InvalidOption, match="unknown option"):
        routing.get_session_messages("maps-1", {"limt": 1})
    with pytest.raises(InvalidOption, match="mapping"):
        routing.list_sessions(["backend"])  # type: ignore[arg-type]
    routing.stop(session)
