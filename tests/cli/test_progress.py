"""The live table of ``beamagent run``, rendered by rich's recording console."""

from __future__ import annotations

import io

from rich.console import Console

from beamagent.cli.app import RunProgress
from beamagent.graph.run import EventKind, RunEvent


def render(progress: RunProgress) -> str:
    console = Console(record=True, width=100, file=io.StringIO())
    console.print(progress.table())
    return console.export_text()


def test_the_table_follows_the_visits_per_node_and_thread() -> None:
    progress = RunProgress("fanout", "r1")
    events = [
        RunEvent(EventKind.RUN_STARTED, "r1", "a", "0", 0, {"input": "x"}),
        RunEvent(EventKind.NODE_STARTED, "r1", "a", "0", 1),
        RunEvent(EventKind.NODE_RETRY, "r1", "a", "0", 1, {"reason": "bad JSON", "retries": 1}),
        RunEvent(EventKind.NODE_STARTED, "r1", "a", "0", 1, {"retries": 1}),
        RunEvent(EventKind.NODE_RESULT, "r1", "a", "0", 1, {"body": "a said hi"}),
        RunEvent(EventKind.NODE_STARTED, "r1", "b", "1", 2),
    ]
    for event in events:
        progress.update(event)
    text = render(progress)
    assert "fanout · r1 · running" in text
    assert "│ a    │ 0      │ done    │ 2      │ a said hi" in text
    assert "│ b    │ 1      │ running │ 1      │" in text

    progress.update(RunEvent(EventKind.RUN_COMPLETE, "r1", None, None, 3, {"status": "completed"}))
    assert "fanout · r1 · completed" in render(progress)
