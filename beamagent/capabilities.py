"""Capability ids: the closed set of things a backend may support.

Each backend handler declares the capabilities it really supports; routing
drops a backend that lacks one a request asks for. The ids are BeamAgent's.

>>> parse_capabilities(["hooks", "Interrupt"]) == {Capability.HOOKS, Capability.INTERRUPT}
True
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from beamagent.errors import UnknownCapability

__all__ = ["Capability", "parse_capabilities", "parse_capability"]


class Capability(enum.StrEnum):
    """One capability id; its value is the id as a string (``"session_history"``)."""

    SESSION_LIFECYCLE = "session_lifecycle"
    SESSION_INFO = "session_info"
    RUNTIME_MODEL_SWITCH = "runtime_model_switch"
    INTERRUPT = "interrupt"
    PERMISSION_MODE = "permission_mode"
    SESSION_HISTORY = "session_history"
    SESSION_MUTATION = "session_mutation"
    THREAD_MANAGEMENT = "thread_management"
    METADATA_ACCESSORS = "metadata_accessors"
    IN_PROCESS_MCP = "in_process_mcp"
    MCP_MANAGEMENT = "mcp_management"
    HOOKS = "hooks"
    CHECKPOINTING = "checkpointing"
    THINKING_BUDGET = "thinking_budget"
    TASK_STOP = "task_stop"
    COMMAND_EXECUTION = "command_execution"
    APPROVAL_CALLBACKS = "approval_callbacks"
    USER_INPUT_CALLBACKS = "user_input_callbacks"
    REALTIME_REVIEW = "realtime_review"
    CONFIG_MANAGEMENT = "config_management"
    PROVIDER_MANAGEMENT = "provider_management"
    ATTACHMENTS = "attachments"
    EVENT_STREAMING = "event_streaming"


def parse_capability(value: Capability | str) -> Capability:
    """Return the capability named by ``value``.

    Strings are matched case-insensitively, ignoring surrounding whitespace, with
    ``-`` read as ``_`` (``"Session-History"`` is ``session_history``).

    Raises:
        UnknownCapability: ``value`` is not a capability id (or not a string).
    """
    if isinstance(value, Capability):
        return value
    if isinstance(value, str):
        try:
            return Capability(value.strip().lower().replace("-", "_"))
        except ValueError:
            pass
    raise UnknownCapability(value)


def parse_capabilities(
    values: Iterable[Capability | str] | Capability | str | None,
) -> frozenset[Capability]:
    """Return the set of capabilities named by ``values``.

    ``None`` is the empty set and a single string is one capability (not a
    comma-separated list), so ``"hooks"`` and ``["hooks"]`` mean the same.

    Raises:
        UnknownCapability: an item is not a capability id, or ``values`` is
            neither ``None``, a string nor an iterable.
    """
    if values is None:
        return frozenset()
    if isinstance(values, str):
        return frozenset((parse_capability(values),))
    try:
        items = iter(values)
    except TypeError:
        raise UnknownCapability(values) from None
    return frozenset(parse_capability(item) for item in items)
