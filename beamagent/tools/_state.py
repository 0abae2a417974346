"""What the tool server's supervised process must not take with it when it crashes.

:class:`ToolServerState` belongs to the runtime, not to the server process:
the listening sockets (bound once, so the port never changes and nobody else
can take it while the server restarts -- connections made meanwhile wait in
the kernel's backlog) and the grants (session bearer token -> the session's
tools). A restarted server serves duplicates of the same sockets with the
same grants, so a session's CLI notices at most the call that was in flight.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Final

import attrs

from beamagent.errors import InvalidOption, ToolError
from beamagent.log import get_logger
from beamagent.tools._access import TOKEN_ENV, ToolServerAccess
from beamagent.tools._calls import CallIds
from beamagent.tools._tool import Decide, ToolSet

__all__ = ["Grant", "ToolServerConfig", "ToolServerState"]

log = get_logger(__name__)

MCP_PATH: Final = "/mcp"
_CLONE_NEWNET: Final = 0x40000000
_LOOPBACK: Final = ("127.0.0.1", "localhost")


def _netns(value: Any) -> tuple[str, ...]:
    if isinstance(value, str | os.PathLike):
        value = [value]
    if not isinstance(value, Sequence) or isinstance(value, bytes):
        raise InvalidOption(f"ToolServerConfig.netns must be a list of paths; got {value!r}")
    return tuple(os.fspath(v) for v in value)


def _server_name(_instance: Any, _attribute: Any, value: Any) -> None:
    if not isinstance(value, str) or not value.replace("_", "").replace("-", "").isalnum():
        raise InvalidOption(
            f"ToolServerConfig.server_name must be letters, digits, '_' or '-'; got {value!r}"
        )


def _host(_instance: Any, _attribute: Any, value: Any) -> None:
    if value not in _LOOPBACK:
        raise InvalidOption(f"the tool server binds loopback only (127.0.0.1); got host {value!r}")


def _port(_instance: Any, _attribute: Any, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise InvalidOption(f"ToolServerConfig.port must be 0 (any) to 65535; got {value!r}")


@attrs.frozen
class ToolServerConfig:
    """Where the runtime's tool server listens: ``Runtime(tool_server=ToolServerConfig(...))``.

    Attributes:
        host: ``127.0.0.1`` (loopback only; ``localhost`` means the same).
        port: 0 for a free port chosen once (kept across the server's restarts).
        server_name: the MCP server name CLIs are configured with.
        netns: network namespaces (paths such as ``/proc/PID/ns/net``, Linux,
            root) where the server also listens, on the same port, for CLIs
            confined to them (``command_prefix=["nsenter", "--net=...", "--"]``).
    """

    host: str = attrs.field(default="127.0.0.1", validator=_host)
    port: int = attrs.field(default=0, validator=_port)
    server_name: str = attrs.field(default="beamagent", validator=_server_name)
    netns: tuple[str, ...] = attrs.field(default=(), converter=_netns)

    @classmethod
    def of(cls, value: Any) -> ToolServerConfig:
        """A config from None, a ``ToolServerConfig`` or a mapping of its fields.

        Raises:
            InvalidOption: anything else, or a bad field.
        """
        if value is None:
            return cls()
        if isinstance(value, ToolServerConfig):
            return value
        if isinstance(value, dict):
            try:
                return cls(**value)
            except TypeError as exc:
                raise InvalidOption(f"tool_server: {exc}") from None
        raise InvalidOption(f"tool_server must be a ToolServerConfig or a dict; got {value!r}")


@attrs.frozen
class Grant:
    """One session's access: its tools, its permission handler, where to report its calls."""

    session_id: str
    backend: str
    tools: ToolSet
    decide: Decide | None = None
    run_id: str | None = None
    node_id: str | None = None
    report_to: Hashable | None = None
    """The session process's registered name: each call's timing is told to it."""
    calls: CallIds = attrs.field(factory=CallIds, eq=False)
    """Call ids the session's handler announces, for CLIs that do not send them."""


def _digest(token: str) -> str:
    # Grants are found by the token's digest: a lookup's time says nothing of the token.
    return hashlib.sha256(token.encode()).hexdigest()


class ToolServerState:
    """The tool server's listening sockets and grants; thread-safe. See the module docstring."""

    def __init__(self, config: ToolServerConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._port: int | None = None
        self._grants: dict[str, Grant] = {}
        self._by_session: dict[str, str] = {}
        self._closed = False
        self._servers: list[Any] = []  # HTTP servers started on these sockets, joined at close

    # --- sockets -----------------------------------------------------------------------

    def bind(self) -> None:
        """Bind the listening sockets (once; idempotent).

        Raises:
            ToolError: the port (or a namespace) cannot be bound.
        """
        with self._lock:
            if self._sockets:
                return
            if self._closed:
                raise ToolError("the tool server was stopped with its runtime")
            attempts = 1 if self.config.port else 5
            for attempt in range(attempts):
                try:
                    self._sockets = self._bind_all()
                    break
                except OSError as exc:
                    if attempt == attempts - 1:
                        raise ToolError(f"cannot bind the tool server: {exc}") from exc
            self._port = self._sockets[0].getsockname()[1]
            log.info("tool_server_bound", port=self._port, netns=len(self.config.netns))

    def _bind_all(self) -> list[socket.socket]:
        sockets = [_listen(self.config.port)]
        try:
            port = sockets[0].getsockname()[1]
            for path in self.config.netns:
                # The same port inside each namespace: one URL works everywhere.
                sockets.append(_in_namespace(path, lambda: _listen(port)))
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return sockets

    @property
    def port(self) -> int | None:
        """The port, once bound."""
        return self._port

    @property
    def url(self) -> str | None:
        """``http://127.0.0.1:PORT/mcp``, once bound."""
        return None if self._port is None else f"http://127.0.0.1:{self._port}{MCP_PATH}"

    def listening_sockets(self) -> list[socket.socket]:
        """Duplicates of the listening sockets for one server incarnation to serve (and close)."""
        with self._lock:
            if self._closed or not self._sockets:
                raise ToolError("the tool server's sockets are closed")
            return [sock.dup() for sock in self._sockets]

    def served_by(self, server: Any) -> None:
        """Remember an HTTP server started on these sockets: ``close`` waits for its thread.

        A killed tool server stops its HTTP server without waiting (its monitor does it);
        the runtime's stop must not return while that thread still winds down.
        """
        with self._lock:
            self._servers = [s for s in self._servers if s.alive]
            self._servers.append(server)

    def close(self) -> None:
        """Close the listening sockets, forget every grant, and wait for every HTTP server."""
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
            servers, self._servers = self._servers, []
            self._grants.clear()
            self._by_session.clear()
        for server in servers:
            server.stop(wait=True)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()

    # --- grants ------------------------------------------------------------------------

    def grant(self, grant: Grant) -> ToolServerAccess:
        """A new token for ``grant`` (replacing the session's earlier one, if any)."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            old = self._by_session.pop(grant.session_id, None)
            if old is not None:
                self._grants.pop(old, None)
            digest = _digest(token)
            self._grants[digest] = grant
            self._by_session[grant.session_id] = digest
        url = self.url
        assert url is not None, "bind() first"
        return ToolServerAccess(
            url=url,
            token=token,
            server_name=self.config.server_name,
            tool_names=grant.tools.names(),
            token_env=TOKEN_ENV,
            calls=grant.calls,
        )

    def revoke(self, session_id: str) -> None:
        """Forget the session's token: a CLI still holding it is refused from now on."""
        with self._lock:
            digest = self._by_session.pop(session_id, None)
            if digest is not None:
                self._grants.pop(digest, None)

    def lookup(self, token: str) -> Grant | None:
        """The grant of a bearer token, or None (unknown or revoked)."""
        with self._lock:
            return self._grants.get(_digest(token))

    def sessions(self) -> int:
        """How many sessions hold a token."""
        with self._lock:
            return len(self._grants)


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


def _in_namespace(path: str, make: Callable[[], socket.socket]) -> socket.socket:
    """Run ``make`` on a throwaway thread that first joins network namespace ``path``.

    A namespace belongs to a thread and a socket stays in the namespace it was
    made in: the socket ends up inside, this process does not.
    """
    import ctypes  # only here: a tool server in a network namespace

    libc = ctypes.CDLL(None, use_errno=True)
    result: list[socket.socket] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({path}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(make())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="beamagent-tools-netns")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]
