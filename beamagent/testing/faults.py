"""Faults to inject into a real store in tests, for chaos tests of what sits on top.

:func:`disk_full` makes a :class:`~beamagent.store.SqliteStore` fail its writes the way a
full disk does, with SQLite's own ``SQLITE_FULL``, and undoes it on exit::

    from beamagent.testing import disk_full

    with disk_full(rt):  # a Runtime on a SQLite store, or the SqliteStore itself
        with pytest.raises(StoreError, match="disk is full"):
            rt.share_session(session)
    rt.share_session(session)  # works again
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from beamagent.errors import InvalidOption
from beamagent.store.sqlite import SqliteStore

__all__ = ["disk_full"]

_BALLAST = "beamagent_disk_full_ballast"
_EVENTS = ("INSERT", "UPDATE", "DELETE")


@contextmanager
def disk_full(store: Any) -> Iterator[None]:
    """Every write to ``store`` fails as on a full disk until the block ends; reads work.

    ``store`` is a :class:`~beamagent.store.SqliteStore` or a ``Runtime`` using one.

    A write raises :class:`~beamagent.errors.StoreError` ("... database or disk is full",
    caused by an ``sqlite3.OperationalError`` whose ``sqlite_errorname`` is
    ``SQLITE_FULL``) and leaves nothing behind, like a real full disk in WAL mode.

    How: ``PRAGMA max_page_count`` on the store's write connection caps the file at its
    current page count, so no write can grow it. A cap alone lets a write through while it
    fits in free space (most small messages fit in the last page), so the helper also adds
    temporary triggers (in the connection's ``temp`` schema, never in the file) that make
    every write to the store's tables first add a two-page blob to a temporary table whose
    database is capped the same way: every write fails at its first statement. On exit the
    triggers go and both caps are restored to what they were.

    The fault lives on the write connection: a store whose writer is replaced inside the
    block (``recover_writer`` after a failed rollback) writes again. A store closed inside
    the block is left closed.

    Raises:
        InvalidOption: ``store`` is not a :class:`~beamagent.store.SqliteStore`.
        StoreError: the store is closed.
    """
    store = getattr(store, "_store", store)  # a Runtime's store
    if not isinstance(store, SqliteStore):
        raise InvalidOption(f"disk_full needs a SqliteStore (a file to fill), got {store!r}")
    with store._idle_writer() as conn:
        main_cap = conn.execute("PRAGMA main.max_page_count").fetchone()[0]
        page_size = conn.execute("PRAGMA main.page_size").fetchone()[0]
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM main.sqlite_master "
                "WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        conn.execute(f"CREATE TEMP TABLE {_BALLAST} (blob BLOB)")
        for table in tables:
            for event in _EVENTS:
                conn.execute(
                    f'CREATE TEMP TRIGGER "{_BALLAST}_{table}_{event}" BEFORE {event} '
                    f'ON main."{table}" BEGIN INSERT INTO {_BALLAST} '
                    f"VALUES (zeroblob({2 * page_size})); END"
                )
        temp_cap = conn.execute("PRAGMA temp.max_page_count").fetchone()[0]
        temp_pages = conn.execute("PRAGMA temp.page_count").fetchone()[0]
        conn.execute(f"PRAGMA temp.max_page_count = {temp_pages}")
        pages = conn.execute("PRAGMA main.page_count").fetchone()[0]
        conn.execute(f"PRAGMA main.max_page_count = {pages}")
    try:
        yield
    finally:
        if not store._closed:
            with store._idle_writer() as conn:
                conn.execute(f"PRAGMA temp.max_page_count = {temp_cap}")
                for table in tables:
                    for event in _EVENTS:
                        conn.execute(f'DROP TRIGGER IF EXISTS temp."{_BALLAST}_{table}_{event}"')
                conn.execute(f"DROP TABLE IF EXISTS temp.{_BALLAST}")
                conn.execute(f"PRAGMA main.max_page_count = {main_cap}")
