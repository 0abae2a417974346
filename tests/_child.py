"""Run a Python script in a fresh interpreter that imports this checkout's code."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: ours, with this checkout first on ``PYTHONPATH``."""
    env = dict(os.environ)
    for name in ("NO_COLOR", "BEAMAGENT_HANDLE_SIGNALS"):  # defaults, unless asked
        env.pop(name, None)
    env.update(extra or {})
    paths = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def run_script(
    code: str,
    *args: str,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (dedented) with ``args``; return its exit status, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(env),
        check=False,
    )


def start_script(
    code: str, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start ``code`` (dedented) with ``args``, its stdout and stderr piped (line-buffered text)."""
    return subprocess.Popen(
        [sys.executable, "-u", "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        env=child_env(env),
    )
