"""``RoutingRegistry``: the actor that holds routing state and the live session index.

The decisions themselves are the pure :func:`beamagent.routing.policies.select`;
this actor serialises them (so sticky bindings and round-robin cursors are
consistent under concurrency), keeps health overrides, a bounded journal of
decisions, and which backend each live session runs on.

It is a thin shell: every method is a few lines around ``select`` or a dict.
Callers normally go through ``Runtime`` (``select_backend``, ``set_health``...),
which calls these methods with ``ProxyCall`` asks.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from beamagent.errors import InvalidOption
from beamagent.log import get_logger
from beamagent.routing.policies import (
    BackendInfo,
    Health,
    RouteDecision,
    RouteRequest,
    RoutingState,
    select,
)
from supervisors import Process

__all__ = ["JOURNAL_SIZE", "RoutingRegistry"]

log = get_logger(__name__)

JOURNAL_SIZE = 1000
"""How many decisions the journal keeps by default (the oldest go first)."""


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

    State changes only here, one message at a time, so concurrent callers never
    see a half-written binding or cursor; a sticky binding is written only when
    its decision succeeded (``select`` returns a new state only then).
    """

    def __init__(self, journal_size: int = JOURNAL_SIZE) -> None:
        super().__init__()
        if not isinstance(journal_size, int) or isinstance(journal_size, bool) or journal_size < 1:
            raise InvalidOption(f"journal_size must be an int >= 1; got {journal_size!r}")
        self.state = RoutingState()
        # session id -> (backend, URN of the session process or None)
        self.sessions: dict[str, tuple[str, str | None]] = {}
        self.journal: deque[_Entry] = deque(maxlen=journal_size)
        # Bound once (as the session actor does): a filtered-out call is then ~free.
        self._log = log.bind()

    # --- selection ---------------------------------------------------------------------

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
        policy = ""
        try:
            request = RouteRequest.from_value(request)
            policy = request.policy.value
            if last_backend_from_index and session_id is not None and request.last_backend is None:
                indexed = self.sessions.get(session_id)
                if indexed is not None:
                    request = attrs.evolve(request, last_backend=indexed[0])
            decision, self.state = select(request, self.state, available)
        except Exception as exc:
            self.journal.append((time.time(), session_id, None, exc, policy))
            self._log.info(
                "route_failed", policy=policy, error=type(exc).__name__, message=str(exc)
            )
            raise
        self.journal.append((time.time(), session_id, decision, None, policy))
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

        Raises:
            InvalidRouteRequest: ``backend`` or ``status`` is malformed.
        """
        self.state = self.state.with_health(backend, status)
        self._log.info("backend_health_set", backend=backend, status=status)

    def health_overrides(self) -> dict[str, str]:
        """The current health overrides: backend → status."""
        return {name: h.value for name, h in self.state.health.items()}

    def clear(self) -> None:
        """Forget sticky bindings and round-robin cursors (health overrides stay)."""
        self.state = self.state.cleared()
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
            self.state = self.state.bind(affinity_key, backend)

    def unregister_session(self, session_id: str, urn: str | None = None) -> None:
        """Drop a session from the index, and the sticky binding keyed by its id.

        With ``urn``, only if the index still points at that process. Bindings
        under other keys (a user id, say) stay: other sessions may share them.
        """
        current = self.sessions.get(session_id)
        if current is None or (urn is not None and current[1] != urn):
            return
        del self.sessions[session_id]
        self.state = self.state.unbind(session_id)

    def session_backend(self, session_id: str) -> str | None:
        """The backend of an indexed session, or None."""
        entry = self.sessions.get(session_id)
        return None if entry is None else entry[0]

    def live_sessions(self) -> dict[str, str]:
        """Every indexed session id and its backend."""
        return {sid: entry[0] for sid, entry in self.sessions.items()}
