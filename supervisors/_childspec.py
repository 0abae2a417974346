"""``ChildSpec``: how a supervisor starts, restarts and stops one child."""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import attrs
import pykka

from supervisors.errors import InvalidChildSpec

__all__ = ["BRUTAL_KILL", "INFINITY", "ChildSpec", "ChildType", "RestartType"]

BRUTAL_KILL = "brutal_kill"
"""``shutdown`` value: kill the child at once."""
INFINITY = "infinity"
"""``shutdown`` value: wait for the child to stop, however long it takes."""


class RestartType(enum.StrEnum):
    """When a supervisor restarts a child that ended."""

    PERMANENT = "permanent"
    """Always."""
    TRANSIENT = "transient"
    """Only after an abnormal exit (not ``Normal`` / ``Shutdown``)."""
    TEMPORARY = "temporary"
    """Never; the spec is dropped when the child ends."""


class ChildType(enum.StrEnum):
    """Whether the child is a worker or a supervisor (changes the shutdown default)."""

    WORKER = "worker"
    SUPERVISOR = "supervisor"


def _to_restart(value: Any) -> RestartType:
    if type(value) is RestartType:
        return value
    try:
        return RestartType(value)
    except ValueError:
        raise InvalidChildSpec(
            f"restart must be one of permanent, transient, temporary; got {value!r}"
        ) from None


def _to_type(value: Any) -> ChildType:
    if type(value) is ChildType:
        return value
    try:
        return ChildType(value)
    except ValueError:
        raise InvalidChildSpec(f"type must be 'worker' or 'supervisor'; got {value!r}") from None


def _to_shutdown(value: Any) -> float | str | None:
    if value is None or value in (BRUTAL_KILL, INFINITY):
        return value  # type: ignore[no-any-return]
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    raise InvalidChildSpec(
        f"shutdown must be seconds >= 0, 'brutal_kill' or 'infinity'; got {value!r}"
    )


def _check_budget(_instance: Any, _attribute: Any, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidChildSpec(f"max_restarts must be None or an int >= 0; got {value!r}")


def _check_seconds(_instance: Any, _attribute: Any, value: Any) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < 1e9:
        raise InvalidChildSpec(f"max_seconds must be a number of seconds > 0; got {value!r}")


def _check_start(_instance: Any, _attribute: Any, value: Any) -> None:
    if isinstance(value, tuple):
        if not 1 <= len(value) <= 3 or not isinstance(value[0], type):
            raise InvalidChildSpec(
                f"start tuple must be (ProcessClass, args, kwargs); got {value!r}"
            )
        if len(value) > 1 and not isinstance(value[1], Sequence):
            raise InvalidChildSpec(f"start tuple args must be a sequence; got {value[1]!r}")
        if len(value) > 2 and not isinstance(value[2], Mapping):
            raise InvalidChildSpec(f"start tuple kwargs must be a mapping; got {value[2]!r}")
    elif not callable(value):
        raise InvalidChildSpec(f"start must be a callable or a tuple; got {value!r}")


StartSpec = Callable[..., "pykka.ActorRef[Any]"] | tuple[Any, ...]
"""A callable returning an ``ActorRef`` of a ``Process``, or ``(ProcessClass, args, kwargs)``."""


@attrs.frozen
class ChildSpec:
    """How to start, restart and stop one child.

    Args:
        id: unique within its supervisor.
        start: a callable returning the ``ActorRef`` of a started ``Process``,
            or a ``(ProcessClass, args, kwargs)`` tuple.
        restart: ``"permanent"`` (default), ``"transient"`` or ``"temporary"``.
        shutdown: seconds to wait for a graceful stop before killing,
            ``"brutal_kill"`` or ``"infinity"``; default 5.0 for workers and
            ``"infinity"`` for supervisors.
        type: ``"worker"`` (default) or ``"supervisor"``.
        name: a name the supervisor registers the child under, at every
            (re)start, before the child's ``on_start`` runs. While the child
            restarts the name stays reserved (``await_name`` waits for it).
        max_restarts, max_seconds: this child's own restart budget. When it
            would restart more than ``max_restarts`` times within
            ``max_seconds``, the supervisor *gives it up* (it stays stopped,
            a dynamic supervisor drops it) instead of restarting it, and its
            siblings and the supervisor are not affected. ``None`` (the
            default): only the supervisor's intensity applies, as in OTP.

    Example::

        ChildSpec("cache", (Cache, (), {"size": 100}), restart="transient")
    """

    id: Hashable
    start: StartSpec = attrs.field(validator=_check_start)
    restart: RestartType = attrs.field(default=RestartType.PERMANENT, converter=_to_restart)
    shutdown: float | str | None = attrs.field(default=None, converter=_to_shutdown)
    type: ChildType = attrs.field(default=ChildType.WORKER, converter=_to_type)
    name: Hashable | None = None
    max_restarts: int | None = attrs.field(default=None, validator=_check_budget)
    max_seconds: float = attrs.field(default=5.0, validator=_check_seconds)

    def __attrs_post_init__(self) -> None:
        if self.shutdown is None:
            default = INFINITY if self.type is ChildType.SUPERVISOR else 5.0
            object.__setattr__(self, "shutdown", default)

    @property
    def shutdown_timeout(self) -> float | str:
        """The effective shutdown value (never None after construction)."""
        assert self.shutdown is not None
        return self.shutdown

    def start_process(self, extra_arguments: Sequence[Any] = ()) -> pykka.ActorRef[Any]:
        """Start the child, prepending ``extra_arguments`` to its start arguments.

        Raises:
            InvalidChildSpec: ``start`` did not return the ref of a ``Process``.
            Exception: whatever the child's start raised.
        """
        from supervisors._process import Process  # circular: _process does not need us

        if isinstance(self.start, tuple):
            cls = self.start[0]
            args = tuple(self.start[1]) if len(self.start) > 1 else ()
            kwargs = dict(self.start[2]) if len(self.start) > 2 else {}
            ref = cls.start(*extra_arguments, *args, **kwargs)
        else:
            ref = self.start(*extra_arguments)
        if not isinstance(ref, pykka.ActorRef):
            raise InvalidChildSpec(f"child {self.id!r}: start returned {ref!r}, not an ActorRef")
        if Process not in ref.actor_class.__mro__:  # issubclass, without abc's cache walk
            ref.stop(block=False)
            raise InvalidChildSpec(
                f"child {self.id!r}: {ref.actor_class.__name__} is not a supervisors.Process; "
                "supervised actors must subclass Process"
            )
        return ref
