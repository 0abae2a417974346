"""Fixtures for the real-backend tests: the pinned CLIs, a loopback sandbox, the fake model.

The CLIs are installed on first use (``make test`` installs them up front).
A test that needs them skips only when node or npm is missing, and fails
instead when ``BEAMAGENT_REQUIRE_CLIS=1`` (``.ci/run`` sets it), so CI can
never pass with the real-CLI tests silently skipped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from beamagent import QueryRef, Runtime, Session
from beamagent.errors import BeamAgentError, SessionError
from beamagent.messages import Message
from beamagent.testing import (
    FakeModelServer,
    LoopbackNamespace,
    ensure_installed,
    loopback_namespace_available,
)
from supervisors import MonitorRef, monitor
from tests._clis import REQUIRE_CLIS, skip_without_clis  # noqa: F401 - used by test modules


@pytest.fixture(scope="session")
def clis() -> dict[str, Path]:
    """The pinned ``claude`` and ``codex`` executables (installed if needed)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        skip_without_clis("node and npm are needed to install and run the agent CLIs")
    return ensure_installed(("claude", "codex"))


@pytest.fixture
def sandbox() -> Iterator[LoopbackNamespace | None]:
    """A loopback-only network namespace where that works here (root), else None."""
    if not loopback_namespace_available():
        yield None
        return
    with LoopbackNamespace() as ns:
        yield ns


@pytest.fixture
def server(sandbox: LoopbackNamespace | None) -> Iterator[FakeModelServer]:
    """The fake model, reachable from inside the sandbox."""
    with FakeModelServer(reply="default reply", netns=sandbox.path if sandbox else None) as srv:
        yield srv


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    """A runtime with an in-memory store; stopping it reaps every CLI process."""
    with Runtime(store=":memory:") as rt:
        yield rt


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The CLI's working directory."""
    path = tmp_path / "work"
    path.mkdir()
    return path


def prefix(sandbox: LoopbackNamespace | None) -> list[str]:
    """argv prefix that runs a CLI inside the sandbox."""
    return sandbox.prefix() if sandbox else []


def of_type(messages: list[Message], kind: str) -> list[Message]:
    """The messages of one canonical type."""
    return [m for m in messages if m.type.value == kind]


def watch_incarnation(runtime: Runtime, session: Session) -> MonitorRef:
    """Monitor the session's current incarnation: ``.wait()`` returns once it has ended.

    After that, the next call through the handle reaches the incarnation its
    supervisor started in its place (and waits until it is ready).
    """
    return monitor(runtime._session_ref(session.session_id))


def receive_until(
    session: Session, ref: QueryRef, error: type[BeamAgentError] = SessionError
) -> BeamAgentError:
    """Read a query's messages until a call raises ``error``; return it."""
    for _ in range(1000):
        try:
            session.receive_message(ref, timeout=30.0)
        except error as exc:
            return exc
    raise AssertionError(f"the query kept producing messages; no {error.__name__} came")


PermissionCall = tuple[str, dict[str, Any], Any]


def recorder(
    decide: Callable[[str, dict[str, Any], Any], Any],
) -> tuple[list[PermissionCall], Callable[[str, dict[str, Any], Any], Any]]:
    """A permission handler that records its calls and answers with ``decide``."""
    calls: list[PermissionCall] = []

    def handler(tool_name: str, tool_input: dict[str, Any], context: Any) -> Any:
        calls.append((tool_name, tool_input, context))
        return decide(tool_name, tool_input, context)

    return calls, handler


def session_starter(
    runtime: Runtime,
    backend: str,
    env: dict[str, str],
    sandbox: LoopbackNamespace | None,
    work: Path,
) -> Callable[..., Session]:
    """``start(**options)``: a session of a real CLI backend against the fake server."""

    def start_session(**options: Any) -> Session:
        options.setdefault("cwd", str(work))
        return runtime.start_session(
            backend=backend,
            env=env,
            inherit_env=False,
            command_prefix=prefix(sandbox),
            **options,
        )

    return start_session


def group_members(pgid: int) -> list[int]:
    """The live (non-zombie) processes of process group ``pgid``, read from /proc.

    A CLI backend runs in a session of its own, so its pid is its group id;
    the leak check sees only this process's children, this sees grandchildren too.
    """
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue  # gone meanwhile
        # After the parenthesised command name: state, ppid, pgrp.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return sorted(members)
