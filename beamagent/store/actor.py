"""``StoreActor``: the one process that writes to the store.

Every mutation goes through it, so the store's single write connection is
only ever used from one thread and a session's messages are committed before
the session delivers them. Reads do not need it: stores give each reading
thread its own connection.

Each call is its own transaction. Group commit (draining the queued writes of
several sessions into one transaction) was measured and left out: with WAL and
``synchronous=NORMAL`` a commit does not fsync, so it saves little (see
``docs/store.md``, "Runtime integration").

No call can crash it: a restart would only reuse the same store, and every
session writes through it. Errors are answered to the caller (a
:class:`~supervisors.ReplyError`), and the actor lives on:

* the store's own errors (:class:`~beamagent.errors.BeamAgentError`: unknown
  session, bad argument, a :class:`StoreError` for a database error) as they are;
* a database error a store raised raw (``sqlite3.Error``) as :class:`StoreError`
  (the failed transaction was rolled back);
* arguments the store cannot take (``TypeError``, ``ValueError`` including
  ``UnicodeError``, ``ArithmeticError`` such as ``OverflowError``,
  ``RecursionError``) as :class:`InvalidOption`;
* anything else (a bug) as :class:`StoreError`, logged with its traceback.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from beamagent.errors import BeamAgentError, InvalidOption, StoreError
from beamagent.log import get_logger
from beamagent.store.base import SessionStore
from supervisors import Process

__all__ = ["StoreActor"]

log = get_logger(__name__)

WRITE_METHODS = frozenset(
    {
        "create_session",
        "update_session",
        "delete_session",
        "record_message",
        "record_messages",
        "fork_session",
        "revert_session",
        "unrevert_session",
        "share_session",
        "unshare_session",
        "summarize_session",
        "thread_start",
        "thread_resume",
        "thread_fork",
        "thread_archive",
        "thread_unarchive",
        "thread_rollback",
        "save_routing_entry",
    }
)


#: Exceptions a store raises for arguments it cannot take: answered as ``InvalidOption``.
_ARGUMENT_ERRORS = (TypeError, ValueError, ArithmeticError, RecursionError)


class StoreActor(Process):
    """Owns the store's writes; ``write(method, *args, **kwargs)`` runs one of them."""

    # One actor per runtime that spends its time in SQLite's C code (fsync included):
    # a thread of its own rather than a scheduler worker it would hold for as long.
    dedicated_thread = True

    def __init__(self, store: SessionStore) -> None:
        super().__init__()
        self.store = store

    def on_start(self) -> None:
        """Repair what a killed predecessor may have left (an open transaction, the lock)."""
        try:
            self.store.recover_writer()
        except StoreError as exc:
            # Writes will report the problem to their callers; crashing here would only
            # restart into the same store.
            log.error("store_recovery_failed", error=str(exc))

    @staticmethod
    def _refused(method: str, exc: Exception) -> BeamAgentError:
        """The error to answer for ``exc``, raised by the store's ``method`` (see above)."""
        if isinstance(exc, sqlite3.Error):
            log.error("store_write_failed", method=method, error=str(exc))
            return StoreError(f"session store write {method} failed: {exc}")
        if isinstance(exc, _ARGUMENT_ERRORS):
            log.warning("store_call_refused", method=method, error=repr(exc))
            return InvalidOption(f"session store {method} cannot take these arguments: {exc}")
        log.error("store_call_failed", method=method, exc_info=exc)
        return StoreError(f"session store {method} failed: {exc!r}")

    def write(self, method: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        """Run a mutating store method (see ``WRITE_METHODS``) and return its result.

        Raises:
            InvalidOption: ``method`` is not a store write, or the store cannot take the
                arguments.
            StoreError: the database failed.
            BeamAgentError: whatever else the store method raises.
        """
        if not isinstance(method, str) or method not in WRITE_METHODS:
            raise InvalidOption(
                f"{method!r} is not a store write; writes are {', '.join(sorted(WRITE_METHODS))}"
            )
        try:
            return getattr(self.store, method)(*args, **kwargs)
        except BeamAgentError:
            raise
        except Exception as exc:
            raise self._refused(method, exc) from exc

    def record(
        self, session_id: str, messages: list[dict[str, Any]], skip_recorded: bool = False
    ) -> list[int]:
        """Record a session's messages in one transaction; returns their seqs.

        ``skip_recorded=True`` makes it safe to retry a call whose outcome is unknown (this
        actor died during it): messages already stored are not recorded twice (see
        ``SessionStore.record_messages``).

        Raises:
            SessionNotFound: no such session.
            InvalidOption: the messages cannot be stored.
            StoreError: the database failed; nothing was recorded.
        """
        # Every session message passes here: no closure, and a try costs nothing.
        try:
            return self.store.record_messages(session_id, messages, skip_recorded=skip_recorded)
        except BeamAgentError:
            raise
        except Exception as exc:
            raise self._refused("record_messages", exc) from exc

    def session_started(self, meta: Mapping[str, Any]) -> None:
        """Upsert a session's metadata when it (re)starts (history and threads are kept).

        Raises:
            InvalidOption: ``meta`` is not a mapping with a valid ``session_id`` and
                ``backend``.
            StoreError: the database failed.
        """
        if not isinstance(meta, Mapping):
            raise InvalidOption(f"session metadata must be a mapping, got {meta!r}")
        try:
            self.store.create_session(
                meta.get("session_id"),  # type: ignore[arg-type]  # the store checks them
                meta.get("backend"),  # type: ignore[arg-type]
                model=meta.get("model"),
                cwd=meta.get("cwd"),
                native_session_id=meta.get("native_session_id"),
            )
        except BeamAgentError:
            raise
        except Exception as exc:
            raise self._refused("create_session", exc) from exc
