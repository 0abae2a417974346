"""The deterministic session summary (no model involved): a pure text builder.

The text has exactly four lines::

    Conversation summary
    Messages: N
    First user message: <preview>
    Latest agent output: <preview>

* ``N`` is the number of visible messages.
* The *first user message* is the first visible message of type ``user`` that has text;
  the *latest agent output* is the last visible message of type ``assistant``, ``result``
  or ``text`` that has text. Either is ``(none)`` when there is no such message.
* A message's text is its ``content`` when that is a string, else the ``text`` of its
  text blocks (``content`` as a list of blocks, or ``content_blocks``) joined by spaces.
  Runs of whitespace (newlines included) become one space, so the summary stays four lines.
* A preview longer than 240 characters is cut to its first 237 characters + ``"..."``.

>>> print(summary_text([{"type": "user", "content": "hi"}]))
Conversation summary
Messages: 1
First user message: hi
Latest agent output: (none)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "AGENT_OUTPUT_TYPES",
    "NO_PREVIEW",
    "PREVIEW_LIMIT",
    "USER_TYPES",
    "first_text",
    "format_summary",
    "message_text",
    "preview",
    "summary_text",
]

PREVIEW_LIMIT = 240
NO_PREVIEW = "(none)"
USER_TYPES = frozenset({"user"})
AGENT_OUTPUT_TYPES = frozenset({"assistant", "result", "text"})


def _block_texts(blocks: Any) -> list[str]:
    if not isinstance(blocks, list):
        return []
    return [
        block["text"]
        for block in blocks
        if isinstance(block, Mapping)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
    ]


def message_text(message: Mapping[str, Any]) -> str:
    """The message's text with whitespace collapsed; ``""`` when it has none."""
    content = message.get("content")
    if isinstance(content, str):
        parts = [content]
    else:
        parts = _block_texts(content) or _block_texts(message.get("content_blocks"))
    return " ".join(" ".join(parts).split())


def preview(text: str) -> str:
    """``text`` cut to :data:`PREVIEW_LIMIT` characters (237 + ``"..."`` when longer)."""
    if len(text) <= PREVIEW_LIMIT:
        return text
    return text[: PREVIEW_LIMIT - 3] + "..."


def first_text(messages: Iterable[Mapping[str, Any]], types: frozenset[str]) -> str | None:
    """The text of the first message of one of ``types`` that has text, else ``None``."""
    return next((t for m in messages if m.get("type") in types and (t := message_text(m))), None)


def format_summary(message_count: int, first_user: str | None, latest_output: str | None) -> str:
    """The four-line summary text from its parts (``None`` → ``(none)``)."""
    return (
        "Conversation summary\n"
        f"Messages: {message_count}\n"
        f"First user message: {preview(first_user) if first_user else NO_PREVIEW}\n"
        f"Latest agent output: {preview(latest_output) if latest_output else NO_PREVIEW}"
    )


def summary_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The four-line summary of ``messages`` (the session's visible messages, in order)."""
    return format_summary(
        len(messages),
        first_text(messages, USER_TYPES),
        first_text(reversed(messages), AGENT_OUTPUT_TYPES),
    )
