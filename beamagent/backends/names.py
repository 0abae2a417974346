"""Backend names: the known ones, their aliases, and the canonical spelling.

A runtime may also register extra backend instances under names of its own
(``"local_a"``, ``"local_b"``); those are valid too and pass through
:func:`canonical_backend_name` unchanged, so they are matched exactly.

>>> canonical_backend_name("Claude-Code")
'claude'
>>> canonical_backend_name("local_a")
'local_a'
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from beamagent.errors import InvalidRouteRequest

__all__ = ["BACKEND_ALIASES", "KNOWN_BACKENDS", "canonical_backend_name"]

KNOWN_BACKENDS: tuple[str, ...] = (
    "claude",
    "codex",
    "gemini",
    "opencode",
    "copilot",
    "openai",
    "local",
)
"""The built-in backends, in the default preference order."""

BACKEND_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "claude_code": "claude",
        "codex_cli": "codex",
        "gemini_cli": "gemini",
        "copilot_cli": "copilot",
        "opencode_cli": "opencode",
    }
)
"""Alias → known backend name (keys in folded form: lower case, ``_`` for ``-``)."""

# Folded spelling → canonical name, for known names and aliases alike: one lookup per call.
_FOLDED: Mapping[str, str] = MappingProxyType(
    {**{name: name for name in KNOWN_BACKENDS}, **BACKEND_ALIASES}
)


def canonical_backend_name(name: str, *, key: str = "backend") -> str:
    """Return the canonical spelling of the backend ``name``.

    Known names and aliases are matched case-insensitively with ``-`` read as
    ``_`` (``"Gemini-CLI"`` → ``"gemini"``). Any other non-empty string is a
    custom backend name and comes back as given, minus surrounding whitespace.

    ``key`` names the route request key being read, for the error message.

    Raises:
        InvalidRouteRequest: ``name`` is not a string, or is empty.
    """
    if not isinstance(name, str):
        raise InvalidRouteRequest(key, f"a backend name must be a string, got {name!r}")
    stripped = name.strip()
    if not stripped:
        raise InvalidRouteRequest(key, "a backend name must not be empty")
    canonical = _FOLDED.get(stripped.lower().replace("-", "_"))
    return canonical if canonical is not None else stripped
