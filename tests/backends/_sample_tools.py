"""The Python tools the backend tool tests give their sessions, and the calls they saw."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from beamagent.tools import ToolContext, tool

calls: list[ToolContext] = []
"""The context of every ``add`` call, in order (cleared around each test)."""


@tool
def add(a: int, b: int, ctx: ToolContext) -> int:
    """Add two integers."""
    calls.append(ctx)
    return a + b


@tool
def explode(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(f"exploded: {reason}")


@tool
def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


@pytest.fixture(autouse=True)
def _clear_calls() -> Iterator[None]:
    calls.clear()
    yield
    calls.clear()
