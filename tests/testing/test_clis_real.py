"""The real, pinned Claude Code and Codex CLIs against FakeModelServer on 127.0.0.1.

The CLIs are installed from package.json / package-lock.json on first use
(``ensure_installed``); the tests skip only when node or npm is missing. As
root, each CLI runs in a private network namespace that has only ``lo``, so a
phone-home attempt fails instead of leaving the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from beamagent.testing import (
    CLI_ENVIRONMENTS,
    CLI_PACKAGES,
    CliInstallError,
    FakeModelServer,
    LoopbackNamespace,
    Protocol,
    Text,
    ToolCall,
    claude_env,
    cli_env,
    cli_path,
    codex_env,
    copilot_env,
    ensure_installed,
    gemini_env,
    loopback_namespace_available,
    netns_prefix,
    opencode_env,
    pinned_versions,
)
from tests._clis import skip_without_clis

CLI_TIMEOUT_SECONDS = 60.0
NO_NODE = shutil.which("node") is None or shutil.which("npm") is None


@pytest.fixture(scope="module")
def clis() -> dict[str, Path]:
    if NO_NODE:
        skip_without_clis("node and npm are needed to install and run the agent CLIs")
    return ensure_installed(("claude", "codex"))


@pytest.fixture
def sandbox() -> Iterator[LoopbackNamespace | None]:
    """A loopback-only network namespace where that works here (root), else None."""
    if not loopback_namespace_available():
        yield None
        return
    with LoopbackNamespace() as ns:
        yield ns


@pytest.fixture
def server(sandbox: LoopbackNamespace | None) -> Iterator[FakeModelServer]:
    with FakeModelServer(reply="default reply", netns=sandbox.path if sandbox else None) as srv:
        yield srv


def run_cli(
    argv: Sequence[str], env: dict[str, str], cwd: Path, sandbox: LoopbackNamespace | None
) -> tuple[list[dict[str, Any]], str]:
    """Run a CLI to completion (time-limited, process group reaped); JSON lines + stderr."""
    command = [*(sandbox.prefix() if sandbox else []), *argv]
    process = subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Its own process group, so a timeout kills the CLI's children as well.
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=CLI_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{argv[0]} did not finish in {CLI_TIMEOUT_SECONDS} s; stderr: {stderr}")
    finally:
        # Whatever the CLI left in its group (a tool's shell) must not outlive the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, f"exit {process.returncode}; stderr: {stderr[-2000:]}"
    lines = []
    for line in stdout.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines, stderr


def of_type(lines: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("type") == kind]


# --- Claude Code -------------------------------------------------------------------------------


# The first run may install the CLIs (npm, ~30 s with a warm cache).
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_claude_print_echo(
    clis: dict[str, Path],
    server: FakeModelServer,
    sandbox: LoopbackNamespace | None,
    tmp_path: Path,
) -> None:
    env = claude_env(tmp_path / "home", server)
    work = tmp_path / "work"
    work.mkdir()

    lines, _ = run_cli(
        [str(clis["claude"]), "-p", "--output-format", "stream-json", "--verbose", "ECHO:hello"],
        env,
        work,
        sandbox,
    )

    [init] = [line for line in of_type(lines, "system") if line.get("subtype") == "init"]
    assert init["cwd"] == str(work)
    assert "Bash" in init["tools"]
    assert init["apiKeySource"] == "ANTHROPIC_API_KEY"
    texts = [
        block["text"]
        for line in of_type(lines, "assistant")
        for block in line["message"]["content"]
        if block["type"] == "text"
    ]
    assert "hello" in texts
    [result] = of_type(lines, "result")
    assert result["is_error"] is False
    assert result["result"] == "hello"
    # What the CLI sent: one streaming Messages call with our fake key.
    [request] = server.model_requests()
    assert request.protocol is Protocol.ANTHROPIC
    assert request.query == {"beta": "true"}
    assert request.json["stream"] is True
    assert request.headers["x-api-key"] == env["ANTHROPIC_API_KEY"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_claude_tool_call_round_trip(
    clis: dict[str, Path],
    server: FakeModelServer,
    sandbox: LoopbackNamespace | None,
    tmp_path: Path,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    target = work / "made-by-bash"
    server.script([ToolCall(command=f"touch {target}"), Text("created it")])

    lines, _ = run_cli(
        [
            str(clis["claude"]),
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            # `=`: a bare --allowedTools takes every following word, the prompt too.
            "--allowedTools=Bash",
            "make the file",
        ],
        claude_env(tmp_path / "home", server),
        work,
        sandbox,
    )

    assert target.exists()
    uses = [
        block
        for line in of_type(lines, "assistant")
        for block in line["message"]["content"]
        if block["type"] == "tool_use"
    ]
    assert [(u["name"], u["input"]) for u in uses] == [("Bash", {"command": f"touch {target}"})]
    assert of_type(lines, "result")[0]["result"] == "created it"
    first, second = server.model_requests()
    # The second request carries the earlier tool call and its result.
    messages = second.json["messages"]
    assert any(
        block.get("type") == "tool_result" and block.get("tool_use_id") == uses[0]["id"]
        for message in messages
        if isinstance(message["content"], list)
        for block in message["content"]
    )
    assert uses[0]["id"] in second.text
    assert "make the file" in first.text
    assert "make the file" in second.text


# --- Codex ----------------------------------------------------------------------------------------


def codex_argv(clis: dict[str, Path], prompt: str) -> list[str]:
    return [str(clis["codex"]), "exec", "--json", "--skip-git-repo-check", prompt]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_codex_exec_echo(
    clis: dict[str, Path],
    server: FakeModelServer,
    sandbox: LoopbackNamespace | None,
    tmp_path: Path,
) -> None:
    work = tmp_path / "work"
    work.mkdir()

    lines, _ = run_cli(
        codex_argv(clis, "ECHO:hello"), codex_env(tmp_path / "home", server), work, sandbox
    )

    assert lines[0]["type"] == "thread.started"
    messages = [
        line["item"]
        for line in of_type(lines, "item.completed")
        if line["item"]["type"] == "agent_message"
    ]
    assert [m["text"] for m in messages] == ["hello"]
    [done] = of_type(lines, "turn.completed")
    assert done["usage"]["input_tokens"] > 0
    assert done["usage"]["output_tokens"] > 0
    [request] = server.model_requests()
    assert request.protocol is Protocol.OPENAI_RESPONSES
    assert request.path == "/v1/responses"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_codex_tool_call_round_trip(
    clis: dict[str, Path],
    server: FakeModelServer,
    sandbox: LoopbackNamespace | None,
    tmp_path: Path,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    # The sandbox is read-only: a command that only prints.
    server.script([ToolCall(command="echo tool-marker-42"), Text("saw the marker")])

    lines, _ = run_cli(
        codex_argv(clis, "print the marker"), codex_env(tmp_path / "home", server), work, sandbox
    )

    commands = [
        line["item"]
        for line in of_type(lines, "item.completed")
        if line["item"]["type"] == "command_execution"
    ]
    assert len(commands) == 1
    assert "echo tool-marker-42" in commands[0]["command"]
    assert commands[0]["exit_code"] == 0
    assert "tool-marker-42" in commands[0]["aggregated_output"]
    texts = [
        line["item"]["text"]
        for line in of_type(lines, "item.completed")
        if line["item"]["type"] == "agent_message"
    ]
    assert texts == ["saw the marker"]
    _first, second = server.model_requests()
    outputs = [i for i in second.json["input"] if i.get("type") == "function_call_output"]
    assert len(outputs) == 1
    assert "tool-marker-42" in outputs[0]["output"]
    calls = [i for i in second.json["input"] if i.get("type") == "function_call"]
    assert calls[0]["name"] == "exec_command"
    assert json.loads(calls[0]["arguments"]) == {"cmd": "echo tool-marker-42"}


# --- the kit itself: versions, install, environments, namespaces ----------------------------------


def test_pinned_versions_match_the_reference() -> None:
    pins = pinned_versions()

    assert pins["@anthropic-ai/claude-code"] == "2.1.197"
    assert pins["@openai/codex"] == "0.169.0"
    assert set(CLI_PACKAGES.values()) <= set(pins)


def test_ensure_installed_without_npm_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "package.json").write_text(
        json.dumps({"dependencies": {"@anthropic-ai/claude-code": "2.1.197"}})
    )
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))

    with pytest.raises(CliInstallError, match="npm and node are needed"):
        ensure_installed(("claude",), root=tmp_path)
    assert cli_path("claude", root=tmp_path) is None


@pytest.mark.timeout(900)  # `clis` may install first
def test_ensure_installed_does_not_run_npm_when_the_pins_are_there(
    clis: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # No npm on PATH: it would fail if it tried to install.
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))

    assert ensure_installed(("claude", "codex")) == clis
    assert cli_path("codex") == clis["codex"]


def test_ensure_installed_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown CLI"):
        ensure_installed(("vim",))


SECRET = "sk-user-secret-must-not-leak"


@pytest.fixture
def user_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "GITHUB_TOKEN"):
        monkeypatch.setenv(name, SECRET)


@pytest.mark.usefixtures("user_secrets")
@pytest.mark.parametrize("name", sorted(CLI_ENVIRONMENTS))
def test_environments_are_minimal_and_point_at_the_server(name: str, tmp_path: Path) -> None:
    home = tmp_path / "home"

    env = cli_env(name, home, "http://127.0.0.1:4321")

    assert SECRET not in json.dumps(env)
    assert env["HOME"] == str(home)
    assert env["PATH"]
    assert "127.0.0.1:4321" in json.dumps(env) + "".join(
        p.read_text() for p in home.rglob("*") if p.is_file() and p.suffix in (".toml", ".json")
    )
    assert all(value.startswith(str(home)) for key, value in env.items() if key.startswith("XDG_"))


def test_claude_env(tmp_path: Path) -> None:
    env = claude_env(tmp_path / "home", "http://127.0.0.1:1234/")

    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:1234"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["ANTHROPIC_API_KEY"]


def test_codex_env_writes_the_fake_provider(tmp_path: Path) -> None:
    env = codex_env(tmp_path / "home", "http://127.0.0.1:1234")

    config = tomllib.loads((Path(env["CODEX_HOME"]) / "config.toml").read_text())
    assert config["model_provider"] == "fake"
    provider = config["model_providers"]["fake"]
    assert provider["base_url"] == "http://127.0.0.1:1234/v1"
    assert provider["wire_api"] == "responses"
    assert env[provider["env_key"]]
    assert config["analytics"]["enabled"] is False
    assert config["features"]["plugins"] is False
    assert config["check_for_update_on_startup"] is False


def test_gemini_env(tmp_path: Path) -> None:
    env = gemini_env(tmp_path / "home", "http://127.0.0.1:1234")

    settings = json.loads((tmp_path / "home" / ".gemini" / "settings.json").read_text())
    assert settings["security"]["auth"]["selectedType"] == "gemini-api-key"
    assert settings["telemetry"]["enabled"] is False
    assert env["GOOGLE_GEMINI_BASE_URL"] == "http://127.0.0.1:1234"
    assert env["GEMINI_CLI_TRUST_WORKSPACE"] == "true"


@pytest.mark.timeout(900)  # `clis` may install first
def test_opencode_env_preinstalls_the_plugin(clis: dict[str, Path], tmp_path: Path) -> None:
    env = opencode_env(tmp_path / "home", "http://127.0.0.1:1234")

    config = json.loads(Path(env["OPENCODE_CONFIG"]).read_text())
    assert config["provider"]["fake"]["options"]["baseURL"] == "http://127.0.0.1:1234/v1"
    assert env["OPENCODE_DISABLE_AUTOUPDATE"] == "1"
    modules = Path(env["OPENCODE_CONFIG"]).parent / "node_modules"
    plugin = json.loads((modules / "@opencode-ai" / "plugin" / "package.json").read_text())
    assert plugin["version"] == pinned_versions()["@opencode-ai/plugin"]
    # Real directories, never a link into the repo's node_modules (npm must not prune it).
    assert not modules.is_symlink()
    assert (modules / "zod").is_dir()


def test_copilot_env(tmp_path: Path) -> None:
    env = copilot_env(tmp_path / "home", "http://127.0.0.1:1234", cache_dir=tmp_path / "cache")

    assert env["COPILOT_PROVIDER_BASE_URL"] == "http://127.0.0.1:1234/v1"
    assert env["COPILOT_OFFLINE"] == "true"
    assert env["XDG_CACHE_HOME"] == str(tmp_path / "cache")


def test_netns_prefix_gives_a_loopback_only_network(server: FakeModelServer) -> None:
    prefix = netns_prefix()
    if not prefix:
        pytest.skip("unprivileged user namespaces are not available here")
    probe = (
        "import socket, sys\n"
        "s = socket.create_server(('127.0.0.1', 0)); socket.create_connection(s.getsockname())\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {server.port}), timeout=2)\n"
        "except OSError:\n"
        "    print('isolated')\n"
    )

    done = subprocess.run(
        [*prefix, sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    # Loopback works inside, and this process's server (in another namespace) is out of reach.
    assert done.stdout.strip() == "isolated", done.stderr
