"""The pinned agent CLIs: where they are, how to install them, how to keep them local.

The versions live in the repository's ``package.json`` (installed from
``package-lock.json`` into ``node_modules/``). Each ``*_env`` builder makes an
isolated HOME inside a directory you give it, writes the CLI's configuration
there, and returns a minimal environment -- PATH, HOME, LANG and the CLI's
"keep it local" settings, never the caller's API keys -- that points the CLI at
a :class:`~beamagent.testing.FakeModelServer`::

    with FakeModelServer() as server:
        env = claude_env(tmp_path / "home", server)
        subprocess.run([str(cli_path("claude")), "-p", "ECHO:hi"], env=env, ...)

On Linux as root, :class:`LoopbackNamespace` confines a CLI to a network
namespace that has only ``lo``, with the fake server listening inside it.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, TypeAlias

from beamagent.log import get_logger
from beamagent.testing.fake_model import FakeModelServer, _in_network_namespace

__all__ = [
    "CLI_ENVIRONMENTS",
    "CLI_PACKAGES",
    "CliEnvironment",
    "CliInstallError",
    "LoopbackNamespace",
    "claude_env",
    "cli_env",
    "cli_path",
    "codex_env",
    "copilot_env",
    "ensure_installed",
    "gemini_env",
    "loopback_namespace_available",
    "netns_prefix",
    "opencode_env",
    "pinned_versions",
    "project_root",
]

log = get_logger(__name__)

# CLI command name -> npm package that provides it.
CLI_PACKAGES: Final[Mapping[str, str]] = {
    "claude": "@anthropic-ai/claude-code",
    "codex": "@openai/codex",
    "gemini": "@google/gemini-cli",
    "opencode": "opencode-ai",
    "copilot": "@github/copilot",
}
# Installed with the CLIs and copied into OpenCode's config dir (see opencode_env).
_OPENCODE_PLUGIN: Final = "@opencode-ai/plugin"
_FAKE_KEY: Final = "fake-key-not-a-secret"
_INSTALL_TIMEOUT_SECONDS: Final = 900.0
_FORWARDER: Final = Path(__file__).with_name("netns_forward.py")


class CliInstallError(RuntimeError):
    """The pinned CLIs could not be found or installed; the message says what to do."""


CliEnvironment: TypeAlias = Callable[[Path, FakeModelServer | str], dict[str, str]]
"""A builder of one CLI's isolated environment: ``(home, server) -> env``."""


# --- where the CLIs are ----------------------------------------------------------------


def project_root() -> Path:
    """The directory holding the ``package.json`` that pins the CLIs (the repo root)."""
    return Path(__file__).resolve().parents[2]


def pinned_versions(root: Path | None = None) -> dict[str, str]:
    """npm package -> exact version, as pinned in ``package.json``."""
    manifest = (root or project_root()) / "package.json"
    try:
        data = json.loads(manifest.read_text())
    except FileNotFoundError:
        raise CliInstallError(
            f"{manifest} not found: the pinned CLIs are installed from the beamagent source "
            "tree; run the tests from a checkout"
        ) from None
    return dict(data.get("dependencies", {}))


def cli_path(name: str, root: Path | None = None) -> Path | None:
    """The executable for CLI ``name``: the repo's ``node_modules/.bin`` first, then PATH."""
    local = (root or project_root()) / "node_modules" / ".bin" / name
    if local.exists() and os.access(local, os.X_OK):
        return local
    found = shutil.which(name)
    return Path(found) if found else None


def _installed_version(package: str, root: Path) -> str | None:
    try:
        manifest = json.loads((root / "node_modules" / package / "package.json").read_text())
    except (OSError, ValueError):
        return None
    version = manifest.get("version")
    return version if isinstance(version, str) else None


def _missing(names: Sequence[str], root: Path) -> list[str]:
    pins = pinned_versions(root)
    missing = []
    for name in names:
        package = CLI_PACKAGES.get(name)
        if package is None:
            raise ValueError(f"unknown CLI {name!r}; known: {', '.join(CLI_PACKAGES)}")
        local = root / "node_modules" / ".bin" / name
        if not local.exists() or _installed_version(package, root) != pins.get(package):
            missing.append(name)
    return missing


def ensure_installed(
    names: Sequence[str] = ("claude", "codex"),
    *,
    root: Path | None = None,
    timeout: float = _INSTALL_TIMEOUT_SECONDS,
) -> dict[str, Path]:
    """Install the pinned CLIs into ``node_modules`` unless they are there already.

    Runs ``npm ci`` in the repo root: it installs exactly what
    ``package-lock.json`` records and fails if the lock and ``package.json``
    disagree. Returns name -> executable. Raises CliInstallError when npm is
    missing or the install fails.
    """
    root = root or project_root()
    if not _missing(names, root):
        return {name: root / "node_modules" / ".bin" / name for name in names}
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise CliInstallError(
            "npm and node are needed to install the agent CLIs: install Node.js 20+ "
            "(e.g. `apt-get install nodejs npm`), then run `npm ci` "
            f"in {root}"
        )
    # Two test processes may get here at once: npm must not run twice in one tree.
    with (root / "package.json").open("rb") as manifest:
        fcntl.flock(manifest.fileno(), fcntl.LOCK_EX)
        try:
            if _missing(names, root):
                _run_npm_install(npm, root, timeout)
        finally:
            fcntl.flock(manifest.fileno(), fcntl.LOCK_UN)
    still = _missing(names, root)
    if still:
        raise CliInstallError(
            f"npm install finished but {', '.join(still)} is still missing or at the wrong "
            f"version in {root / 'node_modules'}; check package.json and package-lock.json"
        )
    return {name: root / "node_modules" / ".bin" / name for name in names}


def _run_npm_install(npm: str, root: Path, timeout: float) -> None:
    command = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
    started = time.monotonic()
    try:
        done = subprocess.run(
            command,
            cwd=root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CliInstallError(f"`{' '.join(command)}` in {root} took over {timeout} s") from None
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise CliInstallError(
            f"`{' '.join(command)}` in {root} failed with exit code {done.returncode}:\n{tail}"
        )
    log.info("clis_installed", root=str(root), seconds=round(time.monotonic() - started, 1))


# --- isolated environments ------------------------------------------------------------------


def _url(server: FakeModelServer | str) -> str:
    return (server if isinstance(server, str) else server.url).rstrip("/")


def _base_env(home: Path) -> dict[str, str]:
    """PATH, HOME, LANG and XDG dirs under HOME -- nothing else from the caller."""
    home.mkdir(parents=True, exist_ok=True)
    path = os.environ.get("PATH") or os.defpath
    node = shutil.which("node")
    if node and str(Path(node).parent) not in path.split(os.pathsep):
        path = os.pathsep.join([str(Path(node).parent), path])
    return {
        "PATH": path,
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "NO_COLOR": "1",
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "TMPDIR": str(_mkdir(home / "tmp")),
        "NO_UPDATE_NOTIFIER": "1",
        "DO_NOT_TRACK": "1",
    }


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def claude_env(home: Path, server: FakeModelServer | str) -> dict[str, str]:
    """Environment for Claude Code: API key auth against the fake server, no extra traffic."""
    env = _base_env(home)
    env.update(
        ANTHROPIC_BASE_URL=_url(server),
        ANTHROPIC_API_KEY=_FAKE_KEY,
        CLAUDE_CONFIG_DIR=str(_mkdir(home / ".claude")),
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        # Implied by the line above in current versions; explicit for older ones.
        DISABLE_AUTOUPDATER="1",
        DISABLE_TELEMETRY="1",
        DISABLE_ERROR_REPORTING="1",
        DISABLE_BUG_COMMAND="1",
    )
    return env


def codex_env(home: Path, server: FakeModelServer | str) -> dict[str, str]:
    """Environment for Codex: ``$CODEX_HOME/config.toml`` with a local "fake" provider."""
    env = _base_env(home)
    codex_home = _mkdir(home / ".codex")
    base_url = json.dumps(_url(server) + "/v1")  # a JSON string is a valid TOML string
    (codex_home / "config.toml").write_text(
        "\n".join(
            [
                'model = "gpt-5.5"  # a known slug; unknown slugs add an error item',
                'model_provider = "fake"',
                'approval_policy = "never"',
                'sandbox_mode = "read-only"',
                "check_for_update_on_startup = false",
                "",
                "[model_providers.fake]",
                'name = "Fake local"',
                f"base_url = {base_url}",
                'env_key = "FAKE_API_KEY"',
                'wire_api = "responses"  # "chat" is rejected by 0.169',
                "request_max_retries = 0",
                "stream_max_retries = 0",
                "",
                "[analytics]",
                "enabled = false",
                "",
                "[features]",
                "plugins = false  # else it looks up GitHub hosts",
                "",
            ]
        )
    )
    env.update(CODEX_HOME=str(codex_home), FAKE_API_KEY=_FAKE_KEY)
    return env


def gemini_env(home: Path, server: FakeModelServer | str) -> dict[str, str]:
    """Environment for Gemini CLI: API key auth, base URL override, no telemetry or updates."""
    env = _base_env(home)
    _write_json(
        home / ".gemini" / "settings.json",
        {
            "security": {"auth": {"selectedType": "gemini-api-key"}},
            "privacy": {"usageStatisticsEnabled": False},
            "telemetry": {"enabled": False},
            "general": {"disableAutoUpdate": True, "disableUpdateNag": True},
        },
    )
    env.update(
        GEMINI_API_KEY=_FAKE_KEY,
        GOOGLE_GEMINI_BASE_URL=_url(server),
        GEMINI_CLI_TRUST_WORKSPACE="true",
    )
    return env


def opencode_env(
    home: Path, server: FakeModelServer | str, *, root: Path | None = None
) -> dict[str, str]:
    """Environment for OpenCode: a "fake" OpenAI-compatible provider, nothing downloaded.

    The config is the global one (``$XDG_CONFIG_HOME/opencode/opencode.json``, also
    named by ``OPENCODE_CONFIG``), so it applies in any working directory. The
    pinned ``@opencode-ai/plugin`` is pre-installed there from the repo's
    ``node_modules`` (hard links), else OpenCode tries to download it.
    """
    env = _base_env(home)
    config_dir = _mkdir(Path(env["XDG_CONFIG_HOME"]) / "opencode")
    config = {
        "$schema": "https://opencode.ai/config.json",
        "model": "fake/fake-model",
        "small_model": "fake/fake-model",
        "autoupdate": False,
        "share": "disabled",
        "provider": {
            "fake": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Fake local",
                "options": {"baseURL": _url(server) + "/v1", "apiKey": _FAKE_KEY},
                "models": {
                    "fake-model": {
                        "name": "Fake Model",
                        "limit": {"context": 128000, "output": 4096},
                    },
                    # A second model, to switch to per prompt (``fake/fake-model-b``).
                    "fake-model-b": {
                        "name": "Fake Model B",
                        "limit": {"context": 128000, "output": 4096},
                    },
                },
            }
        },
        "permission": {"bash": "ask", "edit": "ask"},
    }
    _write_json(config_dir / "opencode.json", config)
    _link_opencode_plugin(config_dir, root or project_root())
    env.update(
        OPENCODE_CONFIG=str(config_dir / "opencode.json"),
        OPENCODE_DISABLE_MODELS_FETCH="1",
        OPENCODE_DISABLE_AUTOUPDATE="1",
        OPENCODE_DISABLE_LSP_DOWNLOAD="1",
        OPENCODE_DISABLE_SHARE="1",
        OPENCODE_DISABLE_DEFAULT_PLUGINS="1",
    )
    return env


def _link_opencode_plugin(config_dir: Path, root: Path) -> None:
    """Pre-install the pinned plugin as hard-linked copies of the repo's packages.

    Real directories, not a symlink to the repo's node_modules: OpenCode runs an
    npm install in its config dir, and that must never prune the repo's tree.
    """
    lock_path = root / "package-lock.json"
    modules = root / "node_modules"
    version = pinned_versions(root).get(_OPENCODE_PLUGIN)
    _write_json(
        config_dir / "package.json",
        {"dependencies": {_OPENCODE_PLUGIN: version or "*"}},
    )
    if not lock_path.is_file() or not modules.is_dir():
        return
    packages = json.loads(lock_path.read_text()).get("packages", {})
    wanted, seen = [_OPENCODE_PLUGIN], set()
    while wanted:
        name = wanted.pop()
        entry = packages.get(f"node_modules/{name}")
        if name in seen or entry is None:
            continue
        seen.add(name)
        wanted.extend(entry.get("dependencies", {}))
        target = config_dir / "node_modules" / name
        if not target.exists() and (modules / name).is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(modules / name, target, copy_function=_link_or_copy, symlinks=True)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def copilot_env(
    home: Path, server: FakeModelServer | str, *, cache_dir: Path | None = None
) -> dict[str, str]:
    """Environment for Copilot CLI in offline BYOK mode against the fake server.

    Its first run unpacks ~235 MB into ``$XDG_CACHE_HOME/copilot``; pass a shared
    ``cache_dir`` to do that once per test session instead of once per HOME.
    """
    env = _base_env(home)
    if cache_dir is not None:
        env["XDG_CACHE_HOME"] = str(_mkdir(cache_dir))
    env.update(
        COPILOT_OFFLINE="true",
        COPILOT_PROVIDER_BASE_URL=_url(server) + "/v1",
        COPILOT_PROVIDER_API_KEY=_FAKE_KEY,
        COPILOT_MODEL="gpt-5.4",
    )
    return env


CLI_ENVIRONMENTS: Final[Mapping[str, CliEnvironment]] = {
    "claude": claude_env,
    "codex": codex_env,
    "gemini": gemini_env,
    "opencode": lambda home, server: opencode_env(home, server),
    "copilot": lambda home, server: copilot_env(home, server),
}


def cli_env(name: str, home: Path, server: FakeModelServer | str) -> dict[str, str]:
    """The isolated environment for CLI ``name`` (``claude``, ``codex``, ...)."""
    try:
        build = CLI_ENVIRONMENTS[name]
    except KeyError:
        raise ValueError(f"unknown CLI {name!r}; known: {', '.join(CLI_ENVIRONMENTS)}") from None
    return build(home, server)


# --- network namespaces --------------------------------------------------------------------


_NETNS_WRAPPER: Final = ["sh", "-c", 'ip link set lo up 2>/dev/null; exec "$@"', "sh"]


@functools.cache
def netns_prefix() -> list[str]:
    """``unshare -rn`` argv prefix that runs a command in a loopback-only namespace.

    Empty when unprivileged user namespaces are not available. The command gets
    its own, empty network: it cannot reach a FakeModelServer running in this
    process, so use it to wrap a whole process tree -- e.g. the pytest session::

        unshare -rn -- sh -c 'ip link set lo up; exec "$@"' sh .venv/bin/python -m pytest

    -- or use :class:`LoopbackNamespace` to confine one CLI.
    """
    prefix = ["unshare", "-rn", "--", *_NETNS_WRAPPER]
    if shutil.which("unshare") is None:
        return []
    try:
        done = subprocess.run(
            [*prefix, "cat", "/sys/class/net/lo/operstate"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    # `lo` reports "unknown" when up; "down" means `ip` could not raise it.
    return list(prefix) if done.returncode == 0 and done.stdout.strip() != "down" else []


class LoopbackNamespace:
    """A private network namespace with only ``lo`` up, held open by a helper process.

    Needs root (CAP_SYS_ADMIN), ``unshare`` and ``nsenter`` (util-linux). Bind the
    fake server inside with ``FakeModelServer(netns=ns.path)`` and start the CLI
    with ``[*ns.prefix(), cli, ...]``: the CLI reaches the server over loopback
    and nothing else, so any phone-home fails locally::

        with LoopbackNamespace() as ns, FakeModelServer(netns=ns.path) as server:
            subprocess.run([*ns.prefix(), "claude", "-p", "hi"], env=claude_env(home, server))
    """

    def __init__(self) -> None:
        self._holder: subprocess.Popen[bytes] | None = None

    def start(self) -> LoopbackNamespace:
        """Create the namespace; raises OSError when that is not possible here."""
        if self._holder is not None:
            raise RuntimeError("LoopbackNamespace already started")
        if shutil.which("unshare") is None or shutil.which("nsenter") is None:
            raise OSError("LoopbackNamespace needs `unshare` and `nsenter` (util-linux)")
        # The holder only keeps the namespace alive; closing its stdin ends it.
        holder = subprocess.Popen(
            ["unshare", "-n", "--", "sh", "-c", "ip link set lo up && echo ready && exec cat"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._holder = holder
        assert holder.stdout is not None
        ready = _readline(holder.stdout.fileno(), timeout=10.0)
        if ready.strip() != b"ready":
            self.stop()
            raise OSError(
                "could not create a loopback-only network namespace (needs root): "
                f"{ready.decode(errors='replace').strip() or 'no output'}"
            )
        return self

    def stop(self) -> None:
        """End the holder process; the namespace goes when its last user does."""
        holder, self._holder = self._holder, None
        if holder is None:
            return
        for stream in (holder.stdin, holder.stdout, holder.stderr):
            if stream is not None:
                stream.close()
        try:
            holder.wait(timeout=5)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()

    def __enter__(self) -> LoopbackNamespace:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def path(self) -> str:
        """``/proc/PID/ns/net`` of the namespace, for ``FakeModelServer(netns=...)``."""
        if self._holder is None:
            raise RuntimeError("LoopbackNamespace is not started")
        return f"/proc/{self._holder.pid}/ns/net"

    def prefix(self) -> list[str]:
        """argv prefix that runs a command inside the namespace (no shell)."""
        return ["nsenter", f"--net={self.path}", "--"]

    def server_prefix(self) -> list[str]:
        """argv prefix that runs a *server* inside the namespace, reachable from here.

        :meth:`prefix` suits a CLI that only connects out (to a FakeModelServer
        bound inside). A server this process must reach -- ``opencode serve`` --
        runs under :mod:`beamagent.testing.netns_forward` instead: it listens
        here, forwards each connection into the namespace, and rewrites the port
        the server announces (``listening on http://127.0.0.1:PORT``) to its own.
        """
        # The file, not ``-m``: the child's environment may not find this package.
        return [sys.executable, str(_FORWARDER), "--netns", self.path, "--"]


def _readline(fd: int, timeout: float) -> bytes:
    """One line from a pipe, or what came before EOF or ``timeout``."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            break
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    return data


@functools.cache
def loopback_namespace_available() -> bool:
    """True when :class:`LoopbackNamespace` works here: namespace, server bind, nsenter."""
    try:
        with LoopbackNamespace() as ns:
            probe = _in_network_namespace(ns.path, lambda: socket.create_server(("127.0.0.1", 0)))
            probe.close()
            done = subprocess.run(
                [*ns.prefix(), "true"], capture_output=True, timeout=10, check=False
            )
            return done.returncode == 0
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("loopback_namespace_unavailable", error=str(exc))
        return False
