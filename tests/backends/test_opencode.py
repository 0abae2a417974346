"""The ``opencode`` backend against a fake server that breaks the protocol on purpose.

``fakes/fake_opencode.py`` stands in for ``opencode serve`` (as ``cli_path``):
a stream cut in the middle of an event, a server that never becomes healthy
or exits at start, an event that is not JSON, an event type OpenCode never
sends. The real server is tested in ``test_opencode_real.py``.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from beamagent import Runtime, Session
from beamagent.backends.opencode import OpenCodeHandler, parse_model
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

    assert f"http://127.0.0.1:{port} to become healthy" in str(raised.value)


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
