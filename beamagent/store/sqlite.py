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
import json
import os
import sqlite3
import stat
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import attrs

from beamagent.errors import (
    InvalidOption,
    NotShared,
    SessionNotFound,
    StoreError,
    ThreadNotFound,
)
from beamagent.log import get_logger
from beamagent.messages import Message
from beamagent.store.base import (
    SKIP_RECORDED_WINDOW,
    MonotonicClock,
    PreparedMessage,
    SessionRecord,
    ThreadDetail,
    ThreadRecord,
    ThreadStatus,
    check_extra,
    check_flag,
    check_id,
    check_limit,
    check_mapping,
    check_offset,
    check_optional_str,
    check_routing_entry,
    check_since,
    check_types,
    check_update_fields,
    encode_json,
    fork_extra,
    lookup_key,
    merge_extra,
    new_session_id,
    new_share_id,
    new_thread_id,
    prepare_message,
    recorded_prefix,
    storable_text,
    with_thread_id,
)
from beamagent.store.selectors import (
    MatchKey,
    MessageMatch,
    parse_revert_selector,
    parse_rollback_selector,
    revert_visible_count,
    rollback_visible_count,
    selector_to_dict,
)
from beamagent.store.summary import AGENT_OUTPUT_TYPES, USER_TYPES, first_text, format_summary
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

_SESSION_COLUMNS = (
    "session_id, backend, model, cwd, native_session_id, created_at, updated_at, "
    "message_count, extra, active_thread_id"
)
_THREAD_COLUMNS = (
    "thread_id, session_id, name, metadata, created_at, updated_at, status, archived, "
    "archived_at, parent_thread_id, summary"
)
# record_messages reads and writes only these (constant texts: sqlite3 reuses the statements).
_RECORD_READ = "SELECT message_count, active_thread_id FROM sessions WHERE session_id = ?"
_RECORD_UPDATE = (
    "UPDATE sessions SET message_count = ?, updated_at = ?, model = coalesce(?, model) "
    "WHERE session_id = ?"
)
_MESSAGE_INSERT = (
    "INSERT INTO messages (session_id, seq, type, uuid, message_id, thread_id, created_at, "
    "rolled_back, body) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)"
)


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


class _DamagedRow(Exception):
    """A stored JSON text that is not a JSON object: the file was damaged (or edited)."""


def _decode(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise _DamagedRow(f"a stored JSON text does not decode ({exc})") from exc
    if not isinstance(value, dict):
        raise _DamagedRow(f"a stored JSON text is a {type(value).__name__}, not an object")
    return value


def _decode_any(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise _DamagedRow(f"a stored JSON text does not decode ({exc})") from exc


def _session_from_row(row: Sequence[Any]) -> SessionRecord:
    return SessionRecord(
        session_id=row[0],
        backend=row[1],
        model=row[2],
        cwd=row[3],
        native_session_id=row[4],
        created_at=row[5],
        updated_at=row[6],
        message_count=row[7],
        extra=_decode(row[8]),
        active_thread_id=row[9],
    )


def _thread_from_row(row: Sequence[Any], total: int = 0, visible: int = 0) -> ThreadRecord:
    return ThreadRecord(
        thread_id=row[0],
        session_id=row[1],
        name=row[2],
        metadata=_decode(row[3]),
        created_at=row[4],
        updated_at=row[5],
        status=ThreadStatus(row[6]),
        archived=bool(row[7]),
        archived_at=row[8],
        parent_thread_id=row[9],
        summary=row[10],
        message_count=total,
        visible_message_count=visible,
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
            if isinstance(exc, sqlite3.Error | _DamagedRow):
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


class SqliteStore:
    """A :class:`~beamagent.store.SessionStore` in one SQLite file (WAL, mode 0600).

    >>> import tempfile, pathlib
    >>> with SqliteStore(pathlib.Path(tempfile.mkdtemp()) / "s.db") as store:
    ...     store.create_session("s1", "local").message_count
    0
    """

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

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        except (sqlite3.Error, _DamagedRow) as exc:
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

    # --- row helpers ----------------------------------------------------------------------

    @staticmethod
    def _load(conn: sqlite3.Connection, session_id: Any) -> SessionRecord:
        row = None
        if lookup_key(session_id) is not None:
            row = conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
        if row is None:
            raise SessionNotFound(session_id)
        return _session_from_row(row)

    @staticmethod
    def _save(conn: sqlite3.Connection, record: SessionRecord) -> None:
        conn.execute(
            "UPDATE sessions SET backend = ?, model = ?, cwd = ?, native_session_id = ?, "
            "updated_at = ?, message_count = ?, extra = ?, active_thread_id = ? "
            "WHERE session_id = ?",
            (
                record.backend,
                record.model,
                record.cwd,
                record.native_session_id,
                record.updated_at,
                record.message_count,
                encode_json(dict(record.extra), "extra"),
                record.active_thread_id,
                record.session_id,
            ),
        )

    @staticmethod
    def _insert_session(conn: sqlite3.Connection, record: SessionRecord) -> None:
        conn.execute(
            f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.session_id,
                record.backend,
                record.model,
                record.cwd,
                record.native_session_id,
                record.created_at,
                record.updated_at,
                record.message_count,
                encode_json(dict(record.extra), "extra"),
                record.active_thread_id,
            ),
        )

    @staticmethod
    def _thread_row(conn: sqlite3.Connection, session_id: str, thread_id: Any) -> ThreadRecord:
        row = None
        if lookup_key(thread_id) is not None:
            row = conn.execute(
                f"SELECT {_THREAD_COLUMNS} FROM threads WHERE session_id = ? AND thread_id = ?",
                (session_id, thread_id),
            ).fetchone()
        if row is None:
            raise ThreadNotFound(f"no thread {thread_id!r} in session {session_id!r}")
        return _thread_from_row(row)

    @staticmethod
    def _save_thread(conn: sqlite3.Connection, thread: ThreadRecord) -> None:
        conn.execute(
            "UPDATE threads SET name = ?, metadata = ?, updated_at = ?, status = ?, "
            "archived = ?, archived_at = ?, parent_thread_id = ?, summary = ? "
            "WHERE session_id = ? AND thread_id = ?",
            (
                thread.name,
                encode_json(dict(thread.metadata), "metadata"),
                thread.updated_at,
                thread.status.value,
                int(thread.archived),
                thread.archived_at,
                thread.parent_thread_id,
                thread.summary,
                thread.session_id,
                thread.thread_id,
            ),
        )

    @staticmethod
    def _insert_thread(conn: sqlite3.Connection, thread: ThreadRecord) -> None:
        conn.execute(
            f"INSERT INTO threads ({_THREAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                thread.thread_id,
                thread.session_id,
                thread.name,
                encode_json(dict(thread.metadata), "metadata"),
                thread.created_at,
                thread.updated_at,
                thread.status.value,
                int(thread.archived),
                thread.archived_at,
                thread.parent_thread_id,
                thread.summary,
            ),
        )

    @staticmethod
    def _with_counts(
        conn: sqlite3.Connection, record: SessionRecord, thread: ThreadRecord
    ) -> ThreadRecord:
        total, visible = conn.execute(
            "SELECT count(*), coalesce(sum(rolled_back = 0 AND seq <= ?), 0) FROM messages "
            "WHERE session_id = ? AND thread_id = ?",
            (record.visible_message_count, record.session_id, thread.thread_id),
        ).fetchone()
        return attrs.evolve(thread, message_count=total, visible_message_count=visible)

    @staticmethod
    def _thread_visible(
        conn: sqlite3.Connection, record: SessionRecord, thread_id: str, columns: str
    ) -> list[Any]:
        return conn.execute(
            f"SELECT {columns} FROM messages WHERE session_id = ? AND thread_id = ? "
            "AND rolled_back = 0 AND seq <= ? ORDER BY seq",
            (record.session_id, thread_id, record.visible_message_count),
        ).fetchall()

    @staticmethod
    def _insert_messages(
        conn: sqlite3.Connection,
        session_id: str,
        count: int,
        prepared: Sequence[PreparedMessage],
        now: float,
    ) -> tuple[list[int], str | None]:
        """Append ``prepared`` after message ``count``; bump the session and its threads.

        Only ``message_count``, ``updated_at`` and ``model`` of the session change (the
        model to the last string ``model`` of the batch, if any); the threads the
        messages belong to get ``updated_at = now``. Returns the new seqs and the
        batch's model (``None``: unchanged).
        """
        first = count + 1
        conn.executemany(
            _MESSAGE_INSERT,
            [
                (session_id, seq, p.type, p.uuid, p.message_id, p.thread_id, now, p.body)
                for seq, p in enumerate(prepared, first)
            ],
        )
        model = None
        touched = set()
        for p in prepared:
            if p.model is not None:
                model = p.model
            if p.thread_id is not None:
                touched.add(p.thread_id)
        if touched:
            conn.executemany(
                "UPDATE threads SET updated_at = ? WHERE session_id = ? AND thread_id = ?",
                [(now, session_id, t) for t in sorted(touched)],
            )
        conn.execute(_RECORD_UPDATE, (count + len(prepared), now, model, session_id))
        return list(range(first, first + len(prepared))), model

    def _append(
        self,
        conn: sqlite3.Connection,
        record: SessionRecord,
        prepared: Sequence[PreparedMessage],
        now: float,
    ) -> tuple[SessionRecord, list[int]]:
        seqs, model = self._insert_messages(
            conn, record.session_id, record.message_count, prepared, now
        )
        record = attrs.evolve(
            record,
            message_count=record.message_count + len(seqs),
            model=record.model if model is None else model,
            updated_at=now,
        )
        return record, seqs

    def _activate(
        self, conn: sqlite3.Connection, record: SessionRecord, thread_id: str | None, now: float
    ) -> SessionRecord:
        previous = record.active_thread_id
        if previous is not None and previous != thread_id:
            # Not a use of that thread: its updated_at (list order) stays.
            conn.execute(
                "UPDATE threads SET status = 'paused' "
                "WHERE session_id = ? AND thread_id = ? AND status = 'active'",
                (record.session_id, previous),
            )
        record = attrs.evolve(record, active_thread_id=thread_id, updated_at=now)
        self._save(conn, record)
        return record

    # --- sessions -------------------------------------------------------------------------

    def create_session(
        self,
        session_id: str,
        backend: str,
        model: str | None = None,
        cwd: str | None = None,
        extra: Mapping[str, Any] | None = None,
        native_session_id: str | None = None,
    ) -> SessionRecord:
        """Create a session, or update an existing one's metadata (see ``docs/store.md``)."""
        check_id(session_id, "session_id")
        check_id(backend, "backend")
        check_optional_str(model, "model")
        check_optional_str(cwd, "cwd")
        check_optional_str(native_session_id, "native_session_id")
        extra_dict = check_extra(extra)
        with self._write() as conn:
            now = self._clock.now()
            try:
                old = self._load(conn, session_id)
            except SessionNotFound:
                record = SessionRecord(
                    session_id=session_id,
                    backend=backend,
                    model=model,
                    cwd=cwd,
                    created_at=now,
                    updated_at=now,
                    message_count=0,
                    native_session_id=native_session_id,
                    extra=merge_extra({}, extra_dict),
                )
                self._insert_session(conn, record)
                return record
            record = attrs.evolve(
                old,
                backend=backend,
                model=old.model if model is None else model,
                cwd=old.cwd if cwd is None else cwd,
                native_session_id=(
                    old.native_session_id if native_session_id is None else native_session_id
                ),
                extra=merge_extra(old.extra, extra_dict),
                updated_at=now,
            )
            self._save(conn, record)
            return record

    def update_session(self, session_id: str, /, **fields: Any) -> SessionRecord:
        """Set ``backend``, ``model``, ``cwd``, ``native_session_id``; merge ``extra``."""
        checked = check_update_fields(fields)
        with self._write() as conn:
            record = self._load(conn, session_id)
            if "extra" in checked:
                checked["extra"] = merge_extra(record.extra, checked["extra"])
            record = attrs.evolve(record, updated_at=self._clock.now(), **checked)
            self._save(conn, record)
            return record

    def get_session(self, session_id: str) -> SessionRecord:
        """The session's metadata."""
        with self._read() as conn:
            return self._load(conn, session_id)

    def list_sessions(
        self,
        *,
        backend: str | None = None,
        cwd: str | None = None,
        model: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[SessionRecord]:
        """Sessions matching every given filter, most recently updated first."""
        check_optional_str(backend, "backend")
        check_optional_str(cwd, "cwd")
        check_optional_str(model, "model")
        since = check_since(since)
        limit = check_limit(limit)
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("backend", backend), ("cwd", cwd), ("model", model)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("updated_at >= ?")
            params.append(since)
        sql = f"SELECT {_SESSION_COLUMNS} FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY updated_at DESC, session_id LIMIT ?"
        params.append(-1 if limit is None else limit)
        with self._read() as conn:
            return [_session_from_row(row) for row in conn.execute(sql, params)]

    def delete_session(self, session_id: str) -> None:
        """Delete the session with its messages and threads."""
        with self._write() as conn:
            self._load(conn, session_id)
            conn.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))

    # --- messages -------------------------------------------------------------------------

    def record_message(self, session_id: str, message: Mapping[str, Any] | Message) -> int:
        """Append one message; returns its seq once it is committed."""
        (seq,) = self.record_messages(session_id, [message])
        return seq

    def record_messages(
        self,
        session_id: str,
        messages: Iterable[Mapping[str, Any] | Message],
        *,
        skip_recorded: bool = False,
    ) -> list[int]:
        """Append messages in one transaction (all or none); returns their seqs.

        With ``skip_recorded``, leading messages already stored are not appended again
        (see :meth:`SessionStore.record_messages`).

        Raises:
            SessionNotFound: no such session.
            InvalidOption: a message is not a JSON-able mapping with a string ``type``.
            StoreError: the store is closed, or the database failed (nothing was written).
        """
        batch = list(messages)
        if skip_recorded is not False:
            check_flag(skip_recorded, "skip_recorded")
        with self._write() as conn:
            # The hot path of every session: read and write only the columns an append
            # uses, not the whole record (see _append for the general case).
            row = None
            if lookup_key(session_id) is not None:
                row = conn.execute(_RECORD_READ, (session_id,)).fetchone()
            if row is None:
                raise SessionNotFound(session_id)
            count, active_thread_id = row
            prepared = [prepare_message(m, active_thread_id) for m in batch]
            done: list[int] = []
            if skip_recorded and prepared:
                done = self._recorded_seqs(conn, session_id, count, prepared)
                if len(done) == len(prepared):
                    return done  # all stored already: nothing changes
                prepared = prepared[len(done) :]
            seqs, _ = self._insert_messages(conn, session_id, count, prepared, self._clock.now())
            return done + seqs if done else seqs

    @staticmethod
    def _recorded_seqs(
        conn: sqlite3.Connection, session_id: str, count: int, batch: Sequence[PreparedMessage]
    ) -> list[int]:
        """The seqs of the leading messages of ``batch`` that are stored already."""
        first = batch[0].uuid
        if first is None:
            return []
        # Two index reads: the latest seq with that uuid (messages_by_uuid), then the uuids
        # from there on (the primary key).
        (start,) = conn.execute(
            "SELECT max(seq) FROM messages WHERE session_id = ? AND uuid = ? AND seq > ?",
            (session_id, first, count - SKIP_RECORDED_WINDOW),
        ).fetchone()
        if start is None:
            return []
        stored = conn.execute(
            "SELECT uuid FROM messages WHERE session_id = ? AND seq >= ? AND seq < ? ORDER BY seq",
            (session_id, start, start + len(batch)),
        )
        return list(range(start, start + recorded_prefix(batch, (row[0] for row in stored))))

    def get_session_messages(
        self,
        session_id: str,
        *,
        types: Iterable[str] | str | None = None,
        offset: int = 0,
        limit: int | None = None,
        include_hidden: bool = False,
    ) -> list[dict[str, Any]]:
        """Messages in seq order: revert view, then ``types``, then ``offset``, then ``limit``."""
        chosen = check_types(types)
        offset = check_offset(offset)
        limit = check_limit(limit)
        with self._read() as conn:
            record = self._load(conn, session_id)
            visible = record.message_count if include_hidden else record.visible_message_count
            sql, params = messages_query(record.session_id, visible, chosen, offset, limit)
            return [_decode(row[0]) for row in conn.execute(sql, params)]

    # --- fork, revert, share, summary -----------------------------------------------------

    def fork_session(
        self,
        source_session_id: str,
        /,
        *,
        session_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
        include_hidden: bool = True,
    ) -> SessionRecord:
        """Copy a session (metadata, messages, threads) under a new id."""
        new_id = new_session_id() if session_id is None else check_id(session_id, "session_id")
        extra_dict = check_extra(extra)
        with self._write() as conn:
            parent = self._load(conn, source_session_id)
            exists = conn.execute(
                "SELECT 1 FROM sessions WHERE session_id = ?", (new_id,)
            ).fetchone()
            if exists:
                raise InvalidOption(f"cannot fork into {new_id!r}: that session already exists")
            now = self._clock.now()
            count = parent.message_count if include_hidden else parent.visible_message_count
            record = SessionRecord(
                session_id=new_id,
                backend=parent.backend,
                model=parent.model,
                cwd=parent.cwd,
                created_at=now,
                updated_at=now,
                message_count=count,
                native_session_id=None,
                extra=fork_extra(
                    parent.extra,
                    extra_dict,
                    parent_session_id=parent.session_id,
                    forked_at=now,
                    include_hidden=include_hidden,
                ),
                active_thread_id=parent.active_thread_id,
            )
            self._insert_session(conn, record)
            conn.execute(
                "INSERT INTO messages (session_id, seq, type, uuid, message_id, thread_id, "
                "created_at, rolled_back, body) SELECT ?, seq, type, uuid, message_id, "
                "thread_id, created_at, rolled_back, body FROM messages "
                "WHERE session_id = ? AND seq <= ?",
                (new_id, parent.session_id, count),
            )
            conn.execute(
                f"INSERT INTO threads ({_THREAD_COLUMNS}) SELECT thread_id, ?, name, metadata, "
                "created_at, updated_at, status, archived, archived_at, parent_thread_id, "
                "summary FROM threads WHERE session_id = ?",
                (new_id, parent.session_id),
            )
            log.debug("session_forked", session_id=new_id, parent_session_id=parent.session_id)
            return record

    def revert_session(self, session_id: str, selector: Any) -> SessionRecord:
        """Hide the messages after the selected point until ``unrevert_session``."""
        parsed = parse_revert_selector(selector)
        with self._write() as conn:
            record = self._load(conn, session_id)

            def find_seq(match: MessageMatch) -> int | None:
                column = "uuid" if match.key is MatchKey.UUID else "message_id"
                row = conn.execute(
                    f"SELECT min(seq) FROM messages WHERE session_id = ? AND {column} = ?",
                    (record.session_id, match.value),
                ).fetchone()
                return None if row[0] is None else int(row[0])

            visible = revert_visible_count(parsed, record.message_count, find_seq)
            now = self._clock.now()
            view = {
                "visible_message_count": visible,
                "reverted_at": now,
                "selector": selector_to_dict(parsed),
            }
            record = attrs.evolve(record, extra={**record.extra, "view": view}, updated_at=now)
            self._save(conn, record)
            return record

    def unrevert_session(self, session_id: str) -> SessionRecord:
        """Remove the revert view (a no-op when the session is not reverted)."""
        with self._write() as conn:
            record = self._load(conn, session_id)
            extra = {k: v for k, v in record.extra.items() if k != "view"}
            record = attrs.evolve(record, extra=extra, updated_at=self._clock.now())
            self._save(conn, record)
            return record

    def share_session(self, session_id: str, *, share_id: str | None = None) -> dict[str, Any]:
        """Create an active share, replacing any previous one."""
        wanted = new_share_id() if share_id is None else check_id(share_id, "share_id")
        with self._write() as conn:
            record = self._load(conn, session_id)
            clash = conn.execute(
                "SELECT session_id FROM sessions WHERE session_id != ? "
                "AND json_extract(extra, '$.share.share_id') = ?",
                (record.session_id, wanted),
            ).fetchone()
            if clash:
                raise InvalidOption(f"share id {wanted!r} is already used by another session")
            now = self._clock.now()
            share = {
                "share_id": wanted,
                "session_id": record.session_id,
                "created_at": now,
                "status": "active",
            }
            record = attrs.evolve(record, extra={**record.extra, "share": share}, updated_at=now)
            self._save(conn, record)
            return share

    def unshare_session(self, session_id: str) -> dict[str, Any]:
        """Revoke the share; an already revoked share is returned unchanged."""
        with self._write() as conn:
            record = self._load(conn, session_id)
            share = record.extra.get("share")
            if share is None:
                raise NotShared(f"session {session_id!r} has no share")
            if share["status"] == "revoked":
                return dict(share)
            now = self._clock.now()
            revoked = {**share, "status": "revoked", "revoked_at": now}
            record = attrs.evolve(record, extra={**record.extra, "share": revoked}, updated_at=now)
            self._save(conn, record)
            return revoked

    def summarize_session(self, session_id: str, *, content: str | None = None) -> dict[str, Any]:
        """Store and return a summary of the visible messages."""
        if content is not None:
            if not isinstance(content, str):
                raise InvalidOption(f"content must be a string or None, got {content!r}")
            content = storable_text(content)
        with self._write() as conn:
            record = self._load(conn, session_id)
            visible = record.visible_message_count
            if content is None:
                content = format_summary(
                    visible,
                    self._first_text(conn, record.session_id, visible, USER_TYPES, "ASC"),
                    self._first_text(conn, record.session_id, visible, AGENT_OUTPUT_TYPES, "DESC"),
                )
                generated_by = "deterministic"
            else:
                generated_by = "caller"
            now = self._clock.now()
            summary = {
                "session_id": record.session_id,
                "content": content,
                "generated_at": now,
                "message_count": visible,
                "generated_by": generated_by,
            }
            record = attrs.evolve(
                record, extra={**record.extra, "summary": summary}, updated_at=now
            )
            self._save(conn, record)
            return summary

    @staticmethod
    def _first_text(
        conn: sqlite3.Connection,
        session_id: str,
        visible: int,
        types: frozenset[str],
        direction: str,
    ) -> str | None:
        # Walks the type index lazily and stops at the first message that has text.
        marks = ", ".join("?" for _ in types)
        rows = conn.execute(
            f"SELECT body FROM messages WHERE session_id = ? AND type IN ({marks}) "
            f"AND seq <= ? ORDER BY seq {direction}",
            (session_id, *sorted(types), visible),
        )
        try:
            return first_text((_decode(row[0]) for row in rows), types)
        finally:
            rows.close()

    # --- threads --------------------------------------------------------------------------

    def thread_start(
        self,
        session_id: str,
        *,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        thread_id: str | None = None,
        parent_thread_id: str | None = None,
    ) -> ThreadRecord:
        """Start a thread; it becomes the session's active thread."""
        new_id = new_thread_id() if thread_id is None else check_id(thread_id, "thread_id")
        if name is not None:
            check_id(name, "name")
        check_optional_str(parent_thread_id, "parent_thread_id")
        meta = check_mapping(metadata, "metadata")
        with self._write() as conn:
            record = self._load(conn, session_id)
            taken = conn.execute(
                "SELECT 1 FROM threads WHERE session_id = ? AND thread_id = ?",
                (record.session_id, new_id),
            ).fetchone()
            if taken:
                raise InvalidOption(f"thread {new_id!r} already exists in {session_id!r}")
            if parent_thread_id is not None:
                self._thread_row(conn, record.session_id, parent_thread_id)
            now = self._clock.now()
            thread = ThreadRecord(
                thread_id=new_id,
                session_id=record.session_id,
                name=new_id if name is None else name,
                metadata=meta,
                created_at=now,
                updated_at=now,
                status=ThreadStatus.ACTIVE,
                parent_thread_id=parent_thread_id,
            )
            self._insert_thread(conn, thread)
            record = self._activate(conn, record, new_id, now)
            return self._with_counts(conn, record, thread)

    def thread_resume(self, session_id: str, thread_id: str) -> ThreadRecord:
        """Make the thread active again (unarchiving it if needed)."""
        with self._write() as conn:
            record = self._load(conn, session_id)
            thread = self._thread_row(conn, record.session_id, thread_id)
            now = self._clock.now()
            thread = attrs.evolve(
                thread, status=ThreadStatus.ACTIVE, archived=False, archived_at=None, updated_at=now
            )
            self._save_thread(conn, thread)
            record = self._activate(conn, record, thread_id, now)
            return self._with_counts(conn, record, thread)

    def thread_list(self, session_id: str) -> list[ThreadRecord]:
        """The session's threads (archived included), most recently updated first."""
        with self._read() as conn:
            record = self._load(conn, session_id)
            counts = {
                row[0]: (row[1], row[2])
                for row in conn.execute(
                    "SELECT thread_id, count(*), coalesce(sum(rolled_back = 0 AND seq <= ?), 0) "
                    "FROM messages WHERE session_id = ? AND thread_id IS NOT NULL "
                    "GROUP BY thread_id",
                    (record.visible_message_count, record.session_id),
                )
            }
            rows = conn.execute(
                f"SELECT {_THREAD_COLUMNS} FROM threads WHERE session_id = ? "
                "ORDER BY updated_at DESC, thread_id",
                (record.session_id,),
            ).fetchall()
            return [_thread_from_row(row, *counts.get(row[0], (0, 0))) for row in rows]

    def thread_fork(
        self, session_id: str, thread_id: str, *, name: str | None = None
    ) -> ThreadRecord:
        """A new active thread with copies of the source's visible messages."""
        if name is not None:
            check_id(name, "name")
        with self._write() as conn:
            record = self._load(conn, session_id)
            source = self._thread_row(conn, record.session_id, thread_id)
            now = self._clock.now()
            new_id = new_thread_id()
            thread = ThreadRecord(
                thread_id=new_id,
                session_id=record.session_id,
                name=new_id if name is None else name,
                metadata=source.metadata,
                created_at=now,
                updated_at=now,
                status=ThreadStatus.ACTIVE,
                parent_thread_id=thread_id,
            )
            self._insert_thread(conn, thread)
            record = self._activate(conn, record, new_id, now)
            copies = [
                with_thread_id(row[0], new_id)
                for row in self._thread_visible(conn, record, thread_id, "body")
            ]
            record, _ = self._append(conn, record, copies, now)
            return self._with_counts(conn, record, thread)

    def thread_read(
        self, session_id: str, thread_id: str, *, include_messages: bool = False
    ) -> ThreadDetail:
        """The thread, and its visible messages when ``include_messages``."""
        with self._read() as conn:
            record = self._load(conn, session_id)
            thread = self._with_counts(
                conn, record, self._thread_row(conn, record.session_id, thread_id)
            )
            if not include_messages:
                return ThreadDetail(thread)
            rows = self._thread_visible(conn, record, thread_id, "body")
            return ThreadDetail(thread, tuple(_decode(row[0]) for row in rows))

    def thread_archive(self, session_id: str, thread_id: str) -> ThreadRecord:
        """Archive the thread; if it was the active thread, the session has none after."""
        with self._write() as conn:
            record = self._load(conn, session_id)
            thread = self._thread_row(conn, record.session_id, thread_id)
            now = self._clock.now()
            thread = attrs.evolve(
                thread,
                status=ThreadStatus.ARCHIVED,
                archived=True,
                archived_at=thread.archived_at if thread.archived else now,
                updated_at=now,
            )
            self._save_thread(conn, thread)
            if record.active_thread_id == thread_id:
                record = attrs.evolve(record, active_thread_id=None)
            record = attrs.evolve(record, updated_at=now)
            self._save(conn, record)
            return self._with_counts(conn, record, thread)

    def thread_unarchive(self, session_id: str, thread_id: str) -> ThreadRecord:
        """Unarchive the thread (status ``paused``); a thread not archived is unchanged."""
        with self._write() as conn:
            record = self._load(conn, session_id)
            thread = self._thread_row(conn, record.session_id, thread_id)
            now = self._clock.now()
            if thread.archived:
                thread = attrs.evolve(
                    thread, status=ThreadStatus.PAUSED, archived=False, archived_at=None
                )
            thread = attrs.evolve(thread, updated_at=now)
            self._save_thread(conn, thread)
            record = attrs.evolve(record, updated_at=now)
            self._save(conn, record)
            return self._with_counts(conn, record, thread)

    def thread_rollback(self, session_id: str, thread_id: str, selector: Any) -> ThreadRecord:
        """Hide the thread's messages after the selected point; later ones extend the view."""
        parsed = parse_rollback_selector(selector)
        with self._write() as conn:
            record = self._load(conn, session_id)
            thread = self._thread_row(conn, record.session_id, thread_id)
            visible = self._thread_visible(conn, record, thread_id, "seq, uuid, message_id")
            keep = rollback_visible_count(parsed, [(row[1], row[2]) for row in visible])
            if keep < len(visible):
                cut = visible[keep - 1][0] if keep else 0
                conn.execute(
                    "UPDATE messages SET rolled_back = 1 WHERE session_id = ? AND thread_id = ? "
                    "AND rolled_back = 0 AND seq > ?",
                    (record.session_id, thread_id, cut),
                )
            now = self._clock.now()
            thread = attrs.evolve(thread, updated_at=now)
            self._save_thread(conn, thread)
            record = attrs.evolve(record, updated_at=now)
            self._save(conn, record)
            return self._with_counts(conn, record, thread)

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

    # --- routing state --------------------------------------------------------------------

    def save_routing_entry(self, kind: str, key: str, value: str | None) -> None:
        """Set one entry of durable routing state, or delete it (``value=None``).

        Raises:
            InvalidOption: a bad ``kind``, ``key`` or ``value`` (see ``SessionStore``).
            StoreError: the store is closed, or the database failed.
        """
        check_routing_entry(kind, key, value)
        with self._write() as conn:
            if value is None:
                conn.execute("DELETE FROM routing_state WHERE kind = ? AND key = ?", (kind, key))
            else:
                conn.execute(
                    "INSERT INTO routing_state (kind, key, value) VALUES (?, ?, ?) "
                    "ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value",
                    (kind, key, value),
                )

    def routing_entries(self, kind: str) -> dict[str, str]:
        """Every entry of one kind of routing state, ``{key: value}`` in key order.

        Raises:
            InvalidOption: a bad ``kind``.
            StoreError: the store is closed, or the database failed.
        """
        check_id(kind, "kind")
        with self._read() as conn:
            rows = conn.execute(
                "SELECT key, value FROM routing_state WHERE kind = ? ORDER BY key", (kind,)
            )
            return dict(rows.fetchall())

    # --- graph run checkpoints ------------------------------------------------------------

    def save_run(
        self,
        run_id: str,
        *,
        job_id: str,
        status: str,
        state: str,
        results: Iterable[str] = (),
        parent_run_id: str | None = None,
    ) -> None:
        """Create or replace a graph run's checkpoint and append its new results."""
        check_id(run_id, "run_id")
        check_id(job_id, "job_id")
        check_id(status, "status")
        check_optional_str(parent_run_id, "parent_run_id")
        texts = list(results)
        if not isinstance(state, str) or not all(isinstance(t, str) for t in texts):
            raise InvalidOption("a run checkpoint's state and results must be JSON texts")
        state = storable_text(state)
        texts = [storable_text(t) for t in texts]
        with self._write() as conn:
            now = self._clock.now()
            conn.execute(
                "INSERT INTO graph_runs (run_id, job_id, parent_run_id, status, created_at, "
                "updated_at, state) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE "
                "SET job_id = excluded.job_id, parent_run_id = excluded.parent_run_id, "
                "status = excluded.status, updated_at = excluded.updated_at, "
                "state = excluded.state",
                (run_id, job_id, parent_run_id, status, now, now, state),
            )
            if texts:
                # Appended in rowid order, which is the order load_run reads them back in.
                conn.executemany(
                    "INSERT INTO graph_run_results (run_id, body) VALUES (?, ?)",
                    [(run_id, text) for text in texts],
                )

    _RUN_COLUMNS = "run_id, job_id, parent_run_id, status, created_at, updated_at"

    @staticmethod
    def _run_from_row(row: Sequence[Any]) -> dict[str, Any]:
        return dict(
            zip(
                ("run_id", "job_id", "parent_run_id", "status", "created_at", "updated_at"),
                row,
                strict=False,
            )
        )

    def load_run(self, run_id: str) -> dict[str, Any]:
        """A run's checkpoint with its decoded state and results."""
        from beamagent.errors import RunNotFound

        with self._read() as conn:
            row = conn.execute(
                f"SELECT {self._RUN_COLUMNS}, state FROM graph_runs WHERE run_id = ?",
                (lookup_key(run_id),),
            ).fetchone()
            if row is None:
                raise RunNotFound(f"no run {run_id!r} in the store")
            out = self._run_from_row(row[:6])
            out["state"] = _decode_any(row[6])
            out["results"] = [
                _decode_any(r[0])
                for r in conn.execute(
                    "SELECT body FROM graph_run_results WHERE run_id = ? ORDER BY rowid",
                    (run_id,),
                )
            ]
        return out

    def list_runs(
        self,
        *,
        status: str | None = None,
        job_id: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Run checkpoints matching the filters, most recently updated first."""
        check_optional_str(status, "status")
        check_optional_str(job_id, "job_id")
        limit = check_limit(limit)
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if job_id is not None:
            where.append("job_id = ?")
            params.append(job_id)
        sql = f"SELECT {self._RUN_COLUMNS} FROM graph_runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY updated_at DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._read() as conn:
            return [self._run_from_row(row) for row in conn.execute(sql, params)]

    def delete_run(self, run_id: str) -> None:
        """Delete a run's checkpoint and results."""
        from beamagent.errors import RunNotFound

        with self._write() as conn:
            deleted = conn.execute(
                "DELETE FROM graph_runs WHERE run_id = ?",
                (lookup_key(run_id),),
            ).rowcount
            if not deleted:
                raise RunNotFound(f"no run {run_id!r} in the store")
