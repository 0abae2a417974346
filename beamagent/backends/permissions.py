"""Permission decisions: what a session answers when its backend asks to use a tool.

A backend that asks before it runs a tool (Claude Code's ``can_use_tool``,
Codex's approval requests) hands the question to the session's
``permission_handler(tool_name, input, context)``, which returns
:class:`Allow` or :class:`Deny`::

    def permission_handler(tool_name, tool_input, context):
        if tool_name == "Bash" and tool_input.get("command", "").startswith("rm "):
            return Deny("no deleting files here")
        return Allow()

    runtime.start_session(backend="claude", permission_handler=permission_handler)

Without a handler every request is denied with a message saying how to allow
it; ``permission_default="allow"`` opts into allowing everything instead. The
handler never runs on the session actor's thread (it may block, e.g. to ask a
human); the session runs it on a thread of its own and the backend handler
encodes the answer. A handler that raises or returns something else denies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeAlias

import attrs

from beamagent.errors import InvalidOption
from beamagent.log import get_logger

__all__ = [
    "PERMISSION_OPTIONS",
    "Allow",
    "Deny",
    "PermissionContext",
    "PermissionDecision",
    "PermissionHandler",
    "PermissionPolicy",
]

log = get_logger(__name__)

PERMISSION_OPTIONS: Final = frozenset({"permission_handler", "permission_default"})
"""Session options every backend with permission requests accepts."""


def _optional_mapping(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidOption(f"Allow.updated_input must be a mapping or None; got {value!r}")
    return dict(value)


def _optional_list(value: Any) -> tuple[Any, ...] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise InvalidOption(f"Allow.updated_permissions must be a list or None; got {value!r}")
    return tuple(value)


@attrs.frozen
class Allow:
    """Let the tool run.

    ``updated_input`` replaces the tool's input (Claude Code only; Codex cannot
    change a command it asked about). ``updated_permissions`` are Claude Code
    permission updates (e.g. the request's suggestions) to apply as well.
    """

    updated_input: dict[str, Any] | None = attrs.field(default=None, converter=_optional_mapping)
    updated_permissions: tuple[Any, ...] | None = attrs.field(
        default=None, converter=_optional_list
    )


@attrs.frozen
class Deny:
    """Refuse the tool; ``message`` is what the model is told.

    ``interrupt=True`` also ends the turn (Claude Code's ``interrupt``, Codex's
    ``cancel``) instead of letting the model carry on without the tool.
    """

    message: str = "denied by the user"
    interrupt: bool = False


PermissionDecision: TypeAlias = Allow | Deny
"""What a permission handler returns."""


@attrs.frozen
class PermissionContext:
    """Details of one permission request, beyond the tool's name and input.

    ``raw`` is the backend's request as it arrived; the other fields are the
    parts most handlers want. ``suggestions`` are Claude Code's permission
    suggestions (return some of them in ``Allow.updated_permissions`` to
    remember the decision).
    """

    backend: str
    session_id: str | None = None
    tool_use_id: str | None = None
    description: str | None = None
    blocked_path: str | None = None
    suggestions: tuple[Any, ...] = ()
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False)


PermissionHandler: TypeAlias = Callable[
    [str, dict[str, Any], PermissionContext], PermissionDecision
]
"""``permission_handler(tool_name, input, context) -> Allow | Deny``."""


@attrs.frozen
class PermissionPolicy:
    """A session's permission settings: its handler, else a default decision.

    Build it with :meth:`from_options` from the session options
    ``permission_handler`` and ``permission_default`` (``"deny"`` or ``"allow"``).
    """

    handler: PermissionHandler | None = None
    default: str = "deny"

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> PermissionPolicy:
        """Read and check ``permission_handler`` / ``permission_default``.

        Raises:
            InvalidOption: the handler is not callable or the default is not
                ``"deny"`` / ``"allow"``.
        """
        handler = options.get("permission_handler")
        if handler is not None and not callable(handler):
            raise InvalidOption(f"permission_handler must be callable; got {handler!r}")
        default = options.get("permission_default") or "deny"
        if default not in ("deny", "allow"):
            raise InvalidOption(f"permission_default must be 'deny' or 'allow'; got {default!r}")
        return cls(handler=handler, default=default)

    @property
    def needs_callback(self) -> bool:
        """True when a user callback decides (it must run off the session's thread)."""
        return self.handler is not None

    def default_decision(self, tool_name: str, backend: str) -> PermissionDecision:
        """The decision when there is no handler."""
        if self.default == "allow":
            return Allow()
        return Deny(
            f"beamagent denied {tool_name!r}: this {backend} session has no "
            "permission_handler; pass permission_handler=... to decide per request, or "
            "permission_default='allow' to allow every tool"
        )

    def decide(
        self, tool_name: str, tool_input: Mapping[str, Any], context: PermissionContext
    ) -> PermissionDecision:
        """Run the handler (or apply the default); never raises.

        A handler that raises, or returns something other than Allow/Deny,
        denies, and the message says why.
        """
        if self.handler is None:
            return self.default_decision(tool_name, context.backend)
        try:
            decision = self.handler(tool_name, dict(tool_input), context)
        except Exception as exc:
            log.warning(
                "permission_handler_failed",
                session_id=context.session_id,
                backend=context.backend,
                tool=tool_name,
                error=repr(exc),
            )
            return Deny(f"permission handler failed: {exc!r}")
        if not isinstance(decision, Allow | Deny):
            log.warning(
                "permission_handler_bad_result",
                session_id=context.session_id,
                backend=context.backend,
                tool=tool_name,
                result=repr(decision)[:200],
            )
            return Deny(
                f"permission handler returned {decision!r}; it must return Allow(...) or Deny(...)"
            )
        return decision
