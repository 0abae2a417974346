"""``ControlClient``: talks to a runtime's control socket, after checking it is safe to trust.

Before connecting it refuses a path that is not a socket, is owned by another
user, or has a mode wider than 0600; after connecting it checks the listening
process is this user's (``SO_PEERCRED``). A missing socket or one nobody
listens on is :class:`~beamagent.errors.ControlSocketUnavailable`.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

from beamagent.control.server import peer_uid
from beamagent.errors import ControlSocketError, ControlSocketRefused, ControlSocketUnavailable

__all__ = ["ControlClient", "check_socket_file"]

MAX_REPLY = 64 * 1024 * 1024
"""The longest reply line read (a snapshot of a very large runtime)."""


def _own_uid() -> int:
    return os.getuid()


def check_socket_file(path: str | os.PathLike[str]) -> None:
    """Refuse a control socket that another user could have made or can reach.

    Raises:
        ControlSocketUnavailable: nothing at ``path``.
        ControlSocketRefused: not a socket, another user's, or a mode wider than 0600.
    """
    shown = str(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ControlSocketUnavailable(
            f"no control socket at {shown!r}: is the runtime running, "
            "with Runtime(control_socket=...) set to this path?"
        ) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketRefused(f"{shown!r} is not a socket")
    if st.st_uid != _own_uid():
        raise ControlSocketRefused(
            f"refused: control socket {shown!r} is owned by uid {st.st_uid}, not by you "
            f"(uid {_own_uid()})"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ControlSocketRefused(
            f"refused: control socket {shown!r} has mode {mode:04o}, wider than 0600"
        )


class ControlClient:
    """One connection to a runtime's control socket; use as a context manager.

    Example::

        with ControlClient("/run/user/1000/agents.sock") as client:
            snapshot = client.snapshot()

    Raises:
        ControlSocketUnavailable: no socket there, or no runtime listens on it.
        ControlSocketRefused: the socket, or the process behind it, is not this user's.
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float = 5.0) -> None:
        self.path = Path(path)
        check_socket_file(self.path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            try:
                self._sock.connect(str(self.path))
            except (ConnectionRefusedError, FileNotFoundError):
                raise ControlSocketUnavailable(
                    f"no runtime listens on {str(self.path)!r} (it stopped or was killed; "
                    "the socket file is stale)"
                ) from None
            uid = peer_uid(self._sock)
            if uid != _own_uid():
                raise ControlSocketRefused(
                    f"refused: the process behind {str(self.path)!r} runs as uid {uid}, not you"
                )
            self._file = self._sock.makefile("rb")
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._file.close()
        self._sock.close()

    def request(self, op: str) -> dict[str, Any]:
        """Send ``{"op": op}`` and return the reply.

        Raises:
            ControlSocketUnavailable: the runtime went away.
            ControlSocketError: it answered with an error.
        """
        try:
            self._sock.sendall(json.dumps({"op": op}).encode() + b"\n")
            line = self._file.readline(MAX_REPLY)
        except TimeoutError:
            raise ControlSocketError(f"the runtime at {str(self.path)!r} did not answer") from None
        except OSError as exc:
            raise ControlSocketUnavailable(
                f"the runtime at {str(self.path)!r} went away: {exc}"
            ) from None
        if not line:
            raise ControlSocketUnavailable(f"the runtime at {str(self.path)!r} went away")
        reply = json.loads(line)
        if not reply.get("ok"):
            error = str(reply.get("error"))
            cls = ControlSocketRefused if error.startswith("refused") else ControlSocketError
            raise cls(f"the runtime at {str(self.path)!r} said: {error}")
        return dict(reply)

    def snapshot(self) -> dict[str, Any]:
        """The runtime's supervision tree, sessions and runs (see ``docs/cli.md``)."""
        return dict(self.request("snapshot")["snapshot"])
