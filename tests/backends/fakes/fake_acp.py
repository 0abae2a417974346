#!/usr/bin/env python3
"""A small ACP agent (JSON-RPC 2.0 over stdio) that misbehaves on demand.

``FAKE_MODE`` picks the fault; every line it receives is appended to
``$FAKE_LOG``; conversations are kept in ``$FAKE_STATE`` (a JSON file) so a new
process can ``session/load`` them. A prompt is answered ``echo: <text>
(turn N)``, N counting the turns of the conversation, loaded ones included.

Modes:

- ``ok``: a well-behaved agent (modes ``default``/``yolo``, models ``m1``/``m2``);
- ``malformed``: a prompt gets one chunk, then a line that is not JSON;
- ``invalid_rpc``: a prompt gets one chunk, then ``{"method": 12}``;
- ``unknown``: before answering a prompt it sends an unknown notification, an
  unknown ``session/update`` kind, a response to an id nobody used, and an
  ``fs/read_text_file`` request whose id equals the client's prompt id; it
  waits for the client's answer to that request before it goes on;
- ``exit_in_initialize``: exits with status 3 when asked to initialize;
- ``prompt_error``: the first prompt is answered with a JSON-RPC error;
- ``permission``: a prompt announces a tool call, asks permission, and
  reports the chosen option (a ``cancelled`` answer ends the turn cancelled);
- ``hang``: a prompt is answered only after ``session/cancel``.

With ``$FAKE_ONCE`` (a path), a fault happens once: the fake creates that file
when it misbehaves and behaves well while it exists.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from typing import Any

OUT = sys.stdout.buffer
MODE = os.environ.get("FAKE_MODE", "ok")
LOG = os.environ.get("FAKE_LOG")
STATE = os.environ.get("FAKE_STATE")
ONCE = os.environ.get("FAKE_ONCE")
MODES = {
    "availableModes": [
        {"id": "default", "name": "Default"},
        {"id": "yolo", "name": "YOLO"},
    ],
    "currentModeId": "default",
}
MODELS = {
    "availableModels": [{"modelId": "m1", "name": "M1"}, {"modelId": "m2", "name": "M2"}],
    "currentModelId": "m1",
}


def emit(obj: object) -> None:
    OUT.write(json.dumps(obj).encode() + b"\n")
    OUT.flush()


def result(msg_id: Any, value: Any) -> None:
    emit({"jsonrpc": "2.0", "id": msg_id, "result": value})


def update(session: str, body: dict[str, Any]) -> None:
    emit(
        {
            "jsonrpc": "2.0",
            "method": "session/update",
            "params": {"sessionId": session, "update": body},
        }
    )


def chunk(session: str, text: str) -> None:
    update(
        session, {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": text}}
    )


def log(obj: object) -> None:
    if LOG:
        with open(LOG, "a") as fh:
            fh.write(json.dumps(obj) + "\n")


def load_state() -> dict[str, list[str]]:
    if not STATE or not os.path.exists(STATE):
        return {}
    with open(STATE) as fh:
        data: dict[str, list[str]] = json.load(fh)
    return data


def save_state(state: dict[str, list[str]]) -> None:
    if STATE:
        with open(STATE, "w") as fh:
            json.dump(state, fh)


def read() -> dict[str, Any] | None:
    line = sys.stdin.buffer.readline()
    if not line:
        return None
    msg: dict[str, Any] = json.loads(line)
    log(msg)
    return msg


def main() -> int:
    state = load_state()
    prompts = 0
    while (msg := read()) is not None:
        method = msg.get("method")
        params = msg.get("params") or {}
        if method == "initialize":
            if MODE == "exit_in_initialize":
                sys.stderr.write("fake_acp: cannot initialize\n")
                return 3
            result(
                msg["id"],
                {
                    "protocolVersion": 1,
                    "agentInfo": {"name": "fake-acp", "version": "0.0.1"},
                    "agentCapabilities": {"loadSession": True},
                    "authMethods": [{"id": "fake-key", "name": "Fake key"}],
                },
            )
        elif method == "authenticate":
            result(msg["id"], {})
        elif method == "session/new":
            session = str(uuid.uuid4())
            state[session] = []
            save_state(state)
            result(msg["id"], {"sessionId": session, "modes": MODES, "models": MODELS})
        elif method == "session/load":
            session = params["sessionId"]
            if session not in state:
                emit(
                    {
                        "jsonrpc": "2.0",
                        "id": msg["id"],
                        "error": {"code": -32002, "message": f"no session {session}"},
                    }
                )
                continue
            for text in state[session]:  # replayed, as real agents do
                update(
                    session,
                    {
                        "sessionUpdate": "user_message_chunk",
                        "content": {"type": "text", "text": text},
                    },
                )
            result(msg["id"], {"modes": MODES, "models": MODELS})
        elif method in ("session/set_mode", "session/set_model"):
            result(msg["id"], {})
        elif method == "session/prompt":
            prompts += 1
            session = params["sessionId"]
            text = params["prompt"][0]["text"]
            state.setdefault(session, []).append(text)
            save_state(state)
            if not prompt(msg, session, text, len(state[session]), prompts):
                return 0
        elif method == "session/cancel":
            pass  # nothing runs between turns
        elif "id" in msg and method is not None:
            emit(
                {
                    "jsonrpc": "2.0",
                    "id": msg["id"],
                    "error": {"code": -32601, "message": f"Method not found: {method}"},
                }
            )
    return 0


def faulted_before() -> bool:
    """With FAKE_ONCE: whether the one fault happened already (and mark it as happening)."""
    if not ONCE:
        return False
    if os.path.exists(ONCE):
        return True
    open(ONCE, "w").close()
    return False


def prompt(msg: dict[str, Any], session: str, text: str, turn: int, prompts: int) -> bool:
    """Answer one prompt; False when the agent should exit."""
    mode = MODE
    if mode in ("malformed", "invalid_rpc", "hang") and faulted_before():
        mode = "ok"
    if mode == "malformed":
        chunk(session, "half an answer")
        OUT.write(b"{this is not json\n")
        OUT.flush()
        return True
    if mode == "invalid_rpc":
        chunk(session, "half an answer")
        emit({"jsonrpc": "2.0", "method": 12})
        return True
    if MODE == "prompt_error" and prompts == 1:
        emit(
            {
                "jsonrpc": "2.0",
                "id": msg["id"],
                "error": {"code": -32603, "message": "model exploded", "data": {"why": "test"}},
            }
        )
        return True
    if MODE == "unknown":
        emit({"jsonrpc": "2.0", "method": "fake/telemetry", "params": {"x": 1}})
        update(session, {"sessionUpdate": "brand_new_kind", "whatever": True})
        emit({"jsonrpc": "2.0", "id": 4242, "result": {"nobody": "asked"}})
        # The same id as the client's prompt request: a different id space.
        emit(
            {
                "jsonrpc": "2.0",
                "id": msg["id"],
                "method": "fs/read_text_file",
                "params": {"sessionId": session, "path": "/etc/passwd"},
            }
        )
        answer = read()
        if answer is None:
            return False
    if mode == "hang":
        while (nxt := read()) is not None:
            if nxt.get("method") == "session/cancel":
                result(msg["id"], {"stopReason": "cancelled"})
                return True
        return False
    if MODE == "permission":
        call_id = f"call_{turn}"
        update(
            session,
            {
                "sessionUpdate": "tool_call",
                "toolCallId": call_id,
                "title": "touch it",
                "kind": "execute",
                "status": "pending",
                "rawInput": {"command": "touch it"},
            },
        )
        emit(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "session/request_permission",
                "params": {
                    "sessionId": session,
                    "toolCall": {"toolCallId": call_id, "rawInput": {"command": "touch it"}},
                    "options": [
                        {"optionId": "proceed_once", "kind": "allow_once", "name": "Allow"},
                        {"optionId": "proceed_always", "kind": "allow_always", "name": "Always"},
                        {"optionId": "cancel", "kind": "reject_once", "name": "Reject"},
                    ],
                },
            }
        )
        # Wait for the answer to our request 0 (a session/cancel may come first).
        cancelled = False
        while (nxt := read()) is not None:
            if nxt.get("method") == "session/cancel":
                cancelled = True
                continue
            if "method" not in nxt and nxt.get("id") == 0:
                break
        else:
            return False
        outcome = nxt.get("result", {}).get("outcome", {})
        if cancelled or outcome.get("outcome") == "cancelled":
            result(msg["id"], {"stopReason": "cancelled"})
            return True
        chosen = outcome.get("optionId")
        status = "completed" if chosen in ("proceed_once", "proceed_always") else "failed"
        update(
            session,
            {
                "sessionUpdate": "tool_call_update",
                "toolCallId": call_id,
                "status": status,
                "content": [{"type": "content", "content": {"type": "text", "text": chosen}}],
            },
        )
        chunk(session, f"option {chosen}")
        result(msg["id"], {"stopReason": "end_turn"})
        return True
    update(
        session, {"sessionUpdate": "agent_thought_chunk", "content": {"type": "text", "text": "hm"}}
    )
    chunk(session, "echo: ")
    chunk(session, f"{text} (turn {turn})")
    update(
        session,
        {"sessionUpdate": "plan", "entries": [{"content": "say it", "status": "completed"}]},
    )
    result(msg["id"], {"stopReason": "end_turn", "usage": {"inputTokens": 5, "outputTokens": 2}})
    return True


if __name__ == "__main__":
    sys.exit(main())
