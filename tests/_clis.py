"""Shared rule for tests that need the real agent CLIs: skip locally, fail in CI."""

from __future__ import annotations

import os

import pytest

REQUIRE_CLIS = os.environ.get("BEAMAGENT_REQUIRE_CLIS") == "1"


def skip_without_clis(reason: str) -> None:
    """Skip (or, under ``BEAMAGENT_REQUIRE_CLIS=1``, fail) a test that needs the CLIs."""
    if REQUIRE_CLIS:
        pytest.fail(f"BEAMAGENT_REQUIRE_CLIS=1 but {reason}", pytrace=False)
    pytest.skip(reason)
