"""The tool server over direct HTTP: tokens, per-token tool lists, restarts, lifecycle."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from beamagent import Runtime
from beamagent.backends.local import LocalHandler
from beamagent.capabilities import Capability
from beamagent.errors import InvalidOption, MissingDependency, UnsupportedCapability
from beamagent.tools import ToolContext, ToolSet, tool
from beamagent.tools._state import Grant
from supervisors import kill, monitor, whereis

HEADERS = {"Accept": "application/json, text/event-stream"}


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def secret() -> str:
    """Another session's tool."""
    return "42"


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    with Runtime(store=":memory:", tools=[add]) as rt:
        yield rt


def rpc(url: str, method: str, params: dict[str, Any], token: str | None) -> httpx.Response:
    headers = dict(HEADERS)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    return httpx.post(url, json=body, headers=headers, timeout=10)


def grant(rt: Runtime, session_id: str, tools: list[Any]) -> str:
    state = rt._tool_state
    assert state is not None
    return state.grant(Grant(session_id, "test", ToolSet.of(tools))).token


def test_requests_without_a_valid_token_are_refused(runtime: Runtime) -> None:
    url = runtime.start_tool_server()
    token = grant(runtime, "s1", [add])

    assert rpc(url, "tools/list", {}, None).status_code == 401
    assert rpc(url, "tools/list", {}, "wrong").status_code == 401
    assert rpc(url, "tools/list", {}, token[:-1]).status_code == 401
    assert (
        rpc(url, "tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}}, None).status_code
        == 401
    )
    ok = rpc(url, "tools/list", {}, token)
    assert ok.status_code == 200
    assert [t["name"] for t in ok.json()["result"]["tools"]] == ["add"]
    # A revoked token (its session stopped) is refused as well.
    assert runtime._tool_state is not None
    runtime._tool_state.revoke("s1")
    assert rpc(url, "tools/list", {}, token).status_code == 401


def test_a_foreign_host_or_origin_is_refused(runtime: Runtime) -> None:
    url = runtime.start_tool_server()
    token = grant(runtime, "s1", [add])
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    auth = {**HEADERS, "Authorization": f"Bearer {token}"}
    evil_host = httpx.post(url, json=body, headers={**auth, "Host": "evil.example:80"})
    evil_origin = httpx.post(url, json=body, headers={**auth, "Origin": "http://evil.example"})
    assert evil_host.status_code >= 400
    assert evil_origin.status_code >= 400


def test_each_token_sees_only_its_own_tools(runtime: Runtime) -> None:
    url = runtime.start_tool_server()
    one = grant(runtime, "s1", [add])
    two = grant(runtime, "s2", [secret])

    listed = {
        token: [t["name"] for t in rpc(url, "tools/list", {}, token).json()["result"]["tools"]]
        for token in (one, two)
    }
    assert listed == {one: ["add"], two: ["secret"]}
    stolen = rpc(url, "tools/call", {"name": "secret", "arguments": {}}, one).json()["result"]
    assert stolen["isError"] is True
    assert "unknown tool" in stolen["content"][0]["text"]
    mine = rpc(url, "tools/call", {"name": "secret", "arguments": {}}, two).json()["result"]
    assert mine["content"][0]["text"] == "42"


def test_bad_arguments_and_a_raising_tool_are_error_results(runtime: Runtime) -> None:
    @tool
    def boom() -> None:
        raise ValueError("no luck")

    url = runtime.start_tool_server()
    token = grant(runtime, "s1", [add, boom])
    bad = rpc(url, "tools/call", {"name": "add", "arguments": {"a": "x"}}, token).json()
    assert bad["result"]["isError"] is True
    assert "expected integer" in bad["result"]["content"][0]["text"]
    raised = rpc(url, "tools/call", {"name": "boom", "arguments": {}}, token).json()
    assert raised["result"]["content"][0]["text"] == "ValueError: no luck"


def test_a_killed_server_restarts_on_the_same_port_with_the_same_tokens(runtime: Runtime) -> None:
    url = runtime.start_tool_server()
    token = grant(runtime, "s1", [add])
    name = ("beamagent", runtime.id, "tools")
    for _ in range(3):
        before = whereis(name)
        assert before is not None
        kill(before)
        # Made while it restarts: it waits in the listening socket's backlog.
        answer = rpc(url, "tools/call", {"name": "add", "arguments": {"a": 2, "b": 2}}, token)
        assert answer.json()["result"]["content"][0]["text"] == "4"
        assert whereis(name) not in (None, before)
    assert runtime.tool_server_url == url


class NoTools(LocalHandler):
    """A backend that cannot run Python tools (every built-in can)."""

    name = "no_tools"
    capabilities = LocalHandler.capabilities - {Capability.IN_PROCESS_MCP}

    @classmethod
    def option_names(cls) -> frozenset[str]:
        return super().option_names() - {"tools", "tool_context"}


def test_tool_options_are_checked_before_anything_starts() -> None:
    with Runtime(store=":memory:", tools=[add], backends={"no_tools": (NoTools, {})}) as rt:
        with pytest.raises(InvalidOption, match="not a tool"):
            rt.start_session(backend="local", tools=["add"])
        with pytest.raises(InvalidOption, match="set by the runtime"):
            rt.start_session(backend="claude", tool_server="x")
        with pytest.raises(UnsupportedCapability):
            rt.start_session(backend="no_tools", tools=[add])
        with pytest.raises(InvalidOption):
            Runtime(store=":memory:", tools=[1])
        # The runtime's tools are not forced on a backend that cannot run them.
        session = rt.start_session(backend="no_tools")
        assert session.session_info()["tools"] == []
        # local runs them in-process: no tool server is needed.
        assert rt.start_session(backend="local").session_info()["tools"] == ["add"]
        assert rt.tool_server_url is None


def test_a_missing_extra_is_a_clear_error(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mcp" else real(name, *a)
    )
    with pytest.raises(MissingDependency, match=r"beamagent\[tools\]"):
        runtime.start_tool_server()


def test_context_parameter_is_not_in_the_schema() -> None:
    @tool
    def who(ctx: ToolContext) -> str:
        return ctx.session_id or ""

    assert who.input_schema["properties"] == {}


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_import_beamagent_does_not_import_mcp() -> None:
    done = _run_python(
        """
        import sys
        import beamagent, beamagent.tools
        from beamagent.tools import tool
        assert "mcp" not in sys.modules and "uvicorn" not in sys.modules, "imported"
        """
    )
    assert done.returncode == 0, done.stderr


def test_a_runtime_with_a_running_tool_server_exits_promptly_and_quietly() -> None:
    done = _run_python(
        """
        import httpx
        from beamagent import Runtime
        from beamagent.tools import tool

        @tool
        def add(a: int, b: int) -> int:
            return a + b

        rt = Runtime(store=":memory:", tools=[add])
        url = rt.start_tool_server()
        httpx.post(url, json={}, headers={"Accept": "application/json"})  # refused: no token
        # not stopped: the interpreter's exit stops it
        """
    )
    assert done.returncode == 0
    assert done.stdout == ""
    assert done.stderr == ""


def test_a_routed_session_with_tools_only_goes_where_tools_run() -> None:
    from beamagent.errors import NoBackendAvailable

    with Runtime(store=":memory:", backends={"no_tools": (NoTools, {})}) as rt:  # routable
        with pytest.raises(NoBackendAvailable) as info:
            rt.start_session(tools=[add])
        assert "in_process_mcp" in info.value.capabilities
        assert rt.start_session().session_info()["tools"] == []


@tool
def greet(name: str, ctx: ToolContext) -> str:
    """Greet, saying which call this was."""
    return f"hello {name} from {ctx.tool_use_id}"


def test_results_carry_structured_content_when_the_client_asks_for_it(runtime: Runtime) -> None:
    url = runtime.start_tool_server()
    token = grant(runtime, "s1", [add])
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    headers = {**HEADERS, "Authorization": f"Bearer {token}"}

    def result(arguments: dict[str, Any], **extra: str) -> dict[str, Any]:
        body = {**call, "params": {"name": "add", "arguments": arguments}}
        answer = httpx.post(url, json=body, headers={**headers, **extra}, timeout=10)
        return dict(answer.json()["result"])

    plain = result({"a": 1, "b": 2})
    asked = result({"a": 1, "b": 2}, **{"X-Beamagent-Structured-Content": "always"})
    failed = result({"a": "x", "b": 2}, **{"X-Beamagent-Structured-Content": "always"})

    assert "structuredContent" not in plain  # what Claude Code and Codex get: unchanged
    assert asked["content"] == [{"type": "text", "text": "3"}]
    assert asked["structuredContent"] == {"result": 3}
    assert failed["isError"] is True
    assert failed["structuredContent"] == {"error": failed["content"][0]["text"]}


def test_a_call_without_an_id_takes_the_one_its_handler_announced(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("beamagent.tools._server.CALL_ID_WAIT", 0.05)
    url = runtime.start_tool_server()
    state = runtime._tool_state
    assert state is not None
    access = state.grant(Grant("s1", "test", ToolSet.of([greet, add])))
    access.calls.enable()
    access.calls.announce("greet", {"name": "ada"}, "call_from_the_stream")
    params = {"name": "greet", "arguments": {"name": "ada"}}

    first = rpc(url, "tools/call", params, access.token).json()["result"]
    second = rpc(url, "tools/call", params, access.token).json()["result"]

    assert first["content"][0]["text"] == "hello ada from call_from_the_stream"
    # Nothing announced for the second: it runs without an id once the wait is over.
    assert second["content"][0]["text"] == "hello ada from None"


def test_no_event_stream_is_offered(runtime: Runtime) -> None:
    url = runtime.start_tool_server()
    token = grant(runtime, "s1", [add])
    headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {token}"}

    answer = httpx.get(url, headers=headers, timeout=10)

    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
    assert httpx.get(url, timeout=10).status_code == 401  # the token is checked first


def test_sessions_and_runs_stop_before_the_tool_server_they_call() -> None:
    """Started on demand, the tool server is the root's last child: it must not go first."""
    ended: list[str] = []
    all_ended = threading.Event()

    def watcher(what: str) -> Any:
        def down(_down: Any) -> None:
            ended.append(what)
            if len(ended) == 4:
                all_ended.set()

        return down

    rt = Runtime(store=":memory:", tools=[add])
    try:
        rt.start_tool_server()
        session = rt.start_session(backend="local", model="echo-1")
        watched = {
            "session": ("beamagent", rt.id, "session", session.session_id),
            "sessions": ("beamagent", rt.id, "sessions"),
            "runs": ("beamagent", rt.id, "runs"),
            "tools": ("beamagent", rt.id, "tools"),
        }
        for what, name in watched.items():
            monitor(name, watcher=watcher(what))
    finally:
        rt.stop()
    assert all_ended.wait(10)
    assert ended.index("tools") > max(ended.index(w) for w in ("session", "sessions", "runs"))
