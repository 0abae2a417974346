"""Hypothesis: random crashes / normal exits / API calls against a model of OTP's rules."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import attrs
import pykka
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import supervisors as s
from tests.supervisors._kit import EventLog, crash_and_wait, worker_spec


@attrs.define
class ModelChild:
    id: str
    restart: str
    running: bool = True
    restarts: int = 0


@attrs.define
class Model:
    strategy: str
    max_restarts: int
    children: list[ModelChild]
    restarts_in_window: int = 0
    alive: bool = True

    def find(self, cid: str) -> ModelChild | None:
        return next((c for c in self.children if c.id == cid), None)

    def child_ended(self, child: ModelChild, abnormal: bool) -> None:
        child.running = False
        if child.restart == "temporary" or (child.restart == "transient" and not abnormal):
            if child.restart == "temporary":
                self.children.remove(child)
            return
        self.restarts_in_window += 1
        if self.restarts_in_window > self.max_restarts:
            self.alive = False
            self.children = []
            return
        index = self.children.index(child)
        if self.strategy == "one_for_one":
            group = [child]
        else:
            group = self.children if self.strategy == "one_for_all" else self.children[index:]
            dropped = [c for c in group if c is not child and c.restart == "temporary"]
            self.children = [c for c in self.children if c not in dropped]
            group = [c for c in group if c not in dropped]
        for member in group:
            member.running = True
            member.restarts += 1

    def observed(self) -> list[tuple[str, bool, int]]:
        return [(c.id, c.running, c.restarts) for c in self.children]


ops = st.lists(
    st.tuples(
        st.sampled_from(["crash", "normal", "terminate", "restart", "delete"]),
        st.integers(min_value=0, max_value=3),
    ),
    max_size=12,
)


@settings(
    max_examples=int(os.environ.get("MODEL_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    strategy=st.sampled_from(["one_for_one", "one_for_all", "rest_for_one"]),
    restarts=st.lists(
        st.sampled_from(["permanent", "transient", "temporary"]), min_size=1, max_size=4
    ),
    max_restarts=st.integers(min_value=0, max_value=6),
    operations=ops,
)
def test_supervisor_matches_otp_model(
    strategy: str, restarts: list[str], max_restarts: int, operations: list[tuple[str, int]]
) -> None:
    log = EventLog()
    ids = [f"c{i}" for i in range(len(restarts))]
    sup = s.Supervisor.start(
        children=[worker_spec(log, cid, restart=r) for cid, r in zip(ids, restarts, strict=True)],
        strategy=strategy,
        max_restarts=max_restarts,
        max_seconds=3600,
    )
    model = Model(
        strategy, max_restarts, [ModelChild(c, r) for c, r in zip(ids, restarts, strict=True)]
    )
    sup_mon = s.monitor(sup, watcher=None)
    try:
        for op, index in operations:
            cid = ids[index % len(ids)]
            child = model.find(cid)
            refs: dict[Any, Any] = {i.id: i.ref for i in sup.which_children(timeout=5)}
            if op in ("crash", "normal"):
                if child is None or not child.running:
                    continue
                with contextlib.suppress(pykka.ActorDeadError):  # gave up: checked below
                    crash_and_wait(sup, refs[cid], op)
                model.child_ended(child, abnormal=op == "crash")
                if not model.alive:
                    assert sup_mon.wait(5).reason == s.Shutdown()
                    return
            elif op == "terminate":
                if child is None:
                    with pytest.raises(s.ChildNotFound):
                        sup.terminate_child(cid)
                    continue
                sup.terminate_child(cid)
                child.running = False
                if child.restart == "temporary":
                    model.children.remove(child)
            elif op == "restart":
                if child is None:
                    with pytest.raises(s.ChildNotFound):
                        sup.restart_child(cid)
                elif child.running:
                    with pytest.raises(s.ChildRunning):
                        sup.restart_child(cid)
                else:
                    sup.restart_child(cid)
                    child.running = True
            elif op == "delete":
                if child is None:
                    with pytest.raises(s.ChildNotFound):
                        sup.delete_child(cid)
                elif child.running:
                    with pytest.raises(s.ChildRunning):
                        sup.delete_child(cid)
                else:
                    sup.delete_child(cid)
                    model.children.remove(child)
            observed = [
                (i.id, i.ref is not None, i.restarts) for i in sup.which_children(timeout=5)
            ]
            assert observed == model.observed(), (op, cid)
    finally:
        if sup.is_alive():
            sup.stop()
        sup_mon.wait(5)
