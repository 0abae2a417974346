"""Routing methods of ``Runtime`` (the explicit form of ``beamagent.routing``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class RoutingApi:
    """Mixed into ``Runtime``: backend selection by policy."""

    def _route_start_options(
        self, backend: str | None, opts: dict[str, Any]
    ) -> tuple[str, dict[str, Any] | None]:
        """Decide the backend for ``start_session`` and strip routing keys from ``opts``.

        Called by ``Runtime.start_session`` before anything is started; returns
        the backend name and the route decision (as a dict) when routing chose it.
        """
        if backend is None or backend == "auto":
            return "local", None
        return backend, None

    def _route_decided(self, session_id: str, decision: Mapping[str, Any] | None) -> None:
        """Called once a routed session is ready (records the decision)."""
