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
from typing import TYPE_CHECKING, Any

from beamagent._lazy import exports, load
from beamagent.errors import InvalidOption, StoreError
from beamagent.store.base import SessionStore

if TYPE_CHECKING:
    from beamagent.store.base import (
        SessionRecord,
        ShareRecord,
        SummaryRecord,
        ThreadDetail,
        ThreadRecord,
        ThreadStatus,
    )
    from beamagent.store.location import default_store_path
    from beamagent.store.memory import MemoryStore
    from beamagent.store.migration import MigrationReport, migrate
    from beamagent.store.postgres import PostgresStore
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
    # Each store's module is imported when it is chosen: a memory store needs no SQL.
    from beamagent.store.memory import MemoryStore

    if spec is None:
        from beamagent.store.location import ENV_VAR, default_store_path
        from beamagent.store.postgres import PostgresStore, is_postgres_url
        from beamagent.store.sqlite import SqliteStore

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
        from beamagent.store.postgres import PostgresStore, is_postgres_url
        from beamagent.store.sqlite import SqliteStore

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


_EXPORTS = exports(
    {
        "beamagent.store.base": (
            "SessionRecord",
            "ShareRecord",
            "SummaryRecord",
            "ThreadDetail",
            "ThreadRecord",
            "ThreadStatus",
        ),
        "beamagent.store.location": ("ENV_VAR", "default_store_path"),
        "beamagent.store.memory": ("MemoryStore",),
        "beamagent.store.migration": ("MigrationReport", "migrate"),
        "beamagent.store.postgres": ("PostgresStore", "is_postgres_url"),
        "beamagent.store.selectors": ("DropCount", "MatchKey", "MessageMatch", "VisibleCount"),
        "beamagent.store.sqlite": ("SqliteStore",),
    }
)


def __getattr__(name: str) -> Any:
    return load(__name__, _EXPORTS, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
