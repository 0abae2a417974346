"""The ``opencode`` backend against the real, pinned ``opencode serve`` and FakeModelServer.

Everything goes through the public Session API. The server takes seconds to
become healthy, so most tests share one server started for the module and
attach to it (``base_url``), each with its own OpenCode session and its own
fake model server (on the port the shared server's config names). The tests
that are about the server's process -- killed mid-turn, stopped and resumed
-- start their own. Where the machine allows it, every server runs in a
loopback-only network namespace, reached through ``beamagent.testing.netns_forward``.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from beamagent import Runtime, Session
from beamagent.backends.opencode import OpenCodeHandler
from beamagent.backends.permissions import Allow, Deny, PermissionContext
from beamagent.errors import (
    Interrupted,
    InvalidOption,
    SessionError,
    UnsupportedCapability,
)
from beamagent.messages import Message, MessageType
from beamagent.testing import (
    ErrorStatus,
    FakeModelServer,
    LoopbackNamespace,
    RecordedRequest,
    Stall,
    Text,
    ToolCall,
    ensure_installed,
    loopback_namespace_available,
    opencode_env,
)
from supervisors import Crashed
from tests._events import LogEvents, until_hibernating
from tests.backends.conftest import (
    group_members,
    of_type,
    receive_until,
    recorder,
    skip_without_clis,
    watch_incarnation,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # may install the CLI first
WAIT = 30.0


def forward_prefix(sandbox: LoopbackNamespace | None) -> list[str]:
    """argv prefix: the server runs in the sandbox, reachable on loopback from here."""
    return sandbox.server_prefix() if sandbox is not None else []


@pytest.fixture(scope="module")
def opencode_cli() -> Path:
    """The pinned ``opencode`` executable (installed if needed)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        skip_without_clis("node and npm are needed to install and run the agent CLIs")
    return ensure_installed(("opencode",))["opencode"]


@attrs.frozen
class SharedServer:
    """One ``opencode serve`` for the module: its URL, its project dir, its model's port."""

    url: str
    root: Path
    model_port: int
    sandbox: LoopbackNamespace | None


def _read_announcement(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The URL the server (or the forwarder) prints once it listens."""
    assert proc.stdout is not None
    fd, data = proc.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while b"listening on" not in data or not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise AssertionError(f"opencode serve did not announce itself: {data!r}")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(f"opencode serve exited: {data!r}")
        data += chunk
    line = next(ln for ln in data.decode().splitlines() if "listening on" in ln)
    return line.split("listening on", 1)[1].strip()


@pytest.fixture(scope="module")
def shared(opencode_cli: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedServer]:
    """A module-wide ``opencode serve``, its config pointing at a fixed fake-model port."""
    base = tmp_path_factory.mktemp("opencode-shared")
    root = base / "project"
    root.mkdir()
    with LoopbackNamespace() if loopback_namespace_available() else nullcontext() as sandbox:
        with socket.create_server(("127.0.0.1", 0)) as probe:
            port = probe.getsockname()[1]  # free here, and anything is free in the sandbox
        env = {**opencode_env(base / "home", f"http://127.0.0.1:{port}"), "PWD": str(root)}
        proc = subprocess.Popen(
            [*forward_prefix(sandbox), str(opencode_cli), "serve", "--port", "0"],
            env=env,
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            url = _read_announcement(proc, 60.0)
            # Keep its stdout drained (a module-wide thread, older than every test).
            drain = threading.Thread(target=_drain, args=(proc,), name="opencode-shared-stdout")
            drain.start()
            try:
                yield SharedServer(url, root, port, sandbox)
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
                drain.join(10)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()


def _drain(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    while proc.stdout.read(4096):
        pass


@pytest.fixture
def model(shared: SharedServer) -> Iterator[FakeModelServer]:
    """This test's fake model, on the port the shared server's config names."""
    netns = shared.sandbox.path if shared.sandbox is not None else None
    with FakeModelServer(reply="default reply", port=shared.model_port, netns=netns) as srv:
        yield srv


@pytest.fixture
def scratch(shared: SharedServer, request: pytest.FixtureRequest) -> Path:
    """A directory for this test's side effects, inside the shared server's project."""
    path = shared.root / request.node.name
    path.mkdir()
    return path


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    with Runtime(store=":memory:") as rt:
        yield rt


@pytest.fixture
def attach(
    runtime: Runtime, shared: SharedServer, model: FakeModelServer
) -> Callable[..., Session]:
    """``attach(**options)``: a session on the shared server."""

    def start(**options: Any) -> Session:
        options.setdefault("cwd", str(shared.root))
        return runtime.start_session(backend="opencode", base_url=shared.url, **options)

    return start


@pytest.fixture
def own(
    opencode_cli: Path,
    runtime: Runtime,
    server: FakeModelServer,
    sandbox: LoopbackNamespace | None,
    tmp_path: Path,
    work: Path,
) -> Callable[..., Session]:
    """``own(**options)``: a session that starts its own server (per test)."""
    env = opencode_env(tmp_path / "home", server)

    def start(**options: Any) -> Session:
        options.setdefault("cwd", str(work))
        return runtime.start_session(
            backend="opencode",
            env=env,
            inherit_env=False,
            command_prefix=forward_prefix(sandbox),
            **options,
        )

    return start


def agent_requests(server: FakeModelServer) -> list[RecordedRequest]:
    """The model requests of the agent loop (they offer tools; a title request would not)."""
    return [r for r in server.model_requests() if isinstance(r.json, dict) and r.json.get("tools")]


def tool_messages(request: RecordedRequest) -> list[str]:
    return [str(m.get("content")) for m in request.json["messages"] if m.get("role") == "tool"]


def kinds(messages: list[Message]) -> list[str]:
    return [m.type.value for m in messages]


# --- on the shared server -------------------------------------------------------------------


def test_plain_query(attach: Callable[..., Session], model: FakeModelServer) -> None:
    session = attach()

    messages = session.query("ECHO:hello opencode", timeout=WAIT)

    assert kinds(messages) == ["system", "assistant", "result"]
    init, reply, result = messages
    assert init.subtype == "init"
    assert reply.content == "hello opencode"
    assert (result.subtype, result.is_error, result.content) == ("success", False, "hello opencode")
    assert result.stop_reason == "end_turn"
    assert result.usage is not None
    assert result.usage["input_tokens"] > 0
    assert result.usage["output_tokens"] > 0
    info = session.session_info()
    assert info["native_session_id"].startswith("ses")
    assert info["model"] == "fake/fake-model"  # what OpenCode's config chose
    assert "resumed" not in info or info["resumed"] != "native"
    health = session.server_health()
    assert (health["backend"], health["healthy"], health["version"]) == (
        "opencode",
        True,
        "1.18.33",
    )
    [request] = agent_requests(model)
    assert request.path == "/v1/chat/completions"
    assert "ECHO:hello opencode" in request.text


def test_streaming_with_deltas(attach: Callable[..., Session]) -> None:
    session = attach(include_partial_messages=True)

    messages = list(session.stream("ECHO:streamed words here", timeout=WAIT))

    order = kinds(messages)
    assert order[0] == "system"
    assert order[-2:] == ["assistant", "result"]
    deltas = of_type(messages, "stream_event")
    assert len(deltas) > 1
    assert order.index("stream_event") < order.index("assistant")
    assert "".join(d.content or "" for d in deltas) == "streamed words here"


def test_two_turns_on_one_live_session(
    attach: Callable[..., Session], model: FakeModelServer
) -> None:
    session = attach()
    native = session.session_info()["native_session_id"]

    assert session.query("ECHO:first turn", timeout=WAIT)[-1].content == "first turn"
    assert session.query("ECHO:second turn", timeout=WAIT)[-1].content == "second turn"

    assert session.session_info()["native_session_id"] == native
    one, two = agent_requests(model)
    assert "second turn" not in one.text
    assert "ECHO:first turn" in two.text
    assert "ECHO:second turn" in two.text


def test_tool_call_allowed_runs_the_command(
    attach: Callable[..., Session], model: FakeModelServer, scratch: Path
) -> None:
    target = scratch / "allowed"
    model.script([ToolCall(command=f"touch {target}"), Text("created")])
    calls, handler = recorder(lambda *_: Allow())
    session = attach(permission_handler=handler)

    messages = session.query("create the file", timeout=WAIT)

    assert target.exists()
    [(tool_name, tool_input, context)] = calls
    assert tool_name == "bash"
    assert tool_input["command"] == f"touch {target}"
    assert isinstance(context, PermissionContext)
    assert (context.backend, context.session_id) == ("opencode", session.session_id)
    [use] = of_type(messages, "tool_use")
    [result] = of_type(messages, "tool_result")
    assert use.tool_name == "bash"
    assert use.tool_input == {"command": f"touch {target}"}
    assert context.tool_use_id == use.tool_use_id == result.tool_use_id
    assert result.is_error is False
    assert messages[-1].content == "created"
    assert session.session_info()["pending_permissions"] == 0


def test_tool_call_denied_has_no_side_effect_and_the_model_sees_why(
    attach: Callable[..., Session], model: FakeModelServer, scratch: Path
) -> None:
    target = scratch / "denied"
    model.script([ToolCall(command=f"touch {target}"), Text("understood")])
    calls, handler = recorder(lambda *_: Deny("no files today"))
    session = attach(permission_handler=handler)

    messages = session.query("create the file", timeout=WAIT)

    assert not target.exists()
    assert len(calls) == 1
    [result] = of_type(messages, "tool_result")
    assert result.is_error is True
    assert "no files today" in (result.content or "")
    assert messages[-1].content == "understood"
    [told] = tool_messages(agent_requests(model)[-1])
    assert "no files today" in told


def test_without_a_permission_handler_tools_are_denied(
    attach: Callable[..., Session], model: FakeModelServer, scratch: Path
) -> None:
    target = scratch / "default-denied"
    model.script([ToolCall(command=f"touch {target}"), Text("declined")])
    session = attach()

    session.query("create the file", timeout=WAIT)

    assert not target.exists()
    [told] = tool_messages(agent_requests(model)[-1])
    assert "permission_handler" in told


def test_interrupt_mid_turn(attach: Callable[..., Session], model: FakeModelServer) -> None:
    model.script([Stall(WAIT)])
    session = attach()
    ref = session.send_query("this one hangs")
    model.wait_for_requests(1, WAIT, predicate=lambda r: bool(r.json and r.json.get("tools")))

    session.interrupt()

    receive_until(session, ref, Interrupted)
    after = session.query("ECHO:after the interrupt", timeout=WAIT)
    assert kinds(after)[-2:] == ["assistant", "result"]
    assert after[-1].content == "after the interrupt"


def test_interrupt_during_a_pending_permission_leaves_none_pending(
    attach: Callable[..., Session], model: FakeModelServer, shared: SharedServer, scratch: Path
) -> None:
    target = scratch / "never-made"
    model.script([ToolCall(command=f"touch {target}")])
    asked, release = threading.Event(), threading.Event()

    def waiting_handler(*_: Any) -> Allow:
        asked.set()
        assert release.wait(WAIT)
        return Allow()

    session = attach(permission_handler=waiting_handler)
    native = session.session_info()["native_session_id"]
    ref = session.send_query("make the file")
    assert asked.wait(WAIT)
    assert session.session_info()["pending_permissions"] == 1

    session.interrupt()
    receive_until(session, ref, Interrupted)
    release.set()  # the late Allow is dropped: the request was rejected on the interrupt

    assert session.query("ECHO:still usable", timeout=WAIT)[-1].content == "still usable"
    assert session.session_info()["pending_permissions"] == 0
    pending = httpx.get(f"{shared.url}/permission", params={"directory": str(shared.root)}).json()
    assert [p for p in pending if p["sessionID"] == native] == []
    assert not target.exists()


def test_set_model_applies_per_prompt(
    attach: Callable[..., Session], model: FakeModelServer
) -> None:
    session = attach()
    session.query("ECHO:on the first model", timeout=WAIT)

    session.set_model("fake/fake-model-b")
    messages = session.query("ECHO:on the second model", timeout=WAIT)

    assert messages[-1].content == "on the second model"
    first, second = agent_requests(model)
    assert (first.json["model"], second.json["model"]) == ("fake-model", "fake-model-b")
    assert session.session_info()["model"] == "fake/fake-model-b"
    assert messages[-1].model == "fake/fake-model-b"
    with pytest.raises(InvalidOption):
        session.set_model("no-provider-here")


def test_permission_modes_are_refused(attach: Callable[..., Session]) -> None:
    session = attach()

    with pytest.raises(UnsupportedCapability):
        session.set_permission_mode("plan")
    with pytest.raises(InvalidOption):
        attach(permission_mode="plan")
    assert session.query("ECHO:fine", timeout=WAIT)[-1].content == "fine"


def test_model_error_gives_an_error_result_and_a_usable_session(
    attach: Callable[..., Session], model: FakeModelServer
) -> None:
    model.script([ErrorStatus(400, message="the fake model refuses")])
    session = attach()

    messages = session.query("this fails", timeout=WAIT)

    [error] = of_type(messages, "error")
    assert "the fake model refuses" in (error.content or "")
    result = messages[-1]
    assert (result.type, result.subtype, result.is_error) == (MessageType.RESULT, "error", True)
    assert session.query("ECHO:fine now", timeout=WAIT)[-1].content == "fine now"


def test_a_prompt_opencode_cannot_take_is_an_error_result(
    attach: Callable[..., Session], model: FakeModelServer
) -> None:
    session = attach()

    # OpenCode fails it before it writes the user message: no session.idle follows.
    messages = session.query("ECHO:for nobody", timeout=WAIT, agent="no-such-agent")

    [error] = of_type(messages, "error")
    assert "no-such-agent" in (error.content or "")
    assert (messages[-1].subtype, messages[-1].is_error) == ("error", True)
    assert session.query("ECHO:fine after", timeout=WAIT)[-1].content == "fine after"
    assert "for nobody" not in agent_requests(model)[-1].text


def test_stopping_an_attached_session_mid_turn_aborts_its_turn(
    attach: Callable[..., Session], runtime: Runtime, model: FakeModelServer, shared: SharedServer
) -> None:
    model.script([Stall(WAIT)])
    session = attach()
    native = session.session_info()["native_session_id"]
    session.send_query("this one hangs")
    model.wait_for_requests(1, WAIT, predicate=lambda r: bool(r.json and r.json.get("tools")))

    session.stop()  # the server is not ours: it lives on, the turn must not

    again = attach(native_session_id=native)
    started = time.monotonic()
    assert again.query("ECHO:not stuck", timeout=WAIT)[-1].content == "not stuck"
    assert time.monotonic() - started < WAIT / 2  # not queued behind the stalled turn


def test_native_fork_continues_the_parents_conversation(
    attach: Callable[..., Session], model: FakeModelServer
) -> None:
    parent = attach()
    parent.query("ECHO:remember the word pineapple", timeout=WAIT)
    parent_native = parent.session_info()["native_session_id"]

    fork = attach(fork_native_session_id=parent_native)
    messages = fork.query("ECHO:in the fork", timeout=WAIT)

    assert messages[-1].content == "in the fork"
    info = fork.session_info()
    assert info["native_session_id"] != parent_native
    assert (info["forked_from"], info["resumed"]) == (parent_native, "native")
    assert "remember the word pineapple" in agent_requests(model)[-1].text
    parent.query("ECHO:back in the parent", timeout=WAIT)
    assert "in the fork" not in agent_requests(model)[-1].text  # the fork is its own


def test_a_store_fork_forks_natively(
    attach: Callable[..., Session], runtime: Runtime, model: FakeModelServer, shared: SharedServer
) -> None:
    parent = attach()
    parent.query("ECHO:remember the word pineapple", timeout=WAIT)
    parent_native = parent.session_info()["native_session_id"]
    fork = runtime.fork_session(parent)

    forked = runtime.start_session(resume=fork.session_id, base_url=shared.url)
    assert forked.query("ECHO:in the fork", timeout=WAIT)[-1].content == "in the fork"

    info = forked.session_info()
    assert (info["resumed"], info["forked_from"]) == ("native", parent_native)
    assert info["native_session_id"] != parent_native
    assert "remember the word pineapple" in agent_requests(model)[-1].text


def test_resume_by_native_id_on_the_same_server(
    attach: Callable[..., Session], runtime: Runtime, model: FakeModelServer, shared: SharedServer
) -> None:
    session = attach()
    session.query("ECHO:remember the word mango", timeout=WAIT)
    native = session.session_info()["native_session_id"]
    session.stop()

    again = runtime.start_session(resume=session.session_id, base_url=shared.url)
    messages = again.query("ECHO:what was it", timeout=WAIT)

    assert messages[-1].content == "what was it"
    info = again.session_info()
    assert (info["native_session_id"], info["resumed"]) == (native, "native")
    assert "remember the word mango" in agent_requests(model)[-1].text


def test_a_session_the_server_lost_is_continued_by_replaying_the_store(
    attach: Callable[..., Session], runtime: Runtime, model: FakeModelServer, shared: SharedServer
) -> None:
    session = attach()
    session.query("ECHO:remember the word papaya", timeout=WAIT)
    session.stop()

    # As if resumed on another server (another data directory): the id is unknown there.
    again = runtime.start_session(
        resume=session.session_id, base_url=shared.url, native_session_id="ses_lost0000000000000000"
    )
    messages = again.query("ECHO:what was it", timeout=WAIT)

    info = again.session_info()
    assert (info["resume_missing"], info["resumed"]) == (True, "replay")
    assert info["native_session_id"] != "ses_lost0000000000000000"
    assert "remember the word papaya" in agent_requests(model)[-1].text
    assert messages[-1].type is MessageType.RESULT


def test_an_unknown_native_id_starts_afresh(attach: Callable[..., Session]) -> None:
    session = attach(native_session_id="ses_doesnotexist0000000000")

    assert session.query("ECHO:fresh", timeout=WAIT)[-1].content == "fresh"
    info = session.session_info()
    assert info["resume_missing"] is True
    assert info["native_session_id"] != "ses_doesnotexist0000000000"


def test_an_idle_session_hibernates_and_continues(
    attach: Callable[..., Session], model: FakeModelServer
) -> None:
    with LogEvents() as events:
        session = attach(idle_timeout=1.0)
        session.query("ECHO:remember the word kiwi", timeout=WAIT)
        native = session.session_info()["native_session_id"]

        until_hibernating(events, session, WAIT)
        messages = session.query("ECHO:awake", timeout=WAIT)

    assert messages[-1].content == "awake"
    info = session.session_info()
    assert (info["hibernations"], info["native_session_id"]) == (1, native)
    assert "remember the word kiwi" in agent_requests(model)[-1].text


def test_availability() -> None:
    available, why = OpenCodeHandler.availability()
    assert available, why


# --- sessions that own their server ---------------------------------------------------------


def test_killed_server_restarts_and_the_conversation_continues(
    own: Callable[..., Session], runtime: Runtime, server: FakeModelServer
) -> None:
    session = own()
    session.query("ECHO:remember the word pineapple", timeout=WAIT)
    before = session.session_info()
    server.script([Stall(WAIT)])
    ref = session.send_query("this turn dies")
    server.wait_for_requests(2, WAIT, predicate=lambda r: bool(r.json and r.json.get("tools")))
    incarnation = watch_incarnation(runtime, session)

    os.killpg(before["pid"], signal.SIGKILL)

    error = receive_until(session, ref)
    assert isinstance(error, SessionError)
    assert error.delivered is True
    down = incarnation.wait(WAIT)
    assert isinstance(down.reason, Crashed)
    messages = session.query("ECHO:back again", timeout=WAIT)
    assert messages[-1].content == "back again"
    info = session.session_info()
    assert info["incarnation"] == 2
    assert info["pid"] != before["pid"]
    assert (info["native_session_id"], info["resumed"]) == (before["native_session_id"], "native")
    assert group_members(before["pid"]) == []
    last = agent_requests(server)[-1]
    assert "remember the word pineapple" in last.text
    assert "back again" in last.text


def test_stop_then_resume_continues_on_a_new_server(
    own: Callable[..., Session], runtime: Runtime, server: FakeModelServer
) -> None:
    session = own()
    session.query("ECHO:remember the word mango", timeout=WAIT)
    before = session.session_info()

    session.stop()
    assert group_members(before["pid"]) == []  # the server went with its session
    again = own(resume=session.session_id)
    messages = again.query("ECHO:and now", timeout=WAIT)

    assert messages[-1].content == "and now"
    info = again.session_info()
    assert info["pid"] != before["pid"]
    assert (info["native_session_id"], info["resumed"]) == (before["native_session_id"], "native")
    assert "remember the word mango" in agent_requests(server)[-1].text
    assert json.dumps(info["server_health"])  # reported, JSON-safe
