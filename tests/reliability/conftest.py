"""The reliability suite: chaos, kill -9, fuzzing. Bounded in ``make test``, long in ``make soak``.

``BEAMAGENT_SOAK=1`` (what ``make soak`` sets) selects the long form: more
faults, more kills, more examples. Every test here carries the
``reliability`` marker, so ``pytest -m reliability`` runs the suite alone.
"""

from __future__ import annotations

import os

import pytest

SOAK = os.environ.get("BEAMAGENT_SOAK", "") not in ("", "0")
"""True under ``make soak``: the long form of every reliability test."""


def scale(bounded: int, soak: int) -> int:
    """The bounded figure in ``make test``, the soak figure under ``make soak``."""
    return soak if SOAK else bounded


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reliability/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.reliability)
