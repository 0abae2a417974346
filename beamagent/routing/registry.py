"""``RoutingRegistry``: the actor that holds routing state and the live session index.

The decisions themselves are the pure :func:`beamagent.routing.policies.select`;
this actor serialises them (so sticky bindings and round-robin cursors are
consistent under concurrency), keeps health overrides, a bounded journal of
decisions, and which backend each live session runs on.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from beamagent.routing.policies import (
    BackendInfo,
    Health,
    RouteDecision,
    RouteRequest,
    RoutingState,
    select,
)
from supervisors import Process

__all__ = ["RoutingRegistry"]

log = structlog.get_logger(__name__)

JOURNAL_SIZE = 1000


class RoutingRegistry(Process):
    """Holds sticky bindings, round-robin cursors, health overrides and the session index."""

    def __init__(self, journal_size: int = JOURNAL_SIZE) -> None:
        super().__init__()
        self.state = RoutingState()
        self.sessions: dict[str, str] = {}
        self.journal: deque[dict[str, Any]] = deque(maxlen=journal_size)

    def select_backend(
        self, request: RouteRequest | Mapping[str, Any] | None, available: Sequence[BackendInfo]
    ) -> RouteDecision:
        """Choose a backend; state changes (bindings, cursors) only on success."""
        try:
            decision, self.state = select(request, self.state, available)
        except Exception as exc:
            self.journal.append(
                {"at": time.time(), "ok": False, "error": type(exc).__name__, "message": str(exc)}
            )
            log.info("route_failed", error=type(exc).__name__, message=str(exc))
            raise
        entry = {"at": time.time(), "ok": True, **decision.to_dict()}
        self.journal.append(entry)
        log.info(
            "route_selected",
            policy=str(decision.policy),
            backend=decision.backend,
            reasons=list(decision.reasons),
        )
        return decision

    def set_health(self, backend: str, status: Health | str | None) -> None:
        """Override a backend's health (None removes the override)."""
        self.state = self.state.with_health(backend, None if status is None else Health(status))

    def health_overrides(self) -> dict[str, str]:
        """The current health overrides."""
        return {name: str(h) for name, h in self.state.health.items()}

    def clear(self) -> None:
        """Forget sticky bindings and round-robin cursors (health overrides stay)."""
        self.state = self.state.cleared()

    def decisions(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The newest decisions first, at most ``limit``."""
        entries = list(reversed(self.journal))
        return entries if limit is None else entries[:limit]

    def register_session(self, session_id: str, backend: str) -> None:
        """Index a live session."""
        self.sessions[session_id] = backend

    def unregister_session(self, session_id: str) -> None:
        """Drop a session from the index (and its sticky binding keyed by its id)."""
        self.sessions.pop(session_id, None)

    def session_backend(self, session_id: str) -> str | None:
        """The backend of a live session, or None."""
        return self.sessions.get(session_id)

    def live_sessions(self) -> dict[str, str]:
        """Every indexed session id and its backend."""
        return dict(self.sessions)
