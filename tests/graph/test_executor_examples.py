"""The graph examples run and tell their story (they are part of the documentation)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_triage_graph_example(capsys: pytest.CaptureFixture[str]) -> None:
    namespace = runpy.run_path(str(EXAMPLES / "triage_graph.py"))
    assert namespace["main"]() == 0
    out = capsys.readouterr().out
    assert "yield_done    triage total=3" in out
    assert "node_retry    billing reason=the serving failed: ConnectionError" in out
    assert "node_retry    technical reason=the node actor crashed" in out
    assert "== completed after 8 steps" in out
    assert "ESCALATED to on-call" in out
    assert "NodeActor  idle  restarts=1" in out
    assert "GraphExecutor  ticket-triage run_" in out  # the run's executor, in flight


def test_lm_router_example(capsys: pytest.CaptureFixture[str]) -> None:
    namespace = runpy.run_path(str(EXAMPLES / "lm_router.py"))
    assert namespace["main"]() == 0
    out = capsys.readouterr().out
    assert "node_retry    classify reason=the answer was not valid JSON" in out
    assert "classify -> refunds: [refunds] reply drafted" in out
    assert "classify -> tech: [tech] reply drafted" in out
    assert "classify -> human: [human] reply drafted" in out
    assert "classify -> smalltalk: [smalltalk] reply drafted" in out
