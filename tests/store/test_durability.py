"""A process recording through a Runtime is SIGKILLed mid-stream; nothing acknowledged is lost.

The child (``_durability_child.py``) runs queries on a local session and prints an
acknowledgement each time ``query`` or ``receive_message`` returned. The parent kills it
with SIGKILL while it is still recording, reaps it, and checks the file: every
acknowledged message is there, in order, the database is intact, and the store and the
session go on working.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from beamagent import MessageType, Runtime

CHILD = Path(__file__).with_name("_durability_child.py")
REPO = Path(__file__).resolve().parents[2]
SESSION = "durable"


def read_acks(child: subprocess.Popen[str], wanted: int, timeout: float) -> list[dict[str, Any]]:
    """Acknowledgements from the child until ``wanted`` arrived (fails on timeout/early exit).

    Reads the pipe's file descriptor a byte at a time and never through ``child.stdout``:
    a buffered ``readline`` reads ahead past the line it returns, and ``communicate`` in
    ``kill_and_reap`` reads the descriptor, not that buffer, so the lines read ahead were
    lost and the first line it saw was the tail of one. Unbuffered, every byte not taken
    here is still in the pipe, and ``select`` tells the truth about it.
    """
    assert child.stdout is not None
    fd = child.stdout.fileno()
    acks: list[dict[str, Any]] = []
    line = bytearray()
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while len(acks) < wanted:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"the child acknowledged only {len(acks)} of {wanted} in {timeout} s")
            if not selector.select(left):
                continue
            byte = os.read(fd, 1)
            if not byte:
                pytest.fail(f"the child exited early (status {child.wait(5)})")
            if byte != b"\n":
                line += byte
                continue
            acks.append(json.loads(line))
            line.clear()
    return acks


def kill_and_reap(child: subprocess.Popen[str]) -> list[dict[str, Any]]:
    """SIGKILL the child (if it still runs), reap it, and return the acks left in the pipe."""
    if child.poll() is None:
        os.kill(child.pid, signal.SIGKILL)
    rest, _ = child.communicate(timeout=30)
    # A line cut by the kill was never acknowledged: keep complete lines only.
    acks = []
    for line in rest.split("\n")[:-1]:
        try:
            acks.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"the child wrote a line that is no acknowledgement: {line!r}")
    return acks


@pytest.mark.parametrize("kill_after", [7, 40])
def test_acknowledged_messages_survive_sigkill_of_the_runtime(
    tmp_path: Path, kill_after: int
) -> None:
    path = tmp_path / "sessions.db"
    stderr = (tmp_path / "child.stderr").open("w")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(path), SESSION],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
    )
    try:
        acks = read_acks(child, kill_after + 1, timeout=60)
    finally:
        tail = kill_and_reap(child)
        stderr.close()
    assert child.returncode == -signal.SIGKILL  # killed mid-stream, not ended on its own
    acks += tail
    assert acks[0] == {"ready": True}
    acks = acks[1:]
    assert len(acks) >= kill_after

    # The file is intact (opening it recovers the WAL) ...
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()

    with Runtime(store=path) as rt:
        stored = rt.get_session_messages(SESSION)
        # ... and holds every acknowledged message, in the order it was delivered.
        by_uuid = {m.uuid: i for i, m in enumerate(stored) if m.uuid is not None}
        prompts = {m.content: i for i, m in enumerate(stored) if m.type is MessageType.USER}
        last = -1
        for ack in acks:
            if "query" in ack:
                assert ack["query"] in prompts, f"acknowledged prompt lost: {ack}"
                positions = [prompts[ack["query"]]] + [by_uuid[u] for u in ack["uuids"]]
            else:
                assert ack["received"] in by_uuid, f"acknowledged message lost: {ack}"
                positions = [by_uuid[ack["received"]]]
            assert positions == sorted(positions)
            assert positions[0] > last
            last = positions[-1]
        # Seqs are contiguous: the store's count matches what it returns.
        assert rt.get_session(SESSION).message_count == len(stored)

        # The store keeps working: the session resumes and records more.
        session = rt.start_session(resume=SESSION)
        session.query("after the crash")
        rt.store_write("record_message", SESSION, {"type": "text", "content": "direct"})
        after = rt.get_session_messages(SESSION, offset=len(stored))
        assert [m.type for m in after] == [
            MessageType.USER,
            MessageType.SYSTEM,
            MessageType.ASSISTANT,
            MessageType.RESULT,
            MessageType.TEXT,
        ]
        assert after[0].content == "after the crash"
        assert after[-1].content == "direct"
