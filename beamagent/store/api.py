"""Store methods of ``Runtime``: history, fork/revert/share/summarize, threads, resume.

Every method takes the session as a :class:`~beamagent.session.Session` handle or a
session id ``str``; the session does not have to be live (the store keeps stopped
sessions). Reads go straight to ``runtime._store`` (each reading thread has its own
connection); every mutation runs on the store actor, the single writer, and returns
once it is committed.

Return values are the store's: :class:`~beamagent.store.SessionRecord`,
:class:`~beamagent.store.ThreadRecord`, :class:`~beamagent.store.ThreadDetail` or
plain dicts (share, summary), except ``get_session_messages``, which gives canonical
:class:`~beamagent.messages.Message` objects.

Example::

    with Runtime(store=":memory:") as rt:
        session = rt.start_session(backend="local")
        session.query("hello")
        [m.type for m in rt.get_session_messages(session)]  # user, system, assistant, result
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import pykka

from beamagent.backends.base import FORK_NATIVE_OPTION
from beamagent.errors import BeamAgentError, InvalidOption, SessionNotFound
from beamagent.log import get_logger
from beamagent.messages import Message, normalize
from beamagent.session.actor import SESSION_ID  # a fork must be resumable under its id
from beamagent.session.handle import Session
from beamagent.store.base import (
    SessionRecord,
    SessionStore,
    ShareRecord,
    SummaryRecord,
    ThreadDetail,
    ThreadRecord,
)
from supervisors import reserved, whereis

if TYPE_CHECKING:
    from beamagent.runtime import BackendSpec

__all__ = ["SessionRef", "StoreApi", "message_from_stored", "session_id_of"]

log = get_logger(__name__)

SessionRef = Session | str
"""A session named by its live handle or by its canonical id."""


def session_id_of(session: Any) -> str:
    """The canonical id of ``session`` (a ``Session`` handle or an id string).

    Raises:
        InvalidOption: ``session`` is neither.
    """
    if isinstance(session, Session):
        return session.session_id
    if isinstance(session, str) and session:
        return session
    raise InvalidOption(
        f"a session is a Session handle or a non-empty session id str, got {session!r}"
    )


def message_from_stored(data: Mapping[str, Any]) -> Message:
    """A stored message dict as a :class:`Message`.

    Dicts a session recorded are ``Message.to_dict()`` output and round-trip exactly;
    anything else recorded straight into the store (an unknown ``type``, a field of the
    wrong kind) goes through :func:`~beamagent.messages.normalize`, which never raises and
    keeps the dict as ``raw``.
    """
    try:
        return Message.from_dict(data)
    except (BeamAgentError, TypeError, ValueError):
        return normalize(data)


class StoreApi:
    """Mixed into ``Runtime``: the durable history of sessions (see the module docstring)."""

    if TYPE_CHECKING:
        _store: SessionStore

        def store_write(self, method: str, *args: Any, **kwargs: Any) -> Any: ...

        def backend_spec(self, name: str) -> BackendSpec: ...

        def stop_session(self, session_id: str) -> None: ...

        def _session_ref(
            self, session_id: str, timeout: float | None = ...
        ) -> pykka.ActorRef[Any]: ...

        def _session_name(self, session_id: str) -> tuple[str, ...]: ...

        def live_runs(self) -> list[str]: ...

    # --- helpers --------------------------------------------------------------------------

    def _is_live(self, session_id: str) -> bool:
        """Running, or being restarted by its supervisor (not waited for)."""
        name = self._session_name(session_id)
        return whereis(name) is not None or reserved(name)

    # --- sessions ---------------------------------------------------------------------------

    def list_sessions(
        self,
        *,
        backend: str | None = None,
        cwd: str | None = None,
        model: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[SessionRecord]:
        """Stored sessions matching every given filter, most recently updated first.

        ``since`` keeps sessions with ``updated_at >= since`` (epoch seconds).

        Raises:
            InvalidOption: ``limit`` is not a positive int, or ``since`` not a number.
        """
        return self._store.list_sessions(
            backend=backend, cwd=cwd, model=model, since=since, limit=limit
        )

    def get_session(self, session_id: SessionRef) -> SessionRecord:
        """The stored metadata of a session (live or not).

        Raises:
            SessionNotFound: the store has no such session.
        """
        return self._store.get_session(session_id_of(session_id))

    def get_session_messages(
        self,
        session_id: SessionRef,
        *,
        types: Iterable[str] | str | None = None,
        offset: int = 0,
        limit: int | None = None,
        include_hidden: bool = False,
    ) -> list[Message]:
        """A session's recorded messages in order, the user prompts included.

        Unless ``include_hidden``, the revert view applies first; then ``types`` (a
        string is one type), then ``offset``, then ``limit``. Deep pages are index range
        reads, not scans.

        Raises:
            SessionNotFound: the store has no such session.
            InvalidOption: a bad ``offset``, ``limit`` or ``types``.
        """
        stored = self._store.get_session_messages(
            session_id_of(session_id),
            types=types,
            offset=offset,
            limit=limit,
            include_hidden=include_hidden,
        )
        return [message_from_stored(data) for data in stored]

    def delete_session(self, session_id: SessionRef) -> None:
        """Delete a session's history, messages and threads.

        A session that is live in this runtime is stopped first: otherwise its next
        message would have nowhere to go.

        Raises:
            SessionNotFound: the store has no such session.
        """
        sid = session_id_of(session_id)
        self._store.get_session(sid)  # unknown → SessionNotFound, before stopping anything
        if self._is_live(sid):
            with contextlib.suppress(SessionNotFound):  # it ended meanwhile
                self.stop_session(sid)
        self.store_write("delete_session", sid)
        log.info("session_deleted", session_id=sid)

    def prune(
        self, older_than: float, *, sessions: bool = True, runs: bool = True
    ) -> dict[str, int]:
        """Delete stored history not updated for ``older_than`` seconds; returns the counts.

        Sessions that are live in this runtime and runs that are running here
        are kept, whatever their age. Use it as a retention policy, e.g. once a
        day: ``rt.prune(30 * 86400)`` keeps the last 30 days.

        Raises:
            InvalidOption: ``older_than`` is not a number of seconds >= 0.
        """
        if (
            not isinstance(older_than, int | float)
            or isinstance(older_than, bool)
            or not 0 <= older_than < float("inf")
        ):
            raise InvalidOption(f"older_than must be seconds >= 0; got {older_than!r}")
        cutoff = time.time() - older_than
        deleted = {"sessions": 0, "runs": 0}
        if sessions:
            for record in self._store.list_sessions():
                if record.updated_at < cutoff and not self._is_live(record.session_id):
                    with contextlib.suppress(SessionNotFound):
                        self.store_write("delete_session", record.session_id)
                        deleted["sessions"] += 1
        if runs:
            live = set(self.live_runs())
            for run in self._store.list_runs():
                if run["updated_at"] < cutoff and run["run_id"] not in live:
                    with contextlib.suppress(BeamAgentError):
                        self._store.delete_run(run["run_id"])
                        deleted["runs"] += 1
        log.info("store_pruned", older_than=older_than, **deleted)
        return deleted

    def fork_session(
        self,
        session: SessionRef,
        *,
        session_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
        include_hidden: bool = True,
    ) -> SessionRecord:
        """Copy a session's history under a new id (``session_`` + 32 hex unless given).

        The fork can be started with ``start_session(resume=fork.session_id)`` and
        continues the conversation as it was at the fork: on the parent's backend, by
        forking the parent's native conversation where the backend can (Claude
        ``--fork-session``, Codex ``thread/fork``) and nothing was recorded in the
        parent since, otherwise by replaying the fork's visible history. It has no
        native id of its own until it starts. ``extra.fork`` names the parent.

        Raises:
            SessionNotFound: the source is unknown.
            InvalidOption: ``session_id`` is taken or not a valid session id.
        """
        if session_id is not None and (
            not isinstance(session_id, str) or not SESSION_ID.match(session_id)
        ):
            raise InvalidOption(
                "session_id must be 1-200 characters of letters, digits and '_.:-'; "
                f"got {session_id!r}"
            )
        record: SessionRecord = self.store_write(
            "fork_session",
            session_id_of(session),
            session_id=session_id,
            extra=extra,
            include_hidden=include_hidden,
        )
        return record

    def revert_session(self, session: SessionRef, selector: Any) -> SessionRecord:
        """Hide the messages after a point until :meth:`unrevert_session`.

        ``selector``: ``{"visible_message_count": n}`` (clamped), ``{"message_id": x}``
        or ``{"uuid": x}`` (the matched message stays visible). Messages recorded while
        reverted stay hidden until the unrevert.

        Raises:
            SessionNotFound, InvalidSelector.
        """
        record: SessionRecord = self.store_write("revert_session", session_id_of(session), selector)
        return record

    def unrevert_session(self, session: SessionRef) -> SessionRecord:
        """Remove the revert view: every message is visible again.

        Raises:
            SessionNotFound.
        """
        record: SessionRecord = self.store_write("unrevert_session", session_id_of(session))
        return record

    def share_session(self, session: SessionRef, *, share_id: str | None = None) -> ShareRecord:
        """Share a session: a :class:`ShareRecord` with ``status="active"``.

        A generated ``share_id`` is ``share_`` + 32 hex digits (128 random bits).

        Raises:
            SessionNotFound; InvalidOption if ``share_id`` is used by another session.
        """
        share = self.store_write("share_session", session_id_of(session), share_id=share_id)
        return ShareRecord.from_dict(share)

    def unshare_session(self, session: SessionRef) -> ShareRecord:
        """Revoke the share: ``status="revoked"`` with ``revoked_at``.

        Raises:
            SessionNotFound; NotShared if the session was never shared.
        """
        return ShareRecord.from_dict(self.store_write("unshare_session", session_id_of(session)))

    def summarize_session(
        self, session: SessionRef, *, content: str | None = None
    ) -> SummaryRecord:
        """Store a summary; returns its :class:`SummaryRecord`.

        Without ``content`` the text is the deterministic four-line summary of the
        visible messages (see ``docs/store.md``).

        Raises:
            SessionNotFound.
        """
        summary = self.store_write("summarize_session", session_id_of(session), content=content)
        return SummaryRecord.from_dict(summary)

    # --- threads ------------------------------------------------------------------------------

    def thread_start(
        self,
        session: SessionRef,
        *,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        thread_id: str | None = None,
        parent_thread_id: str | None = None,
    ) -> ThreadRecord:
        """Start a thread; it becomes the active one, so later messages carry its id.

        Raises:
            SessionNotFound; ThreadNotFound (unknown parent); InvalidOption (id taken).
        """
        thread: ThreadRecord = self.store_write(
            "thread_start",
            session_id_of(session),
            name=name,
            metadata=metadata,
            thread_id=thread_id,
            parent_thread_id=parent_thread_id,
        )
        return thread

    def thread_resume(self, session: SessionRef, thread_id: str) -> ThreadRecord:
        """Make a thread the active one again (unarchiving it if needed).

        Raises:
            SessionNotFound, ThreadNotFound.
        """
        thread: ThreadRecord = self.store_write("thread_resume", session_id_of(session), thread_id)
        return thread

    def thread_list(self, session: SessionRef) -> list[ThreadRecord]:
        """Every thread of the session (archived included), most recently updated first.

        Raises:
            SessionNotFound.
        """
        return self._store.thread_list(session_id_of(session))

    def thread_fork(
        self, session: SessionRef, thread_id: str, *, name: str | None = None
    ) -> ThreadRecord:
        """A new active thread holding copies of ``thread_id``'s visible messages.

        Raises:
            SessionNotFound, ThreadNotFound.
        """
        thread: ThreadRecord = self.store_write(
            "thread_fork", session_id_of(session), thread_id, name=name
        )
        return thread

    def thread_read(
        self, session: SessionRef, thread_id: str, *, include_messages: bool = False
    ) -> ThreadDetail:
        """The thread, plus its visible messages (``Message`` objects) if ``include_messages``.

        Raises:
            SessionNotFound, ThreadNotFound.
        """
        detail = self._store.thread_read(
            session_id_of(session), thread_id, include_messages=include_messages
        )
        if detail.messages is None:
            return detail
        messages = tuple(message_from_stored(m) for m in detail.messages)
        return attrs.evolve(detail, messages=messages)

    def thread_archive(self, session: SessionRef, thread_id: str) -> ThreadRecord:
        """Archive a thread; if it was active, the session has no active thread after.

        Raises:
            SessionNotFound, ThreadNotFound.
        """
        thread: ThreadRecord = self.store_write("thread_archive", session_id_of(session), thread_id)
        return thread

    def thread_unarchive(self, session: SessionRef, thread_id: str) -> ThreadRecord:
        """Unarchive a thread (status ``paused``).

        Raises:
            SessionNotFound, ThreadNotFound.
        """
        thread: ThreadRecord = self.store_write(
            "thread_unarchive", session_id_of(session), thread_id
        )
        return thread

    def thread_rollback(self, session: SessionRef, thread_id: str, selector: Any) -> ThreadRecord:
        """Hide a thread's messages after a point, for good; later messages extend it.

        ``selector``: ``{"count": n}``, ``{"visible_message_count": n}``,
        ``{"message_id": x}`` or ``{"uuid": x}``.

        Raises:
            SessionNotFound, ThreadNotFound, InvalidSelector.
        """
        thread: ThreadRecord = self.store_write(
            "thread_rollback", session_id_of(session), thread_id, selector
        )
        return thread

    # --- resume -------------------------------------------------------------------------------

    def _resume_start_options(self, backend: str | None, opts: dict[str, Any]) -> str | None:
        """Handle ``resume=<session_id>`` in ``start_session`` options (in place).

        The resumed session keeps its id, history and active thread (all in the store).
        Without a ``backend`` it runs on the stored one, and then the backend gets the
        stored native session id (``native_session_id``), ``model`` and ``cwd`` so it
        continues the same conversation — each only if the handler accepts that option
        and the caller did not give it. A fork that has no native id yet gets its
        parent's as ``fork_native_session_id`` when the backend accepts that and the
        parent's conversation is still the fork's (see :meth:`_fork_parent_native`).
        A backend that does not resume natively gets the stored history replayed
        (by the session). On another backend only the history carries over (replayed).

        Returns the backend to use (the stored session's when none was given).

        Raises:
            SessionNotFound: nothing is stored under that id.
            InvalidOption: the session is already live, or ``session_id`` names another one.
        """
        resume = opts.pop("resume", None)
        if resume is None:
            return backend
        sid = session_id_of(resume)
        given = opts.get("session_id")
        if given is not None and given != sid:
            raise InvalidOption(
                f"resume={sid!r} and session_id={given!r} disagree: a resumed session keeps "
                "its id (fork_session it first to continue under a new id)"
            )
        if self._is_live(sid):
            raise InvalidOption(
                f"session {sid!r} is already running; use runtime.session({sid!r}) to talk to it"
            )
        record = self._store.get_session(sid)
        opts["session_id"] = sid
        chosen = record.backend if backend is None else backend
        try:
            spec = self.backend_spec(chosen)
        except BeamAgentError:
            return chosen  # start_session reports the unknown backend
        carried: list[str] = []
        if spec.name == record.backend:
            accepted = spec.handler.option_names()
            for option, value in (
                ("native_session_id", record.native_session_id),
                ("model", record.model),
                ("cwd", record.cwd),
            ):
                if value is not None and option in accepted and option not in opts:
                    opts[option] = value
                    carried.append(option)
            if (
                FORK_NATIVE_OPTION in accepted
                and FORK_NATIVE_OPTION not in opts
                and opts.get("native_session_id") is None
            ):
                parent_native = self._fork_parent_native(record, opts)
                if parent_native is not None:
                    opts[FORK_NATIVE_OPTION] = parent_native
                    carried.append(FORK_NATIVE_OPTION)
        log.info(
            "session_resumed",
            session_id=sid,
            backend=spec.name,
            stored_backend=record.backend,
            native_session_id=record.native_session_id,
            message_count=record.message_count,
            carried=carried,
        )
        return chosen

    def _fork_parent_native(self, record: SessionRecord, opts: Mapping[str, Any]) -> str | None:
        """The parent's native id, if the fork ``record`` may fork it natively; else None.

        Only when the backend's conversation is exactly the fork's: the parent is on
        the same backend and has a native id, it recorded nothing since the fork (its
        message count is the fork's), neither hides messages (a revert view: the
        fork then replays its visible view), and the fork runs in the parent's
        ``cwd`` (Claude Code keeps conversations per directory).
        """
        fork = record.extra.get("fork")
        parent_id = fork.get("parent_session_id") if isinstance(fork, Mapping) else None
        if not isinstance(parent_id, str):
            return None
        try:
            parent = self._store.get_session(parent_id)
        except SessionNotFound:
            return None
        why = None
        if parent.backend != record.backend or parent.native_session_id is None:
            why = "the parent has no native conversation on this backend"
        elif parent.message_count != record.message_count:
            why = "the parent went on after the fork"
        elif parent.view is not None or record.view is not None:
            why = "a revert view hides messages"
        elif opts.get("cwd") != parent.cwd:
            why = "the fork runs in another directory"
        if why is not None:
            log.info("fork_replays", session_id=record.session_id, parent=parent_id, why=why)
            return None
        return parent.native_session_id
