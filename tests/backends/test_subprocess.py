"""``SubprocessTransport`` on its own: the launched process is watched, its whole group ended.

The fake launcher runs ``fake_claude.py`` as a child that inherits stdout,
as Codex's npm launcher runs the native binary.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from beamagent.backends.base import Connected, Data, Exited, SubprocessTransport, TransportEvent
from beamagent.errors import TransportError
from tests.backends.conftest import group_members

FAKES = Path(__file__).parent / "fakes"
WAIT = 10.0
INITIALIZE = (
    json.dumps(
        {"type": "control_request", "request_id": "init", "request": {"subtype": "initialize"}}
    ).encode()
    + b"\n"
)


class Events:
    """A transport sink that queues events for the test to wait on."""

    def __init__(self) -> None:
        self.queue: queue.Queue[TransportEvent] = queue.Queue()

    def __call__(self, event: TransportEvent) -> None:
        self.queue.put(event)

    def next(self) -> TransportEvent:
        return self.queue.get(timeout=WAIT)

    def line(self) -> bytes:
        """Data until a chunk ends a line (one line may come in pieces, or several at once)."""
        data = b""
        while not data.endswith(b"\n"):
            event = self.next()
            assert isinstance(event, Data), event
            data += event.data
        return data

    def exited(self) -> tuple[list[bytes], Exited]:
        """The data still to come, and the final ``Exited``."""
        data = []
        while True:
            event = self.next()
            if isinstance(event, Exited):
                return data, event
            assert isinstance(event, Data), event
            data.append(event.data)


@pytest.fixture
def transports() -> Iterator[list[SubprocessTransport]]:
    """Transports to close at the end whatever happened (close is idempotent)."""
    made: list[SubprocessTransport] = []
    yield made
    for transport in made:
        transport.close()


def start(
    made: list[SubprocessTransport], script: str, kill_timeout: float = 3.0, **env: str
) -> tuple[SubprocessTransport, Events]:
    transport = SubprocessTransport(
        [sys.executable, str(FAKES / script)],
        env={**os.environ, **env},
        kill_timeout=kill_timeout,
    )
    made.append(transport)
    events = Events()
    transport.start(events)
    connected = events.next()
    assert isinstance(connected, Connected)
    assert connected.info["pid"] == transport.pid
    return transport, events


def test_the_launchers_exit_is_seen_though_its_child_holds_stdout(
    transports: list[SubprocessTransport],
) -> None:
    transport, events = start(transports, "fake_launcher.py", FAKE_MODE="echo")
    transport.send(INITIALIZE)
    assert json.loads(events.line())["type"] == "control_response"  # the child answered
    launcher = transport.pid
    assert launcher is not None
    [child] = [pid for pid in group_members(launcher) if pid != launcher]

    os.kill(launcher, signal.SIGKILL)

    _data, exited = events.exited()
    assert exited.status == -signal.SIGKILL
    assert child not in group_members(launcher)  # the child went with it
    assert group_members(launcher) == []
    with pytest.raises(TransportError, match="not running"):
        transport.send(INITIALIZE)
    transport.close()


def test_close_ends_the_whole_group_even_when_it_ignores_sigterm(
    transports: list[SubprocessTransport],
) -> None:
    transport, events = start(
        transports,
        "fake_launcher.py",
        kill_timeout=0.2,
        FAKE_MODE="echo",
        FAKE_IGNORE_TERM="1",
        FAKE_LINGER="1",
    )
    transport.send(INITIALIZE)
    events.line()
    launcher = transport.pid
    assert launcher is not None
    assert len(group_members(launcher)) == 2

    started = time.monotonic()
    transport.close()

    # EOF (ignored), SIGTERM (the launcher dies, its child ignores it), then SIGKILL.
    assert time.monotonic() - started < 0.2 * 6
    assert group_members(launcher) == []
    _data, exited = events.exited()
    assert exited.status == -signal.SIGTERM


def test_output_before_an_exit_is_delivered_before_the_exit(
    transports: list[SubprocessTransport],
) -> None:
    transport, events = start(transports, "fake_claude.py", FAKE_MODE="die")
    transport.send(INITIALIZE)
    events.line()
    transport.send(b'{"type":"user","message":{"role":"user","content":"hi"}}\n')

    data, exited = events.exited()

    assert json.loads(b"".join(data))["subtype"] == "init"
    assert exited.status == 5
    assert "segfault in the middle of a turn" in exited.stderr_tail


def test_a_cli_that_closes_stdout_but_lives_on_is_ended(
    transports: list[SubprocessTransport],
) -> None:
    transport, events = start(
        transports, "fake_claude.py", kill_timeout=0.2, FAKE_MODE="close_stdout"
    )
    transport.send(INITIALIZE)
    events.line()

    _data, exited = events.exited()

    assert exited.status == -signal.SIGTERM
    assert transport.pid is not None
    assert group_members(transport.pid) == []


def test_stderr_is_drained_and_only_its_tail_kept(transports: list[SubprocessTransport]) -> None:
    transport, events = start(
        transports, "fake_claude.py", FAKE_MODE="stderr_flood", FAKE_SIZE=str(8 * 1024 * 1024)
    )
    transport.send(INITIALIZE)
    events.line()
    user = b'{"type":"user","message":{"role":"user","content":"hi"}}\n'
    transport.send(user)  # flooded, then answered: the CLI was never blocked on stderr
    assert json.loads(events.line().split(b"\n")[0])["type"] == "system"
    transport.send(user)  # flooded, then it exits

    _data, exited = events.exited()

    assert exited.status == 4
    assert len(exited.stderr_tail) <= SubprocessTransport.STDERR_TAIL
    assert exited.stderr_tail.endswith("fake claude: the last words after the flood\n")
