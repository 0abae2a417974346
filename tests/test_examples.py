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


def test_main_demo_routes_supervises_and_records(capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    sys.path.insert(0, str(EXAMPLES))
    try:
        namespace = runpy.run_path(str(EXAMPLES / "demo.py"))
        assert namespace["main"]() == 0
    finally:
        sys.path.remove(str(EXAMPLES))
    out = capsys.readouterr().out
    assert "node_retry    tech" in out
    assert "TransportError" in out
    assert "!! crash       child" in out  # the crash, then the supervisor's restart, as such
    assert ">> restart     supervisor restarted child" in out
    assert "incarnation 2" in out
    assert out.count("completed: classify ->") == 4
    assert "round_robin: local_a" in out
    assert "round_robin: local_b" in out
    assert "Let me look at the crash rep" in out  # the partial answer, read back from disk
    assert "== all runs completed" in out


def test_readme_python_blocks_run(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's first two examples (a session, a graph) run as written."""
    import re

    readme = (EXAMPLES.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    for block in blocks[:2]:
        code = block.replace("Runtime()", 'Runtime(store=":memory:")')
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "hello" in out
    assert "reviewed draft of a release note" in out
    assert out.rstrip().endswith("ended")  # as the README's comment says


def test_the_example_job_file_runs(tmp_path: Path) -> None:
    """``beamagent run examples/review.yaml`` (docs/cli.md) works as written."""
    import json

    from typer.testing import CliRunner

    from beamagent.cli import app

    args = ["run", str(EXAMPLES / "review.yaml"), "-i", "a release note", "--json"]
    result = CliRunner().invoke(app, [*args, "--store", str(tmp_path / "s.db")])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["path"] == ["draft", "check"]
    assert document["output"]["body"] == "approved: clear and short"
