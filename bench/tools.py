"""The overhead of one tool round trip, per backend that runs Python tools.

For ``openai`` (the tool loop in-process), ``claude`` and ``codex`` (the real
pinned CLIs calling the runtime's MCP tool server), on a live session against
FakeModelServer (in a loopback-only namespace when running as root):

  * the tool round trip: from the moment the model's answer asking for the
    tool was sent to the moment the next model request -- carrying the
    result -- arrived (the fake server's receive times), median of
    ``TURNS`` turns; the tool itself (``add``) takes microseconds;
  * baseline, same run, same session: a plain query (prompt to result, no tool).

One line per backend: ``tool_round_trip_<backend>: ours=... baseline=... ratio=...``.
Usage: ``python bench/tools.py [TURNS]`` (default 15).
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

from _common import report

from beamagent import Runtime, configure_logging
from beamagent.testing import (
    FakeModelServer,
    LoopbackNamespace,
    Text,
    ToolCall,
    cli_env,
    ensure_installed,
    loopback_namespace_available,
)
from beamagent.tools import ToolServerConfig, tool

configure_logging("error")
TURNS = int(sys.argv[1]) if len(sys.argv) > 1 else 15


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _round_trip(server: FakeModelServer, session: Any) -> float:
    """One tool turn; seconds from the tool-call answer to the request with the result."""
    before = len(server.model_requests())
    server.script([ToolCall("", tool="add", arguments={"a": 1, "b": 2}), Text("3")])
    session.query("add 1 and 2", timeout=60)
    requests = server.model_requests()[before:]
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
        f"tool_round_trip_{backend}",
        statistics.median(trips) * 1000,
        statistics.median(plains) * 1000,
        "ms",
        "tool call -> result at the model, vs a plain query on the same live session",
    )


def main() -> None:
    with ExitStack() as stack:
        ns = stack.enter_context(LoopbackNamespace()) if loopback_namespace_available() else None
        server = stack.enter_context(FakeModelServer(reply="ok", netns=ns.path if ns else None))
        config = ToolServerConfig(netns=[ns.path] if ns else [])
        rt = stack.enter_context(Runtime(store=":memory:", tools=[add], tool_server=config))
        # openai calls the model from this process: a fake server in this namespace.
        local = stack.enter_context(FakeModelServer(reply="ok"))
        measure("openai", rt, local, {"base_url": local.url + "/v1", "model": "fake"})
        try:
            ensure_installed(("claude", "codex"))
        except Exception as exc:
            print(f"# the CLIs are not installed ({exc}); claude and codex skipped")
            return
        for backend in ("claude", "codex"):
            home = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            work = home / "work"
            work.mkdir()
            subprocess.run(["git", "init", "-q", str(work)], check=True)
            options = {
                "env": cli_env(backend, home, server),
                "inherit_env": False,
                "cwd": str(work),
                "command_prefix": ns.prefix() if ns else [],
            }
            measure(backend, rt, server, options)


if __name__ == "__main__":
    main()
