"""The session actor: one backend conversation as a supervised state machine.

States ``connecting → initializing → ready ⇄ active_query``, ``error`` and
``hibernating`` (BeamAgent's gen_statem, plus hibernation). The actor owns
the transport, the message queue, the single consumer, the timeouts and the
state; the backend handler only translates. Transport events arrive as
messages from the transport (for CLIs and HTTP, from the shared I/O loop's
thread); those an in-process transport gives synchronously, on the actor's
own thread, are handled right after the call that caused them (see
``_batched``).

Guarantees:

* a blocking ``query`` that times out interrupts the backend (or abandons the
  query) and leaves the session ``ready`` — never stuck in ``active_query``;
* every message is recorded (through the recorder, straight into the store, on
  this actor's thread) before the consumer can see it;
* when the transport dies, the session answers ``SessionRestarting`` (a
  ``SessionError``: the call was not carried out, handles wait and retry) to
  everything but ``health``/``session_info``, lingers in ``error`` for
  ``error_linger`` seconds, then ends abnormally so its supervisor restarts
  it. A session that never became ready ends with ``Shutdown`` instead (a
  start failure is reported to the starter, not retried for ever);
* a query cut off by the backend's death fails with ``SessionError`` whose
  ``delivered`` says whether the prompt had reached the backend;
* a failed store write is a ``StoreError`` to the caller whose messages could
  not be recorded; the session stays ``ready``, keeps those messages and
  writes them (in order, before anything newer) once the store works again;
* with ``idle_timeout``, a session whose backend had nothing to do for that
  long (no query, permission request or control request outstanding, no
  traffic either way) *hibernates*: it closes its transport (the process
  group is reaped, as on stop) and drops its handler, keeping its identity,
  lineage and mailbox. The next call that needs the backend builds a new
  handler from the lineage -- the same path as a restart, so the backend
  resumes its conversation -- and is postponed until it is ready; reads do
  not wake it. A failed wake fails the postponed calls with its error and the
  session with it, as a failed reconnect does;
* a session whose store holds history (resumed, forked, restarted after a
  crash, woken) continues its conversation: once the backend's handshake is
  done, a handler that cannot resume it natively (``resume_natively()``) gets
  the visible stored history (``replay_history``) before the first query. The
  session is ``ready`` only then; a store that fails meanwhile is retried
  (backing off) until ``init_timeout``, so a store fault delays the start
  and never loses the context.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import attrs
import pykka

from beamagent import telemetry
from beamagent.backends.base import (
    FORK_NATIVE_OPTION,
    BackendHandler,
    Connected,
    Data,
    Disconnected,
    Exited,
    HandlerOutput,
    Messages,
    OffThreadCall,
    SessionState,
    Transport,
    TransportEvent,
)
from beamagent.backends.cassette import CassetteSession
from beamagent.backends.launch import cli_not_required
from beamagent.backends.replay import REPLAY_LOAD_LIMIT
from beamagent.capabilities import Capability
from beamagent.errors import (
    BadQueryRef,
    BeamAgentError,
    BufferOverflow,
    ConnectTimeout,
    Interrupted,
    InvalidOption,
    NoActiveQuery,
    ProtocolError,
    QueryComplete,
    QueryInProgress,
    QueryTimeout,
    SessionError,
    SessionRestarting,
    StoreError,
    TransportError,
    UnknownControlMethod,
    UnsupportedCapability,
)
from beamagent.log import get_logger
from beamagent.messages import Message, MessageType, _new_message, _new_uuid
from beamagent.tools._access import ToolServerAccess
from beamagent.tools._timing import ToolCallReport, ToolTimings
from supervisors import (
    Crashed,
    Process,
    ProcessFuture,
    ReplyError,
    Shutdown,
    TimerRef,
    current_process,
    send_after,
)
from supervisors._log import BoundLogger

__all__ = [
    "CallFuture",
    "QueryRef",
    "Recorder",
    "SessionActor",
    "SessionConfig",
    "SessionLineage",
]

_LOGGER_NAME = "beamagent.session"
log = get_logger(_LOGGER_NAME)
# The stdlib logger's own check, for the hot paths' guards (one call, not two).
_log_enabled = logging.getLogger(_LOGGER_NAME).isEnabledFor

SESSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
"""What a session id may be: it names the session's process and its stored history."""

UNIVERSAL_CONTROLS = ("setModel", "setPermissionMode", "setMaxThinkingTokens", "stopTask")

# Timer tokens and control request ids need only be unique within a session: one counter
# for all sessions (``next`` on it is one C call, atomic under the GIL) instead of two per
# session, each an object the cyclic GC tracks for as long as the session lives.
_TOKENS = itertools.count(1)
_CONTROL_IDS = itertools.count(1)


class CallFuture(ProcessFuture):
    """The reply future of a ``Session`` call.

    The session sets ``delivered`` the moment it hands the call's prompt to
    the backend, so a caller whose session died mid-call knows whether the
    prompt reached the backend (at-most-once delivery). The caller sets
    ``abandoned`` when it stops waiting: a query the session has not started
    by then (postponed, or still in its mailbox) is never sent.
    """

    delivered = False
    abandoned = False


def _mark_delivered(future: pykka.Future[Any] | None) -> None:
    if isinstance(future, CallFuture):
        future.delivered = True


class Recorder(Protocol):
    """Where a session records its metadata and every message (the store).

    Called on the session's own thread, and synchronously: a method returns
    once the write is durable. Each raises ``StoreError`` when the write failed
    (nothing of it was written); the session keeps what it could not record and
    tries again, passing ``skip_recorded=True`` to ``record`` when it does.
    The runtime's is :class:`~beamagent.store.recorder.StoreRecorder`.
    """

    def session_started(self, meta: Mapping[str, Any]) -> None:
        """The session (re)started; ``meta`` has backend, model, cwd, native id..."""

    def session_updated(self, session_id: str, fields: Mapping[str, Any]) -> None:
        """Metadata changed (model, native session id)."""

    def history(self, session_id: str, limit: int) -> list[Message]:
        """The session's visible history, to replay it to a backend.

        Its active thread's messages after the revert view (every visible message
        when no thread is active), the most recent ``limit`` at most, oldest first;
        empty if the store has no such session. Raises ``StoreError`` when the read
        failed (the session retries it).
        """

    def record(
        self,
        session_id: str,
        messages: list[Message | dict[str, Any]],
        *,
        skip_recorded: bool = False,
    ) -> None:
        """Durably record messages, in order, before they are delivered.

        The session hands over its :class:`Message` objects as they are (a store
        takes them as their ``to_dict()``; see ``docs/store.md``). A retry comes
        with ``skip_recorded=True``: messages already stored (by a write reported
        as failed) must not be stored twice.
        """


@attrs.frozen
class QueryRef:
    """Names one query of one session; pass it to ``receive_message``.

    ``incarnation`` says which run of the session actor started it: a query
    does not survive a restart of its session.
    """

    session_id: str
    id: int
    incarnation: int = 1


@attrs.define
class SessionLineage:
    """State shared by every incarnation of one session (survives restarts)."""

    incarnations: int = 0
    ever_ready: bool = False
    native_session_id: str | None = None
    model: str | None = None
    permission_mode: str | None = None
    route_decision: dict[str, Any] | None = None
    backend_state: dict[str, Any] = attrs.field(factory=dict)
    """Kept for the backend handler across restarts (e.g. a client-side conversation)."""
    stored_history: bool = False
    """The store may hold messages of this session (it was resumed or forked, or recorded
    some): a handler that cannot resume natively gets them replayed."""
    trace_link: Any = None
    """The span context of the session's ``beamagent.session.start`` span, if traced:
    each restart's span links to it."""


def _seconds(minimum: float, inclusive: bool) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    bound = f">= {minimum}" if inclusive else f"> {minimum}"

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if type(value) is float and minimum < value < math.inf:  # the usual case, quickly
            return
        ok = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (value >= minimum if inclusive else value > minimum)
        )
        if not ok:
            raise InvalidOption(
                f"session option {attribute.name!r} must be a finite number of seconds "
                f"{bound}; got {value!r}"
            )

    return check


def _idle_timeout(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidOption(
            f"session option {attribute.name!r} must be a finite number of seconds > 0, "
            f"or None (never hibernate); got {value!r}"
        )
    if not instance.handler_cls.hibernates:
        raise InvalidOption(
            f"session option 'idle_timeout': backend {instance.backend!r} cannot hibernate "
            "(its handler does not resume a conversation in a new backend); leave it None"
        )


def _buffer_max(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 2**40:
        raise InvalidOption(
            f"session option 'buffer_max' must be an int of bytes from 1 to 2**40; got {value!r}"
        )


def _query_defaults(value: Any) -> dict[str, Any]:
    if type(value) is not dict and not isinstance(value, Mapping):  # dict: no abc check
        raise InvalidOption(f"session option 'query_defaults' must be a mapping; got {value!r}")
    return dict(value)


@attrs.define(on_setattr=attrs.setters.NO_OP)  # no hook on the sets a start makes
class SessionConfig:
    """Everything a session actor needs to start; the same object on every restart.

    The session options are checked when it is built, before anything starts (not
    when a field is set afterwards: build a new one, or use ``attrs.evolve``).

    Raises:
        InvalidOption: a session option is out of its range (the message names it).
    """

    session_id: str
    backend: str
    handler_cls: type[BackendHandler]
    options: dict[str, Any]
    recorder: Recorder | None = None
    connect_timeout: float = attrs.field(default=15.0, validator=_seconds(0, inclusive=False))
    init_timeout: float = attrs.field(default=15.0, validator=_seconds(0, inclusive=False))
    buffer_max: int = attrs.field(default=10_000_000, validator=_buffer_max)
    error_linger: float = attrs.field(default=1.0, validator=_seconds(0, inclusive=True))
    drain_timeout: float = attrs.field(default=5.0, validator=_seconds(0, inclusive=False))
    idle_timeout: float | None = attrs.field(default=None, validator=_idle_timeout)
    """Hibernate after this many idle seconds (None: never); see ``SessionActor``."""
    query_defaults: dict[str, Any] = attrs.field(factory=dict, converter=_query_defaults)
    lineage: SessionLineage = attrs.field(factory=SessionLineage)
    on_state: Callable[[str, str], None] | None = None
    on_backend_health: Callable[[str, str, str], None] | None = None
    """Told ``(backend, status, reason)`` when the backend reports its own health
    (e.g. a CLI that is not logged in): routing stops choosing it. Must not block."""
    info: dict[str, Any] = attrs.field(factory=dict)
    """Facts shown in ``session_info()`` (e.g. the session's tool names and tool server URL)."""
    cassette: CassetteSession | None = None
    """Where the session's transports are opened when it records or replays a cassette."""
    on_stopped: Callable[[str], None] | None = None
    """Called with the session id when the session ends for good (stopped, or its start
    failed), not when it crashes to be restarted (e.g. revokes its tool token). Must not block."""
    first_handler: BackendHandler | None = attrs.field(default=None, eq=False, repr=False)
    """A handler the caller built from :func:`first_handler_options` (to check the backend's
    options before anything starts): the first start uses it instead of building another,
    and clears it. Never opened before that."""
    on_ready: Callable[[str, str, str], None] | None = attrs.field(
        default=None, eq=False, repr=False
    )
    """Told ``(session_id, backend, actor_urn)`` on the session's own thread when it first
    answers ``first_ready``, just before answering it (the runtime queues the session for
    its registry to index, see ``ReadyQueue``). Must not block or raise. The
    first start then answers ``first_ready`` with True instead of None."""
    first_ready: pykka.Future[Any] | None = attrs.field(default=None, eq=False, repr=False)
    """The ``ready`` future of the first start (see ``SessionActor``), when not passed to it:
    the first incarnation takes it and clears it, so no restart spec keeps it for ever."""

    def __call__(self, *_extra_arguments: Any) -> pykka.ActorRef[Any]:
        """Start a session actor on this configuration (a ``ChildSpec``'s ``start``).

        The configuration is its own start: one object less per live session for the
        cyclic GC than a ``(SessionActor, (config,), {})`` tuple. ``extra_arguments`` of
        a dynamic supervisor are ignored.
        """
        return SessionActor.start(self)


def first_handler_options(config: SessionConfig) -> dict[str, Any]:
    """The options a session's first start builds its handler from (fresh lineage)."""
    return {
        **config.options,
        "session_id": config.session_id,
        "backend_state": config.lineage.backend_state,
    }


class _TransportEvent:
    """A transport's event, told to (or queued for) the session that made that transport.

    A plain class, not a frozen attrs one: one is made for every batch of backend output,
    and a frozen class's ``__init__`` sets each field through ``object.__setattr__``.
    """

    __slots__ = ("event", "generation")

    def __init__(self, generation: int, event: TransportEvent) -> None:
        self.generation = generation
        self.event = event

    def __repr__(self) -> str:
        return f"_TransportEvent(generation={self.generation!r}, event={self.event!r})"


@attrs.frozen
class _CallResult:
    generation: int
    key: Any
    result: Any
    error: BaseException | None


@attrs.frozen
class _Timeout:
    kind: str  # connect | init | consumer | collect | postponed | drain | linger | control | idle
    token: int
    key: str = ""


class _Sink:
    """Where a session's transport reports its events (one object, not a closure's five).

    An event given on the session's own thread during a batch is handled when the batch
    ends (see ``_batched``); any other is told to the session. ``generation`` tells the
    events of a transport the session has since replaced.
    """

    __slots__ = ("generation", "session")

    def __init__(self, session: SessionActor, generation: int) -> None:
        self.session = session
        self.generation = generation

    def __call__(self, event: TransportEvent) -> None:
        session = self.session
        events = session._sync_events
        if events is not None and current_process() is session:
            events.append(_TransportEvent(self.generation, event))  # handled after this call
            return
        with contextlib.suppress(pykka.ActorDeadError):  # late output of an ended session
            session.actor_ref.tell(_TransportEvent(self.generation, event))


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _batched(method: _Method) -> _Method:
    """Handle the transport output a call causes right after the call, not as messages.

    An in-process backend (``local``) answers synchronously, inside ``transport.send``:
    its events are queued on the actor (see the sink in ``SessionActor.on_start``) and
    handled once the call's own work is done, in order, before the next mailbox message.
    Telling them to the actor instead cost a trip through the mailbox per batch of output.

    The call's outcome decides what happens to them, as it would to told events: after a
    result or an expected error (a ``ReplyError`` answering a caller) they are handled;
    after a crash (or a kill) they are dropped, like the mailbox of an ended process.
    """

    @functools.wraps(method)
    def run(self: SessionActor, *args: Any, **kwargs: Any) -> Any:
        if self._sync_events is not None:  # inside a batch already: that one drains
            return method(self, *args, **kwargs)
        self._sync_events = deque()
        try:
            result = method(self, *args, **kwargs)
        except BaseException as exc:
            if isinstance(exc, ReplyError) and self.caller_future() is not None:
                self._end_batch(exc, None)  # the caller's answer: the session goes on
            else:
                self._sync_events = None
                self._arm_after_batch = None
                self._timer_due = None
            raise
        self._end_batch(None, result)
        return result

    return run  # type: ignore[return-value]


class _Query:
    __slots__ = (
        "collect",
        "consumer",
        "consumer_token",
        "deadline",
        "done",
        "failure",
        "id",
        "interrupted",
        "queue",
        "span",
        "started",
        "timer",
    )

    def __init__(self, query_id: int) -> None:
        self.id = query_id
        self.queue: deque[Message] = deque()
        self.consumer: pykka.Future[Any] | None = None
        self.consumer_token = 0
        self.collect: tuple[pykka.Future[Any], list[Message]] | None = None
        self.deadline = 0.0  # monotonic time a blocking query's collect timer fires at
        self.done = False
        self.failure: BeamAgentError | None = None  # for a consumer that was not waiting yet
        self.interrupted = False
        self.started = time.monotonic()
        self.timer: TimerRef | None = None
        self.span: telemetry.Span = None  # its beamagent.query span, until it ends

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Postponed:
    """A call held until the session is ready: its deferred reply and, for a query or a
    control request, its deadline."""

    __slots__ = ("call", "deadline", "future", "timer", "token", "what")

    def __init__(
        self,
        call: Callable[[pykka.Future[Any]], Any],
        future: pykka.Future[Any],
        deadline: float | None,
        token: int,
        timer: TimerRef | None,
        what: str | None = None,
    ) -> None:
        self.call = call
        self.future = future
        self.deadline = deadline  # monotonic; None: no limit of the session's own
        self.token = token
        self.timer = timer
        self.what = what  # None: a query; else the control request it is (its timeout says)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class SessionActor(Process):
    """One session: see the module docstring. Started by the runtime's ``sessions``."""

    # Slots: a session's ~50 fields in an instance dict cost ~1 KiB per idle session.
    __slots__ = (
        "_arm_after_batch",
        "_buffer",
        "_calls_pending",
        "_control_ids",
        "_controls",
        "_dormant",
        "_drain_timer",
        "_drain_token",
        "_draining",
        "_error",
        "_flush_delay",
        "_flush_timer",
        "_generation",
        "_hibernations",
        "_idle_timer",
        "_idle_token",
        "_info",
        "_last_activity",
        "_logger",
        "_pending_user",
        "_postponed",
        "_query",
        "_query_seq",
        "_ready_waiters",
        "_replay_delay",
        "_replay_error",
        "_replay_timer",
        "_replay_token",
        "_resume_decided",
        "_resumed",
        "_start_ready",
        "_started_at",
        "_stored_native",
        "_sync_events",
        "_timer",
        "_timer_due",
        "_timer_flush_token",
        "_timer_token",
        "_tokens",
        "_tool_timings",
        "_unrecorded",
        "_unstored_fields",
        "_unstored_meta",
        "_wake_started",
        "_waking",
        "config",
        "handler",
        "session_id",
        "state",
        "transport",
    )

    def __init__(self, config: SessionConfig, ready: pykka.Future[Any] | None = None) -> None:
        """``ready``: answered (with None) once the session is ready, or with its start error.

        The runtime's ``start_session`` gives one (in ``config.first_ready``, which the
        first incarnation takes), so a session that fails before it is ever ready still
        hands over its error (it ends at once: a later call would find no session).
        Restarted incarnations get none: nobody waits on their start.
        """
        super().__init__()
        self.config = config
        self.session_id = config.session_id
        self.state = SessionState.CONNECTING
        self.process_state = self.state.value
        self.handler: BackendHandler | None = None
        self.transport: Transport | None = None
        self._logger: BoundLogger | None = None  # bound on first use: see _log
        self._buffer = bytearray()
        self._generation = 0
        self._tokens = _TOKENS
        self._timer: TimerRef | None = None
        self._timer_token = 0
        # (kind, monotonic deadline) of a connect/init/linger timeout asked for during a
        # batch: armed when the batch ends, if still wanted (see _arm).
        self._timer_due: tuple[str, float] | None = None
        self._query_seq = 0  # the last query's id (an int: a counter object is one more for GC)
        self._query: _Query | None = None
        self._draining = False
        self._drain_token = 0
        self._drain_timer: TimerRef | None = None
        if ready is None:  # the first start's, handed over once (see SessionConfig.first_ready)
            ready, config.first_ready = config.first_ready, None
        # A tuple until a caller waits (await_ready): most sessions never have one.
        self._ready_waiters: Sequence[pykka.Future[Any]] = () if ready is None else (ready,)
        self._start_ready = ready  # answered with None: the runtime only waits on it
        # Calls waiting for the session to be ready: a tuple until one waits (see _postpone).
        self._postponed: Sequence[_Postponed] = ()
        self._controls: dict[str, tuple[pykka.Future[Any], TimerRef | None, str]] = {}
        self._control_ids = _CONTROL_IDS
        self._error: SessionError | None = None
        self._pending_user: Message | None = None
        # Store writes that failed, kept (in order) until the store works again.
        # A tuple until a write fails: _record only ever replaces it, never appends.
        self._unrecorded: Sequence[Message | dict[str, Any]] = ()
        self._unstored_meta: dict[str, Any] | None = None
        self._unstored_fields: dict[str, Any] = {}
        self._stored_native: str | None = None  # the native id last written to the store
        self._flush_timer: TimerRef | None = None
        self._flush_delay = 0.0
        self._timer_flush_token = 0
        self._info: dict[str, Any] = {}
        self._started_at = time.time()
        # Hibernation: see the module docstring.
        self._idle_timer: TimerRef | None = None
        self._idle_token = 0
        self._last_activity = time.monotonic()
        self._calls_pending = 0  # user callbacks (permission requests, hooks) not yet answered
        self._waking = False
        self._wake_started = 0.0
        self._dormant: dict[str, Any] | None = None  # the dropped handler's facts, for info
        self._hibernations = 0
        # Context: how the current handler continues the conversation ("native", "replay",
        # None: nothing to continue), decided at the end of its handshake.
        self._resumed: str | None = None
        self._resume_decided = False
        self._replay_timer: TimerRef | None = None
        self._replay_token = 0
        self._replay_delay = 0.0
        self._replay_error: str | None = None
        # Transport events produced on this actor's own thread during a batch (see
        # _batched), and the blocking query whose timeout is armed once it ends.
        self._sync_events: deque[_TransportEvent] | None = None
        self._arm_after_batch: _Query | None = None
        self._tool_timings: ToolTimings | None = None  # from the first tool server report on

    @property
    def _log(self) -> BoundLogger:
        """This session's logger (``session_id`` and ``backend`` bound), made on first use.

        Most idle sessions never log anything their level lets through: a bound logger
        made at start would be one more object per session for the cyclic GC to walk.
        """
        logger = self._logger
        if logger is None:
            config = self.config
            logger = self._logger = log.bind(session_id=config.session_id, backend=config.backend)
        return logger

    # --- lifecycle -------------------------------------------------------------------

    def _open_backend(self) -> None:
        """Build the handler from the options and the lineage, and start its transport.

        Used at every (re)start and to wake from hibernation: the lineage's
        native id, model and permission mode make the backend resume where it was.
        """
        config = self.config
        lineage = config.lineage
        options = dict(config.options)
        if lineage.model is not None:
            options["model"] = lineage.model
        if lineage.permission_mode is not None:
            options["permission_mode"] = lineage.permission_mode
        if (
            lineage.native_session_id is not None
            and "native_session_id" in config.handler_cls.option_names()
        ):
            # The lineage's id is the one the backend last reported: it wins over the
            # option (which named what to resume at the first start).
            options["native_session_id"] = lineage.native_session_id
        if lineage.native_session_id is not None:
            # The fork has a conversation of its own by now: resume that, do not fork again.
            options.pop(FORK_NATIVE_OPTION, None)
        options["session_id"] = config.session_id
        options["backend_state"] = lineage.backend_state
        self._resumed = None
        self._resume_decided = False
        self._cancel_replay_timer()
        cassette = config.cassette
        prebuilt, config.first_handler = config.first_handler, None  # for one start only
        if (
            prebuilt is not None
            and lineage.model is None
            and lineage.permission_mode is None
            and lineage.native_session_id is None
        ):
            # The lineage is still fresh: ``options`` are first_handler_options(config), the
            # ones the caller built this handler from.
            self.handler = prebuilt
        elif cassette is not None and cassette.replaying:
            with cli_not_required():  # a replay runs no CLI
                self.handler = config.handler_cls(options)
        else:
            self.handler = config.handler_cls(options)
        self.transport = (
            self.handler.open_transport()
            if cassette is None
            else cassette.open_transport(self.handler)
        )
        # Always inside a batch (on_start's, or the call's that wakes the session): what
        # an in-process backend answers inside start() is handled when the batch ends, and
        # the connect timeout is armed then only if it is still wanted.
        assert self._sync_events is not None
        self._arm("connect", config.connect_timeout)
        self.transport.start(_Sink(self, self._generation))

    def on_start(self) -> None:
        config = self.config
        lineage = config.lineage
        lineage.incarnations += 1
        if lineage.incarnations > 1:
            self._log.warning("session_restarted", incarnation=lineage.incarnations)
            if telemetry.ENABLED:
                self._trace_restart(lineage)
        # A batch, as for a call (see _batched): an in-process backend connects inside
        # transport.start() and answers its handshake synchronously; that output is
        # handled here, after the metadata is recorded, so such a session is ready (or has
        # failed, and told its starter) by the time on_start returns -- no trip through
        # the mailbox, and its starter need not wait for it on another thread.
        self._sync_events = deque()
        try:
            self._open_backend()
            assert self.handler is not None
            if config.recorder is not None:
                self._unstored_meta = self._meta()
                self._flush_store()
            if _log_enabled(logging.INFO):
                self._log.info("session_started", model=self.handler.model)
        except BaseException:
            self._sync_events = None
            self._timer_due = None
            raise
        self._end_batch(None, None)

    def _trace_restart(self, lineage: SessionLineage) -> None:
        # A span of its own, linked to the session's start: the supervisor's restart
        # happens long after that span (and its trace) ended.
        span = telemetry.start_span(
            "beamagent.session.restart",
            {
                "beamagent.session_id": self.session_id,
                "beamagent.backend": self.config.backend,
                "beamagent.incarnation": lineage.incarnations,
            },
            links=(lineage.trace_link,),
        )
        telemetry.add_event(span, "session_restarted", {"incarnation": lineage.incarnations})
        telemetry.end_span(span)

    def on_stop(self) -> None:
        self._shutdown_io(SessionError(f"session {self.session_id} stopped", reason="stopped"))
        if self.config.on_stopped is not None:
            try:
                self.config.on_stopped(self.session_id)
            except Exception:
                self._log.exception("on_stopped_failed")

    def on_failure(self, *_exc_info: Any) -> None:
        self._log.error("session_crashed", state=str(self.state))
        self._shutdown_io(
            self._restart_error(
                SessionError(f"session {self.session_id} crashed", reason="crashed")
            )
        )

    def _restart_error(self, error: SessionError) -> SessionError:
        """What callers whose calls never ran get: retry-after-restart, when one will come."""
        if not self.config.lineage.ever_ready:
            return error
        return SessionRestarting(
            f"{error}; the session is being restarted, the call was not carried out",
            reason=error.reason,
        )

    def _shutdown_io(self, error: SessionError) -> None:
        self._cancel_timer()
        self._cancel_replay_timer()
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        try:
            failed = self._record([])  # a prompt sent to a backend that then died is history too
        except Exception:
            self._log.exception("record_failed")
        else:
            if failed is not None:
                self._log.error(
                    "session_history_lost",
                    messages=len(self._unrecorded),
                    error=str(failed),
                )
        self._fail_waiters(error)
        transport, self.transport = self.transport, None
        if transport is not None:
            try:
                transport.close()
            except Exception:
                self._log.exception("transport_close_failed")

    def _meta(self) -> dict[str, Any]:
        handler = self.handler
        assert handler is not None
        return {
            "session_id": self.session_id,
            "backend": self.config.backend,
            "model": handler.model,
            "cwd": self.config.options.get("cwd"),
            "native_session_id": self._native_id(),
        }

    def _native_id(self) -> str | None:
        native = self._info.get("native_session_id") or self.config.lineage.native_session_id
        if native is None and self.handler is not None:
            native = self.handler.info().get("native_session_id")
        return str(native) if native is not None else None

    # --- state and timers ---------------------------------------------------------------

    def _set_state(self, state: SessionState) -> None:
        if state is self.state:
            return
        old, self.state = self.state, state
        # _value_, not .value: Enum.value is a Python-level property, twice per query.
        self.process_state = state._value_
        if _log_enabled(logging.DEBUG):
            self._log.debug("session_state_changed", old=old._value_, new=state._value_)
        if self.config.on_state is not None:
            self.config.on_state(self.session_id, state.value)

    def _arm(self, kind: str, seconds: float) -> int:
        self._cancel_timer()
        token = next(self._tokens)
        self._timer_token = token
        if self._sync_events is not None:
            # Inside a batch an in-process backend may answer before it ends (it usually
            # does): arm the timer then, if it is still wanted, counted from now.
            self._timer_due = (kind, time.monotonic() + seconds)
        else:
            self._timer = send_after(self.actor_ref, _Timeout(kind, token), seconds)
        return token

    def _cancel_timer(self) -> None:
        self._timer_due = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_token = 0

    @_batched
    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _TransportEvent):
            if message.generation == self._generation:
                self._on_transport(message.event)
            return None
        if isinstance(message, _Timeout):
            self._on_timeout(message)
            return None
        if isinstance(message, _CallResult):
            self._on_call_result(message)
            return None
        if isinstance(message, ToolCallReport):  # the tool server ran a call of ours
            if self._tool_timings is None:
                self._tool_timings = ToolTimings()
            self._tool_timings.report(message)
            return None
        return super().on_receive(message)

    def _end_batch(self, error: BaseException | None, result: Any) -> None:
        """Handle the queued transport events (and what they cause), then arm a timeout.

        ``error``/``result`` are the outcome of the call that opened the batch. Handling
        an event that raises is the session's crash, as it is for a told event, not the
        call's failure: the caller gets the call's own outcome (or, for a deferred reply,
        what a crash gives waiting callers) before the exception ends the process.
        """
        events = self._sync_events
        assert events is not None
        try:
            while events:
                message = events.popleft()
                if message.generation == self._generation:
                    self._on_transport(message.event)
        except Exception as exc:
            self._answer_before_crash(error, result)
            if isinstance(exc, ReplyError):  # would answer the caller, not end the process
                raise RuntimeError(
                    f"session {self.session_id}: handling backend output raised {exc!r}"
                ) from exc
            raise
        finally:
            self._sync_events = None
            query, self._arm_after_batch = self._arm_after_batch, None
            due, self._timer_due = self._timer_due, None
        if due is not None:
            self._timer = send_after(
                self.actor_ref,
                _Timeout(due[0], self._timer_token),
                max(due[1] - time.monotonic(), 0.0),
            )
        if query is not None and query is self._query and query.collect is not None:
            self._arm_collect(query)

    def _answer_before_crash(self, error: BaseException | None, result: Any) -> None:
        """Answer everyone as ``on_failure`` would, and the batch's caller with its outcome.

        Otherwise the process loop would answer the caller with the crash's exception.
        ``on_failure`` runs after this and finds nobody left to answer.
        """
        self._shutdown_io(
            self._restart_error(
                SessionError(f"session {self.session_id} crashed", reason="crashed")
            )
        )
        future = self.caller_future()
        if future is None:
            return
        if error is not None:
            self.reply_error(future, error)
        elif result is not _DEFERRED:
            self.reply(future, result)

    def _arm_collect(self, query: _Query) -> None:
        """Start a blocking query's timeout, counted from when the query started."""
        query.cancel_timer()
        query.timer = send_after(
            self.actor_ref,
            _Timeout("collect", query.consumer_token),
            max(query.deadline - time.monotonic(), 0.0),
        )

    def _on_timeout(self, timeout: _Timeout) -> None:
        kind = timeout.kind
        if kind in ("connect", "init"):
            if timeout.token == self._timer_token and self.state in (
                SessionState.CONNECTING,
                SessionState.INITIALIZING,
            ):
                seconds = (
                    self.config.connect_timeout if kind == "connect" else self.config.init_timeout
                )
                what = "connect" if kind == "connect" else "finish its handshake"
                if self._replay_timer is not None:
                    what = f"get its history to replay: the store failed ({self._replay_error})"
                # What the transport still waits for (e.g. a server's health), when it says.
                waiting = self.transport.info().get("waiting_for") if self.transport else None
                self._fail(
                    ConnectTimeout(
                        f"session {self.session_id}: backend {self.config.backend!r} did not "
                        f"{what} within {seconds} s"
                        + (f"; waiting for {waiting}" if waiting else ""),
                        reason=f"{kind}_timeout",
                    )
                )
        elif kind == "replay":
            if timeout.token == self._replay_token and self._replay_timer is not None:
                self._replay_timer = None
                if self.state in (SessionState.CONNECTING, SessionState.INITIALIZING):
                    self._load_replay()
        elif kind == "consumer":
            query = self._query
            if (
                query is not None
                and query.consumer is not None
                and query.consumer_token == timeout.token
            ):
                future, query.consumer = query.consumer, None
                self.reply_error(future, QueryTimeout("no message arrived in time"))
        elif kind == "collect":
            query = self._query
            if (
                query is not None
                and query.collect is not None
                and query.consumer_token == timeout.token
            ):
                future, _ = query.collect
                query.collect = None
                self._abandon(query)
                self.reply_error(
                    future,
                    QueryTimeout(
                        f"query on session {self.session_id} timed out; the backend was "
                        "interrupted and the session is ready again"
                    ),
                )
        elif kind == "postponed":
            self._postponed_expired(timeout.token)
        elif kind == "drain":
            if timeout.token == self._drain_token and self._draining:
                self._log.debug("session_drain_timed_out")
                self._end_drain()
        elif kind == "linger":
            self._finish_error()
        elif kind == "flush":
            self._flush_timer = None
            if timeout.token == self._timer_flush_token:
                self._retry_store()
        elif kind == "control":
            entry = self._controls.pop(timeout.key, None)
            if entry is not None:
                self.reply_error(
                    entry[0], QueryTimeout(f"control request {timeout.key} was not answered")
                )
        elif kind == "idle" and timeout.token == self._idle_token:
            self._idle_timer = None
            self._idle_check()

    # --- transport events ------------------------------------------------------------------

    def _on_transport(self, event: TransportEvent) -> None:
        if self.state is SessionState.ERROR:
            return
        handler = self.handler
        assert handler is not None
        if isinstance(event, Data):
            self._on_data(event.data)
        elif isinstance(event, Messages):
            self._apply(handler.handle_messages(event.messages))
        elif isinstance(event, Connected):
            self._info.update({k: v for k, v in event.info.items() if k != "transport"})
            if self.state is SessionState.CONNECTING:
                self._cancel_timer()
                self._apply(handler.on_connected(event))
                state: SessionState = self.state  # _apply may have moved it on
                if state is SessionState.CONNECTING:
                    self._set_state(SessionState.INITIALIZING)
                    state = SessionState.INITIALIZING
                if state is SessionState.INITIALIZING:
                    self._arm("init", self.config.init_timeout)
        elif isinstance(event, Exited):
            detail = f": {event.stderr_tail.strip()[-300:]}" if event.stderr_tail.strip() else ""
            self._fail(
                TransportError(
                    f"session {self.session_id}: backend {self.config.backend!r} exited "
                    f"with status {event.status}{detail}",
                    reason=("cli_exit", event.status),
                )
            )
        elif isinstance(event, Disconnected):
            self._fail(
                TransportError(
                    f"session {self.session_id}: backend disconnected: {event.reason}",
                    reason=("disconnected", event.reason),
                )
            )

    def _on_data(self, data: bytes) -> None:
        # buffer_max bounds what is held unparsed (an unterminated line), not what
        # arrives: complete lines of any size are parsed and let go.
        handler = self.handler
        assert handler is not None
        buffer = self._buffer
        if handler.line_framed and b"\n" not in data and b"\n" not in buffer:
            buffer += data  # an unterminated line grows: nothing to parse yet
            self._check_unparsed(len(buffer))
            return
        if buffer:
            buffer += data
            data = bytes(buffer)
        try:
            output, leftover = handler.handle_data(data)
        except ProtocolError as exc:
            self._fail(SessionError(f"session {self.session_id}: {exc}", reason="protocol"))
            return
        self._buffer = bytearray(leftover)
        self._apply(output)  # the complete lines before an oversized leftover still count
        self._check_unparsed(len(leftover))

    def _check_unparsed(self, size: int) -> None:
        if size > self.config.buffer_max:
            self._fail(
                BufferOverflow(
                    f"session {self.session_id}: backend sent more than "
                    f"{self.config.buffer_max} unparsed bytes (a line without its end)",
                    reason="buffer_overflow",
                )
            )

    def _apply(self, output: HandlerOutput) -> None:
        self._touch()  # traffic with the backend, either way
        transport = self.transport
        for chunk in output.writes:
            if transport is None:
                break
            try:
                transport.send(chunk)
            except TransportError as exc:
                self._fail(exc)
                return
        if output.info:
            self._info.update(output.info)
            health = output.info.get("backend_health")
            if health is not None:
                self._backend_health(health)
            native = output.info.get("native_session_id")
            if native and native != self.config.lineage.native_session_id:
                self.config.lineage.native_session_id = str(native)
                self._store_fields({"native_session_id": str(native)})
        for request_id, result, error in output.replies:
            self._control_reply(request_id, result, error)
        for call in output.calls:
            self._start_call(call)
        if output.error is not None:
            # What the backend said before it broke its protocol is history: record it first.
            if output.messages:
                self._deliver(list(output.messages))
            self._fail(
                SessionError(f"session {self.session_id}: {output.error}", reason="protocol")
            )
            return
        if output.state is not None and output.state is not self.state:
            if output.state is SessionState.READY:
                self._handshake_done()
            elif output.state is SessionState.INITIALIZING:
                self._set_state(SessionState.INITIALIZING)
            else:
                self._set_state(output.state)
        if output.messages:
            self._deliver(list(output.messages))

    def _backend_health(self, health: Any) -> None:
        status, reason = health
        self._log.warning("backend_health_reported", status=status, reason=reason)
        hook = self.config.on_backend_health
        if hook is not None:
            try:
                hook(self.config.backend, str(status), str(reason))
            except Exception:
                self._log.exception("backend_health_hook_failed")

    def _start_call(self, call: OffThreadCall) -> None:
        """Run a handler's user callback on its own thread; the outcome comes back as a message.

        The thread is not joined on stop: a callback may wait for a human, and
        its late answer to an ended session is dropped.
        """
        actor_ref = self.actor_ref
        generation = self._generation
        self._calls_pending += 1  # a pending permission request keeps the session awake
        query = self._query
        # A tool call of an in-process agent (local, openai) is the running query's child.
        parent = None if query is None else telemetry.context_of(query.span)

        def run() -> None:
            result: Any = None
            error: BaseException | None = None
            token = telemetry.attach(parent)
            try:
                result = call.fn()
            except Exception as exc:
                error = exc
            finally:
                telemetry.detach(token)
            with contextlib.suppress(pykka.ActorDeadError):
                actor_ref.tell(_CallResult(generation, call.key, result, error))

        threading.Thread(
            target=run, name=f"beamagent-callback-{self.session_id}", daemon=True
        ).start()

    def _on_call_result(self, message: _CallResult) -> None:
        self._calls_pending -= 1
        if message.generation != self._generation or self.state is SessionState.ERROR:
            return
        handler = self.handler
        assert handler is not None
        if message.error is not None:
            self._log.warning("callback_failed", key=str(message.key), error=repr(message.error))
        self._apply(handler.on_call_result(message.key, message.result, message.error))

    # --- context: native resume or replay -------------------------------------------------------

    def _handshake_done(self) -> None:
        """The backend is up: decide how it continues the conversation, then be ready."""
        if self._resume_decided:
            self._become_ready()
            return
        handler = self.handler
        assert handler is not None
        if handler.resume_natively():
            self._decided("native")
        elif not self.config.lineage.stored_history or self.config.recorder is None:
            self._decided(None)
        else:
            self._load_replay()

    def _decided(self, resumed: str | None) -> None:
        self._resume_decided = True
        self._resumed = resumed
        if resumed is not None:
            self._log.info(
                "session_context_resumed", resumed=resumed, native_session_id=self._native_id()
            )
        self._become_ready()

    def _load_replay(self) -> None:
        """Read the visible history and hand it to the handler; retried while the store fails.

        Until it is read the session stays ``initializing`` (calls wait, as during
        the handshake); ``init_timeout`` bounds the wait.
        """
        recorder = self.config.recorder
        handler = self.handler
        assert recorder is not None
        assert handler is not None
        try:
            history = recorder.history(self.session_id, REPLAY_LOAD_LIMIT)
        except StoreError as exc:
            self._replay_error = str(exc)
            self._replay_delay = min(max(self._replay_delay * 2, 0.05), 1.0)
            self._log.warning(
                "session_history_read_failed", error=str(exc), retry_in=self._replay_delay
            )
            if self.state is SessionState.CONNECTING:
                self._set_state(SessionState.INITIALIZING)  # the init timeout bounds the wait
            self._replay_token = next(self._tokens)
            self._replay_timer = send_after(
                self.actor_ref, _Timeout("replay", self._replay_token), self._replay_delay
            )
            return
        self._replay_delay = 0.0
        self._replay_error = None
        if not history:
            self._decided(None)
            return
        handler.replay_history(history)
        self._log.debug("session_history_replayed", messages=len(history))
        self._decided("replay")

    def _cancel_replay_timer(self) -> None:
        if self._replay_timer is not None:
            self._replay_timer.cancel()
            self._replay_timer = None

    def _become_ready(self) -> None:
        if self._waking:
            self._woke()
        self._cancel_timer()
        self.config.lineage.ever_ready = True
        self._set_state(SessionState.READY)
        waiters, self._ready_waiters = self._ready_waiters, ()
        info: dict[str, Any] | None = None
        for future in waiters:
            if future is self._start_ready:
                self._start_ready = None  # answered: not kept for the session's lifetime
                on_ready = self.config.on_ready
                if on_ready is not None:  # told before the starter sees the session ready
                    on_ready(self.session_id, self.config.backend, self.actor_urn)
                self.reply(future, on_ready is not None)  # the runtime only waits: no info
                continue
            if info is None:
                info = self._session_info()
            self.reply(future, info)
        self._replay_postponed()

    def _replay_postponed(self) -> None:
        while self._postponed and self.state is SessionState.READY and not self._draining:
            entry, self._postponed = self._postponed[0], self._postponed[1:]
            entry.cancel_timer()
            future = entry.future
            if entry.deadline is not None and time.monotonic() >= entry.deadline:
                # Its timer fired but is still in the mailbox: time out, do not send it.
                self.reply_error(future, self._postponed_timeout(entry.what))
                continue
            try:
                result = entry.call(future)
            except BeamAgentError as exc:
                self.reply_error(future, exc)
            else:
                if result is not _DEFERRED:
                    self.reply(future, result)

    # --- messages ----------------------------------------------------------------------------

    def _stamp(self, message: Message) -> Message:
        if self._tool_timings is not None:  # a tool result gets the tool server's timing
            message = self._tool_timings.annotate(message)
        if message.session_id == self.session_id:
            return message
        return message.with_fields(session_id=self.session_id)

    def _record(self, messages: list[Message]) -> StoreError | None:
        """Record ``messages`` (after any the store refused earlier); the error if it failed.

        The user prompt is recorded in the same write as the first answer (one
        store round trip per query, not two); it still precedes every delivery.
        What a failed write held is kept and written first next time.
        """
        if self._pending_user is not None:
            messages = [self._pending_user, *messages]
            self._pending_user = None
        recorder = self.config.recorder
        if recorder is None:
            return None
        retry = False
        batch: list[Message | dict[str, Any]]
        if self._unstored_meta is not None or self._unstored_fields or self._unrecorded:
            retry = bool(self._unrecorded)
            batch = [*self._unrecorded, *messages]
            self._unrecorded = []
            error = self._flush_store()
            if error is not None:
                self._unrecorded = batch
                return error
        elif messages:
            # The messages themselves: a store takes a Message as its to_dict(), and
            # the memory store keeps one the library built from JSON as it is.
            batch = list(messages)
        else:
            return None
        if not batch:
            return None
        self.config.lineage.stored_history = True  # even if the write fails: it may commit
        try:
            if retry:  # what failed may have been stored after all: never twice
                recorder.record(self.session_id, batch, skip_recorded=True)
            else:
                recorder.record(self.session_id, batch)
        except StoreError as exc:
            self._unrecorded = batch
            self._schedule_store_retry(exc)
            return exc
        except InvalidOption as exc:
            # The store refuses this batch itself (it cannot be made storable): keeping
            # it would block every later write, so it is reported and dropped.
            self._log.error("record_refused", messages=len(batch), error=str(exc))
            return StoreError(f"session {self.session_id}: the store refused messages: {exc}")
        if self._flush_delay:
            self._log.info("store_writes_resumed")
            self._flush_delay = 0.0
        return None

    def _flush_store(self) -> StoreError | None:
        """Write metadata the store refused earlier; the error if it still fails."""
        recorder = self.config.recorder
        if recorder is None:
            return None
        try:
            meta = self._unstored_meta
            if meta is not None:
                recorder.session_started(meta)
                self._unstored_meta = None
                self._stored_native = meta.get("native_session_id")
            fields = self._unstored_fields
            if fields:
                recorder.session_updated(self.session_id, fields)
                self._unstored_fields = {}
                self._stored_native = fields.get("native_session_id", self._stored_native)
        except StoreError as exc:
            self._schedule_store_retry(exc)
            return exc
        return None

    def _store_fields(self, fields: Mapping[str, Any]) -> None:
        """Record changed metadata (model, native id); kept and retried if the store fails."""
        if self.config.recorder is None:
            return
        if fields.get("native_session_id", self) == self._stored_native and len(fields) == 1:
            # The id the backend reports in its handshake is usually the one the session's
            # metadata named when it was recorded at the start: no second write for it.
            self._unstored_fields.pop("native_session_id", None)
            return
        self._unstored_fields.update(fields)
        if self._unstored_meta is None and not self._unrecorded:
            self._flush_store()

    def _schedule_store_retry(self, error: StoreError) -> None:
        if self._flush_timer is not None:
            return
        self._flush_delay = min(max(self._flush_delay * 2, 0.25), 5.0)
        self._log.warning(
            "store_write_failed",
            error=str(error),
            unrecorded=len(self._unrecorded),
            retry_in=self._flush_delay,
        )
        self._timer_flush_token = next(self._tokens)
        self._flush_timer = send_after(
            self.actor_ref, _Timeout("flush", self._timer_flush_token), self._flush_delay
        )

    def _retry_store(self) -> None:
        if self.state is SessionState.ERROR:
            return
        self._record([])

    def _store_failed(self, error: StoreError, messages: list[Message]) -> None:
        """The store refused messages of the running query: its caller gets ``error``.

        The messages stay with the session (written once the store works
        again); a query that has not finished is abandoned, as on a timeout.
        """
        query = self._query
        if query is None or query.done:
            return
        handler = self.handler
        assert handler is not None
        failure = StoreError(
            f"session {self.session_id}: the answer could not be recorded ({error}); the "
            "session kept it and writes it once the store works again"
        )
        telemetry.end_span(query.span, {"beamagent.query.outcome": "store_failed"}, error=failure)
        query.span = None
        query.queue.clear()
        if query.consumer is not None:
            future, query.consumer = query.consumer, None
            self.reply_error(future, failure)
        elif query.collect is not None:
            future, _ = query.collect
            query.collect = None
            self.reply_error(future, failure)
        else:
            query.failure = failure  # the caller asks later (or is inside _collect now)
        query.cancel_timer()
        if any(handler.is_query_complete(m) for m in messages):
            query.done = True
            self._set_state(SessionState.READY)
            self._replay_postponed()
        else:
            self._abandon(query)

    def _deliver(self, messages: list[Message]) -> None:
        handler = self.handler
        assert handler is not None
        stamped = messages  # most carry the session's id already: nothing to copy
        session_id = self.session_id
        if self._tool_timings is not None:
            stamped = [self._stamp(m) for m in messages]
        else:
            for m in messages:  # a loop, not any(): no generator on every query's path
                if m.session_id != session_id:
                    stamped = [self._stamp(m) for m in messages]
                    break
        failed = self._record(stamped)
        if failed is not None:
            if not self._draining:
                self._store_failed(failed, stamped)
            for message in stamped:
                if self._draining and handler.is_query_complete(message):
                    self._end_drain()
            return
        query = self._query
        for message in stamped:
            if self._draining:
                if handler.is_query_complete(message):
                    self._end_drain()
                continue
            if query is None or query.done:
                continue  # unsolicited: recorded, nobody is waiting
            terminal = handler.is_query_complete(message)
            if query.collect is not None:
                query.collect[1].append(message)
            else:
                query.queue.append(message)
            if terminal:
                query.done = True
                self._set_state(SessionState.READY)
                if _log_enabled(logging.INFO):
                    self._log.info(
                        "query_completed",
                        query=query.id,
                        ms=int((time.monotonic() - query.started) * 1000),
                        subtype=message.subtype,
                    )
                if query.span is not None:
                    _end_query_span(query, message)
            if query.consumer is not None and query.queue:
                future, query.consumer = query.consumer, None
                query.cancel_timer()
                self.reply(future, query.queue.popleft())
            if terminal and query.collect is not None:
                future, collected = query.collect
                query.collect = None
                query.cancel_timer()
                self.reply(future, collected)
            if terminal:
                self._replay_postponed()

    def _end_drain(self) -> None:
        self._draining = False
        self._drain_token = 0
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        self._replay_postponed()

    # --- errors --------------------------------------------------------------------------------

    def _fail(self, error: SessionError) -> None:
        if self.state is SessionState.ERROR:
            return
        self._error = error
        if self._waking:
            self._wake_failed(error)
        self._set_state(SessionState.ERROR)
        self._log.warning("session_failed", reason=str(error.reason), error=str(error))
        self._generation += 1  # ignore whatever the dead transport still delivers
        self._shutdown_io(error)
        linger = self.config.error_linger
        if linger > 0 and self.config.lineage.ever_ready:
            self._arm("linger", linger)
        else:
            self._finish_error()

    def _finish_error(self) -> None:
        error = self._error or SessionError("session error")
        if self.config.lineage.ever_ready:
            self.stop_with(Crashed(error))  # abnormal: the supervisor restarts it
        else:
            self.stop_with(Shutdown(("start_failed", str(error))))

    def _fail_waiters(self, error: SessionError) -> None:
        query = self._query
        if query is not None and query.span is not None:
            telemetry.add_event(query.span, "session_failed", {"reason": str(error.reason)})
            telemetry.end_span(query.span, {"beamagent.query.outcome": "failed"}, error=error)
            query.span = None
        if query is not None:
            # The running query's prompt went to the backend that is now gone.
            cut_off = copy.copy(error)
            if type(cut_off) is SessionRestarting:
                cut_off = SessionError(str(error), reason=error.reason)
            cut_off.delivered = True
            if query.consumer is not None:
                future, query.consumer = query.consumer, None
                self.reply_error(future, cut_off)
            if query.collect is not None:
                future, _ = query.collect
                query.collect = None
                self.reply_error(future, cut_off)
        for future in self._ready_waiters:
            self.reply_error(future, error)
        self._ready_waiters = ()
        self._start_ready = None
        not_run = self._restart_error(error)
        for entry in self._postponed:
            entry.cancel_timer()
            self.reply_error(entry.future, not_run)
        self._postponed = ()
        for future, timer, _method in self._controls.values():
            if timer is not None:
                timer.cancel()
            self.reply_error(future, error)
        self._controls = {}

    def _check_usable(self) -> None:
        if self.state is SessionState.ERROR:
            assert self._error is not None
            raise self._restart_error(SessionError(str(self._error), reason=self._error.reason))

    def _postpone(
        self,
        call: Callable[[pykka.Future[Any]], Any],
        deadline: float | None = None,
        what: str | None = None,
    ) -> None:
        """Keep the call being handled (its caller's reply deferred) until the session is ready.

        With a ``deadline`` (a query's), a timer answers ``QueryTimeout`` then if the call
        is still waiting, and drops it: it is never sent (at most once).

        A new sequence each time, not an append: most sessions never postpone a call, and
        keep the shared empty tuple instead of a list of their own (rare, short queues).
        """
        token, timer = 0, None
        if deadline is not None:
            token = next(self._tokens)
            timer = send_after(
                self.actor_ref,
                _Timeout("postponed", token),
                max(deadline - time.monotonic(), 0.0),
            )
        entry = _Postponed(call, self.defer_reply(), deadline, token, timer, what)
        self._postponed = [*self._postponed, entry]

    def _postpone_if_not_ready(
        self, call: Callable[[pykka.Future[Any]], Any], deadline: float | None = None
    ) -> bool:
        """Queue a call until the session is ready (and not draining); True if queued.

        ``call`` gets the caller's (deferred) future when it is replayed. A
        hibernating session is woken: the call waits for the backend as during a
        reconnect. ``deadline``: see :meth:`_postpone`.
        """
        if not self._waits_for_ready():
            return False
        hibernating = self.state is SessionState.HIBERNATING
        self._postpone(call, deadline)
        if hibernating:
            self._wake()
        return True

    def _waits_for_ready(self) -> bool:
        """Whether a call now must wait for the session to be ready (and not draining)."""
        state = self.state
        return (
            state is SessionState.HIBERNATING
            or state is SessionState.CONNECTING
            or state is SessionState.INITIALIZING
            or (self._draining and state is SessionState.READY)
        )

    def _postponed_timeout(self, what: str | None = None) -> QueryTimeout:
        if what is not None:
            return QueryTimeout(
                f"{what} on session {self.session_id} timed out while waiting for the session "
                f"to be ready ({self.state.value}); it was not sent"
            )
        return QueryTimeout(
            f"query on session {self.session_id} timed out while waiting for the session to "
            f"be ready ({self.state.value}); its prompt was not sent"
        )

    def _postponed_expired(self, token: int) -> None:
        """A postponed query's deadline passed before the session was ready: answer, drop it."""
        for entry in self._postponed:
            if entry.token == token:
                entry.timer = None
                self._postponed = [other for other in self._postponed if other is not entry]
                self.reply_error(entry.future, self._postponed_timeout(entry.what))
                return

    # --- hibernation ----------------------------------------------------------------------------

    def _touch(self) -> None:
        """Traffic with the backend: idleness counts from now (one timer, re-armed lazily)."""
        self._last_activity = time.monotonic()
        if (
            self._idle_timer is None
            and self.config.idle_timeout is not None
            and self.state is not SessionState.HIBERNATING
        ):
            self._arm_idle(self.config.idle_timeout)

    def _arm_idle(self, seconds: float) -> None:
        self._idle_token = next(self._tokens)
        self._idle_timer = send_after(self.actor_ref, _Timeout("idle", self._idle_token), seconds)

    def _idle_check(self) -> None:
        """The idle timer fired: hibernate if idle long enough, else look again later.

        The timer is not moved at each call (cancelling one is not free with
        thousands pending); it fires, and is re-armed for what is left.
        """
        timeout = self.config.idle_timeout
        if timeout is None or self.state in (SessionState.ERROR, SessionState.HIBERNATING):
            return
        blocker = self._hibernation_blocker()
        if blocker is not None:
            self._log.debug("hibernation_deferred", blocker=blocker)
            self._arm_idle(timeout)  # idleness will count from the end of that work
            return
        remaining = self._last_activity + timeout - time.monotonic()
        if remaining > 0:
            self._arm_idle(remaining)
            return
        self._hibernate()

    def _hibernation_blocker(self) -> str | None:
        """What is under way that needs the backend (or its answer), if anything."""
        if self.state is not SessionState.READY:
            return self.state.value  # a query, a (re)connect
        if self._draining:
            return "draining"
        if self._calls_pending:
            return "callback"  # a permission request or a hook awaits the user's answer
        if self._controls:
            return "control_request"
        if self._postponed or self._ready_waiters:
            return "waiting_calls"
        return None

    def _hibernate(self) -> None:
        """Stop the backend; keep the identity, the lineage and the mailbox."""
        handler, transport = self.handler, self.transport
        assert handler is not None
        self._dormant = _handler_facts(handler)
        if transport is not None:
            for key in transport.info():  # the pid and the like named the process now gone
                self._info.pop(key, None)
        self._generation += 1  # whatever the closing transport still reports is dropped
        self._buffer = bytearray()
        self._cancel_timer()
        self.handler = None
        self.transport = None
        self._hibernations += 1
        self._set_state(SessionState.HIBERNATING)
        closing = time.monotonic()
        if transport is not None:
            try:
                transport.close()  # as on stop: EOF, then the process group is ended and reaped
            except Exception:
                self._log.exception("transport_close_failed")
        self._log.info(
            "session_hibernated",
            idle_timeout=self.config.idle_timeout,
            hibernations=self._hibernations,
            native_session_id=self._native_id(),
            close_ms=int((time.monotonic() - closing) * 1000),
        )

    def _remember_setting(self, key: str, value: str) -> None:
        """A model or permission mode set while hibernating: the woken backend starts with it."""
        setattr(self.config.lineage, key, value)
        if self._dormant is not None:
            self._dormant[key] = value

    def _wake(self) -> None:
        """Start the backend of a hibernating session again: a reconnect that resumes."""
        self._log.info("session_waking", native_session_id=self._native_id())
        self._waking = True
        self._wake_started = time.monotonic()
        self._set_state(SessionState.CONNECTING)
        try:
            self._open_backend()
        except SessionError as exc:  # e.g. the executable cannot be started
            self._fail(exc)
            return
        except BeamAgentError as exc:  # e.g. the CLI was uninstalled meanwhile
            self._fail(SessionError(str(exc), reason="wake_failed"))
            return
        self._dormant = None
        self._touch()

    def _woke(self) -> None:
        self._waking = False
        self._log.info(
            "session_woke",
            ms=int((time.monotonic() - self._wake_started) * 1000),
            native_session_id=self._native_id(),
        )

    def _wake_failed(self, error: SessionError) -> None:
        """The calls that wait for the wake get its error: typed, and not carried out."""
        self._waking = False
        self._log.warning("session_wake_failed", error=str(error))
        failure = type(error)(
            f"session {self.session_id} could not resume its backend after hibernating: {error}",
            reason=error.reason,
            delivered=False,
        )
        postponed, self._postponed = self._postponed, ()
        for entry in postponed:
            entry.cancel_timer()
            self.reply_error(entry.future, failure)

    # --- the API the handle calls (through ProxyCall) ---------------------------------------------

    def await_ready(self) -> Any:
        """Answer once the session is ready (or raise its start error)."""
        self._check_usable()
        if self.state in (SessionState.READY, SessionState.ACTIVE_QUERY, SessionState.HIBERNATING):
            return self._session_info()
        self._ready_waiters = [*self._ready_waiters, self.defer_reply()]
        return _DEFERRED

    @_batched
    def send_query(
        self, prompt: str, params: Mapping[str, Any] | None = None, trace_context: Any = None
    ) -> Any:
        """Start a query; returns its ``QueryRef``.

        ``trace_context``: the caller's OpenTelemetry context, the query span's parent.
        """
        self._check_usable()
        if self._postpone_if_not_ready(
            lambda future: self._query_ref(self._start_query(prompt, params, future, trace_context))
        ):
            return _DEFERRED
        return self._query_ref(
            self._start_query(prompt, params, self.caller_future(), trace_context)
        )

    def _query_ref(self, query: _Query) -> QueryRef:
        return QueryRef(self.session_id, query.id, self.config.lineage.incarnations)

    def _start_query(
        self,
        prompt: str,
        params: Mapping[str, Any] | None,
        caller: pykka.Future[Any] | None = None,
        trace_context: Any = None,
    ) -> _Query:
        if isinstance(caller, CallFuture) and caller.abandoned:
            raise QueryTimeout(
                f"session {self.session_id}: the caller stopped waiting before the query "
                "started; its prompt was not sent"
            )
        self._check_usable()
        if self.state is SessionState.ACTIVE_QUERY:
            raise QueryInProgress(
                f"session {self.session_id} is already running a query; "
                "wait for it or interrupt() it"
            )
        if not isinstance(prompt, str):
            raise InvalidOption(f"prompt must be a str; got {type(prompt).__name__}")
        if not prompt.isascii():
            try:
                prompt.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidOption(
                    f"prompt is not valid Unicode text: {exc.reason} at index {exc.start} "
                    f"({prompt[exc.start : exc.end]!r}); decode bytes with errors='replace'"
                ) from None
        handler = self.handler
        assert handler is not None
        defaults = self.config.query_defaults
        # The handle's params are a dict of the caller's own (its **params): no copy of them
        # when there are no defaults to merge in.
        merged = {**defaults, **(params or {})} if defaults or type(params) is not dict else params
        output = handler.encode_query(prompt, merged)
        self._query_seq += 1
        query = _Query(self._query_seq)
        self._query = query
        self._set_state(SessionState.ACTIVE_QUERY)
        # The prompt was checked above and the session id is a str (SessionConfig):
        # nothing for the validating constructor to check.
        self._pending_user = _new_message(
            MessageType.USER,
            True,
            content=prompt,
            session_id=self.session_id,
            uuid=_new_uuid(),
            timestamp=time.time_ns() // 1_000_000,
        )
        if _log_enabled(logging.INFO):  # the event's fields cost even when dropped
            self._log.info("query_sent", query=query.id, chars=len(prompt))
        if telemetry.ENABLED:
            if telemetry.tracing():  # no attributes built for no span
                query.span = telemetry.start_span(
                    "beamagent.query",
                    {
                        "beamagent.session_id": self.session_id,
                        "beamagent.backend": self.config.backend,
                        "beamagent.query_id": query.id,
                        "beamagent.incarnation": self.config.lineage.incarnations,
                        "beamagent.prompt_chars": len(prompt),
                        "gen_ai.request.model": handler.model,
                    },
                    parent=trace_context,
                )
            access = self.config.options.get("tool_server")
            if isinstance(access, ToolServerAccess):  # the CLI's tool calls: the query's children
                access.calls.query_span = query.span  # None without a span: never a stale one
        _mark_delivered(caller)
        self._apply(output)
        return query  # a blocking query needs no QueryRef: send_query makes one

    def receive_message(self, ref: QueryRef, timeout: float | None = None) -> Any:
        """The next message of query ``ref``; parks the caller until one arrives."""
        self._check_usable()
        query = self._query
        if isinstance(ref, QueryRef) and ref.incarnation != self.config.lineage.incarnations:
            raise SessionError(
                f"session {self.session_id} restarted; query {ref.id} was lost with its backend",
                reason="restarted",
            )
        if not isinstance(ref, QueryRef) or query is None or ref.id != query.id:
            raise BadQueryRef(f"{ref!r} is not the current query of session {self.session_id}")
        if query.queue:
            return query.queue.popleft()
        if query.failure is not None:
            failure, query.failure = query.failure, None
            raise failure
        if query.interrupted:
            query.interrupted = False
            raise Interrupted(f"query {query.id} of session {self.session_id} was interrupted")
        if query.done:
            raise QueryComplete(f"query {query.id} of session {self.session_id} is complete")
        if query.consumer is not None or query.collect is not None:
            raise QueryInProgress(
                f"query {query.id} of session {self.session_id} already has a consumer"
            )
        query.consumer = self.defer_reply()
        query.consumer_token = next(self._tokens)
        if timeout is not None:
            query.timer = send_after(
                self.actor_ref, _Timeout("consumer", query.consumer_token), timeout
            )
        return _DEFERRED

    @_batched
    def query(
        self,
        prompt: str,
        params: Mapping[str, Any] | None,
        timeout: float | None,
        trace_context: Any = None,
    ) -> Any:
        """Run a query and answer with all its messages (terminal one included).

        ``trace_context``: the caller's OpenTelemetry context, the query span's parent.
        """
        self._check_usable()
        # The timeout counts from now, whether the query starts now or is postponed.
        deadline = None if timeout is None else time.monotonic() + timeout
        # Asked first: a ready session (the usual case) builds no closure for a replay.
        if self._waits_for_ready() and self._postpone_if_not_ready(
            lambda future: self._collect(prompt, params, deadline, future, True, trace_context),
            deadline,
        ):
            return _DEFERRED
        return self._collect(prompt, params, deadline, self.caller_future(), False, trace_context)

    def _collect(
        self,
        prompt: str,
        params: Mapping[str, Any] | None,
        deadline: float | None,
        future: pykka.Future[Any] | None,
        deferred: bool = True,
        trace_context: Any = None,
    ) -> Any:
        self._start_query(prompt, params, future, trace_context)
        if self.state is SessionState.ERROR and self._error is not None:
            raise self._error  # the prompt could not be sent (e.g. a cassette diverged)
        query = self._query
        assert query is not None
        if query.failure is not None:
            failure, query.failure = query.failure, None
            raise failure
        if query.done:  # the backend answered synchronously
            collected = list(query.queue)
            query.queue.clear()
            return collected
        collected = list(query.queue)
        query.queue.clear()
        if not deferred or future is None:
            future = self.defer_reply()
        query.collect = (future, collected)
        query.consumer_token = next(self._tokens)
        if deadline is None:
            return _DEFERRED
        # Arm the timeout once the output the backend gave at once (the local agent answers
        # within _start_query) has been handled: a query it completes never needs the
        # timer. Scheduling and cancelling one wakes the timer thread twice: 20-35 us of a
        # local query on a 2-core machine. The deadline counts from the call (see query).
        query.deadline = deadline
        if self._sync_events is not None:
            self._arm_after_batch = query  # at the end of this batch (see _batched)
        else:
            self._arm_collect(query)
        return _DEFERRED

    @_batched
    def interrupt(self) -> None:
        """Interrupt the running query; its consumer gets ``Interrupted``."""
        self._check_usable()
        query = self._query
        if self.state is not SessionState.ACTIVE_QUERY or query is None or query.done:
            raise NoActiveQuery(f"session {self.session_id} has no query running")
        self._abandon(query)
        query.interrupted = True
        error = Interrupted(f"query {query.id} of session {self.session_id} was interrupted")
        if query.consumer is not None:
            future, query.consumer = query.consumer, None
            self.reply_error(future, error)
            query.interrupted = False
        if query.collect is not None:
            future, _ = query.collect
            query.collect = None
            self.reply_error(future, error)
            query.interrupted = False

    @_batched
    def abort(self) -> None:
        """Abort the running work: the backend's abort if it has one, else interrupt."""
        self._check_usable()
        if self.state is SessionState.HIBERNATING:
            return self.interrupt()  # nothing runs: NoActiveQuery, and no need to wake
        handler = self.handler
        assert handler is not None
        output = handler.encode_abort()
        if output is not None and self.state is SessionState.ACTIVE_QUERY:
            self._apply(output)
        self.interrupt()

    def _abandon(self, query: _Query) -> None:
        """Stop waiting for ``query``: interrupt the backend, drop its late output."""
        handler = self.handler
        assert handler is not None
        output = handler.encode_interrupt()
        self._record([])  # the prompt of an abandoned query is history too
        query.done = True
        query.queue.clear()
        query.cancel_timer()
        self._draining = True
        self._drain_token = next(self._tokens)
        self._drain_timer = send_after(
            self.actor_ref, _Timeout("drain", self._drain_token), self.config.drain_timeout
        )
        self._set_state(SessionState.READY)
        self._log.info("query_interrupted", query=query.id, native=output is not None)
        if query.span is not None:
            telemetry.end_span(
                query.span, {"beamagent.query.outcome": "interrupted"}, error="Interrupted"
            )
            query.span = None
        if output is not None:
            self._apply(output)

    def health(self) -> str:
        """The state name."""
        return self.state.value

    def session_info(self) -> dict[str, Any]:
        """Session id, backend, state, model, permission mode, plus backend info."""
        return self._session_info()

    def _session_info(self) -> dict[str, Any]:
        handler = self.handler
        info: dict[str, Any] = {}
        if self.transport is not None:
            info.update(self.transport.info())
        # Lists may be shared by many sessions (the local backend's, the runtime's
        # no-tools info): each caller gets copies of its own.
        for facts in (self._info, self.config.info):
            for key, value in facts.items():
                info[key] = list(value) if type(value) is list else value
        if handler is not None:
            info.update(_handler_facts(handler))
        else:  # hibernating: what the dropped handler said
            info.update(self._dormant or dict.fromkeys(_FACTS))
        info.update(
            {
                "session_id": self.session_id,
                "backend": self.config.backend,
                "state": self.state.value,
                "capabilities": sorted(c.value for c in self.config.handler_cls.capabilities),
                "native_session_id": self._native_id(),
                "incarnation": self.config.lineage.incarnations,
                "started_at": self._started_at,
                "route_decision": self.config.lineage.route_decision,
                "hibernations": self._hibernations,
                "resumed": self._resumed,
            }
        )
        if self._error is not None:
            info["error"] = str(self._error)
        return info

    @_batched
    def set_model(self, model: str) -> str:
        """Switch model (on the live backend where it supports it); returns it."""
        self._check_usable()
        if not isinstance(model, str) or not model:
            raise InvalidOption(f"model must be a non-empty str; got {model!r}")
        if self.state is SessionState.HIBERNATING:
            self._remember_setting("model", model)  # the woken backend starts with it
            self._store_fields({"model": model})
            return model
        handler = self.handler
        assert handler is not None
        output = handler.set_model(model)
        handler.model = model
        self.config.lineage.model = model
        if output is not None:
            self._apply(output)
        self._store_fields({"model": model})
        return model

    @_batched
    def set_permission_mode(self, mode: str) -> str:
        """Change the permission mode (on the live backend where it supports it)."""
        self._check_usable()
        handler_cls = self.config.handler_cls
        if Capability.PERMISSION_MODE not in handler_cls.capabilities:
            raise UnsupportedCapability(self.config.backend, Capability.PERMISSION_MODE.value)
        if not isinstance(mode, str) or not mode:
            raise InvalidOption(f"permission mode must be a non-empty str; got {mode!r}")
        modes = handler_cls.permission_modes
        if modes is not None and mode not in modes:
            raise InvalidOption(
                f"backend {self.config.backend!r} has no permission mode {mode!r}; "
                f"its modes: {', '.join(sorted(modes))}"
            )
        if self.state is SessionState.HIBERNATING:
            self._remember_setting("permission_mode", mode)  # the woken backend starts with it
            return mode
        handler = self.handler
        assert handler is not None
        output = handler.set_permission_mode(mode)
        handler.permission_mode = mode
        self.config.lineage.permission_mode = mode
        if output is not None:
            self._apply(output)
        return mode

    @_batched
    def send_control(self, method: str, params: Mapping[str, Any], timeout: float | None) -> Any:
        """A backend-native control request, else the universal fallback.

        Postponed while the backend (re)connects; a hibernating session answers
        the universal controls itself and wakes for any other.
        """
        self._check_usable()
        if self.state is SessionState.HIBERNATING and method in UNIVERSAL_CONTROLS:
            return self._universal_control(method, params)
        if self.state in (
            SessionState.HIBERNATING,
            SessionState.CONNECTING,
            SessionState.INITIALIZING,
        ):
            # Its timeout counts from now: the time spent waiting is taken from it.
            deadline = None if timeout is None else time.monotonic() + timeout
            self._postpone(
                lambda future: self._send_control(
                    method,
                    params,
                    None if deadline is None else max(deadline - time.monotonic(), 0.0),
                    future,
                ),
                deadline,
                f"control request {method!r}",
            )
            if self.state is SessionState.HIBERNATING:
                self._wake()
            return _DEFERRED
        return self._send_control(method, params, timeout, None)

    def _send_control(
        self,
        method: str,
        params: Mapping[str, Any],
        timeout: float | None,
        future: pykka.Future[Any] | None,
    ) -> Any:
        handler = self.handler
        assert handler is not None
        request_id = f"ctl_{next(self._control_ids)}"
        output = handler.handle_control(method, dict(params), request_id)
        if output is not None:
            if future is None:
                future = self.defer_reply()
            # The caller waits at most ``timeout``; a late reply is dropped at the timer.
            timer = (
                None
                if timeout is None
                else send_after(self.actor_ref, _Timeout("control", 0, request_id), timeout)
            )
            self._controls[request_id] = (future, timer, method)
            self._apply(output)
            return _DEFERRED
        return self._universal_control(method, params)

    def _universal_control(self, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        if method == "setModel":
            return {"model": self.set_model(str(params.get("model", "")))}
        if method == "setPermissionMode":
            return {"permission_mode": self.set_permission_mode(str(params.get("mode", "")))}
        if method == "setMaxThinkingTokens":
            value = params.get("max_thinking_tokens", params.get("maxThinkingTokens"))
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidOption(f"max_thinking_tokens must be an int >= 0; got {value!r}")
            self._info["max_thinking_tokens"] = value
            return {"max_thinking_tokens": value}
        if method == "stopTask":
            if self.state is SessionState.ACTIVE_QUERY:
                self.interrupt()
                return {"stopped": True}
            return {"stopped": False}
        raise UnknownControlMethod(method)

    def _control_reply(self, request_id: Any, result: Any, error: str | None) -> None:
        entry = self._controls.pop(str(request_id), None)
        if entry is None:
            self._log.debug("control_reply_unmatched", request_id=request_id)
            return
        future, timer, method = entry
        if timer is not None:
            timer.cancel()
        if error is None:
            self.reply(future, result)
        elif "unknown" in error.lower():
            self.reply_error(future, UnknownControlMethod(method))
        else:
            self.reply_error(
                future, SessionError(f"control request {method!r} failed: {error}", reason=error)
            )


_FACTS = ("model", "permission_mode", "adapter_module")


def _end_query_span(query: _Query, result: Message) -> None:
    """End ``query``'s span with what its terminal message says: usage, cost, outcome."""
    usage = result.usage or {}
    values = {
        "beamagent.query.outcome": result.subtype or "completed",
        "gen_ai.response.model": result.model,
        "gen_ai.usage.input_tokens": _token_count(usage, "input_tokens", "prompt_tokens"),
        "gen_ai.usage.output_tokens": _token_count(usage, "output_tokens", "completion_tokens"),
        "beamagent.cost_usd": result.total_cost_usd,
        "beamagent.num_turns": result.num_turns,
    }
    error = None
    if result.is_error:
        error = f"{result.subtype or 'error'}"
    telemetry.end_span(query.span, values, error=error)
    query.span = None


def _token_count(usage: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _handler_facts(handler: BackendHandler) -> dict[str, Any]:
    """What ``session_info()`` shows of a handler (kept when it is dropped to hibernate)."""
    return {
        **handler.info(),
        "model": handler.model,
        "permission_mode": handler.permission_mode,
        "adapter_module": type(handler).__module__,
    }


_DEFERRED: Any = object()
"""Returned by API methods whose reply was deferred (the loop ignores the value)."""
