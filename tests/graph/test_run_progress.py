"""``EventLog.progress``: what ``beamagent top`` shows of a run (its current nodes)."""

from __future__ import annotations

from beamagent.graph.run import EventKind, EventLog


def test_progress_lists_the_visits_started_and_not_done() -> None:
    log = EventLog("r1")
    assert log.progress() == (0, [])
    log.record(EventKind.RUN_STARTED, None, None, 0, {})
    log.record(EventKind.NODE_STARTED, "a", "0", 1, {})
    log.record(EventKind.NODE_STARTED, "b", "1", 1, {})
    assert log.progress() == (3, [("a", "0"), ("b", "1")])
    log.record(EventKind.NODE_RESULT, "a", "0", 1, {})
    log.record(EventKind.NODE_RETRY, "b", "1", 1, {})
    assert log.progress() == (5, [])
    log.record(EventKind.NODE_STARTED, "b", None, 2, {})  # no thread: thread "0"
    assert log.progress() == (6, [("b", "0")])
