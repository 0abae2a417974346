"""The backend handler protocol and the transports it runs over.

A backend is two things: a *transport* that moves bytes (an in-process peer,
a subprocess's stdio, an HTTP stream; an in-process peer may hand over
ready-made messages instead, see :class:`Messages`) and a *handler* that is the
only backend-specific code. The session actor owns both: transport events come in
as messages, the handler turns them into canonical messages and actions, and
the actor owns queueing, the single consumer, timeouts and state.

Handlers are plain objects called from the session actor's thread only; they
never block and never touch the actor. Transports call their ``sink`` from
the shared I/O loop's thread (or, in-process, synchronously).
"""

from __future__ import annotations

import abc
import collections
import contextlib
import enum
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, ClassVar, cast

import attrs

from beamagent.backends.io_loop import IoLease, acquire_io_loop, open_pidfd, wait_process_exit
from beamagent.backends.process_group import signal_group, terminate_group_async
from beamagent.backends.replay import transcript_preamble
from beamagent.capabilities import Capability
from beamagent.errors import TransportError
from beamagent.log import get_logger
from beamagent.messages import Message, MessageType

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "FORK_NATIVE_OPTION",
    "BackendHandler",
    "Connected",
    "Data",
    "Disconnected",
    "Exited",
    "HandlerOutput",
    "InProcessTransport",
    "Messages",
    "OffThreadCall",
    "SessionState",
    "SubprocessTransport",
    "Transport",
    "TransportEvent",
    "TransportSink",
]

log = get_logger(__name__)


class SessionState(enum.StrEnum):
    """The states of a session (BeamAgent's gen_statem states)."""

    CONNECTING = "connecting"
    INITIALIZING = "initializing"
    READY = "ready"
    ACTIVE_QUERY = "active_query"
    ERROR = "error"
    HIBERNATING = "hibernating"
    """Idle: the backend was stopped; the next call that needs it starts it again."""


# --- transport events ------------------------------------------------------------------


@attrs.frozen
class Connected:
    """The transport is up (process spawned, socket open)."""

    info: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Data:
    """Bytes from the backend (stdout, a stream)."""

    data: bytes


@attrs.frozen
class Messages:
    """Canonical messages from a peer that builds them itself, in-process: nothing to parse.

    The session hands them to :meth:`BackendHandler.handle_messages`. No CLI
    transport sends this event; the ``local`` backend's default transport does.
    """

    messages: Sequence[Message]


@attrs.frozen
class Disconnected:
    """The transport closed without a process exit status (e.g. a socket)."""

    reason: str


@attrs.frozen
class Exited:
    """The backend process exited with ``status`` (negative: killed by a signal)."""

    status: int
    stderr_tail: str = ""


TransportEvent = Connected | Data | Messages | Disconnected | Exited
TransportSink = Callable[[TransportEvent], None]
"""Where a transport delivers its events; the session actor makes it a ``tell``."""


# --- handler ---------------------------------------------------------------------------


@attrs.frozen
class OffThreadCall:
    """Work a handler must not do on the session's thread: a user callback.

    The session runs ``fn()`` on a thread of its own (a permission handler may
    block for as long as a human takes to answer), then hands the outcome back
    to the handler's :meth:`BackendHandler.on_call_result` on the session's
    thread, with ``key`` to say which call it was.
    """

    key: Any
    fn: Callable[[], Any] = attrs.field(repr=False)


# No weakref slot: see _OpenOutput (an output is a value; nothing refers to one weakly).
@attrs.frozen(weakref_slot=False)
class HandlerOutput:
    """What a handler asks the session actor to do.

    Attributes:
        messages: canonical messages for the consumer, in order.
        writes: bytes to send on the transport, in order.
        state: a state transition (``initializing`` after a handshake was
            sent, ``ready`` once it completed).
        info: updates merged into ``session_info()`` (init data: models,
            commands, agents, account, native session id...).
        replies: answers to outbound control requests, ``(request_id, result,
            error)``; the actor hands them to the waiting ``send_control`` caller.
        error: a fatal protocol problem; the session goes to ``error``.
        calls: user callbacks to run off the session's thread (permission
            handlers, hooks); each result comes back through ``on_call_result``.
    """

    messages: Sequence[Message] = ()
    writes: Sequence[bytes] = ()
    state: SessionState | None = None
    info: Mapping[str, Any] | None = None
    replies: Sequence[tuple[Any, Any, str | None]] = ()
    error: str | None = None
    calls: Sequence[OffThreadCall] = ()


NOTHING = HandlerOutput()


class _OpenOutput:
    """A :class:`HandlerOutput` under construction: the same slots, but plain ones.

    A frozen class's slots are set through descriptor calls (its ``__setattr__``
    refuses); a plain class's through ``STORE_ATTR``, several times cheaper. ``_output``
    fills one of these and makes it a ``HandlerOutput`` by assigning ``__class__`` (as
    ``beamagent.messages`` builds messages): twice per in-process query.
    """

    __slots__ = tuple(f.name for f in attrs.fields(HandlerOutput))


def _output(messages: Sequence[Message] = (), writes: Sequence[bytes] = ()) -> HandlerOutput:
    """``HandlerOutput(messages=messages, writes=writes)``, built without its ``__init__``."""
    output: Any = object.__new__(_OpenOutput)
    output.messages = messages
    output.writes = writes
    output.state = None
    output.info = None
    output.replies = ()
    output.error = None
    output.calls = ()
    output.__class__ = HandlerOutput
    return cast(HandlerOutput, output)


assert _output(()) == HandlerOutput(), "_output must set every field (the layouts must match)"


_SET_EVENT_MESSAGES: Callable[[Any, Any], None] = Messages.messages.__set__  # type: ignore[attr-defined]


def _messages_event(messages: Sequence[Message]) -> Messages:
    """``Messages(messages)``, built without the frozen class's ``__init__``."""
    event: Messages = object.__new__(Messages)
    _SET_EVENT_MESSAGES(event, messages)
    return event


FORK_NATIVE_OPTION = "fork_native_session_id"
"""The option through which the runtime asks a handler to fork a native conversation.

When a stored fork (``extra.fork.parent_session_id``) is started with
``start_session(resume=fork_id)`` on its parent's backend and the handler lists
this option in :meth:`BackendHandler.option_names`, the runtime passes the
parent's native session id under it: the handler forks that conversation
natively (Claude ``--resume <parent> --fork-session``, Codex ``thread/fork``)
and reports the fork's own new native id as usual. A native fork that turns
out impossible makes :meth:`BackendHandler.resume_natively` answer False, and
the session replays the stored history instead.
"""


class BackendHandler(abc.ABC):
    """Backend-specific protocol logic; one instance per session incarnation.

    Subclasses set ``name`` and ``capabilities`` and implement
    :meth:`open_transport`, :meth:`encode_query` and :meth:`handle_data`.
    Everything else has a sensible default. All methods run in the session
    actor's thread and must not block.

    **Python tools** (``start_session(tools=[...])``, see ``docs/tools.md``) reach
    a handler in one of two ways, chosen by the options it lists in
    :meth:`option_names`:

    * ``tool_server``: the runtime sets this option to a
      :class:`~beamagent.tools.ToolServerAccess` -- the tool server's ``url``
      (``http://127.0.0.1:PORT/mcp``, MCP over streamable HTTP), the session's
      bearer ``token``, the MCP ``server_name`` and the ``tool_names``. The
      handler configures its CLI to reach that server: the token only through
      the CLI's environment (``access.token_env``) or a private file, never its
      command line or a log. It also configures the CLI not to ask before
      calling those tools (Claude Code: ``--allowedTools mcp__<server>__<tool>``;
      Codex: ``default_tools_approval_mode = "approve"``), and answers Allow,
      without asking the permission handler, should the CLI ask anyway: the
      tool server asks the session's ``permission_handler`` itself, exactly once
      per call. Users never set this option.
    * ``tools``: the handler gets the session's :class:`~beamagent.tools.ToolSet`
      and runs the calls itself (the ``openai`` backend's tool loop, through
      :func:`beamagent.tools.invoke`).

    A handler that lists neither gets no tools: the runtime's tools are not
    given to its sessions, and ``start_session(tools=[...])`` on it raises
    ``UnsupportedCapability``. Backends that take tools also declare
    ``Capability.IN_PROCESS_MCP``.
    """

    name: ClassVar[str] = "abstract"
    """The backend name (``local``, ``claude``...)."""
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    """What this backend really supports (checked by routing and by the session)."""
    complete_types: ClassVar[frozenset[MessageType]] = frozenset({MessageType.RESULT})
    """Message types that end a query (BeamAgent: ``result``; some backends ``error`` too)."""
    line_framed: ClassVar[bool] = True
    """Data is newline-framed: the actor skips parsing until a newline arrives."""
    permission_modes: ClassVar[frozenset[str] | None] = None
    """The permission modes the backend knows (``set_permission_mode`` and the
    ``permission_mode`` option are checked against them); None: not checked here.
    A backend without ``Capability.PERMISSION_MODE`` refuses every mode."""
    hibernates: ClassVar[bool] = False
    """A new handler, built from the session's lineage (native id, model, permission
    mode, ``backend_state``), continues the conversation: an idle session may stop
    this backend and start it again on the next call (``idle_timeout``)."""

    _replay_preamble: str | None = None
    """The transcript preamble :meth:`replay_history` built, until the first query takes it."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = dict(options)
        self.model: str | None = self.options.get("model")
        self.permission_mode: str | None = self.options.get("permission_mode")
        # Set by the session actor (not user options): the canonical session id,
        # and a dict that outlives restarts (e.g. a conversation kept client-side).
        self.session_id: str | None = self.options.pop("session_id", None)
        state = self.options.pop("backend_state", None)
        self.backend_state: dict[str, Any] = state if state is not None else {}

    @classmethod
    def option_names(cls) -> frozenset[str]:
        """The options this backend accepts (others raise ``InvalidOption``)."""
        return frozenset({"model", "permission_mode", "cwd"})

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """Whether the backend's prerequisites are present, and why not."""
        return True, "available"

    @abc.abstractmethod
    def open_transport(self) -> Transport:
        """Create (not start) the transport this session talks over."""

    def on_connected(self, event: Connected) -> HandlerOutput:
        """The transport is up: start the handshake, or declare the session ready."""
        return HandlerOutput(state=SessionState.READY)

    # --- context across restarts and forks ---------------------------------------------

    def resume_natively(self) -> bool:
        """Whether this handler continues the stored conversation through the backend's own resume.

        True when, as constructed from its options (a ``native_session_id`` it
        can load, a ``fork_native_session_id`` it can fork), the backend itself
        holds the earlier turns. The session asks once the handshake is done
        (so a handler whose native resume failed during it can answer False)
        and, when the answer is False and the session has stored history,
        calls :meth:`replay_history` before the first query.
        ``session_info()["resumed"]`` is ``"native"`` when this is True.
        """
        return False

    def replay_history(self, history: Sequence[Message]) -> None:
        """Take the session's visible stored history, to continue its conversation.

        Called by the session before the first query of an incarnation, when the
        session has stored history (``resume=``, a fork, a restart after a crash,
        a wake from hibernation) and :meth:`resume_natively` is False. ``history``
        is the active thread's visible messages (after revert views), the most
        recent :data:`~beamagent.backends.replay.REPLAY_LOAD_LIMIT` at most.

        The default builds a transcript preamble (bounded: see
        :mod:`beamagent.backends.replay`) that :meth:`take_replay_prompt` puts
        before the next prompt, once; CLI handlers call that in
        :meth:`encode_query`. A backend that keeps its conversation client-side
        (``openai``) overrides this to rebuild it instead.
        """
        self._replay_preamble = transcript_preamble(history)

    def take_replay_prompt(self, prompt: str) -> str:
        """``prompt`` with the pending replay preamble before it (once; then just ``prompt``)."""
        preamble = self.take_replay_preamble()
        return prompt if preamble is None else preamble + prompt

    def take_replay_preamble(self) -> str | None:
        """The pending replay preamble alone (once), for a handler that sends it as a
        content block of its own before the prompt's; None when there is none."""
        preamble, self._replay_preamble = self._replay_preamble, None
        return preamble

    @property
    def replay_pending(self) -> bool:
        """Whether a replay preamble waits for the next query."""
        return self._replay_preamble is not None

    @abc.abstractmethod
    def encode_query(self, prompt: str, params: Mapping[str, Any]) -> HandlerOutput:
        """Bytes that start a query (and, optionally, messages such as the user turn)."""

    @abc.abstractmethod
    def handle_data(self, buffer: bytes) -> tuple[HandlerOutput, bytes]:
        """Parse as much of ``buffer`` as possible; return the output and the leftover."""

    def handle_messages(self, messages: Sequence[Message]) -> HandlerOutput:
        """Ready-made messages from an in-process peer (a :class:`Messages` event).

        The default passes them on as they are; a handler whose transport never
        sends :class:`Messages` (every CLI's) never gets this call.
        """
        return _output(messages=messages)

    def is_query_complete(self, message: Message) -> bool:
        """Whether ``message`` is the terminal message of the current query."""
        return message.type in self.complete_types

    def encode_interrupt(self) -> HandlerOutput | None:
        """Bytes that interrupt the running query; None if the backend cannot."""
        return None

    def encode_abort(self) -> HandlerOutput | None:
        """Bytes that abort the running work; None to fall back to interrupt."""
        return None

    def set_model(self, model: str) -> HandlerOutput | None:
        """Apply a model switch to the live backend; None: just remember it."""
        return None

    def set_permission_mode(self, mode: str) -> HandlerOutput | None:
        """Apply a permission mode to the live backend; None: just remember it."""
        return None

    def handle_control(
        self, method: str, params: Mapping[str, Any], request_id: str
    ) -> HandlerOutput | None:
        """Send a backend-native control request; its answer comes back as a reply.

        Return None when the backend has no native form of ``method`` (the
        universal fallback then handles it).
        """
        return None

    def on_call_result(self, key: Any, result: Any, error: BaseException | None) -> HandlerOutput:
        """An :class:`OffThreadCall` finished: encode its outcome (e.g. a permission answer).

        ``error`` is the exception ``fn`` raised, if it did (then ``result`` is None).
        """
        return NOTHING

    def info(self) -> dict[str, Any]:
        """Backend details merged into ``session_info()``."""
        return {}


# --- transports ------------------------------------------------------------------------


class Transport(abc.ABC):
    """Moves bytes between a session and its backend.

    ``start(sink)`` begins delivering events to ``sink`` (first ``Connected``,
    then ``Data``..., finally ``Exited`` or ``Disconnected``). ``send`` must
    not block for long; ``close`` releases every thread and process.
    """

    @abc.abstractmethod
    def start(self, sink: TransportSink) -> None:
        """Start the transport; raise ``TransportError`` if it cannot start."""

    @abc.abstractmethod
    def send(self, data: bytes) -> None:
        """Send bytes; raise ``TransportError`` if the transport is gone."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the backend and release every resource. Idempotent."""

    def info(self) -> dict[str, Any]:
        """Transport details for ``session_info()`` (e.g. the pid)."""
        return {}


class InProcessPeer(abc.ABC):
    """The far end of an :class:`InProcessTransport` (e.g. the local agent)."""

    @abc.abstractmethod
    def attach(self, emit: Callable[[bytes], None], exit: Callable[[int], None]) -> None:
        """Receive the callables through which the peer sends bytes and exits."""

    @abc.abstractmethod
    def receive(self, data: bytes) -> None:
        """Bytes from the session; may call ``emit`` synchronously or later."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """The session closed the transport."""


_IN_PROCESS_LOCK = threading.Lock()


class InProcessTransport(Transport):
    """A transport to a peer living in this process: no thread, no I/O of its own."""

    def __init__(self, peer: InProcessPeer) -> None:
        self._peer = peer
        self._sink: TransportSink | None = None
        # Shared by every in-process transport: it only guards the close flag, and a lock of
        # its own was one more object per idle session for the cyclic GC to walk.
        self._lock = _IN_PROCESS_LOCK
        self._closed = False

    def start(self, sink: TransportSink) -> None:
        self._sink = sink
        self._peer.attach(self._emit, self._exit)
        sink(Connected({"transport": "in_process"}))

    def _emit(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None and not self._closed:
            sink(Data(data))

    def _exit(self, status: int) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._sink is not None:
            self._sink(Exited(status))

    def send(self, data: bytes) -> None:
        if self._closed:
            raise TransportError("in-process transport is closed", reason="closed")
        self._peer.receive(data)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._peer.close()

    def info(self) -> dict[str, Any]:
        return {"transport": "in_process"}


class SubprocessTransport(Transport):
    """A child process spoken to over stdin/stdout (never through a shell).

    The child runs in a session of its own, so its pid is also the id of the
    process group that holds everything it spawns. No thread of its own
    serves it: the shared I/O loop (:mod:`beamagent.backends.io_loop`) reads
    its stdout and delivers the chunks as ``Data``, drains its stderr and
    keeps the tail (for the ``Exited`` event and logs, never forwarded as
    data), and watches the launched process itself (a pidfd). When that
    process exits -- even while a descendant still holds stdout open, as the
    native binary behind Codex's npm launcher does -- the rest of its group
    is terminated (SIGTERM, then SIGKILL after ``kill_timeout``), the
    remaining stdout is delivered, and ``Exited`` is sent with the launched
    process's status; nothing is delivered after it. ``close`` ends the whole
    group the same way and reaps everything, so no process of a session
    outlives it.

    ``send`` never blocks: it writes what the pipe takes at once, on the
    caller's thread, and the loop writes the rest as the CLI reads its stdin
    (at most ``STDIN_PENDING_MAX`` bytes may wait; beyond that ``send``
    raises ``TransportError``). ``sink`` is called on the loop's thread
    (``Connected`` on the thread calling ``start``) and must not block.
    """

    STDERR_TAIL = 4096
    """Bytes of stderr kept for the ``Exited`` event."""
    STDIN_PENDING_MAX = 64 * 1024 * 1024
    """Bytes that may wait for a CLI that does not read its stdin before ``send`` refuses more."""
    READ_CHUNK = 65536
    """Bytes read per readiness event: a pipe's buffer, so one read empties a full pipe."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        kill_timeout: float = 3.0,
    ) -> None:
        if not argv:
            raise TransportError("empty command line", reason="argv")
        self.argv = [str(a) for a in argv]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.kill_timeout = kill_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._lease: IoLease | None = None
        self._sink: TransportSink | None = None
        self._pidfd: int | None = None
        self._stdin_fd = self._stdout_fd = self._stderr_fd = -1
        self._stderr_tail = bytearray()
        # Guards what other threads touch: stdin, its pending bytes, and the flags below.
        self._lock = threading.Lock()
        self._pending: collections.deque[memoryview] = collections.deque()
        self._pending_bytes = 0
        self._stdin_open = False
        self._stdin_error: str | None = None
        self._closing = False
        # Set once the launched process has exited, before it is reaped (see _lifecycle).
        self._exited = threading.Event()
        # Set once Exited was delivered, every fd closed and the loop's lease given back.
        self._finished = threading.Event()
        # Touched on the loop's thread only.
        self._stdout_eof: asyncio.Future[None] | None = None
        self._stderr_eof: asyncio.Future[None] | None = None
        self._terminating: asyncio.Task[bool] | None = None
        self._lifecycle_task: asyncio.Task[None] | None = None
        self._grace_timers: list[asyncio.TimerHandle] = []

    def start(self, sink: TransportSink) -> None:
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env,
                cwd=self.cwd,
                # Its own session: a signal to our group must not hit the CLI, and its
                # pid names a group that holds everything it spawns (see process_group).
                start_new_session=True,
            )
        except OSError as exc:
            raise TransportError(
                f"cannot start {self.argv[0]!r}: {exc.strerror or exc}", reason="spawn_failed"
            ) from exc
        proc = self._proc
        self._stdin_fd, self._stdout_fd, self._stderr_fd = (
            cast(IO[bytes], stream).fileno() for stream in (proc.stdin, proc.stdout, proc.stderr)
        )
        for fd in (self._stdin_fd, self._stdout_fd, self._stderr_fd):
            os.set_blocking(fd, False)  # our ends only: the CLI's ends stay blocking
        # Opened while it is our unreaped child, so the pidfd cannot name another process.
        self._pidfd = open_pidfd(proc.pid)
        self._stdin_open = True
        self._sink = sink
        self._lease = acquire_io_loop()
        try:
            sink(Connected({"transport": "subprocess", "pid": proc.pid}))
        finally:
            self._lease.call_soon(self._begin)  # reading starts after Connected was delivered

    # --- on the loop ---------------------------------------------------------------------

    def _begin(self) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        self._stdout_eof = loop.create_future()
        self._stderr_eof = loop.create_future()
        loop.add_reader(self._stdout_fd, self._on_stdout)
        loop.add_reader(self._stderr_fd, self._on_stderr)
        self._lifecycle_task = loop.create_task(self._lifecycle())

    def _deliver(self, event: TransportEvent) -> None:
        sink = self._sink
        assert sink is not None
        try:
            sink(event)
        except Exception:  # a broken sink must not take the loop down with it
            log.exception("transport_sink_failed", pid=self.pid, kind=type(event).__name__)

    def _on_stdout(self) -> None:
        import asyncio

        try:
            chunk = os.read(self._stdout_fd, self.READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if chunk:
            self._deliver(Data(chunk))
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._stdout_fd)
        _resolve(self._stdout_eof)
        # A CLI that closed its stdout but lives on can never answer again: end it, so
        # that its exit is reported.
        if not self._exited.is_set() and not self._closing:
            self._grace_timers.append(
                loop.call_later(self.kill_timeout, self._stdout_closed_too_long)
            )

    def _stdout_closed_too_long(self) -> None:
        if not self._exited.is_set() and not self._closing:
            log.warning("backend_stdout_closed", pid=self.pid)
            self._terminate()

    def _on_stderr(self) -> None:
        import asyncio

        try:
            chunk = os.read(self._stderr_fd, self.READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            asyncio.get_running_loop().remove_reader(self._stderr_fd)
            _resolve(self._stderr_eof)
            return
        # Read everything (a CLI blocked on a full stderr pipe stalls), keep the tail.
        self._stderr_tail += chunk
        del self._stderr_tail[: -self.STDERR_TAIL]

    def _terminate(self) -> asyncio.Task[bool]:
        """End the group (once; later callers await the same termination).

        Only ever started before the launched process is reaped: until then its
        pid cannot name another group.
        """
        import asyncio

        if self._terminating is None:
            pid = self.pid
            assert pid is not None
            self._terminating = asyncio.get_running_loop().create_task(
                terminate_group_async(pid, self.kill_timeout)
            )
        return self._terminating

    async def _lifecycle(self) -> None:
        """Wait for the launched process; end the rest of its group; report ``Exited``."""
        import asyncio

        proc = self._proc
        assert proc is not None
        status: int | None = None
        try:
            # Wait without reaping: until it is reaped, the exited process keeps its pid
            # (the group id) from being reused, so signalling the group stays safe.
            await wait_process_exit(proc.pid, self._pidfd)
            self._exited.set()
            if not await self._terminate():
                log.error("backend_group_survived", pid=proc.pid, argv0=self.argv[0])
            status = self._reap()
            # Deliver what is left on stdout before the exit; the whole group is gone, so
            # EOF comes unless a process left the group on purpose.
            for eof, timeout in ((self._stdout_eof, self.kill_timeout), (self._stderr_eof, 1.0)):
                assert eof is not None
                await asyncio.wait([eof], timeout=timeout)
        except Exception:
            log.exception("backend_watch_failed", pid=proc.pid)
        finally:
            self._stop_io()
            if status is None:  # a bug above, or the loop is going away: leave nothing behind
                self._exited.set()
                signal_group(proc.pid, signal.SIGKILL)
                status = self._reap(self.kill_timeout)
            tail = bytes(self._stderr_tail).decode("utf-8", "replace")
            log.debug("backend_exited", pid=proc.pid, status=status, closing=self._closing)
            self._deliver(Exited(status, tail))
            assert self._lease is not None
            self._lease.release()  # before _finished: close() returns with the loop free
            self._finished.set()

    def _reap(self, timeout: float | None = None) -> int:
        proc = self._proc
        assert proc is not None
        with self._lock:  # signal() must not hit a reaped pid
            try:
                return proc.wait(timeout)  # it has exited: this does not block
            except subprocess.TimeoutExpired:
                log.error("backend_unreaped", pid=proc.pid)
                return -1

    def _stop_io(self) -> None:
        """Stop watching the pipes and close them, and the pidfd."""
        import asyncio

        proc = self._proc
        assert proc is not None
        loop = asyncio.get_running_loop()
        for timer in self._grace_timers:
            timer.cancel()
        loop.remove_reader(self._stdout_fd)
        loop.remove_reader(self._stderr_fd)
        self._close_stdin()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None

    def _close_stdin(self) -> None:
        import asyncio

        proc = self._proc
        assert proc is not None
        with self._lock:
            if not self._stdin_open:
                return
            self._stdin_open = False
            self._pending.clear()
            self._pending_bytes = 0
            asyncio.get_running_loop().remove_writer(self._stdin_fd)
            with contextlib.suppress(OSError, ValueError):
                cast(IO[bytes], proc.stdin).close()  # nothing buffered: send() writes the fd

    def _watch_stdin(self) -> None:
        import asyncio

        with self._lock:
            if self._stdin_open and self._pending:
                asyncio.get_running_loop().add_writer(self._stdin_fd, self._flush_stdin)

    def _flush_stdin(self) -> None:
        import asyncio

        with self._lock:
            while self._pending and self._stdin_open:
                chunk = self._pending[0]
                try:
                    written = os.write(self._stdin_fd, chunk)
                except (BlockingIOError, InterruptedError):
                    return  # still full: called again when the CLI has read some
                except OSError as exc:
                    # It closed its stdin (or died): later sends fail; its exit is reported.
                    self._stdin_error = exc.strerror or str(exc)
                    self._pending.clear()
                    self._pending_bytes = 0
                    break
                self._pending_bytes -= written
                if written < len(chunk):
                    self._pending[0] = chunk[written:]
                else:
                    self._pending.popleft()
            asyncio.get_running_loop().remove_writer(self._stdin_fd)

    def _begin_close(self) -> None:
        import asyncio

        self._close_stdin()  # EOF: most CLIs exit on their own
        if not self._exited.is_set():
            loop = asyncio.get_running_loop()
            self._grace_timers.append(loop.call_later(self.kill_timeout, self._close_too_long))

    def _close_too_long(self) -> None:
        if not self._exited.is_set():
            self._terminate()

    # --- from any thread -------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write ``data`` to the CLI's stdin without blocking (see the class docstring)."""
        with self._lock:
            if self._proc is None or self._exited.is_set() or not self._stdin_open:
                raise TransportError("the backend process is not running", reason="not_running")
            if self._stdin_error is not None:
                raise TransportError(
                    f"write to backend failed: {self._stdin_error}", reason="send_failed"
                )
            if self._pending:  # keep the order: behind what waits already
                if self._pending_bytes + len(data) > self.STDIN_PENDING_MAX:
                    raise TransportError(
                        f"the backend has not read {self._pending_bytes} bytes of its stdin; "
                        "it is stuck, or too slow for what is sent to it",
                        reason="stdin_full",
                    )
                self._queue(memoryview(data))
                return
            try:
                written = os.write(self._stdin_fd, data)
            except (BlockingIOError, InterruptedError):
                written = 0
            except OSError as exc:
                self._stdin_error = exc.strerror or str(exc)
                raise TransportError(
                    f"write to backend failed: {exc}", reason="send_failed"
                ) from exc
            if written < len(data):
                self._queue(memoryview(data)[written:])
                assert self._lease is not None
                self._lease.call_soon(self._watch_stdin)

    def _queue(self, chunk: memoryview) -> None:
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)

    def signal(self, signum: int) -> None:
        """Send a signal to the launched process (e.g. SIGINT to interrupt a CLI)."""
        with self._lock:  # held while it is reaped: the pid cannot be another's meanwhile
            proc = self._proc
            if proc is not None and not self._exited.is_set():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)

    def close(self) -> None:
        """End the backend: EOF on stdin, then SIGTERM/SIGKILL to its whole group; reap it.

        Gives the CLI ``kill_timeout`` to exit on EOF, as most do, then ends
        its group; returns once the process is reaped, ``Exited`` delivered
        and every pipe closed. Idempotent.
        """
        with self._lock:
            if self._proc is None or self._closing:
                return
            self._closing = True
        lease = self._lease
        if lease is None or not lease.call_soon(self._begin_close):
            return  # already finished: everything is released
        if lease.in_loop_thread():
            return  # cannot wait for the loop on the loop; it finishes on its own
        # EOF, then up to twice kill_timeout ending the group, then the last output.
        if not self._finished.wait(4 * self.kill_timeout + 2.0):
            log.error("backend_close_timed_out", pid=self.pid, argv0=self.argv[0])

    @property
    def pid(self) -> int | None:
        """The launched process's id (and its process group's), once started."""
        return self._proc.pid if self._proc is not None else None

    def info(self) -> dict[str, Any]:
        """``pid`` (also the process group id), ``argv0``."""
        return {"transport": "subprocess", "pid": self.pid, "argv0": self.argv[0]}


def _resolve(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)
