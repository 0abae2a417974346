"""``gated``: the local backend with a handshake the test holds, or fails once.

Its agent is strict like Codex's app-server: a control request that comes
before its handshake is answered with an error, so a test sees whether the
session held the request back until it was ready.
"""

from __future__ import annotations

import threading
from typing import Any

from beamagent.backends.base import InProcessTransport, Transport
from beamagent.backends.jsonl import decode_lines, encode_line
from beamagent.backends.local import LocalAgent, LocalHandler

WAIT = 10.0


class Gate:
    """Holds the gated agent's handshake (``hold``) or fails it once (``fail_once``)."""

    def __init__(self) -> None:
        self.hold = False
        self.fail_once = False
        self.reached = threading.Event()
        self.release = threading.Event()


class GatedAgent(LocalAgent):
    """A local agent whose answer to ``initialize`` the test controls."""

    def __init__(self, gate: Gate, **options: Any) -> None:
        super().__init__(**options)
        self.gate = gate
        self.initialized = False
        self._waiter: threading.Thread | None = None

    def receive(self, data: bytes) -> None:
        for line in decode_lines(data).objects:
            self._receive_line(line)

    def _receive_line(self, line: dict[str, Any]) -> None:
        kind = line.get("type")
        if kind == "control" and not self.initialized:
            self._emit(
                encode_line(
                    {
                        "type": "control_response",
                        "response": {
                            "subtype": "error",
                            "request_id": line.get("request_id"),
                            "error": "not initialized",
                        },
                    }
                )
            )
        elif kind != "initialize":
            LocalAgent.receive(self, encode_line(line))
        elif self.gate.fail_once:
            self.gate.fail_once = False
            self._exit(3)
        elif self.gate.hold:

            def answer_later() -> None:
                if self.gate.release.wait(WAIT) and not self._closed:
                    self._initialize(line)

            waiter = threading.Thread(target=answer_later, name="gated-init")
            waiter.start()
            self._waiter = waiter
            # Last: the test kills the session as soon as it sees this, and a kill that
            # landed before the waiter started would leave close() one it cannot join.
            self.gate.reached.set()
        else:
            self._initialize(line)

    def _initialize(self, line: dict[str, Any]) -> None:
        self.initialized = True
        LocalAgent.receive(self, encode_line(line))

    def close(self) -> None:
        super().close()
        if self._waiter is not None:
            self.gate.release.set()
            self._waiter.join(WAIT)


class GatedLocal(LocalHandler):
    """``local`` with a :class:`Gate` (option ``gate``) on its handshake."""

    @classmethod
    def option_names(cls) -> frozenset[str]:
        return super().option_names() | {"gate"}

    def open_transport(self) -> Transport:
        agent = GatedAgent(
            self.options["gate"],
            native_session_id=self.native_session_id,
            model=self.model or "local-echo",
            cwd=None,
            permission_mode=self.permission_mode,
        )
        return InProcessTransport(agent)
