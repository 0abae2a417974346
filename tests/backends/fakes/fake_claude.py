#!/usr/bin/env python3
"""A fake Claude Code speaking stream-json, misbehaving on purpose.

Usage: FAKE_MODE=<mode> fake_claude.py [the real CLI's flags, ignored].

Modes:
  garbage       answer initialize, then surround every reply with noise lines
  echo          answer initialize and every user turn plainly
  huge          answer each user turn with one assistant line of SIZE bytes ($FAKE_SIZE)
  hang          read stdin, never answer
  hang_turn     answer initialize; start each user turn (system/init) but never end it
                (never answer an interrupt); with $FAKE_HANG_ONCE=<file>, only the first
                one: it creates the file, and later turns, of this process or of the next
                one, are answered plainly
  die           start a turn, then print to stderr and exit with status 5 mid-turn
  stderr_flood  before each turn write $FAKE_SIZE bytes to stderr; answer the first turn,
                exit with status 4 in the second (after a last stderr line)
  drip          answer turns one byte at a time, $FAKE_DRIP_MS (default 2) ms apart
  weird         answer turns with lines Python's json accepts but JSON does not: NaN,
                Infinity, 1e999, lone surrogate escapes; and a line with invalid UTF-8
  close_stdout  answer initialize, then close stdout and live on until stdin closes
  deaf          answer initialize, then never read stdin again (a full pipe blocks a writer)
                and live on until a signal ends it
  not_logged_in answer every turn as the real CLI does without credentials: a result
                "Not logged in · Please run /login" with is_error true, subtype "success"
  exit          print to stderr and exit with status 3 at once

$FAKE_IGNORE_TERM=1: ignore SIGTERM. $FAKE_LINGER=1: do not exit when stdin closes
(with both, only SIGKILL ends it).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

OUT = sys.stdout.buffer
ERR = sys.stderr.buffer


def emit(obj: object) -> None:
    raw(json.dumps(obj).encode() + b"\n")


def raw(data: bytes) -> None:
    if os.environ.get("FAKE_MODE") == "drip":
        delay = float(os.environ.get("FAKE_DRIP_MS", "2")) / 1000
        for byte in data:
            OUT.write(bytes([byte]))
            OUT.flush()
            time.sleep(delay)
        return
    OUT.write(data)
    OUT.flush()


def flood_stderr(size: int) -> None:
    chunk = b"stderr noise " * 5041 + b"\n"  # ~64 KB
    for _ in range(size // len(chunk)):
        ERR.write(chunk)
    ERR.flush()


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


def weird_turn(session: str, text: str) -> None:
    """A turn whose lines carry NaN, infinities, lone surrogates and invalid UTF-8."""
    emit({"type": "system", "subtype": "init", "session_id": session, "cost": float("nan")})
    emit(  # json.dumps writes NaN/Infinity tokens and \\ud800 escapes
        {
            "type": "assistant",
            "session_id": session,
            "message": {
                "content": [{"type": "text", "text": f"lone \ud800 surrogate in {text}"}],
                "usage": {"input_tokens": float("inf")},
            },
        }
    )
    raw(
        b'{"type": "assistant", "session_id": "' + session.encode() + b'", "message": '
        b'{"content": [{"type": "text", "text": "bad \xff\xfe bytes"}]}}\n'
    )
    raw(
        b'{"type": "result", "subtype": "success", "is_error": false, "result": "done \\udc00",'
        b' "duration_ms": NaN, "total_cost_usd": -Infinity, "usage": {"big": 1e999},'
        b' "session_id": "' + session.encode() + b'"}\n'
    )


def main() -> int:
    mode = os.environ.get("FAKE_MODE", "garbage")
    if os.environ.get("FAKE_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "exit":
        sys.stderr.write("fake claude: cannot start, configuration is broken\n")
        return 3
    session = "fake-session-1"
    hang_once = os.environ.get("FAKE_HANG_ONCE")
    turns = 0
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
                if mode == "close_stdout":
                    os.close(1)  # stdout is gone; stdin still reads: the process lives on
                if mode == "deaf":
                    while True:
                        signal.pause()
            continue
        if obj.get("type") == "user":
            content = obj["message"]["content"]
            if isinstance(content, list):  # blocks (a replayed conversation first): the prompt
                texts = [b.get("text") for b in content if isinstance(b, dict) and b.get("text")]
                content = texts[-1] if texts else content
            if mode == "hang_turn" and not (hang_once and os.path.exists(hang_once)):
                if hang_once:
                    open(hang_once, "w").close()
                emit({"type": "system", "subtype": "init", "session_id": session, "tools": []})
                continue  # never ended (control requests such as interrupt are never answered)
            if mode == "die":
                emit({"type": "system", "subtype": "init", "session_id": session, "tools": []})
                sys.stderr.write("fake claude: segfault in the middle of a turn\n")
                sys.stderr.flush()
                return 5
            if mode == "stderr_flood":
                turns += 1
                flood_stderr(int(os.environ.get("FAKE_SIZE", str(16 * 1024 * 1024))))
                if turns > 1:
                    ERR.write(b"fake claude: the last words after the flood\n")
                    return 4
            if mode == "weird":
                weird_turn(session, content)
                continue
            if mode == "not_logged_in":
                emit({"type": "system", "subtype": "init", "session_id": session, "tools": []})
                text = "Not logged in \u00b7 Please run /login"
                emit({"type": "result", "subtype": "success", "is_error": True, "result": text})
                continue
            if mode == "huge":
                size = int(os.environ.get("FAKE_SIZE", str(10 * 1024 * 1024)))
                turn(session, "x" * size, noisy=False)
            else:
                turn(session, f"echo: {content}", noisy=mode == "garbage")
    while os.environ.get("FAKE_LINGER"):
        signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
