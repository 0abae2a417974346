"""One fixture factory for the store contract tests: every store kind, PostgreSQL included."""

from __future__ import annotations

from pathlib import Path

import pytest

from beamagent.store import MemoryStore, PostgresStore, SessionStore, SqliteStore

#: The stores every contract test runs against (``params=STORE_KINDS``).
STORE_KINDS = ["memory", "sqlite", "postgres"]


def open_test_store(request: pytest.FixtureRequest, tmp_path: Path) -> SessionStore:
    """A fresh store of the kind ``request.param`` names (PostgreSQL: a fresh database).

    PostgreSQL tests skip without the server binaries (fail under ``CI=true``).
    """
    kind = request.param
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SqliteStore(tmp_path / "store.db")
    if kind == "postgres":
        return PostgresStore(request.getfixturevalue("postgres_url"))
    raise ValueError(f"unknown store kind {kind!r}")


def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What ``Runtime(store=...)`` takes for the kind ``request.param`` names."""
    kind = request.param
    if kind == "memory":
        return ":memory:"
    if kind == "sqlite":
        return str(tmp_path / "sessions.db")
    if kind == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    raise ValueError(f"unknown store kind {kind!r}")
