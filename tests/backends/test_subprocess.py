"""``SubprocessTransport`` on its own: the launched process is watched, its whole group ended.

The fake launcher runs ``fake_claude.py`` as a child that inherits stdout,
as Codex's npm launcher runs the native binary. Every transport's pipes and
exit are served by the one shared I/O loop thread.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from beamagent.backends import base
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

    def lines(self, count: int) -> list[bytes]:
        """Data until ``count`` complete lines have come."""
        data = b""
        while data.count(b"\n") < count or not data.endswith(b"\n"):
            data += self.line()
        return data.splitlines()

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


def user_turn(text: str) -> bytes:
    return json.dumps({"type": "user", "message": {"role": "user", "content": text}}).encode() + (
        b"\n"
    )


@pytest.fixture(params=["pidfd", "polling"])
def exit_watch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with each way a process exit is watched: a pidfd, or polling without one."""
    if request.param == "polling":
        monkeypatch.setattr(base, "open_pidfd", lambda pid: None)
    return str(request.param)


@pytest.mark.usefixtures("exit_watch")
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


@pytest.mark.usefixtures("exit_watch")
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


def io_loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "beamagent-io"]


def test_thirty_clis_answer_on_one_shared_thread(transports: list[SubprocessTransport]) -> None:
    threads_before = threading.active_count()
    clis = [start(transports, "fake_claude.py", FAKE_MODE="echo") for _ in range(30)]

    for transport, _events in clis:
        transport.send(INITIALIZE)
    for _transport, events in clis:
        assert json.loads(events.line())["type"] == "control_response"
    for number, (transport, _events) in enumerate(clis):
        transport.send(user_turn(f"turn {number}"))
    for number, (_transport, events) in enumerate(clis):
        assert json.loads(events.lines(3)[-1])["result"] == f"echo: turn {number}"

    # Three threads each before (stdout, stderr, exit): 90 for 30 CLIs. Now the loop's one.
    assert threading.active_count() - threads_before <= 1
    assert len(io_loop_threads()) == 1
    for transport, events in clis:
        transport.close()
        _data, exited = events.exited()
        assert exited.status == 0  # they exit on EOF
        assert transport.pid is not None
        assert group_members(transport.pid) == []


def test_a_cli_that_stops_reading_its_stdin_stalls_no_one(
    transports: list[SubprocessTransport],
) -> None:
    deaf, deaf_events = start(transports, "fake_claude.py", kill_timeout=0.5, FAKE_MODE="deaf")
    deaf.send(INITIALIZE)
    deaf_events.line()  # it answered; now it reads nothing more
    others = [start(transports, "fake_claude.py", FAKE_MODE="echo") for _ in range(3)]
    for transport, events in others:
        transport.send(INITIALIZE)
        events.line()
    # 4 MB is far beyond a pipe's buffer: a blocking write would wait for ever.
    flood = user_turn("x" * (4 * 1024 * 1024))
    sent = threading.Event()

    def send_both() -> None:
        deaf.send(flood)
        deaf.send(user_turn("and more"))  # queued behind it, in order
        sent.set()

    sender = threading.Thread(target=send_both)
    sender.start()
    sender.join(WAIT)

    assert sent.is_set(), "send() blocked on a CLI that does not read its stdin"
    for number, (transport, events) in enumerate(others):  # the loop serves the others
        transport.send(user_turn(f"still here {number}"))
        assert json.loads(events.lines(3)[-1])["result"] == f"echo: still here {number}"
    started = time.monotonic()
    deaf.close()  # EOF cannot reach it; SIGTERM after kill_timeout does
    assert time.monotonic() - started < 0.5 * 4
    _data, exited = deaf_events.exited()
    assert exited.status == -signal.SIGTERM
    assert deaf.pid is not None
    assert group_members(deaf.pid) == []


def test_what_waits_for_a_cli_s_stdin_is_bounded(
    transports: list[SubprocessTransport],
) -> None:
    deaf, events = start(transports, "fake_claude.py", kill_timeout=0.5, FAKE_MODE="deaf")
    deaf.send(INITIALIZE)
    events.line()
    deaf.STDIN_PENDING_MAX = 1024 * 1024

    deaf.send(b"x" * (2 * 1024 * 1024))  # one send may exceed it: nothing waited before
    with pytest.raises(TransportError, match="has not read") as caught:
        deaf.send(b"more\n")

    assert caught.value.reason == "stdin_full"  # type: ignore[attr-defined]
