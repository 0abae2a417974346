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

from beamagent.errors import ToolError
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
