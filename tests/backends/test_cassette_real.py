"""Cassettes of the real, pinned CLIs (claude, codex, gemini, copilot over stdio; opencode's
``opencode serve`` over HTTP + SSE) and the fake model.

Recorded live (two turns), then replayed with the CLI off PATH, ``cli_path`` pointing
nowhere and the fake server stopped: the same messages come back; a changed prompt
fails with a diff; no secret from the environment is in the file.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from beamagent import Runtime
from beamagent.backends.cassette import CWD_PLACEHOLDER, Cassette, CassetteMode
from beamagent.errors import CassetteMismatch
from beamagent.log import is_secret_key
from beamagent.testing import (
    FakeModelServer,
    LoopbackNamespace,
    Text,
    claude_env,
    codex_env,
    copilot_env,
    ensure_installed,
    gemini_env,
    opencode_env,
)
from tests.backends.conftest import prefix, skip_without_clis

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # `clis` may install first
WAIT = 60.0
PROMPTS = ["What is 2 + 2?", "And 3 + 3?"]
ENV_SECRET = "sk-cassette-process-secret-0123456789abcdef"

ENVS: dict[str, Callable[[Path, FakeModelServer], dict[str, str]]] = {
    "claude": claude_env,
    "codex": codex_env,
    "gemini": gemini_env,
    "copilot": copilot_env,
    "opencode": opencode_env,
}


NATIVE_IDS: list[Any] = []  # each run's native session id, as session_info() gives it


def summary(messages: list[Any]) -> list[tuple[str, str | None, str | None]]:
    # Gemini's command list is a notification of its own timing: live, it lands in the
    # first turn or before it; a replay delivers it right after the write it followed.
    return [
        (m.type.value, m.subtype, m.content)
        for m in messages
        if (m.type.value, m.subtype) != ("system", "commands")
    ]


def run(
    cassette: Cassette,
    backend: str,
    env: dict[str, str],
    work: Path,
    prompts: list[str],
    **options: Any,
) -> list[list[Any]]:
    with Runtime(store=":memory:", handle_signals=False, cassette=cassette) as runtime:
        session = runtime.start_session(
            backend=backend, env=env, inherit_env=False, cwd=str(work), **options
        )
        turns = [session.query(p, timeout=WAIT) for p in prompts]
        NATIVE_IDS.append(session.session_info().get("native_session_id"))
        return turns


@pytest.mark.parametrize("backend", ["claude", "codex", "gemini", "copilot", "opencode"])
def test_record_then_replay_offline(
    backend: str,
    sandbox: LoopbackNamespace | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        skip_without_clis("node and npm are needed to install and run the agent CLIs")
    ensure_installed((backend,))
    monkeypatch.setenv("BEAMAGENT_CASSETTE_TEST_TOKEN", ENV_SECRET)
    NATIVE_IDS.clear()
    path = tmp_path / "cassettes" / f"{backend}.jsonl"
    record_work, replay_work = tmp_path / "record", tmp_path / "replay"
    record_work.mkdir()
    replay_work.mkdir()

    with FakeModelServer(netns=sandbox.path if sandbox else None) as server:
        server.script([Text("4"), Text("6")])
        env = ENVS[backend](tmp_path / "home", server)
        cassette = Cassette(path, "once")
        assert cassette.mode is CassetteMode.RECORD
        with cassette:
            # opencode's server runs in the sandbox, reachable on loopback from here.
            argv = sandbox.server_prefix() if backend == "opencode" and sandbox else prefix(sandbox)
            live = run(cassette, backend, env, record_work, PROMPTS, command_prefix=argv)
    assert [m[-1].content for m in live] == ["4", "6"]

    # No secret of the environment (this process's or the CLI's) is in the file.
    text = path.read_text()
    secrets = {
        value
        for source in (os.environ, env)
        for name, value in source.items()
        if is_secret_key(name) and len(value) >= 4
    }
    assert ENV_SECRET in secrets
    assert [s for s in secrets if s in text] == []
    assert str(record_work) not in text
    assert CWD_PLACEHOLDER in text

    # Offline: no CLI on PATH, cli_path pointing nowhere, the fake server stopped.
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    nowhere = str(tmp_path / "nowhere" / backend)
    replay = Cassette(path, "once")
    assert replay.mode is CassetteMode.REPLAY
    replayed = run(replay, backend, env, replay_work, PROMPTS, cli_path=nowhere)
    assert [summary(m) for m in replayed] == [summary(m) for m in live]
    live_id, replayed_id = NATIVE_IDS[-2:]
    assert live_id
    assert replayed_id == live_id  # native ids come back as recorded
    assert replay.mismatches == []
    again = run(Cassette(path, "replay"), backend, env, replay_work, PROMPTS, cli_path=nowhere)
    assert [[(m.type, m.subtype, m.content) for m in turn] for turn in again] == [
        [(m.type, m.subtype, m.content) for m in turn] for turn in replayed
    ]  # a replay is deterministic, to the last message
    init = replayed[0][0]
    if init.system_info is not None and "cwd" in init.system_info:
        assert init.system_info["cwd"] == str(replay_work)

    # A changed prompt fails with a diff, at once.
    changed = Cassette(path, "replay")
    with pytest.raises(CassetteMismatch) as raised:
        run(changed, backend, env, replay_work, ["What is 5 + 5?"], cli_path=nowhere)
    mismatch = raised.value
    assert str(changed.mismatches[0]) == str(mismatch)
    assert "+++ this replay's write" in str(mismatch)
    assert "What is 5 + 5?" in str(mismatch)
    assert "What is 2 + 2?" in str(mismatch)
