"""The backend handler protocol and the transports it runs over.

A backend is two things: a *transport* that moves bytes (an in-process peer,
a subprocess's stdio, an HTTP stream; an in-process peer may hand over
ready-made messages instead, see :class:`Messages`) and a *handler* that is the
only backend-specific code. The session actor owns both: transport events come in
as messages, the handler turns them into canonical messages and actions, and
the actor owns queueing, the single consumer, timeouts and state.

Handlers are plain objects called from the session actor's thread only; they
never block and never touch the actor. Transports call their ``sink`` from
their own threads (or, in-process, synchronously).
"""

from __future__ import annotations

import abc
import contextlib
import enum
import io
import os
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, cast

import attrs

from beamagent.backends.process_group import terminate_group
from beamagent.capabilities import Capability
from beamagent.errors import TransportError
from beamagent.log import get_logger
from beamagent.messages import Message, MessageType

__all__ = [
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


@attrs.frozen
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


class BackendHandler(abc.ABC):
    """Backend-specific protocol logic; one instance per session incarnation.

    Subclasses set ``name`` and ``capabilities`` and implement
    :meth:`open_transport`, :meth:`encode_query` and :meth:`handle_data`.
    Everything else has a sensible default. All methods run in the session
    actor's thread and must not block.
    """

    name: ClassVar[str] = "abstract"
    """The backend name (``local``, ``claude``...)."""
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    """What this backend really supports (checked by routing and by the session)."""
    complete_types: ClassVar[frozenset[MessageType]] = frozenset({MessageType.RESULT})
    """Message types that end a query (BeamAgent: ``result``; some backends ``error`` too)."""
    line_framed: ClassVar[bool] = True
    """Data is newline-framed: the actor skips parsing until a newline arrives."""

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
        return HandlerOutput(messages=messages)

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


class InProcessTransport(Transport):
    """A transport to a peer living in this process: no thread, no I/O of its own."""

    def __init__(self, peer: InProcessPeer) -> None:
        self._peer = peer
        self._sink: TransportSink | None = None
        self._lock = threading.Lock()
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
    process group that holds everything it spawns. Three threads serve it:
    one delivers stdout chunks as ``Data``, one keeps the tail of stderr (for
    the ``Exited`` event and logs, never forwarded as data), and one waits
    for the launched process itself. When that process exits -- even while a
    descendant still holds stdout open, as the native binary behind Codex's
    npm launcher does -- the rest of its group is terminated (SIGTERM, then
    SIGKILL after ``kill_timeout``), the remaining stdout is delivered, and
    ``Exited`` is sent with the launched process's status. ``close`` ends the
    whole group the same way and reaps everything, so no process of a
    session outlives it.
    """

    STDERR_TAIL = 4096

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
        self._stdout_thread: threading.Thread | None = None
        self._stderr_thread: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._stderr_tail = bytearray()
        self._write_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._closing = False
        # Set once the launched process has exited (before it is reaped, see _watch).
        self._exited = threading.Event()

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
        sink(Connected({"transport": "subprocess", "pid": proc.pid}))
        self._stderr_thread = threading.Thread(
            target=self._read_stderr, name=f"stderr-{proc.pid}", daemon=True
        )
        self._stdout_thread = threading.Thread(
            target=self._read_stdout, args=(sink,), name=f"stdout-{proc.pid}", daemon=True
        )
        self._watcher = threading.Thread(
            target=self._watch, args=(sink,), name=f"wait-{proc.pid}", daemon=True
        )
        self._stderr_thread.start()
        self._stdout_thread.start()
        self._watcher.start()

    def _read_stdout(self, sink: TransportSink) -> None:
        proc = self._proc
        assert proc is not None
        stream = cast(io.BufferedReader, proc.stdout)
        while True:
            try:
                chunk = stream.read1(65536)
            except (OSError, ValueError):
                chunk = b""
            if not chunk:
                break
            sink(Data(chunk))
        # A CLI that closed its stdout but lives on can never answer again: end it, so
        # that the watcher reports its exit.
        if not self._exited.wait(self.kill_timeout) and not self._closing:
            log.warning("backend_stdout_closed", pid=proc.pid)
            terminate_group(proc.pid, self.kill_timeout)

    def _read_stderr(self) -> None:
        proc = self._proc
        assert proc is not None
        stream = cast(io.BufferedReader, proc.stderr)
        while True:
            try:
                chunk = stream.read1(65536)
            except (OSError, ValueError):
                return
            if not chunk:
                return
            # Read everything (a CLI blocked on a full stderr pipe stalls), keep the tail.
            self._stderr_tail += chunk
            del self._stderr_tail[: -self.STDERR_TAIL]

    def _watch(self, sink: TransportSink) -> None:
        """Wait for the launched process; end the rest of its group; report ``Exited``."""
        proc = self._proc
        assert proc is not None
        # Wait without reaping: until it is reaped, the exited process keeps its pid (the
        # group id) from being reused, so signalling the group stays safe.
        with contextlib.suppress(ChildProcessError):  # already reaped
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        self._exited.set()
        if not terminate_group(proc.pid, self.kill_timeout):
            log.error("backend_group_survived", pid=proc.pid, argv0=self.argv[0])
        status = proc.wait()
        # Deliver what is left on stdout before the exit; the whole group is gone, so
        # EOF comes unless a process left the group on purpose.
        for thread, timeout in (
            (self._stdout_thread, self.kill_timeout),
            (self._stderr_thread, 1.0),
        ):
            if thread is not None:
                thread.join(timeout=timeout)
        tail = bytes(self._stderr_tail).decode("utf-8", "replace")
        log.debug("backend_exited", pid=proc.pid, status=status, closing=self._closing)
        sink(Exited(status, tail))

    def send(self, data: bytes) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or self._exited.is_set():
            raise TransportError("the backend process is not running", reason="not_running")
        with self._write_lock:
            try:
                proc.stdin.write(data)
                proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError) as exc:
                raise TransportError(
                    f"write to backend failed: {exc}", reason="send_failed"
                ) from exc

    def signal(self, signum: int) -> None:
        """Send a signal to the launched process (e.g. SIGINT to interrupt a CLI)."""
        proc = self._proc
        if proc is not None and not self._exited.is_set():
            # os.kill, not Popen.send_signal: that polls, and reaping here would free
            # the group id before the watcher has ended the group.
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signum)

    def close(self) -> None:
        """End the backend: EOF on stdin, then SIGTERM/SIGKILL to its whole group; reap it.

        Waits up to ``kill_timeout`` for the CLI to exit on EOF, as most do,
        then ends its group; returns once every thread of the transport is done.
        """
        with self._close_lock:
            proc = self._proc
            if proc is None or self._closing:
                return
            self._closing = True
        if proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.close()  # EOF: most CLIs exit on their own
        if not self._exited.wait(self.kill_timeout):
            terminate_group(proc.pid, self.kill_timeout)
        current = threading.current_thread()
        # The watcher may itself spend up to 2 x kill_timeout ending the group.
        for thread in (self._watcher, self._stdout_thread, self._stderr_thread):
            if thread is not None and thread is not current:
                thread.join(timeout=3 * self.kill_timeout + 1.0)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    @property
    def pid(self) -> int | None:
        """The launched process's id (and its process group's), once started."""
        return self._proc.pid if self._proc is not None else None

    def info(self) -> dict[str, Any]:
        """``pid`` (also the process group id), ``argv0``."""
        return {"transport": "subprocess", "pid": self.pid, "argv0": self.argv[0]}
