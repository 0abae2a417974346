"""The :class:`SessionStore` protocol, the value classes it returns, and its input checks.

Both stores (:class:`~beamagent.store.SqliteStore`, :class:`~beamagent.store.MemoryStore`)
implement the same protocol with the same semantics; ``docs/store.md`` describes them.
The helpers at the bottom are the boundary checks both stores share, so that the two
refuse exactly the same inputs with exactly the same errors.

Timestamps are ``float`` seconds since the epoch (``time.time()``) everywhere in the store.
"""

from __future__ import annotations

import enum
import json
import math
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import attrs

from beamagent.errors import InvalidOption
from beamagent.messages import Message

__all__ = [
    "PreparedMessage",
    "SessionRecord",
    "SessionStore",
    "ShareRecord",
    "SummaryRecord",
    "ThreadDetail",
    "ThreadRecord",
    "ThreadStatus",
]


class ThreadStatus(enum.StrEnum):
    """Status of a thread; exactly one thread per session is ``active`` at a time."""

    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    ARCHIVED = "archived"


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    # A read-only top level: a record is a snapshot, editing it must not look like it
    # changed the store. Nested values are fresh copies decoded from JSON. Empty: one
    # shared proxy (most records have no extra, and each proxy is an object for the GC).
    if not value:
        return _EMPTY_MAPPING
    return MappingProxyType(dict(value))


_EMPTY_MAPPING: Mapping[str, Any] = MappingProxyType({})


def _plain(value: Any) -> Any:
    """A JSON-shaped deep copy with plain dicts (for ``to_dict``)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@attrs.frozen
class SessionRecord:
    """Metadata of one stored session (a snapshot; the store owns the truth).

    ``message_count`` counts every recorded message, hidden ones included;
    :attr:`visible_message_count` is what ``get_session_messages`` shows.
    ``extra`` holds free-form metadata plus the store's own keys: ``view``
    (revert view), ``share``, ``summary`` and ``fork``.
    """

    session_id: str
    backend: str
    model: str | None
    cwd: str | None
    created_at: float
    updated_at: float
    message_count: int
    native_session_id: str | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping, hash=False)
    active_thread_id: str | None = None

    @property
    def view(self) -> Mapping[str, Any] | None:
        """The revert view ``{visible_message_count, reverted_at, selector}``, if reverted."""
        view = self.extra.get("view")
        return view if isinstance(view, Mapping) else None

    @property
    def visible_message_count(self) -> int:
        """How many messages the revert view shows (all of them when not reverted)."""
        view = self.view
        if view is None:
            return self.message_count
        return min(int(view["visible_message_count"]), self.message_count)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-able dict of every field."""
        return {
            "session_id": self.session_id,
            "backend": self.backend,
            "model": self.model,
            "cwd": self.cwd,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "message_count": self.message_count,
            "native_session_id": self.native_session_id,
            "extra": _plain(self.extra),
            "active_thread_id": self.active_thread_id,
        }


@attrs.frozen
class ThreadRecord:
    """Metadata of one thread of a session.

    ``message_count`` counts every message recorded with this ``thread_id``;
    ``visible_message_count`` counts those the thread shows (after the session's
    revert view and the thread's rollbacks).
    """

    thread_id: str
    session_id: str
    name: str
    created_at: float
    updated_at: float
    status: ThreadStatus = attrs.field(converter=ThreadStatus)
    metadata: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping, hash=False)
    message_count: int = 0
    visible_message_count: int = 0
    archived: bool = False
    archived_at: float | None = None
    parent_thread_id: str | None = None
    summary: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-able dict of every field (``status`` as its string value)."""
        return {
            "thread_id": self.thread_id,
            "session_id": self.session_id,
            "name": self.name,
            "metadata": _plain(self.metadata),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "message_count": self.message_count,
            "visible_message_count": self.visible_message_count,
            "status": self.status.value,
            "archived": self.archived,
            "archived_at": self.archived_at,
            "parent_thread_id": self.parent_thread_id,
            "summary": self.summary,
        }


@attrs.frozen
class ThreadDetail:
    """Answer of ``thread_read``: the thread, and its visible messages when asked for.

    ``Runtime.thread_read`` gives the messages as :class:`~beamagent.messages.Message`
    objects (as ``get_session_messages`` does); a store itself gives the stored dicts.
    """

    thread: ThreadRecord
    messages: tuple[Any, ...] | None = None


@attrs.frozen
class ShareRecord:
    """A session's share (``share_session`` / ``unshare_session``).

    ``status`` is ``"active"`` until ``unshare_session`` makes it ``"revoked"``
    (``revoked_at`` set).
    """

    share_id: str
    session_id: str
    created_at: float
    status: str
    revoked_at: float | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShareRecord:
        """The record of a store's share dict."""
        return cls(
            share_id=data["share_id"],
            session_id=data["session_id"],
            created_at=data["created_at"],
            status=data["status"],
            revoked_at=data.get("revoked_at"),
        )

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-able dict (``revoked_at`` only once revoked)."""
        data: dict[str, Any] = {
            "share_id": self.share_id,
            "session_id": self.session_id,
            "created_at": self.created_at,
            "status": self.status,
        }
        if self.revoked_at is not None:
            data["revoked_at"] = self.revoked_at
        return data


@attrs.frozen
class SummaryRecord:
    """A session's stored summary (``summarize_session``)."""

    session_id: str
    content: str
    generated_at: float
    message_count: int
    generated_by: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SummaryRecord:
        """The record of a store's summary dict."""
        return cls(
            session_id=data["session_id"],
            content=data["content"],
            generated_at=data["generated_at"],
            message_count=data["message_count"],
            generated_by=data["generated_by"],
        )

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-able dict of every field."""
        return {
            "session_id": self.session_id,
            "content": self.content,
            "generated_at": self.generated_at,
            "message_count": self.message_count,
            "generated_by": self.generated_by,
        }


@runtime_checkable
class SessionStore(Protocol):
    """Durable sessions, their append-only messages, revert views, shares, summaries, threads.

    Unknown sessions raise :class:`~beamagent.errors.SessionNotFound`, unknown threads
    :class:`~beamagent.errors.ThreadNotFound`, bad arguments
    :class:`~beamagent.errors.InvalidOption` or :class:`~beamagent.errors.InvalidSelector`.
    Every method returns only after its change is committed. Methods are called from
    several threads at once (a runtime's sessions record concurrently): a store
    serialises its own writes.

    >>> from beamagent.store import MemoryStore
    >>> store = MemoryStore()
    >>> store.create_session("s1", "claude").message_count
    0
    >>> store.record_message("s1", {"type": "user", "content": "hi"})
    1
    """

    def create_session(
        self,
        session_id: str,
        backend: str,
        model: str | None = None,
        cwd: str | None = None,
        extra: Mapping[str, Any] | None = None,
        native_session_id: str | None = None,
    ) -> SessionRecord:
        """Create a session, or update the metadata of an existing one (an upsert)."""
        ...

    def update_session(self, session_id: str, /, **fields: Any) -> SessionRecord:
        """Change ``backend``, ``model``, ``cwd``, ``native_session_id`` or merge ``extra``."""
        ...

    def get_session(self, session_id: str) -> SessionRecord:
        """The session's metadata."""
        ...

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
        ...

    def delete_session(self, session_id: str) -> None:
        """Delete the session with its messages and threads."""
        ...

    def record_message(self, session_id: str, message: Mapping[str, Any] | Message) -> int:
        """Append one message; returns its ``seq`` (1, 2, ... per session)."""
        ...

    def record_messages(
        self,
        session_id: str,
        messages: Iterable[Mapping[str, Any] | Message],
        *,
        skip_recorded: bool = False,
    ) -> list[int]:
        """Append messages in one transaction (all or none); returns their seqs.

        With ``skip_recorded`` the call can be retried after a failure whose outcome is
        unknown (the store actor died mid-call): the batch's leading messages that are
        already stored, with the same ``uuid`` at consecutive seqs among the session's last
        :data:`SKIP_RECORDED_WINDOW` messages, are not appended again; their stored seqs
        are returned with the new ones.
        """
        ...

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
        ...

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
        ...

    def revert_session(self, session_id: str, selector: Any) -> SessionRecord:
        """Hide the messages after a point (see :mod:`beamagent.store.selectors`)."""
        ...

    def unrevert_session(self, session_id: str) -> SessionRecord:
        """Remove the revert view: every message is visible again."""
        ...

    def share_session(self, session_id: str, *, share_id: str | None = None) -> dict[str, Any]:
        """Create an active share (replacing any previous one)."""
        ...

    def unshare_session(self, session_id: str) -> dict[str, Any]:
        """Revoke the session's share."""
        ...

    def summarize_session(self, session_id: str, *, content: str | None = None) -> dict[str, Any]:
        """Store and return a summary (deterministic text unless ``content`` is given)."""
        ...

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
        ...

    def thread_resume(self, session_id: str, thread_id: str) -> ThreadRecord:
        """Make a thread the session's active thread again."""
        ...

    def thread_list(self, session_id: str) -> list[ThreadRecord]:
        """The session's threads, most recently updated first."""
        ...

    def thread_fork(
        self, session_id: str, thread_id: str, *, name: str | None = None
    ) -> ThreadRecord:
        """A new active thread holding copies of the source thread's visible messages."""
        ...

    def thread_read(
        self, session_id: str, thread_id: str, *, include_messages: bool = False
    ) -> ThreadDetail:
        """The thread, with its visible messages if ``include_messages``."""
        ...

    def thread_archive(self, session_id: str, thread_id: str) -> ThreadRecord:
        """Archive a thread (it stops being the active thread)."""
        ...

    def thread_unarchive(self, session_id: str, thread_id: str) -> ThreadRecord:
        """Unarchive a thread (status ``paused``)."""
        ...

    def thread_rollback(self, session_id: str, thread_id: str, selector: Any) -> ThreadRecord:
        """Hide a thread's visible messages after a point; later messages extend the view."""
        ...

    def close(self) -> None:
        """Release every resource the store holds; later calls raise ``StoreError``."""
        ...

    def recover_writer(self) -> None:
        """Make the store ready for a new writer after the previous one was killed.

        The store actor calls it when it starts, so a restarted actor never inherits a
        transaction or a lock its killed predecessor left behind. Cheap when there is
        nothing to repair.

        Raises:
            StoreError: the store cannot be made writable (closed, or cannot reconnect).
        """
        ...

    # --- routing state (beamagent.routing) ----------------------------------------------

    def save_routing_entry(self, kind: str, key: str, value: str | None) -> None:
        """Set one entry of durable routing state, or delete it (``value=None``).

        Kinds in use: ``"health"`` (backend → status) and ``"sticky"`` (affinity key →
        backend). Deleting an entry that does not exist does nothing.

        Raises:
            InvalidOption: ``kind`` or ``key`` is not a non-empty valid string, or ``value``
                is neither that nor ``None``.
        """
        ...

    def routing_entries(self, kind: str) -> dict[str, str]:
        """Every entry of one kind of routing state, ``{key: value}`` in key order.

        Raises:
            InvalidOption: ``kind`` is not a non-empty valid string.
        """
        ...

    # --- graph run checkpoints (beamagent.graph) ---------------------------------------

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
        """Create or replace the checkpoint of graph run ``run_id``, appending ``results``.

        ``state`` and each result are JSON texts written by the graph executor; the
        store keeps them as they are. One transaction: all or nothing.
        """
        ...

    def load_run(self, run_id: str) -> dict[str, Any]:
        """A run's checkpoint: ``run_id, job_id, parent_run_id, status, created_at,
        updated_at``, the decoded ``state`` and the decoded ``results`` in order.

        Raises :class:`~beamagent.errors.RunNotFound` for an unknown run.
        """
        ...

    def list_runs(
        self,
        *,
        status: str | None = None,
        job_id: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Run checkpoints matching every given filter, most recently updated first.

        Each is ``load_run``'s dict without ``state`` and ``results``.
        """
        ...

    def delete_run(self, run_id: str) -> None:
        """Delete a run's checkpoint and results (``RunNotFound`` if there is none)."""
        ...


# --- boundary checks shared by both stores ---------------------------------------------------


class MonotonicClock:
    """Wall-clock seconds that never repeat or go back within one store.

    Two writes in the same clock tick would otherwise tie on ``updated_at`` and make
    "most recently updated first" ambiguous; nudging by a microsecond keeps write order.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last = float("-inf")
        self._lock = threading.Lock()

    def now(self) -> float:
        """The current time, strictly greater than any earlier answer."""
        now = float(self._clock())
        # Nothing under the lock calls a function: CPython only switches threads at a
        # call or a loop's jump back, so no thread can lose the GIL while it holds this
        # lock, and threads never queue up on it (a lock held across a switch makes every
        # other thread block on it in turn: with 16 threads recording, most of their time).
        with self._lock:
            last = self._last
            if now <= last:
                now = last + 1e-6
            self._last = now
        return now


#: Fields ``update_session`` accepts.
UPDATABLE_FIELDS = frozenset({"backend", "model", "cwd", "native_session_id", "extra"})


@attrs.frozen
class PreparedMessage:
    """A message checked and encoded for storage: its JSON text plus the indexed columns."""

    type: str
    uuid: str | None
    message_id: str | None
    thread_id: str | None
    model: str | None
    body: str


def new_session_id() -> str:
    """A fresh session id, ``session_`` + 32 hex digits."""
    return "session_" + secrets.token_hex(16)


def new_thread_id() -> str:
    """A fresh thread id, ``thread_`` + 16 hex digits."""
    return "thread_" + secrets.token_hex(8)


def new_share_id() -> str:
    """A fresh, unguessable share id: ``share_`` + 32 hex digits (128 random bits)."""
    return "share_" + secrets.token_hex(16)


def storable(text: str) -> bool:
    """Whether every store can keep ``text`` as it is: no lone surrogate, no NUL.

    Python strings may hold lone surrogates (``os.fsdecode(b"caf\\xe9")`` is
    ``'caf\\udce9'``; ``json.loads`` makes one of a ``"\\udce9"`` escape); UTF-8, and so
    SQLite, cannot encode them. PostgreSQL's text cannot hold U+0000 (NUL).
    """
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def storable_text(text: str) -> str:
    """``text`` with every lone surrogate and NUL replaced by U+FFFD (a valid pair becomes
    its character).

    >>> storable_text("caf\\udce9") == "caf\\ufffd"
    True
    """
    if storable(text):
        return text
    text = text.replace("\x00", "\ufffd")
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _not_storable(what: str, value: str) -> InvalidOption:
    return InvalidOption(
        f"{what} {value!r} is not valid text for a store: it holds a lone surrogate (what "
        "os.fsdecode makes of undecodable bytes) or a NUL character; names and ids must be "
        "valid text"
    )


def check_id(value: Any, what: str) -> str:
    """``value`` if it is a non-empty, valid Unicode string, else :class:`InvalidOption`."""
    if not isinstance(value, str) or not value:
        raise InvalidOption(f"{what} must be a non-empty string, got {value!r}")
    if not storable(value):
        raise _not_storable(what, value)
    return value


def check_optional_str(value: Any, what: str) -> str | None:
    """``value`` if it is ``None`` or a valid Unicode string, else :class:`InvalidOption`."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidOption(f"{what} must be a string or None, got {value!r}")
    if not storable(value):
        raise _not_storable(what, value)
    return value


def lookup_key(value: Any) -> str | None:
    """``value`` if it can name something stored, else ``None`` (which finds nothing).

    An id that is not a string, or holds a lone surrogate, was refused when things were
    created, so looking it up finds nothing: both stores then raise their not-found error.
    """
    return value if isinstance(value, str) and storable(value) else None


def check_mapping(value: Any, what: str) -> dict[str, Any]:
    """A JSON-round-tripped copy of a mapping (``None`` → ``{}``), else :class:`InvalidOption`.

    For metadata the caller sets (``extra``, thread ``metadata``): it must be JSON as it
    is, so a non-finite float or a lone surrogate is refused, naming where it is.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidOption(f"{what} must be a mapping, got {type(value).__name__}")
    text = encode_json(value, what)
    if not storable(text):
        try:
            found = _find_unstorable(value)
        except RecursionError:
            found = None
        raise _not_storable(*((what + found[0], found[1]) if found else (what, text)))
    decoded = json.loads(text)
    assert isinstance(decoded, dict)
    return decoded


def _find_unstorable(value: Any, path: str = "") -> tuple[str, str] | None:
    """Where the first string holding a lone surrogate is in ``value``, and that string."""
    items: Iterable[tuple[Any, Any]]
    if isinstance(value, str):
        return None if storable(value) else (path, value)
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(key, str) and not storable(key):
            return f"{path} key", key
        found = _find_unstorable(item, f"{path}[{key!r}]")
        if found is not None:
            return found
    return None


#: Keys of ``extra`` the store itself maintains; callers change them through the store's
#: methods (revert, share, summarize, fork), never directly.
RESERVED_EXTRA_KEYS = frozenset({"view", "share", "summary", "fork"})


def check_extra(value: Any) -> dict[str, Any]:
    """A checked copy of caller-given ``extra``: a JSON-able mapping without reserved keys."""
    extra = check_mapping(value, "extra")
    reserved = sorted(RESERVED_EXTRA_KEYS & extra.keys())
    if reserved:
        raise InvalidOption(
            f"extra keys {', '.join(reserved)} belong to the store; use revert_session, "
            "share_session, summarize_session or fork_session to change them"
        )
    return extra


#: What ``json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)``
#: uses, built once: ``dumps`` with non-default options builds a new encoder per call.
#: It keeps no state between calls, so threads can share it.
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_json(value: Any, what: str) -> str:
    """Compact JSON text of ``value``, or :class:`InvalidOption` if it is not strict JSON.

    Strict: ``NaN`` and ``±Infinity`` are refused. Lone surrogates pass through (the text
    is then not :func:`storable`); :func:`check_mapping` refuses them, and
    :func:`encode_content` replaces them.
    """
    try:
        return _JSON_ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidOption(f"{what} must be JSON-serialisable: {exc}") from None


def encode_content(value: Any, what: str) -> str:
    """JSON text of content (a message body), made storable whatever its strings and floats.

    Content comes from backends and models, so it is never refused for its values: a lone
    surrogate (in a key or a value) becomes U+FFFD and a non-finite float becomes ``null``,
    as JavaScript's ``JSON.stringify`` does. What is not JSON at all (bytes, a set, a
    cycle) is still :class:`InvalidOption`.
    """
    try:
        text = _JSON_ENCODER.encode(value)
    except ValueError:
        # A non-finite float somewhere (rare: only then is the value walked and copied).
        try:
            text = _JSON_ENCODER.encode(_finite(value))
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidOption(f"{what} must be JSON-serialisable: {exc}") from None
    except (TypeError, RecursionError) as exc:
        raise InvalidOption(f"{what} must be JSON-serialisable: {exc}") from None
    # Lone surrogates can only be inside JSON strings, so fixing the text fixes each string.
    return text if text.isascii() else storable_text(text)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (float keys by JS names)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_finite_key(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _finite_key(key: Any) -> Any:
    if isinstance(key, float) and not math.isfinite(key):
        return "NaN" if math.isnan(key) else ("Infinity" if key > 0 else "-Infinity")
    return key


#: The largest integer SQLite stores (a signed 64-bit int); offsets and limits are bounded by
#: it in both stores, so neither accepts what the other could not.
MAX_INT = 2**63 - 1


def check_limit(limit: Any) -> int | None:
    """``limit`` if it is ``None`` or an int in ``[1, MAX_INT]``, else :class:`InvalidOption`."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_INT:
        raise InvalidOption(
            f"limit must be a positive integer (at most 2**63 - 1) or None, got {limit!r}"
        )
    return limit


def check_offset(offset: Any) -> int:
    """``offset`` if it is an int in ``[0, MAX_INT]``, else :class:`InvalidOption`."""
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_INT:
        raise InvalidOption(f"offset must be an integer in [0, 2**63 - 1], got {offset!r}")
    return offset


def check_since(since: Any) -> float | None:
    """``since`` if it is ``None`` or a finite number of epoch seconds, else InvalidOption."""
    if since is None:
        return None
    try:
        seconds = float(since) if isinstance(since, int | float) else math.nan
    except OverflowError:  # an int too large for a float
        seconds = math.nan
    if isinstance(since, bool) or not math.isfinite(seconds):
        raise InvalidOption(f"since must be epoch seconds (a number) or None, got {since!r}")
    return seconds


def check_types(types: Any) -> frozenset[str] | None:
    """The message types to keep (a single string means one type), or ``None`` for all."""
    if types is None:
        return None
    if isinstance(types, str):
        if not storable(types):
            raise _not_storable("types", types)
        return frozenset({types})
    try:
        chosen = frozenset(types)
    except TypeError:
        raise InvalidOption(f"types must be an iterable of strings, got {types!r}") from None
    if not all(isinstance(t, str) for t in chosen):
        raise InvalidOption(f"types must be an iterable of strings, got {types!r}")
    for kind in chosen:
        if not storable(kind):
            raise _not_storable("types", kind)
    return chosen


def check_update_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Checked ``update_session`` fields (``extra`` as a plain dict to merge)."""
    unknown = sorted(set(fields) - UPDATABLE_FIELDS)
    if unknown:
        raise InvalidOption(
            f"update_session cannot set {', '.join(unknown)}; it accepts "
            f"{', '.join(sorted(UPDATABLE_FIELDS))} (threads change through thread_*)"
        )
    checked: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "backend":
            checked[name] = check_id(value, "backend")
        elif name == "extra":
            checked[name] = check_extra(value)
        else:
            checked[name] = check_optional_str(value, name)
    return checked


def merge_extra(current: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level merge: keys of ``update`` win, a key set to ``None`` is removed."""
    merged = dict(current)
    for key, value in update.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def prepare_message(message: Any, active_thread_id: str | None) -> PreparedMessage:
    """Check a message dict and encode it; stamp ``active_thread_id`` if it has no thread.

    A message is a JSON-able mapping with a non-empty string ``type``, or a
    :class:`~beamagent.messages.Message` (taken as its ``to_dict()``). The indexed
    columns take ``type``, ``uuid``, ``message_id``, ``thread_id`` and ``model`` when
    they are non-empty strings. The body is content (:func:`encode_content`): lone
    surrogates become U+FFFD and non-finite floats ``null``, in the columns too.
    """
    if type(message) is not dict:
        if isinstance(message, Message):
            # Its dict form, shared with it: only read, and encoded right away.
            message = message.to_dict(copy=False)
        elif not isinstance(message, Mapping):
            raise InvalidOption(
                f"a message must be a mapping or a Message, got {type(message).__name__}"
            )
    kind = message.get("type")
    if not isinstance(kind, str) or not kind:
        raise InvalidOption(f"a message needs a non-empty string 'type', got {kind!r}")
    if active_thread_id is not None and message.get("thread_id") is None:
        body = dict(message)
        body["thread_id"] = active_thread_id
    elif type(message) is dict:
        # Encoded as it is: a copy would encode to the same text (the encoder takes
        # only dicts, so other mappings are still copied).
        body = message
    else:
        body = dict(message)
    get = body.get
    return PreparedMessage(
        type=storable_text(kind),
        uuid=_column(get("uuid")),
        message_id=_column(get("message_id")),
        thread_id=_column(get("thread_id")),
        model=_column(get("model")),
        body=encode_content(body, "a message"),
    )


def check_routing_entry(kind: Any, key: Any, value: Any) -> None:
    """The arguments of ``save_routing_entry``, or :class:`InvalidOption`."""
    check_id(kind, "kind")
    check_id(key, "key")
    if value is not None:
        check_id(value, "value")


#: How far back ``record_messages(..., skip_recorded=True)`` looks for a batch that is
#: already stored: a retry follows its failure closely, and a uuid seen longer ago is more
#: likely a backend repeating itself than the same message.
SKIP_RECORDED_WINDOW = 1000


def check_flag(value: Any, what: str) -> bool:
    """``value`` if it is a bool, else :class:`InvalidOption`."""
    if not isinstance(value, bool):
        raise InvalidOption(f"{what} must be True or False, got {value!r}")
    return value


class _Keyed(Protocol):
    """A message to record, as far as ``recorded_prefix`` looks at it."""

    @property
    def uuid(self) -> str | None: ...


def recorded_prefix(batch: Sequence[_Keyed], stored_uuids: Iterable[str | None]) -> int:
    """How many leading messages of ``batch`` are already stored.

    ``stored_uuids`` are the uuids of the stored messages from the latest one whose uuid is
    the batch's first (in seq order). A message without a uuid is never taken as stored.
    """
    count = 0
    for prepared, stored in zip(batch, stored_uuids, strict=False):
        if prepared.uuid is None or prepared.uuid != stored:
            break
        count += 1
    return count


def _column(value: Any) -> str | None:
    """An indexed column's value: a non-empty string (made storable), else ``None``."""
    if isinstance(value, str) and value:
        return storable_text(value)
    return None


def with_thread_id(body: str, thread_id: str) -> PreparedMessage:
    """A stored message body re-encoded under another ``thread_id`` (for ``thread_fork``)."""
    decoded = json.loads(body)
    decoded["thread_id"] = thread_id
    return prepare_message(decoded, None)


def fork_extra(
    parent_extra: Mapping[str, Any],
    extra: Mapping[str, Any],
    *,
    parent_session_id: str,
    forked_at: float,
    include_hidden: bool,
) -> dict[str, Any]:
    """The ``extra`` of a fork: the parent's, minus its share, merged with ``extra``.

    With ``include_hidden`` the revert view is kept (the fork shows what the parent
    shows and can be unreverted); without it only visible messages are copied, so the
    view is dropped. ``fork`` always records the parent.
    """
    result = {k: v for k, v in parent_extra.items() if k != "share"}
    if not include_hidden:
        result.pop("view", None)
    result = merge_extra(result, extra)
    result["fork"] = {"parent_session_id": parent_session_id, "forked_at": forked_at}
    return result
