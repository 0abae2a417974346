"""Permission decisions and launch options: the pure parts of the CLI backends."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beamagent.backends.launch import extra_args, launch_env
from beamagent.backends.permissions import (
    Allow,
    Deny,
    PermissionContext,
    PermissionPolicy,
)
from beamagent.errors import InvalidOption

CONTEXT = PermissionContext(backend="claude", session_id="s1")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=10,
)


def test_without_a_handler_the_default_is_a_deny_that_says_what_to_do() -> None:
    decision = PermissionPolicy.from_options({}).decide("Bash", {"command": "ls"}, CONTEXT)

    assert isinstance(decision, Deny)
    assert "permission_handler" in decision.message
    assert "permission_default='allow'" in decision.message


def test_permission_default_allow() -> None:
    policy = PermissionPolicy.from_options({"permission_default": "allow"})

    assert policy.decide("Bash", {}, CONTEXT) == Allow()
    assert not policy.needs_callback


@given(outcome=json_values)
def test_a_handler_returning_anything_but_a_decision_denies(outcome: Any) -> None:
    policy = PermissionPolicy.from_options({"permission_handler": lambda *_: outcome})

    decision = policy.decide("Bash", {}, CONTEXT)

    assert isinstance(decision, Deny)
    assert "must return Allow" in decision.message


@given(message=st.text())
def test_a_raising_handler_denies_with_its_error(message: str) -> None:
    def handler(*_: Any) -> Allow:
        raise ValueError(message)

    decision = PermissionPolicy.from_options({"permission_handler": handler}).decide(
        "Bash", {}, CONTEXT
    )

    assert isinstance(decision, Deny)
    assert "ValueError" in decision.message


@given(tool_input=st.dictionaries(st.text(), json_values))
def test_the_handler_gets_a_copy_of_the_input(tool_input: dict[str, Any]) -> None:
    original = dict(tool_input)

    def handler(name: str, given_input: dict[str, Any], context: PermissionContext) -> Allow:
        given_input["beamagent-test-mutation"] = True
        return Allow(updated_input=given_input)

    decision = PermissionPolicy.from_options({"permission_handler": handler}).decide(
        "Tool", tool_input, CONTEXT
    )

    assert isinstance(decision, Allow)
    assert decision.updated_input == {**original, "beamagent-test-mutation": True}
    assert tool_input == original


@pytest.mark.parametrize(
    "options",
    [{"permission_handler": "not callable"}, {"permission_default": "maybe"}],
)
def test_bad_permission_options_are_rejected(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidOption):
        PermissionPolicy.from_options(options)


def test_decisions_validate_their_fields() -> None:
    with pytest.raises(InvalidOption):
        Allow(updated_input="rm -rf /")  # type: ignore[arg-type]
    assert Allow(updated_permissions=[{"type": "setMode"}]).updated_permissions == (
        {"type": "setMode"},
    )


@given(
    flags=st.dictionaries(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1).filter(
            lambda s: not s.startswith("-")
        ),
        st.none() | st.text(),
    )
)
def test_extra_args_mapping_becomes_flags(flags: dict[str, str | None]) -> None:
    expected: list[str] = []
    for flag, value in flags.items():
        expected += [f"--{flag}"] + ([value] if value is not None else [])

    assert extra_args({"extra_args": flags}) == expected


def test_extra_args_list_and_bad_values() -> None:
    assert extra_args({"extra_args": ["--verbose", "-x"]}) == ["--verbose", "-x"]
    assert extra_args({}) == []
    with pytest.raises(InvalidOption):
        extra_args({"extra_args": "--verbose"})


def test_launch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BEAMAGENT_TEST_INHERITED", "1")
    monkeypatch.setenv("CLAUDECODE", "1")

    inherited = launch_env({"env": {"A": "b"}}, drop=("CLAUDECODE",), set_default={"D": "1"})
    isolated = launch_env({"env": {"A": "b"}, "inherit_env": False}, set_default={"D": "1"})
    overridden = launch_env({"env": {"D": "2"}, "inherit_env": False}, set_default={"D": "1"})

    assert inherited["BEAMAGENT_TEST_INHERITED"] == "1"
    assert "CLAUDECODE" not in inherited
    assert isolated == {"A": "b", "D": "1"}
    assert overridden == {"D": "2"}
    with pytest.raises(InvalidOption):
        launch_env({"env": {"A": 1}})
