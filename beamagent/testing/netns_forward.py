"""Run an HTTP server inside a network namespace, reachable from outside it on loopback.

A server confined to a loopback-only namespace (:class:`~beamagent.testing.LoopbackNamespace`)
cannot be reached by a client outside it: its 127.0.0.1 is another one. Run it
under this module instead (``LoopbackNamespace.server_prefix()`` gives the argv)::

    python -m beamagent.testing.netns_forward --netns /proc/PID/ns/net -- opencode serve --port 0

The forwarder

1. listens on 127.0.0.1:<free port> in the caller's namespace;
2. joins the namespace (``setns``: it needs CAP_SYS_ADMIN, as the namespace
   itself does) and runs the command there, as its child in its own process
   group (so ending the group ends both);
3. copies the command's stdout to its own, rewriting the server's
   announcement (``listening on http://127.0.0.1:PORT``) to name its own
   port, and forwards every connection to the server's port inside.

It exits with the command's status; SIGTERM and SIGINT are passed on to the
command. One process, one thread (a ``selectors`` loop), nothing in the caller.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
from types import FrameType
from typing import Final

__all__ = ["ANNOUNCEMENT", "main"]

_CLONE_NEWNET: Final = 0x40000000
ANNOUNCEMENT: Final = re.compile(rb"(listening on https?://127\.0\.0\.1:)(\d+)")
"""The line a server prints once it listens; its port is rewritten to the forwarder's."""
_CHUNK: Final = 65536


def _join_namespace(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


class _Pipe:
    """One forwarded connection: two sockets, bytes each way, half-closes passed on."""

    def __init__(self, sel: selectors.BaseSelector, outer: socket.socket, port: int) -> None:
        self.sel = sel
        inner = socket.create_connection(("127.0.0.1", port))
        self.peers = {outer: inner, inner: outer}
        self.reading = {outer, inner}
        for sock in self.peers:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, self)

    def readable(self, sock: socket.socket) -> None:
        peer = self.peers[sock]
        try:
            data = sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            try:
                peer.setblocking(True)  # test traffic is small: a blocking send is fine
                peer.sendall(data)
                peer.setblocking(False)
                return
            except OSError:
                pass
        self.sel.unregister(sock)
        self.reading.discard(sock)
        with contextlib.suppress(OSError):
            peer.shutdown(socket.SHUT_WR)
        if not self.reading:
            for end in self.peers:
                end.close()


def _copy_stdout(pending: bytes, chunk: bytes, outer_port: int, found: list[int]) -> bytes:
    """Write the complete lines of ``pending + chunk``, the announcement rewritten."""
    *lines, rest = (pending + chunk).split(b"\n")
    for line in lines:
        match = ANNOUNCEMENT.search(line)
        if match is not None and not found:
            found.append(int(match.group(2)))
            line = ANNOUNCEMENT.sub(rb"\g<1>" + str(outer_port).encode(), line)
        os.write(1, line + b"\n")
    return rest


def main(argv: list[str] | None = None) -> int:
    """Run ``--netns PATH -- COMMAND...``; return the command's exit status."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 4 or args[0] != "--netns" or args[2] != "--":
        print("usage: netns_forward --netns PATH -- COMMAND...", file=sys.stderr)
        return 2
    listener = socket.create_server(("127.0.0.1", 0))  # here, before joining
    outer_port = int(listener.getsockname()[1])
    _join_namespace(args[1])
    child = subprocess.Popen(args[3:], stdout=subprocess.PIPE)

    def pass_on(signum: int, _frame: FrameType | None) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)
    assert child.stdout is not None
    out_fd = child.stdout.fileno()
    os.set_blocking(out_fd, False)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    sel.register(out_fd, selectors.EVENT_READ, "stdout")
    inner_port: list[int] = []
    pending = b""
    while child.poll() is None:
        for key, _events in sel.select(timeout=0.2):  # and look at the child again
            if key.data == "accept":
                try:
                    conn, _addr = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                try:
                    if not inner_port:
                        raise OSError("the server has not announced its port yet")
                    _Pipe(sel, conn, inner_port[0])
                except OSError:
                    conn.close()
            elif key.data == "stdout":
                try:
                    chunk = os.read(out_fd, _CHUNK)
                except (BlockingIOError, InterruptedError):
                    continue
                if not chunk:
                    sel.unregister(out_fd)
                    continue
                pending = _copy_stdout(pending, chunk, outer_port, inner_port)
            elif isinstance(key.data, _Pipe) and isinstance(key.fileobj, socket.socket):
                key.data.readable(key.fileobj)
    status = child.returncode
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main())
