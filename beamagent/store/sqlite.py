"""The default :class:`~beamagent.store.SessionStore`: one SQLite file in WAL mode.

* The file is created with mode 0600 before SQLite opens it; WAL and shared-memory
  side files are kept at 0600 too.
* One write connection: every mutation runs on it in its own transaction, serialized by
  a lock, and returns only after ``COMMIT``. ``journal_mode=WAL`` with
  ``synchronous=NORMAL`` makes a committed transaction survive a crash of the process
  (not necessarily a power loss: that would need ``synchronous=FULL``).
* Reads run on one reader connection per thread, so in WAL they never wait for the writer.
* The schema is versioned with ``PRAGMA user_version`` and :data:`MIGRATIONS`; the file
  is marked with ``PRAGMA application_id = APPLICATION_ID``. A file that is not SQLite,
  is someone else's database, or has a newer schema raises
  :class:`~beamagent.errors.StoreError` naming the path; it is never overwritten.
* A database error met later (damaged pages, an I/O error, a full disk) is a
  :class:`~beamagent.errors.StoreError` naming the path too, for reads and writes alike.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import sqlite3
import stat
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from beamagent.errors import InvalidOption, StoreError
from beamagent.log import get_logger
from beamagent.store.base import MonotonicClock
from beamagent.store.sql import DamagedRow, SqlStore
from supervisors import Process, blocking, current_owner, owner_alive

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "SqliteStore", "messages_query"]

log = get_logger(__name__)

#: ``PRAGMA application_id`` of a beamagent store: "beam" in ASCII.
APPLICATION_ID = 0x6265616D

#: How long a connection waits for another process's lock before failing (seconds).
BUSY_TIMEOUT = 10.0

_SQLITE_HEADER = b"SQLite format 3\x00"

#: Schema migrations: step ``i`` takes ``user_version`` from ``i`` to ``i + 1``.
#: Append new steps; never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE sessions (
            session_id        TEXT PRIMARY KEY,
            backend           TEXT NOT NULL,
            model             TEXT,
            cwd               TEXT,
            native_session_id TEXT,
            created_at        REAL NOT NULL,
            updated_at        REAL NOT NULL,
            message_count     INTEGER NOT NULL DEFAULT 0,
            extra             TEXT NOT NULL DEFAULT '{}',
            active_thread_id  TEXT
        )
        """,
        "CREATE INDEX sessions_by_updated ON sessions (updated_at)",
        """
        CREATE TABLE messages (
            session_id  TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
            seq         INTEGER NOT NULL,
            type        TEXT NOT NULL,
            uuid        TEXT,
            message_id  TEXT,
            thread_id   TEXT,
            created_at  REAL NOT NULL,
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
            session_id       TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
            thread_id        TEXT NOT NULL,
            name             TEXT NOT NULL,
            metadata         TEXT NOT NULL DEFAULT '{}',
            created_at       REAL NOT NULL,
            updated_at       REAL NOT NULL,
            status           TEXT NOT NULL
                             CHECK (status IN ('active', 'paused', 'completed', 'archived')),
            archived         INTEGER NOT NULL DEFAULT 0,
            archived_at      REAL,
            parent_thread_id TEXT,
            summary          TEXT,
            PRIMARY KEY (session_id, thread_id)
        )
        """,
    ),
    (
        # Checkpoints of graph runs (beamagent.graph): the live state as JSON, results appended.
        """
        CREATE TABLE graph_runs (
            run_id        TEXT PRIMARY KEY,
            job_id        TEXT NOT NULL,
            parent_run_id TEXT,
            status        TEXT NOT NULL,
            created_at    REAL NOT NULL,
            updated_at    REAL NOT NULL,
            state         TEXT NOT NULL
        )
        """,
        "CREATE INDEX graph_runs_by_updated ON graph_runs (updated_at)",
        """
        CREATE TABLE graph_run_results (
            run_id TEXT NOT NULL REFERENCES graph_runs (run_id) ON DELETE CASCADE,
            body   TEXT NOT NULL
        )
        """,
        "CREATE INDEX graph_run_results_by_run ON graph_run_results (run_id)",
    ),
    (
        # Routing state that must outlive the registry (beamagent.routing): health
        # overrides ("health": backend -> status) and sticky bindings ("sticky").
        """
        CREATE TABLE routing_state (
            kind  TEXT NOT NULL,
            key   TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (kind, key)
        )
        """,
    ),
)

#: The schema version this code writes and understands.
SCHEMA_VERSION = len(MIGRATIONS)


def messages_query(
    session_id: str,
    visible: int,
    types: frozenset[str] | None,
    offset: int,
    limit: int | None,
) -> tuple[str, list[Any]]:
    """The SQL (and parameters) ``get_session_messages`` runs, exposed for query-plan tests.

    Seqs are contiguous (1..count, append-only), so without a type filter ``offset`` and
    ``limit`` become a seq range on the primary key: reading page 1,980 of a 100,000
    message session touches 50 index entries, not 99,000.
    """
    if types is None:
        end = visible if limit is None else min(visible, offset + limit)
        return (
            "SELECT body FROM messages WHERE session_id = ? AND seq > ? AND seq <= ? ORDER BY seq",
            [session_id, offset, end],
        )
    marks = ", ".join("?" for _ in types)
    # The inner query reads only the (session_id, type, seq) index (without the hint the
    # planner prefers the primary key for its order and filters every row's type); bodies
    # are read for the selected page alone.
    return (
        "SELECT body FROM messages WHERE session_id = ? AND seq IN ("
        "SELECT seq FROM messages INDEXED BY messages_by_type "
        f"WHERE session_id = ? AND type IN ({marks}) AND seq <= ? "
        "ORDER BY seq LIMIT ? OFFSET ?) ORDER BY seq",
        [session_id, session_id, *sorted(types), visible, -1 if limit is None else limit, offset],
    )


def _open_file(path: Path) -> None:
    """Create the file 0600 if missing; refuse anything that is not an SQLite file."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Created here, not by SQLite, so that its mode is 0600 from the first byte on.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot open the session store {str(path)!r}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StoreError(f"the session store {str(path)!r} is not a regular file")
        header = os.read(fd, len(_SQLITE_HEADER))
    finally:
        os.close(fd)
    if header and header != _SQLITE_HEADER:
        raise StoreError(
            f"{str(path)!r} is not a SQLite database (corrupted, or not a session store); "
            "refusing to touch it: move it away or choose another store path"
        )
    if info.st_mode & 0o077:
        log.warning("store_file_permissive", path=str(path), mode=oct(info.st_mode & 0o777))


def _tighten_side_files(path: Path) -> None:
    # SQLite gives -wal/-shm the database file's mode; keep them private regardless.
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        try:
            mode = side.stat().st_mode
            if mode & 0o077:
                side.chmod(0o600)
        except FileNotFoundError:
            continue


#: How often a writer waiting for the write lock checks that its holder is still alive
#: (seconds). A live holder wakes the waiter when it releases; this only bounds how long
#: a lock left by a dead thread goes unnoticed.
_LOCK_POLL = 0.05


_Owner = Process | threading.Thread
"""A write-lock holder: the process running the write (else the thread; see current_owner)."""


class _WriteLock:
    """The write lock: fair, not reentrant, and recoverable from a holder that died holding it.

    A writer killed mid-write (``supervisors.kill`` raises in the handler at the next
    bytecode) can stop anywhere, even between taking the lock and releasing it. So the
    lock records its holder — the process running the write, else the thread
    (``supervisors.current_owner``: a scheduler worker outlives the processes it runs)
    — and a writer that finds the holder dead takes it over (the caller then rolls back
    what the dead holder may have left open: see :class:`_WriteTransaction`). A writer
    that finds that it holds the lock already gets it: writes never nest, so that hold
    was leaked by an interrupted call of its own. Waiting is a managed blocking wait
    (``supervisors.blocking``), so waiting writers never starve the scheduler.

    Every step is one C call (``dict.setdefault``/``get``, ``deque.append``/``popleft``, a
    raw lock's timed ``acquire``/``release``), never a Python-level ``Condition``, whose
    internal lock a thread killed inside ``with``/``wait`` can leave held for ever. Waiters
    queue up and ``release`` hands the lock to the first live one (FIFO: a busy writer
    cannot starve the others); a waiter that misses its wake-up polls again within
    ``_LOCK_POLL``.
    """

    __slots__ = ("_holder", "_queue", "_takeovers")

    def __init__(self) -> None:
        self._holder: dict[str, _Owner] = {}
        self._queue: deque[tuple[_Owner, _thread.LockType]] = deque()
        self._takeovers: dict[_Owner, _Owner] = {}  # dead -> heir

    def acquire(self) -> _Owner | None:
        """Take the lock, waiting (in turn) while a live holder holds it.

        Returns the dead holder it was taken over from, or ``None``.
        """
        me = current_owner()
        if not self._queue and self._holder.setdefault("owner", me) is me:
            return None
        gate = _thread.allocate_lock()
        gate.acquire()
        entry = (me, gate)
        self._queue.append(entry)
        try:
            with blocking():  # a scheduler worker waiting here is replaced meanwhile
                while True:
                    holder = self._holder.get("owner")
                    if holder is me:
                        return None  # handed over by release(), or an earlier hold of ours
                    if holder is None:
                        first = bool(self._queue) and self._queue[0] is entry
                        if first and self._holder.setdefault("owner", me) is me:
                            return None
                    # Of several waiters that saw the same dead holder, only the first to
                    # claim it (one setdefault, atomic) takes over.
                    elif not owner_alive(holder) and self._takeovers.setdefault(holder, me) is me:
                        self._holder["owner"] = me
                        return holder
                    gate.acquire(timeout=_LOCK_POLL)
        finally:
            with contextlib.suppress(ValueError):  # release() already took us off
                self._queue.remove(entry)

    def release(self) -> None:
        """Hand the lock to the first live waiter, or free it."""
        while True:
            try:
                waiter, gate = self._queue.popleft()
            except IndexError:
                break
            if owner_alive(waiter):
                self._holder["owner"] = waiter
                gate.release()
                return
        self._holder.pop("owner", None)


class _WriteTransaction:
    """``with store._write() as conn``: hold the write lock, ``BEGIN IMMEDIATE`` ... ``COMMIT``.

    On an exception (also one from ``BEGIN`` or ``COMMIT``) the transaction is rolled back
    and the lock released before the exception goes on; a database error (disk full, I/O
    error, a damaged file) goes on as :class:`StoreError` naming the file. A kill can
    still land between any two bytecodes of this class; the next writer repairs whatever
    it left: it takes over a lock whose holder died (:class:`_WriteLock`) and rolls back a
    transaction left open on the connection before it begins its own. A class rather than
    a ``@contextmanager`` generator because every recorded message pays for it.
    """

    __slots__ = ("_store",)

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        store = self._store
        store._take_write_lock()
        try:
            conn = store._clean_writer()
            conn.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            store._end_failed_write()
            if isinstance(exc, sqlite3.Error):
                raise store._failed("write", exc) from exc
            raise
        return conn

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        store = self._store
        if exc_type is not None:
            store._end_failed_write()
            if isinstance(exc, sqlite3.Error | DamagedRow):
                raise store._failed("write", exc) from exc
            return
        try:
            store._writer.execute("COMMIT")
        except BaseException as failed:
            store._end_failed_write()
            if isinstance(failed, sqlite3.Error):
                raise store._failed("commit", failed) from failed
            raise
        store._write_lock.release()


class SqliteStore(SqlStore):
    """A :class:`~beamagent.store.SessionStore` in one SQLite file (WAL, mode 0600).

    >>> import tempfile, pathlib
    >>> with SqliteStore(pathlib.Path(tempfile.mkdtemp()) / "s.db") as store:
    ...     store.create_session("s1", "local").message_count
    0
    """

    _NO_LIMIT = -1
    _SHARE_ID_SQL = "json_extract(extra, '$.share.share_id')"
    _RESULT_ORDER = "rowid"
    _messages_query = staticmethod(messages_query)

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time
    ) -> None:
        raw = os.fspath(path)
        if not isinstance(raw, str) or raw in ("", ":memory:") or raw.startswith("file:"):
            raise InvalidOption(
                f"SqliteStore needs a file path, got {raw!r}; "
                "use MemoryStore (or open_store(':memory:')) for an in-memory store"
            )
        self._path = Path(os.path.abspath(Path(raw).expanduser()))
        self._clock = MonotonicClock(clock)
        self._thread_hints = {}
        self._write_lock = _WriteLock()
        self._readers_lock = threading.Lock()
        self._readers: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = []
        self._local = threading.local()
        self._closed = False
        _open_file(self._path)
        try:
            self._writer = self._connect()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the session store {str(self._path)!r}: {exc}") from exc
        try:
            self._check_identity()
            self._configure_writer(self._writer)
            self._migrate()
            _tighten_side_files(self._path)
        except sqlite3.DatabaseError as exc:
            self._writer.close()
            raise StoreError(
                f"cannot use {str(self._path)!r} as a session store: {exc}; refusing to touch "
                "it: move it away or choose another store path"
            ) from exc
        except BaseException:
            self._writer.close()
            raise
        log.info("store_opened", path=str(self._path), schema_version=SCHEMA_VERSION)

    @property
    def path(self) -> Path:
        """The absolute path of the database file."""
        return self._path

    def __repr__(self) -> str:
        return f"SqliteStore({str(self._path)!r})"

    # --- connections ----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves. check_same_thread=False
        # because close() may run on another thread than the one that opened a connection.
        conn = sqlite3.connect(
            self._path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _check_identity(self) -> None:
        conn = self._writer
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        fresh = app_id == 0 and version == 0 and not tables
        if not fresh and app_id != APPLICATION_ID:
            raise StoreError(
                f"{str(self._path)!r} is a SQLite database that is not a beamagent session "
                f"store (application_id={app_id}, tables={sorted(tables)}); refusing to touch "
                "it: choose another store path"
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the session store {str(self._path)!r} has schema version {version}, newer "
                f"than this beamagent understands ({SCHEMA_VERSION}); upgrade beamagent"
            )

    def _configure_writer(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(
                f"the session store {str(self._path)!r} could not switch to WAL mode "
                f"(journal_mode is {mode!r}); is it on a file system without shared memory?"
            )
        conn.execute("PRAGMA synchronous = NORMAL")

    def _migrate(self) -> None:
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: another process may have migrated meanwhile.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the session store {str(self._path)!r} has schema version {version}, "
                    f"newer than this beamagent understands ({SCHEMA_VERSION}); upgrade beamagent"
                )
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
                    conn.execute(statement)
            if version != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if version != SCHEMA_VERSION:
            log.info(
                "store_migrated",
                path=str(self._path),
                version_from=version,
                version_to=SCHEMA_VERSION,
            )

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the session store {str(self._path)!r} is closed")

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        conn = self._connect()
        conn.execute("PRAGMA query_only = ON")
        me = threading.current_thread()
        with self._readers_lock:
            if self._closed:
                conn.close()
                self._check_open()
            # Threads come and go; close the connections of those that ended.
            alive = []
            for owner, other in self._readers:
                thread = owner()
                if thread is None or not thread.is_alive():
                    other.close()
                else:
                    alive.append((owner, other))
            alive.append((weakref.ref(me), conn))
            self._readers = alive
        self._local.conn = conn
        return conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot for every query inside.

        A database error (a damaged file, an I/O error) or a damaged row inside is raised
        as :class:`StoreError` naming the file.
        """
        self._check_open()
        try:
            conn = self._reader()
            conn.execute("BEGIN")
        except sqlite3.Error as exc:
            raise self._failed("read", exc) from exc
        try:
            yield conn
        except (sqlite3.Error, DamagedRow) as exc:
            raise self._failed("read", exc) from exc
        finally:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _failed(self, action: str, exc: BaseException) -> StoreError:
        """The :class:`StoreError` for a database error (or a damaged row) during ``action``."""
        if self._closed:  # closed by another thread meanwhile
            return StoreError(f"the session store {str(self._path)!r} is closed")
        log.error("store_failed", path=str(self._path), action=action, error=str(exc))
        return StoreError(f"the session store {str(self._path)!r} failed to {action}: {exc}")

    def _write(self) -> _WriteTransaction:
        """A write transaction on the single writer; committed before the caller returns."""
        return _WriteTransaction(self)

    @contextmanager
    def _idle_writer(self) -> Iterator[sqlite3.Connection]:
        """The write connection between transactions, held under the write lock.

        For :mod:`beamagent.testing.faults`, which changes the connection's settings.

        Raises:
            StoreError: the store is closed.
        """
        self._take_write_lock()
        try:
            yield self._clean_writer()
        finally:
            self._write_lock.release()

    def _take_write_lock(self) -> None:
        """Take the write lock (over from a holder that died holding it, if need be)."""
        if self._write_lock.acquire() is not None:
            log.warning("store_write_lock_recovered", path=str(self._path))

    def _clean_writer(self) -> sqlite3.Connection:
        """Under the write lock: the write connection, with no transaction left open.

        Raises:
            StoreError: the store is closed.
            sqlite3.Error: rolling back what a killed writer left open failed.
        """
        self._check_open()
        conn = self._writer
        if conn.in_transaction:
            self._discard_open_transaction(conn)
        return conn

    def _discard_open_transaction(self, conn: sqlite3.Connection) -> None:
        # Left open by a writer killed mid-transaction: nothing of it was committed, and
        # BEGIN would fail with "cannot start a transaction within a transaction".
        log.warning("store_open_transaction_discarded", path=str(self._path))
        conn.execute("ROLLBACK")

    def _end_failed_write(self) -> None:
        """Roll back whatever the writer has open, then release the write lock."""
        try:
            if not self._closed:
                conn = self._writer
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            # The failure that got us here is the one to report; the next write retries
            # the rollback before it begins.
            log.warning("store_rollback_failed", path=str(self._path), error=str(exc))
        finally:
            self._write_lock.release()

    def recover_writer(self) -> None:
        """Make the write connection clean for a new writer (the store actor's ``on_start``).

        Takes the write lock (over from a holder that died holding it, if need be) and
        rolls back any transaction a writer killed mid-write left open: none of it was
        committed. If that rollback fails, the write connection is replaced by a new one.

        Raises:
            StoreError: the store is closed, or a new write connection cannot be opened.
        """
        self._take_write_lock()
        try:
            conn = self._writer
            try:
                self._clean_writer()
                return
            except sqlite3.Error as exc:
                log.warning("store_writer_replaced", path=str(self._path), error=str(exc))
            try:
                fresh = self._connect()
            except sqlite3.Error as exc:
                raise StoreError(
                    f"cannot reopen the session store {str(self._path)!r} for writing: {exc}"
                ) from exc
            try:
                self._configure_writer(fresh)
            except BaseException as exc:
                fresh.close()
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(
                        f"cannot reopen the session store {str(self._path)!r} for writing: {exc}"
                    ) from exc
                raise
            self._writer = fresh
            with suppress(sqlite3.Error):
                conn.close()
        finally:
            self._write_lock.release()

    # --- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection this store opened; later calls raise ``StoreError``."""
        self._write_lock.acquire()
        try:
            with self._readers_lock:
                if self._closed:
                    return
                self._closed = True
                for _, conn in self._readers:
                    conn.close()
                self._readers = []
                self._writer.close()
        finally:
            self._write_lock.release()
        log.info("store_closed", path=str(self._path))
