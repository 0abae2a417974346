"""The ``beamagent`` command (``python -m beamagent``); see ``docs/cli.md``."""

from beamagent.cli.app import app, main

__all__ = ["app", "main"]
