"""Routing across the real CLI backends: every registered CLI, the pinned binaries, one fake model.

Each CLI gets its own HOME (their state must not mix) and runs in the loopback-only
sandbox; the runtime enables them with default options, so routing starts them
exactly as it would in production: no per-session options.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from beamagent import Runtime
from beamagent.testing import FakeModelServer, LoopbackNamespace, cli_env, ensure_installed
from tests._clis import skip_without_clis
from tests.backends.conftest import prefix, watch_incarnation

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # may install the CLIs first
WAIT = 60.0

#: The five CLI backends, in the default preference order.
CLI_BACKENDS = ("claude", "codex", "gemini", "opencode", "copilot")


@pytest.fixture
def routed(
    tmp_path: Path, server: FakeModelServer, sandbox: LoopbackNamespace | None
) -> Iterator[Runtime]:
    """A runtime with every CLI backend enabled for routing, each configured for the fake."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        skip_without_clis("node and npm are needed to install and run the agent CLIs")
    ensure_installed(CLI_BACKENDS)
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run(["git", "init", "-q", str(work)], check=True)  # codex needs a repository
    backends: dict[str, Any] = {
        name: {
            "env": cli_env(name, tmp_path / f"home-{name}", server),
            "inherit_env": False,
            # opencode is a server this process must reach: it runs behind the forwarder.
            "command_prefix": (
                sandbox.server_prefix() if name == "opencode" and sandbox else prefix(sandbox)
            ),
            "cwd": str(work),
        }
        for name in CLI_BACKENDS
    }
    with Runtime(store=":memory:", backends=backends) as rt:
        yield rt


def test_every_cli_backend_is_routable(routed: Runtime) -> None:
    assert len(CLI_BACKENDS) >= 2
    assert routed.routable_backends() == list(CLI_BACKENDS)
    availability = routed.backend_availability()
    assert all(availability[name][0] for name in CLI_BACKENDS), availability


def test_round_robin_starts_each_cli_in_turn_and_each_answers(routed: Runtime) -> None:
    sessions = [routed.start_session(routing={"policy": "round_robin"}) for _ in CLI_BACKENDS]
    assert [s.backend() for s in sessions] == list(CLI_BACKENDS)
    for session in sessions:
        answer = session.query("ECHO:routed", timeout=WAIT)[-1]
        assert answer.type == "result", (session.backend(), answer)
        assert not answer.is_error, (session.backend(), answer)
        decision = session.session_info()["route_decision"]
        assert decision["policy"] == "round_robin"
        session.stop()


def test_failover_moves_a_session_off_a_backend_whose_process_died(routed: Runtime) -> None:
    first = routed.start_session(routing={"policy": "round_robin"})
    dead = first.backend()
    first.query("ECHO:before", timeout=WAIT)
    watch = watch_incarnation(routed, first)
    os.killpg(first.session_info()["pid"], signal.SIGKILL)  # the CLI and its children
    assert watch.wait(WAIT), "the session did not notice its CLI died"
    decision = routed.select_backend(first, {"policy": "failover"})
    assert decision.backend != dead, decision
    moved = routed.start_session(routing={"policy": "failover", "last_backend": dead})
    assert moved.backend() not in (dead,)
    answer = moved.query("ECHO:after", timeout=WAIT)[-1]
    assert not answer.is_error, answer
    # The session on the dead backend was restarted by its supervisor and answers again.
    again = first.query("ECHO:again", timeout=WAIT)[-1]
    assert again.type == "result", again
    assert not again.is_error, again
    assert first.session_info()["incarnation"] == 2
