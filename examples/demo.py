"""`make demo`: the main demo of beamagent (grows as the runtime does)."""

from __future__ import annotations

import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).with_name("supervision_tree.py")), run_name="__main__")
