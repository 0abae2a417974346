"""Every error the ``supervisors`` package raises.

Two families:

* :class:`ReplyError` and its subclasses are *expected* errors: a process that
  raises one while answering an ``ask`` hands it to the caller and keeps
  running. Libraries built on ``supervisors`` (e.g. ``beamagent.errors``)
  derive their own expected errors from it.
* Everything else is a crash: the caller still gets the exception, and then
  the process ends with ``Crashed(exception)`` so its supervisor applies its
  restart policy ("let it crash").
"""

from __future__ import annotations

from typing import Any

import pykka

__all__ = [
    "AlreadyRegistered",
    "ChildNotFound",
    "ChildRunning",
    "DuplicateChild",
    "InvalidChildSpec",
    "MaxChildrenError",
    "NoReply",
    "NoSuchProcess",
    "NotHandled",
    "NotInProcess",
    "ReplyError",
    "StartChildError",
    "SupervisorsError",
    "WaitTimeout",
]


class SupervisorsError(Exception):
    """Base class of every error raised by ``supervisors``."""


class ReplyError(SupervisorsError):
    """An expected error: raised to the ``ask`` caller, the process lives on.

    Subclass it for errors that are part of a process's contract (bad input,
    a missing key, a busy resource). Any exception that is *not* a
    ``ReplyError`` crashes the process after it has been handed to the caller.
    """


class StartChildError(ReplyError):
    """A child's ``start`` failed; already-started siblings were shut down.

    Attributes:
        child_id: the id of the child spec that failed.
        reason: the exception raised by the child's start (also ``__cause__``).
    """

    def __init__(self, child_id: Any, reason: BaseException) -> None:
        self.child_id = child_id
        self.reason = reason
        super().__init__(f"child {child_id!r} failed to start: {reason!r}")


class ChildNotFound(ReplyError):
    """No child with this id (or ref) is known to the supervisor."""

    def __init__(self, child_id: Any) -> None:
        self.child_id = child_id
        super().__init__(f"no child {child_id!r} in this supervisor")


class DuplicateChild(ReplyError):
    """A child spec with this id is already present in the supervisor."""

    def __init__(self, child_id: Any) -> None:
        self.child_id = child_id
        super().__init__(
            f"a child with id {child_id!r} is already present; "
            "use a new id or delete_child() the old one first"
        )


class ChildRunning(ReplyError):
    """The operation needs a stopped child but child ``child_id`` is running."""

    def __init__(self, child_id: Any, operation: str) -> None:
        self.child_id = child_id
        self.operation = operation
        super().__init__(
            f"cannot {operation} child {child_id!r} while it is running; terminate_child() it first"
        )


class MaxChildrenError(ReplyError):
    """A ``DynamicSupervisor`` already runs ``max_children`` children."""

    def __init__(self, max_children: int) -> None:
        self.max_children = max_children
        super().__init__(f"dynamic supervisor is full: max_children={max_children}")


class InvalidChildSpec(ReplyError):
    """A ``ChildSpec`` (or what its ``start`` returned) is not usable."""


class AlreadyRegistered(ReplyError):
    """The name is taken by another live process."""

    def __init__(self, name: Any, urn: str) -> None:
        self.name = name
        self.urn = urn
        super().__init__(f"name {name!r} is already registered to process {urn}")


class NoSuchProcess(ReplyError):
    """The process (named or referenced) is not alive."""

    def __init__(self, target: Any) -> None:
        self.target = target
        super().__init__(f"no live process {target!r}")


class NotInProcess(SupervisorsError):
    """An operation that acts for "the current process" ran outside any process."""


class WaitTimeout(SupervisorsError, TimeoutError):
    """Waiting for an event (a ``Down``, a shutdown) took longer than allowed."""


class NotHandled(pykka.ActorDeadError, SupervisorsError):
    """The process ended before it began to handle the message.

    The message had no effect, so sending it again (to the restarted process,
    say) is safe. A ``pykka.ActorDeadError``, so code that catches that keeps working.
    """


class NoReply(pykka.ActorDeadError, SupervisorsError):
    """The process ended while handling the message or before its deferred reply.

    The message may have had effects: only repeat it if it is safe to repeat.

    Attributes:
        handler_returned: True when the handler had returned and deferred its
            reply (``Process.defer_reply``), i.e. it ran to completion.
    """

    def __init__(self, message: str, *, handler_returned: bool) -> None:
        super().__init__(message)
        self.handler_returned = handler_returned
