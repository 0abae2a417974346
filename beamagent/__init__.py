"""beamagent: the BEAM/OTP process model for LLM agents.

Every agent session is a supervised actor, a registry actor routes new
sessions to backends by policy, and workflows run as graphs of node actors.

Example::

    from beamagent import Runtime

    with Runtime(store=":memory:") as runtime:
        session = runtime.start_session(backend="local")
        print(session.query("hello")[-1].content)

The names below are imported at their first use (PEP 562), so ``import
beamagent`` costs almost nothing and ``from beamagent import Runtime`` only
what a runtime needs; the tool server, the CLI, the graph executor and
OpenTelemetry load when used (``docs/decisions.md``, "Lazy imports").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from beamagent._lazy import exports, load

if TYPE_CHECKING:
    from beamagent.backends.base import SessionState
    from beamagent.backends.local import LocalExit, LocalToolCall
    from beamagent.backends.permissions import Allow, Deny, PermissionContext
    from beamagent.log import configure_logging
    from beamagent.messages import ContentBlock, Message, MessageType, normalize
    from beamagent.runtime import BackendSpec, Runtime, default_runtime, shutdown_default_runtime
    from beamagent.session import QueryRef, Session

__all__ = [
    "Allow",
    "BackendSpec",
    "ContentBlock",
    "Deny",
    "LocalExit",
    "LocalToolCall",
    "Message",
    "MessageType",
    "PermissionContext",
    "QueryRef",
    "Runtime",
    "Session",
    "SessionState",
    "configure_logging",
    "default_runtime",
    "normalize",
    "shutdown_default_runtime",
]

_EXPORTS = exports(
    {
        "beamagent.backends.base": ("SessionState",),
        "beamagent.backends.local": (
            "LocalExit",
            "LocalToolCall",
        ),
        "beamagent.backends.permissions": (
            "Allow",
            "Deny",
            "PermissionContext",
        ),
        "beamagent.log": ("configure_logging",),
        "beamagent.messages": (
            "ContentBlock",
            "Message",
            "MessageType",
            "normalize",
        ),
        "beamagent.runtime": (
            "BackendSpec",
            "Runtime",
            "default_runtime",
            "shutdown_default_runtime",
        ),
        "beamagent.session": (
            "QueryRef",
            "Session",
        ),
    }
)


def __getattr__(name: str) -> Any:
    return load(__name__, _EXPORTS, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
