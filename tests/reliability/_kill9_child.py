"""Child process of ``test_kill9``: a runtime under write load until it is SIGKILLed.

Usage: ``python _kill9_child.py STORE_PATH ROUND``

It starts three ``local`` sessions and two durable graph runs (ids carry the
round, so rounds never collide), then queries from two threads for ever. On
stdout, one JSON line per acknowledgement, flushed at once:

* ``{"run": RUN_ID}`` once ``run_job`` returned (the run is checkpointed);
* ``{"session": ID, "prompt": PROMPT, "uuids": [...]}`` once ``query`` returned.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from beamagent import Runtime, configure_logging
from beamagent.graph import FunctionServing, Job, LinearRouter, Node

_write = threading.Lock()


def ack(line: dict[str, Any]) -> None:
    """Print one acknowledgement and flush it at once."""
    with _write:
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


def slow_job() -> Job:
    """Five steps that each take a moment, so a kill lands in the middle of the run."""
    names = [f"n{i}" for i in range(5)]
    steps = LinearRouter(names)

    def step(message: Any) -> str:
        threading.Event().wait(0.05)
        return f"{message.node_id} done"

    return Job(
        "kill9", [Node(n, serving=FunctionServing(step), router=steps) for n in names], start="n0"
    )


def main(path: str, round_no: str) -> None:
    """Write until killed."""
    configure_logging("warning", stream=sys.stderr)  # stdout carries the acknowledgements
    with Runtime(store=path) as rt:
        job = slow_job()
        for j in range(2):
            run = rt.run_job(job, f"input {j}", f"r{round_no}-{j}")
            ack({"run": run.run_id})
        ids = [
            rt.start_session(backend="local", session_id=f"s{round_no}-{i}").session_id
            for i in range(3)
        ]

        def load(worker: int) -> None:
            n = 0
            while True:
                n += 1
                session_id = ids[(worker + n) % len(ids)]
                prompt = f"w{worker}-{n}"
                try:
                    messages = rt.session(session_id).query(prompt, timeout=30)
                except Exception:  # a query racing another on the same session
                    continue
                ack({"session": session_id, "prompt": prompt, "uuids": [m.uuid for m in messages]})

        threads = [threading.Thread(target=load, args=(w,), daemon=True) for w in range(2)]
        for thread in threads:
            thread.start()
        threading.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
