"""The overhead of one tool round trip, per backend that runs Python tools.

For ``openai`` (the tool loop in-process) and the real pinned CLIs calling the
runtime's MCP tool server -- ``claude``, ``codex``, ``gemini``, ``copilot``,
``opencode`` -- on a live session against FakeModelServer (in a loopback-only
namespace when running as root):

  * the tool round trip: from the moment the model's answer asking for the
    tool was sent to the moment the next model request -- carrying the
    result -- arrived (the fake server's receive times; side requests such
    as Gemini's router left out), median of ``TURNS`` turns; the tool itself
    (``add``) takes microseconds;
  * baseline, same run, same session: a plain query (prompt to result, no tool).

``local`` has no model: its round trip is from the reply's ``LocalToolCall``
to the outcome back in the reply (the call reported, run off the session's
thread, its result delivered), against a plain query of the same session.

One line per backend: ``tool_round_trip_<backend>: ours=... baseline=... ratio=...``.
Usage: ``python bench/tools.py [TURNS] [BACKEND...] [--context]`` (default 15 turns,
every CLI; ``--context``: the tool takes a ``ToolContext``, so for the CLIs that do
not send their call id the tool server waits for the one the handler announces).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# This checkout's beamagent, not whichever one is installed (a worktree, a clone).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import report

from beamagent import LocalToolCall, Runtime, configure_logging
from beamagent.testing import (
    FakeModelServer,
    LoopbackNamespace,
    Text,
    ToolCall,
    cli_env,
    copilot_env,
    ensure_installed,
    is_side_request,
    loopback_namespace_available,
)
from beamagent.tools import ToolContext, ToolServerConfig, tool

configure_logging("error")
ARGS = [a for a in sys.argv[1:] if a != "--context"]
TURNS = int(ARGS[0]) if ARGS and ARGS[0].isdigit() else 15
# The tool takes a ToolContext: for a CLI that does not send its call id (gemini, copilot,
# opencode), the tool server then waits for the id the session's handler announces.
CONTEXT = "--context" in sys.argv
SUFFIX = "_with_context" if CONTEXT else ""
CLIS = ("claude", "codex", "gemini", "copilot", "opencode")


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool(name="add")
def add_with_context(a: int, b: int, ctx: ToolContext) -> int:
    """Add two integers (and see the call's context)."""
    return a + b


def _round_trip(server: FakeModelServer, session: Any) -> float:
    """One tool turn; seconds from the tool-call answer to the request with the result."""
    before = len(server.model_requests())
    server.script([ToolCall("", tool="add", arguments={"a": 1, "b": 2}), Text("3")])
    session.query("add 1 and 2", timeout=60)
    requests = [
        r for r in server.model_requests()[before:] if not is_side_request(r.protocol, r.json)
    ]
    # The request answered with the call, then the one that brought the result back
    # (Codex first searches its deferred tools: skip that request).
    asked = [i for i, r in enumerate(requests) if getattr(r.turn, "tool", None) == "add"][-1]
    return requests[asked + 1].received_at - requests[asked].received_at


def _plain(session: Any) -> float:
    started = time.perf_counter()
    session.query("ECHO:plain", timeout=60)
    return time.perf_counter() - started


def measure(backend: str, rt: Runtime, server: FakeModelServer, options: dict[str, Any]) -> None:
    session = rt.start_session(backend=backend, **options)
    _round_trip(server, session)  # warm: the first call connects to the tool server
    _plain(session)
    trips, plains = [], []
    for _ in range(TURNS):
        trips.append(_round_trip(server, session))
        plains.append(_plain(session))
    session.stop()
    report(
        f"tool_round_trip_{backend}{SUFFIX}",
        statistics.median(trips) * 1000,
        statistics.median(plains) * 1000,
        "ms",
        "tool call -> result at the model, vs a plain query on the same live session",
    )


def measure_local(rt: Runtime) -> None:
    """``local``: LocalToolCall -> outcome back in the reply, vs a plain query."""
    spans: list[float] = []

    def reply(prompt: str, _params: Any) -> Any:
        if prompt == "plain":
            yield "plain"
            return
        started = time.perf_counter()
        outcome = yield LocalToolCall("add", {"a": 1, "b": 2})
        spans.append(time.perf_counter() - started)
        yield str(outcome.content)

    session = rt.start_session(backend="local", reply=reply)
    session.query("add", timeout=60)
    _plain_local(session)
    plains = []
    spans.clear()
    for _ in range(TURNS):
        session.query("add", timeout=60)
        plains.append(_plain_local(session))
    session.stop()
    report(
        f"tool_round_trip_local{SUFFIX}",
        statistics.median(spans) * 1000,
        statistics.median(plains) * 1000,
        "ms",
        "LocalToolCall -> outcome in the reply, vs a plain query on the same session",
    )


def _plain_local(session: Any) -> float:
    started = time.perf_counter()
    session.query("plain", timeout=60)
    return time.perf_counter() - started


def main() -> None:
    with ExitStack() as stack:
        ns = stack.enter_context(LoopbackNamespace()) if loopback_namespace_available() else None
        server = stack.enter_context(FakeModelServer(reply="ok", netns=ns.path if ns else None))
        config = ToolServerConfig(netns=[ns.path] if ns else [])
        tools = [add_with_context if CONTEXT else add]
        rt = stack.enter_context(Runtime(store=":memory:", tools=tools, tool_server=config))
        # openai calls the model from this process: a fake server in this namespace.
        local = stack.enter_context(FakeModelServer(reply="ok"))
        measure_local(rt)
        measure("openai", rt, local, {"base_url": local.url + "/v1", "model": "fake"})
        backends = [b for b in ARGS if not b.isdigit()] or list(CLIS)
        try:
            ensure_installed(tuple(backends))
        except Exception as exc:
            print(f"# the CLIs are not installed ({exc}); {', '.join(backends)} skipped")
            return
        cache = Path(stack.enter_context(tempfile.TemporaryDirectory()))  # copilot's, once
        for backend in backends:
            home = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            work = home / "work"
            work.mkdir()
            subprocess.run(["git", "init", "-q", str(work)], check=True)
            env = (
                copilot_env(home, server, cache_dir=cache)
                if backend == "copilot"
                else cli_env(backend, home, server)
            )
            # opencode serve is a server this process reaches: behind the forwarder.
            prefix = (ns.server_prefix() if backend == "opencode" else ns.prefix()) if ns else []
            options = {
                "env": env,
                "inherit_env": False,
                "cwd": str(work),
                "command_prefix": prefix,
            }
            measure(backend, rt, server, options)


if __name__ == "__main__":
    main()
