"""Faults to inject in tests: into a session, its backend, its transport, or a store.

:func:`crash` ends a session's process as a crash would (its supervisor restarts it),
:func:`kill_backend` kills a CLI backend's process group, :func:`cut` cuts a session off
from its backend (the session sees its transport disconnect)::

    from beamagent.testing import assert_restarted, crash

    before = crash(session)  # the incarnation that crashed
    assert_restarted(session, after=before, within=5)

:func:`disk_full` makes a :class:`~beamagent.store.SqliteStore` fail its writes the way a
full disk does, with SQLite's own ``SQLITE_FULL``, and undoes it on exit::

    from beamagent.testing import disk_full

    with disk_full(rt):  # a Runtime on a SQLite store, or the SqliteStore itself
        with pytest.raises(StoreError, match="disk is full"):
            rt.share_session(session)
    rt.share_session(session)  # works again
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from beamagent.backends.base import Disconnected
from beamagent.backends.process_group import signal_group
from beamagent.errors import InvalidOption, SessionError, SessionNotFound
from beamagent.lifecycle import live_runtimes
from beamagent.session import Session
from beamagent.session.actor import SessionActor, _TransportEvent
from beamagent.store.sqlite import SqliteStore
from supervisors import Crashed, lookup, send_exit

if TYPE_CHECKING:
    from beamagent.runtime import Runtime

__all__ = ["InjectedCrash", "crash", "cut", "disk_full", "kill_backend", "resolve_session"]


class InjectedCrash(Exception):
    """The exception a session "raised" when :func:`crash` crashed it."""


def resolve_session(session_or_name: Session | str, runtime: Runtime | None = None) -> Session:
    """The handle of a session given as a handle or as its id.

    An id is looked up in ``runtime``, else in every live runtime, newest first.

    Raises:
        SessionNotFound: no live runtime runs a session with this id.
    """
    if isinstance(session_or_name, Session):
        return session_or_name
    runtimes = [runtime] if runtime is not None else list(reversed(live_runtimes()))
    for rt in runtimes:
        try:
            return rt.session(session_or_name)
        except SessionNotFound:
            continue
    raise SessionNotFound(session_or_name)


def _incarnation(session: Session) -> int:
    return int(session.session_info()["incarnation"])


def crash(session_or_name: Session | str, *, runtime: Runtime | None = None) -> int:
    """Crash the session's process (reason ``Crashed(InjectedCrash)``); returns its incarnation.

    Its supervisor restarts it, as after any crash: the handle keeps working, and a
    call made meanwhile reaches the next incarnation. Pair with
    :func:`~beamagent.testing.assert_restarted` (``after=`` the returned incarnation).
    """
    session = resolve_session(session_or_name, runtime)
    incarnation = _incarnation(session)
    ref = session.runtime._session_ref(session.session_id)
    send_exit(ref, Crashed(InjectedCrash(f"crash() injected into session {session.session_id}")))
    return incarnation


def kill_backend(session_or_name: Session | str, *, runtime: Runtime | None = None) -> int:
    """SIGKILL the backend's process group (a CLI backend); returns the session's incarnation.

    The session sees its backend exit (status -9) and fails; a session that was ready
    is restarted by its supervisor with a new backend process.

    Raises:
        InvalidOption: the backend runs in this process or behind HTTP (``local``,
            ``openai``): there is no process of its own to kill; use :func:`cut` (the
            connection drops) or :func:`crash` (the session crashes) instead.
    """
    session = resolve_session(session_or_name, runtime)
    info = session.session_info()
    pid = info.get("pid")
    if not isinstance(pid, int):
        raise InvalidOption(
            f"kill_backend: session {session.session_id} runs backend {info.get('backend')!r} "
            f"without a process of its own (transport {info.get('transport')!r}); "
            "use cut(session) to drop its connection or crash(session) to crash it"
        )
    # A CLI runs in a process group of its own (its pid is the group's id); kill the
    # process alone if it leads none.
    if not signal_group(pid, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return int(info["incarnation"])


def cut(session_or_name: Session | str, *, runtime: Runtime | None = None) -> int:
    """Cut the session off from its backend; returns the session's incarnation.

    The session gets its transport's ``Disconnected`` event, as when a socket or pipe
    drops, on its own thread: it fails with ``TransportError(reason=("disconnected",
    ...))``, closes the transport (ending a CLI's process group) and, once it had been
    ready, is restarted by its supervisor. Works for every backend.
    """
    session = resolve_session(session_or_name, runtime)
    incarnation = _incarnation(session)
    ref = session.runtime._session_ref(session.session_id)
    actor = lookup(ref)  # the event must carry the live transport's generation
    if not isinstance(actor, SessionActor):
        raise SessionError(f"session {session.session_id} ended before cut()", reason="ended")
    ref.tell(_TransportEvent(actor._generation, Disconnected("cut() by beamagent.testing")))
    return incarnation


_BALLAST = "beamagent_disk_full_ballast"
_EVENTS = ("INSERT", "UPDATE", "DELETE")


@contextmanager
def disk_full(store: Any) -> Iterator[None]:
    """Every write to ``store`` fails as on a full disk until the block ends; reads work.

    ``store`` is a :class:`~beamagent.store.SqliteStore` or a ``Runtime`` using one.

    A write raises :class:`~beamagent.errors.StoreError` ("... database or disk is full",
    caused by an ``sqlite3.OperationalError`` whose ``sqlite_errorname`` is
    ``SQLITE_FULL``) and leaves nothing behind, like a real full disk in WAL mode.

    How: ``PRAGMA max_page_count`` on the store's write connection caps the file at its
    current page count, so no write can grow it. A cap alone lets a write through while it
    fits in free space (most small messages fit in the last page), so the helper also adds
    temporary triggers (in the connection's ``temp`` schema, never in the file) that make
    every write to the store's tables first add a two-page blob to a temporary table whose
    database is capped the same way: every write fails at its first statement. On exit the
    triggers go and both caps are restored to what they were.

    The fault lives on the write connection: a store whose writer is replaced inside the
    block (``recover_writer`` after a failed rollback) writes again. A store closed inside
    the block is left closed.

    Raises:
        InvalidOption: ``store`` is not a :class:`~beamagent.store.SqliteStore`.
        StoreError: the store is closed.
    """
    store = getattr(store, "_store", store)  # a Runtime's store
    if not isinstance(store, SqliteStore):
        raise InvalidOption(f"disk_full needs a SqliteStore (a file to fill), got {store!r}")
    with store._idle_writer() as conn:
        main_cap = conn.execute("PRAGMA main.max_page_count").fetchone()[0]
        page_size = conn.execute("PRAGMA main.page_size").fetchone()[0]
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM main.sqlite_master "
                "WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        conn.execute(f"CREATE TEMP TABLE {_BALLAST} (blob BLOB)")
        for table in tables:
            for event in _EVENTS:
                conn.execute(
                    f'CREATE TEMP TRIGGER "{_BALLAST}_{table}_{event}" BEFORE {event} '
                    f'ON main."{table}" BEGIN INSERT INTO {_BALLAST} '
                    f"VALUES (zeroblob({2 * page_size})); END"
                )
        temp_cap = conn.execute("PRAGMA temp.max_page_count").fetchone()[0]
        temp_pages = conn.execute("PRAGMA temp.page_count").fetchone()[0]
        conn.execute(f"PRAGMA temp.max_page_count = {temp_pages}")
        pages = conn.execute("PRAGMA main.page_count").fetchone()[0]
        conn.execute(f"PRAGMA main.max_page_count = {pages}")
    try:
        yield
    finally:
        if not store._closed:
            with store._idle_writer() as conn:
                conn.execute(f"PRAGMA temp.max_page_count = {temp_cap}")
                for table in tables:
                    for event in _EVENTS:
                        conn.execute(f'DROP TRIGGER IF EXISTS temp."{_BALLAST}_{table}_{event}"')
                conn.execute(f"DROP TABLE IF EXISTS temp.{_BALLAST}")
                conn.execute(f"PRAGMA main.max_page_count = {main_cap}")
