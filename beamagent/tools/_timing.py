"""Timing of tool calls: the tool server tells the session, the session stamps the result.

A CLI reports a call of a Python tool in its own stream (Claude Code: a
``tool_use`` block, then a ``tool_result`` block; Codex: ``tool_use`` /
``tool_result`` messages), which is what the session delivers and stores --
once. The tool server, which ran the call, tells the session how long it took
(:class:`ToolCallReport`) before it answers the CLI, so the report is in the
session's mailbox before the CLI's result can be. :class:`ToolTimings` then
puts ``duration_ms`` on the message that carries the result: matched by the
call's id where the CLI passes it to the server (Claude Code, Codex), else by
tool name, oldest first.
"""

from __future__ import annotations

import collections
from typing import Final

import attrs

from beamagent.messages import ContentBlockType, Message, MessageType

__all__ = ["ToolCallReport", "ToolTimings"]

_KEEP: Final = 256


@attrs.frozen
class ToolCallReport:
    """One call the tool server ran for a session (told to the session's process)."""

    session_id: str
    tool_name: str
    tool_use_id: str | None
    duration_ms: float
    status: str


class ToolTimings:
    """Matches :class:`ToolCallReport`\\ s to the results a CLI reports; bounded memory."""

    def __init__(self) -> None:
        self._by_id: collections.OrderedDict[str, ToolCallReport] = collections.OrderedDict()
        self._anonymous: collections.deque[ToolCallReport] = collections.deque(maxlen=_KEEP)
        self._names: collections.OrderedDict[str, str] = collections.OrderedDict()

    def report(self, report: ToolCallReport) -> None:
        """Remember a call's timing until its result comes by."""
        if report.tool_use_id:
            self._by_id[report.tool_use_id] = report
            while len(self._by_id) > _KEEP:
                self._by_id.popitem(last=False)
        else:
            self._anonymous.append(report)

    def annotate(self, message: Message) -> Message:
        """``message``, with ``duration_ms`` when it carries a reported call's result."""
        if message.type is MessageType.TOOL_USE and message.tool_use_id and message.tool_name:
            self._learn(message.tool_use_id, message.tool_name)
        result_ids: list[str] = []
        if message.type is MessageType.TOOL_RESULT and message.tool_use_id:
            result_ids.append(message.tool_use_id)
        for block in message.content_blocks:
            if block.type is ContentBlockType.TOOL_USE and block.id and block.name:
                self._learn(block.id, block.name)
            elif block.type is ContentBlockType.TOOL_RESULT and block.tool_use_id:
                result_ids.append(block.tool_use_id)
        if not result_ids:
            return message  # the server's timing wins over a CLI's own (Codex's durationMs)
        for tool_use_id in result_ids:
            found = self._take(tool_use_id)
            if found is not None:
                return message.with_fields(duration_ms=found.duration_ms)
        return message

    def _learn(self, tool_use_id: str, name: str) -> None:
        self._names[tool_use_id] = name
        while len(self._names) > _KEEP:
            self._names.popitem(last=False)

    def _take(self, tool_use_id: str) -> ToolCallReport | None:
        found = self._by_id.pop(tool_use_id, None)
        if found is not None:
            return found
        name = self._names.get(tool_use_id)
        if name is None:
            return None
        for report in self._anonymous:
            if name == report.tool_name or name.endswith(f"__{report.tool_name}"):
                self._anonymous.remove(report)
                return report
        return None
