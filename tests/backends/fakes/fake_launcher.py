#!/usr/bin/env python3
"""A fake npm launcher: runs ``fake_claude.py`` as its child and waits for it.

Like ``node_modules/.bin/codex``, a script that spawns the native binary: the
child inherits stdin, stdout and stderr and stays in the launcher's process
group, so killing only the launcher leaves the child running and holding
stdout open. Arguments and the environment (``FAKE_MODE``...) go to the child.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHILD = Path(__file__).with_name("fake_claude.py")

if __name__ == "__main__":
    child = subprocess.Popen([sys.executable, str(CHILD), *sys.argv[1:]])
    sys.exit(child.wait())
