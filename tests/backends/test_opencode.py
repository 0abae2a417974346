"""The ``opencode`` backend against a fake server that breaks the protocol on purpose.

``fakes/fake_opencode.py`` stands in for ``opencode serve`` (as ``cli_path``):
a stream cut in the middle of an event, a server that never becomes healthy
or exits at start, an event that is not JSON, an event type OpenCode never
sends. The real server is tested in ``test_opencode_real.py``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from beamagent import Runtime, Session
from beamagent.backends.base import Connected, HandlerOutput, SessionState
from beamagent.backends.jsonl import encode_line
from beamagent.backends.opencode import OpenCodeHandler, parse_model
from beamagent.backends.permissions import Allow
from beamagent.errors import (
    ConnectTimeout,
    InvalidOption,
    TransportError,
    UnsupportedCapability,
)
from tests._events import LogEvents
from tests.backends.conftest import group_members, receive_until, watch_incarnation

FAKE = Path(__file__).with_name("fakes") / "fake_opencode.py"
WAIT = 10.0


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    with Runtime(store=":memory:") as rt:
        yield rt


@pytest.fixture
def start(runtime: Runtime, tmp_path: Path) -> Callable[..., Session]:
    """``start(mode=..., **options)``: a session whose "server" is the fake."""

    def start_session(mode: str = "", **options: Any) -> Session:
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "FAKE_OPENCODE_MODE": mode,
            "FAKE_PID_FILE": str(tmp_path / "fake.pid"),
        }
        options.setdefault("cwd", str(tmp_path))
        return runtime.start_session(
            backend="opencode",
            cli_path=str(FAKE),
            command_prefix=[sys.executable],
            env=env,
            inherit_env=False,
            **options,
        )

    return start_session


def fake_pid(tmp_path: Path) -> int:
    return int((tmp_path / "fake.pid").read_text())


def test_a_normal_turn(start: Callable[..., Session]) -> None:
    session = start()

    messages = session.query("hello fake", timeout=WAIT)

    assert [m.type.value for m in messages] == ["system", "assistant", "result"]
    assert messages[-1].content == "hello fake"
    assert messages[-1].usage == {
        "input_tokens": 3,
        "output_tokens": 1,
        "reasoning_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
        "total_tokens": 4,
    }
    info = session.session_info()
    assert info["native_session_id"] == "ses_fake0001"
    assert session.server_health()["version"] == "0.0.0-fake"


def test_a_stream_cut_mid_event_fails_the_session_which_restarts(
    start: Callable[..., Session], runtime: Runtime, tmp_path: Path
) -> None:
    session = start()
    first = fake_pid(tmp_path)
    incarnation = watch_incarnation(runtime, session)
    ref = session.send_query("CUT")

    error = receive_until(session, ref)

    assert isinstance(error, TransportError)
    assert "in the middle of an event" in str(error)
    incarnation.wait(WAIT)
    assert group_members(first) == []  # the server of the failed incarnation was stopped
    assert session.query("back", timeout=WAIT)[-1].content == "back"
    info = session.session_info()
    assert (info["incarnation"], info["resumed"]) == (2, "native")


def test_a_server_that_never_becomes_healthy_is_a_timeout_and_is_stopped(
    start: Callable[..., Session], tmp_path: Path
) -> None:
    with pytest.raises(ConnectTimeout) as raised:
        start("never_healthy", init_timeout=1.5)

    message = str(raised.value)
    assert "within 1.5 s" in message
    assert 'to become healthy (GET /global/health: HTTP 503: {"healthy": false})' in message
    assert group_members(fake_pid(tmp_path)) == []


def test_a_server_that_exits_at_start_says_why(start: Callable[..., Session]) -> None:
    with pytest.raises(TransportError) as raised:
        start("exit")

    assert "exited with status 3" in str(raised.value)
    assert "the fake cannot start" in str(raised.value)


def test_attaching_to_nothing_is_a_timeout_that_names_the_server(runtime: Runtime) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed again: nothing listens there

    with pytest.raises(ConnectTimeout) as raised:
        runtime.start_session(
            backend="opencode", base_url=f"http://127.0.0.1:{port}", init_timeout=1.0
        )

    # "... to become healthy (GET /global/health: ConnectError ...)" once a health check
    # has failed; "... to answer" if the timeout came first (a loaded machine).
    assert f"the opencode server at http://127.0.0.1:{port} to " in str(raised.value)


def test_malformed_event_json_is_logged_and_skipped(start: Callable[..., Session]) -> None:
    session = start()

    with LogEvents("beamagent.backends.opencode") as events:
        messages = session.query("MALFORMED", timeout=WAIT)

    assert messages[-1].content == "MALFORMED"
    [malformed] = events.matching("opencode_event_malformed")
    assert "this is not json" in malformed["data"]
    assert session.health() == "ready"


def test_an_unknown_event_type_is_logged_and_ignored(start: Callable[..., Session]) -> None:
    session = start()

    with LogEvents("beamagent.backends.opencode") as events:
        messages = session.query("UNKNOWN", timeout=WAIT)

    assert [m.type.value for m in messages] == ["system", "assistant", "result"]
    assert events.matching("opencode_event_ignored", type="session.brand_new_thing")


def test_options_are_checked_before_anything_starts(runtime: Runtime) -> None:
    with pytest.raises(InvalidOption, match="provider/model"):
        runtime.start_session(backend="opencode", base_url="http://127.0.0.1:1", model="gpt")
    with pytest.raises(InvalidOption, match="base_url"):
        runtime.start_session(backend="opencode", base_url="ftp://example")
    with pytest.raises(InvalidOption, match="permission_mode"):
        runtime.start_session(
            backend="opencode", base_url="http://127.0.0.1:1", permission_mode="x"
        )


def test_capabilities_are_what_it_does() -> None:
    caps = {c.value for c in OpenCodeHandler.capabilities}
    assert "permission_mode" not in caps
    assert {"interrupt", "runtime_model_switch", "approval_callbacks"} <= caps
    handler = OpenCodeHandler({"base_url": "http://127.0.0.1:1"})
    with pytest.raises(UnsupportedCapability):
        handler.set_permission_mode("plan")


def test_parse_model() -> None:
    assert parse_model("fake/fake-model") == ("fake", "fake-model")
    assert parse_model("openrouter/a/b") == ("openrouter", "a/b")
    for bad in ("nomodel", "/x", "x/", None, 3):
        with pytest.raises(InvalidOption):
            parse_model(bad)


def test_opencode_is_startable_by_name_but_never_routed_to_unless_enabled() -> None:
    with Runtime(store=":memory:") as rt:
        assert rt.routable_backends() == ["local"]
        spec = rt.backend_spec("opencode")
        assert spec.handler is OpenCodeHandler
        assert spec.options == {"init_timeout": 60.0}  # its server takes seconds to be up
    with Runtime(store=":memory:", backends=["opencode", "local"]) as rt:
        assert rt.routable_backends() == ["opencode", "local"]
    # Options given for the built-in go on top of its own defaults.
    with Runtime(store=":memory:", backends={"opencode": {"model": "fake/fake-model"}}) as rt:
        assert rt.backend_spec("opencode").options == {
            "init_timeout": 60.0,
            "model": "fake/fake-model",
        }


# --- the handler alone: event orders OpenCode really sends (recorded from 1.18.33) -------------

SID = "ses_unit0001"


class Driven:
    """An OpenCodeHandler fed JSON lines as its transport would, past its handshake."""

    def __init__(self, **options: Any) -> None:
        self.handler = OpenCodeHandler({"base_url": "http://127.0.0.1:1", **options})
        self.handler.on_connected(Connected({}))
        out = self.feed({"op": "ready", "base_url": "http://127.0.0.1:1", "health": {}})
        [create] = self.requests(out)
        out = self.answer(create, 200, {"id": SID, "directory": "/tmp"})
        assert out.state is SessionState.READY

    def feed(self, *lines: dict[str, Any]) -> HandlerOutput:
        data = b"".join(encode_line(line) for line in lines)
        out, leftover = self.handler.handle_data(data)
        assert leftover == b""
        return out

    def events(self, *events: tuple[str, dict[str, Any]]) -> HandlerOutput:
        lines = [
            {
                "op": "event",
                "data": json.dumps({"type": kind, "properties": {"sessionID": SID, **props}}),
            }
            for kind, props in events
        ]
        return self.feed(*lines)

    def answer(self, request: dict[str, Any], status: int, body: Any = None) -> HandlerOutput:
        return self.feed({"op": "response", "id": request["id"], "status": status, "body": body})

    @staticmethod
    def requests(out: HandlerOutput) -> list[dict[str, Any]]:
        lines = [json.loads(w) for w in out.writes]
        return [line for line in lines if line.get("op") == "request"]

    def query(self, prompt: str = "hi") -> dict[str, Any]:
        out = self.handler.encode_query(prompt, {})
        [prompt_request] = self.requests(out)
        assert prompt_request["path"] == f"/session/{SID}/prompt_async"
        return prompt_request


def user(mid: str) -> tuple[str, dict[str, Any]]:
    return ("message.updated", {"info": {"id": mid, "role": "user"}})


def assistant(mid: str, parent: str, **info: Any) -> tuple[str, dict[str, Any]]:
    return (
        "message.updated",
        {"info": {"id": mid, "role": "assistant", "parentID": parent, **info}},
    )


def text(mid: str, pid: str, value: str) -> tuple[str, dict[str, Any]]:
    part = {
        "id": pid,
        "messageID": mid,
        "type": "text",
        "text": value,
        "time": {"start": 1, "end": 2},
    }
    return ("message.part.updated", {"part": part})


IDLE: tuple[str, dict[str, Any]] = ("session.idle", {})
DONE = {"time": {"created": 1, "completed": 2}, "finish": "stop"}


def types(out: HandlerOutput) -> list[str]:
    return [m.type.value for m in out.messages]


def test_the_late_second_idle_of_a_failed_turn_does_not_end_the_next_one() -> None:
    driven = Driven()
    driven.answer(driven.query(), 204)
    api_error = {"name": "APIError", "data": {"message": "bad thing"}}
    out = driven.events(
        user("msg_1"), assistant("msg_2", "msg_1"), ("session.error", {"error": api_error}), IDLE
    )
    assert types(out) == ["error", "result"]
    assert (out.messages[-1].subtype, out.messages[-1].is_error) == ("error", True)

    driven.answer(driven.query(), 204)
    # What OpenCode sends after the error's idle: the failed message, and a second idle.
    late = driven.events(
        assistant("msg_2", "msg_1", time={"created": 1, "completed": 2}, error=api_error), IDLE
    )
    assert types(late) == []
    out = driven.events(
        user("msg_3"),
        assistant("msg_4", "msg_3"),
        text("msg_4", "prt_1", "fine"),
        assistant("msg_4", "msg_3", **DONE),
        IDLE,
    )
    assert types(out) == ["assistant", "result"]
    assert out.messages[-1].content == "fine"


def test_an_idle_before_the_last_message_update_ends_the_turn_with_it() -> None:
    driven = Driven()
    driven.answer(driven.query(), 204)
    out = driven.events(
        user("msg_1"), assistant("msg_2", "msg_1"), text("msg_2", "prt_1", "done"), IDLE
    )
    assert types(out) == ["assistant"]

    out = driven.events(assistant("msg_2", "msg_1", **DONE))
    assert types(out) == ["result"]


def test_an_interrupt_withdraws_pending_permissions_and_rejects_them_after_the_abort() -> None:
    driven = Driven(permission_handler=lambda *_: None)
    driven.answer(driven.query(), 204)
    asked = {
        "id": "per_1",
        "permission": "bash",
        "patterns": ["touch x"],
        "metadata": {"command": "touch x"},
        "always": ["touch *"],
    }
    out = driven.events(user("msg_1"), assistant("msg_2", "msg_1"), ("permission.asked", asked))
    [call] = out.calls
    assert driven.handler.info()["pending_permissions"] == 1

    interrupt = driven.handler.encode_interrupt()
    assert interrupt is not None
    [abort] = driven.requests(interrupt)
    assert abort["path"] == f"/session/{SID}/abort"
    late = driven.handler.on_call_result(call.key, Allow(), None)
    assert driven.requests(late) == []  # the late Allow is never sent

    out = driven.answer(abort, 200, True)
    [reject] = driven.requests(out)
    assert (reject["path"], reject["json"]["reply"]) == ("/permission/per_1/reply", "reject")
    aborted = {"name": "MessageAbortedError", "data": {"message": "Aborted"}}
    out = driven.events(("session.error", {"error": aborted}), IDLE)
    assert types(out) == ["result"]
    assert out.messages[-1].subtype == "interrupted"
    assert driven.handler.info()["pending_permissions"] == 0


def test_a_prompt_rejected_before_it_is_written_ends_at_its_error() -> None:
    driven = Driven()
    prompt = driven.query()
    unknown = {"name": "UnknownError", "data": {"message": 'Agent not found: "x"'}}
    out = driven.events(("session.error", {"error": unknown}))  # before the 204
    assert types(out) == ["error"]

    out = driven.answer(prompt, 204)
    assert types(out) == ["result"]
    assert out.messages[-1].is_error is True


def test_other_sessions_and_user_parts_are_not_the_turns() -> None:
    driven = Driven()
    driven.answer(driven.query("ECHO:mine"), 204)
    other = {
        "op": "event",
        "data": json.dumps({"type": "session.idle", "properties": {"sessionID": "ses_other"}}),
    }
    assert types(driven.feed(other)) == []
    user_part = {"id": "prt_u", "messageID": "msg_1", "type": "text", "text": "ECHO:mine"}
    out = driven.events(user("msg_1"), ("message.part.updated", {"part": user_part}))
    assert types(out) == []
