"""Python functions as agent tools: ``@tool``, served over MCP to the CLIs, run by ``openai``.

::

    from beamagent.tools import tool

    @tool
    def add(a: int, b: int) -> int:
        "Add two integers."
        return a + b

    session = runtime.start_session(backend="claude", tools=[add])

See ``docs/tools.md``. Importing this package does not import the ``mcp`` SDK:
the tool server (the ``tools`` extra, ``pip install 'beamagent[tools]'``) is
loaded when a session first needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from beamagent._lazy import exports, load
from beamagent.errors import ToolError

if TYPE_CHECKING:
    from beamagent.tools._access import TOKEN_ENV, ToolServerAccess
    from beamagent.tools._schema import ArgumentError, validate_json
    from beamagent.tools._state import ToolServerConfig
    from beamagent.tools._tool import (
        Tool,
        ToolContext,
        ToolOutcome,
        ToolSet,
        invoke,
        invoke_blocking,
        render,
        tool,
    )

__all__ = [
    "TOKEN_ENV",
    "ArgumentError",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolOutcome",
    "ToolServerAccess",
    "ToolServerConfig",
    "ToolSet",
    "invoke",
    "invoke_blocking",
    "render",
    "tool",
    "validate_json",
]

_EXPORTS = exports(
    {
        "beamagent.tools._access": (
            "TOKEN_ENV",
            "ToolServerAccess",
        ),
        "beamagent.tools._schema": (
            "ArgumentError",
            "validate_json",
        ),
        "beamagent.tools._state": ("ToolServerConfig",),
        "beamagent.tools._tool": (
            "Tool",
            "ToolContext",
            "ToolOutcome",
            "ToolSet",
            "invoke",
            "invoke_blocking",
            "render",
            "tool",
        ),
    }
)


def __getattr__(name: str) -> Any:
    return load(__name__, _EXPORTS, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
