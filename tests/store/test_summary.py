"""The deterministic summary text."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from beamagent.store.summary import message_text, preview, summary_text


def test_exact_text() -> None:
    messages = [
        {"type": "system", "content": "init"},
        {"type": "user", "content": "  What is\n\n2+2? "},
        {"type": "assistant", "content": "4"},
        {"type": "user", "content": "thanks"},
        {"type": "result", "content": "Done:\tfour"},
        {"type": "tool_use", "content": "not agent output"},
    ]
    assert summary_text(messages) == (
        "Conversation summary\n"
        "Messages: 6\n"
        "First user message: What is 2+2?\n"
        "Latest agent output: Done: four"
    )


def test_none_when_absent() -> None:
    assert summary_text([]) == (
        "Conversation summary\nMessages: 0\nFirst user message: (none)\nLatest agent output: (none)"
    )
    # Messages without text do not count as the user message or the agent output.
    no_text = [{"type": "user", "content": "   "}, {"type": "assistant"}, {"type": "text"}]
    assert summary_text(no_text).endswith("First user message: (none)\nLatest agent output: (none)")


def test_text_blocks_count_as_text() -> None:
    blocks = [{"type": "thinking", "thinking": "hm"}, {"type": "text", "text": "hello"}]
    assert message_text({"type": "assistant", "content": blocks}) == "hello"
    assert message_text({"type": "assistant", "content_blocks": blocks}) == "hello"
    messages: list[dict[str, Any]] = [
        {"type": "user", "content": "q"},
        {"type": "text", "content": "partial"},
        {"type": "assistant", "content_blocks": blocks},
    ]
    assert summary_text(messages).endswith("Latest agent output: hello")


def test_previews_are_cut_at_240_characters() -> None:
    exact = "x" * 240
    assert preview(exact) == exact
    long = "".join(chr(ord("a") + i % 26) for i in range(241))
    assert preview(long) == long[:237] + "..."
    assert len(preview(long)) == 240
    text = summary_text([{"type": "user", "content": "é" * 300}])
    assert text.splitlines()[2] == "First user message: " + "é" * 237 + "..."


@given(st.text(max_size=400))
def test_preview_properties(text: str) -> None:
    cut = preview(text)
    assert len(cut) <= 240
    if len(text) <= 240:
        assert cut == text
    else:
        assert cut == text[:237] + "..."


@given(
    st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["user", "assistant", "result", "text", "tool_use"])},
            optional={"content": st.text(max_size=300)},
        ),
        max_size=8,
    )
)
def test_summary_is_always_four_lines(messages: list[dict[str, Any]]) -> None:
    lines = summary_text(messages).split("\n")
    assert len(lines) == 4
    assert lines[1] == f"Messages: {len(messages)}"
    assert all(len(line) <= 240 + len("Latest agent output: ") for line in lines)
