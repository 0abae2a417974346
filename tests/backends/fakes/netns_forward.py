#!/usr/bin/env python3
"""Run an HTTP server command inside a network namespace, reachable from outside it.

Usage: ``netns_forward.py --netns /proc/PID/ns/net -- opencode serve --port 0 ...``

A CLI confined to a loopback-only namespace (tests/_clis.py) cannot be reached
by a client outside it: its 127.0.0.1 is another one. This wrapper

1. listens on 127.0.0.1:<free port> here, in the caller's namespace;
2. joins the namespace (``setns``: it needs CAP_SYS_ADMIN, as the sandbox
   does) and runs the command there, as its child in the same process group;
3. copies the command's stdout to its own, rewriting the server's
   announcement (``listening on http://127.0.0.1:PORT``) to name its own
   port, and forwards every connection to the server's port inside.

It exits with the command's status; SIGTERM is passed on to the command.
Single-threaded (one ``selectors`` loop), so it holds no thread of the tests.
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

CLONE_NEWNET = 0x40000000
ANNOUNCEMENT = re.compile(rb"(listening on https?://127\.0\.0\.1:)(\d+)")
CHUNK = 65536


def join_namespace(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


class Pipe:
    """One forwarded connection: two sockets, bytes each way, half-closes passed on."""

    def __init__(self, sel: selectors.BaseSelector, outer: socket.socket, port: int) -> None:
        self.sel = sel
        self.inner = socket.create_connection(("127.0.0.1", port))
        self.ends = {outer: self.inner, self.inner: outer}
        self.open = {outer, self.inner}
        for sock in self.ends:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, self)

    def readable(self, sock: socket.socket) -> None:
        peer = self.ends[sock]
        try:
            data = sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            try:
                peer.setblocking(True)  # a test's traffic is small: a blocking send is fine
                peer.sendall(data)
                peer.setblocking(False)
                return
            except OSError:
                pass
        self.sel.unregister(sock)
        self.open.discard(sock)
        with contextlib.suppress(OSError):
            peer.shutdown(socket.SHUT_WR)
        if not self.open:
            for end in self.ends:
                end.close()


def main() -> int:
    args = sys.argv[1:]
    if len(args) < 4 or args[0] != "--netns" or args[2] != "--":
        print("usage: netns_forward.py --netns PATH -- COMMAND...", file=sys.stderr)
        return 2
    listener = socket.create_server(("127.0.0.1", 0))  # here, before joining
    outer_port = listener.getsockname()[1]
    join_namespace(args[1])
    child = subprocess.Popen(args[3:], stdout=subprocess.PIPE)

    def stop(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    assert child.stdout is not None
    out_fd = child.stdout.fileno()
    os.set_blocking(out_fd, False)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    sel.register(out_fd, selectors.EVENT_READ, "stdout")
    inner_port: int | None = None
    pending = b""
    while child.poll() is None:
        for key, _ in sel.select(timeout=0.2):
            if key.data == "accept":
                try:
                    conn, _addr = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                if inner_port is None:
                    conn.close()
                    continue
                try:
                    Pipe(sel, conn, inner_port)
                except OSError:
                    conn.close()
            elif key.data == "stdout":
                try:
                    chunk = os.read(out_fd, CHUNK)
                except (BlockingIOError, InterruptedError):
                    continue
                if not chunk:
                    sel.unregister(out_fd)
                    continue
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    match = ANNOUNCEMENT.search(line)
                    if match is not None and inner_port is None:
                        inner_port = int(match.group(2))
                        line = ANNOUNCEMENT.sub(rb"\g<1>" + str(outer_port).encode(), line)
                    os.write(1, line + b"\n")
            else:
                key.data.readable(key.fileobj)
    return child.returncode if child.returncode >= 0 else 128 - child.returncode


if __name__ == "__main__":
    sys.exit(main())
