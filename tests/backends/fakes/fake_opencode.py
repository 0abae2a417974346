#!/usr/bin/env python3
"""A fake ``opencode serve``: just enough of OpenCode's HTTP + SSE API to break it on purpose.

Run as the backend's CLI (``cli_path``): it listens on a free loopback port
and prints the announcement OpenCode prints (and its pid to ``$FAKE_PID_FILE``).
``FAKE_OPENCODE_MODE=never_healthy`` makes ``GET /global/health`` answer 503
for ever; ``exit`` makes it fail at start. Otherwise a prompt's text picks the
turn it gets:

* ``CUT``: the event stream sends half an event and ends;
* ``MALFORMED``: an event whose data is not JSON, then a normal turn;
* ``UNKNOWN``: an event of a type OpenCode never sends, then a normal turn;
* anything else: a normal turn whose reply is the prompt's text.

Every request is appended to ``$FAKE_LOG`` (one JSON line each) when set.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODE = os.environ.get("FAKE_OPENCODE_MODE", "")
LOG = os.environ.get("FAKE_LOG")
SESSION = "ses_fake0001"
_ids = itertools.count(1)
_lock = threading.Lock()
_streams: list[queue.Queue[bytes | None]] = []


def broadcast(data: bytes | None) -> None:
    with _lock:
        for stream in _streams:
            stream.put(data)


def event(kind: str, **properties: Any) -> bytes:
    return f"data: {json.dumps({'type': kind, 'properties': properties})}\n\n".encode()


def new_id(prefix: str) -> str:
    return f"{prefix}_fake{next(_ids):06d}"


def turn(text: str) -> None:
    user, assistant, part = new_id("msg"), new_id("msg"), new_id("prt")
    if text == "CUT":
        broadcast(b'data: {"type": "message.part.updated", "properties": {"sessionID": "')
        broadcast(SESSION.encode() + b'", "part": {"type": "te')
        broadcast(None)  # end the stream right there
        return
    if text == "MALFORMED":
        broadcast(b'data: {"sessionID": "' + SESSION.encode() + b'", this is not json\n\n')
    if text == "UNKNOWN":
        broadcast(event("session.brand_new_thing", sessionID=SESSION, detail=42))
    broadcast(event("message.updated", sessionID=SESSION, info={"id": user, "role": "user"}))
    broadcast(event("session.status", sessionID=SESSION, status={"type": "busy"}))
    info = {"id": assistant, "role": "assistant", "parentID": user, "time": {"created": 1}}
    broadcast(event("message.updated", sessionID=SESSION, info=info))
    done = {"id": part, "messageID": assistant, "sessionID": SESSION, "type": "text"}
    broadcast(event("message.part.updated", sessionID=SESSION, part={**done, "text": ""}))
    broadcast(
        event(
            "message.part.delta",
            sessionID=SESSION,
            messageID=assistant,
            partID=part,
            field="text",
            delta=text,
        )
    )
    done["text"], done["time"] = text, {"start": 1, "end": 2}
    broadcast(event("message.part.updated", sessionID=SESSION, part=done))
    info = {
        **info,
        "time": {"created": 1, "completed": 2},
        "finish": "stop",
        "tokens": {"input": 3, "output": 1, "reasoning": 0, "cache": {"read": 0, "write": 0}},
    }
    broadcast(event("message.updated", sessionID=SESSION, info=info))
    broadcast(event("session.idle", sessionID=SESSION))


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _log(self, body: Any) -> None:
        if LOG:
            with _lock, open(LOG, "a") as fh:
                fh.write(json.dumps({"method": self.command, "path": self.path, "body": body}))
                fh.write("\n")

    def do_GET(self) -> None:
        self._log(None)
        path = self.path.split("?")[0]
        if path == "/global/health":
            if MODE == "never_healthy":
                self._json(503, {"healthy": False})
            else:
                self._json(200, {"healthy": True, "version": "0.0.0-fake"})
        elif path == "/event":
            self._events()
        elif path == f"/session/{SESSION}":
            self._json(200, {"id": SESSION, "directory": os.getcwd()})
        else:
            self._json(404, {"name": "NotFoundError", "data": {"message": f"no {path}"}})

    def _events(self) -> None:
        stream: queue.Queue[bytes | None] = queue.Queue()
        with _lock:
            _streams.append(stream)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        try:
            self.wfile.write(event("server.connected"))
            self.wfile.flush()
            while (data := stream.get()) is not None:
                self.wfile.write(data)
                self.wfile.flush()
        except OSError:
            pass
        finally:
            with _lock:
                _streams.remove(stream)

    def do_POST(self) -> None:
        body = self._body()
        self._log(body)
        path = self.path.split("?")[0]
        if path == "/session":
            self._json(200, {"id": SESSION, "directory": os.getcwd(), "title": "fake"})
        elif path == f"/session/{SESSION}/prompt_async":
            self.send_response(204)
            self.end_headers()
            text = "".join(p.get("text", "") for p in body.get("parts", []))
            threading.Thread(target=turn, args=(text,), daemon=True).start()
        elif path == f"/session/{SESSION}/abort":
            self._json(200, True)
        else:
            self._json(404, {"name": "NotFoundError", "data": {"message": f"no {path}"}})


def main() -> int:
    if os.environ.get("FAKE_PID_FILE"):
        with open(os.environ["FAKE_PID_FILE"], "w") as fh:
            fh.write(str(os.getpid()))
    if MODE == "exit":
        print("Error: the fake cannot start (as asked)", file=sys.stderr, flush=True)
        return 3
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print("Warning: OPENCODE_SERVER_PASSWORD is not set; server is unsecured.", flush=True)
    print(f"opencode server listening on http://127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
