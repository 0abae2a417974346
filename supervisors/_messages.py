"""Messages the runtime delivers to processes: ``Exit`` (links) and ``Down`` (monitors)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from supervisors._reasons import ExitReason

if TYPE_CHECKING:
    from supervisors._process import MonitorRef

__all__ = ["Down", "Exit"]


@attrs.frozen
class Exit:
    """A linked process ended; delivered to ``on_receive`` of processes with ``trap_exit``.

    Attributes:
        from_urn: the URN of the process that ended.
        reason: its exit reason.
    """

    from_urn: str
    reason: ExitReason


@attrs.frozen
class Down:
    """A monitored process ended (or was already dead: reason ``NoProc``).

    Attributes:
        ref: the ``MonitorRef`` returned by ``monitor()``.
        urn: the URN of the monitored process.
        reason: its exit reason.
    """

    ref: MonitorRef
    urn: str
    reason: ExitReason
