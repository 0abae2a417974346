"""`make demo` (`beamagent demo`): a supervised, routed graph workflow over the ``local`` backend.

The demo lives in :mod:`beamagent.cli.demo`, so an installed ``beamagent``
runs it without this repository: ``beamagent demo`` or ``python -m beamagent demo``.
What it shows: a graph job routing support messages; each session placed by
policy (round robin over two ``local`` backends), every decision printed with
its reasons; an agent process that dies mid-answer, the supervisor's restart
of its session (which child, why, which incarnation) and the node's retry; the
history read back from the SQLite file.

Run: ``make demo`` (or ``.venv/bin/python examples/demo.py``).
"""

from __future__ import annotations

from beamagent.cli.demo import run_demo


def main() -> int:
    """Run the demo; returns 0 when every run completed."""
    return run_demo()


if __name__ == "__main__":
    raise SystemExit(main())
