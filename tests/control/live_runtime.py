"""A runtime for ``beamagent top`` to look at from another process.

``python live_runtime.py SOCKET STORE``: starts a runtime with a control socket,
two ``local`` sessions (one restarted once after its agent died) and a run
whose node waits; prints ``ready`` once all that is so, then holds it until
its stdin closes, and stops cleanly.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any

from beamagent.backends.local import LocalExit
from beamagent.errors import BeamAgentError
from beamagent.graph import EventKind, Job, Node, SessionServing
from beamagent.runtime import Runtime

gate = threading.Event()


def waiting_reply(prompt: str, params: Any) -> str:
    gate.wait(60)
    return '{"body": "drafted", "outputs": {}, "next": [], "tool_calls": []}'


def crash_once() -> Any:
    crashed = threading.Event()

    def reply(prompt: str, params: Any) -> Any:
        if not crashed.is_set():
            crashed.set()
            return [LocalExit(137)]
        return prompt

    return reply


def main() -> None:
    socket_path, store = sys.argv[1], sys.argv[2]
    with Runtime(store=store, control_socket=socket_path, handle_signals=False) as runtime:
        runtime.start_session("local", model="model-alpha", session_id="alpha")
        beta = runtime.start_session(
            "local", model="model-beta", session_id="beta", reply=crash_once(), error_linger=0
        )
        with contextlib.suppress(BeamAgentError):  # its agent dies mid-answer
            beta.query("die")
        assert beta.session_info()["incarnation"] == 2  # waits for the restart
        serving = SessionServing(
            "Draft: {input}", backend="local", session_options={"reply": waiting_reply}
        )
        run = runtime.run_job(
            Job("drafting", [Node("draft", serving=serving)], start="draft"), "hi", "run-1"
        )
        for event in run.events(timeout=30):
            if event.kind is EventKind.NODE_STARTED:
                break
        print("ready", flush=True)
        sys.stdin.read()
        gate.set()
        run.result(30, raise_error=False)


if __name__ == "__main__":
    main()
