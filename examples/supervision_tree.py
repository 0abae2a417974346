"""A supervision tree that survives crashes, using only the `supervisors` package.

Run: .venv/bin/python examples/supervision_tree.py
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import supervisors as s

started = threading.Condition()
starts: list[str] = []


class Counter(s.Process):
    """Counts pings; a 'crash' message makes it fail like buggy code would."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label
        self.count = 0

    def on_start(self) -> None:
        with started:
            starts.append(self.label)
            started.notify_all()

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError(f"{self.label}: simulated bug")
        self.count += 1
        return f"{self.label} pong #{self.count}"


def wait_for_starts(label: str, n: int) -> None:
    with started:
        if not started.wait_for(lambda: starts.count(label) >= n, timeout=5):
            raise RuntimeError(f"{label} was not restarted")


def main() -> None:
    logging.getLogger("supervisors").setLevel(logging.CRITICAL)
    workers = s.supervisor_spec(
        "workers",
        [
            s.ChildSpec("db", (Counter, ("db",), {}), name="db"),
            s.ChildSpec("api", (Counter, ("api",), {}), name="api"),
        ],
        strategy="rest_for_one",
    )
    root = s.Supervisor.start(
        children=[s.ChildSpec("cache", (Counter, ("cache",), {}), name="cache"), workers]
    )
    print("== a supervision tree\n" + s.format_tree(s.tree(root)))

    api = s.whereis("api")
    assert api is not None
    print("\napi answers:", api.ask("ping"), "/", api.ask("ping"))
    print("crashing api ...")
    api.tell("crash")
    wait_for_starts("api", 2)
    print("api restarted, state is fresh:", s.whereis("api").ask("ping"))  # type: ignore[union-attr]

    print("crashing db (rest_for_one: api restarts too) ...")
    s.whereis("db").tell("crash")  # type: ignore[union-attr]
    wait_for_starts("api", 3)
    print("\n== after two crashes\n" + s.format_tree(s.tree(root)))
    root.stop()
    print("\nstopped in reverse start order; live actors left:", len(s.registered()))


if __name__ == "__main__":
    main()
