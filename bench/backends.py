"""The claude backend against the official Python SDK, on the same ``claude`` binary.

Both drive the pinned Claude Code CLI (``node_modules/.bin/claude``) against
FakeModelServer on 127.0.0.1 (inside a loopback-only network namespace when
running as root; both get the same launcher then). Prints:

  * import time, in fresh interpreters: ``from beamagent import Runtime`` (+ the
    claude backend) vs ``import claude_agent_sdk`` (goal: ours <= 0.3 s), both
    from compiled bytecode as installed (see ``import_seconds``), and ours again
    compiling from source. Not bare ``import beamagent``: its names load at first
    use (PEP 562), so that alone would measure almost nothing of what a program
    using it pays;
  * one-shot round trip in-process: ``start_session`` + ``query`` + ``stop``
    on a running Runtime vs the SDK's ``query()`` (goal: ratio <= 1.0);
  * one-shot as a whole process: interpreter + import + one query;
  * a second turn on a live session vs the SDK's ``ClaudeSDKClient``, with our
    default ``CLAUDE_CODE_EAGER_FLUSH=1`` and without it.

Both sides send the same system prompt (the SDK's default, empty) and the
same prompt; the fake model answers instantly, so what is measured is the
client, the CLI's start-up and the protocol. That comparison needs the
``bench`` extra (``claude_agent_sdk``); without it, it is skipped and said so.

Then, for every registered backend (the five CLIs, ``openai`` against the fake
server's Chat Completions, ``local``), through the public Session API:

  * session start: median seconds of ``start_session`` until the session is
    ready (the CLI spawned and its handshake done), over ``STARTS`` sessions;
  * plain query on a live session: median of ``LIVE_TURNS`` turns after a
    first one.

These have no same-run baseline of their own; each line's goal text gives the
figure measured for the bare CLI in ``../shared/reference/agent-clis.md``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# This checkout's beamagent, not whichever one is installed (a worktree, a clone).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import figure, paired, report

from beamagent import Runtime, configure_logging
from beamagent.testing import (
    FakeModelServer,
    LoopbackNamespace,
    claude_env,
    cli_env,
    ensure_installed,
    loopback_namespace_available,
)

configure_logging("warning")

ROUNDS = 9
LIVE_TURNS = 20
IMPORTS = 5
PROMPT = "ECHO:benchmark"
STARTS = 5
CLI_BACKENDS = ("claude", "codex", "gemini", "copilot", "opencode")
#: What the bare CLI measured (agent-clis.md, "Measured"): a turn on a live process.
CLI_REFERENCE = {
    "claude": "bare CLI turn ~29 ms",
    "codex": "bare app-server turn ~50 ms",
    "gemini": "bare ACP turn ~40 ms",
    "copilot": "bare ACP turn ~60 ms",
    "opencode": "bare server turn ~190 ms (ACP)",
}


def median_process_seconds(code: str, env: dict[str, str], runs: int) -> float:
    """Median wall time of ``python -c code`` as reported by the code itself."""
    samples = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        samples.append(float(done.stdout.strip().splitlines()[-1]))
    return statistics.median(samples)


def whole_process_seconds(code: str, env: dict[str, str], runs: int) -> float:
    """Best wall time of a fresh interpreter running ``code`` to completion."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)
        samples.append(time.perf_counter() - started)
    return min(samples)


IMPORT_OURS = (
    "import time; t = time.perf_counter(); from beamagent import Runtime; "
    "import beamagent.backends.claude; "
    "print(time.perf_counter() - t)"
)
IMPORT_SDK = (
    "import time; t = time.perf_counter(); import claude_agent_sdk; print(time.perf_counter() - t)"
)
ONE_SHOT_OURS = """
import json, os
from beamagent import Runtime
cfg = json.loads(os.environ["BENCH_CONFIG"])
with Runtime(store=":memory:") as rt:
    s = rt.start_session(backend="claude", cli_path=cfg["cli"], cwd=cfg["cwd"], env=cfg["env"],
                         inherit_env=False, system_prompt="")
    assert s.query(cfg["prompt"])[-1].content == "benchmark"
"""
ONE_SHOT_SDK = """
import json, os, anyio
from claude_agent_sdk import ClaudeAgentOptions, ResultMessage, query
cfg = json.loads(os.environ["BENCH_CONFIG"])
async def main():
    options = ClaudeAgentOptions(cli_path=cfg["cli"], cwd=cfg["cwd"], env=cfg["env"])
    async for m in query(prompt=cfg["prompt"], options=options):
        if isinstance(m, ResultMessage):
            assert m.result == "benchmark"
anyio.run(main)
"""


def launcher(cli: Path, ns: LoopbackNamespace | None, directory: Path) -> Path:
    """An executable both clients run as "the CLI": the pinned binary, in the namespace."""
    if ns is None:
        return cli
    script = directory / "claude-in-netns"
    script.write_text(f'#!/bin/sh\nexec nsenter --net={ns.path} -- {cli} "$@"\n')
    script.chmod(0o755)
    return script


def sdk_one_shot(cli: Path, cwd: Path, env: dict[str, str]) -> Callable[[], None]:
    import anyio
    from claude_agent_sdk import ClaudeAgentOptions, ResultMessage, query

    options = ClaudeAgentOptions(cli_path=str(cli), cwd=str(cwd), env=env)

    async def run() -> None:
        async for message in query(prompt=PROMPT, options=options):
            if isinstance(message, ResultMessage):
                assert message.result == "benchmark", message

    return lambda: anyio.run(run)


def ours_one_shot(rt: Runtime, cli: Path, cwd: Path, env: dict[str, str]) -> Callable[[], None]:
    def run() -> None:
        session = rt.start_session(
            backend="claude",
            cli_path=str(cli),
            cwd=str(cwd),
            env=env,
            inherit_env=False,
            system_prompt="",
        )
        try:
            assert session.query(PROMPT)[-1].content == "benchmark"
        finally:
            session.stop()

    return run


def sdk_live_turn(cli: Path, cwd: Path, env: dict[str, str], turns: int) -> float:
    """Median seconds of a turn on a live ClaudeSDKClient (after a first turn)."""
    import anyio
    from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient, ResultMessage

    samples: list[float] = []

    async def run() -> None:
        options = ClaudeAgentOptions(cli_path=str(cli), cwd=str(cwd), env=env)
        async with ClaudeSDKClient(options=options) as client:
            for i in range(turns + 1):
                started = time.perf_counter()
                await client.query(PROMPT)
                async for message in client.receive_response():
                    if isinstance(message, ResultMessage):
                        break
                if i:
                    samples.append(time.perf_counter() - started)

    anyio.run(run)
    return statistics.median(samples)


def ours_live_turn(rt: Runtime, cli: Path, cwd: Path, env: dict[str, str], turns: int) -> float:
    """Median seconds of a turn on a live session (after a first turn)."""
    session = rt.start_session(
        backend="claude",
        cli_path=str(cli),
        cwd=str(cwd),
        env=env,
        inherit_env=False,
        system_prompt="",
    )
    try:
        session.query(PROMPT)
        samples = []
        for _ in range(turns):
            started = time.perf_counter()
            session.query(PROMPT)
            samples.append(time.perf_counter() - started)
    finally:
        session.stop()
    return statistics.median(samples)


def main() -> None:
    names = ("claude", *(n for n in CLI_BACKENDS if n != "claude"))
    clis = ensure_installed(names)
    ns = LoopbackNamespace().start() if loopback_namespace_available() else None
    try:
        with tempfile.TemporaryDirectory(prefix="beamagent-bench-") as tmp:
            root = Path(tmp)
            work = root / "work"
            work.mkdir()
            # codex refuses to run outside a git repository (agent-clis.md).
            subprocess.run(["git", "init", "-q", str(work)], check=True)
            with FakeModelServer(netns=ns.path if ns else None) as server:
                where = "in a loopback-only namespace" if ns else "on the host's loopback"
                print(f"CLIs from {clis['claude'].parent} {where}; fake model at {server.url}")
                if sdk_available():
                    env = claude_env(root / "home", server)
                    run(launcher(clis["claude"], ns, root), work, env)
                else:
                    print("claude vs the official SDK: skipped (install the bench extra)")
                per_backend(root, work, server, ns)
    finally:
        if ns is not None:
            ns.stop()


def sdk_available() -> bool:
    """Whether the official Claude SDK (the ``bench`` extra) is importable."""
    try:
        import claude_agent_sdk  # noqa: F401
    except ImportError:
        return False
    return True


def backend_options(
    name: str,
    root: Path,
    work: Path,
    server: FakeModelServer,
    host_server: FakeModelServer,
    ns: LoopbackNamespace | None,
) -> dict[str, Any]:
    """Start options for ``name`` against the fake server (each CLI with its own HOME)."""
    if name == "local":
        return {}
    if name == "openai":
        # The host's own fake server: the namespace's is out of this process's reach.
        return {"base_url": host_server.url + "/v1", "api_key": "fake-key", "model": "fake-model"}
    options: dict[str, Any] = {
        "env": cli_env(name, root / f"home-{name}", server),
        "inherit_env": False,
        "cwd": str(work),
    }
    if ns is not None:
        # opencode is a server this process talks to: it must be reachable from here.
        options["command_prefix"] = ns.server_prefix() if name == "opencode" else ns.prefix()
    return options


def per_backend(
    root: Path, work: Path, server: FakeModelServer, ns: LoopbackNamespace | None
) -> None:
    """Median session start and live plain-query time for every registered backend."""
    with Runtime(store=":memory:") as rt, FakeModelServer() as host_server:
        for name in (*CLI_BACKENDS, "openai", "local"):
            if name not in rt.backends():
                print(f"{name}: not registered in this version, skipped")
                continue
            options = backend_options(name, root, work, server, host_server, ns)
            starts: list[float] = []
            for _ in range(STARTS):
                started = time.perf_counter()
                session = rt.start_session(backend=name, **options)
                starts.append(time.perf_counter() - started)
                session.stop()
            session = rt.start_session(backend=name, **options)
            try:
                session.query(PROMPT)  # the first turn warms the CLI's caches
                turns: list[float] = []
                for _ in range(LIVE_TURNS):
                    started = time.perf_counter()
                    answer = session.query(PROMPT)
                    turns.append(time.perf_counter() - started)
                    if answer[-1].is_error:
                        raise RuntimeError(f"{name}: the query failed: {answer[-1]!r}")
            finally:
                session.stop()
            reference = CLI_REFERENCE.get(name, "in-process" if name == "local" else "HTTP")
            figure(f"{name}: session start", statistics.median(starts) * 1000, "ms", "median")
            figure(
                f"{name}: plain query on a live session",
                statistics.median(turns) * 1000,
                "ms",
                f"median; {reference}",
            )


def import_seconds() -> tuple[float, float]:
    """Median import time of ours and of the SDK, both from compiled bytecode.

    An installed package has its ``.pyc`` files (pip compiles them); a checkout
    run with ``PYTHONDONTWRITEBYTECODE`` (as here) has none, so every import
    would compile beamagent's source and time the compiler. Both sides get
    their bytecode in a scratch ``PYTHONPYCACHEPREFIX``, written by one
    unmeasured import each; the checkout is left as it was.
    """
    with tempfile.TemporaryDirectory() as pycache:
        cached = {**os.environ, "PYTHONPYCACHEPREFIX": pycache}
        cached.pop("PYTHONDONTWRITEBYTECODE", None)
        for code in (IMPORT_OURS, IMPORT_SDK):
            median_process_seconds(code, cached, 1)
        ours = median_process_seconds(IMPORT_OURS, cached, IMPORTS)
        sdk = median_process_seconds(IMPORT_SDK, cached, IMPORTS)
    return ours, sdk


def run(cli: Path, work: Path, env: dict[str, str]) -> None:
    child_env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    ours_import, sdk_import = import_seconds()
    report("import time", ours_import, sdk_import, "s", "goal: ours <= 0.30 s")
    figure(
        "import time, compiling beamagent from source",
        median_process_seconds(IMPORT_OURS, child_env, IMPORTS),
        "s",
        "a checkout without .pyc files, as under PYTHONDONTWRITEBYTECODE",
    )

    with Runtime(store=":memory:") as rt:
        sdk_t, our_t = paired(
            sdk_one_shot(cli, work, env), ours_one_shot(rt, cli, work, env), 1, rounds=ROUNDS
        )
        report("one-shot round trip (in-process)", our_t, sdk_t, "s", "goal: ratio <= 1.0")

        config: dict[str, Any] = {"cli": str(cli), "cwd": str(work), "env": env, "prompt": PROMPT}
        process_env = {**child_env, "BENCH_CONFIG": json.dumps(config)}
        our_p = whole_process_seconds(ONE_SHOT_OURS, process_env, 3)
        sdk_p = whole_process_seconds(ONE_SHOT_SDK, process_env, 3)
        report("one-shot as a whole process", our_p, sdk_p, "s", "import + one query + exit")

        our_live = ours_live_turn(rt, cli, work, env, LIVE_TURNS)
        no_flush = {**env, "CLAUDE_CODE_EAGER_FLUSH": ""}
        our_live_no_flush = ours_live_turn(rt, cli, work, no_flush, LIVE_TURNS)
    sdk_live = sdk_live_turn(cli, work, env, LIVE_TURNS)
    report(
        "second turn on a live session",
        our_live * 1000,
        sdk_live * 1000,
        "ms",
        "median; SDK: ClaudeSDKClient",
    )
    report(
        "  same, transcript flush per turn off",
        our_live_no_flush * 1000,
        sdk_live * 1000,
        "ms",
        "our default flushes it so a killed CLI can resume",
    )


if __name__ == "__main__":
    main()
