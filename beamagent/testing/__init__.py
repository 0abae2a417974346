"""beamagent's public test kit: fixtures' helpers, fault injection, the fake model, the CLIs.

The pytest fixtures (``beamagent_runtime``, ``fake_model_server``, ``local_backend``) come
with the package through its pytest plugin; see ``docs/testing.md``.
"""

from beamagent.backends.cassette import Cassette, CassetteMode
from beamagent.testing.assertions import assert_restarted, wait_for_event
from beamagent.testing.clis import (
    CLI_ENVIRONMENTS,
    CLI_PACKAGES,
    CliEnvironment,
    CliInstallError,
    LoopbackNamespace,
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
    project_root,
)
from beamagent.testing.fake_model import (
    ErrorStatus,
    FakeModelServer,
    Malformed,
    Protocol,
    RecordedRequest,
    Stall,
    Text,
    ToolCall,
    Turn,
    example_from_schema,
    is_side_request,
    shell_tool_arguments,
)
from beamagent.testing.faults import (
    InjectedCrash,
    crash,
    cut,
    disk_full,
    kill_backend,
    resolve_session,
)
from beamagent.testing.leaks import LeakReport, LeakSnapshot
from beamagent.testing.local_backend import LocalBackend
from beamagent.testing.postgres import PostgresServer, PostgresUnavailable

__all__ = [
    "CLI_ENVIRONMENTS",
    "CLI_PACKAGES",
    "Cassette",
    "CassetteMode",
    "CliEnvironment",
    "CliInstallError",
    "ErrorStatus",
    "FakeModelServer",
    "InjectedCrash",
    "LeakReport",
    "LeakSnapshot",
    "LocalBackend",
    "LoopbackNamespace",
    "Malformed",
    "PostgresServer",
    "PostgresUnavailable",
    "Protocol",
    "RecordedRequest",
    "Stall",
    "Text",
    "ToolCall",
    "Turn",
    "assert_restarted",
    "claude_env",
    "cli_env",
    "cli_path",
    "codex_env",
    "copilot_env",
    "crash",
    "cut",
    "disk_full",
    "ensure_installed",
    "example_from_schema",
    "gemini_env",
    "is_side_request",
    "kill_backend",
    "loopback_namespace_available",
    "netns_prefix",
    "opencode_env",
    "pinned_versions",
    "project_root",
    "resolve_session",
    "shell_tool_arguments",
    "wait_for_event",
]
