"""Durable session store: sessions, append-only messages, revert views, shares, threads.

``open_store`` picks the store: ``None`` → the default file (see
:mod:`beamagent.store.location`), ``":memory:"`` → :class:`MemoryStore`, a
``postgresql://`` (or ``postgres://``) URL → :class:`PostgresStore`, a path →
:class:`SqliteStore`, an object implementing :class:`SessionStore` → itself.
``docs/store.md`` describes the semantics shared by every store.

>>> store = open_store(":memory:")
>>> store.create_session("s1", "local").session_id
's1'
"""

from __future__ import annotations

import os
from typing import Any

from beamagent.errors import InvalidOption, StoreError
from beamagent.store.base import (
    SessionRecord,
    SessionStore,
    ShareRecord,
    SummaryRecord,
    ThreadDetail,
    ThreadRecord,
    ThreadStatus,
)
from beamagent.store.location import ENV_VAR, default_store_path
from beamagent.store.memory import MemoryStore
from beamagent.store.migration import MigrationReport, migrate
from beamagent.store.postgres import PostgresStore, is_postgres_url
from beamagent.store.selectors import DropCount, MatchKey, MessageMatch, VisibleCount
from beamagent.store.sqlite import SqliteStore

__all__ = [
    "DropCount",
    "MatchKey",
    "MemoryStore",
    "MessageMatch",
    "MigrationReport",
    "PostgresStore",
    "SessionRecord",
    "SessionStore",
    "ShareRecord",
    "SqliteStore",
    "SummaryRecord",
    "ThreadDetail",
    "ThreadRecord",
    "ThreadStatus",
    "VisibleCount",
    "default_store_path",
    "migrate",
    "open_store",
]


def open_store(spec: Any = None) -> SessionStore:
    """The store ``spec`` names (see the module docstring); the caller closes it."""
    if spec is None:
        configured = os.environ.get(ENV_VAR, "")
        if is_postgres_url(configured):
            return PostgresStore(configured)
        path = default_store_path()
        if str(path) == ":memory:":
            return MemoryStore()
        try:
            return SqliteStore(path)
        except StoreError as exc:
            where = f"${ENV_VAR}" if os.environ.get(ENV_VAR) else "in the user data dir"
            raise StoreError(
                f"{exc}. This is the default store ({where}); "
                "choose another place with the BEAMAGENT_STORE environment variable, "
                "Runtime(store='/path/to/sessions.db'), or Runtime(store=':memory:') for "
                "history that is not kept"
            ) from exc
    if isinstance(spec, str | os.PathLike):
        raw = os.fspath(spec)
        if raw == ":memory:":
            return MemoryStore()
        if is_postgres_url(raw):
            return PostgresStore(raw)
        if not isinstance(raw, str) or not raw:
            raise InvalidOption(f"a store path must be a non-empty str path, got {spec!r}")
        return SqliteStore(raw)
    if isinstance(spec, SessionStore):
        return spec
    raise InvalidOption(
        f"cannot open a session store from {spec!r}: give None, ':memory:', a path, "
        "a postgresql:// URL, "
        "or an object implementing SessionStore"
    )
