"""``StoreRecorder``: a session records into the store itself, on its own thread.

Recording is on every query's path, so it costs no actor round trip: the
session calls the store object directly, and the store serialises the write
with every other one (``SqliteStore``: one transaction on its single write
connection under its write lock; ``MemoryStore``: its lock). The store's
guarantees carry over unchanged: a call returns once its transaction is
committed, so a session still delivers only what is recorded; a failed call
wrote nothing. A writer killed mid-transaction (a session actor killed while
it records) leaves nothing behind that counts: the next writer takes its lock
over and rolls its transaction back, and since the session died with it, the
messages were never delivered to anyone.

Errors are mapped as the store actor maps them (:func:`~beamagent.store.actor.refused`).
A retry of messages whose earlier write failed passes ``skip_recorded=True``,
so a retry can never duplicate what a write reported as failed yet committed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from beamagent.errors import (
    BeamAgentError,
    InvalidOption,
    SessionNotFound,
    StoreError,
    ThreadNotFound,
)
from beamagent.messages import Message
from beamagent.store.actor import refused
from beamagent.store.api import message_from_stored
from beamagent.store.base import SessionStore

__all__ = ["StoreRecorder"]


class StoreRecorder:
    """The session's ``Recorder``: writes straight into ``store`` (thread-safe).

    Args:
        store: the runtime's store object. Its methods are called from session
            threads, several at once: a store must serialise its own writes (both
            built-in stores do).

    Every method returns once its write is committed and raises what the store
    raised, mapped to ``beamagent.errors`` types: ``StoreError`` when the write
    failed (nothing of it was written), ``InvalidOption`` when the store cannot
    take the arguments.
    """

    __slots__ = ("_store",)

    def __init__(self, store: SessionStore) -> None:
        self._store = store

    def __repr__(self) -> str:
        return f"StoreRecorder({self._store!r})"

    def session_started(self, meta: Mapping[str, Any]) -> None:
        """Upsert the session's metadata when it (re)starts (history and threads are kept).

        Raises:
            InvalidOption: ``meta`` is not a mapping with a valid ``session_id`` and
                ``backend``.
            StoreError: the write failed.
        """
        if type(meta) is not dict and not isinstance(meta, Mapping):  # dict: no abc check
            raise InvalidOption(f"session metadata must be a mapping, got {meta!r}")
        try:
            self._store.create_session(
                meta.get("session_id"),  # type: ignore[arg-type]  # the store checks them
                meta.get("backend"),  # type: ignore[arg-type]
                model=meta.get("model"),
                cwd=meta.get("cwd"),
                native_session_id=meta.get("native_session_id"),
            )
        except BeamAgentError:
            raise
        except Exception as exc:
            raise refused("create_session", exc) from exc

    def session_updated(self, session_id: str, fields: Mapping[str, Any]) -> None:
        """Update metadata fields (model, native session id).

        Raises:
            SessionNotFound: no such session.
            InvalidOption: a field the store does not take.
            StoreError: the write failed.
        """
        try:
            self._store.update_session(session_id, **fields)
        except BeamAgentError:
            raise
        except Exception as exc:
            raise refused("update_session", exc) from exc

    def record(
        self,
        session_id: str,
        messages: list[Message | dict[str, Any]],
        *,
        skip_recorded: bool = False,
    ) -> None:
        """Record messages in one transaction, in order, before they are delivered.

        ``skip_recorded=True`` (for a retry) skips those already stored (see
        ``SessionStore.record_messages``).

        Raises:
            SessionNotFound: no such session.
            InvalidOption: the messages cannot be stored.
            StoreError: the write failed; nothing was recorded.
        """
        try:
            self._store.record_messages(session_id, messages, skip_recorded=skip_recorded)
        except BeamAgentError:
            raise
        except Exception as exc:
            raise refused("record_messages", exc) from exc

    def history(self, session_id: str, limit: int) -> list[Message]:
        """The visible history a session replays to a backend that cannot resume natively.

        The active thread's visible messages (after the session's revert view and the
        thread's rollbacks), or every visible message when no thread is active; the
        most recent ``limit`` at most, oldest first. An unknown session has none.

        Raises:
            StoreError: the read failed.
        """
        store = self._store
        try:
            try:
                record = store.get_session(session_id)
            except SessionNotFound:
                return []
            stored: list[dict[str, Any]] = []
            if record.active_thread_id is not None:
                try:
                    detail = store.thread_read(
                        session_id, record.active_thread_id, include_messages=True
                    )
                except ThreadNotFound:
                    pass  # deleted meanwhile: the session's visible messages, then
                else:
                    stored = list(detail.messages or ())[-limit:]
                    return [message_from_stored(m) for m in stored]
            offset = max(record.visible_message_count - limit, 0)
            stored = store.get_session_messages(session_id, offset=offset, limit=limit)
        except SessionNotFound:
            return []
        except StoreError:
            raise
        except Exception as exc:  # the session retries a StoreError, and only that
            error = exc if isinstance(exc, BeamAgentError) else refused("history", exc)
            raise StoreError(
                f"reading the history of session {session_id} failed: {error}"
            ) from exc
        return [message_from_stored(m) for m in stored]
