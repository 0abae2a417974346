"""``StoreActor``: the process that makes the runtime's store writes, and the errors they give.

Every mutation a ``Runtime`` method makes (``rt.store_write``: threads, reverts,
shares, forks, deletes...) runs here, one call at a time. Appends do not come
here: each session records its own messages straight into the store object, whose
write lock serialises them with these (see :mod:`beamagent.store.recorder`), and
``rt.store_write`` runs ``DIRECT_WRITES`` on its caller's thread the same way, so
recording costs no actor round trip. Reads need neither: stores give each
reading thread its own connection.

Each call is its own transaction. Group commit (draining the queued writes of
several sessions into one transaction) was measured and left out: with WAL and
``synchronous=NORMAL`` a commit does not fsync, so it saves little (see
``docs/store.md``, "The store in the runtime").

No call can crash it: a restart would only reuse the same store. Errors are
answered to the caller (a :class:`~supervisors.ReplyError`), and the actor lives
on, mapped by :func:`refused` as every direct writer maps them too:

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

__all__ = ["DIRECT_WRITES", "StoreActor", "refused", "run_write"]

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


#: The writes ``Runtime.store_write`` makes on the caller's thread rather than here: the
#: appends, which sessions make themselves too (``StoreRecorder``), serialised by the
#: store's own write lock. One actor round trip costs as much as a whole SQLite append.
DIRECT_WRITES = frozenset({"record_message", "record_messages"})


#: Exceptions a store raises for arguments it cannot take: answered as ``InvalidOption``.
_ARGUMENT_ERRORS = (TypeError, ValueError, ArithmeticError, RecursionError)


def refused(method: str, exc: Exception) -> BeamAgentError:
    """The typed error for ``exc``, which a store's ``method`` raised (see the module docstring).

    For exceptions that are not a :class:`BeamAgentError` (those go on as they are).
    """
    if isinstance(exc, sqlite3.Error):
        log.error("store_write_failed", method=method, error=str(exc))
        return StoreError(f"session store write {method} failed: {exc}")
    if isinstance(exc, _ARGUMENT_ERRORS):
        log.warning("store_call_refused", method=method, error=repr(exc))
        return InvalidOption(f"session store {method} cannot take these arguments: {exc}")
    log.error("store_call_failed", method=method, exc_info=exc)
    return StoreError(f"session store {method} failed: {exc!r}")


class StoreActor(Process):
    """Makes the runtime's store writes; ``write(method, args, kwargs)`` runs one of them."""

    # One actor per runtime that spends its time in SQLite's C code (fsync included):
    # a thread of its own rather than a scheduler worker it would hold for as long.
    dedicated_thread = True

    def __init__(self, store: SessionStore) -> None:
        super().__init__()
        self.store = store

    def on_start(self) -> None:
        """Repair what a killed writer may have left (an open transaction, the lock)."""
        try:
            self.store.recover_writer()
        except StoreError as exc:
            # Writes will report the problem to their callers; crashing here would only
            # restart into the same store.
            log.error("store_recovery_failed", error=str(exc))

    def write(self, method: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        """Run a mutating store method (see ``WRITE_METHODS``) and return its result.

        Raises:
            InvalidOption: ``method`` is not a store write, or the store cannot take the
                arguments.
            StoreError: the database failed.
            BeamAgentError: whatever else the store method raises.
        """
        return run_write(self.store, method, args, kwargs)


def run_write(
    store: SessionStore, method: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> Any:
    """Run the mutating store method ``method`` on this thread, its errors mapped.

    What :meth:`StoreActor.write` runs, and ``Runtime.store_write`` for ``DIRECT_WRITES``.

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
        return getattr(store, method)(*args, **kwargs)
    except BeamAgentError:
        raise
    except Exception as exc:
        raise refused(method, exc) from exc
