"""``RoutingRegistry``: the actor that holds routing state and the live session index.

The decisions themselves are the pure :func:`beamagent.routing.policies.select`;
this actor serialises them (so sticky bindings and round-robin cursors are
consistent under concurrency), keeps health overrides, a bounded journal of
decisions, and which backend each live session runs on.

It is a thin shell: every method is a few lines around ``select`` or a dict.
Callers normally go through ``Runtime`` (``select_backend``, ``set_health``...),
which calls these methods with ``ProxyCall`` asks.

What users set survives a restart of the registry: health overrides and
sticky bindings are written to the store (``routing_state``) and read back
in ``on_start``; the live-session index is rebuilt from the registered
session names. Round-robin cursors and the decision journal start afresh.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from logging import INFO
from typing import Any, Final

import attrs
import pykka

from beamagent.errors import BeamAgentError, InvalidOption, StoreError
from beamagent.log import get_logger
from beamagent.routing.policies import (
    BackendInfo,
    Health,
    Policy,
    RouteDecision,
    RouteRequest,
    RoutingState,
    select,
)
from beamagent.store.base import SessionStore
from supervisors import Process, lookup, registered, reserved, whereis

__all__ = ["JOURNAL_SIZE", "SELECT", "ReadyQueue", "RoutingRegistry"]

log = get_logger(__name__)

JOURNAL_SIZE = 1000
"""How many decisions the journal keeps by default (the oldest go first)."""

SELECT: Final = sys.intern("beamagent.routing.select")
"""Tags the message ``(SELECT, request, available, session_id, last_backend_from_index)``.

A selection asked as this plain tuple runs :meth:`RoutingRegistry.select_backend`
as the ``ProxyCall`` would, for less: every routed start and ``select_backend``
sends one, and building and dispatching a ``ProxyCall`` was a visible share of it.
"""

INDEX_READY: Final = sys.intern("beamagent.routing.index_ready")
"""Tags the message ``(INDEX_READY,)``: index the sessions waiting in the ``ReadyQueue``."""
_INDEX_READY: Final = (INDEX_READY,)


READY_BATCH: Final = 256
"""How many ready sessions the ``ReadyQueue`` holds before it tells the registry."""


class ReadyQueue:
    """Sessions that became ready, waiting for the registry to index them, a batch at a time.

    A session adds itself as it becomes ready, on its own thread. The registry indexes
    what is queued before it handles any message, so every registry call sees the
    sessions that became ready before it was made, and an ``unregister_session`` never
    overtakes the indexing of its session. Only a full batch (``READY_BATCH``) tells
    the registry (``(INDEX_READY,)``), to bound the queue when nobody calls it: a tell
    per session woke a worker per session start, and the wake-up took the GIL from the
    thread starting the next one.

    The queue belongs to the runtime and outlives registry restarts: a new registry
    indexes what is queued (then rebuilds from the session names) and clears the flag,
    so a tell lost with a dead registry's mailbox loses nothing.
    """

    __slots__ = ("_entries", "_registry_name", "_told")

    def __init__(self, registry_name: Hashable) -> None:
        self._registry_name = registry_name
        self._entries: deque[tuple[str, str, str | None]] = deque()
        self._told = False  # a tell is on its way that drains what is queued

    def add(self, session_id: str, backend: str, urn: str | None) -> None:
        """Queue a session for indexing; never waits, never raises (a session's hook)."""
        entries = self._entries
        entries.append((session_id, backend, urn))
        if self._told or len(entries) < READY_BATCH:
            return
        self._told = True
        registry = whereis(self._registry_name)
        try:
            if registry is None:
                raise pykka.ActorDeadError("no registry")  # restarting: it drains on start
            registry.tell(_INDEX_READY)
        except pykka.ActorDeadError:
            self._told = False

    def take(self) -> list[tuple[str, str, str | None]]:
        """Everything queued (the registry's side); a later full batch tells it again."""
        self._told = False  # before draining: an add that still sees True is drained below
        entries = self._entries
        taken = []
        while entries:
            taken.append(entries.popleft())
        return taken

    def __len__(self) -> int:
        return len(self._entries)


# Policy → its value, read once per selection (an enum's .value is a property).
_POLICY_VALUES: Final = {policy: policy.value for policy in Policy}


# A journal entry is kept as a tuple and rendered to a dict only when read:
# (time, session id, decision, failure, request policy).
_Entry = tuple[float, str | None, RouteDecision | None, BaseException | None, str]


def _render(entry: _Entry) -> dict[str, Any]:
    at, session_id, decision, error, policy = entry
    if decision is not None:
        data: dict[str, Any] = {"at": at, "ok": True, **decision.to_dict()}
    else:
        data = {
            "at": at,
            "ok": False,
            "policy": policy,
            "error": type(error).__name__,
            "message": str(error),
        }
    if session_id is not None:
        data["session_id"] = session_id
    return data


class RoutingRegistry(Process):
    """Holds sticky bindings, round-robin cursors, health overrides and the session index.

    Args:
        journal_size: how many decisions :meth:`decisions` can return (>= 1).
        store: where health overrides and sticky bindings are kept, so that
            they survive a restart of this actor (None: memory only).
        session_namespace: the name prefix of the runtime's sessions
            (``name = (*session_namespace, session_id)``); the index is
            rebuilt from those names when the registry (re)starts, and an
            entry whose session is gone for good is dropped.

    State changes only here, one message at a time, so concurrent callers never
    see a half-written binding or cursor; a sticky binding is written only when
    its decision succeeded (``select`` returns a new state only then).
    """

    def __init__(
        self,
        journal_size: int = JOURNAL_SIZE,
        *,
        store: SessionStore | None = None,
        session_namespace: tuple[Hashable, ...] | None = None,
        ready: ReadyQueue | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(journal_size, int) or isinstance(journal_size, bool) or journal_size < 1:
            raise InvalidOption(f"journal_size must be an int >= 1; got {journal_size!r}")
        self.state = RoutingState()
        # session id -> (backend, URN of the session process or None)
        self.sessions: dict[str, tuple[str, str | None]] = {}
        self.journal: deque[_Entry] = deque(maxlen=journal_size)
        self._store = store
        self._namespace = session_namespace
        self._ready = ready
        self._pruned_at = 0  # index size after the last prune: prune again at twice that
        # Bound once (as the session actor does): a filtered-out call is then ~free.
        self._log = log.bind()
        # The level check the log methods make, without the call and its keywords: a
        # selection's events are skipped for one dict lookup when INFO is filtered out.
        self._logs_info = logging.getLogger(__name__).isEnabledFor

    def on_start(self) -> None:
        store = self._store
        if store is not None:
            try:
                health = store.routing_entries("health")
                sticky = store.routing_entries("sticky")
            except BeamAgentError as exc:
                # Routing must work without its memory rather than not at all.
                self._log.error("routing_state_unreadable", error=str(exc))
            else:
                state = self.state
                for backend, status in health.items():
                    try:
                        state = state.with_health(backend, status)
                    except BeamAgentError:
                        self._log.warning("routing_health_skipped", backend=backend)
                for key, backend in sticky.items():
                    state = state.bind(key, backend)
                self.state = state
                if health or sticky:
                    self._log.info("routing_state_restored", health=len(health), sticky=len(sticky))
        # What the last incarnation left queued (its tell died with its mailbox), then
        # the names: they win for a session queued by an earlier incarnation of its own.
        self._index_ready()
        self._rebuild_index()

    # --- durable state -----------------------------------------------------------------

    def _persist(self, kind: str, key: str, value: str | None) -> None:
        store = self._store
        if store is not None:
            store.save_routing_entry(kind, key, value)

    def _persist_affinity(self, before: Mapping[str, str]) -> None:
        """Write the sticky bindings that changed since ``before``; a failure is logged."""
        after = self.state.affinity
        if after is before or self._store is None:
            return
        try:
            for key, backend in after.items():
                if before.get(key) != backend:
                    self._persist("sticky", key, backend)
            for key in before:
                if key not in after:
                    self._persist("sticky", key, None)
        except BeamAgentError as exc:
            self._log.warning("sticky_binding_not_saved", error=str(exc))

    # --- selection ---------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        """Handle a ``(SELECT, ...)`` selection; anything else is unexpected (logged)."""
        if type(message) is tuple and message:
            if message[0] is SELECT:
                _, request, available, session_id, from_index = message
                return self.select_backend(request, available, session_id, from_index)
            if message[0] is INDEX_READY:
                return None  # indexed on the way in (_handle_receive)
        return super().on_receive(message)

    def _handle_receive(self, message: Any) -> Any:
        ready = self._ready
        if ready is not None and ready._entries:
            self._index_ready()  # before any call: it sees every session ready by now
        return super()._handle_receive(message)

    def select_backend(
        self,
        request: RouteRequest | Mapping[str, Any] | None,
        available: Sequence[BackendInfo],
        session_id: str | None = None,
        last_backend_from_index: bool = False,
    ) -> RouteDecision:
        """Choose a backend; state changes (bindings, cursors) only on success.

        Args:
            request: the route request (parsed here if it is a mapping).
            available: the runtime's available backends, in preference order.
            session_id: the session the decision is for, kept in the journal.
            last_backend_from_index: fill the request's missing ``last_backend``
                with ``session_id``'s backend from the session index.

        Raises:
            InvalidRouteRequest, UnknownCapability, BackendNotEligible,
            NoBackendAvailable: as :func:`~beamagent.routing.policies.select`.
        """
        # Every selection runs here, one at a time: keep the path short (no call that
        # only returns, no log call's keyword dict unless the event is logged).
        policy = ""
        try:
            if type(request) is not RouteRequest:  # the caller has parsed it already
                request = RouteRequest.from_value(request)
            policy = _POLICY_VALUES[request.policy]
            if last_backend_from_index and session_id is not None and request.last_backend is None:
                indexed = self.sessions.get(session_id)
                if indexed is not None:
                    request = attrs.evolve(request, last_backend=indexed[0])
            state = self.state
            decision, self.state = select(request, state, available)
            if self._store is not None and self.state.affinity is not state.affinity:
                self._persist_affinity(state.affinity)
        except Exception as exc:
            self.journal.append((time.time(), session_id, None, exc, policy))
            if self._logs_info(INFO):
                self._log.info(
                    "route_failed", policy=policy, error=type(exc).__name__, message=str(exc)
                )
            raise
        self.journal.append((time.time(), session_id, decision, None, policy))
        if self._logs_info(INFO):
            self._log.info(
                "route_selected",
                policy=policy,
                backend=decision.backend,
                reasons=decision.reasons,
                session_id=session_id,
            )
        return decision

    # --- health and memory -------------------------------------------------------------

    def set_health(self, backend: str, status: Health | str | None) -> None:
        """Override a backend's health (``None`` removes the override).

        The override is saved in the store first, so it survives a restart.

        Raises:
            InvalidRouteRequest: ``backend`` or ``status`` is malformed.
            StoreError: it could not be saved (nothing changed).
        """
        state = self.state.with_health(backend, status)
        override = state.health.get(backend)
        try:
            self._persist("health", backend, None if override is None else override.value)
        except StoreError:
            raise
        except BeamAgentError as exc:
            raise StoreError(f"the health override could not be saved: {exc}") from exc
        self.state = state
        self._log.info("backend_health_set", backend=backend, status=status)

    def health_overrides(self) -> dict[str, str]:
        """The current health overrides: backend → status."""
        return {name: h.value for name, h in self.state.health.items()}

    def clear(self) -> None:
        """Forget sticky bindings and round-robin cursors (health overrides stay)."""
        before = self.state.affinity
        self.state = self.state.cleared()
        self._persist_affinity(before)
        self._log.info("routing_cleared")

    def bindings(self) -> dict[str, str]:
        """The sticky bindings: affinity key → backend."""
        return dict(self.state.affinity)

    def decisions(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The journal, newest first, at most ``limit`` entries, as plain dicts.

        A successful entry is the decision's ``to_dict()`` plus ``at`` (epoch
        seconds), ``ok=True`` and ``session_id`` when known; a failed one has
        ``ok=False``, ``policy``, ``error`` (the exception class name) and
        ``message``.
        """
        if limit is None:
            entries = list(self.journal)
        elif limit <= 0:
            return []
        else:
            entries = list(self.journal)[-limit:]
        entries.reverse()
        return [_render(entry) for entry in entries]

    # --- the session index -------------------------------------------------------------

    def register_session(
        self,
        session_id: str,
        backend: str,
        urn: str | None = None,
        affinity_key: str | None = None,
    ) -> None:
        """Index a live session (again, after a restart).

        ``urn`` names the session's process, so that a late
        :meth:`unregister_session` of an earlier incarnation is ignored.
        ``affinity_key`` (re)binds that key to ``backend``: a restarted session
        keeps the sticky binding its first start made.
        """
        self.sessions[session_id] = (backend, urn)
        if affinity_key is not None:
            before = self.state.affinity
            self.state = self.state.bind(affinity_key, backend)
            self._persist_affinity(before)
        if len(self.sessions) > max(2 * self._pruned_at, 64):
            self._prune()

    def unregister_session(self, session_id: str, urn: str | None = None) -> None:
        """Drop a session from the index, and the sticky binding keyed by its id.

        With ``urn``, only if the index still points at that process. Bindings
        under other keys (a user id, say) stay: other sessions may share them.
        """
        current = self.sessions.get(session_id)
        if current is None or (urn is not None and current[1] != urn):
            return
        self._drop(session_id)

    def _drop(self, session_id: str) -> None:
        del self.sessions[session_id]
        before = self.state.affinity
        self.state = self.state.unbind(session_id)
        self._persist_affinity(before)

    def session_backend(self, session_id: str) -> str | None:
        """The backend of an indexed session, or None."""
        entry = self.sessions.get(session_id)
        if entry is not None and self._gone(session_id):
            self._drop(session_id)
            return None
        return None if entry is None else entry[0]

    def live_sessions(self) -> dict[str, str]:
        """Every indexed session id and its backend (sessions that are gone are dropped)."""
        self._prune()
        return {sid: entry[0] for sid, entry in self.sessions.items()}

    # --- the index follows the session names -------------------------------------------

    def _gone(self, session_id: str) -> bool:
        """True when the session is neither running nor being restarted."""
        if self._namespace is None:
            return False
        name = (*self._namespace, session_id)
        return whereis(name) is None and not reserved(name)

    def _prune(self) -> None:
        for session_id in [sid for sid in self.sessions if self._gone(sid)]:
            self._drop(session_id)
        self._pruned_at = len(self.sessions)

    def _index_ready(self) -> None:
        """Index the sessions the ``ReadyQueue`` holds."""
        ready = self._ready
        if ready is None:
            return
        sessions = self.sessions
        for session_id, backend, urn in ready.take():
            sessions[session_id] = (backend, urn)
        if len(sessions) > max(2 * self._pruned_at, 64):
            self._prune()

    def _rebuild_index(self) -> None:
        """Index every session registered under the namespace (after a restart of this actor)."""
        namespace = self._namespace
        if namespace is None:
            return
        size = len(namespace)
        for name, ref in registered().items():
            if not (isinstance(name, tuple) and len(name) == size + 1 and name[:size] == namespace):
                continue
            config = getattr(lookup(ref), "config", None)
            backend = getattr(config, "backend", None)
            if isinstance(backend, str):
                self.sessions[str(name[-1])] = (backend, ref.actor_urn)
        self._pruned_at = len(self.sessions)
        if self.sessions:
            self._log.info("session_index_rebuilt", sessions=len(self.sessions))
