"""The runnable examples keep working (they are part of the documentation)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_supervision_tree_example(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(EXAMPLES / "supervision_tree.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "api restarted, state is fresh: api pong #1" in out
    assert "restarts=2" in out
    assert "live actors left: 0" in out
