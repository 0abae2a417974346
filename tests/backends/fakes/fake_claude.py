#!/usr/bin/env python3
"""A fake Claude Code speaking stream-json, misbehaving on purpose.

Usage: FAKE_MODE=<mode> fake_claude.py [the real CLI's flags, ignored].

Modes:
  garbage  answer initialize, then surround every reply with noise lines
  huge     answer each user turn with one assistant line of SIZE bytes ($FAKE_SIZE)
  hang     read stdin, never answer
  exit     print to stderr and exit with status 3 at once
"""

from __future__ import annotations

import json
import os
import sys

OUT = sys.stdout.buffer


def emit(obj: object) -> None:
    OUT.write(json.dumps(obj).encode() + b"\n")
    OUT.flush()


def raw(data: bytes) -> None:
    OUT.write(data)
    OUT.flush()


NOISE = [
    b"Warning: this is not JSON at all\n",
    b"\x00\xff\xfe binary junk \x80\n",
    b"[1, 2, 3]\n",
    b'"just a string"\n',
    b'{"type": "assistant", "message": {"content": [{"type": "text", "te\n',
    b"   \n",
    b"\xef\xbb\xbf\n",
    b"42\n",
]


def init_response(request_id: str) -> dict:
    return {
        "type": "control_response",
        "response": {
            "subtype": "success",
            "request_id": request_id,
            "response": {
                "commands": [{"name": "fake"}],
                "models": [{"value": "fake-model"}],
                "agents": [],
                "account": {"apiKeySource": "none"},
                "pid": os.getpid(),
            },
        },
    }


def turn(session: str, text: str, noisy: bool) -> None:
    if noisy:
        for line in NOISE:
            raw(line)
    emit({"type": "system", "subtype": "init", "session_id": session, "tools": []})
    if noisy:
        # A valid line split across writes, with garbage around it.
        line = json.dumps(
            {
                "type": "assistant",
                "session_id": session,
                "message": {"role": "assistant", "content": [{"type": "text", "text": text}]},
            }
        ).encode()
        raw(b"noise before\n" + line[:10])  # flushed: the halves may arrive apart
        raw(line[10:] + b"\n" + b"noise after\n")
    else:
        emit(
            {
                "type": "assistant",
                "session_id": session,
                "message": {"role": "assistant", "content": [{"type": "text", "text": text}]},
            }
        )
    emit(
        {
            "type": "result",
            "subtype": "success",
            "is_error": False,
            "result": text[:100],
            "session_id": session,
        }
    )


def main() -> int:
    mode = os.environ.get("FAKE_MODE", "garbage")
    if mode == "exit":
        sys.stderr.write("fake claude: cannot start, configuration is broken\n")
        return 3
    session = "fake-session-1"
    for line in sys.stdin.buffer:
        if mode == "hang":
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get("type") == "control_request":
            if obj["request"].get("subtype") == "initialize":
                if mode == "garbage":
                    raw(NOISE[0])
                emit(init_response(obj["request_id"]))
            continue
        if obj.get("type") == "user":
            content = obj["message"]["content"]
            if mode == "huge":
                size = int(os.environ.get("FAKE_SIZE", str(10 * 1024 * 1024)))
                turn(session, "x" * size, noisy=False)
            else:
                turn(session, f"echo: {content}", noisy=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
