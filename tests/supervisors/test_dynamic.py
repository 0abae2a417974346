"""DynamicSupervisor: start_child, extra_arguments, max_children, terminate_child."""

from __future__ import annotations

import pykka
import pytest

import supervisors as s
from tests.supervisors._kit import EventLog, Worker, crash_and_wait


def test_start_children_with_extra_arguments_and_restart() -> None:
    log = EventLog()
    dyn = s.DynamicSupervisor.start(extra_arguments=(log,))
    refs = [dyn.start_child((Worker, (f"w{i}",), {})) for i in range(3)]
    assert [r.ask("ping", timeout=5) for r in refs] == ["pong"] * 3
    crash_and_wait(dyn, refs[1])
    children = dyn.which_children()
    assert len(children) == 3
    assert children[1].restarts == 1
    assert children[1].ref is not refs[1]
    assert children[1].ref is not None
    assert children[1].ref.ask("ping", timeout=5) == "pong"
    assert log.count(("start", "w1")) == 2
    dyn.stop()
    assert not pykka.ActorRegistry.get_all()


def test_callable_start_gets_extra_arguments() -> None:
    log = EventLog()
    dyn = s.DynamicSupervisor.start(extra_arguments=(log, "cb"))
    ref = dyn.start_child(lambda lg, wid: Worker.start(lg, wid))
    assert ref.ask("ping", timeout=5) == "pong"
    assert log.snapshot() == [("start", "cb")]
    dyn.stop()


def test_max_children() -> None:
    log = EventLog()
    dyn = s.DynamicSupervisor.start(max_children=2)
    dyn.start_child((Worker, (log, "a"), {}))
    dyn.start_child((Worker, (log, "b"), {}))
    with pytest.raises(s.MaxChildrenError, match="max_children=2"):
        dyn.start_child((Worker, (log, "c"), {}))
    assert dyn.count_children()["active"] == 2
    dyn.stop()


@pytest.mark.parametrize(
    ("restart", "how", "kept"),
    [
        ("transient", "normal", False),
        ("transient", "crash", True),
        ("temporary", "crash", False),
        ("permanent", "normal", True),
    ],
)
def test_children_not_restarted_are_removed(restart: str, how: str, kept: bool) -> None:
    log = EventLog()
    dyn = s.DynamicSupervisor.start()
    ref = dyn.start_child(s.ChildSpec(None, (Worker, (log, "w"), {}), restart=restart))
    crash_and_wait(dyn, ref, how)
    assert (len(dyn.which_children()) == 1) is kept
    dyn.stop()


def test_terminate_child_by_ref_and_unknown_child() -> None:
    log = EventLog()
    dyn = s.DynamicSupervisor.start()
    ref = dyn.start_child((Worker, (log, "w"), {}))
    dyn.terminate_child(ref)
    assert dyn.which_children() == []
    assert ("stop", "w") in log.snapshot()
    with pytest.raises(s.ChildNotFound):
        dyn.terminate_child(ref)
    dyn.stop()


def test_start_failure_is_a_reply_error() -> None:
    log = EventLog()
    dyn = s.DynamicSupervisor.start()
    with pytest.raises(s.StartChildError):
        dyn.start_child((Worker, (log, "bad"), {"fail_start": True}))
    assert dyn.is_alive()
    dyn.stop()


def test_stop_shuts_all_children_down_together() -> None:
    log = EventLog()
    dyn = s.DynamicSupervisor.start()
    for i in range(50):
        dyn.start_child((Worker, (log, i), {}))
    dyn.stop()
    assert sum(1 for e in log.snapshot() if e[0] == "stop") == 50
