"""``beamagent top`` against a live runtime in another process, through its control socket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from beamagent.cli.app import EXIT_FAILED, EXIT_NOT_FOUND, app
from beamagent.cli.top import render_snapshot
from beamagent.control import ControlClient, client

LIVE_RUNTIME = Path(__file__).parent.parent / "control" / "live_runtime.py"
runner = CliRunner()


@contextmanager
def _live_runtime(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A runtime in a child process (sessions alpha and beta, run-1 in node draft).

    Yields its socket and the process; leaving stops it (its stdin closes) and
    checks it exited cleanly and unlinked its socket.
    """
    errors = tmp_path / "stderr.log"  # a file: its log can never fill a pipe and block it
    with (
        tempfile.TemporaryDirectory(prefix="ba") as short,
        errors.open("w") as stderr,
    ):
        path = Path(short) / "rt.sock"
        child = subprocess.Popen(
            [sys.executable, str(LIVE_RUNTIME), str(path), str(tmp_path / "s.db")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            assert child.stdout is not None
            line = child.stdout.readline()  # blocks until ready, or "" if it died
            if line != "ready\n":
                child.kill()
                child.communicate()
                pytest.fail(f"the live runtime did not start: {errors.read_text()}")
            yield path, child
        finally:
            assert child.stdin is not None
            assert child.stdout is not None
            child.stdin.close()  # it stops (a second close is a no-op)
            child.wait(30)
            child.stdout.close()
        assert child.returncode == 0, errors.read_text()
        assert not path.exists()  # unlinked when that runtime stopped


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Path]:
    """The socket of a live runtime in another process (see ``_live_runtime``)."""
    with _live_runtime(tmp_path) as (path, _child):
        yield path


def test_once_json_shows_the_tree_sessions_and_the_run(live: Path) -> None:
    done = runner.invoke(app, ["top", "--socket", str(live), "--once", "--json"])
    assert done.exit_code == 0, done.output
    snapshot = json.loads(done.stdout)
    assert snapshot["runtime"]["pid"] != os.getpid()
    sessions = {row["session_id"]: row for row in snapshot["sessions"]}
    assert sessions["alpha"]["backend"] == "local"
    assert sessions["alpha"]["model"] == "model-alpha"
    assert sessions["alpha"]["state"] == "ready"
    assert (sessions["alpha"]["incarnation"], sessions["alpha"]["restarts"]) == (1, 0)
    assert sessions["beta"]["model"] == "model-beta"
    assert (sessions["beta"]["incarnation"], sessions["beta"]["restarts"]) == (2, 1)
    assert len(sessions) == 3  # the run's node has a session of its own
    (run,) = snapshot["runs"]
    assert (run["run_id"], run["job_id"], run["status"]) == ("run-1", "drafting", "running")
    assert run["current"] == [{"node": "draft", "thread": "0"}]
    root = snapshot["tree"]
    assert [child["id"] for child in root["children"]][:4] == [
        "registry",
        "store",
        "sessions",
        "runs",
    ]
    assert all("mailbox" in child for child in root["children"])


def test_the_rendered_frame_has_the_expected_rows(live: Path) -> None:
    with ControlClient(live) as control:
        snapshot = control.snapshot()
    console = Console(record=True, width=200, color_system=None)
    console.print(render_snapshot(snapshot))
    text = console.export_text()
    assert f"runtime {snapshot['runtime']['id']}  pid {snapshot['runtime']['pid']}" in text
    assert "sessions DynamicSupervisor" in text
    assert "runs DynamicSupervisor" in text
    assert "restarts=1" in text  # beta's restart, in the tree
    rows = {
        cells[0]: cells[1:]
        for line in text.splitlines()
        if line.startswith("│")
        for cells in [[cell.strip() for cell in line.strip("│").split("│")]]
    }
    assert rows["alpha"] == ["local", "ready", "model-alpha", "1", "0", "0"]
    assert rows["beta"] == ["local", "ready", "model-beta", "2", "1", "0"]
    assert rows["run-1"][:3] == ["drafting", "running", "draft"]
    # The command prints the same frame.
    done = runner.invoke(app, ["top", "--socket", str(live), "--once"], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    assert "model-alpha" in done.stdout
    assert "run-1" in done.stdout


def test_a_socket_with_a_wider_mode_is_refused(live: Path) -> None:
    live.chmod(0o644)
    done = runner.invoke(app, ["top", "--socket", str(live), "--once"])
    assert done.exit_code == EXIT_FAILED
    assert "has mode 0644, wider than 0600" in done.stderr
    assert "Traceback" not in done.output
    live.chmod(0o600)


def test_a_socket_of_another_user_is_refused(live: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.getuid() == 0:
        os.chown(live, 4242, -1)
    else:  # only root can give a file away: pretend to be someone else instead
        monkeypatch.setattr(client, "_own_uid", lambda: os.getuid() + 1)
    try:
        done = runner.invoke(app, ["top", "--socket", str(live), "--once", "--json"])
    finally:
        if os.getuid() == 0:
            os.chown(live, 0, -1)
    assert done.exit_code == EXIT_FAILED
    assert "is owned by uid" in done.stderr
    assert "not by you" in done.stderr
    assert done.stdout == ""


def test_a_missing_socket_or_a_dead_runtime_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.sock"
    done = runner.invoke(app, ["top", "--socket", str(missing), "--once"])
    assert done.exit_code == EXIT_NOT_FOUND
    assert "no control socket at" in done.stderr
    assert "Traceback" not in done.output
    with tempfile.TemporaryDirectory(prefix="ba") as short:
        stale = Path(short) / "dead.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(stale))
        stale.chmod(0o600)
        sock.close()  # what a killed runtime leaves
        done = runner.invoke(app, ["top", "--socket", str(stale), "--once"])
    assert done.exit_code == EXIT_NOT_FOUND
    assert "no runtime listens on" in done.stderr


def test_the_live_view_refreshes_until_its_runtime_stops(tmp_path: Path) -> None:
    with _live_runtime(tmp_path) as (path, runtime):
        command = ["top", "--socket", str(path), "--json", "--interval", "0.1"]
        top = subprocess.Popen(
            [sys.executable, "-m", "beamagent", *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert top.stdout is not None
        frames = [json.loads(top.stdout.readline()) for _ in range(2)]  # it refreshes
        assert all(frame["runs"][0]["run_id"] == "run-1" for frame in frames)
        assert runtime.stdin is not None
        runtime.stdin.close()  # the runtime stops: the view ends with a clear error
        assert runtime.wait(30) == 0
        _out, err = top.communicate(timeout=30)
    assert top.returncode == EXIT_NOT_FOUND
    assert "went away" in err or "no control socket" in err or "no runtime listens" in err
    assert "Traceback" not in err
