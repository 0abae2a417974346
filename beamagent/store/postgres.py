"""A :class:`~beamagent.store.SessionStore` in a PostgreSQL database, shared by many processes.

Install the extra: ``pip install 'beamagent[postgres]'`` (psycopg 3 and psycopg-pool).

* The operations and their semantics are :class:`~beamagent.store.sql.SqlStore`'s, the
  same as :class:`~beamagent.store.SqliteStore`'s (the store test suite runs on both).
* Connections come from a ``psycopg_pool.ConnectionPool``; every read is one
  ``REPEATABLE READ READ ONLY`` transaction (a consistent snapshot), every write one
  ``READ COMMITTED`` transaction committed before the call returns.
* Many runtimes and processes may write at once: a write to a session locks its row
  (``SELECT ... FOR UPDATE``, or the ``UPDATE`` of an append's one statement, ``_APPEND``;
  writes that may create a session also take a transaction-scoped advisory lock on its
  id first), so the seqs of its messages stay contiguous and in commit order, and
  ``skip_recorded`` sees what the previous writer committed. Writes to different
  sessions run in parallel.
* A writer killed while its statement is on the wire leaves the server to finish it (an
  autocommit append, or a ``COMMIT``, may still commit after the pool closed the
  connection): a retry (``skip_recorded``) and ``recover_writer`` first wait until every
  such abandoned statement is decided -- its backend has ended -- so a retry never writes a
  batch the abandoned statement then writes again.
* The schema is versioned in the table ``beamagent_schema`` and migrated with
  :data:`MIGRATIONS` under an advisory lock (one process migrates, the others wait).
* Every database error is a :class:`~beamagent.errors.StoreError` naming the server
  (host or socket directory, port, database), never the password.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from beamagent.errors import InvalidOption, StoreError
from beamagent.log import get_logger
from beamagent.store.base import MonotonicClock, PreparedMessage, lookup_key
from beamagent.store.sql import DamagedRow, SqlStore, batch_model
from supervisors import blocking, uninterruptible

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "URL_SCHEMES",
    "PostgresStore",
    "is_postgres_url",
    "messages_query",
]

log = get_logger(__name__)

#: URL schemes that name a PostgreSQL store (``open_store``, ``Runtime(store=...)``).
URL_SCHEMES = ("postgresql://", "postgres://")

_EXTRA_HINT = "pip install 'beamagent[postgres]'"

#: Schema migrations: step ``i`` takes ``beamagent_schema.version`` from ``i`` to ``i + 1``.
#: The same tables as the SQLite store's (``beamagent.store.sqlite.MIGRATIONS``). Append
#: new steps; never edit a released one. Keys compare bytewise (``COLLATE "C"``) so that
#: ordered listings match SQLite's whatever the database's locale.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE sessions (
            session_id        TEXT COLLATE "C" PRIMARY KEY,
            backend           TEXT NOT NULL,
            model             TEXT,
            cwd               TEXT,
            native_session_id TEXT,
            created_at        DOUBLE PRECISION NOT NULL,
            updated_at        DOUBLE PRECISION NOT NULL,
            message_count     BIGINT NOT NULL DEFAULT 0,
            extra             TEXT NOT NULL DEFAULT '{}',
            active_thread_id  TEXT
        )
        """,
        "CREATE INDEX sessions_by_updated ON sessions (updated_at)",
        """
        CREATE TABLE messages (
            session_id  TEXT COLLATE "C" NOT NULL
                        REFERENCES sessions (session_id) ON DELETE CASCADE,
            seq         BIGINT NOT NULL,
            type        TEXT NOT NULL,
            uuid        TEXT,
            message_id  TEXT,
            thread_id   TEXT,
            created_at  DOUBLE PRECISION NOT NULL,
            rolled_back INTEGER NOT NULL DEFAULT 0,
            body        TEXT NOT NULL,
            PRIMARY KEY (session_id, seq)
        )
        """,
        "CREATE INDEX messages_by_type ON messages (session_id, type, seq)",
        "CREATE INDEX messages_by_uuid ON messages (session_id, uuid, seq)",
        "CREATE INDEX messages_by_message_id ON messages (session_id, message_id, seq)",
        "CREATE INDEX messages_by_thread ON messages (session_id, thread_id, rolled_back, seq)",
        """
        CREATE TABLE threads (
            session_id       TEXT COLLATE "C" NOT NULL
                             REFERENCES sessions (session_id) ON DELETE CASCADE,
            thread_id        TEXT COLLATE "C" NOT NULL,
            name             TEXT NOT NULL,
            metadata         TEXT NOT NULL DEFAULT '{}',
            created_at       DOUBLE PRECISION NOT NULL,
            updated_at       DOUBLE PRECISION NOT NULL,
            status           TEXT NOT NULL
                             CHECK (status IN ('active', 'paused', 'completed', 'archived')),
            archived         INTEGER NOT NULL DEFAULT 0,
            archived_at      DOUBLE PRECISION,
            parent_thread_id TEXT,
            summary          TEXT,
            PRIMARY KEY (session_id, thread_id)
        )
        """,
    ),
    (
        """
        CREATE TABLE graph_runs (
            run_id        TEXT COLLATE "C" PRIMARY KEY,
            job_id        TEXT NOT NULL,
            parent_run_id TEXT,
            status        TEXT NOT NULL,
            created_at    DOUBLE PRECISION NOT NULL,
            updated_at    DOUBLE PRECISION NOT NULL,
            state         TEXT NOT NULL
        )
        """,
        "CREATE INDEX graph_runs_by_updated ON graph_runs (updated_at)",
        """
        CREATE TABLE graph_run_results (
            pos    BIGSERIAL PRIMARY KEY,
            run_id TEXT COLLATE "C" NOT NULL REFERENCES graph_runs (run_id) ON DELETE CASCADE,
            body   TEXT NOT NULL
        )
        """,
        "CREATE INDEX graph_run_results_by_run ON graph_run_results (run_id, pos)",
    ),
    (
        """
        CREATE TABLE routing_state (
            kind  TEXT COLLATE "C" NOT NULL,
            key   TEXT COLLATE "C" NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (kind, key)
        )
        """,
    ),
)

#: The schema version this code writes and understands.
SCHEMA_VERSION = len(MIGRATIONS)

_OUR_TABLES = frozenset(
    {"sessions", "messages", "threads", "graph_runs", "graph_run_results", "routing_state"}
)
#: The advisory lock key migrations hold ("beam" in ASCII).
_MIGRATION_LOCK = 0x6265616D


def is_postgres_url(spec: object) -> bool:
    """Whether ``spec`` is a ``postgresql://`` or ``postgres://`` URL."""
    return isinstance(spec, str) and spec.lower().startswith(URL_SCHEMES)


def _modules() -> tuple[Any, Any]:
    """psycopg and psycopg_pool, imported on first use (``import beamagent`` stays light)."""
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:
        raise InvalidOption(
            f"a PostgreSQL store needs psycopg 3 and psycopg-pool ({exc.name} is not "
            f"installed): {_EXTRA_HINT}"
        ) from None
    return psycopg, psycopg_pool


@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """The shared ``?``-placeholder SQL in psycopg's ``%s`` style."""
    return sql.replace("%", "%%").replace("?", "%s")


def messages_query(
    session_id: str,
    visible: int,
    types: frozenset[str] | None,
    offset: int,
    limit: int | None,
) -> tuple[str, list[Any]]:
    """The SQL (and parameters) of one ``get_session_messages`` page on PostgreSQL.

    Without a type filter, a seq range on the primary key (seqs are contiguous); with
    one, an index scan of ``messages_by_type`` (``LIMIT NULL`` means no limit).
    """
    if types is None:
        end = visible if limit is None else min(visible, offset + limit)
        return (
            "SELECT body FROM messages WHERE session_id = ? AND seq > ? AND seq <= ? ORDER BY seq",
            [session_id, offset, end],
        )
    return (
        "SELECT body FROM messages WHERE session_id = ? AND type = ANY(?) "
        "AND seq <= ? ORDER BY seq LIMIT ? OFFSET ?",
        [session_id, sorted(types), visible, limit, offset],
    )


#: An append in one statement, so one round trip (autocommit: its own transaction). The
#: session row's update locks it (writers of one session queue there; READ COMMITTED
#: re-reads the row a previous writer committed, so seqs stay contiguous in commit
#: order) and returns the seq the batch follows; the rows are inserted after it. The
#: messages were encoded under ``hint``, the session's active thread as last seen: if it
#: changed meanwhile, nothing is written and no row comes back (nor for a missing session),
#: and the caller takes the general path. The time is taken before the lock is, so the
#: session's ``updated_at`` (the rows' ``created_at``) never goes back: ``greatest``.
_APPEND = b"""
WITH s AS (
    UPDATE sessions SET message_count = message_count + %(n)s::bigint,
        updated_at = greatest(updated_at, %(now)s::float8),
        model = coalesce(%(model)s::text, model)
    WHERE session_id = %(sid)s::text AND active_thread_id IS NOT DISTINCT FROM %(hint)s::text
    RETURNING message_count - %(n)s::bigint AS base, updated_at AS at
), m AS (
    INSERT INTO messages (session_id, seq, type, uuid, message_id, thread_id, created_at,
        rolled_back, body)
    SELECT %(sid)s::text, s.base + m.ord, m.type, m.uuid, m.message_id, m.thread_id,
        s.at, 0, m.body
    FROM s, unnest(%(types)s::text[], %(uuids)s::text[], %(message_ids)s::text[],
        %(thread_ids)s::text[], %(bodies)s::text[])
        WITH ORDINALITY AS m (type, uuid, message_id, thread_id, body, ord)
), t AS (
    UPDATE threads SET updated_at = s.at FROM s
    WHERE threads.session_id = %(sid)s::text AND threads.thread_id = ANY(%(touched)s::text[])
)
SELECT base FROM s
"""


#: How many of the backends (pids) given are still running.
_BACKENDS_ALIVE = b"SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s::int[])"


class _Connection:
    """A psycopg connection speaking the shared SQL (``?`` placeholders, ``executemany``)."""

    __slots__ = ("raw",)

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Any = ()) -> psycopg.Cursor[Any]:
        return self.raw.execute(_pg_sql(sql), params)

    def executemany(self, sql: str, params: Any) -> None:
        with self.raw.cursor() as cursor:
            cursor.executemany(_pg_sql(sql), params)


class PostgresStore(SqlStore):
    """A :class:`~beamagent.store.SessionStore` in a PostgreSQL database.

    ``dsn`` is a libpq connection string or URL
    (``postgresql://user:password@host:5432/beamagent``; a Unix socket directory as
    ``host``). ``min_size``/``max_size`` size the connection pool; ``connect_timeout``
    bounds each connection attempt, ``pool_timeout`` a wait for a free pooled connection,
    and a retry's wait for a write abandoned mid-statement to end (seconds).

    Raises:
        InvalidOption: psycopg is not installed, or ``dsn`` is not a connection string.
        StoreError: the server cannot be reached, or the database is not a store this
            version understands.

    >>> with PostgresStore("postgresql://localhost/beamagent") as store:   # doctest: +SKIP
    ...     store.create_session("s1", "local").message_count
    0
    """

    _NO_LIMIT = None
    _SHARE_ID_SQL = "(extra::jsonb #>> '{share,share_id}')"
    _RESULT_ORDER = "pos"
    _FOR_UPDATE = " FOR UPDATE"
    _RECORD_READ = SqlStore._RECORD_READ + " FOR UPDATE"
    _messages_query = staticmethod(messages_query)

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        pool_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        psycopg_mod, pool_mod = _modules()
        if not isinstance(dsn, str) or not dsn:
            raise InvalidOption(f"a PostgreSQL store needs a connection URL, got {dsn!r}")
        try:
            params = psycopg_mod.conninfo.conninfo_to_dict(dsn)
        except psycopg_mod.Error:
            raise InvalidOption(
                "not a PostgreSQL connection URL or string (expected e.g. "
                "'postgresql://user@host:5432/dbname')"
            ) from None
        if not 1 <= min_size <= max_size:
            raise InvalidOption(
                f"need 1 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}"
            )
        self._psycopg = psycopg_mod
        self._pool_errors: tuple[type[BaseException], ...] = (
            psycopg_mod.Error,
            pool_mod.PoolTimeout,
            pool_mod.PoolClosed,
            DamagedRow,
        )
        self._secrets = [str(params["password"])] if params.get("password") else []
        host = params.get("host") or "(the default socket)"
        self._where = (
            f"host={host} port={params.get('port') or 5432} dbname={params.get('dbname') or '?'}"
        )
        self._clock = MonotonicClock(clock)
        self._thread_hints = {}
        self._closed = False
        self._close_lock = threading.Lock()
        self._pool_timeout = pool_timeout
        # The connections writes are using, by id: the connection and its backend's pid;
        # and the pids of the backends of connections a write left with a statement still
        # on the wire (killed mid-statement, or the connection broke), until a retry has
        # waited for them to end: see _settle_abandoned.
        self._writing: dict[int, tuple[psycopg.Connection[Any], int]] = {}
        self._abandoned: set[int] = set()
        status = psycopg_mod.pq.TransactionStatus
        self._running = status.ACTIVE
        self._undecided = frozenset({status.ACTIVE, status.UNKNOWN})
        self._gone = status.UNKNOWN
        seconds = max(2, math.ceil(connect_timeout))  # libpq takes whole seconds, at least 2
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": seconds}
        try:
            first = psycopg_mod.connect(dsn, **kwargs)
        except psycopg_mod.Error as exc:
            raise StoreError(
                f"cannot connect to the PostgreSQL session store ({self._where}): "
                f"{self._scrub(exc)}"
            ) from None
        try:
            self._migrate(first)
        except psycopg_mod.Error as exc:
            raise StoreError(
                f"cannot use the PostgreSQL database ({self._where}) as a session store: "
                f"{self._scrub(exc)}"
            ) from None
        finally:
            first.close()
        self._pool: psycopg_pool.ConnectionPool[Any] = pool_mod.ConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            kwargs=kwargs,
            timeout=pool_timeout,
            open=False,
            name="beamagent-store",
        )
        try:
            self._pool.open(wait=True, timeout=max(connect_timeout, 1.0))
        except pool_mod.PoolTimeout as exc:
            self._pool.close()
            raise StoreError(
                f"cannot open connections to the PostgreSQL session store ({self._where}): "
                f"{self._scrub(exc)}"
            ) from None
        log.info("store_opened", server=self._where, schema_version=SCHEMA_VERSION)

    @property
    def where(self) -> str:
        """The server and database, as error messages name them (never the password)."""
        return self._where

    def __repr__(self) -> str:
        return f"PostgresStore({self._where!r})"

    # --- errors ---------------------------------------------------------------------------

    def _scrub(self, exc: BaseException | str) -> str:
        """The text of an error with the password removed, should libpq ever echo it."""
        text = str(exc).strip()
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _failed(self, action: str, exc: BaseException) -> StoreError:
        if self._closed:
            return StoreError(f"the PostgreSQL session store ({self._where}) is closed")
        error = self._scrub(exc)
        log.error("store_failed", server=self._where, action=action, error=error)
        return StoreError(
            f"the PostgreSQL session store ({self._where}) failed to {action}: {error}"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the PostgreSQL session store ({self._where}) is closed")

    # --- schema ---------------------------------------------------------------------------

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            row = conn.execute("SELECT to_regclass('beamagent_schema')").fetchone()
            if row is None or row[0] is None:
                tables = {
                    r[0]
                    for r in conn.execute(
                        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                    )
                }
                clash = sorted(tables & _OUR_TABLES)
                if clash:
                    raise StoreError(
                        f"the PostgreSQL database ({self._where}) has tables {clash} but is not "
                        "a beamagent session store (no beamagent_schema table); refusing to "
                        "touch it: choose another database or schema"
                    )
                conn.execute(
                    "CREATE TABLE beamagent_schema (only_row BOOLEAN PRIMARY KEY DEFAULT TRUE "
                    "CHECK (only_row), version INTEGER NOT NULL)"
                )
                conn.execute("INSERT INTO beamagent_schema (version) VALUES (0)")
                version = 0
            else:
                got = conn.execute("SELECT version FROM beamagent_schema").fetchone()
                version = 0 if got is None else int(got[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the PostgreSQL session store ({self._where}) has schema version "
                    f"{version}, newer than this beamagent understands ({SCHEMA_VERSION}); "
                    "upgrade beamagent"
                )
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
                    conn.execute(statement.encode())
            if version != SCHEMA_VERSION:
                conn.execute("UPDATE beamagent_schema SET version = %s", (SCHEMA_VERSION,))
        if version != SCHEMA_VERSION:
            log.info(
                "store_migrated",
                server=self._where,
                version_from=version,
                version_to=SCHEMA_VERSION,
            )

    # --- connections ----------------------------------------------------------------------

    @contextmanager
    def _pooled(self, timeout: float | None = None) -> Iterator[Any]:
        """``pool.connection()``, with the wait for a connection safe from ``kill()``.

        psycopg_pool cleans up after a waiter that fails with an ``Exception`` only: a
        writer process killed while it waited stayed queued, and the next connection
        handed to it was lost to the pool for good. The wait is ``uninterruptible``:
        a kill lands once it is over, and the connection goes back.
        """
        conn = None
        try:
            with uninterruptible():
                conn = self._pool.getconn(timeout)
        except BaseException:
            if conn is not None:  # killed while it waited: give it back
                self._pool.putconn(conn)
            raise
        try:
            with conn:  # commit, or roll back on an error (a pooled one stays open)
                yield conn
        finally:
            self._pool.putconn(conn)

    @contextmanager
    def _read(self) -> Iterator[_Connection]:
        """A read-only snapshot transaction on a pooled connection."""
        self._check_open()
        try:
            with self._pooled() as raw:
                raw.execute(b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                try:
                    yield _Connection(raw)
                finally:
                    with suppress(self._psycopg.Error):
                        raw.execute(b"ROLLBACK")
        except self._pool_errors as exc:
            raise self._failed("read", exc) from exc

    @contextmanager
    def _write(self) -> Iterator[_Connection]:
        """A write transaction on a pooled connection; committed before the caller returns.

        On any exception it is rolled back (a connection left mid-transaction by a killed
        thread is rolled back or discarded by the pool when it comes back).
        """
        self._check_open()
        try:
            with self._pooled() as raw, self._writing_on(raw):
                raw.execute(b"BEGIN")
                try:
                    yield _Connection(raw)
                except BaseException:
                    with suppress(self._psycopg.Error):
                        raw.execute(b"ROLLBACK")
                    raise
                raw.execute(b"COMMIT")
        except self._pool_errors as exc:
            raise self._failed("write", exc) from exc

    @contextmanager
    def _writing_on(self, raw: psycopg.Connection[Any]) -> Iterator[None]:
        """Mark ``raw`` as in use by a write, before any statement is sent, until it ends.

        A write that ends with a statement still running (``ACTIVE``: killed
        mid-statement; the pool then closes the connection) or with the connection broken
        (``UNKNOWN``) leaves its backend's pid in ``_abandoned``: the server may still run
        what was sent, and a retry must wait for it (:meth:`_settle_abandoned`).
        """
        key = id(raw)
        use = (raw, raw.info.backend_pid)  # a new tuple: this use's own
        self._writing[key] = use
        try:
            yield
        finally:
            if raw.pgconn.transaction_status in self._undecided:
                self._abandoned.add(use[1])  # before the pop: a settle sees one or the other
            self._writing.pop(key, None)

    def _settle_abandoned(self) -> None:
        """Wait until no statement a write sent before this call can still commit.

        A thread killed while its statement is on the wire (``supervisors.kill`` lands
        between psycopg's send and its read of the result) returns the connection
        ``ACTIVE``; the pool closes it, but the server runs what it received to its end,
        and an autocommit append (or a ``COMMIT``) commits, maybe much later if it waits
        for a row lock. A retry that read the session before that would store the batch
        again. So: first wait until every connection a write was using when this is called
        is no longer ``ACTIVE`` in that write (its thread got the result, or the write
        ended); then, for each one a write left mid-statement or broken, until its
        backend has ended -- the server has run everything it received, then read the end
        of the connection -- and left ``pg_stat_activity``. Live writers' statements are
        waited for too: they are short, and a retry is rare.

        Raises:
            StoreError: one is still running after ``pool_timeout`` seconds (whether it
                commits is not known yet: retry later), or the server cannot be reached.
        """
        if not self._writing and not self._abandoned:
            return
        deadline = time.monotonic() + self._pool_timeout
        pending = self._writing.copy()
        broken: set[int] = set()
        pause = 0.001
        with blocking():  # on a scheduler worker, another one runs processes meanwhile
            while True:
                for key, use in list(pending.items()):
                    status = use[0].pgconn.transaction_status
                    if status == self._gone:
                        broken.add(use[1])  # its writer has yet to notice
                        del pending[key]
                    elif status != self._running or self._writing.get(key) is not use:
                        del pending[key]  # its result came back, or that write is over
                if not pending:
                    break
                if time.monotonic() >= deadline:
                    raise self._still_running(pid for _, pid in pending.values())
                time.sleep(pause)  # another thread's state, not the server's: nothing to wait on
                pause = min(pause * 2, 0.05)
            ended = broken | self._abandoned  # after: writes that ended meanwhile are in
            if ended:
                self._await_backends(ended, deadline)
        self._abandoned.difference_update(ended)

    def _still_running(self, pids: Iterable[int]) -> StoreError:
        listed = ", ".join(str(pid) for pid in sorted(set(pids)))
        return StoreError(
            f"the PostgreSQL session store ({self._where}): a write abandoned mid-statement "
            f"(server backend {listed}) is still running after {self._pool_timeout:g} s, so "
            "whether it commits is not known yet: retry later"
        )

    def _await_backends(self, pids: Collection[int], deadline: float) -> None:
        """Wait until the backends ``pids`` of closed connections have ended (by ``deadline``).

        Raises:
            StoreError: one is still running at the deadline, or the server cannot be
                reached.
        """
        waited = sorted(set(pids))
        pause = 0.002
        try:
            left = max(deadline - time.monotonic(), 0.001)
            with self._pooled(timeout=left) as raw:
                # Each poll is a statement of its own (autocommit), so a fresh snapshot of
                # pg_stat_activity. A backend that took an ended one's pid only makes the
                # (bounded) wait longer.
                while raw.execute(_BACKENDS_ALIVE, (waited,)).fetchone()[0]:
                    if time.monotonic() >= deadline:
                        raise self._still_running(waited)
                    time.sleep(pause)  # the server offers nothing to block on until then
                    pause = min(pause * 2, 0.05)
        except self._pool_errors as exc:
            raise self._failed("wait for a write abandoned mid-statement", exc) from exc

    def _lock(self, conn: Any, kind: str, key: str) -> None:
        # Held until the transaction ends; other sessions' writers are not affected.
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (f"{kind}:{key}",))

    # --- the hot path -----------------------------------------------------------------------

    def _record_fast(
        self,
        session_id: str,
        batch: list[Any],
        prepared: list[PreparedMessage] | None,
        hint: str | None,
    ) -> list[int]:
        """An append in one statement (one round trip); the general path if that wrote nothing.

        Nothing is written when the session is missing or its active thread is not
        ``hint`` (then the general path raises, or encodes again and appends).
        """
        if prepared is not None and lookup_key(session_id) is not None:
            self._check_open()
            params: dict[str, Any] = {
                "n": len(prepared),
                "model": batch_model(prepared),
                "sid": session_id,
                "hint": hint,
                "types": [p.type for p in prepared],
                "uuids": [p.uuid for p in prepared],
                "message_ids": [p.message_id for p in prepared],
                "thread_ids": [p.thread_id for p in prepared],
                "bodies": [p.body for p in prepared],
                "touched": sorted({p.thread_id for p in prepared if p.thread_id is not None}),
            }
            try:
                with self._pooled() as raw, self._writing_on(raw):
                    params["now"] = self._clock.now()
                    row = raw.execute(_APPEND, params).fetchone()
            except self._pool_errors as exc:
                raise self._failed("write", exc) from exc
            if row is not None:
                first = int(row[0]) + 1
                return list(range(first, first + len(prepared)))
        return super()._record_fast(session_id, batch, prepared, hint)

    def _record_checked(
        self,
        session_id: str,
        batch: list[Any],
        prepared: list[PreparedMessage] | None,
        hint: str | None,
    ) -> list[int]:
        """A ``skip_recorded`` append, once no abandoned statement can still commit.

        The write it retries may be on the server still (see :meth:`_settle_abandoned`).
        """
        self._check_open()
        self._settle_abandoned()
        return super()._record_checked(session_id, batch, prepared, hint)

    # --- lifecycle ------------------------------------------------------------------------

    def recover_writer(self) -> None:
        """Make the pool usable after a writer was killed (the store actor's ``on_start``).

        A connection a killed writer left mid-transaction went back to the pool, which
        rolled it back or discarded it. This checks the idle connections (replacing
        broken ones, e.g. after the server restarted) and that a connection works, then
        waits until no statement a killed writer left on the wire can still commit (see
        :meth:`_settle_abandoned`), so the new writer's retries see what it committed.

        Raises:
            StoreError: the store is closed, no connection to the server can be made, or
                an abandoned statement is still running after ``pool_timeout`` seconds.
        """
        self._check_open()
        try:
            self._pool.check()
            with self._pooled(timeout=self._pool_timeout) as raw:
                raw.execute(b"SELECT 1")
        except self._pool_errors as exc:
            raise StoreError(
                f"cannot reconnect to the PostgreSQL session store ({self._where}): "
                f"{self._scrub(exc)}"
            ) from exc
        self._settle_abandoned()

    def close(self) -> None:
        """Close the pool and its connections; later calls raise ``StoreError``."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._pool.close()
        log.info("store_closed", server=self._where)
