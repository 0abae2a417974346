"""What the SQL stores share: row decoding and every operation, over a DB-API connection.

:class:`SqlStore` implements the :class:`~beamagent.store.SessionStore` operations once
for :class:`~beamagent.store.SqliteStore` and :class:`~beamagent.store.PostgresStore`.
A subclass gives the connections (``_read``/``_write``: a read snapshot, a write
transaction committed on exit) and the few SQL fragments that differ between the two
(no-limit value, the share-id lookup, the order of a run's results, the messages page
query) plus ``_lock``, which serialises writers of one session across processes where the
database does not already (SQLite has a single writer; PostgreSQL takes an advisory lock).

SQL is written with ``?`` placeholders; the PostgreSQL store translates them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Self, TypeAlias

import attrs

from beamagent.errors import (
    InvalidOption,
    NotShared,
    SessionNotFound,
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

__all__ = [
    "DamagedRow",
    "SqlStore",
    "decode_any",
    "decode_object",
    "session_from_row",
    "thread_from_row",
]

log = get_logger(__name__)

Conn: TypeAlias = Any
"""A DB-API style connection: ``execute(sql, params) -> cursor``, ``executemany``."""

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
# The hot path's only read: the append's session update returns what the append needs.
_RECORD_BUMP = (
    "UPDATE sessions SET message_count = message_count + ?, updated_at = ?, "
    "model = coalesce(?, model) WHERE session_id = ? RETURNING message_count, active_thread_id"
)
_MESSAGE_INSERT = (
    "INSERT INTO messages (session_id, seq, type, uuid, message_id, thread_id, created_at, "
    "rolled_back, body) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)"
)
_THREAD_TOUCH = "UPDATE threads SET updated_at = ? WHERE session_id = ? AND thread_id = ?"

#: How many sessions' active thread ids a store remembers as hints (see _thread_hint).
_THREAD_HINTS = 4096


def batch_model(prepared: Iterable[PreparedMessage]) -> str | None:
    """The model an append sets on its session: the batch's last string ``model``, if any."""
    model = None
    for p in prepared:
        if p.model is not None:
            model = p.model
    return model


class DamagedRow(Exception):
    """A stored JSON text that is not a JSON object: the database was damaged (or edited)."""


def decode_object(text: str) -> dict[str, Any]:
    """A stored JSON object (a message body, ``extra``, ``metadata``), else DamagedRow."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise DamagedRow(f"a stored JSON text does not decode ({exc})") from exc
    if not isinstance(value, dict):
        raise DamagedRow(f"a stored JSON text is a {type(value).__name__}, not an object")
    return value


def decode_any(text: str) -> Any:
    """A stored JSON text of any kind (a run's state or result), else DamagedRow."""
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise DamagedRow(f"a stored JSON text does not decode ({exc})") from exc


def session_from_row(row: Sequence[Any]) -> SessionRecord:
    """The record of a ``sessions`` row read with ``_SESSION_COLUMNS``."""
    return SessionRecord(
        session_id=row[0],
        backend=row[1],
        model=row[2],
        cwd=row[3],
        native_session_id=row[4],
        created_at=row[5],
        updated_at=row[6],
        message_count=row[7],
        extra=decode_object(row[8]),
        active_thread_id=row[9],
    )


def thread_from_row(row: Sequence[Any], total: int = 0, visible: int = 0) -> ThreadRecord:
    """The record of a ``threads`` row read with ``_THREAD_COLUMNS``, with its counts."""
    return ThreadRecord(
        thread_id=row[0],
        session_id=row[1],
        name=row[2],
        metadata=decode_object(row[3]),
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


class SqlStore:
    """The :class:`~beamagent.store.SessionStore` operations over SQL (see the module doc)."""

    #: The ``LIMIT`` parameter that means no limit.
    _NO_LIMIT: Any = None
    #: SQL giving a session's ``extra.share.share_id`` (compared with ``= ?``).
    _SHARE_ID_SQL = ""
    #: The column ordering a run's results as they were appended.
    _RESULT_ORDER = ""
    #: Appended to a write's read of a session row to lock it until commit ("" for SQLite,
    #: whose single writer needs no row locks).
    _FOR_UPDATE = ""
    #: The read of ``record_messages``, the hot path (with ``_FOR_UPDATE``).
    _RECORD_READ = _RECORD_READ

    _clock: MonotonicClock
    #: Each session's active thread id as last read by a write (absent: none), so that
    #: appends encode their messages before the write begins. Only a hint: every append
    #: checks it under the write's lock. Set by the subclass's ``__init__``.
    _thread_hints: dict[str, str]

    def _read(self) -> AbstractContextManager[Conn]:
        """A read transaction: one consistent snapshot for every query inside."""
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Conn]:
        """A write transaction, committed before the caller returns."""
        raise NotImplementedError

    def _messages_query(
        self,
        session_id: str,
        visible: int,
        types: frozenset[str] | None,
        offset: int,
        limit: int | None,
    ) -> tuple[str, list[Any]]:
        """The SQL (and parameters) of one ``get_session_messages`` page."""
        raise NotImplementedError

    def close(self) -> None:
        """Release every connection; later calls raise ``StoreError``."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lock(self, conn: Conn, kind: str, key: str) -> None:
        """Inside a write: wait for, then hold until commit, the lock on ``kind`` ``key``.

        Taken before a session is read for a write (``_load(lock=True)``, which then also
        locks its row with ``_FOR_UPDATE``), so that two writers creating the same session,
        or one creating it while another forks into its id, are serialised too.
        ``record_messages`` only locks the row, which exists by then. A no-op where the
        database has a single writer (SQLite).
        """

    # --- row helpers ----------------------------------------------------------------------

    def _load(self, conn: Conn, session_id: Any, *, lock: bool = False) -> SessionRecord:
        """The session's record; with ``lock``, first take the session's write lock."""
        row = None
        if lookup_key(session_id) is not None:
            sql = f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = ?"
            if lock:
                self._lock(conn, "session", session_id)
                sql += self._FOR_UPDATE
            row = conn.execute(sql, (session_id,)).fetchone()
        if row is None:
            raise SessionNotFound(session_id)
        return session_from_row(row)

    @staticmethod
    def _save(conn: Conn, record: SessionRecord) -> None:
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
    def _insert_session(conn: Conn, record: SessionRecord) -> None:
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
    def _thread_row(conn: Conn, session_id: str, thread_id: Any) -> ThreadRecord:
        row = None
        if lookup_key(thread_id) is not None:
            row = conn.execute(
                f"SELECT {_THREAD_COLUMNS} FROM threads WHERE session_id = ? AND thread_id = ?",
                (session_id, thread_id),
            ).fetchone()
        if row is None:
            raise ThreadNotFound(f"no thread {thread_id!r} in session {session_id!r}")
        return thread_from_row(row)

    @staticmethod
    def _save_thread(conn: Conn, thread: ThreadRecord) -> None:
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
    def _insert_thread(conn: Conn, thread: ThreadRecord) -> None:
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
    def _with_counts(conn: Conn, record: SessionRecord, thread: ThreadRecord) -> ThreadRecord:
        total, visible = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE rolled_back = 0 AND seq <= ?) FROM messages "
            "WHERE session_id = ? AND thread_id = ?",
            (record.visible_message_count, record.session_id, thread.thread_id),
        ).fetchone()
        return attrs.evolve(thread, message_count=total, visible_message_count=visible)

    @staticmethod
    def _thread_visible(
        conn: Conn, record: SessionRecord, thread_id: str, columns: str
    ) -> list[Any]:
        rows: list[Any] = conn.execute(
            f"SELECT {columns} FROM messages WHERE session_id = ? AND thread_id = ? "
            "AND rolled_back = 0 AND seq <= ? ORDER BY seq",
            (record.session_id, thread_id, record.visible_message_count),
        ).fetchall()
        return rows

    @staticmethod
    def _insert_messages(
        conn: Conn,
        session_id: str,
        count: int,
        prepared: Sequence[PreparedMessage],
        now: float,
    ) -> list[int]:
        """Insert ``prepared`` after message ``count``; bump the threads they belong to.

        The threads the messages belong to get ``updated_at = now``; the session row is
        the caller's to update. Returns the new seqs.
        """
        first = count + 1
        conn.executemany(
            _MESSAGE_INSERT,
            [
                (session_id, seq, p.type, p.uuid, p.message_id, p.thread_id, now, p.body)
                for seq, p in enumerate(prepared, first)
            ],
        )
        touched = {p.thread_id for p in prepared if p.thread_id is not None}
        if touched:
            conn.executemany(_THREAD_TOUCH, [(now, session_id, t) for t in sorted(touched)])
        return list(range(first, first + len(prepared)))

    def _append(
        self,
        conn: Conn,
        record: SessionRecord,
        prepared: Sequence[PreparedMessage],
        now: float,
    ) -> tuple[SessionRecord, list[int]]:
        seqs = self._insert_messages(conn, record.session_id, record.message_count, prepared, now)
        model = batch_model(prepared)
        count = record.message_count + len(seqs)
        conn.execute(_RECORD_UPDATE, (count, now, model, record.session_id))
        record = attrs.evolve(
            record,
            message_count=count,
            model=record.model if model is None else model,
            updated_at=now,
        )
        return record, seqs

    def _activate(
        self, conn: Conn, record: SessionRecord, thread_id: str | None, now: float
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
                old = self._load(conn, session_id, lock=True)
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
            record = self._load(conn, session_id, lock=True)
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
        params.append(self._NO_LIMIT if limit is None else limit)
        with self._read() as conn:
            return [session_from_row(row) for row in conn.execute(sql, params)]

    def delete_session(self, session_id: str) -> None:
        """Delete the session with its messages and threads."""
        with self._write() as conn:
            self._load(conn, session_id, lock=True)
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
        # Checked and encoded before the write begins, under the session's last known
        # active thread (stamped into messages without one); the write checks that hint
        # and encodes again in the rare case it is stale.
        hint = self._thread_hints.get(session_id) if lookup_key(session_id) else None
        try:
            prepared = [prepare_message(m, hint) for m in batch]
        except InvalidOption:
            prepared = None  # raised inside the write, after the session is looked up
        if skip_recorded:
            return self._record_checked(session_id, batch, prepared, hint)
        return self._record_fast(session_id, batch, prepared, hint)

    def _thread_hint(self, session_id: str, active_thread_id: str | None) -> None:
        """Remember a session's active thread id, as read under its write lock."""
        hints = self._thread_hints
        if active_thread_id is None:
            hints.pop(session_id, None)
        elif hints.get(session_id) != active_thread_id:
            if len(hints) >= _THREAD_HINTS:
                hints.clear()  # a hint only saves an encoding: dropping them is harmless
            hints[session_id] = active_thread_id

    @staticmethod
    def _reprepared(
        batch: list[Any],
        prepared: list[PreparedMessage] | None,
        hint: str | None,
        active_thread_id: str | None,
    ) -> list[PreparedMessage]:
        """``prepared`` under the actual active thread (encoding the batch again if needed)."""
        if prepared is not None and hint == active_thread_id:
            return prepared
        return [prepare_message(m, active_thread_id) for m in batch]

    def _record_fast(
        self,
        session_id: str,
        batch: list[Any],
        prepared: list[PreparedMessage] | None,
        hint: str | None,
    ) -> list[int]:
        """``record_messages`` without ``skip_recorded``: one read-and-bump of the session row.

        Overridden by the PostgreSQL store (one statement, one round trip).
        """
        n = len(batch)
        # The model does not depend on the thread; a batch that did not prepare raises below.
        model = None if prepared is None else batch_model(prepared)
        with self._write() as conn:
            rows = None
            if lookup_key(session_id) is not None:
                now = self._clock.now()
                rows = conn.execute(_RECORD_BUMP, (n, now, model, session_id)).fetchall()
            if not rows:
                raise SessionNotFound(session_id)
            count, active_thread_id = rows[0]
            if prepared is None or hint != active_thread_id:
                self._thread_hint(session_id, active_thread_id)
                prepared = self._reprepared(batch, prepared, hint, active_thread_id)
            return self._insert_messages(conn, session_id, count - n, prepared, now)

    def _record_checked(
        self,
        session_id: str,
        batch: list[Any],
        prepared: list[PreparedMessage] | None,
        hint: str | None,
    ) -> list[int]:
        """``record_messages`` with ``skip_recorded``: reads what is stored first."""
        with self._write() as conn:
            row = None
            if lookup_key(session_id) is not None:
                row = conn.execute(self._RECORD_READ, (session_id,)).fetchone()
            if row is None:
                raise SessionNotFound(session_id)
            count, active_thread_id = row
            self._thread_hint(session_id, active_thread_id)
            prepared = self._reprepared(batch, prepared, hint, active_thread_id)
            done: list[int] = []
            if prepared:
                done = self._recorded_seqs(conn, session_id, count, prepared)
                if len(done) == len(prepared):
                    return done  # all stored already: nothing changes
                prepared = prepared[len(done) :]
            now = self._clock.now()
            seqs = self._insert_messages(conn, session_id, count, prepared, now)
            conn.execute(
                _RECORD_UPDATE, (count + len(seqs), now, batch_model(prepared), session_id)
            )
            return done + seqs if done else seqs

    @staticmethod
    def _recorded_seqs(
        conn: Conn, session_id: str, count: int, batch: Sequence[PreparedMessage]
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
            sql, params = self._messages_query(record.session_id, visible, chosen, offset, limit)
            return [decode_object(row[0]) for row in conn.execute(sql, params)]

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
            parent = self._load(conn, source_session_id, lock=True)
            self._lock(conn, "session", new_id)
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
            record = self._load(conn, session_id, lock=True)

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
            record = self._load(conn, session_id, lock=True)
            extra = {k: v for k, v in record.extra.items() if k != "view"}
            record = attrs.evolve(record, extra=extra, updated_at=self._clock.now())
            self._save(conn, record)
            return record

    def share_session(self, session_id: str, *, share_id: str | None = None) -> dict[str, Any]:
        """Create an active share, replacing any previous one."""
        wanted = new_share_id() if share_id is None else check_id(share_id, "share_id")
        with self._write() as conn:
            record = self._load(conn, session_id, lock=True)
            self._lock(conn, "share", wanted)
            clash = conn.execute(
                "SELECT session_id FROM sessions WHERE session_id != ? "
                f"AND {self._SHARE_ID_SQL} = ?",
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
            record = self._load(conn, session_id, lock=True)
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
            record = self._load(conn, session_id, lock=True)
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
        conn: Conn,
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
            return first_text((decode_object(row[0]) for row in rows), types)
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
            record = self._load(conn, session_id, lock=True)
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
            record = self._load(conn, session_id, lock=True)
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
                    "SELECT thread_id, count(*), "
                    "count(*) FILTER (WHERE rolled_back = 0 AND seq <= ?) FROM messages "
                    "WHERE session_id = ? AND thread_id IS NOT NULL "
                    "GROUP BY thread_id",
                    (record.visible_message_count, record.session_id),
                )
            }
            rows = conn.execute(
                f"SELECT {_THREAD_COLUMNS} FROM threads WHERE session_id = ? "
                "ORDER BY updated_at DESC, thread_id",
                (record.session_id,),
            ).fetchall()
            return [thread_from_row(row, *counts.get(row[0], (0, 0))) for row in rows]

    def thread_fork(
        self, session_id: str, thread_id: str, *, name: str | None = None
    ) -> ThreadRecord:
        """A new active thread with copies of the source's visible messages."""
        if name is not None:
            check_id(name, "name")
        with self._write() as conn:
            record = self._load(conn, session_id, lock=True)
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
            return ThreadDetail(thread, tuple(decode_object(row[0]) for row in rows))

    def thread_archive(self, session_id: str, thread_id: str) -> ThreadRecord:
        """Archive the thread; if it was the active thread, the session has none after."""
        with self._write() as conn:
            record = self._load(conn, session_id, lock=True)
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
            record = self._load(conn, session_id, lock=True)
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
            record = self._load(conn, session_id, lock=True)
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
            out["state"] = decode_any(row[6])
            out["results"] = [
                decode_any(r[0])
                for r in conn.execute(
                    "SELECT body FROM graph_run_results WHERE run_id = ? "
                    f"ORDER BY {self._RESULT_ORDER}",
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
