"""The control socket in-process: its file's mode, its lifetime, the refusals, the protocol."""

from __future__ import annotations

import json
import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beamagent.control import ControlClient, client, server
from beamagent.errors import ControlSocketError, ControlSocketRefused, ControlSocketUnavailable
from beamagent.runtime import Runtime


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Short: a Unix socket path must fit in about 100 bytes (pytest's tmp_path may not).
    with tempfile.TemporaryDirectory(prefix="ba") as name:
        yield Path(name)


def test_socket_is_0600_while_running_and_unlinked_on_stop(sock_dir: Path) -> None:
    path = sock_dir / "rt.sock"
    with Runtime(store=":memory:", control_socket=path, handle_signals=False) as runtime:
        st = path.lstat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.getuid()
        assert [p.name for p in sock_dir.iterdir()] == ["rt.sock"]  # no staging dir left
        runtime.start_session("local", model="m1", session_id="s1")
        with ControlClient(path) as client:
            assert client.request("ping") == {"ok": True, "version": 1}
            snapshot = client.snapshot()
        (row,) = snapshot["sessions"]
        assert row["session_id"] == "s1"
        assert (row["backend"], row["state"], row["model"]) == ("local", "ready", "m1")
        assert (row["incarnation"], row["restarts"]) == (1, 0)
        assert snapshot["tree"]["class"] == "Supervisor"
    assert not path.exists()


def test_the_socket_never_appears_with_a_wider_mode(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever the umask, the mode is 0600 when the path first names the socket.
    seen: list[int] = []
    real_link = os.link

    def link(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append(stat.S_IMODE(os.lstat(src).st_mode))
        real_link(src, dst)

    monkeypatch.setattr(server.os, "link", link)
    old = os.umask(0)
    try:
        with Runtime(store=":memory:", control_socket=sock_dir / "s", handle_signals=False):
            pass
    finally:
        os.umask(old)
    assert seen == [0o600]


def test_an_existing_file_is_refused_and_left_alone(sock_dir: Path) -> None:
    path = sock_dir / "taken"
    path.write_text("not a socket")
    with pytest.raises(ControlSocketRefused, match="exists and is not a stale socket"):
        Runtime(store=":memory:", control_socket=path, handle_signals=False)
    assert path.read_text() == "not a socket"
    assert [p.name for p in sock_dir.iterdir()] == ["taken"]


def test_a_live_runtimes_socket_is_refused_a_stale_one_replaced(sock_dir: Path) -> None:
    path = sock_dir / "rt.sock"
    with (
        Runtime(store=":memory:", control_socket=path, handle_signals=False),
        pytest.raises(ControlSocketRefused),
    ):
        Runtime(store=":memory:", control_socket=path, handle_signals=False)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    path.chmod(0o600)
    stale.close()  # a killed runtime's socket: the file stays, nobody listens
    with pytest.raises(ControlSocketUnavailable, match="no runtime listens"):
        ControlClient(path)
    with (
        Runtime(store=":memory:", control_socket=path, handle_signals=False),
        ControlClient(path) as client,
    ):
        assert client.request("ping")["ok"]
    assert not path.exists()


def test_a_peer_of_another_user_is_refused(sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = sock_dir / "rt.sock"
    monkeypatch.setattr(server, "peer_uid", lambda _conn: os.getuid() + 1)
    with Runtime(store=":memory:", control_socket=path, handle_signals=False):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with conn:
            conn.settimeout(10)
            conn.connect(str(path))
            reply = json.loads(conn.makefile("rb").readline())
    assert reply == {"ok": False, "error": "refused: this runtime belongs to another user"}


def test_bad_requests_get_errors_not_a_dead_server(sock_dir: Path) -> None:
    path = sock_dir / "rt.sock"
    with Runtime(store=":memory:", control_socket=path, handle_signals=False):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with conn:
            conn.settimeout(10)
            conn.connect(str(path))
            lines = conn.makefile("rb")
            conn.sendall(b'not json\n{"op": "kill"}\n{"op": "ping"}\n')
            replies = [json.loads(lines.readline()) for _ in range(3)]
            lines.close()
    assert not replies[0]["ok"]
    assert "one JSON object per line" in replies[0]["error"]
    assert not replies[1]["ok"]
    assert "unknown op 'kill'" in replies[1]["error"]
    assert replies[2] == {"ok": True, "version": 1}


@given(st.binary(max_size=200))
def test_any_request_line_gets_a_reply_never_an_exception(line: bytes) -> None:
    reply = server.answer(line, lambda: {"tree": {}})
    assert isinstance(reply["ok"], bool)
    json.dumps(reply)  # always sendable
    if not reply["ok"]:
        assert reply["error"]


def test_a_failed_snapshot_is_an_error_reply() -> None:
    def broken() -> dict[str, object]:
        raise RuntimeError("the registry is restarting")

    reply = server.answer(b'{"op": "snapshot"}', broken)
    assert reply == {"ok": False, "error": "snapshot failed: the registry is restarting"}


def test_the_client_refuses_a_listener_of_another_user(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = sock_dir / "rt.sock"
    monkeypatch.setattr(client, "peer_uid", lambda _conn: os.getuid() + 1)
    with (
        Runtime(store=":memory:", control_socket=path, handle_signals=False),
        pytest.raises(ControlSocketRefused, match="runs as uid"),
    ):
        ControlClient(path)


def test_a_socket_in_a_missing_directory_is_an_error(sock_dir: Path) -> None:
    with pytest.raises(ControlSocketError, match="does not exist"):
        Runtime(store=":memory:", control_socket=sock_dir / "no" / "s", handle_signals=False)


def test_a_socket_in_a_directory_others_can_write_is_refused(sock_dir: Path) -> None:
    shared = sock_dir / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # not sticky: anyone could swap the socket for their own
    with pytest.raises(ControlSocketRefused, match="writable by other users"):
        Runtime(store=":memory:", control_socket=shared / "s", handle_signals=False)
    assert list(shared.iterdir()) == []
