"""The examples in the graph modules' docstrings run and hold."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "name", ["instructions", "job", "node", "outputs", "planning", "router", "serving"]
)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"beamagent.graph.{name}")
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert attempted > 0
    assert failed == 0
