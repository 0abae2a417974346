"""Durable routing state (health overrides, sticky bindings) — on both stores."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from beamagent.errors import InvalidOption, StoreError
from beamagent.store import SessionStore, SqliteStore
from tests.store._stores import STORE_KINDS, open_test_store


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionStore]:
    opened = open_test_store(request, tmp_path)
    yield opened
    opened.close()


def test_entries_are_set_replaced_and_deleted_per_kind(store: SessionStore) -> None:
    assert store.routing_entries("health") == {}
    store.save_routing_entry("health", "codex", "unhealthy")
    store.save_routing_entry("health", "claude", "degraded")
    store.save_routing_entry("sticky", "user-42", "claude")
    store.save_routing_entry("health", "codex", "healthy")  # replaces
    assert store.routing_entries("health") == {"claude": "degraded", "codex": "healthy"}
    assert list(store.routing_entries("health")) == ["claude", "codex"]  # key order
    assert store.routing_entries("sticky") == {"user-42": "claude"}
    store.save_routing_entry("health", "claude", None)
    store.save_routing_entry("health", "never-set", None)  # deleting nothing is fine
    store.save_routing_entry("unused-kind", "k", None)
    assert store.routing_entries("health") == {"codex": "healthy"}
    assert store.routing_entries("sticky") == {"user-42": "claude"}


def test_entries_are_snapshots(store: SessionStore) -> None:
    store.save_routing_entry("sticky", "k", "claude")
    entries = store.routing_entries("sticky")
    entries["k"] = "codex"
    assert store.routing_entries("sticky") == {"k": "claude"}


BAD = os.fsdecode(b"caf\xe9")


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("", "k", "v"), "kind"),
        ((1, "k", "v"), "kind"),
        ((BAD, "k", "v"), "kind"),
        (("health", "", "v"), "key"),
        (("health", None, "v"), "key"),
        (("health", BAD, "v"), "key"),
        (("health", "k", ""), "value"),
        (("health", "k", 3), "value"),
        (("health", "k", BAD), "value"),
    ],
)
def test_bad_entries_are_refused(store: SessionStore, args: tuple[Any, ...], field: str) -> None:
    with pytest.raises(InvalidOption, match=f"^{field} "):
        store.save_routing_entry(*args)
    assert store.routing_entries("health") == {}


@pytest.mark.parametrize("kind", ["", None, BAD])
def test_reading_a_bad_kind_is_refused(store: SessionStore, kind: Any) -> None:
    with pytest.raises(InvalidOption, match=r"^kind "):
        store.routing_entries(kind)


def test_a_closed_store_refuses_routing_calls(store: SessionStore) -> None:
    store.save_routing_entry("health", "codex", "unhealthy")
    store.close()
    with pytest.raises(StoreError):
        store.routing_entries("health")
    with pytest.raises(StoreError):
        store.save_routing_entry("health", "codex", None)


def test_sqlite_entries_survive_reopening(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "s.db") as store:
        store.save_routing_entry("sticky", "user-42", "claude")
        store.save_routing_entry("health", "codex", "unhealthy")
    with SqliteStore(tmp_path / "s.db") as store:
        assert store.routing_entries("sticky") == {"user-42": "claude"}
        assert store.routing_entries("health") == {"codex": "unhealthy"}
