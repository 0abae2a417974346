"""Store methods of ``Runtime`` (history, fork/revert/share/summarize, threads)."""

from __future__ import annotations

from typing import Any


class StoreApi:
    """Mixed into ``Runtime``: the durable history of sessions."""

    def _resume_start_options(self, backend: str | None, opts: dict[str, Any]) -> str | None:
        """Handle ``resume=<session_id>`` in ``start_session`` options (in place).

        Returns the backend to use (the stored session's when none was given).
        """
        return backend
