"""Supervisors: restart children by strategy, within a restart intensity, and escalate."""

from __future__ import annotations

import enum
import itertools
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, TypeAlias, cast

import attrs
import pykka
from pykka.messages import ProxyCall

from supervisors import _names
from supervisors._childspec import ChildSpec, ChildType, RestartType, StartSpec
from supervisors._log import get_logger
from supervisors._messages import Exit
from supervisors._process import (
    MonitorRef,
    Process,
    _SpawnOptions,
    _swap_spawn_options,
    ask_ref,
    kill,
    link,
    lookup,
    monitor,
    shutdown,
    unlink,
)
from supervisors._reasons import ExitReason, Shutdown, is_abnormal
from supervisors.errors import (
    ChildNotFound,
    ChildRunning,
    DuplicateChild,
    InvalidChildSpec,
    MaxChildrenError,
    StartChildError,
    WaitTimeout,
)

__all__ = [
    "ChildInfo",
    "DynamicSupervisor",
    "DynamicSupervisorRef",
    "Strategy",
    "Supervisor",
    "SupervisorRef",
]

log = get_logger(__name__)

GiveUpHook: TypeAlias = Callable[[Hashable, ChildSpec, ExitReason], object]
"""Called (in the supervisor's thread) with ``(child_id, spec, last_exit_reason)`` when a
child exceeded its own restart budget and was given up. Must not block."""


class Strategy(enum.StrEnum):
    """What a ``Supervisor`` restarts when one child ends abnormally."""

    ONE_FOR_ONE = "one_for_one"
    """Only that child."""
    ONE_FOR_ALL = "one_for_all"
    """Every child: the others are stopped (reverse order), then all restart in order."""
    REST_FOR_ONE = "rest_for_one"
    """That child and every child started after it."""


@attrs.frozen
class ChildInfo:
    """One row of ``which_children()``.

    Attributes:
        id: the spec id (for dynamic children: a serial number given at ``start_child``).
        ref: the running child, or None when it is not running.
        type: worker or supervisor.
        restart: the restart type.
        restarts: how many times this supervisor restarted it automatically (after its
            own exit or, under one_for_all / rest_for_one, a sibling's).
    """

    id: Hashable
    ref: pykka.ActorRef[Any] | None
    type: ChildType
    restart: RestartType
    restarts: int


class _Child:
    __slots__ = ("id", "recent", "ref", "restarts", "spec")

    def __init__(self, spec: ChildSpec, child_id: Hashable) -> None:
        self.spec = spec
        self.id = child_id
        self.ref: pykka.ActorRef[Any] | None = None
        self.restarts = 0
        self.recent: deque[float] | None = None  # restart times, for the child's own budget

    def budget_allows_restart(self) -> bool:
        """Count a restart against the child's own budget; False when it is spent."""
        limit = self.spec.max_restarts
        if limit is None:
            return True
        now = time.monotonic()
        recent = self.recent
        if recent is None:
            recent = self.recent = deque()
        recent.append(now)
        while recent and recent[0] < now - self.spec.max_seconds:
            recent.popleft()
        return len(recent) <= limit

    def info(self) -> ChildInfo:
        return ChildInfo(self.id, self.ref, self.spec.type, self.spec.restart, self.restarts)


@attrs.frozen
class _RetryRestart:
    child_id: Hashable


def _as_spec(value: ChildSpec | StartSpec, default_id: Hashable = None) -> ChildSpec:
    if isinstance(value, ChildSpec):
        return value
    try:
        return ChildSpec(default_id, value)
    except InvalidChildSpec:
        raise
    except Exception as exc:  # attrs validation of a wrong type
        raise InvalidChildSpec(f"not a ChildSpec or start value: {value!r}") from exc


class _SupervisorCore(Process):
    """What both supervisor kinds share: intensity, child start/stop, exits, escalation."""

    trap_exit = True

    def __init__(
        self,
        *,
        max_restarts: int | None = 3,
        max_seconds: float = 5.0,
        on_give_up: GiveUpHook | None = None,
    ) -> None:
        super().__init__()
        if max_restarts is not None and (
            not isinstance(max_restarts, int) or isinstance(max_restarts, bool) or max_restarts < 0
        ):
            raise InvalidChildSpec(
                f"max_restarts must be None or an int >= 0; got {max_restarts!r}"
            )
        if not isinstance(max_seconds, int | float) or max_seconds <= 0:
            raise InvalidChildSpec(f"max_seconds must be > 0; got {max_seconds!r}")
        if on_give_up is not None and not callable(on_give_up):
            raise InvalidChildSpec(f"on_give_up must be callable; got {on_give_up!r}")
        self.max_restarts = max_restarts
        self.max_seconds = float(max_seconds)
        self._on_give_up = on_give_up
        self._restart_times: deque[float] = deque()
        self._children: dict[Hashable, _Child] = {}
        self._by_urn: dict[str, _Child] = {}
        self._log = log.bind(supervisor=str(self))

    # --- hooks ----------------------------------------------------------------------

    def on_stop(self) -> None:
        self._terminate_all()

    def on_failure(self, *_exc_info: Any) -> None:
        self._terminate_all()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Exit):
            self._on_exit(message)
            return None
        if isinstance(message, _RetryRestart):
            child = self._children.get(message.child_id)
            if child is not None and child.ref is None:
                self._restart(child)
            return None
        return super().on_receive(message)

    # --- starting and stopping children ----------------------------------------------

    def _launch(self, child: _Child, extra_arguments: Sequence[Any] = ()) -> pykka.ActorRef[Any]:
        spec = child.spec
        keeper = self.actor_urn if spec.name is not None else None
        try:
            # spawn_options, inline: every child start comes through here.
            options = _SpawnOptions(link_to=self.actor_ref, name=spec.name, keeper=keeper)
            previous = _swap_spawn_options(options)
            try:
                ref = spec.start_process(extra_arguments)
            finally:
                _swap_spawn_options(previous)
            if not options.consumed:
                # start returned a process we did not spawn: link (and name) it now.
                link(self.actor_ref, ref)
                if spec.name is not None:
                    _names.register(spec.name, ref, keeper=keeper)
        except Exception as exc:
            raise StartChildError(child.id, exc) from exc
        child.ref = ref
        self._by_urn[ref.actor_urn] = child
        self._log.debug("child_started", child_id=child.id, urn=ref.actor_urn)
        return ref

    def _detach(self, child: _Child, keep_name: bool = False) -> pykka.ActorRef[Any] | None:
        """Unlink a child about to be stopped; its name is freed at its end unless ``keep_name``."""
        ref = child.ref
        if ref is None:
            return None
        child.ref = None
        self._by_urn.pop(ref.actor_urn, None)
        unlink(self.actor_ref, ref)
        if not keep_name:
            _names.disown(ref)
        return ref

    def _release_name(self, child: _Child) -> None:
        """The child will not come back (for now): free its reserved name."""
        if child.spec.name is not None:
            _names.unreserve(child.spec.name, self.actor_urn)

    def _stop_child(self, child: _Child, keep_name: bool = False) -> None:
        ref = self._detach(child, keep_name)
        if ref is not None:
            reason = shutdown(ref, child.spec.shutdown_timeout)
            self._log.debug("child_terminated", child_id=child.id, reason=str(reason))

    def _stop_children_together(self, children: Iterable[_Child], batch: int = 64) -> None:
        """Ask children to stop a batch at a time, waiting for each (killing laggards).

        Batches keep slow ``on_stop`` hooks overlapping without waking thousands
        of threads at once, which would only fight over the GIL.
        """
        pending = list(children)
        for start in range(0, len(pending), batch):
            waits: list[tuple[_Child, Process, MonitorRef]] = []
            for child in pending[start : start + batch]:
                ref = self._detach(child)
                process = lookup(ref) if ref is not None else None
                if process is None:
                    continue
                mon = monitor(process, watcher=None)
                if child.spec.shutdown_timeout == "brutal_kill":
                    kill(process)
                else:
                    process._request_shutdown(Shutdown())
                waits.append((child, process, mon))
            for child, process, mon in waits:
                timeout = child.spec.shutdown_timeout
                try:
                    mon.wait(None if timeout in ("infinity", "brutal_kill") else float(timeout))
                except WaitTimeout:
                    kill(process)
                    mon.wait()

    def _terminate_all(self) -> None:
        raise NotImplementedError

    # --- exits and restarts ------------------------------------------------------------

    def _on_exit(self, message: Exit) -> None:
        child = self._by_urn.pop(message.from_urn, None)
        if child is None or child.ref is None or child.ref.actor_urn != message.from_urn:
            if message.from_urn == self.parent_urn:
                self._log.debug("supervisor_parent_exited", reason=str(message.reason))
                self.stop_with(message.reason)
            return
        child.ref = None
        restart = child.spec.restart
        abnormal = is_abnormal(message.reason)
        if restart is RestartType.TEMPORARY or (restart is RestartType.TRANSIENT and not abnormal):
            self._log.debug("child_exited", child_id=child.id, reason=str(message.reason))
            self._release_name(child)
            self._forget_stopped(child)
            return
        self._log.warning("child_exited", child_id=child.id, reason=str(message.reason))
        if not child.budget_allows_restart():
            self._give_up(child, message.reason)
            return
        self._restart(child)

    def _give_up(self, child: _Child, reason: ExitReason) -> None:
        """A child spent its own restart budget: leave it stopped, tell the hook."""
        self._log.error(
            "child_given_up",
            child_id=child.id,
            max_restarts=child.spec.max_restarts,
            max_seconds=child.spec.max_seconds,
            reason=str(reason),
        )
        # The hook first: whoever sees the name freed (await_name) finds its record.
        hook = self._on_give_up
        if hook is not None:
            try:
                hook(child.id, child.spec, reason)
            except Exception:
                self._log.exception("give_up_hook_failed", child_id=child.id)
        self._release_name(child)
        self._drop_given_up(child)

    def _drop_given_up(self, child: _Child) -> None:
        """Keep a given-up child's spec (stopped) or drop it; dynamic supervisors drop it."""
        child.recent = None

    def _forget_stopped(self, child: _Child) -> None:
        """A child that ended and will not be restarted: keep or drop its spec."""
        if child.spec.restart is RestartType.TEMPORARY:
            self._children.pop(child.id, None)

    def _intensity_allows_restart(self) -> bool:
        if self.max_restarts is None:
            return True
        now = time.monotonic()
        times = self._restart_times
        times.append(now)
        while times and times[0] < now - self.max_seconds:
            times.popleft()
        return len(times) <= self.max_restarts

    def _restart(self, child: _Child) -> None:
        if not self._intensity_allows_restart():
            self._log.error(
                "supervisor_intensity_exceeded",
                child_id=child.id,
                max_restarts=self.max_restarts,
                max_seconds=self.max_seconds,
            )
            self.stop_with(Shutdown())
            return
        for member in self._restart_group(child):
            if member.ref is not None:
                continue
            try:
                self._launch(member, self._extra_arguments())
            except StartChildError as exc:
                self._log.error("child_restart_failed", child_id=member.id, error=repr(exc.reason))
                self.actor_ref.tell(_RetryRestart(member.id))
                return
            member.restarts += 1
            self._log.info("child_restarted", child_id=member.id, restarts=member.restarts)

    def _restart_group(self, child: _Child) -> list[_Child]:
        return [child]

    def _extra_arguments(self) -> Sequence[Any]:
        return ()

    # --- shared API -----------------------------------------------------------------------

    def _api_which_children(self) -> list[ChildInfo]:
        return [child.info() for child in self._children.values()]

    def _api_count_children(self) -> dict[str, int]:
        children = list(self._children.values())
        supervisors = sum(1 for c in children if c.spec.type is ChildType.SUPERVISOR)
        return {
            "specs": len(children),
            "active": sum(1 for c in children if c.ref is not None and c.ref.is_alive()),
            "supervisors": supervisors,
            "workers": len(children) - supervisors,
        }


class SupervisorRef(pykka.ActorRef[Any]):
    """The ref of a ``Supervisor``: an ``ActorRef`` with the supervisor API as methods.

    Every method is a blocking call into the supervisor (``timeout`` None
    waits as long as the supervisor needs, like OTP's ``infinity``).
    """

    def _call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        # Caller-runs: from a plain thread, an idle supervisor handles the call there.
        return ask_ref(self, ProxyCall(attr_path=(method,), args=args, kwargs={}), timeout)

    def which_children(self, *, timeout: float | None = None) -> list[ChildInfo]:
        """Every child spec in start order, with its running ref (or None)."""
        return cast(list[ChildInfo], self._call("_api_which_children", timeout=timeout))

    def count_children(self, *, timeout: float | None = None) -> dict[str, int]:
        """``{"specs", "active", "supervisors", "workers"}`` counts."""
        return cast(dict[str, int], self._call("_api_count_children", timeout=timeout))

    def start_child(self, spec: ChildSpec, *, timeout: float | None = None) -> pykka.ActorRef[Any]:
        """Add and start a child at the end of the start order.

        Raises:
            DuplicateChild: a child with this id is present.
            StartChildError: its start failed (the spec is not added).
        """
        return cast(pykka.ActorRef[Any], self._call("_api_start_child", spec, timeout=timeout))

    def terminate_child(self, child_id: Hashable, *, timeout: float | None = None) -> None:
        """Stop a child per its ``shutdown``; keeps its spec (temporary: dropped).

        Raises:
            ChildNotFound: no child has this id.
        """
        self._call("_api_terminate_child", child_id, timeout=timeout)

    def restart_child(
        self, child_id: Hashable, *, timeout: float | None = None
    ) -> pykka.ActorRef[Any]:
        """Start again a child that was terminated.

        Raises:
            ChildNotFound, ChildRunning, StartChildError.
        """
        return cast(
            pykka.ActorRef[Any], self._call("_api_restart_child", child_id, timeout=timeout)
        )

    def delete_child(self, child_id: Hashable, *, timeout: float | None = None) -> None:
        """Remove the spec of a stopped child.

        Raises:
            ChildNotFound, ChildRunning.
        """
        self._call("_api_delete_child", child_id, timeout=timeout)


class Supervisor(_SupervisorCore):
    """A supervisor of a fixed, ordered list of children (OTP ``supervisor``).

    Children start in list order, each before the next; if one fails to
    start, those already started are stopped in reverse order and ``start``
    raises ``StartChildError``. On stop, children stop in reverse start order,
    each per its ``shutdown``. More than ``max_restarts`` restarts within
    ``max_seconds`` (counted across all children) stop every child and then
    the supervisor with reason ``Shutdown``, which its own supervisor sees as
    a child exit (escalation); ``max_restarts=None`` sets no such limit. A
    child with a budget of its own (``ChildSpec.max_restarts``) that spends
    it is *given up* instead: it stays stopped (``restart_child`` brings it
    back) and ``on_give_up(child_id, spec, reason)`` is called.

    Example::

        sup = Supervisor.start(
            children=[ChildSpec("db", (Db, (), {})), ChildSpec("api", (Api, (), {}))],
            strategy="rest_for_one",
        )
        sup.which_children()
        sup.stop()
    """

    ref_class = SupervisorRef

    def __init__(
        self,
        children: Iterable[ChildSpec] = (),
        strategy: Strategy | str = Strategy.ONE_FOR_ONE,
        max_restarts: int | None = 3,
        max_seconds: float = 5.0,
        on_give_up: GiveUpHook | None = None,
    ) -> None:
        super().__init__(max_restarts=max_restarts, max_seconds=max_seconds, on_give_up=on_give_up)
        try:
            self.strategy = Strategy(strategy)
        except ValueError:
            raise InvalidChildSpec(
                f"strategy must be one_for_one, one_for_all or rest_for_one; got {strategy!r}"
            ) from None
        self._initial = [_as_spec(spec) for spec in children]
        seen: set[Hashable] = set()
        for spec in self._initial:
            if spec.id in seen:
                raise DuplicateChild(spec.id)
            seen.add(spec.id)

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> SupervisorRef:
        """Start the supervisor and all its children; see the class docstring.

        Raises:
            StartChildError: a child failed to start.
            InvalidChildSpec, DuplicateChild: the configuration is wrong.
        """
        return cast(SupervisorRef, super().start(*args, **kwargs))

    def on_start(self) -> None:
        for spec in self._initial:
            child = _Child(spec, spec.id)
            try:
                self._launch(child)
            except StartChildError:
                self._terminate_all()
                raise
            self._children[spec.id] = child
        self._initial = []

    def _terminate_all(self) -> None:
        for child in reversed(list(self._children.values())):
            self._stop_child(child)
            self._forget_stopped(child)

    def _restart_group(self, child: _Child) -> list[_Child]:
        order = list(self._children.values())
        if self.strategy is Strategy.ONE_FOR_ONE:
            return [child]
        index = order.index(child)
        group = order if self.strategy is Strategy.ONE_FOR_ALL else order[index:]
        for other in reversed(group):
            if other is not child and other.ref is not None:
                self._stop_child(other, keep_name=other.spec.restart is not RestartType.TEMPORARY)
        # Temporary children stopped because of a sibling are never restarted.
        for other in group:
            if other is not child and other.spec.restart is RestartType.TEMPORARY:
                self._children.pop(other.id, None)
        return [c for c in group if c.id in self._children]

    def _find(self, child_id: Hashable) -> _Child:
        child = self._children.get(child_id)
        if child is None:
            raise ChildNotFound(child_id)
        return child

    def _api_start_child(self, spec: ChildSpec) -> pykka.ActorRef[Any]:
        spec = _as_spec(spec)
        if spec.id in self._children:
            raise DuplicateChild(spec.id)
        child = _Child(spec, spec.id)
        ref = self._launch(child)
        self._children[spec.id] = child
        return ref

    def _api_terminate_child(self, child_id: Hashable) -> None:
        child = self._find(child_id)
        self._stop_child(child)
        self._forget_stopped(child)

    def _api_restart_child(self, child_id: Hashable) -> pykka.ActorRef[Any]:
        child = self._find(child_id)
        if child.ref is not None:
            raise ChildRunning(child_id, "restart")
        return self._launch(child)

    def _api_delete_child(self, child_id: Hashable) -> None:
        child = self._find(child_id)
        if child.ref is not None:
            raise ChildRunning(child_id, "delete")
        del self._children[child_id]


class DynamicSupervisorRef(pykka.ActorRef[Any]):
    """The ref of a ``DynamicSupervisor``, with its API as blocking methods."""

    def _call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        # Caller-runs: from a plain thread, an idle supervisor handles the call there.
        return ask_ref(self, ProxyCall(attr_path=(method,), args=args, kwargs={}), timeout)

    def start_child(
        self, spec: ChildSpec | StartSpec, *, timeout: float | None = None
    ) -> pykka.ActorRef[Any]:
        """Start a child from a spec, a start callable, or a ``(cls, args, kwargs)`` tuple.

        The supervisor's ``extra_arguments`` are prepended to the start arguments.

        Raises:
            MaxChildrenError: ``max_children`` children are already running.
            StartChildError: the child failed to start.
        """
        return cast(pykka.ActorRef[Any], self._call("_api_start_child", spec, timeout=timeout))

    def terminate_child(
        self, child: pykka.ActorRef[Any] | str, *, timeout: float | None = None
    ) -> None:
        """Stop a child (by ref or URN) per its ``shutdown``; it is not restarted.

        Raises:
            ChildNotFound: it is not a child of this supervisor.
        """
        urn = child if isinstance(child, str) else child.actor_urn
        self._call("_api_terminate_child", urn, timeout=timeout)

    def which_children(self, *, timeout: float | None = None) -> list[ChildInfo]:
        """Every child, in start order."""
        return cast(list[ChildInfo], self._call("_api_which_children", timeout=timeout))

    def count_children(self, *, timeout: float | None = None) -> dict[str, int]:
        """``{"specs", "active", "supervisors", "workers"}`` counts."""
        return cast(dict[str, int], self._call("_api_count_children", timeout=timeout))


class DynamicSupervisor(_SupervisorCore):
    """A one_for_one supervisor of children added at run time (OTP/Elixir ``DynamicSupervisor``).

    Args:
        max_children: refuse ``start_child`` beyond this many (``MaxChildrenError``).
        max_restarts, max_seconds: restart intensity, as for ``Supervisor``
            (``None``: no supervisor-wide limit).
        extra_arguments: prepended to every child's start arguments.
        on_give_up: called with ``(child_id, spec, reason)`` when a child
            spent its own restart budget (``ChildSpec.max_restarts``); the
            child is dropped, its siblings and the supervisor live on.

    Children that end without being restarted are removed. On stop, all
    children are asked to stop at once, then each is waited for per its
    ``shutdown``.
    """

    ref_class = DynamicSupervisorRef
    _ids = itertools.count(1)

    def __init__(
        self,
        max_children: int | None = None,
        max_restarts: int | None = 3,
        max_seconds: float = 5.0,
        extra_arguments: Sequence[Any] = (),
        on_give_up: GiveUpHook | None = None,
    ) -> None:
        super().__init__(max_restarts=max_restarts, max_seconds=max_seconds, on_give_up=on_give_up)
        if max_children is not None and (not isinstance(max_children, int) or max_children < 0):
            raise InvalidChildSpec(f"max_children must be an int >= 0; got {max_children!r}")
        self.max_children = max_children
        self.extra_arguments = tuple(extra_arguments)

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> DynamicSupervisorRef:
        """Start an empty dynamic supervisor; see the class docstring."""
        return cast(DynamicSupervisorRef, super().start(*args, **kwargs))

    def _extra_arguments(self) -> Sequence[Any]:
        return self.extra_arguments

    def _forget_stopped(self, child: _Child) -> None:
        self._children.pop(child.id, None)

    def _drop_given_up(self, child: _Child) -> None:
        self._children.pop(child.id, None)

    def _terminate_all(self) -> None:
        children = list(self._children.values())
        self._stop_children_together(reversed(children))
        self._children.clear()

    def _api_start_child(self, spec: ChildSpec | StartSpec) -> pykka.ActorRef[Any]:
        if self.max_children is not None and len(self._children) >= self.max_children:
            raise MaxChildrenError(self.max_children)
        child_id = next(self._ids)
        spec = _as_spec(spec, default_id=child_id)
        child = _Child(spec, child_id)
        ref = self._launch(child, self.extra_arguments)
        self._children[child_id] = child
        return ref

    def _api_terminate_child(self, urn: str) -> None:
        child = self._by_urn.get(urn)
        if child is None:
            raise ChildNotFound(urn)
        self._stop_child(child)
        self._children.pop(child.id, None)


def supervisor_spec(
    child_id: Hashable,
    children: Iterable[ChildSpec],
    *,
    strategy: Strategy | str = Strategy.ONE_FOR_ONE,
    max_restarts: int = 3,
    max_seconds: float = 5.0,
    restart: RestartType | str = RestartType.PERMANENT,
    name: Hashable | None = None,
) -> ChildSpec:
    """A ``ChildSpec`` that starts a nested ``Supervisor`` (``type="supervisor"``)."""
    kwargs = {
        "children": list(children),
        "strategy": strategy,
        "max_restarts": max_restarts,
        "max_seconds": max_seconds,
    }
    return ChildSpec(
        child_id, (Supervisor, (), kwargs), restart=restart, type="supervisor", name=name
    )
