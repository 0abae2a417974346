"""The contract between the tool server and a CLI backend: the ``tool_server`` handler option.

A session with Python tools on a backend whose handler lists ``tool_server``
in :meth:`~beamagent.backends.base.BackendHandler.option_names` gets that
option set by the runtime to a :class:`ToolServerAccess`. The handler
configures its CLI with it -- the server's URL, the session's bearer token
(through the CLI's environment, never its command line), the MCP server name
-- and tells its CLI not to ask before calling these tools: the tool server
asks the session's permission handler itself, once per call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

import attrs

from beamagent.tools._calls import CallIds

__all__ = ["STRUCTURED_HEADER", "TOKEN_ENV", "ToolServerAccess"]

TOKEN_ENV: Final = "BEAMAGENT_TOOLS_TOKEN"
"""The environment variable a CLI backend puts the session's bearer token in."""
STRUCTURED_HEADER: Final = "x-beamagent-structured-content"
"""A request header: ``always`` asks the tool server for ``structuredContent`` on every result
(a mapping as it is, anything else as ``{"result": ...}``, an error as ``{"error": ...}``)."""


def _names(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class ToolServerAccess:
    """How one session's CLI reaches its Python tools over MCP (streamable HTTP).

    Attributes:
        url: the MCP endpoint, ``http://127.0.0.1:PORT/mcp`` (loopback only).
        token: the session's bearer token: send ``Authorization: Bearer <token>``.
            A secret: put it in the CLI's environment (``token_env``) or a file
            only the CLI reads, never on its command line or in a log; it is
            left out of ``repr``.
        server_name: the MCP server's name in the CLI's configuration
            (``beamagent`` by default); CLIs name its tools after it
            (Claude Code and Codex: ``mcp__<server_name>__<tool>``).
        tool_names: the session's tools, as ``tools/list`` answers them.
        token_env: the environment variable to hand the token over in.
        calls: where the handler announces the calls its CLI makes, for a CLI
            that does not pass its call id to the server (see
            :class:`~beamagent.tools._calls.CallIds`); shared with the server.

    Example (a CLI that takes an MCP server as JSON)::

        access = options["tool_server"]
        env[access.token_env] = access.token
        config = {access.server_name: {"type": "http", "url": access.url,
                  "headers": {"Authorization": f"Bearer ${{{access.token_env}}}"}}}
    """

    url: str
    token: str = attrs.field(repr=False)
    server_name: str = "beamagent"
    tool_names: tuple[str, ...] = attrs.field(default=(), converter=_names)
    token_env: str = TOKEN_ENV
    calls: CallIds = attrs.field(factory=CallIds, eq=False, repr=False)

    def headers(self) -> dict[str, str]:
        """The HTTP headers that authenticate this session (``Authorization: Bearer ...``)."""
        return {"Authorization": f"Bearer {self.token}"}

    def env(self) -> Mapping[str, str]:
        """The environment entry that hands the token to the CLI (``{token_env: token}``)."""
        return {self.token_env: self.token}

    def qualified_names(self, separator: str = "__", prefix: str = "mcp") -> tuple[str, ...]:
        """The tools' names as a CLI that prefixes MCP tools shows them to its model.

        >>> ToolServerAccess("http://127.0.0.1:1/mcp", "t", tool_names=("add",)).qualified_names()
        ('mcp__beamagent__add',)
        """
        return tuple(
            f"{prefix}{separator}{self.server_name}{separator}{name}" for name in self.tool_names
        )
