"""An in-memory :class:`~beamagent.store.SessionStore`: same semantics, nothing on disk.

For tests, demos and ``open_store(":memory:")``. Thread-safe: one lock serializes every
call (``record_messages`` holds it only to check and commit a batch prepared outside
it). Messages are kept as JSON text, exactly like the SQLite store, so what you read
back is the same JSON round-trip in both stores; except a
:class:`~beamagent.messages.Message` the library built from JSON values
(``is_json_native``: what sessions record from the ``local`` backend), which is kept as
the frozen object itself and read back as its ``to_dict()`` (the same dict: it is
canonical JSON). Such a message needs neither the check nor the snapshot that encoding
gives; every other input is encoded, and refused, exactly as the SQLite store does.
Appends are indexed (numbered, given their columns) when the session's messages are
next read, not when they are recorded: a session records every query and is read
far more rarely.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

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
    encode_content,
    fork_extra,
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

__all__ = ["MemoryStore"]

log = get_logger(__name__)


class _Message:
    """One stored message: seq, row time, the indexed columns, and the body.

    One plain object per message (no separate columns object): a store holds many, and
    each object the cyclic GC tracks makes every full collection longer. ``seq`` and
    ``created_at`` (its batch's append time) are set when it is indexed, at the first
    read after its append (see ``_Session.unindexed``); nothing changes it after that
    (forks share it).
    """

    __slots__ = (
        "body_text",
        "created_at",
        "kept",
        "message_id",
        "model",
        "seq",
        "thread_id",
        "type",
        "uuid",
    )

    def __init__(
        self,
        type: str,
        uuid: str | None,
        message_id: str | None,
        thread_id: str | None,
        model: str | None,
        body_text: str,
        kept: Message | None = None,
    ) -> None:
        self.seq = 0
        self.created_at = 0.0
        self.type = type
        self.uuid = uuid
        self.message_id = message_id
        self.thread_id = thread_id
        self.model = model
        self.body_text = body_text
        # A message the library built from JSON values (``Message.is_json_native``),
        # kept as it is (``body_text`` is then empty). Its to_dict() is its JSON round
        # trip, so readers get what they would get from the text; it is frozen and its
        # nested values are read-only by Message's contract, so nothing the store hands
        # out can change it.
        self.kept = kept

    def decoded(self) -> dict[str, Any]:
        """A fresh dict of the stored message (the caller's to change)."""
        kept = self.kept
        if kept is None:
            body = json.loads(self.body_text)
            assert isinstance(body, dict)
            return body
        body = kept.to_dict()  # a deep copy
        if kept.thread_id is None and self.thread_id is not None:
            body["thread_id"] = self.thread_id  # where prepare_message puts it
        return body

    def body(self) -> str:
        """The stored JSON text."""
        if self.kept is None:
            return self.body_text
        return encode_content(self.decoded(), "a message")


def _prepare(message: Any, active_thread_id: str | None) -> _Message:
    """``prepare_message``, or for a JSON-native Message its columns alone (no encoding).

    A JSON-native message needs no check (it is canonical JSON) and no snapshot (it is
    frozen), so only the indexed columns are taken, as ``prepare_message`` would.
    """
    if type(message) is Message and message._json_native:  # is_json_native, sans property
        thread_id = message.thread_id
        if thread_id is None:
            thread_id = active_thread_id
        return _Message(
            message.type._value_,  # not .value, a Python-level property: once per message
            message.uuid or None,
            message.message_id or None,
            thread_id or None,
            message.model or None,
            "",
            message,
        )
    return _stored(prepare_message(message, active_thread_id))


def _stored(prepared: PreparedMessage) -> _Message:
    """The stored form of a message ``prepare_message`` checked and encoded."""
    return _Message(
        prepared.type,
        prepared.uuid,
        prepared.message_id,
        prepared.thread_id,
        prepared.model,
        prepared.body,
    )


_NO_MESSAGES: list[_Message] = cast("list[_Message]", ())  # see _Session.indexed
# Appended and not yet indexed: each a _Message (checked and encoded already) or a
# JSON-native Message kept as it is; numbered, timed and wrapped at the next read.
_NO_ITEMS: list[Any] = cast("list[Any]", ())  # see _Session.unindexed
_NO_TIMES: list[float] = cast("list[float]", ())  # see _Session.unindexed_at


@attrs.define
class _Session:
    # The record as of the last change other than an append; ``record`` folds in the
    # appends since then. A session appends far more often than anyone reads its record,
    # so appends do not rebuild the (frozen) record each time.
    stored: SessionRecord = attrs.field(alias="record")
    # The messages indexed so far, in seq order (``messages`` adds the unindexed ones).
    # The shared empty tuple until the first append is indexed (an empty list per idle
    # session was one more object for the cyclic GC to walk).
    indexed: list[_Message] = attrs.field(default=_NO_MESSAGES, alias="messages")
    # Appended messages not yet in ``indexed``, in order, and for each batch of them its
    # append time and size (``[created_at, n, created_at, n, ...]``): an append adds
    # its messages as they are, and the first read numbers and wraps them. A session
    # appends every query and is read far more rarely: a _Message per message made at
    # append time was most of what recording a query cost. Flat lists, so an append
    # leaves no object of its own for the cyclic GC to walk. The shared empty tuples
    # when there are none; only the appends replace them, only ``messages`` empties them.
    unindexed: list[Any] = _NO_ITEMS
    unindexed_at: list[float] = _NO_TIMES
    # Seqs hidden by thread rollbacks (a message belongs to at most one thread). Frozen:
    # the shared empty one until a rollback, not a set per session for the GC to walk.
    rolled_back: frozenset[int] = frozenset()
    # Counts are filled in when a thread is read; the stored ones stay 0.
    threads: dict[str, ThreadRecord] = attrs.field(factory=dict)
    # ``(updated_at, model)`` after appends not yet in ``stored``; the message count is
    # ``count``.
    appended: tuple[float, str | None] | None = None
    # The number of messages, indexed or not, kept by every append: the lock-light
    # append (see ``MemoryStore.record_messages``) checks it without a call under the lock.
    count: int = 0
    # Set (under the lock) when the session is deleted: a lock-light append must not land.
    deleted: bool = False

    @property
    def messages(self) -> list[_Message]:
        """Every message in seq order, the appends not yet indexed included (under the lock)."""
        if self.unindexed:
            self._index()
        return self.indexed

    def _index(self) -> None:
        # Built aside and committed in three assignments (no call between them): an
        # exception raised in this thread meanwhile (a kill) leaves the appends unindexed,
        # never lost or indexed twice.
        items = iter(self.unindexed)
        times = self.unindexed_at
        seq = len(self.indexed)
        added: list[_Message] = []
        for at in range(0, len(times), 2):
            created_at = times[at]
            for item in itertools.islice(items, int(times[at + 1])):
                seq += 1
                if type(item) is not _Message:  # a JSON-native Message (see _append_light)
                    item = _prepare(item, None)  # appended with no thread active, none its own
                item.seq = seq
                item.created_at = created_at
                added.append(item)
        if self.indexed is _NO_MESSAGES:
            self.indexed = added
        else:
            self.indexed += added
        self.unindexed = _NO_ITEMS
        self.unindexed_at = _NO_TIMES

    @property
    def record(self) -> SessionRecord:
        """The session's record, appends included."""
        if self.appended is not None:
            updated_at, model = self.appended
            self.stored = attrs.evolve(
                self.stored,
                message_count=self.count,
                updated_at=updated_at,
                model=model,
            )
            self.appended = None
        return self.stored

    @record.setter
    def record(self, record: SessionRecord) -> None:
        self.stored = record
        self.appended = None

    @property
    def model(self) -> str | None:
        """The session's model, appends included (without rebuilding the record)."""
        return self.stored.model if self.appended is None else self.appended[1]


# JSON scalars: immutable, so a record whose ``extra`` holds only these can be shared.
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _deep(value: Mapping[str, Any]) -> dict[str, Any]:
    copied = json.loads(json.dumps(dict(value)))
    assert isinstance(copied, dict)
    return copied


class MemoryStore:
    """A :class:`~beamagent.store.SessionStore` kept in process memory.

    >>> store = MemoryStore()
    >>> store.create_session("s1", "local").backend
    'local'
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = MonotonicClock(clock)
        self._lock = threading.RLock()
        self._sessions: dict[str, _Session] = {}
        self._routing: dict[str, dict[str, str]] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryStore(sessions={len(self._sessions)})"

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing -------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise StoreError("the in-memory session store is closed")
            yield

    def _session(self, session_id: Any) -> _Session:
        session = self._sessions.get(session_id) if isinstance(session_id, str) else None
        if session is None:
            raise SessionNotFound(session_id)
        return session

    @staticmethod
    def _snapshot(record: SessionRecord) -> SessionRecord:
        # Nested dicts of ``extra`` must not be shared with callers. A record is frozen
        # and its ``extra`` a read-only view, so one whose ``extra`` holds no containers
        # (every session's at start) is handed out as it is stored, copying nothing.
        extra = record.extra
        if not extra or all(type(v) in _SCALARS for v in extra.values()):
            return record
        return attrs.evolve(record, extra=_deep(extra))

    @staticmethod
    def _thread(session: _Session, thread_id: Any) -> ThreadRecord:
        thread = session.threads.get(thread_id) if isinstance(thread_id, str) else None
        if thread is None:
            raise ThreadNotFound(
                f"no thread {thread_id!r} in session {session.record.session_id!r}"
            )
        return thread

    @staticmethod
    def _visible(session: _Session) -> list[_Message]:
        return session.messages[: session.record.visible_message_count]

    def _thread_messages(self, session: _Session, thread_id: str) -> list[_Message]:
        return [
            m
            for m in self._visible(session)
            if m.thread_id == thread_id and m.seq not in session.rolled_back
        ]

    def _thread_record(self, session: _Session, thread: ThreadRecord) -> ThreadRecord:
        total = sum(1 for m in session.messages if m.thread_id == thread.thread_id)
        return attrs.evolve(
            thread,
            metadata=_deep(thread.metadata),
            message_count=total,
            visible_message_count=len(self._thread_messages(session, thread.thread_id)),
        )

    def _touch(self, session: _Session, now: float, **changes: Any) -> None:
        session.record = attrs.evolve(session.record, updated_at=now, **changes)

    def _append(self, session: _Session, new: list[_Message], now: float) -> list[int]:
        first = len(session.messages) + 1  # indexes what was appended lock-light
        model = session.model
        touched: set[str] | None = None  # made for the first message in a thread
        for seq, item in enumerate(new, first):
            item.seq = seq
            item.created_at = now
            if item.model is not None:
                model = item.model
            if item.thread_id is not None:
                if touched is None:
                    touched = set()
                touched.add(item.thread_id)
        # One C call adds the whole batch, so a kill (an exception raised in this thread
        # between two bytecodes) never leaves half of it, and the count is len(messages).
        session.appended = (now, model)
        if session.indexed is _NO_MESSAGES:
            session.indexed = list(new)  # the first batch: a list of its own from now on
        else:
            session.indexed += new
        session.count = len(session.indexed)
        if touched is not None:
            for thread_id in touched & session.threads.keys():
                thread = session.threads[thread_id]
                session.threads[thread_id] = attrs.evolve(thread, updated_at=now)
        return list(range(first, first + len(new)))

    def _activate(self, session: _Session, thread_id: str | None, now: float) -> None:
        previous = session.record.active_thread_id
        if previous is not None and previous != thread_id and previous in session.threads:
            old = session.threads[previous]
            if old.status is ThreadStatus.ACTIVE:
                # Not a use of that thread: its updated_at (list order) stays.
                session.threads[previous] = attrs.evolve(old, status=ThreadStatus.PAUSED)
        self._touch(session, now, active_thread_id=thread_id)

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
        with self._lock:  # ``_locked`` inline: every session start comes through here
            if self._closed:
                raise StoreError("the in-memory session store is closed")
            now = self._clock.now()
            existing = self._sessions.get(session_id)
            if existing is None:
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
                self._sessions[session_id] = _Session(record)
                return self._snapshot(record)
            old = existing.record
            self._touch(
                existing,
                now,
                backend=backend,
                model=old.model if model is None else model,
                cwd=old.cwd if cwd is None else cwd,
                native_session_id=(
                    old.native_session_id if native_session_id is None else native_session_id
                ),
                extra=merge_extra(old.extra, extra_dict),
            )
            return self._snapshot(existing.record)

    def update_session(self, session_id: str, /, **fields: Any) -> SessionRecord:
        """Set ``backend``, ``model``, ``cwd``, ``native_session_id``; merge ``extra``."""
        checked = check_update_fields(fields)
        with self._locked():
            session = self._session(session_id)
            if "extra" in checked:
                checked["extra"] = merge_extra(session.record.extra, checked["extra"])
            self._touch(session, self._clock.now(), **checked)
            return self._snapshot(session.record)

    def get_session(self, session_id: str) -> SessionRecord:
        """The session's metadata."""
        with self._locked():
            return self._snapshot(self._session(session_id).record)

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
        with self._locked():
            records = [
                s.record
                for s in self._sessions.values()
                if (backend is None or s.record.backend == backend)
                and (cwd is None or s.record.cwd == cwd)
                and (model is None or s.record.model == model)
                and (since is None or s.record.updated_at >= since)
            ]
            records.sort(key=lambda r: (-r.updated_at, r.session_id))
            return [self._snapshot(r) for r in records[:limit]]

    def delete_session(self, session_id: str) -> None:
        """Delete the session with its messages and threads."""
        with self._locked():
            self._session(session_id).deleted = True
            del self._sessions[session_id]

    # --- messages -------------------------------------------------------------------------

    def record_message(self, session_id: str, message: Mapping[str, Any] | Message) -> int:
        """Append one message; returns its seq."""
        (seq,) = self.record_messages(session_id, [message])
        return seq

    def record_messages(
        self,
        session_id: str,
        messages: Iterable[Mapping[str, Any] | Message],
        *,
        skip_recorded: bool = False,
    ) -> list[int]:
        """Append messages atomically (all are checked before any is stored).

        With ``skip_recorded``, leading messages already stored are not appended again
        (see :meth:`SessionStore.record_messages`).

        Raises:
            SessionNotFound: no such session.
            InvalidOption: a message is not a JSON-able mapping with a string ``type``.
            StoreError: the store is closed.
        """
        batch = list(messages)
        if skip_recorded is not False:
            check_flag(skip_recorded, "skip_recorded")
        else:
            seqs = self._append_light(session_id, batch)
            if seqs is not None:
                return seqs
        with self._lock:  # as _locked() does, without a generator on every query's path
            if self._closed:
                raise StoreError("the in-memory session store is closed")
            session = self._session(session_id)
            active = session.stored.active_thread_id  # appends do not change it
            prepared = [_prepare(m, active) for m in batch]
            done: list[int] = []
            if skip_recorded and prepared:
                done = self._recorded_seqs(session, prepared)
                if len(done) == len(prepared):
                    return done  # all stored already: nothing changes
                prepared = prepared[len(done) :]
            seqs = self._append(session, prepared, self._clock.now())
            return done + seqs if done else seqs

    def _append_light(
        self, session_id: str, batch: list[Mapping[str, Any] | Message]
    ) -> list[int] | None:
        """Append ``batch`` holding the lock only for a check and a commit; None: not here.

        A session records every query, many sessions at once from many threads. Under
        the lock for the whole call, a thread the GIL switched out while holding it makes
        every other recording thread block on it in turn (a lock convoy: with 16 threads,
        most of their time). Here everything is prepared first from a snapshot of the
        session, and the lock covers only what checks that the snapshot still holds and
        the commit: attribute reads and writes, comparisons and in-place list
        concatenations, no call and no loop, so CPython never switches threads inside it
        and nobody ever waits for it. When the snapshot went stale (an append or any
        change to the session meanwhile) or the batch needs more (messages of a thread,
        whose ``updated_at`` moves), the caller takes the locked path.

        A batch of JSON-native messages (what a session records from ``local``) with no
        thread is committed as it is, the list itself: nothing to check or encode, and
        numbering and wrapping each message waits for the next read (``_Session``).
        Any other batch is checked and encoded here, outside the lock.

        Raises:
            InvalidOption: a message is not a JSON-able mapping with a string ``type``.
        """
        session = self._sessions.get(session_id) if type(session_id) is str else None
        if session is None or not batch:
            return None
        stored = session.stored
        base = session.count
        model = session.model
        new: list[Any] = batch  # kept as it is: JSON-native Messages, frozen (see _index)
        if stored.active_thread_id is None:
            for message in batch:
                if type(message) is not Message or not message._json_native:
                    new = []
                    break
                if message.thread_id is not None:
                    return None  # a thread's updated_at moves too: the locked path
                if message.model:
                    model = message.model
        else:
            new = []
        if not new:  # encoded and checked here, outside the lock
            new = [_prepare(m, stored.active_thread_id) for m in batch]
            model = session.model
            for item in new:
                if item.thread_id is not None:
                    return None  # as above
                if item.model is not None:
                    model = item.model
        now = self._clock.now()
        appended = (now, model)
        size = len(new)
        end = base + size
        committed = False
        with self._lock:
            # No call and no loop from here to the end of the block (see above).
            if (
                not self._closed
                and not session.deleted
                and session.stored is stored
                and session.count == base
            ):
                if session.unindexed is _NO_ITEMS:
                    session.unindexed = new  # made by record_messages: a list of its own
                    session.unindexed_at = [now, size]
                else:  # no call: a kill never leaves half of it
                    session.unindexed += new
                    session.unindexed_at += (now, size)
                session.count = end
                session.appended = appended
                committed = True
        if not committed:
            return None
        return list(range(base + 1, end + 1))

    @staticmethod
    def _recorded_seqs(session: _Session, batch: list[_Message]) -> list[int]:
        """The seqs of the leading messages of ``batch`` that are stored already."""
        first = batch[0].uuid
        if first is None:
            return []
        messages = session.messages
        for index in range(len(messages) - 1, max(0, len(messages) - SKIP_RECORDED_WINDOW) - 1, -1):
            if messages[index].uuid == first:
                stored = (m.uuid for m in messages[index : index + len(batch)])
                start = index + 1
                return list(range(start, start + recorded_prefix(batch, stored)))
        return []

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
        with self._locked():
            session = self._session(session_id)
            messages = session.messages if include_hidden else self._visible(session)
            if chosen is not None:
                messages = [m for m in messages if m.type in chosen]
            end = None if limit is None else offset + limit
            return [m.decoded() for m in messages[offset:end]]

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
        with self._locked():
            source = self._session(source_session_id)
            if new_id in self._sessions:
                raise InvalidOption(f"cannot fork into {new_id!r}: that session already exists")
            now = self._clock.now()
            parent = source.record
            messages = list(source.messages if include_hidden else self._visible(source))
            record = SessionRecord(
                session_id=new_id,
                backend=parent.backend,
                model=parent.model,
                cwd=parent.cwd,
                created_at=now,
                updated_at=now,
                message_count=len(messages),
                native_session_id=None,
                extra=fork_extra(
                    _deep(parent.extra),
                    extra_dict,
                    parent_session_id=parent.session_id,
                    forked_at=now,
                    include_hidden=include_hidden,
                ),
                active_thread_id=parent.active_thread_id,
            )
            copied = {m.seq for m in messages}
            self._sessions[new_id] = _Session(
                record=record,
                messages=messages,
                count=len(messages),
                rolled_back=source.rolled_back & copied,
                threads={
                    tid: attrs.evolve(t, session_id=new_id, metadata=_deep(t.metadata))
                    for tid, t in source.threads.items()
                },
            )
            log.debug("session_forked", session_id=new_id, parent_session_id=parent.session_id)
            return self._snapshot(record)

    def revert_session(self, session_id: str, selector: Any) -> SessionRecord:
        """Hide the messages after the selected point until ``unrevert_session``."""
        parsed = parse_revert_selector(selector)
        with self._locked():
            session = self._session(session_id)

            def find_seq(match: MessageMatch) -> int | None:
                attr = "uuid" if match.key is MatchKey.UUID else "message_id"
                return next(
                    (m.seq for m in session.messages if getattr(m, attr) == match.value),
                    None,
                )

            visible = revert_visible_count(parsed, session.record.message_count, find_seq)
            now = self._clock.now()
            view = {
                "visible_message_count": visible,
                "reverted_at": now,
                "selector": selector_to_dict(parsed),
            }
            self._touch(session, now, extra={**session.record.extra, "view": view})
            return self._snapshot(session.record)

    def unrevert_session(self, session_id: str) -> SessionRecord:
        """Remove the revert view (a no-op when the session is not reverted)."""
        with self._locked():
            session = self._session(session_id)
            extra = {k: v for k, v in session.record.extra.items() if k != "view"}
            self._touch(session, self._clock.now(), extra=extra)
            return self._snapshot(session.record)

    def share_session(self, session_id: str, *, share_id: str | None = None) -> dict[str, Any]:
        """Create an active share, replacing any previous one."""
        wanted = new_share_id() if share_id is None else check_id(share_id, "share_id")
        with self._locked():
            session = self._session(session_id)
            for other in self._sessions.values():
                share = other.record.extra.get("share")
                if other is not session and share is not None and share["share_id"] == wanted:
                    raise InvalidOption(f"share id {wanted!r} is already used by another session")
            now = self._clock.now()
            share = {
                "share_id": wanted,
                "session_id": session.record.session_id,
                "created_at": now,
                "status": "active",
            }
            self._touch(session, now, extra={**session.record.extra, "share": share})
            return _deep(share)

    def unshare_session(self, session_id: str) -> dict[str, Any]:
        """Revoke the share; an already revoked share is returned unchanged."""
        with self._locked():
            session = self._session(session_id)
            share = session.record.extra.get("share")
            if share is None:
                raise NotShared(f"session {session_id!r} has no share")
            if share["status"] == "revoked":
                return _deep(share)
            now = self._clock.now()
            revoked = {**share, "status": "revoked", "revoked_at": now}
            self._touch(session, now, extra={**session.record.extra, "share": revoked})
            return _deep(revoked)

    def summarize_session(self, session_id: str, *, content: str | None = None) -> dict[str, Any]:
        """Store and return a summary of the visible messages."""
        if content is not None:
            if not isinstance(content, str):
                raise InvalidOption(f"content must be a string or None, got {content!r}")
            content = storable_text(content)
        with self._locked():
            session = self._session(session_id)
            visible = self._visible(session)
            now = self._clock.now()
            summary = {
                "session_id": session.record.session_id,
                "content": self._summary_text(visible) if content is None else content,
                "generated_at": now,
                "message_count": len(visible),
                "generated_by": "deterministic" if content is None else "caller",
            }
            self._touch(session, now, extra={**session.record.extra, "summary": summary})
            return _deep(summary)

    @staticmethod
    def _summary_text(visible: list[_Message]) -> str:
        # Decode only candidates of the right type, lazily: sessions can be long.
        def texts(messages: Iterable[_Message], types: frozenset[str]) -> str | None:
            return first_text((m.decoded() for m in messages if m.type in types), types)

        return format_summary(
            len(visible),
            texts(visible, USER_TYPES),
            texts(reversed(visible), AGENT_OUTPUT_TYPES),
        )

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
        with self._locked():
            session = self._session(session_id)
            if new_id in session.threads:
                raise InvalidOption(f"thread {new_id!r} already exists in {session_id!r}")
            if parent_thread_id is not None:
                self._thread(session, parent_thread_id)
            now = self._clock.now()
            thread = ThreadRecord(
                thread_id=new_id,
                session_id=session_id,
                name=new_id if name is None else name,
                metadata=meta,
                created_at=now,
                updated_at=now,
                status=ThreadStatus.ACTIVE,
                parent_thread_id=parent_thread_id,
            )
            session.threads[new_id] = thread
            self._activate(session, new_id, now)
            return self._thread_record(session, thread)

    def thread_resume(self, session_id: str, thread_id: str) -> ThreadRecord:
        """Make the thread active again (unarchiving it if needed)."""
        with self._locked():
            session = self._session(session_id)
            thread = self._thread(session, thread_id)
            now = self._clock.now()
            thread = attrs.evolve(
                thread, status=ThreadStatus.ACTIVE, archived=False, archived_at=None, updated_at=now
            )
            session.threads[thread_id] = thread
            self._activate(session, thread_id, now)
            return self._thread_record(session, thread)

    def thread_list(self, session_id: str) -> list[ThreadRecord]:
        """The session's threads (archived included), most recently updated first."""
        with self._locked():
            session = self._session(session_id)
            threads = sorted(session.threads.values(), key=lambda t: (-t.updated_at, t.thread_id))
            return [self._thread_record(session, t) for t in threads]

    def thread_fork(
        self, session_id: str, thread_id: str, *, name: str | None = None
    ) -> ThreadRecord:
        """A new active thread with copies of the source's visible messages."""
        if name is not None:
            check_id(name, "name")
        with self._locked():
            session = self._session(session_id)
            source = self._thread(session, thread_id)
            now = self._clock.now()
            new_id = new_thread_id()
            thread = ThreadRecord(
                thread_id=new_id,
                session_id=session_id,
                name=new_id if name is None else name,
                metadata=_deep(source.metadata),
                created_at=now,
                updated_at=now,
                status=ThreadStatus.ACTIVE,
                parent_thread_id=thread_id,
            )
            session.threads[new_id] = thread
            self._activate(session, new_id, now)
            copies = [
                _stored(with_thread_id(m.body(), new_id))
                for m in self._thread_messages(session, thread_id)
            ]
            self._append(session, copies, now)
            return self._thread_record(session, session.threads[new_id])

    def thread_read(
        self, session_id: str, thread_id: str, *, include_messages: bool = False
    ) -> ThreadDetail:
        """The thread, and its visible messages when ``include_messages``."""
        with self._locked():
            session = self._session(session_id)
            thread = self._thread_record(session, self._thread(session, thread_id))
            if not include_messages:
                return ThreadDetail(thread)
            messages = tuple(m.decoded() for m in self._thread_messages(session, thread_id))
            return ThreadDetail(thread, messages)

    def thread_archive(self, session_id: str, thread_id: str) -> ThreadRecord:
        """Archive the thread; if it was the active thread, the session has none after."""
        with self._locked():
            session = self._session(session_id)
            thread = self._thread(session, thread_id)
            now = self._clock.now()
            thread = attrs.evolve(
                thread,
                status=ThreadStatus.ARCHIVED,
                archived=True,
                archived_at=thread.archived_at if thread.archived else now,
                updated_at=now,
            )
            session.threads[thread_id] = thread
            if session.record.active_thread_id == thread_id:
                self._touch(session, now, active_thread_id=None)
            else:
                self._touch(session, now)
            return self._thread_record(session, thread)

    def thread_unarchive(self, session_id: str, thread_id: str) -> ThreadRecord:
        """Unarchive the thread (status ``paused``); a thread not archived is unchanged."""
        with self._locked():
            session = self._session(session_id)
            thread = self._thread(session, thread_id)
            now = self._clock.now()
            if thread.archived:
                thread = attrs.evolve(
                    thread, status=ThreadStatus.PAUSED, archived=False, archived_at=None
                )
            thread = attrs.evolve(thread, updated_at=now)
            session.threads[thread_id] = thread
            self._touch(session, now)
            return self._thread_record(session, thread)

    def thread_rollback(self, session_id: str, thread_id: str, selector: Any) -> ThreadRecord:
        """Hide the thread's messages after the selected point; later ones extend the view."""
        parsed = parse_rollback_selector(selector)
        with self._locked():
            session = self._session(session_id)
            thread = self._thread(session, thread_id)
            visible = self._thread_messages(session, thread_id)
            keep = rollback_visible_count(parsed, [(m.uuid, m.message_id) for m in visible])
            if keep < len(visible):
                cut = visible[keep - 1].seq if keep else 0
                session.rolled_back = session.rolled_back.union(
                    m.seq for m in session.messages if m.thread_id == thread_id and m.seq > cut
                )
            now = self._clock.now()
            thread = attrs.evolve(thread, updated_at=now)
            session.threads[thread_id] = thread
            self._touch(session, now)
            return self._thread_record(session, thread)

    # --- lifecycle ------------------------------------------------------------------------

    def recover_writer(self) -> None:
        """Nothing to repair: a change is applied under one lock that ``with`` releases."""

    def close(self) -> None:
        """Drop every session; later calls raise :class:`~beamagent.errors.StoreError`."""
        with self._lock:
            self._closed = True
            self._sessions.clear()
            self._routing.clear()

    # --- routing state --------------------------------------------------------------------

    def save_routing_entry(self, kind: str, key: str, value: str | None) -> None:
        """Set one entry of durable routing state, or delete it (``value=None``).

        Raises:
            InvalidOption: a bad ``kind``, ``key`` or ``value`` (see ``SessionStore``).
            StoreError: the store is closed.
        """
        check_routing_entry(kind, key, value)
        with self._locked():
            if value is None:
                self._routing.get(kind, {}).pop(key, None)
            else:
                self._routing.setdefault(kind, {})[key] = value

    def routing_entries(self, kind: str) -> dict[str, str]:
        """Every entry of one kind of routing state, ``{key: value}`` in key order.

        Raises:
            InvalidOption: a bad ``kind``.
            StoreError: the store is closed.
        """
        check_id(kind, "kind")
        with self._locked():
            return dict(sorted(self._routing.get(kind, {}).items()))

    # --- graph run checkpoints ------------------------------------------------------------

    def _run_rows(self) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] | None = getattr(self, "_graph_runs", None)
        if rows is None:
            self._graph_runs: dict[str, dict[str, Any]] = {}
            rows = self._graph_runs
        return rows

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
        with self._locked():
            rows = self._run_rows()
            now = self._clock.now()
            row = rows.get(run_id)
            if row is None:
                row = rows[run_id] = {"created_at": now, "results": []}
            row.update(
                job_id=job_id,
                parent_run_id=parent_run_id,
                status=status,
                updated_at=now,
                state=state,
            )
            row["results"].extend(texts)

    def load_run(self, run_id: str) -> dict[str, Any]:
        """A run's checkpoint with its decoded state and results."""
        from beamagent.errors import RunNotFound

        with self._locked():
            row = self._run_rows().get(run_id) if isinstance(run_id, str) else None
            if row is None:
                raise RunNotFound(f"no run {run_id!r} in the store")
            out = self._run_summary(run_id, row)
            state, results = row["state"], list(row["results"])
        out["state"] = json.loads(state)
        out["results"] = [json.loads(text) for text in results]
        return out

    @staticmethod
    def _run_summary(run_id: str, row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "run_id": run_id,
            "job_id": row["job_id"],
            "parent_run_id": row["parent_run_id"],
            "status": row["status"],
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        }

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
        with self._locked():
            found = [
                self._run_summary(run_id, row)
                for run_id, row in self._run_rows().items()
                if (status is None or row["status"] == status)
                and (job_id is None or row["job_id"] == job_id)
            ]
        found.sort(key=lambda r: r["updated_at"], reverse=True)
        return found if limit is None else found[:limit]

    def delete_run(self, run_id: str) -> None:
        """Delete a run's checkpoint and results."""
        from beamagent.errors import RunNotFound

        with self._locked():
            rows = self._run_rows()
            if not isinstance(run_id, str) or run_id not in rows:
                raise RunNotFound(f"no run {run_id!r} in the store")
            del rows[run_id]
