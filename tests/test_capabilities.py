"""Capability ids and their parsing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beamagent.capabilities import Capability, parse_capabilities, parse_capability
from beamagent.errors import BeamAgentError, UnknownCapability

# Reference §5, in its order: the ids must match BeamAgent's exactly.
REFERENCE_IDS = [
    "session_lifecycle",
    "session_info",
    "runtime_model_switch",
    "interrupt",
    "permission_mode",
    "session_history",
    "session_mutation",
    "thread_management",
    "metadata_accessors",
    "in_process_mcp",
    "mcp_management",
    "hooks",
    "checkpointing",
    "thinking_budget",
    "task_stop",
    "command_execution",
    "approval_callbacks",
    "user_input_callbacks",
    "realtime_review",
    "config_management",
    "provider_management",
    "attachments",
    "event_streaming",
]


def test_capability_ids_are_exactly_the_reference_ids() -> None:
    assert [c.value for c in Capability] == REFERENCE_IDS


def test_capability_is_a_string() -> None:
    assert {"session_history": 1}[Capability.SESSION_HISTORY] == 1
    assert f"{Capability.HOOKS}" == "hooks"
    assert json.dumps([Capability.HOOKS]) == '["hooks"]'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Capability.HOOKS, Capability.HOOKS),
        ("hooks", Capability.HOOKS),
        ("Session_History", Capability.SESSION_HISTORY),
        ("session-history", Capability.SESSION_HISTORY),
        ("  IN-PROCESS-MCP \n", Capability.IN_PROCESS_MCP),
    ],
)
def test_parse_capability_accepts_friendly_spellings(value: str, expected: Capability) -> None:
    assert parse_capability(value) is expected


@pytest.mark.parametrize("value", ["telepathy", "", "hooks,interrupt", "session history", 3, None])
def test_parse_capability_rejects_unknown_values(value: object) -> None:
    with pytest.raises(UnknownCapability) as info:
        parse_capability(value)  # type: ignore[arg-type]
    assert info.value.capability == value
    assert isinstance(info.value, BeamAgentError)
    assert isinstance(info.value, ValueError)


def test_parse_capabilities_forms() -> None:
    assert parse_capabilities(None) == frozenset()
    assert parse_capabilities([]) == frozenset()
    assert parse_capabilities("hooks") == {Capability.HOOKS}
    assert parse_capabilities(Capability.HOOKS) == {Capability.HOOKS}
    assert parse_capabilities(["hooks", "Hooks", Capability.INTERRUPT]) == {
        Capability.HOOKS,
        Capability.INTERRUPT,
    }
    assert parse_capabilities(c for c in ("attachments",)) == {Capability.ATTACHMENTS}


def test_parse_capabilities_rejects_an_unknown_item() -> None:
    with pytest.raises(UnknownCapability) as info:
        parse_capabilities(["hooks", "teleport"])
    assert info.value.capability == "teleport"


def test_parse_capabilities_rejects_a_non_iterable() -> None:
    with pytest.raises(UnknownCapability) as info:
        parse_capabilities(42)  # type: ignore[arg-type]
    assert info.value.capability == 42


@given(st.sampled_from(list(Capability)), st.data())
def test_any_case_and_dash_spelling_parses_back(
    capability: Capability, data: st.DataObject
) -> None:
    flips = data.draw(st.lists(st.booleans(), min_size=len(capability), max_size=len(capability)))
    spelled = "".join(
        (ch.upper() if flip else ch).replace("_", "-" if flip else "_")
        for ch, flip in zip(capability.value, flips, strict=True)
    )
    assert parse_capability(spelled) is capability


KNOWN_FOLDED = {c.value for c in Capability}


@given(st.text(max_size=30))
def test_text_is_a_capability_exactly_when_its_folded_form_is_an_id(text: str) -> None:
    folded = text.strip().lower().replace("-", "_")
    if folded in KNOWN_FOLDED:
        assert parse_capability(text).value == folded
    else:
        with pytest.raises(UnknownCapability):
            parse_capability(text)
