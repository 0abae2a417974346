"""Exit reasons: why a process ended, as OTP spells them."""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["Crashed", "ExitReason", "Killed", "NoProc", "Normal", "Shutdown", "is_abnormal"]


@attrs.frozen
class Normal:
    """The process finished its work (``ref.stop()``, or a handler asked to stop).

    Not logged, never restarts a ``transient`` child, ignored by linked
    processes that do not trap exits.
    """

    def __str__(self) -> str:
        return "normal"


@attrs.frozen
class Shutdown:
    """The process was told to shut down, usually by its supervisor.

    ``Shutdown(term)`` carries a detail, like OTP's ``{shutdown, Term}``. Not
    logged and never restarts a ``transient`` child, but it does propagate to
    linked processes.
    """

    term: Any = None

    def __str__(self) -> str:
        return "shutdown" if self.term is None else f"shutdown({self.term!r})"


@attrs.frozen
class Killed:
    """The process was killed without a chance to clean up (``kill()``, ``brutal_kill``)."""

    def __str__(self) -> str:
        return "killed"


@attrs.frozen
class NoProc:
    """The target of a link or monitor was already dead."""

    def __str__(self) -> str:
        return "noproc"


@attrs.frozen(eq=False)
class Crashed:
    """The process raised ``exception`` (in ``on_start``, a handler, or a ``tell``).

    Equality is identity of the exception: two crashes are the same crash only
    if they carry the same exception object.
    """

    exception: BaseException

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Crashed) and other.exception is self.exception

    def __hash__(self) -> int:
        return id(self.exception)

    def __str__(self) -> str:
        return f"crashed({self.exception!r})"


ExitReason = Normal | Shutdown | Killed | NoProc | Crashed
"""Any reason a process can end with."""


def is_abnormal(reason: ExitReason) -> bool:
    """True for reasons that restart a ``transient`` child: not ``Normal``/``Shutdown``."""
    return not isinstance(reason, Normal | Shutdown)
