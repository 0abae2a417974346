"""Copy everything one SQL store holds into another: ``migrate("sessions.db", "postgresql://...")``.

Sessions, their messages (with their seqs, uuids, thread ids, rollback flags and row
times), threads, revert views, shares, summaries (kept in the sessions' ``extra``),
routing state, and graph run checkpoints with their results — row for row, so every read
gives the same answer on the target as on the source. The source is read in one snapshot
and the target written in one transaction: a failed migration leaves the target as it was.
The target must be empty (a second run refuses, it never merges or duplicates).

``beamagent store migrate SRC DST`` is the command-line form.
"""

from __future__ import annotations

from typing import Any

import attrs

from beamagent.errors import InvalidOption, StoreError
from beamagent.log import get_logger
from beamagent.store.sql import SqlStore

__all__ = ["MigrationReport", "migrate"]

log = get_logger(__name__)

#: Tables in the order they are copied (parents first), with the columns copied and the
#: order rows are read in. A run's results keep their order through the read order.
_TABLES: tuple[tuple[str, str, str], ...] = (
    (
        "sessions",
        "session_id, backend, model, cwd, native_session_id, created_at, updated_at, "
        "message_count, extra, active_thread_id",
        "session_id",
    ),
    (
        "threads",
        "session_id, thread_id, name, metadata, created_at, updated_at, status, archived, "
        "archived_at, parent_thread_id, summary",
        "session_id, thread_id",
    ),
    (
        "messages",
        "session_id, seq, type, uuid, message_id, thread_id, created_at, rolled_back, body",
        "session_id, seq",
    ),
    (
        "graph_runs",
        "run_id, job_id, parent_run_id, status, created_at, updated_at, state",
        "run_id",
    ),
    ("graph_run_results", "run_id, body", "{order}"),
    ("routing_state", "kind, key, value", "kind, key"),
)

_BATCH = 1000


@attrs.frozen
class MigrationReport:
    """How many rows of each kind :func:`migrate` copied."""

    sessions: int
    threads: int
    messages: int
    runs: int
    run_results: int
    routing_entries: int

    def to_dict(self) -> dict[str, int]:
        """The counts as a plain dict."""
        return attrs.asdict(self)


def migrate(source: Any, target: Any) -> MigrationReport:
    """Copy every row of store ``source`` into the empty store ``target``.

    Each is a store spec as :func:`~beamagent.store.open_store` takes (a SQLite path, a
    ``postgresql://`` URL) or an open store; stores opened here are closed here. Both must
    be SQL stores (:class:`~beamagent.store.SqliteStore`, :class:`~beamagent.store.PostgresStore`).

    Raises:
        InvalidOption: a store is not a SQL store, or source and target are the same.
        StoreError: the target already holds sessions, runs or routing state (nothing is
            written), or a database failed (the target is left as it was).
    """
    from beamagent.store import open_store

    opened: list[Any] = []
    try:
        stores: list[SqlStore] = []
        for spec in (source, target):
            store = spec if isinstance(spec, SqlStore) else open_store(spec)
            if store is not spec:
                opened.append(store)
            if not isinstance(store, SqlStore):
                raise InvalidOption(
                    f"migrate copies between SQLite and PostgreSQL stores, not {store!r}"
                )
            stores.append(store)
        src, dst = stores
        if src is dst or repr(src) == repr(dst):
            raise InvalidOption(f"migrate needs two different stores, got {src!r} twice")
        return _copy(src, dst)
    finally:
        for store in opened:
            store.close()


def _copy(src: SqlStore, dst: SqlStore) -> MigrationReport:
    counts: dict[str, int] = {}
    with src._read() as reader, dst._write() as writer:
        for table in ("sessions", "graph_runs", "routing_state"):
            (rows,) = writer.execute(f"SELECT count(*) FROM {table}").fetchone()
            if rows:
                raise StoreError(
                    f"cannot migrate into {dst!r}: it is not empty ({table} has {rows} rows); "
                    "migrate copies into an empty store only"
                )
        for table, columns, order in _TABLES:
            order = order.format(order=src._RESULT_ORDER)
            marks = ", ".join("?" for _ in columns.split(","))
            insert = f"INSERT INTO {table} ({columns}) VALUES ({marks})"
            cursor = reader.execute(f"SELECT {columns} FROM {table} ORDER BY {order}")
            copied = 0
            while batch := cursor.fetchmany(_BATCH):
                writer.executemany(insert, batch)
                copied += len(batch)
            counts[table] = copied
    report = MigrationReport(
        sessions=counts["sessions"],
        threads=counts["threads"],
        messages=counts["messages"],
        runs=counts["graph_runs"],
        run_results=counts["graph_run_results"],
        routing_entries=counts["routing_state"],
    )
    log.info("store_migrated_to", source=repr(src), target=repr(dst), **report.to_dict())
    return report
