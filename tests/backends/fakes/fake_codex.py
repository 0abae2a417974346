#!/usr/bin/env python3
"""A fake ``codex app-server`` whose request ids collide with the client's, amid noise.

Both sides number requests from 0. Before it answers ``initialize`` (our id 0)
this fake sends its own request with id 0 (an approval) and waits for the
answer; then it answers initialize. Noise and invalid JSON-RPC messages are
mixed in everywhere. Every line it receives is appended to $FAKE_LOG.
"""

from __future__ import annotations

import json
import os
import sys

OUT = sys.stdout.buffer
LOG = os.environ.get("FAKE_LOG")

NOISE = [
    b"2026-01-01T00:00:00Z WARN codex: this is a log line on stdout\n",
    b"{not json}\n",
    b'{"id": true, "result": {}}\n',
    b'{"result": {"orphan": 1}}\n',
    b'{"id": 999, "result": {"nobody": "asked"}}\n',
    b'{"method": 12}\n',
]


def emit(obj: object) -> None:
    OUT.write(json.dumps(obj).encode() + b"\n")
    OUT.flush()


def noise() -> None:
    OUT.write(b"".join(NOISE))
    OUT.flush()


def log(obj: object) -> None:
    if LOG:
        with open(LOG, "a") as fh:
            fh.write(json.dumps(obj) + "\n")


def main() -> int:
    thread = "thread-fake-1"
    waiting_init: int | None = None
    for line in sys.stdin.buffer:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        log(msg)
        method = msg.get("method")
        if method == "initialize":
            waiting_init = msg["id"]
            noise()
            emit(
                {
                    "id": 0,
                    "method": "item/commandExecution/requestApproval",
                    "params": {
                        "threadId": thread,
                        "turnId": "t0",
                        "itemId": "call_0",
                        "command": "rm -rf /",
                        "cwd": "/",
                    },
                }
            )
        elif method is None and msg.get("id") == 0 and waiting_init is not None:
            # The client's answer to our request 0; only now answer its request 0.
            noise()
            emit(
                {
                    "id": waiting_init,
                    "result": {"userAgent": "fake/0", "codexHome": "/tmp", "platformOs": "linux"},
                }
            )
            waiting_init = None
        elif method == "thread/start":
            emit({"id": msg["id"], "result": {"thread": {"id": thread, "model": "fake-model"}}})
        elif method == "turn/start":
            text = msg["params"]["input"][0]["text"]
            turn = {"id": "turn-1", "status": "inProgress", "items": []}
            emit({"id": msg["id"], "result": {"turn": turn}})
            noise()
            emit({"method": "turn/started", "params": {"threadId": thread, "turn": turn}})
            item = {"type": "agentMessage", "id": "item-1", "text": f"echo: {text}"}
            emit({"method": "item/completed", "params": {"threadId": thread, "item": item}})
            noise()
            done = {"id": "turn-1", "status": "completed", "items": [], "durationMs": 5}
            emit({"method": "turn/completed", "params": {"threadId": thread, "turn": done}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
