"""``ControlServer``: a runtime's local control socket (read-only introspection).

A Unix domain socket, never a TCP port. The security model:

* the socket file is mode 0600 from the moment it exists at its path: it is
  bound inside a fresh 0700 directory next to it, made 0600 there, then
  hard-linked into place (``link`` never replaces a file), so no one else can
  connect even in the instant after it appears;
* an existing path is refused unless it is a stale socket of this user's
  (nobody listens on it), which is then replaced;
* every connection's peer is checked with ``SO_PEERCRED``: a process of
  another user is told so and disconnected;
* the protocol only reads: one JSON object per line in, one per line out.

The server is one daemon thread with a selector; it never blocks an actor
(see :mod:`beamagent.control.snapshot`). ``stop()`` closes every connection,
joins the thread and unlinks the socket (if it is still ours).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import selectors
import socket
import stat
import struct
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from beamagent.control.snapshot import PROTOCOL_VERSION
from beamagent.errors import ControlSocketError, ControlSocketRefused
from beamagent.log import get_logger

__all__ = ["MAX_CONNECTIONS", "MAX_REQUEST", "ControlServer", "answer", "peer_uid"]

log = get_logger(__name__)

MAX_REQUEST = 64 * 1024
"""The longest request line; a client that sends more is disconnected."""
MAX_CONNECTIONS = 16
"""Connections served at once; more are closed at once."""
SEND_TIMEOUT = 2.0
"""How long a reply may take to send before its client is dropped."""


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _stale_socket_of_ours(path: Path) -> bool:
    """Whether ``path`` is a socket of this user's that nobody listens on."""
    st = path.lstat()
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False  # someone listens: a live runtime's


def _check_parent(parent: Path) -> None:
    try:
        st = parent.stat()
    except FileNotFoundError:
        raise ControlSocketError(
            f"control socket: directory {str(parent)!r} does not exist"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise ControlSocketError(f"control socket: {str(parent)!r} is not a directory")
    shared = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if st.st_uid not in (os.getuid(), 0) or (shared and not st.st_mode & stat.S_ISVTX):
        raise ControlSocketRefused(
            f"control socket: directory {str(parent)!r} is writable by other users "
            "(and not sticky) or theirs; put the socket in a directory of your own"
        )


def _bind_private(path: Path) -> tuple[socket.socket, os.stat_result]:
    """A listening socket at ``path``, mode 0600 from its first appearance there."""
    _check_parent(path.parent)
    staging = Path(tempfile.mkdtemp(prefix=".ba", dir=path.parent))  # mode 0700
    temp = staging / "s"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(str(temp))
        except OSError as exc:
            raise ControlSocketError(
                f"control socket: cannot bind near {str(path)!r}: {exc} "
                "(a Unix socket path must be short: under about 100 bytes)"
            ) from None
        os.chmod(temp, 0o600)
        for attempt in range(2):
            try:
                os.link(temp, path)
                break
            except FileExistsError:
                if attempt == 0 and _stale_socket_of_ours(path):
                    path.unlink()
                    continue
                raise ControlSocketRefused(
                    f"control socket: {str(path)!r} exists and is not a stale socket of "
                    "yours (a live runtime's, another user's, or not a socket); "
                    "choose another path or remove it"
                ) from None
        sock.listen(MAX_CONNECTIONS)
        sock.setblocking(False)
        return sock, path.lstat()
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()
        with contextlib.suppress(OSError):
            staging.rmdir()


def answer(line: bytes, snapshot: Callable[[], Any]) -> dict[str, Any]:
    """The reply to one request line (never raises: a bad request gets an error reply)."""
    try:
        request = json.loads(line)
    except ValueError:
        return {"ok": False, "error": "a request is one JSON object per line"}
    op = request.get("op") if isinstance(request, dict) else None
    if op == "ping":
        return {"ok": True, "version": PROTOCOL_VERSION}
    if op == "snapshot":
        try:
            taken = snapshot()
        except Exception as exc:  # the runtime is stopping, a process is restarting
            return {"ok": False, "error": f"snapshot failed: {exc}"}
        return {"ok": True, "version": PROTOCOL_VERSION, "snapshot": taken}
    return {"ok": False, "error": f"unknown op {op!r:.100}; the ops are 'ping' and 'snapshot'"}


class _Client:
    __slots__ = ("buffer", "conn")

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = b""


class ControlServer:
    """Serves ``snapshot()`` on a Unix socket at ``path`` until :meth:`stop`.

    Requests are JSON lines: ``{"op": "ping"}`` → ``{"ok": true, "version": 1}``;
    ``{"op": "snapshot"}`` → ``{"ok": true, "version": 1, "snapshot": {...}}``;
    anything else → ``{"ok": false, "error": "..."}``.

    Raises:
        ControlSocketRefused: the path exists (and is not a stale socket of
            ours), or its directory is not safe.
        ControlSocketError: the socket cannot be created there.
    """

    def __init__(self, path: str | os.PathLike[str], snapshot: Callable[[], Any]) -> None:
        self.path = Path(path).absolute()
        self._snapshot = snapshot
        self._sock, self._stat = _bind_private(self.path)
        self._clients: dict[int, _Client] = {}
        self._stopping = False
        try:
            self._wake_r, self._wake_w = socket.socketpair()
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._sock, selectors.EVENT_READ, None)
            self._selector.register(self._wake_r, selectors.EVENT_READ, None)
            self._thread = threading.Thread(
                target=self._serve, name=f"beamagent-control {self.path.name}", daemon=True
            )
            self._thread.start()
        except BaseException:
            self._sock.close()
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise
        log.info("control_socket_opened", path=str(self.path))

    def stop(self) -> None:
        """Close every connection, join the thread, unlink the socket. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not threading.current_thread():
            self._thread.join()
        for client in self._clients.values():
            client.conn.close()
        self._clients.clear()
        self._selector.close()
        self._sock.close()
        self._wake_r.close()
        self._wake_w.close()
        with contextlib.suppress(OSError):
            st = self.path.lstat()
            if (st.st_dev, st.st_ino) == (self._stat.st_dev, self._stat.st_ino):
                self.path.unlink()  # only our own socket, not one that replaced it
        log.info("control_socket_closed", path=str(self.path))

    # --- the serving thread -------------------------------------------------------------

    def _serve(self) -> None:
        try:
            self._loop()
        except Exception:  # a bug here must not pass silently: top would just hang
            log.exception("control_server_crashed", path=str(self.path))

    def _loop(self) -> None:
        while not self._stopping:
            for key, _events in self._selector.select():
                if self._stopping:
                    return
                if key.fileobj is self._sock:
                    self._accept()
                elif key.fileobj is not self._wake_r:
                    self._read(key.data)

    def _accept(self) -> None:
        try:
            conn, _addr = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        try:
            uid = peer_uid(conn)
        except OSError:
            conn.close()
            return
        if uid != os.getuid():
            log.warning("control_peer_refused", path=str(self.path), peer_uid=uid)
            self._send(
                conn, {"ok": False, "error": "refused: this runtime belongs to another user"}
            )
            conn.close()
            return
        if len(self._clients) >= MAX_CONNECTIONS:
            self._send(conn, {"ok": False, "error": "too many connections"})
            conn.close()
            return
        conn.setblocking(False)
        client = _Client(conn)
        self._clients[conn.fileno()] = client
        self._selector.register(conn, selectors.EVENT_READ, client)

    def _drop(self, client: _Client) -> None:
        self._clients.pop(client.conn.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(client.conn)
        client.conn.close()

    def _read(self, client: _Client) -> None:
        try:
            data = client.conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.buffer += data
        while b"\n" in client.buffer:
            line, client.buffer = client.buffer.split(b"\n", 1)
            if not self._send(client.conn, self._answer(line)):
                self._drop(client)
                return
        if len(client.buffer) > MAX_REQUEST:
            self._send(client.conn, {"ok": False, "error": "request too long"})
            self._drop(client)

    def _answer(self, line: bytes) -> dict[str, Any]:
        return answer(line, self._snapshot)

    @staticmethod
    def _send(conn: socket.socket, reply: dict[str, Any]) -> bool:
        data = (json.dumps(reply, default=str) + "\n").encode()
        try:
            conn.settimeout(SEND_TIMEOUT)
            conn.sendall(data)
            conn.setblocking(False)
        except OSError as exc:
            if exc.errno not in (None, errno.EPIPE, errno.ECONNRESET):
                log.debug("control_reply_failed", error=str(exc))
            return False
        return True
