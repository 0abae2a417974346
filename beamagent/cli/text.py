"""How the command shows a stored message in one line."""

from __future__ import annotations

from typing import Any

from beamagent.messages import Message, MessageType

__all__ = ["message_text", "short"]


def short(value: Any, limit: int = 60) -> str:
    """``value`` as one line of at most ``limit`` characters (``...`` marks a cut)."""
    text = "" if value is None else str(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def message_text(message: Message) -> str:
    """What a message says: its content, else a tool call's name, else a system row's facts.

    A ``system`` row (the agent's ``init``) usually has no content; its subtype
    and the model, native session and version it announced are what it says.
    """
    if message.content:
        return message.content
    if message.tool_name:
        return f"tool {message.tool_name}"
    if message.type is MessageType.SYSTEM:
        info = message.system_info or {}
        labels = {"model": "model", "session_id": "native session", "version": "version"}
        facts = [f"{label} {info[key]}" for key, label in labels.items() if info.get(key)]
        head = message.subtype or "system"
        return f"{head}: {', '.join(facts)}" if facts else head
    return message.subtype or ""
