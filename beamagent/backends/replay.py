"""Replaying a stored conversation to a backend that cannot resume it natively.

A resumed or forked session continues the same conversation on every backend:
natively where the backend can (Claude ``--resume``, Codex ``thread/resume``...),
otherwise by *replaying* the stored history. These pure functions turn the
session's visible stored history (a list of canonical messages) into what a
handler sends:

* :func:`replay_turns` groups messages into turns (a user prompt and what
  followed it: assistant text, tool calls with a short summary of their
  results, errors);
* :func:`bounded_turns` keeps the most recent turns within the caps;
* :func:`transcript_preamble` renders them as a text preamble, with clear
  delimiters, that a CLI handler puts in front of the first prompt of the
  incarnation (:meth:`~beamagent.backends.base.BackendHandler.take_replay_prompt`).

The caps: at most :data:`REPLAY_MAX_TURNS` turns and :data:`REPLAY_MAX_CHARS`
characters of transcript; the most recent turns are kept and the preamble says
how many earlier ones were left out. One text is cut to :data:`TEXT_MAX_CHARS`
(its head and tail kept), a tool call's summary to :data:`TOOL_MAX_CHARS`.
The session reads at most :data:`REPLAY_LOAD_LIMIT` messages from the store.

    >>> from beamagent.messages import Message
    >>> history = [Message("user", content="hi"), Message("assistant", content="hello")]
    >>> print(transcript_preamble(history).splitlines()[0])
    <beamagent-replay>
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

import attrs

from beamagent.messages import ContentBlock, ContentBlockType, Message, MessageType

__all__ = [
    "REPLAY_LOAD_LIMIT",
    "REPLAY_MAX_CHARS",
    "REPLAY_MAX_TURNS",
    "TEXT_MAX_CHARS",
    "TOOL_MAX_CHARS",
    "ReplayPart",
    "ReplayTurn",
    "bounded_turns",
    "replay_turns",
    "transcript_preamble",
]

REPLAY_MAX_TURNS: Final = 100
"""Most turns a replay carries (the most recent ones)."""
REPLAY_MAX_CHARS: Final = 100_000
"""Most characters of transcript a replay carries (about 25,000 tokens)."""
TEXT_MAX_CHARS: Final = 8_000
"""Longest single text (a prompt, an assistant reply) kept whole; longer ones keep head and tail."""
TOOL_MAX_CHARS: Final = 400
"""Longest summary of one tool call (its input and result)."""
TOOLS_PER_TURN: Final = 30
"""Most tool calls summarised per turn; the rest are counted."""
REPLAY_LOAD_LIMIT: Final = 2_000
"""Most stored messages a session reads to build a replay (the most recent ones)."""

OPEN_TAG: Final = "<beamagent-replay>"
CLOSE_TAG: Final = "</beamagent-replay>"
_OUR_TAGS: Final = re.compile(r"<(/?)(beamagent-replay|turn|user|assistant|tool|error)\b")


@attrs.frozen
class ReplayPart:
    """One thing said after the prompt: ``kind`` is ``assistant``, ``tool`` or ``error``."""

    kind: str
    text: str


@attrs.frozen
class ReplayTurn:
    """A user prompt and what followed it, in order.

    ``prompt`` is None for messages before the first stored prompt (a history
    that starts mid-turn).
    """

    prompt: str | None
    parts: tuple[ReplayPart, ...] = ()

    @property
    def assistant_text(self) -> str:
        """The assistant's texts of this turn, joined by blank lines."""
        return "\n\n".join(p.text for p in self.parts if p.kind == "assistant" and p.text)


def _cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters: head and tail kept, the middle counted."""
    if len(text) <= limit:
        return text
    keep = max(limit - 40, 2)
    head, tail = text[: keep - keep // 2], text[len(text) - keep // 2 :]
    return f"{head}\n[... {len(text) - len(head) - len(tail)} characters omitted ...]\n{tail}"


def _one_line(value: Any, limit: int) -> str:
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def _block_result_text(block: ContentBlock) -> str:
    content = block.content
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            str(item.get("text"))
            for item in content
            if isinstance(item, dict) and isinstance(item.get("text"), str)
        ]
        if texts:
            return " ".join(texts)
    return "" if content is None else _one_line(content, TOOL_MAX_CHARS)


class _TurnBuilder:
    """Collects one turn; tool uses wait for their results (matched by id)."""

    def __init__(self, prompt: str | None) -> None:
        self.prompt = prompt
        self.parts: list[ReplayPart | dict[str, Any]] = []  # dicts: tool calls being built
        self.tools: dict[str, dict[str, Any]] = {}
        self.tool_count = 0

    def text(self, kind: str, text: str | None) -> None:
        if text and text.strip():
            self.parts.append(ReplayPart(kind, _cut(text.strip(), TEXT_MAX_CHARS)))

    def tool_use(self, tool_id: str | None, name: str | None, tool_input: Any) -> None:
        if tool_id is not None and tool_id in self.tools:
            return  # the same call seen twice (e.g. item started, then completed)
        self.tool_count += 1
        entry = {"name": name or "tool", "input": tool_input, "result": None, "error": None}
        if tool_id is not None:
            self.tools[tool_id] = entry
        self.parts.append(entry)

    def tool_result(self, tool_id: str | None, text: str, is_error: bool | None) -> None:
        entry = self.tools.get(tool_id) if tool_id is not None else None
        if entry is None:
            entry = {"name": "tool", "input": None, "result": None, "error": None}
            self.tool_count += 1
            self.parts.append(entry)
        entry["result"] = text
        entry["error"] = bool(is_error)

    def build(self) -> ReplayTurn:
        parts: list[ReplayPart] = []
        tools = 0
        for part in self.parts:
            if isinstance(part, ReplayPart):
                parts.append(part)
                continue
            tools += 1
            if tools > TOOLS_PER_TURN:
                continue
            parts.append(ReplayPart("tool", _tool_summary(part)))
        if tools > TOOLS_PER_TURN:
            parts.append(ReplayPart("tool", f"({tools - TOOLS_PER_TURN} more tool calls)"))
        return ReplayTurn(self.prompt, tuple(parts))


def _tool_summary(entry: dict[str, Any]) -> str:
    summary = f"{entry['name']}"
    if entry["input"] not in (None, {}):
        summary += f" {_one_line(entry['input'], TOOL_MAX_CHARS // 2)}"
    if entry["result"] is None:
        summary += " -> (no result)"
    else:
        status = "error" if entry["error"] else "ok"
        result = _one_line(entry["result"], TOOL_MAX_CHARS // 2)
        summary += f" -> {status}" + (f": {result}" if result else "")
    return _one_line(summary, TOOL_MAX_CHARS)


def _is_prompt(message: Message) -> bool:
    """A user turn (the session records prompts as ``user`` with text content)."""
    if message.type is not MessageType.USER:
        return False
    return not any(b.type is ContentBlockType.TOOL_RESULT for b in message.content_blocks)


def _prompt_text(message: Message) -> str:
    if message.content is not None:
        return message.content
    texts = [b.text for b in message.content_blocks if b.text]
    return "\n".join(t for t in texts if t)


def replay_turns(history: Iterable[Message]) -> list[ReplayTurn]:
    """Group a stored conversation into turns, oldest first.

    A turn starts at each user prompt. Assistant text, tool uses (from
    ``tool_use`` blocks or messages, matched with their results by id),
    tool results (``tool_result`` blocks, e.g. Claude's ``user`` messages,
    or messages) and errors are kept; system messages, stream events,
    thinking and results (which repeat the assistant's text) are not.
    """
    turns: list[ReplayTurn] = []
    current: _TurnBuilder | None = None
    for message in history:
        if _is_prompt(message):
            if current is not None:
                turns.append(current.build())
            current = _TurnBuilder(_prompt_text(message))
            continue
        if current is None:
            current = _TurnBuilder(None)
        kind = message.type
        if kind is MessageType.ASSISTANT or kind is MessageType.USER:
            if message.content_blocks:
                for block in message.content_blocks:
                    _add_block(current, block, kind)
            elif kind is MessageType.ASSISTANT:
                current.text("assistant", message.content)
        elif kind is MessageType.TEXT:
            current.text("assistant", message.content)
        elif kind is MessageType.TOOL_USE:
            current.tool_use(message.tool_use_id, message.tool_name, message.tool_input)
        elif kind is MessageType.TOOL_RESULT:
            text = message.content
            if text is None and message.content_blocks:
                text = " ".join(_block_result_text(b) for b in message.content_blocks)
            current.tool_result(message.tool_use_id, text or "", message.is_error)
        elif kind is MessageType.ERROR:
            current.text("error", message.content or "the turn failed")
        elif kind is MessageType.RESULT and message.subtype == "interrupted":
            current.text("error", "(the turn was interrupted)")
    if current is not None:
        turns.append(current.build())
    return [t for t in turns if t.prompt or t.parts]


def _add_block(turn: _TurnBuilder, block: ContentBlock, kind: MessageType) -> None:
    if block.type is ContentBlockType.TEXT and kind is MessageType.ASSISTANT:
        turn.text("assistant", block.text)
    elif block.type is ContentBlockType.TOOL_USE:
        turn.tool_use(block.id, block.name, block.input)
    elif block.type is ContentBlockType.TOOL_RESULT:
        turn.tool_result(block.tool_use_id, _block_result_text(block), block.is_error)


def _escape(text: str) -> str:
    """Neutralise our own delimiters inside replayed text (``<turn`` becomes U+2039 ``turn``)."""
    return _OUR_TAGS.sub(lambda m: f"\u2039{m.group(1)}{m.group(2)}", text)


def _render_turn(number: int, turn: ReplayTurn) -> str:
    lines = [f'<turn n="{number}">']
    if turn.prompt is not None:
        lines.append(f"<user>\n{_escape(_cut(turn.prompt, TEXT_MAX_CHARS))}\n</user>")
    for part in turn.parts:
        lines.append(f"<{part.kind}>\n{_escape(part.text)}\n</{part.kind}>")
    lines.append("</turn>")
    return "\n".join(lines)


def bounded_turns(
    turns: Sequence[ReplayTurn],
    *,
    max_turns: int = REPLAY_MAX_TURNS,
    max_chars: int = REPLAY_MAX_CHARS,
    size: Any = None,
) -> tuple[list[ReplayTurn], int]:
    """The most recent turns within ``max_turns`` and ``max_chars``; and how many were left out.

    ``size(turn)`` measures a turn (default: its rendered length). The last
    turn is always kept (a caller cuts it further if it alone is too long).
    """
    measure = size or (lambda turn: len(_render_turn(0, turn)))
    kept: list[ReplayTurn] = []
    total = 0
    for turn in reversed(turns):
        if len(kept) >= max_turns:
            break
        length = int(measure(turn))
        if kept and total + length > max_chars:
            break
        kept.append(turn)
        total += length
    kept.reverse()
    return kept, len(turns) - len(kept)


def transcript_preamble(
    history: Iterable[Message],
    *,
    max_turns: int = REPLAY_MAX_TURNS,
    max_chars: int = REPLAY_MAX_CHARS,
) -> str | None:
    """The text a CLI handler puts before the first prompt of a replayed session.

    None when the history holds nothing to replay. The preamble ends with a
    line telling the model that the new prompt follows.
    """
    turns = replay_turns(history)
    if not turns:
        return None
    kept, omitted = bounded_turns(turns, max_turns=max_turns, max_chars=max_chars)
    rendered = [_render_turn(i, t) for i, t in enumerate(kept, start=omitted + 1)]
    body = "\n".join(rendered)
    if len(body) > max_chars:  # one last turn longer than the cap: keep its head and tail
        body = _cut(body, max_chars)
    note = ""
    if omitted:
        earlier = "1 earlier turn was" if omitted == 1 else f"{omitted} earlier turns were"
        note = f" {earlier.capitalize()} left out: these are the most recent {len(kept)}."

    header = (
        "This conversation is being continued in a new session that could not restore it "
        "natively. The earlier turns, oldest first, are replayed in this block; tool calls "
        f"are summarised.{note} They already happened: do not answer or re-run them. The "
        "new message follows the block."
    )
    return f"{OPEN_TAG}\n{header}\n{body}\n{CLOSE_TAG}\n\n"
