"""Python functions as agent tools: ``@tool``, served over MCP to the CLIs, run by ``openai``.

See ``docs/tools.md``. Importing this package does not import the ``mcp`` SDK:
the tool server (the ``tools`` extra, ``pip install 'beamagent[tools]'``) is
loaded when a session first needs it.
"""

from beamagent.tools._access import TOKEN_ENV, ToolServerAccess

__all__ = ["TOKEN_ENV", "ToolServerAccess"]
