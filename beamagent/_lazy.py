"""Lazy re-exports for package ``__init__`` modules (PEP 562).

A package lists where each public name lives; the module defining it is imported
at the first access of the name (``from beamagent.graph import Job``,
``beamagent.graph.Job``), not when the package is. ``import beamagent`` then
costs only what it uses (docs/decisions.md, "Lazy imports"). The package keeps
its ``__all__`` and imports the names under ``TYPE_CHECKING`` for type checkers.

Example, in a package's ``__init__.py``::

    _EXPORTS = exports({"beamagent.graph.job": ("Job", "Node")})

    def __getattr__(name: str) -> Any:
        return load(__name__, _EXPORTS, name)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["exports", "load"]


def exports(modules: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """``{name: module}`` from ``{module: names}`` (the order of the import lines)."""
    return {name: module for module, names in modules.items() for name in names}


def load(package: str, where: Mapping[str, str], name: str) -> Any:
    """The value of ``package.name``: imported from ``where[name]`` and kept in the package.

    A name that is not in ``where`` but is a submodule of the package is that
    submodule, imported (as an eager package's submodules were attributes of it:
    ``import beamagent; beamagent.errors.StoreError``).

    Raises:
        AttributeError: ``name`` is neither (what a module's ``__getattr__`` must
            raise for ``getattr(mod, x, default)`` and ``hasattr`` to work).
    """
    module = where.get(name)
    if module is None:
        if not name.startswith("__"):
            submodule = f"{package}.{name}"
            try:
                return importlib.import_module(submodule)
            except ModuleNotFoundError as exc:
                if exc.name != submodule:
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    # Kept as a module global: the next access does not come here.
    setattr(sys.modules[package], name, value)
    return value
