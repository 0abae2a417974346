"""The installed command in real subprocesses: ``python -m beamagent`` and ``beamagent demo``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "beamagent"


def _env(tmp_path: Path) -> dict[str, str]:
    # Never the user's own store; no colours, so the checks read plain text.
    return {**os.environ, "BEAMAGENT_STORE": str(tmp_path / "s.db"), "NO_COLOR": "1"}


def test_python_m_beamagent_help(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "beamagent", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert "sessions" in done.stdout
    assert "demo" in done.stdout
    assert done.stderr == ""


@pytest.mark.skipif(not SCRIPT.exists(), reason="the console script is not installed")
def test_beamagent_demo_shows_the_crash_the_restart_and_the_history(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(SCRIPT), "demo"], capture_output=True, text=True, timeout=60, env=_env(tmp_path)
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = done.stdout
    assert "DynamicSupervisor" in out  # the supervision tree
    assert "!! crash       child" in out
    assert "exited with status 137" in out
    assert ">> restart     supervisor restarted child" in out
    assert "incarnation 2" in out
    # In causal order: the agent dies, its supervisor restarts it, the visit is retried.
    crash, restart = out.index("!! crash"), out.index(">> restart")
    assert crash < restart < out.index("node_retry    tech")
    assert out.count("round_robin: local_") == 8  # every routing decision, with its reasons
    assert "(selected by round robin policy)" in out
    # What a system row says (it has no content; its facts are shown).
    assert "system    init: model local-echo, native session local-" in out
    assert "Let me look at the crash rep" in out  # the partial answer, read back from disk
    assert out.count("completed: classify ->") == 4
    assert "== all runs completed" in out
